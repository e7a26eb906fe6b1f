"""Bootstrap intervals over test images, spread over seeds, and Table 4 built from them."""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumolib import metrics, runio
from pneumolib.evaluation import uncertainty
from pneumolib.evaluation.uncertainty import ImageSetMismatch, bootstrap_ci, replicates, seed_summary
from pneumolib.reporting import markdown, tables
from pneumolib.reporting import runs as runs_mod

COUNTS = ["intersection", "pred_area", "true_area"]


def fake_per_image(n: int, seed: int = 0, prevalence: float = 0.25, skill: float = 0.6,
                   index: np.ndarray | None = None, truth_seed: int | None = None) -> pd.DataFrame:
    """A ``test_per_image.csv`` of ``n`` images in the shape evaluate_module writes.

    The truth (which images are positive, their areas) comes from ``truth_seed`` (default
    ``seed``), the predictions from ``seed``: two seeds with one ``truth_seed`` are two
    training runs on the same test images.
    """
    rt = np.random.default_rng(seed if truth_seed is None else truth_seed)
    rp = np.random.default_rng(seed + 1000)
    pos = rt.random(n) < prevalence
    true = np.where(pos, rt.integers(20, 400, n), 0)
    found = rp.random(n) < np.where(pos, skill, 0.15)
    pred = np.where(found, rp.integers(5, 400, n), 0)
    inter = np.where(pos & found, (rp.random(n) * np.minimum(true, pred)).astype(np.int64), 0)
    score = np.round(np.clip(0.3 * pos + 0.7 * rp.random(n), 0, 1), 2)  # rounded: ties
    idx = np.arange(n) if index is None else np.asarray(index)
    return pd.DataFrame({
        "index": idx, "intersection": inter, "pred_area": pred, "true_area": true, "score": score,
        "src": idx, "image_id": [f"img{i}" for i in idx], "has_pneumo": pos.astype(int), "aug": "orig"})


def summarize_frame(df: pd.DataFrame, min_area: int = 0) -> dict:
    return metrics.summarize(df[COUNTS].to_numpy(), scores=df["score"].to_numpy(), min_area=min_area)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


# -- bootstrap_ci ----------------------------------------------------------------------------
@pytest.mark.parametrize("min_area", [0, 50])
def test_point_values_equal_summarize(min_area):
    df = fake_per_image(300, seed=3)
    ci = bootstrap_ci(df, n_boot=200, min_area=min_area)
    ref = summarize_frame(df, min_area)
    assert set(ci) == set(uncertainty.METRICS)
    for m, v in ci.items():
        assert same(v["value"], ref[m]), m
        assert v["lo"] <= v["value"] <= v["hi"], m  # the interval contains the point
        assert v["lo"] < v["hi"], m
    if min_area:
        assert ci["sensitivity"]["value"] != bootstrap_ci(df, n_boot=10)["sensitivity"]["value"]


def test_each_replicate_equals_summarize_of_the_resampled_rows():
    df = fake_per_image(150, seed=5)
    rep = replicates(df, n_boot=6, seed=11, min_area=10)
    idx = next(uncertainty.bootstrap_indices(len(df), 6, 11))
    assert rep.shape == (6, len(uncertainty.METRICS))
    for b in range(6):
        ref = summarize_frame(df.iloc[idx[b]], min_area=10)  # AUC with ties and repeated rows
        for m in uncertainty.METRICS:
            assert same(rep.loc[b, m], ref[m]), (b, m)
    # the interval is the percentiles of these replicates
    rep = replicates(df, n_boot=400, seed=2)
    ci = bootstrap_ci(df, n_boot=400, seed=2)
    assert ci["auc"]["lo"] == pytest.approx(np.percentile(rep["auc"], 2.5))
    assert ci["dice_pooled"]["hi"] == pytest.approx(np.percentile(rep["dice_pooled"], 97.5))


def test_interval_narrows_with_more_images():
    small = bootstrap_ci(fake_per_image(100, seed=1), n_boot=500)
    large = bootstrap_ci(fake_per_image(3000, seed=1), n_boot=500)
    for m in ("dice_pooled", "dice_per_image", "dice_positive", "auc", "specificity"):
        w_small = small[m]["hi"] - small[m]["lo"]
        w_large = large[m]["hi"] - large[m]["lo"]
        assert w_large < 0.5 * w_small, m  # ~ sqrt(30) narrower in theory


def test_level_widens_the_interval_and_seed_makes_it_deterministic():
    df = fake_per_image(200, seed=2)
    a, b = bootstrap_ci(df, n_boot=300, seed=7), bootstrap_ci(df, n_boot=300, seed=7)
    assert a == b
    c = bootstrap_ci(df, n_boot=300, seed=8)
    assert c["dice_pooled"]["lo"] != a["dice_pooled"]["lo"]
    assert c["dice_pooled"]["value"] == a["dice_pooled"]["value"]
    wide = bootstrap_ci(df, n_boot=300, seed=7, level=0.99)
    w, n = wide["dice_per_image"], a["dice_per_image"]
    assert w["lo"] < n["lo"] < n["hi"] < w["hi"]


def test_coverage_of_the_true_value_is_near_the_nominal_level():
    # the population's values from a very large sample of the same generator
    pop = fake_per_image(400_000, seed=999)
    truth = summarize_frame(pop)
    hits = {"dice_per_image": 0, "dice_pooled": 0, "specificity": 0}
    trials = 120
    for t in range(trials):
        ci = bootstrap_ci(fake_per_image(200, seed=t), n_boot=300, seed=t)
        for m in hits:
            hits[m] += ci[m]["lo"] <= truth[m] <= ci[m]["hi"]
    for m, h in hits.items():
        assert 0.85 <= h / trials <= 0.995, (m, h / trials)


def test_degenerate_replicates_and_sets():
    # one positive in 40: many replicates have none -> NaN there, nanpercentile over the rest
    df = fake_per_image(40, seed=4, prevalence=0.0)
    df.loc[0, ["true_area", "intersection", "pred_area"]] = [100, 60, 80]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-NaN or mean-of-empty warnings leak out
        ci = bootstrap_ci(df, n_boot=300)
    assert np.isnan(replicates(df, n_boot=300)["dice_positive"]).any()
    assert ci["dice_positive"]["value"] == pytest.approx(2 * 60 / 180)
    assert ci["dice_positive"]["lo"] == pytest.approx(2 * 60 / 180)  # only one positive to draw
    assert not math.isnan(ci["auc"]["lo"])
    # no positives at all: NaN value and interval, the rest defined
    neg = fake_per_image(50, seed=4, prevalence=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = bootstrap_ci(neg, n_boot=100)
    for m in ("dice_positive", "auc", "sensitivity"):
        assert math.isnan(ci[m]["value"]) and math.isnan(ci[m]["lo"]) and math.isnan(ci[m]["hi"])
    assert ci["empty_baseline_dice_per_image"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    assert 0 < ci["specificity"]["value"] < 1
    # without a score column: AUC NaN, the rest unchanged
    no_score = bootstrap_ci(fake_per_image(80).drop(columns="score"), n_boot=50)
    full = bootstrap_ci(fake_per_image(80), n_boot=50)
    assert math.isnan(no_score["auc"]["value"]) and math.isnan(no_score["auc"]["hi"])
    assert no_score["dice_pooled"] == full["dice_pooled"]


def test_cluster_bootstrap_when_a_source_image_has_several_test_items():
    """The paper protocol puts an image, its flip and its rotation into one split. With three
    identical items per source image the naive bootstrap counts 120 independent images where
    there are 40: its interval is visibly too narrow. Resampling source images gives exactly
    the interval of the 40 sources themselves."""
    sources = fake_per_image(40, seed=5, prevalence=0.4)
    twins = pd.concat([sources.assign(aug=a) for a in ("orig", "flip", "rot")], ignore_index=True)
    twins["index"] = np.arange(len(twins))  # distinct items, shared src
    naive = bootstrap_ci(twins, n_boot=2000, cluster=None)
    clustered = bootstrap_ci(twins, n_boot=2000)  # "auto": src repeats -> clusters
    alone = bootstrap_ci(sources, n_boot=2000)
    for m in ("dice_pooled", "dice_per_image", "sensitivity"):
        w_naive = naive[m]["hi"] - naive[m]["lo"]
        w_clu = clustered[m]["hi"] - clustered[m]["lo"]
        assert w_clu > 1.4 * w_naive, (m, w_naive, w_clu)  # about sqrt(3) wider
        assert clustered[m]["value"] == pytest.approx(naive[m]["value"])
        assert (clustered[m]["lo"], clustered[m]["hi"]) == pytest.approx((alone[m]["lo"], alone[m]["hi"]))
    # one item per source: "auto" is the plain bootstrap, draw for draw
    assert uncertainty.cluster_ids(sources) is None
    assert bootstrap_ci(sources, n_boot=300) == bootstrap_ci(sources, n_boot=300, cluster=None)
    # seed_summary clusters the same way
    summ = seed_summary([twins, twins], n_boot=2000)
    assert summ["dice_pooled"]["lo"] == pytest.approx(clustered["dice_pooled"]["lo"])
    with pytest.raises(ValueError, match="no such column"):
        bootstrap_ci(sources, n_boot=10, cluster="patient")


def test_difference_ci_is_paired_and_tells_apart_only_what_differs():
    base = fake_per_image(400, seed=8, prevalence=0.3)
    same_ = uncertainty.difference_ci([base], [base.copy()], n_boot=500)
    assert same_["diff"] == 0 and same_["lo"] == 0 and same_["hi"] == 0
    better = base.copy()
    pos = better["true_area"] > 0
    better.loc[pos, "intersection"] = np.minimum(better.loc[pos, "true_area"],
                                                 better.loc[pos, "intersection"] + 30)
    better.loc[pos, "pred_area"] = np.maximum(better.loc[pos, "pred_area"], better.loc[pos, "intersection"])
    d = uncertainty.difference_ci([better], [base], n_boot=1000)
    assert d["diff"] > 0 and d["lo"] > 0  # better on every positive image: told apart
    # pairing: the difference's interval is far narrower than the two separate intervals
    a, b = bootstrap_ci(better, n_boot=1000)["dice_pooled"], bootstrap_ci(base, n_boot=1000)["dice_pooled"]
    assert (d["hi"] - d["lo"]) < 0.5 * min(a["hi"] - a["lo"], b["hi"] - b["lo"])
    with pytest.raises(uncertainty.ImageSetMismatch):
        uncertainty.difference_ci([base], [fake_per_image(300, seed=8)], n_boot=10)


def test_bad_inputs_are_clear_errors():
    empty = fake_per_image(10).iloc[:0]
    with pytest.raises(ValueError, match="no rows"):
        bootstrap_ci(empty)
    with pytest.raises(ValueError, match="true_area"):
        bootstrap_ci(fake_per_image(10).drop(columns="true_area"))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(fake_per_image(10), level=95)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(fake_per_image(10), n_boot=0)
    with pytest.raises(ValueError, match="at least one"):
        seed_summary([])


def test_thousand_replicates_of_two_thousand_images_are_fast():
    df = fake_per_image(2000, seed=6)
    bootstrap_ci(df, n_boot=20)  # warm-up
    t0 = time.perf_counter()
    ci = bootstrap_ci(df, n_boot=1000)
    assert time.perf_counter() - t0 < 2.0
    assert ci["auc"]["lo"] < ci["auc"]["hi"]


def test_large_sets_are_chunked_with_the_same_replicates(monkeypatch):
    df = fake_per_image(500, seed=8)
    whole = replicates(df, n_boot=50, seed=3)
    monkeypatch.setattr(uncertainty, "_CHUNK_CELLS", 500 * 7)  # 7 replicates per chunk
    chunked = replicates(df, n_boot=50, seed=3)
    # integers(0, n, (c, n)) in successive chunks draws the same stream as one draw
    pd.testing.assert_frame_equal(whole, chunked)


# -- seed_summary ------------------------------------------------------------------------------
def test_seed_summary_of_identical_frames():
    df = fake_per_image(250, seed=9)
    single = bootstrap_ci(df, n_boot=300, seed=4)
    shuffled = df.sample(frac=1.0, random_state=1)  # row order must not matter: aligned by index
    s = seed_summary([df, shuffled, df], n_boot=300, seed=4)
    one = seed_summary([df], n_boot=300, seed=4)
    for m in uncertainty.METRICS:
        assert s[m]["n_seeds"] == 3
        assert same(s[m]["mean"], single[m]["value"]) and same(one[m]["mean"], single[m]["value"])
        assert s[m]["sd"] == 0.0 and math.isnan(one[m]["sd"])
        assert same(s[m]["lo"], single[m]["lo"]) and same(s[m]["hi"], single[m]["hi"])
        assert same(one[m]["lo"], single[m]["lo"])


def test_seed_summary_resamples_images_jointly_across_seeds():
    a = fake_per_image(300, seed=1, truth_seed=50)
    b = fake_per_image(300, seed=2, truth_seed=50)  # same test images, other predictions
    pa, pb = summarize_frame(a), summarize_frame(b)
    assert pa["dice_pooled"] != pb["dice_pooled"]
    s = seed_summary([a, b], n_boot=400, seed=5)
    joint = (replicates(a, n_boot=400, seed=5) + replicates(b, n_boot=400, seed=5)) / 2
    for m in ("dice_pooled", "dice_per_image", "auc", "sensitivity"):
        assert s[m]["mean"] == pytest.approx((pa[m] + pb[m]) / 2)
        assert s[m]["sd"] == pytest.approx(abs(pa[m] - pb[m]) / math.sqrt(2))
        assert s[m]["lo"] == pytest.approx(np.nanpercentile(joint[m], 2.5))
        assert s[m]["hi"] == pytest.approx(np.nanpercentile(joint[m], 97.5))
    # the truth is shared, so the all-empty baseline has no spread over seeds
    assert s["empty_baseline_dice_per_image"]["sd"] == 0.0


def test_seed_summary_refuses_different_test_images():
    a = fake_per_image(100, seed=1, truth_seed=50)
    b = fake_per_image(100, seed=2, truth_seed=50, index=np.arange(3, 103))
    with pytest.raises(ImageSetMismatch, match=r"frame 1 and frame 0 are not evaluated on the same test images"
                       r".*3 index\(es\) only in frame 1 \(e\.g\. \[100, 101, 102\]\)"):
        seed_summary([a, b])
    c = fake_per_image(100, seed=2, truth_seed=51)  # same indices, other truth
    with pytest.raises(ValueError, match="disagree on true_area"):
        seed_summary([a, c])
    with pytest.raises(ValueError, match="repeats"):
        seed_summary([a, pd.concat([a, a.iloc[:1]])])
    # independent resampling when the sets differ on purpose
    s = seed_summary([a, b], n_boot=200, paired=False)
    assert s["dice_pooled"]["mean"] == pytest.approx(
        (summarize_frame(a)["dice_pooled"] + summarize_frame(b)["dice_pooled"]) / 2)
    assert s["dice_pooled"]["lo"] < s["dice_pooled"]["mean"] < s["dice_pooled"]["hi"]


# -- Table 4 from fake run folders ---------------------------------------------------------------
def make_seed_run(root: Path, folder: str, scenario: str, seed: int, per_image: pd.DataFrame | None,
                  best_epoch: int = 3) -> Path:
    """A finished seg run folder as train.fit writes it (metrics.json from the same counts)."""
    f = root / folder
    f.mkdir(parents=True)
    src = per_image if per_image is not None else fake_per_image(40, seed=seed, truth_seed=0)
    test = summarize_frame(src)
    test["loss"] = 1.0
    pd.DataFrame({"epoch": [0, 1, 2, 3], "train_loss": [1.0, 0.9, 0.8, 0.7],
                  "val_loss": [1.0, 0.9, 0.85, 0.8]}).to_csv(f / "epochs.csv", index=False)
    (f / "metrics.json").write_text(json.dumps({
        "name": folder, "task": "seg", "scenario": scenario, "label": scenario, "best_epoch": best_epoch,
        "epochs_run": 4, "val": {}, "test": test,
        "data": {"kind": "phantom", "root": "/cache/p", "fingerprint": "f" * 16, "protocol": "clean"},
        "provenance": {"config": {"seed": seed}}}, default=float))
    if per_image is not None:
        runio.atomic_write_csv(f / "test_per_image.csv", per_image)
    return f


@pytest.fixture
def profile(tmp_path):
    root = tmp_path / "results" / "demo"
    frames = {}
    for scen, skill in (("random", 0.4), ("resnet50", 0.8)):
        for folder, seed in ((scen, 42), (f"{scen}-seed1", 1)):
            df = fake_per_image(120, seed=seed + int(skill * 10), skill=skill, truth_seed=7)
            frames[folder] = df
            make_seed_run(root, folder, scen, seed, df, best_epoch=3 if seed == 42 else 2)
    return root, frames


def test_table4_from_two_scenarios_with_two_seeds_each(profile):
    root, frames = profile
    runs = runs_mod.read_profile_runs(root)
    assert sorted(runs) == ["random", "random-seed1", "resnet50", "resnet50-seed1"]
    grouped = runs_mod.read_scenario_runs(root)
    assert [r["name"] for r in grouped["random"]] == ["random", "random-seed1"]
    df = tables.table4(runs, n_boot=300)
    assert list(df.columns) == tables.TABLE4_COLUMNS
    for m in tables.CI_METRICS:
        for c in (m, f"{m}_ci95_lo", f"{m}_ci95_hi", f"{m}_seed_sd"):
            assert c in df.columns
    t = df.set_index("scenario")
    for scen in ("random", "resnet50"):
        r = t.loc[scen]
        assert r["n_seeds"] == 2 and r["seeds"] == "42, 1" and r["n_test_images"] == 120
        pts = [summarize_frame(frames[f]) for f in (scen, f"{scen}-seed1")]
        for m in tables.CI_METRICS:
            assert r[m] == pytest.approx((pts[0][m] + pts[1][m]) / 2)
            assert r[f"{m}_seed_sd"] == pytest.approx(abs(pts[0][m] - pts[1][m]) / math.sqrt(2))
            assert r[f"{m}_ci95_lo"] <= r[m] <= r[f"{m}_ci95_hi"]
        assert r["empty_baseline_dice_per_image"] == pytest.approx(pts[0]["empty_baseline_dice_per_image"])
        assert pd.isna(r["best_epoch"]) and r["best_epochs"] == "3, 2"  # seeds disagree
        assert r["note"] == ""  # csv and metrics.json agree, nothing left out
        assert r["paper_dice"] == pytest.approx({"random": 0.50, "resnet50": 0.60}[scen])
    assert t.loc["resnet50", "dice_pooled"] > t.loc["random", "dice_pooled"]
    missing = t.loc["ae_full"]
    assert missing["n_seeds"] == 0 and math.isnan(missing["dice_pooled"]) and "missing" in missing["note"]
    # the same numbers as seed_summary on the two files
    s = seed_summary([frames["random"], frames["random-seed1"]], n_boot=300)
    assert t.loc["random", "auc_ci95_hi"] == pytest.approx(s["auc"]["hi"])

    long = tables.ci_table(df)
    assert list(long.columns) == ["scenario", "label", "metric", "mean", "lo", "hi", "sd", "n_seeds", "level", "paper"]
    assert len(long) == len(tables.TABLE4_ORDER) * len(tables.CI_METRICS)
    row = long[(long.scenario == "random") & (long.metric == "dice_pooled")].iloc[0]
    assert row["mean"] == pytest.approx(t.loc["random", "dice_pooled"]) and row["n_seeds"] == 2
    assert row["lo"] == pytest.approx(t.loc["random", "dice_pooled_ci95_lo"]) and row["paper"] == pytest.approx(0.50)
    assert row["level"] == 0.95

    md = markdown.table4_markdown(df, runs)
    r = t.loc["random"]
    cell = f"{r['dice_pooled']:.3f} [{r['dice_pooled_ci95_lo']:.3f}, {r['dice_pooled_ci95_hi']:.3f}]"
    assert f"| random | Randomly initialized | {cell} |" in md
    assert re.search(r"\| resnet50 \| ResNet-50 Encoder \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \|", md)
    assert "mean over the training seeds" in md and "2 seeds per scenario" in md
    assert "bootstrap interval over test images" in md and "300 resamples" in md
    assert "Kaggle score" in md and "summed over the whole test set" in md
    assert "the paper's numbers" in md and "not ours" in md and "empty_baseline_dice_per_image" in md
    assert "Spread over training seeds" in md
    assert "without an interval" not in md


def test_table4_falls_back_to_metrics_json_without_per_image_files(tmp_path):
    root = tmp_path / "results" / "demo"
    with_csv = fake_per_image(60, seed=1, truth_seed=3)
    make_seed_run(root, "random", "random", 42, with_csv)
    make_seed_run(root, "ae_full", "ae_full", 42, None)  # an older run: no test_per_image.csv
    make_seed_run(root, "ae_full-seed42", "ae_full", 42, None)  # the same seed twice: counted once
    runs = runs_mod.read_profile_runs(root)
    df = tables.table4(runs, n_boot=100).set_index("scenario")
    fb = df.loc["ae_full"]
    ref = summarize_frame(fake_per_image(40, seed=42, truth_seed=0))
    assert fb["n_seeds"] == 1 and fb["seeds"] == "42"
    assert fb["dice_pooled"] == pytest.approx(ref["dice_pooled"])
    assert math.isnan(fb["dice_pooled_ci95_lo"]) and math.isnan(fb["auc_ci95_hi"])
    assert "no test_per_image.csv: metrics.json values, no interval" in fb["note"]
    assert fb["best_epoch"] == 3 and fb["n_test_images"] == 40
    assert df.loc["random", "dice_pooled_ci95_lo"] < df.loc["random", "dice_pooled_ci95_hi"]
    md = markdown.table4_markdown(df.reset_index(), runs)
    assert "No `test_per_image.csv` for `ae_full`" in md and "without an interval" in md
    assert "One training seed per scenario" in md
    # a different level renames the interval columns
    df90 = tables.table4(runs, n_boot=100, level=0.9)
    assert "dice_pooled_ci90_lo" in df90.columns and "dice_pooled_ci95_lo" not in df90.columns
    assert tables.ci_table(df90)["level"].iloc[0] == pytest.approx(0.9)


def test_table4_when_the_seeds_test_images_differ(tmp_path):
    root = tmp_path / "results" / "demo"
    make_seed_run(root, "random", "random", 42, fake_per_image(60, seed=1))
    make_seed_run(root, "random-seed1", "random", 1, fake_per_image(60, seed=2, index=np.arange(100, 160)))
    df = tables.table4(runs_mod.read_profile_runs(root), n_boot=100).set_index("scenario")
    r = df.loc["random"]
    assert r["n_seeds"] == 2 and "test images differ" in r["note"]
    assert r["dice_per_image_ci95_lo"] <= r["dice_per_image"] <= r["dice_per_image_ci95_hi"]


def test_seed_run_names():
    assert runs_mod.split_run_name("ae_encoder_mask_decoder-seed12") == ("ae_encoder_mask_decoder", 12)
    assert runs_mod.split_run_name("random") == ("random", None)
    assert runs_mod.split_run_name("random-seedx") == ("random-seedx", None)
