"""The paper U-Net and the ResNet-50 U-Net: shapes, errors, copy-through, weight loading."""

import time
import warnings

import pytest
import torch
import torch.nn as nn

from pneumolib.errors import ConfigError, WeightsError
from pneumolib.models import parts, resnet
from pneumolib.models import unet as models
from pneumolib.models.parts import count_parameters
from pneumolib.models.resnet import resnet50_unet
from pneumolib.models.unet import UNet


def test_unet_512_same_size():
    torch.manual_seed(0)
    m = UNet(1, 1, base_width=4).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 1, 512, 512))
    assert y.shape == (1, 1, 512, 512)


def test_unet_structure():
    m = UNet(1, 1, base_width=4, norm="batch")
    assert isinstance(m.encoder, nn.ModuleList) and len(m.encoder) == 4
    assert isinstance(m.decoder, nn.ModuleList) and len(m.decoder) == 4
    convs = lambda mod: [c for c in mod.modules() if type(c) is nn.Conv2d]  # noqa: E731
    assert [len(convs(b)) for b in m.encoder] == [3, 3, 3, 3]
    assert [c.out_channels for c in convs(m.encoder[3])] == [32, 32, 32]
    assert convs(m.bottleneck)[-1].out_channels == 64  # 16w
    for blk, c_in in zip(m.decoder, [64, 32, 16, 8]):
        assert isinstance(blk.up, nn.ConvTranspose2d) and blk.up.kernel_size == (2, 2)
        assert (blk.up.in_channels, blk.up.out_channels) == (c_in, c_in // 2)
        assert len(convs(blk.conv)) == 2
    assert m.head.kernel_size == (1, 1)
    keys = m.state_dict().keys()
    prefixes = models.ENCODER_PREFIXES + models.DECODER_PREFIXES
    assert all(k.startswith(prefixes) for k in keys)  # nothing escapes transfer by prefix
    plain = UNet(1, 1, base_width=4, norm="none")
    assert not any(isinstance(x, nn.BatchNorm2d) for x in plain.modules())
    assert count_parameters(plain) != count_parameters(m)


@pytest.mark.parametrize("size", [(500, 512), (512, 40), (8, 8)])
def test_unet_bad_size(size):
    m = UNet(1, 1, base_width=2)
    with pytest.raises(ValueError) as ei:
        m(torch.zeros(1, 1, *size))
    assert isinstance(ei.value, ConfigError)
    msg = str(ei.value)
    assert f"{size[0]}x{size[1]}" in msg and "16" in msg
    if size == (500, 512):
        assert "496 or 512" in msg


def test_zero_top_skip_changes_output():
    torch.manual_seed(0)
    m = UNet(1, 1, base_width=4).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        y = m(x)
        y0 = m(x, zero_skips=(0,))
        assert torch.equal(m(x, zero_skips=()), y)
        m.zero_skips = (0,)
        assert torch.equal(m(x), y0)
        assert torch.equal(m(x, zero_skips=()), y)  # the argument wins over the attribute
    assert not torch.allclose(y, y0)
    with pytest.raises(ValueError):
        m(x, zero_skips=(4,))


def test_zero_skip_is_zero_in_decoder():
    m = UNet(1, 1, base_width=4).eval()
    seen = {}
    m.decoder[3].conv.register_forward_pre_hook(lambda mod, a: seen.update(x=a[0]))
    with torch.no_grad():
        m(torch.randn(1, 1, 32, 32), zero_skips=(0,))
    assert seen["x"].shape == (1, 8, 32, 32)
    assert torch.count_nonzero(seen["x"][:, :4]) == 0  # the skip half, concatenated first


def test_aux_head():
    m = UNet(1, 1, base_width=4, aux_head=True, aux_dropout=0.1).eval()
    seg, cls = m(torch.randn(3, 1, 32, 32))
    assert seg.shape == (3, 1, 32, 32) and cls.shape == (3, 1)


# ---------------------------------------------------------------------------------------
# ResNet-50 U-Net
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(1)
    net = tv.resnet50(weights=None)
    sd = net.state_dict()
    for k, v in sd.items():  # perturb everything, buffers too, so nothing equals a fresh init
        if v.is_floating_point():
            v.add_(torch.randn_like(v) * 0.01 + 0.001)
    path = tmp_path_factory.mktemp("w") / "resnet50-test.pth"
    torch.save(sd, path)
    return path, sd


def _check_loaded(model, sd):
    enc = model.encoder
    assert torch.equal(enc.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    assert torch.equal(enc.layer4[2].bn3.running_var, sd["layer4.2.bn3.running_var"])
    assert enc.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(enc.conv1.weight, sd["conv1.weight"].sum(1, keepdim=True))


def test_resnet50_from_pth(resnet50_file):
    path, sd = resnet50_file
    m = resnet50_unet(in_channels=1, classes=1, encoder_weights=str(path))
    assert m.weights_source == f"file:{path}"
    _check_loaded(m, sd)
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_resnet50_from_safetensors(resnet50_file, tmp_path):
    from safetensors.torch import save_file

    _, sd = resnet50_file
    path = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith("fc.")}, str(path))
    m = resnet50_unet(encoder_weights=path, aux_params=dict(classes=1, dropout=0.2))
    _check_loaded(m, sd)
    seg, cls = m.eval()(torch.randn(2, 1, 64, 64))
    assert seg.shape == (2, 1, 64, 64) and cls.shape == (2, 1)


def test_resnet50_wrong_file(tmp_path):
    tv = pytest.importorskip("torchvision.models")
    path = tmp_path / "resnet18.pth"
    torch.save(tv.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="not a ResNet-50 state dict") as ei:
        resnet50_unet(encoder_weights=str(path))
    assert "missing keys" in str(ei.value) and "layer1.0.conv3.weight" in str(ei.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"):
        resnet50_unet(encoder_weights=str(junk))
    with pytest.raises(WeightsError, match="no such file"):
        resnet50_unet(encoder_weights=str(tmp_path / "absent.pth"))


def test_resnet50_none():
    for spec in (None, "none"):
        m = resnet50_unet(encoder_weights=spec)
        assert m.weights_source == "none" and m.encoder.conv1.in_channels == 1


@pytest.fixture
def no_hub(monkeypatch):
    """Pretend the ImageNet weights are not cached and the hub is unreachable."""
    monkeypatch.setattr(resnet, "_imagenet_cached", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_imagenet_unavailable_fails_fast(no_hub):
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as ei:
        resnet50_unet(encoder_weights="imagenet")
    assert time.perf_counter() - t0 < 10
    msg = str(ei.value)
    assert "allow the download" in msg and "HF_HUB_OFFLINE" in msg
    assert "encoder_weights=/path/to/resnet50-*.pth" in msg and ".safetensors" in msg


def test_imagenet_probe_fails_fast(monkeypatch):
    """Without HF_HUB_OFFLINE, a dead network is detected by a short probe, not by
    huggingface_hub's ~25 s of retries."""
    monkeypatch.setattr(resnet, "_imagenet_cached", lambda: False)
    for v in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)

    def refuse(*a, **k):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(resnet.socket, "create_connection", refuse)
    with pytest.raises(WeightsError, match="network unreachable"):
        resnet50_unet(encoder_weights="imagenet")


def test_imagenet_fallback_random(no_hub, caplog):
    with pytest.warns(RuntimeWarning, match="RANDOM WEIGHTS"):
        m = resnet50_unet(encoder_weights="imagenet", fallback_random=True)
    assert m.weights_source == "random (ImageNet weights unavailable)"
    assert any("RANDOM WEIGHTS" in r.getMessage() for r in caplog.records)


def test_param_counts_small():
    m = UNet(1, 1, base_width=4, norm="none")
    # hand count: 3x3 convs with bias; up-convs 2x2 with bias; 1x1 head
    w = 4
    chans = [1, w, 2 * w, 4 * w, 8 * w, 16 * w]
    n = 0
    for i in range(5):  # 4 encoder blocks + bottleneck, 3 convs each
        c_in, c = chans[i], chans[i + 1]
        n += (c_in * 9 + 1) * c + 2 * (c * 9 + 1) * c
    for c_in in (16 * w, 8 * w, 4 * w, 2 * w):
        c = c_in // 2
        n += (c_in * 4 + 1) * c  # up-conv
        n += (2 * c * 9 + 1) * c + (c * 9 + 1) * c
    n += w + 1
    assert count_parameters(m) == n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = dict(parts.param_counts(base_width=4))
        table = parts.param_table(base_width=4)
    assert rows["U-Net (paper), base width 4, norm=none"] == n
    assert f"{n:,d}" in table and "ResNet-50" in table
