"""The whole GPU check: every part in priority order within the budget, one JSON
(:mod:`pneumolib.commands.gpu`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from pneumolib.errors import ConfigError

from .advice import plain_rate, recommend
from .budget import (
    ARCHS,
    PRECISIONS_CUDA,
    SCHEMA,
    SKIPPABLE,
    Budget,
    choose_epoch_images,
    epoch_compute_seconds,
    gpu_peaks,
    project_paper,
)
from .children import compile_row, run_epoch
from .measure import Settings, add_flops, build_arch, count_flops, free_cuda, measure


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

    from pneumolib.commands.bench import ROOT, machine_info

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
            free_cuda(dev)

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
        base = plain_rate(res, "unet", "16-mixed", False)
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
            ref = plain_rate(res, "unet", p_, cl_) or {}
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
        rows = {a: plain_rate(res, a, p_, cl_) for a in ARCHS}
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
