"""Table 4 and the other result tables, drawn only from finished run folders.

Table 4 is computed at table time from each run's ``test_per_image.csv`` (per-image counts
and scores of the best checkpoint by validation loss, on the test split) with
:mod:`pneumolib.evaluation.uncertainty`: for each metric the **mean over the scenario's training seeds**,
a **95 % percentile bootstrap interval over training seeds and test images** (each replicate
draws the seeds with replacement and the test images once for every seed; with one seed, over
test images only, and column ``training_variance`` says the training variance is unmeasured),
and the **sd over seeds**. A run folder without ``test_per_image.csv`` falls back to its
``metrics.json`` numbers, without an interval. :func:`pairwise_table` says which pairs are
told apart (only with several seeds each); :func:`ae_choice` how sure Figure 7's choice is.
Two Dice numbers appear and they cannot be compared (``shared/docs/DATA.md`` section 4):

- ``dice_pooled`` / ``iou_pooled``: intersections and areas summed over the whole test set,
  then divided. This is what the paper's Table 4 most likely reports.
- ``dice_per_image``: the Kaggle score, Dice per image (1 when truth and prediction are both
  empty), averaged over images. ``empty_baseline_dice_per_image`` is what predicting every
  mask empty scores on the same test split.

Run folders: ``results/<profile>/<scenario>/`` (the profile's seed) and, from a multi-seed
run, ``results/<profile>/<scenario>-seed<k>/`` (scenario names never contain ``-``);
:func:`pneumolib.reporting.runs.seed_runs` gathers them per scenario. The Markdown version
with its notes is :func:`pneumolib.reporting.markdown.table4_markdown`.

The paper's own numbers (``paper_dice``, ``paper_iou``) come from the scenario registry
(:data:`pneumolib.models.scenarios.SCENARIOS`) and were measured on the real SIIM-ACR data; ours
come from whatever data source the run names in ``metrics.json`` (``data.kind``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pneumolib import metrics
from pneumolib.evaluation import uncertainty

from .runs import read_test_per_image, run_seed, seed_runs

#: The paper's Table 4 row order (best first).
TABLE4_ORDER = ("resnet50", "ae_encoder", "ae_encoder_mask_decoder", "random", "ae_full", "ae_full_frozen")

#: The metrics Table 4 gives with a mean over seeds, a bootstrap interval and an sd over seeds.
CI_METRICS = ("dice_pooled", "iou_pooled", "dice_per_image", "dice_positive", "auc", "sensitivity", "specificity")


#: ``n_boot`` and ``level`` of Table 4's intervals (bootstrap over training seeds and test images).
DEFAULT_N_BOOT = 1000
DEFAULT_LEVEL = 0.95


def ci_tag(level: float = DEFAULT_LEVEL) -> str:
    """The interval part of a column name: ``ci95`` for ``level=0.95``."""
    return f"ci{level * 100:g}"


def metric_columns(metric: str, level: float = DEFAULT_LEVEL) -> list[str]:
    """``[metric, metric_ci95_lo, metric_ci95_hi, metric_seed_sd]``."""
    t = ci_tag(level)
    return [metric, f"{metric}_{t}_lo", f"{metric}_{t}_hi", f"{metric}_seed_sd"]


def table4_columns(level: float = DEFAULT_LEVEL) -> list[str]:
    """Table 4's columns, in order, for intervals of ``level``."""
    m = {k: metric_columns(k, level) for k in CI_METRICS}
    return [
        "scenario", "label",
        *m["dice_pooled"], *m["iou_pooled"], "paper_dice", "paper_iou",
        "test_dice_peak", "test_iou_peak", "test_peak_epochs",
        *m["dice_per_image"], "empty_baseline_dice_per_image", *m["dice_positive"],
        *m["auc"], *m["sensitivity"], *m["specificity"],
        "n_seeds", "seeds", "n_test_images", "n_test_positive", "n_test_sources", "bootstrap_unit",
        "training_variance", "best_epoch", "best_epochs", "epochs_run", "data_kind", "note",
    ]


#: Table 4's columns, in order (95 % intervals). ``paper_*`` are the paper's numbers,
#: everything else is ours; ``<metric>`` is the mean over seeds, ``<metric>_ci95_lo/hi`` its
#: bootstrap interval over training seeds and test images (test images only for one seed),
#: ``<metric>_seed_sd`` the sd over seeds.
TABLE4_COLUMNS = table4_columns()

#: What each Table 4 column means; written under the Markdown table.
COLUMN_NOTES = {
    "dice_pooled": "ours: Dice with intersections and areas summed over the whole test set (pooled)",
    "iou_pooled": "ours: IoU pooled the same way (= D / (2 - D))",
    "paper_dice": "the paper's Table 4 Dice (real SIIM-ACR data; most likely pooled)",
    "paper_iou": "the paper's Table 4 IoU (real SIIM-ACR data)",
    "test_dice_peak": "ours, NOT an honest estimate: the highest pooled test Dice of any epoch (the peak of "
                      "the per-epoch test curve, chosen on test; what the paper most likely reported), mean "
                      "over seeds; dice_pooled is the checkpoint chosen on validation",
    "test_iou_peak": "ours: pooled test IoU at that peak epoch (chosen on test, as test_dice_peak)",
    "test_peak_epochs": "the epoch of each seed's test peak",
    "dice_per_image": "ours: Kaggle score, Dice per image (1 when both empty), mean over test images",
    "empty_baseline_dice_per_image": "ours: the Kaggle score of predicting every mask empty on the same test split",
    "dice_positive": "ours: mean per-image Dice over test images whose true mask is non-empty",
    "auc": "ours: image-level AUC of the maximum pixel probability vs. 'mask non-empty'",
    "sensitivity": "ours: image-level sensitivity (predicted mask non-empty on positive images)",
    "specificity": "ours: image-level specificity (predicted mask empty on negative images)",
    "n_seeds": "training seeds (run folders) averaged; the interval resamples these and the test images, the sd "
               "is over these",
    "seeds": "their seeds (from each run's config; '?' when unknown)",
    "n_test_images": "test items each seed was evaluated on",
    "n_test_sources": "distinct source images among them (fewer than the items under the paper protocol, "
                      "whose test split holds flipped / rotated twins)",
    "bootstrap_unit": "what the bootstrap resamples: test images, or source images with all their items "
                      "(a cluster bootstrap, when a source has several test items)",
    "training_variance": "whether the interval covers training variance: 'resampled (N seeds)', or 'unmeasured "
                         "(1 seed)': then it covers test images only and says nothing about a rerun with another "
                         "seed or on another machine",
    "best_epoch": "the epoch (0-based) of the checkpoint with the lowest validation loss, the one "
                  "evaluated (blank when the seeds differ: see best_epochs)",
    "best_epochs": "the best epoch of each seed (the seeds themselves: column `seeds` of table4.csv)",
}

AE_SCENARIOS = ("ae_full", "ae_full_frozen", "ae_encoder", "ae_encoder_mask_decoder")


def scenario_info(name: str, run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The paper's label and Table 4 numbers for ``name``.

    Read from :data:`pneumolib.models.scenarios.SCENARIOS` (imported lazily); when that registry
    cannot be imported, from the run's ``metrics.json`` (``label``, ``paper``), which the
    registry wrote at training time. Unknown everywhere -> the name and NaN.
    """
    try:
        from pneumolib.models.scenarios import SCENARIOS
    except ImportError:
        SCENARIOS = {}
    sc = SCENARIOS.get(name)
    if sc is not None:
        return {"label": sc.label, "paper_dice": as_float(sc.paper_dice), "paper_iou": as_float(sc.paper_iou)}
    m = (run or {}).get("metrics", {}) if run else {}
    paper = m.get("paper") or {}
    return {"label": m.get("label", name), "paper_dice": as_float(paper.get("dice")),
            "paper_iou": as_float(paper.get("iou"))}


def as_float(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _join(values: Sequence[Any]) -> str:
    return ", ".join("?" if v is None else str(v) for v in values)


def _same_or_na(values: Sequence[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return vals[0] if vals and len(vals) == len(values) and all(v == vals[0] for v in vals) else None


def _scenario_row(name: str, seeds_runs: list[dict[str, Any]], n_boot: int, level: float,
                  boot_seed: int) -> dict[str, Any]:
    """One Table 4 row from the runs of ``name`` (one per seed)."""
    info = scenario_info(name, seeds_runs[0] if seeds_runs else None)
    row: dict[str, Any] = {"scenario": name, **info, "n_seeds": 0}
    if not seeds_runs:
        row["note"] = "missing: no finished run"
        return row
    notes: list[str] = []
    loaded = [(run, *read_test_per_image(run)) for run in seeds_runs]
    with_csv = [(run, df) for run, df, _ in loaded if df is not None]
    without = [(run, why) for run, df, why in loaded if df is None]
    tag = ci_tag(level)
    if with_csv:
        used = [run for run, _ in with_csv]
        frames = [df for _, df in with_csv]
        try:
            summ = uncertainty.seed_summary(frames, n_boot=n_boot, level=level, seed=boot_seed)
        except uncertainty.ImageSetMismatch:
            summ = uncertainty.seed_summary(frames, n_boot=n_boot, level=level, seed=boot_seed, paired=False)
            notes.append("the seeds' test images differ: each seed's images resampled on their own")
        for m in CI_METRICS:
            row[m], row[f"{m}_{tag}_lo"], row[f"{m}_{tag}_hi"], row[f"{m}_seed_sd"] = (
                summ[m]["mean"], summ[m]["lo"], summ[m]["hi"], summ[m]["sd"])
        row["empty_baseline_dice_per_image"] = summ["empty_baseline_dice_per_image"]["mean"]
        sizes = [len(f) for f in frames]
        row["n_test_images"] = sizes[0] if len(set(sizes)) == 1 else None
        npos = [int((f["true_area"] > 0).sum()) for f in frames]
        row["n_test_positive"] = npos[0] if len(set(npos)) == 1 else None
        clustered = uncertainty.cluster_ids(frames[0]) is not None
        if "src" in frames[0].columns:
            row["n_test_sources"] = int(frames[0]["src"].nunique())
        row["bootstrap_unit"] = "source images (cluster)" if clustered else "test images"
        # the per-image file and metrics.json come from the same evaluation: say so if not
        for run, f in with_csv:
            ours = metrics.dice_pooled(f[list(uncertainty.COUNT_COLUMNS)].to_numpy())
            theirs = as_float(((run.get("metrics") or {}).get("test") or {}).get("dice_pooled"))
            if not math.isnan(theirs) and abs(ours - theirs) > 1e-6:
                notes.append(f"{run.get('name', '?')}: test_per_image.csv gives pooled Dice {ours:.4f}, "
                             f"metrics.json {theirs:.4f}")
        if without:
            notes.append("left out (" + "; ".join(f"{r.get('name', '?')}: {why}" for r, why in without) + ")")
    else:
        used = seeds_runs
        tests = [(r.get("metrics") or {}).get("test") or {} for r in used]
        for m in (*CI_METRICS, "empty_baseline_dice_per_image"):
            vals = np.array([as_float(t.get(m)) for t in tests], dtype=np.float64)
            row[m] = float(vals.mean())
            if m in CI_METRICS:
                row[f"{m}_{tag}_lo"] = row[f"{m}_{tag}_hi"] = math.nan
                row[f"{m}_seed_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        row["n_test_images"] = _same_or_na([t.get("n_images") for t in tests])
        row["n_test_positive"] = _same_or_na([t.get("n_positive") for t in tests])
        notes.append(f"{without[0][1]}: metrics.json values, no interval")
    row["n_seeds"] = len(used)
    row["training_variance"] = ("unmeasured (1 seed)" if len(used) == 1 else f"resampled ({len(used)} seeds)"
                                if with_csv else "sd only (no interval)")
    row["seeds"] = _join([run_seed(r) for r in used])
    peaks = [((r.get("metrics") or {}).get("test_peak") or {}) for r in used]
    if all(peaks):
        row["test_dice_peak"] = float(np.mean([as_float(p.get("dice_pooled")) for p in peaks]))
        row["test_iou_peak"] = float(np.mean([as_float(p.get("iou_pooled")) for p in peaks]))
        row["test_peak_epochs"] = _join([p.get("epoch") for p in peaks])
    best = [(r.get("metrics") or {}).get("best_epoch") for r in used]
    row["best_epoch"] = _same_or_na(best)
    row["best_epochs"] = _join(best)
    row["epochs_run"] = _same_or_na([(r.get("metrics") or {}).get("epochs_run") for r in used])
    m0 = used[0].get("metrics") or {}
    kinds = {str(((r.get("metrics") or {}).get("data") or {}).get("kind")) for r in used}
    row["data_kind"] = (m0.get("data") or {}).get("kind")
    if len(kinds) > 1:
        notes.append(f"seeds on different data sources: {', '.join(sorted(kinds))}")
    arch = m0.get("architecture") or ""
    if "encoder" in arch and "resnet50" not in arch:
        notes.insert(0, f"stand-in: {arch}")
    if m0.get("weights_source"):
        notes.insert(1 if notes and notes[0].startswith("stand-in") else 0, f"encoder weights: {m0['weights_source']}")
    row["note"] = "; ".join(notes)
    return row


def table4(runs: Mapping[str, Any], order: tuple[str, ...] = TABLE4_ORDER, n_boot: int = DEFAULT_N_BOOT,
           level: float = DEFAULT_LEVEL, boot_seed: int = 0) -> pd.DataFrame:
    """The paper's Table 4 with our numbers (mean over seeds, bootstrap interval, sd) next to the paper's.

    Args:
        runs: ``{name: run}`` as returned by :func:`read_profile_runs` (``<scenario>`` and
            ``<scenario>-seed<k>`` folders are gathered per scenario), or ``{scenario: [run, ...]}``.
        order: scenario names, one row each (default: the paper's order).
        n_boot, level, boot_seed: the bootstrap over training seeds and test images
            (:func:`pneumolib.evaluation.uncertainty.seed_summary`), computed here from each run's
            ``test_per_image.csv``.

    Returns:
        One row per scenario, columns :func:`table4_columns` (:data:`TABLE4_COLUMNS` for 95 %).
        A scenario without a finished run gets NaN metrics, ``n_seeds = 0`` and
        ``note="missing: no finished run"``; runs without ``test_per_image.csv`` give their
        ``metrics.json`` numbers with NaN intervals (and say so in ``note``).
        ``df.attrs["bootstrap"]`` records ``n_boot``, ``level`` and ``seed``.
    """
    groups = seed_runs(runs)
    rows = [_scenario_row(name, groups.get(name, []), int(n_boot), float(level), int(boot_seed)) for name in order]
    cols = table4_columns(level)
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df.columns:
            df[c] = math.nan
    df = df[cols]
    for c in ("best_epoch", "epochs_run", "n_test_images", "n_test_positive", "n_test_sources", "n_seeds"):
        df[c] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                          for v in df[c]], dtype="Int64")
    for c in ("note", "seeds", "best_epochs", "test_peak_epochs", "bootstrap_unit", "training_variance"):
        df[c] = df[c].fillna("").astype(str)
    df.attrs["bootstrap"] = {"n_boot": int(n_boot), "level": float(level), "seed": int(boot_seed),
                             "over": "training seeds (where several) and test images (source images with all "
                                     "their items where a source has several), drawn once for every seed"}
    return df


def ci_table(table_or_runs: pd.DataFrame | Mapping[str, Any], **table4_kwargs: Any) -> pd.DataFrame:
    """Table 4 in long form for a plot: one row per scenario and metric of :data:`CI_METRICS`.

    Args:
        table_or_runs: a :func:`table4` DataFrame, or runs (then :func:`table4` is computed
            with ``table4_kwargs``).

    Returns:
        Columns ``scenario, label, metric, mean, lo, hi, sd, n_seeds, level, paper`` (``paper``:
        the paper's number for ``dice_pooled`` / ``iou_pooled``, else NaN). ``mean`` is the
        mean over seeds, ``lo`` / ``hi`` the bootstrap interval (training seeds and test images),
        ``sd`` the sd over seeds.
    """
    df = table_or_runs if isinstance(table_or_runs, pd.DataFrame) else table4(table_or_runs, **table4_kwargs)
    level = table_level(df)
    tag = ci_tag(level)
    paper = {"dice_pooled": "paper_dice", "iou_pooled": "paper_iou"}
    rows = []
    for _, r in df.iterrows():
        for m in CI_METRICS:
            rows.append({"scenario": r["scenario"], "label": r["label"], "metric": m, "mean": as_float(r[m]),
                         "lo": as_float(r[f"{m}_{tag}_lo"]), "hi": as_float(r[f"{m}_{tag}_hi"]),
                         "sd": as_float(r[f"{m}_seed_sd"]),
                         "n_seeds": int(r["n_seeds"]) if not pd.isna(r["n_seeds"]) else 0,
                         "level": level, "paper": as_float(r[paper[m]]) if m in paper else math.nan})
    return pd.DataFrame(rows, columns=["scenario", "label", "metric", "mean", "lo", "hi", "sd", "n_seeds",
                                       "level", "paper"])


def table_level(df: pd.DataFrame) -> float:
    """The interval level of a Table 4 frame: its attrs, else its column names, else 0.95."""
    lvl = (df.attrs.get("bootstrap") or {}).get("level")
    if lvl is not None:
        return float(lvl)
    for c in df.columns:
        m = re.fullmatch(r"dice_pooled_ci([0-9.]+)_lo", str(c))
        if m:
            return float(m[1]) / 100
    return DEFAULT_LEVEL


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
        rows.append({"autoencoder": n, **{k: as_float(ct.get(k)) for k in
                     ("mse", "mse_top_skip_zeroed", "ratio_zeroed_over_normal", "mse_identity_baseline")},
                     "best_epoch": run["metrics"].get("best_epoch") if run else None,
                     "epochs_run": run["metrics"].get("epochs_run") if run else None,
                     "note": "" if run else "missing: no finished run"})
    return pd.DataFrame(rows).set_index("autoencoder")


def pairwise_table(runs: Mapping[str, Any], order: tuple[str, ...] = TABLE4_ORDER, metric: str = "dice_pooled",
                   n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL, boot_seed: int = 0) -> pd.DataFrame:
    """Which scenarios can be told apart: one row per pair ``a, b`` (``a`` first in ``order``),
    :func:`pneumolib.evaluation.uncertainty.pairs`: ``diff`` (a - b, seed-means), ``lo`` / ``hi``
    over training seeds and test images, ``verdict`` "told apart" only when both have several
    seeds and the interval excludes 0, "training variance unmeasured (1 seed)" when either has
    one seed (``told_apart`` NA: nothing ranked). Pairs lacking per-image files are left out."""
    groups = seed_runs(runs)
    frames: dict[str, list[pd.DataFrame]] = {}
    for name in order:
        loaded = [read_test_per_image(r)[0] for r in groups.get(name, [])]
        if loaded and all(f is not None for f in loaded):
            frames[name] = loaded
    return uncertainty.pairs(frames, metric, n_boot=n_boot, level=level, seed=boot_seed)


def ae_choice(runs: Mapping[str, Any], metric: str = "dice_pooled", n_boot: int = DEFAULT_N_BOOT,
              boot_seed: int = 0, chosen: str | None = None) -> pd.DataFrame:
    """Figure 7's best autoencoder scenario, chosen on **validation**, and how sure that choice is.

    One row per finished scenario of :data:`AE_SCENARIOS`: validation ``metric`` (mean over seeds,
    ``val_per_image.csv``) and ``share`` of replicates (seeds and validation images) choosing it
    (:func:`pneumolib.evaluation.uncertainty.choice_table`). ``chosen``: default the best seed-mean;
    pass :func:`pneumolib.reporting.figures.best_ae_scenario` to rate the figure's pick.
    ``attrs["share"]``: the chosen one's (NaN when a scenario lacks the file: ``attrs["missing"]``;
    the choice then uses ``metrics.json``'s validation scores, as the figure does).
    """
    groups = seed_runs(runs)
    names = [n for n in AE_SCENARIOS if groups.get(n)]
    df = uncertainty.choice_table(
        {n: uncertainty.folder_frames([r.get("folder") for r in groups[n]], "val") for n in names}, metric,
        n_boot=n_boot, seed=boot_seed, chosen=chosen,
        fallback={n: [as_float(((r.get("metrics") or {}).get("val") or {}).get(metric)) for r in groups[n]]
                  for n in names})
    return df.rename(columns={"candidate": "scenario", "value": f"val_{metric}"})


def ae_choice_share(runs: Mapping[str, Any], chosen: str | None = None, **kwargs: Any) -> float:
    """How sure Figure 7's choice is: :func:`ae_choice`'s ``attrs["share"]``."""
    return float(ae_choice(runs, chosen=chosen, **kwargs).attrs["share"])
