"""Screen a COVID-19 chest X-ray collection for pneumothorax (notebook ``06_covid_screening``).

The paper runs its segmentation model on COVID-19 patients' X-rays. The public collection
(``covid-chestxray-dataset``, DATA.md section 6) is laid out as::

    <folder>/metadata.csv     filename, finding, modality, view, clinical_notes, ...
    <folder>/images/<filename>  JPEG and PNG, modes L / RGB / RGBA, all sizes

Without it, :func:`heldout_phantom` writes held-out phantom X-rays in that same layout
(another seed than the training phantom, mixed PNG / JPEG, grey and colour modes, several
sizes), so the notebook runs end to end on any machine.

API::

    read_covid_metadata(folder) -> DataFrame          # X-ray rows + resolved 'path'
    heldout_phantom(cfg, n=40, out=None) -> Path      # a COVID-like folder (cached)
    screen(folder, checkpoint, out_dir, **kw) -> DataFrame   # metadata joined with predictions
    summarise(df, by=("finding", "view")) -> DataFrame
    most_suspicious(df, k=6) -> DataFrame
    plot_most_suspicious(df, k=6) -> matplotlib Figure
    pick_run(cfg, checkpoint_run="") -> Path          # the model: best on validation
    write_outputs(df, summary, fig, folder) -> dict   # CSVs, Markdown and PNG of the notebook
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import paths, runio
from .errors import DataError, WeightsError

__all__ = ["HELDOUT_SEED", "METADATA_COLUMNS", "heldout_phantom", "most_suspicious", "pick_run",
           "plot_most_suspicious", "read_covid_metadata", "screen", "summarise", "write_outputs"]

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
        notes = (f"Synthetic phantom radiograph (pneumolib.phantom, seed {seed}, image {it.index}; "
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
    from .cache import file_lock
    from .phantom.writer import cache_key

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


# -- screening -------------------------------------------------------------------------
def screen(folder: str | os.PathLike, checkpoint, out_dir: str | os.PathLike, **kw) -> pd.DataFrame:
    """Predict every X-ray listed in ``folder/metadata.csv`` and join the metadata.

    Args:
        folder: a COVID-19 collection folder (see :func:`read_covid_metadata`), e.g. from
            :func:`heldout_phantom`.
        checkpoint: a run folder, its ``model.pt``, or a loaded
            :class:`~pneumolib.predict.Predictor`.
        out_dir: where ``predictions.csv``, ``masks/``, ``overlays/`` and
            ``screening.csv`` (this table) are written.
        **kw: passed to :func:`pneumolib.predict.predict_paths` (``batch_size``,
            ``device``, ``threshold``, ``min_area``, ``write_images``, ``progress``).

    Returns:
        One row per metadata X-ray row, in metadata order: the metadata columns, ``path``,
        then the prediction columns (``status``, ``width``, ``height``, ``probability``,
        ``predicted_area_px``, ``predicted_area_frac``, ``decision``, ``mask``,
        ``overlay``; the last two relative to ``out_dir``) and ``overlay_path`` /
        ``mask_path`` (absolute, "" when not written). A listed file that is missing or
        unreadable has ``status`` "error: ...".
    """
    from .predict import predict_paths

    meta = read_covid_metadata(folder)
    if meta.empty:
        raise DataError(f"{Path(folder) / 'metadata.csv'} lists no X-ray image (modality X-ray); "
                        "nothing to screen.")
    out_dir = Path(out_dir).expanduser()
    unique = list(dict.fromkeys(meta["path"]))
    preds = predict_paths(unique, checkpoint, out_dir, **kw)
    preds = preds.rename(columns={"file": "path"})
    # the metadata's own 'mask' / 'width' / 'height' (the phantom's truth) keep a prefix
    clash = [c for c in preds.columns if c in meta.columns and c != "path"]
    meta = meta.rename(columns={c: f"meta_{c}" for c in clash})
    df = meta.merge(preds, on="path", how="left", validate="many_to_one")
    for col, rel in (("mask_path", "mask"), ("overlay_path", "overlay")):
        df[col] = [str(out_dir / r) if isinstance(r, str) and r else "" for r in df[rel]]
    df.attrs.update(preds.attrs)
    runio.atomic_write_csv(out_dir / "screening.csv", df)
    return df


def summarise(df: pd.DataFrame, by: Sequence[str] | str = ("finding", "view")) -> pd.DataFrame:
    """Counts, share predicted positive and mean probability per group.

    Args:
        df: from :func:`screen`.
        by: grouping column(s); missing ones are ignored (no grouping: one "all" row).

    Returns:
        One row per group with ``n`` (images), ``n_ok``, ``n_error``, ``n_positive``
        (decision pneumothorax), ``share_positive`` (n_positive / n_ok, NaN without ok
        images) and ``mean_probability`` (over ok images, in [0, 1]). ``n`` sums to
        ``len(df)`` and ``n_ok + n_error == n`` in every row.
    """
    from .predict import POSITIVE

    by = [c for c in ([by] if isinstance(by, str) else list(by)) if c in df.columns]
    d = df.assign(_ok=(df["status"] == "ok"), _pos=(df["decision"] == POSITIVE),
                  _p=pd.to_numeric(df["probability"], errors="coerce"))
    if not by:
        d = d.assign(group="all")
        by = ["group"]
    g = d.groupby(by, dropna=False, sort=True)
    out = pd.DataFrame({
        "n": g.size(),
        "n_ok": g["_ok"].sum().astype(int),
        "n_positive": g["_pos"].sum().astype(int),
        "mean_probability": g["_p"].mean(),
    })
    out.insert(2, "n_error", out["n"] - out["n_ok"])
    out.insert(4, "share_positive", out["n_positive"] / out["n_ok"].where(out["n_ok"] > 0))
    return out.reset_index()


def most_suspicious(df: pd.DataFrame, k: int = 6) -> pd.DataFrame:
    """The ``k`` readable images with the highest pneumothorax probability.

    Ties are broken by the predicted area. Returns at most ``k`` rows of ``df`` (ok rows
    only), highest first, with the original index kept.
    """
    ok = df[df["status"] == "ok"].copy()
    ok["_p"] = pd.to_numeric(ok["probability"], errors="coerce")
    ok["_a"] = pd.to_numeric(ok["predicted_area_frac"], errors="coerce")
    return ok.sort_values(["_p", "_a"], ascending=False, kind="stable").head(int(k)).drop(columns=["_p", "_a"])


def plot_most_suspicious(df: pd.DataFrame, k: int = 6, out_dir: str | os.PathLike | None = None,
                         cols: int = 3):
    """A figure of the ``k`` most suspicious images' overlays.

    Args:
        df: from :func:`screen` (uses ``overlay_path``, else ``out_dir/overlay``, else the
            source image without overlay).
        k: number of panels.
        out_dir: the screening's output folder, when ``df`` has no ``overlay_path``.
        cols: panels per row.

    Returns:
        A :class:`matplotlib.figure.Figure`; each panel titled with the file name, the
        finding and the probability. ``show`` is never called.
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    from .imageio import read_gray

    top = most_suspicious(df, k)
    n = max(1, len(top))
    cols = max(1, min(int(cols), n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if top.empty:
        axes[0, 0].text(0.5, 0.5, "no readable image", ha="center", va="center")
    for ax, (_, r) in zip(axes.ravel(), top.iterrows()):
        path = r.get("overlay_path") or ""
        if not path and out_dir is not None and isinstance(r.get("overlay"), str) and r.get("overlay"):
            path = str(Path(out_dir) / r["overlay"])
        if path and Path(path).is_file():
            with Image.open(path) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
        else:
            ax.imshow(read_gray(r.get("path", r.get("file"))), cmap="gray", vmin=0, vmax=1)
        name = str(r.get("filename") or Path(str(r.get("path", r.get("file", "")))).name)
        if len(name) > 34:
            name = name[:15] + "..." + name[-16:]
        finding = str(r.get("finding", "") or "")
        ax.set_title(f"{name}\n{finding}\np = {float(r['probability']):.3f}", fontsize=9)
    fig.suptitle(f"Most suspicious {len(top)} of {int((df['status'] == 'ok').sum())} images "
                 "(red: predicted pneumothorax)", fontsize=11)
    fig.tight_layout()
    return fig


# -- the notebook's model and outputs --------------------------------------------------
def _val_dice(metrics: dict[str, Any]) -> float:
    try:
        v = float((metrics.get("val") or {}).get("dice_pooled"))
    except (TypeError, ValueError):
        return float("-inf")
    return v if np.isfinite(v) else float("-inf")


def pick_run(cfg, checkpoint_run: str | os.PathLike = "") -> Path:
    """The run to screen with.

    Args:
        cfg: the notebook's Config (its ``name`` is the profile: runs live in
            ``paths.results_dir(cfg.name)``).
        checkpoint_run: a run folder name under that folder, or a path; "" picks the
            finished segmentation run (``config.json``, ``model.pt``, ``metrics.json`` with
            task ``seg``, directly under the results folder) with the highest
            **validation** pooled Dice (never chosen on test); ties go to the first name.

    Returns:
        The run folder.

    Raises:
        WeightsError: the named run does not exist, or no finished segmentation run exists
            (the message says which command trains one).
    """
    results = paths.results_dir(cfg.name)
    if str(checkpoint_run or "").strip():
        p = Path(checkpoint_run).expanduser()
        run = p if p.is_absolute() or p.exists() else results / p
        if not (run / "config.json").is_file():
            raise WeightsError(f"checkpoint_run={str(checkpoint_run)!r}: {run} is not a run folder (no "
                               f"config.json). Name a folder under {results} or pass a run's path.")
        return run
    best: tuple[float, Path] | None = None
    for folder in sorted(results.iterdir()) if results.is_dir() else []:
        if not all((folder / f).is_file() for f in ("config.json", "model.pt", "metrics.json")):
            continue
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except ValueError:
            continue
        if metrics.get("task", "seg") != "seg":
            continue
        score = _val_dice(metrics)
        if best is None or score > best[0]:
            best = (score, folder)
    if best is None:
        raise WeightsError(f"no finished segmentation run under {results}: train one first, e.g. "
                           f"`pneumo train --scenario random --profile {cfg.name}` (or run notebook "
                           "04), or set checkpoint_run to a run folder.")
    return best[1]


def write_outputs(df: pd.DataFrame, summary: pd.DataFrame, fig: Any,
                  folder: str | os.PathLike) -> dict[str, Path]:
    """Write the notebook's results into ``folder`` (e.g. ``paths.figures_dir(profile)``).

    Files: ``covid_screening.csv`` (``df``, one row per image),
    ``covid_screening_summary.csv`` and ``.md`` (``summary``) and, when ``fig`` is given,
    ``covid_screening_top.png`` (saved and closed). All written atomically.

    Returns:
        ``{"csv", "summary_csv", "summary_md"[, "png"]}`` -> paths.
    """
    from .plots import save_figure
    from .tables import to_markdown

    folder = Path(folder)
    out = {"csv": folder / "covid_screening.csv", "summary_csv": folder / "covid_screening_summary.csv",
           "summary_md": folder / "covid_screening_summary.md"}
    runio.atomic_write_csv(out["csv"], df)
    runio.atomic_write_csv(out["summary_csv"], summary)
    settings = df.attrs.get("settings") or {}
    note = ""
    if settings:
        pp = settings.get("postprocess") or {}
        note = (f"Model: `{settings.get('run')}` ({settings.get('scenario')}, {settings.get('image_size')} px); "
                f"decision: more than {pp.get('min_area')} px above {pp.get('top_threshold')}, mask above "
                f"{pp.get('bottom_threshold')} ({pp.get('source')}).\n\n")
    runio.atomic_write_text(out["summary_md"], note + to_markdown(summary) + "\n")
    if fig is not None:
        out["png"] = save_figure(fig, folder / "covid_screening_top.png")
    return out
