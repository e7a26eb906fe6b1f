"""imageio: every file format and mode of the real data decodes to grayscale [0, 1]."""

import numpy as np
import pytest
from dicom_utils import write_dicom
from PIL import Image

from pneumolib.data import imageio
from pneumolib.errors import DataError

Y, X = np.mgrid[:24, :32]
GRAD8 = (X * 7 + Y * 3).astype(np.uint8)  # (24, 32), values 0..240


def test_png_8bit_gray(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(GRAD8).save(p)
    g = imageio.read_gray(p)
    assert g.dtype == np.float32 and g.shape == (24, 32)
    np.testing.assert_allclose(g, GRAD8 / 255.0, atol=1e-6)
    assert imageio.read_size(p) == (24, 32) == imageio.probe(p)


def test_png_16bit_is_scaled_not_clipped(tmp_path):
    px = (X * 2000 + Y * 10).astype(np.uint16)  # up to 62,230: way above 255
    p = tmp_path / "b16.png"
    Image.fromarray(px).save(p)
    assert Image.open(p).mode.startswith("I")
    g = imageio.read_gray(p)
    np.testing.assert_allclose(g, px / 65535.0, atol=1e-6)
    assert len(np.unique(g)) == len(np.unique(px))  # nothing clipped to 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_modes_become_luminance(tmp_path, mode):
    rgb = np.stack([GRAD8, GRAD8, GRAD8], axis=-1)
    img = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray((X * 8).astype(np.uint8)))  # varying alpha is ignored
    elif mode == "P":
        img = Image.fromarray(GRAD8).convert("P")  # exact gray palette (RGB->P would dither)
    elif mode != "RGB":
        img = img.convert(mode)
    p = tmp_path / f"c_{mode}.png"
    img.save(p)
    assert Image.open(p).mode == mode
    np.testing.assert_allclose(imageio.read_gray(p), GRAD8 / 255.0, atol=1.5 / 255)


def test_rgb_luminance_weights(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    p = tmp_path / "red.png"
    Image.fromarray(rgb, "RGB").save(p)
    assert imageio.read_gray(p) == pytest.approx(np.full((4, 4), 76 / 255), abs=1 / 255)


@pytest.mark.parametrize("ext", [".jpg", ".JPEG"])
def test_jpeg(tmp_path, ext):
    p = tmp_path / f"d{ext}"
    Image.fromarray(GRAD8).save(p, format="JPEG", quality=95)
    g = imageio.read_gray(p)
    assert g.shape == (24, 32) and g.dtype == np.float32
    assert np.abs(g - GRAD8 / 255.0).mean() < 3 / 255


def test_mask_rgb_with_stray_values(tmp_path):
    truth = np.zeros((24, 32), bool)
    truth[5:15, 3:9] = True
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[truth] = (255, 255, 255)
    rgb[truth & (X % 3 == 0)] = (254, 250, 253)  # stray values from a lossy editor
    p = tmp_path / "m.png"
    Image.fromarray(rgb, "RGB").save(p)
    m = imageio.read_mask(p)
    assert m.dtype == bool
    np.testing.assert_array_equal(m, truth)
    gray = tmp_path / "g.png"
    Image.fromarray(truth.astype(np.uint8) * 255).save(gray)
    np.testing.assert_array_equal(imageio.read_mask(gray), truth)


def test_hidden_junk_and_image_file():
    assert imageio.is_hidden_junk("a/b/._1.2.dcm") and imageio.is_hidden_junk(".DS_Store")
    assert not imageio.is_hidden_junk("a/.b/1.dcm")
    assert imageio.is_image_file("X.PNG") and imageio.is_image_file("x.Dcm")
    assert not imageio.is_image_file("._x.png") and not imageio.is_image_file("x.csv")


# -- failures: DataError naming the file, never a bare library traceback ----------------
def _assert_data_error(path, fn=imageio.read_gray, match=None):
    with pytest.raises(DataError, match=match) as err:
        fn(path)
    assert str(path) in str(err.value)
    return str(err.value)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert "0 bytes" in _assert_data_error(p)
    _assert_data_error(p, imageio.read_mask)
    _assert_data_error(p, imageio.probe)


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    p = tmp_path / "trunc.png"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated" in _assert_data_error(p)
    _assert_data_error(p, imageio.read_mask)
    _assert_data_error(p, imageio.probe)  # the header alone is fine: probe checks IEND


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("not an image\n")
    assert "not a readable image" in _assert_data_error(p)


def test_unknown_extension_and_missing(tmp_path):
    p = tmp_path / "scan.tif"
    p.write_bytes(b"II*\0")
    assert "unsupported file type '.tif'" in _assert_data_error(p)
    assert "does not exist" in _assert_data_error(tmp_path / "nope.png")


def test_bad_dicom(tmp_path):
    p = tmp_path / "x.dcm"
    p.write_bytes(b"\0" * 300)
    assert "not a DICOM" in _assert_data_error(p)


# -- DICOM ---------------------------------------------------------------------------------
def test_jpeg_compressed_dicom_like_siim(tmp_path):
    import pydicom

    uid = "1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027"
    p = write_dicom(tmp_path / "s" / "t" / f"{uid}.dcm", GRAD8, jpeg=True)
    ds = pydicom.dcmread(p, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.SOPInstanceUID == uid and ds.PhotometricInterpretation == "MONOCHROME2"
    g = imageio.read_gray(p)
    assert g.shape == (24, 32) and g.dtype == np.float32
    assert np.abs(g - GRAD8 / 255.0).mean() < 3 / 255
    assert imageio.read_size(p) == (24, 32)


def test_missing_jpeg_plugin_names_file_and_fix(tmp_path, monkeypatch):
    import pydicom.dataset

    p = write_dicom(tmp_path / "1.2.3.dcm", GRAD8, jpeg=True)

    def no_plugin(self):
        raise RuntimeError("Unable to decompress 'JPEG Baseline' pixel data because all "
                           "plugins are missing dependencies")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_plugin))
    monkeypatch.setattr(imageio, "_decoder_available", lambda ts: False)
    msg = _assert_data_error(p)
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in msg and "1.2.840.10008.1.2.4.50" in msg


def test_monochrome1_is_inverted(tmp_path):
    p = write_dicom(tmp_path / "1.2.4.dcm", GRAD8, photometric="MONOCHROME1")
    np.testing.assert_allclose(imageio.read_gray(p), 1.0 - GRAD8 / 255.0, atol=1e-6)


def test_16bit_dicom_windowed_not_clipped(tmp_path):
    px = (X * 40 + Y * 10 + 1000).astype(np.uint16)  # 1000..2470 of 12 stored bits
    p = write_dicom(tmp_path / "1.2.5.dcm", px, bits_stored=12)
    g = imageio.read_gray(p)
    assert g.dtype == np.float32 and g.min() == 0.0 and g.max() == 1.0
    np.testing.assert_allclose(g, (px - 1000.0) / (px.max() - 1000.0), atol=1e-6)
    assert len(np.unique(g)) == len(np.unique(px))


def test_dicom_rescale_slope_intercept_applied(tmp_path):
    px = (X * 100).astype(np.uint16)
    # A negative slope reverses the order: rescale must happen before the windowing.
    p = write_dicom(tmp_path / "1.2.6.dcm", px, slope=-1.0, intercept=5000.0)
    np.testing.assert_allclose(imageio.read_gray(p), 1.0 - px / px.max(), atol=1e-6)


def test_dicom_mask_and_truncated_dicom(tmp_path):
    truth = (X > 10) & (Y < 5)
    p = write_dicom(tmp_path / "1.2.7.dcm", truth.astype(np.uint8) * 255)
    np.testing.assert_array_equal(imageio.read_mask(p), truth)
    bad = tmp_path / "1.2.8.dcm"
    bad.write_bytes(p.read_bytes()[:-100])
    assert "cannot be decoded" in _assert_data_error(bad)
