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
a leading space, empty masks are ``-1``, and about 23 % of the positive images have 2 to 4
rows whose union is the mask (about 29 % of those overlap; see
:func:`pneumolib.phantom.dicom.annotation_plan`). ``junk=N`` adds N macOS ``._<ImageId>.dcm``
files beside the DICOMs. Every image goes to ``dicom-images-train`` (the layout has no
labelled test folder), so the plan's train/test split is not kept; labels are.

Everything is written into a hidden sibling folder that is renamed into place at the end,
so an interrupted run never leaves a set that looks complete; ``PHANTOM.json`` is written
last, just before the rename.
"""

from __future__ import annotations

import csv
import ctypes
import json
import multiprocessing as mp
import os
import shutil
import struct
import sys
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import __version__, paths, rle
from ..errors import ConfigError, DataError
from . import compose, dicom, knobs

MARKER = "PHANTOM.json"
LAYOUTS = ("siim-png", "siim-dicom")
DICOM_DIR = "dicom-images-train"
RLE_CSV = "train-rle.csv"
CSV_COLUMNS = ("new_filename", "ImageId", "has_pneumo")
#: the layout's train/test proportion: 10,675 / 1,372 rows
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


# -- worker side ------------------------------------------------------------------------
_JOB: dict = {}


def _init(folder: str, seed: int, size: int, difficulty: float, layout: str = "siim-png",
          worker: bool = True) -> None:
    if worker:
        cv2.setNumThreads(1)        # one process per core (a no-op in forked workers)
        _keep_buffers()
    _JOB.update(folder=folder, seed=seed, size=size, difficulty=difficulty, layout=layout)


def _keep_buffers() -> None:
    """Let glibc recycle freed image buffers instead of returning them to the kernel.

    Each render allocates a few dozen arrays of S*S floats; by default glibc maps every one
    of them fresh from the kernel and unmaps it when freed, and the page faults cost about
    a third of the render time. Only called in our own worker processes; a no-op where the
    C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)     # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)    # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _work(item: tuple) -> tuple[int, object]:
    if _JOB["layout"] == "siim-dicom":
        return _work_dicom(item)
    index, name, positive = item
    img, mask, _ = compose.render(index, _JOB["seed"], _JOB["size"], _JOB["difficulty"], positive=positive)
    folder = _JOB["folder"]
    for sub, arr in (("png_images", img), ("png_masks", mask.astype(np.uint8) * 255)):
        path = os.path.join(folder, sub, name)
        try:
            with open(path, "wb") as fh:
                fh.write(png_bytes(arr))
        except OSError as e:
            raise DataError(f"could not write {path}: {e}; check free space and permissions") from e
    return index, float(mask.mean())


def _work_dicom(item: tuple) -> tuple[int, list[str]]:
    """Render one image, write its JPEG DICOM; return its ``train-rle.csv`` values."""
    index, positive, rel, image_id, pieces, overlap = item
    img, mask, meta = compose.render(index, _JOB["seed"], _JOB["size"], _JOB["difficulty"], positive=positive)
    path = os.path.join(_JOB["folder"], rel)
    study, series = dicom.siim_uids(image_id)
    patient = str(uuid.uuid5(uuid.NAMESPACE_OID, image_id))
    attrs = {"SpecificCharacterSet": "ISO_IR 100", "PatientID": patient, "PatientName": patient,
             "BodyPartExamined": "CHEST", "ViewPosition": meta["view"],
             "SeriesDescription": f"view: {meta['view']}", "SeriesNumber": 1, "InstanceNumber": 1,
             "ImageComments": "synthetic phantom radiograph (pneumolib.phantom)"}
    try:
        dicom.write_dicom(path, img, image_id=image_id, jpeg=True, study_uid=study,
                          series_uid=series, attrs=attrs)
    except OSError as e:
        raise DataError(f"could not write {path}: {e}; check free space and permissions") from e
    if not mask.any():
        return index, [rle.EMPTY]
    parts = dicom.split_annotations(mask, pieces, overlap) if pieces > 1 else [mask]
    return index, [rle.encode(p) for p in parts]


def png_bytes(a: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of the (H, W) uint8 array ``a``.

    Written by hand because it is about twice as fast as cv2's and four times PIL's at the
    same size: every row uses PNG's "Sub" filter (difference to the left neighbour, which
    suits smooth radiographs) and zlib's run-length strategy (fast, and smaller than
    level 1's default on noisy images).
    """
    h, w = a.shape
    raw = np.empty((h, w + 1), np.uint8)
    raw[:, 0] = 1                                   # filter type: Sub
    raw[:, 1] = a[:, 0]
    np.subtract(a[:, 1:], a[:, :-1], out=raw[:, 2:])  # wraps modulo 256, as PNG wants

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)   # 8-bit, grayscale, no interlace
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = z.compress(raw.tobytes()) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


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
        return (root / RLE_CSV).is_file() and _count_dicoms(root / DICOM_DIR) == n
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
        difficulty: >= 0, see :mod:`pneumolib.phantom.knobs`.
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
        (tmp / DICOM_DIR).mkdir(parents=True)
        multi = dicom.annotation_plan([it.positive for it in items], params["seed"])
        jobs = [(it.index, it.positive, _dicom_rel(it.image_id), it.image_id,
                 *multi.get(it.index, (1, False))) for it in items]
    else:
        for d in ("png_images", "png_masks"):
            (tmp / d).mkdir(parents=True)
        jobs = [(it.index, it.filename, it.positive) for it in items]
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        workers = 1 if n < 16 else workers
    workers = max(1, min(int(workers), n))
    args = (str(tmp), params["seed"], size, params["difficulty"], layout)
    bar = tqdm(total=n, desc=f"phantom {label}", unit="img", disable=not progress)
    results: dict[int, object] = {}
    try:
        if workers == 1:
            _init(*args, worker=False)
            for job in jobs:
                i, res = _work(job)
                results[i] = res
                bar.update()
        else:
            chunk = max(1, min(16, n // (workers * 8)))
            with _pool(workers, args) as pool:
                for i, res in pool.imap_unordered(_work, jobs, chunksize=chunk):
                    results[i] = res
                    bar.update()
    finally:
        bar.close()
    marker = {"kind": "phantom", "generator": "pneumolib.phantom", **params,
              "n_train": sum(it.split == "train" for it in items),
              "n_test": sum(it.split == "test" for it in items),
              "n_positive": sum(it.positive for it in items), "pneumolib_version": __version__}
    if layout == "siim-dicom":
        marker.update(_finish_dicom(tmp, items, results, params))
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


def _dicom_rel(image_id: str) -> str:
    study, series = dicom.siim_uids(image_id)
    return f"{DICOM_DIR}/{study}/{series}/{image_id}.dcm"


def _finish_dicom(tmp: Path, items: list[Item], rles: dict, params: dict) -> dict:
    """Write ``train-rle.csv`` (the real file's quirks) and the junk; the marker's extras."""
    lines = ["ImageId, EncodedPixels"]             # sic: leading space, as in the download
    for it in items:                               # an image's rows are adjacent
        lines += [f"{it.image_id}, {r}" for r in rles[it.index]]
    (tmp / RLE_CSV).write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng([params["seed"], params["n"], 0x0A11])
    junk = rng.choice(len(items), min(params["junk"], len(items)), replace=False)
    for i in sorted(junk.tolist()):
        it = items[i]
        target = tmp / _dicom_rel(it.image_id)
        (target.parent / f"._{target.name}").write_bytes(dicom.apple_double_bytes(int(rng.integers(200, 600))))
    multi = [it.index for it in items if len(rles[it.index]) > 1]
    return {"n_train": len(items), "n_test": 0, "n_rle_rows": len(lines) - 1,
            "n_multi_annotation": len(multi), "transfer_syntax": dicom.JPEG_BASELINE,
            "jpeg_quality": dicom.JPEG_QUALITY}


def _pool(workers: int, args: tuple):
    """A process pool whose workers start with cv2 single-threaded.

    On Linux the workers are forked (fast, and safe in scripts without a ``__main__``
    guard), with cv2's thread pool switched off in this process while they start: a child
    forked while that pool is live inherits it half-dead and hangs on its first blur.
    Elsewhere they are spawned (the caller's script then needs the usual
    ``if __name__ == "__main__":`` guard).
    """
    if sys.platform.startswith("linux"):
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            return mp.get_context("fork").Pool(workers, initializer=_init, initargs=args)
        finally:
            cv2.setNumThreads(threads)
    return mp.get_context("spawn").Pool(workers, initializer=_init, initargs=args)


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
    from ..cache import file_lock

    # two first runs at once (two notebooks, DDP ranks, two GPUs' jobs) must not both write:
    # the second would replace files the first has started caching
    with file_lock(root.with_name(f".{root.name}.lock")):
        if is_complete(root, **params):
            return root
        if root.exists():       # ours (inside the cache) but incomplete or stale: rebuild
            shutil.rmtree(root)
        return write_phantom(root, n, size, seed=seed, difficulty=d, prevalence=knobs.PREVALENCE,
                             progress=getattr(cfg, "progress", True))
