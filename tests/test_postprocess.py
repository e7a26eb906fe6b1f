"""Image-level decisions: triplet and gate semantics, tuning on val only, and the study on a
real (tiny) smoke run, whose plain-threshold numbers must equal its metrics.json."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_pneumo

from pneumolib import metrics
from pneumolib.evaluation import image_level as il
from pneumolib.evaluation import postprocess as pp
from pneumolib.reporting import studies


# ---------------------------------------------------------------------------------------
# Semantics on hand-made arrays
# ---------------------------------------------------------------------------------------
def test_triplet_decides_per_image_then_grows_to_bottom():
    prob = np.zeros((3, 8, 8), np.float32)
    prob[0, 2:4, 2:4] = 0.8          # image 0: a 4-pixel confident core ...
    prob[0, 1:5, 1:5][prob[0, 1:5, 1:5] == 0] = 0.4  # ... inside a 0.4 halo (16 px in all)
    prob[1, :, :] = 0.45             # image 1: broad 0.45, nothing above top
    prob[2, 0, 0:3] = 0.9            # image 2: a 3-pixel speck above top
    m = pp.apply_triplet(prob, top_threshold=0.7, min_area=3, bottom_threshold=0.3)
    assert m.dtype == bool and m.shape == (3, 8, 8)
    assert m[0].sum() == 16 and m[0, 1:5, 1:5].all()   # positive; bottom extends the core to the halo
    assert not m[1].any()                              # no pixel above top: empty despite 0.45 > bottom
    assert not m[2].any()                              # 3 px is not MORE than min_area=3: speck removed
    m2 = pp.apply_triplet(prob, 0.7, 2, 0.3)
    assert m2[2].sum() == 3                            # 3 > 2: positive
    # bottom == top and min_area = 0 is the plain threshold
    for t in (0.3, 0.5, 0.85):
        assert np.array_equal(pp.apply_triplet(prob, t, 0, t), prob > t)
    # torch and (N, 1, H, W) in, same answer; bottom above top is refused
    assert np.array_equal(pp.apply_triplet(torch.from_numpy(prob)[:, None], 0.7, 3, 0.3), m)
    with pytest.raises(ValueError, match="bottom_threshold"):
        pp.apply_triplet(prob, 0.5, 0, 0.6)


def test_triplet_compares_float16_in_float64():
    prob = np.full((1, 2, 2), 0.7002, np.float16)  # float16(0.7) rounds up to 0.7002
    assert pp.apply_triplet(prob, 0.7, 0, 0.7).all()


def test_gate_empties_rejected_images():
    prob = np.zeros((3, 6, 6), np.float32)
    prob[:, 1:4, 1:4] = 0.8   # every image: a 9-pixel blob
    prob[2, 1:4, 1:4] = 0.0
    prob[2, 0, 0] = 0.9       # image 2: a single pixel
    image_prob = np.array([0.9, 0.2, 0.9])
    m = pp.apply_gate(prob, image_prob, gate_threshold=0.5)
    assert m[0].sum() == 9 and not m[1].any() and m[2].sum() == 1
    m = pp.apply_gate(prob, image_prob, gate_threshold=0.5, min_area=1)
    assert m[0].sum() == 9 and not m[2].any()
    assert np.array_equal(pp.apply_gate(prob, image_prob, 0.0, 0.5), prob > 0.5)  # gate 0: no gate
    m = pp.apply_gate_triplet(prob, image_prob, 0.5, 0.85, 0, 0.5)
    assert not m[0].any() and not m[1].any() and m[2].sum() == 1
    with pytest.raises(ValueError, match="image_prob"):
        pp.apply_gate(prob, image_prob[:2], 0.5)


# ---------------------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------------------
def _triplet_set(n_pos: int = 6, n_neg: int = 10, size: int = 16):
    """Positives: truth = a 6x6 block; an 8-pixel core at 0.8 in a 0.45 ring, background 0.35.
    Negatives: a 6x6 block at 0.6 and a 2-pixel speck at 0.95, background 0.1. The only
    perfect triplet of the grid below is top 0.7, min_area 3, bottom 0.4."""
    prob = np.zeros((n_pos + n_neg, size, size), np.float32)
    mask = np.zeros_like(prob, dtype=np.uint8)
    for i in range(n_pos):
        prob[i] = 0.35
        prob[i, 4:10, 4:10] = 0.45
        prob[i, 6:8, 5:9] = 0.8
        mask[i, 4:10, 4:10] = 1
    for i in range(n_pos, n_pos + n_neg):
        prob[i] = 0.1
        prob[i, 2:8, 2:8] = 0.6
        prob[i, 12, 12:14] = 0.95
    return prob, mask


GRID = {"top_threshold": [0.5, 0.7, 0.9], "min_area": [0, 3, 10], "bottom_threshold": [0.3, 0.4, 0.5]}


def test_tune_triplet_finds_the_known_best():
    prob, mask = _triplet_set()
    params, table = pp.tune_triplet(prob, mask, GRID)
    assert params == {"top_threshold": 0.7, "min_area": 3, "bottom_threshold": 0.4}
    assert len(table) == 27 and table["best"].sum() == 1
    best = table[table["best"]].iloc[0]
    assert best["score"] == 1.0 and (table["score"] < 1.0).sum() == 26
    # the table's score is the metric of apply_triplet's masks, via pneumolib.metrics
    for _, r in table.sample(5, random_state=0).iterrows():
        m = pp.apply_triplet(prob, r["top_threshold"], int(r["min_area"]), r["bottom_threshold"])
        assert r["score"] == metrics.dice_per_image(metrics.per_image_counts(m, mask))
    # float16 probabilities and torch tensors give the same choice; pooled Dice as the metric
    assert pp.tune_triplet(torch.from_numpy(prob).half(), torch.from_numpy(mask), GRID)[0] == params
    p2, t2 = pp.tune_triplet(prob, mask, GRID, metric="dice_pooled")
    assert t2["metric"].iloc[0] == "dice_pooled" and t2[t2["best"]]["score"].iloc[0] == 1.0
    with pytest.raises(ValueError, match="metric"):
        pp.tune_triplet(prob, mask, GRID, metric="accuracy")


def test_tuning_ties_go_to_the_plain_threshold():
    prob = np.zeros((4, 32, 32), np.float32)
    mask = np.zeros((4, 32, 32), np.uint8)  # every point of the grid scores 1.0
    params, table = pp.tune_triplet(prob, mask)
    assert params == {"top_threshold": 0.5, "min_area": 0, "bottom_threshold": 0.5}
    assert (table["score"] == 1.0).all()
    g, _ = pp.tune_gate(prob, np.full(4, 0.3), mask)
    assert g == {"gate_threshold": 0.0, "pixel_threshold": 0.5, "min_area": 0}


def test_default_grids_scale_with_resolution():
    assert pp.default_min_areas(512, 512) == [0, 131, 262, 524, 1049]
    assert pp.default_min_areas(1024, 1024)[3] == 2097  # the 1st place used 2000 px at 1024
    g = pp.default_triplet_grid(256, 256)
    assert min(g["top_threshold"]) == 0.5 and max(g["top_threshold"]) == 0.9
    assert set(g["bottom_threshold"]) == {0.3, 0.4, 0.5}
    _, table = pp.tune_triplet(np.zeros((2, 32, 32)), np.zeros((2, 32, 32), np.uint8))
    assert (table["bottom_threshold"] <= table["top_threshold"]).all()


def test_tune_gate_finds_the_known_best():
    prob, mask = _triplet_set()
    n_pos = int(mask.reshape(len(mask), -1).any(1).sum())
    image_prob = np.r_[np.full(n_pos, 0.6), np.full(len(prob) - n_pos, 0.4)]
    grid = {"gate_threshold": [0.0, 0.3, 0.5, 0.7], "pixel_threshold": [0.4, 0.5], "min_area": [0]}
    params, table = pp.tune_gate(prob, image_prob, mask, grid)
    assert params == {"gate_threshold": 0.5, "pixel_threshold": 0.4, "min_area": 0}
    assert table["best"].sum() == 1 and table[table["best"]]["score"].iloc[0] == 1.0
    gt, _ = pp.tune_gate_triplet(prob, image_prob, mask,
                                 {"gate_threshold": [0.0, 0.5], **GRID})
    assert gt["gate_threshold"] in (0.0, 0.5)  # the triplet alone is already perfect here


# ---------------------------------------------------------------------------------------
# A real tiny run
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, session_cache):
    """One smoke training (random scenario, CPU, ~10 s) shared by the tests below."""
    root = tmp_path_factory.mktemp("pp")
    home = root / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNEUMO_HOME", str(home))
        mp.setenv("PNEUMO_CACHE", str(session_cache))
        env = dict(os.environ)
        env["PYTHONWARNINGS"] = "ignore"
        run = root / "run"
        run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--out", str(run)], env)
        yield run


@pytest.fixture(scope="module")
def study(smoke_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    df = il.image_level_study({"random": smoke_run})
    studies.write_image_level(df, out)
    return df, out


def test_collect_probabilities_shapes_and_order(smoke_run):
    for split in ("val", "test"):
        d = il.collect_probabilities(smoke_run, split, batch_size=4)
        per = pd.read_csv(smoke_run / f"{split}_per_image.csv")
        n, s = len(per), 32
        assert d["prob"].shape == (n, s, s) and d["prob"].dtype == np.float32
        assert d["mask"].shape == (n, s, s) and d["mask"].dtype == np.uint8
        assert set(np.unique(d["mask"])) <= {0, 1}
        assert 0.0 <= d["prob"].min() and d["prob"].max() <= 1.0
        assert d["image_prob"] is None  # plain segmentation model
        assert np.array_equal(d["index"], per["index"].to_numpy())
        assert np.array_equal(d["counts"], per[["intersection", "pred_area", "true_area"]].to_numpy())
        assert np.array_equal(d["mask"].reshape(n, -1).sum(1), per["true_area"].to_numpy())
        np.testing.assert_allclose(d["score"], per["score"].to_numpy(), rtol=1e-6)
    h = il.collect_probabilities(smoke_run, "test", dtype=np.float16)
    assert h["prob"].dtype == np.float16 and np.array_equal(h["counts"], d["counts"])


def test_threshold_method_reproduces_metrics_json(study, smoke_run):
    df, _ = study
    m = json.loads((smoke_run / "metrics.json").read_text())["test"]
    row = df[(df["run"] == "random") & (df["method"] == "threshold")].iloc[0]
    assert row["dice_per_image"] == m["dice_per_image"]  # exactly: same threshold, same counts
    assert row["dice_pooled"] == m["dice_pooled"]
    assert row["dice_positive"] == m["dice_positive"] or (np.isnan(row["dice_positive"]) and np.isnan(m["dice_positive"]))
    assert row["sensitivity"] == m["sensitivity"] or np.isnan(m["sensitivity"])
    empty = df[df["method"] == "all_empty"].iloc[0]
    assert empty["dice_per_image"] == m["empty_baseline_dice_per_image"]
    assert list(df["method"]) == ["all_empty", "threshold", "triplet"]  # no head: no gate rows


def test_study_writes_files_and_postprocess_json(study, smoke_run):
    df, out = study
    for name in ("image_level.csv", "image_level.md", "image_level.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "image_level.md").read_text()
    assert "Kaggle score" in md and "pooled" in md and "validation split only" in md
    assert len(pd.read_csv(out / "image_level.csv")) == len(df)
    pj = json.loads((smoke_run / "postprocess.json").read_text())
    assert pj["tuned_on"] == "val" and pj["metric"] == "dice_per_image"
    assert isinstance(pj["min_area"], int) and pj["bottom_threshold"] <= pj["top_threshold"]
    # the tuned triplet is a function of the validation split alone
    val = il.collect_probabilities(smoke_run, "val")
    params, table = pp.tune_triplet(val["prob"], val["mask"])
    assert {k: pj[k] for k in pp.TRIPLET_KEYS} == params
    assert pj["val_score"] == table[table["best"]]["score"].iloc[0]
    trip = df[df["method"] == "triplet"].iloc[0]
    assert json.loads(trip["params"]) == params


class _UNetWithHead:
    """A UNet whose forward also returns an image-level logit (no extra weights, so the run's
    model.pt loads): stands in for the random_cls scenario's (seg_logits, class_logit)."""

    @staticmethod
    def wrap(model):
        base = type(model)

        class WithHead(base):
            def forward(self, x, *a, **k):
                seg = base.forward(self, x, *a, **k)
                return seg, seg.flatten(1).amax(1, keepdim=True)  # (B, 1, H, W), (B, 1)

        model.__class__ = WithHead
        return model


def test_gate_methods_for_a_model_with_a_head_tune_on_val_only(smoke_run, tmp_path, monkeypatch):
    import pneumolib.evaluation.evaluate as ev

    run = tmp_path / "run_cls"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    orig_model, orig_collect = ev.model_for_run, il.collect_probabilities
    monkeypatch.setattr(ev, "model_for_run", lambda r, c: (_UNetWithHead.wrap(orig_model(r, c)[0]), "seg"))
    events: list[tuple[str, int]] = []

    def collect(r, split, **k):
        d = orig_collect(r, split, **k)
        events.append(("collect_" + split, len(d["index"])))
        return d

    monkeypatch.setattr(il, "collect_probabilities", collect)
    for name in ("tune_triplet", "tune_gate", "tune_gate_triplet"):
        fn = getattr(pp, name)
        monkeypatch.setattr(pp, name, lambda *a, _fn=fn, _n=name, **k: (events.append((_n, len(a[0]))), _fn(*a, **k))[1])
    df = il.image_level_study({"cls": run})
    assert list(df["method"]) == ["all_empty", "threshold", "triplet", "gate", "gate+triplet"]
    n_val = len(pd.read_csv(run / "val_per_image.csv"))
    first_test = [e[0] for e in events].index("collect_test")
    tunes = [e for e in events if e[0].startswith("tune_")]
    assert len(tunes) == 3 and all(n == n_val for _, n in tunes)
    assert all(events.index(e) < first_test for e in tunes)  # tuned before test was even read
    pj = json.loads((run / "postprocess.json").read_text())
    assert set(pp.TRIPLET_KEYS) <= set(pj) and set(pj["gate"]) >= set(pp.GATE_KEYS)
    d = il.collect_probabilities(run, "test")
    assert d["image_prob"].shape == (len(d["index"]),) and 0 <= d["image_prob"].min() <= d["image_prob"].max() <= 1
    # the threshold row still equals metrics.json: the head changes nothing at the pixel level
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert df[df["method"] == "threshold"]["dice_per_image"].iloc[0] == m["dice_per_image"]
