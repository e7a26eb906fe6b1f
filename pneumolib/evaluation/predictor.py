"""A trained run as a function from raw images to probabilities: :func:`load_predictor`
reads a run folder (or its ``model.pt`` / a ``.ckpt``), rebuilds the network, and wraps it
with the run's image size, normalisation and post-processing triplet (:class:`PostProcess`,
from the run's ``postprocess.json`` when the image-level study tuned one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumolib.errors import ConfigError, PneumoError, WeightsError
from pneumolib.models.unet import split_output
from pneumolib.models.weights_io import load_checkpoint_file
from pneumolib.prep.augment import resize_image, to_uint8

__all__ = ["DEFAULT_THRESHOLD", "POSTPROCESS_FILE", "PostProcess", "Predictor", "load_predictor",
           "read_postprocess", "resolve_device"]


#: Optional file of a run folder with the tuned post-processing triplet.
POSTPROCESS_FILE = "postprocess.json"


DEFAULT_THRESHOLD = 0.5


_RUN_HINT = ("Pass a run folder written by `pneumo train` (it holds config.json, model.pt and "
             "metrics.json), or its model.pt")


# -- post-processing -------------------------------------------------------------------
@dataclass(frozen=True)
class PostProcess:
    """The "triplet" of the SIIM-ACR 1st place, applied at the model's resolution.

    Attributes:
        top_threshold: in [0, 1]; pixels above it count towards the decision.
        min_area: >= 0 pixels at the model's input size (``image_size`` squared); the image
            is positive when MORE than ``min_area`` pixels exceed ``top_threshold``.
        bottom_threshold: in [0, 1]; the mask of a positive image is ``prob > bottom``.
        source: where the values came from (``"default"``, a ``postprocess.json`` path,
            or ``"... + command line"``).
    """

    top_threshold: float = DEFAULT_THRESHOLD
    min_area: int = 0
    bottom_threshold: float = DEFAULT_THRESHOLD
    source: str = "default"

    def __post_init__(self) -> None:
        for name in ("top_threshold", "bottom_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
                raise ConfigError(f"{name}={v!r} ({self.source}) must be a probability in [0, 1]")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, (int, np.integer)) \
                or self.min_area < 0:
            raise ConfigError(f"min_area={self.min_area!r} ({self.source}) must be an integer >= 0 "
                              "(pixels at the model's input size)")

    def decide(self, prob: np.ndarray) -> bool:
        """Whether an image is positive: ``(prob > top).sum() > min_area``.

        Args:
            prob: ``(S, S)`` pixel probabilities in [0, 1] at the model's size.
        """
        return int(np.count_nonzero(prob > self.top_threshold)) > int(self.min_area)

    def apply(self, prob: np.ndarray) -> tuple[bool, np.ndarray]:
        """``(positive, mask)``: mask ``(S, S)`` bool, ``prob > bottom`` when positive, else empty."""
        if self.decide(prob):
            return True, prob > self.bottom_threshold
        return False, np.zeros(prob.shape, dtype=bool)

    def with_overrides(self, threshold: float | None = None, min_area: int | None = None) -> "PostProcess":
        """A copy with a plain ``threshold`` (top = bottom = threshold) and/or ``min_area``."""
        if threshold is None and min_area is None:
            return self
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ConfigError(f"threshold={threshold} must be a probability in [0, 1] (--threshold)")
        if min_area is not None and int(min_area) < 0:
            raise ConfigError(f"min_area={min_area} must be >= 0 pixels (--min-area)")
        top = bottom = self.top_threshold
        if threshold is None:
            bottom = self.bottom_threshold
        else:
            top = bottom = float(threshold)
        return PostProcess(top, self.min_area if min_area is None else int(min_area), bottom,
                           source=f"{self.source} + command line")


def read_postprocess(run: Path, image_size: int) -> PostProcess:
    """The run's ``postprocess.json`` triplet, or the default (0.5, 0, 0.5) without one.

    The file holds ``{"top_threshold": float, "min_area": int, "bottom_threshold": float}``
    (``bottom_threshold`` defaults to ``top_threshold``, ``min_area`` to 0) and optionally
    ``"image_size"``: the resolution ``min_area`` was tuned at; it is rescaled to this run's
    ``image_size`` (areas scale with the side squared).

    Raises:
        ConfigError: the file is not valid JSON or its values are out of range.
    """
    p = Path(run) / POSTPROCESS_FILE
    if not p.is_file():
        return PostProcess()
    try:
        d = json.loads(p.read_text())
        if not isinstance(d, dict) or "top_threshold" not in d:
            raise ValueError("expected an object with top_threshold, min_area, bottom_threshold")
        top = float(d["top_threshold"])
        bottom = float(d.get("bottom_threshold", top))
        area = float(d.get("min_area", 0))
        tuned_at = d.get("image_size")
        if tuned_at:
            area = area * (image_size / float(tuned_at)) ** 2
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{p}: cannot read the post-processing triplet ({e}). Fix or delete the "
                          "file (without it the threshold is 0.5 and min_area 0).") from None
    return PostProcess(top, int(round(area)), bottom, source=str(p))


# -- device ----------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any torch device string otherwise.

    Raises:
        ConfigError: an unknown device string, or CUDA asked for but not available.
    """
    if isinstance(device, torch.device):
        return device
    d = str(device).strip().lower()
    if d in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(d)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r} is unknown; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here; use --device cpu (or auto)")
    return dev


# -- the model -------------------------------------------------------------------------
@dataclass
class Predictor:
    """A trained segmentation network with everything needed to run it on raw files.

    Attributes:
        model: the network, in eval mode on ``device``; input ``(N, 1, S, S)`` normalised
            float32, output ``(N, 1, S, S)`` logits or ``((N, 1, S, S), (N, 1))``.
        run: the run folder; ``weights``: the file the weights came from.
        image_size: ``S``, the model's input side in pixels.
        mean, std: the training set's normalisation (pixel values scaled to [0, 1]).
        post: the post-processing triplet.
        device: where the model runs.
    """

    model: torch.nn.Module
    run: Path
    weights: Path
    image_size: int
    mean: float
    std: float
    post: PostProcess
    device: torch.device
    scenario: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        """``(H, W)`` float in [0, 1] -> ``(S, S)`` float32, normalised as in training."""
        small = to_uint8(resize_image(gray, self.image_size)).astype(np.float32) / 255.0
        return (small - np.float32(self.mean)) / np.float32(self.std)

    @torch.no_grad()
    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the network on prepared images.

        Args:
            batch: ``(N, S, S)`` float32, from :meth:`prepare`.

        Returns:
            ``(prob, image_prob)``: ``(N, S, S)`` float32 pixel probabilities in [0, 1] and
            ``(N,)`` float image probabilities in [0, 1] (the class head's sigmoid when the
            model has one, else the largest pixel probability).
        """
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))[:, None].to(self.device)
        out, cls = split_output(self.model(x))
        prob = torch.sigmoid(out.float())[:, 0]
        if cls is not None:
            image_prob = torch.sigmoid(cls.float().reshape(cls.shape[0], -1)[:, 0])
        else:
            image_prob = prob.flatten(1).amax(1)
        return prob.cpu().numpy(), image_prob.cpu().numpy()


def _resolve_checkpoint(checkpoint: str | os.PathLike) -> tuple[Path, Path]:
    """``(run folder, weights file)`` of a run folder, its ``model.pt`` or a ``.ckpt``."""
    p = Path(checkpoint).expanduser()
    if not p.exists():
        raise WeightsError(f"checkpoint {p} does not exist. {_RUN_HINT}.")
    if p.is_dir():
        run = p
        weights = p / "model.pt"
        if not weights.is_file():
            ckpts = [p / "checkpoints" / n for n in ("best.ckpt", "last.ckpt")]
            found = [c for c in ckpts if c.is_file()]
            if not (p / "config.json").is_file():
                raise WeightsError(f"checkpoint {p} is not a pneumolib run folder (no config.json "
                                   f"and no model.pt). {_RUN_HINT}.")
            if not found:
                raise WeightsError(f"checkpoint {p} holds no model.pt (nor checkpoints/best.ckpt): "
                                   "the run has not finished. Finish it (`pneumo train ... --resume`) "
                                   "or pass another run.")
            weights = found[0]
    elif p.suffix == ".ckpt":
        weights = p
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    else:
        weights, run = p, p.parent
    if not (run / "config.json").is_file():
        raise WeightsError(f"checkpoint {p} is not inside a pneumolib run folder: {run / 'config.json'} "
                           f"is missing. {_RUN_HINT}.")
    return run, weights


def _read_state(weights: Path) -> dict[str, torch.Tensor]:
    """The network's state dict in ``model.pt`` or a Lightning ``.ckpt``, loaded as data only
    (:func:`~pneumolib.models.weights_io.load_checkpoint_file`: a file that needs pickle to run
    code is refused with an :class:`~pneumolib.errors.UnsafeCheckpointError`, unrun)."""
    obj = load_checkpoint_file(weights, "checkpoint", hint=f"{_RUN_HINT}.")
    if weights.suffix == ".ckpt":  # a Lightning checkpoint: the module's keys start with model.
        obj = obj.get("state_dict", obj)
        if isinstance(obj, dict):
            obj = {k[len("model."):]: v for k, v in obj.items() if k.startswith("model.")} or obj
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"checkpoint {weights} holds no state_dict of tensors. {_RUN_HINT}.")
    return obj


def _with_heads(model: torch.nn.Module, state: dict[str, torch.Tensor], cfg) -> torch.nn.Module:
    """Rebuild ``model`` with an image-level head when the weights carry one."""
    from pneumolib.models.resnet import config_kwargs, resnet50_unet
    from pneumolib.models.unet import UNet

    if isinstance(model, UNet) and model.aux is None and any(k.startswith("aux.") for k in state):
        return UNet(in_channels=1, out_channels=1, base_width=cfg.base_width, norm=cfg.unet_norm,
                    aux_head=True)
    head = [k for k in state if k.startswith("classification_head.") and k.endswith(".weight")]
    if head and getattr(model, "classification_head", None) is None and hasattr(model, "segmentation_head"):
        classes = int(state[head[-1]].shape[0])
        return resnet50_unet(in_channels=1, classes=1, encoder_weights=None, aux_params={"classes": classes},
                             **config_kwargs(cfg))
    return model


def load_predictor(checkpoint: str | os.PathLike, device: str | torch.device = "auto",
                   threshold: float | None = None, min_area: int | None = None) -> Predictor:
    """Rebuild a finished run's network, normalisation and post-processing.

    Args:
        checkpoint: a run folder (``config.json`` + ``model.pt`` + ``metrics.json``), its
            ``model.pt``, or a Lightning ``.ckpt`` in its ``checkpoints/`` folder.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        threshold: overrides the post-processing with a plain threshold in [0, 1]
            (top = bottom = ``threshold``).
        min_area: overrides ``min_area`` (pixels at the model's input size).

    Returns:
        A :class:`Predictor` with the model in eval mode on ``device``.

    Raises:
        WeightsError: not a run folder / missing files / unreadable weights / weights that
            do not fit the run's architecture / an autoencoder run / no normalisation
            recorded; every message names the path and what to pass instead.
        ConfigError: an invalid device, threshold, min_area or ``postprocess.json``.
    """
    from .evaluate import load_state_checked, model_for_run, run_config

    run, weights = _resolve_checkpoint(checkpoint)
    try:
        cfg = run_config(run)
    except WeightsError:
        raise
    except (PneumoError, ValueError, TypeError) as e:
        raise WeightsError(f"{run / 'config.json'} cannot be read ({e}). {_RUN_HINT}.") from None
    mpath = run / "metrics.json"
    if not mpath.is_file():
        raise WeightsError(f"{mpath} is missing: run {run} has not finished, and its normalisation "
                           "(data.mean / data.std) is recorded there. Finish it (`pneumo train ... "
                           "--resume`) or pass a finished run.")
    try:
        meta = json.loads(mpath.read_text())
    except ValueError as e:
        raise WeightsError(f"{mpath} is not valid JSON ({e}); rerun or re-copy the run.") from None
    task = meta.get("task", "seg")
    if task != "seg":
        raise WeightsError(f"checkpoint {checkpoint} is a {task!r} run (an autoencoder): it reconstructs "
                           "images and does not segment. Pass a segmentation run from "
                           "`pneumo train --scenario ...`.")
    data = meta.get("data") or {}
    mean, std = data.get("mean"), data.get("std")
    if mean is None or std is None or not float(std) > 0:
        raise WeightsError(f"{mpath} records no normalisation (data.mean / data.std): the model cannot "
                           "be fed its inputs as trained. Retrain the run with this pneumolib version.")
    state = _read_state(weights)
    model, _ = model_for_run(run, cfg)
    model = _with_heads(model, state, cfg)
    load_state_checked(model, state, weights)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    post = read_postprocess(run, cfg.image_size).with_overrides(threshold, min_area)
    return Predictor(model=model, run=run, weights=weights, image_size=int(cfg.image_size),
                     mean=float(mean), std=float(std), post=post, device=dev,
                     scenario=meta.get("scenario"),
                     info={"name": meta.get("name"), "label": meta.get("label")})
