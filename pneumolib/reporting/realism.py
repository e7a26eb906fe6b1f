"""How close is the phantom to the real SIIM-ACR masks? Sizes and locations, compared.

The real side comes from the annotation table in the torchxrayvision wheel
(:mod:`pneumolib.data.annotations`: 2,669 positive masks decoded at 1024 x 1024). The
phantom side is a phantom set exactly as :func:`pneumolib.data.phantom.write_phantom` would
write it (same labels from :func:`pneumolib.data.phantom.plan`, same ``render`` calls), but only
its positives are rendered and nothing is written; or an existing phantom folder's masks.

Two numbers, positives only:

* ``ks``: the two-sample Kolmogorov-Smirnov statistic of the mask areas as a share of the
  image (``scipy.stats.ks_2samp``): 0 for identical distributions, 1 for disjoint ones.
* ``heat_corr``: the Pearson correlation of the two mean location heat maps, each
  ``(64, 64)``: per cell, the average share of it the positive masks cover (the 1024 px or
  phantom-size masks block-averaged to 64 x 64). Image orientation: row 0 at the top, the
  patient's right on the image's left, as on a PA film.

API::

    compare_phantom(n=1500, size=256, seed=7, difficulty=1.0) -> dict
    comparison_table(n=1500, size=256, seed=7, difficulty=1.0) -> dict   # for notebook 01
    phantom_masks_stats(n, size, seed, difficulty) -> (areas, heat map)
    folder_stats(root) -> (areas, heat map)       # a written phantom / siim-png folder
    ks_statistic(a, b), heatmap_correlation(a, b), downsample(mask, grid)
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pneumolib.data import annotations as ann
from pneumolib.errors import DataError

GRID = ann.GRID


# -- the two measures -----------------------------------------------------------------------
def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of two samples, in [0, 1].

    Args:
        a, b: 1-D samples (e.g. mask areas as a share of the image), each non-empty.

    Returns:
        ``sup_x |F_a(x) - F_b(x)|`` (``scipy.stats.ks_2samp(a, b).statistic``).
    """
    from scipy.stats import ks_2samp

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise DataError("ks_statistic needs two non-empty samples")
    return float(ks_2samp(a, b).statistic)


def heatmap_correlation(a, b) -> float:
    """Pearson correlation of two heat maps over their cells, in [-1, 1].

    Args:
        a, b: arrays of the same shape (e.g. two ``(64, 64)`` heat maps).

    Returns:
        The correlation of the flattened maps; NaN when either is constant.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise DataError(f"heat maps differ in size: {a.size} vs {b.size} cells")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def downsample(mask: np.ndarray, grid: int = GRID) -> np.ndarray:
    """``(grid, grid)`` float64 in [0, 1]: the share of each cell a mask covers.

    Block-averages when the side is a multiple of ``grid`` (256 -> 4 x 4 blocks, 1024 ->
    16 x 16), area-interpolates otherwise.
    """
    m = np.asarray(mask, np.float64)
    h, w = m.shape
    if h % grid == 0 and w % grid == 0:
        return m.reshape(grid, h // grid, grid, w // grid).mean((1, 3))
    return cv2.resize(m.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA).astype(np.float64)


# -- the phantom side -------------------------------------------------------------------------
def phantom_masks_stats(n: int = 1500, size: int = 256, seed: int = 7, difficulty: float = 1.0,
                        grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """Areas and heat map of the positives of the phantom set ``(n, size, seed, difficulty)``.

    The positives are those :func:`pneumolib.data.phantom.plan` assigns (``round(0.22 * n)``,
    330 of 1,500) and each mask is ``render(i, seed, size, difficulty, positive=True)``'s,
    i.e. exactly the ``png_masks`` of ``write_phantom(out, n, size, seed, difficulty)``.

    Returns:
        ``(areas, heat)``: ``(n_positive,)`` float64 mask areas as a share of the image,
        and the ``(grid, grid)`` float64 mean coverage in [0, 1].
    """
    from pneumolib.data import phantom

    pos = [it.index for it in phantom.plan(int(n), int(seed)) if it.positive]
    areas = np.zeros(len(pos))
    heat = np.zeros((grid, grid))
    for k, i in enumerate(pos):
        _, mask, _ = phantom.render(i, int(seed), int(size), float(difficulty), positive=True)
        areas[k] = mask.mean()
        heat += downsample(mask, grid)
    return areas, heat / max(len(pos), 1)


def folder_stats(root: str | os.PathLike, grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """Areas and heat map of the positive masks of a written dataset folder.

    Args:
        root: a phantom (or siim-png, or siim-dicom) folder that
            :func:`pneumolib.data.open_source` opens.

    Returns:
        As :func:`phantom_masks_stats`.
    """
    from pneumolib.data import open_source

    src = open_source(Path(root))
    areas, heat, n = [], np.zeros((grid, grid)), 0
    for i, r in enumerate(src.records):
        if r.has_pneumo != 1:
            continue
        m = src.read_mask(i)
        areas.append(float(m.mean()))
        heat += downsample(m, grid)
        n += 1
    return np.array(areas), heat / max(n, 1)


# -- comparisons ----------------------------------------------------------------------------
def compare_phantom(n: int = 1500, size: int = 256, seed: int = 7, difficulty: float = 1.0,
                    real: ann.AnnotationStats | None = None, grid: int = GRID) -> dict:
    """Phantom-vs-real numbers for the phantom set ``(n, size, seed, difficulty)``.

    Args:
        n, size, seed, difficulty: the phantom set (see :func:`phantom_masks_stats`).
        real: real statistics (default :func:`pneumolib.data.annotations.stats`, cached).
        grid: heat-map cells a side.

    Returns:
        dict: ``ks`` (area KS statistic), ``ks_pvalue``, ``heat_corr`` (Pearson of the heat
        maps), ``median_area_phantom`` / ``median_area_real`` (share of the image),
        ``n_phantom`` / ``n_real`` (positives compared), ``left_share_phantom`` /
        ``left_share_real`` (share of the heat on the image's left half, the patient's
        right), and the parameters.
    """
    from scipy.stats import ks_2samp

    real = real if real is not None else ann.stats(grid=grid)
    ra, rh = real.area_frac(), real.heatmap()
    pa, ph = phantom_masks_stats(n, size, seed, difficulty, grid)
    ks = ks_2samp(pa, ra)
    half = grid // 2
    return {
        "ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
        "heat_corr": heatmap_correlation(ph, rh),
        "median_area_phantom": float(np.median(pa)), "median_area_real": float(np.median(ra)),
        "n_phantom": int(pa.size), "n_real": int(ra.size),
        "left_share_phantom": float(ph[:, :half].sum() / max(ph.sum(), 1e-12)),
        "left_share_real": float(rh[:, :half].sum() / max(rh.sum(), 1e-12)),
        "n": int(n), "size": int(size), "seed": int(seed), "difficulty": float(difficulty),
    }


def comparison_table(n: int = 1500, size: int = 256, seed: int = 7, difficulty: float = 1.0,
                     real: ann.AnnotationStats | None = None, grid: int = GRID) -> dict:
    """Real vs phantom side by side, for notebook 01.

    Returns:
        dict with
        ``table``: DataFrame indexed by quantity (images, positives, prevalence, annotations
        per positive image (mean and max), images with 2+ annotations, mask area as a share
        of the image at min / 5 % / 10 % / median / 90 % / max, share of positives under
        2,000 px of 1024^2, KS statistic, heat-map correlation), columns ``real`` and
        ``phantom``;
        ``heat_real`` / ``heat_phantom``: the two ``(grid, grid)`` float64 heat maps in
        [0, 1]; ``compare``: :func:`compare_phantom`'s dict.
        The phantom always has exactly one annotation per positive image.
    """
    from pneumolib.data import phantom

    real = real if real is not None else ann.stats(grid=grid)
    ra, rh = real.area_frac(), real.heatmap()
    pa, ph = phantom_masks_stats(n, size, seed, difficulty, grid)
    items = phantom.plan(int(n), int(seed))
    n_pos = sum(it.positive for it in items)
    imgs = real.images
    qs = {"min": 0.0, "5 %": 0.05, "10 %": 0.10, "median": 0.5, "90 %": 0.9, "max": 1.0}
    rows = {
        "images": (len(imgs), len(items)),
        "positives": (int(imgs["has_pneumo"].sum()), n_pos),
        "prevalence": (float(imgs["has_pneumo"].mean()), n_pos / max(len(items), 1)),
        "annotations per positive (mean)": (float(real.positives["n_annotations"].mean()), 1.0),
        "annotations per positive (max)": (int(real.positives["n_annotations"].max()), 1),
        "images with 2+ annotations": (int((imgs["n_annotations"] >= 2).sum()), 0),
    }
    for k, q in qs.items():
        rows[f"mask area, share of image: {k}"] = (
            float(np.quantile(ra, q, method=ann.QUANTILE_METHOD)),
            float(np.quantile(pa, q, method=ann.QUANTILE_METHOD)))
    limit = 2000 / ann.SIDE**2
    rows["positives under 2,000 px of 1024^2"] = (float((ra < limit).mean()), float((pa < limit).mean()))
    ks, corr = ks_statistic(pa, ra), heatmap_correlation(ph, rh)
    rows["area KS statistic (phantom vs real)"] = (ks, ks)
    rows["heat-map correlation (phantom vs real)"] = (corr, corr)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["real", "phantom"])
    table.index.name = "quantity"
    compare = {"ks": ks, "heat_corr": corr, "median_area_phantom": float(np.median(pa)),
               "median_area_real": float(np.median(ra)), "n_phantom": int(pa.size),
               "n_real": int(ra.size), "n": int(n), "size": int(size), "seed": int(seed),
               "difficulty": float(difficulty)}
    return {"table": table, "heat_real": rh, "heat_phantom": ph, "compare": compare}


def compare_run(cfg) -> dict:
    """:func:`comparison_table` for the phantom a run with ``cfg`` trains on (its size,
    number of images and difficulty; the phantom's data seed is 0), or, for a run on real
    data, for the reference phantom (1,500 images at 256 px, seed 7)."""
    if cfg.uses_phantom:
        return comparison_table(n=cfg.phantom_n, size=cfg.phantom_size, seed=0, difficulty=cfg.phantom_difficulty)
    return comparison_table()


def write_comparison(result: dict, folder: str | os.PathLike, fig=None) -> dict[str, Path]:
    """``realism.csv`` (quantity, real, phantom; numbers formatted for reading) and, with
    ``fig``, ``realism.png`` into ``folder``."""
    from pneumolib import runio

    from .plots import save_figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def fmt(q: str, v: float) -> str:
        if "share" in q or q == "prevalence" or "under" in q:
            return f"{100 * v:.2f} %"
        if float(v).is_integer():
            return f"{int(v):,}"
        return f"{v:.3f}"

    tab = result["table"]
    rows = [{"quantity": q, "real": "" if "phantom vs real" in q else fmt(q, r["real"]), "phantom": fmt(q, r["phantom"])}
            for q, r in tab.iterrows()]
    out = {"csv": runio.atomic_write_csv(folder / "realism.csv", pd.DataFrame(rows))}
    if fig is not None:
        out["png"] = save_figure(fig, folder / "realism.png")
    return out
