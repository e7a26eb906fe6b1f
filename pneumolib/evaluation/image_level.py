"""Image-level decisions on finished runs: threshold vs triplet vs classifier gate.

:func:`collect_probabilities` rebuilds a run's network from its folder and returns its
pixel probabilities on the val or test split; :func:`image_level_study` compares, on the
test split, the plain threshold of training with post-processing tuned on the validation
split only (:mod:`pneumolib.evaluation.postprocess`): the 1st-place triplet and, for models with an
image-level head (a model returning ``(seg_logits, class_logit)``), the 4th-place gate.

Every number comes from :mod:`pneumolib.metrics`; which Dice is which: ``dice_per_image``
is the Kaggle score (per image, 1 for empty/empty, then the mean), ``dice_pooled`` sums
intersections and areas over the whole split first (the paper's Table 4).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from pneumolib import metrics, runio
from pneumolib.models.unet import split_output  # re-exported: the image-level code reads (seg, cls) outputs

from . import evaluate, postprocess

__all__ = ["METHODS", "collect_probabilities", "split_output", "evaluate_masks", "image_level_study"]

#: Methods of :func:`image_level_study`, in table order, with what each one is.
METHODS = {
    "all_empty": "every mask empty (the Kaggle score's floor: the share of negative images)",
    "threshold": "prob > the run's threshold (what training reports in metrics.json)",
    "triplet": "1st-place triplet (top, min_area, bottom), tuned on val",
    "gate": "4th-place gate: image-level head's probability >= gate, then prob > pixel threshold "
            "and area > min_area, tuned on val",
    "gate+triplet": "gate and triplet tuned jointly on val",
}


_RUN_FILES = ("config.json", "metrics.json", "model.pt")


@torch.no_grad()
def collect_probabilities(run: Path | str, split: str = "val", batch_size: int = 32,
                          dtype: Any = np.float32,
                          overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's pixel (and image-level) probabilities on one of its splits, on the CPU.

    The network is rebuilt as :func:`pneumolib.evaluation.evaluate.evaluate_run` does (architecture
    from ``config.json`` and ``metrics.json``, weights from ``model.pt``), put in eval mode
    and run on the datamodule of the run's config. Images come in item order, the order of
    ``<run>/{split}_per_image.csv``.

    Args:
        run: a finished run folder (``config.json``, ``metrics.json``, ``model.pt``).
        split: ``"val"`` or ``"test"``.
        batch_size: inference batch size (eval mode: it does not change the output).
        dtype: of the returned ``prob``: ``np.float32`` (default) or ``np.float16`` (half
            the memory: N x 512 x 512 x 2 bytes).
        overrides: config fields to change (e.g. ``{"num_workers": 0}``); the data fields
            must stay those of the run, or the split is another one.

    Returns:
        ``prob`` ``(N, S, S)`` ``dtype`` in [0, 1]; ``mask`` ``(N, S, S)`` uint8 0/1;
        ``index`` ``(N,)`` int64 item rows (sorted); ``image_prob`` ``(N,)`` float32 in
        [0, 1] from the image-level head, or None for a plain segmentation model;
        ``counts`` ``(N, 3)`` int64 at ``threshold`` computed in float32 (exactly what
        training's metrics use, whatever ``dtype``); ``score`` ``(N,)`` float32 maximum
        pixel probability; ``threshold`` (the run's); ``image_size`` S; ``split``.
    """
    from pneumolib.prep.datamodule import PneumoDataModule
    from pneumolib.training.runs import load_model_state

    if split not in ("val", "test"):
        raise ValueError(f"split={split!r}; valid: val, test")
    run = Path(run)
    cfg = evaluate.run_config(run, {"batch_size": int(batch_size), "progress": False, **(overrides or {})})
    model, task = evaluate.model_for_run(run, cfg)
    if task != "seg":
        raise ValueError(f"{run} is a {task!r} run; image-level decisions need a segmentation run")
    evaluate.load_state_checked(model, load_model_state(run), run / "model.pt")
    model = model.to("cpu").eval()
    dm = PneumoDataModule(cfg)
    dm.setup("validate")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    thr = float(cfg.threshold)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("prob", "mask", "index", "image_prob", "counts", "score")}
    has_cls = None
    for batch in loader:
        seg, cls = split_output(model(batch["image"]))
        prob = torch.sigmoid(seg.float())  # (B, 1, S, S), as PneumoModule.validation_step
        truth = batch["mask"] > 0.5
        parts["counts"].append(metrics.per_image_counts_torch(prob > thr, truth).numpy())
        parts["score"].append(prob.flatten(1).amax(1).numpy())
        parts["prob"].append(prob[:, 0].numpy().astype(dtype, copy=False))
        parts["mask"].append(truth[:, 0].numpy().astype(np.uint8))
        parts["index"].append(batch["index"].long().numpy())
        has_cls = cls is not None if has_cls is None else has_cls
        if has_cls:
            parts["image_prob"].append(torch.sigmoid(cls.float()).reshape(len(prob)).numpy())
    size = int(cfg.image_size)
    if not parts["index"]:
        empty = np.zeros((0, size, size))
        return {"prob": empty.astype(dtype), "mask": empty.astype(np.uint8), "index": np.zeros(0, np.int64),
                "image_prob": None, "counts": np.zeros((0, 3), np.int64), "score": np.zeros(0, np.float32),
                "threshold": thr, "image_size": size, "split": split}
    cat = {k: np.concatenate(v) for k, v in parts.items() if v}
    names = [k for k in ("prob", "mask", "image_prob", "counts", "score") if k in cat]
    index, *arrays = metrics.dedup_gathered(cat["index"], *(cat[k] for k in names))
    out: dict[str, Any] = dict(zip(names, arrays))
    out.setdefault("image_prob", None)
    out.update(index=index.astype(np.int64), threshold=thr, image_size=size, split=split)
    return out


def evaluate_masks(masks: Any, truth: Any) -> dict[str, float | int]:
    """:func:`pneumolib.metrics.summarize` of binary ``(N, H, W)`` masks against the truth
    (an image counts as predicted positive when its mask is non-empty)."""
    return metrics.summarize(metrics.per_image_counts(masks, truth))


def _row(run: str, method: str, params: dict[str, Any] | None, counts: np.ndarray,
         val_score: float = math.nan) -> dict[str, Any]:
    s = metrics.summarize(counts)
    return {"run": run, "method": method, "params": json.dumps(params or {}, sort_keys=True),
            "val_score": val_score, "dice_per_image": s["dice_per_image"],
            "dice_pooled": s["dice_pooled"], "dice_positive": s["dice_positive"],
            "iou_pooled": s["iou_pooled"], "sensitivity": s["sensitivity"],
            "specificity": s["specificity"], "n_images": s["n_images"], "n_positive": s["n_positive"],
            "empty_baseline_dice_per_image": s["empty_baseline_dice_per_image"]}


def _best_score(table: pd.DataFrame) -> float:
    return float(table.loc[table["best"], "score"].iloc[0])


def _plain_score(table: pd.DataFrame, threshold: float) -> float:
    """The grid's score of the plain threshold (top = bottom = threshold, no area, no gate)."""
    sel = (table["min_area"] == 0) & np.isclose(table["top_threshold"], threshold) \
        & np.isclose(table["bottom_threshold"], threshold)
    if "gate_threshold" in table:
        sel &= table["gate_threshold"] == 0
    return float(table.loc[sel, "score"].iloc[0]) if sel.any() else math.nan


def image_level_study(runs: Mapping[str, Path | str], batch_size: int = 32,
                      metric: str = "dice_per_image", triplet_grid: Any = None, gate_grid: Any = None,
                      gate_triplet_grid: Any = None, with_gate_triplet: bool = True,
                      write_postprocess: bool = True, dtype: Any = np.float32) -> pd.DataFrame:
    """Test-split scores of each run under each image-level method, tuned on val only.

    For each run (``name -> run folder``): ``all_empty`` (every mask empty), ``threshold``
    (the run's own threshold: equals its ``metrics.json`` test numbers exactly for a run
    trained at 32-bit precision; a run evaluated under 16-bit mixed precision on a GPU can
    differ in a few borderline pixels, since inference here is float32 on the CPU), ``triplet``
    (:func:`pneumolib.evaluation.postprocess.tune_triplet` on val, applied once to test) and, for a
    model with an image-level head, ``gate`` and ``gate+triplet``.

    Writes ``<run>/postprocess.json`` (the tuned triplet, read by ``pneumo predict``: keys
    ``top_threshold``, ``min_area``, ``bottom_threshold`` plus ``tuned_on: "val"``, the val
    score and provenance) unless ``write_postprocess`` is False. The study's table, note and
    figure are written by :func:`pneumolib.reporting.studies.write_image_level`.

    Args:
        runs: run name -> run folder; folders without ``config.json``, ``metrics.json`` and
            ``model.pt`` (unfinished runs) are skipped with a warning.
        batch_size, dtype: passed to :func:`collect_probabilities`.
        metric: what the tuners maximise on val (a key of
            :data:`pneumolib.evaluation.postprocess.METRICS`; default the Kaggle score).
        triplet_grid, gate_grid, gate_triplet_grid: grids of the tuners (None = defaults).
        with_gate_triplet: also tune gate and triplet jointly (models with a head only).

    Returns:
        One row per run and method: ``run, method, params`` (JSON), ``val_score`` (the
        tuned score on val), ``dice_per_image`` (Kaggle), ``dice_pooled``,
        ``dice_positive``, ``iou_pooled``, ``sensitivity``, ``specificity``, ``n_images``,
        ``n_positive``, ``empty_baseline_dice_per_image`` (all on test).
    """
    rows: list[dict[str, Any]] = []
    missing = [n for n, f in runs.items() if not all((Path(f) / x).is_file() for x in _RUN_FILES)]
    if missing:
        warnings.warn(f"image_level_study: skipping unfinished runs (no {', '.join(_RUN_FILES)}): "
                      f"{', '.join(map(str, missing))}", stacklevel=2)
    if len(missing) == len(runs):
        raise FileNotFoundError(f"image_level_study: no finished run among {list(runs)}")
    for name, folder in runs.items():
        if name in missing:
            continue
        folder = Path(folder)
        val = collect_probabilities(folder, "val", batch_size=batch_size, dtype=dtype)
        # everything tuned here sees val only; test is collected afterwards, scored once
        trip, trip_table = postprocess.tune_triplet(val["prob"], val["mask"], triplet_grid, metric)
        gate = gate_trip = None
        if val["image_prob"] is not None:
            gate, gate_table = postprocess.tune_gate(val["prob"], val["image_prob"], val["mask"], gate_grid, metric)
            if with_gate_triplet:
                gate_trip, gt_table = postprocess.tune_gate_triplet(
                    val["prob"], val["image_prob"], val["mask"], gate_triplet_grid, metric)
        s = val["image_size"]
        if write_postprocess:
            payload: dict[str, Any] = {
                **trip, "min_area_fraction": trip["min_area"] / float(s * s), "image_size": s,
                "tuned_on": "val", "metric": metric, "val_score": _best_score(trip_table),
                "val_score_plain_threshold": _plain_score(trip_table, val["threshold"]),
                "n_val_images": int(len(val["index"])), "n_grid_points": int(len(trip_table)),
                "method": "triplet (1st place SIIM-ACR, sneddy): positive if more than min_area "
                          "pixels > top_threshold; mask = prob > bottom_threshold",
                "provenance": runio.provenance(extra={"run": str(folder), "tuned_on": "val"}),
            }
            if gate_trip is not None:
                payload["gate_triplet"] = {**gate_trip, "val_score": _best_score(gt_table)}
            if gate is not None:
                payload["gate"] = {**gate, "val_score": _best_score(gate_table)}
            runio.atomic_write_json(folder / "postprocess.json", payload)
        val_plain = postprocess.METRICS[metric](val["counts"])  # the run's threshold, on val
        del val

        test = collect_probabilities(folder, "test", batch_size=batch_size, dtype=dtype)
        truth = test["mask"].astype(bool)
        empty = test["counts"].copy()
        empty[:, :2] = 0
        rows.append(_row(name, "all_empty", {}, empty))
        rows.append(_row(name, "threshold", {"threshold": test["threshold"]}, test["counts"], val_plain))
        m = postprocess.apply_triplet(test["prob"], **trip)
        rows.append(_row(name, "triplet", trip, metrics.per_image_counts(m, truth), _best_score(trip_table)))
        if gate is not None and test["image_prob"] is not None:
            m = postprocess.apply_gate(test["prob"], test["image_prob"], **gate)
            rows.append(_row(name, "gate", gate, metrics.per_image_counts(m, truth), _best_score(gate_table)))
            if gate_trip is not None:
                m = postprocess.apply_gate_triplet(test["prob"], test["image_prob"], **gate_trip)
                rows.append(_row(name, "gate+triplet", gate_trip, metrics.per_image_counts(m, truth),
                                 _best_score(gt_table)))
        del test, m
    return pd.DataFrame(rows)
