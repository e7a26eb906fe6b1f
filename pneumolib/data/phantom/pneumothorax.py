"""The pneumothorax: a crescent of pleural air between the chest wall and the lung edge.

The pleural surface the air may collect along is the lung's outer border from just medial
of the apex, over the apex, down the lateral wall to the costophrenic recess; ``l`` is the
arc length along it. The crescent is the band of lung within distance ``w(l)`` of that
surface, ``w(l) = w_max * sin(pi * t) ** q`` over a stretch of the surface (``t`` runs
0..1 along it): thin tips, widest in the middle, parallel to the chest wall. Its inner edge
is the retracted visceral pleura; a large one leaves the lung collapsed towards the hilum.

The area is drawn first (lognormal, matching SIIM-ACR; see :mod:`.knobs`), then the
stretch's length (longer for larger areas) and position (apical or lateral), and ``w_max``
is adjusted until the mask's pixel area matches. One lung holds at most about 10 % of the
image, so the rare draws above that (about 2 % of positives; SIIM's largest is 15 %) come
out as a near-total collapse of about 10 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import anatomy, draw, knobs


def sample_area(rng: np.random.Generator) -> float:
    """Pneumothorax area as a fraction of the image (SIIM-ACR's distribution)."""
    a = knobs.AREA_MEDIAN * np.exp(knobs.AREA_SIGMA * rng.standard_normal())
    return float(np.clip(a, knobs.AREA_MIN, knobs.AREA_MAX))


@dataclass
class Crescent:
    mask: np.ndarray      # (S, S) uint8 {0, 1}, pre-projection
    line: np.ndarray      # (S, S) float32 in [0, 1]: the visceral pleural line
    side: int             # -1: image left (the patient's right lung), +1: image right
    location: str         # apical | apicolateral | lateral
    target_px: float


def pleural_surface(p: anatomy.Patient, s: int) -> np.ndarray:
    """(N, 2) normalised image points of the surface, from medial of the apex downwards."""
    o = anatomy.outline(p, s)
    lat, dia, cap = o[:64], o[64:70], o[-8:]            # see anatomy.outline's order
    return anatomy.to_image(p, np.concatenate([cap, lat, dia]), s)


def sample_crescent(p: anatomy.Patient, rng: np.random.Generator, area: float,
                    lung: np.ndarray) -> Crescent:
    """A crescent of ``area`` (fraction of the pre-projection image) on one lung."""
    size = lung.shape[0]
    s = int(rng.choice(anatomy.SIDES))
    wall = pleural_surface(p, s)
    # work in the hemithorax's bounding box, in pixels
    o = anatomy.to_image(p, anatomy.outline(p, s), s)
    xa, y0 = np.floor(o.min(0) * size - 4).clip(0, size).astype(int)
    xb, y1 = np.ceil(o.max(0) * size + 4).clip(0, size).astype(int)
    box = (slice(y0, y1), slice(xa, xb))
    lung_b = lung[box] > 0.5
    # distance to the surface, and which point of it is nearest
    canvas = np.full(lung_b.shape, 255, np.uint8)
    pts = draw.px(wall, size) - np.array([xa, y0]) * (1 << draw.SHIFT)
    cv2.polylines(canvas, [pts], False, 0, 1, cv2.LINE_8, draw.SHIFT)
    dist, lab = cv2.distanceTransformWithLabels(canvas, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    zy, zx = np.nonzero(canvas == 0)
    dense = _resample(wall * size - 0.5 - np.array([xa, y0]), 0.5)
    ell = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(dense, axis=0).T))])
    near = np.argmin((zx[:, None] - dense[None, :, 0]) ** 2 + (zy[:, None] - dense[None, :, 1]) ** 2, 1)
    lmap = ell[near][lab - 1]                          # arc length (px) of the nearest point
    total = ell[-1]

    # stretch: longer for larger pneumothoraces; apical or lateral
    length = float(np.clip(0.1 * (area / 0.0013) ** 0.6 * rng.uniform(0.7, 1.3) * size, 12, total))
    apex = float(ell[near][np.argmin(zy)]) if len(zy) else 0.15 * total
    if rng.random() < 0.55:
        mid = apex + rng.uniform(-0.05, 0.25) * length + rng.uniform(0.0, 0.06) * size
    else:
        mid = apex + rng.uniform(0.15, 0.75) * (total - apex)
    mid = float(np.clip(mid, length / 2, total - length / 2))
    q = rng.uniform(0.35, 1.0)
    t = (lmap - (mid - length / 2)) / length
    prof = np.where((t > 0) & (t < 1), np.sin(np.pi * np.clip(t, 0, 1)) ** q, 0.0)
    target = area * size * size
    w = max(1.5, target / (length * 0.75))
    for _ in range(6):                                 # match the pixel area
        got = np.count_nonzero((dist < w * prof) & lung_b)
        if got == 0:
            w *= 2.0
            continue
        w_new = w * (target / got) ** 0.9
        if abs(w_new - w) < 0.05:
            break
        w = max(1.5, w_new)
    band = (dist < w * prof) & lung_b
    band = (cv2.GaussianBlur(band.astype(np.float32), (0, 0), 1.0 * size / 512 + 0.3) > 0.5) & lung_b
    if not band.any():
        band = (dist < w * prof) & lung_b
    mask = np.zeros((size, size), np.uint8)
    mask[box] = band
    # the visceral pleura: lung pixels touching the band, where the band is a pixel wide
    ring = (cv2.dilate(band.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~band & lung_b
    ring &= w * prof > 1.2
    line = np.zeros((size, size), np.float32)
    line[box] = ring
    rel = (mid - apex) / max(total - apex, 1.0)
    location = "apical" if rel < 0.15 else ("apicolateral" if rel < 0.4 else "lateral")
    return Crescent(mask, line, s, location, target)


def _resample(pts: np.ndarray, step: float) -> np.ndarray:
    """Points along a polyline every ``step`` units."""
    seg = np.hypot(*np.diff(pts, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    at = np.arange(0.0, cum[-1] + step, step).clip(0, cum[-1])
    return np.stack([np.interp(at, cum, pts[:, 0]), np.interp(at, cum, pts[:, 1])], 1)
