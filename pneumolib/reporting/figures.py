"""The paper's Figures 5-7, drawn only from run files (``epochs.csv``, ``metrics.json``).

Each figure shows one group of scenarios in four panels per epoch: (a) train loss,
(b) validation loss, (c) test Dice, (d) test IoU. Panels (c) and (d) plot the **pooled**
Dice / IoU of the test split (``epochs.csv`` columns ``test_dice`` / ``test_iou``:
intersections and areas summed over the test set). The per-image (Kaggle) score is in
:func:`plot_extra_metrics`.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``show``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .plots import SCENARIO_COLORS, _style, palette_png, save_figure, scenario_label
from .tables import AE_SCENARIOS

#: The resolution the figures here show at in a notebook (their PNGs inline, kept in the
#: executed copies); :func:`save_figures` writes the files at its own ``dpi``.
INLINE_DPI = 80

#: The four panels of Figures 5-7: (epochs.csv column, panel title, y label).
PANELS = (
    ("train_loss", "(a) Train Loss", "BCE + Dice loss"),
    ("val_loss", "(b) Validation Loss", "BCE + Dice loss"),
    ("test_dice", "(c) Test DICE Coefficient (pooled)", "Dice (pooled over test set)"),
    ("test_iou", "(d) Test IoU Coefficient (pooled)", "IoU (pooled over test set)"),
)


#: The paper's groups. Figure 7's middle entry is chosen from the results (:func:`best_ae_scenario`).
FIGURE5 = ("random", "ae_full", "ae_full_frozen")


FIGURE6 = ("random", "ae_encoder", "ae_encoder_mask_decoder")


FIGURE_TITLES = {
    "figure5": "Figure 5: first group (X-ray autoencoder encoder + decoder)",
    "figure6": "Figure 6: second group (X-ray autoencoder encoder; random or mask-autoencoder decoder)",
    "figure7": "Figure 7: final selection (random, best autoencoder scenario on validation, ResNet-50 encoder)",
}


def _x(epochs: pd.DataFrame) -> np.ndarray:
    """Epochs counted from 1, as the paper's axes (``epochs.csv`` counts from 0)."""
    return epochs["epoch"].to_numpy() + 1


def figure_group(runs: Mapping[str, Mapping[str, Any]], names: Sequence[str], title: str = "",
                 panels: Sequence[tuple[str, str, str]] = PANELS) -> Figure:
    """The paper's four-panel figure for one group of scenarios.

    Args:
        runs: ``{name: run}`` from :func:`pneumolib.runio.read_runs`.
        names: scenario names, one line each, labelled with the paper's label. A name
            without a finished run is listed in the legend as missing.
        title: the figure's title.
        panels: ``(column, title, ylabel)`` per panel; default :data:`PANELS`.

    Returns:
        A figure with ``len(panels)`` axes (2 x 2 for the paper's four). The best epoch
        (lowest validation loss, the checkpoint Table 4 evaluates) is marked on every line.
    """
    _style()
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False,
                             dpi=INLINE_DPI)
    axes_flat = axes.ravel()
    for ax in axes_flat[len(panels):]:
        ax.remove()
    missing = []
    for name in names:
        run = runs.get(name)
        label = scenario_label(name, run)
        if run is None or run.get("epochs") is None or len(run["epochs"]) == 0:
            missing.append(label)
            continue
        ep = run["epochs"].sort_values("epoch")
        best = run["metrics"].get("best_epoch")
        for ax, (col, _, _) in zip(axes_flat, panels):
            if col not in ep.columns:
                continue
            x, y = _x(ep), ep[col].to_numpy(dtype=float)
            (line,) = ax.plot(x, y, marker="o", markersize=3, linewidth=1.6, label=label,
                              color=SCENARIO_COLORS.get(name))
            if best is not None and (ep["epoch"] == best).any():
                ax.plot([best + 1], [float(ep.loc[ep["epoch"] == best, col].iloc[0])], marker="*",
                        markersize=11, color=line.get_color(), markeredgecolor="black", linestyle="none")
    for ax, (col, ptitle, ylabel) in zip(axes_flat, panels):
        ax.set_title(ptitle)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if col in ("test_dice", "test_iou"):
            ax.set_ylim(bottom=0)
    handles, labels = axes_flat[0].get_legend_handles_labels()
    if missing:
        handles += [plt.Line2D([], [], linestyle="none")] * len(missing)
        labels += [f"{m} (missing: no finished run)" for m in missing]
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    fig.suptitle((title + "\n" if title else "") + "star = best epoch by validation loss", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return palette_png(fig)


#: What Figure 7's "best autoencoder scenario" is chosen by: the validation split, never test.
SELECT_BY = ("val", "dice_pooled")


def best_ae_scenario(runs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The autoencoder scenario with the highest **validation** ``dice_pooled`` (``metrics.json``).

    Chosen on validation and reported on test, like the checkpoints themselves: the test split
    plays no part in the choice. Considers :data:`pneumolib.reporting.tables.AE_SCENARIOS`;
    ``runs`` maps names to run dicts (``{"metrics": ...}``) or to ``metrics.json`` contents.
    NaN or missing scores are skipped; ties go to the earlier name. None when no autoencoder
    scenario has a validation score.
    """
    split, metric = SELECT_BY
    best, best_score = None, -math.inf
    for name in AE_SCENARIOS:
        run = runs.get(name)
        if run is None:
            continue
        m = run.get("metrics", run)
        try:
            score = float((m.get(split) or {}).get(metric))
        except (TypeError, ValueError):
            continue
        if not math.isnan(score) and score > best_score:
            best, best_score = name, score
    return best


def figure7_names(runs: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    best = best_ae_scenario(runs)
    return ("random",) + ((best,) if best else ()) + ("resnet50",)


def figure5(runs: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Figure 5: random, X-ray AE encoder + decoder, the same with the encoder frozen."""
    return figure_group(runs, FIGURE5, FIGURE_TITLES["figure5"])


def figure6(runs: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Figure 6: random, X-ray AE encoder only, X-ray AE encoder + mask-AE decoder."""
    return figure_group(runs, FIGURE6, FIGURE_TITLES["figure6"])


def figure7(runs: Mapping[str, Mapping[str, Any]], choice: pd.DataFrame | None = None) -> Figure:
    """Figure 7: random, the best autoencoder scenario (chosen by validation pooled Dice), ResNet-50.

    ``choice`` (:func:`pneumolib.reporting.tables.ae_choice`): the scenario chosen on the
    seed-mean validation Dice, and the title says how often resamples of seeds and validation
    images choose it again; without it, :func:`best_ae_scenario` (the first seed's run)."""
    chosen = (choice.attrs.get("chosen") if choice is not None else None) or best_ae_scenario(runs)
    share = float(choice.attrs.get("share", math.nan)) if choice is not None else math.nan
    sure = f"; chosen again in {share:.0%} of resamples of seeds and validation images" if share == share else ""
    note = (f"\nbest autoencoder scenario, chosen on validation (pooled Dice): {scenario_label(chosen, runs.get(chosen))}"
            f"{sure}" if chosen else "\nno autoencoder scenario has finished")
    names = ("random",) + ((chosen,) if chosen else ()) + ("resnet50",)
    return figure_group(runs, names, FIGURE_TITLES["figure7"] + note)


def save_figures(runs: Mapping[str, Mapping[str, Any]], folder: Path | str, dpi: int = 100,
                 choice: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``figure5.png``, ``figure6.png``, ``figure7.png`` (with ``choice``: see
    :func:`figure7`) and ``extra_metrics.png``."""
    folder = Path(folder)
    out = {}
    for name, fn in (("figure5", figure5), ("figure6", figure6), ("figure7", lambda r: figure7(r, choice)),
                     ("extra_metrics", plot_extra_metrics)):
        out[name] = save_figure(fn(runs), folder / f"{name}.png", dpi=dpi)
    return out


#: Panels of :func:`plot_extra_metrics`.
EXTRA_PANELS = (
    ("test_dice_per_image", "Test Kaggle score (per-image Dice, empty/empty = 1)", "mean per-image Dice"),
    ("test_dice_positive", "Test Dice on positive images only", "mean per-image Dice"),
    ("test_auc", "Test image-level AUC (max probability)", "AUC"),
)


def plot_extra_metrics(runs: Mapping[str, Mapping[str, Any]], names: Sequence[str] | None = None) -> Figure:
    """Per-epoch metrics beyond the paper: Kaggle score, Dice on positives, AUC.

    The Kaggle panel draws, per run, the score of predicting every mask empty on its test
    split (dashed), the bar any segmentation must clear on that metric.
    """
    from .tables import TABLE4_ORDER

    names = list(names) if names is not None else [n for n in TABLE4_ORDER if n in runs] or \
        [n for n, r in runs.items() if r["metrics"].get("task", "seg") == "seg"]
    _style()
    fig, axes = plt.subplots(1, len(EXTRA_PANELS), figsize=(5.0 * len(EXTRA_PANELS), 3.8), squeeze=False,
                             dpi=INLINE_DPI)
    axes = axes.ravel()
    baselines = set()
    for name in names:
        run = runs.get(name)
        if run is None or len(run.get("epochs", [])) == 0:
            continue
        ep = run["epochs"].sort_values("epoch")
        for ax, (col, _, _) in zip(axes, EXTRA_PANELS):
            if col in ep.columns:
                ax.plot(_x(ep), ep[col].to_numpy(dtype=float), marker="o", markersize=3,
                        label=scenario_label(name, run), color=SCENARIO_COLORS.get(name))
        b = (run["metrics"].get("test") or {}).get("empty_baseline_dice_per_image")
        if b is not None and not (isinstance(b, float) and math.isnan(b)):
            baselines.add(round(float(b), 4))
    for b in sorted(baselines):
        axes[0].axhline(b, linestyle="--", color="gray", linewidth=1,
                        label=f"all-empty prediction ({b:.3f})")
    for ax, (_, title, ylabel) in zip(axes, EXTRA_PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("Additional test metrics per epoch (not in the paper)", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return palette_png(fig)


def plot_loss_curves(runs: Mapping[str, Mapping[str, Any]], names: Sequence[str] = ("ae_xray", "ae_mask")) -> Figure:
    """Train / validation / test loss per epoch of each run in ``names`` (one panel each).

    Used for the autoencoders (MSE).
    """
    _style()
    fig, axes = plt.subplots(1, len(names), figsize=(5.0 * len(names), 3.5), squeeze=False,
                             dpi=INLINE_DPI)
    for ax, name in zip(axes.ravel(), names):
        run = runs.get(name)
        ax.set_title(name if run else f"{name} (missing: no finished run)")
        ax.set_xlabel("Epoch")
        ax.set_ylabel("loss (MSE)" if name.startswith("ae_") else "loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if run is None or len(run["epochs"]) == 0:
            continue
        ep = run["epochs"].sort_values("epoch")
        for col in ("train_loss", "val_loss", "test_loss"):
            if col in ep.columns:
                ax.plot(_x(ep), ep[col].to_numpy(dtype=float), marker="o", markersize=3, label=col)
        ax.legend(frameon=False)
    fig.tight_layout()
    return palette_png(fig)
