"""The real SIIM-ACR train annotations, on every machine: statistics without the images.

The ``torchxrayvision`` wheel ships the competition's ``train-rle.csv`` as
``torchxrayvision/data/siim-pneumothorax-train-rle.csv.gz`` (its row count is
:func:`summary`'s ``rows``; columns ``ImageId`` and `` EncodedPixels`` with a leading
space; ``-1`` is an empty mask; an image with several rows has the UNION of them as its
mask; RLE semantics in docs DATA.md section 3). The images cannot be downloaded here, but
the masks are all in that table, so the real mask areas and where the masks lie can be
measured anywhere. The file is located without importing torchxrayvision (slow, pulls
scikit-image).

Everything is computed at the native 1024 x 1024 from the runs themselves
(:func:`pneumolib.data.rle.runs`), without building a 1024^2 array per image: the union of an
image's rows is a merge of intervals, its area the merged length, and its ``G x G``
coverage (the share of each ``1024/G``-pixel block that the mask covers, i.e. the 1024 px
mask block-averaged) comes from the cumulative run length at the block boundaries of the
column-major index. The result equals decoding with :func:`pneumolib.data.rle.decode` and
block-averaging (the tests check it), without decoding a full-size mask.

API::

    table_path() -> Path                        # the .csv.gz inside the torchxrayvision wheel
    read_table(path=None) -> DataFrame          # one row per CSV row: image_id, rle
    per_image(path=None) -> DataFrame           # one row per image (see its docstring)
    stats(path=None, use_cache=True) -> AnnotationStats   # per_image + coverages + heat map
    summary(path=None) -> dict                  # the DATA.md section 1 numbers
    heatmap(path=None) -> (64, 64) float64      # mean location heat map of the positives

``stats`` caches its result under ``paths.cache_dir()/annotations/`` keyed by the table's
SHA-256, the grid and :data:`STATS_VERSION`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumolib import paths
from pneumolib.errors import DataError

from .rle import EMPTY, runs

#: the table inside the torchxrayvision package folder
TABLE = "data/siim-pneumothorax-train-rle.csv.gz"
PACKAGE = "torchxrayvision"
#: side of the real images and of their masks
SIDE = 1024
#: side of the location heat map
GRID = 64
#: bumped whenever the cached numbers would change for the same table
STATS_VERSION = 1
#: the quantiles :func:`summary` reports (DATA.md section 1)
QUANTILES = {"min": 0.0, "p05": 0.05, "p10": 0.10, "median": 0.5, "max": 1.0}
#: numpy's quantile method for them: the empirical distribution's own quantile (the smallest
#: observed area with at least that share of positives at or below it), so every quantile is
#: a real mask's area. DATA.md's 5th and 10th percentiles are these; numpy's default
#: "linear" would interpolate between neighbours and give areas no mask has.
QUANTILE_METHOD = "inverted_cdf"


def table_path() -> Path:
    """The SIIM-ACR train RLE table shipped in the ``torchxrayvision`` wheel.

    Raises:
        DataError: torchxrayvision is not installed, or its wheel lacks the table.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(getattr(spec, "submodule_search_locations", None) or []) if spec else []
    if not locations:
        raise DataError(
            f"the real SIIM-ACR annotation table ships with the {PACKAGE} package ({TABLE}), "
            f"which is not installed; install it with `pip install {PACKAGE}` "
            "(it is a dependency of pneumolib)")
    for loc in locations:
        p = Path(loc) / TABLE
        if p.is_file():
            return p
    raise DataError(
        f"{PACKAGE} is installed at {locations[0]} but has no {TABLE}; reinstall it with "
        f"`pip install --force-reinstall {PACKAGE}` (version 1.2 or later ships the table)")


def read_table(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The annotation table as in the file, one row per annotation row.

    Args:
        path: a ``train-rle.csv`` or ``.csv.gz`` (header ``ImageId, EncodedPixels``); None:
            :func:`table_path`.

    Returns:
        DataFrame with columns ``image_id`` (str) and ``rle`` (str, stripped; ``"-1"`` for
        an empty mask), in file order (:func:`summary`'s ``rows`` counts them).

    Raises:
        DataError: unreadable file or missing columns.
    """
    p = Path(path) if path is not None else table_path()
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot be read as an RLE table ({e}); reinstall {PACKAGE} "
                        "or re-download the file") from e
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("ImageId", "EncodedPixels") if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing column(s) {', '.join(missing)}; found "
                        f"{', '.join(df.columns) or '(none)'}. Expected ImageId, EncodedPixels.")
    out = pd.DataFrame({"image_id": df["ImageId"].str.strip(),
                        "rle": df["EncodedPixels"].str.strip()})
    out.loc[out["rle"] == "", "rle"] = EMPTY
    return out


# -- one image ------------------------------------------------------------------------------
def union_runs(rles: list[str], height: int = SIDE, width: int = SIDE) -> tuple[np.ndarray, np.ndarray, int]:
    """Merge the runs of several annotations of one image (the mask is their union).

    Args:
        rles: RLE strings (``"-1"`` adds nothing).
        height, width: mask size in pixels.

    Returns:
        ``(begins, ends, summed)``: the sorted, disjoint column-major intervals of the union
        (int64 arrays) and the sum of the annotations' own areas in pixels (larger than the
        union's area exactly when annotations overlap).

    Raises:
        DataError: a string is not a valid RLE for this size.
    """
    parts = [runs(r, height, width) for r in rles]
    b = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    e = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    summed = int((e - b).sum())
    if len(parts) > 1 and b.size:
        order = np.argsort(b, kind="stable")
        b, e = b[order], e[order]
        reach = np.maximum.accumulate(e)
        new = np.ones(b.size, bool)
        new[1:] = b[1:] > reach[:-1]          # touching runs merge too (same pixels)
        first = np.flatnonzero(new)
        last = np.append(first[1:] - 1, b.size - 1)
        b, e = b[first], reach[last]
    return b, e, summed


def coverage_counts(begins: np.ndarray, ends: np.ndarray, height: int = SIDE, width: int = SIDE,
                    grid: int = GRID) -> np.ndarray:
    """Mask pixels in each cell of a ``grid x grid`` partition of the image.

    Args:
        begins, ends: disjoint column-major intervals (:func:`union_runs`).
        height, width: mask size; both must be multiples of ``grid``.
        grid: cells a side.

    Returns:
        ``(grid, grid)`` int64 in ``[0, (height / grid) * (width / grid)]``, image
        orientation (row 0 at the top); divide by the cell size for the coverage.
    """
    if height % grid or width % grid:
        raise DataError(f"a {height} x {width} mask cannot be split into {grid} x {grid} equal cells")
    bh, bw = height // grid, width // grid
    if begins.size == 0:
        return np.zeros((grid, grid), np.int64)
    # F(x): mask pixels with flat index < x, at the boundaries of every bh-long piece of
    # every column (column c, block-row r is the piece [c*height + r*bh, ... + bh))
    x = np.arange(0, height * width + 1, bh, dtype=np.int64)
    lengths = ends - begins
    before = np.concatenate([[0], np.cumsum(lengths)])
    j = np.searchsorted(begins, x, side="right") - 1
    jj = j.clip(0)
    f = np.where(j < 0, 0, before[jj] + np.minimum(x - begins[jj], lengths[jj]))
    pieces = np.diff(f).reshape(width, grid)                 # [column, block-row]
    return pieces.reshape(grid, bw, grid).sum(1).T           # [block-row, block-column]


def image_coverage(rles: list[str], height: int = SIDE, width: int = SIDE, grid: int = GRID) -> np.ndarray:
    """``(grid, grid)`` float64 in [0, 1]: the union mask of ``rles`` block-averaged.

    Equals ``decode_many(rles, height, width)`` averaged over ``height/grid x width/grid``
    blocks.
    """
    b, e, _ = union_runs(rles, height, width)
    return coverage_counts(b, e, height, width, grid) / float((height // grid) * (width // grid))


# -- the whole table ------------------------------------------------------------------------
@dataclass
class AnnotationStats:
    """Statistics of one annotation table (:func:`stats`).

    Attributes:
        images: one row per image (:func:`per_image`'s columns), in first-appearance order.
        coverage: ``(n_positive, grid, grid)`` uint16 mask pixels per cell of each positive
            image, in the order of ``images[images.has_pneumo]``; divide by ``cell_px``.
        grid: cells a side (64); ``side``: the masks' side (1024).
        table: the table file; ``table_sha256``: its hash; ``seconds``: time to compute.
    """

    images: pd.DataFrame
    coverage: np.ndarray
    grid: int
    side: int
    table: str
    table_sha256: str
    seconds: float

    @property
    def cell_px(self) -> int:
        return (self.side // self.grid) ** 2

    @property
    def positives(self) -> pd.DataFrame:
        return self.images[self.images["has_pneumo"]].reset_index(drop=True)

    def heatmap(self) -> np.ndarray:
        """``(grid, grid)`` float64 in [0, 1]: mean coverage over the positive images.

        Cell value = average over positives of the share of that cell their mask covers
        (= the per-pixel share of positives covering a pixel, block-averaged). Image
        orientation: row 0 at the top, the patient's right on the image's left.
        """
        if len(self.coverage) == 0:
            return np.zeros((self.grid, self.grid))
        return self.coverage.astype(np.float64).mean(0) / self.cell_px

    def area_frac(self) -> np.ndarray:
        """Positive mask areas as a share of the image, (n_positive,) float64 in (0, 1]."""
        return self.positives["area_px"].to_numpy(np.float64) / float(self.side**2)


def _compute(table: pd.DataFrame, side: int, grid: int) -> tuple[pd.DataFrame, np.ndarray]:
    groups: dict[str, list[str]] = {}
    for image_id, rle in zip(table["image_id"], table["rle"]):
        groups.setdefault(image_id, []).append(rle)
    rows, cover = [], []
    for image_id, rles in groups.items():
        ann = [r for r in rles if r != EMPTY]
        try:
            b, e, summed = union_runs(ann, side, side)
        except DataError as err:
            raise DataError(f"ImageId {image_id}: {err}") from err
        area = int((e - b).sum())
        rows.append((image_id, len(rles), len(ann), area > 0, area, summed - area))
        if area > 0:
            cover.append(coverage_counts(b, e, side, side, grid).astype(np.uint16))
    images = pd.DataFrame(rows, columns=["image_id", "n_rows", "n_annotations", "has_pneumo",
                                         "area_px", "overlap_px"])
    images["image_id"] = images["image_id"].astype(str)
    images["overlap"] = images["overlap_px"] > 0
    images["area_frac"] = images["area_px"] / float(side * side)
    coverage = np.stack(cover) if cover else np.zeros((0, grid, grid), np.uint16)
    return images, coverage


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_file(path: str | os.PathLike | None = None, grid: int = GRID) -> Path:
    """Where :func:`stats` caches the numbers of ``path`` (None: the torchxrayvision table)."""
    p = Path(path) if path is not None else table_path()
    return _cache_target(_sha256(p), grid)


def _cache_target(digest: str, grid: int) -> Path:
    return paths.cache_dir() / "annotations" / f"siim-rle-{digest[:16]}-g{grid}-v{STATS_VERSION}.npz"


def stats(path: str | os.PathLike | None = None, grid: int = GRID, use_cache: bool = True) -> AnnotationStats:
    """Per-image numbers and per-positive coverage of an annotation table, cached on disk.

    Args:
        path: the RLE table (None: the real one from torchxrayvision, 1024 px masks).
        grid: heat-map cells a side (a divisor of 1024).
        use_cache: read / write ``cache_file(path, grid)`` (a corrupt cache is recomputed).

    Returns:
        :class:`AnnotationStats`; ``seconds`` is the compute time (0 when read from cache).

    Raises:
        DataError: missing torchxrayvision, unreadable table, or an RLE that does not fit
            a 1024 x 1024 mask.
    """
    p = Path(path) if path is not None else table_path()
    digest = _sha256(p)
    target = _cache_target(digest, grid)
    if use_cache and target.is_file():
        try:
            with np.load(target, allow_pickle=False) as z:
                if str(z["sha256"]) == digest:
                    images = pd.DataFrame({c: z[f"col_{c}"] for c in _COLUMNS})
                    images["image_id"] = images["image_id"].astype(str)
                    return AnnotationStats(images, z["coverage"], grid, SIDE, str(p), digest, 0.0)
        except (OSError, ValueError, KeyError):
            pass                                  # unreadable: recompute and replace
    t0 = time.perf_counter()
    images, coverage = _compute(read_table(p), SIDE, grid)
    seconds = time.perf_counter() - t0
    if use_cache:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, sha256=np.array(digest), coverage=coverage,
                            **{f"col_{c}": (images[c].to_numpy(str) if c == "image_id" else images[c].to_numpy())
                               for c in _COLUMNS})
        os.replace(tmp, target)
    return AnnotationStats(images, coverage, grid, SIDE, str(p), digest, seconds)


_COLUMNS = ("image_id", "n_rows", "n_annotations", "has_pneumo", "area_px", "overlap_px",
            "overlap", "area_frac")


def per_image(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per image of the table (:func:`summary`'s ``images`` counts them).

    Columns: ``image_id``; ``n_rows`` (rows in the table, >= 1); ``n_annotations`` (rows
    that are not ``-1``: 0 for a negative, 1 or more for a positive, at most
    :func:`summary`'s ``max_annotations``); ``has_pneumo`` (bool); ``area_px`` (pixels of
    the union mask at 1024 x 1024, 0 for a negative, at most :func:`summary`'s
    ``area_px["max"]``); ``overlap_px`` (pixels covered by more than one annotation,
    counted with multiplicity minus one) and ``overlap`` (bool); ``area_frac``
    (``area_px / 1024**2``, in [0, 1]). The 64 x 64 coverage of each positive is in
    ``stats(path).coverage``.
    """
    return stats(path).images


def summary(path: str | os.PathLike | None = None) -> dict:
    """The numbers of DATA.md section 1, measured on the table.

    Returns:
        dict: ``rows``, ``images``, ``positives``, ``prevalence`` (positives / images),
        ``multi_annotation`` (images with 2+ annotations), ``max_annotations``,
        ``overlapping`` (images whose annotations overlap), ``area_px`` (dict of
        :data:`QUANTILES` of the positives' areas in pixels at 1024^2, with
        :data:`QUANTILE_METHOD`),
        ``area_frac_median`` and ``share_under_2000px`` (of positives).
    """
    s = stats(path)
    pos = s.positives
    area = pos["area_px"].to_numpy(np.float64)
    n_rows = int(s.images["n_rows"].sum())
    q = {k: float(np.quantile(area, v, method=QUANTILE_METHOD)) if area.size else float("nan")
         for k, v in QUANTILES.items()}
    return {
        "rows": n_rows,
        "images": len(s.images),
        "positives": len(pos),
        "prevalence": len(pos) / max(len(s.images), 1),
        "multi_annotation": int((s.images["n_annotations"] >= 2).sum()),
        "max_annotations": int(s.images["n_annotations"].max()) if len(s.images) else 0,
        "overlapping": int(s.images["overlap"].sum()),
        "area_px": q,
        "area_frac_median": q["median"] / SIDE**2,
        "share_under_2000px": float((area < 2000).mean()) if area.size else float("nan"),
    }


def heatmap(path: str | os.PathLike | None = None, grid: int = GRID) -> np.ndarray:
    """``(grid, grid)`` float64 in [0, 1]: mean location heat map of the positive masks.

    See :meth:`AnnotationStats.heatmap`; cached with :func:`stats`.
    """
    return stats(path, grid).heatmap()
