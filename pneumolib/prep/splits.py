"""The two split protocols, ``paper`` and ``clean``, and the split table saved once per run.

A split table has one row per training item (``docs/ARCHITECTURE.md``):

=============  ==========================================================================
``item``       0..M-1, the row number (and the row of the materialised arrays)
``src``        index into the Source (and the image cache)
``image_id``   the source image's id
``has_pneumo`` 1, 0 (or -1: unknown)
``aug``        ``orig`` | ``flip`` | ``rot``
``angle``      degrees of the rotation (counter-clockwise positive), 0 unless ``rot``
``split``      ``train`` | ``val`` | ``test``
=============  ==========================================================================

``paper`` (the paper's section 3.2, reproduced on purpose): every positive image gets three
items (original, horizontal flip, one rotation of +/-U(3, 7) degrees), then all items are
shuffled and split, stratified by class, into test (``test_frac``) and the rest, and the
rest into validation (``val_frac``) and train. A flipped or rotated copy of a test image
thus usually sits in train: :func:`leakage` counts it. On SIIM-ACR (2,669 positives of
12,047 in the paper's Table 1) this gives 12,047 + 2 x 2,669 = 17,385 items and a test
split of 1,952, as in the paper's Table 2.

``clean`` (the default): the source images are split first (same fractions, stratified),
then only the training positives are augmented; validation and test hold originals only.
No image contributes to two splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from pneumolib.errors import ConfigError, DataError
from pneumolib.seeding import rng_for

from .augment import paper_angle

if TYPE_CHECKING:
    from pneumolib.config import Config

__all__ = [
    "COLUMNS",
    "SPLITS",
    "make_split",
    "leakage",
    "split_table",
    "split_key",
    "table_hash",
    "read_split",
    "load_or_make_split",
]

COLUMNS = ["item", "src", "image_id", "has_pneumo", "aug", "angle", "split"]
SPLITS = ("train", "val", "test")
AUGS = ("orig", "flip", "rot")
#: Bump when the way splits are drawn changes, so saved CSVs of the old scheme are not reused.
SPLIT_VERSION = 1
_ANGLE_DECIMALS = 4  # 1e-4 degree: far below interpolation error, and exact through CSV


def _stratified_assign(
    labels: np.ndarray, test_frac: float, val_frac: float, rng: np.random.Generator
) -> np.ndarray:
    """``split`` names for each entry, stratified by ``labels``.

    The test total is ``round(test_frac * N)`` and the validation total
    ``round(val_frac * (N - n_test))``; each is shared among the classes in proportion to
    their sizes with largest remainders, so the totals are exact and every class gets its
    share within one.
    """
    n = labels.size
    out = np.full(n, "train", dtype=object)
    classes, inverse = np.unique(labels, return_inverse=True)
    members = [rng.permutation(np.flatnonzero(inverse == k)) for k in range(classes.size)]
    sizes = np.array([m.size for m in members], dtype=np.int64)

    def allocate(total: int, sizes: np.ndarray) -> np.ndarray:
        if sizes.sum() == 0:
            return np.zeros_like(sizes)
        exact = total * sizes / sizes.sum()
        base = np.floor(exact).astype(np.int64)
        rest = total - int(base.sum())
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:rest]] += 1
        return np.minimum(base, sizes)

    n_test = allocate(int(round(test_frac * n)), sizes)
    n_val = allocate(int(round(val_frac * (n - int(n_test.sum())))), sizes - n_test)
    for m, t, v in zip(members, n_test, n_val):
        out[m[:t]] = "test"
        out[m[t : t + v]] = "val"
    return out


def _table(rows: dict[str, list]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df.insert(0, "item", np.arange(len(df), dtype=np.int64))
    return _canonical(df[COLUMNS])


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order and dtypes, whether the table was drawn or read from CSV."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"split table lacks column(s) {', '.join(missing)}")
    df = df[COLUMNS].astype(
        {"item": "int64", "src": "int64", "has_pneumo": "int64", "angle": "float64",
         "image_id": str, "aug": str, "split": str}
    )
    return df.reset_index(drop=True)


def make_split(
    has_pneumo: Sequence[int] | np.ndarray,
    image_ids: Sequence[str],
    protocol: str,
    seed: int,
    test_frac: float,
    val_frac: float,
    paper_augment: bool = True,
) -> pd.DataFrame:
    """Draw a split table.

    Args:
        has_pneumo: ``(N,)`` 1 / 0 per source image (-1 = unknown: its own stratum,
            never augmented).
        image_ids: ``(N,)`` ids, in Source order.
        protocol: ``paper`` (augment, then split: leaks) or ``clean`` (split, then augment
            train only).
        seed: all draws (shuffles, angles) come from ``rng_for(seed, "split", ...)``.
        test_frac: test share (of items for ``paper``, of source images for ``clean``).
        val_frac: validation share of what is left after the test split.
        paper_augment: add the flip and rotation items for positives; False keeps
            originals only.

    Returns:
        The split table (columns :data:`COLUMNS`), rows in source order with each source's
        items as ``orig``, ``flip``, ``rot``.
    """
    y = np.asarray(has_pneumo).astype(np.int64).reshape(-1)
    ids = [str(i) for i in image_ids]
    if len(ids) != y.size:
        raise DataError(f"make_split: {y.size} labels but {len(ids)} image ids")
    if protocol not in ("paper", "clean"):
        raise ConfigError(f"protocol={protocol!r} is unknown; valid: clean, paper")
    for name, v in (("test_frac", test_frac), ("val_frac", val_frac)):
        if not 0.0 < v < 1.0:
            raise ConfigError(f"{name}={v} must lie strictly between 0 and 1")
    n = y.size
    # one angle per source image, drawn up front in source order: the angle of an image
    # does not depend on the protocol or on which split it lands in
    angle_rng = rng_for(seed, "split", "angles")
    angles = np.array([round(paper_angle(angle_rng), _ANGLE_DECIMALS) for _ in range(n)])

    def items_of(i: int, augment: bool) -> list[tuple[int, str, float]]:
        out = [(i, "orig", 0.0)]
        if augment and paper_augment and y[i] == 1:
            out += [(i, "flip", 0.0), (i, "rot", float(angles[i]))]
        return out

    if protocol == "paper":
        items = [it for i in range(n) for it in items_of(i, True)]
        src = np.array([it[0] for it in items], dtype=np.int64)
        split = _stratified_assign(y[src], test_frac, val_frac, rng_for(seed, "split", "paper"))
    else:
        src_split = _stratified_assign(y, test_frac, val_frac, rng_for(seed, "split", "clean"))
        items = [it for i in range(n) for it in items_of(i, src_split[i] == "train")]
        src = np.array([it[0] for it in items], dtype=np.int64)
        split = src_split[src]
    return _table(
        {
            "src": src,
            "image_id": [ids[i] for i in src],
            "has_pneumo": y[src],
            "aug": [it[1] for it in items],
            "angle": np.array([it[2] for it in items], dtype=np.float64),
            "split": list(split),
        }
    )


def leakage(split: pd.DataFrame) -> dict[str, int | float]:
    """How much of the test split has a copy (any augmentation) in train or validation.

    Returns:
        ``test_sources``: source images with an item in test; ``leaked_sources``: those of
        them with an item in train or val too; ``leaked_test_items``: test items whose
        source is leaked; ``leaked_train_items``: train/val items that are copies of a test
        image; ``leaked_test_frac``: leaked_test_items / test items. All 0 for ``clean``.
    """
    test = split["split"] == "test"
    test_src = set(split.loc[test, "src"])
    other_src = set(split.loc[~test, "src"])
    leaked = test_src & other_src
    n_test_items = int(test.sum())
    leaked_test_items = int(split.loc[test, "src"].isin(leaked).sum())
    return {
        "test_sources": len(test_src),
        "leaked_sources": len(leaked),
        "leaked_test_items": leaked_test_items,
        "leaked_train_items": int(split.loc[~test, "src"].isin(leaked).sum()),
        "leaked_test_frac": leaked_test_items / n_test_items if n_test_items else 0.0,
    }


def split_table(split: pd.DataFrame) -> pd.DataFrame:
    """Item counts per split and class, shaped like the paper's Table 2.

    Returns:
        Index ``train``, ``val``, ``test``, ``total``; columns ``total``, ``+ve``, ``-ve``
        (and ``unknown`` when some labels are -1).
    """
    rows = {}
    for name in (*SPLITS, "total"):
        part = split if name == "total" else split[split["split"] == name]
        row = {
            "total": len(part),
            "+ve": int((part["has_pneumo"] == 1).sum()),
            "-ve": int((part["has_pneumo"] == 0).sum()),
        }
        if (split["has_pneumo"] < 0).any():
            row["unknown"] = int((part["has_pneumo"] < 0).sum())
        rows[name] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "split"
    return out


def split_key(
    source_fingerprint: str,
    protocol: str,
    seed: int,
    test_frac: float,
    val_frac: float,
    paper_augment: bool,
    n: int,
) -> str:
    """Short hash naming a split file: what determines its content, nothing else."""
    blob = json.dumps(
        {
            "fingerprint": str(source_fingerprint),
            "protocol": protocol,
            "seed": int(seed),
            "test_frac": repr(float(test_frac)),
            "val_frac": repr(float(val_frac)),
            "paper_augment": bool(paper_augment),
            "n": int(n),
            "version": SPLIT_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def table_hash(split: pd.DataFrame) -> str:
    """Hash of what decides a split's items (``src``, ``aug``, ``angle`` per row): names
    the materialised arrays and statistics derived from it."""
    h = hashlib.sha256()
    h.update(split["src"].to_numpy(np.int64).tobytes())
    h.update("|".join(split["aug"].astype(str)).encode())
    h.update(split["angle"].to_numpy(np.float64).tobytes())
    return h.hexdigest()[:16]


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    """Read a split CSV back with the exact dtypes it was written with."""
    df = pd.read_csv(
        path,
        dtype={"image_id": str, "aug": str, "split": str},
        float_precision="round_trip",
        keep_default_na=False,
    )
    return _canonical(df)


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            df.to_csv(f, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_make_split(
    source_fingerprint: str,
    has_pneumo: Sequence[int] | np.ndarray,
    image_ids: Sequence[str],
    cfg: "Config",
    folder: str | os.PathLike,
) -> tuple[pd.DataFrame, Path]:
    """The split for this data and config: read from ``folder`` if drawn before, else drawn
    now and written there (atomically).

    The seed is ``cfg.split_seed``, or ``cfg.seed`` when that is None. The file is
    ``split-<protocol>-seed<seed>-<hash>.csv``, the hash covering the source
    fingerprint, protocol, seed, both fractions, ``paper_augment`` and N; a saved file
    whose ids do not match the source is redrawn.

    Returns:
        ``(table, path of the CSV)``.
    """
    y = np.asarray(has_pneumo).astype(np.int64).reshape(-1)
    ids = [str(i) for i in image_ids]
    seed = cfg.seed if getattr(cfg, "split_seed", None) is None else int(cfg.split_seed)
    key = split_key(source_fingerprint, cfg.protocol, seed, cfg.test_frac, cfg.val_frac,
                    cfg.paper_augment, y.size)
    path = Path(folder) / f"split-{cfg.protocol}-seed{seed}-{key}.csv"
    if path.exists():
        try:
            df = read_split(path)
            src = df["src"].to_numpy()
            if (
                len(df)
                and src.min() >= 0
                and src.max() < y.size
                and (df["image_id"].to_numpy() == np.asarray(ids, dtype=object)[src]).all()
                and (df["item"].to_numpy() == np.arange(len(df))).all()
            ):
                return df, path
        except (DataError, ValueError, KeyError, pd.errors.ParserError):
            pass  # unreadable or stale: redraw below
    df = make_split(y, ids, cfg.protocol, seed, cfg.test_frac, cfg.val_frac,
                    cfg.paper_augment)
    _write_csv_atomic(df, path)
    return df, path
