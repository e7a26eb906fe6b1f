"""Small drawing helpers: normalised coordinates to cv2's sub-pixel integers, curves, blur.

Geometry is described in normalised image coordinates ``(x, y)`` in [0, 1] (y down); a
canvas of ``S`` pixels maps ``x`` to pixel ``x * S - 0.5``. cv2 draws with 4 fractional
bits (``shift=4``), so curves keep sub-pixel precision at every size.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

SHIFT = 4
_ONE = 1 << SHIFT


def px(points: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) normalised points -> (N, 2) int32 fixed-point pixel coordinates for cv2."""
    p = np.asarray(points, dtype=np.float64) * size - 0.5
    return np.round(p * _ONE).astype(np.int32)


def polyline(canvas, points, value, width, size, closed=False):
    """Draw an open curve of ``width`` (normalised) onto ``canvas`` (float32, ``size`` px)."""
    t = max(1, int(round(width * size)))
    cv2.polylines(canvas, [px(points, size)], closed, float(value), t, cv2.LINE_8, SHIFT)


def polylines(canvas, curves, value, width, size):
    """Several curves of one width in a single cv2 call."""
    if len(curves):
        t = max(1, int(round(width * size)))
        cv2.polylines(canvas, [px(c, size) for c in curves], False, float(value), t, cv2.LINE_8, SHIFT)


def fill(canvas, points, value, size):
    """Fill a closed polygon (normalised points)."""
    cv2.fillPoly(canvas, [px(points, size)], float(value), cv2.LINE_8, SHIFT)


def ellipse(canvas, center, axes, angle_deg, value, size, thickness=-1):
    """Filled (or outlined, ``thickness`` normalised) ellipse."""
    c = tuple(int(v) for v in px(np.array([center]), size)[0])
    a = tuple(int(round(v * size * _ONE)) for v in axes)
    t = -1 if thickness < 0 else max(1, int(round(thickness * size)))
    cv2.ellipse(canvas, c, a, float(angle_deg), 0.0, 360.0, float(value), t, cv2.LINE_8, SHIFT)


@functools.lru_cache(maxsize=16)
def _bernstein(n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], 1)


def bezier(p0, p1, p2, p3, n=40) -> np.ndarray:
    """(n, 2) points of a cubic Bezier curve."""
    return _bernstein(n) @ np.array([p0, p1, p2, p3], dtype=np.float64)


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with sigma in pixels (no-op below 0.3 px)."""
    if sigma_px < 0.3:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)


def upscale(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a smooth coarse layer to ``size`` x ``size``."""
    if img.shape[0] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates (X, Y), each (n, n) float32."""
    v = ((np.arange(n, dtype=np.float32) + 0.5) / n).astype(np.float32)
    return np.meshgrid(v, v)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) float32 smooth noise of unit-ish std with about ``cells`` blobs a side."""
    cells = max(2, int(cells))
    z = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(z, (size, size), interpolation=cv2.INTER_CUBIC)
