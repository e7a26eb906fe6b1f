"""Resized uint8 memory-mapped arrays of a Source, built once and rebuilt when it changes.

Decoding a 1024 x 1024 PNG or JPEG-DICOM and resizing it is far slower than reading a
512 x 512 uint8 slice of a memory map (``benchmarks/bench_data.py`` times a loader that
decodes PNGs each step against the cached one: docs/BENCHMARKS.md). So every source image
and mask is decoded and resized exactly once (:func:`build_cache`) into

    <cache_dir>/arrays/<root name>-<size>px-<hash of root and size>/
        images.u8   (N, S, S) uint8, 0..255   raw C-order memmap
        masks.u8    (N, S, S) uint8, 0 / 1
        meta.json   kind, root, fingerprint, size, N, image_ids, has_pneumo, mask_pixels

``meta.json`` is written last and the folder is built under a temporary name and renamed
into place, so an interrupted build leaves nothing a later run would trust. A cache whose
recorded fingerprint differs from ``source.fingerprint()`` is rebuilt.

:func:`pneumolib.prep.items.materialize` then writes the items of a split table
(originals, flips, rotations) as a second pair of memmaps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from pneumolib import paths
from pneumolib.errors import DataError
from pneumolib.runio import atomic_write_json, file_lock

from .augment import resize_image, resize_mask, to_uint8

__all__ = ["ImageCache", "build_cache", "cache_folder"]

CACHE_VERSION = 1
_CHUNK = 32  # images per worker task: small enough for a smooth progress bar


def memmap_u8(path: Path, n: int, size: int, mode: str) -> np.memmap:
    return np.memmap(path, dtype=np.uint8, mode=mode, shape=(n, size, size))


def swap_into_place(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by the finished ``tmp`` (two renames on the same file system)."""
    trash = None
    if folder.exists():
        trash = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(folder, trash)
    os.rename(tmp, folder)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def remove_stale_builds(folder: Path) -> None:
    """Leftovers of crashed builds of ``folder`` (called while holding its lock)."""
    for p in folder.parent.glob(f".{folder.name}.building-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in folder.parent.glob(f".{folder.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


# -- the image cache ---------------------------------------------------------------------
class ImageCache:
    """A built cache: ``images`` / ``masks`` are read-only ``(N, S, S)`` uint8 memmaps.

    Attributes:
        folder: where it lives. n, size: N and S. image_ids: ``list[str]`` in Source order.
        has_pneumo: ``(N,)`` int64 from the Source's records. mask_pixels: ``(N,)`` int64
        mask area at cache resolution. fingerprint, kind, root: of the Source it was built
        from.

    Pickling keeps only the folder and metadata (memmaps are reopened lazily in the new
    process), so a cache can be handed to DataLoader workers without copying arrays.
    """

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder = Path(folder)
        self.meta = meta
        self._images: np.memmap | None = None
        self._masks: np.memmap | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "ImageCache":
        """Open a finished cache folder.

        Raises:
            DataError: no ``meta.json`` (never finished), another cache version, or array
                files of the wrong length; delete the folder and build again.
        """
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            raise DataError(f"{folder} is not a finished image cache (no meta.json); "
                            "build it with pneumolib.prep.cache.build_cache")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{meta_path} is unreadable ({e}); delete {folder} to rebuild") from e
        if meta.get("version") != CACHE_VERSION:
            raise DataError(f"{folder} was written by another cache version "
                            f"({meta.get('version')} != {CACHE_VERSION}); it will be rebuilt")
        missing = [k for k in ("n", "size", "fingerprint", "kind", "root", "image_ids",
                               "has_pneumo", "mask_pixels") if k not in meta]
        if missing:
            raise DataError(f"{meta_path} lacks {', '.join(missing)}; delete {folder} to rebuild")
        expected = int(meta["n"]) * int(meta["size"]) ** 2
        for name in ("images.u8", "masks.u8"):
            p = folder / name
            if not p.exists() or p.stat().st_size != expected:
                raise DataError(f"{p} is missing or has the wrong size; delete {folder} to rebuild")
        return cls(folder, meta)

    # metadata
    n = property(lambda self: int(self.meta["n"]))
    size = property(lambda self: int(self.meta["size"]))
    fingerprint = property(lambda self: str(self.meta["fingerprint"]))
    kind = property(lambda self: str(self.meta["kind"]))
    root = property(lambda self: str(self.meta["root"]))
    image_ids = property(lambda self: list(self.meta["image_ids"]))
    has_pneumo = property(lambda self: np.asarray(self.meta["has_pneumo"], dtype=np.int64))
    mask_pixels = property(lambda self: np.asarray(self.meta["mask_pixels"], dtype=np.int64))

    @property
    def images(self) -> np.memmap:
        """``(N, S, S)`` uint8 in 0..255, read-only."""
        if self._images is None:
            self._images = memmap_u8(self.folder / "images.u8", self.n, self.size, "r")
        return self._images

    @property
    def masks(self) -> np.memmap:
        """``(N, S, S)`` uint8 in {0, 1}, read-only."""
        if self._masks is None:
            self._masks = memmap_u8(self.folder / "masks.u8", self.n, self.size, "r")
        return self._masks

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["meta"])

    def __repr__(self) -> str:
        return f"ImageCache({str(self.folder)!r}, n={self.n}, size={self.size})"


def cache_folder(source: Any, size: int, root: str | os.PathLike | None = None) -> Path:
    """The folder of ``source``'s cache at ``size``: keyed by the source root and size only
    (not the fingerprint: a changed source rebuilds the same folder, so stale copies do not
    pile up)."""
    src_root = Path(source.root).expanduser().resolve()
    key = hashlib.sha256(f"{src_root}|{int(size)}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", src_root.name or "root")[:40]
    base = Path(root) if root is not None else paths.cache_dir() / "arrays"
    return base / f"{slug}-{int(size)}px-{key}"


# Set in the parent before the pool forks, so workers inherit the Source without pickling.
_WORKER_SOURCE: Any = None


def _init_worker(source: Any = None) -> None:
    global _WORKER_SOURCE
    if source is not None:
        _WORKER_SOURCE = source
    # (no cv2.setNumThreads here: in a forked child it can wait forever for the parent's
    # pool threads, which fork does not copy)


def _fill(folder: Path, n: int, size: int, lo: int, hi: int, source: Any = None) -> list[int]:
    """Decode, resize and store images ``lo..hi-1``; returns their mask areas."""
    source = source if source is not None else _WORKER_SOURCE
    images = memmap_u8(folder / "images.u8", n, size, "r+")
    masks = memmap_u8(folder / "masks.u8", n, size, "r+")
    areas = []
    for i in range(lo, hi):
        rec = source.records[i]
        try:
            img = source.read_image(i)
            mask = source.read_mask(i)
        except DataError:
            raise  # already names the file
        except Exception as e:  # a reader bug or an unreadable file: name the file
            raise DataError(
                f"could not read image {i} ({getattr(rec, 'image_path', '?')}): "
                f"{type(e).__name__}: {e}"
            ) from None
        if mask.shape != img.shape:
            raise DataError(f"mask {getattr(rec, 'mask_path', None)} has shape {mask.shape} but "
                            f"image {getattr(rec, 'image_path', '?')} has {img.shape}")
        images[i] = to_uint8(resize_image(img, size))
        m = resize_mask(mask, size)
        masks[i] = m
        areas.append(int(m.sum()))
    images.flush()
    masks.flush()
    del images, masks
    return areas


def _has_fork() -> bool:
    return "fork" in mp.get_all_start_methods()


def build_cache(
    source: Any,
    size: int,
    root: str | os.PathLike | None = None,
    workers: int = 2,
    progress: bool = True,
) -> ImageCache:
    """Resize every image and mask of ``source`` once into uint8 memmaps, or reuse them.

    Args:
        source: a :class:`pneumolib.data.Source` (``records``, ``read_image``, ``read_mask``,
            ``fingerprint``, ``kind``, ``root``).
        size: side S of the cached arrays (the training resolution).
        root: folder holding cache folders (default ``paths.cache_dir() / "arrays"``).
        workers: processes decoding in parallel (forked, so the source need not pickle;
            1 or 0 decodes in this process).
        progress: show a tqdm bar.

    Returns:
        The :class:`ImageCache`. When a finished cache of the same size and fingerprint
        exists it is opened without reading a single image.

    Raises:
        DataError: an image cannot be read (the message names the file); no cache is left.
    """
    size = int(size)
    folder = cache_folder(source, size, root)
    fingerprint = str(source.fingerprint())
    records = list(source.records)
    n = len(records)
    ids = [str(r.image_id) for r in records]
    with file_lock(folder.with_name(f".{folder.name}.lock")):
        with contextlib.suppress(DataError):
            cache = ImageCache.open(folder)
            # same files, and the same records of them (skip_bad or another kind can change
            # which files become records without changing the files)
            if (cache.fingerprint == fingerprint and cache.size == size and cache.n == n
                    and cache.kind == str(source.kind) and cache.image_ids == ids):
                return cache
        if n == 0:
            raise DataError(f"source {source.root} has no images to cache")
        remove_stale_builds(folder)
        tmp = folder.with_name(f".{folder.name}.building-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        tmp.mkdir(parents=True)
        try:
            mask_pixels = _build_arrays(source, tmp, n, size, workers, progress)
            meta = {
                "version": CACHE_VERSION,
                "kind": str(source.kind),
                "root": str(Path(source.root).expanduser().resolve()),
                "fingerprint": fingerprint,
                "size": size,
                "n": n,
                "image_ids": ids,
                "has_pneumo": [int(r.has_pneumo) for r in records],
                "mask_pixels": mask_pixels,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "layout": "images.u8 / masks.u8: raw C-order uint8 (n, size, size)",
            }
            atomic_write_json(tmp / "meta.json", meta)  # last: marks the build finished
            swap_into_place(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ImageCache.open(folder)


def _build_arrays(source: Any, tmp: Path, n: int, size: int, workers: int,
                  progress: bool) -> list[int]:
    """Fill ``tmp/images.u8`` and ``tmp/masks.u8``; returns the mask areas."""
    from tqdm.auto import tqdm

    memmap_u8(tmp / "images.u8", n, size, "w+").flush()
    memmap_u8(tmp / "masks.u8", n, size, "w+").flush()
    areas = [0] * n
    bounds = [(lo, min(lo + _CHUNK, n)) for lo in range(0, n, _CHUNK)]
    bar = tqdm(total=n, desc=f"caching {n} images at {size}px", unit="img",
               disable=not progress, leave=False)
    try:
        if workers <= 1 or len(bounds) == 1:
            for lo, hi in bounds:
                areas[lo:hi] = _fill(tmp, n, size, lo, hi, source)
                bar.update(hi - lo)
        else:
            global _WORKER_SOURCE
            if _has_fork():
                _WORKER_SOURCE = source
                pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"),
                                           initializer=_init_worker)
            else:  # pragma: no cover - spawn platforms: the source must pickle
                pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(source,))
            try:
                futures = {pool.submit(_fill, tmp, n, size, lo, hi): (lo, hi) for lo, hi in bounds}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        lo, hi = futures[f]
                        areas[lo:hi] = f.result()  # re-raises a worker's DataError
                        bar.update(hi - lo)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                _WORKER_SOURCE = None
    finally:
        bar.close()
    return areas
