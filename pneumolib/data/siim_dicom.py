"""Layout ``siim-dicom``: the original competition files (docs DATA.md section 3).

::

    <root>/dicom-images-train/<study uid>/<series uid>/<ImageId>.dcm   (found recursively)
    <root>/train-rle.csv                                                ImageId, EncodedPixels

``train-rle.csv`` quirks handled here: the header `` EncodedPixels`` has a leading space,
values may carry one too, empty masks are ``-1``, some copies have no header and start
with a UTF-8 byte-order mark, and an ImageId may have several rows (the mask is their
union). Any CSV at the root whose name contains ``rle`` is accepted; ``train-rle.csv``
wins when there are several.

Decisions:
    - ImageId = DICOM file stem. Hidden files (macOS ``._x.dcm``), files in hidden folders
      and non-DICOM files are listed in ``source.skipped``, never opened.
    - A DICOM without an RLE row (e.g. the competition's ``dicom-images-test`` folder in
      the standard download) has no known mask. It is NOT a record: it goes to
      ``source.skipped`` with the reason, and a warning gives the count. Keeping it with
      ``has_pneumo=-1`` would make every consumer that reads all masks (the cache, EDA) fail
      on the standard download; open such a folder as kind ``images`` for inference. So
      every record has ``has_pneumo`` 0 or 1 and ``split="train"`` (the labelled set).
    - RLE rows without a DICOM are reported by a warning with their count.
    - Mask size comes from the DICOM header (Rows, Columns), read without pixel data.
    - A ``PHANTOM.json`` at the root (the marker of a phantom set written with
      ``layout="siim-dicom"``) belongs to the set: it is neither junk nor a record, and it
      counts in the fingerprint.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from pneumolib.errors import DataError

from . import imageio
from .base import Record, Skips, Source, column_index, read_csv_table, walk_files
from .rle import EMPTY, decode_many
from .siim_png import PHANTOM_MARKER

RLE_CSV = "train-rle.csv"
COLUMNS = ("ImageId", "EncodedPixels")
_RLE = re.compile(r"-1|\d+ \d+(?: \d+ \d+)*")
LAYOUT = ("siim-dicom: <ImageId>.dcm files in any sub-folders, plus train-rle.csv "
          "(columns ImageId, EncodedPixels) at the root")


def find_rle_csvs(root: Path) -> list[Path]:
    """CSV files at ``root`` whose name contains ``rle`` (case-insensitive), sorted."""
    return sorted(p for p in root.iterdir()
                  if p.is_file() and p.suffix.lower() == ".csv" and "rle" in p.name.lower()
                  and not imageio.is_hidden_junk(p))


class SiimDicomSource(Source):
    """Source of the siim-dicom layout; masks are decoded from the RLE table."""

    def __init__(self, *args, rles: dict[str, list[str]], csv_path: Path, **kw) -> None:
        super().__init__(*args, **kw)
        self._rles = rles
        self.csv_path = csv_path

    def annotations(self, i: int) -> list[str]:
        """The RLE strings of record ``i`` as in the CSV (``["-1"]`` when negative)."""
        return list(self._rles.get(self.records[i].image_id, []))

    def read_mask(self, i: int) -> np.ndarray:
        """``(Rows, Columns)`` bool: the union of the record's RLE rows.

        Raises:
            DataError: an RLE does not fit the image size, or the DICOM header is unreadable.
        """
        rec = self.records[i]
        rles = self._rles.get(rec.image_id)
        if rles is None:
            raise DataError(
                f"{rec.image_path}: ImageId {rec.image_id} has no row in {self.csv_path}, so "
                "its mask is unknown."
            )
        height, width = imageio.read_size(rec.image_path)
        try:
            return decode_many(rles, height, width)
        except DataError as e:
            raise DataError(f"{self.csv_path}: ImageId {rec.image_id} "
                            f"({rec.image_path}): {e}") from e

    def has_masks(self) -> bool:
        return True


def read_rle_csv(path: Path, skips: Skips) -> dict[str, list[str]]:
    """``{ImageId: [rle, ...]}`` from a train-rle.csv in any of its published variants.

    Raises:
        DataError: empty file, missing columns, or a bad row (unless ``skip_bad``).
    """
    rows = read_csv_table(path)
    if not rows:
        raise DataError(f"{path}: the RLE table is empty. Expected columns "
                        f"{', '.join(COLUMNS)} (see {LAYOUT}).")
    first = rows[0][1]
    headerless = len(first) == 2 and _RLE.fullmatch(" ".join(first[1].split())) is not None
    if headerless:
        col, data = {"ImageId": 0, "EncodedPixels": 1}, rows
    else:
        col, data = column_index(path, first, COLUMNS), rows[1:]
    rles: dict[str, list[str]] = {}
    for lineno, cells in data:
        if len(cells) <= max(col.values()):
            skips.bad(path, f"{path}: line {lineno} has {len(cells)} cell(s), expected "
                      f"{', '.join(COLUMNS)}. Fix the row or pass skip_bad=True.")
            continue
        image_id = cells[col["ImageId"]]
        enc = " ".join(cells[col["EncodedPixels"]].split())
        if not image_id or not _RLE.fullmatch(enc):
            skips.bad(path, f"{path}: line {lineno} (ImageId {image_id or '(empty)'}) has "
                      f"EncodedPixels {enc[:40]!r}; expected 'start length ...' pairs or -1. "
                      "Fix the row or pass skip_bad=True.")
            continue
        rles.setdefault(image_id, []).append(enc)
    return rles


def open_siim_dicom(root: Path, skip_bad: bool = False) -> SiimDicomSource:
    """Find the DICOMs and read the RLE table.

    With ``skip_bad`` each DICOM header is read now (Rows/Columns present) so unreadable
    files are skipped rather than failing later; pixels are never decoded here.

    Raises:
        DataError: no RLE CSV, several without a ``train-rle.csv`` among them, no DICOM,
            a bad CSV, duplicate ImageIds (unless ``skip_bad``).
    """
    csvs = find_rle_csvs(root)
    if not csvs:
        raise DataError(f"{root}: no RLE table (*rle*.csv) at the root. Expected {LAYOUT}.")
    named = [p for p in csvs if p.name.lower() == RLE_CSV]
    if len(csvs) > 1 and not named:
        raise DataError(f"{root}: several RLE tables ({', '.join(p.name for p in csvs)}); "
                        f"keep one, or name the one to use {RLE_CSV}.")
    csv_path = named[0] if named else csvs[0]
    skips = Skips(root, skip_bad)
    rles = read_rle_csv(csv_path, skips)
    by_id: dict[str, Path] = {}
    files, junk = walk_files(root)
    for p, why in junk:
        skips.junk(p, why)
    marker = root / PHANTOM_MARKER
    for p in files:
        if p in csvs or p == marker:
            continue
        if p.suffix.lower() not in imageio.DICOM_EXTS:
            skips.junk(p, "not a DICOM (.dcm) file")
        elif p.stem in by_id:
            skips.bad(p, f"{p}: ImageId {p.stem} also at {by_id[p.stem]}. Remove one of the "
                      "copies, or pass skip_bad=True to keep the first.")
        elif skip_bad and not _probe(p, skips):
            continue
        else:
            by_id[p.stem] = p
    if not by_id:
        raise DataError(f"{root}: no usable .dcm file found (searched all sub-folders; "
                        f"{len(skips.entries)} skipped). Expected {LAYOUT}.")
    records, unlabelled = [], []
    for image_id in sorted(by_id):
        ann = rles.get(image_id)
        if ann is None:
            unlabelled.append((by_id[image_id], f"ImageId {image_id} has no row in {csv_path.name}"
                               ": label and mask unknown (open it as kind 'images' to predict)"))
            continue
        records.append(Record(image_id=image_id, has_pneumo=int(any(r != EMPTY for r in ann)),
                              split="train", image_path=by_id[image_id], mask_path=None))
    if not records:
        raise DataError(f"{root}: none of the {len(by_id)} DICOM(s) has a row in {csv_path}. "
                        "Wrong CSV? To predict on unlabelled DICOMs, use kind 'images'.")
    if unlabelled:
        skips.entries += unlabelled
        warnings.warn(f"{root}: {len(unlabelled)} DICOM(s) have no row in {csv_path.name} (label "
                      "unknown, e.g. the competition's test images) and are not used; see "
                      "source.skipped", stacklevel=3)
    orphans = sorted(set(rles) - set(by_id))
    if orphans:
        warnings.warn(f"{csv_path}: {len(orphans)} ImageId(s) have RLE rows but no usable DICOM "
                      f"file under {root} (e.g. {orphans[0]}); they are not used", stacklevel=3)
    skips.warn()
    extra = [csv_path] + ([marker] if marker in files else [])
    return SiimDicomSource("siim-dicom", root, records, skips.entries, extra,
                           rles=rles, csv_path=csv_path)


def _probe(path: Path, skips: Skips) -> bool:
    try:
        imageio.read_size(path)
    except DataError as e:
        skips.bad(path, str(e))
        return False
    return True
