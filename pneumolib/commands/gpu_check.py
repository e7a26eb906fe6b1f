"""The GPU part of the benchmark: training and evaluation speed at 512 px per model,
precision and memory format, achieved FLOP/s against the card's peak, and the projected
wall time of the ``paper`` profile. Needs CUDA.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch import nn

from .bench_train import build_model, median, sync, time_plain

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


def gpu_peaks(name: str | None) -> dict[str, float] | None:
    """Dense peak TFLOP/s of a GPU by name (:data:`GPU_PEAKS_TFLOPS`), None if unknown."""
    if not name:
        return None
    for key, peaks in GPU_PEAKS_TFLOPS:
        if key.lower() in name.lower():
            return {"matched": key, **peaks}  # type: ignore[dict-item]
    return None


def count_train_flops(model: nn.Module, batch_size: int, size: int, device: torch.device) -> int:
    """FLOPs of one training step (forward + backward) by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from pneumolib.training.losses import bce_dice_loss

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
                sync(device)
                t0 = time.perf_counter()
            ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
            with ctx:
                torch.sigmoid(model(x))
        sync(device)
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
                    rate = batch_size * steps / median(secs)
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
