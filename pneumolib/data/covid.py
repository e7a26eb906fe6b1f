"""The COVID-19 chest X-ray collection's layout (DATA.md section 6), and a held-out phantom
written in it so that the screening notebook runs on any machine.

The public collection (``covid-chestxray-dataset``) is laid out as::

    <folder>/metadata.csv     filename, finding, modality, view, clinical_notes, ...
    <folder>/images/<filename>  JPEG and PNG, modes L / RGB / RGBA, all sizes

:func:`heldout_phantom` writes phantom X-rays in that layout with another seed than the
training phantom, mixed PNG / JPEG, grey and colour modes and several sizes.

API::

    read_covid_metadata(folder) -> DataFrame          # X-ray rows + resolved 'path'
    heldout_phantom(cfg, n=40, out=None) -> Path      # a COVID-like folder (cached)
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumolib import paths
from pneumolib.errors import DataError

__all__ = ["HELDOUT_SEED", "METADATA_COLUMNS", "heldout_phantom", "read_covid_metadata"]


#: Columns of the collection's ``metadata.csv`` that the screening uses.
METADATA_COLUMNS = ("filename", "finding", "modality", "view", "clinical_notes")


#: Data seed of the held-out phantom; the training phantom uses seed 0.
HELDOUT_SEED = 1000


HELDOUT_MARKER = "HELDOUT.json"


_XRAY = {"x-ray", "xray", "x ray", "cr", "dx", "radiograph"}


# -- the collection --------------------------------------------------------------------
def read_covid_metadata(folder: str | os.PathLike) -> pd.DataFrame:
    """The X-ray rows of a COVID-19 collection's ``metadata.csv``.

    Args:
        folder: holds ``metadata.csv`` and ``images/``.

    Returns:
        One row per X-ray image (``modality`` X-ray / CR / DX, case-insensitive; CT rows
        dropped), in file order, with the collection's columns (``finding``, ``view``,
        ``clinical_notes`` filled with "" where absent or empty) and ``path``: the absolute
        path ``folder/images/<filename>`` as a string (the file need not exist: a missing
        one becomes an error row in :func:`screen`).

    Raises:
        DataError: ``metadata.csv`` or ``images/`` missing, unreadable CSV, or no
            ``filename`` column; each message names the file and what is expected.
    """
    root = Path(folder).expanduser()
    meta = root / "metadata.csv"
    images = root / "images"
    if not meta.is_file():
        raise DataError(f"{meta} is missing: {root} is not a COVID-19 collection folder. Expected "
                        "metadata.csv (filename, finding, modality, view, clinical_notes) next to an "
                        "images/ folder, as in covid-chestxray-dataset (see DATA.md section 6).")
    if not images.is_dir():
        raise DataError(f"{images} is missing: the collection's image files are expected in an "
                        f"images/ folder next to {meta.name} (see DATA.md section 6).")
    try:
        df = pd.read_csv(meta, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - parser, encoding and empty-file errors
        raise DataError(f"{meta}: cannot be read as CSV ({type(e).__name__}: {e}). "
                        "Download it again.") from None
    if "filename" not in df.columns:
        raise DataError(f"{meta} has no 'filename' column (columns: {', '.join(df.columns)}); "
                        f"expected the covid-chestxray-dataset columns {', '.join(METADATA_COLUMNS)}.")
    for col in METADATA_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df = df[df["filename"].str.strip() != ""]
    mod = df["modality"].str.strip().str.lower()
    df = df[mod.isin(_XRAY) | (mod == "")].reset_index(drop=True)
    df["path"] = [str((images / f.strip()).absolute()) for f in df["filename"]]
    return df


# -- the held-out phantom --------------------------------------------------------------
# (format, Pillow mode) cycled over the images: every path the real collection takes
_FORMATS = (("png", "L"), ("jpg", "L"), ("png", "RGB"), ("jpg", "RGB"), ("png", "RGBA"))


# (height, width) factors of the rendered side, cycled with another period
_SHAPES = ((1.0, 1.0), (1.0, 1.25), (1.5, 1.5), (0.75, 0.75), (1.25, 1.0), (1.0, 1.0), (2.0, 2.0))


def _heldout_params(cfg, n: int, seed: int) -> dict[str, Any]:
    from .phantom import VERSION

    return {"kind": "heldout-phantom", "layout": "covid", "n": int(n), "size": int(cfg.phantom_size),
            "difficulty": float(cfg.phantom_difficulty), "seed": int(seed), "version": VERSION,
            "format": 2}


def _heldout_complete(root: Path, params: dict[str, Any]) -> bool:
    try:
        marker = json.loads((root / HELDOUT_MARKER).read_text())
    except (OSError, ValueError):
        return False
    if any(marker.get(k) != v for k, v in params.items()):
        return False
    try:
        names = pd.read_csv(root / "metadata.csv", dtype=str)["filename"]
    except Exception:  # noqa: BLE001
        return False
    return len(names) == params["n"] and all((root / "images" / f).is_file() for f in names)


def _write_heldout(tmp: Path, params: dict[str, Any], progress: bool) -> None:
    import cv2
    from PIL import Image
    from tqdm.auto import tqdm

    from .phantom import plan, render

    n, size, seed, d = params["n"], params["size"], params["seed"], params["difficulty"]
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    rows = []
    for it in tqdm(plan(n, seed), desc="held-out phantom", unit="img", disable=not progress):
        img, mask, meta = render(it.index, seed, size, d, positive=it.positive)
        fy, fx = _SHAPES[it.index % len(_SHAPES)]
        h, w = max(32, int(round(size * fy))), max(32, int(round(size * fx)))
        if (h, w) != img.shape:
            interp = cv2.INTER_AREA if h * w < img.size else cv2.INTER_LINEAR
            img = cv2.resize(img, (w, h), interpolation=interp)
            mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        ext, mode = _FORMATS[it.index % len(_FORMATS)]
        stem = f"phantom-{seed}-{it.index:04d}"
        pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))   # mode L
        if mode == "RGB":
            pil = pil.convert("RGB")
        elif mode == "RGBA":
            pil = pil.convert("RGBA")
            pil.putalpha(255)
        if ext == "jpg":
            pil.save(tmp / "images" / f"{stem}.jpg", quality=92)
        else:
            pil.save(tmp / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / "masks" / f"{stem}.png")
        view = str(meta.get("view", "PA")).upper()
        side = meta.get("side")
        drawn = f"Pneumothorax drawn on the {side} side" if it.positive else "No pneumothorax drawn"
        notes = (f"Synthetic phantom radiograph (pneumolib.data.phantom, seed {seed}, image {it.index}; "
                 f"not a patient). {drawn}, {float(mask.mean()) * 100:.2f} % of the image.")
        rows.append({"patientid": f"phantom-{it.index}", "finding":
                     "Pneumothorax (phantom)" if it.positive else "No finding (phantom)",
                     "modality": "X-ray", "view": f"{view} (synthetic)", "filename": f"{stem}.{ext}",
                     "clinical_notes": notes, "truth_pneumothorax": int(it.positive),
                     "truth_area_frac": round(float(mask.mean()), 6), "truth_mask": f"masks/{stem}.png",
                     "pil_mode": mode})
    pd.DataFrame(rows).to_csv(tmp / "metadata.csv", index=False)
    (tmp / HELDOUT_MARKER).write_text(json.dumps({**params, "n_positive": sum(r["truth_pneumothorax"]
                                                  for r in rows)}, indent=2) + "\n")


def heldout_phantom(cfg, n: int = 40, out: str | os.PathLike | None = None,
                    seed: int = HELDOUT_SEED) -> Path:
    """Held-out phantom X-rays laid out like the COVID-19 collection (the default input).

    Rendered with ``seed`` (default 1000; the training phantom uses 0), at
    ``cfg.phantom_size`` and ``cfg.phantom_difficulty``, with the phantom's prevalence.
    The images are a mix of PNG and JPEG in L, RGB and RGBA modes and of several sizes and
    aspect ratios (0.75x to 2x the phantom side), as in the real collection.

    ``metadata.csv`` has the collection's columns: ``filename``, ``finding``
    (``"Pneumothorax (phantom)"`` / ``"No finding (phantom)"`` from the phantom's truth),
    ``modality`` (``"X-ray"``), ``view`` (the phantom's ``"PA (synthetic)"`` /
    ``"AP (synthetic)"``), ``clinical_notes`` (says it is synthetic), plus ``patientid`` and
    the truth: ``truth_pneumothorax`` (0/1), ``truth_area_frac``, ``truth_mask`` (0/255 PNG under
    ``masks/``, same size as its image) and ``pil_mode`` (L, RGB, RGBA).

    Args:
        cfg: a :class:`~pneumolib.config.Config` (``phantom_size``, ``phantom_difficulty``,
            ``progress``).
        n: number of images (>= 1).
        out: target folder; default ``paths.cache_dir()/"heldout"/<key>`` (reused when
            complete with the same parameters).
        seed: data seed; must differ from the training phantom's (0).

    Returns:
        The folder (absolute), holding ``metadata.csv``, ``images/``, ``masks/`` and
        ``HELDOUT.json``.

    Raises:
        DataError: ``out`` exists and is something else, or ``seed`` is the training seed.
    """
    from pneumolib.data.phantom.writer import cache_key
    from pneumolib.runio import file_lock

    if int(n) < 1:
        raise DataError(f"heldout_phantom n={n} must be at least 1")
    train_seed = int(getattr(cfg, "phantom_seed", 0) or 0)
    if int(seed) == train_seed:
        raise DataError(f"heldout_phantom seed={seed} is the training phantom's seed: the images "
                        "would not be held out. Use another seed (default 1000).")
    params = _heldout_params(cfg, n, seed)
    if out is None:
        key = cache_key(n, params["size"], params["difficulty"], seed)
        root = paths.cache_dir() / "heldout" / f"covid-{key}"
    else:
        root = Path(out).expanduser()
    root = root.absolute()
    if _heldout_complete(root, params):
        return root
    with file_lock(root.with_name(f".{root.name}.lock")):
        if _heldout_complete(root, params):
            return root
        if root.exists():
            ours = (root / HELDOUT_MARKER).exists() or (root.is_dir() and not any(root.iterdir()))
            if not ours:
                raise DataError(f"{root} exists and is not a held-out phantom folder: choose another "
                                "output folder.")
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _write_heldout(tmp, params, progress=bool(getattr(cfg, "progress", True)))
            tmp.rename(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root
