"""Predict pneumothorax on any chest X-ray files with a trained run: CSV, masks, overlays.

The one inference path of the project, used by ``pneumo predict``, the notebook
``06_covid_screening`` (through :mod:`pneumolib.commands.screening`) and the benchmark::

    predictor = load_predictor("results/demo/resnet50")          # run folder or its model.pt
    df = predict_paths(["xrays/"], "results/demo/resnet50", "out/")

Per input file:

1. :func:`pneumolib.data.imageio.read_gray`: PNG / JPEG in any mode (L, RGB, RGBA, P, 16-bit),
   DICOM (incl. MONOCHROME1, extension-less files with the ``DICM`` marker) -> ``(H, W)``
   float32 in [0, 1] at native size.
2. Resized to the run's ``image_size`` (a square; non-square inputs are stretched, as in
   training), quantised to 8 bits as the training cache is, normalised with the run's own
   training mean / std (``metrics.json`` ``data.mean`` / ``data.std``).
3. The network in eval mode under ``torch.no_grad``, in batches; pixel probabilities are
   ``sigmoid(logits)``. A model that returns ``(seg_logits, class_logit)`` (a U-Net with
   an image-level head) gives the image probability ``sigmoid(class_logit)``; otherwise the
   image probability is the largest pixel probability.
4. Post-processing, the SIIM-ACR 1st place "triplet"
   (:class:`~pneumolib.evaluation.predictor.PostProcess`), at the model's
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

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pneumolib import runio
from pneumolib.data import imageio
from pneumolib.errors import ConfigError, DataError, PneumoError
from pneumolib.evaluation.predictor import Predictor, load_predictor
from pneumolib.prep.augment import to_uint8

__all__ = ["COLUMNS", "CSV_NAME", "collect_inputs", "overlay_image", "predict_paths"]

#: The columns of ``predictions.csv``, in order.
COLUMNS = ("file", "status", "width", "height", "probability", "predicted_area_px",
           "predicted_area_frac", "decision", "mask", "overlay")
CSV_NAME = "predictions.csv"
SETTINGS_NAME = "predict_settings.json"
POSITIVE, NEGATIVE = "pneumothorax", "no pneumothorax"


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
