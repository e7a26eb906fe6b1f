"""The paper's preparation (its section 3.2): resizing, flip, rotation, normalisation stats.

Images are 2-D grayscale arrays: ``float32`` in [0, 1] or ``uint8`` in [0, 255]; masks are
2-D ``bool`` (``uint8`` 0/1 accepted). Every function is pure and works on one image.

The paper rotated positives by a random +/-3..7 degrees "in both directions" with black
fill, flipped them horizontally, resized 1024 -> 512 and normalised with the training
set's global mean and standard deviation (the paper reports 0.4828 / 0.2488 for SIIM-ACR:
:data:`pneumolib.reporting.eda.PAPER_MEAN` / ``PAPER_STD``).
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from pneumolib.errors import DataError

__all__ = [
    "to_float",
    "to_uint8",
    "resize_image",
    "resize_mask",
    "hflip",
    "rotate",
    "paper_angle",
    "normalization_stats",
    "PAPER_ANGLE_RANGE",
]

#: The paper's rotation magnitude range in degrees (sign drawn separately).
PAPER_ANGLE_RANGE = (3.0, 7.0)

# INTER_NEAREST in OpenCV samples at the top-left of each destination pixel (a half-pixel
# shift); INTER_NEAREST_EXACT samples at the centre, like PIL, and keeps masks aligned.
_NEAREST = getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST)


def _check_2d(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise DataError(f"{what} must be a 2-D grayscale array, got shape {a.shape}")
    return a


def to_float(img: np.ndarray) -> np.ndarray:
    """Any grayscale image -> ``float32`` in [0, 1] (``uint8`` / 255, floats clipped)."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1 / 255)
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        raise DataError(
            f"to_float got integer dtype {a.dtype}; scale it to [0, 1] first "
            "(pneumolib.data.imageio does that for 16-bit files)"
        )
    return np.clip(a, 0.0, 1.0).astype(np.float32, copy=False)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """``float`` in [0, 1] -> ``uint8`` in [0, 255] (rounded, clipped); ``uint8`` unchanged."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    return np.clip(np.rint(np.asarray(a, np.float32) * 255.0), 0, 255).astype(np.uint8)


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a grayscale image to ``(size, size)``.

    Args:
        img: ``(H, W)`` ``uint8`` or float in [0, 1]. Non-square inputs are stretched (the
            SIIM images are all square, 1024 x 1024).
        size: output side in pixels.

    Returns:
        ``(size, size)`` ``float32`` in [0, 1]. Area interpolation when shrinking (the
        average of the covered pixels, no aliasing), bilinear when enlarging.
    """
    a = to_float(_check_2d(img, "image"))
    h, w = a.shape
    if (h, w) == (size, size):
        return a.copy()
    interp = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
    out = cv2.resize(a, (size, size), interpolation=interp)
    return np.clip(out, 0.0, 1.0, out=out)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a mask to ``(size, size)`` with nearest-neighbour sampling.

    Args:
        mask: ``(H, W)`` bool or integer (non-zero = pneumothorax).
        size: output side in pixels.

    Returns:
        ``(size, size)`` ``bool``.
    """
    m = _check_2d(mask, "mask")
    m8 = (m != 0).astype(np.uint8)
    if m8.shape == (size, size):
        return m8.astype(bool)
    return cv2.resize(m8, (size, size), interpolation=_NEAREST) > 0


def hflip(a: np.ndarray) -> np.ndarray:
    """Horizontal (left-right) flip of the last axis; works on ``(H, W)`` and ``(N, H, W)``."""
    return np.ascontiguousarray(np.asarray(a)[..., ::-1])


def rotate(a: np.ndarray, angle: float, is_mask: bool) -> np.ndarray:
    """Rotate an image or mask about its centre, filling the uncovered corners with 0.

    Args:
        a: ``(H, W)`` image (``uint8`` or float) or mask (``bool`` or integer 0/1).
        angle: degrees, positive = counter-clockwise (OpenCV's convention).
        is_mask: masks use nearest-neighbour sampling and come back re-binarised (values in
            {0, 1}, or ``bool``); images use bilinear interpolation.

    Returns:
        The rotated array, same shape and dtype as ``a``. Black fill (0), as in the paper.
    """
    a = _check_2d(a, "mask" if is_mask else "image")
    h, w = a.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle), 1.0)
    if is_mask:
        src = (a != 0).astype(np.uint8)
        out = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return (out > 0).astype(a.dtype)
    dtype = a.dtype
    src = a if dtype in (np.uint8, np.float32, np.float64) else a.astype(np.float32)
    out = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(dtype, copy=False)


def paper_angle(rng: np.random.Generator) -> float:
    """One rotation angle of the paper: U(3, 7) degrees with a random sign."""
    magnitude = rng.uniform(*PAPER_ANGLE_RANGE)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return float(sign * magnitude)


def normalization_stats(
    images: np.ndarray | Iterable[np.ndarray], chunk_pixels: int = 1 << 23
) -> tuple[float, float]:
    """Global mean and standard deviation of pixel values scaled to [0, 1].

    Args:
        images: an ``(N, H, W)`` array (a ``np.memmap`` is read a chunk at a time, so a
            15,000 x 512 x 512 set needs no RAM beyond one chunk) or an iterable of arrays
            of any shape (single images or stacks). ``uint8`` values are divided by 255;
            floats are taken as already in [0, 1].
        chunk_pixels: pixels read per step (8 Mi by default: 64 MiB once a float chunk is
            converted to float64).

    Returns:
        ``(mean, std)`` as Python floats; the population standard deviation (ddof=0), as
        the paper's "global mean and standard deviation". ``uint8`` input is counted
        exactly with a 256-bin histogram; floats accumulate in ``float64``.

    Raises:
        DataError: no pixels at all.
    """
    hist = np.zeros(256, dtype=np.int64)
    fsum = fsq = 0.0
    fcount = 0

    def chunks():
        if isinstance(images, np.ndarray):
            if images.ndim < 2:
                raise DataError(f"normalization_stats needs images, got shape {images.shape}")
            per = int(np.prod(images.shape[1:])) if images.ndim > 2 else images.size
            if images.ndim == 2:
                yield images
                return
            step = max(1, chunk_pixels // max(per, 1))
            for s in range(0, images.shape[0], step):
                yield images[s : s + step]
        else:
            yield from images

    for c in chunks():
        c = np.asarray(c)
        if c.dtype == np.uint8:
            flat = c.reshape(-1)
            for s in range(0, flat.size, chunk_pixels):
                hist += np.bincount(flat[s : s + chunk_pixels], minlength=256)
        else:
            flat = c.reshape(-1)
            for s in range(0, flat.size, chunk_pixels):
                part = flat[s : s + chunk_pixels].astype(np.float64)
                fsum += float(part.sum())
                fsq += float(np.dot(part, part))
                fcount += part.size
    v = np.arange(256, dtype=np.float64) / 255.0
    n = int(hist.sum()) + fcount
    if n == 0:
        raise DataError("normalization_stats got no pixels: is the training split empty?")
    total = float(hist @ v) + fsum
    total_sq = float(hist @ (v * v)) + fsq
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0)
    return float(mean), float(np.sqrt(var))
