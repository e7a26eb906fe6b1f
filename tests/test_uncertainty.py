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
from pneumolib.evaluation import resample, uncertainty
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
    monkeypatch.setattr(resample, "_CHUNK_CELLS", 500 * 7)  # 7 replicates per chunk
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
    images_only = seed_summary([a, b], n_boot=400, seed=5, over="images")
    joint = (replicates(a, n_boot=400, seed=5) + replicates(b, n_boot=400, seed=5)) / 2
    for m in ("dice_pooled", "dice_per_image", "auc", "sensitivity"):
        assert s[m]["mean"] == pytest.approx((pa[m] + pb[m]) / 2)
        assert s[m]["sd"] == pytest.approx(abs(pa[m] - pb[m]) / math.sqrt(2))
        # the images-only interval: one image draw for both seeds, around the seed-mean
        for lo, hi in ((s[m]["lo_images"], s[m]["hi_images"]), (images_only[m]["lo"], images_only[m]["hi"])):
            assert lo == pytest.approx(np.nanpercentile(joint[m], 2.5))
            assert hi == pytest.approx(np.nanpercentile(joint[m], 97.5))
        assert s[m]["over"] == uncertainty.OVER_SEEDS and images_only[m]["over"] == uncertainty.OVER_IMAGES
    d = s["dice_pooled"]
    assert d["hi"] - d["lo"] > d["hi_images"] - d["lo_images"]  # the seeds differ: a wider interval
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
    assert "bootstrap interval over training seeds and test images" in md and "300 resamples" in md
    assert "Training variance unmeasured" not in md and "| resampled (2 seeds) |" in md
    assert list(t.loc[["random", "resnet50"], "training_variance"]) == ["resampled (2 seeds)"] * 2
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


# -- training variance: seeds resampled with the test images -----------------------------------
def seeded_runs(levels, n: int = 3000, noise: float = 0.05, truth_seed: int = 0,
                pred_seed: int = 0) -> list[pd.DataFrame]:
    """One per-image table per training seed, all on the same ``n`` positive test images, whose
    pooled Dice is about ``levels[k]`` for seed ``k``. Many large masks and a small per-image
    noise: the test-image variance is small, the seed variance is what ``levels`` makes it."""
    rt = np.random.default_rng(truth_seed)
    true = rt.integers(200, 400, n)
    hard = 0.1 * rt.standard_normal(n)  # which images are hard: shared by every seed and scenario
    out = []
    for k, level in enumerate(levels):
        rp = np.random.default_rng([pred_seed, k])
        frac = np.clip(level + hard + noise * rp.standard_normal(n), 0.0, 1.0)
        out.append(pd.DataFrame({"index": np.arange(n), "intersection": (frac * true).astype(np.int64),
                                 "pred_area": true, "true_area": true, "score": np.round(frac, 2),
                                 "src": np.arange(n), "image_id": [f"img{i}" for i in range(n)]}))
    return out


def test_seed_replicates_resample_seeds_and_undo_the_small_sample_shrinkage():
    values = np.repeat(np.array([[0.0], [1.0], [2.0]]), 20_000, axis=1)  # three seeds, no image variance
    adjusted = resample.seed_replicates(values, seed=1)
    plain = resample.seed_replicates(values, seed=1, adjust=False)
    s2 = 1.0  # the seeds' variance (ddof=1)
    assert np.var(adjusted) == pytest.approx(s2 / 3, rel=0.05)  # the variance of a mean of 3 seeds
    assert np.var(plain) == pytest.approx(2 / 3 * s2 / 3, rel=0.05)  # the bootstrap's (S-1)/S shrinkage
    assert adjusted.mean() == pytest.approx(1.0, abs=0.02)
    assert np.array_equal(resample.seed_replicates(values, seed=1), adjusted)  # deterministic
    assert not np.array_equal(resample.seed_replicates(values, seed=2), adjusted)
    assert not np.array_equal(resample.seed_replicates(values, seed=1, stream=1), adjusted)  # another stream
    np.testing.assert_array_equal(resample.seed_replicates(values[:1]), values[0])  # one seed: nothing to draw
    nan = values[:, :200].copy()
    nan[1, :] = np.nan  # a seed whose metric is undefined
    assert np.isnan(resample.seed_replicates(nan, adjust=False)).sum() > 100  # NaN where that seed was drawn


def test_old_rule_tells_apart_what_the_seeds_do_not():
    """Seed variance large (pooled Dice 0.40 / 0.50 / 0.60 across A's seeds), test-image variance
    small (3,000 large masks): the images-only interval around the seed-means excludes 0, the
    seed-and-image interval does not, and only the latter gives the verdict."""
    a = seeded_runs([0.40, 0.50, 0.60], pred_seed=1)
    b = seeded_runs([0.44, 0.47, 0.50], pred_seed=2)
    old = uncertainty.difference_ci(a, b, n_boot=1000, over="images")
    new = uncertainty.difference_ci(a, b, n_boot=1000)
    assert old["diff"] == pytest.approx(new["diff"]) and new["diff"] == pytest.approx(0.03, abs=0.01)
    assert old["lo"] > 0  # the old rule: "told apart"
    assert new["lo"] < 0 < new["hi"]  # the new rule: not told apart
    assert (new["lo_images"], new["hi_images"]) == (old["lo"], old["hi"])
    assert uncertainty.verdict(new) == uncertainty.NOT_TOLD_APART and uncertainty.told_apart(new) is False
    assert uncertainty.verdict(old) != uncertainty.TOLD_APART  # an images-only interval gives no verdict
    # a gap far larger than the seeds' spread is still told apart
    c = seeded_runs([0.60, 0.61, 0.62], pred_seed=3)
    far = uncertainty.difference_ci(c, b, n_boot=1000)
    assert far["lo"] > 0 and uncertainty.verdict(far) == uncertainty.TOLD_APART
    # the pairs table carries the verdicts
    pairs = uncertainty.pairs({"a": a, "b": b, "c": c}, n_boot=500)
    assert list(pairs.columns) == list(uncertainty.PAIR_COLUMNS)
    v = pairs.set_index(["a", "b"])["verdict"]
    assert v[("a", "b")] == "not told apart" and v[("b", "c")] == "told apart"
    assert pairs.set_index(["a", "b"]).loc[("a", "b"), "lo_images"] > 0


def test_several_seeds_widen_the_interval_only_when_they_vary():
    varied = seeded_runs([0.40, 0.50, 0.60], n=600, pred_seed=4)
    s = seed_summary(varied, n_boot=800, seed=3)
    for m in ("dice_pooled", "iou_pooled", "dice_per_image"):
        w_both, w_img = s[m]["hi"] - s[m]["lo"], s[m]["hi_images"] - s[m]["lo_images"]
        assert w_both > 3 * w_img, (m, w_both, w_img)
        assert s[m]["lo"] <= s[m]["mean"] <= s[m]["hi"]
    # the seed-mean's interval holds roughly +-1.96 sd/sqrt(3) of the seeds
    assert s["dice_pooled"]["hi"] - s["dice_pooled"]["lo"] == pytest.approx(
        2 * 1.96 * s["dice_pooled"]["sd"] / math.sqrt(3), rel=0.35)
    same_seeds = [varied[1]] * 3  # no training variance: the images-only interval, draw for draw
    t = seed_summary(same_seeds, n_boot=800, seed=3)
    assert t["dice_pooled"]["lo"] == pytest.approx(t["dice_pooled"]["lo_images"], rel=1e-12)
    assert t["dice_pooled"]["hi"] == pytest.approx(t["dice_pooled"]["hi_images"], rel=1e-12)
    # one seed: images only, and said so
    one = seed_summary(varied[:1], n_boot=800, seed=3)
    assert one["dice_pooled"]["over"] == uncertainty.OVER_IMAGES
    assert one["dice_pooled"]["lo"] == one["dice_pooled"]["lo_images"]
    with pytest.raises(ValueError, match="over must be"):
        seed_summary(varied, n_boot=10, over="seeds")


def test_seed_and_image_bootstrap_is_deterministic_given_its_seed():
    a = seeded_runs([0.40, 0.50, 0.60], n=400, pred_seed=5)
    b = seeded_runs([0.45, 0.50], n=400, pred_seed=6)
    pd.testing.assert_frame_equal(pd.DataFrame(seed_summary(a, n_boot=300, seed=9)),  # NaN == NaN here
                                  pd.DataFrame(seed_summary(a, n_boot=300, seed=9)))
    lo9, lo10 = (seed_summary(a, n_boot=300, seed=k)["dice_pooled"]["lo"] for k in (9, 10))
    assert lo9 != lo10
    d = uncertainty.difference_ci(a, b, n_boot=300, seed=9)
    assert d == uncertainty.difference_ci(a, b, n_boot=300, seed=9) and d["n_b"] == 2
    pd.testing.assert_frame_equal(uncertainty.pairs({"a": a, "b": b}, n_boot=200, seed=1),
                                  uncertainty.pairs({"a": a, "b": b}, n_boot=200, seed=1))
    assert uncertainty.selection_share({"a": a, "b": b}, n_boot=300, seed=4) == \
        uncertainty.selection_share({"a": a, "b": b}, n_boot=300, seed=4)


def test_one_seed_gives_no_verdict():
    a, b = seeded_runs([0.60], pred_seed=7), seeded_runs([0.40, 0.41, 0.42], pred_seed=8)
    d = uncertainty.difference_ci(a, b, n_boot=300)
    assert d["lo"] > 0  # far apart on these weights and these images ...
    assert uncertainty.verdict(d) == uncertainty.UNMEASURED == "training variance unmeasured (1 seed)"
    assert uncertainty.told_apart(d) is None  # ... but nothing says a rerun of `a` would stay there
    pairs = uncertainty.pairs({"a": a, "b": b}, n_boot=300)
    assert pairs["told_apart"].isna().all() and list(pairs["verdict"]) == [uncertainty.UNMEASURED]


def test_selection_share_says_how_sure_a_choice_is():
    clear = {"x": seeded_runs([0.50, 0.51, 0.52], n=500, pred_seed=1),
             "y": seeded_runs([0.30, 0.31, 0.32], n=500, pred_seed=2)}
    assert uncertainty.selection_share(clear, n_boot=400) == {"x": 1.0, "y": 0.0}
    close = {"x": seeded_runs([0.40, 0.50, 0.60], n=500, pred_seed=3),
             "y": seeded_runs([0.45, 0.48, 0.51], n=500, pred_seed=4),
             "z": seeded_runs([0.20, 0.21], n=500, pred_seed=5)}
    share = uncertainty.selection_share(close, n_boot=1000)
    assert sum(share.values()) == pytest.approx(1.0)
    assert 0.2 < share["x"] < 0.8 and 0.2 < share["y"] < 0.8 and share["z"] == 0.0
    # images only (one seed each) the choice looks certain: the seeds are what make it a coin toss
    firsts = {k: v[1:2] for k, v in close.items()}
    assert max(uncertainty.selection_share(firsts, n_boot=400).values()) == 1.0
    table = uncertainty.choice_table(close, n_boot=1000)
    assert list(table["candidate"]) == ["x", "y", "z"] and table.attrs["chosen"] == "x"
    assert table.attrs["share"] == pytest.approx(share["x"]) and table.attrs["over"] == uncertainty.OVER_SEEDS
    assert list(table["chosen"]) == [True, False, False]
    assert uncertainty.choice_table(close, n_boot=100, chosen="y").attrs["chosen"] == "y"


def write_val(folder: Path, frame: pd.DataFrame) -> None:
    runio.atomic_write_csv(folder / "val_per_image.csv", frame)


def test_tables_with_one_seed_say_training_variance_is_unmeasured(tmp_path):
    root = tmp_path / "results" / "demo"
    for k, (scen, level) in enumerate((("random", 0.40), ("resnet50", 0.60), ("ae_full", 0.45),
                                       ("ae_encoder", 0.50))):
        f = make_seed_run(root, scen, scen, 42, seeded_runs([level], n=300, pred_seed=k)[0])
        write_val(f, seeded_runs([level], n=200, pred_seed=10 + k, truth_seed=1)[0])
    runs = runs_mod.read_profile_runs(root)
    df = tables.table4(runs, n_boot=200)
    t = df.set_index("scenario")
    assert (t.loc[["random", "resnet50"], "training_variance"] == "unmeasured (1 seed)").all()
    assert t.loc["ae_full_frozen", "training_variance"] == ""  # no run
    md = markdown.table4_markdown(df, runs)
    assert "**Training variance unmeasured** for every scenario" in md and "Do not rank" in md
    assert "bootstrap interval over test images only" in md
    pairs = tables.pairwise_table(runs, n_boot=200)
    assert len(pairs) == 6 and pairs["told_apart"].isna().all()
    assert (pairs["verdict"] == "training variance unmeasured (1 seed)").all()
    assert (pairs.set_index(["a", "b"]).loc[("resnet50", "random"), "lo_images"]) > 0  # the images alone would rank
    pmd = markdown.pairs_markdown(pairs)
    assert "**Training variance unmeasured**" in pmd and "| told apart |" not in pmd and "| True |" not in pmd
    out = markdown.write_pairs(pairs, tmp_path / "fig")
    assert pd.read_csv(out["csv"])["told_apart"].isna().all()
    # Figure 7's choice on validation, and how sure it is (validation images only: one seed)
    choice = tables.ae_choice(runs, n_boot=300)
    assert list(choice["scenario"]) == ["ae_full", "ae_encoder"] and choice.attrs["chosen"] == "ae_encoder"
    assert choice.attrs["over"] == uncertainty.OVER_IMAGES and 0.5 < choice.attrs["share"] <= 1.0
    assert tables.ae_choice_share(runs, n_boot=300) == choice.attrs["share"]
    assert tables.ae_choice_share(runs, chosen="ae_full", n_boot=300) == pytest.approx(1 - choice.attrs["share"])
    note = markdown.ae_choice_note(choice)
    assert "`ae_encoder`" in note and "validation images only (training variance unmeasured" in note
    assert note in markdown.table4_markdown(df, runs, choice)
    assert markdown.write_ae_choice(choice, tmp_path / "fig")["md"].read_text().count("ae_full") == 1
    (root / "ae_full" / "val_per_image.csv").unlink()  # an older run: no share among a subset
    partial = tables.ae_choice(runs, n_boot=100)
    assert math.isnan(partial.attrs["share"]) and partial.attrs["missing"] == ["ae_full"]
    assert "cannot be said" in markdown.ae_choice_note(partial)


def test_tables_with_several_seeds_resample_them(tmp_path):
    root = tmp_path / "results" / "demo"
    levels = {"random": [0.40, 0.50, 0.60], "resnet50": [0.44, 0.47, 0.50], "ae_encoder": [0.70, 0.71, 0.72],
              "ae_full": [0.30, 0.45, 0.60]}
    for k, (scen, lv) in enumerate(levels.items()):
        frames = seeded_runs(lv, n=500, pred_seed=k)
        vals = seeded_runs(lv, n=300, pred_seed=20 + k, truth_seed=1)
        for j, seed in enumerate((42, 43, 44)):
            f = make_seed_run(root, scen if j == 0 else f"{scen}-seed{seed}", scen, seed, frames[j])
            write_val(f, vals[j])
    runs = runs_mod.read_profile_runs(root)
    t = tables.table4(runs, n_boot=400).set_index("scenario")
    assert t.loc["random", "training_variance"] == "resampled (3 seeds)"
    pairs = tables.pairwise_table(runs, n_boot=400).set_index(["a", "b"])
    assert pairs.loc[("resnet50", "random"), "verdict"] == "not told apart"  # seeds overlap
    assert pairs.loc[("resnet50", "random"), "told_apart"] == False  # noqa: E712 (nullable boolean)
    assert pairs.loc[("ae_encoder", "random"), "verdict"] == "told apart"
    choice = tables.ae_choice(runs, n_boot=400)
    assert choice.attrs["chosen"] == "ae_encoder" and choice.attrs["share"] == 1.0
    assert choice.attrs["over"] == uncertainty.OVER_SEEDS
    assert "would be chosen again in **100%**" in markdown.ae_choice_note(choice)
