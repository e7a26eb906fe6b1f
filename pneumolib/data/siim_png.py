"""Layout ``siim-png``: the Kaggle PNG re-packaging the paper used (docs DATA.md section 2).

::

    <root>/png_images/<n>_<train|test>_<has_pneumo>_.png
    <root>/png_masks/<same name>.png          0 = background, 255 = pneumothorax
    <root>/stage_1_train_images.csv           columns: new_filename,ImageId,has_pneumo
    <root>/stage_1_test_images.csv

Either CSV may be missing if the other exists; ``Record.split`` says which CSV a row came
from. The built-in phantom data uses the same layout plus a ``PHANTOM.json`` marker at the
root (kind ``phantom``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from pneumolib.errors import DataError

from . import imageio
from .base import JUNK_REASON, Record, Skips, Source, column_index, listdir_names, read_csv_table

CSV_NAMES = {"train": "stage_1_train_images.csv", "test": "stage_1_test_images.csv"}
COLUMNS = ("new_filename", "ImageId", "has_pneumo")
PHANTOM_MARKER = "PHANTOM.json"
# Kaggle names such as "2_train_1_.png": the last number is has_pneumo. Names in another
# pattern are not checked (there is no number with a known meaning to compare).
_KAGGLE_NAME = re.compile(r"^\d+_[A-Za-z]+_(\d+)_?$")
LAYOUT = ("siim-png: png_images/ and png_masks/ with the same file names, plus "
          f"{CSV_NAMES['train']} and/or {CSV_NAMES['test']} (columns {','.join(COLUMNS)})")


class SiimPngSource(Source):
    """Source of the siim-png and phantom layouts; every record has a mask PNG."""

    def read_mask(self, i: int) -> np.ndarray:
        """``(H, W)`` bool from the mask PNG (grayscale ``> 0``), checked against the image.

        Raises:
            DataError: unreadable mask, or a mask whose size differs from its image.
        """
        rec = self.records[i]
        mask = imageio.read_mask(rec.mask_path)
        shape = imageio.read_size(rec.image_path)
        if mask.shape != shape:
            raise DataError(_size_message(rec, mask.shape, shape))
        return mask

    def has_masks(self) -> bool:
        return True


def _size_message(rec: Record, mask_shape, image_shape) -> str:
    return (f"mask {rec.mask_path} is {mask_shape[0]}x{mask_shape[1]} (HxW) but its image "
            f"{rec.image_path} is {image_shape[0]}x{image_shape[1]}: the mask does not belong "
            "to the image. Replace the pair, or pass skip_bad=True to skip it.")


def open_siim_png(root: Path, skip_bad: bool = False, kind: str = "siim-png") -> SiimPngSource:
    """Read the CSVs and check that every listed image and mask exists.

    With ``skip_bad`` each image and mask is also probed (header, truncation, equal sizes)
    so bad pairs are skipped now rather than failing later.

    Raises:
        DataError: missing folder or CSVs, CSV without the expected columns, a bad row or a
            missing file (unless ``skip_bad``), or no usable image at all.
    """
    img_dir, mask_dir = root / "png_images", root / "png_masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{root}: no {d.name}/ folder. Expected layout {LAYOUT}.")
    csvs = [(split, root / name) for split, name in CSV_NAMES.items() if (root / name).is_file()]
    if not csvs:
        raise DataError(f"{root}: neither {CSV_NAMES['train']} nor {CSV_NAMES['test']} found. "
                        f"Expected layout {LAYOUT}.")
    img_names, mask_names = listdir_names(img_dir), listdir_names(mask_dir)
    skips = Skips(root, skip_bad)
    for d, names in ((img_dir, img_names), (mask_dir, mask_names)):
        for n in sorted(names):
            if imageio.is_hidden_junk(n):
                skips.junk(d / n, JUNK_REASON)
    records: list[Record] = []
    listed: dict[str, str] = {}  # file name -> CSV line, of the rows kept
    in_csv: set[str] = set()  # every file name the CSVs mention, kept or not
    for split, csv_path in csvs:
        rows = read_csv_table(csv_path)
        header = rows[0][1] if rows else []
        col = column_index(csv_path, header, COLUMNS)
        for lineno, cells in rows[1:]:
            where = f"{csv_path.name} line {lineno}"
            if len(cells) < len(header):
                skips.bad(csv_path, f"{csv_path}: line {lineno} has {len(cells)} cells, the "
                          f"header has {len(header)}. Fix the row or pass skip_bad=True.")
                continue
            fname, image_id, hp = (cells[col[c]] for c in COLUMNS)
            in_csv.add(fname)
            rec = _row_record(root, split, fname, image_id, hp, where, img_names, mask_names,
                              listed, skips)
            if rec is not None and skip_bad and not _probe_pair(rec, skips):
                continue
            if rec is not None:
                listed[rec.image_path.name] = where
                records.append(rec)
    unlisted = [n for n in img_names if n not in in_csv and not imageio.is_hidden_junk(n)]
    if unlisted:
        warnings.warn(f"{img_dir}: {len(unlisted)} image(s) have no row in the CSVs and are "
                      f"not used (e.g. {sorted(unlisted)[0]})", stacklevel=3)
    skips.warn()
    if not records:
        raise DataError(f"{root}: no usable image listed in {', '.join(p.name for _, p in csvs)}"
                        f" ({skips.n_bad} skipped). Expected layout {LAYOUT}.")
    extra = [p for _, p in csvs] + [p for p in [root / PHANTOM_MARKER] if p.is_file()]
    return SiimPngSource(kind, root, records, skips.entries, extra)


def _row_record(root, split, fname, image_id, hp, where, img_names, mask_names, listed,
                skips: Skips) -> Record | None:
    """The Record of one CSV row, or None when the row is bad and ``skip_bad`` is on."""
    img_path, mask_path = root / "png_images" / fname, root / "png_masks" / fname
    if hp not in ("0", "1"):
        skips.bad(img_path, f"{root / CSV_NAMES[split]}: {where} (ImageId {image_id}) has "
                  f"has_pneumo={hp!r}; expected 0 or 1. Fix the row or pass skip_bad=True.")
        return None
    m = _KAGGLE_NAME.match(Path(fname).stem)
    if m and int(m.group(1)) != int(hp):
        skips.bad(img_path, f"{img_path}: the file name says has_pneumo={m.group(1)} but "
                  f"{where} (ImageId {image_id}) says {hp}. The CSV and the files disagree: "
                  "re-download the dataset, or pass skip_bad=True to skip this row.")
        return None
    if fname in listed:
        skips.bad(img_path, f"{img_path}: listed twice, in {listed[fname]} and {where}. "
                  "Remove the duplicate row or pass skip_bad=True.")
        return None
    for path, names, what in ((img_path, img_names, "image"), (mask_path, mask_names, "mask")):
        if fname not in names:
            skips.bad(path, f"{path}: {what} file listed in {where} does not exist. "
                      "Re-download the dataset, or pass skip_bad=True to skip this row.")
            return None
    return Record(image_id=image_id, has_pneumo=int(hp), split=split, image_path=img_path,
                  mask_path=mask_path)


def _probe_pair(rec: Record, skips: Skips) -> bool:
    """Probe an image and its mask; a bad pair goes to ``skips`` (skip_bad only)."""
    try:
        shape = imageio.probe(rec.image_path)
    except DataError as e:
        skips.bad(rec.image_path, str(e))
        return False
    try:
        mshape = imageio.probe(rec.mask_path)
    except DataError as e:
        skips.bad(rec.mask_path, str(e))
        return False
    if mshape != shape:
        skips.bad(rec.mask_path, _size_message(rec, mshape, shape))
        return False
    return True
