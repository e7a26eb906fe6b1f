"""What the ``paper`` split protocol does to the real SIIM-ACR data, measured on the real
annotation table (docs/METHODS.md), beside the paper's own Table 2.

The images cannot be downloaded here, but the labels can: the ``torchxrayvision`` wheel ships
the competition's ``train-rle.csv`` (:mod:`pneumolib.data.annotations`). :func:`compute` runs
:func:`pneumolib.prep.splits.make_split` with the ``paper`` profile's protocol, seed and
fractions on its 12,047 images (in the table's order) and counts items, positives, the test
split, the leaked test items (:func:`pneumolib.prep.splits.leakage`) and the Kaggle score of
predicting every mask empty (the share of negatives). ``python -m
pneumolib.reporting.summaries real`` writes it to ``figures/readme/real/paper_split.json``
(committed); the block ``<!-- summary:real/paper_split -->`` is rendered from that file
(:func:`fmt`), and a test recomputes it from the table.

A run on the real images draws its split from the Source's own order, so its leaked count
can differ from this one by chance; the totals cannot.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from typing import Any

import numpy as np

#: The file :func:`compute` is written to, under ``figures/readme/``.
NAME = "paper_split"


def compute(path: str | None = None) -> dict[str, Any]:
    """The ``paper`` protocol on the real annotation table (``path``: another RLE table)."""
    from pneumolib.config import PROFILES
    from pneumolib.data import annotations
    from pneumolib.prep import splits

    from .eda import PAPER_TABLE1, PAPER_TABLE2

    table = annotations.table_path() if path is None else path
    images = annotations.stats(path).images
    y = images["has_pneumo"].astype(np.int64).to_numpy()
    cfg = PROFILES["paper"]
    seed = cfg.seed if cfg.split_seed is None else int(cfg.split_seed)
    split = splits.make_split(y, images["image_id"].tolist(), cfg.protocol, seed, cfg.test_frac,
                              cfg.val_frac, cfg.paper_augment)
    counts = splits.split_table(split)
    leak = splits.leakage(split)
    test = split[split["split"] == "test"]
    try:
        version = metadata.version(annotations.PACKAGE)
    except metadata.PackageNotFoundError:
        version = None
    return {
        "source": {"table": f"{annotations.PACKAGE} {version}'s {annotations.TABLE}" if path is None else str(path),
                   "sha256": hashlib.sha256(open(table, "rb").read()).hexdigest()},
        "how": f"make_split(protocol={cfg.protocol!r}, seed={seed}, test_frac={cfg.test_frac:.4f}, val_frac={cfg.val_frac})",
        "images": int(len(y)), "positives": int(y.sum()),
        "items": int(counts.loc["total", "total"]), "positive_items": int(counts.loc["total", "+ve"]),
        "test_items": int(counts.loc["test", "total"]), "test_positive_items": int(counts.loc["test", "+ve"]),
        "train_val_items": int(counts.loc["train", "total"] + counts.loc["val", "total"]),
        "leaked_test_items": int(leak["leaked_test_items"]),
        "leaked_test_frac": round(float(leak["leaked_test_frac"]), 4),
        "all_empty_kaggle_all_images": round(float((y == 0).mean()), 4),
        "all_empty_kaggle_test_split": round(float((test["has_pneumo"] == 0).mean()), 4),
        "paper": {"images": int(PAPER_TABLE1.iloc[0]["images"]), "positives": int(PAPER_TABLE1.iloc[0]["+ve"]),
                  "items": int(PAPER_TABLE2.loc["total", "total"]),
                  "positive_items": int(PAPER_TABLE2.loc["total", "+ve"]),
                  "test_items": int(PAPER_TABLE2.loc["test", "total"]),
                  "test_positive_items": int(PAPER_TABLE2.loc["test", "+ve"]),
                  "train_val_items": int(PAPER_TABLE2.loc["train", "total"])},
    }


def fmt(d: dict[str, Any]) -> str:
    """The comparison as a Markdown table, with where its numbers come from."""
    p = d.get("paper") or {}

    def n(v: Any) -> str:
        return "" if v is None else f"{v:,d}"

    rows = [("source images", "images"), ("positive source images", "positives"),
            ("items after the offline augmentation", "items"), ("positive items", "positive_items"),
            ("train + validation items", "train_val_items"), ("test items", "test_items"),
            ("positive test items", "test_positive_items")]
    lines = ["|  | the paper's Tables 1-2 | `make_split` on the real annotation table |", "|---|---|---|"]
    lines += [f"| {label} | {n(p.get(k))} | {n(d.get(k))} |" for label, k in rows]
    lines.append(f"| test items whose source image has an item in train or validation too (leakage) |  | "
                 f"{n(d['leaked_test_items'])} ({100 * d['leaked_test_frac']:.1f} %) |")
    lines.append(f"| Kaggle score of predicting every mask empty, all images |  | "
                 f"{d['all_empty_kaggle_all_images']:.4f} |")
    lines.append(f"| the same on this test split |  | {d['all_empty_kaggle_test_split']:.4f} |")
    return ("\n".join(lines) + "\n\n"
            + f"Computed by `{d['how']}` (the `paper` profile's settings) on the images of "
            f"{d['source']['table']}, in the table's order, with `leakage` and `split_table` "
            "(`python -m pneumolib.reporting.summaries real`; a test recomputes it).\n")
