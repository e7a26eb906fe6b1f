"""What the scenarios do to a built network: freeze its encoder (no gradients AND batch
norm in eval mode, whoever calls ``model.train()``) and count its parameters.

Parameter counts for the README: ``pneumo params`` or ``python -m pneumolib.models.parts``.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .resnet import SMP_ENCODER_PREFIXES, resnet50_unet
from .unet import UNet

# ---------------------------------------------------------------------------------------
# Freezing
# ---------------------------------------------------------------------------------------
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def encoder_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the encoder part: :data:`ENCODER_PREFIXES` for :class:`UNet`,
    ``("encoder.",)`` for smp models."""
    return getattr(model, "ENCODER_PREFIXES", SMP_ENCODER_PREFIXES)


def _frozen_bn_pre_hook(module: nn.Module, args) -> None:
    # Runs before every forward of a frozen BatchNorm: whoever called train() (Lightning
    # does at every epoch start), it normalises with its pretrained running statistics
    # and does not update them.
    if module.training:
        module.eval()


def freeze_encoder(model: nn.Module, prefixes: Sequence[str] | None = None) -> list[str]:
    """Freeze the encoder part (for :class:`UNet`: encoder AND bottleneck).

    Sets ``requires_grad=False`` on its parameters and keeps its BatchNorm layers in eval
    mode during training. Design: each frozen BatchNorm gets the attribute
    ``pneumo_frozen = True`` and a forward pre-hook that switches it to eval mode, so the
    running statistics stay those of the pretrained model whatever calls ``model.train()``
    (no wrapper class, no reliance on a training loop remembering a call; the hook survives
    deepcopy and pickling). :func:`apply_frozen_bn_eval` does the same eagerly, for
    inspection right after ``model.train()``.

    Returns:
        The names of the frozen parameters.
    """
    prefixes = tuple(prefixes or encoder_prefixes(model))
    frozen = []
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    for name, m in model.named_modules():
        if isinstance(m, _BN_TYPES) and (name + ".").startswith(prefixes):
            if not getattr(m, "pneumo_frozen", False):
                m.pneumo_frozen = True
                m.register_forward_pre_hook(_frozen_bn_pre_hook)
            m.eval()
    model.frozen_prefixes = prefixes
    return frozen


def apply_frozen_bn_eval(model: nn.Module) -> nn.Module:
    """Put every BatchNorm marked by :func:`freeze_encoder` in eval mode (call after
    ``model.train()``, e.g. in ``on_train_epoch_start``; the pre-hook makes it optional)."""
    for m in model.modules():
        if getattr(m, "pneumo_frozen", False):
            m.eval()
    return model


# ---------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------
def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def param_counts(base_width: int = 64) -> list[tuple[str, int]]:
    """``[(model description, parameter count)]`` of the paper U-Net (plain and BatchNorm)
    and the ResNet-50 U-Net, all with 1 input and 1 output channel. No download."""
    rows = []
    for norm in ("none", "batch"):
        rows.append(
            (f"U-Net (paper), base width {base_width}, norm={norm}",
             count_parameters(UNet(1, 1, base_width=base_width, norm=norm)))
        )
    resnet = resnet50_unet(in_channels=1, classes=1, encoder_weights=None)
    rows.append(("U-Net, ResNet-50 encoder (smp)", count_parameters(resnet)))
    rows.append(("  of which the ResNet-50 encoder", count_parameters(resnet.encoder)))
    return rows


def param_table(base_width: int = 64) -> str:
    """:func:`param_counts` as aligned text (``python -m pneumolib.models.parts``, ``pneumo params``)."""
    return "\n".join(f"{name:<48} {n:>12,d}" for name, n in param_counts(base_width))


def _main() -> None:
    print(param_table())


if __name__ == "__main__":
    _main()
