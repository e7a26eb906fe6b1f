"""The numbers of docs/BENCHMARKS.md, written from the committed result files of the benchmarks.

``benchmarks/bench_data.py`` writes ``benchmarks/results/data-<host>-<date>.json`` and
``pneumo bench`` writes ``benchmarks/results/<host>-<date>.json``; the page's blocks
``<!-- summary:bench/<file stem>.<part> -->`` are rendered from them by
:mod:`pneumolib.reporting.summaries` (``render``; ``check`` in the tests), so no figure of the
page is typed by hand. Parts:

``stamp``
    the command, date, machine and versions the file records (and that it records no commit);
``data``
    images/s per loader, online augmentation and worker count (either file);
``training``
    Lightning against a plain loop: which model each row is (norm, width, size, batch,
    precision, device), images/s, and the ratios;
``inference``
    images per minute of the ``pneumo predict`` path.

``code/params`` is not a measurement of a run: it is :func:`pneumolib.models.parts.param_counts`
computed from the code when the page is rendered (``pneumo params``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: Where the benchmarks' result files are committed.
RESULTS = ROOT / "benchmarks" / "results"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _num(x: Any, d: int = 1) -> str:
    """``x`` with thousands separators and ``d`` decimals (none from 100 up)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "?"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.{d}f}"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# -- which model ------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def unet_parameters(base_width: int, norm: str) -> int:
    """Parameters of the paper U-Net (1 in, 1 out) of ``base_width`` and ``norm``."""
    from pneumolib.models.parts import count_parameters
    from pneumolib.models.unet import UNet

    return count_parameters(UNet(1, 1, base_width=int(base_width), norm=norm))


def unet_norm(t: dict[str, Any]) -> str:
    """The norm of a timed U-Net: as recorded, or (files written before the benchmarks
    recorded it) the norm whose parameter count equals the recorded one."""
    if t.get("norm"):
        return f"`{t['norm']}`"
    width, params = t.get("base_width"), t.get("parameters")
    if width and params:
        for norm in ("none", "batch"):
            if unet_parameters(int(width), norm) == int(params):
                return f"`{norm}` (not recorded; the norm whose parameter count matches)"
    return "not recorded"


def model_name(t: dict[str, Any]) -> str:
    if t.get("arch") == "unet":
        return f"paper U-Net, width {t.get('base_width')}, norm {unet_norm(t)}"
    if t.get("arch") == "resnet50":
        return "smp ResNet-50 U-Net (BatchNorm, as ResNet has)"
    return str(t.get("arch", "?"))


# -- the parts --------------------------------------------------------------------------------
def fmt_stamp(res: dict[str, Any], path: Path) -> str:
    m = res.get("machine") or {}
    if m:
        gpu = m.get("gpu") or "no GPU"
        load = m.get("load_average") or []
        end = m.get("load_average_end") or []
        machine = (f"host `{m.get('hostname', '?')}`, {m.get('cpu_count', '?')} CPUs, torch threads "
                   f"{m.get('torch_threads', '?')}, {gpu}"
                   + (f"; 1-min load average {load[0]:.2f} at the start" if load else "")
                   + (f", {end[0]:.2f} at the end" if end else ""))
        v = res.get("versions") or {}
        versions = ", ".join(f"{k} {v[k]}" for k in ("torch", "pytorch-lightning") if v.get(k))
    else:  # benchmarks/bench_data.py's flat record
        load = res.get("load_average") or []
        machine = (f"host `{res.get('host', '?')}`, {res.get('cpus', '?')} CPUs"
                   + (f"; 1-min load average {load[0]:.2f} at the end" if load else "")) if res.get("host") \
            else "machine not recorded"
        versions = ", ".join(f"{k} {res[k]}" for k in ("torch", "albumentations", "opencv") if res.get(k))
    commit = (res.get("provenance") or {}).get("git", {}).get("commit") or res.get("commit")
    return (f"`{res.get('command', '?')}`, {res.get('date', 'date not recorded')}, on {machine}"
            + (f"; {versions}" if versions else "")
            + (f"; commit `{str(commit)[:12]}`" if commit else "; the file records no commit")
            + f" (`{_rel(path)}`).\n")


def fmt_data(res: dict[str, Any]) -> str:
    d = res if "rows" in res else res.get("data") or {}
    if "rows" not in d:
        return f"Not measured: {d.get('skipped', 'no data part in this file')}.\n"
    rows = []
    for r in d["rows"]:
        reps = r.get("images_per_s_all_repeats") or r.get("images_per_s_repeats")
        how = (f"best of {len(reps)}" if "images_per_s_all_repeats" in r else f"median of {len(reps)}") \
            if reps else "one pass"
        rows.append([r["loader"], "yes" if r["online_aug"] else "no", str(r["num_workers"]),
                     _num(r["images_per_s"]), how])
    head = (f"Data: {d.get('data') or str(d.get('size', '?')) + ' px'}; batch {d.get('batch_size', '?')}"
            + (f", {_num(d['train_items'])} training items" if "train_items" in d else "")
            + (f", {d['batches_timed']} batches timed" if "batches_timed" in d else "") + ":")
    return head + "\n\n" + _md(["loader", "online augmentation", "workers", "images/s", "statistic"], rows)


def _spread(t: dict[str, Any]) -> str:
    """How much slower the slowest repeat of a contender was than its fastest (the larger)."""
    secs = t.get("seconds_repeats") or {}
    worst = max((max(v) / min(v) - 1 for v in secs.values() if v and min(v) > 0), default=None)
    return "" if worst is None else f"+{100 * worst:.0f} %"


def fmt_training(res: dict[str, Any]) -> str:
    tr = res.get("training") or {}
    if not tr:
        return "Not measured: no training part in this file.\n"
    rows = []
    for t in sorted(tr.values(), key=lambda t: t.get("arch") != "unet"):
        ips = t.get("images_per_s") or {}
        rows.append([model_name(t), f"{t.get('size')} px, batch {t.get('batch_size')}",
                     f"{t.get('precision')}, {t.get('device')}",
                     f"{_num(ips.get('plain'))} img/s", f"{_num(ips.get('lightning'))} img/s",
                     f"{t.get('ratio_lightning_over_plain', float('nan')):.3f}",
                     f"{t.get('ratio_lightning_over_plain_median', float('nan')):.3f}",
                     f"**{t.get('ratio_lightning_over_plain_paired_median', float('nan')):.3f}**",
                     _spread(t)])
    t0 = next(iter(tr.values()))
    return (f"{t0.get('steps_timed')} timed steps after {t0.get('warmup_steps')} warm-up steps, "
            f"{t0.get('repeats')} repeats with the order alternated; ratios are Lightning over plain.\n\n"
            + _md(["model", "input", "precision, device", "plain loop (best)", "Lightning (best)",
                   f"ratio: best of {t0.get('repeats')}", "median", "paired median",
                   "slowest repeat against the fastest"], rows))


def fmt_inference(res: dict[str, Any]) -> str:
    inf = res.get("inference")
    if not inf:
        return "Not measured: no inference part in this file.\n"
    norm = f"`{inf['norm']}`" if inf.get("norm") else \
        unet_norm({"base_width": inf.get("base_width") or (res.get("settings") or {}).get("infer_base_width")})
    model = inf.get("model", "?").split(", norm=")[0]
    return (f"The full predict path of `pneumo predict` ({inf.get('images')} PNGs of {inf.get('native_size')} px "
            f"resized to {inf.get('size')} px, {model}, norm {norm}, batch {inf.get('batch_size')}, "
            f"{inf.get('device')}, {inf.get('torch_threads')} torch threads; reading, post-processing and "
            f"writing the CSV, a mask and an overlay per image included): "
            f"**{_num(inf.get('images_per_min'))} images/min**, median of "
            f"{len(inf.get('seconds_repeats') or []) or '?'} passes after a warm-up.\n")


PARTS = {"data": fmt_data, "training": fmt_training, "inference": fmt_inference}


def params_block() -> str:
    from pneumolib.models.parts import param_counts

    rows = [[name.strip(), f"{n:,d}"] for name, n in param_counts()]
    return ("`pneumo params` (one input channel, one output channel), computed from the code when this "
            "page is rendered:\n\n" + _md(["model", "parameters"], rows))


def block(name: str, folder: Path = RESULTS) -> str:
    """The Markdown of ``bench/<file stem>.<part>`` (or ``code/params`` with ``name="params"``)."""
    if name == "params":
        return params_block()
    stem, _, part = name.rpartition(".")
    path = folder / f"{stem}.json"
    if not stem or not path.exists():
        raise FileNotFoundError(f"no benchmark result {path} for block bench/{name}")
    res = json.loads(path.read_text())
    if part == "stamp":
        return fmt_stamp(res, path)
    if part not in PARTS:
        raise KeyError(f"unknown benchmark part {part!r}; known: stamp, {', '.join(PARTS)}")
    return PARTS[part](res)
