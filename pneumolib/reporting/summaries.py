"""The numbers in README.md and docs/*.md, generated from committed summaries of named runs.

A demo run leaves its tables under ``figures/<profile>/`` and its timings under
``papermill_runs/<profile>/``. :func:`collect` copies the small summaries of one such run
(CSV tables, a few PNG figures, the per-notebook seconds) into ``figures/readme/<set>/`` with
a ``RUN.json`` stamp (the commits the runs were trained on, date, command, and ``machine``:
:func:`pneumolib.runio.machine_facts` as the runs' ``metrics.json`` recorded it, else of the
machine that collects). Blocks of other sources: ``bench/<file>.<part>`` from
``benchmarks/results/<file>.json`` and ``code/params`` (:mod:`pneumolib.reporting.bench_blocks`),
``real/paper_split`` (:mod:`pneumolib.reporting.real_split`, written by ``... summaries real``).
:func:`render` writes Markdown tables from those files into the blocks of the documents
marked ``<!-- summary:<set>/<name> -->`` ... ``<!-- /summary -->``; :func:`check` (a test)
fails when a block differs from what the summaries give, so no number is typed by hand::

    python -m pneumolib.reporting.summaries collect --home /tmp/demo --set demo --command "..."
    python -m pneumolib.reporting.summaries render       # rewrite the blocks
    python -m pneumolib.reporting.summaries check        # exit 1 when a block or a stamp is stale

Blocks of two sets (``replication/verdicts.<a>.<b>``, ``replication/spread.<a>.<b>``) and
``<set>/separation``: :mod:`pneumolib.reporting.replication`.
Block names: ``stamp``, ``table4``, ``pairs``, ``copy_through``, ``timing``, ``timing_total``, ``realism``, ``leakage``, ``image_level``,
``pretext``, ``label_efficiency``; each reads ``<name>.csv`` (``stamp``: ``RUN.json``;
``timing``: every ``timing-*.csv``, :mod:`pneumolib.reporting.stamps`) of its set.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from pneumolib import runio

from . import bench_blocks, real_split, replication, stamps
from .summary_tables import FORMATTERS
# the formatters, also under this module's name (their home until the split)
from .summary_tables import (fmt_ae_choice, fmt_copy_through, fmt_image_level, fmt_label_efficiency,  # noqa: F401
                             fmt_leakage, fmt_pairs, fmt_pairs_short, fmt_pretext, fmt_realism, fmt_realism_short,
                             fmt_table4, fmt_table4_short)

ROOT = Path(__file__).resolve().parents[2]
#: Where the committed summaries live, one folder per named run ("set").
SUMMARIES = ROOT / "figures" / "readme"
#: The documents whose blocks are generated.
DOCUMENTS = ("README.md", "docs/RESULTS.md", "docs/STUDIES.md", "docs/DATA.md", "docs/METHODS.md",
             "docs/BENCHMARKS.md")
#: What collect copies from ``figures/<profile>/`` when present.
TABLES = ("table4", "pairs", "ae_choice", "realism", "leakage", "image_level", "pretext", "label_efficiency")
FIGURES = ("figure5", "figure6", "figure7", "label_efficiency", "realism")

BLOCK = re.compile(r"(<!-- summary:(?P<key>[\w.-]+/[\w.-]+) -->\n)(?P<body>.*?)(<!-- /summary -->)", re.S)


# -- collect -----------------------------------------------------------------------------------
def _run_commits(home: Path, profile: str) -> tuple[list[str], list[str]]:
    """The commits (``+dirty`` when the tree had changes) and results-path hashes the runs'
    ``metrics.json`` recorded."""
    commits, hashes = [], []
    for m in sorted((home / "results" / profile).rglob("metrics.json")):
        prov = json.loads(m.read_text()).get("provenance") or {}
        git = prov.get("git") or {}
        commits.append(f"{git.get('commit', '?')}{'+dirty' if git.get('dirty') else ''}")
        if (prov.get("code") or {}).get("results"):
            hashes.append(prov["code"]["results"])
    return sorted(set(commits)), sorted(set(hashes))


def _main_runs(home: Path, profile: str) -> pd.DataFrame:
    """One row per finished fine-tuning run of the main comparison (not the autoencoders, not
    the studies): ``run, scenario, seed, best_epoch, epochs_run, val_dice_pooled, dice_pooled,
    dice_per_image`` (test metrics of the best checkpoint)."""
    rows = []
    for m in sorted((home / "results" / profile).glob("*/metrics.json")):
        d = json.loads(m.read_text())
        if d.get("task") != "seg" or not re.fullmatch(rf"{re.escape(str(d.get('scenario')))}(-seed\d+)?",
                                                      m.parent.name):
            continue  # autoencoders, classifiers, and runs other than the comparison's
        cfg = ((d.get("provenance") or {}).get("config") or {})
        rows.append({"run": m.parent.name, "scenario": d["scenario"], "seed": cfg.get("seed"),
                     "best_epoch": d.get("best_epoch"), "epochs_run": d.get("epochs_run"),
                     "val_dice_pooled": (d.get("val") or {}).get("dice_pooled"),
                     "dice_pooled": (d.get("test") or {}).get("dice_pooled"),
                     "dice_per_image": (d.get("test") or {}).get("dice_per_image")})
    return pd.DataFrame(rows)


def _run_machine(home: Path, profile: str) -> tuple[dict[str, Any], str]:
    """The machine facts the runs' ``metrics.json`` recorded (``provenance.device.machine``)
    when every run recorded the same machine, else :func:`runio.machine_facts` of this machine.
    How the ISA was found (``*_method``, ``*_text``: the probe, or the CPU flags when the probe
    timed out) does not make another machine; the facts most runs recorded are kept."""
    seen: list[tuple[dict[str, Any], int]] = []
    for m in sorted((home / "results" / profile).rglob("metrics.json")):
        facts = ((json.loads(m.read_text()).get("provenance") or {}).get("device") or {}).get("machine")
        if isinstance(facts, dict):
            for i, (f, n) in enumerate(seen):
                if f == facts:
                    seen[i] = (f, n + 1)
                    break
            else:
                seen.append((facts, 1))

    def machine(f: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in f.items() if not k.endswith(("_method", "_text"))}

    if seen and all(machine(f) == machine(seen[0][0]) for f, _ in seen):
        # most runs first; on a tie the facts of a probe that answered
        best = max(seen, key=lambda fn: (fn[1], "inferred" not in str(fn[0].get("onednn_isa_method"))))
        return best[0], "the runs' metrics.json"
    return runio.machine_facts(), "the machine that collected" + (" (the runs recorded several)" if seen else "")


def collect(home: Path | str, set_name: str, profile: str = "demo", command: str = "", label: str = "",
            what: Sequence[str] = ("tables", "figures", "timing"), setup_seconds: float | None = None,
            wall_seconds: float | None = None, timings_note: str = "") -> Path:
    """Copy the summaries of the run in ``home`` into ``figures/readme/<set_name>/``.

    Args:
        home: the run's ``PNEUMO_HOME``.
        command: how the run was made (recorded in ``RUN.json``).
        label: name of this run's timing column (``timing-<label>.csv``; default: the date).
        what: ``tables`` (``figures/<profile>/*.csv`` of :data:`TABLES`), ``figures`` (PNG of
            :data:`FIGURES`), ``timing`` (seconds per notebook from the completion markers).
        setup_seconds, wall_seconds: wall clock of ``./setup.sh`` and of ``pneumo reproduce``
            as the caller read them (``scripts/time_fresh_clone.sh``), stored with the timing.
        timings_note: how those wall clocks were read (shown under the timing table).

    Returns:
        The set's folder.
    """
    home = Path(home)
    figs = home / "figures" / profile
    out = SUMMARIES / set_name
    out.mkdir(parents=True, exist_ok=True)
    stamp_path = out / "RUN.json"
    stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
    machine, machine_from = _run_machine(home, profile)
    if "tables" in what:
        for t in TABLES:
            if (figs / f"{t}.csv").exists():
                shutil.copyfile(figs / f"{t}.csv", out / f"{t}.csv")
        commits, hashes = _run_commits(home, profile)
        stamp.update({"commits": commits, "results_code": hashes, "profile": profile,
                      "command": command or stamp.get("command", ""),
                      "collected": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                      "machine": machine, "machine_from": machine_from})
        ct = []
        for ae in ("ae_xray", "ae_mask", "ae_genesis", "ae_xray_noskip"):
            mp = home / "results" / profile / ae / "metrics.json"
            if mp.exists():
                c = json.loads(mp.read_text()).get("copy_through") or {}
                ct.append({"autoencoder": ae, **{k: c.get(k) for k in ("mse", "mse_top_skip_zeroed",
                                                                      "ratio_zeroed_over_normal",
                                                                      "mse_identity_baseline", "n_images")}})
        if ct:
            runio.atomic_write_csv(out / "copy_through.csv", pd.DataFrame(ct))
        runs = _main_runs(home, profile)
        if not runs.empty:
            runio.atomic_write_csv(out / "runs.csv", runs)
    if "figures" in what:
        for f in FIGURES:
            if (figs / f"{f}.png").exists():
                shutil.copyfile(figs / f"{f}.png", out / f"{f}.png")
    if "timing" in what:
        rows = []
        for m in sorted((home / "papermill_runs" / profile).glob("*.done.json")):
            d = json.loads(m.read_text())
            rows.append({"notebook": d["name"], "seconds": float(d["seconds"])})
        if rows:
            label = label or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
            df = pd.DataFrame(rows)
            runio.atomic_write_csv(out / f"timing-{label}.csv", df)
            walls = {k: round(float(v), 1) for k, v in (("setup_seconds", setup_seconds),
                                                        ("reproduce_wall_seconds", wall_seconds)) if v is not None}
            stamp.setdefault("timings", {})[label] = {"command": command, "notebooks_seconds": round(df["seconds"].sum(), 1),
                                                      **walls, "machine": machine, "machine_from": machine_from}
            if timings_note:
                stamp["timings_note"] = timings_note
    runio.atomic_write_json(stamp_path, stamp)
    return out


def block(key: str, root: Path = SUMMARIES) -> str:
    """The Markdown of block ``<set>/<name>`` from the committed summaries."""
    set_name, name = key.split("/", 1)
    folder = root / set_name
    if set_name in ("bench", "code"):
        return bench_blocks.block(name)
    if set_name == "replication" or name in ("separation", "separation_short"):
        return replication.block(key, root)
    if set_name == "real":
        return real_split.fmt(json.loads((folder / f"{name}.json").read_text()))
    if name == "stamp":
        return stamps.fmt_stamp(json.loads((folder / "RUN.json").read_text()))
    if name in ("timing", "timing_total"):
        return stamps.timing_block(folder, name)
    if name not in FORMATTERS:
        raise KeyError(f"unknown summary block {name!r}; known: stamp, timing, timing_total, {', '.join(FORMATTERS)}")
    csv_name = name.removesuffix("_short")
    return FORMATTERS[name](pd.read_csv(folder / f"{csv_name}.csv"))


# -- render / check ---------------------------------------------------------------------------------
def _rendered(text: str, root: Path) -> str:
    return BLOCK.sub(lambda m: m.group(1) + block(m.group("key"), root) + m.group(4), text)


def render(documents: Sequence[str] = DOCUMENTS, base: Path = ROOT, root: Path = SUMMARIES) -> list[Path]:
    """Rewrite every summary block of ``documents``; returns the files that changed."""
    changed = []
    for doc in documents:
        p = base / doc
        if not p.exists():
            continue
        text = p.read_text()
        new = _rendered(text, root)
        if new != text:
            p.write_text(new)
            changed.append(p)
    return changed


def check(documents: Sequence[str] = DOCUMENTS, base: Path = ROOT, root: Path = SUMMARIES) -> list[str]:
    """``["<document>: <block>", ...]`` of the blocks whose text differs from the summaries."""
    stale = []
    for doc in documents:
        p = base / doc
        if not p.exists():
            continue
        for m in BLOCK.finditer(p.read_text()):
            if m.group("body") != block(m.group("key"), root):
                stale.append(f"{doc}: {m.group('key')}")
    return stale


def stale_stamps(root: Path | None = None, repo: Path = ROOT) -> list[str]:
    """Why each set's ``RUN.json`` no longer describes the code
    (:func:`pneumolib.reporting.stamps.stale_reasons`), with the command that regenerates it."""
    out = []
    for run in sorted((root or SUMMARIES).glob("*/RUN.json")):
        out += stamps.stale_reasons(run.parent.name, json.loads(run.read_text()), repo, repo / "pneumolib")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pneumolib.reporting.summaries", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="copy a run's summaries into figures/readme/<set>/")
    c.add_argument("--home", required=True)
    c.add_argument("--set", required=True, dest="set_name")
    c.add_argument("--profile", default="demo")
    c.add_argument("--command", default="")
    c.add_argument("--label", default="")
    c.add_argument("--what", default="tables,figures,timing")
    c.add_argument("--setup-seconds", type=float, default=None, help="wall clock of ./setup.sh before the run")
    c.add_argument("--wall-seconds", type=float, default=None, help="wall clock of the run's pneumo reproduce")
    c.add_argument("--timings-note", default="", help="how the wall clocks were read")
    sub.add_parser("real", help="measure the paper protocol on the real annotation table into "
                                 "figures/readme/real/ (needs torchxrayvision)")
    sub.add_parser("render", help="rewrite the summary blocks of README.md and docs/")
    sub.add_parser("check", help="exit 1 when a summary block differs from the summaries, or a set's "
                                  "stamp no longer describes the code")
    args = ap.parse_args(argv)
    if args.cmd == "collect":
        out = collect(args.home, args.set_name, args.profile, args.command, args.label, args.what.split(","),
                      args.setup_seconds, args.wall_seconds, args.timings_note)
        print(f"collected into {out}")
        return 0
    if args.cmd == "real":
        out = SUMMARIES / "real" / f"{real_split.NAME}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        runio.atomic_write_json(out, real_split.compute())
        print(f"wrote {out}")
        return 0
    if args.cmd == "render":
        for p in render():
            print(f"rewrote {p}")
        return 0
    stale = check()
    for s in stale:
        print(f"stale: {s}")
    old = stale_stamps()
    for s in old:
        print(f"stale stamp: {s}")
    return 1 if stale or old else 0


if __name__ == "__main__":
    sys.exit(main())
