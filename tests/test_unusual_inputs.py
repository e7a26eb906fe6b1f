"""Unusual but valid input through the `images` source and the resize step."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pneumolib.data import open_source
from pneumolib.prep.augment import resize_image


def test_very_large_16bit_image_reads_and_resizes(tmp_path):
    h, w = 4608, 3840  # a large detector, 16-bit, non-square
    ramp = np.linspace(0, 65535, w, dtype=np.float64)[None, :].repeat(h, 0).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "big.png")
    src = open_source(tmp_path, kind="images")
    img = src.read_image(0)
    assert img.shape == (h, w) and img.dtype == np.float32
    assert img.min() == 0.0 and img.max() == 1.0  # scaled by 65535, not clipped at 255
    small = resize_image(img, 512)
    assert small.shape == (512, 512) and 0.0 <= small.min() and small.max() <= 1.0
    assert abs(float(small[:, 0].mean()) - 0.0) < 0.01 and abs(float(small[:, -1].mean()) - 1.0) < 0.01


def test_mixed_modes_in_one_folder(tmp_path):
    gray = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(64, 48)
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.jpg", quality=98)
    Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 7)])).save(tmp_path / "rgba.png")
    src = open_source(tmp_path, kind="images")
    assert len(src) == 3
    imgs = {r.image_path.name: src.read_image(i) for i, r in enumerate(src.records)}
    ref = gray.astype(np.float32) / 255
    assert np.abs(imgs["l.png"] - ref).max() < 1e-6
    assert np.abs(imgs["rgba.png"] - ref).max() < 1 / 255 + 1e-6  # alpha ignored, grey kept
    assert np.abs(imgs["rgb.jpg"] - ref).mean() < 4 / 255
