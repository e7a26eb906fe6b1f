"""The studies beyond the paper, computed from finished run folders only.

``pneumo reproduce --studies NAME,...`` trains each study's runs (under
``results/<profile>/studies/<study>/``) with the one ``04_finetune`` template and then runs
the study's notebook, which calls one function here and writes
``figures/<profile>/<study>.csv``, ``<study>.md`` and ``<study>.png``:

- :func:`leakage_study` (07): the ``paper`` and ``clean`` protocols side by side, and, inside
  the paper protocol's test split, the score on items whose source image has a copy in
  train or validation against the score on the rest.
- :func:`pretext_study` (09): Models Genesis restoration and a skip-less autoencoder against
  the paper's autoencoders, with each autoencoder's copy-through ratio.
- :func:`label_efficiency_study` (10): score against the share of training labels.

(08, image-level decisions, lives in :mod:`pneumolib.evaluation.image_level`.)

Every score comes with a 95 % bootstrap interval computed from the runs' ``test_per_image.csv``
(:func:`score_row`): over **training seeds and test images** where a row has several seeds
(the main runs ``<scenario>`` and ``<scenario>-seed<k>`` after ``--seeds N``;
:func:`pneumolib.evaluation.uncertainty.seed_summary`), else over test images only, and then
column ``training_variance`` says ``unmeasured (1 seed)``. *Pooled* Dice sums intersections
and areas over the test split; the *Kaggle score* (``dice_per_image``) averages per-image Dice
with empty/empty = 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pneumolib import paths, runio
from pneumolib.config import Config
from pneumolib.evaluation.image_level import METHODS

from .markdown import to_markdown
from .runs import run_seed, split_run_name

#: Metrics each study reports, with their interval (see pneumolib.evaluation.uncertainty).
STUDY_METRICS = ("dice_pooled", "dice_per_image", "dice_positive", "auc")

WHICH_DICE = ("`dice_pooled`: Dice with intersections and areas summed over the test split (the paper's "
              "kind); `dice_per_image`: the Kaggle score (per-image Dice, 1 when truth and prediction are "
              "both empty; predicting all-empty scores `empty_baseline`). `[lo, hi]`: 95 % bootstrap "
              "interval (1,000 resamples) over the training seeds and the test images where a row has several "
              "seeds (`n_seeds`), else over the test images only: `training_variance` then reads `unmeasured "
              "(1 seed)`, and the interval says nothing about a rerun with another seed or on another machine, "
              "so rows are not ranked on it. Whole source images are resampled with all their items where a "
              "source has several test items, as under the paper protocol.")


def _per_image(run: Path) -> pd.DataFrame:
    p = Path(run) / "test_per_image.csv"
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: the run in {run} has not finished (run its notebook first)")
    return pd.read_csv(p)


def _seed_frames(run: Path) -> list[pd.DataFrame]:
    """The per-image tables of ``run`` and of its finished seed siblings ``<run>-seed<k>`` (from
    ``--seeds N``), one per training seed (a seed run twice counts once)."""
    run = Path(run)
    sibs = [p for p in run.parent.glob(f"{run.name}-seed*")
            if split_run_name(p.name)[0] == run.name and (p / "test_per_image.csv").exists()]
    frames, seen = [], set()
    for folder in [run, *sorted(sibs, key=lambda p: split_run_name(p.name)[1])]:
        meta = folder / "metrics.json"
        sd = run_seed({"metrics": json.loads(meta.read_text()) if meta.exists() else {}, "name": folder.name})
        if sd is None or sd not in seen:
            seen.add(sd)
            frames.append(_per_image(folder))
    return frames


def score_row(per_image: pd.DataFrame | Sequence[pd.DataFrame], metrics: Sequence[str] = STUDY_METRICS,
              n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``{metric, metric_ci95_lo, metric_ci95_hi, ..., n_seeds, training_variance, n_test_images,
    empty_baseline}`` of one per-image table (columns intersection, pred_area, true_area, score),
    or of a list of them, one per training seed: then each metric is the mean over seeds and its
    interval is over training seeds and test images (:func:`uncertainty.seed_summary`)."""
    from pneumolib.evaluation import uncertainty

    frames = [per_image] if isinstance(per_image, pd.DataFrame) else list(per_image)
    if len(frames) == 1:
        ci = {m: {**v, "mean": v["value"]} for m, v in uncertainty.bootstrap_ci(frames[0], n_boot=n_boot,
                                                                              seed=seed).items()}
    else:
        try:
            ci = uncertainty.seed_summary(frames, n_boot=n_boot, seed=seed)
        except uncertainty.ImageSetMismatch:
            ci = uncertainty.seed_summary(frames, n_boot=n_boot, seed=seed, paired=False)
    row: dict[str, Any] = {}
    for m in metrics:
        row[m] = ci[m]["mean"]
        row[f"{m}_ci95_lo"] = ci[m]["lo"]
        row[f"{m}_ci95_hi"] = ci[m]["hi"]
    row["n_seeds"] = len(frames)
    row["training_variance"] = f"resampled ({len(frames)} seeds)" if len(frames) > 1 else "unmeasured (1 seed)"
    per_image = frames[0]
    row["n_test_images"] = int(len(per_image))
    row["n_positive"] = int((per_image["true_area"] > 0).sum())
    row["empty_baseline"] = float((per_image["true_area"] == 0).mean()) if len(per_image) else np.nan
    return row


def _fmt_cell(v: Any, lo: Any = None, hi: Any = None) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "n/a"
        s = f"{v:.3f}"
        if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
            s += f" [{lo:.3f}, {hi:.3f}]"
        return s
    return "" if v is None else str(v)


def study_markdown(df: pd.DataFrame, note: str = "") -> str:
    """The study table as Markdown: ``m [lo, hi]`` cells for metrics with intervals."""
    cols = [c for c in df.columns if not c.endswith(("_ci95_lo", "_ci95_hi"))]
    lines = ([note.strip(), ""] if note else []) + ["| " + " | ".join(cols) + " |",
                                                    "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [_fmt_cell(r[c], r.get(f"{c}_ci95_lo"), r.get(f"{c}_ci95_hi")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_study(df: pd.DataFrame, name: str, folder: Path | str, note: str = "", fig: Any = None) -> dict[str, Path]:
    """Write ``<name>.csv``, ``<name>.md`` (``note`` on top) and, with ``fig``, ``<name>.png``."""
    from .plots import save_figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"csv": folder / f"{name}.csv", "md": folder / f"{name}.md"}
    runio.atomic_write_csv(out["csv"], df)
    runio.atomic_write_text(out["md"], study_markdown(df, note))
    if fig is not None:
        out["png"] = save_figure(fig, folder / f"{name}.png")
    return out


def study_dir(cfg: Config, study: str) -> Path:
    """``results/<profile>/studies/<study>/``: where a study's training runs live."""
    return paths.results_dir(cfg.name) / "studies" / study


# -- 07 leakage ------------------------------------------------------------------------------
def leakage_study(cfg: Config, scenarios: Sequence[str] = ("random", "resnet50")) -> pd.DataFrame:
    """The paper's leaky protocol against the clean one, per scenario.

    Rows: for each scenario, the main run (``clean``: split by source image, augment only
    train) and the study run (``paper``: augment positives, then split), each on its own test
    split (what each protocol would report); then the paper-protocol run's test split cut
    into items whose source image also sits in train / validation ("leaked") and the rest.
    ``leaked_test_items`` counts the former.
    """
    from pneumolib.evaluation.evaluate import run_config
    from pneumolib.prep.datamodule import PneumoDataModule
    from pneumolib.prep.splits import leakage

    results = paths.results_dir(cfg.name)
    rows: list[dict[str, Any]] = []
    for sc in scenarios:
        clean_run = results / sc
        paper_run = study_dir(cfg, "leakage") / f"{sc}-paper_protocol"
        for protocol, run in (("clean", clean_run), ("paper", paper_run)):
            if not (run / "metrics.json").exists():
                continue
            rcfg = run_config(run)
            dm = PneumoDataModule(rcfg.replace(progress=False))
            dm.setup("fit")
            leak = leakage(dm.split)
            per = _per_image(run)
            base = {"scenario": sc, "protocol": protocol, "test_items": "all",
                    "leaked_test_items": leak["leaked_test_items"]}
            rows.append({**base, **score_row(_seed_frames(run) if protocol == "clean" else per)})
            if protocol == "paper" and leak["leaked_test_items"]:
                seen = set(dm.split.loc[dm.split["split"] != "test", "src"])
                is_leaked = per["src"].isin(seen).to_numpy()
                for name, mask in (("with a copy in train/val", is_leaked), ("without", ~is_leaked)):
                    if mask.any():
                        rows.append({**base, "test_items": name, **score_row(per[mask])})
    return pd.DataFrame(rows)


LEAKAGE_NOTE = (
    "**Leakage study.** `paper`: the paper's protocol (flip and rotate every positive, then split "
    "the items), whose test split holds copies of training images; `clean`: split source images "
    "first, augment training positives only (the default). Each protocol is scored on its own "
    "test split; the paper protocol's test split is then cut into items whose source image has a "
    "copy in train/validation and the rest. Only positives are augmented, so only positive test "
    "items can have a copy, and under the paper protocol nearly all of them do: the 'without' rows "
    "are then mostly negatives (see `n_positive`), and the fair contrast is protocol against "
    "protocol, on the 'all' rows. " + WHICH_DICE)


# -- 09 pretext --------------------------------------------------------------------------------
#: (scenario, where its run lives: "main" or the study, the autoencoder it draws from)
PRETEXT_ROWS = (
    ("random", "main", None),
    ("ae_encoder", "main", "ae_xray"),
    ("ae_full", "main", "ae_xray"),
    ("noskip_encoder", "pretext", "ae_xray_noskip"),
    ("genesis_encoder", "pretext", "ae_genesis"),
    ("genesis_full", "pretext", "ae_genesis"),
)


def pretext_study(cfg: Config) -> pd.DataFrame:
    """Segmentation scores of the pretext scenarios next to the paper's autoencoder ones,
    with the copy-through ratio of the autoencoder each starts from (test MSE with the top
    skip zeroed / normal test MSE: about 1 means the deep path carries the reconstruction)."""
    from pneumolib.models.scenarios import get_scenario

    results = paths.results_dir(cfg.name)
    rows = []
    for sc, where, ae in PRETEXT_ROWS:
        run = results / sc if where == "main" else study_dir(cfg, "pretext") / sc
        if not (run / "metrics.json").exists():
            continue
        ratio = np.nan
        if ae and (results / ae / "metrics.json").exists():
            ct = json.loads((results / ae / "metrics.json").read_text()).get("copy_through", {})
            ratio = float(ct.get("ratio_zeroed_over_normal", np.nan))
        rows.append({"scenario": sc, "label": get_scenario(sc).label, "pretrained_from": ae or "none",
                     "ae_copy_through_ratio": ratio, **score_row(_seed_frames(run))})
    return pd.DataFrame(rows)


PRETEXT_NOTE = (
    "**Pretext study.** A U-Net autoencoder can copy its input through the top skip connection "
    "(`ae_copy_through_ratio` = test MSE with that skip zeroed / normal test MSE; large = copies). "
    "`ae_genesis` restores Models-Genesis-distorted X-rays (non-linear intensity, local pixel "
    "shuffling, in-/out-painting), which copying cannot solve; `ae_xray_noskip` reconstructs "
    "X-rays with every skip zeroed. " + WHICH_DICE)


# -- 10 label efficiency -------------------------------------------------------------------------
def label_efficiency_study(cfg: Config, scenarios: Sequence[str] | None = None) -> pd.DataFrame:
    """Scores per scenario and share of training labels: every finished study run
    ``studies/label_efficiency/<scenario>-labels<frac>`` plus the main run as 1.0."""
    import re

    from pneumolib.models.scenarios import scenario_order

    results = paths.results_dir(cfg.name)
    found: dict[str, dict[float, Path]] = {}
    d = study_dir(cfg, "label_efficiency")
    for run in sorted(d.iterdir()) if d.exists() else ():
        m = re.fullmatch(r"(.+)-labels([0-9.eE+-]+)", run.name)
        if m and (run / "metrics.json").exists():
            found.setdefault(m.group(1), {})[float(m.group(2))] = run
    rows = []
    for sc in scenarios or [s for s in scenario_order() if s in found]:
        runs = dict(found.get(sc, {}))
        if (results / sc / "metrics.json").exists():
            runs[1.0] = results / sc
        for frac in sorted(runs):
            rows.append({"scenario": sc, "label_frac": frac, **score_row(_seed_frames(runs[frac]))})
    return pd.DataFrame(rows)


LABEL_EFFICIENCY_NOTE = (
    "**Label efficiency.** Each scenario fine-tuned with a share of the training labels (by "
    "default 1 %, 10 % and 100 %: a fixed, class-stratified subset of training source images, the same for every "
    "scenario; the subset is cycled so every run takes the same number of optimiser steps). "
    + WHICH_DICE)


def study_runs(cfg: Config, study: str) -> Mapping[str, Path]:
    """``{run name: folder}`` of a study's finished training runs."""
    d = study_dir(cfg, study)
    return {p.name: p for p in sorted(d.iterdir())} if d.exists() else {}


def image_level_markdown(df: pd.DataFrame, metric: str = "dice_per_image") -> str:
    """The study table as Markdown, with a header saying which Dice is which and that every
    parameter was tuned on the validation split only."""
    head = [
        "# Image-level decisions: plain threshold vs triplet vs classifier gate",
        "",
        "All numbers are on the **test** split. Every post-processing parameter was tuned on "
        f"the **validation split only** (maximising `{metric}` there); the test split was "
        "scored once with the chosen parameters. `val_score` is that tuned score on val.",
        "",
        "Which Dice is which:",
        "- `dice_per_image`: the **Kaggle score**, Dice per image with 1 when truth and prediction "
        "are both empty, averaged over images; `empty_baseline_dice_per_image` (method `all_empty`) "
        "is what predicting every mask empty scores.",
        "- `dice_pooled` / `iou_pooled`: intersections and areas **summed over the whole test set**, "
        "then divided (the paper's Table 4 numbers).",
        "- `dice_positive`: mean per-image Dice over the images with a pneumothorax.",
        "- `sensitivity` / `specificity`: an image is predicted positive when its final mask is non-empty.",
        "",
        "Methods:",
        *[f"- `{k}`: {v}" for k, v in METHODS.items()],
        "",
        "",
    ]
    return "\n".join(head) + to_markdown(df, digits=4) + "\n"


def image_level_figure(df: pd.DataFrame):
    """Grouped bars of the Kaggle score (``dice_per_image``) per run and method, with each
    run's all-empty baseline as a dashed line. Returns a matplotlib Figure (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = list(dict.fromkeys(df["run"]))
    methods = [m for m in METHODS if m != "all_empty" and m in set(df["method"])]
    fig = Figure(figsize=(max(5.0, 1.6 * len(runs) * max(1, len(methods)) / 2 + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(methods))
    colors = {"threshold": "#7f7f7f", "triplet": "#1f77b4", "gate": "#ff7f0e", "gate+triplet": "#2ca02c"}
    for j, meth in enumerate(methods):
        ys = []
        for r in runs:
            sel = df[(df["run"] == r) & (df["method"] == meth)]["dice_per_image"]
            ys.append(float(sel.iloc[0]) if len(sel) else np.nan)
        xs = np.arange(len(runs)) - 0.4 + width * (j + 0.5)
        ax.bar(xs, ys, width=width, label=meth, color=colors.get(meth))
    labelled = False
    for i, r in enumerate(runs):
        sel = df[(df["run"] == r) & (df["method"] == "all_empty")]["dice_per_image"]
        if len(sel):
            ax.hlines(float(sel.iloc[0]), i - 0.45, i + 0.45, colors="k", linestyles="--",
                      label=None if labelled else "all empty (baseline)")
            labelled = True
    ax.set_xticks(np.arange(len(runs)))
    ax.set_xticklabels(runs, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Kaggle score (Dice per image, test)")
    ax.set_title("Image-level decisions, tuned on val, scored on test")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def write_image_level(df: pd.DataFrame, folder: Path | str, metric: str = "dice_per_image") -> dict[str, Path]:
    """Write the image-level study (:func:`pneumolib.evaluation.image_level.image_level_study`)
    as ``image_level.csv``, ``image_level.md`` and ``image_level.png`` into ``folder``."""
    from .plots import save_figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {"csv": runio.atomic_write_csv(folder / "image_level.csv", df),
            "md": runio.atomic_write_text(folder / "image_level.md", image_level_markdown(df, metric)),
            "png": save_figure(image_level_figure(df), folder / "image_level.png")}
