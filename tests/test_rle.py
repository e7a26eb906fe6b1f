"""The competition RLE codec on hand-computed cases (DATA.md section 3)."""

import numpy as np
import pytest

from pneumolib.data.rle import decode, decode_many, encode
from pneumolib.errors import DataError

# Height 3, width 4. Column-major flat order: 1 0 0 | 1 1 1 | 0 0 0 | 0 0 1
# Absolute runs [0, 1) [3, 6) [11, 12): touches the first and the last pixel.
# Relative starts: 0, 3 - 1 = 2, 11 - 6 = 5.
MASK_3x4 = np.array([[1, 1, 0, 0],
                     [0, 1, 0, 0],
                     [0, 1, 0, 1]], dtype=bool)
RLE_3x4 = "0 1 2 3 5 1"

# Height 4, width 4. Flat: 0 0 1 1 | 1 0 0 0 | 0 0 0 1 | 0 0 0 1
# Runs [2, 5) (crosses from column 0 into column 1), [11, 12), [15, 16).
# Relative starts: 2, 11 - 5 = 6, 15 - 12 = 3.
MASK_4x4 = np.array([[0, 1, 0, 0],
                     [0, 0, 0, 0],
                     [1, 0, 0, 0],
                     [1, 0, 1, 1]], dtype=bool)
RLE_4x4 = "2 3 6 1 3 1"


@pytest.mark.parametrize("mask, text", [(MASK_3x4, RLE_3x4), (MASK_4x4, RLE_4x4)])
def test_hand_computed_cases(mask, text):
    assert encode(mask) == text
    out = decode(text, *mask.shape)
    assert out.dtype == bool and out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)


def test_column_major_order():
    # A run along the top row is NOT contiguous in column-major order: pixels (0,0) and
    # (0,1) are flat indices 0 and H = 3, so the gap between them is H - 1 = 2.
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 0:2] = True
    assert encode(mask) == "0 1 2 1"  # a row-major encoder would say "0 2"
    col = np.zeros((3, 4), dtype=bool)
    col[0:2, 0] = True
    assert encode(col) == "0 2"
    np.testing.assert_array_equal(decode("0 2", 3, 4), col)


def test_starts_are_relative_not_absolute():
    # Absolute reading of "0 1 2 3 5 1" would mark flat pixels 0, 2..4 and 5: a different mask.
    flat = decode(RLE_3x4, 3, 4).T.ravel()
    assert np.flatnonzero(flat).tolist() == [0, 3, 4, 5, 11]


def test_non_square_height_width_not_swapped():
    mask = np.zeros((2, 5), dtype=bool)
    mask[1, 4] = True  # last pixel: flat index 4 * 2 + 1 = 9
    assert encode(mask) == "9 1"
    np.testing.assert_array_equal(decode("9 1", 2, 5), mask)


def test_empty_full_and_whitespace():
    assert encode(np.zeros((4, 3), bool)) == "-1"
    assert not decode("-1", 4, 3).any() and decode("-1", 4, 3).shape == (4, 3)
    assert not decode(" -1 ", 4, 3).any()
    assert encode(np.ones((2, 2), bool)) == "0 4"
    np.testing.assert_array_equal(decode("  0 1 2 3 5 1  ", 3, 4), MASK_3x4)  # CSV: " 0 1 ..."
    np.testing.assert_array_equal(decode(" 0 1  2 3\t5 1", 3, 4), MASK_3x4)
    assert encode(np.array([[0, 2], [3, 0]])) == "1 2"  # any nonzero counts


def test_random_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 20, size=2)
        mask = rng.random((h, w)) < rng.random()
        text = encode(mask)
        np.testing.assert_array_equal(decode(text, h, w), mask)
        if mask.any():
            assert encode(decode(text, h, w)) == text


def test_union_of_overlapping_annotations():
    a = np.zeros((4, 4), bool)
    a[0:3, 1] = True
    b = np.zeros((4, 4), bool)
    b[1:4, 1] = True
    b[3, 3] = True
    merged = decode_many([encode(a), " -1", encode(b)], 4, 4)
    np.testing.assert_array_equal(merged, a | b)
    assert not decode_many([], 4, 4).any()
    assert not decode_many(["-1", "-1"], 4, 4).any()


@pytest.mark.parametrize("text, what", [
    ("1 2 3", "odd number"),
    ("a b", "not space-separated integers"),
    ("0 -2", "negative"),
    ("10 5", "runs past the end of a 3 x 4 mask"),
])
def test_bad_rle_raises_data_error(text, what):
    with pytest.raises(DataError, match=what):
        decode(text, 3, 4)


def test_encode_needs_2d():
    with pytest.raises(DataError, match="2-D"):
        encode(np.zeros((2, 2, 2)))
