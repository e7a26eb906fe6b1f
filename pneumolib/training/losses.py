"""The paper's segmentation loss (BCE + Dice, from logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Smoothing of the soft Dice term (added to numerator and denominator).
DICE_EPS = 1.0


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """1 - soft Dice over the whole batch. logits, target: (B, 1, H, W); target in {0, 1}."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + eps) / (prob.sum() + target.sum() + eps)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's segmentation loss: BCE + Dice, both from logits, equal weights."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float()) + soft_dice_loss(logits, target)
