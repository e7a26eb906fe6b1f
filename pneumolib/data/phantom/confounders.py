"""Things that mimic a pleural line or a lucent crescent without being one.

* skin fold: a long curved density step (an edge, not a line) that runs past the lung's
  borders, with the lung markings continuing across it;
* ECG leads: electrodes and thin bright wires looping over the chest;
* central venous line, endotracheal tube, nasogastric tube: thin bright curves;
* chest drain: a tube along the lateral pleura with a radio-opaque stripe;
* the scapula's medial border projected over the lung (mostly AP films) is drawn with the
  bones, see :func:`.anatomy.bones`.

Each is drawn into a density layer; which appear, and how strongly, follows
:func:`.knobs.for_difficulty`.
"""

from __future__ import annotations

import numpy as np

from . import anatomy, draw


def skin_fold(p: anatomy.Patient, size: int, rng: np.random.Generator, strength: float) -> np.ndarray:
    """(S, S) float32 density: a step along a large circle arc over one lateral lung.

    The denser side is usually the medial one, so the lung lateral to the fold looks
    lucent, the way a real fold mimics a pneumothorax.
    """
    s = int(rng.choice(anatomy.SIDES))
    q = p.side[s]
    u_f = p.hw * rng.uniform(0.6, 0.95)               # a point of the fold, local (u, y)
    y_f = rng.uniform(p.y_top + 0.15, q["y_cp"] - 0.1)
    tilt = rng.normal(0.0, 0.2)                        # the fold runs roughly head to foot
    nu, ny = np.cos(tilt), np.sin(tilt)                # its normal, pointing laterally
    rad = rng.uniform(0.9, 3.0)
    bend = rng.choice([-1.0, 1.0])                     # circle centre lateral (+1) or medial
    cu, cy = u_f + bend * rad * nu, y_f + bend * rad * ny
    lam = rng.uniform(0.03, 0.08)                      # how far the extra density fades
    amp = 0.13 * strength * rng.uniform(0.7, 1.3)
    h = max(32, size // 2)                             # a soft layer: half resolution is plenty
    X, Y = draw.grid(h)
    d = np.hypot(s * (X - p.cx) - cu, Y - cy) - rad    # < 0 inside the circle
    lateral = -bend * d                                # signed distance, > 0 lateral of the fold
    dense = -lateral if rng.random() < 0.7 else lateral    # usually the medial side is denser
    along = np.exp(-(((Y - y_f) / rng.uniform(0.14, 0.25)) ** 2))
    out = np.where(dense > 0, amp * np.exp(-dense / lam), 0.0) * along
    return draw.upscale(out.astype(np.float32), size)


def _electrode(canvas, pt, size, v):
    draw.ellipse(canvas, pt, (0.013, 0.013), 0, 0.6 * v, size)
    draw.ellipse(canvas, pt, (0.013, 0.013), 0, v, size, thickness=0.003)
    draw.ellipse(canvas, pt, (0.004, 0.004), 0, 1.2 * v, size)


def devices(p: anatomy.Patient, size: int, rng: np.random.Generator, which: list[str]) -> np.ndarray:
    """(S, S) float32 density of the tubes, lines and leads named in ``which``."""
    c = np.zeros((size, size), np.float32)
    cx, kx, ky = p.cx, *p.carina
    if "ecg_leads" in which:
        for _ in range(int(rng.integers(2, 5))):
            s = rng.choice(anatomy.SIDES)
            e = (cx + s * rng.uniform(0.05, p.hw + 0.05), rng.uniform(p.y_top - 0.05, p.side[1]["y_cp"]))
            end = (rng.choice([-0.05, 1.05]), rng.uniform(0.0, 1.0)) if rng.random() < 0.6 else (rng.uniform(0, 1), -0.05)
            c1 = (e[0] + rng.normal(0, 0.15), e[1] + rng.normal(0, 0.15))
            c2 = (end[0] + rng.normal(0, 0.15), end[1] + rng.normal(0, 0.15))
            draw.polyline(c, draw.bezier(e, c1, c2, end, 60), 0.30, 0.0035, size)
            _electrode(c, e, size, 0.35)
    if "central_line" in which:
        s = rng.choice(anatomy.SIDES)
        pts = [(p.x(p.hw * 0.75, s), p.y_top - 0.08), (p.x(p.hw * 0.55, s), p.y_top + 0.03),
               (p.x(0.03, s), p.y_top + 0.02), (cx - 0.03, ky + rng.uniform(0.02, 0.09))]
        draw.polyline(c, draw.bezier(*pts, 40), 0.25, 0.004, size)
        draw.polyline(c, [(p.x(p.hw * 0.75, s), p.y_top - 0.08), (p.x(p.hw * 0.9, s), -0.05)], 0.25, 0.004, size)
    if "et_tube" in which:
        tip = ky - rng.uniform(0.03, 0.07)
        for dx in (-0.009, 0.009):
            draw.polyline(c, [(kx + dx, -0.05), (kx + dx * 0.9, tip)], 0.10, 0.003, size)
        draw.polyline(c, [(kx + 0.006, -0.05), (kx + 0.006, tip)], 0.22, 0.002, size)
    if "ng_tube" in which:
        q = p.side[1]
        pts = draw.bezier((cx - 0.01, -0.05), (cx + 0.01, 0.4), (cx + 0.0, q["y_dome"]), (cx + 0.15, q["y_dome"] + 0.08), 50)
        draw.polyline(c, pts, 0.2, 0.004, size)
    if "chest_drain" in which:
        s = rng.choice(anatomy.SIDES)
        q = p.side[s]
        y_in = q["y_cp"] - rng.uniform(0.08, 0.25)
        pts = draw.bezier((p.tw + 0.1, y_in + 0.05), (p.hw - 0.02, y_in), (p.hw - 0.03, p.y_top + 0.2),
                          (q["u_ap"] + rng.uniform(0.0, 0.06), p.y_top + rng.uniform(0.04, 0.1)), 50)
        xy = anatomy.to_image(p, pts, s)
        draw.polyline(c, xy, 0.11, 0.010, size)
        draw.polyline(c, xy, 0.25, 0.0025, size)
        for j in range(20, 40, 6):             # side holes interrupt the stripe
            draw.polyline(c, xy[j : j + 2], 0.11, 0.004, size)
    return draw.blur(c, 0.6 * size / 512)
