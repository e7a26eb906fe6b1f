"""Uncertainty of the test metrics: bootstrap intervals over test images, spread over seeds.

The raw material is a run's ``test_per_image.csv`` (written by
:func:`pneumolib.training.trainer.evaluate_module`): one row per test image with ``index``,
``intersection``, ``pred_area``, ``true_area`` and ``score`` (the maximum pixel probability).
Every point value here is :func:`pneumolib.metrics.summarize` of those counts; nothing
defines a metric anew.

* :func:`bootstrap_ci`: one run. Percentile bootstrap over test images (rows resampled with
  replacement), ``n_boot`` replicates. When a split holds several items of one source image
  (the ``paper`` protocol puts an image, its flip and its rotation side by side), the items
  are not independent: the bootstrap then resamples **source images** (column ``src``) and
  takes all their items (a cluster bootstrap; :func:`cluster_ids`).
* :func:`seed_summary`: several runs (different training seeds) evaluated on the same test
  images. ``mean`` and ``sd`` (ddof=1) over seeds, and the bootstrap interval of the
  seed-mean metric, each replicate resampling the test images once and using the same
  resample for every seed (images are the shared source of variation).
* :func:`replicates`: the replicate values themselves (for a histogram).
* :func:`difference_ci`: two scenarios on the same test images: the interval of the
  difference of their (seed-mean) metric, both resampled with the same draws (paired), so
  it says whether the test split can tell them apart.

Resampling is done through counts: replicate ``b`` draws an index matrix row
``idx[b] in {0..N-1}^N``; the number of times image ``i`` is drawn is its weight ``w[b, i]``,
and every metric of the resampled set is a weighted sum over the original images (pooled
sums ``w @ I``, per-image means ``w @ d / N``, the AUC's Mann-Whitney count through one sort
of the scores and cumulative weighted sums). This equals computing the metric on the
resampled rows exactly, ties included, and 1,000 replicates of 2,000 images take a fraction of
a second. A replicate without positive (or negative) images gives NaN for the metrics that
need them; intervals use ``nanpercentile`` over the remaining replicates.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from pneumolib import metrics

__all__ = ["METRICS", "COUNT_COLUMNS", "ImageSetMismatch", "bootstrap_ci", "seed_summary", "replicates",
           "bootstrap_indices", "cluster_ids", "difference_ci"]

#: The per-image column that names an item's source image (``test_per_image.csv``).
CLUSTER_COLUMN = "src"

#: The metrics given intervals, in table order. ``empty_baseline_dice_per_image`` is the
#: Kaggle score of predicting every mask empty (the share of empty-truth images).
METRICS = ("dice_pooled", "iou_pooled", "dice_per_image", "dice_positive", "auc", "sensitivity",
           "specificity", "empty_baseline_dice_per_image")

#: Columns a per-image table must have (``score`` is optional: without it the AUC is NaN).
COUNT_COLUMNS = ("intersection", "pred_area", "true_area")


class ImageSetMismatch(ValueError):
    """Per-image tables of several seeds do not hold the same test images."""


# at most this many index-matrix cells per chunk of replicates (bounds memory for large N)
_CHUNK_CELLS = 2_000_000


def _check_frame(per_image: pd.DataFrame, what: str = "per_image") -> None:
    if not isinstance(per_image, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame (a test_per_image.csv), got {type(per_image).__name__}")
    missing = [c for c in COUNT_COLUMNS if c not in per_image.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing}; expected the columns of test_per_image.csv "
                         f"({', '.join(COUNT_COLUMNS)}, score, index)")
    if len(per_image) == 0:
        raise ValueError(f"{what} has no rows: no test images to bootstrap over")


def _check_args(n_boot: int, level: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1 (e.g. 0.95), got {level}")


class _Arrays:
    """The per-image quantities every replicate reuses (computed once per frame)."""

    def __init__(self, per_image: pd.DataFrame, min_area: int = 0):
        self.counts = per_image[list(COUNT_COLUMNS)].to_numpy(dtype=np.int64)
        self.n = len(self.counts)
        inter, pred, true = (self.counts[:, k].astype(np.float64) for k in range(3))
        self.inter, self.pred, self.true = inter, pred, true
        self.pos = self.counts[:, 2] > 0
        self.d = metrics.per_image_dice(self.counts)
        self.d_pos = np.where(self.pos, self.d, 0.0)
        pred_pos = self.counts[:, 1] > min_area
        self.tp = (pred_pos & self.pos).astype(np.float64)
        self.tn = (~pred_pos & ~self.pos).astype(np.float64)
        self.posf = self.pos.astype(np.float64)
        self.scores = per_image["score"].to_numpy(dtype=np.float64) if "score" in per_image.columns else None
        if self.scores is not None:
            # one sort; runs of equal scores form groups (the ties of average ranks)
            self.order = np.argsort(self.scores, kind="mergesort")
            s = self.scores[self.order]
            self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
            self.pos_sorted = self.pos[self.order]
        self.point = metrics.summarize(self.counts, scores=self.scores, labels=None, min_area=min_area)
        if self.scores is None:
            self.point["auc"] = math.nan


def _safe_div(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    out = np.full(np.shape(num), empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _replicate_stats(a: _Arrays, w: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` for each row of the weight matrix ``w`` (c, N).

    Row ``b`` of ``w`` counts how often each image was drawn; the metrics equal those of the
    resampled set (weights all one: :func:`pneumolib.metrics.summarize`).
    """
    n = w.sum(1)
    s_i, s_p, s_t = w @ a.inter, w @ a.pred, w @ a.true
    w_pos = w @ a.posf
    w_neg = n - w_pos
    out = {
        # both conventions of metrics.py: an all-empty set scores 1 pooled, nan with no images
        "dice_pooled": _safe_div(2 * s_i, s_p + s_t, 1.0),
        "iou_pooled": _safe_div(s_i, s_p + s_t - s_i, 1.0),
        "dice_per_image": _safe_div(w @ a.d, n, math.nan),
        "dice_positive": _safe_div(w @ a.d_pos, w_pos, math.nan),
        "sensitivity": _safe_div(w @ a.tp, w_pos, math.nan),
        "specificity": _safe_div(w @ a.tn, w_neg, math.nan),
        "empty_baseline_dice_per_image": _safe_div(w_neg, n, math.nan),
    }
    if a.scores is None:
        out["auc"] = np.full(len(w), math.nan)
    else:
        ws = w[:, a.order]
        gp = np.add.reduceat(ws * a.pos_sorted, a.starts, axis=1)   # positive weight per tie group
        gn = np.add.reduceat(ws * ~a.pos_sorted, a.starts, axis=1)  # negative weight per tie group
        below = np.cumsum(gn, axis=1) - gn                          # negative weight strictly below
        u = (gp * (below + 0.5 * gn)).sum(1)                       # Mann-Whitney U, ties count 1/2
        out["auc"] = _safe_div(u, w_pos * w_neg, math.nan)
        out["auc"][(w_pos == 0) | (w_neg == 0)] = math.nan
    return out


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """The resampling index matrix ``(n_boot, n)`` in chunks of rows (bounded memory).

    Deterministic for ``(n, n_boot, seed)``: the chunking depends on ``n`` only, so every
    caller with the same arguments sees the same replicates.
    """
    if n < 1:
        raise ValueError("no test images to bootstrap over (n = 0)")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    done = 0
    while done < n_boot:
        c = min(chunk, n_boot - done)
        yield rng.integers(0, n, size=(c, n))
        done += c


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each image is drawn in each replicate: ``(c, n)`` float64 from ``(c, n)`` indices."""
    c = len(idx)
    flat = (idx + n * np.arange(c)[:, None]).ravel()
    return np.bincount(flat, minlength=c * n).reshape(c, n).astype(np.float64)


def cluster_ids(per_image: pd.DataFrame, cluster: str | None = "auto") -> np.ndarray | None:
    """``(N,)`` int64 cluster of each row, or None to resample rows independently.

    Args:
        cluster: ``"auto"`` clusters by :data:`CLUSTER_COLUMN` (``src``, the source image)
            when that column exists and some source image has several rows, and otherwise
            resamples rows (for one item per source the two are the same bootstrap); a
            column name forces clustering by it; None never clusters.
    """
    if cluster is None:
        return None
    col = CLUSTER_COLUMN if cluster == "auto" else cluster
    if col not in per_image.columns:
        if cluster == "auto":
            return None
        raise ValueError(f"cannot cluster the bootstrap by {col!r}: no such column "
                         f"(columns: {', '.join(map(str, per_image.columns))})")
    ids = pd.factorize(per_image[col], sort=True)[0].astype(np.int64)
    if cluster == "auto" and ids.max(initial=-1) + 1 == len(ids):
        return None  # one item per source image: the plain bootstrap
    return ids


def _weight_chunks(n: int, n_boot: int, seed: int, clusters: np.ndarray | None) -> Iterator[np.ndarray]:
    """``(c, n)`` weight matrices of the replicates: rows drawn with replacement, or whole
    clusters drawn with replacement (every item of a drawn cluster, once per draw)."""
    if clusters is None:
        for idx in bootstrap_indices(n, n_boot, seed):
            yield _weights(idx, n)
        return
    k = int(clusters.max()) + 1
    for idx in bootstrap_indices(k, n_boot, seed):
        yield _weights(idx, k)[:, clusters]


def _replicate_matrix(arrays: Sequence[_Arrays], n_boot: int, seed: int,
                      clusters: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{metric: (n_seeds, n_boot)}``: every frame under the same resampled indices."""
    n = arrays[0].n
    parts: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for w in _weight_chunks(n, n_boot, seed, clusters):
        stats = [_replicate_stats(a, w) for a in arrays]
        for m in METRICS:
            parts[m].append(np.stack([s[m] for s in stats]))
    return {m: np.concatenate(v, axis=1) for m, v in parts.items()}


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    if np.isnan(values).all():
        return math.nan, math.nan
    lo, hi = np.nanpercentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def replicates(per_image: pd.DataFrame, n_boot: int = 1000, seed: int = 0, min_area: int = 0,
               cluster: str | None = "auto") -> pd.DataFrame:
    """The bootstrap replicates of one run: ``n_boot`` rows, one column per metric of :data:`METRICS`.

    The same replicates :func:`bootstrap_ci` takes its percentiles from (same arguments).
    """
    _check_frame(per_image)
    _check_args(n_boot, 0.5)
    rep = _replicate_matrix([_Arrays(per_image, min_area)], int(n_boot), seed, cluster_ids(per_image, cluster))
    return pd.DataFrame({m: rep[m][0] for m in METRICS})


def bootstrap_ci(per_image: pd.DataFrame, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 min_area: int = 0, cluster: str | None = "auto") -> dict[str, dict[str, float]]:
    """Point value and percentile bootstrap interval of each test metric of one run.

    Args:
        per_image: a run's ``test_per_image.csv`` (columns ``intersection``, ``pred_area``,
            ``true_area``, and ``score`` for the AUC; other columns are ignored).
        n_boot: bootstrap replicates (test images resampled with replacement).
        level: the interval's coverage, e.g. 0.95 for the 2.5th and 97.5th percentiles.
        seed: the resampling seed (same seed, same intervals).
        min_area: an image is predicted positive when ``pred_area > min_area`` (as in
            :func:`pneumolib.metrics.summarize`).
        cluster: resample source images instead of rows when one source has several rows
            (``"auto"``, the default; see :func:`cluster_ids`).

    Returns:
        ``{metric: {"value", "lo", "hi"}}`` for each of :data:`METRICS`; ``value`` is
        :func:`pneumolib.metrics.summarize` of the rows (NaN where undefined, e.g. the AUC
        without a ``score`` column or without positives).

    Raises:
        ValueError: no rows, a missing count column, ``n_boot < 1`` or ``level`` outside (0, 1).
    """
    _check_frame(per_image)
    _check_args(n_boot, level)
    a = _Arrays(per_image, min_area)
    rep = _replicate_matrix([a], int(n_boot), seed, cluster_ids(per_image, cluster))
    out = {}
    for m in METRICS:
        lo, hi = _interval(rep[m][0], level)
        out[m] = {"value": float(a.point[m]), "lo": lo, "hi": hi}
    return out


def _aligned(frames: Sequence[pd.DataFrame]) -> list[pd.DataFrame]:
    """``frames`` sorted by ``index``, after checking they hold the same test images."""
    out = []
    ref: set | None = None
    for k, f in enumerate(frames):
        _check_frame(f, f"frame {k}")
        if "index" not in f.columns:
            raise ValueError(f"frame {k} has no 'index' column: cannot align test images across seeds")
        dup = f["index"][f["index"].duplicated()]
        if len(dup):
            raise ValueError(f"frame {k} repeats test image index(es) {sorted(dup.unique().tolist())[:5]}")
        keys = set(f["index"].tolist())
        if ref is None:
            ref = keys
        elif keys != ref:
            only_k, only_0 = sorted(keys - ref), sorted(ref - keys)
            raise ImageSetMismatch(
                f"frame {k} and frame 0 are not evaluated on the same test images: {len(only_k)} index(es) "
                f"only in frame {k} (e.g. {only_k[:5]}), {len(only_0)} only in frame 0 (e.g. {only_0[:5]}); "
                "a seed that changes the split changes the test set (seed_summary(..., paired=False) "
                "resamples each seed's images independently)")
        out.append(f.sort_values("index", kind="mergesort").reset_index(drop=True))
    for col in ("true_area", "image_id"):
        if all(col in f.columns for f in out):
            for k, f in enumerate(out[1:], start=1):
                differ = (f[col].astype(str).to_numpy() != out[0][col].astype(str).to_numpy())
                if differ.any():
                    bad = out[0]["index"].to_numpy()[differ][:5].tolist()
                    raise ImageSetMismatch(f"frame {k} and frame 0 disagree on {col} of {int(differ.sum())} test "
                                     f"image(s) with the same index (e.g. index {bad}): not the same test images")
    return out


def seed_summary(frames: Sequence[pd.DataFrame], n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 min_area: int = 0, paired: bool = True, cluster: str | None = "auto") -> dict[str, dict[str, float]]:
    """Runs of several training seeds on the same test images: mean, sd and interval per metric.

    Args:
        frames: one ``test_per_image.csv`` per seed; rows are matched by ``index``.
        n_boot, level, seed, min_area, cluster: as in :func:`bootstrap_ci` (clusters of the
            first frame; with ``paired`` every frame holds the same items).
        paired: True (default) requires the same test images in every frame and resamples
            them jointly (one index draw, applied to every seed). False is for runs whose
            test sets differ (a seed that also draws the split): each frame is resampled
            on its own, replicate ``b`` of the mean taking replicate ``b`` of every seed.

    Returns:
        ``{metric: {"mean", "sd", "lo", "hi", "n_seeds"}}``: ``mean`` of the seeds' point
        values (:func:`pneumolib.metrics.summarize`), their ``sd`` (ddof=1; NaN for one
        seed), and the percentile bootstrap interval of the seed-mean. With one frame,
        ``mean`` / ``lo`` / ``hi`` equal :func:`bootstrap_ci`'s ``value`` / ``lo`` / ``hi``.

    Raises:
        ValueError: no frames, or a frame without rows or count columns.
        ImageSetMismatch: (a ValueError) with ``paired``, frames on different test images
            (the message names the indices that differ).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("seed_summary needs at least one per-image table (got none)")
    _check_args(n_boot, level)
    if paired:
        aligned = _aligned(frames)
        arrays = [_Arrays(f, min_area) for f in aligned]
        rep = _replicate_matrix(arrays, int(n_boot), seed, cluster_ids(aligned[0], cluster))
    else:
        for k, f in enumerate(frames):
            _check_frame(f, f"frame {k}")
        arrays = [_Arrays(f, min_area) for f in frames]
        per = [_replicate_matrix([a], int(n_boot), seed + k, cluster_ids(f, cluster))
               for k, (a, f) in enumerate(zip(arrays, frames))]
        rep = {m: np.concatenate([p[m] for p in per], axis=0) for m in METRICS}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no positives anywhere)
        for m in METRICS:
            points = np.array([a.point[m] for a in arrays], dtype=np.float64)
            mean_rep = rep[m].mean(0)  # NaN for a replicate where any seed's metric is undefined
            lo, hi = _interval(mean_rep, level)
            dev = points - points[0]  # shifted: equal seeds give exactly their value and sd 0
            out[m] = {"mean": float(points[0] + dev.mean()),
                      "sd": float(dev.std(ddof=1)) if len(points) > 1 else math.nan,
                      "lo": lo, "hi": hi, "n_seeds": len(points)}
    return out


def difference_ci(frames_a: Sequence[pd.DataFrame], frames_b: Sequence[pd.DataFrame], metric: str = "dice_pooled",
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0, min_area: int = 0,
                  cluster: str | None = "auto") -> dict[str, float]:
    """``A - B`` of a metric (each the mean over its seeds) with a paired bootstrap interval.

    Every frame (A's and B's seeds) must hold the same test images; each replicate resamples
    them once for all frames, so what the two scenarios share (which images are hard) cancels
    in the difference. An interval that excludes 0 means the test split tells A and B apart.

    Returns:
        ``{"diff", "lo", "hi", "n_a", "n_b"}``.

    Raises:
        ImageSetMismatch: the frames do not hold the same test images.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is unknown; valid: {', '.join(METRICS)}")
    frames_a, frames_b = list(frames_a), list(frames_b)
    if not frames_a or not frames_b:
        raise ValueError("difference_ci needs at least one per-image table on each side")
    _check_args(n_boot, level)
    aligned = _aligned(frames_a + frames_b)
    arrays = [_Arrays(f, min_area) for f in aligned]
    rep = _replicate_matrix(arrays, int(n_boot), seed, cluster_ids(aligned[0], cluster))[metric]
    na = len(frames_a)
    points = np.array([a.point[metric] for a in arrays], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = _interval(rep[:na].mean(0) - rep[na:].mean(0), level)
    return {"diff": float(points[:na].mean() - points[na:].mean()), "lo": lo, "hi": hi,
            "n_a": na, "n_b": len(frames_b)}
