"""What a training run shows while it runs: a live bar for a person, a line per epoch for a log.

A run is **headless** when nobody watches it live: a papermill kernel of ``pneumo
reproduce``, the child process a notebook's training cell starts for several processes, a
CLI whose output goes to a file or a pipe. Lightning's progress bar there only streams
thousands of bar frames into the executed notebook or the log, so a headless run shows no
bar and prints one line per epoch instead (:class:`EpochLines`): the epoch's numbers, as
``epochs.csv`` holds them, plus a line at the start (and on resuming) and one at the end.
:func:`is_headless` decides, from ``PNEUMO_HEADLESS`` first:

- ``PNEUMO_HEADLESS=1`` (also ``true``, ``yes``, ``on``): headless;
- ``PNEUMO_HEADLESS=0`` (also ``false``, ``no``, ``off``): interactive;
- unset (or empty): interactive inside an IPython kernel (a person in JupyterLab) or when
  standard output is a terminal, headless otherwise.

An interactive run keeps Lightning's live bar (``cfg.progress``); in a Jupyter kernel it is
the notebook widget (``ipywidgets`` is a dependency, so ``tqdm.auto`` finds it), in a
terminal the text bar. It prints the same epoch lines too, through the bar (``tqdm.write``),
so a cell or terminal left alone for hours still has one line per epoch to read.

:func:`progress_setup` is what :func:`pneumolib.training.trainer.make_trainer` asks.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import pytorch_lightning as pl

from pneumolib.config import Config
from pneumolib.paths import HEADLESS_ENV as ENV_VAR
from pneumolib.paths import is_headless

__all__ = ["ENV_VAR", "EpochLines", "epoch_line", "is_headless", "progress_setup"]

#: The epoch numbers a line shows, in this order, when the epoch has them.
LINE_KEYS = ("train_loss", "val_loss", "test_loss", "test_dice", "test_iou")


def progress_setup(cfg: Config) -> tuple[bool, list[pl.Callback]]:
    """``(enable_progress_bar, callbacks)`` for Lightning's Trainer under ``cfg``.

    The bar shows when ``cfg.progress`` is on and the run is not headless; the epoch lines
    (:class:`EpochLines`) always.
    """
    return bool(cfg.progress) and not is_headless(), [EpochLines()]


def _fmt(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "nan"
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 100 else f"{minutes / 60:.1f} h"


def epoch_line(epoch: int, max_epochs: int, numbers: dict[str, Any], seconds: float | None,
               best: bool = False) -> str:
    """One epoch as a line: ``epoch 3/50  train_loss 0.4123  val_loss ...  12.3 s``.

    ``epoch`` counts from 0 as Lightning (and ``epochs.csv``) do; the line counts from 1.
    Numbers missing from ``numbers`` are left out; ``best`` marks a new lowest val_loss.
    """
    width = len(str(max_epochs)) if max_epochs and max_epochs > 0 else 1
    total = str(max_epochs) if max_epochs and max_epochs > 0 else "?"
    parts = [f"epoch {epoch + 1:>{width}}/{total}"]
    parts += [f"{k} {_fmt(numbers[k])}" for k in LINE_KEYS if numbers.get(k) is not None]
    if seconds is not None:
        parts.append(_duration(seconds))
    return "  ".join(parts) + ("  *best val_loss" if best else "")


class EpochLines(pl.Callback):
    """Prints a line at the start of fitting, one per finished epoch and one at the end
    (global rank 0 only, flushed at once).

    The numbers are those of ``epochs.csv``: the module's ``epoch_record``, which
    :class:`~pneumolib.training.trainer.EpochCSV` completes with the train loss
    (``finish_epoch_record`` is collective and is not called again here). This callback
    comes after ``EpochCSV`` in the Trainer's list, so at ``on_train_epoch_end`` the record
    is complete; without it, the train loss falls back to the last logged step.
    """

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._fit_t0 = self._t0
        self._best = math.inf
        self._best_epoch: int | None = None
        self._epochs = 0

    def _emit(self, trainer: pl.Trainer, text: str) -> None:
        if not trainer.is_global_zero:
            return
        bar = trainer.progress_bar_callback
        active = getattr(bar, "_train_progress_bar", None)  # Lightning's TQDMProgressBar
        if active is not None and not getattr(active, "disable", True):
            bar.print(text)  # tqdm.write: above the live bar, not through it
        else:
            print(text, flush=True)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, ValueError):
                pass

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_t0 = time.perf_counter()
        self._epochs = 0
        steps = trainer.num_training_batches
        steps_s = str(int(steps)) if math.isfinite(float(steps)) else "?"
        per = f" per process, {trainer.world_size} processes" if trainer.world_size > 1 else ""
        ckpt = trainer.checkpoint_callback
        score = getattr(ckpt, "best_model_score", None)
        self._best = float(score) if score is not None else math.inf
        if trainer.current_epoch > 0:
            best = f" (best val_loss so far {_fmt(self._best)})" if math.isfinite(self._best) else ""
            self._emit(trainer, f"resumed at epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: "
                                f"{trainer.current_epoch} epoch(s) already done{best}")
        self._emit(trainer, f"training {trainer.max_epochs} epochs, {steps_s} steps per epoch{per}")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = int(trainer.current_epoch)
        record = dict(getattr(pl_module, "epoch_record", None) or {})
        if record.get("epoch") != epoch:
            record = {}  # no validation this epoch: last epoch's numbers are not this one's
        complete = "train_loss" in record  # EpochCSV's finish_epoch_record ran this epoch
        if not complete and "train_loss" in trainer.callback_metrics:
            record["train_loss"] = float(trainer.callback_metrics["train_loss"])
        seconds = record["time_s"] if complete and record.get("time_s") is not None \
            else time.perf_counter() - self._t0
        val = record.get("val_loss")
        best = False
        if val is not None and math.isfinite(float(val)) and float(val) < self._best:
            self._best, self._best_epoch, best = float(val), epoch, True
        self._epochs += 1
        self._emit(trainer, epoch_line(epoch, trainer.max_epochs or 0, record, float(seconds), best))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = int(trainer.current_epoch)
        text = f"finished after {done} epoch(s) in {_duration(time.perf_counter() - self._fit_t0)}"
        if trainer.max_epochs and done < trainer.max_epochs and trainer.should_stop:
            text += " (stopped early: no val_loss improvement within patience)"
        if self._best_epoch is not None:
            text += f"; lowest val_loss {_fmt(self._best)} at epoch {self._best_epoch + 1}"
        self._emit(trainer, text)
