"""pneumolib.prep.cache, pneumolib.prep.transforms and pneumolib.prep.datamodule on a small fake Source.

The fake Source implements the contract of ``pneumolib.data.Source`` (records, read_image,
read_mask, fingerprint, kind, root) over PNG files it writes itself, and counts reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pneumolib.config import Config
from pneumolib.errors import DataError
from pneumolib.prep.augment import hflip, normalization_stats, resize_image, resize_mask, rotate, to_uint8
from pneumolib.prep.cache import ImageCache, build_cache, cache_folder
from pneumolib.prep.datamodule import PneumoDataModule
from pneumolib.prep.items import materialize
from pneumolib.prep.splits import make_split
from pneumolib.prep.transforms import train_transform

NATIVE = 96


@dataclass(frozen=True)
class FakeRecord:
    image_id: str
    has_pneumo: int
    split: str | None
    image_path: Path
    mask_path: Path | None


class FakeSource:
    """PNG images + masks in ``root/images`` and ``root/masks``; counts read_image calls."""

    kind = "fake"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.skipped: list = []
        self.records = []
        for p in sorted((self.root / "images").glob("*.png")):
            stem = p.stem  # <id>_<has_pneumo>
            image_id, label = stem.rsplit("_", 1)
            self.records.append(FakeRecord(image_id, int(label), None, p,
                                           self.root / "masks" / p.name))
        self.reads = 0

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def read_image(self, i: int) -> np.ndarray:
        self.reads += 1
        a = cv2.imread(str(self.records[i].image_path), cv2.IMREAD_UNCHANGED)
        if a is None:
            raise DataError(f"cannot decode {self.records[i].image_path}")
        return a.astype(np.float32) / 255

    def read_mask(self, i: int) -> np.ndarray:
        return cv2.imread(str(self.records[i].mask_path), cv2.IMREAD_UNCHANGED) > 0

    def has_masks(self) -> bool:
        return True

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in sorted(self.root.rglob("*.png")):
            st = p.stat()
            h.update(f"{p.relative_to(self.root)}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def write_fake(root: Path, n: int, prevalence: float = 0.3, seed: int = 0, start: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:NATIVE, 0:NATIVE]
    for i in range(start, start + n):
        pos = int(rng.random() < prevalence)
        img = (rng.random((NATIVE, NATIVE)) * 120 + 60 + 40 * np.sin(xx / 9.0 + i)).clip(0, 255)
        mask = np.zeros((NATIVE, NATIVE), np.uint8)
        if pos:
            cx, cy = rng.integers(15, NATIVE - 15, size=2)
            mask[(xx - cx) ** 2 / 100 + (yy - cy) ** 2 / 30 < 1] = 255
        cv2.imwrite(str(root / "images" / f"img{i:04d}_{pos}.png"), img.astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"img{i:04d}_{pos}.png"), mask)
    return root


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return write_fake(tmp_path_factory.mktemp("fake"), 40)


# -- cache -------------------------------------------------------------------------------
def test_build_cache_content_and_reuse_without_reads(fake_root, tmp_path):
    src = FakeSource(fake_root)
    cache = build_cache(src, 32, root=tmp_path, workers=1, progress=False)
    assert src.reads == 40
    assert cache.n == 40 and cache.size == 32 and cache.kind == "fake"
    assert cache.images.shape == (40, 32, 32) and cache.images.dtype == np.uint8
    assert not cache.images.flags.writeable
    assert set(np.unique(cache.masks)) <= {0, 1}
    i = 3
    assert np.array_equal(cache.images[i], to_uint8(resize_image(src.read_image(i), 32)))
    assert np.array_equal(cache.masks[i].astype(bool), resize_mask(src.read_mask(i), 32))
    assert cache.image_ids == [r.image_id for r in src.records]
    assert list(cache.has_pneumo) == [r.has_pneumo for r in src.records]
    assert (cache.mask_pixels[cache.has_pneumo == 1] > 0).all()
    meta = json.loads((cache.folder / "meta.json").read_text())
    assert {"kind", "root", "fingerprint", "size", "n", "image_ids", "has_pneumo"} <= set(meta)
    assert cache.folder == cache_folder(src, 32, tmp_path)

    again = FakeSource(fake_root)
    cache2 = build_cache(again, 32, root=tmp_path, workers=1, progress=False)
    assert again.reads == 0 and cache2.folder == cache.folder
    # another size is another cache
    assert build_cache(again, 16, root=tmp_path, workers=1, progress=False).folder != cache.folder
    # the cache pickles without its arrays and reopens them
    import pickle

    blob = pickle.dumps(cache)
    assert len(blob) < 20_000
    assert np.array_equal(pickle.loads(blob).images[5], cache.images[5])


def test_cache_rebuilt_when_a_file_changes_or_is_added(tmp_path):
    root = write_fake(tmp_path / "data", 20, seed=1)
    cache = build_cache(FakeSource(root), 32, root=tmp_path / "c", workers=1, progress=False)
    before = np.array(cache.images[0])
    # modify one image
    p = sorted((root / "images").glob("*.png"))[0]
    cv2.imwrite(str(p), np.full((NATIVE, NATIVE), 255, np.uint8))
    src = FakeSource(root)
    cache = build_cache(src, 32, root=tmp_path / "c", workers=1, progress=False)
    assert src.reads == 20 and (cache.images[0] == 255).all() and not (before == 255).all()
    # add one image
    write_fake(root, 1, seed=2, start=100)
    src = FakeSource(root)
    cache = build_cache(src, 32, root=tmp_path / "c", workers=1, progress=False)
    assert src.reads == 21 and cache.n == 21
    # no temporary or old folders left behind
    assert sorted(x.name for x in (tmp_path / "c").iterdir() if not x.name.endswith(".lock")) == [
        cache.folder.name]


def test_parallel_build_equals_serial(fake_root, tmp_path):
    serial = build_cache(FakeSource(fake_root), 32, root=tmp_path / "a", workers=1, progress=False)
    par = build_cache(FakeSource(fake_root), 32, root=tmp_path / "b", workers=2, progress=False)
    assert np.array_equal(serial.images, par.images) and np.array_equal(serial.masks, par.masks)
    assert list(serial.mask_pixels) == list(par.mask_pixels)


class BrokenSource(FakeSource):
    def read_image(self, i):
        if i == 7:
            raise OSError("truncated file")
        return super().read_image(i)


def test_failed_build_leaves_nothing_trusted(fake_root, tmp_path):
    with pytest.raises(DataError, match=r"img0007"):
        build_cache(BrokenSource(fake_root), 32, root=tmp_path, workers=1, progress=False)
    assert [x for x in tmp_path.iterdir() if not x.name.endswith(".lock")] == []
    with pytest.raises(DataError, match=r"img0007"):
        build_cache(BrokenSource(fake_root), 32, root=tmp_path, workers=2, progress=False)
    assert [x for x in tmp_path.iterdir() if not x.name.endswith(".lock")] == []
    # a folder without meta.json (a crash before the end) is not trusted: rebuilt
    folder = cache_folder(FakeSource(fake_root), 32, tmp_path)
    folder.mkdir()
    (folder / "images.u8").write_bytes(b"\0" * 10)
    with pytest.raises(DataError):
        ImageCache.open(folder)
    src = FakeSource(fake_root)
    assert build_cache(src, 32, root=tmp_path, workers=1, progress=False).n == 40
    assert src.reads == 40


def test_materialize_flip_rot_and_reuse(fake_root, tmp_path):
    cache = build_cache(FakeSource(fake_root), 32, root=tmp_path, workers=1, progress=False)
    split = make_split(cache.has_pneumo, cache.image_ids, "paper", 0, 0.2, 0.1)
    images, masks = materialize(cache, split, tmp_path / "items")
    assert images.shape == (len(split), 32, 32) and masks.shape == images.shape
    for row in split.itertuples():
        base_i, base_m = cache.images[row.src], cache.masks[row.src]
        if row.aug == "orig":
            assert np.array_equal(images[row.item], base_i)
        elif row.aug == "flip":
            assert np.array_equal(images[row.item], np.fliplr(base_i))
            assert np.array_equal(masks[row.item], np.fliplr(base_m))
        else:
            assert np.array_equal(images[row.item], rotate(base_i, row.angle, is_mask=False))
            assert np.array_equal(masks[row.item], rotate(base_m, row.angle, is_mask=True))
    assert set(np.unique(masks)) <= {0, 1}
    mtime = (tmp_path / "items" / "images.u8").stat().st_mtime_ns
    materialize(cache, split, tmp_path / "items")
    assert (tmp_path / "items" / "images.u8").stat().st_mtime_ns == mtime
    # another split in the same folder replaces the items
    other = make_split(cache.has_pneumo, cache.image_ids, "clean", 0, 0.2, 0.1)
    images2, _ = materialize(cache, other, tmp_path / "items")
    assert images2.shape[0] == len(other)
    assert np.array_equal(hflip(cache.images[0]), np.fliplr(cache.images[0]))


# -- transforms --------------------------------------------------------------------------
def test_seeded_online_transform_is_reproducible():
    cfg = Config(seed=11, online_aug=True)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    mask = (rng.random((64, 64)) > 0.7).astype(np.uint8)
    outs = []
    for _ in range(2):
        t = train_transform(cfg)
        outs.append([t(image=img, mask=mask) for _ in range(5)])
    for a, b in zip(*outs):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
        assert a["image"].dtype == np.uint8 and set(np.unique(a["mask"])) <= {0, 1}
    assert any(not np.array_equal(o["image"], img) for o in outs[0])
    assert train_transform(cfg.replace(online_aug=False)) is None


# -- datamodule --------------------------------------------------------------------------
def _cfg(**kw):
    base = dict(image_size=32, batch_size=8, num_workers=0, progress=False, test_frac=0.2,
                val_frac=0.2, seed=3, online_aug=False, protocol="paper")
    base.update(kw)
    return Config(**base)


def test_datamodule_batches_stats_and_reuse(fake_root, tmp_path):
    src = FakeSource(fake_root)
    dm = PneumoDataModule(_cfg(), source=src, cache_root=tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.source_info["kind"] == "fake" and dm.source_info["n_images"] == 40
    assert dm.leakage()["leaked_sources"] > 0  # paper protocol
    split = dm.split
    assert dm.split_table().loc["total", "total"] == len(split)
    # stats on the train items only (the materialised ones, flips and rotations included)
    images, _ = materialize(dm.cache, split, dm.items_folder)
    train_rows = np.flatnonzero(split["split"] == "train")
    assert (dm.mean, dm.std) == pytest.approx(normalization_stats(images[train_rows]), abs=1e-12)
    assert (dm.mean, dm.std) != pytest.approx(normalization_stats(images), abs=1e-9)
    stats = json.loads(dm.split_path.with_name(dm.split_path.stem + "-stats.json").read_text())
    assert stats["mean"] == dm.mean
    # batches
    seen = []
    for batch in dm.train_dataloader():
        b = batch["image"].shape[0]
        assert batch["image"].shape == (b, 1, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape == (b, 1, 32, 32) and batch["mask"].dtype == torch.float32
        assert set(torch.unique(batch["mask"]).tolist()) <= {0.0, 1.0}
        assert batch["index"].dtype == torch.int64
        idx = batch["index"].numpy()
        raw = images[idx].astype(np.float32) / 255
        assert torch.allclose(batch["image"][:, 0], torch.from_numpy((raw - dm.mean) / dm.std),
                              atol=1e-5)
        seen += idx.tolist()
    # every train item at most once; only the ragged last batch is dropped (batch norm)
    assert len(set(seen)) == len(seen) and set(seen) <= set(train_rows.tolist())
    assert 0 <= len(train_rows) - len(seen) < dm.cfg.batch_size
    val, test = dm.eval_dataloaders()
    test_idx = np.concatenate([b["index"].numpy() for b in test])
    assert (split.loc[test_idx, "split"] == "test").all()
    assert len(np.concatenate([b["index"].numpy() for b in val])) == (split["split"] == "val").sum()
    # single-item and direct batch access give floats too; the loaders' workers ship uint8
    item = dm.datasets["val"][0]
    assert item["image"].shape == (1, 32, 32) and item["index"].ndim == 0
    direct = dm.datasets["train"].__getitems__([1, 0])
    assert direct["image"].dtype == torch.float32 and direct["index"].tolist() == sorted(
        train_rows[[0, 1]].tolist())
    raw = dm.train_dataloader().dataset.__getitems__([1, 0])
    assert raw["image"].dtype == torch.uint8
    assert torch.equal(dm.datasets["train"].finish_batch(raw)["image"], direct["image"])
    # setup is idempotent; a fresh module reuses everything without reading an image
    dm.setup("fit")
    src2 = FakeSource(fake_root)
    dm2 = PneumoDataModule(_cfg(), source=src2, cache_root=tmp_path)
    dm2.setup()
    assert src2.reads == 0 and dm2.split.equals(split) and (dm2.mean, dm2.std) == (dm.mean, dm.std)


def test_datamodule_clean_shuffle_seeded_and_online_aug(fake_root, tmp_path):
    cfg = _cfg(protocol="clean", online_aug=True)
    dm = PneumoDataModule(cfg, source=FakeSource(fake_root), cache_root=tmp_path)
    dm.setup()
    assert dm.leakage()["leaked_sources"] == 0
    assert (dm.split.loc[dm.split["aug"] != "orig", "split"] == "train").all()
    assert dm.datasets["train"].transform is not None and dm.datasets["val"].transform is None

    def run(module):
        return [(b["index"].tolist(), b["image"].sum().item()) for b in module.train_dataloader()]

    first = run(dm)
    dm_b = PneumoDataModule(cfg, source=FakeSource(fake_root), cache_root=tmp_path)
    dm_b.setup()
    assert run(dm_b) == first  # same seed: same order, same augmentation
    for b in dm.train_dataloader():
        assert set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0}


def test_datamodule_with_workers(fake_root, tmp_path):
    dm = PneumoDataModule(_cfg(num_workers=2, online_aug=True), source=FakeSource(fake_root),
                          cache_root=tmp_path)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    idx = np.concatenate([b["index"].numpy() for b in loader]).tolist()
    train_rows = np.flatnonzero(dm.split["split"] == "train").tolist()
    assert len(set(idx)) == len(idx) and set(idx) <= set(train_rows)
    assert 0 <= len(train_rows) - len(idx) < dm.cfg.batch_size


def test_datamodule_opens_source_from_config(fake_root, tmp_path, monkeypatch):
    """With no source given, the module calls pneumolib.data.open_source(cfg.data, ...)."""
    import sys
    import types

    calls = []
    fake_data = types.ModuleType("pneumolib.data")

    def open_source(path, kind=None, skip_bad=False):
        calls.append((path, kind, skip_bad))
        return FakeSource(Path(path))

    fake_data.open_source = open_source
    monkeypatch.setitem(sys.modules, "pneumolib.data", fake_data)
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path))
    dm = PneumoDataModule(_cfg(data=str(fake_root), data_kind="siim-png", skip_bad=True))
    dm.setup()
    assert calls == [(str(fake_root), "siim-png", True)]
    assert dm.cache.folder.is_relative_to(tmp_path / "arrays")
    assert os.path.exists(dm.split_path)
