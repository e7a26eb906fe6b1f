"""Dataset layouts behind one call: ``open_source(path, kind=None, skip_bad=False)``.

Kinds (docs DATA.md sections 2 and 3, docs ARCHITECTURE.md for the contract):

- ``siim-png``: the Kaggle PNG re-packaging (``png_images/``, ``png_masks/``, the
  ``stage_1_*_images.csv`` tables); see :mod:`pneumolib.data.siim_png`.
- ``phantom``: the built-in synthetic data, the same layout with ``PHANTOM.json`` at the root.
- ``siim-dicom``: the competition's DICOMs (any depth) and ``train-rle.csv``; see
  :mod:`pneumolib.data.siim_dicom`.
- ``images``: any folder, file or list of image files, without masks; see
  :mod:`pneumolib.data.images`.

Detection when ``kind`` is None, in order: ``png_images/`` at the root -> phantom (with the
marker) or siim-png; a ``*rle*.csv`` at the root beside ``.dcm`` files -> siim-dicom; any
image file -> images; anything else -> DataError listing what was found.

``skip_bad=True`` turns bad files into entries of ``source.skipped`` and one warning with
the count; without it the first bad file raises DataError. Hidden junk (``._x.dcm``) is
always skipped and listed.
"""

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pneumolib.errors import ConfigError, DataError

from . import imageio
from .base import Record, Source, walk_files
from .images import LAYOUT as IMAGES_LAYOUT
from .images import ImagesSource, open_images
from .siim_dicom import LAYOUT as DICOM_LAYOUT
from .siim_dicom import SiimDicomSource, find_rle_csvs, open_siim_dicom
from .siim_png import LAYOUT as PNG_LAYOUT
from .siim_png import PHANTOM_MARKER, SiimPngSource, open_siim_png

__all__ = ["KINDS", "Record", "Source", "SiimPngSource", "SiimDicomSource", "ImagesSource",
           "open_source", "detect_kind"]

KINDS = ("siim-png", "phantom", "siim-dicom", "images")
LAYOUTS = (PNG_LAYOUT, f"phantom: the siim-png layout with {PHANTOM_MARKER} at the root",
           DICOM_LAYOUT, IMAGES_LAYOUT)


def _expected() -> str:
    return "Expected one of these layouts:\n  - " + "\n  - ".join(LAYOUTS)


def _found(root: Path, files: list[Path]) -> str:
    if not any(root.iterdir()):
        return "the folder is empty"
    folders = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
    by_ext = Counter(p.suffix.lower() or "(no extension)" for p in files)
    parts = [f"{n} {ext}" for ext, n in by_ext.most_common(8)]
    return (f"found {len(files)} file(s) ({', '.join(parts) or 'none visible'})"
            + (f" and folders {', '.join(folders[:8])}" if folders else ""))


def detect_kind(path: str | os.PathLike) -> str:
    """The layout of ``path`` (one of :data:`KINDS`), without reading any pixel.

    Raises:
        DataError: the path does not exist, or matches no layout (the message lists what
            was found and the expected layouts).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder. Check the path; " + _expected())
    if p.is_file():
        if imageio.is_image_file(p):
            return "images"
        raise DataError(f"{p}: is neither a dataset folder nor an image file "
                        f"({', '.join(imageio.IMAGE_EXTS)}). Pass the dataset folder. "
                        + _expected())
    if (p / "png_images").is_dir():
        return "phantom" if (p / PHANTOM_MARKER).is_file() else "siim-png"
    files, _ = walk_files(p)
    csvs = find_rle_csvs(p)
    n_dcm = sum(f.suffix.lower() in imageio.DICOM_EXTS for f in files)
    if csvs:
        if n_dcm:
            return "siim-dicom"
        raise DataError(f"{p}: has {csvs[0].name} but no .dcm file in any sub-folder; "
                        f"{_found(p, files)}. Put the DICOM folders beside the CSV. "
                        + _expected())
    if any(imageio.is_image_file(f) for f in files):
        _hint_parent(p)
        return "images"
    raise DataError(f"{p}: no known dataset layout; {_found(p, files)}. " + _expected())


def _hint_parent(p: Path) -> None:
    """Warn when a sub-folder of a siim-png dataset is opened as plain images.

    (Not for siim-dicom: its ``dicom-images-test`` folder is rightly opened as images.)
    """
    parent = p.resolve().parent
    if (parent / "png_images").is_dir() and (parent / "png_masks").is_dir():
        warnings.warn(f"{p} is read as plain images without masks; its parent {parent} looks "
                      "like a labelled dataset: pass the parent to use the labels", stacklevel=4)


def open_source(path: str | os.PathLike | Sequence[str | os.PathLike], kind: str | None = None,
                skip_bad: bool = False) -> Source:
    """Open a dataset.

    Args:
        path: a dataset folder; for kind ``images`` also a single image file or a list of
            image files.
        kind: one of :data:`KINDS`, or None to detect it from the folder's contents.
        skip_bad: skip bad files (warning with the count, entries in ``source.skipped``)
            instead of raising on the first one.

    Returns:
        A :class:`Source`: ``len()``, indexing to :class:`Record`, ``read_image(i)`` ->
        ``(H, W)`` float32 in [0, 1], ``read_mask(i)`` -> ``(H, W)`` bool, ``fingerprint()``.

    Raises:
        ConfigError: unknown ``kind``.
        DataError: missing path, unknown or broken layout, bad files (without ``skip_bad``).
    """
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"data kind {kind!r} is unknown; valid kinds: {', '.join(KINDS)}")
    if not isinstance(path, (str, os.PathLike)):
        if kind not in (None, "images"):
            raise ConfigError(f"a list of files can only be opened as kind 'images', not {kind!r}")
        return open_images(list(path), skip_bad=skip_bad)
    p = Path(path).expanduser()
    if kind is None:
        kind = detect_kind(p)
    elif not p.exists():
        raise DataError(f"{p}: no such file or folder. Check the path.")
    root = p.resolve()
    if kind == "images":
        return open_images(root, skip_bad=skip_bad)
    if not root.is_dir():
        raise DataError(f"{root}: is a file; kind {kind!r} needs the dataset folder.")
    if kind == "siim-dicom":
        return open_siim_dicom(root, skip_bad=skip_bad)
    return open_siim_png(root, skip_bad=skip_bad, kind=kind)


