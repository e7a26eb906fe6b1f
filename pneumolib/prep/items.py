"""The items of a split table (originals, flips, rotations) as a second pair of memmaps:
the paper's offline augmentation, done once and reused while split and cache are unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumolib.errors import DataError
from pneumolib.runio import atomic_write_json, file_lock

from .augment import hflip, rotate
from .cache import CACHE_VERSION, ImageCache, memmap_u8, remove_stale_builds, swap_into_place
from .splits import table_hash


def open_materialized(folder: str | os.PathLike) -> tuple[np.memmap, np.memmap, dict[str, Any]]:
    """``(images, masks, meta)`` of a finished :func:`materialize` folder (read-only)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{folder} holds no finished materialised split ({e})") from e
    m, s = int(meta["m"]), int(meta["size"])
    for name in ("images.u8", "masks.u8"):
        p = folder / name
        if not p.exists() or p.stat().st_size != m * s * s:
            raise DataError(f"{p} is missing or has the wrong size; delete {folder}")
    return (memmap_u8(folder / "images.u8", m, s, "r"), memmap_u8(folder / "masks.u8", m, s, "r"),
            meta)


def materialize(
    cache: ImageCache, split: pd.DataFrame, folder: str | os.PathLike, progress: bool = False
) -> tuple[np.memmap, np.memmap]:
    """Write the split's items (``orig`` / ``flip`` / ``rot``) as ``(M, S, S)`` memmaps.

    Item ``k`` (row ``k`` of the table) is ``cache.images[src]`` as is, flipped left-right,
    or rotated by ``angle`` degrees about the centre with black fill (masks: nearest
    neighbour, stay 0/1). Built once into ``folder`` and reused while the split and the
    cache are unchanged.

    Note:
        The rotation is applied to the cached, already resized image. The paper rotated at
        1024 x 1024 and then resized to 512: the two orders are the same geometric
        transform and differ only by interpolation (one bilinear resampling at the lower
        resolution instead of the higher one), which is far below the annotation accuracy.

    Returns:
        ``(images, masks)``: read-only uint8 memmaps, ``images`` in 0..255, ``masks`` in {0, 1}.
    """
    folder = Path(folder)
    want = {"split_hash": table_hash(split), "cache_fingerprint": cache.fingerprint,
            "cache_folder": str(cache.folder), "size": cache.size, "m": len(split)}
    with file_lock(folder.with_name(f".{folder.name}.lock")):
        with contextlib.suppress(DataError, KeyError):
            images, masks, meta = open_materialized(folder)
            if all(meta.get(k) == v for k, v in want.items()):
                return images, masks
        remove_stale_builds(folder)
        tmp = folder.with_name(f".{folder.name}.building-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        tmp.mkdir(parents=True)
        try:
            _materialize_into(cache, split, tmp, progress)
            atomic_write_json(tmp / "meta.json", {**want, "version": CACHE_VERSION,
                                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
            swap_into_place(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    images, masks, _ = open_materialized(folder)
    return images, masks


def _materialize_into(cache: ImageCache, split: pd.DataFrame, tmp: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    m, s = len(split), cache.size
    if m == 0:
        raise DataError("the split table is empty: nothing to materialise")
    src = split["src"].to_numpy(np.int64)
    if (src.min() < 0 or src.max() >= cache.n):
        raise DataError(f"split refers to source images outside the cache (n={cache.n}); "
                        "delete the split CSV so it is redrawn")
    aug = split["aug"].to_numpy(str)
    angle = split["angle"].to_numpy(np.float64)
    unknown = sorted(set(aug) - {"orig", "flip", "rot"})
    if unknown:
        raise DataError(f"split table has unknown aug value(s) {unknown}; valid: orig, flip, rot")
    out_i = memmap_u8(tmp / "images.u8", m, s, "w+")
    out_m = memmap_u8(tmp / "masks.u8", m, s, "w+")
    step = max(1, (64 << 20) // max(s * s, 1))  # ~64 MB of images per step
    for lo in tqdm(range(0, m, step), desc="materialising split items", disable=not progress,
                   leave=False):
        hi = min(lo + step, m)
        idx = src[lo:hi]
        order = np.argsort(idx, kind="stable")  # read the source memmap in order
        imgs = np.empty((hi - lo, s, s), np.uint8)
        msks = np.empty((hi - lo, s, s), np.uint8)
        imgs[order] = cache.images[idx[order]]
        msks[order] = cache.masks[idx[order]]
        for j in np.flatnonzero(aug[lo:hi] == "flip"):
            imgs[j] = hflip(imgs[j])
            msks[j] = hflip(msks[j])
        for j in np.flatnonzero(aug[lo:hi] == "rot"):
            imgs[j] = rotate(imgs[j], angle[lo + j], is_mask=False)
            msks[j] = rotate(msks[j], angle[lo + j], is_mask=True)
        out_i[lo:hi] = imgs
        out_m[lo:hi] = msks
    out_i.flush()
    out_m.flush()
    del out_i, out_m
