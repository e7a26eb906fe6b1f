"""The six scenarios: what each one transfers, freezing, and the errors."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pneumolib.config import Config
from pneumolib.errors import ConfigError, WeightsError
from pneumolib.models import UNet, apply_frozen_bn_eval
from pneumolib.scenarios import (
    PAPER_GROUPS, SCENARIOS, build_model, get_scenario, transfer_report,
)

CFG = Config(base_width=4, image_size=32, encoder_weights="none")

# Written out by hand (not derived from the registry), top-level module -> source.
EXPECTED = {
    "random": {},
    "ae_full": {"encoder": "xray", "bottleneck": "xray", "decoder": "xray", "head": "xray"},
    "ae_full_frozen": {"encoder": "xray", "bottleneck": "xray", "decoder": "xray", "head": "xray"},
    "ae_encoder": {"encoder": "xray", "bottleneck": "xray"},
    "ae_encoder_mask_decoder": {"encoder": "xray", "bottleneck": "xray", "decoder": "mask", "head": "mask"},
}


def random_state(seed, base_width=4, norm="batch"):
    """A UNet state dict whose every tensor (BN buffers included) is random and distinct."""
    g = torch.Generator().manual_seed(seed)
    sd = UNet(1, 1, base_width=base_width, norm=norm).state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5  # a valid variance
        elif v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=g) * 0.3
        else:
            out[k] = torch.randint(1000, 2000, v.shape, generator=g).to(v.dtype)
    return out


@pytest.fixture(scope="module")
def ae_states():
    return {"xray": random_state(1), "mask": random_state(2)}


def test_registry():
    assert list(SCENARIOS) == [
        "resnet50", "ae_encoder", "ae_encoder_mask_decoder", "random", "ae_full", "ae_full_frozen",
    ]
    paper = {n: (s.paper_dice, s.paper_iou) for n, s in SCENARIOS.items()}
    assert paper == {
        "resnet50": (0.60, 0.44), "ae_encoder": (0.53, 0.38), "ae_encoder_mask_decoder": (0.53, 0.38),
        "random": (0.50, 0.36), "ae_full": (0.48, 0.34), "ae_full_frozen": (0.23, 0.13),
    }
    assert SCENARIOS["ae_full_frozen"].label == "Autoencoder weights (frozen encoder)"
    assert SCENARIOS["ae_encoder_mask_decoder"].needs == {"xray", "mask"}
    assert SCENARIOS["ae_full"].needs == {"xray"}
    assert SCENARIOS["random"].needs == SCENARIOS["resnet50"].needs == set()
    assert [s.name for s in SCENARIOS.values() if s.freeze_encoder] == ["ae_full_frozen"]
    assert PAPER_GROUPS["figure5"] == ["random", "ae_full", "ae_full_frozen"]
    assert PAPER_GROUPS["figure6"] == ["random", "ae_encoder", "ae_encoder_mask_decoder"]
    assert PAPER_GROUPS["figure7"][0] == "random" and PAPER_GROUPS["figure7"][2] == "resnet50"
    with pytest.raises(ConfigError, match="valid scenarios"):
        get_scenario("imagenet")
    with pytest.raises(Exception):
        SCENARIOS["random"].paper_dice = 1.0  # frozen dataclass


@pytest.mark.parametrize("name", list(EXPECTED))
def test_transfer_exactly_what_is_claimed(name, ae_states):
    torch.manual_seed(0)
    model = build_model(name, CFG, ae_states)
    assert model.scenario == name
    report = transfer_report(model, ae_states, name)
    sd = model.state_dict()
    assert set(report) == set(sd)
    for key, value in sd.items():
        src = EXPECTED[name].get(key.split(".")[0], "random")
        assert report[key] == src, key
        for kind in ("xray", "mask"):
            same = torch.equal(value, ae_states[kind][key])
            assert same == (src == kind), f"{name}: {key} equal to {kind} AE: {same}"
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    if SCENARIOS[name].freeze_encoder:
        assert frozen == {k for k, _ in model.named_parameters() if k.startswith(("encoder.", "bottleneck."))}
    else:
        assert not frozen


def test_missing_autoencoder(ae_states):
    with pytest.raises(WeightsError, match="pneumo pretrain --kind mask"):
        build_model("ae_encoder_mask_decoder", CFG, {"xray": ae_states["xray"]})
    with pytest.raises(WeightsError, match="pneumo pretrain --kind xray"):
        build_model("ae_encoder", CFG, None)
    build_model("random", CFG, None)  # needs none


def test_shape_mismatch_names_key_and_shapes():
    wide = {"xray": random_state(3, base_width=8)}
    with pytest.raises(WeightsError) as ei:
        build_model("ae_encoder", CFG, wide)
    msg = str(ei.value)
    assert "'ae_encoder'" in msg and "encoder.0.0.weight" in msg
    assert "(8, 1, 3, 3)" in msg and "(4, 1, 3, 3)" in msg


def test_norm_mismatch():
    plain = {"xray": random_state(4, norm="none")}
    with pytest.raises(WeightsError, match="ae_full"):
        build_model("ae_full", CFG, plain)


def test_frozen_encoder_really_frozen(ae_states):
    torch.manual_seed(0)
    model = build_model("ae_full_frozen", CFG, ae_states)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()  # as Lightning does each epoch; frozen BN must still not update
    x = torch.randn(4, 1, 32, 32)
    y = (torch.rand(4, 1, 32, 32) > 0.7).float()
    for _ in range(2):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        model.train()
    after = model.state_dict()
    enc = ("encoder.", "bottleneck.")
    for k in before:
        changed = not torch.equal(before[k], after[k])
        if k.startswith(enc):
            assert not changed, f"frozen {k} changed"
        elif k.endswith(("weight", "running_mean", "running_var", "num_batches_tracked")):
            assert changed, f"trainable {k} did not change"
    bns = [m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and n.startswith(enc)]
    assert bns and all(getattr(m, "pneumo_frozen", False) for m in bns)
    model.train()
    apply_frozen_bn_eval(model)
    assert not any(m.training for m in bns)
    assert model.decoder[0].conv[1].training  # the rest trains normally


def test_resnet50_scenario():
    model = build_model("resnet50", CFG, None)
    assert model.weights_source == "none"
    report = transfer_report(model, None, "resnet50")
    assert set(report.values()) == {"random"}
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)
