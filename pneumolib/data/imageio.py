"""Decode any image file (PNG, JPEG, DICOM) to a grayscale ``float32`` array in [0, 1].

Rules (docs DATA.md sections 2, 3 and 6):

- PNG / JPEG: 8-bit data is divided by 255; 16-bit PNGs (mode ``I;16``) by 65535 (scaled,
  never clipped). Colour and palette images become luminance (ITU-R 601, as Pillow's
  ``convert("L")``); alpha is ignored. EXIF orientation is NOT applied: pixels are used
  as stored, so an image and its mask always line up.
- DICOM: RescaleSlope / RescaleIntercept are applied when present. Unsigned data of at most
  8 stored bits with no rescale is divided by ``2**BitsStored - 1`` (the SIIM files: / 255);
  anything else (12/16-bit, signed, rescaled) is min-max windowed to [0, 1], which keeps
  every value distinct instead of clipping. MONOCHROME1 (white = air) is inverted.
  JPEG-compressed files (SIIM: transfer syntax 1.2.840.10008.1.2.4.50) need a decoder
  plugin: ``pip install pylibjpeg pylibjpeg-libjpeg``.
- Masks are read as grayscale and binarised with ``> 0``, so an RGB mask or one with stray
  values still loads as a clean 0/1 mask.

Every failure (missing, empty, truncated, not an image, unknown extension) raises
:class:`~pneumolib.errors.DataError` naming the file and what to do.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pneumolib.errors import DataError

PIL_EXTS = (".png", ".jpg", ".jpeg")
DICOM_EXTS = (".dcm", ".dicom")
IMAGE_EXTS = PIL_EXTS + DICOM_EXTS
PLUGIN_HINT = "pip install pylibjpeg pylibjpeg-libjpeg"
_LUMA = np.array([0.299, 0.587, 0.114])


def is_hidden_junk(path: str | os.PathLike) -> bool:
    """True for hidden files, e.g. macOS ``._<name>.dcm`` resource forks or ``.DS_Store``."""
    return Path(path).name.startswith(".")


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a non-hidden file with a supported extension (case-insensitive)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTS and not is_hidden_junk(p)


def _format(path: Path) -> str:
    """``"pil"`` or ``"dicom"``; extension-less files are sniffed for the DICM marker."""
    ext = path.suffix.lower()
    if ext in PIL_EXTS:
        return "pil"
    if ext in DICOM_EXTS:
        return "dicom"
    if ext == "":
        with open(path, "rb") as f:
            head = f.read(132)
        if head[128:132] == b"DICM":
            return "dicom"
    raise DataError(
        f"{path}: unsupported file type {ext or '(no extension)'!r}; supported: "
        f"{', '.join(IMAGE_EXTS)}. Remove it from the folder or convert it."
    )


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file does not exist. Check the path (and the dataset download).")
    if not p.is_file():
        raise DataError(f"{p}: is a folder, not an image file.")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty (0 bytes), probably an interrupted download. "
                        "Re-download it, or delete it / pass skip_bad=True to skip it.")
    return p


def _bad(path: Path, what: str, err: BaseException) -> DataError:
    return DataError(
        f"{path}: {what} ({type(err).__name__}: {err}). The file is probably truncated or "
        "corrupt: re-download it, or delete it / pass skip_bad=True to skip it."
    )


# -- Pillow ----------------------------------------------------------------------------
def _open_pil(path: Path) -> Image.Image:
    """Open and fully decode (``load()`` catches truncation); the caller closes it."""
    try:
        img = Image.open(path)
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError...
        raise _bad(path, "not a readable image", e) from e
    try:
        img.load()
    except Exception as e:
        img.close()
        raise _bad(path, "image data cannot be decoded", e) from e
    return img


def _pil_gray(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16"):
        return (np.asarray(img).astype(np.float32) / 65535.0)
    if mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        lo_hi = (0.0, 65535.0) if mode == "I" else (0.0, 1.0)
        if a.size and lo_hi[0] <= a.min() and a.max() <= lo_hi[1]:
            return (a / lo_hi[1]).astype(np.float32)  # old Pillow opens 16-bit PNG as "I"
        return _minmax(a)
    if mode not in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB...: via RGB to luminance
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


# -- DICOM -----------------------------------------------------------------------------
def _read_dicom(path: Path, header_only: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except InvalidDicomError as e:
        raise DataError(
            f"{path}: not a DICOM file (no DICOM header / 'DICM' marker). If it is junk (e.g. "
            "a macOS '._' file), delete it or pass skip_bad=True to skip it."
        ) from e
    except Exception as e:
        raise _bad(path, "DICOM header cannot be read", e) from e


def _decoder_available(tsyntax) -> bool:
    """Whether an installed pydicom plugin can decode this transfer syntax."""
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3
    except ImportError:  # pydicom 2.x: let the decode attempt decide
        return True
    try:
        return bool(get_decoder(tsyntax).is_available)
    except Exception:
        return False


def _dicom_pixels(ds, path: Path) -> np.ndarray:
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM has no pixel data (not an image). Remove it from "
                        "the folder or pass skip_bad=True.")
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as e:
        if tsyntax is not None and tsyntax.is_compressed and not _decoder_available(tsyntax):
            raise DataError(
                f"{path}: pixel data is compressed ({tsyntax.name}, {tsyntax}) and no installed "
                f"plugin can decode it. Install one: {PLUGIN_HINT}"
            ) from e
        raise _bad(path, "DICOM pixel data cannot be decoded", e) from e
    if arr.ndim == 4 or (arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1):
        warnings.warn(f"{path}: multi-frame DICOM ({arr.shape[0]} frames); using frame 0")
        arr = arr[0]
    return arr


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _dicom_gray(ds, path: Path) -> np.ndarray:
    arr = _dicom_pixels(ds, path).astype(np.float64)
    if arr.ndim == 3:  # RGB / YBR (pydicom converts YBR to RGB): luminance
        arr = arr[..., :3] @ _LUMA
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    rescaled = slope != 1.0 or intercept != 0.0
    if rescaled:
        arr = arr * slope + intercept
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if bits <= 8 and not signed and not rescaled:
        out = (arr / float(2**bits - 1)).astype(np.float32)
    else:
        out = _minmax(arr)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 1.0 - out  # white = air: invert to the usual MONOCHROME2 look
    return out


# -- public ----------------------------------------------------------------------------
def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as grayscale.

    Args:
        path: a ``.png``, ``.jpg``/``.jpeg`` or ``.dcm`` file (extension case-insensitive;
            extension-less files are accepted when they carry the DICOM ``DICM`` marker).

    Returns:
        ``(H, W)`` float32 in [0, 1] at native size (rules in the module docstring).

    Raises:
        DataError: missing, empty, truncated or corrupt file, unsupported type, DICOM
            without pixel data, or compressed DICOM without a decoder plugin.
    """
    p = _check_file(path)
    if _format(p) == "dicom":
        return _dicom_gray(_read_dicom(p, header_only=False), p)
    img = _open_pil(p)
    try:
        return _pil_gray(img)
    finally:
        img.close()


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file: grayscale, then ``> 0``.

    Args:
        path: a PNG/JPEG (any mode: L, RGB, RGBA, P, 16-bit) or a DICOM (raw values).

    Returns:
        ``(H, W)`` bool, True on pneumothorax.

    Raises:
        DataError: as :func:`read_gray`.
    """
    p = _check_file(path)
    if _format(p) == "dicom":
        arr = _dicom_pixels(_read_dicom(p, header_only=False), p)
        return (arr.reshape(arr.shape[:2] + (-1,)) > 0).any(axis=-1)
    img = _open_pil(p)
    try:
        if img.mode.startswith("I") or img.mode == "F":
            return np.asarray(img) > 0
        if img.mode not in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa"):
            img = img.convert("RGB")
        return np.asarray(img.convert("L")) > 0
    finally:
        img.close()


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` from the file header only (DICOM: Rows/Columns); no pixel decoding.

    Raises:
        DataError: missing, empty or unreadable file, or a DICOM without Rows/Columns.
    """
    p = _check_file(path)
    if _format(p) == "dicom":
        ds = _read_dicom(p, header_only=True)
        if "Rows" not in ds or "Columns" not in ds:
            raise DataError(f"{p}: DICOM has no Rows/Columns (not an image). Remove it from "
                            "the folder or pass skip_bad=True.")
        return int(ds.Rows), int(ds.Columns)
    try:
        with Image.open(p) as img:
            w, h = img.size
    except Exception as e:
        raise _bad(p, "not a readable image", e) from e
    return h, w


def probe(path: str | os.PathLike) -> tuple[int, int]:
    """Cheap validity check: the header parses and a PNG/JPEG is not cut short.

    PNG files must end with their ``IEND`` chunk and JPEGs with the EOI marker; when they
    do not, the file is decoded in full to decide. DICOM files are checked by header only.

    Returns:
        ``(height, width)``.

    Raises:
        DataError: the file would fail in :func:`read_gray`.
    """
    p = Path(path)
    size = read_size(p)
    ext = p.suffix.lower()
    if ext in PIL_EXTS:
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - 64))
            tail = f.read()
        marker = b"IEND" if ext == ".png" else b"\xff\xd9"
        if marker not in tail:
            read_gray(p)
    return size
