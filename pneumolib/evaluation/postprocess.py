"""Image-level decisions on probability maps: the "triplet" and the classifier gate.

The Kaggle score (``docs`` DATA.md section 4) gives an image with an empty truth 1 when the
prediction is empty too and 0 for a single false-positive pixel, so most of the score is won
by deciding, per image, *whether* to predict anything. Two recipes of the SIIM-ACR winners:

* :func:`apply_triplet`: the 1st-place "triplet" (team "sneddy",
  github.com/sneddy/pneumothorax-segmentation, ``TripletMaskBinarization``). An image is
  positive when more than ``min_area`` pixels exceed ``top_threshold``; its mask is then
  ``prob > bottom_threshold`` (a lower threshold that lets a confident core grow to its
  full extent). A negative image's mask is empty. (Sneddy's code keeps an image when the
  count is ``>= area_threshold``: that is ``min_area = area_threshold - 1`` here; this
  module uses "more than" like :func:`pneumolib.metrics.summarize`.) Areas are pixels at
  the resolution of ``prob``: they scale with the square of the image size (2,000 px at
  1024 is 500 px at 512).
* :func:`apply_gate`: the 4th-place idea: a separate image-level head says "this mask is
  empty" and the segmentation is discarded for the images it rejects.

:func:`tune_triplet` / :func:`tune_gate` / :func:`tune_gate_triplet` choose the parameters
that maximise a score (the Kaggle per-image Dice by default) on the arrays they are given.
They take *validation* arrays only and never see anything else: the test split is scored
once, with the chosen parameters (:mod:`pneumolib.evaluation.image_level`). Tuning is fast: the
thresholded per-image counts ``[intersection, pred_area, true_area]`` are computed once per
distinct threshold (one pass over the pixels each); every grid point is then a per-image
``np.where`` on those counts, scored by :mod:`pneumolib.metrics`.

Pure NumPy / torch; no I/O.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from pneumolib import metrics

__all__ = [
    "TRIPLET_KEYS", "GATE_KEYS", "METRICS",
    "apply_triplet", "apply_gate", "apply_gate_triplet",
    "default_min_areas", "default_triplet_grid", "default_gate_grid", "default_gate_triplet_grid",
    "threshold_counts", "tune_triplet", "tune_gate", "tune_gate_triplet",
]

#: The keys of a triplet parameter dict (also those of ``<run>/postprocess.json``).
TRIPLET_KEYS = ("top_threshold", "min_area", "bottom_threshold")
#: The keys of a gate parameter dict.
GATE_KEYS = ("gate_threshold", "pixel_threshold", "min_area")

#: Scores the tuners can maximise: name -> function of per-image counts ``(N, 3)``.
METRICS: dict[str, Callable[[Any], float]] = {
    "dice_per_image": metrics.dice_per_image,  # the Kaggle score
    "iou_per_image": metrics.iou_per_image,
    "dice_pooled": metrics.dice_pooled,
    "iou_pooled": metrics.iou_pooled,
}

#: Default grids: thresholds on the pixel probability, areas as fractions of H * W.
DEFAULT_TOPS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
DEFAULT_BOTTOMS = (0.3, 0.4, 0.5)
DEFAULT_AREA_FRACS = (0.0, 0.0005, 0.001, 0.002, 0.004)  # 0, 0.05 %, 0.1 %, 0.2 %, 0.4 %
DEFAULT_GATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_PIXEL_THRESHOLDS = (0.3, 0.4, 0.5)


# ---------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------
def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _nhw(a: Any, name: str) -> np.ndarray:
    """``(N, H, W)`` view of ``(N, H, W)``, ``(N, 1, H, W)`` or one ``(H, W)``."""
    a = _np(a)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{name} has shape {a.shape}; expected (N, H, W), (N, 1, H, W) or (H, W)")
    return a


def _thr(t: float) -> np.float64:
    """A threshold as a float64 scalar: ``prob > t`` then compares in float64 even for a
    float16 ``prob`` (a Python float would be rounded to float16 first: 0.7 -> 0.7002)."""
    return np.float64(t)


def _bool_mask(t: np.ndarray, name: str) -> np.ndarray:
    if t.dtype == bool:
        return t
    if not np.isin(t, (0, 1)).all():
        raise ValueError(f"{name} is not binary (values other than 0/1, dtype {t.dtype})")
    return t.astype(bool)


def _image_prob(image_prob: Any, n: int) -> np.ndarray:
    p = _np(image_prob).reshape(-1).astype(np.float64)
    if p.shape != (n,):
        raise ValueError(f"image_prob has {p.size} values for {n} images; expected shape ({n},)")
    return p


def _check_triplet(top_threshold: float, min_area: int, bottom_threshold: float) -> None:
    if bottom_threshold > top_threshold:
        raise ValueError(f"bottom_threshold={bottom_threshold} exceeds top_threshold={top_threshold}: "
                         "the triplet grows a confident core down to a lower threshold")
    if min_area < 0:
        raise ValueError(f"min_area={min_area} must be >= 0 (pixels)")


def apply_triplet(prob: Any, top_threshold: float, min_area: int, bottom_threshold: float) -> np.ndarray:
    """The 1st-place SIIM-ACR "triplet" (sneddy): decide per image, then draw its mask.

    Args:
        prob: ``(N, H, W)`` (or ``(N, 1, H, W)``, or one ``(H, W)``) pixel probabilities in
            [0, 1], NumPy or torch.
        top_threshold: in [0, 1]; an image is positive when more than ``min_area`` of its
            pixels have ``prob > top_threshold``.
        min_area: pixels (>= 0) at the resolution of ``prob``.
        bottom_threshold: in [0, ``top_threshold``]; a positive image's mask is
            ``prob > bottom_threshold``.

    Returns:
        ``(N, H, W)`` bool masks; all False for negative images. ``top == bottom`` with
        ``min_area = 0`` is the plain threshold ``prob > top``.
    """
    _check_triplet(top_threshold, min_area, bottom_threshold)
    p = _nhw(prob, "prob")
    positive = (p > _thr(top_threshold)).reshape(len(p), -1).sum(1) > min_area
    return (p > _thr(bottom_threshold)) & positive[:, None, None]


def apply_gate(prob: Any, image_prob: Any, gate_threshold: float, pixel_threshold: float = 0.5,
               min_area: int = 0) -> np.ndarray:
    """Masks ``prob > pixel_threshold``, emptied where an image-level classifier says "empty".

    The 4th-place SIIM-ACR idea (a U-Net with an "is the mask empty?" head): an image keeps
    its mask only when ``image_prob >= gate_threshold`` and the mask has more than
    ``min_area`` pixels.

    Args:
        prob: ``(N, H, W)`` (or ``(N, 1, H, W)`` / ``(H, W)``) pixel probabilities in [0, 1].
        image_prob: ``(N,)`` classifier probability in [0, 1] that the mask is non-empty.
        gate_threshold: in [0, 1]; 0 keeps every image (no gate).
        pixel_threshold: in [0, 1].
        min_area: pixels (>= 0).

    Returns:
        ``(N, H, W)`` bool masks.
    """
    return apply_gate_triplet(prob, image_prob, gate_threshold, pixel_threshold, min_area, pixel_threshold)


def apply_gate_triplet(prob: Any, image_prob: Any, gate_threshold: float, top_threshold: float,
                       min_area: int, bottom_threshold: float) -> np.ndarray:
    """:func:`apply_triplet`, then the masks of images with ``image_prob < gate_threshold``
    emptied. Shapes and ranges as in :func:`apply_triplet` and :func:`apply_gate`; returns
    ``(N, H, W)`` bool."""
    masks = apply_triplet(prob, top_threshold, min_area, bottom_threshold)
    keep = _image_prob(image_prob, len(masks)) >= gate_threshold
    return masks & keep[:, None, None]


# ---------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------
def default_min_areas(height: int, width: int,
                      fractions: Sequence[float] = DEFAULT_AREA_FRACS) -> list[int]:
    """``fractions`` of ``height * width`` as whole pixels (rounded, duplicates dropped):
    at 512 x 512, ``[0, 131, 262, 524, 1049]``; at 1024 the 1st place's 2,000 px is ~0.2 %."""
    out: list[int] = []
    for f in fractions:
        a = int(round(float(f) * height * width))
        if a not in out:
            out.append(a)
    return out


def default_triplet_grid(height: int, width: int) -> dict[str, list]:
    """``{"top_threshold": [0.5 .. 0.9], "min_area": [0, 0.05 %, 0.1 %, 0.2 %, 0.4 % of
    H * W], "bottom_threshold": [0.3, 0.4, 0.5]}`` (points with bottom > top are skipped)."""
    return {"top_threshold": list(DEFAULT_TOPS), "min_area": default_min_areas(height, width),
            "bottom_threshold": list(DEFAULT_BOTTOMS)}


def default_gate_grid(height: int, width: int) -> dict[str, list]:
    """``{"gate_threshold": [0, 0.1 .. 0.9], "pixel_threshold": [0.3, 0.4, 0.5],
    "min_area": as in :func:`default_triplet_grid`}``."""
    return {"gate_threshold": list(DEFAULT_GATES), "pixel_threshold": list(DEFAULT_PIXEL_THRESHOLDS),
            "min_area": default_min_areas(height, width)}


def default_gate_triplet_grid(height: int, width: int) -> dict[str, list]:
    """The triplet grid times the gate thresholds ``[0, 0.1 .. 0.9]``."""
    return {"gate_threshold": list(DEFAULT_GATES), **default_triplet_grid(height, width)}


def _points(grid: Mapping[str, Iterable] | Sequence[Mapping[str, Any]] | pd.DataFrame,
            keys: Sequence[str]) -> pd.DataFrame:
    """Grid points as a DataFrame with columns ``keys``: a dict of value lists (product) or
    a list of parameter dicts / a DataFrame (taken as they are)."""
    if isinstance(grid, pd.DataFrame):
        df = grid.copy()
    elif isinstance(grid, Mapping):
        missing = [k for k in keys if k not in grid]
        if missing:
            raise ValueError(f"grid lacks {missing}; expected keys {list(keys)}")
        axes = [np.asarray(list(grid[k])) for k in keys]
        if any(a.size == 0 for a in axes):
            raise ValueError("grid has an empty axis")
        mesh = np.meshgrid(*axes, indexing="ij")
        df = pd.DataFrame({k: m.reshape(-1) for k, m in zip(keys, mesh)})
    else:
        df = pd.DataFrame(list(grid))
    missing = [k for k in keys if k not in df.columns]
    if missing or not len(df):
        raise ValueError(f"grid has no points or lacks {missing}; expected keys {list(keys)}")
    df = df[list(keys)].copy()
    df["min_area"] = df["min_area"].astype(np.int64)
    for k in keys:
        if k != "min_area":
            df[k] = df[k].astype(np.float64)
    return df.drop_duplicates().reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------------------
def threshold_counts(prob: Any, mask: Any, thresholds: Sequence[float],
                     chunk_pixels: int = 1 << 24) -> np.ndarray:
    """Per-image counts of ``prob > t`` against ``mask``, for each threshold, in one pass.

    Args:
        prob: ``(N, H, W)`` probabilities in [0, 1] (any float dtype).
        mask: ``(N, H, W)`` truth, bool or 0/1.
        thresholds: ``K`` values in [0, 1].
        chunk_pixels: images are processed in chunks of about this many pixels.

    Returns:
        ``(K, N, 3)`` int64, ``[intersection, pred_area, true_area]`` of each threshold and
        image (:func:`pneumolib.metrics.per_image_counts`).
    """
    p, t = _nhw(prob, "prob"), _nhw(mask, "mask")
    if p.shape != t.shape:
        raise ValueError(f"prob shape {p.shape} differs from mask shape {t.shape}")
    n = len(p)
    out = np.zeros((len(thresholds), n, 3), dtype=np.int64)
    step = max(1, int(chunk_pixels) // max(1, p[0].size if n else 1))
    for s in range(0, n, step):
        tb = _bool_mask(t[s : s + step], "mask")  # checked once, bool thereafter
        pc = p[s : s + step]
        for k, thr in enumerate(thresholds):
            out[k, s : s + step] = metrics.per_image_counts(pc > _thr(thr), tb)
    return out


def _simplicity(df: pd.DataFrame) -> np.ndarray:
    """Sort keys (ascending = simpler) for tie-breaking: no gate, no area, top == bottom,
    thresholds near 0.5, i.e. toward the plain ``prob > 0.5``."""
    gate = df["gate_threshold"].to_numpy() if "gate_threshold" in df else np.zeros(len(df))
    top, bottom = df["top_threshold"].to_numpy(), df["bottom_threshold"].to_numpy()
    return np.lexsort((np.abs(bottom - 0.5), np.abs(top - 0.5), top - bottom,
                       df["min_area"].to_numpy(), gate))


def _search(prob: Any, mask: Any, image_prob: Any | None, points: pd.DataFrame,
            metric: str) -> tuple[int, pd.DataFrame]:
    """Score every point (columns ``[gate_threshold,] top_threshold, min_area,
    bottom_threshold``); returns the best row's position and the scored table."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown; valid: {', '.join(METRICS)}")
    score_fn = METRICS[metric]
    p, t = _nhw(prob, "prob"), _nhw(mask, "mask")
    if len(p) == 0:
        raise ValueError("no images to tune on")
    bad = points["bottom_threshold"] > points["top_threshold"]
    points = points[~bad].reset_index(drop=True)
    if (points["min_area"] < 0).any() or not len(points):
        raise ValueError("the grid has no valid point (min_area >= 0, bottom <= top)")
    thresholds = np.unique(np.r_[points["top_threshold"].to_numpy(), points["bottom_threshold"].to_numpy()])
    counts = threshold_counts(p, t, thresholds)  # (K, N, 3)
    pos_of = {float(v): k for k, v in enumerate(thresholds)}
    empty = counts[0].copy()
    empty[:, :2] = 0  # predicted empty: no intersection, no predicted area
    ip = _image_prob(image_prob, len(p)) if image_prob is not None else None

    scores, n_pos = np.empty(len(points)), np.empty(len(points), dtype=np.int64)
    for i, row in enumerate(points.itertuples(index=False)):
        positive = counts[pos_of[float(row.top_threshold)], :, 1] > row.min_area
        if ip is not None:
            positive &= ip >= row.gate_threshold
        c = np.where(positive[:, None], counts[pos_of[float(row.bottom_threshold)]], empty)
        scores[i] = score_fn(c)
        n_pos[i] = int((c[:, 1] > 0).sum())
    table = points.copy()
    table["score"] = scores
    table["n_pred_positive"] = n_pos
    table["metric"] = metric
    # best = highest score; among (float-)ties the simplest point
    order = _simplicity(table)
    s = np.nan_to_num(scores, nan=-np.inf)[order]
    best = int(order[np.flatnonzero(s >= s.max() - 1e-12)[0]])
    table["best"] = False
    table.loc[best, "best"] = True
    return best, table


def _params(row: pd.Series, keys: Sequence[str]) -> dict[str, float | int]:
    return {k: (int(row[k]) if k == "min_area" else float(row[k])) for k in keys}


def tune_triplet(prob_val: Any, mask_val: Any, grid: Any = None,
                 metric: str = "dice_per_image") -> tuple[dict[str, float | int], pd.DataFrame]:
    """The triplet maximising ``metric`` on the given (validation) images.

    Args:
        prob_val: ``(N, H, W)`` validation probabilities in [0, 1] (float16 is fine).
        mask_val: ``(N, H, W)`` validation truth, bool or 0/1.
        grid: ``{"top_threshold": [...], "min_area": [...pixels], "bottom_threshold": [...]}``
            (every combination with bottom <= top), or a list of such parameter dicts;
            None = :func:`default_triplet_grid` at the images' resolution.
        metric: a key of :data:`METRICS`; default the Kaggle per-image Dice.

    Returns:
        ``(params, table)``: ``params`` = ``{"top_threshold", "min_area",
        "bottom_threshold"}`` (ready for ``apply_triplet(prob, **params)``); ``table`` has
        one row per grid point with its ``score`` (``metric`` on these images),
        ``n_pred_positive`` and ``best``. Ties go to the simplest point (no area filter,
        top == bottom, thresholds nearest 0.5: the plain threshold when it is in the grid).
    """
    p = _nhw(prob_val, "prob_val")
    grid = default_triplet_grid(*p.shape[1:]) if grid is None else grid
    best, table = _search(p, mask_val, None, _points(grid, TRIPLET_KEYS), metric)
    return _params(table.loc[best], TRIPLET_KEYS), table


def tune_gate(prob_val: Any, image_prob_val: Any, mask_val: Any, grid: Any = None,
              metric: str = "dice_per_image") -> tuple[dict[str, float | int], pd.DataFrame]:
    """The gate (:func:`apply_gate`) maximising ``metric`` on the given (validation) images.

    Args:
        prob_val: ``(N, H, W)`` probabilities in [0, 1].
        image_prob_val: ``(N,)`` classifier probabilities in [0, 1] ("mask is non-empty").
        mask_val: ``(N, H, W)`` truth, bool or 0/1.
        grid: ``{"gate_threshold": [...], "pixel_threshold": [...], "min_area": [...]}`` or a
            list of such dicts; None = :func:`default_gate_grid`.
        metric: a key of :data:`METRICS`.

    Returns:
        ``(params, table)``: ``params`` = ``{"gate_threshold", "pixel_threshold",
        "min_area"}`` (for ``apply_gate(prob, image_prob, **params)``); ``table`` as in
        :func:`tune_triplet`. Ties go to no gate, no area filter, pixel threshold nearest 0.5.
    """
    p = _nhw(prob_val, "prob_val")
    grid = default_gate_grid(*p.shape[1:]) if grid is None else grid
    pts = _points(grid, GATE_KEYS)
    pts["top_threshold"] = pts["bottom_threshold"] = pts["pixel_threshold"]
    best, table = _search(p, mask_val, image_prob_val, pts, metric)
    table = table.drop(columns=["top_threshold", "bottom_threshold"])
    return _params(table.loc[best], GATE_KEYS), table


def tune_gate_triplet(prob_val: Any, image_prob_val: Any, mask_val: Any, grid: Any = None,
                      metric: str = "dice_per_image") -> tuple[dict[str, float | int], pd.DataFrame]:
    """Gate and triplet tuned jointly (:func:`apply_gate_triplet`); arguments as in
    :func:`tune_gate`, ``grid`` keys ``gate_threshold`` + :data:`TRIPLET_KEYS` (None =
    :func:`default_gate_triplet_grid`). Returns ``({"gate_threshold", "top_threshold",
    "min_area", "bottom_threshold"}, table)``."""
    p = _nhw(prob_val, "prob_val")
    grid = default_gate_triplet_grid(*p.shape[1:]) if grid is None else grid
    keys = ("gate_threshold",) + TRIPLET_KEYS
    best, table = _search(p, mask_val, image_prob_val, _points(grid, keys), metric)
    return _params(table.loc[best], keys), table
