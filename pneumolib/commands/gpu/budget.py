"""The GPU check's pure parts: constants, the cards' peak FLOP/s, the time budget and each
part's share of it, timing windows, the paper profile's work and its projected wall time."""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import torch

from pneumolib.errors import PneumoError

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


class NotMeasured(PneumoError):
    """A part of the GPU check that could not be measured; the message is the reason that
    goes into the JSON (``not measured: <message>``)."""


class OverShare(NotMeasured):
    """A part of the GPU check that ran past its share of ``--budget-s`` and was stopped."""

    def __init__(self, what: str = "the part"):
        super().__init__(f"{what} ran past its share of the --budget-s budget and was stopped; give a larger "
                         "--budget-s or leave the part out with --skip")


class Budget:
    """A deadline: ``seconds`` from ``clock()`` at creation (minus ``already_used_s``, the
    process's start-up), of which the last ``reserve_s`` are kept for the projection and
    writing the JSON and the last ``margin_s`` are never planned (a safety margin)."""

    def __init__(self, seconds: float, reserve_s: float = 12.0, clock: Callable[[], float] = time.monotonic,
                 already_used_s: float = 0.0, margin_s: float = 0.0):
        self.seconds, self.reserve_s, self.clock = float(seconds), float(reserve_s), clock
        self.margin_s = float(margin_s)
        self.t0 = clock() - float(already_used_s)

    def used(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        """Seconds to the deadline."""
        return self.seconds - self.used()

    def usable(self) -> float:
        """Seconds a part may still take (the reserve kept back)."""
        return self.left() - self.reserve_s

    def distributable(self) -> float:
        """Seconds that the parts may share from now: the budget left less the reserve and
        the margin (never negative)."""
        return max(0.0, self.usable() - self.margin_s)


#: Relative weight of each kind of part in the split of the budget (the shares are these in
#: proportion; the table in :mod:`pneumolib.commands.gpu.check` gives them at 300 s).
#: Design estimates for 512 px, batch 32 on an H100-class card, not measurements: a speed
#: row builds its model, runs 5 warm-up / probe steps, two 1.2 s training windows and the
#: same for evaluation (``row``); the first FLOP count pays for CUDA's start-up and the first
#: row of each model for cuDNN's first calls; fp32 steps are the slowest; the epoch part
#: writes a phantom, starts ``pneumo train`` (Lightning, the cache) and runs two short
#: epochs; compiling the U-Net's training step takes longer than the ResNet-50's.
SHARE_WEIGHTS: dict[str, float] = {"flops:first": 10.0, "flops": 3.0, "row:core": 12.0, "row": 8.0,
                                   "row:32-true": 10.0, "cudnn": 8.0, "epoch": 70.0, "epoch_1gpu": 45.0,
                                   "compile:unet": 60.0, "compile": 40.0}


#: Seconds a child process gets between SIGTERM and SIGKILL, and after SIGKILL, when its part
#: runs out of time (:func:`pneumolib.commands.gpu.children.run_subprocess`); a child's own
#: timeout is its part's deadline less their sum, so that it is gone by the deadline.
KILL_WAITS_S = (3.0, 2.0)
KILL_GRACE_S = sum(KILL_WAITS_S)


#: Of the epoch part's time: the share for writing the phantom (a subprocess killed at the end
#: of it), and, of what is left, the share allowed for ``pneumo train``'s start-up (imports,
#: the cache, workers, the final evaluation): the epochs are sized to fit the rest.
PHANTOM_FRACTION = 0.3
EPOCH_STARTUP_FRACTION = 0.45


#: Seconds a fresh ``python -m pneumolib.cli`` is assumed to need to start when this process
#: did not measure its own start-up (``already_used_s`` of 0: the tests).
CHILD_STARTUP_S = 5.0


def part_plan(archs: list[str] | tuple[str, ...], skip: set[str], visible_gpus: int, epoch_why_not: str | None,
              compile_why_not: str | None) -> list[tuple[str, float, str | None]]:
    """Every part of the check in the order it runs: ``(part, weight, why not)``; ``why not``
    is None for a part that runs, else the reason recorded for it (``--skip``, no C compiler,
    not on CUDA). Parts: ``flops:<arch>``, ``row:<arch>:<precision>:cl=<bool>``, ``epoch``,
    ``epoch_1gpu``, ``cudnn:<arch>:off|on``, ``compile:<arch>``."""
    w = SHARE_WEIGHTS
    out: list[tuple[str, float, str | None]] = []
    all_archs = list(ARCHS)
    add = lambda part, weight, why: out.append((part, weight, why))  # noqa: E731

    def arch_why(arch: str) -> str | None:
        return None if arch in archs else "--skip"

    for i, arch in enumerate(all_archs):
        add(f"flops:{arch}", w["flops:first"] if i == 0 else w["flops"], arch_why(arch))
        add(f"row:{arch}:16-mixed:cl=False", w["row:core"], arch_why(arch))
    add("epoch", w["epoch"], "--skip" if "epoch" in skip else epoch_why_not)

    def rows(combos: list[tuple[str, bool]]) -> None:
        for precision, cl in combos:
            why = "--skip" if "rows" in skip or (precision == "32-true" and "32-true" in skip) else None
            for arch in all_archs:
                add(f"row:{arch}:{precision}:cl={cl}", w["row:32-true" if precision == "32-true" else "row"],
                    why or arch_why(arch))

    rows([("16-mixed", True), ("bf16-mixed", False), ("bf16-mixed", True)])
    if visible_gpus > 1:
        add("epoch_1gpu", w["epoch_1gpu"], "--skip" if skip & {"epoch", "epoch_1gpu"} else epoch_why_not)

    def switches(arch: str) -> None:
        for on in ("off", "on"):
            add(f"cudnn:{arch}:{on}", w["cudnn"], "--skip" if "cudnn" in skip else arch_why(arch))
        add(f"compile:{arch}", w.get(f"compile:{arch}", w["compile"]),
            "--skip" if "compile" in skip else arch_why(arch) or compile_why_not)

    switches("unet")
    rows([("32-true", False), ("32-true", True)])
    switches("resnet50")
    return out


def plan_shares(parts: list[tuple[str, float, str | None]], seconds: float) -> dict[str, dict[str, float]]:
    """Split ``seconds`` over the parts that run, in proportion to their weights.

    Returns, per part, ``share_s`` and ``ends_s``: its deadline in seconds after the plan's
    start, the sum of the shares up to and including its own. A part may use the time that
    the parts before it left over, never the shares of the parts after it, so none can
    starve a later one, and the last deadline is ``seconds``."""
    runs = [(p, wt) for p, wt, why in parts if why is None]
    total = sum(wt for _, wt in runs)
    out: dict[str, dict[str, float]] = {}
    end = 0.0
    for part, wt in runs:
        share = max(0.0, seconds) * wt / total if total > 0 else 0.0
        end += share
        out[part] = {"weight": wt, "share_s": share, "ends_s": end}
    return out


def worst_case_s(budget_s: float, reserve_s: float, margin_s: float) -> dict[str, float]:
    """The check's worst-case wall time from the start of its process: the start-up and the
    parts end by the last deadline (``budget_s - reserve_s - margin_s``, whatever the
    start-up took: the shares split what is left of it), then the projection, the final
    JSON and the cleanup take at most ``reserve_s``."""
    parts_end = budget_s - reserve_s - margin_s
    return {"parts_end_s": parts_end, "total_s": parts_end + reserve_s, "margin_s": margin_s}


def time_steps(step: Callable[[], Any], sync: Callable[[], None], warmup: int = 3, probe: int = 2,
               window_s: float = 1.2, windows: int = 2, min_steps: int = 3, max_steps: int = 40,
               clock: Callable[[], float] = time.perf_counter,
               stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Steady-state timing of ``step``: ``warmup`` steps, then ``probe`` steps to size the
    window (``window_s`` / step time, within [min_steps, max_steps]), then ``windows`` timed
    windows of that many steps. ``sync`` (CUDA synchronise) is called only at the ends of the
    warm-up, the probe and each window, never between the steps of a window. ``stop`` is
    asked after every step; when it says True, :class:`OverShare` is raised (the part ran
    past its share)."""
    if stop is not None:
        inner = step

        def step() -> Any:
            out = inner()
            if stop():
                raise OverShare("a timed step loop")
            return out

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
                   "checkpoint writes between epochs (weights plus Adam's two moments: three times the model's "
                   "size each) are not counted",
    }


def choose_epoch_images(rate_train: float | None, rate_eval: float | None, allot_s: float, epochs: int,
                        devices: int = 1, fixed_s: float = 0.0, epoch_overhead_s: float = 4.0,
                        choices: tuple[int, ...] = (1024, 768, 512, 384, 256, 128),
                        max_images: int | None = None) -> int | None:
    """The largest phantom size (at most ``max_images``) whose ``epochs`` short
    ``paper``-profile epochs fit ``allot_s`` seconds.

    A phantom image becomes 1 + 2 x 0.22 = 1.44 items under the paper protocol (22 %
    positives, each also flipped and rotated), ~80 % of them trained on and ~20 % evaluated;
    ``epoch_overhead_s`` is each epoch's fixed cost (evaluation start-up, workers) and
    ``fixed_s`` any other fixed cost inside ``allot_s`` (the GPU check gives writing the
    phantom and the start-up shares of their own, so it passes 0)."""
    rt = rate_train or 100.0
    re_ = rate_eval or 3 * rt
    scale = max(1, devices) * ASSUMED_DDP_EFFICIENCY if devices > 1 else 1.0
    for n in choices:
        if max_images is not None and n > max_images:
            continue
        items = 1.44 * n
        per_epoch = epoch_overhead_s + (0.8 * items / rt + 0.2 * items / re_) / scale
        if fixed_s + epochs * per_epoch <= allot_s:
            return n
    return None
