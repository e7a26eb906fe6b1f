"""The replication blocks: verdicts compared across two runs, the move of single runs between
machines, and what it would take to separate a pair (pneumolib.reporting.replication)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pneumolib.reporting import replication as rep


def _pairs(rows):
    return pd.DataFrame(rows, columns=["a", "b", "diff", "lo", "hi", "verdict", "lo_images", "hi_images"])


def test_agreement_flags_a_told_apart_pair_whose_sign_flips():
    one = _pairs([("x", "y", 0.05, 0.01, 0.09, "told apart", 0.03, 0.07),
                  ("x", "z", 0.02, -0.02, 0.06, "not told apart", 0.0, 0.04),
                  ("y", "z", 0.04, 0.01, 0.07, "told apart", 0.02, 0.06)])
    two = _pairs([("x", "y", -0.01, -0.05, 0.03, "not told apart", -0.03, 0.01),
                  ("x", "z", -0.01, -0.05, 0.03, "not told apart", -0.03, 0.01),
                  ("y", "z", 0.01, -0.02, 0.04, "not told apart", -0.01, 0.03)])
    got = rep.agreement(one, two).set_index(["a", "b"])["outcome"]
    assert got[("x", "y")] == "opposite sign"
    assert got[("x", "z")] == "same verdict"  # a sign change inside "not told apart" is no contradiction
    assert got[("y", "z")] == "told apart in one only"
    text = rep.fmt_agreement(rep.agreement(one, two), "p", "q")
    assert "**1 have the same verdict**" in text and "**1 have the opposite sign**" in text


def test_separation_projects_the_seed_part_only():
    # measured: 5 seeds, half-width 0.06 of which the images-only interval is 0.03
    se, se_img = 0.06 / rep.Z, 0.03 / rep.Z
    seed2 = se ** 2 - se_img ** 2
    pairs = _pairs([("x", "y", 0.05, -0.01, 0.11, "not told apart", 0.02, 0.08),
                    ("x", "z", 0.04, -0.02, 0.10, "not told apart", -0.01, 0.09),
                    ("y", "z", 0.20, 0.14, 0.26, "told apart", 0.17, 0.23)])
    df = rep.separation(pairs, n_seeds=5, n_images=900).set_index(["a", "b"])
    assert ("y", "z") not in df.index  # told apart already
    want = math.ceil(seed2 * 5 / ((0.05 / rep.Z) ** 2 - se_img ** 2))
    assert df.loc[("x", "y"), "seeds_needed"] == want
    # at `want` seeds the projected half-width no longer covers the difference; one fewer does
    for s, inside in ((want, False), (want - 1, True)):
        assert (rep.Z * math.sqrt(seed2 * 5 / s + se_img ** 2) >= 0.05) == inside
    # a difference smaller than the image part alone: no seed count helps, more test images do
    assert math.isnan(df.loc[("x", "z"), "seeds_needed"])
    assert df.loc[("x", "z"), "images_needed"] > 1
    assert "no number: 900 test images are too few" in rep.fmt_separation(df.reset_index(), 5, 900)


def test_spread_compares_the_same_scenario_and_seed():
    a = pd.DataFrame({"scenario": ["x", "x", "y"], "seed": [1, 2, 1], "dice_pooled": [0.40, 0.50, 0.30]})
    b = pd.DataFrame({"scenario": ["x", "x", "y"], "seed": [2, 1, 1], "dice_pooled": [0.45, 0.41, 0.20]})
    got = rep.spread(a, b).set_index("scenario")
    assert got.loc["x", "max_abs_run"] == pytest.approx(0.05)
    assert got.loc["x", "seed_mean_move"] == pytest.approx(-0.02)
    assert got.loc["y", "max_abs_run"] == pytest.approx(0.10)
    assert "largest move of a single run is **0.100**" in rep.fmt_spread(rep.spread(a, b), "p", "q")
