"""The registry of the paper's six initialisations of the segmentation U-Net (its Table 4),
and of the extra scenarios of this compendium.

A :class:`Scenario` says which architecture is trained, where the encoder and decoder
weights come from (``None`` = random, or an autoencoder kind of :data:`AE_KINDS`,
pretrained by ``pneumo pretrain --kind KIND``), whether the encoder is frozen, and whether
the model has an image-level classification head. :func:`build_model` turns a scenario name
into a ready model.

:data:`SCENARIOS` holds exactly the paper's six (``pneumo reproduce``, Figures 5-7 and
Table 4 iterate it); :data:`EXTRA_SCENARIOS` holds the others (a pretext that cannot copy
its input, an image-level head), which are not in the paper (``paper_dice`` /
``paper_iou`` are nan). :data:`ALL_SCENARIOS` is both; :func:`get_scenario`,
:func:`build_model`, ``pneumo train --scenario`` and
:func:`pneumolib.training.runs.train_scenario` accept every name in it.

"Encoder" of the paper U-Net means ``encoder.*`` and ``bottleneck.*``; "decoder" means
``decoder.*`` and ``head.*`` (see :data:`pneumolib.models.unet.ENCODER_PREFIXES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn as nn

from pneumolib.errors import ConfigError, WeightsError

from .parts import apply_frozen_bn_eval, freeze_encoder
from .resnet import SMP_ENCODER_PREFIXES, config_kwargs, resnet50_unet
from .unet import DECODER_PREFIXES, ENCODER_PREFIXES, build_unet

__all__ = [
    "Scenario", "SCENARIOS", "EXTRA_SCENARIOS", "ALL_SCENARIOS", "PAPER_GROUPS", "AE_KINDS",
    "get_scenario", "build_model",
    "transfer_weights", "transfer_report",
    # re-exported from pneumolib.models.parts: the training loop calls it after model.train()
    "freeze_encoder", "apply_frozen_bn_eval",
]

#: Autoencoder kinds a scenario can draw weights from (``pneumo pretrain --kind``):
#: ``xray`` / ``mask`` (the paper's: reconstruct the input X-ray or mask), ``genesis``
#: (restore a Models Genesis-distorted X-ray, :mod:`pneumolib.models.pretext`) and ``xray_noskip``
#: (reconstruct the X-ray with every skip connection zeroed). All are the paper U-Net, so
#: their state dicts have the same keys and shapes.
AE_KINDS = ("xray", "mask", "genesis", "xray_noskip")


@dataclass(frozen=True)
class Scenario:
    """One initialisation of the segmentation model.

    Attributes:
        name: registry key (also the papermill parameter and the results folder name).
        label: the row label of the paper's Table 4.
        arch: ``"unet"`` (the paper's U-Net) or ``"resnet50"`` (smp U-Net, ImageNet encoder).
        encoder_from: ``None`` (random; ImageNet for ``resnet50``) or a kind of
            :data:`AE_KINDS` (the paper uses ``"xray"``).
        decoder_from: ``None`` (random) or a kind of :data:`AE_KINDS` (the paper:
            ``"xray"`` or ``"mask"``).
        freeze_encoder: encoder (+ bottleneck) without gradients, BatchNorm in eval mode.
        paper_dice / paper_iou: the paper's Table 4 numbers (pooled, test split); nan for
            scenarios not in the paper.
        cls_head: the model also returns an image-level logit ("this image has a
            pneumothorax") from its pooled bottleneck (``UNet(aux_head=True)``; smp's
            ``aux_params`` for ``resnet50``); never transferred (random init). Trained with
            :data:`pneumolib.training.module.CLS_WEIGHT` x BCE on top of the segmentation loss.
    """

    name: str
    label: str
    arch: str
    encoder_from: str | None
    decoder_from: str | None
    freeze_encoder: bool
    paper_dice: float
    paper_iou: float
    cls_head: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ("unet", "resnet50"):
            raise ConfigError(f"scenario {self.name!r}: arch={self.arch!r}; valid: unet, resnet50")
        for part in ("encoder_from", "decoder_from"):
            src = getattr(self, part)
            if src is not None and src not in AE_KINDS:
                raise ConfigError(f"scenario {self.name!r}: {part}={src!r}; valid: None, {', '.join(AE_KINDS)}")
        if self.arch == "resnet50" and (self.encoder_from or self.decoder_from):
            raise ConfigError(f"scenario {self.name!r}: the ResNet-50 U-Net takes no autoencoder weights")

    @property
    def needs(self) -> set[str]:
        """The autoencoder kinds that must be pretrained first (subset of :data:`AE_KINDS`)."""
        return {s for s in (self.encoder_from, self.decoder_from) if s is not None}

    def claims(self) -> list[tuple[tuple[str, ...], str]]:
        """``[(state-dict prefixes, autoencoder kind)]`` this scenario transfers."""
        out = []
        if self.encoder_from:
            out.append((ENCODER_PREFIXES, self.encoder_from))
        if self.decoder_from:
            out.append((DECODER_PREFIXES, self.decoder_from))
        return out


#: The paper's six scenarios, in Table 4's order (best first).
_S = Scenario  # short alias for the table below
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        #    name                      label                                   arch        enc     dec     frozen dice  iou
        _S("resnet50",                "ResNet-50 Encoder",                    "resnet50", None,   None,   False, 0.60, 0.44),
        _S("ae_encoder",              "Pretrained encoder only",              "unet",     "xray", None,   False, 0.53, 0.38),
        _S("ae_encoder_mask_decoder", "Pretrained encoder and decoder",       "unet",     "xray", "mask", False, 0.53, 0.38),
        _S("random",                  "Randomly initialized",                 "unet",     None,   None,   False, 0.50, 0.36),
        _S("ae_full",                 "Autoencoder weights",                  "unet",     "xray", "xray", False, 0.48, 0.34),
        _S("ae_full_frozen",          "Autoencoder weights (frozen encoder)", "unet",     "xray", "xray", True,  0.23, 0.13),
    )
}

_NAN = math.nan
#: Scenarios beyond the paper (not in Table 4, Figures 5-7 or ``pneumo reproduce``):
#:
#: * ``genesis_full`` / ``genesis_encoder``: encoder and decoder, or the encoder only, from
#:   the Models Genesis restoration autoencoder (``pneumo pretrain --kind genesis``), a
#:   pretext that cannot be solved by copying the input through a skip;
#: * ``noskip_encoder``: the encoder of the X-ray autoencoder trained with every skip zeroed
#:   (``--kind xray_noskip``): the bottleneck must carry the whole image;
#: * ``random_cls``: the random U-Net with an image-level "pneumothorax present" head on the
#:   pooled bottleneck (the 4th-place SIIM-ACR Kaggle idea: decide empty masks per image).
EXTRA_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        #    name               label                                         arch    enc            dec        frozen dice  iou   cls
        _S("genesis_full",     "Models Genesis weights (encoder and decoder)", "unet", "genesis",     "genesis", False, _NAN, _NAN),
        _S("genesis_encoder",  "Models Genesis encoder only",                  "unet", "genesis",     None,      False, _NAN, _NAN),
        _S("noskip_encoder",   "No-skip autoencoder encoder only",             "unet", "xray_noskip", None,      False, _NAN, _NAN),
        _S("random_cls",       "Randomly initialized + image-level head",      "unet", None,          None,      False, _NAN, _NAN, True),
    )
}

#: The paper's six, then the extras: every name :func:`get_scenario` accepts.
ALL_SCENARIOS: dict[str, Scenario] = {**SCENARIOS, **EXTRA_SCENARIOS}

#: Scenario groups of the paper's Figures 5-7 (four panels each: train loss, validation
#: loss, test Dice, test IoU). ``None`` in figure7 is "the best autoencoder scenario",
#: chosen at plot time from the results.
PAPER_GROUPS: dict[str, list[str | None]] = {
    "figure5": ["random", "ae_full", "ae_full_frozen"],
    "figure6": ["random", "ae_encoder", "ae_encoder_mask_decoder"],
    "figure7": ["random", None, "resnet50"],
}


def get_scenario(name: str | Scenario) -> Scenario:
    """The registered scenario ``name`` (of :data:`ALL_SCENARIOS`); ConfigError listing the
    valid names otherwise."""
    if isinstance(name, Scenario):
        return name
    try:
        return ALL_SCENARIOS[name]
    except KeyError:
        raise ConfigError(
            f"unknown scenario {name!r}; valid scenarios: {', '.join(ALL_SCENARIOS)}"
        ) from None


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return key.startswith(prefixes)


def transfer_weights(
    model: nn.Module, scenario: Scenario, ae_states: Mapping[str, Mapping[str, torch.Tensor]] | None
) -> dict[str, str]:
    """Copy the prefixes ``scenario`` claims from the autoencoder state dicts into ``model``.

    Strict: every model key under a claimed prefix must be in the autoencoder's state dict
    with the same shape, and the autoencoder may have no extra key under it.

    Returns:
        ``{state-dict key: autoencoder kind}`` for the keys copied.

    Raises:
        WeightsError: a required autoencoder state is missing (names the ``pneumo pretrain``
            command to run), or keys / shapes do not match (names scenario, key and shapes).
    """
    ae_states = ae_states or {}
    missing_kinds = sorted(k for k in scenario.needs if ae_states.get(k) is None)
    if missing_kinds:
        runs = " and ".join(f"`pneumo pretrain --kind {k}`" for k in missing_kinds)
        raise WeightsError(
            f"scenario {scenario.name!r} needs the {' and '.join(missing_kinds)} autoencoder "
            f"weights, which were not given: run {runs} first (same base_width and unet_norm)."
        )
    own = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for prefixes, kind in scenario.claims():
        ae = ae_states[kind]
        wanted = [k for k in own if _under(k, prefixes)]
        extra = sorted(k for k in ae if _under(k, prefixes) and k not in own)
        for key in wanted:
            if key not in ae:
                example = ", ".join(list(ae)[:3])
                raise WeightsError(
                    f"scenario {scenario.name!r}: key {key!r} is missing from the {kind} "
                    f"autoencoder's state dict (its keys start: {example}). Was it trained "
                    "with the same unet_norm, and saved as UNet.state_dict()?"
                )
            if tuple(ae[key].shape) != tuple(own[key].shape):
                raise WeightsError(
                    f"scenario {scenario.name!r}: key {key!r} has shape {tuple(ae[key].shape)} in "
                    f"the {kind} autoencoder but {tuple(own[key].shape)} in the model. Pretrain "
                    "the autoencoder with the same base_width / unet_norm as the segmentation run."
                )
            new[key] = ae[key].detach()
            sources[key] = kind
        if extra:
            raise WeightsError(
                f"scenario {scenario.name!r}: the {kind} autoencoder has keys the model lacks "
                f"({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}); was it trained "
                "with another unet_norm?"
            )
    if new:
        model.load_state_dict(new, strict=False)
    return sources


def segmentation_head(model: nn.Module) -> nn.Conv2d:
    """The last (1x1 or 3x3) convolution producing the mask logits, for both architectures."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Conv2d):
        return head
    seg = getattr(model, "segmentation_head", None)  # smp
    if seg is not None:
        convs = [m for m in seg.modules() if isinstance(m, nn.Conv2d)]
        if convs:
            return convs[-1]
    raise ConfigError(f"{type(model).__name__} has no segmentation head convolution")


def init_head_prior(model: nn.Module, prior: float) -> None:
    """Set the mask head's bias to ``log(prior / (1 - prior))``: every pixel starts at
    probability ``prior`` (Lin et al. 2017, Focal Loss, section 4.1 "Initialization").

    Applied after any transfer: an autoencoder's head bias meant an intensity offset, not a
    logit. The weights are kept (transferred or random)."""
    if not 0.0 < prior < 1.0:
        raise ConfigError(f"head prior {prior} must lie in (0, 1)")
    head = segmentation_head(model)
    if head.bias is None:
        raise ConfigError("the segmentation head has no bias to initialise")
    with torch.no_grad():
        head.bias.fill_(math.log(prior / (1.0 - prior)))


def build_model(
    name: str | Scenario,
    cfg,
    ae_states: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> nn.Module:
    """The segmentation model of scenario ``name``, initialised and frozen as it says.

    Args:
        name: a key of :data:`ALL_SCENARIOS` (or a :class:`Scenario`).
        cfg: a :class:`~pneumolib.config.Config` (``base_width``, ``unet_norm``,
            ``encoder_weights``, ``resnet_fallback_random``).
        ae_states: ``{kind: state_dict}`` (e.g. ``{"xray": ..., "mask": ...}``) of the autoencoder
            :class:`~pneumolib.models.unet.UNet` s (keys as ``UNet.state_dict()``); only the kinds
            in ``scenario.needs`` are used.

    Returns:
        ``(N, 1, H, W) -> (N, 1, H, W)`` logits model (``-> (logits, (N, 1) class logit)``
        when ``scenario.cls_head``), with attributes ``scenario`` (the name) and
        ``weights_sources`` (``{key: autoencoder kind}`` of the transferred keys);
        the ResNet-50 model also has ``weights_source`` (see
        :func:`~pneumolib.models.resnet.resnet50_unet`).

    Raises:
        ConfigError: unknown scenario. WeightsError: see :func:`transfer_weights` and
        :func:`~pneumolib.models.resnet.resnet50_unet`.
    """
    sc = get_scenario(name)
    if sc.arch == "resnet50":
        model = resnet50_unet(
            in_channels=1, classes=1, encoder_weights=cfg.encoder_weights,
            fallback_random=cfg.resnet_fallback_random,
            aux_params=dict(classes=1) if sc.cls_head else None, **config_kwargs(cfg),
        )
        sources: dict[str, str] = {}
    else:
        model = build_unet(cfg, in_channels=1, out_channels=1, aux_head=sc.cls_head)
        sources = transfer_weights(model, sc, ae_states)
    prior = float(getattr(cfg, "head_prior", 0.0) or 0.0)
    if prior > 0:
        init_head_prior(model, prior)
    if sc.freeze_encoder:
        freeze_encoder(model)
    model.scenario = sc.name
    model.head_prior = prior
    model.weights_sources = sources
    return model


def transfer_report(
    model: nn.Module,
    ae_states: Mapping[str, Mapping[str, torch.Tensor]] | None,
    scenario: str | Scenario,
) -> dict[str, str]:
    """``{parameter/buffer name: source}`` for every entry of ``model.state_dict()``.

    Sources: an autoencoder kind (copied from that autoencoder), ``"random"``, and for
    the ResNet-50 encoder ``"imagenet"``, ``"file:<path>"`` or ``"random"`` (from the
    model's ``weights_source``). Derived from the scenario's claims; a claimed key missing
    from a given autoencoder state is a WeightsError (kinds not in ``ae_states`` are not
    checked). Which parameters are frozen: ``requires_grad``.
    """
    sc = get_scenario(scenario)
    ae_states = ae_states or {}
    report: dict[str, str] = {}
    if sc.arch == "resnet50":
        ws = getattr(model, "weights_source", "none")
        enc_src = "random" if ws == "none" or ws.startswith("random") else ws
        claims = [(SMP_ENCODER_PREFIXES, enc_src)]
    else:
        claims = sc.claims()
    for key in model.state_dict():
        src = "random"
        for prefixes, kind in claims:
            if _under(key, prefixes):
                if kind in AE_KINDS and kind in ae_states and key not in ae_states[kind]:
                    raise WeightsError(
                        f"scenario {sc.name!r}: key {key!r} claimed from the {kind} "
                        "autoencoder is not in the state dict given"
                    )
                src = kind
        report[key] = src
    if getattr(model, "head_prior", 0.0):
        bias = segmentation_head(model).bias
        for key, p in model.named_parameters():
            if p is bias:
                report[key] = "prior"  # init_head_prior overwrote it after any transfer
    return report


def scenario_order() -> list[str]:
    """Scenario names of :data:`SCENARIOS` (the paper's six), the benchmark first."""
    names = list(SCENARIOS)
    return (["random"] if "random" in names else []) + [n for n in names if n != "random"]
