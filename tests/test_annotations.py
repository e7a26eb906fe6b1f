"""The real SIIM-ACR annotation table (from the torchxrayvision wheel) and the phantom-vs-real
comparison: counts and quantiles of DATA.md section 1, the interval arithmetic against the
plain RLE decoder, the KS / correlation measures, and the calibrated phantom."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from pneumolib.data import annotations as ann
from pneumolib.data import rle
from pneumolib.errors import DataError
from pneumolib.reporting import realism

_HAS_TABLE = importlib.util.find_spec("torchxrayvision") is not None
needs_table = pytest.mark.skipif(not _HAS_TABLE, reason="torchxrayvision (the real RLE table) not installed")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Statistics of the real table, cached in this module's tmp folder (about 3 s)."""
    cache = tmp_path_factory.mktemp("annotations-cache")
    old = os.environ.get("PNEUMO_CACHE")
    os.environ["PNEUMO_CACHE"] = str(cache)
    try:
        first = ann.stats()
        second = ann.stats()              # from the cache file
        yield first, second, cache
    finally:
        if old is None:
            os.environ.pop("PNEUMO_CACHE", None)
        else:
            os.environ["PNEUMO_CACHE"] = old


# -- the table ------------------------------------------------------------------------------
@needs_table
def test_table_reads_with_the_right_counts():
    t = ann.read_table()
    assert list(t.columns) == ["image_id", "rle"] and len(t) == 12954
    assert t["image_id"].nunique() == 12047
    assert not t["rle"].str.startswith(" ").any() and (t["rle"] == "-1").sum() > 0


@needs_table
def test_summary_matches_data_md(real, monkeypatch):
    s, _, cache = real
    monkeypatch.setenv("PNEUMO_CACHE", str(cache))
    out = ann.summary()
    assert out["rows"] == 12954 and out["images"] == 12047 and out["positives"] == 2669
    assert out["prevalence"] == pytest.approx(0.2215, abs=1e-4)
    assert out["multi_annotation"] == 624 and out["max_annotations"] == 10
    assert out["overlapping"] == 183
    assert out["area_px"] == {"min": 55, "p05": 1362, "p10": 2001, "median": 8630, "max": 161421}
    assert 0.09 < out["share_under_2000px"] < 0.11
    img = s.images
    assert len(img) == 12047 and img["has_pneumo"].sum() == 2669
    assert (img.loc[~img["has_pneumo"], "area_px"] == 0).all()
    assert img.loc[img["has_pneumo"], "n_annotations"].between(1, 10).all()
    assert (img.loc[~img["has_pneumo"], "n_annotations"] == 0).all()
    assert ((img["n_annotations"] >= 2) | ~img["overlap"]).all()    # overlap needs two rows


@needs_table
def test_cache_round_trips_and_heat_map_is_a_share(real):
    first, second, cache = real
    assert any(p.suffix == ".npz" for p in (cache / "annotations").iterdir())
    assert first.seconds > 0 and second.seconds == 0.0
    assert first.images.equals(second.images)
    assert np.array_equal(first.coverage, second.coverage)
    h = second.heatmap()
    assert h.shape == (64, 64) and h.dtype == np.float64
    assert 0.0 <= h.min() and h.max() <= 1.0 and h.max() > 0.05
    # mean coverage = mean area share; apical: the top third holds most of it
    assert h.mean() == pytest.approx(second.area_frac().mean(), rel=1e-9)
    assert h[:21].sum() > h[21:].sum()
    assert first.coverage.shape == (2669, 64, 64) and first.coverage.max() <= 256


@needs_table
def test_intervals_equal_decoding_and_block_averaging(real):
    """Union area, overlap and 64 x 64 coverage from merged runs == rle.decode at 1024 px."""
    s, _, _ = real
    table = ann.read_table()
    groups = table.groupby("image_id", sort=False)["rle"].apply(list)
    pos = s.positives
    pick = list(pos.index[pos["overlap"]][:12]) + list(pos.index[pos["n_annotations"] == 1][:12])
    for k in pick:
        row = pos.loc[k]
        rles = [r for r in groups[row["image_id"]] if r != "-1"]
        masks = [rle.decode(r, 1024, 1024) for r in rles]
        union = np.any(masks, axis=0)
        assert union.sum() == row["area_px"]
        assert (np.sum(masks, axis=0) > 1).any() == row["overlap"]
        block = union.reshape(64, 16, 64, 16).sum((1, 3))
        assert np.array_equal(block, s.coverage[k]), row["image_id"]
        assert np.allclose(ann.image_coverage(rles), block / 256.0)


def test_union_and_coverage_on_a_hand_made_case():
    # 8 x 8 mask, grid 2 (4 x 4 cells). Two annotations overlapping in one pixel.
    a = np.zeros((8, 8), bool)
    a[0:2, 0:3] = True
    b = np.zeros((8, 8), bool)
    b[1, 2] = True
    b[5:8, 6] = True
    rles = [rle.encode(a), rle.encode(b)]
    begins, ends, summed = ann.union_runs(rles, 8, 8)
    assert summed == 6 + 4 and int((ends - begins).sum()) == 9
    assert np.all(begins[1:] > ends[:-1])                       # merged: disjoint, sorted
    counts = ann.coverage_counts(begins, ends, 8, 8, grid=2)
    assert counts.tolist() == [[6, 0], [0, 3]]
    assert ann.coverage_counts(*ann.union_runs(["-1"], 8, 8)[:2], 8, 8, grid=2).sum() == 0
    with pytest.raises(DataError, match="runs past the end"):
        ann.union_runs(["60 10"], 8, 8)


def test_a_small_table_file_and_missing_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path / "cache"))
    m = np.zeros((1024, 1024), bool)
    m[100:110, 200:260] = True
    path = tmp_path / "train-rle.csv"
    path.write_text("ImageId, EncodedPixels\nA, -1\nB, " + rle.encode(m) + "\nB, " + rle.encode(m) + "\n")
    out = ann.summary(path)
    assert out["rows"] == 3 and out["images"] == 2 and out["positives"] == 1
    assert out["multi_annotation"] == 1 and out["overlapping"] == 1 and out["area_px"]["max"] == 600
    h = ann.heatmap(path)
    assert h.shape == (64, 64) and h.sum() == pytest.approx(600 / 256)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match="pip install torchxrayvision"):
        ann.table_path()


# -- the measures -----------------------------------------------------------------------------
def test_ks_and_correlation_on_synthetic_inputs():
    rng = np.random.default_rng(0)
    a = rng.lognormal(0, 1, 500)
    assert realism.ks_statistic(a, a) == 0.0
    assert realism.ks_statistic(a, a + 100.0) == 1.0
    assert 0.2 < realism.ks_statistic(a, a * 2.0) < 0.5
    h = rng.random((64, 64))
    assert realism.heatmap_correlation(h, h) == pytest.approx(1.0)
    assert realism.heatmap_correlation(h, 3 * h + 1) == pytest.approx(1.0)
    assert realism.heatmap_correlation(h, -h) == pytest.approx(-1.0)
    assert abs(realism.heatmap_correlation(h, rng.random((64, 64)))) < 0.1
    assert np.isnan(realism.heatmap_correlation(h, np.ones((64, 64))))
    m = np.zeros((256, 256), bool)
    m[:4, :8] = True
    d = realism.downsample(m)
    assert d.shape == (64, 64) and d[0, 0] == d[0, 1] == 1.0 and d.sum() == 2.0
    assert realism.downsample(np.ones((100, 100))).shape == (64, 64)


# -- the calibrated phantom -------------------------------------------------------------------
@needs_table
def test_phantom_matches_real_sizes_and_locations(real):
    """The issue's reference measurement (1,500 phantom images at 256 px, seed 7; about 3 s):
    corr >= 0.75 and KS <= 0.08 (HEAD before the calibration: 0.53 and 0.048)."""
    s, _, _ = real
    r = realism.compare_phantom(n=1500, size=256, seed=7, real=s)
    assert r["n_phantom"] == 330 and r["n_real"] == 2669
    assert r["heat_corr"] >= 0.75, r
    assert r["ks"] <= 0.08, r
    assert 0.006 < r["median_area_phantom"] < 0.0105
    assert 0.55 < r["left_share_phantom"] < 0.67         # the patient's right, as in SIIM


@needs_table
def test_comparison_table_for_the_notebook(real):
    s, _, _ = real
    out = realism.comparison_table(n=200, size=128, seed=1, real=s)
    t = out["table"]
    assert list(t.columns) == ["real", "phantom"]
    assert t.loc["images", "real"] == 12047 and t.loc["images", "phantom"] == 200
    assert t.loc["positives", "phantom"] == 44
    assert t.loc["mask area, share of image: median", "real"] == pytest.approx(8630 / 1024**2)
    for key in ("heat_real", "heat_phantom"):
        assert out[key].shape == (64, 64) and 0 <= out[key].min() and out[key].max() <= 1
    assert out["compare"]["heat_corr"] == t.loc["heat-map correlation (phantom vs real)", "phantom"]


def test_folder_stats_reads_a_written_phantom(tmp_path):
    from pneumolib.data import phantom

    root = phantom.write_phantom(tmp_path / "ph", n=20, size=64, seed=2, workers=1, progress=False)
    areas, heat = realism.folder_stats(root)
    ref_areas, ref_heat = realism.phantom_masks_stats(20, 64, 2)
    assert np.allclose(np.sort(areas), np.sort(ref_areas)) and np.allclose(heat, ref_heat)
