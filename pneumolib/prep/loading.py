"""Batches from the materialised memmaps: :class:`SplitDataset` (one split's items, read a
batch at a time, augmented per item on uint8) and :class:`PneumoLoader` (a DataLoader that
converts each batch to normalised float32 in the process that consumes it).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate


def tune_malloc() -> bool:
    """Let glibc reuse freed batch buffers instead of returning them to the kernel.

    A batch of 32 float32 images at 512 px is exactly 32 MiB, just above glibc's largest
    dynamic mmap threshold: every batch would be a fresh ``mmap`` whose pages the kernel
    faults in and zeroes one by one, which costs more than the conversion itself
    (``benchmarks/bench_data.py`` measures loading). Raising ``M_MMAP_THRESHOLD`` to 128 MiB and
    ``M_TRIM_THRESHOLD`` to 256 MiB keeps such buffers in the heap for reuse; the process
    may hold up to 256 MiB of freed memory. Applied in DataLoader workers and in the
    process that creates a loader (it converts the batches to float). Skipped when
    ``PNEUMO_NO_MALLOC_TUNING`` is set or the C library is not glibc.

    Returns:
        True when applied (now or before).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("PNEUMO_NO_MALLOC_TUNING"):
        return _MALLOC_TUNED
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        _MALLOC_TUNED = bool(libc.mallopt(m_mmap_threshold, 128 << 20)) and bool(
            libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):
        _MALLOC_TUNED = False
    return _MALLOC_TUNED


_MALLOC_TUNED = False


def _empty(shape: tuple[int, ...], shared: bool, dtype: torch.dtype = torch.float32,
           pinned: bool = False) -> torch.Tensor:
    """An uninitialised tensor. ``shared``: in shared memory from the start (as
    ``default_collate`` does in workers), so sending it to the main process copies nothing;
    ``pinned``: page-locked (torch's caching host allocator) for fast copies to the GPU."""
    if shared:
        numel = int(np.prod(shape))
        proto = torch.empty(0, dtype=dtype)
        storage = proto._typed_storage()._new_shared(numel, device="cpu")
        return proto.new(storage).resize_(*shape)
    return torch.empty(shape, dtype=dtype, pin_memory=pinned)


class PneumoLoader(DataLoader):
    """A ``DataLoader`` that finishes each batch in the consuming process.

    Its dataset (a :meth:`SplitDataset.deferred` view) returns uint8 batches; the conversion
    to normalised float32 happens here, after the batch left the worker. Worker processes
    thus ship 2 bytes per pixel (image + mask) through shared memory instead of 8: on a
    2-core machine the float32 transfer alone capped loading (``benchmarks/bench_data.py``).
    Same constructor as ``DataLoader``, so Lightning can re-create it with a distributed
    sampler.
    """

    def __iter__(self):  # type: ignore[override]
        inner = super().__iter__()
        finish = getattr(self.dataset, "finish_batch", None)
        return inner if finish is None else _FinishingIterator(inner, finish)


class _FinishingIterator:
    def __init__(self, inner: Any, finish: Any):
        self._inner, self._finish = inner, finish

    def __iter__(self) -> "_FinishingIterator":
        return self

    def __next__(self) -> Any:
        return self._finish(next(self._inner))

    def __len__(self) -> int:
        return len(self._inner)


def collate_batch(batch: Any) -> Any:
    """Pass through a batch already assembled by :meth:`SplitDataset.__getitems__`;
    collate a list of single items (``__getitem__``) the usual way."""
    if isinstance(batch, dict):
        return batch
    return default_collate(batch)


class SplitDataset(Dataset):
    """The items of one split, read from the materialised memmaps.

    Args:
        folder: a :func:`pneumolib.prep.items.materialize` folder (``images.u8``, ``masks.u8``).
        rows: ``(K,)`` item rows of the split table belonging to this split.
        m, size: shape ``(M, S, S)`` of the materialised arrays.
        mean, std: normalisation of pixel values scaled to [0, 1].
        transform: albumentations pipeline applied per item on uint8, before normalising.

    ``ds[k]`` gives one item ``{"image": (1, S, S) float32, "mask": (1, S, S) float32,
    "index": int64 scalar}``; ``ds.__getitems__([k, ...])`` (used by DataLoader) gives a
    whole batch ``(B, 1, S, S)`` in one read, ordered by row for sequential disk access
    (uint8 in a :meth:`deferred` view, finished by :meth:`finish_batch`).
    """

    def __init__(self, folder: Path, rows: np.ndarray, m: int, size: int, mean: float,
                 std: float, transform: Any = None, aug_seed: int = 0):
        self.folder = Path(folder)
        self.aug_seed = int(aug_seed)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.m, self.size = int(m), int(size)
        self.mean, self.std = float(mean), float(std)
        self.transform = transform
        # (x / 255 - mean) / std as one multiply-add
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = -self.mean / self.std
        self.defer = False  # see deferred()
        self._images: np.memmap | None = None
        self._masks: np.memmap | None = None

    def _arrays(self) -> tuple[np.memmap, np.memmap]:
        if self._images is None:
            shape = (self.m, self.size, self.size)
            self._images = np.memmap(self.folder / "images.u8", np.uint8, "r", shape=shape)
            self._masks = np.memmap(self.folder / "masks.u8", np.uint8, "r", shape=shape)
        return self._images, self._masks  # type: ignore[return-value]

    def __getstate__(self) -> dict[str, Any]:  # never pickle the arrays themselves
        state = self.__dict__.copy()
        state["_images"] = state["_masks"] = None
        return state

    def __len__(self) -> int:
        return int(self.rows.size)

    def reseed(self, seed: int) -> None:
        """Reseed the online augmentation."""
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(seed))

    def worker_init(self, seed: int) -> None:
        """Called by :func:`pneumolib.seeding.worker_init_fn` in each DataLoader worker."""
        self.reseed(seed)
        tune_malloc()

    def deferred(self) -> "SplitDataset":
        """A view whose ``__getitems__`` returns uint8 batches, finished by
        :meth:`finish_batch` in the consuming process (:class:`PneumoLoader`)."""
        view = copy.copy(self)
        view.defer = True
        return view

    def item_seed(self, epoch: int, row: int) -> int:
        """The online augmentation's seed for split-table row ``row`` in ``epoch``: a function
        of ``(aug_seed, epoch, row)`` only, so a resumed run, another worker count or another
        process count augments every item exactly as the uninterrupted run did."""
        return int(np.random.SeedSequence([self.aug_seed & 0xFFFFFFFF, 0xA06, int(epoch), int(row)])
                   .generate_state(1)[0])

    def _read(self, rows: np.ndarray, shared: bool, epochs: np.ndarray | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``(B, 1, S, S)`` images and masks of ``rows``, augmented if a transform is set
        (seeded per item from ``epochs`` when given, see :meth:`item_seed`)."""
        images, masks = self._arrays()
        shape = (rows.size, 1, self.size, self.size)
        img = _empty(shape, shared, torch.uint8)
        msk = _empty(shape, shared, torch.uint8)
        iv, mv = img.numpy()[:, 0], msk.numpy()[:, 0]
        for j, r in enumerate(rows):  # rows in disk order; a plain memcpy each (np.take and
            iv[j] = images[r]         # fancy indexing was slower here)
            mv[j] = masks[r]
        if self.transform is not None:
            for j in range(rows.size):
                if epochs is not None:
                    self.reseed(self.item_seed(int(epochs[j]), int(rows[j])))
                out = self.transform(image=iv[j], mask=mv[j])
                iv[j] = out["image"]
                mv[j] = out["mask"]
        return img, msk

    def _to_float(self, batch: dict, shared: bool) -> dict[str, torch.Tensor]:
        img, msk = batch["image"], batch["mask"]
        pinned = (not shared) and img.is_pinned()
        image = _empty(tuple(img.shape), shared, pinned=pinned)
        mask = _empty(tuple(msk.shape), shared, pinned=pinned)
        b, _, h, w = img.shape
        src = img.numpy().reshape(b * h, w)
        # one pass: x * scale + shift, written straight into the output tensor
        cv2.addWeighted(src, self._scale, src, 0.0, self._shift,
                        dst=image.numpy().reshape(b * h, w), dtype=cv2.CV_32F)
        # numpy, not Tensor.copy_: torch's threaded uint8 -> float copy was slower here
        np.copyto(mask.numpy(), msk.numpy(), casting="unsafe")
        return {**batch, "image": image, "mask": mask}

    def finish_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        """uint8 batch -> ``{"image": (B, 1, S, S) float32 normalised, "mask": float32 0/1,
        "index": (B,) int64}``; float batches pass through unchanged."""
        if batch["image"].dtype != torch.uint8:
            return batch
        return self._to_float(batch, shared=False)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        out = self.finish_batch(self.__getitems__([int(k)]))
        return {"image": out["image"][0], "mask": out["mask"][0], "index": out["index"][0]}

    def __getitems__(self, ks: list[int] | list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """One batch. ``ks``: positions in this split, or ``(position, epoch)`` pairs (from
        :class:`~pneumolib.prep.samplers.TrainSampler`), which seed each item's augmentation."""
        ks = np.asarray(ks, dtype=np.int64)
        epochs = None
        if ks.ndim == 2:
            ks, epochs = ks[:, 0], ks[:, 1]
        order = np.argsort(self.rows[ks], kind="stable")  # read the memmap in disk order
        rows = self.rows[ks][order]
        epochs = None if epochs is None else epochs[order]
        shared = torch.utils.data.get_worker_info() is not None
        img, msk = self._read(rows, shared, epochs)
        batch = {"image": img, "mask": msk, "index": torch.from_numpy(rows)}
        return batch if self.defer else self._to_float(batch, shared)
