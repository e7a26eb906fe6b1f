"""Seeded online augmentation of training images (albumentations), not part of the paper.

Modest, in the spirit of the SIIM-ACR 1st place (flips, shift-scale-rotate, brightness,
contrast, gamma, grid distortion): chest X-rays are roughly aligned, so large rotations
or crops would teach the model poses it never sees. Images go in as ``uint8`` ``(S, S)``
and masks as ``uint8`` 0/1 ``(S, S)``; masks follow every geometric step with
nearest-neighbour sampling and are never touched by the intensity steps.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import cv2

if TYPE_CHECKING:
    import albumentations as A

    from pneumolib.config import Config

__all__ = ["train_transform", "compose_supports_seed"]


def compose_supports_seed() -> bool:
    """True when the installed albumentations takes ``Compose(..., seed=...)`` (2.x)."""
    import albumentations as A

    return "seed" in inspect.signature(A.Compose.__init__).parameters


def train_transform(cfg: "Config", grid_distortion: bool = True) -> "A.Compose | None":
    """The online augmentation of training items, or None when ``cfg.online_aug`` is False.

    Args:
        cfg: uses ``online_aug`` and ``seed`` (albumentations 2.x keeps its own random
            state: ``Compose(..., seed=cfg.seed)``; DataLoader workers reseed it with their
            own seed, see :func:`pneumolib.seeding.worker_init_fn`).
        grid_distortion: add a mild elastic grid distortion (p = 0.2).

    Returns:
        ``albumentations.Compose`` taking ``image=uint8 (S, S)``, ``mask=uint8 (S, S)``:
        horizontal flip (p 0.5); affine shift +/-6 %, scale 0.9..1.1, rotation +/-10 deg
        with black fill (p 0.5); one of brightness/contrast +/-0.15 or gamma 0.85..1.15
        (p 0.5); optionally the grid distortion.
    """
    if not cfg.online_aug:
        return None
    import albumentations as A

    v2 = compose_supports_seed()
    # albumentations 1.x names the constant-border fill `cval` / `value`, 2.x `fill`
    affine_fill = dict(fill=0, fill_mask=0) if v2 else dict(cval=0, cval_mask=0)
    grid_fill = dict(fill=0, fill_mask=0) if v2 else dict(value=0, mask_value=0)
    steps = [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.9, 1.1),
            translate_percent=(-0.0625, 0.0625),
            rotate=(-10, 10),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            **({"border_mode": cv2.BORDER_CONSTANT} if v2 else {"mode": cv2.BORDER_CONSTANT}),
            **affine_fill,
            p=0.5,
        ),
        A.OneOf(
            [
                A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=1.0),
                A.RandomGamma(gamma_limit=(85, 115), p=1.0),
            ],
            p=0.5,
        ),
    ]
    if grid_distortion:
        steps.append(
            A.GridDistortion(
                num_steps=5,
                distort_limit=0.15,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                **grid_fill,
                p=0.2,
            )
        )
    if v2:
        return A.Compose(steps, seed=int(cfg.seed))
    return A.Compose(steps)  # pragma: no cover - albumentations 1.x: seeded via np.random
