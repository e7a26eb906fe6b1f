"""The phantom in the competition's ``siim-dicom`` layout (DATA.md section 3), and the one
DICOM encoder that the package and the tests share."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import dicom_utils
import numpy as np
import pydicom
import pytest
from conftest import run_pneumo

from pneumolib.config import get_config
from pneumolib.data import detect_kind, open_source, phantom
from pneumolib.data.phantom import dicom
from pneumolib.data.rle import decode
from pneumolib.errors import ConfigError, DataError

N, SIZE, SEED = 24, 128, 5
ROW = re.compile(r"^(1\.2\.276\.0\.7230010\.3\.1\.4\.8323329\.\d+\.\d+\.\d+), (-1|\d+(?: \d+)*)$")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same phantom in both layouts (the DICOM one with two junk files)."""
    base = tmp_path_factory.mktemp("phantom-layouts")
    dcm = phantom.write_phantom(base / "dcm", N, SIZE, seed=SEED, workers=1, progress=False,
                                layout="siim-dicom", junk=2)
    png = phantom.write_phantom(base / "png", N, SIZE, seed=SEED, workers=1, progress=False)
    return dcm, png


def _rows(root: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in (root / "train-rle.csv").read_text().splitlines()[1:]:
        m = ROW.match(line)
        assert m, line
        rows.setdefault(m.group(1), []).append(m.group(2))
    return rows


def test_layout_detection_counts_and_exact_masks(sets):
    dcm, png = sets
    assert sorted(p.name for p in dcm.iterdir()) == ["PHANTOM.json", "dicom-images-train", "train-rle.csv"]
    assert detect_kind(dcm) == "siim-dicom"
    with pytest.warns(UserWarning, match="ignored 2 junk file"):
        src = open_source(dcm)
    ref = open_source(png)
    assert src.kind == "siim-dicom" and len(src) == N
    assert sum(r.has_pneumo for r in src) == round(0.22 * N)
    # the junk: macOS '._' files of a few hundred bytes beside a DICOM, skipped and listed
    assert len(src.skipped) == 2
    for p, why in src.skipped:
        assert p.name.startswith("._") and "hidden" in why and 200 <= p.stat().st_size < 600
        assert (p.parent / p.name[2:]).is_file()
    assert dcm / "PHANTOM.json" in src.files()
    marker = phantom.read_marker(dcm)
    assert marker["layout"] == "siim-dicom" and marker["junk"] == 2 and phantom.is_complete(dcm)
    by_id = {r.image_id: k for k, r in enumerate(ref)}
    assert sorted(by_id) == [r.image_id for r in src]
    errs = []
    for k, rec in enumerate(src):
        j = by_id[rec.image_id]
        assert rec.has_pneumo == ref[j].has_pneumo
        # the mask goes through RLE: exact; the image through JPEG: close
        np.testing.assert_array_equal(src.read_mask(k), ref.read_mask(j))
        assert src.read_mask(k).any() == bool(rec.has_pneumo)
        errs.append(np.abs(src.read_image(k) - ref.read_image(j)) * 255)
    errs = np.stack(errs)
    assert errs.mean() < 3 and np.percentile(errs, 99.9) < 16, (errs.mean(), errs.max())


def test_dicom_files_are_jpeg_baseline_nested_with_siim_uids(sets):
    dcm, _ = sets
    files = sorted(p for p in (dcm / "dicom-images-train").rglob("*.dcm") if not p.name.startswith("._"))
    assert len(files) == N
    for p in files:
        rel = p.relative_to(dcm).parts
        assert len(rel) == 4                                  # dicom-images-train/study/series/x.dcm
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        assert ds.SOPInstanceUID == p.stem == ds.file_meta.MediaStorageSOPInstanceUID
        assert (rel[1], rel[2]) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert ds.StudyInstanceUID.startswith("1.2.276.0.7230010.3.1.2.8323329.")
        assert ds.SeriesInstanceUID.startswith("1.2.276.0.7230010.3.1.3.8323329.")
        assert (ds.PhotometricInterpretation, ds.BitsAllocated, ds.SamplesPerPixel) == ("MONOCHROME2", 8, 1)
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE) and ds.ViewPosition in ("PA", "AP")
    raw = files[0].read_bytes()
    assert b"\xff\xd8\xff" in raw                             # an encapsulated JPEG stream
    # deterministic: same UIDs (and bytes) from the same seed and index
    again = phantom.plan(N, SEED)
    assert sorted(it.image_id for it in again) == [p.stem for p in files]


def test_rle_csv_has_the_real_files_quirks(sets):
    dcm, _ = sets
    text = (dcm / "train-rle.csv").read_text()
    assert text.startswith("ImageId, EncodedPixels\n")       # leading space in the header
    rows = _rows(dcm)                                         # every value has a leading space
    assert len(rows) == N
    assert sum(v == ["-1"] for v in rows.values()) == N - round(0.22 * N)
    multi = {k: v for k, v in rows.items() if len(v) > 1}
    assert len(multi) >= 2                                    # duplicate ImageIds
    assert json.loads((dcm / "PHANTOM.json").read_text())["n_rle_rows"] == sum(map(len, rows.values()))
    overlapping = disjoint = 0
    for rles in multi.values():
        parts = [decode(r, SIZE, SIZE) for r in rles]
        assert all(p.any() for p in parts) and "-1" not in rles
        area = sum(int(p.sum()) for p in parts)
        union = np.logical_or.reduce(parts)
        overlapping += area > union.sum()
        disjoint += area == union.sum()
    assert overlapping >= 1 and disjoint >= 1


def test_split_annotations_and_annotation_plan():
    mask = np.zeros((40, 30), bool)
    mask[5:35, 3:8] = True
    mask[30:35, 8:20] = True
    for k in (2, 3, 4):
        for overlap in (False, True):
            parts = dicom.split_annotations(mask, k, overlap)
            assert len(parts) == k and all(p.any() for p in parts)
            np.testing.assert_array_equal(np.logical_or.reduce(parts), mask)
            assert (sum(int(p.sum()) for p in parts) > mask.sum()) == overlap
    tiny = np.zeros((4, 4), bool)
    tiny[1, 1] = True
    assert len(dicom.split_annotations(tiny, 3, True)) == 1
    positive = [i % 4 == 0 for i in range(400)]
    plan = dicom.annotation_plan(positive, seed=1)
    assert plan == dicom.annotation_plan(positive, seed=1) and set(plan) <= set(range(0, 400, 4))
    assert len(plan) == round(dicom.MULTI_FRAC * 100) and all(2 <= k <= 4 for k, _ in plan.values())
    assert sum(o for _, o in plan.values()) == round(dicom.OVERLAP_FRAC * len(plan))
    assert dicom.annotation_plan([False] * 5) == {}
    assert dicom.siim_uids("1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090") == (
        "1.2.276.0.7230010.3.1.2.8323329.5597.1517875188.959089",
        "1.2.276.0.7230010.3.1.3.8323329.5597.1517875188.959088")


def test_reuse_refusal_atomicity_and_parallel_writes(tmp_path, render_fails_after):
    kw = dict(size=64, progress=False, layout="siim-dicom")
    a = phantom.write_phantom(tmp_path / "a", 16, workers=1, **kw)
    b = phantom.write_phantom(tmp_path / "b", 16, workers=2, **kw)
    fa = sorted(p.relative_to(a) for p in a.rglob("*.dcm"))
    assert fa == sorted(p.relative_to(b) for p in b.rglob("*.dcm")) and len(fa) == 16
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in fa)
    assert (a / "train-rle.csv").read_text() == (b / "train-rle.csv").read_text()
    stamp = (a / "PHANTOM.json").stat().st_mtime_ns
    phantom.write_phantom(a, 16, workers=1, **kw)                 # same parameters: untouched
    assert (a / "PHANTOM.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="overwrite=True"):       # same n, other layout
        phantom.write_phantom(a, 16, 64, workers=1, progress=False)
    next((a / "dicom-images-train").rglob("*.dcm")).unlink()
    assert not phantom.is_complete(a)
    with pytest.raises(ConfigError, match="layout"):
        phantom.write_phantom(tmp_path / "x", 4, 64, layout="dicom")
    with pytest.raises(ConfigError, match="junk"):
        phantom.write_phantom(tmp_path / "x", 4, 64, junk=2)
    render_fails_after(3)
    with pytest.raises(RuntimeError, match="disk on fire"):
        phantom.write_phantom(tmp_path / "c", 10, workers=1, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_ensure_phantom_still_writes_siim_png(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path))
    root = phantom.ensure_phantom(get_config("smoke", phantom_n=4, phantom_size=32))
    assert phantom.read_marker(root)["layout"] == "siim-png" and (root / "png_images").is_dir()


def test_cli_layout_option(tmp_path, pneumo_env):
    out = tmp_path / "dcm"
    p = run_pneumo(["data", "phantom", "--layout", "siim-dicom", "--junk", "1", "--out", str(out),
                    "--n", "8", "--size", "64", "--workers", "1"], pneumo_env, timeout=120)
    assert "siim-dicom layout" in p.stdout
    info = json.loads(run_pneumo(["data", "info", str(out)], pneumo_env, timeout=120).stdout)
    assert (info["kind"], info["images"], info["positive"], info["skipped"]) == ("siim-dicom", 8, 2, 1)
    from pneumolib.cli import parse_args

    assert parse_args(["data", "phantom", "--out", "x"]).layout == "siim-png"
    with pytest.raises(SystemExit):
        parse_args(["data", "phantom", "--out", "x", "--layout", "dicom"])


def test_tests_use_the_packages_dicom_encoder():
    assert dicom_utils.write_dicom is dicom.write_dicom
    assert dicom_utils.jpeg_bytes is dicom.jpeg_bytes
    assert dicom_utils.write_apple_double is dicom.write_apple_double
    source = Path(dicom_utils.__file__).read_text()
    assert "encapsulate" not in source and "def " not in source
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dicom.jpeg_bytes(np.zeros((8, 8), np.uint8))[:3] == b"\xff\xd8\xff"


@pytest.mark.slow
def test_smoke_training_runs_on_the_dicom_phantom(tmp_path, pneumo_env):
    data = phantom.write_phantom(tmp_path / "dcm", 32, 64, workers=1, progress=False,
                                 layout="siim-dicom", junk=1)
    out = tmp_path / "run"
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--data", str(data),
                "--out", str(out), "--set", "image_size=32"], pneumo_env, timeout=300)
    info = json.loads((out / "metrics.json").read_text())["data"]
    assert (info["kind"], info["n_images"], info["n_skipped"]) == ("siim-dicom", 32, 1)
