"""Build small DICOM files for tests, in the formats the real data uses (DATA.md section 3).

``write_dicom(path, pixels, jpeg=True)`` writes what the SIIM download holds: 8-bit
MONOCHROME2 pixels, JPEG Baseline compressed (transfer syntax 1.2.840.10008.1.2.4.50),
SOPInstanceUID = ImageId. Without ``jpeg`` it writes uncompressed Explicit VR Little
Endian data of any bit depth, optionally MONOCHROME1 or with a rescale.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def jpeg_bytes(pixels: np.ndarray, quality: int = 95) -> bytes:
    """Baseline JPEG of a ``(H, W)`` uint8 array, encoded by Pillow."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(
        buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_dicom(path: str | Path, pixels: np.ndarray, *, image_id: str | None = None,
                jpeg: bool = False, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None,
                slope: float | None = None, intercept: float | None = None) -> Path:
    """Write a single-frame grayscale DICOM.

    Args:
        path: output file; parent folders are created.
        pixels: ``(H, W)`` uint8 (or uint16 when not ``jpeg``).
        image_id: SOPInstanceUID; defaults to the file stem (as in the SIIM data).
        jpeg: JPEG Baseline compressed (8-bit only) instead of uncompressed.
        photometric: ``MONOCHROME2`` or ``MONOCHROME1``.
        bits_stored: defaults to the dtype's bit count.
        slope, intercept: RescaleSlope / RescaleIntercept, written when given.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(pixels)
    bits_alloc = 8 if pixels.dtype == np.uint8 else 16
    uid = image_id or path.stem
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientID = "test"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = bits_alloc
    ds.BitsStored = bits_stored or bits_alloc
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if jpeg:
        if bits_alloc != 8:
            raise ValueError("JPEG Baseline holds 8-bit data only")
        ds.PixelData = encapsulate([jpeg_bytes(pixels)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = pixels.astype("<u1" if bits_alloc == 8 else "<u2").tobytes()
        ds["PixelData"].VR = "OB" if bits_alloc == 8 else "OW"
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:
        ds.is_little_endian, ds.is_implicit_VR = True, False  # pydicom 2.x
        ds.save_as(path, write_like_original=False)
    return path


def write_apple_double(path: str | Path, size: int = 300) -> Path:
    """A macOS ``._<name>`` resource-fork file: AppleDouble magic, then filler."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\0" * (size - 24))
    return path
