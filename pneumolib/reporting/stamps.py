"""The record of a collected run in words: its stamp (commits, machine, command) and its timings.

Used by :mod:`pneumolib.reporting.summaries` for the blocks ``<set>/stamp``, ``<set>/timing``
and ``<set>/timing_total``. The machine and the commands come from the set's ``RUN.json``
only: a stamp without a machine says "machine not recorded".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from pneumolib.machine import machine_summary


def _f(v: Any, d: int = 1) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if x != x else f"{x:.{d}f}"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine_text(stamp: dict[str, Any]) -> str:
    """The machine of a ``RUN.json`` in words: its ``machine`` dict (one line), or the text an
    older stamp holds; "machine not recorded" when it has none."""
    m = stamp.get("machine")
    if isinstance(m, dict) and m:
        return machine_summary(m)
    return str(m) if m else "machine not recorded"


def fmt_stamp(stamp: dict[str, Any]) -> str:
    commits = ", ".join(f"`{c[:12]}{'+dirty' if c.endswith('+dirty') else ''}`" for c in stamp.get("commits", [])) or "?"
    lines = [f"Measured on commit {commits} ({machine_text(stamp)}), collected {stamp.get('collected', '?')}."]
    if stamp.get("command"):
        lines.append(f"Command: `{stamp['command']}`.")
    return " ".join(lines) + "\n"


def fmt_timing(frames: dict[str, pd.DataFrame], walls: dict[str, dict[str, Any]] | None = None) -> str:
    """Seconds per notebook of each run; ``walls`` (``RUN.json`` ``timings``) adds the wall
    clock of ``pneumo reproduce`` and of ``./setup.sh`` when they were recorded."""
    labels = sorted(frames)
    walls = walls or {}
    names = list(dict.fromkeys(n for f in frames.values() for n in f["notebook"]))
    rows = []
    for n in names:
        rows.append([f"`{n}`", *[_f(frames[k].set_index("notebook")["seconds"].get(n), 1) for k in labels]])
    rows.append(["**all notebooks**", *[f"**{_f(frames[k]['seconds'].sum() / 60, 1)} min**" for k in labels]])
    for key, what in (("reproduce_wall_seconds", "`pneumo reproduce`, wall clock"),
                      ("setup_seconds", "`./setup.sh`, before it")):
        if any(key in walls.get(k, {}) for k in labels):
            rows.append([what, *[f"{walls.get(k, {}).get(key, 0) / 60:.1f} min" if key in walls.get(k, {}) else ""
                                 for k in labels]])
    return _md(["notebook", *[f"seconds, run {k}" for k in labels]], rows)


def timing_block(folder: Path, name: str) -> str:
    """``timing`` (seconds per notebook of every ``timing-*.csv``) or ``timing_total`` (one
    sentence: minutes per run, the machine and the commands of ``RUN.json``: a timing's own
    ``machine`` and ``command`` when it has them, else the stamp's)."""
    frames = {p.stem.removeprefix("timing-"): pd.read_csv(p) for p in sorted(folder.glob("timing-*.csv"))}
    if not frames:
        raise FileNotFoundError(f"no timing-*.csv in {folder}: collect a run with timing first")
    stamp = json.loads((folder / "RUN.json").read_text()) if (folder / "RUN.json").exists() else {}
    walls = stamp.get("timings") or {}
    if name == "timing_total":
        mins = " and ".join(f"{frames[k]['seconds'].sum() / 60:.1f}" for k in sorted(frames))
        setup = " and ".join(f"{walls[k]['setup_seconds'] / 60:.1f}" for k in sorted(frames)
                             if "setup_seconds" in walls.get(k, {}))
        cmds = list(dict.fromkeys(walls.get(k, {}).get("command") or stamp.get("command") or "" for k in
                                  sorted(frames))) or [""]
        how = " / ".join(f"`{c}`" if c else "command not recorded" for c in cmds)
        machines = " / ".join(dict.fromkeys(machine_text(walls[k] if walls.get(k, {}).get("machine") else stamp)
                                            for k in sorted(frames)))
        return (f"All notebooks of the demo took **{mins} min** ({machines}; "
                f"{len(frames)} run{'s' if len(frames) != 1 else ''} of {how}"
                + (f"; `./setup.sh` before them took {setup} min" if setup else "") + ").\n")
    note = stamp.get("timings_note")
    return fmt_timing(frames, walls) + (f"\nHow the wall clocks were read: {note}.\n" if note else "")
