"""Looking at the data: the paper's Tables 1-2, mask sizes and places, Figures 2-3.

Thin wrappers over :mod:`pneumolib.data`, :mod:`pneumolib.prep.cache`, :mod:`pneumolib.prep.splits`
and :mod:`pneumolib.prep.augment`, used by the notebooks ``01_eda`` and ``02_augmentation`` (and the
reconstruction panel of ``03_autoencoders``). Each function returns a table or arrays; the
pictures are drawn by :mod:`pneumolib.reporting.plots`.

"Source" is a :class:`pneumolib.data.Source` (native resolution, read from disk);
"cache" is a :class:`pneumolib.prep.cache.ImageCache` (``(N, S, S)`` uint8 memmaps at the
training resolution, the same arrays training reads).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from pneumolib import paths
from pneumolib.errors import DataError

if TYPE_CHECKING:
    from pneumolib.config import Config

#: The paper's Table 1 (dataset properties of the siim-png re-packaging of SIIM-ACR).
PAPER_TABLE1 = pd.DataFrame([{"images": 12047, "format": "PNG", "resolution": "1024 x 1024",
                              "coloring": "gray-scale", "+ve": 2669, "-ve": 9378}], index=["paper"])

#: The paper's Table 2 (items after its offline augmentation, split into train and test).
PAPER_TABLE2 = pd.DataFrame(
    {"total": [15433, 1952, 17385], "+ve": [7137, 870, 8007], "-ve": [8296, 1082, 9378]},
    index=pd.Index(["train", "test", "total"], name="split"),
)

#: The paper's normalisation statistics (training set, pixel values in [0, 1]).
PAPER_MEAN, PAPER_STD = 0.4828, 0.2488


# -- opening the data ----------------------------------------------------------------------
def open_data(cfg: "Config") -> Any:
    """The Source a run with ``cfg`` trains on: ``cfg.data``, or the built-in phantom set
    (generated into the cache on first use), exactly as :class:`PneumoDataModule` opens it."""
    from pneumolib.data import open_source

    path = cfg.data
    if path is None:
        from pneumolib.data.phantom import ensure_phantom

        path = ensure_phantom(cfg)
    return open_source(path, kind=cfg.data_kind, skip_bad=cfg.skip_bad)


def prepare(cfg: "Config", source: Any = None) -> Any:
    """A set-up :class:`pneumolib.prep.datamodule.PneumoDataModule` (cache, split, statistics).

    Builds what is missing and reuses what exists, so the training notebooks later find
    everything ready.
    """
    from pneumolib.prep.datamodule import PneumoDataModule

    dm = PneumoDataModule(cfg, source=source)
    dm.setup("fit")
    return dm


def _is_cache(obj: Any) -> bool:
    return hasattr(obj, "images") and hasattr(obj, "masks") and hasattr(obj, "mask_pixels")


def _cache_of(obj: Any) -> Any:
    """An ImageCache from a cache or a set-up datamodule."""
    if _is_cache(obj):
        return obj
    cache = getattr(obj, "cache", None)
    if cache is not None and _is_cache(cache):
        return cache
    raise DataError(f"expected an ImageCache or a set-up PneumoDataModule, got {type(obj).__name__}; "
                    "build one with pneumolib.reporting.eda.prepare(cfg)")


# -- the paper's Table 1 ------------------------------------------------------------------
def dataset_summary(source: Any) -> pd.DataFrame:
    """Image counts per source split (the source's own ``train``/``test`` CSVs) and in total.

    Returns:
        Index: each source split (``all`` when the source has none) and ``total``; columns
        ``images``, ``+ve``, ``-ve``, ``unknown``, ``prevalence`` (+ve / labelled images).
    """
    groups: dict[str, list[int]] = {}
    for r in source.records:
        groups.setdefault(r.split or "all", []).append(int(r.has_pneumo))
    groups_total = {**groups, "total": [int(r.has_pneumo) for r in source.records]}
    rows = {}
    for name, ys in groups_total.items():
        y = np.asarray(ys, dtype=np.int64)
        pos, neg = int((y == 1).sum()), int((y == 0).sum())
        rows[name] = {"images": int(y.size), "+ve": pos, "-ve": neg, "unknown": int((y < 0).sum()),
                      "prevalence": pos / (pos + neg) if pos + neg else math.nan}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "source split"
    if len(groups) == 1:  # 'all' and 'total' say the same thing
        out = out.drop(index=[k for k in out.index if k != "total"])
    return out


def table1(source: Any, sample: int = 20, with_paper: bool = False) -> pd.DataFrame:
    """The paper's Table 1 for ``source``: counts, file format, resolution, colouring.

    Format and resolution are read from the first ``sample`` images' headers (no decoding);
    several values are listed with their counts. ``with_paper`` appends the paper's row.
    """
    from pneumolib.data import imageio

    recs = list(source.records)
    fmt = Counter(r.image_path.suffix.lower().lstrip(".").upper() for r in recs)
    sizes: Counter = Counter()
    for r in recs[:sample]:
        try:
            h, w = imageio.read_size(r.image_path)
            sizes[f"{w} x {h}"] += 1
        except DataError:
            sizes["unreadable"] += 1
    y = np.asarray([r.has_pneumo for r in recs])

    def many(c: Counter) -> str:
        return c.most_common(1)[0][0] if len(c) == 1 else ", ".join(f"{k} ({v})" for k, v in c.most_common())

    ours = pd.DataFrame([{
        "images": len(recs), "format": many(fmt), "resolution": many(sizes),
        "coloring": "gray-scale (read as)", "+ve": int((y == 1).sum()), "-ve": int((y == 0).sum()),
    }], index=[f"ours ({source.kind})"])
    return pd.concat([ours, PAPER_TABLE1]) if with_paper else ours


# -- masks ----------------------------------------------------------------------------------
def mask_areas(obj: Any) -> pd.DataFrame:
    """Mask area of every positive image.

    Args:
        obj: a cache (or set-up datamodule): areas at the cache resolution, instantly from
            its metadata; or a Source: masks decoded at native resolution (slower).

    Returns:
        One row per positive image: ``index`` (into the source), ``image_id``, ``area_px``,
        ``area_frac`` (area / image pixels), ``side`` (image side in pixels).
    """
    if _is_cache(obj) or _is_cache(getattr(obj, "cache", None)):
        c = _cache_of(obj)
        idx = np.flatnonzero(c.has_pneumo == 1)
        ids = c.image_ids
        area = c.mask_pixels[idx]
        return pd.DataFrame({"index": idx, "image_id": [ids[i] for i in idx], "area_px": area,
                             "area_frac": area / float(c.size ** 2), "side": c.size})
    rows = []
    for i, r in enumerate(obj.records):
        if r.has_pneumo != 1:
            continue
        m = obj.read_mask(i)
        rows.append({"index": i, "image_id": r.image_id, "area_px": int(m.sum()),
                     "area_frac": float(m.mean()), "side": int(m.shape[0])})
    return pd.DataFrame(rows, columns=["index", "image_id", "area_px", "area_frac", "side"])


def mask_heatmap(obj: Any, chunk: int = 256) -> np.ndarray:
    """Where the masks lie: per pixel, the share of positive images covering it.

    Args:
        obj: a cache or a set-up datamodule.

    Returns:
        ``(S, S)`` float64 in [0, 1]; image orientation (patient's right on the left).
    """
    c = _cache_of(obj)
    idx = np.flatnonzero(c.has_pneumo == 1)
    acc = np.zeros((c.size, c.size), dtype=np.float64)
    for s in range(0, idx.size, chunk):
        acc += np.asarray(c.masks[idx[s:s + chunk]], dtype=np.float64).sum(0)
    return acc / max(idx.size, 1)


# -- pixel statistics ---------------------------------------------------------------------
def pixel_stats(obj: Any, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
    """Global mean and standard deviation of pixel values in [0, 1] over cached images.

    Args:
        obj: a cache or a set-up datamodule.
        indices: source indices to include (default: all).

    Returns:
        ``{"mean", "std", "n_images", "size"}``.
    """
    from pneumolib.prep.augment import normalization_stats

    c = _cache_of(obj)
    idx = np.arange(c.n) if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
    step = max(1, (32 << 20) // (c.size ** 2))
    mean, std = normalization_stats(c.images[idx[s:s + step]] for s in range(0, idx.size, step))
    return {"mean": mean, "std": std, "n_images": int(idx.size), "size": c.size}


def pixel_stats_table(dm: Any) -> pd.DataFrame:
    """Normalisation statistics three ways: all source images, the training items the
    datamodule normalises with (flips and rotations included), and the paper's values."""
    c = _cache_of(dm)
    train_src = dm.split.loc[dm.split["split"] == "train", "src"].to_numpy()
    rows = {
        "all source images (ours)": pixel_stats(c),
        "train source images (ours)": pixel_stats(c, train_src),
        "train items, used to normalise (ours)": {"mean": dm.mean, "std": dm.std,
                                                  "n_images": int((dm.split["split"] == "train").sum()),
                                                  "size": c.size},
        "paper (SIIM-ACR train)": {"mean": PAPER_MEAN, "std": PAPER_STD, "n_images": 15433, "size": 512},
    }
    return pd.DataFrame.from_dict(rows, orient="index")


# -- looking at images ----------------------------------------------------------------------
def sample_images(obj: Any, n: int = 8, seed: int = 0, positive_share: float = 0.75
                  ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """A few images with their masks, mostly positives, for :func:`pneumolib.reporting.plots.overlay_grid`.

    Args:
        obj: a cache / datamodule (training resolution) or a Source (native resolution).

    Returns:
        ``(images, masks, titles)``: float32 [0, 1] images, bool masks, ``id (+/-)``.
    """
    rng = np.random.default_rng(seed)
    if _is_cache(obj) or _is_cache(getattr(obj, "cache", None)):
        c = _cache_of(obj)
        y, ids = c.has_pneumo, c.image_ids

        def read(i):
            return np.asarray(c.images[i], np.float32) / 255.0, np.asarray(c.masks[i]).astype(bool)
    else:
        y = np.asarray([r.has_pneumo for r in obj.records])
        ids = [r.image_id for r in obj.records]

        def read(i):
            return obj.read_image(i), obj.read_mask(i)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
    k = min(pos.size, int(round(n * positive_share)))
    pick = list(rng.choice(pos, k, replace=False)) + list(rng.choice(neg, min(neg.size, n - k), replace=False))
    images, masks, titles = [], [], []
    for i in pick:
        img, m = read(int(i))
        images.append(img)
        masks.append(m)
        sid = str(ids[i])
        sid = sid if len(sid) <= 16 else "..." + sid[-13:]  # SIIM ids share a long prefix
        titles.append(f"{sid} ({'+' if y[i] == 1 else '-'}, {int(m.sum())} px)")
    return images, masks, titles


def augmentation_examples(obj: Any, index: int | None = None, seed: int = 0,
                          angle: float | None = None) -> dict[str, dict[str, np.ndarray]]:
    """One positive image and its mask: original, flipped, rotated (the paper's Figures 2-3).

    Uses :func:`pneumolib.prep.augment.hflip`, :func:`pneumolib.prep.augment.rotate` (black fill) and
    :func:`pneumolib.prep.augment.paper_angle` (+/- U(3, 7) degrees), the same functions the offline
    augmentation applies.

    Args:
        obj: a cache / datamodule (training resolution) or a Source (native resolution).
        index: the source index; None takes the positive image with the largest mask.
        seed: seeds the rotation angle when ``angle`` is None.

    Returns:
        ``{"original": {"image", "mask"}, "flipped": {...}, "rotated (+4.2 deg)": {...}}``:
        images float32 in [0, 1], masks bool.
    """
    from pneumolib.prep.augment import hflip, paper_angle, rotate, to_float

    if _is_cache(obj) or _is_cache(getattr(obj, "cache", None)):
        c = _cache_of(obj)
        if index is None:
            pos = np.flatnonzero(c.has_pneumo == 1)
            if pos.size == 0:
                raise DataError("the data has no positive image to show")
            index = int(pos[np.argmax(c.mask_pixels[pos])])
        img = to_float(np.asarray(c.images[index]))
        mask = np.asarray(c.masks[index]).astype(bool)
    else:
        if index is None:
            pos = [i for i, r in enumerate(obj.records) if r.has_pneumo == 1]
            if not pos:
                raise DataError("the data has no positive image to show")
            index = max(pos[:50], key=lambda i: int(obj.read_mask(i).sum()))
        img, mask = obj.read_image(index), obj.read_mask(index)
    if angle is None:
        angle = paper_angle(np.random.default_rng(seed))
    return {
        "original": {"image": img, "mask": mask},
        "flipped": {"image": hflip(img), "mask": hflip(mask)},
        f"rotated ({angle:+.1f} deg)": {"image": rotate(img, angle, is_mask=False),
                                        "mask": rotate(mask, angle, is_mask=True).astype(bool)},
    }


# -- the paper's Table 2, for both protocols -------------------------------------------------
def split_tables(obj: Any, cfg: "Config | None" = None,
                 protocols: Sequence[str] = ("paper", "clean")) -> dict[str, pd.DataFrame]:
    """Item counts per split (the paper's Table 2 shape) and test leakage, per protocol.

    Args:
        obj: a set-up datamodule (both protocols are drawn from its data with its config,
            the same draws training makes), a Source (with ``cfg``), or one split table
            (only that table is summarised).
        cfg: the config when ``obj`` is a Source.

    Returns:
        ``{"tables": DataFrame}`` indexed by (protocol, split) with columns ``total``,
        ``+ve``, ``-ve``; ``{"leakage": DataFrame}`` one row per protocol with the counts of
        :func:`pneumolib.prep.splits.leakage` (test images that have a flipped / rotated copy in
        train or validation).
    """
    from pneumolib.prep.splits import leakage, make_split, split_table

    if isinstance(obj, pd.DataFrame):
        splits = {"given": obj}
    else:
        if hasattr(obj, "split") and hasattr(obj, "cfg") and obj.split is not None:
            cfg = obj.cfg
            c = _cache_of(obj)
            y, ids = c.has_pneumo, c.image_ids
        else:
            if cfg is None:
                raise DataError("split_tables(source) needs cfg (the seed and fractions)")
            y = np.asarray([r.has_pneumo for r in obj.records])
            ids = [r.image_id for r in obj.records]
        seed = cfg.seed if getattr(cfg, "split_seed", None) is None else int(cfg.split_seed)  # as the runs' own split
        splits = {p: make_split(y, ids, p, seed, cfg.test_frac, cfg.val_frac, cfg.paper_augment)
                  for p in protocols}
    tables = pd.concat({p: split_table(s) for p, s in splits.items()}, names=["protocol", "split"])
    leak = pd.DataFrame.from_dict({p: leakage(s) for p, s in splits.items()}, orient="index")
    leak.index.name = "protocol"
    return {"tables": tables, "leakage": leak}


# -- autoencoder reconstructions ------------------------------------------------------------
def reconstructions(cfg: "Config", kind: str, n: int = 4, dm: Any = None,
                    run_dir: Path | str | None = None) -> dict[str, np.ndarray]:
    """A trained autoencoder on ``n`` test items: input, output, output with the top skip zeroed.

    Args:
        kind: ``xray``, ``mask``, ``genesis`` or ``xray_noskip`` (run folder
            ``results/<profile>/ae_<kind>/``).
        dm: a set-up datamodule (default: :func:`prepare` ``(cfg)``).

    Returns:
        ``{"input", "reconstruction", "top skip zeroed"}`` (for ``genesis``: the distorted
        input, the clean target, ...): ``(n, S, S)`` float32, in the
        network's space (normalised X-ray, or mask in {0, 1}). Positive test items are
        preferred so that mask reconstructions are not all black.
    """
    import torch

    from pneumolib.models.unet import build_unet
    from pneumolib.training.runs import AE_KINDS, load_model_state

    if kind not in AE_KINDS:
        raise DataError(f"autoencoder kind {kind!r} is unknown; valid: {', '.join(AE_KINDS)}")
    folder = Path(run_dir) if run_dir else paths.results_dir(cfg.name) / AE_KINDS[kind]
    model = build_unet(cfg)
    model.load_state_dict(load_model_state(folder))
    model.eval()
    dm = dm if dm is not None else prepare(cfg)
    ds = dm.datasets["test"]
    y = dm.split["has_pneumo"].to_numpy()[ds.rows]
    order = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y != 1)])[:n]
    items = [ds[int(k)] for k in order]
    x = torch.stack([it["mask" if kind == "mask" else "image"] for it in items])
    target = x
    if kind == "genesis":  # the restoration pretext: the network sees the distorted X-ray
        from pneumolib.models.pretext import genesis_distort_items, item_seeds
        from pneumolib.training.module import EVAL_PRETEXT_SEED

        idx = torch.as_tensor([int(it["index"]) for it in items])
        x = genesis_distort_items(x, item_seeds(idx, EVAL_PRETEXT_SEED))
    if kind == "xray_noskip":
        from pneumolib.models.unet import ALL_SKIPS

        model.zero_skips = ALL_SKIPS
    with torch.no_grad():
        out = model(x)
        zeroed = model(x, zero_skips=tuple(sorted(set(model.zero_skips) | {0})))
    rec = {"input": x[:, 0].numpy(), "reconstruction": out[:, 0].numpy(),
           "top skip zeroed": zeroed[:, 0].numpy()}
    if kind == "genesis":
        rec = {"input (distorted)": rec["input"], "target": target[:, 0].numpy(),
               "reconstruction": rec["reconstruction"], "top skip zeroed": rec["top skip zeroed"]}
    return rec
