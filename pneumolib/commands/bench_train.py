"""Training speed: steady-state steps through our LightningModule and Trainer against a
plain PyTorch loop doing the same work (same model, initial weights, batch, loss, Adam,
precision, loader), repeated with the order alternated (see :mod:`pneumolib.commands.bench`).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from typing import Any, Callable

import torch
from torch import nn


# -- helpers ----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


#: The benchmarks' U-Net is the paper's: plain conv + ReLU blocks, no BatchNorm (the
#: ``paper`` profile's ``unet_norm``), unless a caller asks for ``norm="batch"``.
PAPER_NORM = "none"


def build_model(arch: str, base_width: int = 64, norm: str = PAPER_NORM) -> nn.Module:
    """``unet``: the paper's U-Net (``base_width``; ``norm="none"``, the default, its plain
    conv + ReLU blocks, ``"batch"`` with BatchNorm after each conv); ``resnet50``: smp's
    ResNet-50 U-Net (random weights; BatchNorm is part of ResNet, ``norm`` does not apply)."""
    from pneumolib.models.resnet import resnet50_unet
    from pneumolib.models.unet import UNet

    if arch == "unet":
        return UNet(in_channels=1, out_channels=1, base_width=base_width, norm=norm)
    if arch == "resnet50":
        return resnet50_unet(in_channels=1, classes=1, encoder_weights=None)
    raise ValueError(f"arch {arch!r} is unknown; valid: unet, resnet50")


class SyntheticBatches(torch.utils.data.Dataset):
    """``length`` pre-built batches of random tensors shaped like the DataModule's:
    ``{"image": (B,1,S,S) float32, "mask": (B,1,S,S) float32 0/1, "index": (B,) int64}``.
    A few distinct batches are cycled (memory stays small); use with ``batch_size=None``."""

    def __init__(self, length: int, batch_size: int, size: int, distinct: int = 2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.length = int(length)
        self.batches = []
        for k in range(distinct):
            img = torch.randn(batch_size, 1, size, size, generator=g)
            mask = (torch.rand(batch_size, 1, size, size, generator=g) > 0.97).float()
            idx = torch.arange(k * batch_size, (k + 1) * batch_size, dtype=torch.int64)
            self.batches.append({"image": img, "mask": mask, "index": idx})

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batches[i % len(self.batches)]


def _loader(length: int, batch_size: int, size: int, pin: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(SyntheticBatches(length, batch_size, size), batch_size=None,
                                       shuffle=False, num_workers=0, pin_memory=pin)


class _StepTimer:
    """Times steps ``warmup`` .. ``warmup + steps - 1`` of a Lightning fit (a Callback)."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        import pytorch_lightning as pl

        outer = self

        class CB(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx == outer.warmup:
                    sync(outer.device)
                    outer.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if batch_idx == outer.warmup + outer.steps - 1:
                    sync(outer.device)
                    outer.t1 = time.perf_counter()

        self.warmup, self.steps, self.device = warmup, steps, device
        self.t0 = self.t1 = None
        self.callback = CB()

    @property
    def seconds(self) -> float:
        return float(self.t1 - self.t0)  # type: ignore[operator]


def time_lightning(model: nn.Module, batch_size: int, size: int, steps: int, warmup: int,
                   precision: str, device: torch.device,
                   channels_last: bool = False) -> float:
    """Seconds for ``steps`` steady-state training steps of PneumoModule under a Trainer."""
    import logging

    import pytorch_lightning as pl

    from pneumolib.training.module import PneumoModule

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    module = PneumoModule(model, task="seg", lr=1e-4, channels_last=channels_last)
    timer = _StepTimer(warmup, steps, device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
        max_epochs=1, max_steps=warmup + steps, callbacks=[timer.callback], logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1,  # as make_trainer: log every step
        limit_val_batches=0, default_root_dir=tempfile.gettempdir())
    with warnings_quiet():
        trainer.fit(module, train_dataloaders=_loader(warmup + steps, batch_size, size,
                                                      device.type == "cuda"))
    return timer.seconds


def plain_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               dtype: torch.dtype | None, scaler: Any = None) -> None:
    """One step of the benchmarks' plain PyTorch reference loop: BCE + Dice under autocast
    (``dtype`` None: full precision), with ``scaler`` (a GradScaler, for float16) when given.
    A model may return ``(mask logits, class logit)``; the loss uses the mask logits."""
    from pneumolib.models.unet import split_output
    from pneumolib.training.losses import bce_dice_loss

    opt.zero_grad(set_to_none=True)
    ctx = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with ctx:
        loss = bce_dice_loss(split_output(model(x))[0], y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


def time_plain(model: nn.Module, batch_size: int, size: int, steps: int, warmup: int,
               precision: str, device: torch.device, channels_last: bool = False) -> float:
    """Seconds for ``steps`` steady-state steps of a plain loop doing the same work."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    loader = _loader(warmup + steps, batch_size, size, device.type == "cuda")
    t0 = None
    for i, batch in enumerate(loader):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        plain_step(model, opt, x, y, dtype, scaler)
    sync(device)
    return time.perf_counter() - t0  # type: ignore[operator]


@contextlib.contextmanager
def warnings_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def bench_training(arch: str, size: int, batch_size: int, steps: int, warmup: int = 2,
                   repeats: int = 3, base_width: int = 64, precision: str = "32-true",
                   device: str | torch.device | None = None,
                   channels_last: bool = False, norm: str = PAPER_NORM) -> dict[str, Any]:
    """Images/s of Lightning (PneumoModule) vs a plain loop; median of ``repeats``, order
    alternated; each repeat starts from the same initial weights. The result names the
    model it timed (``arch``, ``norm``, ``base_width``, ``size``, ``batch_size``)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    init = build_model(arch, base_width, norm)
    state = {k: v.clone() for k, v in init.state_dict().items()}

    def fresh() -> nn.Module:
        m = build_model(arch, base_width, norm)
        m.load_state_dict(state)
        return m

    contenders: dict[str, Callable[[], float]] = {
        "plain": lambda: time_plain(fresh(), batch_size, size, steps, warmup, precision, device, channels_last),
        "lightning": lambda: time_lightning(fresh(), batch_size, size, steps, warmup, precision, device,
                                            channels_last=channels_last),
    }
    names = list(contenders)
    secs: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            secs[k].append(contenders[k]())
    # best of the repeats: interference from other processes only ever slows a run down
    rate = {k: batch_size * steps / min(v) for k, v in secs.items()}
    rate_median = {k: batch_size * steps / median(v) for k, v in secs.items()}
    out: dict[str, Any] = {
        "arch": arch, "base_width": base_width if arch == "unet" else None,
        "norm": norm if arch == "unet" else "batch (ResNet's own)", "size": size,
        "batch_size": batch_size, "steps_timed": steps, "warmup_steps": warmup, "repeats": repeats,
        "precision": precision, "channels_last": channels_last, "device": str(device),
        "parameters": int(sum(p.numel() for p in init.parameters())),
        "images_per_s": {k: round(v, 3) for k, v in rate.items()},
        "statistic": f"best of {repeats}",
        "images_per_s_median": {k: round(v, 3) for k, v in rate_median.items()},
        "seconds_repeats": {k: [round(s, 4) for s in v] for k, v in secs.items()},
        "ratio_lightning_over_plain": round(rate["lightning"] / rate["plain"], 4),
    }
    out["ratio_lightning_over_plain_median"] = round(rate_median["lightning"] / rate_median["plain"], 4)
    # each repeat times the two back to back, so the ratio within a repeat cancels slow
    # drifts of the machine's speed (both contenders slowing down together over the
    # repeats; seconds_repeats shows how much), which the best-of and the unpaired median do not
    paired = [p / l for p, l in zip(secs["plain"], secs["lightning"])]
    out["ratio_lightning_over_plain_paired"] = [round(r, 4) for r in paired]
    out["ratio_lightning_over_plain_paired_median"] = round(median(paired), 4)
    return out
