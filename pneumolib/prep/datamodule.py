"""``PneumoDataModule``: train / val / test batches served from memory-mapped arrays.

``prepare_data()`` (once per node, Lightning's rank 0) and ``setup()`` (every process) run
the same idempotent preparation, each step reused from disk when done before:

1. open the Source (``cfg.data``, or the built-in phantom set);
2. :func:`pneumolib.prep.cache.build_cache`: every image and mask resized once to
   ``cfg.image_size`` (uint8 memmaps, rebuilt when the source's fingerprint changes);
3. :func:`pneumolib.prep.splits.load_or_make_split`: the ``paper`` or ``clean`` split table,
   saved as CSV next to the cache;
4. :func:`pneumolib.prep.items.materialize`: the table's items (originals, flips, rotations);
5. the normalisation mean / std of the TRAIN items only, saved as JSON next to the split.

Every step holds a file lock while it builds, so DDP ranks (or two notebooks) never build
the same thing twice or read a half-written file. No image is decoded during training: a
batch is one read of a memmap (``Dataset.__getitems__``), the online augmentation per item
on uint8 when on, and one vectorised conversion to normalised float32 in the process
that consumes the batch (:class:`~pneumolib.prep.loading.PneumoLoader`), so workers ship
uint8 only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from pneumolib import paths
from pneumolib.errors import DataError
from pneumolib.runio import file_lock
from pneumolib.seeding import worker_init_fn

from .augment import normalization_stats
from .cache import ImageCache, build_cache
from .items import materialize
from .loading import PneumoLoader, SplitDataset, collate_batch, tune_malloc
from .samplers import EvalSampler, TrainSampler
from .splits import SPLITS, leakage, load_or_make_split, split_table, table_hash
from .transforms import train_transform

if TYPE_CHECKING:
    import pandas as pd

    from pneumolib.config import Config

__all__ = ["PneumoDataModule", "label_subset"]


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


class PneumoDataModule(pl.LightningDataModule):
    """Train / val / test loaders of the paper's data preparation.

    Args:
        cfg: uses ``data``, ``data_kind``, ``skip_bad``, ``image_size``, ``protocol``,
            ``test_frac``, ``val_frac``, ``paper_augment``, ``online_aug``, ``batch_size``,
            ``num_workers``, ``seed``, ``progress`` and the ``phantom_*`` fields.
        source: a ready Source (tests, notebooks); None opens ``cfg.data`` or the phantom.
        cache_root: folder for arrays and splits (default ``paths.cache_dir()``).

    After :meth:`setup`: ``split`` (the table), ``split_path``, ``mean`` / ``std``,
    ``cache`` (:class:`~pneumolib.prep.cache.ImageCache`), ``source_info`` (kind, root,
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
            from pneumolib.data import open_source  # imported late: optional until a run needs it

            cfg = self.cfg
            path = cfg.data
            if path is None:
                from pneumolib.data.phantom import ensure_phantom

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
                            workers=cfg.num_workers, progress=cfg.progress and not paths.is_headless())
        split_dir = cache.folder / "splits"
        with file_lock(split_dir / ".prepare.lock"):
            split, split_path = load_or_make_split(cache.fingerprint, cache.has_pneumo,
                                                   cache.image_ids, cfg, split_dir)
            items_folder = split_dir / split_path.stem
            images, _ = materialize(cache, split, items_folder, progress=cfg.progress and not paths.is_headless())
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
                aug_seed=self.cfg.seed,
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
        ds = self.datasets[name]
        # the order is a function of (seed, epoch) and each process takes its share, so a
        # resumed run repeats the batches it would have seen (pneumolib.prep.samplers)
        sampler = TrainSampler(len(ds), seed=self.cfg.seed) if shuffle else EvalSampler(len(ds))
        return PneumoLoader(
            ds.deferred(),
            batch_size=int(self.cfg.batch_size),
            sampler=sampler,
            # training drops the ragged last batch: a batch of one item breaks batch norm
            # (ResNet's 1x1 deepest map at small sizes) and each epoch reshuffles anyway
            drop_last=shuffle and len(ds) > int(self.cfg.batch_size),
            num_workers=nw,
            collate_fn=collate_batch,
            # device_count() asks NVML, not the CUDA runtime: loaders built in a notebook
            # kernel leave CUDA uninitialised for the processes that train
            pin_memory=torch.cuda.device_count() > 0,
            persistent_workers=nw > 0,
            worker_init_fn=worker_init_fn,
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
