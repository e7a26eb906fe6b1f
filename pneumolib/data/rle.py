"""The SIIM-ACR competition's run-length codec (``train-rle.csv``).

Format (docs DATA.md section 3): space-separated pairs ``start length``. The pixel index
runs COLUMN-major (down each column first), and each start is RELATIVE: it counts the
pixels between the end of the previous run and the beginning of this one (only the first
start is an absolute 0-based index). An empty mask is ``"-1"``. Leading and trailing
white space is tolerated (the real CSV carries a leading space in every value).

Worked example, a 3 x 4 mask (height 3, width 4)::

    1 1 0 0        column-major flat:  1 0 0 | 1 1 1 | 0 0 0 | 0 0 1
    0 1 0 0        runs (absolute):    [0, 1)  [3, 6)  [11, 12)
    0 1 0 1        encoded:            "0 1 2 3 5 1"

A decoder that treats the starts as absolute, or forgets the transpose, gives masks that
look plausible and are wrong; the tests pin both down on hand-computed cases.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pneumolib.errors import DataError

EMPTY = "-1"


def _short(rle: str, n: int = 60) -> str:
    return rle if len(rle) <= n else rle[:n] + "..."


def runs(rle: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs of one competition RLE string as absolute column-major intervals.

    Args:
        rle: as for :func:`decode`.
        height, width: mask size in pixels.

    Returns:
        ``(begins, ends)``, two int64 arrays of equal length (0 for an empty mask): run ``i``
        covers the column-major flat indices ``begins[i] <= k < ends[i]`` of a ``height x
        width`` mask (``k = column * height + row``). Runs of one string are sorted and
        never overlap (relative starts are non-negative).

    Raises:
        DataError: as :func:`decode`.
    """
    if not isinstance(rle, str):
        raise DataError(f"RLE value {rle!r} is not a string; expected 'start length ...' or '-1'")
    text = rle.strip()
    if text in (EMPTY, ""):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    try:
        nums = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise DataError(
            f"RLE {_short(text)!r} is not space-separated integers; expected "
            "'start length start length ...' or '-1' for an empty mask"
        ) from None
    if nums.size % 2:
        raise DataError(
            f"RLE {_short(text)!r} has an odd number of values ({nums.size}); it must be "
            "pairs of 'start length'"
        )
    if (nums < 0).any():
        raise DataError(f"RLE {_short(text)!r} has a negative start or length")
    starts, lengths = nums[0::2], nums[1::2]
    ends = np.cumsum(starts + lengths)  # absolute end (exclusive) of each run
    begins = ends - lengths
    if ends[-1] > height * width:
        raise DataError(
            f"RLE {_short(text)!r} runs past the end of a {height} x {width} mask (its last "
            f"run ends at pixel {int(ends[-1])}, the mask has {height * width}): wrong image "
            "size, or starts that are absolute instead of relative"
        )
    return begins, ends


def decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode one competition RLE string into a mask.

    Args:
        rle: ``"start length start length ..."`` with relative starts, or ``"-1"`` (or an
            empty string) for an empty mask. Surrounding white space is ignored.
        height: mask height in pixels (DICOM ``Rows``).
        width: mask width in pixels (DICOM ``Columns``).

    Returns:
        ``(height, width)`` bool array, True inside the runs.

    Raises:
        DataError: the string is not pairs of non-negative integers, or a run ends past
            the last pixel of a ``height x width`` mask.
    """
    begins, ends = runs(rle, height, width)
    if begins.size == 0:
        return np.zeros((height, width), dtype=bool)
    # Mark run boundaries and integrate: +1 where a run begins, -1 where it ends.
    delta = np.zeros(height * width + 1, dtype=np.int32)
    np.add.at(delta, begins, 1)
    np.add.at(delta, ends, -1)
    mask = np.cumsum(delta[:-1]) > 0
    # Column-major: the flat index runs down each column, so rows of the reshape are columns.
    return np.ascontiguousarray(mask.reshape(width, height).T)


def decode_many(rles: Iterable[str], height: int, width: int) -> np.ndarray:
    """Union of several annotations of one image (the mask of an image is the UNION).

    Args:
        rles: RLE strings as for :func:`decode`; ``"-1"`` entries add nothing.
        height, width: mask size in pixels.

    Returns:
        ``(height, width)`` bool array; all False when ``rles`` is empty.
    """
    mask = np.zeros((height, width), dtype=bool)
    for rle in rles:
        mask |= decode(rle, height, width)
    return mask


def encode(mask: np.ndarray) -> str:
    """Encode a mask in the competition format; the exact inverse of :func:`decode`.

    Args:
        mask: ``(H, W)`` array; nonzero / True pixels are foreground.

    Returns:
        ``"start length ..."`` with relative starts in column-major order, or ``"-1"``
        when the mask is empty.

    Raises:
        DataError: ``mask`` is not 2-D.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise DataError(f"encode() needs a 2-D (H, W) mask, got shape {arr.shape}")
    flat = arr.astype(bool).T.ravel()  # transpose first: column-major order
    if not flat.any():
        return EMPTY
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    begins, ends = edges[0::2], edges[1::2]
    rel = begins.copy()
    rel[1:] -= ends[:-1]
    pairs = np.stack([rel, ends - begins], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))
