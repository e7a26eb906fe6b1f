"""Speed rows on the GPU: training / evaluation images/s, peak memory, FLOPs; the GPUs and
their TF32 state."""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from pneumolib.config import PROFILES

from .budget import ARCHS, AUTOCAST_DTYPE, OverShare, peak_kind, time_steps


# -- the GPU measurements -----------------------------------------------------------------
@dataclass
class Settings:
    """Sizes and timing of the speed rows (defaults: the ``paper`` profile's model and batch)."""

    size: int = PROFILES["paper"].image_size
    batch_size: int = PROFILES["paper"].batch_size
    base_width: int = PROFILES["paper"].base_width
    unet_norm: str = PROFILES["paper"].unet_norm
    warmup_steps: int = 3
    probe_steps: int = 2
    window_s: float = 1.2
    windows: int = 2
    min_steps: int = 3
    max_steps: int = 40
    eval_window_s: float = 0.8
    epoch_images: int | None = None
    epochs: int = 2
    #: seconds a part needs at least (its share plus what earlier parts left) to be started
    row_min_s: float = 3.0
    epoch_min_s: float = 30.0
    compile_min_s: float = 40.0
    #: seconds kept after the parts' last deadline for the projection, the JSON and the
    #: cleanup, and the margin that no part may use (:func:`pneumolib.commands.gpu.budget.worst_case_s`)
    reserve_s: float = 12.0
    margin_s: float = 8.0


def gpus() -> list[dict[str, Any]]:
    """The visible CUDA devices: index, name, capability, memory (GiB), multiprocessors."""
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count})
    return out


def tf32_state() -> dict[str, Any]:
    """torch's TF32 switches for convolutions and matrix products (the ones this torch has)."""
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, get in (("cudnn_conv_fp32_precision", lambda: torch.backends.cudnn.conv.fp32_precision),
                          ("cuda_matmul_fp32_precision", lambda: torch.backends.cuda.matmul.fp32_precision),
                          ("cudnn_allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
                          ("cuda_matmul_allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32)):
            with contextlib.suppress(Exception):
                out[name] = get()
    return out


def tf32_conv(state: dict[str, Any], capability: tuple[int, int] | None) -> bool:
    """Whether fp32 convolutions run on TF32 tensor cores (Ampere and later, TF32 allowed)."""
    if capability is not None and capability[0] < 8:
        return False
    if "cudnn_conv_fp32_precision" in state:
        return state["cudnn_conv_fp32_precision"] == "tf32"
    return bool(state.get("cudnn_allow_tf32", True))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_arch(arch: str, s: Settings) -> nn.Module:
    """``unet``: the paper U-Net (``s.base_width``, ``s.unet_norm``); ``resnet50``: smp's
    ResNet-50 U-Net with random weights."""
    from pneumolib.models.resnet import resnet50_unet
    from pneumolib.models.unet import UNet

    if arch == "unet":
        return UNet(in_channels=1, out_channels=1, base_width=s.base_width, norm=s.unet_norm)
    if arch == "resnet50":
        return resnet50_unet(in_channels=1, classes=1, encoder_weights=None)
    raise ValueError(f"arch {arch!r} is unknown; valid: {', '.join(ARCHS)}")


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def count_flops(model: nn.Module, size: int, device: torch.device) -> dict[str, int]:
    """FLOPs per image of one training step (forward + backward of BCE + Dice) and of one
    forward pass, by FlopCounterMode (convolutions and matrix products), at batch 2."""
    from torch.utils.flop_counter import FlopCounterMode

    from pneumolib.training.losses import bce_dice_loss

    model = model.to(device).train()
    x = torch.randn(2, 1, size, size, device=device)
    y = (torch.rand(2, 1, size, size, device=device) > 0.97).float()
    with FlopCounterMode(display=False) as fc:
        bce_dice_loss(_logits(model(x)), y).backward()
    train = fc.get_total_flops()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return {"train_per_image": int(train) // 2, "forward_per_image": int(fc.get_total_flops()) // 2}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    return {"allocated": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "reserved": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}


def free_cuda(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def _fill(row: dict[str, Any], kind: str, tm: dict[str, Any], batch_size: int) -> None:
    rates = [batch_size * tm["steps"] / s for s in tm["seconds"]]
    row[f"{kind}_images_per_s"] = round(max(rates), 2)
    row[f"{kind}_images_per_s_windows"] = [round(r, 2) for r in rates]
    row[f"{kind}_steps_per_window"] = tm["steps"]
    row[f"{kind}_warmup_s"] = round(tm["warmup_s"], 3)


def _measure_into(row: dict[str, Any], arch: str, precision: str, channels_last: bool, s: Settings,
                  device: torch.device, compile: bool, eval_too: bool, builder: Callable[[str, Settings], nn.Module],
                  clock: Callable[[], float], stop: Callable[[], bool] | None = None) -> None:
    """Fills ``row`` as it goes (a later out-of-memory keeps the numbers before it)."""
    from pneumolib.commands.bench_train import plain_step

    dtype = AUTOCAST_DTYPE.get(precision)
    torch.manual_seed(0)
    model = builder(arch, s).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()  # in place, as pneumolib.training.trainer.fit does
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    x = torch.randn(s.batch_size, 1, s.size, s.size, device=device)
    y = (torch.rand(s.batch_size, 1, s.size, s.size, device=device) > 0.97).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def train_step() -> None:
        plain_step(model, opt, x, y, dtype, scaler)

    timing: dict[str, Any] = {"warmup": s.warmup_steps, "probe": s.probe_steps, "windows": s.windows,
                              "min_steps": s.min_steps, "max_steps": s.max_steps, "clock": clock, "stop": stop}
    row["phase"] = "train"
    _fill(row, "train", time_steps(train_step, lambda: sync(device), window_s=s.window_s, **timing), s.batch_size)
    row["train_peak_memory_gib"] = (_peak_gib(device) or {}).get("allocated")
    row["train_peak_memory_reserved_gib"] = (_peak_gib(device) or {}).get("reserved")
    opt = scaler = None  # free Adam's state before the evaluation (train_step holds them)
    model.zero_grad(set_to_none=True)
    if not eval_too:
        row.pop("phase", None)
        return
    free_cuda(device)
    _reset_peak(device)
    model.eval()
    row["phase"] = "eval"

    def eval_step() -> None:
        with torch.inference_mode(), _autocast(device, dtype):
            torch.sigmoid(_logits(model(x)).float())

    _fill(row, "eval", time_steps(eval_step, lambda: sync(device), window_s=s.eval_window_s, **timing), s.batch_size)
    row["eval_peak_memory_gib"] = (_peak_gib(device) or {}).get("allocated")
    row.pop("phase", None)


def measure(arch: str, precision: str, channels_last: bool, s: Settings, device: torch.device, *,
            cudnn_benchmark: bool = False, compile: bool = False, eval_too: bool = True,
            builder: Callable[[str, Settings], nn.Module] = build_arch,
            clock: Callable[[], float] = time.perf_counter,
            stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One speed row: training (and evaluation) images/s and peak memory of ``arch`` in
    ``precision`` with channels-last ``channels_last``; an out-of-memory or other failure
    becomes the row's ``error``. ``stop`` is asked after every timed step: when it says True
    the row ends by raising :class:`~pneumolib.commands.gpu.budget.OverShare`."""
    row: dict[str, Any] = {"arch": arch, "precision": precision, "channels_last": bool(channels_last),
                           "cudnn_benchmark": bool(cudnn_benchmark), "compile": bool(compile)}
    t0 = clock()
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    free_cuda(device)
    _reset_peak(device)
    try:
        _measure_into(row, arch, precision, channels_last, s, device, compile, eval_too, builder, clock, stop)
    except OverShare:
        raise
    except Exception as e:  # noqa: BLE001 - a failing configuration is a result, not a crash
        phase = row.pop("phase", "setup")
        if _is_oom(e):
            row["error"] = f"out of memory in {phase}: {str(e).splitlines()[0][:160]}"
            row["oom"] = True
        else:
            row["error"] = f"{type(e).__name__} in {phase}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        peak = _peak_gib(device)
        if peak:
            row[f"{phase}_peak_memory_gib_at_failure"] = peak["allocated"]
    finally:
        torch.backends.cudnn.benchmark = old
    free_cuda(device)
    row["seconds"] = round(clock() - t0, 2)
    return row


def add_flops(row: dict[str, Any], flops: dict[str, int] | None, peaks: dict[str, Any] | None,
              tf32_conv: bool) -> dict[str, Any]:
    """Achieved TFLOP/s of a row and its fraction of the card's peak for its precision."""
    if not flops or not row.get("train_images_per_s"):
        return row
    kind = peak_kind(row["precision"], tf32_conv)
    achieved = flops["train_per_image"] * row["train_images_per_s"]
    row["train_flops_per_image"] = flops["train_per_image"]
    row["achieved_tflops"] = round(achieved / 1e12, 2)
    row["peak_kind"] = kind
    if row.get("eval_images_per_s"):
        row["eval_achieved_tflops"] = round(flops["forward_per_image"] * row["eval_images_per_s"] / 1e12, 2)
    if peaks and peaks.get(kind):
        row["peak_tflops"] = peaks[kind]
        row["fraction_of_peak"] = round(achieved / (peaks[kind] * 1e12), 4)
        if kind == "tf32" and peaks.get("fp32"):
            row["fraction_of_fp32_peak"] = round(achieved / (peaks["fp32"] * 1e12), 4)
    return row
