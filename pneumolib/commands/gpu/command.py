"""``pneumo bench --gpu`` itself: the refusal without CUDA, the run, the summary table."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pneumolib.errors import ConfigError

from .budget import SKIPPABLE, NoCudaError
from .check import run_gpu_check
from .children import on_sigterm
from .measure import Settings


def parse_skip(skip: str | list[str] | tuple[str, ...] | None) -> set[str]:
    """The parts of ``--skip`` (comma-separated); an unknown one is a :class:`ConfigError`."""
    items = skip.split(",") if isinstance(skip, str) else list(skip or ())
    out = {x.strip() for x in items if x.strip()}
    bad = sorted(out - set(SKIPPABLE))
    if bad:
        raise ConfigError(f"--skip {','.join(bad)}: unknown part(s); valid: {', '.join(SKIPPABLE)}")
    return out


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
        if "not_measured" in r:
            return row.format(label, "-", "not measured: " + r["not_measured"])
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
    shown = {f"row:{r['arch']}:{r['precision']}:cl={r['channels_last']}" for r in res.get("rows", [])}
    for sk in res.get("skipped", []):
        if sk["part"] not in shown:
            lines.append(row.format(f"not measured {sk['part']}"[:44], "-", sk["reason"]))
    for er in res.get("errors", []):
        lines.append(row.format(f"error {er['part']}"[:44], "-", er["error"]))
    b = res.get("budget", {})
    lines.append(f"budget {b.get('budget_s')} s, used {b.get('seconds_used')} s"
                 + (f" (worst case by its shares {res['shares']['total_s']} s)" if res.get("shares") else ""))
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
    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="pneumo-gpu-check-"))  # phantom, cache, run folders, logs
    try:
        res = run_gpu_check(out=out, budget_s=budget_s, settings=s, skip=parts, work=work,
                            already_used_s=_process_age_s())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(format_gpu_table(res))
    print(f"\nwrote {res['_path']}")
    if res.get("abandoned_still_running"):
        # a part abandoned at its deadline may still hold the GPU: leave now rather than wait
        # for it in the interpreter's shutdown (the JSON and the table are written)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
