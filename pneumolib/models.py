"""The two segmentation networks of the paper and how their weights are loaded.

* :class:`UNet` -- the paper's U-Net (its section 3.3.1), used both as the segmentation
  model and as the X-ray / mask autoencoder whose weights seed it.
* :func:`resnet50_unet` -- segmentation_models_pytorch's U-Net on a ResNet-50 encoder, with
  ImageNet weights from smp's hub, from a local file, or (on request) random.
* :func:`freeze_encoder` -- the "frozen encoder" scenario: no gradients AND BatchNorm in
  eval mode for the encoder part, whoever calls ``model.train()``.

Parameter counts for the README: ``python -m pneumolib.models``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlparse

import torch
import torch.nn as nn

from .errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

__all__ = [
    "UNet",
    "split_output",
    "ALL_SKIPS",
    "InputSizeError",
    "ENCODER_PREFIXES",
    "DECODER_PREFIXES",
    "build_unet",
    "resnet50_unet",
    "load_resnet50_state",
    "freeze_encoder",
    "apply_frozen_bn_eval",
    "encoder_prefixes",
    "count_parameters",
    "param_counts",
    "param_table",
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

#: The ResNet-50 U-Net's encoder (smp names it ``encoder``).
SMP_ENCODER_PREFIXES: tuple[str, ...] = ("encoder.",)

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


# ---------------------------------------------------------------------------------------
# ResNet-50 U-Net (segmentation_models_pytorch)
# ---------------------------------------------------------------------------------------
_RANDOM_FALLBACK = "random (ImageNet weights unavailable)"


def _how_to_get_weights(reason: str) -> str:
    return (
        f"ImageNet weights for the ResNet-50 encoder are not available: {reason}\n"
        "Two ways out:\n"
        "  (a) allow the download: give this machine access to huggingface.co (unset "
        "HF_HUB_OFFLINE), or pre-populate the Hugging Face cache ($HF_HOME / $HF_HUB_CACHE) on "
        "a machine that has it, e.g. by running python -c \"import segmentation_models_pytorch "
        "as smp; smp.Unet('resnet50', encoder_weights='imagenet')\" and copying the cache over;\n"
        "  (b) pass a local weights file with the config option "
        "encoder_weights=/path/to/resnet50-*.pth (a torchvision ResNet-50 state dict, e.g. "
        "resnet50-0676ba61.pth or resnet50-11ad3fa6.pth) or a .safetensors file "
        "(e.g. smp-hub/resnet50.imagenet's model.safetensors).\n"
        "Or set resnet_fallback_random=true to train this scenario from random weights "
        "(its results are then NOT the paper's ImageNet scenario)."
    )


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _imagenet_settings() -> dict:
    from segmentation_models_pytorch.encoders import encoders

    return encoders["resnet50"]["pretrained_settings"]["imagenet"]


def _imagenet_cached() -> bool:
    """True when smp's ImageNet files are in the local HF cache (then smp needs no network:
    a commit-hash revision that is cached short-circuits ``hf_hub_download``)."""
    from huggingface_hub import try_to_load_from_cache

    s = _imagenet_settings()
    for filename in ("config.json", "model.safetensors"):
        hit = try_to_load_from_cache(s["repo_id"], filename, revision=s["revision"])
        if not isinstance(hit, str) or not os.path.exists(hit):
            return False
    return True


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """A reason why the hub cannot be reached now, or None if it may be reachable.

    ``hf_hub_download`` retries for about 25 s before it gives up on a dead network; this
    probe fails in at most ``timeout`` seconds instead. Behind a proxy it says nothing (the
    direct connection it tries may be blocked while the proxy works).
    """
    if _truthy_env("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
        host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach the Hugging Face hub ({exc})"


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(
            f"encoder_weights={str(path)!r}: no such file. Pass a torchvision ResNet-50 state "
            "dict (.pth) or a .safetensors file, 'imagenet', or 'none'."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        raise WeightsError(
            f"encoder_weights={str(path)!r} cannot be read as a state dict "
            f"({type(exc).__name__}: {exc}). Expected a torchvision ResNet-50 state dict saved "
            "with torch.save(model.state_dict(), path) or a .safetensors file."
        ) from exc
    # Training checkpoints wrap the state dict; accept the two usual wrappers.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 4:
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"encoder_weights={str(path)!r} does not hold a state dict of tensors "
            f"(got {type(state).__name__}). Save it with torch.save(model.state_dict(), path)."
        )
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_resnet50_state(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load a local ResNet-50 state dict into a 3-input-channel smp ResNet encoder.

    ``fc.*`` keys (the ImageNet classifier, which the encoder does not have) are dropped;
    every other key must match the encoder exactly, in name and shape.

    Raises:
        WeightsError: the file is missing, unreadable, or not a ResNet-50 state dict (the
            message lists missing / unexpected / mis-shaped keys).
    """
    path = Path(path).expanduser()
    state = {k: v for k, v in _read_weights_file(path).items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:

        def show(xs: Sequence[str]) -> str:
            return ", ".join(xs[:8]) + (f", ... ({len(xs)} in all)" if len(xs) > 8 else "")

        problems = []
        if missing:
            problems.append(f"missing keys: {show(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            problems.append(f"shape mismatches: {show(shapes)}")
        raise WeightsError(
            f"encoder_weights={str(path)!r} is not a ResNet-50 state dict: "
            + "; ".join(problems)
            + ". Expected torchvision's resnet50 (e.g. resnet50-0676ba61.pth) or smp-hub's "
            "resnet50.imagenet model.safetensors."
        )
    encoder.load_state_dict(state, strict=True)


def resnet50_unet(
    in_channels: int = 1,
    classes: int = 1,
    encoder_weights: str | os.PathLike | None = "imagenet",
    fallback_random: bool = False,
    aux_params: dict | None = None,
    encoder_name: str = "resnet50",
) -> nn.Module:
    """smp's U-Net with a ResNet-50 encoder (the paper's best scenario).

    Args:
        in_channels: input channels; for pretrained weights and 1 channel, conv1's weight is
            summed over RGB (smp's own conversion, ``encoder.set_in_channels(1, pretrained=True)``).
        classes: output channels (logits).
        encoder_weights: ``"imagenet"`` (smp's hub download, or its local cache),
            ``None`` / ``"none"`` (random), or the path of a local file: a torchvision
            ResNet-50 state dict (``resnet50-*.pth``; ``fc.*`` keys are ignored) or a
            ``.safetensors`` file. A path or None never touches the network.
        fallback_random: when ImageNet weights cannot be had, warn (``warnings`` and
            ``logging``) and return random weights instead of raising.
        aux_params: smp's image-level classification head, e.g. ``dict(classes=1,
            dropout=0.2)``; the model then returns ``(mask_logits, class_logits)``.
        encoder_name: smp encoder; ``resnet50`` except where a profile trades it for a
            lighter ResNet to fit a CPU time budget (the ``demo`` profile; recorded in the
            run's ``metrics.json``). Local weight files are checked against this encoder.

    Returns:
        ``smp.Unet`` with the attribute ``weights_source``: ``"imagenet"``,
        ``"file:<path>"``, ``"random (ImageNet weights unavailable)"`` or ``"none"``.

    Raises:
        WeightsError: ImageNet weights unavailable without ``fallback_random`` (the message
            names both ways out), or a local file that is not a ResNet-50 state dict.
    """
    import segmentation_models_pytorch as smp

    def make(weights: str | None, channels: int) -> nn.Module:
        return smp.Unet(
            encoder_name=encoder_name, encoder_weights=weights, in_channels=channels,
            classes=classes, aux_params=aux_params,
        )

    spec = encoder_weights
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("none", "")):
        model = make(None, in_channels)
        model.weights_source = "none"
        return model

    if isinstance(spec, str) and spec.strip().lower() == "imagenet":
        reason = None if _imagenet_cached() else _hub_unreachable()
        if reason is None:
            try:
                model = make("imagenet", in_channels)
            except Exception as exc:  # noqa: BLE001 - network / hub errors of any kind
                reason = f"{type(exc).__name__}: {exc}"
            else:
                model.weights_source = "imagenet"
                return model
        if not fallback_random:
            raise WeightsError(_how_to_get_weights(reason))
        msg = (
            "ResNet-50 scenario: ImageNet weights unavailable, USING RANDOM WEIGHTS "
            f"(resnet_fallback_random=true). Results are not the paper's. Reason: {reason}"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
        model = make(None, in_channels)
        model.weights_source = _RANDOM_FALLBACK
        return model

    # A local file: load at 3 channels, then convert conv1 the way smp does for pretrained.
    path = Path(spec).expanduser()
    model = make(None, 3)
    load_resnet50_state(model.encoder, path)
    model.encoder.set_in_channels(in_channels, pretrained=True)
    model.weights_source = f"file:{path}"
    return model


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
    """:func:`param_counts` as aligned text (``python -m pneumolib.models``, ``pneumo params``)."""
    return "\n".join(f"{name:<48} {n:>12,d}" for name, n in param_counts(base_width))


def _main() -> None:
    print(param_table())


if __name__ == "__main__":
    _main()


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
