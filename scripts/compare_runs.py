#!/usr/bin/env python
"""Compare the outputs of two ``pneumo reproduce`` homes: Table 4 and every run's per-epoch CSV.

Used to show that a change which should not move any number (a refactor) did not:

    PNEUMO_HOME=/tmp/a PNEUMO_CACHE=/tmp/a/cache pneumo reproduce --profile smoke   # before
    PNEUMO_HOME=/tmp/b PNEUMO_CACHE=/tmp/b/cache pneumo reproduce --profile smoke   # after
    python scripts/compare_runs.py /tmp/a /tmp/b --profile smoke

Compares ``figures/<profile>/table4.csv`` and, for every run folder under
``results/<profile>/``, ``epochs.csv`` (without the wall-clock ``time_s`` column) and the
val / test numbers of ``metrics.json``, exactly (``--rtol`` to allow float noise). Prints one
line per file and exits 1 when anything differs or is missing on one side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

#: Columns that measure the machine, not the run.
CLOCK_COLUMNS = ("time_s", "fit_seconds")


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame, rtol: float) -> str | None:
    a = a.drop(columns=[c for c in CLOCK_COLUMNS if c in a.columns])
    b = b.drop(columns=[c for c in CLOCK_COLUMNS if c in b.columns])
    if list(a.columns) != list(b.columns):
        return f"columns differ: {sorted(set(a.columns) ^ set(b.columns))}"
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    for c in a.columns:
        x, y = a[c], b[c]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            if not np.allclose(x.to_numpy(float), y.to_numpy(float), rtol=rtol, atol=0.0, equal_nan=True):
                i = int(np.flatnonzero(~np.isclose(x.to_numpy(float), y.to_numpy(float), rtol=rtol, atol=0.0,
                                                   equal_nan=True))[0])
                return f"column {c!r} row {i}: {x.iloc[i]!r} vs {y.iloc[i]!r}"
        elif not x.astype(str).equals(y.astype(str)):
            return f"column {c!r} differs"
    return None


def _split_numbers(path: Path) -> pd.DataFrame:
    m = json.loads(path.read_text())
    rows = {f"{s}.{k}": v for s in ("val", "test") for k, v in (m.get(s) or {}).items()
            if isinstance(v, (int, float))}
    return pd.DataFrame([rows])


def compare(a: Path, b: Path, profile: str, rtol: float = 0.0) -> list[tuple[str, str | None]]:
    """``[(relative path, None if equal else why)]`` over Table 4 and every run's files."""
    out: list[tuple[str, str | None]] = []
    files = [Path("figures") / profile / "table4.csv"]
    for home in (a, b):
        res = home / "results" / profile
        if res.is_dir():
            for e in sorted(res.rglob("epochs.csv")):
                files.append(e.relative_to(home))
                files.append(e.with_name("metrics.json").relative_to(home))
    for rel in sorted(set(files)):
        pa, pb = a / rel, b / rel
        if not pa.exists() or not pb.exists():
            out.append((str(rel), f"missing in {'first' if not pa.exists() else 'second'} home"))
            continue
        if rel.suffix == ".json":
            why = _frames_equal(_split_numbers(pa), _split_numbers(pb), rtol)
        else:
            why = _frames_equal(pd.read_csv(pa), pd.read_csv(pb), rtol)
        out.append((str(rel), why))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("home_a", type=Path)
    ap.add_argument("home_b", type=Path)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default: exact)")
    args = ap.parse_args(argv)
    rows = compare(args.home_a, args.home_b, args.profile, args.rtol)
    bad = 0
    for rel, why in rows:
        print(f"{'same' if why is None else 'DIFFERS'}  {rel}" + ("" if why is None else f": {why}"))
        bad += why is not None
    print(f"{len(rows) - bad} of {len(rows)} files identical")
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
