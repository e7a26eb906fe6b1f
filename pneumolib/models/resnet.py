"""segmentation_models_pytorch's U-Net on a ResNet-50 encoder (the paper's best scenario),
with ImageNet weights from smp's hub, from a local file (torchvision ``resnet50-*.pth`` or
``.safetensors``), or, on request, random; offline it fails fast with both ways out.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch
import torch.nn as nn

from pneumolib.errors import WeightsError
from pneumolib.models.weights_io import load_checkpoint_file

log = logging.getLogger(__name__)

#: smp ``Unet``'s default decoder: channels of its five up blocks, deepest first.
SMP_DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)


def config_kwargs(cfg) -> dict:
    """The :func:`resnet50_unet` arguments a Config fixes (``resnet_encoder``,
    ``resnet_decoder_channels``): every place that rebuilds a run's network uses these."""
    return {"encoder_name": cfg.resnet_encoder, "decoder_channels": parse_channels(cfg.resnet_decoder_channels)}


def parse_channels(spec: str | Sequence[int]) -> tuple[int, ...]:
    """``"256,128,64,32,16"`` -> ``(256, 128, 64, 32, 16)`` (five positive integers)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        out = tuple(int(x) for x in items)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 5 or min(out, default=0) < 1:
        raise WeightsError(f"resnet_decoder_channels={spec!r}: give five positive integers, deepest block "
                           f"first, e.g. {','.join(map(str, SMP_DECODER_CHANNELS))}")
    return out


#: The ResNet-50 U-Net's encoder (smp names it ``encoder``).
SMP_ENCODER_PREFIXES: tuple[str, ...] = ("encoder.",)


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

    ``hf_hub_download`` retries for a while before it gives up on a dead network; this
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
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
            raise WeightsError(
                f"encoder_weights={str(path)!r} cannot be read as a state dict "
                f"({type(exc).__name__}: {exc}). Expected a torchvision ResNet-50 state dict saved "
                "with torch.save(model.state_dict(), path) or a .safetensors file."
            ) from exc
    else:  # as data only: a pickle that needs code raises UnsafeCheckpointError, unrun
        state = load_checkpoint_file(
            path, "encoder_weights", hint="Expected a torchvision ResNet-50 state dict saved with "
            "torch.save(model.state_dict(), path) or a .safetensors file.")
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
    decoder_channels: Sequence[int] = SMP_DECODER_CHANNELS,
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
        decoder_channels: channels of smp's five decoder blocks (smp's default and the
            paper's model: :data:`SMP_DECODER_CHANNELS`; the ``demo`` stand-in halves them).

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
            classes=classes, aux_params=aux_params, decoder_channels=tuple(int(c) for c in decoder_channels),
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
