"""``pneumo bench --gpu``: the prepared GPU check, one JSON within a time budget.

What it measures, in priority order (each part is skipped, with the reason recorded, when
the budget left is too small for it, so the JSON is always written within the budget):

1. ``core``: training and evaluation speed of the paper U-Net (base width 64, ``norm="none"``,
   as the ``paper`` profile) and the smp ResNet-50 U-Net (random weights) at 512 px, batch 32,
   in ``16-mixed`` (the paper's fp16 and the CUDA default), channels-last off.
2. ``epoch``: one short real training run of the ``paper`` profile (``pneumo train --scenario
   random --profile paper``, a subprocess, all visible GPUs) on a 512 px phantom written in
   the ``siim-dicom`` layout (``pneumo data phantom --layout siim-dicom``): images/s of whole
   epochs, data loading, Lightning and the per-epoch val + test evaluation included.
3. ``rows``: channels-last on, and ``bf16-mixed`` off and on.
4. ``epoch_1gpu`` (only with several GPUs visible): the same epoch on one GPU, which makes
   the multi-GPU speed-up a measured number.
5. for the U-Net (7 of the profile's 8 runs), at the recommended precision / memory format:
   ``cudnn``, ``torch.backends.cudnn.benchmark`` off and on, back to back; and ``compile``,
   ``model.compile()`` in a subprocess with a hard timeout (compiling can take a minute;
   skipped with a reason when less than ``Settings.compile_min_s`` is left).
6. ``rows`` of ``32-true`` (the numerical reference), then 5 for the ResNet-50.

Every speed row: training images/s (steady state: warm-up steps first, then timed windows
with CUDA synchronised only at the two ends of each window; the best of the windows), peak
GPU memory (``torch.cuda.max_memory_allocated``, reset per measurement), achieved TFLOP/s
(FLOPs of one training step by ``torch.utils.flop_counter.FlopCounterMode``: convolutions
and matrix products, forward + backward) as a fraction of the card's dense peak for the
precision's tensor-core kind (:data:`GPU_PEAKS_TFLOPS`), and no-grad evaluation images/s.
Out of memory is a recorded row, not a crash.

Then the projected wall time of the whole ``paper`` profile (:func:`project_paper`) and the
``recommendations`` for the GPU switches of :class:`pneumolib.config.Config`
(:func:`recommend`). On a machine without CUDA, :func:`main` refuses with exit status 2 and
writes nothing.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pneumolib.errors import ConfigError, PneumoError

SCHEMA = "pneumolib.gpu_check/1"
ARCHS = ("unet", "resnet50")
PRECISIONS_CUDA = ("32-true", "16-mixed", "bf16-mixed")
AUTOCAST_DTYPE = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}

#: What ``precision="auto"`` (the Config default) means on CUDA
#: (:func:`pneumolib.training.trainer.resolve_precision`).
CUDA_DEFAULT_PRECISION = "16-mixed"

#: A switch's default should change only for a projected gain above this: smaller gains are
#: within what two windows of the same measurement differ by on a shared machine.
SWITCH_GAIN_THRESHOLD = 0.03

#: Assumed DDP scaling when it is not measured: each GPU adds 95 % of one GPU (2 GPUs: 1.9x).
ASSUMED_DDP_EFFICIENCY = 0.95

#: Parts that ``--skip`` accepts.
SKIPPABLE = ("epoch", "rows", "epoch_1gpu", "cudnn", "compile", "resnet50", "32-true")


#: Dense peak TFLOP/s by GPU name (the first key found in the name as a whole word wins, so
#: the specific names come first): fp16/bf16 tensor cores with fp32 accumulation (what
#: autocast uses), TF32 tensor cores (what fp32 convolutions use on Ampere and later: torch's
#: ``cudnn.conv.fp32_precision`` is ``tf32`` by default) and plain fp32. Vendor data sheets,
#: without sparsity. A missing kind (V100, T4: no bf16, no TF32) has no fraction.
GPU_PEAKS_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200 NVL", {"fp16": 835.5, "bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200", {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("H100 PCIe", {"fp16": 756.0, "bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"fp16": 835.5, "bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("A100", {"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A10", {"fp16": 125.0, "bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("L40S", {"fp16": 362.1, "bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"fp16": 121.0, "bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("4090", {"fp16": 165.2, "bf16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("3090", {"fp16": 71.0, "bf16": 71.0, "tf32": 35.6, "fp32": 35.6}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # SXM2
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
]


#: The ``paper`` profile's work, for the projection. Items: the paper's Table 2 (17,385
#: images after its augmentation: 15,433 train + val, 1,952 test); pneumolib carves val out
#: of the 15,433 with ``val_frac`` = 0.1, so an epoch trains on 13,890 and evaluates 1,543
#: val + 1,952 test. Runs: 7 of the paper U-Net (the scenarios ``random``, ``ae_full``,
#: ``ae_full_frozen``, ``ae_encoder``, ``ae_encoder_mask_decoder`` and the two autoencoders
#: ``ae_xray``, ``ae_mask``) + 1 of the ResNet-50 U-Net (scenario ``resnet50``); each for
#: ``epochs`` epochs (no early stop: an upper bound) and one more val + test pass of its best
#: checkpoint.
PAPER_WORK: dict[str, Any] = {"train_val_items": 15433, "val_frac": 0.1, "test_items": 1952, "epochs": 50,
                              "runs_unet": 7, "runs_resnet50": 1}


class NoCudaError(PneumoError):
    """``pneumo bench --gpu`` on a machine without CUDA."""


# -- pure parts: peaks, budget, timing windows, projection, recommendations -------------------
def gpu_peaks(name: str | None) -> dict[str, Any] | None:
    """Dense peak TFLOP/s of a GPU by name (:data:`GPU_PEAKS_TFLOPS`) with the key that
    matched, or None if the card is not in the table."""
    if not name:
        return None
    for key, peaks in GPU_PEAKS_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name, flags=re.IGNORECASE):
            return {"matched": key, **peaks}
    return None


def peak_kind(precision: str, tf32_conv: bool) -> str:
    """The peak a precision's convolutions run against: ``fp16``, ``bf16``, ``tf32`` (fp32
    convolutions on tensor cores, Ampere and later with TF32 allowed) or ``fp32``."""
    if precision in ("16-mixed", "16-true", "16"):
        return "fp16"
    if precision in ("bf16-mixed", "bf16-true", "bf16"):
        return "bf16"
    return "tf32" if tf32_conv else "fp32"


class Budget:
    """A deadline: ``seconds`` from ``clock()`` at creation (minus ``already_used_s``), of
    which the last ``reserve_s`` are kept for writing the JSON and the summary."""

    def __init__(self, seconds: float, reserve_s: float = 12.0, clock: Callable[[], float] = time.monotonic,
                 already_used_s: float = 0.0):
        self.seconds, self.reserve_s, self.clock = float(seconds), float(reserve_s), clock
        self.t0 = clock() - float(already_used_s)

    def used(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        """Seconds to the deadline."""
        return self.seconds - self.used()

    def usable(self) -> float:
        """Seconds a part may still take (the reserve kept back)."""
        return self.left() - self.reserve_s

    def allows(self, need_s: float) -> bool:
        return self.usable() >= need_s

    def why_not(self, need_s: float) -> str:
        return (f"needs about {need_s:.0f} s, {max(self.usable(), 0.0):.0f} s of the {self.seconds:.0f} s "
                f"budget left (after {self.reserve_s:.0f} s kept for writing the JSON)")


def time_steps(step: Callable[[], Any], sync: Callable[[], None], warmup: int = 3, probe: int = 2,
               window_s: float = 1.2, windows: int = 2, min_steps: int = 3, max_steps: int = 40,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Steady-state timing of ``step``: ``warmup`` steps, then ``probe`` steps to size the
    window (``window_s`` / step time, within [min_steps, max_steps]), then ``windows`` timed
    windows of that many steps. ``sync`` (CUDA synchronise) is called only at the ends of the
    warm-up, the probe and each window, never between the steps of a window."""
    t = clock()
    for _ in range(warmup):
        step()
    sync()
    t_warm = clock()
    for _ in range(probe):
        step()
    sync()
    t_probe = clock()
    per = (t_probe - t_warm) / probe if probe else 0.0
    n = int(min(max_steps, max(min_steps, round(window_s / per) if per > 0 else max_steps)))
    secs = []
    for _ in range(windows):
        t0 = clock()
        for _ in range(n):
            step()
        sync()
        secs.append(clock() - t0)
    return {"steps": n, "seconds": secs, "warmup_steps": warmup, "warmup_s": t_warm - t, "probe_step_s": per}


def paper_items(work: dict[str, Any] = PAPER_WORK) -> dict[str, int]:
    """Items per epoch of the ``paper`` profile: train, val, test."""
    val = int(round(work["train_val_items"] * work["val_frac"]))
    return {"train": int(work["train_val_items"]) - val, "val": val, "test": int(work["test_items"])}


def _runs(work: dict[str, Any]) -> dict[str, int]:
    return {"unet": int(work["runs_unet"]), "resnet50": int(work["runs_resnet50"])}


def compute_seconds(rate_train: dict[str, float], rate_eval: dict[str, float], archs=ARCHS,
                    work: dict[str, Any] = PAPER_WORK) -> float:
    """Seconds of the ``paper`` profile's runs of ``archs`` at the given one-GPU images/s:
    per run ``epochs`` x (train pass + val/test pass) + one val/test pass of the best model."""
    items = paper_items(work)
    ev = items["val"] + items["test"]
    total = 0.0
    for a in archs:
        per_epoch = items["train"] / rate_train[a] + ev / rate_eval[a]
        total += _runs(work)[a] * (work["epochs"] * per_epoch + ev / rate_eval[a])
    return total


def epoch_compute_seconds(n_items: dict[str, int], rate_train: float, rate_eval: float) -> float:
    """One epoch of ``n_items`` (train / val / test) at one-GPU compute rates."""
    return n_items["train"] / rate_train + (n_items.get("val", 0) + n_items.get("test", 0)) / rate_eval


def project_paper(rate_train: dict[str, float], rate_eval: dict[str, float], work: dict[str, Any] = PAPER_WORK,
                  end_to_end: dict[int, float] | None = None, visible_gpus: int = 1) -> dict[str, Any]:
    """Projected wall time of the whole ``paper`` profile.

    Args:
        rate_train, rate_eval: one-GPU training / evaluation images/s of ``unet`` and
            ``resnet50`` (the plain-loop measurements: compute only).
        end_to_end: per device count, the measured factor ``one-GPU compute time of an epoch /
            measured time of the same epoch on that many GPUs`` (from the ``epoch`` part);
            it folds in data loading, Lightning, evaluation overheads and DDP scaling.
        visible_gpus: GPUs on this machine; hours are given for 1, 2 (the paper's) and this.
    """
    end_to_end = {int(k): float(v) for k, v in (end_to_end or {}).items() if v and v > 0}
    items = paper_items(work)
    comp = compute_seconds(rate_train, rate_eval, ARCHS, work)
    per_epoch = {a: round(epoch_compute_seconds(items, rate_train[a], rate_eval[a]), 1) for a in ARCHS}
    gpus: dict[str, Any] = {}
    f1 = end_to_end.get(1)
    for n in sorted({1, 2, max(1, int(visible_gpus))}):
        if n in end_to_end:
            factor = end_to_end[n]
            src = (f"measured: a paper-profile epoch on {n} GPU{'s' if n > 1 else ''} ran at {factor:.3f}x "
                   "the one-GPU compute-only rate (data loading, Lightning, evaluation"
                   + (", DDP)" if n > 1 else ")"))
        elif n > 1 and f1:
            factor = f1 * ASSUMED_DDP_EFFICIENCY * n
            src = (f"one-GPU end-to-end factor {f1:.3f} measured; {n}-GPU speed-up {ASSUMED_DDP_EFFICIENCY * n:.2f}x "
                   f"assumed ({ASSUMED_DDP_EFFICIENCY:.0%} per GPU), not measured")
        elif n > 1:
            factor = ASSUMED_DDP_EFFICIENCY * n
            src = (f"assumed: {ASSUMED_DDP_EFFICIENCY * n:.2f}x ({ASSUMED_DDP_EFFICIENCY:.0%} per GPU), compute only "
                   "(no end-to-end epoch measured)")
        else:
            factor = 1.0
            src = "assumed 1.0: compute only, no end-to-end epoch on one GPU measured (a lower bound)"
        entry = {"hours": round(comp / factor / 3600, 2), "factor_over_one_gpu_compute": round(factor, 4),
                 "factor_source": src}
        if n > 1 and n in end_to_end and f1:
            entry["measured_speedup_over_one_gpu"] = round(end_to_end[n] / f1, 3)
        gpus[str(n)] = entry
    return {
        "work": {**work, "items_per_epoch": items},
        "rates_images_per_s": {"train": {a: rate_train[a] for a in ARCHS}, "eval": {a: rate_eval[a] for a in ARCHS}},
        "compute_seconds_per_epoch_one_gpu": per_epoch,
        "hours_compute_only_one_gpu": round(comp / 3600, 2),
        "gpus": gpus,
        "hours_one_gpu": gpus["1"]["hours"], "hours_two_gpus": gpus["2"]["hours"],
        "hours_visible_gpus": gpus[str(max(1, int(visible_gpus)))]["hours"], "visible_gpus": int(visible_gpus),
        "measured": "one-GPU training and evaluation images/s of both models (plain loop, inputs on the GPU); "
                    + ("end-to-end epoch factors for " + ", ".join(f"{n} GPU(s)" for n in sorted(end_to_end))
                       if end_to_end else "no end-to-end epoch"),
        "assumed": "every run goes all epochs (no early stop: an upper bound); frozen-encoder runs cost as much "
                   "as full ones (an upper bound); the autoencoders cost as much as segmentation; the U-Net's "
                   "end-to-end factor holds for the ResNet-50 run too; device counts not measured scale as given; "
                   "checkpoint writes between epochs (about 0.5 GB per checkpoint for the U-Net with Adam state) "
                   "are not counted",
    }


def _train_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in res.get("rows", []) if r.get("train_images_per_s")]


def _plain_rate(res: dict[str, Any], arch: str, precision: str, cl: bool | None) -> dict[str, Any] | None:
    """The measured row (no cudnn benchmark, no compile) of ``arch`` / ``precision`` and
    memory format ``cl`` (None: the faster of the two)."""
    cands = [r for r in _train_rows(res) if r["arch"] == arch and r["precision"] == precision
             and not r.get("cudnn_benchmark") and not r.get("compile") and r.get("eval_images_per_s")
             and (cl is None or bool(r["channels_last"]) == cl)]
    return max(cands, key=lambda r: r["train_images_per_s"]) if cands else None


def _choose(values: list[Any], rows_for: Callable[[str, Any], dict[str, Any] | None], default: Any,
            work: dict[str, Any] = PAPER_WORK, threshold: float = SWITCH_GAIN_THRESHOLD) -> dict[str, Any]:
    """Compare a switch's ``values`` by the projected compute hours of the paper profile.

    ``rows_for(arch, value)`` gives the measured row (train and eval images/s). The models
    measured at every value are used (both: the whole profile; one: its runs only)."""
    all_values = list(values)
    values = [v for v in all_values if any(rows_for(a, v) for a in ARCHS)]  # out of memory / unmeasured: out
    archs = [a for a in ARCHS if values and all(rows_for(a, v) for v in values)]
    if values and not archs:  # no model at every value: the first model at the values it has
        for a in ARCHS:
            have = [v for v in values if rows_for(a, v)]
            if have:
                archs, values = [a], have
                break
    not_compared = {str(v): "no successful row of "
                    + ("either model" if not any(rows_for(a, v) for a in ARCHS) else " / ".join(
                        a for a in ARCHS if not rows_for(a, v)))
                    + " (out of memory, failed or not measured)" for v in all_values if v not in values}
    numbers: dict[str, Any] = {}
    for v in values:
        per = {}
        for a in ARCHS:
            r = rows_for(a, v)
            if r:
                per[a] = {k: r.get(k) for k in ("train_images_per_s", "eval_images_per_s", "train_peak_memory_gib",
                                                "achieved_tflops", "fraction_of_peak", "channels_last", "precision")
                          if r.get(k) is not None}
        numbers[str(v)] = per
    if not archs:
        return {"favoured": None, "recommended": default, "default": default, "change_default": False,
                "numbers": numbers, "not_compared": not_compared,
                "basis": f"not measured: no successful row at any of {all_values}; keep the default"}
    hours = {}
    for v in values:
        rt = {a: rows_for(a, v)["train_images_per_s"] for a in archs}  # type: ignore[index]
        re_ = {a: rows_for(a, v)["eval_images_per_s"] for a in archs}  # type: ignore[index]
        hours[v] = compute_seconds(rt, re_, archs, work) / 3600
    fav = min(values, key=lambda v: hours[v])
    out: dict[str, Any] = {"favoured": fav, "default": default,
                           "projected_compute_hours_one_gpu": {str(v): round(h, 3) for v, h in hours.items()},
                           "numbers": numbers, "not_compared": not_compared,
                           "basis": ("projected compute hours of the whole paper profile on one GPU"
                                     if len(archs) == len(ARCHS) else
                                     f"projected compute hours of the paper profile's {archs[0]} runs only "
                                     f"(the other model was not measured at every value)"),
                           "threshold": threshold}
    if len(values) == 1:
        out["basis"] += f"; {values[0]} is the only value measured"
    if default in hours:
        gain = hours[default] / hours[fav] - 1.0
        out["gain_over_default"] = round(gain, 4)
        out["change_default"] = bool(fav != default and gain > threshold)
        out["recommended"] = fav if out["change_default"] else default
        if fav != default and not out["change_default"]:
            out["basis"] += (f"; {fav} is faster by {gain:.1%} only, within noise (threshold {threshold:.0%}): "
                             "keep the default")
    else:
        out["change_default"] = None
        out["recommended"] = fav
        out["basis"] += f"; the default {default} was not measured"
    return out


def recommend(res: dict[str, Any], work: dict[str, Any] = PAPER_WORK,
              threshold: float = SWITCH_GAIN_THRESHOLD) -> dict[str, Any]:
    """For each GPU switch of :class:`pneumolib.config.Config`, the value the measurements in
    ``res`` favour, the numbers behind it, and whether the default should change."""
    from pneumolib.config import Config

    d = Config()
    prec_default = CUDA_DEFAULT_PRECISION if d.precision == "auto" else d.precision
    out: dict[str, Any] = {}
    p = _choose(list(PRECISIONS_CUDA), lambda a, v: _plain_rate(res, a, v, None), prec_default, work, threshold)
    p["config_default"] = d.precision
    p["note"] = ("speed only: 16-mixed is the paper's fp16 (with loss scaling); bf16-mixed needs no loss scaling "
                 "but has fewer mantissa bits; 32-true is the numerical reference. The paper profile pins 16-mixed")
    out["precision"] = p
    prec = p["recommended"] or prec_default
    c = _choose([False, True], lambda a, v: _plain_rate(res, a, prec, v), d.channels_last, work, threshold)
    c["at_precision"] = prec
    out["channels_last"] = c

    cb = res.get("cudnn_benchmark") or {}
    pairs = cb.get("pairs") or {}

    def cudnn_row(a: str, v: bool):
        r = (pairs.get(a) or {}).get("on" if v else "off")
        return r if r and r.get("train_images_per_s") and r.get("eval_images_per_s") else None

    if pairs:
        b = _choose([False, True], cudnn_row, d.cudnn_benchmark, work, threshold)
        b.update(at_precision=cb.get("precision"), at_channels_last=cb.get("channels_last"),
                 note="off and on measured back to back (paired) at the recommended precision / memory format")
    else:
        b = {"favoured": None, "recommended": d.cudnn_benchmark, "default": d.cudnn_benchmark,
             "change_default": False, "basis": "not measured: " + str(cb.get("skipped", "the part did not run"))}
    out["cudnn_benchmark"] = b

    cp = res.get("compile") or {}
    crow = cp.get("rows") or {}

    def compiled_or_base(a: str, v: bool):
        if v:
            r = crow.get(a)
            if not r or not r.get("train_images_per_s"):
                return None
            base = _plain_rate(res, a, cp.get("precision"), cp.get("channels_last"))
            # the compiled model's evaluation was not timed (it would compile again): the
            # uncompiled evaluation rate stands in, so only training speed decides
            return {**r, "eval_images_per_s": r.get("eval_images_per_s") or (base or {}).get("eval_images_per_s")}
        return _plain_rate(res, a, cp.get("precision"), cp.get("channels_last"))

    if crow and any(r.get("train_images_per_s") for r in crow.values()):
        k = _choose([False, True], compiled_or_base, d.compile, work, threshold)
        k.update(at_precision=cp.get("precision"), at_channels_last=cp.get("channels_last"),
                 compile_seconds={a: r.get("train_warmup_s") for a, r in crow.items() if r.get("train_warmup_s")},
                 note="training steps compiled (model.compile(), in place); compile time (the warm-up, in "
                      "compile_seconds) is paid once per run and per process; evaluation keeps the uncompiled "
                      "rate in this comparison (compiling it too was not measured)")
    else:
        reason = cp.get("skipped") or "; ".join(f"{a}: {r.get('error')}" for a, r in crow.items() if r.get("error")) \
            or "the part did not run"
        k = {"favoured": None, "recommended": d.compile, "default": d.compile, "change_default": False,
             "basis": "not measured: " + reason}
    out["compile"] = k
    out["summary"] = {name: out[name].get("recommended") for name in ("precision", "channels_last", "cudnn_benchmark",
                                                                       "compile")}
    out["change"] = {name: out[name]["recommended"] for name in ("precision", "channels_last", "cudnn_benchmark",
                                                                 "compile") if out[name].get("change_default")}
    return out


def choose_epoch_images(rate_train: float | None, rate_eval: float | None, allot_s: float, epochs: int,
                        devices: int = 1, fixed_s: float = 45.0, epoch_overhead_s: float = 4.0,
                        choices: tuple[int, ...] = (1024, 768, 512, 384, 256, 128)) -> int | None:
    """The largest phantom size whose short ``paper``-profile run fits ``allot_s`` seconds.

    A phantom image becomes ~1.44 items under the paper protocol (22 % positives, each also
    flipped and rotated), ~80 % of them trained on and ~20 % evaluated; ``fixed_s`` covers
    writing the phantom, start-up, building the cache and the final evaluation."""
    rt = rate_train or 100.0
    re_ = rate_eval or 3 * rt
    scale = max(1, devices) * ASSUMED_DDP_EFFICIENCY if devices > 1 else 1.0
    for n in choices:
        items = 1.44 * n
        per_epoch = epoch_overhead_s + (0.8 * items / rt + 0.2 * items / re_) / scale
        if fixed_s + epochs * per_epoch <= allot_s:
            return n
    return None


# -- the GPU measurements -----------------------------------------------------------------
@dataclass
class Settings:
    """Sizes and timing of the speed rows (defaults: the ``paper`` profile's model and batch)."""

    size: int = 512
    batch_size: int = 32
    base_width: int = 64
    unet_norm: str = "none"
    warmup_steps: int = 3
    probe_steps: int = 2
    window_s: float = 1.2
    windows: int = 2
    min_steps: int = 3
    max_steps: int = 40
    eval_window_s: float = 0.8
    epoch_images: int | None = None
    epochs: int = 2
    compile_min_s: float = 90.0
    reserve_s: float = 12.0


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


def _free(device: torch.device) -> None:
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
                  clock: Callable[[], float]) -> None:
    """Fills ``row`` as it goes (a later out-of-memory keeps the numbers before it)."""
    from pneumolib.training.losses import bce_dice_loss

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
        opt.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            loss = bce_dice_loss(_logits(model(x)), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    timing: dict[str, Any] = {"warmup": s.warmup_steps, "probe": s.probe_steps, "windows": s.windows,
                              "min_steps": s.min_steps, "max_steps": s.max_steps, "clock": clock}
    row["phase"] = "train"
    _fill(row, "train", time_steps(train_step, lambda: sync(device), window_s=s.window_s, **timing), s.batch_size)
    row["train_peak_memory_gib"] = (_peak_gib(device) or {}).get("allocated")
    row["train_peak_memory_reserved_gib"] = (_peak_gib(device) or {}).get("reserved")
    opt = scaler = None  # free Adam's state before the evaluation (train_step holds them)
    model.zero_grad(set_to_none=True)
    if not eval_too:
        row.pop("phase", None)
        return
    _free(device)
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
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """One speed row: training (and evaluation) images/s and peak memory of ``arch`` in
    ``precision`` with channels-last ``channels_last``; an out-of-memory or other failure
    becomes the row's ``error``."""
    row: dict[str, Any] = {"arch": arch, "precision": precision, "channels_last": bool(channels_last),
                           "cudnn_benchmark": bool(cudnn_benchmark), "compile": bool(compile)}
    t0 = clock()
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    _free(device)
    _reset_peak(device)
    try:
        _measure_into(row, arch, precision, channels_last, s, device, compile, eval_too, builder, clock)
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
    _free(device)
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


# -- subprocesses: the compile row and the real training epoch ----------------------------
def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child ``python``: this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.update(extra or {})
    return env


#: Process groups of the running children (their own sessions, so that a timeout can end a
#: whole DDP group): ended by :func:`end_children` when this process is told to stop.
_CHILD_GROUPS: set[int] = set()


def end_children(sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to every running child's process group."""
    for pgid in list(_CHILD_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by `timeout` on the GPU box
    end_children(signal.SIGTERM)
    raise SystemExit(128 + signum)


def run_subprocess(cmd: list[str], timeout_s: float, log: Path, env: dict[str, str] | None = None,
                   clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Run ``cmd`` in its own process group with output to ``log``; on timeout the whole
    group (DDP workers included) is terminated, then killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = clock()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env or _child_env(),
                                start_new_session=True)
        _CHILD_GROUPS.add(proc.pid)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
        finally:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt, SystemExit): leave no orphans
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            _CHILD_GROUPS.discard(proc.pid)
    return {"rc": rc, "timed_out": timed_out, "seconds": round(clock() - t0, 2), "log": str(log)}


def _tail(path: str | Path, n: int = 2500) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


ROW_MARK = "GPU_CHECK_ROW "


def _child_measure() -> None:  # pragma: no cover - runs in the compile subprocess, on a GPU
    """Entry of the compile subprocess: ``sys.argv[1]`` is a JSON spec; prints one row."""
    spec = json.loads(sys.argv[1])
    s = Settings(**spec.pop("settings"))
    row = measure(spec["arch"], spec["precision"], spec["channels_last"], s, torch.device(spec.get("device", "cuda")),
                  cudnn_benchmark=spec.get("cudnn_benchmark", False), compile=spec.get("compile", True),
                  eval_too=False)
    print(ROW_MARK + json.dumps(row), flush=True)


def compile_row(arch: str, precision: str, channels_last: bool, s: Settings, timeout_s: float, work: Path,
                python: str = sys.executable, device: str = "cuda") -> dict[str, Any]:
    """The ``model.compile()`` row, measured in a subprocess killed after ``timeout_s``."""
    spec = {"arch": arch, "precision": precision, "channels_last": channels_last, "compile": True,
            "settings": asdict(s), "device": device}
    code = "from pneumolib.commands.gpu_check import _child_measure; _child_measure()"
    log = work / f"compile-{arch}.log"
    run = run_subprocess([python, "-c", code, json.dumps(spec)], timeout_s, log)
    for line in _tail(log, 200000).splitlines()[::-1]:
        if line.startswith(ROW_MARK):
            row = json.loads(line[len(ROW_MARK):])
            row["subprocess_seconds"] = run["seconds"]
            return row
    base = {"arch": arch, "precision": precision, "channels_last": channels_last, "compile": True,
            "subprocess_seconds": run["seconds"]}
    if run["timed_out"]:
        return {**base, "error": f"compiling and timing did not finish within {timeout_s:.0f} s (killed)"}
    return {**base, "error": f"the compile subprocess exited with status {run['rc']}", "log_tail": _tail(log)}


def _read_epochs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: (float(v) if k != "epoch" else int(float(v))) for k, v in r.items()
                 if k in ("epoch", "time_s", "train_loss", "val_loss") and v not in ("", None)}
                for r in csv.DictReader(fh)]


def run_epoch(work: Path, n_images: int, devices: int, epochs: int, timeout_s: float, size: int = 512,
              batch_size: int = 32, python: str = sys.executable, extra_sets: tuple[str, ...] = (),
              runner: Callable[..., dict[str, Any]] = run_subprocess,
              clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """A short real ``paper``-profile training run: ``pneumo data phantom --layout siim-dicom``
    then ``pneumo train --scenario random --profile paper`` with ``max_epochs=epochs`` on
    ``devices`` GPUs (DDP when more than one), each a subprocess; read back ``epochs.csv``
    and ``metrics.json``. The last epoch is the steady one (the first pays for start-up:
    cuDNN's first calls, worker processes)."""
    t_start = clock()
    work = Path(work)
    data = work / f"phantom-siim-dicom-n{n_images}-s{size}"
    run_dir = work / f"epoch-run-{devices}gpu"
    env = _child_env({"PNEUMO_HOME": str(work / "home"), "PNEUMO_CACHE": str(work / "cache")})
    cli = [python, "-m", "pneumolib.cli"]
    ph_cmd = cli + ["data", "phantom", "--layout", "siim-dicom", "--out", str(data), "--n", str(n_images),
                    "--size", str(size)]
    strategy = "ddp" if devices > 1 else "auto"
    tr_cmd = cli + ["train", "--scenario", "random", "--profile", "paper", "--data", str(data), "--out", str(run_dir),
                    "--devices", str(devices), "--strategy", strategy, "--max-epochs", str(epochs),
                    "--image-size", str(size), "--batch-size", str(batch_size), "--set", "allow_phantom=true"]
    for kv in extra_sets:
        tr_cmd += ["--set", kv]
    out: dict[str, Any] = {"devices": devices, "strategy": strategy, "profile": "paper", "scenario": "random",
                           "phantom_images": n_images, "layout": "siim-dicom", "size": size, "batch_size": batch_size,
                           "max_epochs": epochs, "commands": {"phantom": " ".join(ph_cmd[1:]),
                                                              "train": " ".join(tr_cmd[1:])}}
    if not data.exists():
        ph = runner(ph_cmd, timeout_s, work / "phantom.log", env=env)
        out["seconds_phantom"] = ph["seconds"]
        if ph["rc"] != 0 or ph["timed_out"]:
            out["error"] = ("writing the phantom timed out" if ph["timed_out"] else
                            f"writing the phantom exited with status {ph['rc']}")
            out["log_tail"] = _tail(ph["log"])
            return out
    left = timeout_s - (clock() - t_start)
    tr = runner(tr_cmd, left, work / f"train-{devices}gpu.log", env=env)
    out["seconds_train_command"] = tr["seconds"]
    rows = _read_epochs(run_dir / "epochs.csv")
    metrics = {}
    if (run_dir / "metrics.json").exists():
        metrics = json.loads((run_dir / "metrics.json").read_text())
    if tr["timed_out"]:
        out["error"] = f"the training command did not finish within {left:.0f} s (killed)"
    elif tr["rc"] != 0:
        out["error"] = f"the training command exited with status {tr['rc']}"
    if "error" in out:
        out["log_tail"] = _tail(tr["log"])
    if (run_dir / "config.json").exists():
        cfg = json.loads((run_dir / "config.json").read_text())
        out["run_config"] = {k: cfg.get(k) for k in ("precision", "devices", "strategy", "num_workers", "unet_norm",
                                                     "base_width", "channels_last", "cudnn_benchmark", "compile",
                                                     "protocol", "online_aug", "batch_size", "image_size")}
    n_items = (metrics.get("data") or {}).get("n_items")
    out["fit_seconds"] = metrics.get("fit_seconds")
    out["n_items"] = n_items
    if rows and n_items:
        ev = n_items.get("val", 0) + n_items.get("test", 0)
        for r in rows:
            if r.get("time_s"):
                r["train_images_per_s"] = round(n_items["train"] / r["time_s"], 2)
                r["all_images_per_s"] = round((n_items["train"] + ev) / r["time_s"], 2)
        out["epochs"] = rows
        steady = rows[-1]
        if steady.get("time_s"):
            out["steady_epoch"] = steady["epoch"]
            out["epoch_seconds"] = steady["time_s"]
            out["train_images_per_s"] = steady["train_images_per_s"]
            out["all_images_per_s"] = steady["all_images_per_s"]
    elif "error" not in out:
        out["error"] = "the run left no epochs.csv / metrics.json"
        out["log_tail"] = _tail(tr["log"])
    if rows and out.get("fit_seconds"):
        inside = sum(r.get("time_s", 0.0) for r in rows)
        out["fit_seconds_outside_epochs"] = round(out["fit_seconds"] - inside, 3)
    out["measures"] = ("epochs.csv time_s: from the start of a training epoch (on_train_epoch_start) to its end "
                       "(EpochCSV's on_train_epoch_end), which includes the data loading (memmap cache, the "
                       "profile's workers), Lightning, the GradScaler and the per-epoch val + test evaluation; "
                       "the checkpoint writes (ModelCheckpoint saves after EpochCSV) and the fit's start-up fall "
                       "outside, in fit_seconds_outside_epochs; train_images_per_s = train items / time_s, "
                       "all_images_per_s = (train + val + test items) / time_s")
    return out


# -- the whole check ------------------------------------------------------------------------
def _gpus() -> list[dict[str, Any]]:
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count})
    return out


def _tf32_state() -> dict[str, Any]:
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


def _tf32_conv(state: dict[str, Any], capability: tuple[int, int] | None) -> bool:
    if capability is not None and capability[0] < 8:
        return False
    if "cudnn_conv_fp32_precision" in state:
        return state["cudnn_conv_fp32_precision"] == "tf32"
    return bool(state.get("cudnn_allow_tf32", True))


def parse_skip(skip: str | list[str] | tuple[str, ...] | None) -> set[str]:
    items = skip.split(",") if isinstance(skip, str) else list(skip or ())
    out = {x.strip() for x in items if x.strip()}
    bad = sorted(out - set(SKIPPABLE))
    if bad:
        raise ConfigError(f"--skip {','.join(bad)}: unknown part(s); valid: {', '.join(SKIPPABLE)}")
    return out


def result_path(out_dir: Path | str, hostname: str | None = None, date: dt.date | None = None) -> Path:
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname or socket.gethostname()) or "host"
    return Path(out_dir) / f"gpu-{host}-{(date or dt.date.today()).isoformat()}.json"


def run_gpu_check(out: Path | str | None = None, budget_s: float = 300.0, settings: Settings | None = None,
                  skip: set[str] | None = None, work: Path | str | None = None, *,
                  device: torch.device | None = None, already_used_s: float = 0.0,
                  clock: Callable[[], float] = time.monotonic,
                  measure_fn: Callable[..., dict[str, Any]] = measure,
                  flops_fn: Callable[[str, Settings, torch.device], dict[str, int]] | None = None,
                  epoch_fn: Callable[..., dict[str, Any]] = run_epoch,
                  compile_fn: Callable[..., dict[str, Any]] = compile_row,
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every part that the budget allows, in priority order; write the JSON after each
    part (``complete: false`` until the end) and return the result (``_path``: the file).

    ``device``, ``clock`` and the ``*_fn`` hooks exist for the tests (a CPU device, a fake
    clock, fake measurements); the command uses the defaults on ``cuda``."""
    from pneumolib.runio import atomic_write_json, git_commit, package_versions

    from .bench import ROOT, machine_info

    s = settings or Settings()
    skip = set(skip or ())
    device = device or torch.device("cuda")
    budget = Budget(budget_s, reserve_s=s.reserve_s, clock=clock, already_used_s=already_used_s)
    on_cuda = device.type == "cuda"
    gpus = _gpus() if on_cuda else []
    name = gpus[0]["name"] if gpus else None
    cap = tuple(int(c) for c in gpus[0]["capability"].split(".")) if gpus else None
    peaks = gpu_peaks(name)
    tf32 = _tf32_state()
    tf32_conv = _tf32_conv(tf32, cap)  # type: ignore[arg-type]
    visible = len(gpus) if on_cuda else 1
    out_dir = Path(out) if out else ROOT / "benchmarks" / "results"
    path = result_path(out_dir)
    own_work = work is None
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="pneumo-gpu-check-"))
    res: dict[str, Any] = {
        "schema": SCHEMA, "complete": False,
        "command": "pneumo bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(), "gpus": gpus, "visible_gpus": visible,
        "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version() if on_cuda else None,
        "versions": package_versions(), "git": git_commit(),
        "tf32": {**tf32, "convolutions_use_tf32": tf32_conv},
        "peaks_tflops": peaks,
        "peak_note": ("dense (no sparsity) vendor peaks; fraction_of_peak is against the precision's kind: fp16 "
                      "tensor cores for 16-mixed, bf16 for bf16-mixed, tf32 tensor cores for 32-true when "
                      "convolutions use TF32 (else fp32); FLOPs count convolutions and matrix products only"
                      if peaks else f"GPU {name!r} is not in GPU_PEAKS_TFLOPS: no fraction of peak"),
        "settings": {**asdict(s), "budget_s": budget_s, "skip": sorted(skip), "timing":
                     "plain PyTorch loop (the work of PneumoModule.training_step: BCE + Dice, Adam lr 1e-4, "
                     "GradScaler for 16-mixed), inputs resident on the GPU; warm-up steps, then windows timed "
                     "with CUDA synchronised only at their ends; the best window is reported"},
        "flops": {}, "rows": [], "parts": [], "skipped": [], "errors": [],
    }

    def write() -> None:
        res["budget"] = {"budget_s": budget.seconds, "seconds_used": round(budget.used(), 1),
                         "reserve_s": budget.reserve_s}
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {k: v for k, v in res.items() if not k.startswith("_")})

    def attempt(part: str, need_s: float, fn: Callable[[], Any]) -> Any:
        if part.split(":")[0] in skip:
            res["skipped"].append({"part": part, "reason": "--skip"})
            return None
        if not budget.allows(need_s):
            res["skipped"].append({"part": part, "reason": budget.why_not(need_s)})
            return None
        t = clock()
        try:
            value = fn()
            status = "ok"
        except Exception as e:  # noqa: BLE001 - the JSON must be written whatever a part does
            value = None
            status = f"error: {type(e).__name__}: {e}"[:300]
            res["errors"].append({"part": part, "error": status, "traceback": traceback.format_exc()[-3000:]})
        res["parts"].append({"part": part, "status": status, "seconds": round(clock() - t, 1),
                             "estimate_s": round(need_s, 1)})
        write()
        return value

    last_row: dict[tuple[str, str], float] = {}  # (arch, precision) -> seconds of its latest row

    def row_estimate(arch: str, precision: str) -> float:
        """The latest row of the model and precision; else of the model (x1.4 going to fp32,
        whose warm-up steps are slower); else 25 s (the first pays for CUDA's start-up)."""
        if (arch, precision) in last_row:
            return last_row[(arch, precision)] + 1.0
        same = [v for (a, p), v in last_row.items() if a == arch]
        if not same:
            return 25.0
        return same[-1] * (1.4 if precision == "32-true" else 1.0) + 1.0

    archs = [a for a in ARCHS if not (a == "resnet50" and "resnet50" in skip)]

    def do_row(arch: str, precision: str, cl: bool, **kw) -> dict[str, Any] | None:
        if arch not in res["flops"]:
            attempt(f"flops:{arch}", 5.0, lambda: res["flops"].__setitem__(arch, (flops_fn or _count)(arch, s, device)))

        def go():
            echo(f"  {arch} {precision} channels_last={cl}" + "".join(f" {k}={v}" for k, v in kw.items()))
            row = measure_fn(arch, precision, cl, s, device, **kw)
            add_flops(row, res["flops"].get(arch), peaks, tf32_conv)
            if "seconds" in row:
                last_row.pop((arch, precision), None)  # keep the insertion order = recency
                last_row[(arch, precision)] = float(row["seconds"])
            return row

        row = attempt(f"row:{arch}:{precision}:cl={cl}" + "".join(f":{k}={v}" for k, v in kw.items()),
                      row_estimate(arch, precision), go)
        return row

    def _count(arch: str, s_: Settings, dev: torch.device) -> dict[str, int]:
        model = build_arch(arch, s_)
        try:
            return count_flops(model, s_.size, dev)
        finally:
            del model
            _free(dev)

    # 1. core: the paper's precision, the current defaults
    echo(f"GPU check on {name or device}, budget {budget_s:.0f} s -> {path}")
    for arch in archs:
        row = do_row(arch, "16-mixed", False)
        if row:
            res["rows"].append(row)
    write()

    # 2. one short real paper-profile run on all visible GPUs
    def epoch_part(devices: int) -> None:
        key = "epoch" if devices == visible else f"epoch_{devices}gpu"
        if key.split("_")[0] in skip or key in skip:
            res[key] = {"skipped": "--skip"}
            res["skipped"].append({"part": key, "reason": "--skip"})
            return
        base = _plain_rate(res, "unet", "16-mixed", False)
        rt = (base or {}).get("train_images_per_s")
        re_ = (base or {}).get("eval_images_per_s")
        allot = min(budget.usable() * (0.45 if key == "epoch" else 0.6), 150.0)
        epochs, n = s.epochs, s.epoch_images
        if n is None:  # two epochs (the second is the steady one) if they fit, else one
            for epochs in dict.fromkeys((s.epochs, 1)):
                n = choose_epoch_images(rt, re_, allot, epochs, devices)
                if n:
                    break
        if n is None:
            reason = f"even 128 phantom images in one epoch would not fit the {allot:.0f} s allotted"
            res[key] = {"skipped": reason}
            res["skipped"].append({"part": key, "reason": reason})
            return

        def go():
            echo(f"  epoch: paper profile, {devices} GPU(s), phantom {n} images, {epochs} epoch(s)")
            timeout = min(budget.usable(), max(allot * 2.0, 60.0))
            r = epoch_fn(work, n, devices, epochs, timeout, size=s.size, batch_size=s.batch_size)
            rc = r.get("run_config") or {}
            p_ = rc.get("precision") if rc.get("precision") in PRECISIONS_CUDA else "16-mixed"
            cl_ = bool(rc.get("channels_last", False))
            ref = _plain_rate(res, "unet", p_, cl_) or {}
            rt_, re2 = ref.get("train_images_per_s"), ref.get("eval_images_per_s")
            if rt_ and re2 and r.get("epoch_seconds") and r.get("n_items"):
                pred = epoch_compute_seconds(r["n_items"], rt_, re2)
                r["one_gpu_compute_seconds_predicted"] = round(pred, 3)
                r["end_to_end_factor"] = round(pred / r["epoch_seconds"], 4)
                r["end_to_end_reference_row"] = {"arch": "unet", "precision": p_, "channels_last": cl_}
                r["end_to_end_factor_means"] = (
                    "one-GPU compute-only seconds of this epoch's items (the unet row of the run's precision and "
                    "memory format) / the measured "
                    "epoch seconds; a short phantom epoch weighs per-epoch fixed costs (evaluation start-up, the "
                    "last partial batch) more than a paper-sized one does, so this understates the efficiency "
                    "and the projection built on it is an upper bound")
            res[key] = r
            return r

        if attempt(key, min(allot, 60.0), go) is None and key not in res:
            why = next((x["reason"] for x in res["skipped"] if x["part"] == key), None)
            res[key] = {"devices": devices, **({"skipped": why} if why else {"error": "failed: see errors"})}

    if on_cuda or epoch_fn is not run_epoch:
        epoch_part(visible)
    else:
        res["epoch"] = {"skipped": "not on CUDA"}

    def rows_part(combos: list[tuple[str, bool]]) -> None:
        for precision, cl in combos:
            if "rows" in skip or (precision == "32-true" and "32-true" in skip):
                res["skipped"].append({"part": f"rows:{precision}:cl={cl}", "reason": "--skip"})
                continue
            for arch in archs:
                row = do_row(arch, precision, cl)
                if row:
                    res["rows"].append(row)

    # 3. channels-last and bf16 (the candidates for the defaults)
    rows_part([("16-mixed", True), ("bf16-mixed", False), ("bf16-mixed", True)])

    # 4. the measured multi-GPU speed-up
    if visible > 1 and (on_cuda or epoch_fn is not run_epoch):
        epoch_part(1)

    # 5. cudnn.benchmark off / on (back to back) and torch.compile (a subprocess with a hard
    # timeout) at the recommended precision / memory format: the U-Net now (7 of the
    # profile's 8 runs), the ResNet-50 after the fp32 rows
    rec = recommend(res)
    prec, cl = rec["precision"]["recommended"], bool(rec["channels_last"]["recommended"])
    pairs: dict[str, Any] = {}
    res["cudnn_benchmark"] = {"precision": prec, "channels_last": cl, "pairs": pairs}
    res["compile"] = {"precision": prec, "channels_last": cl, "rows": {}}
    for tag in ("cudnn", "compile"):
        if tag in skip:
            res["cudnn_benchmark" if tag == "cudnn" else "compile"]["skipped"] = "--skip"

    def switches_part(arch: str) -> None:
        if arch not in archs:
            return
        if "cudnn" not in skip:
            pair = {}
            for on in (False, True):
                row = do_row(arch, prec, cl, cudnn_benchmark=on)
                if row:
                    pair["on" if on else "off"] = row
            if pair:
                pairs[arch] = pair
        if "compile" not in skip:
            need = s.compile_min_s

            def go():
                echo(f"  compile {arch} {prec} channels_last={cl}")
                row = compile_fn(arch, prec, cl, s, budget.usable(), work)
                add_flops(row, res["flops"].get(arch), peaks, tf32_conv)
                res["compile"]["rows"][arch] = row
                return row

            if attempt(f"compile:{arch}", need, go) is None and not res["compile"]["rows"]:
                res["compile"]["skipped"] = ("budget: " + budget.why_not(need) + "; compiling can take a minute"
                                             if not budget.allows(need) else "failed: see errors")

    switches_part("unet")
    # 6. fp32 (the numerical reference), then the ResNet-50's switches
    rows_part([("32-true", False), ("32-true", True)])
    switches_part("resnet50")
    if not pairs and "skipped" not in res["cudnn_benchmark"]:
        res["cudnn_benchmark"]["skipped"] = next((x["reason"] for x in res["skipped"]
                                                  if x["part"].startswith("row:") and "cudnn" in x["part"]),
                                                 "no row measured")
    if not res["compile"]["rows"] and "skipped" not in res["compile"]:
        res["compile"]["skipped"] = "no row measured"

    # 7. projection and recommendations (no GPU work)
    ends: dict[int, float] = {}
    for key, r in res.items():
        if (key == "epoch" or key.startswith("epoch_")) and isinstance(r, dict) and r.get("end_to_end_factor"):
            ends[int(r["devices"])] = r["end_to_end_factor"]
    res["projection"] = {}
    rec = recommend(res)
    res["recommendations"] = rec
    combos = {"paper_profile_as_configured": ("16-mixed", False),
              "recommended_precision_and_memory_format": (rec["precision"]["recommended"],
                                                          bool(rec["channels_last"]["recommended"]))}
    for key, (p_, cl_) in combos.items():
        rows = {a: _plain_rate(res, a, p_, cl_) for a in ARCHS}
        if all(rows.values()):
            proj = project_paper({a: rows[a]["train_images_per_s"] for a in ARCHS},  # type: ignore[index]
                                 {a: rows[a]["eval_images_per_s"] for a in ARCHS},  # type: ignore[index]
                                 end_to_end=ends, visible_gpus=visible)
            proj["precision"], proj["channels_last"] = p_, cl_
            if ends and (p_, cl_) != ("16-mixed", False):
                proj["assumed"] += ("; the end-to-end factors, measured against the 16-mixed channels-last-off "
                                    "compute rate, are applied to this combination's compute rate unchanged")
            res["projection"][key] = proj
        else:
            missing = [a for a, r in rows.items() if not r]
            res["projection"][key] = {"skipped": f"no {p_} channels_last={cl_} row of {', '.join(missing)}",
                                      "precision": p_, "channels_last": cl_}
    res["complete"] = True
    res["seconds_total"] = round(budget.used(), 1)
    write()
    if own_work:
        shutil.rmtree(work, ignore_errors=True)
    res["_path"] = str(path)
    return res


# -- the summary table ----------------------------------------------------------------------
def format_gpu_table(res: dict[str, Any]) -> str:
    """The result as a plain-text table (the style of :func:`pneumolib.commands.bench.format_table`)."""
    lines = []
    m = res.get("machine", {})
    g = res.get("gpus") or [{}]
    lines.append(f"machine: {m.get('hostname')}, {m.get('cpu_count')} CPUs, {res.get('visible_gpus')} x "
                 f"{g[0].get('name')} ({g[0].get('memory_gib')} GiB); torch {res.get('versions', {}).get('torch')}, "
                 f"CUDA {res.get('cuda_version')}; peaks: "
                 + (f"{res['peaks_tflops']['matched']} table" if res.get("peaks_tflops") else "unknown card"))
    row = "{:<44} {:>14}  {}"
    lines.append(row.format("measurement", "rate", "notes"))
    lines.append("-" * 110)

    def speed_line(r: dict[str, Any], label: str) -> str:
        if "error" in r:
            return row.format(label, "-", r["error"])
        frac = (f" = {100 * r['fraction_of_peak']:.1f} % of {r['peak_kind']} peak" if "fraction_of_peak" in r else
                (f" ({r['peak_kind']})" if "peak_kind" in r else ""))
        mem = f"; peak {r['train_peak_memory_gib']:.1f} GiB" if r.get("train_peak_memory_gib") is not None else ""
        ev = f"; eval {r['eval_images_per_s']:.0f} img/s" if r.get("eval_images_per_s") else ""
        tf = f"{r['achieved_tflops']} TFLOP/s{frac}" if "achieved_tflops" in r else "TFLOP/s not counted"
        return row.format(label, f"{r['train_images_per_s']:.1f} img/s", tf + mem + ev)

    for r in res.get("rows", []):
        if r.get("cudnn_benchmark") or r.get("compile"):
            continue
        lines.append(speed_line(r, f"train {r['arch']} {r['precision']} cl={'on' if r['channels_last'] else 'off'}"))
    cb = res.get("cudnn_benchmark") or {}
    for arch, pair in (cb.get("pairs") or {}).items():
        for k in ("off", "on"):
            if k in pair:
                lines.append(speed_line(pair[k], f"cudnn.benchmark {k}: {arch} {cb['precision']} "
                                                 f"cl={'on' if cb['channels_last'] else 'off'}"))
    if cb.get("skipped"):
        lines.append(row.format("cudnn.benchmark", "skipped", cb["skipped"]))
    cp = res.get("compile") or {}
    for arch, r in (cp.get("rows") or {}).items():
        lbl = f"compile: {arch} {cp['precision']} cl={'on' if cp['channels_last'] else 'off'}"
        line = speed_line(r, lbl)
        if r.get("train_warmup_s"):
            line += f"; compile + warm-up {r['train_warmup_s']:.0f} s"
        lines.append(line)
    if cp.get("skipped"):
        lines.append(row.format("compile", "skipped", cp["skipped"]))
    for key in sorted(k for k in res if k == "epoch" or k.startswith("epoch_")):
        e = res[key]
        lbl = f"epoch: paper profile, {e.get('devices', '?')} GPU(s)"
        if e.get("skipped"):
            lines.append(row.format(lbl, "skipped", e["skipped"]))
        elif e.get("error"):
            lines.append(row.format(lbl, "-", e["error"]))
        elif e.get("train_images_per_s"):
            times = ", ".join(f"{r.get('time_s', float('nan')):.1f}" for r in e.get("epochs", []))
            fac = f"; {e['end_to_end_factor']:.2f}x one-GPU compute" if e.get("end_to_end_factor") else ""
            it = e.get("n_items") or {}
            lines.append(row.format(lbl, f"{e['train_images_per_s']:.1f} img/s",
                                    f"train items / epoch s; phantom {e['phantom_images']} images = "
                                    f"{it.get('train')}/{it.get('val')}/{it.get('test')} train/val/test items; "
                                    f"epochs {times} s{fac}"))
    for key, p in (res.get("projection") or {}).items():
        lbl = {"paper_profile_as_configured": "projection: paper profile as configured",
               "recommended_precision_and_memory_format": "projection: recommended precision + format"}.get(key, key)
        if "skipped" in p:
            lines.append(row.format(lbl, "skipped", p["skipped"]))
            continue
        gp = p["gpus"]
        lines.append(row.format(lbl, f"{gp['1']['hours']:.1f} h",
                                f"1 GPU ({p['precision']}, cl={'on' if p['channels_last'] else 'off'}); "
                                + "; ".join(f"{n} GPUs {v['hours']:.1f} h" for n, v in gp.items() if n != "1")
                                + f"; compute only {p['hours_compute_only_one_gpu']:.1f} h"))
    rec = res.get("recommendations") or {}
    for name in ("precision", "channels_last", "cudnn_benchmark", "compile"):
        r = rec.get(name)
        if not r:
            continue
        g_ = r.get("gain_over_default")
        gain = f"gain over default {100 * g_:.1f} %; " if g_ is not None else ""
        verdict = "CHANGE the default" if r.get("change_default") else "keep the default"
        lines.append(row.format(f"recommend {name}", str(r.get("recommended")),
                                f"{verdict} ({r.get('default')}); favoured {r.get('favoured')}; {gain}"
                                f"{r.get('basis', '')}"[:220]))
    for sk in res.get("skipped", []):
        lines.append(row.format(f"skipped {sk['part']}"[:44], "-", sk["reason"]))
    for er in res.get("errors", []):
        lines.append(row.format(f"error {er['part']}"[:44], "-", er["error"]))
    b = res.get("budget", {})
    lines.append(f"budget {b.get('budget_s')} s, used {b.get('seconds_used')} s")
    return "\n".join(lines)


def _process_age_s() -> float:
    """Seconds since this process started (Linux), so that the budget covers the imports."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def cuda_refusal() -> str:
    """The one-line message of ``pneumo bench --gpu`` without CUDA."""
    return ("pneumo bench --gpu needs CUDA, and torch sees no CUDA device here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); on a GPU machine it measures "
            "training and evaluation images/s, peak memory and TFLOP/s of the paper U-Net and the ResNet-50 U-Net at "
            "512 px, one epoch of the paper profile, and projects the paper profile's wall time. Nothing was written.")


def main(size: int = 512, batch_size: int = 32, steps: int | None = None, out: str | None = None,
         budget_s: float = 300.0, epoch_images: int | None = None, skip: str = "", quick: bool = False) -> int:
    """``pneumo bench --gpu``. Raises :class:`NoCudaError` (exit status 2) without CUDA."""
    if quick:
        raise ConfigError("--quick sizes the CPU benchmark; with --gpu, shorten the check with --budget-s")
    if budget_s < 30:
        raise ConfigError(f"--budget-s {budget_s:g}: give at least 30 seconds")
    parts = parse_skip(skip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        has_cuda = torch.cuda.is_available()
    if not has_cuda:
        raise NoCudaError(cuda_refusal())
    from pneumolib.config import PROFILES

    paper = PROFILES["paper"]
    s = Settings(size=size, batch_size=batch_size, base_width=paper.base_width, unet_norm=paper.unet_norm,
                 epoch_images=epoch_images)
    if steps:
        s = replace(s, max_steps=int(steps))
    # `timeout` (benchmarks/gpu_check.sh) sends SIGTERM: end the training / compile children too
    signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="pneumo-gpu-check-"))  # phantom, cache, run folders, logs
    try:
        res = run_gpu_check(out=out, budget_s=budget_s, settings=s, skip=parts, work=work,
                            already_used_s=_process_age_s())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(format_gpu_table(res))
    print(f"\nwrote {res['_path']}")
    return 0
