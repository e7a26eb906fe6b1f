"""Interrupted training resumes with one row per epoch; the same seed gives the same run."""

from __future__ import annotations

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


def test_killed_training_resumes_with_one_row_per_epoch(pneumo_env, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--scenario", "random", "--profile", "smoke", "--max-epochs", "5", "--out", str(out)]
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


def test_same_seed_same_metrics(pneumo_env, tmp_path):
    runs = []
    for name in ("a", "b"):
        run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--out", str(tmp_path / name)],
                   pneumo_env)
        df = pd.read_csv(tmp_path / name / "epochs.csv")
        runs.append(df.drop(columns=[c for c in df.columns if c == "time_s"]))
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)
    other = tmp_path / "c"
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--seed", "7", "--out", str(other)],
               pneumo_env)
    assert not pd.read_csv(other / "epochs.csv")["train_loss"].equals(runs[0]["train_loss"])
