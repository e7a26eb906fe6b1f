"""The studies beyond the paper: plan, label subsets, study tables and figures (no training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pneumolib.commands import plan as plan_mod
from pneumolib.config import get_config
from pneumolib.errors import ConfigError
from pneumolib.models.scenarios import scenario_order
from pneumolib.prep.datamodule import label_subset
from pneumolib.reporting import plots, studies


def _split(n_src: int = 200, prevalence: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """A clean-protocol-like split table: positives in train get flip + rot copies."""
    rng = np.random.default_rng(seed)
    pos = rng.random(n_src) < prevalence
    part = rng.choice(["train", "val", "test"], size=n_src, p=[0.7, 0.15, 0.15])
    rows = []
    for s in range(n_src):
        augs = ("orig", "flip", "rot") if pos[s] and part[s] == "train" else ("orig",)
        for a in augs:
            rows.append({"item": len(rows), "src": s, "image_id": f"img{s}", "has_pneumo": int(pos[s]),
                         "aug": a, "angle": 0.0, "split": part[s]})
    return pd.DataFrame(rows)


def test_label_subset_keeps_steps_classes_and_copies():
    split = _split()
    train_rows = np.flatnonzero(split["split"].to_numpy() == "train")
    for frac in (0.01, 0.1, 0.5):
        rows = label_subset(split, frac)
        assert rows.size == train_rows.size  # same number of steps per epoch
        chosen = split.iloc[np.unique(rows)]
        assert set(chosen["split"]) == {"train"}
        assert set(chosen["has_pneumo"]) == {0, 1}  # both classes even at 1 %
        # a chosen source comes with all its augmented copies
        for src, items in chosen.groupby("src"):
            assert len(items) == int((split["src"] == src).sum())
        n_src = split.loc[split["split"] == "train", "src"].nunique()
        assert chosen["src"].nunique() <= max(2, round(frac * n_src) + 2)
    # fixed subset: the same for every call (every scenario and seed)
    assert np.array_equal(label_subset(split, 0.1), label_subset(split, 0.1))
    assert np.array_equal(label_subset(split, 1.0), train_rows)


def test_label_frac_is_validated():
    with pytest.raises(ConfigError, match="label_frac"):
        get_config("smoke", label_frac=0.0)
    with pytest.raises(ConfigError, match="label_frac"):
        get_config("smoke", label_frac=1.5)


def test_parse_studies():
    assert plan_mod.parse_studies("") == ()
    assert plan_mod.parse_studies("all") == plan_mod.STUDIES
    assert plan_mod.parse_studies("pretext,leakage") == ("leakage", "pretext")
    with pytest.raises(ConfigError, match="unknown study nope"):
        plan_mod.parse_studies("leakage,nope")


def test_plan_with_seeds_and_studies():
    steps = plan_mod.plan("smoke", None, {"max_epochs": "1"}, seeds=2, studies=plan_mod.STUDIES)
    names = [s.name for s in steps]
    assert len(names) == len(set(names))
    seed = get_config("smoke").seed
    six = scenario_order()
    for sc in six:
        assert f"04_finetune-{sc}" in names and f"04_finetune-{sc}-seed{seed + 1}" in names
    by = {s.name: s for s in steps}
    extra = by[f"04_finetune-random-seed{seed + 1}"]
    assert extra.parameters["seed"] == seed + 1 and extra.parameters["run_name"] == f"random-seed{seed + 1}"
    # study runs carry their overrides on top of the user's, and live under studies/
    leak = by["04_finetune-leakage-random"]
    assert json.loads(leak.parameters["overrides_json"]) == {"max_epochs": "1", "protocol": "paper"}
    assert leak.parameters["run_name"].startswith("studies/leakage/")
    lab = by["04_finetune-resnet50-labels0.01"]
    assert json.loads(lab.parameters["overrides_json"])["label_frac"] == 0.01
    assert by["03_autoencoders-pretext"].parameters["kinds"] == "genesis,xray_noskip"
    assert "03_autoencoders-pretext" in by["04_finetune-genesis_full"].deps
    # each study notebook comes after all of its runs
    for nb in ("07_leakage", "08_image_level", "09_pretext", "10_label_efficiency"):
        i = names.index(nb)
        assert all(names.index(d) < i for d in by[nb].deps)
    # the plain plan: the paper's notebooks plus screening, nothing of the studies
    plain = [s.name for s in plan_mod.plan("smoke")]
    assert plain[-2:] == ["05_results", "06_covid_screening"] and len(plain) == 3 + len(six) + 2


def _per_image(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    true = np.where(rng.random(n) < 0.25, rng.integers(20, 200, n), 0)
    pred = np.where(rng.random(n) < 0.3, rng.integers(10, 200, n), 0)
    inter = np.minimum(true, pred) * (rng.random(n) < 0.8)
    return pd.DataFrame({"index": np.arange(n), "intersection": inter, "pred_area": pred, "true_area": true,
                         "score": rng.random(n), "src": np.arange(n)})


def test_score_row_and_markdown(tmp_path):
    per = _per_image()
    row = studies.score_row(per)
    for m in studies.STUDY_METRICS:
        assert row[f"{m}_ci95_lo"] <= row[m] <= row[f"{m}_ci95_hi"]
    assert row["n_test_images"] == 300 and row["n_positive"] == int((per["true_area"] > 0).sum())
    assert row["empty_baseline"] == pytest.approx((per["true_area"] == 0).mean())
    df = pd.DataFrame([{"scenario": "random", **row}, {"scenario": "resnet50", **studies.score_row(_per_image(seed=1))}])
    out = studies.write_study(df, "pretext", tmp_path, studies.PRETEXT_NOTE, plots.study_bars(df))
    md = out["md"].read_text()
    assert "Pretext study" in md and f"{row['dice_pooled']:.3f} [{row['dice_pooled_ci95_lo']:.3f}" in md
    assert out["png"].stat().st_size > 5000 and pd.read_csv(out["csv"]).shape[0] == 2


def test_label_efficiency_figure():
    rows = [{"scenario": sc, "label_frac": f, **studies.score_row(_per_image(seed=i))}
            for i, (sc, f) in enumerate([(s, f) for s in ("random", "resnet50") for f in (0.01, 0.1, 1.0)])]
    fig = plots.label_efficiency(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 2
    plots.plt.close(fig)


def _seed_per_image(level: float, seed: int, n: int = 400) -> pd.DataFrame:
    """One training seed on fixed test images (truth from seed 0), pooled Dice about ``level``."""
    rt, rp = np.random.default_rng(0), np.random.default_rng(100 + seed)
    true = rt.integers(50, 200, n) * (rt.random(n) < 0.5)
    frac = np.clip(level + 0.05 * rp.standard_normal(n), 0, 1)
    return pd.DataFrame({"index": np.arange(n), "intersection": (frac * true).astype(int), "pred_area": true,
                         "true_area": true, "score": rp.random(n), "src": np.arange(n)})


def test_score_row_resamples_seeds_when_there_are_several():
    one = studies.score_row(_seed_per_image(0.5, 1))
    assert one["n_seeds"] == 1 and one["training_variance"] == "unmeasured (1 seed)"
    seeds = [_seed_per_image(lv, k) for k, lv in enumerate((0.35, 0.5, 0.65))]
    several = studies.score_row(seeds)
    assert several["n_seeds"] == 3 and several["training_variance"] == "resampled (3 seeds)"
    assert several["dice_pooled_ci95_hi"] - several["dice_pooled_ci95_lo"] > \
        3 * (one["dice_pooled_ci95_hi"] - one["dice_pooled_ci95_lo"])
    assert several["dice_pooled_ci95_lo"] <= several["dice_pooled"] <= several["dice_pooled_ci95_hi"]
    md = studies.study_markdown(pd.DataFrame([{"scenario": "a", **one}, {"scenario": "b", **several}]),
                                studies.PRETEXT_NOTE)
    assert "unmeasured (1 seed)" in md and "resampled (3 seeds)" in md and "not ranked" in md


def test_study_rows_gather_the_seeds_of_a_main_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path))
    cfg = get_config("smoke")
    results = tmp_path / "results" / cfg.name
    for folder, seed, level in (("random", 42, 0.4), ("random-seed43", 43, 0.5), ("random-seed42", 42, 0.9),
                                ("random_x-seed1", 1, 0.9), ("studies/label_efficiency/random-labels0.1", 42, 0.2)):
        f = results / folder
        f.mkdir(parents=True)
        (f / "metrics.json").write_text(json.dumps({"name": f.name, "provenance": {"config": {"seed": seed}}}))
        _seed_per_image(level, seed).to_csv(f / "test_per_image.csv", index=False)
    (results / "random-seed44").mkdir()  # unfinished: no test_per_image.csv
    assert len(studies._seed_frames(results / "random")) == 2  # 42 (once) and 43
    df = studies.label_efficiency_study(cfg, scenarios=["random"]).set_index("label_frac")
    assert list(df.index) == [0.1, 1.0]
    assert df.loc[0.1, "n_seeds"] == 1 and df.loc[0.1, "training_variance"] == "unmeasured (1 seed)"
    assert df.loc[1.0, "n_seeds"] == 2 and df.loc[1.0, "training_variance"] == "resampled (2 seeds)"
    assert df.loc[1.0, "dice_pooled"] == pytest.approx(0.45, abs=0.02)  # the mean of seeds 42 and 43
