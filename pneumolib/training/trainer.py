"""Lightning's Trainer for every run: devices, precision, loggers, early stopping, the best
checkpoint, one ``epochs.csv`` row per epoch, and the run folder's ``metrics.json``.

:func:`fit` trains a :class:`~pneumolib.training.module.PneumoModule` under the paper's
protocol (early stopping on the validation loss, min delta 0.001, patience 5; the best
checkpoint by validation loss is evaluated once more on val and test, the numbers of
Table 4) and writes the run folder; :func:`evaluate_module` scores a module on
``[val, test]``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn

from pneumolib import paths, runio
from pneumolib.config import Config

from .module import PneumoModule


class EpochCSV(pl.Callback):
    """Writes one row per finished epoch to ``epochs.csv`` (atomically, rank 0 only).

    On a resumed run, rows of the epochs being redone are replaced, so the file always has
    exactly one row per epoch.
    """

    COLUMNS = ["epoch", "train_loss", "val_loss", "test_loss", "test_dice", "test_iou"]

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: PneumoModule) -> None:
        if trainer.sanity_checking:
            return
        row = pl_module.finish_epoch_record()
        if not trainer.is_global_zero:
            return
        row["epoch"] = int(trainer.current_epoch)
        old = pd.read_csv(self.path) if self.path.exists() else pd.DataFrame()
        if len(old):
            old = old[old["epoch"] < row["epoch"]]
        df = pd.concat([old, pd.DataFrame([row])], ignore_index=True)
        first = [c for c in self.COLUMNS if c in df.columns]
        df = df[first + [c for c in df.columns if c not in first]]
        runio.atomic_write_csv(self.path, df)


# -- Trainer ----------------------------------------------------------------------------
def resolve_precision(cfg: Config) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "16-mixed" if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda") else "32-true"


def _devices(cfg: Config) -> int | str:
    d = cfg.devices
    return int(d) if str(d).isdigit() else d


def make_trainer(cfg: Config, out_dir: Path, max_epochs: int, callbacks: list[pl.Callback] | None = None,
                 for_eval: bool = False) -> pl.Trainer:
    """Lightning's Trainer with the config's devices, strategy, precision and loggers."""
    from pytorch_lightning.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(str(out_dir), name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(out_dir), name="logs", version="tb"))
    except ImportError:
        pass
    return pl.Trainer(
        accelerator=cfg.accelerator, devices=_devices(cfg), strategy=cfg.strategy,
        num_nodes=cfg.num_nodes, precision=resolve_precision(cfg), max_epochs=max_epochs,
        callbacks=callbacks or [], logger=False if for_eval else loggers,
        enable_progress_bar=cfg.progress, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=cfg.deterministic or None,
        benchmark=True if cfg.cudnn_benchmark and not cfg.deterministic else None,
        limit_train_batches=cfg.limit_train_batches, log_every_n_steps=1,
        default_root_dir=str(out_dir), enable_checkpointing=not for_eval,
        use_distributed_sampler=True,
    )


def run_dir(cfg: Config, name: str, out: Path | str | None = None) -> Path:
    return Path(out) if out else paths.results_dir(cfg.name) / name


def fit(cfg: Config, model: nn.Module, task: str, out_dir: Path, max_epochs: int,
        datamodule: Any = None, extra: dict[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train ``model`` under the paper's protocol and write the run folder.

    Returns:
        The content of ``metrics.json``: the best checkpoint's val/test metrics plus
        provenance (git commit, versions, device, config, data source and protocol).
    """
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from pneumolib.prep.datamodule import PneumoDataModule
    from pneumolib.seeding import seed_everything

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)  # again: the model's construction consumed random numbers
    dm = datamodule or PneumoDataModule(cfg)
    dm.setup("fit")
    module = PneumoModule(model, task=task, lr=cfg.lr, threshold=cfg.threshold, seed=cfg.seed,
                          channels_last=cfg.channels_last)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()  # in place: state_dict keys (checkpoints, model.pt) stay unprefixed
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if not resume:
        (out_dir / "epochs.csv").unlink(missing_ok=True)
        (out_dir / "metrics.json").unlink(missing_ok=True)
    runio.atomic_write_text(out_dir / "config.json", cfg.to_json() + "\n")
    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val_loss", mode="min",
                                 save_top_k=1, save_last=True, enable_version_counter=False)
    early = EarlyStopping(monitor="val_loss", mode="min", min_delta=cfg.min_delta, patience=cfg.patience)
    callbacks = [early, checkpoint, EpochCSV(out_dir / "epochs.csv")]
    trainer = make_trainer(cfg, out_dir, max_epochs, callbacks)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.eval_dataloaders(),
                ckpt_path=str(last) if resume and last.exists() else None)
    fit_s = time.perf_counter() - t0
    best = checkpoint.best_model_path or str(last)
    # evaluate the best checkpoint once more on val and test (the numbers of Table 4)
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    results = evaluate_module(cfg, module, dm, out_dir, copy_through=task != "seg")
    if not trainer.is_global_zero:
        return {}
    epochs = pd.read_csv(out_dir / "epochs.csv") if (out_dir / "epochs.csv").exists() else pd.DataFrame()
    model_cpu = module.model.to("cpu")
    runio.atomic_torch_save(model_cpu.state_dict(), out_dir / "model.pt")
    summary = {
        "name": out_dir.name, "task": task,
        "best_checkpoint": str(Path(best).relative_to(out_dir)) if Path(best).is_relative_to(out_dir) else best,
        "best_epoch": int(epochs.loc[epochs["val_loss"].idxmin(), "epoch"]) if len(epochs) else None,
        "epochs_run": int(len(epochs)),
        # the callback's own state (restored on --resume): it fired, even at the last epoch
        "stopped_early": bool(early.stopped_epoch > 0 or early.wait_count >= early.patience),
        "early_stopping": {"stopped_epoch": int(early.stopped_epoch), "wait_count": int(early.wait_count),
                           "patience": int(early.patience), "min_delta": float(abs(early.min_delta))},
        "batch_size": {"per_process": int(cfg.batch_size), "processes": int(trainer.world_size),
                       "effective": int(cfg.batch_size) * int(trainer.world_size)},
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
    ``results["copy_through"]`` (:func:`pneumolib.training.runs.copy_through_summary`).
    """
    from .runs import copy_through_summary

    module.measure_copy_through = bool(copy_through)
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
