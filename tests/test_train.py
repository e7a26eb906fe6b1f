"""End-to-end training through the CLI on the smoke profile (tiny phantom, CPU)."""

from __future__ import annotations

import json
import math
import time

import pandas as pd
import pytest
import torch
from conftest import run_pneumo


def _smoke_dir(env) -> "Path":  # noqa: F821
    from pathlib import Path

    return Path(env["PNEUMO_HOME"]) / "results" / "smoke"


def test_train_random_smoke_under_a_minute(pneumo_env):
    t0 = time.perf_counter()
    proc = run_pneumo(["train", "--scenario", "random", "--profile", "smoke"], pneumo_env)
    wall = time.perf_counter() - t0
    assert wall < 60, f"smoke training took {wall:.1f} s"
    run = _smoke_dir(pneumo_env) / "random"
    epochs = pd.read_csv(run / "epochs.csv")
    assert list(epochs["epoch"]) == [0, 1]
    for col in ("train_loss", "val_loss", "test_dice", "test_iou", "test_dice_per_image",
                "test_dice_positive", "test_auc", "test_sensitivity", "test_specificity"):
        assert col in epochs.columns, col
    assert epochs[["train_loss", "val_loss"]].notna().all().all()
    m = json.loads((run / "metrics.json").read_text())
    assert m["scenario"] == "random" and m["task"] == "seg"
    assert 0.0 <= m["test"]["dice_pooled"] <= 1.0
    prov = m["provenance"]
    assert prov["config"]["seed"] == 42 and prov["config"]["name"] == "smoke"
    assert prov["versions"]["torch"] and "cuda" in prov["device"]
    assert "commit" in prov["git"]
    assert m["data"]["kind"] == "phantom" and m["data"]["protocol"] == "clean"
    assert (run / "test_per_image.csv").exists() and (run / "model.pt").exists()
    assert "random" in proc.stdout


def test_unknown_scenario_and_option_list_the_valid_ones(pneumo_env):
    p = run_pneumo(["train", "--scenario", "imagenet", "--profile", "smoke"], pneumo_env, check=False)
    assert p.returncode == 2 and "ae_encoder_mask_decoder" in p.stderr
    p = run_pneumo(["train", "--scenario", "random", "--epochs", "3"], pneumo_env, check=False)
    assert p.returncode == 2 and "--max-epochs" in p.stderr
    p = run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--set", "epochz=3"],
                   pneumo_env, check=False)
    assert p.returncode == 2 and "max_epochs" in p.stderr and "Traceback" not in p.stderr


def test_scenario_without_autoencoder_says_which_to_run(pneumo_env):
    p = run_pneumo(["train", "--scenario", "ae_full", "--profile", "smoke"], pneumo_env, check=False)
    assert p.returncode == 2 and "pneumo pretrain --kind xray" in p.stderr


def test_autoencoders_transfer_and_frozen_encoder_end_to_end(pneumo_env):
    run_pneumo(["pretrain", "--kind", "xray", "--profile", "smoke"], pneumo_env)
    run_pneumo(["pretrain", "--kind", "mask", "--profile", "smoke"], pneumo_env)
    res = _smoke_dir(pneumo_env)
    ae = json.loads((res / "ae_xray" / "metrics.json").read_text())
    ct = ae["copy_through"]
    assert ct["mse"] >= 0 and ct["mse_top_skip_zeroed"] >= 0 and not math.isnan(ct["ratio_zeroed_over_normal"])
    run_pneumo(["train", "--scenario", "ae_full_frozen", "--profile", "smoke"], pneumo_env)
    ae_state = torch.load(res / "ae_xray" / "model.pt", weights_only=True)
    tuned = torch.load(res / "ae_full_frozen" / "model.pt", weights_only=True)
    enc = [k for k in ae_state if k.startswith(("encoder.", "bottleneck."))]
    dec = [k for k in ae_state if k.startswith("decoder.") and k.endswith("weight")]
    assert enc and dec
    for k in enc:  # frozen: weights AND batch-norm statistics unchanged by two epochs of training
        assert torch.equal(ae_state[k], tuned[k]), k
    assert any(not torch.equal(ae_state[k], tuned[k]) for k in dec), "decoder should have trained"


def test_ddp_two_processes_give_the_same_loss_and_metrics(pneumo_env, tmp_path):
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke"], pneumo_env)
    run = _smoke_dir(pneumo_env) / "random"
    one = tmp_path / "one.json"
    two = tmp_path / "two.json"
    run_pneumo(["evaluate", "--run", str(run), "--devices", "1", "--out", str(one)], pneumo_env)
    run_pneumo(["evaluate", "--run", str(run), "--devices", "2", "--strategy", "ddp",
                "--set", "accelerator=cpu", "--out", str(two)], pneumo_env, timeout=300)
    r1 = json.loads(one.read_text())["results"]
    r2 = json.loads(two.read_text())["results"]
    assert r1["test"]["n_images"] == r2["test"]["n_images"]
    for split in ("val", "test"):
        assert set(r1[split]) == set(r2[split])
        for key in r1[split]:  # val_loss / test_loss (early stopping, the best checkpoint) too
            a, b = r1[split][key], r2[split][key]
            if isinstance(a, float) and math.isnan(a):
                assert math.isnan(b)
            else:
                assert a == pytest.approx(b, rel=0, abs=1e-6), (split, key, a, b)
