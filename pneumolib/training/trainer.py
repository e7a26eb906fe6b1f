"""Lightning's Trainer for every run: devices, precision, loggers, early stopping, the best
checkpoint, one ``epochs.csv`` row per epoch, and the run folder's ``metrics.json``.

:func:`fit` trains a :class:`~pneumolib.training.module.PneumoModule` under the paper's
protocol (early stopping on the validation loss, min delta 0.001, patience 5; the best
checkpoint by validation loss is evaluated once more on val and test, the numbers of
Table 4) and writes the run folder; :func:`evaluate_module` scores a module on
``[val, test]``.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn

from pneumolib import paths, runio
from pneumolib.config import Config, parse_devices

from .module import PneumoModule


class EpochCSV(pl.Callback):
    """Writes one row per finished epoch to ``epochs.csv`` (atomically, rank 0 only) and
    carries the rows and the run's identity inside every checkpoint (its ``state_dict``).

    On a resumed run the rows come back from the checkpoint, and ``epochs.csv`` is rewritten
    from them before training goes on: the file always has exactly one row per epoch that
    the checkpoint has seen, whatever happened between the CSV write and the checkpoint.
    The row is taken at ``on_train_epoch_end``, before ModelCheckpoint saves (Lightning runs
    checkpoint callbacks last), so the checkpoint of epoch k holds row k.
    """

    COLUMNS = ["epoch", "train_loss", "val_loss", "test_loss", "test_dice", "test_iou"]

    def __init__(self, path: Path, identity: dict[str, Any] | None = None):
        self.path = Path(path)
        self.identity = identity
        self.rows: list[dict[str, Any]] = []

    @property
    def state_key(self) -> str:
        from .runfolder import EPOCH_STATE_KEY

        return EPOCH_STATE_KEY

    def state_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]

    def _write(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        df = pd.DataFrame(self.rows)
        if len(df):
            first = [c for c in self.COLUMNS if c in df.columns]
            df = df[first + [c for c in df.columns if c not in first]]
        runio.atomic_write_csv(self.path, df)

    def on_train_start(self, trainer: pl.Trainer, pl_module: PneumoModule) -> None:
        done = int(trainer.current_epoch)  # after a restore: the first epoch still to run
        self.rows = [r for r in self.rows if int(r["epoch"]) < done]
        if self.rows or self.path.exists():
            self._write(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: PneumoModule) -> None:
        if trainer.sanity_checking:
            return
        row = pl_module.finish_epoch_record()  # collective: every rank
        row["epoch"] = int(trainer.current_epoch)
        row = {k: (float(v) if isinstance(v, (np.floating, float)) else int(v) if isinstance(v, np.integer) else v)
               for k, v in row.items()}
        self.rows = [r for r in self.rows if int(r["epoch"]) < row["epoch"]] + [row]
        self._write(trainer)


# -- Trainer ----------------------------------------------------------------------------
def resolve_precision(cfg: Config) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "16-mixed" if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda") else "32-true"


def _strategy(cfg: Config) -> Any:
    """``cfg.strategy``, with DDP built as an object that carries ``ddp_timeout_s`` (a rank
    that waits longer than that for a peer fails, and the launcher ends the job)."""
    from datetime import timedelta

    from .launch import process_count

    name = str(cfg.strategy)
    if name in ("ddp", "ddp_find_unused_parameters_true") or (name == "auto" and process_count(cfg) > 1):
        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy(timeout=timedelta(seconds=float(cfg.ddp_timeout_s)),
                           find_unused_parameters=name.endswith("_true"))
    return name


#: Lightning's start-up chatter: said once per run by the training Trainer, silenced for the
#: evaluation Trainer that follows it (a long log would repeat it for every run).
_CHATTER_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                    "lightning_fabric.utilities.rank_zero")
# a deprecation inside Lightning's own code, printed once per Trainer: nothing a user can act on
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


@contextlib.contextmanager
def _quiet_lightning() -> Any:
    import logging

    loggers = [logging.getLogger(n) for n in _CHATTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def make_trainer(cfg: Config, out_dir: Path, max_epochs: int, callbacks: list[pl.Callback] | None = None,
                 for_eval: bool = False) -> pl.Trainer:
    """Lightning's Trainer with the config's devices, strategy, precision and loggers."""
    from pytorch_lightning.loggers import CSVLogger

    from .progress import progress_setup

    loggers: list[Any] = [CSVLogger(str(out_dir), name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(out_dir), name="logs", version="tb"))
    except ImportError:
        pass
    show_bar, progress_callbacks = progress_setup(cfg) if not for_eval else (False, [])
    return pl.Trainer(
        accelerator=cfg.accelerator, devices=parse_devices(cfg.devices), strategy=_strategy(cfg),
        sync_batchnorm=bool(cfg.sync_batchnorm),
        num_nodes=cfg.num_nodes, precision=resolve_precision(cfg), max_epochs=max_epochs,
        callbacks=[*(callbacks or []), *progress_callbacks], logger=False if for_eval else loggers,
        enable_progress_bar=show_bar, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=cfg.deterministic or None,
        benchmark=True if cfg.cudnn_benchmark and not cfg.deterministic else None,
        limit_train_batches=cfg.limit_train_batches, log_every_n_steps=1,
        default_root_dir=str(out_dir), enable_checkpointing=not for_eval,
        use_distributed_sampler=True,
    )


def run_dir(cfg: Config, name: str, out: Path | str | None = None) -> Path:
    return Path(out) if out else paths.results_dir(cfg.name) / name


def _fit_interruptible(trainer: pl.Trainer, out_dir: Path, **kw: Any) -> None:
    """``trainer.fit(**kw)``; an interruption (Ctrl-C, a kernel interrupt) becomes a
    ``KeyboardInterrupt`` that says how to continue, with the SIGINT handler restored.

    Lightning answers a KeyboardInterrupt by ignoring SIGINT from then on and calling
    ``sys.exit(1)``: in a notebook kernel that would leave a kernel that no interrupt reaches.
    """
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        trainer.fit(**kw)
    except SystemExit:
        if not trainer.interrupted:
            raise
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)
    if trainer.interrupted:
        raise KeyboardInterrupt(f"training interrupted in epoch {trainer.current_epoch + 1}; run the same cell "
                                f"or command again to resume from {out_dir / 'checkpoints' / 'last.ckpt'}")


def fit(cfg: Config, model: nn.Module, task: str, out_dir: Path, max_epochs: int,
        datamodule: Any = None, extra: dict[str, Any] | None = None, resume: bool | None = None) -> dict[str, Any]:
    """Train ``model`` under the paper's protocol and write the run folder.

    The run folder decides how it starts (:mod:`pneumolib.training.runfolder`): a run that
    already finished with the same settings, data and code is read back; one interrupted
    with them continues from ``checkpoints/last.ckpt`` (Lightning's ``ckpt_path``) and ends
    with the numbers of an uninterrupted run; anything else starts afresh in a cleared folder,
    the reason printed. ``resume=False`` always starts afresh.

    Returns:
        The content of ``metrics.json``: the best checkpoint's val/test metrics plus
        provenance (git commit, code, versions, device, config, data source and protocol).
    """
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from pneumolib.models.weights_io import load_checkpoint_file
    from pneumolib.prep.datamodule import PneumoDataModule
    from pneumolib.seeding import seed_everything

    from . import runfolder

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)  # again: the model's construction consumed random numbers
    dm = datamodule or PneumoDataModule(cfg)
    dm.setup("fit")
    ident = runfolder.identity(cfg, (getattr(dm, "source_info", None) or {}).get("fingerprint"))
    start = runfolder.decide(out_dir, ident, fresh=resume is False)
    if rank_zero_only.rank == 0:
        runfolder.announce(start, out_dir, max_epochs)
    if start.mode == "finished":
        return start.summary or {}
    if start.mode == "fresh" and rank_zero_only.rank == 0:
        runfolder.clear(out_dir)
    module = PneumoModule(model, task=task, lr=cfg.lr, threshold=cfg.threshold, seed=cfg.seed,
                          channels_last=cfg.channels_last)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()  # in place: state_dict keys (checkpoints, model.pt) stay unprefixed
    ckpt_dir = out_dir / "checkpoints"
    if rank_zero_only.rank == 0:
        runio.atomic_write_text(out_dir / "config.json", cfg.to_json() + "\n")
    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val_loss", mode="min",
                                 save_top_k=1, save_last=True, enable_version_counter=False)
    early = EarlyStopping(monitor="val_loss", mode="min", min_delta=cfg.min_delta, patience=cfg.patience)
    epoch_csv = EpochCSV(out_dir / "epochs.csv", identity=ident)
    trainer = make_trainer(cfg, out_dir, max_epochs, [early, checkpoint, epoch_csv])
    t0 = time.perf_counter()
    _fit_interruptible(trainer, out_dir, model=module, train_dataloaders=dm.train_dataloader(),
                       val_dataloaders=dm.eval_dataloaders(),
                       ckpt_path=str(start.ckpt) if start.ckpt else None, weights_only=True)
    fit_s = time.perf_counter() - t0
    best = checkpoint.best_model_path or str(ckpt_dir / "last.ckpt")
    # evaluate the best checkpoint once more on val and test (the numbers of Table 4)
    module.load_state_dict(load_checkpoint_file(best, "the best checkpoint")["state_dict"])
    results = evaluate_module(cfg, module, dm, out_dir, copy_through=task != "seg")
    if not trainer.is_global_zero:
        return {}
    epochs = pd.DataFrame(epoch_csv.rows)
    model_cpu = module.model.to("cpu")
    runio.atomic_torch_save(model_cpu.state_dict(), out_dir / "model.pt")
    summary = {
        "name": out_dir.name, "task": task,
        "best_checkpoint": str(Path(best).relative_to(out_dir)) if Path(best).is_relative_to(out_dir) else best,
        "best_epoch": int(epochs.loc[epochs["val_loss"].idxmin(), "epoch"]) if len(epochs) else None,
        "epochs_run": int(len(epochs)),
        # the callback's own state (restored on a resume): it fired, even at the last epoch
        "stopped_early": bool(early.stopped_epoch > 0 or early.wait_count >= early.patience),
        "early_stopping": {"stopped_epoch": int(early.stopped_epoch), "wait_count": int(early.wait_count),
                           "patience": int(early.patience), "min_delta": float(abs(early.min_delta))},
        "batch_size": {"per_process": int(cfg.batch_size), "processes": int(trainer.world_size),
                       "effective": int(cfg.batch_size) * int(trainer.world_size)},
        "identity": ident,
        "resumed_after_epoch": start.epoch if start.mode == "resume" else None,
        "fit_seconds": round(fit_s, 2), "val": results.get("val", {}), "test": results.get("test", {}),
        "data": {**getattr(dm, "source_info", {}), "protocol": cfg.protocol, "mean": getattr(dm, "mean", None),
                 "std": getattr(dm, "std", None),
                 "n_items": {s: int((dm.split["split"] == s).sum()) for s in ("train", "val", "test")}},
        "provenance": runio.provenance(cfg),
    }
    if "test_dice" in epochs.columns and epochs["test_dice"].notna().any():
        # what the paper most likely reported: the peak of its per-epoch test curve (chosen
        # on test, so not an honest estimate; Table 4 shows it beside the best-val checkpoint)
        i = epochs["test_dice"].idxmax()
        summary["test_peak"] = {"dice_pooled": float(epochs.loc[i, "test_dice"]),
                                "iou_pooled": float(epochs.loc[i, "test_iou"]), "epoch": int(epochs.loc[i, "epoch"])}
    if start.code_before:  # resumed across a code change (pneumo reproduce --keep-results)
        summary["code_at_start"] = start.code_before
    if "copy_through" in results:
        summary["copy_through"] = results.pop("copy_through")
    if extra:
        summary.update(extra)
    runio.atomic_write_json(out_dir / "metrics.json", summary)
    return summary


def evaluate_module(cfg: Config, module: PneumoModule, dm: Any, out_dir: Path | None = None,
                    copy_through: bool = False) -> dict[str, Any]:
    """Run ``module`` on [val, test] with a fresh Trainer on the run's own devices.

    Writes ``val_per_image.csv`` / ``test_per_image.csv`` (one row per item, padded
    duplicates dropped) into ``out_dir`` when given. With ``copy_through`` (autoencoders),
    the same pass also measures the copy-through trap on the test split; the result is
    ``results["copy_through"]`` (:func:`pneumolib.training.copythrough.copy_through_summary`).
    """
    from .copythrough import copy_through_summary

    module.measure_copy_through = bool(copy_through)
    with _quiet_lightning():
        trainer = make_trainer(cfg.replace(progress=False), out_dir or Path("."), max_epochs=1, for_eval=True)
        try:
            trainer.validate(module, dataloaders=dm.eval_dataloaders(), verbose=False)
        finally:
            module.measure_copy_through = False
    results: dict[str, Any] = {}
    for split, res in module.eval_results.items():
        per = res.pop("_per_image", None)
        terms = res.pop("_copy_through", None)
        if per is not None and out_dir is not None and trainer.is_global_zero:
            table = dm.split.reset_index(drop=True)
            per = per.merge(table[["item", "src", "image_id", "has_pneumo", "aug"]], left_on="index",
                            right_on="item", how="left").drop(columns=["item"])
            runio.atomic_write_csv(out_dir / f"{split}_per_image.csv", per)
        if terms is not None and split == "test":
            results["copy_through"] = copy_through_summary(terms, module.task, module.model)
        results[split] = {k: v for k, v in res.items() if not k.startswith("_")}
    return results
