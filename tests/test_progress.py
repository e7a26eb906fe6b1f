"""What a training run shows: one line per epoch when headless, a live bar (a widget in
Jupyter) for a person; ``PNEUMO_HEADLESS`` decides, else an IPython kernel or a terminal."""

from __future__ import annotations

import io
import sys
import types

import pandas as pd
import pytest

from conftest import run_pneumo
from pneumolib.config import PROFILES
from pneumolib.errors import ConfigError
from pneumolib.training import progress


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("value, headless", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("false", False), ("no", False), ("off", False)])
def test_env_var_decides(monkeypatch, value, headless):
    monkeypatch.setenv("PNEUMO_HEADLESS", value)
    monkeypatch.setattr(sys, "stdout", _TTY())  # the variable wins over a terminal...
    assert progress.is_headless() is headless
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # ...and over a pipe
    assert progress.is_headless() is headless


def test_env_var_typo_is_an_error(monkeypatch):
    monkeypatch.setenv("PNEUMO_HEADLESS", "maybe")
    with pytest.raises(ConfigError, match="PNEUMO_HEADLESS"):
        progress.is_headless()


def test_unset_guesses_from_kernel_and_terminal(monkeypatch):
    for value in (None, ""):
        if value is None:
            monkeypatch.delenv("PNEUMO_HEADLESS", raising=False)
        else:
            monkeypatch.setenv("PNEUMO_HEADLESS", value)
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        assert progress.is_headless() is True  # a pipe, no kernel: a log
        monkeypatch.setattr(sys, "stdout", _TTY())
        assert progress.is_headless() is False  # a terminal
        shell = types.SimpleNamespace(kernel=object())
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        assert progress.is_headless() is False  # a Jupyter kernel: a person in JupyterLab
        terminal_ipython = types.SimpleNamespace()  # IPython in a terminal has no kernel
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: terminal_ipython))
        assert progress.is_headless() is True


def test_progress_setup(monkeypatch):
    cfg = PROFILES["demo"]
    assert cfg.progress
    monkeypatch.setenv("PNEUMO_HEADLESS", "1")
    bar, callbacks = progress.progress_setup(cfg)
    assert bar is False and [type(c) for c in callbacks] == [progress.EpochLines]
    monkeypatch.setenv("PNEUMO_HEADLESS", "0")
    assert progress.progress_setup(cfg)[0] is True
    assert progress.progress_setup(cfg.replace(progress=False))[0] is False


def test_epoch_line():
    line = progress.epoch_line(2, 50, {"train_loss": 0.41234, "val_loss": 0.5, "test_dice": None,
                                       "test_iou": 0.25, "other": 1.0}, 83.0, best=True)
    assert line == "epoch  3/50  train_loss 0.4123  val_loss 0.5000  test_iou 0.2500  83.0 s  *best val_loss"
    assert progress.epoch_line(0, 8, {}, 620.0) == "epoch 1/8  10.3 min"


def test_only_rank_zero_prints(capsys):
    trainer = types.SimpleNamespace(is_global_zero=False, sanity_checking=False, current_epoch=0, max_epochs=3)
    progress.EpochLines().on_train_epoch_end(trainer, types.SimpleNamespace(epoch_record={"epoch": 0}))
    assert capsys.readouterr().out == ""


def _trainer(**kw):
    base = dict(is_global_zero=True, sanity_checking=False, current_epoch=0, max_epochs=10, world_size=1,
                num_training_batches=7, checkpoint_callback=None, progress_bar_callback=None,
                callback_metrics={}, should_stop=False)
    return types.SimpleNamespace(**{**base, **kw})


def test_start_resume_and_end_lines(capsys):
    lines = progress.EpochLines()
    ckpt = types.SimpleNamespace(best_model_score=0.5)
    lines.on_train_start(_trainer(current_epoch=4, checkpoint_callback=ckpt), None)
    out = capsys.readouterr().out.splitlines()
    assert out == ["resumed at epoch 5/10: 4 epoch(s) already done (best val_loss so far 0.5000)",
                   "training 10 epochs, 7 steps per epoch"]
    module = types.SimpleNamespace(epoch_record={"epoch": 4, "train_loss": 0.7, "val_loss": 0.6, "time_s": 3.0})
    lines.on_train_epoch_end(_trainer(current_epoch=4), module)  # not below the resumed best
    module.epoch_record = {"epoch": 5, "train_loss": 0.6, "val_loss": 0.4, "time_s": 2.5}
    lines.on_train_epoch_end(_trainer(current_epoch=5), module)
    lines.on_train_end(_trainer(current_epoch=6, should_stop=True), module)
    assert capsys.readouterr().out.splitlines() == [
        "epoch  5/10  train_loss 0.7000  val_loss 0.6000  3.0 s",
        "epoch  6/10  train_loss 0.6000  val_loss 0.4000  2.5 s  *best val_loss",
        "finished after 6 epoch(s) in 0.0 s (stopped early: no val_loss improvement within patience); "
        "lowest val_loss 0.4000 at epoch 6"]


def test_ipywidgets_for_the_notebook_bar():
    """tqdm.auto finds its widget (no "IProgress not found"), and so does Lightning's bar."""
    import ipywidgets  # noqa: F401
    import tqdm.auto
    from pytorch_lightning.callbacks.progress import tqdm_progress
    from tqdm.notebook import IProgress

    assert IProgress is not None  # what tqdm.notebook warns about when it is missing
    # Lightning picks tqdm.auto only when ipywidgets is there (the widget inside a kernel,
    # the text bar elsewhere, as here)
    assert tqdm_progress._tqdm is tqdm.auto.tqdm


def test_headless_training_prints_one_line_per_epoch(pneumo_env, tmp_path):
    env = dict(pneumo_env, PNEUMO_HEADLESS="1")
    out = tmp_path / "run"
    # progress=true: the bar is wanted, but nobody watches (smoke turns it off by itself)
    proc = run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--max-epochs", "3",
                       "--set", "progress=true", "--out", str(out)], env)
    # Lightning's bar writes to stdout ("Epoch 0: ...\r"): no frame of it anywhere
    assert "\r" not in proc.stdout and "Epoch 0" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epochs] == ["1/3", "2/3", "3/3"], proc.stdout
    assert any(ln.startswith("training 3 epochs, ") and "steps per epoch" in ln for ln in lines)
    assert any(ln.startswith("finished after 3 epoch(s)") for ln in lines)
    rows = pd.read_csv(out / "epochs.csv")
    for line, (_, row) in zip(epochs, rows.iterrows()):  # the same numbers as epochs.csv
        for key in progress.LINE_KEYS:
            assert f"{key} {row[key]:.4f}" in line, (key, line)
