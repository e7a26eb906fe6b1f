"""``render``: one phantom radiograph and its pneumothorax mask."""

from __future__ import annotations

import functools

import cv2
import numpy as np

from . import anatomy, confounders, draw, knobs, pneumothorax

_DEVICES = ("ecg_leads", "central_line", "et_tube", "ng_tube", "chest_drain")


def render(index: int, seed: int = 0, size: int = 512, difficulty: float = 1.0, *,
           positive: bool | None = None, layers: bool = False):
    """Render phantom chest radiograph number ``index`` of the set ``seed``.

    Deterministic per ``(seed, index)`` (and ``size``, ``difficulty``, ``positive``): the
    random streams come from ``np.random.default_rng([seed, index])``, split into
    independent streams for anatomy, pneumothorax, confounders and exposure, so the same
    patient looks the same whether or not it is given a pneumothorax.

    Args:
        index: image number (>= 0).
        seed: data-set seed.
        size: output side ``S`` in pixels (any size >= 32; geometry is resolution-free).
        difficulty: ``>= 0``; 0 is obvious, 1 the default; larger is harder: a fainter
            crescent and pleural line, more noise, more and stronger confounders. The
            constants live in :mod:`pneumolib.data.phantom.knobs`.
        positive: whether to draw a pneumothorax; None draws it with probability
            ``knobs.PREVALENCE`` from the image's own stream (:func:`write_phantom` passes
            an exact assignment instead).
        layers: also return ``meta["lung"]``, the (S, S) bool lung fields (for tests and
            figures).

    Returns:
        ``(image, mask, meta)``: image (S, S) uint8; mask (S, S) bool, the pleural air
        (empty for negatives); meta a dict (``positive``, ``view``, ``side`` of the
        pneumothorax as the patient's ``right``/``left``, ``location``, ``area_frac`` of
        the mask, ``target_area_frac``, ``confounders``, ``rotation_deg``, ...).
    """
    size = int(size)
    k = knobs.for_difficulty(difficulty)
    base = np.random.default_rng([int(seed), int(index)])
    r_anat, r_ptx, r_conf, r_img, r_label = base.spawn(5)
    if positive is None:
        positive = bool(r_label.random() < knobs.PREVALENCE)

    p = anatomy.sample_patient(r_anat)
    c = max(32, size // 4)
    dens_c, air_c, body_c = anatomy.coarse_density(p, c, r_anat)
    lung = anatomy.lung_mask(p, size)

    # confounder draws come first and always in the same order, so they do not depend on
    # the label
    present = [name for name, pr in k.confounder_p.items() if r_conf.random() < pr]
    if "scapula_over_lung" in present and not p.ap and r_conf.random() < 0.6:
        present.remove("scapula_over_lung")    # a good PA film rotates the scapulae away
    scap = {s: (r_conf.uniform(0.03, 0.10) * (0.5 + 0.5 * min(k.confounder_strength, 1.5))
                if "scapula_over_lung" in present else -r_conf.uniform(0.0, 0.04)) for s in anatomy.SIDES}
    bones = anatomy.bones(p, size, r_anat, scap)
    marks = anatomy.vessels(p, size, r_anat, lung)
    marks += 0.022 * draw.smooth_noise(r_anat, size, max(8, size // 10))

    # pneumothorax
    ptx = np.zeros((size, size), np.uint8)
    pleura = np.zeros((size, size), np.float32)
    meta_ptx = {"side": None, "location": None, "target_area_frac": 0.0}
    darken = 0.0
    if positive:
        area = pneumothorax.sample_area(r_ptx)
        cres = pneumothorax.sample_crescent(p, r_ptx, area / p.mag**2, lung)
        ptx = cres.mask
        jit = r_ptx.uniform(*knobs.PTX_JITTER)
        pleura = draw.blur(cres.line, 0.5 * size / 512) * (k.pleura_line * jit)
        darken = k.ptx_darken * jit
        meta_ptx = {"side": "right" if cres.side < 0 else "left", "location": cres.location,
                    "target_area_frac": area}

    lung_soft = draw.blur(lung, 1.0 * size / 512)
    air = draw.upscale(air_c, size)
    D = draw.upscale(dens_c, size) + bones * (0.25 + 0.35 * draw.upscale(body_c, size) + 0.4 * lung_soft)
    if positive:
        ptx_soft = draw.blur(ptx.astype(np.float32), 0.6 * size / 512)
        D -= lung_soft * air * (1.0 + darken * ptx_soft)
        # no markings in the pleural air, nor right up to the retracted lung edge
        D += marks * np.clip(lung_soft - draw.blur(ptx_soft, 1.2 * size / 512) * 1.6, 0.0, 1.0) + pleura
    else:
        D -= lung_soft * air
        D += marks * lung_soft

    strength = k.confounder_strength
    if "skin_fold" in present:
        D += confounders.skin_fold(p, size, r_conf, strength)
    dev = [n for n in _DEVICES if n in present]
    if dev:
        D += confounders.devices(p, size, r_conf, dev)

    # projection: magnification, small rotation and shift, applied to image and masks alike
    M = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), p.rot, p.mag)
    M[:, 2] += np.array(p.shift) * size
    D = cv2.warpAffine(D, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(ptx, M, (size, size), flags=cv2.INTER_NEAREST) > 0
    if positive and not mask.any():            # a sub-pixel crescent: keep it, unwarped
        mask = ptx > 0

    img = _expose(D, size, r_img, k.noise)
    _marker(img, p, r_img)
    meta = {
        "index": int(index), "seed": int(seed), "size": size, "difficulty": float(difficulty),
        "positive": bool(positive), "view": p.view, **meta_ptx,
        "area_frac": float(mask.mean()), "confounders": present, "rotation_deg": p.rot,
        "magnification": p.mag, "version": knobs.VERSION,
    }
    if layers:
        meta["lung"] = cv2.warpAffine(lung.astype(np.uint8), M, (size, size), flags=cv2.INTER_NEAREST) > 0
    return img, mask, meta


_LUT_N = 4096


@functools.lru_cache(maxsize=4)
def _noise_tile(size: int) -> np.ndarray:
    """A fixed (2S, 2S) tile of slightly correlated unit noise, generated once per process.

    Each image takes a window of it at a random offset: as good as fresh noise for the
    task, and far cheaper than drawing S*S normals per image.
    """
    n = np.random.default_rng(20240611).standard_normal((2 * size, 2 * size), dtype=np.float32)
    n = 0.7 * n + 0.9 * draw.blur(n, 0.8 * size / 512)
    return n / n.std()


def _expose(D: np.ndarray, size: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Window, film-like curve, gamma and quantum-like noise -> (S, S) uint8."""
    lo, hi = rng.uniform(-0.06, 0.06), rng.uniform(1.05, 1.2)
    kk = rng.uniform(0.3, 1.2)            # film-like shoulder: highlights compressed
    gamma = rng.uniform(1.0, 1.4)
    sigma = noise * rng.uniform(0.7, 1.3)
    oy, ox = rng.integers(0, size, 2)
    # window, then film curve and gamma through a lookup table (exp and pow per pixel are
    # the slowest step otherwise)
    x = np.linspace(0.0, 1.2, _LUT_N + 1)
    lut = (np.clip((1.0 - np.exp(-kk * x)) / (1.0 - np.exp(-kk)), 0.0, 1.0) ** gamma).astype(np.float32)
    idx = np.clip((D - lo) * (_LUT_N / 1.2 / (hi - lo)), 0, _LUT_N).astype(np.int32)
    img = lut[idx]
    amp = cv2.sqrt(img * 0.8 + 0.2)
    img += (sigma * amp) * _noise_tile(size)[oy : oy + size, ox : ox + size]
    np.maximum(img, 0.0, out=img)
    return cv2.convertScaleAbs(img, alpha=255.0)   # rounds and saturates at 255


def _marker(img: np.ndarray, p: anatomy.Patient, rng: np.random.Generator) -> None:
    """The lead side marker (and the AP PORTABLE label) burnt into a corner."""
    size = img.shape[0]
    scale = size / 512
    if size < 96 or rng.random() < 0.25:
        return
    x = int(rng.uniform(0.04, 0.12) * size) if rng.random() < 0.5 else int(rng.uniform(0.8, 0.9) * size)
    y = int(rng.uniform(0.05, 0.12) * size)
    cv2.putText(img, "L" if rng.random() < 0.5 else "R", (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale,
                int(rng.integers(200, 256)), max(1, int(2 * scale)), cv2.LINE_AA)
    if p.ap and rng.random() < 0.6:
        cv2.putText(img, "AP PORTABLE", (int(0.6 * size), int(0.95 * size)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.6 * scale, 230, max(1, int(1.5 * scale)), cv2.LINE_AA)
