"""Uncertainty of the test metrics: intervals over training seeds and test images, verdicts, choices.

The raw material is a run's ``test_per_image.csv`` (written by
:func:`pneumolib.training.trainer.evaluate_module`): one row per test image with ``index``,
``intersection``, ``pred_area``, ``true_area`` and ``score`` (the maximum pixel probability).
Every point value here is :func:`pneumolib.metrics.summarize` of those counts; nothing
defines a metric anew. The replicate engine is :mod:`pneumolib.evaluation.resample`.

* :func:`bootstrap_ci`: one run. Percentile bootstrap over test images (rows resampled with
  replacement), ``n_boot`` replicates. When a split holds several items of one source image
  (the ``paper`` protocol puts an image, its flip and its rotation side by side), the items
  are not independent: the bootstrap then resamples **source images** (column ``src``) and
  takes all their items (a cluster bootstrap; :func:`cluster_ids`).
* :func:`seed_summary`: several runs (training seeds) on the same test images. ``mean`` and
  ``sd`` over seeds and the interval of the seed-mean from a **two-level bootstrap**: each
  replicate draws the test images once (shared by every seed) and, independently, the seeds
  with replacement (:func:`pneumolib.evaluation.resample.seed_replicates`), so the interval
  covers a rerun with other seeds (or on another machine) as well as another test set.
  With one seed, training variance is unmeasured and the interval is over test images only.
* :func:`difference_ci`: two scenarios on the same test images: the difference of their
  seed-means; one image draw for both (paired on images), each scenario's seeds drawn
  independently. :func:`verdict`: "told apart" only when both have several seeds and the
  seed-and-image interval excludes 0; :func:`pairs` for every pair of scenarios.
* :func:`selection_share`: how sure a choice is: the share of replicates (seeds and images)
  in which each candidate would have the highest seed-mean (Figure 7's autoencoder
  scenario, chosen on validation).
* :func:`replicates`: the replicate values of one run (for a histogram).

Why this bootstrap, and the literature: ``docs/METHODS.md``, section Intervals.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .resample import (CLUSTER_COLUMN, COUNT_COLUMNS, METRICS, ImageSetMismatch, _aligned, _Arrays, _check_args,
                       _check_frame, _interval, _replicate_matrix, bootstrap_indices, cluster_ids, seed_replicates)

__all__ = ["METRICS", "COUNT_COLUMNS", "CLUSTER_COLUMN", "ImageSetMismatch", "bootstrap_ci", "seed_summary",
           "replicates", "bootstrap_indices", "cluster_ids", "difference_ci", "verdict", "told_apart", "pairs",
           "selection_share", "choice_table", "folder_frames", "PAIR_COLUMNS", "OVER_SEEDS", "OVER_IMAGES",
           "TOLD_APART", "NOT_TOLD_APART", "UNMEASURED", "IMAGES_ONLY", "UNDEFINED"]

#: What an interval resamples (the ``over`` of the results, ``interval_over`` of the tables).
OVER_SEEDS = "training seeds and test images"
OVER_IMAGES = "test images only"
#: The verdicts of :func:`verdict`.
TOLD_APART = "told apart"
NOT_TOLD_APART = "not told apart"
UNMEASURED = "training variance unmeasured (1 seed)"
UNDEFINED = "undefined (no interval)"
IMAGES_ONLY = "training variance not resampled (over='images')"


def _seeds_too(over: str, n_seeds: int) -> bool:
    if over not in ("auto", "images"):
        raise ValueError(f"over must be 'auto' (training seeds and test images when there are several seeds) "
                         f"or 'images' (test images only), got {over!r}")
    return over == "auto" and n_seeds > 1


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


def seed_summary(frames: Sequence[pd.DataFrame], n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 min_area: int = 0, paired: bool = True, cluster: str | None = "auto",
                 over: str = "auto", adjust: bool = True) -> dict[str, dict[str, Any]]:
    """Runs of several training seeds on the same test images: mean, sd and interval per metric.

    Args:
        frames: one ``test_per_image.csv`` per seed; rows are matched by ``index``.
        n_boot, level, seed, min_area, cluster: as in :func:`bootstrap_ci` (clusters of the
            first frame; with ``paired`` every frame holds the same items).
        paired: True (default) requires the same test images in every frame and draws them
            once per replicate for every seed. False is for runs whose test sets differ (a
            seed that also draws the split): each frame's images are drawn on their own.
        over: ``"auto"`` (default): with several seeds, each replicate also draws the seeds
            with replacement (the two-level bootstrap; :func:`resample.seed_replicates`); with
            one seed, test images only. ``"images"``: test images only, around the seed-mean
            (the rule before training variance was counted; kept for comparison).
        adjust: the small-sample rescaling of the seed draws (:func:`resample.seed_replicates`).

    Returns:
        ``{metric: {"mean", "sd", "lo", "hi", "lo_images", "hi_images", "n_seeds", "over"}}``:
        ``mean`` of the seeds' point values (:func:`pneumolib.metrics.summarize`), their ``sd``
        (ddof=1; NaN for one seed), the percentile interval ``lo`` / ``hi`` of the seed-mean
        over what ``over`` names (:data:`OVER_SEEDS` or :data:`OVER_IMAGES`), and
        ``lo_images`` / ``hi_images`` the interval over test images only. With one frame,
        ``mean`` / ``lo`` / ``hi`` equal :func:`bootstrap_ci`'s ``value`` / ``lo`` / ``hi``.

    Raises:
        ValueError: no frames, a frame without rows or count columns, an unknown ``over``.
        ImageSetMismatch: (a ValueError) with ``paired``, frames on different test images
            (the message names the indices that differ).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("seed_summary needs at least one per-image table (got none)")
    _check_args(n_boot, level)
    seeds_too = _seeds_too(over, len(frames))
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
            lo_i, hi_i = _interval(rep[m].mean(0), level)  # NaN where any seed's metric is undefined
            lo, hi = _interval(seed_replicates(rep[m], seed, 0, adjust), level) if seeds_too else (lo_i, hi_i)
            dev = points - points[0]  # shifted: equal seeds give exactly their value and sd 0
            out[m] = {"mean": float(points[0] + dev.mean()),
                      "sd": float(dev.std(ddof=1)) if len(points) > 1 else math.nan,
                      "lo": lo, "hi": hi, "lo_images": lo_i, "hi_images": hi_i, "n_seeds": len(points),
                      "over": OVER_SEEDS if seeds_too else OVER_IMAGES}
    return out


def difference_ci(frames_a: Sequence[pd.DataFrame], frames_b: Sequence[pd.DataFrame], metric: str = "dice_pooled",
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0, min_area: int = 0,
                  cluster: str | None = "auto", over: str = "auto", adjust: bool = True) -> dict[str, Any]:
    """``A - B`` of a metric (each the mean over its seeds) with a bootstrap interval.

    Every frame (A's and B's seeds) must hold the same test images. Each replicate draws the
    test images once for all frames (paired on images: which images are hard cancels) and,
    with ``over="auto"`` and several seeds, draws A's seeds and B's seeds with replacement,
    **independently** of each other: seed ``k`` of A and seed ``k`` of B are different training
    runs with nothing shared that would justify pairing them (independent draws are the
    conservative choice if their seed effects were positively correlated). ``over="images"``
    is the images-only rule (around the seed-means). See :func:`verdict` for what the
    interval allows one to say.

    Returns:
        ``{"diff", "lo", "hi", "lo_images", "hi_images", "n_a", "n_b", "over"}``.

    Raises:
        ImageSetMismatch: the frames do not hold the same test images.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is unknown; valid: {', '.join(METRICS)}")
    frames_a, frames_b = list(frames_a), list(frames_b)
    if not frames_a or not frames_b:
        raise ValueError("difference_ci needs at least one per-image table on each side")
    _check_args(n_boot, level)
    na, nb = len(frames_a), len(frames_b)
    seeds_too = _seeds_too(over, max(na, nb))
    aligned = _aligned(frames_a + frames_b)
    arrays = [_Arrays(f, min_area) for f in aligned]
    rep = _replicate_matrix(arrays, int(n_boot), seed, cluster_ids(aligned[0], cluster))[metric]
    points = np.array([a.point[metric] for a in arrays], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo_i, hi_i = _interval(rep[:na].mean(0) - rep[na:].mean(0), level)
        if seeds_too:
            lo, hi = _interval(seed_replicates(rep[:na], seed, 1, adjust) - seed_replicates(rep[na:], seed, 2, adjust),
                               level)
        else:
            lo, hi = lo_i, hi_i
    return {"diff": float(points[:na].mean() - points[na:].mean()), "lo": lo, "hi": hi,
            "lo_images": lo_i, "hi_images": hi_i, "n_a": na, "n_b": nb,
            "over": OVER_SEEDS if seeds_too else OVER_IMAGES}


def verdict(d: Mapping[str, Any]) -> str:
    """What a :func:`difference_ci` result allows one to say about the pair.

    :data:`TOLD_APART` only when **both** scenarios have several seeds and the interval over
    seeds and test images excludes 0; :data:`NOT_TOLD_APART` when it includes 0;
    :data:`UNMEASURED` when a scenario has one seed (the interval then says nothing about a
    rerun with another seed or on another machine, so it ranks nothing); :data:`IMAGES_ONLY`
    for an images-only interval of several seeds; :data:`UNDEFINED` without an interval.
    """
    if min(int(d.get("n_a", 1)), int(d.get("n_b", 1))) < 2:
        return UNMEASURED
    if d.get("over") != OVER_SEEDS:
        return IMAGES_ONLY
    lo, hi = float(d["lo"]), float(d["hi"])
    if math.isnan(lo) or math.isnan(hi):
        return UNDEFINED
    return TOLD_APART if lo > 0 or hi < 0 else NOT_TOLD_APART


def told_apart(d: Mapping[str, Any]) -> bool | None:
    """True / False as :func:`verdict` says "told apart" / "not told apart"; None otherwise."""
    v = verdict(d)
    return True if v == TOLD_APART else False if v == NOT_TOLD_APART else None


#: The columns of :func:`pairs`.
PAIR_COLUMNS = ("a", "b", "metric", "diff", "lo", "hi", "told_apart", "verdict", "interval_over", "lo_images",
                "hi_images", "n_seeds_a", "n_seeds_b")


def pairs(groups: Mapping[str, Sequence[pd.DataFrame]], metric: str = "dice_pooled", n_boot: int = 1000,
          level: float = 0.95, seed: int = 0, min_area: int = 0, cluster: str | None = "auto") -> pd.DataFrame:
    """Every pair ``a, b`` of ``groups`` (``{scenario: [per-image table per seed]}``, in order).

    Columns :data:`PAIR_COLUMNS`: ``diff`` (a - b, seed-means), its interval ``lo`` / ``hi``
    (:func:`difference_ci`), ``told_apart`` (nullable: NA unless both have several seeds),
    ``verdict`` (:func:`verdict`), ``interval_over``, the images-only interval ``lo_images`` /
    ``hi_images`` for comparison, and the seed counts. Pairs on different test images are
    left out.
    """
    names = [n for n, f in groups.items() if len(f)]
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            try:
                d = difference_ci(groups[a], groups[b], metric, n_boot=n_boot, level=level, seed=seed,
                                  min_area=min_area, cluster=cluster)
            except ImageSetMismatch:
                continue
            rows.append({"a": a, "b": b, "metric": metric, "diff": d["diff"], "lo": d["lo"], "hi": d["hi"],
                         "told_apart": told_apart(d), "verdict": verdict(d), "interval_over": d["over"],
                         "lo_images": d["lo_images"], "hi_images": d["hi_images"], "n_seeds_a": d["n_a"],
                         "n_seeds_b": d["n_b"]})
    df = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    df["told_apart"] = pd.array(list(df["told_apart"]), dtype="boolean")
    return df


def selection_share(groups: Mapping[str, Sequence[pd.DataFrame]], metric: str = "dice_pooled", n_boot: int = 1000,
                    seed: int = 0, min_area: int = 0, cluster: str | None = "auto",
                    adjust: bool = True) -> dict[str, float]:
    """How often each candidate would be chosen: the share of bootstrap replicates in which it
    has the highest mean over its seeds of ``metric`` (ties to the earlier, as in the choice).

    Each replicate draws the images once for every candidate (they share the split; each
    frame's own when the images differ) and each candidate's seeds independently (one seed:
    images only), as :func:`seed_summary` and :func:`difference_ci` do.

    Args:
        groups: ``{candidate: [per-image table per seed]}`` on the split the choice is made on
            (validation for Figure 7).
        n_boot, seed, min_area, cluster, adjust: as in :func:`seed_summary`.

    Returns:
        ``{candidate: share}``, the shares summing to 1 (NaN for all when no replicate is defined).
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is unknown; valid: {', '.join(METRICS)}")
    _check_args(n_boot, 0.5)
    names = [n for n, f in groups.items() if len(f)]
    if not names:
        return {}
    frames = [f for n in names for f in groups[n]]
    try:
        aligned = _aligned(frames)
        rep = _replicate_matrix([_Arrays(f, min_area) for f in aligned], int(n_boot), seed,
                                cluster_ids(aligned[0], cluster))[metric]
    except ImageSetMismatch:
        for k, f in enumerate(frames):
            _check_frame(f, f"frame {k}")
        rep = np.concatenate([_replicate_matrix([_Arrays(f, min_area)], int(n_boot), seed + k,
                                                cluster_ids(f, cluster))[metric] for k, f in enumerate(frames)])
    bounds = np.cumsum([0] + [len(groups[n]) for n in names])
    boot = np.stack([seed_replicates(rep[bounds[k]:bounds[k + 1]], seed, k + 1, adjust) for k in range(len(names))])
    defined = ~np.isnan(boot).all(0)
    if not defined.any():
        return {n: math.nan for n in names}
    winner = np.argmax(np.where(np.isnan(boot), -np.inf, boot), axis=0)[defined]
    return {n: float(np.mean(winner == k)) for k, n in enumerate(names)}


def folder_frames(folders: Sequence[Any], split: str = "val") -> list[pd.DataFrame] | None:
    """The ``<split>_per_image.csv`` of each run folder (written next to ``test_per_image.csv``
    by :func:`pneumolib.training.trainer.evaluate_module`), or None when one is missing."""
    paths = [Path(f) / f"{split}_per_image.csv" if f else None for f in folders]
    if not paths or any(p is None or not p.is_file() for p in paths):
        return None
    return [pd.read_csv(p) for p in paths]


def choice_table(groups: Mapping[str, Sequence[pd.DataFrame] | None], metric: str = "dice_pooled",
                 n_boot: int = 1000, seed: int = 0, chosen: str | None = None,
                 fallback: Mapping[str, Sequence[float]] | None = None, **kwargs: Any) -> pd.DataFrame:
    """The candidates of a choice with their seed-mean ``metric`` and :func:`selection_share`.

    Args:
        groups: ``{candidate: [per-image table per seed] or None}``.
        fallback: ``{candidate: [value per seed]}`` for candidates without per-image tables
            (e.g. ``metrics.json``); they take part in the choice, but then no share can be
            given (a share among a subset of the candidates would overstate the certainty).
        chosen: the candidate to rate (default: the highest ``value``, ties to the earlier).

    Returns:
        Columns ``candidate, value, n_seeds, share, chosen, training_variance``. ``df.attrs``:
        ``chosen``, ``share`` (its share: how sure the choice is), ``metric``, ``n_boot``,
        ``over``, ``missing`` (candidates without per-image tables) and ``one_seed``.
    """
    fallback = fallback or {}
    names = [n for n in dict.fromkeys([*groups, *fallback]) if groups.get(n) or len(fallback.get(n, ()))]
    framed = {n: list(groups[n]) for n in names if groups.get(n)}
    missing = [n for n in names if n not in framed]
    shares = {} if missing else selection_share(framed, metric, n_boot=n_boot, seed=seed, **kwargs)
    per_seed = {n: [_Arrays(f, kwargs.get("min_area", 0)).point[metric] for f in framed[n]] if n in framed
                else [float(v) for v in fallback[n]] for n in names}
    values = {n: float(np.mean(v)) for n, v in per_seed.items()}
    if chosen is None and names:
        chosen = max(names, key=lambda n: (-math.inf if math.isnan(values[n]) else values[n], -names.index(n)))
    k = {n: len(v) for n, v in per_seed.items()}
    df = pd.DataFrame({"candidate": names, "value": [values[n] for n in names], "n_seeds": [k[n] for n in names],
                       "share": [shares.get(n, math.nan) for n in names], "chosen": [n == chosen for n in names],
                       "training_variance": [f"resampled ({k[n]} seeds)" if k[n] > 1
                                             else UNMEASURED.removeprefix("training variance ") for n in names]})
    df.attrs = {"chosen": chosen, "share": shares.get(chosen, math.nan) if chosen else math.nan, "metric": metric,
                "n_boot": int(n_boot), "over": OVER_SEEDS if min(k.values(), default=0) > 1 else OVER_IMAGES,
                "missing": missing, "one_seed": [n for n in names if k[n] == 1]}
    return df
