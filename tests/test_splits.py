"""pneumolib.prep.splits: the paper's leaky protocol, the clean one, and the saved CSV."""

import numpy as np
import pandas as pd
import pytest

from pneumolib.config import PAPER_TEST_FRAC, Config
from pneumolib.errors import ConfigError
from pneumolib.prep.splits import COLUMNS, leakage, load_or_make_split, make_split, read_split, split_table


def _labels(n, n_pos, seed=0):
    y = np.zeros(n, dtype=np.int64)
    y[np.random.default_rng(seed).choice(n, n_pos, replace=False)] = 1
    return y, [f"1.2.276.0.{i}" for i in range(n)]


def test_paper_scale_arithmetic():
    """The paper's Table 2: 12,047 images, 2,669 positives -> 17,385 items, test 1,952."""
    y, ids = _labels(12047, 2669)
    s = make_split(y, ids, "paper", 42, PAPER_TEST_FRAC, 0.1)
    t = split_table(s)
    assert len(s) == 17385 and t.loc["total", "+ve"] == 8007 and t.loc["total", "-ve"] == 9378
    assert abs(t.loc["test", "total"] - 1952) <= 2
    assert t.loc["train", "total"] + t.loc["val", "total"] == 17385 - t.loc["test", "total"]
    assert list(t.columns) == ["total", "+ve", "-ve"]
    assert list(t.index) == ["train", "val", "test", "total"]


def test_columns_dtypes_and_counts_paper():
    y, ids = _labels(200, 50)
    s = make_split(y, ids, "paper", 0, 0.2, 0.1)
    assert list(s.columns) == COLUMNS
    assert (s["item"].to_numpy() == np.arange(len(s))).all()
    assert s["src"].dtype == np.int64 and s["angle"].dtype == np.float64
    per_src = s.groupby("src")["aug"].apply(lambda a: tuple(sorted(a)))
    assert (per_src[y[per_src.index] == 1] == ("flip", "orig", "rot")).all()  # 3 per positive
    assert (per_src[y[per_src.index] == 0] == ("orig",)).all()
    assert len(s) == 200 + 2 * 50
    rot = s[s["aug"] == "rot"]["angle"].abs()
    assert ((rot >= 3) & (rot <= 7)).all()
    assert (s.loc[s["aug"] != "rot", "angle"] == 0).all()
    assert set(s["split"]) == {"train", "val", "test"}
    assert (s["image_id"] == np.array(ids, dtype=object)[s["src"]]).all()


def test_paper_protocol_leaks_and_clean_does_not():
    y, ids = _labels(200, 60)
    paper = make_split(y, ids, "paper", 1, 0.2, 0.1)
    leak = leakage(paper)
    assert leak["leaked_sources"] > 0 and leak["leaked_test_items"] > 0
    # a test source has a copy in train
    test_src = set(paper.loc[paper["split"] == "test", "src"])
    assert test_src & set(paper.loc[paper["split"] == "train", "src"])
    clean = make_split(y, ids, "clean", 1, 0.2, 0.1)
    lk = leakage(clean)
    assert lk["leaked_sources"] == 0 and lk["leaked_test_items"] == 0
    assert clean.groupby("src")["split"].nunique().max() == 1  # one split per image


def test_clean_augments_train_positives_only_and_stratifies():
    y, ids = _labels(300, 90)
    s = make_split(y, ids, "clean", 3, 0.2, 0.25)
    aug = s[s["aug"] != "orig"]
    assert (aug["split"] == "train").all() and (aug["has_pneumo"] == 1).all()
    orig = s[s["aug"] == "orig"]
    assert len(orig) == 300 and (s[s["split"] != "train"]["aug"] == "orig").all()
    train_pos = ((orig["split"] == "train") & (orig["has_pneumo"] == 1)).sum()
    assert len(aug) == 2 * train_pos
    # stratified: each split has the overall prevalence within one image
    for name, frac in (("test", 0.2), ("val", 0.8 * 0.25)):
        part = orig[orig["split"] == name]
        assert len(part) == round(frac * 300)
        assert abs(part["has_pneumo"].sum() - 0.3 * len(part)) <= 1


def test_paper_stratified_by_class():
    y, ids = _labels(400, 100)
    s = make_split(y, ids, "paper", 5, 0.2, 0.1)
    for name in ("test", "val", "train"):
        part = s[s["split"] == name]
        assert abs(part["has_pneumo"].mean() - 300 / 600) < 0.02


def test_no_augmentation_and_determinism():
    y, ids = _labels(100, 30)
    s = make_split(y, ids, "paper", 9, 0.2, 0.1, paper_augment=False)
    assert len(s) == 100 and (s["aug"] == "orig").all()
    for protocol in ("paper", "clean"):
        a = make_split(y, ids, protocol, 9, 0.2, 0.1)
        pd.testing.assert_frame_equal(a, make_split(y, ids, protocol, 9, 0.2, 0.1))
        b = make_split(y, ids, protocol, 10, 0.2, 0.1)
        assert not a["split"].equals(b["split"]) or not a["angle"].equals(b["angle"])
    with pytest.raises(ConfigError):
        make_split(y, ids, "leaky", 0, 0.2, 0.1)


def test_unknown_labels_are_kept_but_never_augmented():
    y = np.array([1, 0, -1, -1, 1, 0, -1, 0, 1, 0] * 3)
    s = make_split(y, [str(i) for i in range(30)], "paper", 0, 0.2, 0.1)
    assert (s.loc[s["has_pneumo"] == -1, "aug"] == "orig").all()
    assert "unknown" in split_table(s).columns


def test_csv_written_once_and_reused(tmp_path):
    y, _ = _labels(60, 20)
    ids = [f"{i:05d}" for i in range(60)]  # numeric-looking ids must stay strings
    cfg = Config(protocol="paper", seed=4, test_frac=0.2, val_frac=0.1)
    a, path = load_or_make_split("fp1", y, ids, cfg, tmp_path)
    assert path.exists() and path.parent == tmp_path and "paper" in path.name
    mtime = path.stat().st_mtime_ns
    b, path2 = load_or_make_split("fp1", y, ids, cfg, tmp_path)
    assert path2 == path and path.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(a, b)  # identical values and dtypes
    pd.testing.assert_frame_equal(a, read_split(path))
    assert b["image_id"].iloc[0] == "00000"
    # a changed fingerprint, seed, protocol or fraction gives another file
    names = {path.name}
    for fp, c in [("fp2", cfg), ("fp1", cfg.replace(seed=5)), ("fp1", cfg.replace(protocol="clean")),
                  ("fp1", cfg.replace(test_frac=0.3)), ("fp1", cfg.replace(paper_augment=False))]:
        names.add(load_or_make_split(fp, y, ids, c, tmp_path)[1].name)
    assert len(names) == 6


def test_corrupt_csv_is_redrawn(tmp_path):
    y, ids = _labels(40, 10)
    cfg = Config(seed=1, test_frac=0.2, val_frac=0.1)
    a, path = load_or_make_split("fp", y, ids, cfg, tmp_path)
    path.write_text("garbage\n1,2\n")
    b, _ = load_or_make_split("fp", y, ids, cfg, tmp_path)
    pd.testing.assert_frame_equal(a, b)
