"""Training with PyTorch Lightning: the paper's protocol, exact metrics, tidy run files.

One :class:`PneumoModule` trains every model of the compendium:

- ``task="seg"``: segmentation, BCE + Dice from logits (the paper's loss); for models with
  an image-level head (``(mask_logits, class_logit)`` outputs), plus :data:`CLS_WEIGHT` x
  BCE of the class logit against "the mask is not empty";
- ``task="ae_xray"`` / ``"ae_mask"``: the autoencoders, MSE reconstruction of the input
  X-ray (normalised) or mask (0/1);
- ``task="ae_genesis"``: restoration of the clean (normalised) X-ray from its Models Genesis
  distortion (:func:`pneumolib.pretext.genesis_distort`, applied on the batch's device in
  the training / validation step), MSE;
- ``task="ae_xray_noskip"``: ``ae_xray`` with every skip connection of the U-Net zeroed
  (``model.zero_skips = ALL_SKIPS``), in training and evaluation.

Each epoch validates on ``[val, test]`` (the paper plots test metrics per epoch), gathers
per-image counts across processes (exact under DDP: duplicates that the distributed
sampler pads with are dropped by their item index) and writes one row to ``epochs.csv``.
Early stopping and the best checkpoint follow the validation loss (min delta 0.001,
patience 5). :func:`pretrain` and :func:`train_scenario` are the entry points.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics, paths, runio
from .config import Config
from .errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

TASKS = ("seg", "ae_xray", "ae_mask", "ae_genesis", "ae_xray_noskip")
#: ``pneumo pretrain --kind`` -> task name, which is also the run folder's name.
AE_KINDS = {"xray": "ae_xray", "mask": "ae_mask", "genesis": "ae_genesis", "xray_noskip": "ae_xray_noskip"}

#: Weight of the image-level BCE for models with a classification head (scenario
#: ``random_cls``): loss = BCE(mask) + Dice(mask) + CLS_WEIGHT * BCE(class logit, mask
#: non-empty). Why 0.5: the segmentation loss is two terms of order 1 (about 0.7 + 0.9 at
#: initialisation), the image-level BCE one term starting at ln 2 = 0.69; at 0.5 the head
#: makes about a fifth of the initial loss, enough to shape the shared encoder towards the
#: empty / not-empty decision without outweighing the mask objective that the scenarios are
#: compared on (weight 1 would make it close to half of it). A choice, not tuned.
CLS_WEIGHT = 0.5

#: Base of the per-item seeds of the Models Genesis distortion in validation, test and the
#: copy-through measurement: fixed, so every run (any seed, any device count, a later
#: ``pneumo evaluate``) scores restoration on the very same distorted images.
EVAL_PRETEXT_SEED = 20190613


# -- losses -----------------------------------------------------------------------------
def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch. logits, target: (B, 1, H, W); target in {0, 1}."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + eps) / (prob.sum() + target.sum() + eps)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's segmentation loss: BCE + Dice, both from logits, equal weights."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float()) + soft_dice_loss(logits, target)


# -- the LightningModule ----------------------------------------------------------------
class PneumoModule(pl.LightningModule):
    """Wraps any image-to-image model (``(B,1,H,W) -> (B,1,H,W)`` logits or reconstruction).

    Models may also return ``(mask_logits, class_logit)`` (an image-level head, segmentation
    only): the loss adds ``cls_weight`` x BCE of the class logit against "mask not empty",
    and the per-image ``score`` (image-level AUC) is ``sigmoid(class_logit)`` instead of the
    maximum pixel probability, which is kept as ``pixel_max`` (equal to ``score`` for
    plain models). :meth:`forward` returns whatever the model returns.

    Args:
        model: the network (see :mod:`pneumolib.models`, :mod:`pneumolib.scenarios`).
        task: one of :data:`TASKS`. ``ae_xray_noskip`` sets ``model.zero_skips`` to every
            level (the model must be a :class:`~pneumolib.models.UNet`).
        lr: Adam learning rate (the paper: 1e-4).
        threshold: probability threshold for binary masks in the metrics.
        channels_last: use the channels-last memory format (helps convolutions on GPUs).
        cls_weight: weight of the image-level BCE (:data:`CLS_WEIGHT`).
        seed: seeds the training distortions of ``ae_genesis`` (with epoch, batch index and
            process rank); validation uses per-item seeds from :data:`EVAL_PRETEXT_SEED`.
    """

    def __init__(self, model: nn.Module, task: str = "seg", lr: float = 1e-4,
                 threshold: float = 0.5, channels_last: bool = False,
                 cls_weight: float = CLS_WEIGHT, seed: int = 0):
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task={task!r} is unknown; valid: {', '.join(TASKS)}")
        if task == "ae_xray_noskip":
            from .models import ALL_SKIPS

            if not hasattr(model, "zero_skips"):
                raise ConfigError("task ae_xray_noskip needs the paper U-Net (zero_skips)")
            model.zero_skips = ALL_SKIPS
        self.model = model
        self.task = task
        self.lr = lr
        self.threshold = threshold
        self.channels_last = channels_last
        self.cls_weight = float(cls_weight)
        self.seed = int(seed)
        self.save_hyperparameters(ignore=["model"])
        self._train_sum = torch.zeros(2, dtype=torch.float64)
        self._eval: dict[int, dict[str, list[torch.Tensor]]] = {}
        self.epoch_record: dict[str, Any] = {}
        self.eval_results: dict[str, dict[str, Any]] = {}
        self._epoch_t0 = time.perf_counter()

    # frozen encoders keep their batch-norm statistics fixed in training mode too
    def train(self, mode: bool = True):  # noqa: D102
        super().train(mode)
        if mode:
            from .scenarios import apply_frozen_bn_eval

            apply_frozen_bn_eval(self.model)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _generator(self, *parts: int) -> torch.Generator:
        """A generator on the batch's device (CPU where none can live), seeded by
        ``(seed, *parts)``."""
        seed = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, *[int(p) for p in parts]])
                   .generate_state(1, np.uint64)[0] >> 1)
        try:
            g = torch.Generator(device=self.device)
        except RuntimeError:  # a device without its own generators
            g = torch.Generator()
        return g.manual_seed(seed)

    def _inputs(self, batch: dict[str, torch.Tensor], train_step: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(network input, target)``. For ``ae_genesis`` the input is the distorted X-ray:
        in training seeded by (seed, epoch, ``train_step``, rank); in evaluation per item."""
        if self.task == "ae_mask":
            x = batch["mask"]
            return x, x
        x = batch["image"]
        if self.task == "ae_genesis":
            from .pretext import genesis_distort, genesis_distort_items, item_seeds

            if train_step is not None:
                rank = self.trainer.global_rank if self._trainer is not None else 0
                g = self._generator(self.current_epoch, train_step, rank)
                return genesis_distort(x, g), x
            return genesis_distort_items(x, item_seeds(batch["index"], EVAL_PRETEXT_SEED)), x
        return x, (batch["mask"] if self.task == "seg" else x)

    @staticmethod
    def _split(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mask logits or reconstruction, class logit or None)`` of a model's output."""
        from .models import split_output

        return split_output(out)

    def _loss(self, out: torch.Tensor, target: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        if self.task == "seg":
            loss = bce_dice_loss(out, target)
            if cls is not None:
                has = (target.flatten(1).amax(1) > 0.5).float()
                loss = loss + self.cls_weight * F.binary_cross_entropy_with_logits(cls.float().reshape(-1), has)
            return loss
        return F.mse_loss(out.float(), target.float())

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.lr)

    # -- training --
    def on_train_epoch_start(self) -> None:
        self._train_sum = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._epoch_t0 = time.perf_counter()

    def training_step(self, batch, batch_idx):
        x, target = self._inputs(batch, train_step=batch_idx)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out, cls = self._split(self.model(x))
        loss = self._loss(out, target, cls)
        n = x.shape[0]
        # in place, no host-to-device copy and no .item(): nothing here waits for the GPU
        self._train_sum[0] += loss.detach().double() * n
        self._train_sum[1] += n
        self.log("train_loss", loss, on_step=True, on_epoch=False, batch_size=n)
        return loss

    # -- evaluation (val = dataloader 0, test = dataloader 1) --
    def on_validation_epoch_start(self) -> None:
        self._eval = {}

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, target = self._inputs(batch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out, cls = self._split(self.model(x))
        n = x.shape[0]
        # epoch loss = mean of batch losses weighted by batch size (the training loss's own
        # definition; the batch Dice term is not a per-item quantity)
        if self.task == "seg":
            loss_sum = self._loss(out, target, cls).detach().double() * n
        else:
            loss_sum = F.mse_loss(out.float(), target.float(), reduction="sum").detach().double() / out[0].numel()
        store = self._eval.setdefault(dataloader_idx, {"loss": [], "index": [], "counts": [], "score": [],
                                                       "pixel_max": [], "se": []})
        store["loss"].append(torch.stack([loss_sum, torch.tensor(float(n), dtype=torch.float64, device=out.device)]))
        store["index"].append(batch["index"].long())
        if self.task == "seg":
            prob = torch.sigmoid(out.float())
            store["counts"].append(metrics.per_image_counts_torch(prob > self.threshold, target > 0.5))
            pixel_max = prob.flatten(1).amax(1)
            store["pixel_max"].append(pixel_max)
            store["score"].append(pixel_max if cls is None else torch.sigmoid(cls.float().reshape(-1)))
            store["has_cls"] = cls is not None
        else:
            store["se"].append(((out.float() - target.float()) ** 2).flatten(1).mean(1))

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.trainer is not None and self.trainer.world_size > 1:
            g = self.all_gather(t)
            return g.reshape(-1, *t.shape[1:])
        return t

    def on_validation_epoch_end(self) -> None:
        names = {0: "val", 1: "test"}
        results: dict[str, dict[str, Any]] = {}
        for idx, store in sorted(self._eval.items()):
            prefix = names.get(idx, f"eval{idx}")
            index = self._gather(torch.cat(store["index"])).cpu().numpy()
            res: dict[str, Any] = {}
            if self.task == "seg":
                counts = self._gather(torch.cat(store["counts"])).cpu().numpy()
                score = self._gather(torch.cat(store["score"])).cpu().numpy()
                pixel_max = self._gather(torch.cat(store["pixel_max"])).cpu().numpy()
                keep = metrics.dedup_gathered(index)
                index, counts, score, pixel_max = index[keep], counts[keep], score[keep], pixel_max[keep]
                labels = (counts[:, 2] > 0).astype(int)
                res = metrics.summarize(counts, scores=score, labels=labels)
                if store.get("has_cls"):  # an image-level head gave the scores
                    res["auc_pixel_max"] = metrics.auc(pixel_max, labels)
                res["_per_image"] = pd.DataFrame({
                    "index": index, "intersection": counts[:, 0], "pred_area": counts[:, 1],
                    "true_area": counts[:, 2], "score": score, "pixel_max": pixel_max})
            else:
                se = self._gather(torch.cat(store["se"])).cpu().numpy()
                keep = metrics.dedup_gathered(index)
                res = {"mse": float(np.mean(se[keep])) if keep.size else math.nan, "n_images": int(keep.size)}
            loss = self._gather(torch.stack(store["loss"]).sum(0, keepdim=True)).sum(0)
            res["loss"] = float(loss[0] / loss[1]) if float(loss[1]) else math.nan
            results[prefix] = res
            self.log(f"{prefix}_loss", res["loss"], prog_bar=(prefix == "val"), sync_dist=False,
                     add_dataloader_idx=False)
        self.eval_results = results
        if not self.trainer.sanity_checking:
            self.epoch_record = self._epoch_row(results)

    def finish_epoch_record(self) -> dict[str, Any]:
        """The epoch's row: evaluation results plus the mean training loss over all items.

        Called by :class:`EpochCSV` on every rank (the gather is collective)."""
        s = self._train_sum
        if self.trainer.world_size > 1:
            s = self.all_gather(s).reshape(-1, 2).sum(0)
        self.epoch_record["train_loss"] = float(s[0] / s[1]) if float(s[1]) else math.nan
        self.epoch_record["epoch"] = int(self.current_epoch)
        self.epoch_record["time_s"] = round(time.perf_counter() - self._epoch_t0, 3)
        return dict(self.epoch_record)

    def _epoch_row(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": int(self.current_epoch)}
        for split, res in results.items():
            row[f"{split}_loss"] = res.get("loss")
            for k, v in res.items():
                if k.startswith("_") or k == "loss":
                    continue
                row[f"{split}_{k}"] = v
        if self.task == "seg" and "test" in results:
            # the paper's Figure 5-7 panels (c) and (d): pooled Dice and IoU on the test split
            row["test_dice"] = results["test"]["dice_pooled"]
            row["test_iou"] = results["test"]["iou_pooled"]
        return row


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
        from pytorch_lightning.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401

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

    from .datamodule import PneumoDataModule
    from .seeding import seed_everything

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
    callbacks = [
        EarlyStopping(monitor="val_loss", mode="min", min_delta=cfg.min_delta, patience=cfg.patience),
        checkpoint, EpochCSV(out_dir / "epochs.csv"),
    ]
    trainer = make_trainer(cfg, out_dir, max_epochs, callbacks)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.eval_dataloaders(),
                ckpt_path=str(last) if resume and last.exists() else None)
    fit_s = time.perf_counter() - t0
    best = checkpoint.best_model_path or str(last)
    # evaluate the best checkpoint once more on val and test (the numbers of Table 4)
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    results = evaluate_module(cfg, module, dm, out_dir)
    if not trainer.is_global_zero:
        return {}
    epochs = pd.read_csv(out_dir / "epochs.csv") if (out_dir / "epochs.csv").exists() else pd.DataFrame()
    model_cpu = module.model.to("cpu")
    runio.atomic_torch_save(model_cpu.state_dict(), out_dir / "model.pt")
    summary = {
        "name": out_dir.name, "task": task,
        "best_checkpoint": str(Path(best).relative_to(out_dir)) if Path(best).is_relative_to(out_dir) else best,
        "best_epoch": int(epochs.loc[epochs["val_loss"].idxmin(), "epoch"]) if len(epochs) else None,
        "epochs_run": int(len(epochs)), "stopped_early": bool(trainer.current_epoch + 1 < max_epochs and len(epochs) < max_epochs),
        "fit_seconds": round(fit_s, 2), "val": results.get("val", {}), "test": results.get("test", {}),
        "data": {**getattr(dm, "source_info", {}), "protocol": cfg.protocol, "mean": getattr(dm, "mean", None),
                 "std": getattr(dm, "std", None),
                 "n_items": {s: int((dm.split["split"] == s).sum()) for s in ("train", "val", "test")}},
        "provenance": runio.provenance(cfg),
    }
    if extra:
        summary.update(extra)
    runio.atomic_write_json(out_dir / "metrics.json", summary)
    return summary


def evaluate_module(cfg: Config, module: PneumoModule, dm: Any, out_dir: Path | None = None) -> dict[str, Any]:
    """Run ``module`` on [val, test] with a fresh Trainer; write per-image rows if ``out_dir``."""
    trainer = make_trainer(cfg.replace(progress=False), out_dir or Path("."), max_epochs=1, for_eval=True)
    trainer.validate(module, dataloaders=dm.eval_dataloaders(), verbose=False)
    results = {}
    for split, res in module.eval_results.items():
        per = res.pop("_per_image", None)
        if per is not None and out_dir is not None and trainer.is_global_zero:
            table = dm.split.reset_index(drop=True)
            per = per.merge(table[["item", "src", "image_id", "has_pneumo", "aug"]], left_on="index",
                            right_on="item", how="left").drop(columns=["item"])
            runio.atomic_write_csv(out_dir / f"{split}_per_image.csv", per)
        results[split] = {k: v for k, v in res.items() if not k.startswith("_")}
    return results


# -- entry points -----------------------------------------------------------------------
def _start(cfg: Config) -> None:
    """Thread settings and seeds, before anything random happens (model initialisation)."""
    from .seeding import seed_everything

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)


def load_model_state(folder: Path | str) -> dict[str, torch.Tensor]:
    """The trained network's ``state_dict`` from a run folder (``model.pt``)."""
    p = Path(folder) / "model.pt"
    if not p.exists():
        raise WeightsError(f"{p} is missing: that run has not finished (run it first, or pass --resume)")
    return torch.load(p, map_location="cpu", weights_only=True)


def pretrain(cfg: Config, kind: str, out: Path | str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train one autoencoder of :data:`AE_KINDS` with MSE; the run folder is the task name.

    Kinds: ``xray`` (reconstruct the X-ray), ``mask`` (the mask), ``genesis`` (restore the
    clean X-ray from its Models Genesis distortion, skips on; folder ``ae_genesis``),
    ``xray_noskip`` (reconstruct the X-ray with every skip zeroed; ``ae_xray_noskip``).

    Also measures the copy-through trap: the test reconstruction error with the top skip
    connection zeroed, next to the normal one (recorded in ``metrics.json``; see
    :func:`copy_through`).
    """
    from .datamodule import PneumoDataModule
    from .models import ALL_SKIPS, UNet

    if kind not in AE_KINDS:
        raise ConfigError(f"autoencoder kind {kind!r} is unknown; valid: {', '.join(AE_KINDS)}")
    task = AE_KINDS[kind]
    out_dir = run_dir(cfg, task, out)
    _start(cfg)
    model = UNet(in_channels=1, out_channels=1, base_width=cfg.base_width, norm=cfg.unet_norm,
                 zero_skips=ALL_SKIPS if kind == "xray_noskip" else ())
    dm = PneumoDataModule(cfg)
    summary = fit(cfg, model, task, out_dir, cfg.ae_max_epochs, datamodule=dm, resume=resume)
    if summary:
        summary["copy_through"] = copy_through(model, dm, task)
        runio.atomic_write_json(out_dir / "metrics.json", summary)
    return summary


@torch.no_grad()
def copy_through(model: nn.Module, dm: Any, task: str, max_batches: int = 50) -> dict[str, float]:
    """Test MSE of an autoencoder with and without its top skip connection zeroed.

    A U-Net autoencoder can copy its input through the highest-resolution skip and learn
    little in its deep layers. If zeroing that skip barely raises the error, the deep path
    carries the reconstruction; a large ratio means the network mostly copies.

    Per task: the input is the mask (``ae_mask``), the X-ray, or for ``ae_genesis`` the
    distorted X-ray (the per-item distortion of validation) with the clean X-ray as target;
    the extra key ``mse_input_as_output`` is then the error of returning the distorted input
    unchanged. Skips the model already zeroes (``model.zero_skips``; every level for
    ``ae_xray_noskip``) stay zeroed in both passes, so for the no-skip autoencoder the two
    errors are the same (ratio 1: nothing to copy through).
    """
    model = model.eval()
    own = tuple(sorted(getattr(model, "zero_skips", ()) or ()))
    top = tuple(sorted(set(own) | {0}))
    sums = {"mse": 0.0, "mse_top_skip_zeroed": 0.0, "mse_identity_baseline": 0.0}
    if task == "ae_genesis":
        from .pretext import genesis_distort_items, item_seeds

        sums["mse_input_as_output"] = 0.0
    n = 0
    for b, batch in enumerate(dm.test_dataloader()):
        if b >= max_batches:
            break
        target = batch["mask"] if task == "ae_mask" else batch["image"]
        x = target
        if task == "ae_genesis":
            x = genesis_distort_items(target, item_seeds(batch["index"], EVAL_PRETEXT_SEED))
            sums["mse_input_as_output"] += float(F.mse_loss(x, target, reduction="sum"))
        sums["mse"] += float(F.mse_loss(model(x), target, reduction="sum"))
        sums["mse_top_skip_zeroed"] += float(F.mse_loss(model(x, zero_skips=top), target, reduction="sum"))
        sums["mse_identity_baseline"] += float(F.mse_loss(torch.zeros_like(target) + target.mean(), target,
                                                          reduction="sum"))
        n += target.numel()
    out: dict[str, Any] = {k: v / max(n, 1) for k, v in sums.items()}
    out["ratio_zeroed_over_normal"] = out["mse_top_skip_zeroed"] / max(out["mse"], 1e-12)
    if own:
        out["model_zero_skips"] = list(own)
    return out


def train_scenario(cfg: Config, scenario: str, out: Path | str | None = None,
                   ae_dir: Path | str | None = None, resume: bool = False) -> dict[str, Any]:
    """Fine-tune one of :data:`pneumolib.scenarios.ALL_SCENARIOS` (the paper's six and the
    extras) for segmentation.

    Args:
        ae_dir: folder holding the autoencoder runs (``ae_xray``, ``ae_mask``, ``ae_genesis``,
            ``ae_xray_noskip``; default: the profile's results folder); only read for
            scenarios that transfer autoencoder weights.
    """
    from .scenarios import ALL_SCENARIOS, build_model, transfer_report

    if scenario not in ALL_SCENARIOS:
        raise ConfigError(f"scenario {scenario!r} is unknown; valid: {', '.join(ALL_SCENARIOS)}")
    sc = ALL_SCENARIOS[scenario]
    base = Path(ae_dir) if ae_dir else paths.results_dir(cfg.name)
    ae_states = {}
    for kind in sorted(sc.needs):
        folder = base / AE_KINDS[kind]
        if not (folder / "model.pt").exists():
            raise WeightsError(
                f"scenario {scenario!r} needs the {kind} autoencoder, but {folder / 'model.pt'} is "
                f"missing: run `pneumo pretrain --kind {kind} --profile {cfg.name}` first")
        ae_states[kind] = load_model_state(folder)
    _start(cfg)
    model = build_model(scenario, cfg, ae_states)
    report = transfer_report(model, ae_states, sc)
    sources: dict[str, int] = {}
    for src in report.values():
        sources[src] = sources.get(src, 0) + 1
    extra = {"scenario": scenario, "label": sc.label, "paper": {"dice": sc.paper_dice, "iou": sc.paper_iou},
             "architecture": (f"smp Unet, {cfg.resnet_encoder} encoder" if sc.arch == "resnet50"
                              else f"paper U-Net, base width {cfg.base_width}, norm {cfg.unet_norm}"),
             "weights_source": getattr(model, "weights_source", None), "transfer": sources,
             "head_prior": getattr(model, "head_prior", 0.0),  # head bias set after the transfer
             "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
             "parameters": int(sum(p.numel() for p in model.parameters()))}
    if sc.cls_head:
        extra["cls_head"] = {"cls_weight": CLS_WEIGHT, "score": "sigmoid(class logit)"}
    return fit(cfg, model, "seg", run_dir(cfg, scenario, out), cfg.max_epochs, extra=extra, resume=resume)
