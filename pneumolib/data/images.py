"""Layout ``images``: any folder of image files, for inference (no masks).

Accepts a folder (searched recursively; ``.png``, ``.jpg``, ``.jpeg``, ``.dcm`` in any
case), a single image file, or a list of image files. Hidden files and hidden folders are
skipped as junk, other files (a ``metadata.csv``, a README) as "not an image"; all of them
are listed in ``source.skipped``.

Records have ``has_pneumo=-1``, ``split=None``, ``mask_path=None`` and
``image_id`` = the path relative to the root without its extension (with it when two files
differ only by extension). ``has_masks()`` is False and ``read_mask`` raises DataError.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pneumolib.errors import DataError

from . import imageio
from .base import Record, Skips, Source, walk_files

LAYOUT = ("images: a folder (any depth) of .png / .jpg / .jpeg / .dcm files, a single such "
          "file, or a list of them (no masks)")


class ImagesSource(Source):
    """Image files without labels: ``read_image`` works, ``read_mask`` raises DataError."""


def open_images(path: Path | Sequence[str | os.PathLike], skip_bad: bool = False) -> ImagesSource:
    """Collect the image files of a folder, a file, or a list of files.

    Empty (0-byte) files are bad at once; with ``skip_bad`` every file is also probed
    (header, truncation) and bad ones are skipped.

    Raises:
        DataError: no image file found, a listed file missing or of another type, or a bad
            file (unless ``skip_bad``).
    """
    if isinstance(path, (str, os.PathLike)):
        root = Path(path)
        if root.is_file():
            files, junk, root = [root], [], root.parent
        else:
            files, junk = walk_files(root)
    else:
        files, junk = [Path(p).expanduser().resolve() for p in path], []
        if not files:
            raise DataError("open_source() got an empty list of files. Pass image paths.")
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
    skips = Skips(root, skip_bad)
    for p, why in junk:
        skips.junk(p, why)
    explicit = not isinstance(path, (str, os.PathLike)) or Path(path).is_file()
    kept: list[Path] = []
    for p in files:
        if not imageio.is_image_file(p):
            if explicit:
                skips.bad(p, f"{p}: not a supported image file; supported: "
                          f"{', '.join(imageio.IMAGE_EXTS)}.")
            else:
                skips.junk(p, "not an image file (.png/.jpg/.jpeg/.dcm)")
            continue
        try:
            if not p.is_file() or p.stat().st_size == 0:
                imageio.read_size(p)  # raises the standard DataError (missing / empty)
            if skip_bad:
                imageio.probe(p)
        except DataError as e:
            skips.bad(p, str(e))
            continue
        kept.append(p)
    skips.warn()
    if not kept:
        raise DataError(f"{root}: no usable image file ({len(skips.entries)} skipped). "
                        f"Expected {LAYOUT}.")
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in kept]
    dup = Counter(stems)
    records = [Record(image_id=s if dup[s] == 1 else p.relative_to(root).as_posix(),
                      has_pneumo=-1, split=None, image_path=p, mask_path=None)
               for s, p in zip(stems, kept)]
    return ImagesSource("images", root, records, skips.entries)
