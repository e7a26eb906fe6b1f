"""The GPU speed switches of Config (channels_last, cudnn_benchmark, compile) are wired and
harmless on CPU; whether each helps is for `pneumo bench` on a GPU to show."""

from __future__ import annotations

import math

import torch

from pneumolib.config import get_config
from pneumolib.models.unet import UNet
from pneumolib.training.runs import train_scenario
from pneumolib.training.trainer import make_trainer


def test_cudnn_benchmark_reaches_torch(tmp_path):
    old = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        make_trainer(get_config("smoke", cudnn_benchmark=True, accelerator="cpu"), tmp_path, 1, for_eval=True)
        assert torch.backends.cudnn.benchmark is True
        # deterministic wins: benchmark would pick algorithms by timing
        make_trainer(get_config("smoke", cudnn_benchmark=True, deterministic=True, accelerator="cpu"),
                     tmp_path, 1, for_eval=True)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = old


def test_compile_in_place_keeps_checkpoint_keys():
    model = UNet(base_width=4)
    keys = list(model.state_dict())
    model.compile()  # lazy: compiles at the first forward; the module and its keys stay
    assert list(model.state_dict()) == keys


def test_channels_last_trains_to_the_same_kind_of_run(pneumo_env, tmp_path):
    cfg = get_config("smoke", channels_last=True, max_epochs=1, accelerator="cpu")
    out = train_scenario(cfg, "random", out=tmp_path / "cl")
    assert math.isfinite(out["test"]["dice_per_image"]) and math.isfinite(out["val"]["loss"])
    state = torch.load(tmp_path / "cl" / "model.pt", weights_only=True)
    assert set(state) == set(UNet(base_width=cfg.base_width).state_dict())
