"""The pneumothorax: a crescent of pleural air between the chest wall and the lung edge.

The pleural surface the air may collect along is the lung's outer border from the medial
end of the apical cap, over the apex, down the lateral wall to the costophrenic recess and
along the diaphragm; ``l`` is the arc length along it. The lung collapses towards a point
near its hilum (``knobs.COLLAPSE_SHIFT``): a pixel belongs to the surface point that the
ray from that point through it meets, at a depth measured along the ray. The crescent is
the band of lung within depth ``w(l)`` of the surface, ``w(l) = w_max * sin(pi * t) ** q``
over a stretch of the surface (``t`` runs 0..1 along it): thin tips, deepest in the
middle. Its inner edge is the retracted visceral pleura; a large one leaves the lung
collapsed towards the hilum.

The area is drawn first (lognormal, matching SIIM-ACR; see :mod:`.knobs`), then the side
(the patient's right more often), the place (an apical cap, a lateral or a basal
crescent: ``knobs.PTX_PLACES``), the stretch's length (longer for larger areas, shorter
and deeper for apical caps) and its position, and ``w_max`` is adjusted until the mask's
pixel area matches (a stretch too short to hold the area is lengthened). These placement
knobs were calibrated against the real SIIM-ACR masks' location heat map
(:func:`pneumolib.reporting.realism.compare_phantom`). One lung holds only part of the
image, so the rare draws larger than a lung can hold come out as a near-total collapse of
that lung; the largest areas the phantom reaches, next to SIIM-ACR's, are in the realism
comparison (docs/DATA.md, block ``demo/realism``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import anatomy, knobs


def sample_area(rng: np.random.Generator) -> float:
    """Pneumothorax area as a fraction of the image (SIIM-ACR's distribution)."""
    a = knobs.AREA_MEDIAN * np.exp(knobs.AREA_SIGMA * rng.standard_normal())
    return float(np.clip(a, knobs.AREA_MIN, knobs.AREA_MAX))


@dataclass
class Crescent:
    mask: np.ndarray      # (S, S) uint8 {0, 1}, pre-projection
    line: np.ndarray      # (S, S) float32 in [0, 1]: the visceral pleural line
    side: int             # -1: image left (the patient's right lung), +1: image right
    location: str         # apical | apicolateral | lateral | basal
    target_px: float


def pleural_surface(p: anatomy.Patient, s: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The surface pleural air collects along, from the medial end of the apical cap down.

    Returns:
        ``(points, (i_apex, i_cp))``: (N, 2) normalised image points, medial apical cap ->
        apex -> lateral wall -> costophrenic angle -> diaphragm to the cardiophrenic angle;
        and the indices of the apex and of the costophrenic angle among them.
    """
    o = anatomy.outline(p, s)
    lat, dia, cap = o[:64], o[64:103], o[110:]          # see anatomy.outline's order
    pts = anatomy.to_image(p, np.concatenate([cap, lat, dia]), s)
    return pts, (len(cap), len(cap) + len(lat) - 1)


def _where(rng: np.random.Generator) -> str:
    """apical, lateral or basal, with the frequencies of ``knobs.PTX_PLACES``."""
    names = list(knobs.PTX_PLACES)
    cum = np.cumsum([knobs.PTX_PLACES[n] for n in names])
    return names[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(names) - 1)]


def _place(rng: np.random.Generator, where: str, length: float, apex: float, cp: float,
           total: float) -> float:
    """Arc length of the crescent's middle for a place (``knobs.APICAL_*``, ``*_RANGE``)."""
    if where == "apical":
        return apex + rng.normal(knobs.APICAL_SHIFT, knobs.APICAL_SD) * length
    if where == "lateral":
        return apex + rng.uniform(*knobs.LATERAL_RANGE) * (cp - apex)
    return cp + rng.uniform(*knobs.BASAL_RANGE) * (total - cp)


def sample_crescent(p: anatomy.Patient, rng: np.random.Generator, area: float,
                    lung: np.ndarray) -> Crescent:
    """A crescent of ``area`` (fraction of the pre-projection image) on one lung.

    Draws from ``rng`` (the image's pneumothorax stream only), in this order: side, place,
    length jitter, position, taper ``q``.
    """
    size = lung.shape[0]
    s = -1 if rng.random() < knobs.PTX_RIGHT else 1
    wall, (i_apex, i_cp) = pleural_surface(p, s)
    # work in the hemithorax's bounding box, in pixels
    o = anatomy.to_image(p, anatomy.outline(p, s), s)
    xa, y0 = np.floor(o.min(0) * size - 4).clip(0, size).astype(int)
    xb, y1 = np.ceil(o.max(0) * size + 4).clip(0, size).astype(int)
    box = (slice(y0, y1), slice(xa, xb))
    lung_b = lung[box] > 0.5
    # the lung collapses towards a point near the hilum: each pixel belongs to the surface
    # point that the ray from there through it meets. lmap: that point's arc length along
    # the surface (px); dist: how far inside the surface the pixel lies along the ray (px).
    # The ray angle, mirrored per side, grows along the surface.
    dense = _resample(wall * size - 0.5 - np.array([xa, y0]), 0.5)
    ell = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(dense, axis=0).T))])
    total = ell[-1]
    hu, hy = p.side[s]["hilum"]
    where = _where(rng)
    hu, hy = hu + knobs.COLLAPSE_SHIFT[where][0], hy + knobs.COLLAPSE_SHIFT[where][1]
    hub = np.array([p.x(hu, s) * size - 0.5 - xa, hy * size - 0.5 - y0])
    ang = np.maximum.accumulate(np.unwrap(np.arctan2(dense[:, 1] - hub[1], s * (dense[:, 0] - hub[0]))))
    radius = np.hypot(dense[:, 0] - hub[0], dense[:, 1] - hub[1])
    gy, gx = np.mgrid[0:lung_b.shape[0], 0:lung_b.shape[1]]
    theta = np.arctan2(gy - hub[1], s * (gx - hub[0]))
    theta = np.where(theta < ang[0], theta + 2 * np.pi, theta)
    lmap = np.interp(theta, ang, ell, left=-1e9, right=1e9)
    dist = np.maximum(np.interp(theta, ang, radius) - np.hypot(gx - hub[0], gy - hub[1]), 0.0)

    # stretch: longer for larger pneumothoraces; apical, lateral or basal
    length = 0.1 * (area / 0.0013) ** 0.6 * rng.uniform(0.7, 1.3) * size * knobs.PTX_LENGTH[where]
    length = float(np.clip(length, 12, total))
    vert = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(wall * size, axis=0).T))])
    apex, cp = float(vert[i_apex]), float(vert[i_cp])
    mid = _place(rng, where, length, apex, cp, total)
    q = rng.uniform(*knobs.PTX_TAPER[where])
    target = area * size * size
    for _ in range(3):
        mid = float(np.clip(mid, length / 2, total - length / 2))
        t = (lmap - (mid - length / 2)) / length
        prof = np.where((t > 0) & (t < 1), np.sin(np.pi * np.clip(t, 0, 1)) ** q, 0.0)
        w = max(1.5, target / (length * 0.75))
        for _ in range(6):                             # match the pixel area
            got = np.count_nonzero((dist < w * prof) & lung_b)
            if got == 0:
                w *= 2.0
                continue
            w_new = w * (target / got) ** 0.9
            if abs(w_new - w) < 0.05:
                break
            w = max(1.5, w_new)
        if got >= 0.95 * target or length >= total:
            break
        length = min(total, length * 1.5)              # the stretch is full: lengthen it
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
    rel = (mid - apex) / max(cp - apex, 1.0)
    location = ("apical" if rel < 0.15 else "apicolateral" if rel < 0.4 else "lateral" if rel <= 1.0
                else "basal")
    return Crescent(mask, line, s, location, target)


def _resample(pts: np.ndarray, step: float) -> np.ndarray:
    """Points along a polyline every ``step`` units."""
    seg = np.hypot(*np.diff(pts, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    at = np.arange(0.0, cum[-1] + step, step).clip(0, cum[-1])
    return np.stack([np.interp(at, cum, pts[:, 0]), np.interp(at, cum, pts[:, 1])], 1)
