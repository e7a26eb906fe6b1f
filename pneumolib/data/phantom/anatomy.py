"""The patient: sampled geometry of the chest and the density layers drawn from it.

Densities are additive, in arbitrary units set by the constants of :func:`coarse_density`
(soft tissue's density grows with the body's thickness) and :func:`sample_patient` (the
``air`` an aerated lung removes); bright = dense, as on a radiograph. Geometry is normalised
(``x, y`` in [0, 1], y down). The two lungs are built by one routine in a mirrored local
frame ``(u, y)`` with ``u`` the lateral distance from the midline; ``side = -1`` is the
image's left half (the patient's right lung), ``side = +1`` the image's right half.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from . import draw

SIDES = (-1, 1)


@dataclass
class Patient:
    """Geometry and look of one synthetic patient (all lengths normalised to the image)."""

    view: str                 # "PA" or "AP"
    cx: float                 # midline
    hw: float                 # midline to the lateral lung wall
    tw: float                 # midline to the skin of the chest wall
    y_top: float              # lung apices
    y_sh: float               # shoulder line
    mw: float                 # half-width of the mediastinum
    air: float                # density an aerated lung removes
    mag: float                # geometric magnification (AP films are larger)
    rot: float                # in-plane rotation, degrees
    shift: tuple[float, float]
    female: bool
    arms: bool                # arms beside the chest, inside the field
    bubble: bool              # gastric air bubble under the left hemidiaphragm
    side: dict = field(default_factory=dict)   # per side: dict of that lung's numbers
    heart: tuple = ()         # right and left heart borders: distances from the midline
    carina: tuple = ()

    @property
    def ap(self) -> bool:
        return self.view == "AP"

    def x(self, u, side):
        """Local lateral distance ``u`` on ``side`` -> image x."""
        return self.cx + side * np.asarray(u)


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draw one patient's geometry (AP portable or PA, with the probability of the ``ap``
    draw below)."""
    ap = rng.random() < 0.4
    hw = rng.uniform(0.31, 0.37) * (1.02 if ap else 1.0)
    y_top = rng.uniform(0.10, 0.17) + (0.02 if ap else 0.0)
    lung_h = rng.uniform(0.55, 0.63) - (0.05 if ap else 0.0)     # AP: shallower inspiration
    mw = rng.uniform(0.05, 0.065) * (1.1 if ap else 1.0)
    ctr = rng.uniform(0.47, 0.57) if ap else rng.uniform(0.40, 0.49)  # cardiothoracic ratio
    cx = 0.5 + rng.normal(0.0, 0.012)
    p = Patient(
        view="AP" if ap else "PA", cx=cx, hw=hw, tw=hw + rng.uniform(0.045, 0.08),
        y_top=y_top, y_sh=y_top - rng.uniform(0.0, 0.04), mw=mw,
        air=rng.uniform(0.40, 0.50), mag=rng.uniform(1.03, 1.12) if ap else rng.uniform(0.97, 1.03),
        rot=float(np.clip(rng.normal(0.0, 2.5), -6, 6)) if rng.random() < 0.35 else 0.0,
        shift=(float(rng.normal(0, 0.012)), float(rng.normal(0, 0.012))),
        female=rng.random() < 0.45, arms=rng.random() < 0.5, bubble=rng.random() < 0.6,
    )
    y_cp_r = y_top + lung_h                       # image left = patient right, higher dome
    dome_h = rng.uniform(0.07, 0.11)
    y_h = y_top + rng.uniform(0.36, 0.42) * lung_h
    for s in SIDES:
        y_cp = y_cp_r + (rng.uniform(0.0, 0.035) if s > 0 else 0.0)
        y_dome = y_cp - dome_h * (rng.uniform(0.8, 1.0) if s > 0 else 1.0)
        p.side[s] = dict(
            y_cp=y_cp, y_dome=y_dome, y_cph=y_dome + rng.uniform(0.02, 0.045),
            u_ap=hw * rng.uniform(0.40, 0.52), n=rng.uniform(2.0, 2.8),
            hilum=(mw + (0.035 if s < 0 else 0.03), y_h - (0.015 if s > 0 else 0.0)),
        )
    wh = ctr * 2.0 * (hw + 0.02)
    p.heart = (wh * rng.uniform(0.27, 0.33), wh * rng.uniform(0.67, 0.73))
    p.carina = (cx - 0.004, y_h - rng.uniform(0.05, 0.07))
    return p


def outline(p: Patient, s: int) -> np.ndarray:
    """(N, 2) local ``(u, y)`` outline of one hemithorax's lung, clockwise from the apex.

    Apex -> lateral wall (a superellipse quadrant) -> costophrenic angle -> diaphragm dome
    -> cardiophrenic angle -> medial border along the mediastinum -> back to the apex.
    """
    q = p.side[s]
    if "outline" in q:
        return q["outline"]
    hw, mw, y_top, u_ap = p.hw, p.mw, p.y_top, q["u_ap"]
    e = 2.0 / q["n"]
    a = np.linspace(0.0, np.pi / 2, 64)
    lat = np.stack([u_ap + (hw - u_ap) * np.sin(a) ** e, q["y_cp"] - (q["y_cp"] - y_top) * np.cos(a) ** e], 1)
    u = np.linspace(hw, mw, 40)
    ud = mw + 0.45 * (hw - mw)
    y = np.where(
        u >= ud,
        q["y_dome"] + (q["y_cp"] - q["y_dome"]) * ((u - ud) / (hw - ud)) ** 2,
        q["y_dome"] + (q["y_cph"] - q["y_dome"]) * ((ud - u) / (ud - mw)) ** 2,
    )
    dia = np.stack([u, y], 1)
    med = np.stack([np.full(8, mw), np.linspace(q["y_cph"], y_top + 0.09, 8)], 1)
    cap = draw.bezier((mw, y_top + 0.09), (mw + 0.003, y_top + 0.03), (u_ap - 0.04, y_top), (u_ap, y_top), 16)
    q["outline"] = np.concatenate([lat, dia[1:], med[1:], cap[1:-1]])
    return q["outline"]


def to_image(p: Patient, local: np.ndarray, s: int) -> np.ndarray:
    """Local ``(u, y)`` points -> normalised image ``(x, y)``."""
    return np.stack([p.cx + s * local[:, 0], local[:, 1]], 1)


def mediastinum(p: Patient) -> tuple[np.ndarray, np.ndarray]:
    """Normalised outlines of the cardiomediastinal silhouette and of the heart alone.

    Image-left border: superior vena cava, then the right atrium. Image-right border:
    aortic knob, pulmonary trunk, then the left ventricle down to the cardiac apex.
    """
    cx, mw, yt = p.cx, p.mw, p.y_top
    ra, la = p.heart
    yl, yr = p.side[-1]["y_dome"], p.side[1]["y_dome"]
    yh = p.side[-1]["hilum"][1]
    right_atrium = draw.bezier((cx - mw, yh), (cx - ra * 1.05, yh + 0.05), (cx - ra * 1.05, yl - 0.04), (cx - ra * 0.9, yl + 0.04), 20)
    ventricle = draw.bezier((cx + la * 0.97, yr + 0.03), (cx + la * 1.06, yr - 0.09), (cx + la * 0.8, yh + 0.0), (cx + mw + 0.02, yh - 0.03), 24)
    knob = draw.bezier((cx + mw + 0.012, yt + 0.17), (cx + mw + 0.045, yt + 0.155), (cx + mw + 0.045, yt + 0.09), (cx + mw, yt + 0.085), 12)
    outline_ = np.concatenate([[(cx - mw, -0.2)], right_atrium, [(cx - ra * 0.9, 1.2), (cx + la, 1.2)],
                               ventricle, knob, [(cx + mw, -0.2)]])
    heart = np.concatenate([right_atrium, [(cx - ra * 0.9, yr + 0.1), (cx + la, yr + 0.1)], ventricle])
    return outline_, heart


def lung_mask(p: Patient, size: int) -> np.ndarray:
    """(size, size) float32 {0, 1}: both lung fields, the mediastinum cut out."""
    m = np.zeros((size, size), np.float32)
    for s in SIDES:
        draw.fill(m, to_image(p, outline(p, s), s), 1.0, size)
    draw.fill(m, mediastinum(p)[0], 0.0, size)
    return m


def lateral_wall(p: Patient, s: int):
    """(y, u) samples of the lateral wall, for placing ribs and scapulae."""
    o = outline(p, s)[:64]
    return o[:, 1], o[:, 0]


def silhouette(p: Patient) -> np.ndarray:
    """(N, 2) normalised outline of the body: neck, shoulders, arms, chest wall."""
    tw, ys, yt = p.tw, p.y_sh, p.y_top
    right = [(0.075, -0.2), (0.08, ys - 0.07), (0.2, ys - 0.035), (tw + 0.08, ys - 0.01),
             (tw + 0.15, ys + 0.03), (tw + 0.19, ys + 0.1)]
    if p.arms:      # the arm hangs beside the chest, an air gap below the axilla
        right += [(tw + 0.21, 1.2), (tw + 0.09, 1.2), (tw + 0.07, yt + 0.3)]
    else:
        right += [(tw + 0.12, yt + 0.17)]
    right += [(tw + 0.01, yt + 0.24), (tw, p.side[1]["y_cp"]), (tw - 0.015, 1.2)]
    r = np.array(right)
    left = r[::-1] * (-1, 1)
    return np.concatenate([np.stack([p.cx + r[:, 0], r[:, 1]], 1), np.stack([p.cx + left[:, 0], left[:, 1]], 1)])


# -- the smooth, coarse layer ------------------------------------------------------------
def coarse_density(p: Patient, c: int, rng: np.random.Generator):
    """Soft tissue, mediastinum, heart, spine, airway, breasts (c x c); also the air field.

    Returns (density, air, body): ``air`` is the density an aerated lung removes at each
    point (less at the lung's edges, where the lung is thin), ``body`` the soft body mask.
    """
    X, Y = draw.grid(c)
    cx = p.cx
    body = np.zeros((c, c), np.float32)
    draw.fill(body, silhouette(p), 1.0, c)
    body = draw.blur(body, 0.01 * c)
    th = np.sqrt(np.clip(1.0 - ((X - cx) / (p.tw + 0.05)) ** 2, 0.02, 1.0))
    dens = body * (0.26 + 0.52 * th)

    extra = np.zeros((c, c), np.float32)
    med, heart = mediastinum(p)
    draw.fill(extra, med, 0.04, c)
    draw.fill(extra, heart, 0.07, c)
    for s in SIDES:                      # liver and spleen under the domes
        o = outline(p, s)
        dia = o[64:103]
        sub = np.concatenate([[(p.tw, p.side[s]["y_cp"])], dia, [(0.0, dia[-1, 1]), (0.0, 1.2), (p.tw, 1.2)]])
        draw.fill(extra, to_image(p, sub, s), 0.10, c)
    extra = draw.blur(extra, 0.006 * c)
    spine = np.zeros((c, c), np.float32)
    draw.fill(spine, [(cx - 0.034, -0.1), (cx + 0.034, -0.1), (cx + 0.034, 1.1), (cx - 0.034, 1.1)], 0.06, c)
    airway = np.zeros((c, c), np.float32)
    kx, ky = p.carina
    draw.fill(airway, [(kx - 0.016, -0.1), (kx + 0.016, -0.1), (kx + 0.012, ky), (kx - 0.012, ky)], 0.10, c)
    for s in SIDES:
        hu, hyl = p.side[s]["hilum"]
        draw.polyline(airway, [(kx, ky), (p.x(hu * 0.6, s), ky + 0.035), (p.x(hu, s), hyl + 0.01)], 0.07, 0.016, c)
    if p.bubble:
        q = p.side[1]
        draw.ellipse(airway, (cx + 0.17, q["y_dome"] + 0.065), (0.045, 0.028), 0, 0.12, c)
    dens += extra + draw.blur(spine, 0.006 * c) - draw.blur(airway, 0.006 * c) * body
    if p.female:
        for s in SIDES:
            ex, ey, rx, ry = cx + s * 0.2, p.side[s]["y_cp"] - 0.05, 0.17, 0.12
            inside = ((X - ex) / rx) ** 2 + ((Y - ey) / ry) ** 2 < 1.0
            dens += 0.07 * inside * np.clip((Y - (ey - ry)) / (2 * ry), 0, 1)
    dens += 0.02 * draw.smooth_noise(rng, c, 5) + 0.03 * (Y - 0.5) * rng.uniform(-1, 1)

    lung = lung_mask(p, c)
    interior = np.clip(draw.blur(lung, 0.035 * c) * 1.8, 0.0, 1.0)
    apex = np.exp(-(((Y - p.y_top) / 0.07) ** 2))
    air = p.air * (0.6 + 0.4 * interior) * (1.0 - 0.12 * apex) * (1.0 + 0.05 * draw.smooth_noise(rng, c, 4))
    return dens.astype(np.float32), air.astype(np.float32), body


# -- sharp layers at full size ------------------------------------------------------------
def _banded(canvas, pts, v, w, size):
    """A bone seen side-on: a band with brighter cortical edges."""
    draw.polyline(canvas, pts, v, w, size)
    draw.polyline(canvas, pts, 0.75 * v, 0.55 * w, size)


def bones(p: Patient, size: int, rng: np.random.Generator, scapula_in: dict) -> np.ndarray:
    """Ribs (posterior and anterior), clavicles, scapulae and humeral heads; (S, S) float32.

    ``scapula_in[s]``: how far (normalised) the scapula's medial border lies inside the
    lateral lung wall on side ``s`` (negative: outside the lung, as on a good PA film).
    """
    full, size = size, max(32, size // 2)       # broad, blurred shapes: half resolution
    post = np.zeros((size, size), np.float32)
    ant = np.zeros((size, size), np.float32)
    misc = np.zeros((size, size), np.float32)
    for s in SIDES:
        q = p.side[s]
        wy, wu = lateral_wall(p, s)
        rs = (q["y_cp"] - p.y_top + 0.02) / 9.0
        for k in range(11):
            y0 = p.y_top - 0.035 + k * rs + rng.normal(0, 0.003)
            drop = 0.06 + 0.009 * k
            u_lat = float(np.interp(y0 + drop, wy, wu, left=q["u_ap"] * 0.8)) + 0.008
            v = rng.uniform(0.8, 1.2)
            b = draw.bezier((0.028, y0), (u_lat * 0.35, y0 - 0.035), (u_lat * 0.85, y0 - 0.01), (u_lat, y0 + drop), 12)
            _banded(post, to_image(p, b, s), 0.06 * v, 0.017 + 0.0007 * k, size)
            if k < 7:
                y1 = y0 + drop
                u_ant = 0.10 + 0.012 * k
                b = draw.bezier((u_lat, y1), (u_lat + 0.01, y1 + 0.04), (u_ant + 0.12, y1 + 0.13), (u_ant, y1 + 0.17), 12)
                _banded(ant, to_image(p, b, s), 0.045 * v, 0.022, size)
        # clavicle: AP films project it higher and tilted up laterally
        yc0 = p.y_top + (0.03 if p.ap else 0.07) + rng.normal(0, 0.01)
        yc1 = p.y_top - (0.06 if p.ap else 0.0) + rng.normal(0, 0.015)
        b = draw.bezier((0.028, yc0), (0.12, yc0 - 0.015), (p.hw - 0.05, yc1 + 0.03), (p.hw + 0.075, yc1), 24)
        _banded(misc, to_image(p, b, s), 0.16, 0.03, size)
        # scapula: a plate lateral to its medial border, which is a thin bright edge
        um = p.hw - scapula_in[s]
        yi = p.y_top + rng.uniform(0.30, 0.38)
        plate = np.array([(um + 0.01, p.y_top - 0.01), (um, yi * 0.5 + p.y_top * 0.5), (um + 0.04, yi),
                          (p.hw + 0.12, p.y_top + 0.07), (p.hw + 0.10, p.y_top - 0.01)])
        draw.fill(misc, to_image(p, plate, s), 0.045, size)
        border = draw.bezier(plate[0], plate[1] + (-0.012, -0.05), plate[1] + (-0.01, 0.05), plate[2], 20)
        draw.polyline(misc, to_image(p, border, s), 0.09, 0.005, size)
        hh = (p.x(p.tw + 0.06, s), p.y_sh + 0.04)
        draw.ellipse(misc, hh, (0.075, 0.075), 0, 0.06, size)
        draw.ellipse(misc, hh, (0.075, 0.075), 0, 0.10, size, thickness=0.006)
    return draw.upscale(draw.blur(post + ant + misc, 0.7 * size / 512), full)


def vessels(p: Patient, size: int, rng: np.random.Generator, lung: np.ndarray) -> np.ndarray:
    """Branching pulmonary vessels from each hilum, thinning to the periphery; (S, S) float32.

    Grown level by level (all branches of a level drawn in one cv2 call); a branch whose
    start leaves the lung stops.
    """
    canvas = np.zeros((size, size), np.float32)
    for s in SIDES:
        hu, hy = p.side[s]["hilum"]
        psi = np.array([rng.uniform(-0.2, 0.3), rng.uniform(0.6, 1.1), rng.uniform(1.5, 2.0),
                        rng.uniform(2.2, 2.7)])
        start = np.tile([hu, hy], (len(psi), 1)) + rng.normal(0, 0.008, (len(psi), 2))
        length = rng.uniform(0.045, 0.07, len(psi))
        width, value = 0.0105, 0.10
        for level in range(7):
            d = np.stack([np.sin(psi), -np.cos(psi)], 1)
            end = start + d * length[:, None]
            mid = (start + end) / 2 + np.stack([d[:, 1], -d[:, 0]], 1) * rng.normal(0, 0.15, (len(psi), 1)) * length[:, None]
            pts = np.stack([start, mid, end], 1)                   # (n, 3, 2) local
            pts[..., 0] = p.cx + s * pts[..., 0]
            w_px = width * size
            t = max(1, int(round(w_px)))
            cv2.polylines(canvas, list(draw.px(pts, size)), False, value * min(1.0, w_px), t, cv2.LINE_8, draw.SHIFT)
            # children: two per branch, fanning out; drop those that left the lung
            ex = np.clip(((p.cx + s * end[:, 0]) * size).astype(int), 0, size - 1)
            ey = np.clip((end[:, 1] * size).astype(int), 0, size - 1)
            alive = lung[ey, ex] > 0
            n = int(alive.sum())
            if n == 0:
                break
            start = np.repeat(end[alive], 2, 0)
            spread = rng.uniform(0.18, 0.5, 2 * n) * np.tile([-1, 1], n)
            psi = np.repeat(psi[alive], 2) + spread
            length = np.repeat(length[alive], 2) * rng.uniform(0.65, 0.85, 2 * n)
            keep = rng.random(2 * n) < 0.85
            start, psi, length = start[keep], psi[keep], length[keep]
            width *= 0.72
            value *= 0.88
        # vessels seen end-on near the hila
        for _ in range(6):
            r = rng.uniform(0.003, 0.007)
            pt = (p.x(hu + rng.uniform(0.0, 0.12), s), hy + rng.uniform(-0.1, 0.12))
            draw.ellipse(canvas, pt, (r, r), 0, 0.06, size)
    return draw.blur(canvas, 0.7 * size / 512)
