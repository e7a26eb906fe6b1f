"""Screen a COVID-19 chest X-ray collection for pneumothorax (notebook ``06_covid_screening``).

The paper runs its segmentation model on COVID-19 patients' X-rays. The public collection
(``covid-chestxray-dataset``, DATA.md section 6) is laid out as::

    <folder>/metadata.csv     filename, finding, modality, view, clinical_notes, ...
    <folder>/images/<filename>  JPEG and PNG, modes L / RGB / RGBA, all sizes

Reading that layout, and the held-out phantom X-rays written in it when the real
collection is absent, is :mod:`pneumolib.data.covid`.

API::

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumolib import paths, runio
from pneumolib.data.covid import read_covid_metadata
from pneumolib.errors import DataError, WeightsError

__all__ = ["most_suspicious", "pick_run", "plot_most_suspicious", "screen", "summarise", "write_outputs"]


# -- screening -------------------------------------------------------------------------
def screen(folder: str | os.PathLike, checkpoint, out_dir: str | os.PathLike, **kw) -> pd.DataFrame:
    """Predict every X-ray listed in ``folder/metadata.csv`` and join the metadata.

    Args:
        folder: a COVID-19 collection folder (see :func:`read_covid_metadata`), e.g. from
            :func:`heldout_phantom`.
        checkpoint: a run folder, its ``model.pt``, or a loaded
            :class:`~pneumolib.evaluation.predictor.Predictor`.
        out_dir: where ``predictions.csv``, ``masks/``, ``overlays/`` and
            ``screening.csv`` (this table) are written.
        **kw: passed to :func:`pneumolib.commands.predict.predict_paths` (``batch_size``,
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

    from pneumolib.data.imageio import read_gray

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
    from pneumolib.reporting.markdown import to_markdown
    from pneumolib.reporting.plots import save_figure

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
