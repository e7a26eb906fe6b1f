"""Every metric of the project, and nothing else computes one.

Two "Dice" numbers exist for SIIM-ACR and cannot be compared (``docs`` DATA.md section 4);
the names here say which is which:

* ``dice_pooled`` / ``iou_pooled``: the paper's equations (1)-(2) with intersections and
  areas summed over the whole set first (what the paper's 0.60 / 0.44 most likely are;
  ``iou_pooled == dice_pooled / (2 - dice_pooled)``).
* ``dice_per_image`` / ``iou_per_image``: the score of each image, 1 when truth and
  prediction are both empty, then the mean (the Kaggle leaderboard's Dice).
* ``dice_positive``: the mean per-image Dice over images whose truth is non-empty.
* ``auc`` / ``sensitivity`` / ``specificity``: image-level classification ("does this image
  show a pneumothorax?").

One API: the currency is the per-image count table ``counts`` of shape ``(N, 3)`` int64,
columns ``[intersection, pred_area, true_area]`` (:func:`per_image_counts`). Counts are
additive and exact across batches and processes, so every segmentation metric takes
``counts`` and only counts; image-level metrics take per-image scores / labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "per_image_counts", "per_image_counts_torch", "dice_pooled", "iou_pooled",
    "dice_per_image", "iou_per_image", "dice_positive", "per_image_dice", "per_image_iou",
    "auc", "sensitivity", "specificity", "summarize", "dedup_gathered",
]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_nhw(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 2:
        return a[None]
    if a.ndim == 4:
        if a.shape[1] != 1:
            raise ValueError(f"{name} has shape {a.shape}; expected (N, H, W) or (N, 1, H, W)")
        return a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{name} has shape {a.shape}; expected (N, H, W) or (N, 1, H, W)")
    return a


def _binary(a: np.ndarray, name: str, threshold: float | None) -> np.ndarray:
    if threshold is not None:
        return a > threshold
    if a.dtype == bool:
        return a
    if not np.isin(a, (0, 1)).all():
        raise ValueError(
            f"{name} is not binary (values other than 0/1, dtype {a.dtype}); threshold it "
            "first or pass threshold=..."
        )
    return a.astype(bool)


def per_image_counts(pred: Any, truth: Any, threshold: float | None = None) -> np.ndarray:
    """Per-image ``[intersection, pred_area, true_area]``.

    Args:
        pred: ``(N, H, W)`` or ``(N, 1, H, W)`` (or one ``(H, W)``) binary mask, NumPy or
            torch; with ``threshold``, probabilities and ``pred > threshold`` is used.
        truth: the same shape, bool or 0/1 (other values are an error rather than being
            guessed at: binarise masks when reading them).
        threshold: see ``pred``.

    Returns:
        ``(N, 3)`` int64.
    """
    p = _as_nhw(_np(pred), "pred")
    t = _as_nhw(_np(truth), "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from truth shape {t.shape}")
    p = _binary(p, "pred", threshold).reshape(len(p), -1)
    t = _binary(t, "truth", None).reshape(len(t), -1)
    inter = np.logical_and(p, t).sum(1)
    return np.stack([inter, p.sum(1), t.sum(1)], axis=1).astype(np.int64)


def per_image_counts_torch(
    pred: torch.Tensor, truth: torch.Tensor, threshold: float | None = None
) -> torch.Tensor:
    """:func:`per_image_counts` on the tensors' device, without a CPU sync (no value checks).

    ``pred`` / ``truth``: ``(N, 1, H, W)`` or ``(N, H, W)`` bool or {0, 1} (``pred``:
    probabilities or logits compared with ``threshold`` when given). Returns ``(N, 3)``
    int64 on the same device.
    """
    p = pred > threshold if threshold is not None else pred.bool()
    t = truth.bool()
    p, t = p.flatten(1), t.flatten(1)
    return torch.stack([(p & t).sum(1), p.sum(1), t.sum(1)], dim=1).to(torch.int64)


def _counts(counts: Any) -> np.ndarray:
    c = _np(counts)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(
            f"counts has shape {c.shape}; expected (N, 3) [intersection, pred_area, true_area] "
            "from per_image_counts(pred, truth)"
        )
    return c.astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 1.0 where den == 0 (both masks empty: a perfect match)."""
    num, den = num.astype(np.float64), den.astype(np.float64)
    out = np.ones_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_image_dice(counts: Any) -> np.ndarray:
    """``(N,)`` Dice of each image, ``2I / (P + T)``, 1.0 when both masks are empty."""
    c = _counts(counts)
    return _ratio(2 * c[:, 0], c[:, 1] + c[:, 2])


def per_image_iou(counts: Any) -> np.ndarray:
    """``(N,)`` IoU of each image, ``I / (P + T - I)``, 1.0 when both masks are empty."""
    c = _counts(counts)
    return _ratio(c[:, 0], c[:, 1] + c[:, 2] - c[:, 0])


def dice_pooled(counts: Any) -> float:
    """Dice over the whole set: ``2 sum(I) / (sum(P) + sum(T))`` (the paper's eq. 2 pooled).

    1.0 when every prediction and every truth is empty (nothing to find, nothing found),
    the same convention as the per-image score. nan for no images.
    """
    c = _counts(counts)
    if len(c) == 0:
        return math.nan
    s = c.sum(0)
    return float(_ratio(np.array([2 * s[0]]), np.array([s[1] + s[2]]))[0])


def iou_pooled(counts: Any) -> float:
    """IoU over the whole set: ``sum(I) / (sum(P) + sum(T) - sum(I))`` (eq. 1 pooled);
    equals ``D / (2 - D)`` with ``D = dice_pooled``. 1.0 when everything is empty."""
    c = _counts(counts)
    if len(c) == 0:
        return math.nan
    s = c.sum(0)
    return float(_ratio(np.array([s[0]]), np.array([s[1] + s[2] - s[0]]))[0])


def dice_per_image(counts: Any) -> float:
    """Kaggle's score: mean over images of ``2I / (P + T)``, 1 for an image whose truth and
    prediction are both empty. Predicting every image empty scores the share of negatives."""
    d = per_image_dice(counts)
    return float(d.mean()) if len(d) else math.nan


def iou_per_image(counts: Any) -> float:
    """Mean over images of ``I / (P + T - I)``, 1 when both are empty."""
    j = per_image_iou(counts)
    return float(j.mean()) if len(j) else math.nan


def dice_positive(counts: Any) -> float:
    """Mean per-image Dice over the images with a non-empty truth (nan if there are none)."""
    c = _counts(counts)
    pos = c[:, 2] > 0
    return float(per_image_dice(c[pos]).mean()) if pos.any() else math.nan


# ---------------------------------------------------------------------------------------
# Image level
# ---------------------------------------------------------------------------------------
def _labels(labels: Any, name: str = "labels") -> np.ndarray:
    y = _np(labels).reshape(-1)
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{name} must be 0/1 or bool, got values {np.unique(y)[:5]}")
        y = y.astype(bool)
    return y


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties getting the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start of each run of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks_sorted = np.repeat(avg, ends - starts)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve, by the Mann-Whitney U statistic on average ranks (a tie
    between a positive and a negative counts one half). nan if either class is absent.

    Args:
        scores: ``(N,)`` higher = more likely positive (e.g. the maximum pixel probability).
        labels: ``(N,)`` 0/1 or bool.
    """
    s = _np(scores).reshape(-1).astype(np.float64)
    y = _labels(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = _average_ranks(s)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def sensitivity(pred_labels: Any, labels: Any) -> float:
    """True-positive rate ``TP / (TP + FN)``; nan if there are no positives."""
    p, y = _labels(pred_labels, "pred_labels"), _labels(labels)
    return float((p & y).sum() / y.sum()) if y.any() else math.nan


def specificity(pred_labels: Any, labels: Any) -> float:
    """True-negative rate ``TN / (TN + FP)``; nan if there are no negatives."""
    p, y = _labels(pred_labels, "pred_labels"), _labels(labels)
    return float((~p & ~y).sum() / (~y).sum()) if (~y).any() else math.nan


def summarize(
    counts: Any, scores: Any | None = None, labels: Any | None = None, min_area: int = 0
) -> dict[str, float | int]:
    """All metrics of one evaluation, as a flat dict of Python numbers.

    Args:
        counts: ``(N, 3)`` from :func:`per_image_counts`.
        scores: ``(N,)`` image scores for the AUC (e.g. the maximum pixel probability);
            None gives ``auc = nan``.
        labels: ``(N,)`` true image labels; None derives them from the truth areas
            (``true_area > 0``).
        min_area: an image is predicted positive when ``pred_area > min_area`` (pixels).

    Returns:
        ``dice_pooled, iou_pooled, dice_per_image, iou_per_image, dice_positive, auc,
        sensitivity, specificity, n_images, n_positive, empty_baseline_dice_per_image``
        (the Kaggle score of predicting every image empty = the share of negatives).
    """
    c = _counts(counts)
    y = (c[:, 2] > 0) if labels is None else _labels(labels)
    pred_pos = c[:, 1] > min_area
    n = len(c)
    return {
        "dice_pooled": dice_pooled(c),
        "iou_pooled": iou_pooled(c),
        "dice_per_image": dice_per_image(c),
        "iou_per_image": iou_per_image(c),
        "dice_positive": dice_positive(c),
        "auc": auc(scores, y) if scores is not None else math.nan,
        "sensitivity": sensitivity(pred_pos, y),
        "specificity": specificity(pred_pos, y),
        "n_images": int(n),
        "n_positive": int(y.sum()),
        "empty_baseline_dice_per_image": float((c[:, 2] == 0).mean()) if n else math.nan,
    }


def dedup_gathered(indices: Any, *arrays: Any) -> np.ndarray | tuple[np.ndarray, ...]:
    """Undo DistributedSampler padding after an all-gather.

    Keeps the first occurrence of each sample index and sorts by index, so metrics over
    gathered results count every sample exactly once.

    Args:
        indices: ``(M,)`` sample indices, possibly repeated.
        arrays: arrays (NumPy or torch) whose first axis has length ``M``.

    Returns:
        With no ``arrays``: ``keep``, ``(K,)`` int64 positions into ``indices`` (apply them
        to any gathered array: ``counts[keep]``; ``indices[keep]`` is sorted and unique).
        With ``arrays``: the tuple ``(indices[keep], *(a[keep] for a in arrays))`` as NumPy.
    """
    idx = _np(indices).reshape(-1)
    _, keep = np.unique(idx, return_index=True)
    keep = keep.astype(np.int64)
    if not arrays:
        return keep
    out = [idx[keep]]
    for a in arrays:
        a = _np(a)
        if len(a) != len(idx):
            raise ValueError(f"an array has {len(a)} rows but there are {len(idx)} indices")
        out.append(a[keep])
    return tuple(out)
