"""The record of a collected run in words: its stamp (commits, machine, command) and its timings.

Used by :mod:`pneumolib.reporting.summaries` for the blocks ``<set>/stamp``, ``<set>/timing``
and ``<set>/timing_total``. The machine and the commands come from the set's ``RUN.json``
only: a stamp without a machine says "machine not recorded". :func:`stale_reasons` says when a
stamp no longer describes the code (a commit not in the history, results-path code changed since).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from pneumolib import runio
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


# -- is a stamp still true? ---------------------------------------------------------------------
def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def results_sources_at(commit: str, repo: Path, package: str = "pneumolib") -> dict[str, str]:
    """``{path relative to the package: source}`` of the results-path modules
    (:data:`pneumolib.runio.RESULTS_PATH`) as they were at ``commit`` of the git ``repo``."""
    ls = _git(repo, "ls-tree", "-r", "--name-only", commit, "--", f"{package}/")
    if ls.returncode != 0:
        raise ValueError(f"git ls-tree {commit} failed in {repo}: {ls.stderr.strip()}")
    out = {}
    for path in ls.stdout.splitlines():
        rel = path[len(package) + 1:]
        if path.endswith(".py") and runio.is_results_path(rel):
            out[rel] = _git(repo, "show", f"{commit}:{path}").stdout
    return out


def results_sources_now(package_dir: Path) -> dict[str, str]:
    """The same for the working tree's package folder (what runs now)."""
    return {p.relative_to(package_dir).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(package_dir.rglob("*.py"))
            if "__pycache__" not in p.parts and runio.is_results_path(p.relative_to(package_dir).as_posix())}


def regenerate_command(set_name: str, stamp: dict[str, Any]) -> str:
    """The commands that make a set's summaries again: its run (with the environment settings
    its recorded command starts with), then collect and render."""
    cmd = stamp.get("command") or "pneumo reproduce"
    timed = sorted(k for k, t in (stamp.get("timings") or {}).items() if "setup_seconds" in t)
    if timed:  # timed from fresh clones
        return " && ".join([*(f"scripts/time_fresh_clone.sh {k} {set_name}" for k in timed),
                            ".venv/bin/python -m pneumolib.reporting.summaries render"])
    words = cmd.removeprefix("./setup.sh && ").split()
    env = [w for w in words[:next((i for i, w in enumerate(words) if "=" not in w), len(words))]]
    run = " ".join(words[len(env):]).removeprefix(".venv/bin/")
    return (f"{' '.join([*env, f'PNEUMO_HOME=/tmp/{set_name}'])} .venv/bin/{run} && .venv/bin/python -m "
            f"pneumolib.reporting.summaries collect --home /tmp/{set_name} --set {set_name} --profile "
            f"{stamp.get('profile', 'demo')} --command \"{cmd}\" && .venv/bin/python -m pneumolib.reporting.summaries "
            "render")


def stale_reasons(set_name: str, stamp: dict[str, Any], repo: Path, package_dir: Path) -> list[str]:
    """Why the stamp of summary set ``set_name`` no longer describes the code at ``repo``'s
    working tree, or ``[]``. Reasons: no commit recorded; a run made with uncommitted changes;
    a stamped commit that is not in the history (made up, or lost to a rewrite); results-path
    code (comments and docstrings aside) that differs between a stamped commit and now, with
    the modules that differ. Each reason ends with the command that regenerates the set. In a
    shallow clone a commit that is missing cannot be judged: that raises ``LookupError``."""
    fix = f"regenerate with: {regenerate_command(set_name, stamp)}"
    commits = list(stamp.get("commits") or [])
    if not commits:
        return [f"{set_name}: RUN.json names no commit; {fix}"]
    now = {rel: runio.code_text(src) for rel, src in results_sources_now(package_dir).items()}
    reasons = []
    for c in commits:
        sha = c.removesuffix("+dirty")
        if c.endswith("+dirty"):
            reasons.append(f"{set_name}: runs made with uncommitted changes on top of {sha[:12]}; {fix}")
        if _git(repo, "cat-file", "-e", f"{sha}^{{commit}}").returncode != 0:
            if _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
                raise LookupError(f"{sha[:12]} is not in this shallow clone's history")
            reasons.append(f"{set_name}: stamped commit {sha[:12]} is not in this repository's history; {fix}")
            continue
        then = {rel: runio.code_text(src) for rel, src in results_sources_at(sha, repo, package_dir.name).items()}
        changed = sorted(rel for rel in set(now) | set(then) if now.get(rel) != then.get(rel))
        if changed:
            shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
            reasons.append(f"{set_name}: results-path code changed since {sha[:12]} ({shown}); {fix}")
    want = stamp.get("results_code")
    if want and runio.sources_hash(results_sources_now(package_dir))[:16] not in want and not reasons:
        reasons.append(f"{set_name}: the runs' results-path hash {', '.join(want)} is not this code's; {fix}")
    return reasons
