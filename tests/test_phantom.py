"""The phantom: deterministic pictures, SIIM-like masks, and the exact siim-png layout."""

from __future__ import annotations

import csv
import json
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from pneumolib.config import get_config
from pneumolib.data import phantom
from pneumolib.data.phantom import jobs, knobs
from pneumolib.errors import ConfigError, DataError

NAME = re.compile(r"^(\d+)_(train|test)_([01])_\.png$")


def _detail(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Fine detail: |image - its blur| (vessel markings, noise)."""
    f = img.astype(np.float32)
    return np.abs(f - cv2.GaussianBlur(f, (0, 0), sigma))


# -- render ------------------------------------------------------------------------------
def test_render_is_deterministic_per_seed_and_index():
    a = phantom.render(3, 7, 128, 1.0)
    b = phantom.render(3, 7, 128, 1.0)
    assert a[0].dtype == np.uint8 and a[0].shape == (128, 128)
    assert a[1].dtype == bool and a[1].shape == (128, 128)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], phantom.render(3, 8, 128, 1.0)[0])
    assert not np.array_equal(a[0], phantom.render(4, 7, 128, 1.0)[0])


def test_masks_are_nonempty_inside_the_lung_for_positives_and_empty_for_negatives():
    for i in range(16):
        img, mask, meta = phantom.render(i, 0, 128, 1.0, positive=True, layers=True)
        assert meta["positive"] and mask.any(), i
        lung = cv2.dilate(meta["lung"].astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert not (mask & ~lung).any(), f"image {i}: mask leaves the lung"
        assert meta["side"] in ("left", "right") and meta["location"] in ("apical", "apicolateral", "lateral", "basal")
        _, neg, meta = phantom.render(i, 0, 128, 1.0, positive=False)
        assert not neg.any() and not meta["positive"] and meta["area_frac"] == 0.0


def test_area_distribution_follows_siim():
    areas = np.array([phantom.render(i, 1, 256, 1.0, positive=True)[1].mean() for i in range(200)])
    median = np.median(areas)
    assert knobs.AREA_MEDIAN / 2 < median < knobs.AREA_MEDIAN * 2, median
    # SIIM: 5th percentile 0.13 %, 10 % of positives under 0.19 %, a long tail above 3 %
    assert 0.0004 < np.percentile(areas, 5) < 0.004
    assert 0.005 < (areas < 2001 / 1024**2).mean() < 0.3
    assert areas.max() > 0.03


def test_pneumothorax_is_darker_than_the_lung_beside_it():
    diffs, vs_no_ptx = [], []
    for i in range(12):
        img, mask, meta = phantom.render(i, 5, 256, 1.0, positive=True, layers=True)
        plain, _, _ = phantom.render(i, 5, 256, 1.0, positive=False)
        m = mask.astype(np.uint8)
        ring = (cv2.dilate(m, np.ones((25, 25), np.uint8)) > 0) & ~(cv2.dilate(m, np.ones((7, 7), np.uint8)) > 0)
        ring &= meta["lung"]
        if ring.sum() < 20:
            continue
        diffs.append(img[mask].mean() - img[ring].mean())
        vs_no_ptx.append(img[mask].mean() - plain[mask].mean())
    diffs, vs_no_ptx = np.array(diffs), np.array(vs_no_ptx)
    assert len(diffs) >= 8
    assert diffs.mean() < -10 and (diffs < 0).mean() >= 0.75, diffs
    assert (vs_no_ptx < 0).all(), vs_no_ptx


def _large_crescents(difficulty: float, want: int = 8):
    """(positive, same patient without pneumothorax, deep core of the mask, lung ring)."""
    out = []
    for i in range(200):
        img, mask, meta = phantom.render(i, 5, 256, difficulty, positive=True, layers=True)
        if meta["area_frac"] < 0.01:
            continue
        m = mask.astype(np.uint8)
        core = cv2.erode(m, np.ones((9, 9), np.uint8)) > 0
        lung_in = cv2.erode(meta["lung"].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        ring = (cv2.dilate(m, np.ones((31, 31), np.uint8)) > 0) & ~(cv2.dilate(m, np.ones((9, 9), np.uint8)) > 0) & lung_in
        if core.sum() >= 20 and ring.sum() >= 50:
            out.append((img, phantom.render(i, 5, 256, difficulty, positive=False)[0], core, ring))
        if len(out) == want:
            break
    assert len(out) == want
    return out


def test_pneumothorax_is_free_of_lung_markings():
    # at difficulty 0 (little noise) the fine detail is the vessel markings: far less inside
    ratios = [(_detail(img)[core].mean() / _detail(img)[ring].mean()) for img, _, core, ring in _large_crescents(0.0)]
    assert np.mean(ratios) < 0.8 and np.mean(np.array(ratios) < 1) >= 0.75, ratios
    # at the default difficulty: less detail than the same place without the pneumothorax
    ratios = [(_detail(img)[core].mean() / _detail(plain)[core].mean()) for img, plain, core, _ in _large_crescents(1.0)]
    assert np.mean(ratios) < 1.0 and np.mean(np.array(ratios) < 1) >= 0.75, ratios


def test_difficulty_knob():
    k0, k1, k2 = (knobs.for_difficulty(d) for d in (0.0, 1.0, 2.0))
    assert k0.ptx_darken > k1.ptx_darken > k2.ptx_darken
    assert k0.pleura_line > k1.pleura_line > k2.pleura_line
    assert k0.noise < k1.noise < k2.noise
    assert all(p == 0 for p in k0.confounder_p.values())
    assert all(k1.confounder_p[n] < k2.confounder_p[n] for n in k1.confounder_p)
    assert all(not phantom.render(i, 0, 64, 0.0)[2]["confounders"] for i in range(6))
    with pytest.raises(ConfigError, match="difficulty"):
        phantom.render(0, 0, 64, -1.0)


# -- plan and layout ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 16, 100, 2000])
def test_plan_has_exact_prevalence_a_stratified_test_split_and_unique_ids(n):
    items = phantom.plan(n, seed=0)
    assert sum(it.positive for it in items) == round(0.22 * n)
    n_test = sum(it.split == "test" for it in items)
    assert abs(n_test - n * 1372 / 12047) <= 1
    assert len({it.image_id for it in items}) == n
    assert all(it.image_id.startswith("1.2.276.0.7230010.3.1.4.8323329.") for it in items)
    for split in ("train", "test"):
        numbers = [it.number for it in items if it.split == split]
        assert numbers == list(range(len(numbers)))
    assert [it.positive for it in phantom.plan(n, seed=0)] == [it.positive for it in items]


def test_write_phantom_layout(tmp_path):
    out = phantom.write_phantom(tmp_path / "ph", n=16, size=128, seed=3, workers=1, progress=False)
    assert out == tmp_path / "ph"
    assert sorted(p.name for p in out.iterdir()) == [
        "PHANTOM.json", "png_images", "png_masks", "stage_1_test_images.csv", "stage_1_train_images.csv"]
    rows = []
    for split in ("train", "test"):
        with open(out / f"stage_1_{split}_images.csv", newline="") as fh:
            reader = csv.DictReader(fh)
            assert reader.fieldnames == ["new_filename", "ImageId", "has_pneumo"]
            for r in reader:
                m = NAME.match(r["new_filename"])
                assert m and m.group(2) == split and m.group(3) == r["has_pneumo"]
                rows.append(r)
    assert len(rows) == 16 and len({r["ImageId"] for r in rows}) == 16
    assert sorted(p.name for p in (out / "png_images").iterdir()) == sorted(r["new_filename"] for r in rows)
    assert sorted(p.name for p in (out / "png_masks").iterdir()) == sorted(r["new_filename"] for r in rows)
    assert sum(int(r["has_pneumo"]) for r in rows) == round(0.22 * 16)
    for r in rows:
        im = Image.open(out / "png_images" / r["new_filename"])
        mk = Image.open(out / "png_masks" / r["new_filename"])
        assert im.mode == "L" and mk.mode == "L" and im.size == mk.size == (128, 128)
        values = set(np.unique(np.asarray(mk)).tolist())
        assert values <= {0, 255} and ((255 in values) == (r["has_pneumo"] == "1"))
    marker = json.loads((out / "PHANTOM.json").read_text())
    assert marker["kind"] == "phantom" and marker["layout"] == "siim-png"
    for key, value in dict(n=16, size=128, seed=3, difficulty=1.0, prevalence=0.22, version=phantom.VERSION).items():
        assert marker[key] == value
    assert phantom.read_marker(out) == marker and phantom.is_complete(out, n=16)
    # the files are exactly render()'s output
    first = next(r for r in rows if r["has_pneumo"] == "1")
    index = int(first["ImageId"].split(".")[-3]) - 1000
    img, mask, _ = phantom.render(index, 3, 128, 1.0, positive=True)
    assert np.array_equal(np.asarray(Image.open(out / "png_images" / first["new_filename"])), img)
    assert np.array_equal(cv2.imread(str(out / "png_masks" / first["new_filename"]), cv2.IMREAD_GRAYSCALE) > 0, mask)


def test_parallel_and_serial_writes_are_identical(tmp_path):
    a = phantom.write_phantom(tmp_path / "a", n=8, size=64, workers=1, progress=False)
    b = phantom.write_phantom(tmp_path / "b", n=8, size=64, workers=2, progress=False)
    for sub in ("png_images", "png_masks"):
        for p in (a / sub).iterdir():
            assert p.read_bytes() == (b / sub / p.name).read_bytes()
    assert (a / "stage_1_train_images.csv").read_text() == (b / "stage_1_train_images.csv").read_text()


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, render_fails_after):
    render_fails_after(3)
    with pytest.raises(RuntimeError, match="disk on fire"):
        phantom.write_phantom(tmp_path / "ph", n=10, size=64, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []        # no final folder, no partial sibling


def test_existing_folders_are_reused_or_refused(tmp_path):
    out = phantom.write_phantom(tmp_path / "ph", n=4, size=64, workers=1, progress=False)
    stamp = (out / "PHANTOM.json").stat().st_mtime_ns
    phantom.write_phantom(out, n=4, size=64, workers=1, progress=False)       # same: untouched
    assert (out / "PHANTOM.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="overwrite=True"):
        phantom.write_phantom(out, n=5, size=64, workers=1, progress=False)
    phantom.write_phantom(out, n=5, size=64, workers=1, progress=False, overwrite=True)
    assert phantom.read_marker(out)["n"] == 5 and len(list((out / "png_images").iterdir())) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ph"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="choose another folder"):
        phantom.write_phantom(user, n=4, size=64, workers=1, progress=False, overwrite=True)
    assert (user / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="n=0"):
        phantom.write_phantom(tmp_path / "x", n=0, size=64)


def test_ensure_phantom_caches_by_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path))
    cfg = get_config("smoke", phantom_n=6, phantom_size=64, phantom_difficulty=0.5, seed=123)
    root = phantom.ensure_phantom(cfg)
    assert root == tmp_path / "phantom" / f"n6-s64-d0.5-v{phantom.VERSION}"
    marker = phantom.read_marker(root)
    assert marker["seed"] == 0 and marker["n"] == 6 and marker["difficulty"] == 0.5
    stamp = (root / "PHANTOM.json").stat().st_mtime_ns
    assert phantom.ensure_phantom(cfg.replace(seed=7)) == root            # run seed: same data
    assert (root / "PHANTOM.json").stat().st_mtime_ns == stamp
    next((root / "png_masks").iterdir()).unlink()                        # damaged: rebuilt
    assert phantom.ensure_phantom(cfg) == root and phantom.is_complete(root)


def test_png_writer_round_trips():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    data = jobs.png_bytes(a)
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), a)
