"""Interrupted training resumes with one row per epoch; the same seed gives the same run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
from conftest import PNEUMO, ROOT, run_pneumo


def _rows(path: Path) -> int:
    try:
        return len(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def _epochs(folder: Path) -> pd.DataFrame:
    df = pd.read_csv(folder / "epochs.csv")
    return df.drop(columns=[c for c in df.columns if c == "time_s"])


def test_killed_then_resumed_run_is_the_uninterrupted_run(pneumo_env, tmp_path):
    """A SIGKILL mid-run, then --resume: epochs.csv equals the uninterrupted run's, number for
    number (the shuffle and the augmentation follow (seed, epoch), not a generator's state)."""
    out = tmp_path / "run"
    whole = tmp_path / "whole"
    common = ["train", "--scenario", "random", "--profile", "smoke", "--max-epochs", "5", "--set", "patience=10"]
    args = common + ["--out", str(out)]
    proc = subprocess.Popen(PNEUMO + args, env=pneumo_env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _rows(out / "epochs.csv") < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the hardest interruption: no handler runs
    proc.wait()
    done = _rows(out / "epochs.csv")
    assert 2 <= done < 5, f"the kill should land mid-run, after {done} epochs"
    assert not (out / "metrics.json").exists()
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert not [p for p in out.rglob("*.tmp")], "no half-written file may be left behind"

    run_pneumo(args + ["--resume"], pneumo_env)
    epochs = pd.read_csv(out / "epochs.csv")
    assert epochs["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert (out / "metrics.json").exists()
    run_pneumo(common + ["--out", str(whole)], pneumo_env)
    pd.testing.assert_frame_equal(_epochs(out), _epochs(whole), check_exact=True)
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((whole / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]


def test_stopped_early_comes_from_the_callback_even_at_the_last_epoch(pneumo_env, tmp_path):
    """patience 1 and a min_delta no loss can beat: early stopping fires at epoch 1, which is
    also max_epochs - 1; the run did stop early (the callback says so)."""
    out = tmp_path / "es"
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--max-epochs", "2", "--set", "patience=1",
                "--set", "min_delta=100", "--out", str(out)], pneumo_env)
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs_run"] == 2 and m["stopped_early"] is True
    assert m["early_stopping"]["stopped_epoch"] == 1 and m["early_stopping"]["wait_count"] == 1
    out2 = tmp_path / "no-es"
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--max-epochs", "2", "--out", str(out2)],
               pneumo_env)
    assert json.loads((out2 / "metrics.json").read_text())["stopped_early"] is False


def test_same_seed_same_metrics(pneumo_env, tmp_path):
    runs = []
    for name in ("a", "b"):
        run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--out", str(tmp_path / name)],
                   pneumo_env)
        df = pd.read_csv(tmp_path / name / "epochs.csv")
        runs.append(df.drop(columns=[c for c in df.columns if c == "time_s"]))
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)
    # the same setting on the same machine and build: identical files, weights bit for bit
    import torch

    for f in ("test_per_image.csv", "val_per_image.csv", "config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    wa, wb = (torch.load(tmp_path / n / "model.pt", weights_only=True) for n in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    other = tmp_path / "c"
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--seed", "7", "--out", str(other)],
               pneumo_env)
    assert not pd.read_csv(other / "epochs.csv")["train_loss"].equals(runs[0]["train_loss"])
