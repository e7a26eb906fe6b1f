"""``pneumo bench``: how fast data, training and inference run on this machine.

Four parts, each a function returning plain JSON-able dicts, put together by :func:`run`:

* :func:`bench_data` -- images/s of the memmap-cached :class:`~pneumolib.datamodule.PneumoDataModule`
  against decoding the PNGs each step, with and without the online augmentation. It calls
  the functions of ``benchmarks/bench_data.py`` (``open_data``, ``DecodeEachStep``, ``rate``).
* :func:`bench_training` -- images/s of steady-state training steps through
  :class:`~pneumolib.train.PneumoModule` + Lightning's Trainer against a plain PyTorch loop
  doing the same work (same model, batch, :func:`~pneumolib.train.bce_dice_loss`, Adam,
  precision, data loader), for the paper U-Net and the smp ResNet-50 U-Net. The ratio
  lightning/plain is ``ratio_lightning_over_plain``.
* :func:`bench_inference` -- images per minute of the full predict path on CPU, the one
  ``pneumo predict`` takes (:func:`pneumolib.predict.predict_paths`: read, resize, model,
  post-process, write mask and overlay PNGs and the CSV).
* :func:`bench_cuda` -- only with CUDA: images/s at 512 px for both models in fp32,
  16-mixed and bf16-mixed, with and without channels_last, achieved FLOP/s
  (``torch.utils.flop_counter.FlopCounterMode``) as a fraction of the card's peak, and the
  projected wall time of the ``paper`` profile on one and two GPUs. On CPU it records
  ``{"skipped": "no CUDA"}``.

Timing rules: steady state only (``warmup`` steps are run first and not counted; CUDA is
synchronised at the two ends of the timed window only, so per-step host syncs show up),
each measurement repeated ``repeats`` times with the order of the contenders alternated;
training keeps the best (other processes on the machine only ever slow a run down) and
also reports the median and the median of the per-repeat (paired, back-to-back) ratios,
which cancels slow drifts of the machine's speed; every repeat is in the JSON.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS_CUDA = ("32-true", "16-mixed", "bf16-mixed")

#: Dense peak TFLOP/s by GPU name (first match of the substring wins, so the specific
#: names come first): fp16/bf16 tensor cores, TF32 tensor cores (what fp32 convolutions
#: use on Ampere and later: torch's cudnn.allow_tf32 defaults to True) and plain fp32.
#: Vendor data sheets, without sparsity.
GPU_PEAKS_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 PCIe", {"fp16": 756.0, "bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"fp16": 835.0, "bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("A100", {"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("3090", {"fp16": 71.0, "bf16": 71.0, "tf32": 35.6, "fp32": 35.6}),  # fp32 accumulate
]

#: The ``paper`` profile's work, for the projection: its Table 2 (15,433 train items, val
#: included, taken as the training pass: an upper bound) plus val (10 % of them) and test
#: (1,952) evaluated every epoch, 50 epochs, 8 runs: 6 scenarios (5 paper U-Nets, 1 ResNet-50
#: U-Net) + 2 U-Net autoencoders.
PAPER_WORK = {"train_items": 15433, "val_items": 1543, "test_items": 1952, "epochs": 50,
              "runs_unet": 7, "runs_resnet50": 1, "two_gpu_speedup": 1.9}


# -- helpers ----------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def machine_info() -> dict[str, Any]:
    """Hostname, CPU count, torch threads, GPU name (or None), CUDA."""
    cuda = torch.cuda.is_available()
    return {
        "hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cuda": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def gpu_peaks(name: str | None) -> dict[str, float] | None:
    """Dense peak TFLOP/s of a GPU by name (:data:`GPU_PEAKS_TFLOPS`), None if unknown."""
    if not name:
        return None
    for key, peaks in GPU_PEAKS_TFLOPS:
        if key.lower() in name.lower():
            return {"matched": key, **peaks}  # type: ignore[dict-item]
    return None


def build_model(arch: str, base_width: int = 64) -> nn.Module:
    """``unet`` (the paper's, ``base_width``) or ``resnet50`` (smp, random weights)."""
    from .models import UNet, resnet50_unet

    if arch == "unet":
        return UNet(in_channels=1, out_channels=1, base_width=base_width)
    if arch == "resnet50":
        return resnet50_unet(in_channels=1, classes=1, encoder_weights=None)
    raise ValueError(f"arch {arch!r} is unknown; valid: unet, resnet50")


# -- data -------------------------------------------------------------------------------
def load_bench_data():
    """``benchmarks/bench_data.py`` as a module (it lives beside the package, not in it)."""
    path = ROOT / "benchmarks" / "bench_data.py"
    if "pneumo_bench_data" in sys.modules:
        return sys.modules["pneumo_bench_data"]
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("pneumo_bench_data", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["pneumo_bench_data"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def bench_data(size: int, batch_size: int, n: int, batches: int, work: Path,
               workers: tuple[int, ...] = (0,), repeats: int = 2) -> dict[str, Any]:
    """Images/s of the cached DataModule vs decoding PNGs each step, +/- online augmentation.

    Uses ``benchmarks/bench_data.py``'s ``open_data`` (phantom set), ``rate`` (first batch
    excluded) and ``DecodeEachStep``; ``batches`` batches are timed per configuration.
    """
    bd = load_bench_data()
    if bd is None:
        return {"skipped": "benchmarks/bench_data.py not found (installed without the checkout)"}
    from .config import Config
    from .datamodule import PneumoDataModule
    from .prep import to_uint8
    from .transforms import train_transform

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    source, what, t_write = bd.open_data(work, n, size, False)
    base = Config(image_size=size, batch_size=batch_size, num_workers=0, progress=False,
                  online_aug=False, protocol="clean", seed=0)
    dm = PneumoDataModule(base, source=source, cache_root=work)
    t = time.perf_counter()
    dm.setup()
    t_prep = time.perf_counter() - t
    rows: list[dict[str, Any]] = []

    class DecodeAug(bd.DecodeEachStep):
        """Decode + resize each step, then the same online augmentation as the DataModule."""

        def __init__(self, *a, transform=None, **k):
            super().__init__(*a, **k)
            self.transform = transform

        def __getitem__(self, i: int):
            item = super().__getitem__(i)
            if self.transform is None:
                return item
            img = item["image"][0].numpy() * self.std + self.mean
            out = self.transform(image=to_uint8(np.clip(img, 0, 1)),
                                 mask=item["mask"][0].numpy().astype(np.uint8))
            x = (out["image"].astype(np.float32) / 255.0 - self.mean) / self.std
            return {**item, "image": torch.from_numpy(x)[None],
                    "mask": torch.from_numpy(out["mask"].astype(np.float32))[None]}

    for aug in (False, True):
        for w in workers:
            cfg = base.replace(num_workers=w, online_aug=aug)
            m = PneumoDataModule(cfg, source=source, cache_root=work)
            m.setup()
            runs = [bd.rate(m.train_dataloader(), batches) for _ in range(repeats)]
            rates = [r["images_per_s"] or 0.0 for r in runs]
            rows.append({"loader": "memmap DataModule", "online_aug": aug, "num_workers": w,
                         "images_per_s": _median(rates), "images_per_s_repeats": rates})
            ds = DecodeAug(source, size, dm.mean, dm.std, transform=train_transform(cfg))
            loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=w,
                                                 generator=torch.Generator().manual_seed(0))
            runs = [bd.rate(loader, batches) for _ in range(repeats)]
            rates = [r["images_per_s"] or 0.0 for r in runs]
            rows.append({"loader": "decode PNG each step", "online_aug": aug, "num_workers": w,
                         "images_per_s": _median(rates), "images_per_s_repeats": rates})
    return {"data": what, "n_images": len(source.records), "size": size, "batch_size": batch_size,
            "batches_timed": batches, "seconds_write_data": round(t_write, 2),
            "seconds_prepare": round(t_prep, 2), "rows": rows,
            "memmap_over_decode": {
                f"aug={a}": round(next(r["images_per_s"] for r in rows if r["online_aug"] == a and r["loader"].startswith("memmap"))
                                  / max(next(r["images_per_s"] for r in rows if r["online_aug"] == a and r["loader"].startswith("decode")), 1e-9), 2)
                for a in (False, True)}}


# -- training ---------------------------------------------------------------------------
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
                    _sync(outer.device)
                    outer.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if batch_idx == outer.warmup + outer.steps - 1:
                    _sync(outer.device)
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

    from .train import PneumoModule

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


def time_plain(model: nn.Module, batch_size: int, size: int, steps: int, warmup: int,
               precision: str, device: torch.device, channels_last: bool = False) -> float:
    """Seconds for ``steps`` steady-state steps of a plain loop doing the same work."""
    from .train import bce_dice_loss

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
            _sync(device)
            t0 = time.perf_counter()
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss = bce_dice_loss(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    _sync(device)
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
                   channels_last: bool = False) -> dict[str, Any]:
    """Images/s of Lightning (PneumoModule) vs a plain loop; median of ``repeats``, order
    alternated; each repeat starts from the same initial weights."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    init = build_model(arch, base_width)
    state = {k: v.clone() for k, v in init.state_dict().items()}

    def fresh() -> nn.Module:
        m = build_model(arch, base_width)
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
    rate_median = {k: batch_size * steps / _median(v) for k, v in secs.items()}
    out: dict[str, Any] = {
        "arch": arch, "base_width": base_width if arch == "unet" else None, "size": size,
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
    # drifts of the machine's speed (seen here: both contenders 25 % slower by the last
    # repeat), which the best-of and the unpaired median do not
    paired = [p / l for p, l in zip(secs["plain"], secs["lightning"])]
    out["ratio_lightning_over_plain_paired"] = [round(r, 4) for r in paired]
    out["ratio_lightning_over_plain_paired_median"] = round(_median(paired), 4)
    return out


# -- inference --------------------------------------------------------------------------
def bench_run_folder(model: nn.Module, size: int, base_width: int, folder: Path) -> Path:
    """A minimal run folder (``config.json``, ``model.pt``, ``metrics.json``) holding ``model``
    (a paper U-Net), so that the benchmark times :func:`pneumolib.predict.predict_paths`,
    the path ``pneumo predict`` takes, and nothing hand-made."""
    from .config import get_config
    from .runio import atomic_torch_save, atomic_write_json, atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    cfg = get_config("demo", image_size=size, base_width=base_width)
    atomic_write_text(folder / "config.json", cfg.to_json() + "\n")
    atomic_torch_save(model.state_dict(), folder / "model.pt")
    atomic_write_json(folder / "metrics.json", {"task": "seg", "scenario": "random", "name": "bench",
                                                "data": {"mean": 0.5, "std": 0.25}})
    return folder


def bench_inference(model: nn.Module, size: int, n_images: int, native: int, work: Path,
                    batch_size: int = 8, base_width: int = 16, repeats: int = 2) -> dict[str, Any]:
    """Images per minute of the full predict path on CPU: :func:`pneumolib.predict.predict_paths`
    over a phantom folder of ``native`` px PNGs (read, resize, normalise, U-Net, sigmoid,
    post-process, resize back, write the CSV, a mask PNG and an overlay PNG per image).
    Median of ``repeats`` after one warm-up pass."""
    from .phantom import write_phantom
    from .predict import load_predictor, predict_paths

    work = Path(work)
    root = write_phantom(work / f"infer-phantom-n{n_images}-s{native}", n_images, native, seed=1,
                         workers=0, progress=False)
    images = sorted((root / "png_images").glob("*.png"))[:n_images]
    run = bench_run_folder(model.to("cpu"), size, base_width, work / "infer-run")
    predictor = load_predictor(run, device="cpu")
    out_dir = work / "infer-out"
    predict_paths(images[:batch_size], predictor, out_dir, batch_size=batch_size, progress=False)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        df = predict_paths(images, predictor, out_dir, batch_size=batch_size, progress=False)
        times.append(time.perf_counter() - t0)
    sec = _median(times)
    return {"images": len(images), "ok": int((df["status"] == "ok").sum()), "native_size": native,
            "size": size, "batch_size": batch_size, "device": "cpu", "torch_threads": torch.get_num_threads(),
            "path": "pneumolib.predict.predict_paths (masks and overlays written)",
            "seconds": round(sec, 3), "seconds_repeats": [round(t, 3) for t in times],
            "images_per_min": round(60.0 * len(images) / sec, 1)}


# -- CUDA -------------------------------------------------------------------------------
def count_train_flops(model: nn.Module, batch_size: int, size: int, device: torch.device) -> int:
    """FLOPs of one training step (forward + backward) by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from .train import bce_dice_loss

    model = model.to(device).train()
    x = torch.randn(batch_size, 1, size, size, device=device)
    y = (torch.rand(batch_size, 1, size, size, device=device) > 0.97).float()
    with FlopCounterMode(display=False) as fc:
        bce_dice_loss(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(fc.get_total_flops())


def time_eval(model: nn.Module, batch_size: int, size: int, steps: int, warmup: int, precision: str,
              device: torch.device, channels_last: bool) -> float:
    """Images/s of no-grad forward passes (the per-epoch val/test evaluation)."""
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    x = torch.randn(batch_size, 1, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
            with ctx:
                torch.sigmoid(model(x))
        _sync(device)
    return batch_size * steps / (time.perf_counter() - t0)


def project_paper(rate_train: dict[str, float], rate_eval: dict[str, float],
                  work: dict[str, Any] = PAPER_WORK) -> dict[str, Any]:
    """Wall time of the ``paper`` profile from images/s (keys ``unet`` and ``resnet50``)."""
    per_epoch = {a: work["train_items"] / rate_train[a]
                 + (work["val_items"] + work["test_items"]) / rate_eval[a] for a in rate_train}
    one = work["epochs"] * (work["runs_unet"] * per_epoch["unet"] + work["runs_resnet50"] * per_epoch["resnet50"])
    return {"assumptions": {**work, "note": "every run goes all 50 epochs (no early stop); data "
                            "loading keeps up; two GPUs (DDP) assumed 1.9x one GPU, not measured"},
            "seconds_per_epoch": {a: round(v, 1) for a, v in per_epoch.items()},
            "hours_one_gpu": round(one / 3600, 2), "hours_two_gpus": round(one / work["two_gpu_speedup"] / 3600, 2)}


def bench_cuda(size: int = 512, batch_size: int = 32, steps: int = 20, warmup: int = 5,
               base_width: int = 64, repeats: int = 3) -> dict[str, Any]:
    """GPU training images/s per model x precision x channels_last, FLOP/s vs peak, projection."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peaks = gpu_peaks(name)
    rows = []
    best_train: dict[str, float] = {}
    best_eval: dict[str, float] = {}
    for arch in ("unet", "resnet50"):
        torch.manual_seed(0)
        flops = count_train_flops(build_model(arch, base_width), batch_size, size, device)
        for precision in PRECISIONS_CUDA:
            for cl in (False, True):
                try:
                    secs = [time_plain(build_model(arch, base_width), batch_size, size, steps, warmup,
                                       precision, device, cl) for _ in range(repeats)]
                    rate = batch_size * steps / _median(secs)
                    ev = time_eval(build_model(arch, base_width), batch_size, size, steps, warmup,
                                   precision, device, cl)
                except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - depends on the card
                    rows.append({"arch": arch, "precision": precision, "channels_last": cl,
                                 "error": f"out of memory: {str(e)[:120]}"})
                    torch.cuda.empty_cache()
                    continue
                achieved = flops / batch_size * rate
                kind = {"16-mixed": "fp16", "bf16-mixed": "bf16"}.get(precision, "tf32")
                row = {"arch": arch, "precision": precision, "channels_last": cl,
                       "train_images_per_s": round(rate, 1), "eval_images_per_s": round(ev, 1),
                       "train_flops_per_image": flops // batch_size,
                       "achieved_tflops": round(achieved / 1e12, 2)}
                if peaks:
                    row["peak_kind"] = kind
                    row["fraction_of_peak"] = round(achieved / (peaks[kind] * 1e12), 4)
                    if kind == "tf32":
                        row["fraction_of_fp32_peak"] = round(achieved / (peaks["fp32"] * 1e12), 4)
                rows.append(row)
                if precision == "16-mixed":  # the paper trained in fp16
                    best_train[arch] = max(best_train.get(arch, 0.0), rate)
                    best_eval[arch] = max(best_eval.get(arch, 0.0), ev)
                torch.cuda.empty_cache()
    out: dict[str, Any] = {"gpu": name, "peaks_tflops": peaks, "size": size, "batch_size": batch_size,
                           "steps_timed": steps, "warmup_steps": warmup, "repeats": repeats,
                           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                           "tf32_cudnn": torch.backends.cudnn.allow_tf32, "rows": rows,
                           "loop": "plain PyTorch loop (same work as the Lightning module)"}
    if len(best_train) == 2:
        out["paper_projection_16_mixed"] = project_paper(best_train, best_eval)
    return out


# -- everything -------------------------------------------------------------------------
def settings_for(size: int, batch_size: int, steps: int | None, quick: bool, on_cuda: bool) -> dict[str, Any]:
    """The sizes each part runs at. CPU training runs small (full size takes minutes per step)."""
    if quick:
        s = {"data_size": size, "data_n": 200, "data_batch": batch_size,
             "data_batches": 4, "train_size": 128, "train_base_width": 16, "train_batch": 8,
             "train_steps": steps or 5, "resnet_size": 64, "resnet_batch": 8,
             "warmup": 2, "repeats": 5, "infer_n": 32, "infer_native": size, "infer_size": 256,
             "infer_base_width": 16}
    else:
        s = {"data_size": size, "data_n": 600, "data_batch": batch_size, "data_batches": 10,
             "train_size": size if on_cuda else 256, "train_base_width": 64 if on_cuda else 16,
             "train_batch": batch_size if on_cuda else 8, "train_steps": steps or (30 if on_cuda else 8),
             "resnet_size": size if on_cuda else 256, "resnet_batch": batch_size if on_cuda else 8,
             "warmup": 5 if on_cuda else 2, "repeats": 3, "infer_n": 64, "infer_native": size,
             "infer_size": size, "infer_base_width": 64}
    return s


def run(size: int = 512, batch_size: int = 32, steps: int | None = None, quick: bool = False,
        out: Path | str | None = None, work: Path | str | None = None,
        settings: dict[str, Any] | None = None, parts: tuple[str, ...] = ("data", "training", "inference", "cuda"),
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark parts, write ``<out>/<hostname>-<date>.json`` and return the result."""
    from . import paths
    from .runio import atomic_write_json, package_versions

    on_cuda = torch.cuda.is_available()
    s = settings or settings_for(size, batch_size, steps, quick, on_cuda)
    work = Path(work) if work else paths.cache_dir() / "bench"
    res: dict[str, Any] = {
        "command": "pneumo bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
        "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
        "versions": package_versions(),
        "settings": {"size": size, "batch_size": batch_size, "steps": steps, "quick": quick, **s},
    }
    t_all = time.perf_counter()
    if "data" in parts:
        echo("data loading ...")
        res["data"] = bench_data(s["data_size"], s["data_batch"], s["data_n"], s["data_batches"], work,
                                 repeats=2)
    if "training" in parts:
        res["training"] = {}
        for arch, sz, bs in (("unet", s["train_size"], s["train_batch"]),
                             ("resnet50", s["resnet_size"], s["resnet_batch"])):
            echo(f"training {arch} ...")
            res["training"][arch] = bench_training(
                arch, sz, bs, s["train_steps"], warmup=s["warmup"], repeats=s["repeats"],
                base_width=s["train_base_width"], precision="16-mixed" if on_cuda else "32-true")
        res["ratio_lightning_over_plain"] = {a: r["ratio_lightning_over_plain"] for a, r in res["training"].items()}
    if "inference" in parts:
        echo("inference ...")
        torch.manual_seed(0)
        res["inference"] = bench_inference(build_model("unet", s["infer_base_width"]), s["infer_size"],
                                           s["infer_n"], s["infer_native"], work,
                                           base_width=s["infer_base_width"])
        res["inference"]["model"] = f"paper U-Net, base width {s['infer_base_width']}"
    if "cuda" in parts:
        if on_cuda:
            echo("CUDA ...")
        res["cuda"] = bench_cuda(size=size, batch_size=batch_size, steps=s.get("cuda_steps", 20),
                                 base_width=64)
    res["seconds_total"] = round(time.perf_counter() - t_all, 1)
    res["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out_dir = Path(out) if out else ROOT / "benchmarks" / "results"
    path = out_dir / f"{socket.gethostname()}-{dt.date.today().isoformat()}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, res)
    res["_path"] = str(path)
    return res


def format_table(res: dict[str, Any]) -> str:
    """The result as a plain-text table."""
    lines = []
    m = res["machine"]
    lines.append(f"machine: {m['hostname']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, "
                 f"GPU {m['gpu'] or 'none'}; torch {res['versions'].get('torch')}, "
                 f"lightning {res['versions'].get('pytorch-lightning')}")
    row = "{:<44} {:>14}  {}"
    lines.append(row.format("measurement", "rate", "notes"))
    lines.append("-" * 96)
    d = res.get("data", {})
    if "rows" in d:
        for r in d["rows"]:
            lines.append(row.format(f"data: {r['loader']}, aug={r['online_aug']}, workers={r['num_workers']}",
                                    f"{r['images_per_s']:.1f} img/s", f"{d['size']} px, batch {d['batch_size']}"))
    elif d:
        lines.append(row.format("data", "-", d.get("skipped", "")))
    for arch, t in res.get("training", {}).items():
        what = f"{arch}" + (f" w{t['base_width']}" if t["base_width"] else "")
        note = f"{t['size']} px, batch {t['batch_size']}, {t['precision']}, {t['device']}"
        for k, v in t["images_per_s"].items():
            lines.append(row.format(f"train {what}: {k}", f"{v:.2f} img/s", note))
        lines.append(row.format(f"train {what}: ratio lightning/plain", f"{t['ratio_lightning_over_plain']:.3f}",
                                f"best of {t['repeats']}; median {t.get('ratio_lightning_over_plain_median', '-')}; "
                                f"paired median {t.get('ratio_lightning_over_plain_paired_median', '-')}"))
    inf = res.get("inference")
    if inf:
        lines.append(row.format("inference: pneumo predict path, CPU", f"{inf['images_per_min']:.0f} img/min",
                                f"{inf['images']} x {inf['native_size']} px -> {inf['size']} px, "
                                f"{inf['model']}, cpu"))
    c = res.get("cuda", {})
    if "skipped" in c:
        lines.append(row.format("CUDA: 512 px precisions, FLOP/s, projection", "skipped", c["skipped"]))
    else:
        for r in c.get("rows", []):
            if "error" in r:
                lines.append(row.format(f"cuda {r['arch']} {r['precision']} cl={r['channels_last']}", "-", r["error"]))
                continue
            frac = f", {100 * r['fraction_of_peak']:.1f} % of {r['peak_kind']} peak" if "fraction_of_peak" in r else ""
            lines.append(row.format(f"cuda {r['arch']} {r['precision']} cl={r['channels_last']}",
                                    f"{r['train_images_per_s']:.1f} img/s",
                                    f"{r['achieved_tflops']} TFLOP/s{frac}; eval {r['eval_images_per_s']:.0f} img/s"))
        p = c.get("paper_projection_16_mixed")
        if p:
            lines.append(row.format("paper profile projection (16-mixed)", f"{p['hours_one_gpu']:.1f} h",
                                    f"one GPU; two GPUs {p['hours_two_gpus']:.1f} h (assumed 1.9x)"))
    return "\n".join(lines)


def main(size: int = 512, batch_size: int = 32, steps: int | None = None, quick: bool = False,
         out: str | None = None) -> int:
    res = run(size=size, batch_size=batch_size, steps=steps, quick=quick, out=out)
    print()
    print(format_table(res))
    print(f"\nwrote {res['_path']}")
    return 0
