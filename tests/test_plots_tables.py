"""Figures 5-7 and Table 4 from synthetic run folders (no training), plus the EDA helpers."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from pneumolib import runio
from pneumolib.reporting import eda, figures, markdown, plots, tables
from pneumolib.reporting import runs as runs_mod

# The paper's Table 4: label, Dice, IoU (its wording).
PAPER = {
    "resnet50": ("ResNet-50 Encoder", 0.60, 0.44),
    "ae_encoder": ("Pretrained encoder only", 0.53, 0.38),
    "ae_encoder_mask_decoder": ("Pretrained encoder and decoder", 0.53, 0.38),
    "random": ("Randomly initialized", 0.50, 0.36),
    "ae_full": ("Autoencoder weights", 0.48, 0.34),
    "ae_full_frozen": ("Autoencoder weights (frozen encoder)", 0.23, 0.13),
}
# Our synthetic final pooled Dice per scenario: ae_encoder_mask_decoder is the best AE one.
OURS = {"resnet50": 0.41, "ae_encoder": 0.30, "ae_encoder_mask_decoder": 0.33, "random": 0.29,
        "ae_full": 0.25, "ae_full_frozen": 0.10}


def make_run(root: Path, name: str, dice: float, n_epochs: int = 5, best: int = 3) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    e = np.arange(n_epochs)
    curve = dice * (1 - np.exp(-(e + 1)))
    df = pd.DataFrame({
        "epoch": e, "train_loss": 1.5 - 0.1 * e, "val_loss": 1.6 - 0.1 * np.minimum(e, best),
        "test_loss": 1.6 - 0.09 * e, "test_dice": curve, "test_iou": curve / (2 - curve),
        "test_dice_per_image": 0.7 + 0.02 * e, "test_dice_positive": curve * 0.9, "test_auc": 0.6 + 0.05 * e,
        "test_sensitivity": 0.5, "test_specificity": 0.8,
    })
    df.to_csv(folder / "epochs.csv", index=False)
    label, pd_, pi = PAPER[name]
    metrics = {
        "name": name, "task": "seg", "scenario": name, "label": label, "paper": {"dice": pd_, "iou": pi},
        "best_epoch": best, "epochs_run": n_epochs,
        "val": {"dice_pooled": dice, "loss": 1.2},
        "test": {"dice_pooled": dice, "iou_pooled": dice / (2 - dice), "dice_per_image": 0.8,
                 "dice_positive": dice * 0.9, "auc": 0.75, "sensitivity": 0.6, "specificity": 0.85,
                 "n_images": 40, "n_positive": 9, "empty_baseline_dice_per_image": 0.775, "loss": 1.1},
        "data": {"kind": "phantom", "root": "/cache/phantom/x", "fingerprint": "abc123def4567890",
                 "protocol": "clean", "mean": 0.5, "std": 0.25, "n_items": {"train": 100, "val": 10, "test": 40}},
        "provenance": {},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def make_ae(root: Path, name: str, ratio: float) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1], "train_loss": [0.5, 0.3], "val_loss": [0.4, 0.35],
                  "test_loss": [0.41, 0.36]}).to_csv(folder / "epochs.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({
        "name": name, "task": name, "best_epoch": 1, "epochs_run": 2, "test": {"mse": 0.1},
        "copy_through": {"mse": 0.1, "mse_top_skip_zeroed": 0.1 * ratio, "ratio_zeroed_over_normal": ratio,
                         "mse_identity_baseline": 1.0}}))
    return folder


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "results" / "demo"
    for name, dice in OURS.items():
        make_run(root, name, dice)
    make_ae(root, "ae_xray", 7.0)
    make_ae(root, "ae_mask", 1.5)
    (root / "unfinished").mkdir()  # no metrics.json: must be ignored
    return runio.read_runs(root)


@pytest.fixture(params=["registry", "fallback"])
def registry_mode(request, monkeypatch):
    """Run with the real scenario registry, and with it unimportable (labels from metrics.json)."""
    if request.param == "fallback":
        monkeypatch.setitem(sys.modules, "pneumolib.models.scenarios", None)  # import -> ImportError
    else:
        pytest.importorskip("pneumolib.models.scenarios")
    return request.param


def _lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_figure_group_has_the_papers_four_panels(runs, registry_mode):
    fig = figures.figure_group(runs, figures.FIGURE5, "t")
    axes = fig.get_axes()
    assert len(axes) == 4
    titles = [ax.get_title() for ax in axes]
    assert titles[0].startswith("(a) Train") and titles[1].startswith("(b) Validation")
    assert titles[2].startswith("(c) Test DICE") and "pooled" in titles[2]
    assert titles[3].startswith("(d) Test IoU") and "pooled" in titles[3]
    for ax in axes:
        labels = [ln.get_label() for ln in _lines(ax)]
        assert labels == [PAPER[n][0] for n in figures.FIGURE5]
    # (c) plots test_dice over epochs counted from 1
    line = _lines(axes[2])[0]
    ep = runs["random"]["epochs"]
    np.testing.assert_allclose(line.get_xdata(), ep["epoch"] + 1)
    np.testing.assert_allclose(line.get_ydata(), ep["test_dice"])
    matplotlib.pyplot.close(fig)


def test_figure6_and_missing_run_is_named(runs, registry_mode):
    fig = figures.figure6(runs)
    assert [ln.get_label() for ln in _lines(fig.get_axes()[1])] == [PAPER[n][0] for n in figures.FIGURE6]
    partial = {k: v for k, v in runs.items() if k != "ae_encoder"}
    fig2 = figures.figure6(partial)
    legend_texts = [t.get_text() for leg in fig2.legends for t in leg.get_texts()]
    # without the registry a missing run's label is unknown: its name stands in
    expected = "Pretrained encoder only" if registry_mode == "registry" else "ae_encoder"
    assert any(expected in t and "missing" in t for t in legend_texts)
    assert len(_lines(fig2.get_axes()[0])) == 2
    matplotlib.pyplot.close("all")


def test_groups_match_the_registry():
    sc = pytest.importorskip("pneumolib.models.scenarios")
    assert list(figures.FIGURE5) == sc.PAPER_GROUPS["figure5"]
    assert list(figures.FIGURE6) == sc.PAPER_GROUPS["figure6"]
    assert tables.TABLE4_ORDER == tuple(sc.SCENARIOS)
    for name, (label, d, i) in PAPER.items():
        assert (sc.SCENARIOS[name].label, sc.SCENARIOS[name].paper_dice, sc.SCENARIOS[name].paper_iou) == (label, d, i)


def test_figure7_takes_the_best_autoencoder_scenario_on_validation(runs, registry_mode):
    assert figures.best_ae_scenario(runs) == "ae_encoder_mask_decoder"
    # the choice follows validation, never test: a test score does not move it
    runs["ae_full"]["metrics"]["test"]["dice_pooled"] = 0.99
    assert figures.best_ae_scenario(runs) == "ae_encoder_mask_decoder"
    runs["ae_full"]["metrics"]["val"]["dice_pooled"] = 0.99
    assert figures.best_ae_scenario(runs) == "ae_full"
    assert figures.best_ae_scenario({k: r["metrics"] for k, r in runs.items()}) == "ae_full"  # metrics.json dicts
    runs["ae_full"]["metrics"]["val"]["dice_pooled"] = runs["ae_full"]["metrics"]["test"]["dice_pooled"] = 0.2
    fig = figures.figure7(runs)
    assert [ln.get_label() for ln in _lines(fig.get_axes()[3])] == [
        PAPER["random"][0], PAPER["ae_encoder_mask_decoder"][0], PAPER["resnet50"][0]]
    assert "chosen on validation" in fig._suptitle.get_text()
    # NaN scores are skipped; the next best wins
    runs["ae_encoder_mask_decoder"]["metrics"]["val"]["dice_pooled"] = float("nan")
    assert figures.best_ae_scenario(runs) == "ae_encoder"
    assert figures.best_ae_scenario({k: runs[k] for k in ("random", "resnet50")}) is None
    assert figures.figure7_names({"random": runs["random"]}) == ("random", "resnet50")
    matplotlib.pyplot.close("all")


def test_table4_order_columns_and_paper_numbers(runs, registry_mode):
    df = tables.table4(runs)
    assert list(df["scenario"]) == ["resnet50", "ae_encoder", "ae_encoder_mask_decoder", "random",
                                    "ae_full", "ae_full_frozen"]
    for c in ("scenario", "label", "dice_pooled", "iou_pooled", "paper_dice", "paper_iou", "dice_per_image",
              "empty_baseline_dice_per_image", "dice_positive", "auc", "sensitivity", "specificity", "best_epoch"):
        assert c in df.columns
    for _, r in df.iterrows():
        label, d, i = PAPER[r["scenario"]]
        assert r["label"] == label
        assert r["paper_dice"] == pytest.approx(d) and r["paper_iou"] == pytest.approx(i)
        assert r["dice_pooled"] == pytest.approx(OURS[r["scenario"]])
        assert r["iou_pooled"] == pytest.approx(OURS[r["scenario"]] / (2 - OURS[r["scenario"]]))
        assert r["best_epoch"] == 3
        assert r["empty_baseline_dice_per_image"] == pytest.approx(0.775)
        assert r["data_kind"] == "phantom"
        # no test_per_image.csv in these runs: metrics.json values, one seed, no interval
        assert r["n_seeds"] == 1 and r["n_test_images"] == 40
        assert math.isnan(r["dice_pooled_ci95_lo"]) and math.isnan(r["dice_pooled_seed_sd"])
        assert "no test_per_image.csv" in r["note"]
    assert list(df.columns) == tables.TABLE4_COLUMNS


def test_table4_missing_run_is_a_nan_row_with_a_note(runs):
    df = tables.table4({k: v for k, v in runs.items() if k != "ae_full_frozen"})
    row = df.set_index("scenario").loc["ae_full_frozen"]
    assert math.isnan(row["dice_pooled"]) and math.isnan(row["auc"])
    assert "missing" in row["note"]
    assert row["paper_dice"] == pytest.approx(0.23) or "pneumolib.models.scenarios" not in sys.modules


def test_write_table4_states_which_dice(runs, tmp_path):
    df = tables.table4(runs)
    out = markdown.write_table4(df, tmp_path / "fig", runs)
    csv = pd.read_csv(out["csv"])
    assert list(csv["scenario"]) == list(tables.TABLE4_ORDER)
    md = out["md"].read_text()
    assert "summed over the whole test set" in md  # pooled
    assert "Kaggle" in md and "per image" in md
    assert "the paper's numbers" in md and "real SIIM-ACR" in md
    assert "phantom at /cache/phantom/x" in md  # ours: the data source named in metrics.json
    assert "| resnet50 | ResNet-50 Encoder | 0.410 |" in md  # no interval: the mean alone
    assert "without an interval" in md and "bootstrap interval over test images" in md
    assert "ci95_lo" in csv.columns[3] and "n_seeds" in csv.columns
    # one seed per scenario: training variance unmeasured, said in a column and above the table
    assert (csv["training_variance"] == "unmeasured (1 seed)").all()
    assert "**Training variance unmeasured** for every scenario" in md
    # Figure 7's choice cannot be rated without val_per_image.csv: said, not guessed
    choice = tables.ae_choice(runs)
    assert math.isnan(choice.attrs["share"]) and choice.attrs["missing"] == list(tables.AE_SCENARIOS)
    assert choice.attrs["chosen"] == figures.best_ae_scenario(runs)  # from metrics.json, as the figure
    assert "`ae_encoder_mask_decoder`" in markdown.ae_choice_note(choice)
    assert "cannot be said" in markdown.ae_choice_note(choice)


def test_save_figures_writes_small_pngs(runs, tmp_path):
    out = figures.save_figures(runs, tmp_path / "figs")
    for name in ("figure5", "figure6", "figure7", "extra_metrics"):
        p = tmp_path / "figs" / f"{name}.png"
        assert out[name] == p and p.exists()
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 5_000 < p.stat().st_size < 400_000
    assert not list((tmp_path / "figs").glob(".*"))  # no temporary files left


def test_extra_metrics_and_ae_tables(runs):
    fig = figures.plot_extra_metrics(runs)
    axes = fig.get_axes()
    assert len(axes) == 3
    assert "Kaggle" in axes[0].get_title()
    labels = [ln.get_label() for ln in axes[0].get_lines()]
    assert any("all-empty" in lab for lab in labels)
    assert len([lab for lab in labels if not lab.startswith("_") and "all-empty" not in lab]) == 6
    ct = tables.copy_through_table(runs)
    assert list(ct.index) == ["ae_xray", "ae_mask"]
    assert ct.loc["ae_xray", "ratio_zeroed_over_normal"] == pytest.approx(7.0)
    fig2 = figures.plot_loss_curves(runs)
    assert len(fig2.get_axes()) == 2
    summary = tables.run_summary(runs["random"])
    assert summary.loc["dice_pooled", "test"] == pytest.approx(OURS["random"])
    assert summary.loc["dice_pooled", "paper"] == pytest.approx(0.50)
    matplotlib.pyplot.close("all")


def test_read_profile_runs_of_a_missing_folder(tmp_path):
    assert runs_mod.read_profile_runs(tmp_path / "nope") == {}
    df = tables.table4({})
    assert len(df) == 6 and df["dice_pooled"].isna().all()
    assert "unknown" in markdown.table4_markdown(df, {})


# -- EDA helpers on stand-ins ---------------------------------------------------------------
class FakeCache:
    def __init__(self, n=12, size=16, seed=0):
        rng = np.random.default_rng(seed)
        self.n, self.size = n, size
        self.images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        self.masks = np.zeros((n, size, size), np.uint8)
        self.has_pneumo = np.array([1, 0, 0] * (n // 3), dtype=np.int64)
        for i in np.flatnonzero(self.has_pneumo):
            self.masks[i, 2:2 + i % 5 + 1, 3:8] = 1
        self.mask_pixels = self.masks.reshape(n, -1).sum(1)
        self.image_ids = [f"id{i}" for i in range(n)]
        self.fingerprint = "f"


def test_eda_on_a_cache():
    c = FakeCache()
    areas = eda.mask_areas(c)
    assert list(areas["index"]) == list(np.flatnonzero(c.has_pneumo))
    assert (areas["area_px"] == c.mask_pixels[c.has_pneumo == 1]).all()
    h = eda.mask_heatmap(c)
    assert h.shape == (16, 16) and 0 <= h.min() and h.max() <= 1 and h[2, 3] == 1.0
    st = eda.pixel_stats(c)
    assert st["mean"] == pytest.approx(c.images.mean() / 255, rel=1e-6)
    assert st["std"] == pytest.approx((c.images / 255).std(), rel=1e-5)
    ex = eda.augmentation_examples(c, seed=1)
    keys = list(ex)
    assert keys[:2] == ["original", "flipped"] and keys[2].startswith("rotated (")
    angle = abs(float(keys[2].split("(")[1].split()[0]))
    assert 3 <= angle <= 7
    np.testing.assert_array_equal(ex["flipped"]["mask"], ex["original"]["mask"][:, ::-1])
    assert ex["original"]["mask"].sum() == c.mask_pixels.max()
    imgs, masks, titles = eda.sample_images(c, n=4, seed=0)
    assert len(imgs) == len(masks) == len(titles) == 4
    fig = plots.overlay_grid(imgs, masks, titles)
    assert len(fig.get_axes()) == 4
    plots.augmentation_figure(ex, "mask")
    plots.area_histogram(areas)
    plots.heatmap(h)
    matplotlib.pyplot.close("all")


def test_split_tables_count_leakage_of_the_paper_protocol():
    recs = [SimpleNamespace(has_pneumo=int(i % 4 == 0), image_id=f"im{i}", split="train") for i in range(200)]
    source = SimpleNamespace(records=recs, kind="phantom")
    cfg = SimpleNamespace(seed=3, test_frac=0.2, val_frac=0.1, paper_augment=True)
    out = eda.split_tables(source, cfg)
    t = out["tables"]
    assert set(t.index.get_level_values("protocol")) == {"paper", "clean"}
    assert t.loc[("paper", "total"), "total"] == 200 + 2 * 50  # positives tripled
    leak = out["leakage"]
    assert leak.loc["clean", "leaked_sources"] == 0
    assert leak.loc["paper", "leaked_sources"] > 0
    summary = eda.dataset_summary(source)
    assert summary.loc["total", "+ve"] == 50 and summary.loc["total", "prevalence"] == pytest.approx(0.25)


def test_split_tables_of_a_datamodule_and_of_one_table():
    from pneumolib.prep.splits import make_split

    c = FakeCache(n=60)
    cfg = SimpleNamespace(seed=1, test_frac=0.2, val_frac=0.1, paper_augment=True, protocol="clean")
    split = make_split(c.has_pneumo, c.image_ids, "clean", 1, 0.2, 0.1)
    dm = SimpleNamespace(cfg=cfg, cache=c, split=split)
    out = eda.split_tables(dm)
    # the clean table drawn here is the one training draws (same inputs, same seed)
    pd.testing.assert_frame_equal(out["tables"].loc["clean"], importlib.import_module("pneumolib.prep.splits").split_table(split))
    one = eda.split_tables(split)
    assert list(one["leakage"].index) == ["given"] and one["leakage"].loc["given", "leaked_sources"] == 0
