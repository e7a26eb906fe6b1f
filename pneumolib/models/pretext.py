"""Restoration pretext transforms in the spirit of Models Genesis (Zhou et al. 2019, 2021).

An autoencoder that sees its clean input can learn to copy it through the U-Net's top skip
connection (see :func:`pneumolib.training.copythrough.copy_through_summary`). Models Genesis instead *distorts* the
input and asks for the clean image back, so the network has to learn what an X-ray looks
like: intensity curves, local texture, and the anatomy around and outside a hidden region.
:func:`genesis_distort` applies, per image of a batch and in Models Genesis's order:

1. **local pixel shuffling** (prob ``local_shuffle_prob`` = 0.5): the image is tiled into
   small square windows and the pixels of a random ``shuffle_frac`` of the windows are
   permuted within their window;
2. **non-linear intensity transform** (prob ``nonlinear_prob`` = 0.9): a random monotone
   cubic Bezier curve through (0, 0) and (1, 1) maps intensities; with prob ``invert_prob``
   = 0.5 the curve is reflected (``1 - f``), an intensity inversion (Models Genesis's "flip"
   half of its non-linear transform);
3. **painting** (prob ``paint_prob`` = 0.9): in-painting (prob ``inpaint_prob`` = 0.2 of the
   painted images: up to 5 boxes of 1/6-1/3 of each side filled with uniform noise) or
   else out-painting (everything replaced by noise except the union of up to 5 boxes of
   3/7-4/7 of each side, at least 3 px from the border).

The probabilities are Models Genesis's defaults (``nonlinear_rate=0.9``, ``local_rate=0.5``,
``paint_rate=0.9``, ``outpaint_rate=0.8``, ``inpaint_rate=1 - outpaint_rate``). Its random
flip is left out: it is a data augmentation of input and target alike, not a distortion.
Departures, for speed on whole batches (on the GPU in training): shuffling windows are a
fixed grid of one power-of-two size per call (about 1/16 of the side, 2-32 px) instead of
10,000 random rectangles, and each chosen window is permuted by one of 256 random
permutations drawn per call; in/out-painting follow Models Genesis's box sizes and counts,
but all randomness is drawn as tensors (no Python loop over images).

**Value range.** The transforms work on each image rescaled to [0, 1] by its own minimum
and maximum; the result is mapped back with the inverse of that affine map. So any
range goes in, and the output lies in the input's own space: a normalised X-ray
(``(x / 255 - mean) / std``, what the data module yields and what the autoencoders
reconstruct) comes out normalised, an image in [0, 1] comes out in [0, 1]. Noise is uniform
on the image's own [min, max]. A constant image maps to 0 and back to its constant (only
the painting noise can change it).

**Randomness.** Every function takes ``generator``: a :class:`torch.Generator` (on any
device: numbers are drawn on the generator's device, then moved to the input's), a
:class:`numpy.random.Generator`, an ``int`` seed, or None (torch's global generator). The
same generator state and input give the same output. :func:`genesis_distort_items`
seeds each image by its own integer (e.g. its dataset index), so an item's distortion does
not depend on which batch or process it lands in.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["GENESIS_DEFAULTS", "genesis_distort", "genesis_distort_items", "item_seeds", "bezier_luts",
           "intensity_transform", "local_shuffle", "shuffle_window", "in_paint", "out_paint"]

GeneratorLike = Union[torch.Generator, np.random.Generator, int, None]

#: Models Genesis's default probabilities (its ``config.py``), plus the two knobs of this
#: implementation (``invert_prob`` is Models Genesis's 50/50 "flip" of the Bezier curve).
GENESIS_DEFAULTS: dict[str, float] = {
    "local_shuffle_prob": 0.5,
    "nonlinear_prob": 0.9,
    "invert_prob": 0.5,
    "paint_prob": 0.9,
    "inpaint_prob": 0.2,
    # share of the shuffling windows whose pixels are permuted: this implementation's
    # stand-in for the share of a 64^3 volume that Models Genesis's 10,000 random blocks cover
    "shuffle_frac": 0.8,
}

_LUT_SIZE = 1025  # lookup-table points of the intensity curve on [0, 1]
_BEZIER_STEPS = 1001  # curve samples before resampling on the LUT grid
_PERM_BANK = 256  # random permutations drawn per local_shuffle call


class _Rng:
    """Uniform draws on ``device`` from a torch or numpy generator (or an int seed)."""

    def __init__(self, generator: GeneratorLike, device: torch.device):
        self.device = torch.device(device)
        self.np: np.random.Generator | None = None
        self.torch: torch.Generator | None = None
        if isinstance(generator, _Rng):  # pragma: no cover - internal reuse
            self.np, self.torch = generator.np, generator.torch
        elif isinstance(generator, np.random.Generator):
            self.np = generator
        elif isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
            self.torch = torch.Generator().manual_seed(int(generator))
        elif isinstance(generator, torch.Generator) or generator is None:
            self.torch = generator
        else:
            raise TypeError(f"generator must be a torch.Generator, numpy Generator, int or None, "
                            f"not {type(generator).__name__}")

    def rand(self, *shape: int) -> torch.Tensor:
        """float32 uniform on [0, 1) of ``shape``, on the input's device."""
        if self.np is not None:
            return torch.from_numpy(self.np.random(shape, dtype=np.float32)).to(self.device)
        if self.torch is None:
            return torch.rand(shape, device=self.device)
        return torch.rand(shape, generator=self.torch, device=self.torch.device).to(self.device)

    def randint(self, lo: torch.Tensor | int, hi: torch.Tensor | int, *shape: int) -> torch.Tensor:
        """int64 uniform on ``[lo, hi]`` (inclusive, as Python's ``random.randint``)."""
        lo_t = torch.as_tensor(lo, device=self.device, dtype=torch.int64)
        hi_t = torch.maximum(torch.as_tensor(hi, device=self.device, dtype=torch.int64), lo_t)
        u = self.rand(*shape).double()
        return torch.minimum(lo_t + (u * (hi_t - lo_t + 1).double()).long(), hi_t)


def _rng(generator: GeneratorLike | _Rng, device: torch.device) -> _Rng:
    if isinstance(generator, _Rng):
        generator.device = torch.device(device)
        return generator
    return _Rng(generator, device)


def _check(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, H, W) batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point batch, got {x.dtype}")


def _selected(apply: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Indices of the images to transform (all when ``apply`` is None)."""
    if apply is None:
        return torch.arange(n, device=device)
    return torch.nonzero(apply.to(device).reshape(-1), as_tuple=False).reshape(-1)


def _on_subset(x: torch.Tensor, apply: torch.Tensor | None, fn) -> torch.Tensor:
    idx = _selected(apply, x.shape[0], x.device)
    if idx.numel() == 0:
        return x.clone()
    if idx.numel() == x.shape[0]:
        return fn(x)
    out = x.clone()
    out[idx] = fn(x[idx])
    return out


# -- 1. local pixel shuffling ---------------------------------------------------------------
def shuffle_window(h: int, w: int) -> int:
    """Side of the shuffling windows for an ``h x w`` image: the power of two nearest
    ``min(h, w) / 16``, between 2 and 32, halved until it divides both sides (1: none)."""
    target = max(min(h, w) / 16.0, 1.0)
    win = int(min(32, max(2, 2 ** round(math.log2(target)))))
    while win > 1 and (h % win or w % win):
        win //= 2
    return win


def local_shuffle(x01: torch.Tensor, generator: GeneratorLike = None, apply: torch.Tensor | None = None,
                  window: int | None = None, frac: float = GENESIS_DEFAULTS["shuffle_frac"]) -> torch.Tensor:
    """Permute the pixels within a random ``frac`` of the ``window x window`` tiles.

    The image is tiled from its top-left corner; each chosen tile is permuted by one of
    up to 256 random permutations drawn per call (picked at random per tile), so the
    multiset of values of every tile is unchanged.

    Args:
        x01: ``(B, 1, H, W)`` float; any range (values are only moved).
        apply: ``(B,)`` bool, which images to shuffle (None: all).
        window: tile side (default :func:`shuffle_window`); must divide H and W.
    """
    _check(x01)
    rng = _rng(generator, x01.device)
    _, _, h, w = x01.shape
    win = window or shuffle_window(h, w)
    if h % win or w % win:
        raise ValueError(f"window {win} does not divide the image size {h}x{w}")
    if win < 2:
        return x01.clone()

    def fn(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        nh, nw = h // win, w // win
        n_win, area = nh * nw, win * win
        tiles = x.reshape(b, nh, win, nw, win).permute(0, 1, 3, 2, 4).reshape(b, n_win, area)
        # a bank of random permutations (argsort of one row of keys each) plus the identity
        # last; each tile picks one, or the identity when it is not chosen. Sorting keys for
        # every tile instead would cost one sort per tile of every image.
        n_bank = min(_PERM_BANK, b * n_win)
        bank = torch.cat([rng.rand(n_bank, area).argsort(dim=-1),
                          torch.arange(area, device=x.device)[None]])
        pick = rng.randint(0, n_bank - 1, b, n_win)
        chosen = rng.rand(b, n_win) < frac
        perm = bank[torch.where(chosen, pick, torch.full_like(pick, n_bank))]
        tiles = tiles.gather(-1, perm)
        return tiles.reshape(b, nh, nw, win, win).permute(0, 1, 3, 2, 4).reshape(b, 1, h, w)

    return _on_subset(x01, apply, fn)


# -- 2. non-linear intensity transform ----------------------------------------------------------
def bezier_luts(n: int, generator: GeneratorLike = None, invert_prob: float = GENESIS_DEFAULTS["invert_prob"],
                size: int = _LUT_SIZE, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, size)`` lookup tables of random monotone intensity curves on [0, 1].

    Each curve is a cubic Bezier curve with end points (0, 0), (1, 1) and two uniform random
    control points in the unit square; its sampled x and y coordinates are sorted (Models
    Genesis's construction, which makes the curve non-decreasing) and resampled at ``size``
    equally spaced x in [0, 1]. With prob ``invert_prob`` the table is reflected to ``1 - f``
    (non-increasing). Entry ``k`` is the curve's value at ``k / (size - 1)``.
    """
    rng = _rng(generator, torch.device(device))
    p = rng.rand(n, 4).double()  # x1, y1, x2, y2
    invert = rng.rand(n) < invert_prob
    t = torch.linspace(0.0, 1.0, _BEZIER_STEPS, dtype=torch.float64, device=rng.device)
    b1, b2, b3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3  # Bernstein terms (P0 = 0)
    xs = (p[:, 0:1] * b1 + p[:, 2:3] * b2 + b3).sort(dim=1).values
    ys = (p[:, 1:2] * b1 + p[:, 3:4] * b2 + b3).sort(dim=1).values
    grid = torch.linspace(0.0, 1.0, size, dtype=torch.float64, device=rng.device).expand(n, size).contiguous()
    j = torch.searchsorted(xs, grid).clamp(1, _BEZIER_STEPS - 1)
    x0, x1 = xs.gather(1, j - 1), xs.gather(1, j)
    y0, y1 = ys.gather(1, j - 1), ys.gather(1, j)
    span = x1 - x0
    wgt = torch.where(span > 0, (grid - x0) / span.clamp_min(1e-12), torch.zeros_like(span)).clamp(0, 1)
    lut = (y0 + wgt * (y1 - y0)).clamp(0, 1)
    lut = torch.cummax(lut, dim=1).values  # guard against rounding: exactly non-decreasing
    lut = torch.where(invert[:, None], 1.0 - lut, lut)
    return lut.float()


def _apply_lut(x01: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x01.shape
    size = lut.shape[1]
    lut = torch.cat([lut, lut[:, -1:]], dim=1)  # x = 1 lands on the last entry: no clamp needed
    pos = x01.reshape(b, h * w).clamp(0, 1) * (size - 1)
    i0 = pos.long()  # floor, values are >= 0
    frac = pos - i0
    return torch.lerp(lut.gather(1, i0), lut.gather(1, i0 + 1), frac).reshape(b, 1, h, w)


def intensity_transform(x01: torch.Tensor, generator: GeneratorLike = None, apply: torch.Tensor | None = None,
                        invert_prob: float = GENESIS_DEFAULTS["invert_prob"]) -> torch.Tensor:
    """Map each image in [0, 1] through its own random curve of :func:`bezier_luts`
    (linear interpolation between table entries keeps it monotone)."""
    _check(x01)
    rng = _rng(generator, x01.device)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return _apply_lut(x.float(), bezier_luts(x.shape[0], rng, invert_prob, device=x.device)).to(x.dtype)

    return _on_subset(x01, apply, fn)


# -- 3. in-painting and out-painting --------------------------------------------------------
def _box_masks(rng: _Rng, b: int, h: int, w: int, size_lo: tuple[int, int], size_hi: tuple[int, int],
               n_boxes: int, first_always: bool, device: torch.device) -> torch.Tensor:
    """``(b, 1, h, w)`` bool union of up to ``n_boxes`` random boxes per image.

    Box sides are uniform integers in ``[size_lo, size_hi]`` (per axis), the top-left corner
    uniform in ``[3, side - size - 3]`` as in Models Genesis; box ``k`` exists while a chain
    of draws stays below 0.95 (Models Genesis's ``while cnt > 0 and random() < 0.95``)."""
    hs = rng.randint(size_lo[0], size_hi[0], b, n_boxes)
    ws = rng.randint(size_lo[1], size_hi[1], b, n_boxes)
    y0 = rng.randint(min(3, h - 1), (h - hs - 3).clamp_min(0), b, n_boxes).clamp(max=h - 1)
    x0 = rng.randint(min(3, w - 1), (w - ws - 3).clamp_min(0), b, n_boxes).clamp(max=w - 1)
    alive = torch.cumprod((rng.rand(b, n_boxes) < 0.95).long(), dim=1).bool()
    if first_always:
        alive[:, 0] = True
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    mask = torch.zeros(b, h, w, dtype=torch.bool, device=device)
    for k in range(n_boxes):
        r = (rows >= y0[:, k, None]) & (rows < (y0 + hs)[:, k, None])
        c = (cols >= x0[:, k, None]) & (cols < (x0 + ws)[:, k, None])
        mask |= r[:, :, None] & c[:, None, :] & alive[:, k, None, None]
    return mask[:, None]


def in_paint(x01: torch.Tensor, generator: GeneratorLike = None, apply: torch.Tensor | None = None,
             return_mask: bool = False):
    """Fill up to 5 random boxes (sides 1/6 to 1/3 of the image's) with uniform [0, 1) noise.

    Returns the painted batch, and with ``return_mask`` also the ``(B, 1, H, W)`` bool mask
    of the painted pixels (all False for images not in ``apply``)."""
    _check(x01)
    rng = _rng(generator, x01.device)
    b, _, h, w = x01.shape
    idx = _selected(apply, b, x01.device)
    out = x01.clone()
    full = torch.zeros(b, 1, h, w, dtype=torch.bool, device=x01.device)
    if idx.numel():
        n = idx.numel()
        mask = _box_masks(rng, n, h, w, (h // 6, w // 6), (h // 3, w // 3), 5, False, x01.device)
        noise = rng.rand(n, 1, h, w).to(x01.dtype)
        out[idx] = torch.where(mask, noise, x01[idx])
        full[idx] = mask
    return (out, full) if return_mask else out


def out_paint(x01: torch.Tensor, generator: GeneratorLike = None, apply: torch.Tensor | None = None,
              return_mask: bool = False):
    """Replace everything by uniform [0, 1) noise except an inner region: the union of one
    to five boxes whose sides are 3/7 to 4/7 of the image's, at least 3 px from the border.

    Returns the painted batch, and with ``return_mask`` also the ``(B, 1, H, W)`` bool mask
    of the pixels *kept* (all True for images not in ``apply``)."""
    _check(x01)
    rng = _rng(generator, x01.device)
    b, _, h, w = x01.shape
    idx = _selected(apply, b, x01.device)
    out = x01.clone()
    full = torch.ones(b, 1, h, w, dtype=torch.bool, device=x01.device)
    if idx.numel():
        n = idx.numel()
        lo = (h - 4 * h // 7, w - 4 * w // 7)
        hi = (h - 3 * h // 7, w - 3 * w // 7)
        keep = _box_masks(rng, n, h, w, lo, hi, 5, True, x01.device)
        noise = rng.rand(n, 1, h, w).to(x01.dtype)
        out[idx] = torch.where(keep, x01[idx], noise)
        full[idx] = keep
    return (out, full) if return_mask else out


# -- the composition ----------------------------------------------------------------------
def genesis_distort(
    x: torch.Tensor,
    generator: GeneratorLike = None,
    *,
    local_shuffle_prob: float = GENESIS_DEFAULTS["local_shuffle_prob"],
    nonlinear_prob: float = GENESIS_DEFAULTS["nonlinear_prob"],
    invert_prob: float = GENESIS_DEFAULTS["invert_prob"],
    paint_prob: float = GENESIS_DEFAULTS["paint_prob"],
    inpaint_prob: float = GENESIS_DEFAULTS["inpaint_prob"],
    shuffle_frac: float = GENESIS_DEFAULTS["shuffle_frac"],
    window: int | None = None,
) -> torch.Tensor:
    """The Models Genesis distortion of each image of ``x`` (see the module docstring).

    Args:
        x: ``(B, 1, H, W)`` float, any range (normalised X-rays in training); not modified.
        generator: torch / numpy generator, int seed or None.
        local_shuffle_prob, nonlinear_prob, paint_prob: per-image probabilities of the three
            steps; ``inpaint_prob``: share of in-painting among painted images (else
            out-painting); ``invert_prob``: share of inverted intensity curves;
            ``shuffle_frac`` / ``window``: see :func:`local_shuffle`.

    Returns:
        The distorted batch: same shape, dtype and device, in the input's value space.
    """
    _check(x)
    b = x.shape[0]
    rng = _rng(generator, x.device)
    xf = x.float()
    lo = xf.amin(dim=(1, 2, 3), keepdim=True)
    scale = xf.amax(dim=(1, 2, 3), keepdim=True) - lo
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    x01 = ((xf - lo) / safe).clamp(0, 1)
    # every per-image coin first, so each step's draws do not depend on the others' outcomes
    coins = rng.rand(b, 4)
    do_shuffle = coins[:, 0] < local_shuffle_prob
    do_curve = coins[:, 1] < nonlinear_prob
    do_paint = coins[:, 2] < paint_prob
    do_in = do_paint & (coins[:, 3] < inpaint_prob)
    do_out = do_paint & ~do_in
    y = local_shuffle(x01, rng, do_shuffle, window=window, frac=shuffle_frac)
    y = intensity_transform(y, rng, do_curve, invert_prob=invert_prob)
    y = in_paint(y, rng, do_in)
    y = out_paint(y, rng, do_out)
    out = y * safe + lo
    return out.to(x.dtype)


def item_seeds(indices: Sequence[int] | torch.Tensor, base: int = 0) -> list[int]:
    """One 63-bit seed per item from ``(base, index)`` (numpy's SeedSequence mixing)."""
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().reshape(-1).tolist()
    return [int(np.random.SeedSequence([int(base) & 0xFFFFFFFF, int(i) & 0xFFFFFFFFFFFF])
                .generate_state(1, np.uint64)[0] >> 1) for i in indices]


def genesis_distort_items(x: torch.Tensor, seeds: Sequence[int], device_generators: bool = True,
                          **kwargs) -> torch.Tensor:
    """:func:`genesis_distort` of each image with its own seed (e.g. from :func:`item_seeds`),
    so the distortion of an item is the same whatever batch it is in.

    Args:
        device_generators: draw on ``x``'s device when it can host a generator (CUDA);
            otherwise, and with False, on the CPU.
    """
    _check(x)
    if len(seeds) != x.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
    dev = x.device if (device_generators and x.device.type == "cuda") else torch.device("cpu")
    out = torch.empty_like(x)
    for i, s in enumerate(seeds):
        g = torch.Generator(device=dev)
        g.manual_seed(int(s))
        out[i:i + 1] = genesis_distort(x[i:i + 1], g, **kwargs)
    return out
