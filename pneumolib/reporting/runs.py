"""The finished run folders of a profile, as the tables and figures read them.

Run folders: ``results/<profile>/<scenario>/`` (the profile's seed) and, from a multi-seed
run, ``results/<profile>/<scenario>-seed<k>/`` (scenario names never contain ``-``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from pneumolib import runio
from pneumolib.evaluation import uncertainty

#: A run folder of a multi-seed run: ``<scenario>-seed<k>``.
SEED_RUN = re.compile(r"^(?P<scenario>[^-]+)-seed(?P<seed>\d+)$")


def split_run_name(name: str) -> tuple[str, int | None]:
    """``"random-seed3"`` -> ``("random", 3)``; ``"random"`` -> ``("random", None)``."""
    m = SEED_RUN.match(name)
    return (m["scenario"], int(m["seed"])) if m else (name, None)


def run_seed(run: Mapping[str, Any]) -> int | None:
    """The training seed of a run: its config in ``metrics.json``, else its folder name."""
    cfg = ((run.get("metrics") or {}).get("provenance") or {}).get("config") or {}
    if cfg.get("seed") is not None:
        try:
            return int(cfg["seed"])
        except (TypeError, ValueError):
            pass
    return split_run_name(str(run.get("name", "")))[1]


def seed_runs(runs: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each scenario's runs over seeds: ``{scenario: [run, ...]}``.

    ``runs`` is ``{folder name: run}`` (:func:`read_profile_runs`); ``<scenario>`` and
    ``<scenario>-seed<k>`` folders go to the same scenario, the plain folder first, then by
    seed. Two folders of the same seed (the profile's seed run twice) count once: the first
    is kept. An already grouped ``{scenario: [run, ...]}`` is returned as it is.
    """
    out: dict[str, list[tuple[int, int, str, dict[str, Any]]]] = {}
    for name, run in runs.items():
        if isinstance(run, (list, tuple)):
            out.setdefault(name, []).extend((0, i, "", r) for i, r in enumerate(run))
            continue
        scen, k = split_run_name(str(name))
        out.setdefault(scen, []).append((0 if k is None else 1, -1 if k is None else k, str(name), run))
    grouped: dict[str, list[dict[str, Any]]] = {}
    for scen, items in out.items():
        kept, seen = [], set()
        for *_, run in sorted(items, key=lambda t: t[:3]):
            sd = run_seed(run)
            if sd is not None and sd in seen:
                continue
            seen.add(sd)
            kept.append(run)
        grouped[scen] = kept
    return grouped


def read_scenario_runs(profile_dir: Path | str) -> dict[str, list[dict[str, Any]]]:
    """:func:`seed_runs` of :func:`read_profile_runs`: ``{scenario: [run per seed]}``."""
    return seed_runs(read_profile_runs(profile_dir))


def read_test_per_image(run: Mapping[str, Any]) -> tuple[pd.DataFrame | None, str]:
    """A run's ``test_per_image.csv``, or ``(None, why not)``."""
    folder = run.get("folder")
    if folder is None:
        return None, "no run folder"
    path = Path(folder) / "test_per_image.csv"
    if not path.exists():
        return None, "no test_per_image.csv"
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        return None, f"unreadable test_per_image.csv ({type(e).__name__})"
    missing = [c for c in uncertainty.COUNT_COLUMNS if c not in df.columns]
    if missing or len(df) == 0:
        return None, f"test_per_image.csv without {'rows' if not missing else 'columns ' + ', '.join(missing)}"
    return df, ""


def _flat_runs(runs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for run in runs.values():
        out.extend(run if isinstance(run, (list, tuple)) else [run])
    return out


def data_sources(runs: Mapping[str, Any]) -> list[str]:
    """Distinct data sources of ``runs`` as ``kind (root, fingerprint, protocol)`` strings."""
    out: list[str] = []
    for run in _flat_runs(runs):
        d = run["metrics"].get("data") or {}
        desc = f"{d.get('kind', 'unknown')} at {d.get('root', '?')} (fingerprint {str(d.get('fingerprint', '?'))[:12]}, protocol {d.get('protocol', '?')})"
        if desc not in out:
            out.append(desc)
    return out


def read_profile_runs(profile_dir: Path | str) -> dict[str, dict[str, Any]]:
    """:func:`pneumolib.runio.read_runs` that returns ``{}`` when the folder does not exist.

    Keyed by folder name, so seed runs appear as ``<scenario>-seed<k>`` next to the plain
    ``<scenario>`` run; :func:`table4` gathers them (:func:`seed_runs`, :func:`read_scenario_runs`).
    """
    p = Path(profile_dir)
    return runio.read_runs(p) if p.is_dir() else {}
