"""pneumolib.prep.augment and pneumolib.seeding: resizing, flip, rotation, normalisation, seeds."""

import random

import numpy as np
import pytest
import torch

from pneumolib.errors import DataError
from pneumolib.prep import augment as prep
from pneumolib.seeding import rng_for, seed_everything


def _img(n=64, seed=0):
    return np.random.default_rng(seed).random((n, n), dtype=np.float32)


def test_to_uint8_and_to_float_roundtrip():
    u = np.arange(256, dtype=np.uint8).reshape(16, 16)
    f = prep.to_float(u)
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0
    assert np.array_equal(prep.to_uint8(f), u)
    assert prep.to_uint8(np.array([[-0.5, 1.5]])).tolist() == [[0, 255]]
    with pytest.raises(DataError):
        prep.to_float(np.zeros((2, 2), np.uint16))


def test_resize_image_area_average_and_dtypes():
    img = _img(64)
    out = prep.resize_image(img, 32)
    assert out.shape == (32, 32) and out.dtype == np.float32
    # INTER_AREA at an exact factor 2 is the mean of each 2x2 block
    blocks = img.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    assert np.allclose(out, blocks, atol=1e-6)
    # uint8 input gives the same as its float version
    u = prep.to_uint8(img)
    assert np.allclose(prep.resize_image(u, 32), prep.resize_image(prep.to_float(u), 32), atol=1e-6)
    # enlarging works, same size copies, range kept
    up = prep.resize_image(img, 96)
    assert up.shape == (96, 96) and 0.0 <= up.min() and up.max() <= 1.0
    same = prep.resize_image(img, 64)
    assert np.array_equal(same, img) and same is not img
    with pytest.raises(DataError, match="2-D"):
        prep.resize_image(np.zeros((4, 4, 3)), 2)


def test_resize_mask_nearest_bool():
    m = np.zeros((64, 64), bool)
    m[8:24, 40:56] = True
    out = prep.resize_mask(m, 32)
    assert out.dtype == np.bool_ and out.shape == (32, 32)
    assert out[4:12, 20:28].all() and out.sum() == 64  # a 16x16 block -> 8x8, aligned
    assert prep.resize_mask((m * 255).astype(np.uint8), 32).sum() == 64
    assert prep.resize_mask(m, 128).sum() == m.sum() * 4


def test_hflip():
    a = np.arange(12).reshape(3, 4)
    assert np.array_equal(prep.hflip(a), np.fliplr(a))
    stack = np.stack([a, a + 1])
    assert np.array_equal(prep.hflip(stack)[1], np.fliplr(a + 1))
    assert prep.hflip(a).flags.c_contiguous


def test_rotate_image_and_mask():
    img = prep.to_uint8(_img(64))
    assert np.array_equal(prep.rotate(img, 0.0, is_mask=False), img)
    r = prep.rotate(img, 5.0, is_mask=False)
    assert r.dtype == np.uint8 and r.shape == img.shape
    assert r[0, 0] == 0 and r[-1, -1] == 0  # black fill in the corners
    rf = prep.rotate(prep.to_float(img), -5.0, is_mask=False)
    assert rf.dtype == np.float32
    # 90 degrees counter-clockwise about the centre is np.rot90 exactly
    assert np.array_equal(prep.rotate(img, 90.0, is_mask=False), np.rot90(img))
    m = np.zeros((64, 64), bool)
    m[20:40, 10:30] = True
    rm = prep.rotate(m, 7.0, is_mask=True)
    assert rm.dtype == np.bool_ and abs(int(rm.sum()) - 400) < 40
    rm8 = prep.rotate(m.astype(np.uint8), 7.0, is_mask=True)
    assert rm8.dtype == np.uint8 and set(np.unique(rm8)) <= {0, 1}
    assert np.array_equal(rm8.astype(bool), rm)


def test_paper_angle_range_and_both_signs():
    rng = np.random.default_rng(0)
    a = np.array([prep.paper_angle(rng) for _ in range(2000)])
    assert ((np.abs(a) >= 3) & (np.abs(a) <= 7)).all()
    assert 0.4 < (a > 0).mean() < 0.6
    assert abs(np.abs(a).mean() - 5.0) < 0.1


def test_normalization_stats_exact_and_chunked():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 256, size=(7, 33, 35), dtype=np.uint8)
    ref = u.astype(np.float64) / 255
    mean, std = prep.normalization_stats(u, chunk_pixels=1000)  # forces many chunks
    assert mean == pytest.approx(ref.mean(), abs=1e-12)
    assert std == pytest.approx(ref.std(), abs=1e-12)
    # iterable of single images, and floats, give the same
    assert prep.normalization_stats(list(u)) == pytest.approx((mean, std), abs=1e-12)
    assert prep.normalization_stats(iter(ref.astype(np.float32))) == pytest.approx(
        (mean, std), abs=1e-6)
    with pytest.raises(DataError):
        prep.normalization_stats([])


def test_normalization_stats_on_memmap(tmp_path):
    rng = np.random.default_rng(2)
    mm = np.memmap(tmp_path / "a.u8", np.uint8, "w+", shape=(5, 16, 16))
    mm[:] = rng.integers(0, 256, size=mm.shape)
    ref = np.asarray(mm, np.float64) / 255
    assert prep.normalization_stats(mm, chunk_pixels=300) == pytest.approx(
        (ref.mean(), ref.std()), abs=1e-12)


def test_seed_everything_and_rng_for():
    seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    x = rng_for(3, "split", "angles").random(4)
    assert np.array_equal(x, rng_for(3, "split", "angles").random(4))
    assert not np.array_equal(x, rng_for(3, "split", "other").random(4))
    assert not np.array_equal(x, rng_for(4, "split", "angles").random(4))
