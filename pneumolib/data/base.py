"""The :class:`Record` / :class:`Source` contract shared by every dataset layout."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumolib.errors import DataError

from . import imageio


@dataclass(frozen=True)
class Record:
    """One image of a source.

    Attributes:
        image_id: SIIM ImageId (siim-png: the CSV's ImageId; siim-dicom: file stem;
            images: path relative to the root, without extension).
        has_pneumo: 1, 0, or -1 when unknown (kind ``images`` only).
        split: the source's own split (``"train"`` / ``"test"``) if it has one, else None.
        image_path: the image file.
        mask_path: siim-png / phantom: the mask PNG; otherwise None.
    """

    image_id: str
    has_pneumo: int
    split: str | None
    image_path: Path
    mask_path: Path | None = None


class Source(Sequence[Record]):
    """A dataset on disk: an ordered list of :class:`Record` plus pixel readers.

    Attributes:
        kind: ``"siim-png"``, ``"siim-dicom"``, ``"images"`` or ``"phantom"``.
        root: the dataset folder.
        records: one per usable image, in a deterministic order.
        skipped: ``(path, why)`` of every file left out (hidden junk, other file types,
            unlabelled DICOMs, bad files with ``skip_bad=True``); nothing is dropped
            without an entry here.
    """

    kind: str

    def __init__(self, kind: str, root: Path, records: list[Record],
                 skipped: list[tuple[Path, str]], extra_files: Iterable[Path] = ()) -> None:
        self.kind = kind
        self.root = Path(root)
        self.records = list(records)
        self.skipped = list(skipped)
        self._extra_files = [Path(p) for p in extra_files]

    # -- Sequence ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # int -> Record, slice -> list[Record]
        return self.records[i]

    def __repr__(self) -> str:
        pos = sum(r.has_pneumo == 1 for r in self.records)
        return (f"<{type(self).__name__} kind={self.kind!r} root='{self.root}' "
                f"images={len(self)} positive={pos} skipped={len(self.skipped)}>")

    # -- pixels ------------------------------------------------------------------------
    def read_image(self, i: int) -> np.ndarray:
        """``(H, W)`` float32 in [0, 1] at native size. Raises DataError on a bad file."""
        return imageio.read_gray(self.records[i].image_path)

    def read_mask(self, i: int) -> np.ndarray:
        """``(H, W)`` bool, the shape of :meth:`read_image`; all False when negative."""
        rec = self.records[i]
        raise DataError(
            f"{rec.image_path}: the source at {self.root} (kind {self.kind!r}) has no masks. "
            "Use a siim-png or siim-dicom dataset for training and evaluation."
        )

    def has_masks(self) -> bool:
        """Whether :meth:`read_mask` works (siim-png, phantom, siim-dicom: yes; images: no)."""
        return False

    # -- identity ----------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Every file the source uses: images, masks and tables (CSV, marker)."""
        out = list(self._extra_files)
        for r in self.records:
            out.append(r.image_path)
            if r.mask_path is not None:
                out.append(r.mask_path)
        return out

    def fingerprint(self) -> str:
        """SHA-1 hex over sorted ``(relative path, size, mtime_ns)`` of :meth:`files`.

        Cheap (file metadata only, no pixels); changes when a used file is added, removed,
        rewritten or touched.

        Raises:
            DataError: a file vanished since the source was opened.
        """
        rows = []
        for p in set(self.files()):
            try:
                st = p.stat()
            except OSError as e:
                raise DataError(f"{p}: vanished or unreadable since {self.root} was opened "
                                f"({e}). Re-open the source.") from e
            try:
                rel = p.relative_to(self.root).as_posix()
            except ValueError:
                rel = p.as_posix()
            rows.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n")
        h = hashlib.sha1()
        for row in sorted(rows):
            h.update(row.encode("utf-8"))
        return h.hexdigest()


class Skips:
    """Collects skipped files; raises instead when a bad file is met without ``skip_bad``."""

    def __init__(self, root: Path, skip_bad: bool) -> None:
        self.root, self.skip_bad = root, skip_bad
        self.entries: list[tuple[Path, str]] = []
        self.n_junk = 0
        self.n_bad = 0
        self.first_bad = ""

    def junk(self, path: Path, why: str) -> None:
        self.entries.append((path, why))
        self.n_junk += 1

    def bad(self, path: Path, message: str) -> None:
        """A bad file: DataError(message), or with ``skip_bad`` an entry in ``skipped``."""
        if not self.skip_bad:
            raise DataError(message)
        self.entries.append((path, message))
        self.n_bad += 1
        self.first_bad = self.first_bad or message

    def warn(self) -> None:
        if self.n_bad:
            warnings.warn(f"{self.root}: skipped {self.n_bad} bad file(s) (skip_bad=True); "
                          f"see source.skipped. First: {self.first_bad}", stacklevel=4)
        if self.n_junk:
            warnings.warn(f"{self.root}: ignored {self.n_junk} junk file(s) (hidden files such "
                          "as macOS '._' files, or files of another type); see source.skipped",
                          stacklevel=4)


JUNK_REASON = "hidden file (e.g. a macOS '._' resource fork), not an image"


def listdir_names(folder: Path) -> set[str]:
    """File names in ``folder`` (one directory scan instead of one stat per record)."""
    with os.scandir(folder) as it:
        return {e.name for e in it if e.is_file()}


def read_csv_table(path: Path) -> list[tuple[int, list[str]]]:
    """Rows of a CSV as ``(line number, cells)``; UTF-8 with or without a byte-order mark.

    Blank lines are dropped; cells are stripped of surrounding white space.

    Raises:
        DataError: unreadable or not UTF-8 text.
    """
    import csv
    import io

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV ({e}). Re-download it.") from e
    reader = csv.reader(io.StringIO(text))
    rows = []
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((reader.line_num, [c.strip() for c in cells]))
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV at line {reader.line_num} ({e}).") from e
    return rows


def column_index(path: Path, header: list[str], wanted: Sequence[str]) -> dict[str, int]:
    """Position of each wanted column in ``header``, or DataError naming what is missing."""
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found columns: "
            f"{', '.join(header) or '(none)'}. Expected: {', '.join(wanted)}."
        )
    return {c: header.index(c) for c in wanted}


def walk_files(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """All files under ``root`` (sorted, symlinked folders followed) and the junk met.

    Hidden files are junk; hidden folders (``.git``, ``.ipynb_checkpoints``) are junk as a
    whole and not searched.
    """
    files: list[Path] = []
    junk: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        d = Path(dirpath)
        junk += [(d / n, "hidden folder, not searched") for n in sorted(dirnames)
                 if n.startswith(".")]
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for n in filenames:
            if n.startswith("."):
                junk.append((d / n, JUNK_REASON))
            else:
                files.append(d / n)
    return sorted(files), junk
