"""The worker side of :func:`pneumolib.data.phantom.write_phantom`: each job renders one
image and writes it in the set's layout (two PNGs, or one JPEG DICOM plus its RLE rows).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import struct
import sys
import uuid
import zlib

import cv2
import numpy as np

from pneumolib.data import rle
from pneumolib.errors import DataError

from . import compose, dicom

_JOB: dict = {}


def init_job(folder: str, seed: int, size: int, difficulty: float, layout: str = "siim-png",
          worker: bool = True) -> None:
    if worker:
        cv2.setNumThreads(1)        # one process per core (a no-op in forked workers)
        _keep_buffers()
    _JOB.update(folder=folder, seed=seed, size=size, difficulty=difficulty, layout=layout)


def _keep_buffers() -> None:
    """Let glibc recycle freed image buffers instead of returning them to the kernel.

    Each render allocates a few dozen arrays of S*S floats; by default glibc maps every one
    of them fresh from the kernel and unmaps it when freed, and the page faults take a
    sizable share of the render time. Only called in our own worker processes; a no-op where
    the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)     # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)    # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def work(item: tuple) -> tuple[int, object]:
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
             "ImageComments": "synthetic phantom radiograph (pneumolib.data.phantom)"}
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

    Written by hand because it is faster than cv2's and PIL's encoders at the same size:
    every row uses PNG's "Sub" filter (difference to the left neighbour, which suits smooth
    radiographs) and zlib's run-length strategy (fast, and smaller than level 1's default on
    noisy images).
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


def pool(workers: int, args: tuple):
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
            return mp.get_context("fork").Pool(workers, initializer=init_job, initargs=args)
        finally:
            cv2.setNumThreads(threads)
    return mp.get_context("spawn").Pool(workers, initializer=init_job, initargs=args)
