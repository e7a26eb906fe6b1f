"""Draw phantom samples for the README: ``figures/readme/phantom_samples.png``.

Row 1: four positives of the default phantom set with the mask outlined; row 2: the same
four, zoomed on the pneumothorax, without overlay (what a model sees); row 3: four
negatives with confounders (skin fold, ECG leads, lines and drains, the scapula's edge).
The images are those of the default set (seed 0, 2,000 images), rendered at 512 px.

    python scripts/phantom_samples.py [--out PATH] [--size 512] [--difficulty 1.0]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pneumolib import paths
from pneumolib.data import phantom  # noqa: E402

PRETTY = {"skin_fold": "skin fold", "ecg_leads": "ECG leads", "central_line": "central line",
          "et_tube": "ET tube", "ng_tube": "NG tube", "chest_drain": "chest drain",
          "scapula_over_lung": "scapula edge"}


def pick(size: int, difficulty: float, n: int = 2000):
    """Four varied positives and four negatives with confounders, from the default set."""
    items = phantom.plan(n, seed=0)
    wanted_pos = [lambda m: m["location"] == "apical" and m["area_frac"] > 0.003,
                  lambda m: m["location"] == "lateral" and 0.004 < m["area_frac"] < 0.02,
                  lambda m: m["area_frac"] < 0.0025,
                  lambda m: m["area_frac"] > 0.025]
    wanted_neg = [lambda m: "skin_fold" in m["confounders"],
                  lambda m: "ecg_leads" in m["confounders"] and m["view"] == "AP",
                  lambda m: "chest_drain" in m["confounders"] or "central_line" in m["confounders"],
                  lambda m: "scapula_over_lung" in m["confounders"]]
    pos, neg = [None] * 4, [None] * 4
    for it in items:
        if all(pos) and all(neg):
            break
        slots, wanted = (pos, wanted_pos) if it.positive else (neg, wanted_neg)
        if all(slots):
            continue
        r = phantom.render(it.index, 0, size, difficulty, positive=it.positive)
        for j, ok in enumerate(wanted):
            if slots[j] is None and ok(r[2]):
                slots[j] = r
                break
    return [p for p in pos if p], [q for q in neg if q]


def crop_box(mask: np.ndarray):
    """A square around the mask: its size plus a margin, at least a fifth of the image."""
    ys, xs = np.nonzero(mask)
    s = mask.shape[0]
    half = min(s / 2, max(s / 10, 0.75 * max(np.ptp(ys), np.ptp(xs)) + s / 40))
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    y0, x0 = int(np.clip(cy - half, 0, s - 2 * half)), int(np.clip(cx - half, 0, s - 2 * half))
    return y0, int(y0 + 2 * half), x0, int(x0 + 2 * half)


def palette_image() -> Image.Image:
    """48 greys and 16 reds: the figure is grey pictures, black text and one red outline."""
    greys = [(v, v, v) for v in np.linspace(0, 255, 48).astype(int)]
    reds = [(255, g, g) for g in np.linspace(30, 200, 8).astype(int)]
    reds += [(int(160 + 95 * t), int(60 + 100 * t), int(60 + 100 * t)) for t in np.linspace(0, 1, 8)]
    pal = Image.new("P", (1, 1))
    pal.putpalette([c for rgb in greys + reds for c in rgb])
    return pal


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=paths.home() / "figures" / "readme" / "phantom_samples.png")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--difficulty", type=float, default=1.0)
    args = ap.parse_args(argv)

    pos, neg = pick(args.size, args.difficulty)
    fig, axes = plt.subplots(3, 4, figsize=(11.2, 9.0), dpi=80)
    for j, (img, mask, meta) in enumerate(pos):
        ax = axes[0, j]
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="lanczos")
        ax.contour(mask, levels=[0.5], colors="#ff2020", linewidths=1.3)
        ax.set_title(f"positive: {100 * meta['area_frac']:.2f} % of image\n"
                     f"{meta['location']}, patient's {meta['side']} ({meta['view']})", fontsize=9)
        y0, y1, x0, x1 = crop_box(mask)
        axes[1, j].imshow(img[y0:y1, x0:x1], cmap="gray", vmin=0, vmax=255, interpolation="lanczos")
        axes[1, j].set_title(f"zoom x{img.shape[0] / (y1 - y0):.1f}, no overlay", fontsize=9)
    for j, (img, _, meta) in enumerate(neg):
        axes[2, j].imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="lanczos")
        conf = ", ".join(PRETTY[c] for c in meta["confounders"]) or "none"
        axes[2, j].set_title(f"negative ({meta['view']})\n{conf}", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"pneumolib phantom (difficulty {args.difficulty:g}, {args.size} px): "
                 "the red outline is the mask", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    # a 64-colour palette keeps the file small (noisy greys compress badly in RGB)
    im = Image.open(buf).convert("RGB").quantize(palette=palette_image(), dither=Image.Dither.NONE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    im.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return args.out


if __name__ == "__main__":
    main()
