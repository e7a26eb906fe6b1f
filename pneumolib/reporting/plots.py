"""The pictures of the data and the studies (overlays, augmentations, mask areas and
places, reconstructions, study bars, label efficiency), and :func:`save_figure`. The
paper's Figures 5-7 are in :mod:`pneumolib.reporting.figures`.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``show``.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .tables import scenario_info

#: One colour per scenario, the same in every figure.
SCENARIO_COLORS = {
    "random": "#444444", "ae_full": "#1f77b4", "ae_full_frozen": "#9ecae1", "ae_encoder": "#2ca02c",
    "ae_encoder_mask_decoder": "#ff7f0e", "resnet50": "#d62728",
}


def scenario_label(name: str, run: Mapping[str, Any] | None) -> str:
    """The paper's label of a scenario (its name when unknown)."""
    return str(scenario_info(name, run)["label"] or name)


def _style() -> None:
    try:
        import seaborn as sns

        sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    except ImportError:  # pragma: no cover - seaborn is a dependency
        plt.style.use("ggplot")


def palette_png(fig: Figure, colors: int = 256) -> Figure:
    """Make ``fig`` write its PNGs with a palette of at most ``colors`` colours; returns it.

    For line and bar charts: they hold a few colours plus their anti-aliased edges, so a
    256-colour palette looks the same and takes a fraction of the bytes of the RGBA
    PNG. That keeps the figures a notebook shows inline (and so the executed copies of
    ``pneumo reproduce``) small at full resolution. Applies to every PNG of ``fig``: the
    notebook's inline picture and :func:`save_figure`'s file; not for images of X-rays.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image, PngImagePlugin

    canvas = fig.canvas

    def print_png(filename_or_obj: Any, *, metadata: Any = None, pil_kwargs: Any = None, **_: Any) -> None:
        # ``_``: dpi, facecolor, ... that print_figure passes; Agg's own print_png ignores them too
        buf = io.BytesIO()
        FigureCanvasAgg.print_png(canvas, buf, metadata=metadata, pil_kwargs=pil_kwargs)
        img = Image.open(io.BytesIO(buf.getvalue()))
        info = PngImagePlugin.PngInfo()
        for key, value in getattr(img, "text", {}).items():
            info.add_text(key, value)
        extra = {"dpi": img.info["dpi"]} if "dpi" in img.info else {}
        if img.mode == "RGBA" and img.getextrema()[3][0] == 255:
            img = img.convert("RGB")  # opaque: the median cut picks the palette best
        method = Image.Quantize.MEDIANCUT if img.mode == "RGB" else Image.Quantize.FASTOCTREE
        img.quantize(colors=colors, method=method).save(filename_or_obj, format="PNG", optimize=True,
                                                        pnginfo=info, **extra)

    if isinstance(canvas, FigureCanvasAgg):
        canvas.print_png = print_png  # type: ignore[method-assign]  # this figure's canvas only
    return fig


def save_figure(fig: Figure, path: Path | str, dpi: int = 100) -> Path:
    """Save ``fig`` atomically (temporary file + rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; figures are for everyone
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


# -- EDA and augmentation figures --------------------------------------------------------
def overlay_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None,
                 titles: Sequence[str] | None = None, ncols: int = 4, alpha: float = 0.4,
                 size: float = 2.6) -> Figure:
    """Images with their masks overlaid in red.

    Args:
        images: ``(H, W)`` arrays, float in [0, 1] or uint8.
        masks: ``(H, W)`` bool per image (None: images only). Contours are drawn too, so
            small masks stay visible.
        titles: one per image.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255 if np.asarray(images[i]).dtype == np.uint8 else 1)
        if masks is not None and masks[i] is not None and np.asarray(masks[i]).any():
            m = np.asarray(masks[i]).astype(bool)
            rgba = np.zeros((*m.shape, 4), dtype=np.float32)
            rgba[m] = (1.0, 0.1, 0.1, alpha)
            ax.imshow(rgba)
            ax.contour(m.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        if titles is not None and i < len(titles):
            ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return fig


def augmentation_figure(examples: Mapping[str, Mapping[str, np.ndarray]], what: str = "image",
                        title: str | None = None) -> Figure:
    """The paper's Figure 2 (``what="image"``) or Figure 3 (``what="mask"``).

    Args:
        examples: from :func:`pneumolib.reporting.eda.augmentation_examples`:
            ``{"original": {"image", "mask"}, "flipped": {...}, "rotated (+4.2 deg)": {...}}``.
    """
    keys = list(examples)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4), squeeze=False)
    for ax, k in zip(axes.ravel(), keys):
        a = np.asarray(examples[k][what])
        ax.imshow(a, cmap="gray", vmin=0, vmax=1 if a.dtype != np.uint8 else 255, interpolation="nearest")
        ax.set_title(k, fontsize=9)
        ax.axis("off")
    default = {"image": "Figure 2: an X-ray and its augmentations", "mask": "Figure 3: its mask and the same augmentations"}
    fig.suptitle(title or default.get(what, what), fontsize=10)
    fig.tight_layout()
    return fig


def area_histogram(areas: pd.DataFrame, column: str = "area_frac", bins: int = 40) -> Figure:
    """Distribution of mask sizes of positive images (``eda.mask_areas`` output), log x axis."""
    _style()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    v = areas[column].to_numpy(dtype=float)
    v = v[v > 0]
    if v.size:
        edges = np.logspace(np.log10(v.min()), np.log10(v.max()) + 1e-9, bins)
        ax.hist(v, bins=edges, color="#1f77b4", edgecolor="white")
        ax.set_xscale("log")
        ax.axvline(float(np.median(v)), color="black", linestyle="--", linewidth=1,
                   label=f"median {np.median(v):.3g}")
        ax.legend(frameon=False)
    ax.set_xlabel("mask area (fraction of the image)" if column == "area_frac" else column)
    ax.set_ylabel("positive images")
    ax.set_title(f"Pneumothorax mask sizes (n = {v.size})")
    fig.tight_layout()
    return fig


def heatmap(h: np.ndarray, title: str = "Where the masks lie (share of positive images per pixel)") -> Figure:
    """A ``(S, S)`` frequency map in [0, 1] (``eda.mask_heatmap``), patient's right on the left."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(h, cmap="magma", vmin=0)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def heatmap_pair(real: np.ndarray, phantom: np.ndarray, corr: float | None = None) -> Figure:
    """The real SIIM-ACR and the phantom's mean location heat maps (``(G, G)`` in [0, 1],
    positives only), side by side on one colour scale; patient's right on the left."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 4))
    vmax = float(max(real.max(), phantom.max(), 1e-9))
    for ax, h, t in zip(axes, (real, phantom), ("real SIIM-ACR (train annotations)", "phantom")):
        im = ax.imshow(h, cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes), fraction=0.046, pad=0.04, label="share of positive images")
    fig.suptitle("Where pneumothoraces lie" + (f" (Pearson r = {corr:.2f})" if corr is not None else ""),
                 fontsize=10)
    return fig


def reconstruction_grid(rec: Mapping[str, np.ndarray], title: str = "") -> Figure:
    """Rows = examples; columns = the arrays of ``rec`` (``eda.reconstructions`` output).

    Each value is ``(N, H, W)``; every column shares the grey scale of the first one
    (its 1st-99th percentile), so that errors show as differences in brightness.
    """
    cols = [k for k in rec if isinstance(rec[k], np.ndarray) and rec[k].ndim == 3]
    n = rec[cols[0]].shape[0] if cols else 0
    fig, axes = plt.subplots(max(n, 1), max(len(cols), 1), figsize=(2.4 * max(len(cols), 1), 2.4 * max(n, 1)),
                             squeeze=False)
    lo, hi = (float(v) for v in np.percentile(rec[cols[0]], [1, 99])) if cols else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    for j, c in enumerate(cols):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(rec[c][i], cmap="gray", vmin=lo, vmax=hi)
            ax.axis("off")
            if i == 0:
                ax.set_title(c, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# -- studies beyond the paper ------------------------------------------------------------------
#: Metrics of the study figures: (column, panel title).
STUDY_PANELS = (
    ("dice_pooled", "Test Dice (pooled)"),
    ("dice_per_image", "Test Kaggle score (per-image Dice)"),
)


def study_bars(table: pd.DataFrame, x: str = "scenario", hue: Sequence[str] | str | None = None,
               title: str = "", panels: Sequence[tuple[str, str]] = STUDY_PANELS) -> Figure:
    """Grouped bars with 95 % interval whiskers, one panel per metric.

    Args:
        table: a study table (:mod:`pneumolib.reporting.studies`): columns ``x``, the ``hue`` columns,
            and for each metric ``m``: ``m``, ``m_ci95_lo``, ``m_ci95_hi``; optional
            ``empty_baseline`` (drawn dashed in the Kaggle-score panel).
        hue: column(s) whose combined value splits the bars of one ``x`` group.
    """
    _style()
    hue_cols = [hue] if isinstance(hue, str) else list(hue or [])
    df = table.copy()
    df["_hue"] = df[hue_cols].astype(str).agg(" / ".join, axis=1) if hue_cols else ""
    groups = list(dict.fromkeys(df[x].astype(str)))
    hues = list(dict.fromkeys(df["_hue"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 1.2 * len(groups) * max(1, len(hues)) ** 0.5) * len(panels) / 1.4, 4.0),
                             squeeze=False)
    width = 0.8 / max(1, len(hues))
    cmap = plt.get_cmap("tab10")
    # one all-empty baseline for every bar, or (rows on different test splits, e.g. the two
    # protocols of the leakage study) each bar's own, drawn across that bar
    one_base = "empty_baseline" in df and df["empty_baseline"].nunique() <= 1
    for ax, (metric, ptitle) in zip(axes.ravel(), panels):
        labelled = False
        for j, h in enumerate(hues):
            sub = df[df["_hue"] == h].set_index(df[df["_hue"] == h][x].astype(str))
            xs, ys, err, bases = [], [], [[], []], []
            for i, g in enumerate(groups):
                if g not in sub.index:
                    continue
                r = sub.loc[g]
                r = r.iloc[0] if isinstance(r, pd.DataFrame) else r
                v = float(r.get(metric, np.nan))
                lo, hi = float(r.get(f"{metric}_ci95_lo", np.nan)), float(r.get(f"{metric}_ci95_hi", np.nan))
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(v)
                err[0].append(max(0.0, v - lo) if np.isfinite(lo) else 0.0)
                err[1].append(max(0.0, hi - v) if np.isfinite(hi) else 0.0)
                bases.append(float(r.get("empty_baseline", np.nan)))
            ax.bar(xs, ys, width=width * 0.95, yerr=err, capsize=3, color=cmap(j % 10), label=h or None)
            if metric == "dice_per_image" and not one_base:
                for xb, b in zip(xs, bases):
                    ax.hlines(b, xb - width / 2, xb + width / 2, colors="k", linestyles="--", lw=1,
                              label=None if labelled else "all-empty baseline (of each bar's test split)")
                    labelled = True
        if metric == "dice_per_image" and one_base and len(df):
            base = float(df["empty_baseline"].iloc[0])
            ax.axhline(base, ls="--", color="k", lw=1, label=f"all-empty baseline ({base:.3f})")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(ptitle)
        ax.set_ylabel(ptitle.split("(")[0].strip())
    handles, labels = axes.ravel()[-1].get_legend_handles_labels()
    fig.suptitle((title + "\n" if title else "") + "bars: test split; whiskers: 95 % bootstrap interval over test images",
                 fontsize=10)
    if labels:  # below the panels, where it cannot hide a bar
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(len(labels), 3),
                   bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 3), 1, 1))
    else:
        fig.tight_layout()
    return fig


def label_efficiency(table: pd.DataFrame, panels: Sequence[tuple[str, str]] = STUDY_PANELS) -> Figure:
    """Score against the share of training labels (log x), one line per scenario, with
    shaded 95 % intervals (a :func:`pneumolib.reporting.studies.label_efficiency_study` table)."""
    _style()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.0), squeeze=False)
    for ax, (metric, ptitle) in zip(axes.ravel(), panels):
        for sc, sub in table.groupby("scenario", sort=False):
            sub = sub.sort_values("label_frac")
            color = SCENARIO_COLORS.get(str(sc))
            ax.plot(sub["label_frac"], sub[metric], marker="o", label=scenario_label(str(sc), None), color=color)
            if f"{metric}_ci95_lo" in sub:
                ax.fill_between(sub["label_frac"], sub[f"{metric}_ci95_lo"], sub[f"{metric}_ci95_hi"],
                                alpha=0.12, color=color)
        if metric == "dice_per_image" and "empty_baseline" in table and len(table):
            base = float(table["empty_baseline"].iloc[0])
            ax.axhline(base, ls="--", color="k", lw=1, label=f"all-empty baseline ({base:.3f})")
        ax.set_xscale("log")
        fracs = sorted(table["label_frac"].unique()) if len(table) else [0.01, 0.1, 1.0]
        ax.set_xticks(fracs)
        ax.set_xticklabels([f"{f:.0%}" for f in fracs])
        ax.set_xlabel("share of training labels")
        ax.set_ylim(0, 1)
        ax.set_title(ptitle)
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle("Label efficiency (test split; shaded: 95 % bootstrap interval over test images)", fontsize=10)
    fig.tight_layout()
    return fig

