"""``PneumoDataModule``: train / val / test batches served from memory-mapped arrays.

``prepare_data()`` (once per node, Lightning's rank 0) and ``setup()`` (every process) run
the same idempotent preparation, each step reused from disk when done before:

1. open the Source (``cfg.data``, or the built-in phantom set);
2. :func:`pneumolib.cache.build_cache`: every image and mask resized once to
   ``cfg.image_size`` (uint8 memmaps, rebuilt when the source's fingerprint changes);
3. :func:`pneumolib.splits.load_or_make_split`: the ``paper`` or ``clean`` split table,
   saved as CSV next to the cache;
4. :func:`pneumolib.cache.materialize`: the table's items (originals, flips, rotations);
5. the normalisation mean / std of the TRAIN items only, saved as JSON next to the split.

Every step holds a file lock while it builds, so DDP ranks (or two notebooks) never build
the same thing twice or read a half-written file. No image is decoded during training: a
batch is one read of a memmap (``Dataset.__getitems__``), the online augmentation per item
on uint8 when on, and one vectorised conversion to normalised float32 in the process
that consumes the batch (:class:`PneumoLoader`), so workers ship uint8 only.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from . import paths
from .cache import ImageCache, build_cache, file_lock, materialize
from .errors import DataError
from .prep import normalization_stats
from .seeding import worker_init_fn
from .splits import SPLITS, leakage, load_or_make_split, split_table, table_hash
from .transforms import train_transform

if TYPE_CHECKING:
    import pandas as pd

    from .config import Config

__all__ = ["PneumoDataModule", "PneumoLoader", "SplitDataset", "collate_batch", "tune_malloc"]


def tune_malloc() -> bool:
    """Let glibc reuse freed batch buffers instead of returning them to the kernel.

    A batch of 32 float32 images at 512 px is exactly 32 MiB, just above glibc's largest
    dynamic mmap threshold: every batch would be a fresh ``mmap`` whose pages the kernel
    faults in and zeroes one by one, which costs more than the conversion itself (about
    3x slower loading measured on 2 cores). Raising ``M_MMAP_THRESHOLD`` to 128 MiB and
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
    2-core machine the float32 transfer alone capped loading at ~500 images/s at 512 px.
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


def label_subset(split: "pd.DataFrame", frac: float, seed: int = 0) -> np.ndarray:
    """Training rows of a label-efficiency run: ``frac`` of the training source images.

    The subset is drawn per class (sources with and without pneumothorax, at least one of
    each when the class exists), with a fixed ``seed`` so that every scenario and every run
    seed sees the same labelled images; a source's augmented copies come with it. The rows
    are then repeated (cycled) up to the number of training rows with all labels, so an
    epoch has as many optimiser steps as a full-label epoch: the comparison is at equal
    training steps, not at equal passes over fewer images.

    Returns:
        ``(K,)`` int64 row numbers of ``split`` (``K`` = all training rows).
    """
    train = split[split["split"] == "train"]
    all_rows = np.flatnonzero(split["split"].to_numpy() == "train")
    if frac >= 1.0:
        return all_rows
    rng = np.random.default_rng(seed)
    src_pos = train.groupby("src")["has_pneumo"].max()
    chosen: list[Any] = []
    for label in (1, 0):
        srcs = np.sort(src_pos.index[src_pos.to_numpy() == label].to_numpy())
        if srcs.size == 0:
            continue
        k = max(1, int(round(frac * srcs.size)))
        chosen.extend(rng.choice(srcs, size=k, replace=False).tolist())
    keep = np.flatnonzero((split["split"].to_numpy() == "train") & split["src"].isin(chosen).to_numpy())
    return np.resize(keep, all_rows.size).astype(np.int64)


class SplitDataset(Dataset):
    """The items of one split, read from the materialised memmaps.

    Args:
        folder: a :func:`pneumolib.cache.materialize` folder (``images.u8``, ``masks.u8``).
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
                 std: float, transform: Any = None):
        self.folder = Path(folder)
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

    def _read(self, rows: np.ndarray, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``(B, 1, S, S)`` images and masks of ``rows``, augmented if a transform is set."""
        images, masks = self._arrays()
        shape = (rows.size, 1, self.size, self.size)
        img = _empty(shape, shared, torch.uint8)
        msk = _empty(shape, shared, torch.uint8)
        iv, mv = img.numpy()[:, 0], msk.numpy()[:, 0]
        for j, r in enumerate(rows):  # rows in disk order; a plain memcpy each (np.take and
            iv[j] = images[r]         # fancy indexing measured 1.5-2x slower)
            mv[j] = masks[r]
        if self.transform is not None:
            for j in range(rows.size):
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
        # numpy, not Tensor.copy_: torch's threaded uint8 -> float copy was 3x slower here
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

    def __getitems__(self, ks: list[int]) -> dict[str, torch.Tensor]:
        rows = np.sort(self.rows[np.asarray(ks, dtype=np.int64)])
        shared = torch.utils.data.get_worker_info() is not None
        img, msk = self._read(rows, shared)
        batch = {"image": img, "mask": msk, "index": torch.from_numpy(rows)}
        return batch if self.defer else self._to_float(batch, shared)


class PneumoDataModule(pl.LightningDataModule):
    """Train / val / test loaders of the paper's data preparation.

    Args:
        cfg: uses ``data``, ``data_kind``, ``skip_bad``, ``image_size``, ``protocol``,
            ``test_frac``, ``val_frac``, ``paper_augment``, ``online_aug``, ``batch_size``,
            ``num_workers``, ``seed``, ``progress`` and the ``phantom_*`` fields.
        source: a ready Source (tests, notebooks); None opens ``cfg.data`` or the phantom.
        cache_root: folder for arrays and splits (default ``paths.cache_dir()``).

    After :meth:`setup`: ``split`` (the table), ``split_path``, ``mean`` / ``std``,
    ``cache`` (:class:`~pneumolib.cache.ImageCache`), ``source_info`` (kind, root,
    fingerprint, n_images), ``datasets`` (``train`` / ``val`` / ``test``).
    """

    def __init__(self, cfg: "Config", source: Any = None,
                 cache_root: str | os.PathLike | None = None):
        super().__init__()
        self.cfg = cfg
        self._source = source
        self.cache_root = Path(cache_root) if cache_root is not None else None
        self.split: pd.DataFrame | None = None
        self.split_path: Path | None = None
        self.mean: float | None = None
        self.std: float | None = None
        self.cache: ImageCache | None = None
        self.source_info: dict[str, Any] | None = None
        self.items_folder: Path | None = None
        self.datasets: dict[str, SplitDataset] = {}
        self._state: dict[str, Any] | None = None

    # -- preparation -------------------------------------------------------------------
    def _open_source(self) -> Any:
        if self._source is None:
            from .data import open_source  # imported late: optional until a run needs it

            cfg = self.cfg
            path = cfg.data
            if path is None:
                from .phantom import ensure_phantom

                path = ensure_phantom(cfg)
            self._source = open_source(path, kind=cfg.data_kind, skip_bad=cfg.skip_bad)
        return self._source

    def _prepare(self) -> dict[str, Any]:
        """Build or reuse cache, split, items and statistics; cheap when all exist."""
        if self._state is not None:
            return self._state
        cfg = self.cfg
        source = self._open_source()
        base = self.cache_root if self.cache_root is not None else paths.cache_dir()
        cache = build_cache(source, cfg.image_size, root=base / "arrays",
                            workers=cfg.num_workers, progress=cfg.progress)
        split_dir = cache.folder / "splits"
        with file_lock(split_dir / ".prepare.lock"):
            split, split_path = load_or_make_split(cache.fingerprint, cache.has_pneumo,
                                                   cache.image_ids, cfg, split_dir)
            items_folder = split_dir / split_path.stem
            images, _ = materialize(cache, split, items_folder, progress=cfg.progress)
            mean, std = self._train_stats(split, split_path, images, cache)
        self._state = {
            "cache": cache, "split": split, "split_path": split_path, "items": items_folder,
            "mean": mean, "std": std,
            "source_info": {
                "kind": str(source.kind),
                "root": str(source.root),
                "fingerprint": cache.fingerprint,
                "n_images": cache.n,
                "n_skipped": len(getattr(source, "skipped", []) or []),
            },
        }
        return self._state

    @staticmethod
    def _train_stats(split: "pd.DataFrame", split_path: Path, images: np.memmap,
                     cache: ImageCache) -> tuple[float, float]:
        """Mean / std over the train items (flips and rotations included, as the paper's
        'training dataset'); saved next to the split and reused."""
        path = split_path.with_name(f"{split_path.stem}-stats.json")
        key = {"split_hash": table_hash(split), "cache_fingerprint": cache.fingerprint,
               "size": cache.size}
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                if all(saved.get(k) == v for k, v in key.items()):
                    return float(saved["mean"]), float(saved["std"])
            except (OSError, ValueError, KeyError):
                pass
        rows = np.flatnonzero(split["split"].to_numpy() == "train")
        if rows.size == 0:
            raise DataError(f"split {split_path.name} has no training items: too few images "
                            "for the chosen test_frac / val_frac")
        step = max(1, (32 << 20) // (cache.size ** 2))
        mean, std = normalization_stats(images[rows[s : s + step]]
                                        for s in range(0, rows.size, step))
        if std <= 0:
            raise DataError("the training images are all one grey level (std = 0); check the data")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({**key, "mean": mean, "std": std, "n_items": int(rows.size),
                                   "split_csv": split_path.name}, indent=1))
        os.replace(tmp, path)
        return mean, std

    def prepare_data(self) -> None:
        """Build what is missing (Lightning calls this on one process per node)."""
        self._prepare()

    def setup(self, stage: str | None = None) -> None:
        """Open everything prepared (idempotent: a second call returns at once)."""
        if self.datasets:
            return
        st = self._prepare()
        self.cache, self.split, self.split_path = st["cache"], st["split"], st["split_path"]
        self.mean, self.std = st["mean"], st["std"]
        self.source_info = st["source_info"]
        self.items_folder = st["items"]
        m, s = len(self.split), self.cache.size
        names = self.split["split"].to_numpy()
        rows = {name: np.flatnonzero(names == name) for name in SPLITS}
        if self.cfg.label_frac < 1.0:
            rows["train"] = label_subset(self.split, self.cfg.label_frac)
        self.datasets = {
            name: SplitDataset(
                self.items_folder, rows[name], m, s, self.mean, self.std,
                transform=train_transform(self.cfg) if name == "train" else None,
            )
            for name in SPLITS
        }

    # -- summaries ---------------------------------------------------------------------
    def split_table(self) -> "pd.DataFrame":
        """Counts per split and class (the paper's Table 2 shape)."""
        self._require_setup()
        return split_table(self.split)

    def leakage(self) -> dict[str, int | float]:
        """Test images with a copy in train or val (0 under the clean protocol)."""
        self._require_setup()
        return leakage(self.split)

    def _require_setup(self) -> None:
        if not self.datasets:
            raise RuntimeError("call PneumoDataModule.setup() first")

    # -- loaders -----------------------------------------------------------------------
    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        self._require_setup()
        nw = int(self.cfg.num_workers)
        tune_malloc()  # this process converts the batches to float (see tune_malloc)
        generator = None
        if shuffle:
            generator = torch.Generator()
            generator.manual_seed(int(self.cfg.seed))
        return PneumoLoader(
            self.datasets[name].deferred(),
            batch_size=int(self.cfg.batch_size),
            shuffle=shuffle,
            # training drops the ragged last batch: a batch of one item breaks batch norm
            # (ResNet's 1x1 deepest map at small sizes) and each epoch reshuffles anyway
            drop_last=shuffle and len(self.datasets[name]) > int(self.cfg.batch_size),
            num_workers=nw,
            collate_fn=collate_batch,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=nw > 0,
            worker_init_fn=worker_init_fn,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def eval_dataloaders(self) -> list[DataLoader]:
        """``[val, test]``: the paper reports test metrics every epoch."""
        return [self.val_dataloader(), self.test_dataloader()]
