"""The paper's U-Net (its section 3.3.1), used both as the segmentation model and as the
X-ray / mask autoencoder whose weights seed it; and :func:`split_output`, which reads any
model's output as ``(mask logits, class logit or None)``.

The ResNet-50 U-Net is in :mod:`pneumolib.models.resnet`, freezing and parameter counts in
:mod:`pneumolib.models.parts`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from pneumolib.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "UNet",
    "split_output",
    "ALL_SKIPS",
    "InputSizeError",
    "ENCODER_PREFIXES",
    "DECODER_PREFIXES",
    "build_unet",
]

#: Parameter/buffer name prefixes of the encoder part of :class:`UNet`. The bottleneck is
#: counted as encoder: it is the last stage of the contracting path (Ronneberger et al.'s
#: fifth level, reached by the fourth max-pool), it only ever sees encoder features, and
#: it is the compact representation an autoencoder's "encoder" is meant to produce. So
#: "encoder from the X-ray autoencoder" transfers it, and "frozen encoder" freezes it.
ENCODER_PREFIXES: tuple[str, ...] = ("encoder.", "bottleneck.")
#: Prefixes of the decoder part: the four up blocks (up-convolution + two convs) and the
#: 1x1 output convolution.
DECODER_PREFIXES: tuple[str, ...] = ("decoder.", "head.")


#: How many times the U-Net halves its input; sides must be divisible by 2**DEPTH.
DEPTH = 4

#: Every skip level of :class:`UNet` (0 = top, full resolution ... 3): ``zero_skips=ALL_SKIPS``
#: makes it an autoencoder without skip connections (see the class docstring).
ALL_SKIPS: tuple[int, ...] = tuple(range(DEPTH))


class InputSizeError(ConfigError, ValueError):
    """An input whose height or width the U-Net cannot pool four times (not divisible by 16).

    Both a :class:`ConfigError` (printed cleanly by the CLI) and a ``ValueError``.
    """


def _check_size(h: int, w: int) -> None:
    step = 2**DEPTH
    bad = [(name, v) for name, v in (("height", h), ("width", w)) if v % step]
    if not bad:
        return
    parts = []
    for name, v in bad:
        lo, hi = (v // step) * step, (v // step + 1) * step
        near = f"{lo} or {hi}" if lo > 0 else f"{hi}"
        parts.append(f"{name} {v} (nearest valid: {near})")
    raise InputSizeError(
        f"U-Net input of size {h}x{w} is not divisible by {step} (it is max-pooled {DEPTH} "
        f"times): {'; '.join(parts)}. Resize or pad the images, e.g. image_size=512."
    )


def _conv_block(c_in: int, c_out: int, n_convs: int, norm: str) -> nn.Sequential:
    """``n_convs`` x [3x3 conv (padding 1) -> BatchNorm (if norm='batch') -> ReLU]."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=norm != "batch"))
        if norm == "batch":
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UpBlock(nn.Module):
    """2x2 up-convolution (stride 2, halves channels), concatenation with the skip, two convs.

    Attributes ``up`` (ConvTranspose2d) and ``conv`` (the two 3x3 convs) are part of the
    decoder's state-dict names (``decoder.<i>.up.*``, ``decoder.<i>.conv.*``).
    """

    def __init__(self, c_in: int, norm: str):
        super().__init__()
        c_out = c_in // 2
        self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = _conv_block(2 * c_out, c_out, n_convs=2, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """The paper's U-Net (section 3.3.1), with 'same' padding.

    Contracting path: four blocks of three 3x3 convolutions (+ BatchNorm if
    ``norm="batch"``) + ReLU, each followed by a 2x2 max-pool of stride 2, with
    ``w, 2w, 4w, 8w`` channels (``w = base_width``, 64 in the paper); then a bottleneck block
    of the same kind (three convs) with ``16w`` channels. Expanding path: four blocks of a
    2x2 up-convolution halving the channels, concatenation with the encoder feature map of
    the same resolution, and two 3x3 convolutions + ReLU. A 1x1 convolution maps ``w``
    channels to ``out_channels`` logits.

    Differences from Ronneberger et al. (2015): their convolutions are unpadded, so every
    conv trims a 1-pixel border, a 572x572 input gives a 388x388 output, and the skip
    features are *cropped* before concatenation (the "cropped copy" the paper mentions).
    Here every 3x3 conv uses padding 1, so feature maps keep their size, no cropping is
    needed, and the output has exactly the input's height and width (512 in -> 512 out).
    Input sides must therefore be divisible by 16 (:class:`InputSizeError` otherwise). Also
    (as in the paper) the contracting blocks have three convs instead of two, and BatchNorm
    is optional (``norm="none"`` is the paper's plain conv + ReLU). The paper does not state
    its initialisation; convolutions use Ronneberger's He-normal init
    (std ``sqrt(2 / fan_in)``) with zero biases, which keeps the plain (no BatchNorm) variant
    trainable.

    Submodule names are fixed so that weights transfer by prefix: ``encoder`` (ModuleList of
    the 4 contracting blocks), ``bottleneck``, ``decoder`` (ModuleList of 4 :class:`UpBlock`,
    deepest first: ``decoder[3]`` joins the top skip), ``head`` (1x1 conv), and ``aux`` (the
    optional image-level head; never transferred). See :data:`ENCODER_PREFIXES`.

    Copy-through measurement: an autoencoder with skips can reconstruct its input by
    copying it through the top skip. ``forward(x, zero_skips=(0,))`` (or setting the
    attribute ``model.zero_skips = (0,)``) replaces the skip of level 0 (full resolution,
    ``w`` channels) by zeros of the same shape, so the reconstruction must come through the
    deeper path; levels 1-3 are the coarser skips.

    Autoencoder without skip connections: ``UNet(..., zero_skips=ALL_SKIPS)`` (or the
    attribute set to :data:`ALL_SKIPS`) zeroes every skip in training and evaluation alike,
    so everything the decoder gets comes through the bottleneck and copying the input
    through a skip is impossible. The architecture, state-dict keys and shapes stay those
    of the normal U-Net, so weights transfer to and from it strictly; but the skip halves
    of the decoder (the input channels ``[:, :c]`` of the first 3x3 conv of each
    ``decoder.<i>.conv``, which see the zeroed skip) never receive signal or gradient and
    keep their initial values. A model that uses them later (fine-tuning with skips on)
    starts those weights from random. The attribute is not part of the state dict: set it
    again after loading weights.

    Args:
        in_channels: input channels (1 for grayscale X-rays or masks).
        out_channels: output channels (1 for the binary mask or the reconstruction).
        base_width: channels of the first block.
        norm: ``"batch"`` or ``"none"``.
        aux_head: also return an image-level logit from the globally average-pooled
            bottleneck features (dropout ``aux_dropout``, then a linear layer).
        zero_skips: initial value of the attribute ``zero_skips`` (e.g. :data:`ALL_SKIPS`).

    Shapes:
        input ``(N, in_channels, H, W)`` float, ``H`` and ``W`` divisible by 16; output
        ``(N, out_channels, H, W)`` float logits, or ``(mask_logits, class_logit)`` with
        ``class_logit`` of shape ``(N, 1)`` when ``aux_head``.
    """

    ENCODER_PREFIXES = ENCODER_PREFIXES
    DECODER_PREFIXES = DECODER_PREFIXES

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 64,
        norm: str = "batch",
        aux_head: bool = False,
        aux_dropout: float = 0.0,
        zero_skips: Iterable[int] = (),
    ):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ConfigError(f"UNet norm={norm!r} is unknown; valid: batch, none")
        if base_width < 1:
            raise ConfigError(f"UNet base_width must be at least 1, got {base_width}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.base_width, self.norm = base_width, norm
        widths = [base_width * 2**i for i in range(DEPTH)]  # w, 2w, 4w, 8w
        self.encoder = nn.ModuleList()
        c = in_channels
        for wd in widths:
            self.encoder.append(_conv_block(c, wd, n_convs=3, norm=norm))
            c = wd
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = _conv_block(c, 2 * c, n_convs=3, norm=norm)
        self.decoder = nn.ModuleList(UpBlock(2 * wd, norm) for wd in reversed(widths))
        self.head = nn.Conv2d(base_width, out_channels, kernel_size=1)
        self.aux = (
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(aux_dropout),
                nn.Linear(16 * base_width, 1),
            )
            if aux_head
            else None
        )
        #: Skip levels replaced by zeros in :meth:`forward` when it gets ``zero_skips=None``.
        self.zero_skips: tuple[int, ...] = tuple(sorted(set(zero_skips)))
        if not set(self.zero_skips) <= set(ALL_SKIPS):
            raise ConfigError(f"zero_skips={list(self.zero_skips)}: skip levels are 0..{DEPTH - 1}")
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                # stride == kernel: each output pixel sees one tap per input channel.
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_channels))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(
        self, x: torch.Tensor, zero_skips: Iterable[int] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(N, C, H, W)`` -> ``(N, out_channels, H, W)`` logits (see the class docstring).

        Args:
            zero_skips: skip levels (0 = top, full resolution ... 3) to replace by zeros;
                None uses the attribute ``self.zero_skips``.
        """
        _check_size(x.shape[-2], x.shape[-1])
        zs = set(self.zero_skips if zero_skips is None else zero_skips)
        if not zs <= set(range(DEPTH)):
            raise ValueError(f"zero_skips={sorted(zs)}: skip levels are 0..{DEPTH - 1}")
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            skips.append(torch.zeros_like(x) if level in zs else x)
            x = self.pool(x)
        z = self.bottleneck(x)
        x = z
        for up, skip in zip(self.decoder, reversed(skips)):
            x = up(x, skip)
        out = self.head(x)
        if self.aux is not None:
            return out, self.aux(z)
        return out

    def extra_repr(self) -> str:
        zs = f", zero_skips={self.zero_skips}" if self.zero_skips else ""
        return f"base_width={self.base_width}, norm={self.norm!r}{zs}"


def build_unet(cfg, in_channels: int = 1, out_channels: int = 1, **kwargs) -> UNet:
    """The :class:`UNet` a :class:`~pneumolib.config.Config` asks for (``base_width``,
    ``unet_norm``); used for the autoencoders and the segmentation model alike, so their
    state dicts match."""
    return UNet(in_channels, out_channels, base_width=cfg.base_width, norm=cfg.unet_norm, **kwargs)


def split_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(seg_logits (B, 1, H, W), class_logit (B, 1) or None)`` from any model output: a
    tensor (segmentation only), a ``(seg, cls)`` tuple / list (as smp's ``aux_params``
    models and the ``random_cls`` scenario return), or a dict with ``seg`` / ``mask`` and
    ``cls`` / ``label`` / ``class_logit`` entries."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, Mapping):
        seg = next((out[k] for k in ("seg", "mask", "seg_logits", "logits") if k in out), None)
        cls = next((out[k] for k in ("cls", "label", "class_logit", "cls_logit") if k in out), None)
        if seg is None:
            raise TypeError(f"model returned a dict without a segmentation entry: {sorted(out)}")
        return seg, cls
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], (out[1] if len(out) > 1 else None)
    raise TypeError(f"model returned {type(out).__name__}; expected a tensor or (seg, cls)")
