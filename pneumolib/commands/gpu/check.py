"""The whole GPU check: every part in priority order, each within its own share of the
budget, one JSON (:mod:`pneumolib.commands.gpu`).

How ``--budget-s`` holds by construction
----------------------------------------
When the check starts it takes what its process has used so far (``S``: Python, torch, the
imports, the JSON's header; measured) and splits what is left of the budget ``B``, less
``Settings.reserve_s`` (``R``) and ``Settings.margin_s`` (``M``), over the parts that will
run, in proportion to :data:`~pneumolib.commands.gpu.budget.SHARE_WEIGHTS`
(:func:`~pneumolib.commands.gpu.budget.plan_shares`). A part's deadline is the sum of the
shares up to and including its own: it may use what earlier parts left over, never a later
part's share. Parts left out up front (``--skip``, no C compiler for ``compile``, no CUDA
for the epoch) get no share and are recorded with their reason.

The deadlines are enforced: each part runs in a worker thread
(:func:`~pneumolib.commands.gpu.children.run_within`) that is abandoned at its deadline
(its timed loop stops at its next step; every child process group is killed by pid) and
recorded as ``not measured: over its N s share``. A subprocess's own timeout is its part's
deadline less ``KILL_GRACE_S`` (SIGTERM, then SIGKILL, each waited for), so it is gone by
the deadline. The epoch part splits its time: writing the phantom gets
``PHANTOM_FRACTION`` of it (the subprocess is killed at the end of that; the number of
images is sized from the phantom's speed, measured by writing two images in this process),
``EPOCH_STARTUP_FRACTION`` of the rest is the training command's start-up allowance, and
the epochs are sized to fit what remains; the start-up it really took is recorded.

Worst case (:func:`~pneumolib.commands.gpu.budget.worst_case_s`): the parts end by
``S + (B - S - R - M) = B - R - M``, whatever ``S`` was; then the projection, the final JSON
and the cleanup (pure Python, one file, bounded by ``R``): ``B - M`` in all. With the
defaults ``B`` = 300, ``R`` = 12, ``M`` = 8: the last deadline at 280 s, the end by 292 s.
The shares on one GPU with nothing skipped, as % of ``B - S - R - M`` (and seconds when
``S`` = 0; a measured ``S`` shrinks each in proportion; ``test_gpu_check`` recomputes this):

    flops:unet                          3.1 %    8.6 s
    row:unet:16-mixed:cl=False          3.7 %   10.3 s
    flops:resnet50                      0.9 %    2.6 s
    row:resnet50:16-mixed:cl=False      3.7 %   10.3 s
    epoch                              21.4 %   59.9 s
    row:<arch>:16-mixed:cl=True         2.4 %    6.9 s  (each of 2)
    row:<arch>:bf16-mixed:cl=False      2.4 %    6.9 s  (each of 2)
    row:<arch>:bf16-mixed:cl=True       2.4 %    6.9 s  (each of 2)
    cudnn:unet:off|on                   2.4 %    6.9 s  (each of 2)
    compile:unet                       18.3 %   51.4 s
    row:<arch>:32-true:cl=False         3.1 %    8.6 s  (each of 2)
    row:<arch>:32-true:cl=True          3.1 %    8.6 s  (each of 2)
    cudnn:resnet50:off|on               2.4 %    6.9 s  (each of 2)
    compile:resnet50                   12.2 %   34.3 s
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from .advice import add_end_to_end, plain_rate, projections, recommend
from .budget import (
    ARCHS,
    CHILD_STARTUP_S,
    EPOCH_STARTUP_FRACTION,
    KILL_GRACE_S,
    PHANTOM_FRACTION,
    SCHEMA,
    Budget,
    NotMeasured,
    OverShare,
    choose_epoch_images,
    gpu_peaks,
    part_plan,
    plan_shares,
    worst_case_s,
)
from .children import (
    NO_CC_REASON,
    abandoned_alive,
    compile_row,
    find_c_compiler,
    is_no_c_compiler,
    phantom_probe,
    run_epoch,
    run_within,
)
from .measure import Settings, add_flops, build_arch, count_flops, free_cuda, gpus, measure, tf32_conv, tf32_state

NOT_MEASURED = "not measured: "


def result_path(out_dir: Path | str, hostname: str | None = None, date: dt.date | None = None) -> Path:
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname or socket.gethostname()) or "host"
    return Path(out_dir) / f"gpu-{host}-{(date or dt.date.today()).isoformat()}.json"


def _s(x: float) -> str:
    """Seconds for a message: whole above 10 s, tenths below (the tests' budgets are small)."""
    return f"{max(x, 0.0):.0f}" if x >= 10 else f"{max(x, 0.0):.1f}"


def _one_reason(reasons: dict[str, str]) -> str | None:
    """One reason for a block (``compile``, ``cudnn_benchmark``) none of whose parts ran."""
    if not reasons:
        return None
    if len(set(reasons.values())) == 1:
        return next(iter(reasons.values()))
    return "; ".join(f"{p}: {r}" for p, r in reasons.items())


def run_gpu_check(out: Path | str | None = None, budget_s: float = 300.0, settings: Settings | None = None,
                  skip: set[str] | None = None, work: Path | str | None = None, *,
                  device: torch.device | None = None, already_used_s: float = 0.0,
                  clock: Callable[[], float] = time.monotonic,
                  measure_fn: Callable[..., dict[str, Any]] = measure,
                  flops_fn: Callable[[str, Settings, torch.device], dict[str, int]] | None = None,
                  epoch_fn: Callable[..., dict[str, Any]] = run_epoch,
                  compile_fn: Callable[..., dict[str, Any]] = compile_row,
                  probe_fn: Callable[[Path, int], float] = phantom_probe,
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every part in priority order, each within its share of ``budget_s`` seconds
    (counted from the process's start: ``already_used_s`` were used before this call); write
    the JSON after each part (``complete: false`` until the end; written whatever happens)
    and return the result (``_path``: the file). Every part is in ``parts`` with its status:
    ``ok``, ``not measured: <why>`` or ``failed: <error>``.

    ``device``, ``clock`` and the ``*_fn`` hooks exist for the tests (a CPU device, a fake
    clock, fake measurements); the command uses the defaults on ``cuda``."""
    from pneumolib.runio import atomic_write_json, git_commit, package_versions

    from pneumolib.commands.bench import ROOT, machine_info

    s = settings or Settings()
    skip = set(skip or ())
    device = device or torch.device("cuda")
    budget = Budget(budget_s, reserve_s=s.reserve_s, margin_s=s.margin_s, clock=clock, already_used_s=already_used_s)
    on_cuda = device.type == "cuda"
    cards = gpus() if on_cuda else []
    name = cards[0]["name"] if cards else None
    cap = tuple(int(c) for c in cards[0]["capability"].split(".")) if cards else None
    peaks = gpu_peaks(name)
    tf32 = tf32_state()
    tf32c = tf32_conv(tf32, cap)  # type: ignore[arg-type]
    visible = len(cards) if on_cuda else 1
    out_dir = Path(out) if out else ROOT / "benchmarks" / "results"
    path = result_path(out_dir)
    own_work = work is None
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="pneumo-gpu-check-"))
    res: dict[str, Any] = {
        "schema": SCHEMA, "complete": False,
        "command": "pneumo bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(), "gpus": cards, "visible_gpus": visible,
        "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version() if on_cuda else None,
        "versions": package_versions(), "git": git_commit(),
        "tf32": {**tf32, "convolutions_use_tf32": tf32c},
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
                         "reserve_s": budget.reserve_s, "margin_s": budget.margin_s}
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {k: v for k, v in res.items() if not k.startswith("_")})

    # -- the plan: every part's share and deadline, decided now --------------------------
    archs = [a for a in ARCHS if not (a == "resnet50" and "resnet50" in skip)]
    cc = find_c_compiler()
    plan = part_plan(archs, skip, visible, None if on_cuda or epoch_fn is not run_epoch else "not on CUDA",
                     None if cc else NO_CC_REASON)
    why_not = {p: why for p, _, why in plan if why}
    t_plan, dist = clock(), budget.distributable()
    shares = plan_shares(plan, dist)
    start_up = t_plan - budget.t0
    res["shares"] = {"start_up_s": round(start_up, 2), "distributed_s": round(dist, 2), "c_compiler": cc,
                     **{k: round(v, 2) for k, v in worst_case_s(budget_s, s.reserve_s, s.margin_s).items()},
                     "parts": {p: {"weight": v["weight"], "share_s": round(v["share_s"], 3),
                                   "deadline_s": round(start_up + v["ends_s"], 3)} for p, v in shares.items()},
                     "rule": "each part's deadline is the sum of the shares up to its own: time left over flows "
                             "forward, never backward; a part past its deadline is stopped and not measured"}
    details: dict[str, Any] = {}

    def status_of(part: str) -> str:
        return next(e["status"] for e in reversed(res["parts"]) if e["part"] == part)

    def reason_of(part: str) -> str:
        return status_of(part).removeprefix(NOT_MEASURED)

    def finish(entry: dict[str, Any], status: str) -> None:
        entry["status"] = status
        if status.startswith(NOT_MEASURED):
            res["skipped"].append({"part": entry["part"], "reason": status.removeprefix(NOT_MEASURED)})
        res["parts"].append(entry)
        write()

    def attempt(part: str, fn: Callable[[Any, float], Any], min_s: float = 0.0) -> Any:
        """``fn(stop, deadline)`` within the part's deadline: its value, or None (the reason
        is the part's status)."""
        entry: dict[str, Any] = {"part": part}
        if part not in shares:
            return finish(entry, NOT_MEASURED + why_not.get(part, "not planned"))
        sh = shares[part]
        deadline = t_plan + sh["ends_s"]
        avail = deadline - clock()
        entry.update(share_s=round(sh["share_s"], 3), available_s=round(avail, 3))
        if avail <= 0:
            return finish(entry, NOT_MEASURED + f"no time left of its {_s(sh['share_s'])} s share")
        if avail < min_s:
            return finish(entry, NOT_MEASURED + f"{_s(avail)} s left of its {_s(sh['share_s'])} s share (with what "
                          f"earlier parts left over), it needs at least {_s(min_s)} s")
        t = clock()
        o = run_within(lambda stop: fn(stop, deadline), deadline, clock, part)
        entry["seconds"] = round(clock() - t, 3)
        details[part] = getattr(o.error, "detail", None)
        if o.over or isinstance(o.error, OverShare):
            return finish(entry, NOT_MEASURED + f"over its {_s(avail)} s share")
        if isinstance(o.error, NotMeasured):
            return finish(entry, NOT_MEASURED + str(o.error))
        if o.error is not None:
            msg = f"{type(o.error).__name__}: {o.error}"[:300]
            res["errors"].append({"part": part, "error": msg, "traceback": o.traceback})
            return finish(entry, "failed: " + msg)
        err = o.value.get("error") if isinstance(o.value, dict) else None
        finish(entry, f"failed: {err}" if err else "ok")
        return o.value

    def _count(arch: str, s_: Settings, dev: torch.device) -> dict[str, int]:
        model = build_arch(arch, s_)
        try:
            return count_flops(model, s_.size, dev)
        finally:
            del model
            free_cuda(dev)

    def row_part(part: str, arch: str, precision: str, cl: bool, **kw) -> dict[str, Any]:
        def go(stop, deadline):
            echo(f"  {arch} {precision} channels_last={cl}" + "".join(f" {k}={v}" for k, v in kw.items()))
            others = abandoned_alive()
            row = measure_fn(arch, precision, cl, s, device, stop=stop.is_set, **kw)
            add_flops(row, res["flops"].get(arch), peaks, tf32c)
            if others:
                row["measured_while_abandoned_parts_ran"] = others
            return row

        row = attempt(part, go, s.row_min_s)
        return row if row is not None else {
            "arch": arch, "precision": precision, "channels_last": cl, "compile": False,
            "cudnn_benchmark": bool(kw.get("cudnn_benchmark", False)), "not_measured": reason_of(part)}

    def epoch_part(key: str, devices: int) -> None:
        def go(stop, deadline):
            t0 = clock()
            avail = deadline - t0
            base = plain_rate(res, "unet", "16-mixed", False) or {}
            rt, re_ = base.get("train_images_per_s"), base.get("eval_images_per_s")
            ph_share = PHANTOM_FRACTION * avail
            allot = (avail - ph_share) * (1 - EPOCH_STARTUP_FRACTION) - KILL_GRACE_S
            sizing: dict[str, Any] = {"share_s": round(avail, 1), "phantom_share_s": round(ph_share, 1),
                                      "train_startup_allowance_s": round((avail - ph_share) * EPOCH_STARTUP_FRACTION, 1),
                                      "epochs_allot_s": round(allot, 1)}
            epochs, n = s.epochs, s.epoch_images
            prior = (res.get("epoch") or {}).get("phantom_images")
            if n is None and prior and choose_epoch_images(rt, re_, allot, epochs, devices, max_images=prior) == prior:
                n = prior  # the phantom the first epoch part wrote: no time to write it again
            if n is None:
                per_img = probe_fn(work, s.size)  # measured: seconds per image on one core
                startup = already_used_s or CHILD_STARTUP_S
                workers = max(1, (os.cpu_count() or 1) // 2)  # half the cores: the pool's start-up, JPEG
                fit = int((ph_share - (clock() - t0) - startup) * workers / per_img) if per_img > 0 else None
                sizing.update(phantom_seconds_per_image_one_core=round(per_img, 4), child_startup_s=round(startup, 2),
                              phantom_images_that_fit=fit)
                for epochs in dict.fromkeys((s.epochs, 1)):
                    n = choose_epoch_images(rt, re_, allot, epochs, devices, max_images=fit)
                    if n:
                        break
                if n is None:
                    raise NotMeasured(f"even 128 phantom images in one epoch would not fit its {_s(avail)} s share "
                                      f"({_s(ph_share)} s for the phantom, {_s(allot)} s for the epochs)")
            echo(f"  epoch: paper profile, {devices} GPU(s), phantom {n} images, {epochs} epoch(s)")
            r = epoch_fn(work, n, devices, epochs, deadline - clock() - KILL_GRACE_S, size=s.size,
                         batch_size=s.batch_size, phantom_timeout_s=max(0.1, ph_share - (clock() - t0)))
            r["sizing"] = sizing
            if r.get("timed_out"):
                e = (NotMeasured(f"writing the phantom ran over its {_s(ph_share)} s share")
                     if r["timed_out"] == "phantom" else OverShare("the training command"))
                e.detail = r  # type: ignore[attr-defined]
                raise e
            add_end_to_end(r, res)
            return r

        r = attempt(key, go, s.epoch_min_s)
        if r is None:
            st = status_of(key)
            res[key] = {"devices": devices, **(details.get(key) or {}),
                        **({"skipped": reason_of(key)} if st.startswith(NOT_MEASURED) else {"error": st})}
        else:
            res[key] = r

    def switches_part(arch: str, prec: str, cl: bool) -> None:
        pair, gone = {}, {}
        for on in ("off", "on"):
            row = row_part(f"cudnn:{arch}:{on}", arch, prec, cl, cudnn_benchmark=on == "on")
            if "not_measured" in row:
                gone[f"cudnn:{arch}:{on}"] = row["not_measured"]
            else:
                pair[on] = row
        if pair:
            res["cudnn_benchmark"]["pairs"][arch] = pair
        res["cudnn_benchmark"]["not_measured"].update(gone)

        def go(stop, deadline):
            echo(f"  compile {arch} {prec} channels_last={cl}")
            try:
                row = compile_fn(arch, prec, cl, s, deadline - clock() - KILL_GRACE_S, work)
            except Exception as e:
                if is_no_c_compiler(str(e)):
                    raise NotMeasured(NO_CC_REASON) from e
                raise
            if row.get("no_c_compiler") or is_no_c_compiler(row.get("error")):
                raise NotMeasured(NO_CC_REASON)
            if row.get("timed_out"):
                raise OverShare(f"compiling {arch}")
            return add_flops(row, res["flops"].get(arch), peaks, tf32c)

        row = attempt(f"compile:{arch}", go, s.compile_min_s)
        if row is not None:
            res["compile"]["rows"][arch] = row
        else:
            res["compile"]["not_measured"][f"compile:{arch}"] = reason_of(f"compile:{arch}")

    def stages() -> None:
        # 1. core: the paper's precision, the current defaults
        echo(f"GPU check on {name or device}, budget {budget_s:.0f} s -> {path}")
        for arch in ARCHS:
            f = attempt(f"flops:{arch}", lambda stop, deadline, a=arch: (flops_fn or _count)(a, s, device))
            if f:
                res["flops"][arch] = f
            res["rows"].append(row_part(f"row:{arch}:16-mixed:cl=False", arch, "16-mixed", False))
        # 2. one short real paper-profile run on all visible GPUs
        epoch_part("epoch", visible)
        # 3. channels-last and bf16 (the candidates for the defaults)
        for precision, cl in (("16-mixed", True), ("bf16-mixed", False), ("bf16-mixed", True)):
            for arch in ARCHS:
                res["rows"].append(row_part(f"row:{arch}:{precision}:cl={cl}", arch, precision, cl))
        # 4. the measured multi-GPU speed-up
        if visible > 1:
            epoch_part("epoch_1gpu", 1)
        # 5. cudnn.benchmark off / on (back to back) and torch.compile (a subprocess) at the
        # recommended precision / memory format: the U-Net now, the ResNet-50 after fp32
        rec = recommend(res)
        prec, cl = rec["precision"]["recommended"], bool(rec["channels_last"]["recommended"])
        res["cudnn_benchmark"] = {"precision": prec, "channels_last": cl, "pairs": {}, "not_measured": {}}
        res["compile"] = {"precision": prec, "channels_last": cl, "rows": {}, "not_measured": {}}
        switches_part("unet", prec, cl)
        # 6. fp32 (the numerical reference), then the ResNet-50's switches
        for precision, cl_ in (("32-true", False), ("32-true", True)):
            for arch in ARCHS:
                res["rows"].append(row_part(f"row:{arch}:{precision}:cl={cl_}", arch, precision, cl_))
        switches_part("resnet50", prec, cl)
        for block, has in (("cudnn_benchmark", "pairs"), ("compile", "rows")):
            if not res[block][has]:
                res[block]["skipped"] = _one_reason(res[block]["not_measured"]) or "no row measured"
        # 7. projection and recommendations (no GPU work: inside the reserve)
        rec = recommend(res)
        res["recommendations"] = rec
        res["projection"] = projections(res, rec, visible)
        res["complete"] = True

    try:
        stages()
    finally:  # the JSON is written whatever happened
        res["seconds_total"] = round(budget.used(), 1)
        still = abandoned_alive()
        if still:
            res["abandoned_still_running"] = still
        write()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    res["_path"] = str(path)
    return res
