"""Predict pneumothorax on any chest X-ray files with a trained run: CSV, masks, overlays.

The one inference path of the project, used by ``pneumo predict``, the notebook
``06_covid_screening`` (through :mod:`pneumolib.screening`) and the benchmark::

    predictor = load_predictor("results/demo/resnet50")          # run folder or its model.pt
    df = predict_paths(["xrays/"], "results/demo/resnet50", "out/")

Per input file:

1. :func:`pneumolib.imageio.read_gray`: PNG / JPEG in any mode (L, RGB, RGBA, P, 16-bit),
   DICOM (incl. MONOCHROME1, extension-less files with the ``DICM`` marker) -> ``(H, W)``
   float32 in [0, 1] at native size.
2. Resized to the run's ``image_size`` (a square; non-square inputs are stretched, as in
   training), quantised to 8 bits as the training cache is, normalised with the run's own
   training mean / std (``metrics.json`` ``data.mean`` / ``data.std``).
3. The network in eval mode under ``torch.no_grad``, in batches; pixel probabilities are
   ``sigmoid(logits)``. A model that returns ``(seg_logits, class_logit)`` (a U-Net with
   an image-level head) gives the image probability ``sigmoid(class_logit)``; otherwise the
   image probability is the largest pixel probability.
4. Post-processing, the SIIM-ACR 1st place "triplet" (:class:`PostProcess`), at the model's
   resolution: the image is positive when more than ``min_area`` pixels have a probability
   above ``top_threshold``; its mask is then ``prob > bottom_threshold``, else empty. The
   triplet comes from the run's optional ``postprocess.json``; without it the threshold is
   0.5 and ``min_area`` 0 (positive when any pixel exceeds 0.5).
5. The probability map is resized back to the input's original size and thresholded there
   (``bottom_threshold``); areas in the CSV are counted at the original size.

Outputs in ``out_dir``: ``predictions.csv`` (:data:`COLUMNS`, one row per input, written
atomically), ``masks/<name>.png`` (8-bit, 0 / 255, original size), ``overlays/<name>.png``
(RGB: the X-ray with the predicted region tinted red and outlined in yellow) and
``predict_settings.json`` (checkpoint, post-processing, device). Output names mirror the
inputs' paths below the folder given; they are made unique when two inputs would collide.
An unreadable input (empty, truncated, not an image) gets a row with ``status`` =
``"error: <why>"`` instead of stopping the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from . import imageio, runio
from .errors import ConfigError, DataError, PneumoError, WeightsError
from .models import split_output
from .prep import resize_image, to_uint8

__all__ = [
    "COLUMNS", "CSV_NAME", "POSTPROCESS_FILE", "PostProcess", "Predictor", "collect_inputs",
    "load_predictor", "overlay_image", "predict_paths", "resolve_device",
]

#: The columns of ``predictions.csv``, in order.
COLUMNS = ("file", "status", "width", "height", "probability", "predicted_area_px",
           "predicted_area_frac", "decision", "mask", "overlay")
CSV_NAME = "predictions.csv"
SETTINGS_NAME = "predict_settings.json"
#: Optional file of a run folder with the tuned post-processing triplet.
POSTPROCESS_FILE = "postprocess.json"
POSITIVE, NEGATIVE = "pneumothorax", "no pneumothorax"
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
    try:
        if weights.suffix == ".ckpt":
            # a Lightning checkpoint of our own training (trusted: it is not only tensors)
            obj = torch.load(weights, map_location="cpu", weights_only=False)
            obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
            if isinstance(obj, dict):
                obj = {k[len("model."):]: v for k, v in obj.items() if k.startswith("model.")} or obj
        else:
            obj = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip, EOF errors of every kind
        raise WeightsError(f"checkpoint {weights} cannot be read as PyTorch weights ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}). It may be truncated or not "
                           f"a weights file: copy it again. {_RUN_HINT}.") from None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"checkpoint {weights} holds no state_dict of tensors. {_RUN_HINT}.")
    return obj


def _with_heads(model: torch.nn.Module, state: dict[str, torch.Tensor], cfg) -> torch.nn.Module:
    """Rebuild ``model`` with an image-level head when the weights carry one."""
    from .models import UNet, resnet50_unet

    if isinstance(model, UNet) and model.aux is None and any(k.startswith("aux.") for k in state):
        return UNet(in_channels=1, out_channels=1, base_width=cfg.base_width, norm=cfg.unet_norm,
                    aux_head=True)
    head = [k for k in state if k.startswith("classification_head.") and k.endswith(".weight")]
    if head and getattr(model, "classification_head", None) is None and hasattr(model, "segmentation_head"):
        classes = int(state[head[-1]].shape[0])
        return resnet50_unet(in_channels=1, classes=1, encoder_weights=None,
                             encoder_name=cfg.resnet_encoder, aux_params={"classes": classes})
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


# -- inputs ----------------------------------------------------------------------------
def _wanted(p: Path) -> bool:
    """A file found in a folder is an input: supported extension, or a DICOM without one."""
    if imageio.is_hidden_junk(p):
        return False
    ext = p.suffix.lower()
    if ext in imageio.IMAGE_EXTS:
        return True
    if ext == "":
        try:
            with open(p, "rb") as f:
                return f.read(132)[128:132] == b"DICM"
        except OSError:
            return False
    return False


def collect_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike],
                   exclude: str | os.PathLike | None = None
                   ) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """The files to predict, from files and folders.

    Folders are searched recursively in sorted order; hidden files and folders
    (``.DS_Store``, macOS ``._x.dcm``, ``.ipynb_checkpoints``) and files that are not
    images (``metadata.csv``, a README) are skipped. A file named explicitly is always an
    input (a bad one gets an error row later), and so is a path that does not exist.
    The folder ``exclude`` (the output folder, when it lies inside an input folder) is not
    searched.

    Returns:
        ``(files, skipped)``: ``files`` as ``(path, relative name)`` pairs, the relative
        name being the path below the folder given (the file name for a file given);
        ``skipped`` as ``(path, why)``.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[tuple[Path, str]] = []
    skipped: list[tuple[Path, str]] = []
    skip_dir = Path(exclude).expanduser().resolve() if exclude is not None else None
    for item in inputs:
        root = Path(item).expanduser()
        if not root.is_dir():
            files.append((root, root.name or str(root)))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and (skip_dir is None or (Path(dirpath) / d).resolve() != skip_dir))
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if _wanted(p):
                    files.append((p, p.relative_to(root).as_posix()))
                else:
                    why = "hidden file" if imageio.is_hidden_junk(p) else "not an image file"
                    skipped.append((p, why))
    return files, skipped


def _output_names(rels: Sequence[str]) -> list[str]:
    """Unique output names (no extension) mirroring ``rels``; collisions get a suffix.

    ``a/x.png`` -> ``a/x``; a second ``a/x.jpg`` -> ``a/x_jpg``; further clashes ``-2``...
    Compared case-insensitively, so the names are unique on any file system.
    """
    used: set[str] = set()
    out = []
    for rel in rels:
        parts = [s for s in rel.replace("\\", "/").split("/") if s not in ("", ".", "..")] or ["image"]
        stem, ext = os.path.splitext(parts[-1])
        if not stem:
            stem, ext = parts[-1].lstrip(".") or "image", ""
        base = "/".join(parts[:-1] + [stem])
        cand = base
        if cand.lower() in used and ext:
            cand = f"{base}_{ext.lstrip('.').lower()}"
        k = 2
        while cand.lower() in used:
            cand = f"{base}-{k}"
            k += 1
        used.add(cand.lower())
        out.append(cand)
    return out


# -- outputs ---------------------------------------------------------------------------
def overlay_image(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """The X-ray in RGB with ``mask`` tinted red and outlined in yellow.

    Args:
        gray: ``(H, W)`` uint8, or float in [0, 1].
        mask: ``(H, W)`` bool.
        alpha: tint opacity in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    g = to_uint8(gray)
    rgb = np.repeat(g[..., None], 3, axis=2)
    m = np.asarray(mask, dtype=bool)
    if m.any():
        red = np.array([255, 0, 0], np.float32)
        rgb[m] = np.clip((1 - alpha) * rgb[m].astype(np.float32) + alpha * red, 0, 255).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        thick = max(1, int(round(max(m.shape) / 400)))
        cv2.drawContours(rgb, contours, -1, (255, 255, 0), thick)
    return rgb


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = arr[..., ::-1] if arr.ndim == 3 else arr  # cv2 writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(data))
    if not ok:
        raise DataError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not write {path}: {e}; check free space and permissions") from e


def _to_original(prob: np.ndarray, h: int, w: int) -> np.ndarray:
    """``(S, S)`` probabilities -> ``(h, w)``: area averaging when shrinking, else bilinear."""
    if prob.shape == (h, w):
        return prob
    interp = cv2.INTER_AREA if h * w < prob.size else cv2.INTER_LINEAR
    return np.clip(cv2.resize(prob, (w, h), interpolation=interp), 0.0, 1.0)


def _error_text(e: BaseException) -> str:
    msg = str(e) if isinstance(e, PneumoError) else f"{type(e).__name__}: {e}"
    return "error: " + " ".join(msg.split())


def predict_paths(inputs: str | os.PathLike | Iterable[str | os.PathLike],
                  checkpoint: str | os.PathLike | Predictor, out_dir: str | os.PathLike,
                  batch_size: int = 16, device: str = "auto", threshold: float | None = None,
                  min_area: int | None = None, write_images: bool = True,
                  progress: bool = True) -> pd.DataFrame:
    """Predict every image of ``inputs`` and write ``out_dir/predictions.csv``.

    Args:
        inputs: files and/or folders (searched recursively; see :func:`collect_inputs`).
            PNG / JPEG of any mode and bit depth, DICOM (``.dcm``, ``.dicom`` or without
            extension), any size.
        checkpoint: a run folder, its ``model.pt`` or ``.ckpt``, or a loaded
            :class:`Predictor` (then ``device``, ``threshold``, ``min_area`` must be left
            at their defaults or are applied on top of it).
        out_dir: output folder, created if needed.
        batch_size: images per forward pass (>= 1).
        device: ``auto``, ``cpu``, ``cuda``...
        threshold: plain threshold in [0, 1] replacing the post-processing triplet.
        min_area: pixels at the model's input size; see :class:`PostProcess`.
        write_images: also write ``masks/`` and ``overlays/`` (else those columns are empty).
        progress: show a tqdm bar.

    Returns:
        The table of ``predictions.csv``: one row per input in input order, columns
        :data:`COLUMNS`. ``width`` / ``height`` are the original pixels; ``probability`` in
        [0, 1]; ``predicted_area_px`` counted at the original size and
        ``predicted_area_frac`` = area / (width * height) in [0, 1]; ``decision`` is
        ``pneumothorax`` / ``no pneumothorax`` (empty for errors); ``mask`` / ``overlay``
        are paths relative to ``out_dir``. ``df.attrs`` holds ``skipped`` (non-image files
        found in folders), ``csv`` (its path) and ``settings``.

    Raises:
        DataError: no input file at all (e.g. an empty folder).
        WeightsError, ConfigError: see :func:`load_predictor`.
    """
    from tqdm.auto import tqdm

    if int(batch_size) < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")
    files, skipped = collect_inputs(inputs, exclude=out_dir)
    if not files:
        shown = ", ".join(str(i) for i in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs))
        raise DataError(f"no image file found in {shown or '(no inputs)'}: expected .png, .jpg, .jpeg or "
                        ".dcm files (or a folder holding them, at any depth).")
    if isinstance(checkpoint, Predictor):
        pred = checkpoint
        if threshold is not None or min_area is not None:
            pred = Predictor(**{**pred.__dict__, "post": pred.post.with_overrides(threshold, min_area)})
    else:
        pred = load_predictor(checkpoint, device=device, threshold=threshold, min_area=min_area)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _output_names([rel for _, rel in files])
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
    try:
        for s in range(0, len(files), int(batch_size)):
            chunk = list(zip(files[s:s + int(batch_size)], names[s:s + int(batch_size)]))
            ready: list[tuple[dict[str, Any], np.ndarray | None, str]] = []
            xs: list[np.ndarray] = []
            for (path, _), name in chunk:
                row: dict[str, Any] = dict.fromkeys(COLUMNS, None)
                row.update(file=str(path), decision="", mask="", overlay="")
                rows.append(row)
                try:
                    gray = imageio.read_gray(path)
                    if gray.ndim != 2 or gray.size == 0:
                        raise DataError(f"{path}: decoded to shape {gray.shape}, not a 2-D image")
                    row["height"], row["width"] = int(gray.shape[0]), int(gray.shape[1])
                    xs.append(pred.prepare(gray))
                except Exception as e:  # noqa: BLE001 - one bad file never stops the run
                    row["status"] = _error_text(e)
                    continue
                ready.append((row, to_uint8(gray) if write_images else None, name))
                del gray
            if ready:
                prob, image_prob = pred.forward(np.stack(xs))
                for (row, g8, name), pr, ip in zip(ready, prob, image_prob):
                    positive, _ = pred.post.apply(pr)
                    h, w = row["height"], row["width"]
                    if positive:
                        mask = _to_original(pr, h, w) > pred.post.bottom_threshold
                        if not mask.any():  # a tiny region lost when shrinking: keep it visible
                            small = (pr > pred.post.bottom_threshold).astype(np.uint8)
                            mask = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST) > 0
                    else:
                        mask = np.zeros((h, w), dtype=bool)
                    area = int(np.count_nonzero(mask))
                    row.update(status="ok", probability=float(ip), predicted_area_px=area,
                               predicted_area_frac=area / float(h * w),
                               decision=POSITIVE if positive else NEGATIVE)
                    if write_images:
                        _write_png(out_dir / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
                        _write_png(out_dir / "overlays" / f"{name}.png", overlay_image(g8, mask))
                        row.update(mask=f"masks/{name}.png", overlay=f"overlays/{name}.png")
            bar.update(len(chunk))
    finally:
        bar.close()
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["width"] = df["width"].astype("Int64")
    df["height"] = df["height"].astype("Int64")
    df["predicted_area_px"] = df["predicted_area_px"].astype("Int64")
    settings = {
        "checkpoint": str(pred.weights), "run": str(pred.run), "scenario": pred.scenario,
        "image_size": pred.image_size, "mean": pred.mean, "std": pred.std,
        "postprocess": asdict(pred.post), "device": str(pred.device), "n_inputs": len(files),
        "n_ok": int((df["status"] == "ok").sum()), "skipped": [[str(p), why] for p, why in skipped],
    }
    runio.atomic_write_json(out_dir / SETTINGS_NAME, settings)
    csv = runio.atomic_write_csv(out_dir / CSV_NAME, df)
    df.attrs.update(skipped=skipped, csv=str(csv), settings=settings)
    return df
