"""The replicate engine of every bootstrap: test images (or source images) and training seeds.

:mod:`pneumolib.evaluation.uncertainty` holds the public functions (intervals, differences,
verdicts, the share of a choice); this module holds what they share:

* the per-image quantities of a ``*_per_image.csv`` (:class:`_Arrays`) and every metric of
  :data:`METRICS` for a matrix of image weights (:func:`_replicate_stats`);
* the draws of test images: :func:`bootstrap_indices` (rows) and :func:`cluster_ids` (whole
  source images with all their items, when a source has several), turned into weights;
* the check that several seeds were evaluated on the same test images (:func:`_aligned`);
* the draws of **training seeds** on top of a replicate of the images
  (:func:`seed_replicates`): replicate ``b`` of the mean over seeds takes ``S`` seeds drawn
  with replacement and averages their values under the same image draw ``b``.

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
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from pneumolib import metrics

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



#: Mixed into the bootstrap seed for the draws of training seeds, so that the draws of the
#: test images (``bootstrap_indices(n, n_boot, seed)``) stay those of the images-only bootstrap.
SEED_STREAM = 0x5EED


def seed_replicates(values: np.ndarray, seed: int = 0, stream: int = 0, adjust: bool = True) -> np.ndarray:
    """Replicates of the mean over training seeds, the seeds resampled with replacement.

    Args:
        values: ``(S, n_boot)``: a metric of each of ``S`` seeds under image draw ``b``
            (:func:`_replicate_matrix`; one draw shared by every seed, as every seed was
            evaluated on the same test images).
        seed: the bootstrap seed; the seed draws are keyed by ``(seed, stream)`` and are
            independent of the image draws.
        stream: which independent stream of seed draws (scenarios compared in one bootstrap
            take different streams: their seeds are resampled independently).
        adjust: rescale each replicate's deviation from the mean of all ``S`` seeds by
            ``sqrt(S / (S - 1))``. A bootstrap of a mean over ``S`` units has variance
            ``(S - 1) / S * s^2 / S``; the rescaling makes it ``s^2 / S`` (the same factor as
            Davison & Hinkley's modified residuals of a location model), which matters with the
            three to five seeds a study can afford.

    Returns:
        ``(n_boot,)``: replicate ``b`` draws ``S`` seeds with replacement and averages their
        values in column ``b``; NaN where a drawn seed's value is NaN. One seed: ``values[0]``.
    """
    values = np.asarray(values, dtype=np.float64)
    s, n_boot = values.shape
    plain = values.mean(0)  # NaN where any seed is NaN
    if s == 1:
        return plain
    rng = np.random.default_rng([int(seed), SEED_STREAM, int(stream)])
    counts = _weights(rng.integers(0, s, size=(n_boot, s)), s)  # (n_boot, s): how often each seed is drawn
    vt = values.T
    drawn = counts > 0
    boot = np.where(drawn, counts * np.nan_to_num(vt), 0.0).sum(1) / s
    boot[(drawn & np.isnan(vt)).any(1)] = math.nan
    if adjust:
        boot = plain + math.sqrt(s / (s - 1)) * (boot - plain)
    return boot
