"""open_source on every layout, built in tmp_path in the real formats (DATA.md sections 2, 3)."""

import os
import warnings

import numpy as np
import pytest
from dicom_utils import write_apple_double, write_dicom
from PIL import Image

from pneumolib.data import Record, Source, detect_kind, open_source
from pneumolib.data.rle import encode
from pneumolib.errors import ConfigError, DataError

H, W = 12, 16  # not square: a swapped height/width or a missing transpose shows up


# -- siim-png ------------------------------------------------------------------------------
def _png_mask(i):
    m = np.zeros((H, W), bool)
    m[1 + i % 3: 6 + i % 3, 2 + i: 5 + i] = True
    return m


def make_siim_png(root, n_train=4, n_test=2):
    """Kaggle layout: ``<n>_<split>_<has_pneumo>_.png`` in png_images/ and png_masks/."""
    (root / "png_images").mkdir(parents=True)
    (root / "png_masks").mkdir()
    rng = np.random.default_rng(0)
    n = 0
    for split, count in (("train", n_train), ("test", n_test)):
        lines = ["new_filename,ImageId,has_pneumo"]
        for _ in range(count):
            hp = n % 2
            name = f"{n}_{split}_{hp}_.png"
            Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(
                root / "png_images" / name)
            mask = _png_mask(n) if hp else np.zeros((H, W), bool)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "png_masks" / name)
            lines.append(f"{name},1.2.276.0.7230010.{n},{hp}")
            n += 1
        (root / f"stage_1_{split}_images.csv").write_text("\n".join(lines) + "\n")
    return root


def test_siim_png_end_to_end(tmp_path):
    root = make_siim_png(tmp_path / "siim")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean dataset opens without any warning
        src = open_source(root)
    assert isinstance(src, Source) and src.kind == "siim-png" and src.root == root.resolve()
    assert len(src) == 6 and src.has_masks() and src.skipped == []
    rec = src[1]
    assert isinstance(rec, Record)
    assert (rec.image_id, rec.has_pneumo, rec.split) == ("1.2.276.0.7230010.1", 1, "train")
    assert rec.image_path.name == "1_train_1_.png" and rec.mask_path.parent.name == "png_masks"
    assert [r.split for r in src] == ["train"] * 4 + ["test"] * 2
    assert len(src[2:4]) == 2
    img = src.read_image(1)
    assert img.shape == (H, W) and img.dtype == np.float32 and 0 <= img.min() <= img.max() <= 1
    mask = src.read_mask(1)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, _png_mask(1))
    assert not src.read_mask(0).any() and src.read_mask(0).shape == (H, W)


def test_fingerprint_tracks_files(tmp_path):
    root = make_siim_png(tmp_path / "siim")
    fp = open_source(root).fingerprint()
    assert len(fp) == 40 and open_source(root).fingerprint() == fp
    p = root / "png_masks" / "3_train_1_.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fp2 = open_source(root).fingerprint()
    assert fp2 != fp
    csv = root / "stage_1_test_images.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:2]) + "\n")  # a row removed
    with pytest.warns(UserWarning, match="1 image\\(s\\) have no row in the CSVs"):
        src = open_source(root)
    assert len(src) == 5 and src.fingerprint() not in (fp, fp2)


def test_phantom_marker_and_single_csv(tmp_path):
    root = make_siim_png(tmp_path / "ph")
    (root / "PHANTOM.json").write_text("{}")
    (root / "stage_1_test_images.csv").unlink()
    with pytest.warns(UserWarning, match="2 image\\(s\\) have no row"):
        src = open_source(root)
    assert src.kind == "phantom" and len(src) == 4 and detect_kind(root) == "phantom"
    assert root.resolve() / "PHANTOM.json" in src.files()
    with pytest.warns(UserWarning):
        assert open_source(root, kind="siim-png").kind == "siim-png"
    (root / "stage_1_train_images.csv").unlink()
    with pytest.raises(DataError, match="neither stage_1_train_images.csv nor"):
        open_source(root)


def test_truncated_image_read_and_skip(tmp_path):
    root = make_siim_png(tmp_path / "siim")
    bad = root / "png_images" / "2_train_0_.png"
    bad.write_bytes(bad.read_bytes()[:60])
    src = open_source(root)  # opening stays cheap: pixels are checked on read
    with pytest.raises(DataError, match="truncated") as err:
        src.read_image(2)
    assert str(bad) in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        src = open_source(root, skip_bad=True)
    assert len(src) == 5 and [p.name for p, _ in src.skipped] == [bad.name]


def test_mask_size_differs(tmp_path):
    root = make_siim_png(tmp_path / "siim")
    mask = root / "png_masks" / "1_train_1_.png"
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(mask)
    src = open_source(root)
    with pytest.raises(DataError, match="does not belong") as err:
        src.read_mask(1)
    assert str(mask) in str(err.value) and str(src[1].image_path) in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        src = open_source(root, skip_bad=True)
    assert len(src) == 5 and src.skipped[0][0] == mask.resolve()


def test_missing_mask_and_missing_image(tmp_path):
    root = make_siim_png(tmp_path / "siim")
    (root / "png_masks" / "3_train_1_.png").unlink()
    (root / "png_images" / "4_test_0_.png").unlink()
    with pytest.raises(DataError, match=r"3_train_1_\.png: mask file .* does not exist"):
        open_source(root)
    with pytest.warns(UserWarning, match="skipped 2 bad file"):
        src = open_source(root, skip_bad=True)
    assert len(src) == 4 and len(src.skipped) == 2
    assert {p.name for p, _ in src.skipped} == {"3_train_1_.png", "4_test_0_.png"}


def test_csv_without_expected_columns(tmp_path):
    root = make_siim_png(tmp_path / "siim")
    csv = root / "stage_1_train_images.csv"
    csv.write_text("filename,ImageId\n0_train_0_.png,1.2\n")
    with pytest.raises(DataError) as err:
        open_source(root)
    msg = str(err.value)
    assert str(csv.resolve()) in msg and "new_filename, has_pneumo" in msg
    assert "found columns: filename, ImageId" in msg


def test_name_disagrees_with_has_pneumo(tmp_path):
    root = make_siim_png(tmp_path / "siim")
    csv = root / "stage_1_train_images.csv"
    csv.write_text(csv.read_text().replace("1_train_1_.png,1.2.276.0.7230010.1,1",
                                           "1_train_1_.png,1.2.276.0.7230010.1,0"))
    with pytest.raises(DataError, match=r"1_train_1_\.png: the file name says has_pneumo=1 "
                                        r"but stage_1_train_images\.csv line 3"):
        open_source(root)


# -- detection and bad folders ---------------------------------------------------------------
def test_missing_path_empty_folder_wrong_layout(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the folder is empty") as err:
        open_source(tmp_path / "empty")
    assert "siim-png" in str(err.value) and "siim-dicom" in str(err.value)
    wrong = tmp_path / "wrong"
    (wrong / "labels").mkdir(parents=True)
    (wrong / "labels" / "data.csv").write_text("a,b\n")
    (wrong / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no known dataset layout; found 2 file\(s\)") as err:
        open_source(wrong)
    assert ".txt" in str(err.value) and "labels/" in str(err.value)
    with pytest.raises(DataError, match="neither a dataset folder nor an image file"):
        open_source(wrong / "notes.txt")
    with pytest.raises(ConfigError, match="valid kinds"):
        open_source(wrong, kind="kaggle")
    with pytest.raises(DataError, match="no png_images/ folder"):
        open_source(wrong, kind="siim-png")


# -- siim-dicom ------------------------------------------------------------------------------
IDS = ["1.2.276.0.7230010.3.1.4.1", "1.2.276.0.7230010.3.1.4.2", "1.2.276.0.7230010.3.1.4.3",
       "1.2.276.0.7230010.3.1.4.4"]


def _rect(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


A, B = _rect(2, 6, 3, 8), _rect(4, 9, 6, 12)  # two overlapping annotations of IDS[0]
C = _rect(0, 3, 0, W)  # touches the first pixel


def _rle_rows():
    return [(IDS[0], encode(A)), (IDS[1], "-1"), (IDS[0], encode(B)), (IDS[2], encode(C)),
            ("1.2.276.0.7230010.3.1.4.999", "0 5")]  # no DICOM for the last one


def make_siim_dicom(root, header=True, bom=False):
    """Competition layout: JPEG DICOMs two levels deep, junk beside them, train-rle.csv."""
    rng = np.random.default_rng(1)
    for k, iid in enumerate(IDS):  # IDS[3] has no RLE row
        folder = root / "dicom-images-train" / f"1.2.{k}" / f"1.3.{k}"
        write_dicom(folder / f"{iid}.dcm", rng.integers(0, 256, (H, W), dtype=np.uint8),
                    jpeg=True)
    write_apple_double(root / "dicom-images-train" / "1.2.0" / "1.3.0" / f"._{IDS[0]}.dcm")
    lines = ["ImageId, EncodedPixels"] if header else []
    lines += [f"{iid}, {rle}" for iid, rle in _rle_rows()]  # leading space as in the real file
    (root / "train-rle.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"")
                                         + ("\n".join(lines) + "\n").encode())
    return root


@pytest.mark.parametrize("header, bom", [(True, False), (False, True)])
def test_siim_dicom_end_to_end(tmp_path, header, bom):
    root = make_siim_dicom(tmp_path / "siim-dcm", header=header, bom=bom)
    with pytest.warns(UserWarning) as rec:
        src = open_source(root)
    text = " | ".join(str(w.message) for w in rec)
    assert "1 ImageId(s) have RLE rows but no usable DICOM" in text
    assert "1 DICOM(s) have no row" in text and "1 junk file" in text
    assert src.kind == "siim-dicom" and detect_kind(root) == "siim-dicom" and src.has_masks()
    assert [r.image_id for r in src] == IDS[:3]  # IDS[3] has no RLE row: label unknown
    assert [r.has_pneumo for r in src] == [1, 0, 1]
    assert [r.split for r in src] == ["train"] * 3
    assert all(r.mask_path is None for r in src)
    skipped = {p.name: why for p, why in src.skipped}
    assert set(skipped) == {f"._{IDS[0]}.dcm", f"{IDS[3]}.dcm"}
    assert "hidden" in skipped[f"._{IDS[0]}.dcm"] and "no row" in skipped[f"{IDS[3]}.dcm"]
    img = src.read_image(0)
    assert img.shape == (H, W) and img.dtype == np.float32
    np.testing.assert_array_equal(src.read_mask(0), A | B)  # duplicates are unioned
    assert not src.read_mask(1).any() and src.read_mask(1).shape == (H, W)
    np.testing.assert_array_equal(src.read_mask(2), C)
    assert src.annotations(1) == ["-1"] and len(src.annotations(0)) == 2


def test_siim_dicom_variants_agree(tmp_path):
    a = make_siim_dicom(tmp_path / "a")
    b = make_siim_dicom(tmp_path / "b", header=False, bom=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sa, sb = open_source(a), open_source(b)
    assert [(r.image_id, r.has_pneumo) for r in sa] == [(r.image_id, r.has_pneumo) for r in sb]
    assert sa.fingerprint() != sb.fingerprint()


def test_siim_dicom_bad_inputs(tmp_path):
    root = make_siim_dicom(tmp_path / "d")
    csv = root / "train-rle.csv"
    good_csv = csv.read_text()
    csv.write_text("ImageId,Pixels\nx,-1\n")
    with pytest.raises(DataError, match="missing column.*EncodedPixels; found columns: "
                                        "ImageId, Pixels"):
        open_source(root)
    csv.write_text(good_csv + f"{IDS[3]}, 1 2 x\n")
    with pytest.raises(DataError, match=f"line 7 \\(ImageId {IDS[3]}\\)"):
        open_source(root)
    csv.write_text(good_csv + "1.2.9,-1\n")
    corrupt = root / "dicom-images-train" / "bad" / "1.2.9.dcm"
    corrupt.parent.mkdir()
    corrupt.write_text("this is not a dicom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = open_source(root)
    i = [r.image_id for r in src].index("1.2.9")
    with pytest.raises(DataError, match="not a DICOM") as err:
        src.read_image(i)
    assert str(corrupt.resolve()) in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*(have no row|RLE rows but no usable DICOM|junk file)")
            src = open_source(root, skip_bad=True)
    assert "1.2.9" not in [r.image_id for r in src]
    assert corrupt.resolve() in [p for p, _ in src.skipped]


def test_rle_csv_without_dicoms_or_labels(tmp_path):
    (tmp_path / "train-rle.csv").write_text("ImageId, EncodedPixels\n1.2, -1\n")
    with pytest.raises(DataError, match="train-rle.csv but no .dcm file"):
        open_source(tmp_path)
    write_dicom(tmp_path / "test" / "1.3.dcm", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="none of the 1 DICOM"):
        open_source(tmp_path)
    assert open_source(tmp_path / "test").kind == "images"


# -- images ----------------------------------------------------------------------------------
def test_images_folder_file_and_list(tmp_path):
    root = tmp_path / "covid"
    (root / "images" / "sub").mkdir(parents=True)
    Image.fromarray(np.full((8, 9, 3), 100, np.uint8), "RGB").save(root / "images" / "a.JPG")
    Image.fromarray(np.full((8, 9, 4), 200, np.uint8), "RGBA").save(
        root / "images" / "sub" / "b.png")
    write_dicom(root / "images" / "c.DCM", np.zeros((5, 6), np.uint8), image_id="1.2.3")
    (root / "metadata.csv").write_text("filename,finding\n")
    (root / "images" / ".DS_Store").write_bytes(b"\0" * 10)
    with pytest.warns(UserWarning, match="2 junk file"):
        src = open_source(root)
    assert src.kind == "images" and not src.has_masks()
    assert [r.image_id for r in src] == ["images/a", "images/c", "images/sub/b"]
    assert all(r.has_pneumo == -1 and r.split is None and r.mask_path is None for r in src)
    assert src.read_image(2).shape == (8, 9) and src.read_image(1).shape == (5, 6)
    with pytest.raises(DataError, match="has no masks"):
        src.read_mask(0)
    one = open_source(root / "images" / "a.JPG")
    assert one.kind == "images" and len(one) == 1 and one[0].image_id == "a"
    lst = open_source([root / "images" / "a.JPG", root / "images" / "sub" / "b.png"])
    assert [r.image_id for r in lst] == ["a", "sub/b"]


def test_images_bad_file_and_skip(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "good.png")
    with pytest.raises(DataError, match="ok.png: file is empty"):
        open_source(tmp_path)
    (tmp_path / "ok.png").write_text("not an image")
    src = open_source(tmp_path)
    with pytest.raises(DataError, match="ok.png: not a readable image"):
        src.read_image([r.image_id for r in src].index("ok"))
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        src = open_source(tmp_path, skip_bad=True)
    assert [r.image_id for r in src] == ["good"] and src.skipped[0][0].name == "ok.png"


def test_subfolder_of_labelled_dataset_warns(tmp_path):
    root = make_siim_png(tmp_path / "siim")
    with pytest.warns(UserWarning, match="looks like a labelled dataset"):
        src = open_source(root / "png_images")
    assert src.kind == "images"
