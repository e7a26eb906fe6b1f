"""Table 4 and the other result tables, drawn only from finished run folders.

Every number here is read from a run's ``metrics.json`` (the best checkpoint by validation
loss, evaluated on the test split); nothing is recomputed. Two Dice numbers appear and they
cannot be compared (``shared/docs/DATA.md`` section 4):

- ``dice_pooled`` / ``iou_pooled``: intersections and areas summed over the whole test set,
  then divided. This is what the paper's Table 4 most likely reports.
- ``dice_per_image``: the Kaggle score, Dice per image (1 when truth and prediction are both
  empty), averaged over images. ``empty_baseline_dice_per_image`` is what predicting every
  mask empty scores on the same test split.

The paper's own numbers (``paper_dice``, ``paper_iou``) come from the scenario registry
(:data:`pneumolib.scenarios.SCENARIOS`) and were measured on the real SIIM-ACR data; ours
come from whatever data source the run names in ``metrics.json`` (``data.kind``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from . import runio

#: The paper's Table 4 row order (best first).
TABLE4_ORDER = ("resnet50", "ae_encoder", "ae_encoder_mask_decoder", "random", "ae_full", "ae_full_frozen")

#: Table 4's columns, in order. ``paper_*`` are the paper's numbers, everything else is ours.
TABLE4_COLUMNS = [
    "scenario", "label",
    "dice_pooled", "iou_pooled", "paper_dice", "paper_iou",
    "dice_per_image", "empty_baseline_dice_per_image", "dice_positive",
    "auc", "sensitivity", "specificity",
    "best_epoch", "epochs_run", "n_test_images", "n_test_positive", "data_kind", "note",
]

#: What each Table 4 column means; written under the Markdown table.
COLUMN_NOTES = {
    "dice_pooled": "ours: Dice with intersections and areas summed over the whole test set (pooled)",
    "iou_pooled": "ours: IoU pooled the same way (= D / (2 - D))",
    "paper_dice": "the paper's Table 4 Dice (real SIIM-ACR data; most likely pooled)",
    "paper_iou": "the paper's Table 4 IoU (real SIIM-ACR data)",
    "dice_per_image": "ours: Kaggle score, Dice per image (1 when both empty), mean over test images",
    "empty_baseline_dice_per_image": "ours: the Kaggle score of predicting every mask empty on the same test split",
    "dice_positive": "ours: mean per-image Dice over test images whose true mask is non-empty",
    "auc": "ours: image-level AUC of the maximum pixel probability vs. 'mask non-empty'",
    "sensitivity": "ours: image-level sensitivity (predicted mask non-empty on positive images)",
    "specificity": "ours: image-level specificity (predicted mask empty on negative images)",
    "best_epoch": "the epoch (0-based) of the checkpoint with the lowest validation loss, the one evaluated",
}

AE_SCENARIOS = ("ae_full", "ae_full_frozen", "ae_encoder", "ae_encoder_mask_decoder")


def scenario_info(name: str, run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The paper's label and Table 4 numbers for ``name``.

    Read from :data:`pneumolib.scenarios.SCENARIOS` (imported lazily); when that registry
    cannot be imported, from the run's ``metrics.json`` (``label``, ``paper``), which the
    registry wrote at training time. Unknown everywhere -> the name and NaN.
    """
    try:
        from .scenarios import SCENARIOS
    except ImportError:
        SCENARIOS = {}
    sc = SCENARIOS.get(name)
    if sc is not None:
        return {"label": sc.label, "paper_dice": _num(sc.paper_dice), "paper_iou": _num(sc.paper_iou)}
    m = (run or {}).get("metrics", {}) if run else {}
    paper = m.get("paper") or {}
    return {"label": m.get("label", name), "paper_dice": _num(paper.get("dice")),
            "paper_iou": _num(paper.get("iou"))}


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def table4(runs: Mapping[str, Mapping[str, Any]], order: tuple[str, ...] = TABLE4_ORDER) -> pd.DataFrame:
    """The paper's Table 4 with our numbers next to the paper's.

    Args:
        runs: ``{name: run}`` as returned by :func:`pneumolib.runio.read_runs`.
        order: scenario names, one row each (default: the paper's order).

    Returns:
        One row per scenario, columns :data:`TABLE4_COLUMNS`. A scenario without a finished
        run gets NaN metrics and ``note="missing: no finished run"``.
    """
    rows = []
    for name in order:
        run = runs.get(name)
        info = scenario_info(name, run)
        row: dict[str, Any] = {"scenario": name, **info}
        if run is None:
            row["note"] = "missing: no finished run"
            rows.append(row)
            continue
        m = run["metrics"]
        test = m.get("test", {}) or {}
        for k in ("dice_pooled", "iou_pooled", "dice_per_image", "empty_baseline_dice_per_image",
                  "dice_positive", "auc", "sensitivity", "specificity"):
            row[k] = _num(test.get(k))
        row["best_epoch"] = m.get("best_epoch")
        row["epochs_run"] = m.get("epochs_run")
        row["n_test_images"] = test.get("n_images")
        row["n_test_positive"] = test.get("n_positive")
        row["data_kind"] = (m.get("data") or {}).get("kind")
        notes = []
        arch = m.get("architecture") or ""
        if "encoder" in arch and "resnet50" not in arch:
            notes.append(f"stand-in: {arch}")
        if m.get("weights_source"):
            notes.append(f"encoder weights: {m['weights_source']}")
        row["note"] = "; ".join(notes)
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in TABLE4_COLUMNS:
        if c not in df.columns:
            df[c] = math.nan
    df = df[TABLE4_COLUMNS]
    for c in ("best_epoch", "epochs_run", "n_test_images", "n_test_positive"):
        df[c] = df[c].astype("Int64")
    df["note"] = df["note"].fillna("")
    return df


def data_sources(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Distinct data sources of ``runs`` as ``kind (root, fingerprint, protocol)`` strings."""
    out: list[str] = []
    for run in runs.values():
        d = run["metrics"].get("data") or {}
        desc = f"{d.get('kind', 'unknown')} at {d.get('root', '?')} (fingerprint {str(d.get('fingerprint', '?'))[:12]}, protocol {d.get('protocol', '?')})"
        if desc not in out:
            out.append(desc)
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or v is pd.NA:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table of ``df`` (floats to ``digits`` decimals, NaN blank)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c], digits) for c in cols) + " |")
    return "\n".join(lines)


def table4_markdown(df: pd.DataFrame, runs: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """Table 4 as Markdown, with a header note saying which Dice each column is."""
    sources = data_sources(runs) if runs else sorted({str(k) for k in df["data_kind"].dropna()})
    head = [
        "# Table 4: segmentation of the six initialisation scenarios",
        "",
        "Which Dice is which:",
        "- `dice_pooled` / `iou_pooled` (ours): intersections and areas **summed over the whole test set** "
        "(pooled), then divided; measured on the best checkpoint by validation loss.",
        "- `paper_dice` / `paper_iou`: **the paper's numbers** (its Table 4), measured on the real "
        "SIIM-ACR data; most likely pooled as well.",
        "- `dice_per_image` (ours): the **Kaggle score**, Dice per image with 1 for empty/empty, averaged "
        "over test images; `empty_baseline_dice_per_image` is what predicting every mask empty scores.",
        "",
        "Ours come from the data source each run names in its `metrics.json`: "
        + ("; ".join(sources) if sources else "unknown (no finished runs)") + ". "
        "Numbers on the built-in phantom are not comparable with the paper's.",
        "",
        "",
    ]
    cols = [c for c in df.columns if c not in ("data_kind",)]
    body = to_markdown(df[cols])
    notes = ["", "Columns:"] + [f"- `{k}`: {v}" for k, v in COLUMN_NOTES.items() if k in df.columns]
    return "\n".join(head) + body + "\n" + "\n".join(notes) + "\n"


def write_table4(df: pd.DataFrame, folder: Path | str,
                 runs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """Write ``table4.csv`` and ``table4.md`` (with the note on which Dice) into ``folder``."""
    folder = Path(folder)
    return {
        "csv": runio.atomic_write_csv(folder / "table4.csv", df),
        "md": runio.atomic_write_text(folder / "table4.md", table4_markdown(df, runs)),
    }


def run_summary(run: Mapping[str, Any]) -> pd.DataFrame:
    """One run's headline numbers: rows = metrics, columns ``val``, ``test`` (and ``paper``).

    The ``paper`` column holds the paper's Table 4 Dice / IoU next to our pooled ones.
    """
    m = run["metrics"]
    keys = ["dice_pooled", "iou_pooled", "dice_per_image", "empty_baseline_dice_per_image",
            "dice_positive", "auc", "sensitivity", "specificity", "loss", "mse", "n_images", "n_positive"]
    data = {}
    for split in ("val", "test"):
        res = m.get(split) or {}
        data[split] = {k: res.get(k) for k in keys if k in res}
    df = pd.DataFrame(data)
    if m.get("task", "seg") == "seg":
        info = scenario_info(m.get("scenario", run.get("name", "")), run)
        df["paper"] = pd.Series({"dice_pooled": info["paper_dice"], "iou_pooled": info["paper_iou"]})
    df.index.name = "metric"
    return df


def copy_through_table(runs: Mapping[str, Mapping[str, Any]], names: tuple[str, ...] = ("ae_xray", "ae_mask")) -> pd.DataFrame:
    """The copy-through measurement of the autoencoders (``metrics.json`` ``copy_through``).

    Columns: ``mse`` (test reconstruction error), ``mse_top_skip_zeroed`` (the same with the
    top skip connection zeroed), ``ratio_zeroed_over_normal``, ``mse_identity_baseline`` (the
    error of predicting the mean), ``best_epoch``, ``epochs_run``. A large ratio means the
    U-Net mostly copies its input through the top skip.
    """
    rows = []
    for n in names:
        run = runs.get(n)
        ct = (run or {}).get("metrics", {}).get("copy_through", {}) if run else {}
        rows.append({"autoencoder": n, **{k: _num(ct.get(k)) for k in
                     ("mse", "mse_top_skip_zeroed", "ratio_zeroed_over_normal", "mse_identity_baseline")},
                     "best_epoch": run["metrics"].get("best_epoch") if run else None,
                     "epochs_run": run["metrics"].get("epochs_run") if run else None,
                     "note": "" if run else "missing: no finished run"})
    return pd.DataFrame(rows).set_index("autoencoder")


def read_profile_runs(profile_dir: Path | str) -> dict[str, dict[str, Any]]:
    """:func:`pneumolib.runio.read_runs` that returns ``{}`` when the folder does not exist."""
    p = Path(profile_dir)
    return runio.read_runs(p) if p.is_dir() else {}
