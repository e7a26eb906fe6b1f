"""Write a phantom set, atomically, in the ``siim-png`` or the ``siim-dicom`` layout.

``siim-png`` (the default; DATA.md section 2)::

    <out>/
      png_images/<k>_<train|test>_<has_pneumo>_.png   8-bit grayscale
      png_masks/<same name>                            0 / 255
      stage_1_train_images.csv                         new_filename,ImageId,has_pneumo
      stage_1_test_images.csv
      PHANTOM.json                                     the marker: parameters and version

``siim-dicom`` (the original competition download; DATA.md section 3)::

    <out>/
      dicom-images-train/<study uid>/<series uid>/<ImageId>.dcm   JPEG Baseline, 8-bit
      train-rle.csv                                               ImageId, EncodedPixels
      PHANTOM.json

with the real table's quirks: the header ``ImageId, EncodedPixels`` and every value carry
a leading space, empty masks are ``-1``, and a share of the positive images
(:data:`~pneumolib.data.phantom.dicom.MULTI_FRAC`, SIIM-ACR's) have 2 to 4 rows whose union
is the mask (a share :data:`~pneumolib.data.phantom.dicom.OVERLAP_FRAC` of those overlap; see
:func:`pneumolib.data.phantom.dicom.annotation_plan`). ``junk=N`` adds N macOS ``._<ImageId>.dcm``
files beside the DICOMs. Every image goes to ``dicom-images-train`` (the layout has no
labelled test folder), so the plan's train/test split is not kept; labels are.

Everything is written into a hidden sibling folder that is renamed into place at the end,
so an interrupted run never leaves a set that looks complete; ``PHANTOM.json`` is written
last, just before the rename.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumolib import __version__, paths
from pneumolib.errors import ConfigError, DataError

from . import dicom, jobs, knobs

MARKER = "PHANTOM.json"
LAYOUTS = ("siim-png", "siim-dicom")
CSV_COLUMNS = ("new_filename", "ImageId", "has_pneumo")
#: the real ``siim-png`` download's test share: the rows of its ``stage_1_test_images.csv``
#: over the rows of both CSVs
TEST_FRAC = 1372 / (10675 + 1372)
_UID_ROOT = "1.2.276.0.7230010.3.1.4.8323329"   # the SIIM ImageIds' common prefix


@dataclass(frozen=True)
class Item:
    index: int          # render index
    split: str          # train | test
    number: int         # number within the split (the file name's first field)
    positive: bool
    image_id: str

    @property
    def filename(self) -> str:
        return f"{self.number}_{self.split}_{int(self.positive)}_.png"


def plan(n: int, seed: int = 0, prevalence: float = knobs.PREVALENCE) -> list[Item]:
    """Labels, split and names of a set of ``n`` images, deterministic in ``(n, seed)``.

    Exactly ``round(prevalence * n)`` positives, chosen at random; a test split of about
    ``TEST_FRAC`` of the images, stratified by label; numbering within each split in index
    order; unique SIIM-like ImageIds.
    """
    rng = np.random.default_rng([int(seed), int(n), 0x51A4])
    n_pos = int(round(prevalence * n))
    pos = np.zeros(n, bool)
    pos[rng.permutation(n)[:n_pos]] = True
    n_test = int(round(n * TEST_FRAC)) if n > 1 else 0
    n_test_pos = int(round(n_test * n_pos / n))
    test = np.zeros(n, bool)
    pi, ni = np.flatnonzero(pos), np.flatnonzero(~pos)
    test[rng.permutation(pi)[:n_test_pos]] = True
    test[rng.permutation(ni)[: n_test - n_test_pos]] = True
    tail = rng.integers(100000, 1000000, n)
    stamp = 1517875000 + int(seed) % 100000
    counters = {"train": 0, "test": 0}
    items = []
    for i in range(n):
        split = "test" if test[i] else "train"
        items.append(Item(i, split, counters[split], bool(pos[i]), f"{_UID_ROOT}.{1000 + i}.{stamp}.{tail[i]}"))
        counters[split] += 1
    return items


# -- driver -----------------------------------------------------------------------------
def read_marker(root) -> dict | None:
    """The parsed ``PHANTOM.json`` of ``root``, or None when it has none (or a broken one)."""
    try:
        return json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _params(n, size, seed, difficulty, prevalence, layout="siim-png", junk=0) -> dict:
    params = {"n": int(n), "size": int(size), "seed": int(seed), "difficulty": float(difficulty),
              "prevalence": float(prevalence), "version": knobs.VERSION, "layout": layout}
    if layout == "siim-dicom":
        params["junk"] = int(junk)
    return params


def _count_dicoms(folder: Path) -> int:
    n = 0
    for _, _, names in os.walk(folder):
        n += sum(1 for f in names if f.endswith(".dcm") and not f.startswith("."))
    return n


def is_complete(root, **params) -> bool:
    """True if ``root`` is a finished phantom set with these parameters (all if none given)."""
    m = read_marker(root)
    if m is None or m.get("kind") != "phantom":
        return False
    if any(m.get(k) != v for k, v in params.items()):
        return False
    root = Path(root)
    n = m.get("n", -1)
    if m.get("layout", "siim-png") == "siim-dicom":
        return (root / dicom.RLE_CSV).is_file() and _count_dicoms(root / dicom.DICOM_DIR) == n
    return all((root / f).is_file() for f in ("stage_1_train_images.csv", "stage_1_test_images.csv")) and all(
        sum(1 for _ in os.scandir(root / d)) == n for d in ("png_images", "png_masks"))


def write_phantom(out, n: int, size: int, seed: int = 0, difficulty: float = 1.0,
                  prevalence: float = knobs.PREVALENCE, workers: int | None = None,
                  progress: bool = True, overwrite: bool = False, layout: str = "siim-png",
                  junk: int = 0) -> Path:
    """Render ``n`` phantom radiographs of ``size`` px into ``out`` in a SIIM layout.

    Args:
        out: target folder; created (its parent too). If it already holds a complete
            phantom set with the same parameters it is returned untouched.
        n: number of images (>= 1); ``size``: side in pixels (>= 32).
        seed: data-set seed (image ``i`` is ``render(i, seed, size, difficulty,
            positive=...)``).
        difficulty: >= 0, see :mod:`pneumolib.data.phantom.knobs`.
        prevalence: share of positives; exactly ``round(prevalence * n)`` are positive.
        workers: processes (None: one per CPU; 0 or 1: in this process).
        progress: show a tqdm bar.
        overwrite: replace an existing phantom set with other parameters (a folder that
            is not a phantom set is never deleted).
        layout: ``"siim-png"`` (default: the Kaggle PNG re-packaging, what training's
            :func:`ensure_phantom` writes) or ``"siim-dicom"`` (the competition download:
            nested JPEG Baseline DICOMs and ``train-rle.csv`` with its quirks; see the
            module docstring). Same labels, ImageIds and pixels (up to JPEG error) in both.
        junk: ``siim-dicom`` only: number of macOS ``._<ImageId>.dcm`` files (a few
            hundred bytes each) to put beside the DICOMs, for exercising a reader's junk
            skipping; 0 by default, so that opening the set is silent (a reader warns about
            the junk it skips).

    Returns:
        ``out`` as an absolute Path.

    Raises:
        ConfigError: a parameter out of range.
        DataError: ``out`` exists and is not a replaceable phantom set, or writing failed.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"phantom layout={layout!r} is unknown; valid layouts: {', '.join(LAYOUTS)}")
    if int(junk) < 0 or (int(junk) and layout != "siim-dicom"):
        raise ConfigError(f"phantom junk={junk} must be 0, or a count >= 0 with layout='siim-dicom'")
    knobs.for_difficulty(difficulty)                                  # validates difficulty
    if int(n) < 1:
        raise ConfigError(f"phantom n={n} must be at least 1")
    if int(size) < 32:
        raise ConfigError(f"phantom size={size} must be at least 32 pixels")
    if not 0.0 <= float(prevalence) <= 1.0:
        raise ConfigError(f"phantom prevalence={prevalence} must lie in [0, 1]")
    n, size, seed = int(n), int(size), int(seed)
    params = _params(n, size, seed, difficulty, prevalence, layout, junk)
    out = Path(out).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out} exists and is not a folder: choose another output folder")
        if is_complete(out, **params):
            return out
        if any(out.iterdir()) and not (overwrite and read_marker(out) is not None):
            raise DataError(
                f"{out} already exists and is not an identical phantom set: choose another folder"
                + ("" if read_marker(out) is None else " or pass overwrite=True to replace it")
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _fill(tmp, params, workers, progress, out.name)
        _move_into_place(tmp, out, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fill(tmp: Path, params: dict, workers, progress: bool, label: str) -> None:
    from tqdm.auto import tqdm

    n, size, layout = params["n"], params["size"], params["layout"]
    items = plan(n, params["seed"], params["prevalence"])
    if layout == "siim-dicom":
        (tmp / dicom.DICOM_DIR).mkdir(parents=True)
        multi = dicom.annotation_plan([it.positive for it in items], params["seed"])
        todo = [(it.index, it.positive, dicom.dicom_rel(it.image_id), it.image_id,
                 *multi.get(it.index, (1, False))) for it in items]
    else:
        for d in ("png_images", "png_masks"):
            (tmp / d).mkdir(parents=True)
        todo = [(it.index, it.filename, it.positive) for it in items]
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        workers = 1 if n < 16 else workers
    workers = max(1, min(int(workers), n))
    args = (str(tmp), params["seed"], size, params["difficulty"], layout)
    bar = tqdm(total=n, desc=f"phantom {label}", unit="img", disable=not progress)
    results: dict[int, object] = {}
    try:
        if workers == 1:
            jobs.init_job(*args, worker=False)
            for job in todo:
                i, res = jobs.work(job)
                results[i] = res
                bar.update()
        else:
            chunk = max(1, min(16, n // (workers * 8)))
            with jobs.pool(workers, args) as pool:
                for i, res in pool.imap_unordered(jobs.work, todo, chunksize=chunk):
                    results[i] = res
                    bar.update()
    finally:
        bar.close()
    marker = {"kind": "phantom", "generator": "pneumolib.data.phantom", **params,
              "n_train": sum(it.split == "train" for it in items),
              "n_test": sum(it.split == "test" for it in items),
              "n_positive": sum(it.positive for it in items), "pneumolib_version": __version__}
    if layout == "siim-dicom":
        marker.update(dicom.finish_dicom(tmp, items, results, params))
    else:
        _write_png_csvs(tmp, items)
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _write_png_csvs(tmp: Path, items: list[Item]) -> None:
    for split in ("train", "test"):
        with open(tmp / f"stage_1_{split}_images.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            for it in items:
                if it.split == split:
                    w.writerow((it.filename, it.image_id, int(it.positive)))


def _move_into_place(tmp: Path, out: Path, params: dict) -> None:
    """Rename ``tmp`` to ``out``; an existing phantom ``out`` is swapped out first."""
    old = None
    if out.exists():
        if not any(out.iterdir()):
            out.rmdir()
        else:           # checked by the caller: a phantom set we may replace
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        # another process finished the same set first: keep theirs if it is what we want
        if is_complete(out, **params):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            if old is not None and not out.exists():
                old.rename(out)
            raise DataError(f"could not move the finished phantom set into {out}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cache_key(n: int, size: int, difficulty: float, seed: int = 0) -> str:
    """Folder name of a cached phantom set: ``n<n>-s<size>-d<difficulty>-v<VERSION>``."""
    key = f"n{int(n)}-s{int(size)}-d{float(difficulty):g}-v{knobs.VERSION}"
    return key if int(seed) == 0 else f"{key}-k{int(seed)}"


def ensure_phantom(cfg) -> Path:
    """The phantom set for a :class:`~pneumolib.config.Config`, generated on first use.

    Uses ``cfg.phantom_n``, ``cfg.phantom_size`` and ``cfg.phantom_difficulty``; the data
    seed is 0 (``cfg.phantom_seed`` if a Config ever grows one), never ``cfg.seed``, so
    every run shares one data set. Lives in
    ``paths.cache_dir()/"phantom"/"n<n>-s<size>-d<difficulty>-v<VERSION>"``; a folder there
    without a complete marker (e.g. files deleted by hand) is regenerated.
    """
    seed = int(getattr(cfg, "phantom_seed", 0) or 0)
    n, size, d = cfg.phantom_n, cfg.phantom_size, cfg.phantom_difficulty
    root = paths.cache_dir() / "phantom" / cache_key(n, size, d, seed)
    params = _params(n, size, seed, d, knobs.PREVALENCE)
    if is_complete(root, **params):
        return root
    from pneumolib.runio import file_lock

    # two first runs at once (two notebooks, DDP ranks, two GPUs' jobs) must not both write:
    # the second would replace files the first has started caching
    with file_lock(root.with_name(f".{root.name}.lock")):
        if is_complete(root, **params):
            return root
        if root.exists():       # ours (inside the cache) but incomplete or stale: rebuild
            shutil.rmtree(root)
        return write_phantom(root, n, size, seed=seed, difficulty=d, prevalence=knobs.PREVALENCE,
                             progress=getattr(cfg, "progress", True) and not paths.is_headless())
