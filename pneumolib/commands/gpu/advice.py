"""Recommended values of the GPU switches (precision, channels_last, cudnn_benchmark,
compile) from the measured rows."""

from __future__ import annotations

from typing import Any, Callable

from .budget import (
    ARCHS,
    CUDA_DEFAULT_PRECISION,
    PAPER_WORK,
    PRECISIONS_CUDA,
    SWITCH_GAIN_THRESHOLD,
    compute_seconds,
    epoch_compute_seconds,
    project_paper,
)


def _train_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in res.get("rows", []) if r.get("train_images_per_s")]


def plain_rate(res: dict[str, Any], arch: str, precision: str, cl: bool | None) -> dict[str, Any] | None:
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
    p = _choose(list(PRECISIONS_CUDA), lambda a, v: plain_rate(res, a, v, None), prec_default, work, threshold)
    p["config_default"] = d.precision
    p["note"] = ("speed only: 16-mixed is the paper's fp16 (with loss scaling); bf16-mixed needs no loss scaling "
                 "but has fewer mantissa bits; 32-true is the numerical reference. The paper profile pins 16-mixed")
    out["precision"] = p
    prec = p["recommended"] or prec_default
    c = _choose([False, True], lambda a, v: plain_rate(res, a, prec, v), d.channels_last, work, threshold)
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
            base = plain_rate(res, a, cp.get("precision"), cp.get("channels_last"))
            # the compiled model's evaluation was not timed (it would compile again): the
            # uncompiled evaluation rate stands in, so only training speed decides
            return {**r, "eval_images_per_s": r.get("eval_images_per_s") or (base or {}).get("eval_images_per_s")}
        return plain_rate(res, a, cp.get("precision"), cp.get("channels_last"))

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


def add_end_to_end(r: dict[str, Any], res: dict[str, Any], precisions=PRECISIONS_CUDA) -> dict[str, Any]:
    """The epoch part's end-to-end factor: the one-GPU compute-only seconds of its items (the
    measured U-Net row of the run's precision and memory format) over its measured epoch."""
    rc = r.get("run_config") or {}
    p_ = rc.get("precision") if rc.get("precision") in precisions else "16-mixed"
    cl_ = bool(rc.get("channels_last", False))
    ref = plain_rate(res, "unet", p_, cl_) or {}
    rt_, re_ = ref.get("train_images_per_s"), ref.get("eval_images_per_s")
    if rt_ and re_ and r.get("epoch_seconds") and r.get("n_items"):
        pred = epoch_compute_seconds(r["n_items"], rt_, re_)
        r["one_gpu_compute_seconds_predicted"] = round(pred, 3)
        r["end_to_end_factor"] = round(pred / r["epoch_seconds"], 4)
        r["end_to_end_reference_row"] = {"arch": "unet", "precision": p_, "channels_last": cl_}
        r["end_to_end_factor_means"] = (
            "one-GPU compute-only seconds of this epoch's items (the unet row of the run's precision and memory "
            "format) / the measured epoch seconds; a short phantom epoch weighs per-epoch fixed costs (evaluation "
            "start-up, the last partial batch) more than a paper-sized one does, so this understates the "
            "efficiency and the projection built on it is an upper bound")
    return r


def projections(res: dict[str, Any], rec: dict[str, Any], visible_gpus: int) -> dict[str, Any]:
    """The projected wall time of the paper profile as configured and at the recommended
    precision / memory format (``rec``: :func:`recommend`), from the rows and the epoch
    parts' end-to-end factors in ``res``; a combination without rows of both models says so."""
    ends: dict[int, float] = {}
    for key, r in res.items():
        if (key == "epoch" or key.startswith("epoch_")) and isinstance(r, dict) and r.get("end_to_end_factor"):
            ends[int(r["devices"])] = r["end_to_end_factor"]
    out: dict[str, Any] = {}
    combos = {"paper_profile_as_configured": ("16-mixed", False),
              "recommended_precision_and_memory_format": (rec["precision"]["recommended"],
                                                          bool(rec["channels_last"]["recommended"]))}
    for key, (p_, cl_) in combos.items():
        rows = {a: plain_rate(res, a, p_, cl_) for a in ARCHS}
        if all(rows.values()):
            proj = project_paper({a: rows[a]["train_images_per_s"] for a in ARCHS},  # type: ignore[index]
                                 {a: rows[a]["eval_images_per_s"] for a in ARCHS},  # type: ignore[index]
                                 end_to_end=ends, visible_gpus=visible_gpus)
            proj["precision"], proj["channels_last"] = p_, cl_
            if ends and (p_, cl_) != ("16-mixed", False):
                proj["assumed"] += ("; the end-to-end factors, measured against the 16-mixed channels-last-off "
                                    "compute rate, are applied to this combination's compute rate unchanged")
            out[key] = proj
        else:
            missing = [a for a, r in rows.items() if not r]
            out[key] = {"skipped": f"no {p_} channels_last={cl_} row of {', '.join(missing)}",
                        "precision": p_, "channels_last": cl_}
    return out
