"""The six scenarios (and the extras): what each one transfers, freezing, and the errors."""

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pneumolib.config import Config
from pneumolib.errors import ConfigError, WeightsError
from pneumolib.models.parts import apply_frozen_bn_eval
from pneumolib.models.scenarios import (
    ALL_SCENARIOS,
    EXTRA_SCENARIOS,
    PAPER_GROUPS,
    SCENARIOS,
    Scenario,
    build_model,
    get_scenario,
    transfer_report,
)
from pneumolib.models.unet import UNet

CFG = Config(base_width=4, image_size=32, encoder_weights="none")
SMALL_RESNET = CFG.replace(resnet_encoder="resnet18")  # same smp code path, 4x fewer weights

# Written out by hand (not derived from the registry), top-level module -> source.
EXPECTED = {
    "random": {},
    "ae_full": {"encoder": "xray", "bottleneck": "xray", "decoder": "xray", "head": "xray"},
    "ae_full_frozen": {"encoder": "xray", "bottleneck": "xray", "decoder": "xray", "head": "xray"},
    "ae_encoder": {"encoder": "xray", "bottleneck": "xray"},
    "ae_encoder_mask_decoder": {"encoder": "xray", "bottleneck": "xray", "decoder": "mask", "head": "mask"},
}
EXPECTED_EXTRA = {
    "genesis_full": {"encoder": "genesis", "bottleneck": "genesis", "decoder": "genesis", "head": "genesis"},
    "genesis_encoder": {"encoder": "genesis", "bottleneck": "genesis"},
    "noskip_encoder": {"encoder": "xray_noskip", "bottleneck": "xray_noskip"},
    "random_cls": {},
}
KINDS = ("xray", "mask", "genesis", "xray_noskip")


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
    return {"xray": random_state(1), "mask": random_state(2), "genesis": random_state(3),
            "xray_noskip": random_state(4)}


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


@pytest.mark.parametrize("name", list(EXPECTED) + list(EXPECTED_EXTRA))
def test_transfer_exactly_what_is_claimed(name, ae_states):
    torch.manual_seed(0)
    model = build_model(name, CFG, ae_states)
    assert model.scenario == name
    report = transfer_report(model, ae_states, name)
    sd = model.state_dict()
    assert set(report) == set(sd)
    expected = {**EXPECTED, **EXPECTED_EXTRA}[name]
    for key, value in sd.items():
        src = expected.get(key.split(".")[0], "random")
        if key == "head.bias" and CFG.head_prior:
            # the head's bias always starts at the prior's log-odds, transferred or not
            src = "prior"
            assert value.item() == pytest.approx(math.log(CFG.head_prior / (1 - CFG.head_prior)))
        assert report[key] == src, key
        for kind in KINDS:
            same = key in ae_states[kind] and torch.equal(value, ae_states[kind][key])
            assert same == (src == kind), f"{name}: {key} equal to {kind} AE: {same}"
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    if ALL_SCENARIOS[name].freeze_encoder:
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
    assert set(report.values()) == {"random", "prior"}
    assert [k for k, v in report.items() if v == "prior"] == ["segmentation_head.0.bias"]
    off = build_model("resnet50", CFG.replace(head_prior=0.0), None)
    assert set(transfer_report(off, None, "resnet50").values()) == {"random"}
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)


# ---------------------------------------------------------------------------------------
# Scenarios beyond the paper
# ---------------------------------------------------------------------------------------
def test_extra_registry():
    from pneumolib.cli import SCENARIO_NAMES, build_parser

    assert list(EXTRA_SCENARIOS) == ["genesis_full", "genesis_encoder", "noskip_encoder", "random_cls"]
    assert ALL_SCENARIOS == {**SCENARIOS, **EXTRA_SCENARIOS} and len(SCENARIOS) == 6
    assert not set(SCENARIOS) & set(EXTRA_SCENARIOS)
    assert set(SCENARIO_NAMES) == set(ALL_SCENARIOS)  # the CLI accepts every one
    for name, sc in EXTRA_SCENARIOS.items():
        assert get_scenario(name) is sc and sc.label and sc.arch == "unet"
        assert math.isnan(sc.paper_dice) and math.isnan(sc.paper_iou)
        assert not sc.freeze_encoder
    assert EXTRA_SCENARIOS["genesis_full"].needs == {"genesis"}
    assert EXTRA_SCENARIOS["genesis_encoder"].needs == {"genesis"}
    assert EXTRA_SCENARIOS["noskip_encoder"].needs == {"xray_noskip"}
    assert EXTRA_SCENARIOS["random_cls"].needs == set()
    assert [s.name for s in ALL_SCENARIOS.values() if s.cls_head] == ["random_cls"]
    args = build_parser().parse_args(["pretrain", "--kind", "genesis"])
    assert args.kind == "genesis"
    assert build_parser().parse_args(["pretrain", "--kind", "xray_noskip"]).kind == "xray_noskip"
    with pytest.raises(ConfigError, match="xray_noskip"):
        Scenario("x", "x", "unet", "imagenet", None, False, 0.0, 0.0)
    with pytest.raises(ConfigError, match="random_cls"):
        get_scenario("nope")
    with pytest.raises(WeightsError, match="pneumo pretrain --kind genesis"):
        build_model("genesis_encoder", CFG, {"xray": random_state(1)})


def test_cls_head_outputs_and_plain_models_stay_plain():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    model = build_model("random_cls", CFG, None).eval()
    with torch.no_grad():
        seg, cls = model(x)
        assert seg.shape == (2, 1, 32, 32) and cls.shape == (2, 1)
        assert isinstance(build_model("random", CFG, None).eval()(x), torch.Tensor)
        assert isinstance(build_model("resnet50", SMALL_RESNET, None).eval()(x), torch.Tensor)
    report = transfer_report(model, None, "random_cls")
    assert {k for k in report if k.startswith("aux.")} and set(report.values()) == {"random", "prior"}
    # the head also exists for the smp model (aux_params); still random, nothing transferred
    sc = Scenario("r50_cls", "ResNet + head", "resnet50", None, None, False, math.nan, math.nan, cls_head=True)
    r50 = build_model(sc, SMALL_RESNET, None).eval()
    with torch.no_grad():
        seg, cls = r50(x)
    assert seg.shape == (2, 1, 32, 32) and cls.shape == (2, 1)


def test_cls_head_loss_adds_weighted_bce():
    import torch.nn.functional as F

    from pneumolib.training.losses import bce_dice_loss
    from pneumolib.training.module import CLS_WEIGHT, PneumoModule

    module = PneumoModule(build_model("random_cls", CFG, None), task="seg")
    assert module.cls_weight == CLS_WEIGHT == 0.5
    logits = torch.randn(3, 1, 32, 32)
    target = torch.zeros(3, 1, 32, 32)
    target[1, 0, 4:8, 4:8] = 1
    cls = torch.tensor([[0.3], [-1.0], [2.0]])
    want = bce_dice_loss(logits, target) + 0.5 * F.binary_cross_entropy_with_logits(
        cls.reshape(-1), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(module._loss(logits, target, cls), want)
    assert torch.allclose(module._loss(logits, target), bce_dice_loss(logits, target))


def test_random_cls_trains_and_writes_score_and_pixel_max(pneumo_env):
    from pneumolib import cli

    res = Path(pneumo_env["PNEUMO_HOME"]) / "results" / "smoke"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("random_cls", "random"):
            assert cli.main(["train", "--scenario", name, "--profile", "smoke", "--max-epochs", "1"]) == 0
    cls_run, plain_run = res / "random_cls", res / "random"
    m = json.loads((cls_run / "metrics.json").read_text())
    assert m["scenario"] == "random_cls" and m["cls_head"]["cls_weight"] == 0.5
    assert "auc_pixel_max" in m["test"]
    epochs = pd.read_csv(cls_run / "epochs.csv")
    assert len(epochs) == 1 and epochs[["train_loss", "val_loss"]].notna().all().all()
    for split in ("val", "test"):
        per = pd.read_csv(cls_run / f"{split}_per_image.csv")
        assert {"score", "pixel_max"} <= set(per.columns)
        assert per["score"].between(0, 1).all() and per["pixel_max"].between(0, 1).all()
        assert not per["score"].equals(per["pixel_max"])  # the score is the head's
    plain = pd.read_csv(plain_run / "test_per_image.csv")
    assert list(plain.columns) == ["index", "intersection", "pred_area", "true_area", "score", "pixel_max",
                                   "src", "image_id", "has_pneumo", "aug"]
    assert (plain["score"] == plain["pixel_max"]).all()
    assert "auc_pixel_max" not in json.loads((plain_run / "metrics.json").read_text())["test"]
