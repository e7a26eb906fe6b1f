"""DICOM files like the SIIM-ACR download's (docs DATA.md section 3), and the phantom's
``siim-dicom`` layout.

Encoding (used by the phantom writer and by the tests, one copy):

- :func:`write_dicom` writes one single-frame grayscale DICOM. With ``jpeg=True`` it is
  what the SIIM download holds: 8-bit MONOCHROME2 pixels, JPEG Baseline compressed
  (transfer syntax 1.2.840.10008.1.2.4.50; Pillow encodes, ``pydicom.encaps``
  encapsulates), SOPInstanceUID = ImageId = file stem. Without ``jpeg`` it writes
  uncompressed Explicit VR Little Endian data of any bit depth, optionally MONOCHROME1
  or with a rescale (the "other DICOMs a user may feed in").
- :func:`write_apple_double` writes a macOS ``._<name>`` resource-fork file, the junk
  that real downloads carry beside the DICOMs.

Layout helpers for :func:`pneumolib.data.phantom.write_phantom` with ``layout="siim-dicom"``:
:func:`siim_uids` (study / series UIDs beside an ImageId), :func:`annotation_plan` (which
positive images get several ``train-rle.csv`` rows, and which of those overlap) and
:func:`split_annotations` (one mask into rows whose union is the mask).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_QUALITY = 95
APPLE_DOUBLE_MAGIC = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "

#: SIIM-ACR's share of positive images with 2 or more annotations, and the share of those
#: whose annotations overlap: ``multi_annotation / positives`` and ``overlapping /
#: multi_annotation`` of :func:`pneumolib.data.annotations.summary`
MULTI_FRAC = 624 / 2669
OVERLAP_FRAC = 183 / 624
#: annotations per multi-annotation image, and their weights (mostly two)
PIECES, PIECE_WEIGHTS = (2, 3, 4), (0.7, 0.2, 0.1)


# -- encoding ---------------------------------------------------------------------------
def jpeg_bytes(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG of a ``(H, W)`` uint8 array, encoded by Pillow."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(
        buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def write_dicom(path: str | Path, pixels: np.ndarray, *, image_id: str | None = None,
                jpeg: bool = False, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None,
                slope: float | None = None, intercept: float | None = None,
                study_uid: str | None = None, series_uid: str | None = None,
                quality: int = JPEG_QUALITY, attrs: dict | None = None) -> Path:
    """Write a single-frame grayscale DICOM.

    Args:
        path: output file; parent folders are created.
        pixels: ``(H, W)`` uint8 (or uint16 when not ``jpeg``).
        image_id: SOPInstanceUID; defaults to the file stem (as in the SIIM data).
        jpeg: JPEG Baseline compressed (8-bit only) instead of uncompressed.
        photometric: ``MONOCHROME2`` or ``MONOCHROME1``.
        bits_stored: defaults to the dtype's bit count.
        slope, intercept: RescaleSlope / RescaleIntercept, written when given.
        study_uid, series_uid: StudyInstanceUID / SeriesInstanceUID; fresh random UIDs
            when None.
        quality: JPEG quality (with ``jpeg``).
        attrs: further data elements by keyword, e.g. ``{"ViewPosition": "PA"}``.

    Returns:
        The path written.

    Raises:
        ValueError: ``jpeg`` with data that is not 8-bit.
        OSError: the file cannot be written.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(pixels)
    bits_alloc = 8 if pixels.dtype == np.uint8 else 16
    if jpeg and bits_alloc != 8:
        raise ValueError("JPEG Baseline holds 8-bit data only")
    uid = image_id or path.stem
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "CR"
    ds.PatientID = "test"
    for key, value in (attrs or {}).items():
        setattr(ds, key, value)
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
        ds.PixelData = encapsulate([jpeg_bytes(pixels, quality)])
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


def apple_double_bytes(size: int = 300) -> bytes:
    """A macOS AppleDouble (``._<name>``) file's bytes: the magic, then filler."""
    return APPLE_DOUBLE_MAGIC + b"\0" * max(0, int(size) - len(APPLE_DOUBLE_MAGIC))


def write_apple_double(path: str | Path, size: int = 300) -> Path:
    """Write a macOS ``._<name>`` resource-fork file of ``size`` bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(apple_double_bytes(size))
    return path


# -- the siim-dicom layout --------------------------------------------------------------
def siim_uids(image_id: str) -> tuple[str, str]:
    """``(study uid, series uid)`` for an ImageId, in the SIIM files' pattern.

    SIIM ImageIds look like ``1.2.276.0.7230010.3.1.4.8323329.<a>.<b>.<c>``; the study and
    series UIDs beside them swap the ``.3.1.4.`` for ``.3.1.2.`` / ``.3.1.3.`` and count
    the last field down by one / two. Any other ImageId gets ``.1`` / ``.2`` appended.
    """
    head, _, tail = image_id.rpartition(".")
    if ".3.1.4." in head and tail.isdigit() and int(tail) >= 2:
        return (head.replace(".3.1.4.", ".3.1.2.", 1) + f".{int(tail) - 1}",
                head.replace(".3.1.4.", ".3.1.3.", 1) + f".{int(tail) - 2}")
    return image_id + ".1", image_id + ".2"


def annotation_plan(positive: list[bool], seed: int = 0) -> dict[int, tuple[int, bool]]:
    """``{index: (pieces, overlap)}`` for the positives that get several RLE rows.

    About :data:`MULTI_FRAC` of the positives, but at least two when there are two (so a
    small set still has a multi-row image), split into 2 to 4 rows; about
    :data:`OVERLAP_FRAC` of those (at least one) have rows that overlap. Deterministic in
    ``(positive, seed)``.
    """
    pos = np.flatnonzero(np.asarray(positive, bool))
    if pos.size == 0:
        return {}
    rng = np.random.default_rng([int(seed), len(positive), 0xD1C0])
    n_multi = max(min(int(pos.size), 2), int(round(MULTI_FRAC * pos.size)))
    multi = np.sort(rng.choice(pos, n_multi, replace=False))
    n_overlap = max(1, int(round(OVERLAP_FRAC * n_multi)))
    overlap = set(rng.choice(multi, n_overlap, replace=False).tolist())
    pieces = rng.choice(PIECES, n_multi, p=PIECE_WEIGHTS)
    return {int(i): (int(k), int(i) in overlap) for i, k in zip(multi, pieces)}


def split_annotations(mask: np.ndarray, pieces: int, overlap: bool) -> list[np.ndarray]:
    """Cut a mask into ``pieces`` annotations along its long axis; their union is ``mask``.

    The foreground pixels are ordered along the mask's principal axis (a crescent: from one
    end to the other) and cut into ``pieces`` runs of equal pixel count. With ``overlap``
    each piece also takes the first quarter of the next one's pixels, so neighbours share
    pixels (as some of SIIM's multi-annotation images do: :data:`OVERLAP_FRAC`). A mask with
    fewer pixels than ``pieces`` gives fewer pieces (one pixel each; a single one is the
    mask itself).
    """
    mask = np.asarray(mask, bool)
    rows, cols = np.nonzero(mask)
    k = min(int(pieces), rows.size)
    if k < 2:
        return [mask.copy()]
    xy = np.stack([rows, cols], 1).astype(np.float64)
    xy -= xy.mean(0)
    _, vecs = np.linalg.eigh(xy.T @ xy)
    order = np.argsort(xy @ vecs[:, -1], kind="stable")
    bounds = np.arange(k + 1) * rows.size // k          # strictly increasing: k <= size
    extra = max(1, (rows.size // k) // 4) if overlap else 0
    out = []
    for j in range(k):
        hi = bounds[j + 1] if j == k - 1 else min(rows.size, bounds[j + 1] + extra)
        sel = order[bounds[j]:hi]
        part = np.zeros_like(mask)
        part[rows[sel], cols[sel]] = True
        out.append(part)
    return out


# -- the layout: where files go, and what is written once all images are -------------
#: The nested DICOM folder of the competition download and its annotation table.
DICOM_DIR = "dicom-images-train"


RLE_CSV = "train-rle.csv"


def dicom_rel(image_id: str) -> str:
    """``dicom-images-train/<study>/<series>/<ImageId>.dcm`` of an image."""
    study, series = siim_uids(image_id)
    return f"{DICOM_DIR}/{study}/{series}/{image_id}.dcm"


def finish_dicom(tmp: Path, items: list, rles: dict, params: dict) -> dict:
    """Write ``train-rle.csv`` (the real file's quirks) and the junk; the marker's extras.

    ``items`` are the writer's planned images (``index``, ``image_id``); ``rles`` maps an
    index to its ``train-rle.csv`` values."""
    lines = ["ImageId, EncodedPixels"]             # sic: leading space, as in the download
    for it in items:                               # an image's rows are adjacent
        lines += [f"{it.image_id}, {r}" for r in rles[it.index]]
    (tmp / RLE_CSV).write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng([params["seed"], params["n"], 0x0A11])
    junk = rng.choice(len(items), min(params["junk"], len(items)), replace=False)
    for i in sorted(junk.tolist()):
        it = items[i]
        target = tmp / dicom_rel(it.image_id)
        (target.parent / f"._{target.name}").write_bytes(apple_double_bytes(int(rng.integers(200, 600))))
    multi = [it.index for it in items if len(rles[it.index]) > 1]
    return {"n_train": len(items), "n_test": 0, "n_rle_rows": len(lines) - 1,
            "n_multi_annotation": len(multi), "transfer_syntax": JPEG_BASELINE,
            "jpeg_quality": JPEG_QUALITY}
