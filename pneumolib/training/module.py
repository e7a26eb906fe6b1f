"""The LightningModule of every run: losses, steps, exact evaluation across processes.

One :class:`PneumoModule` trains every model of the compendium:

- ``task="seg"``: segmentation, BCE + Dice from logits (the paper's loss); for models with
  an image-level head (``(mask_logits, class_logit)`` outputs), plus :data:`CLS_WEIGHT` x
  BCE of the class logit against "the mask is not empty";
- ``task="ae_xray"`` / ``"ae_mask"``: the autoencoders, MSE reconstruction of the input
  X-ray (normalised) or mask (0/1);
- ``task="ae_genesis"``: restoration of the clean (normalised) X-ray from its Models Genesis
  distortion (:func:`pneumolib.models.pretext.genesis_distort`, applied on the batch's device in
  the training / validation step), MSE;
- ``task="ae_xray_noskip"``: ``ae_xray`` with every skip connection of the U-Net zeroed
  (``model.zero_skips = ALL_SKIPS``), in training and evaluation.

Each epoch validates on ``[val, test]`` (the paper plots test metrics per epoch) and
gathers per-image counts across processes (exact under DDP: duplicates that the distributed
sampler pads with are dropped by their item index). The Trainer, the run folder and the
entry points are in :mod:`pneumolib.training.trainer` and :mod:`pneumolib.training.runs`.
"""

import math
import time
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from pneumolib import metrics
from pneumolib.errors import ConfigError

from .losses import DICE_EPS, bce_dice_loss

TASKS = ("seg", "ae_xray", "ae_mask", "ae_genesis", "ae_xray_noskip")


#: Weight of the image-level BCE for models with a classification head (scenario
#: ``random_cls``): loss = BCE(mask) + Dice(mask) + CLS_WEIGHT * BCE(class logit, mask
#: non-empty). Why 0.5: at initialisation (logits near 0) the segmentation loss is two
#: terms of order 1, the image-level BCE one term starting at ln 2 = 0.69; at 0.5 the head
#: adds 0.5 x 0.69 = 0.35, about a sixth of 2 + 0.35, enough to shape the shared encoder
#: towards the empty / not-empty decision without outweighing the mask objective that the
#: scenarios are compared on (weight 1 would double its part). A choice, not tuned.
CLS_WEIGHT = 0.5


#: Base of the per-item seeds of the Models Genesis distortion in validation, test and the
#: copy-through measurement: fixed, so every run (any seed, any device count, a later
#: ``pneumo evaluate``) scores restoration on the very same distorted images.
EVAL_PRETEXT_SEED = 20190613


# -- the LightningModule ----------------------------------------------------------------
class PneumoModule(pl.LightningModule):
    """Wraps any image-to-image model (``(B,1,H,W) -> (B,1,H,W)`` logits or reconstruction).

    Models may also return ``(mask_logits, class_logit)`` (an image-level head, segmentation
    only): the loss adds ``cls_weight`` x BCE of the class logit against "mask not empty",
    and the per-image ``score`` (image-level AUC) is ``sigmoid(class_logit)`` instead of the
    maximum pixel probability, which is kept as ``pixel_max`` (equal to ``score`` for
    plain models). :meth:`forward` returns whatever the model returns.

    Args:
        model: the network (see :mod:`pneumolib.models.unet`, :mod:`pneumolib.models.scenarios`).
        task: one of :data:`TASKS`. ``ae_xray_noskip`` sets ``model.zero_skips`` to every
            level (the model must be a :class:`~pneumolib.models.unet.UNet`).
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
            from pneumolib.models.unet import ALL_SKIPS

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
        #: set by :func:`pneumolib.training.trainer.evaluate_module` for autoencoders: also
        #: measure the copy-through trap (``_copy_through_terms``) in the evaluation pass
        self.measure_copy_through = False
        self._epoch_t0 = time.perf_counter()

    # frozen encoders keep their batch-norm statistics fixed in training mode too
    def train(self, mode: bool = True):  # noqa: D102
        super().train(mode)
        if mode:
            from pneumolib.models.scenarios import apply_frozen_bn_eval

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
            from pneumolib.models.pretext import genesis_distort, genesis_distort_items, item_seeds

            if train_step is not None:
                rank = self.trainer.global_rank if self._trainer is not None else 0
                g = self._generator(self.current_epoch, train_step, rank)
                return genesis_distort(x, g), x
            return genesis_distort_items(x, item_seeds(batch["index"], EVAL_PRETEXT_SEED)), x
        return x, (batch["mask"] if self.task == "seg" else x)

    @staticmethod
    def _split(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mask logits or reconstruction, class logit or None)`` of a model's output."""
        from pneumolib.models.unet import split_output

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

    @torch.no_grad()
    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, target = self._inputs(batch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out, cls = self._split(self.model(x))
        store = self._eval.setdefault(dataloader_idx, {k: [] for k in ("index", "terms", "counts", "score",
                                                                       "pixel_max", "copy")})
        store["index"].append(batch["index"].long())
        store["pixels"] = int(out[0].numel())
        # Per-item sums in float64, additive across batches and processes: the epoch loss
        # is computed from their totals (on_validation_epoch_end), so it does not depend on
        # the batch size or the process count.
        o, t = out.double(), target.double()
        if self.task == "seg":
            prob = torch.sigmoid(o)
            terms = [F.binary_cross_entropy_with_logits(o, t, reduction="none").flatten(1).sum(1),
                     (prob * t).flatten(1).sum(1), prob.flatten(1).sum(1), t.flatten(1).sum(1)]
            if cls is not None:
                has = (t.flatten(1).amax(1) > 0.5).double()
                terms.append(F.binary_cross_entropy_with_logits(cls.double().reshape(-1), has, reduction="none"))
            store["terms"].append(torch.stack(terms, 1))
            prob32 = torch.sigmoid(out.float())  # the metrics threshold float32, as inference does
            store["counts"].append(metrics.per_image_counts_torch(prob32 > self.threshold, target > 0.5))
            pixel_max = prob32.flatten(1).amax(1)
            store["pixel_max"].append(pixel_max)
            store["score"].append(pixel_max if cls is None else torch.sigmoid(cls.float().reshape(-1)))
            store["has_cls"] = cls is not None
        else:
            se = ((o - t) ** 2).flatten(1).mean(1)
            store["terms"].append(se[:, None])
            if self.measure_copy_through:
                store["copy"].append(self.copy_through_terms(x, t, se))

    def copy_through_terms(self, x: torch.Tensor, target: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
        """``(B, 6)`` float64 per item for the copy-through measurement
        (:func:`pneumolib.training.copythrough.copy_through_summary`): the MSE ``se`` of the normal
        pass, the MSE with the top skip zeroed (skips the model already zeroes stay zeroed),
        the sum and the sum of squares of the target (for the error of predicting the split's
        mean), the MSE of returning the input unchanged (meaningful for ``ae_genesis``, whose
        input is the distorted X-ray) and the pixels per item."""
        own = tuple(sorted(getattr(self.model, "zero_skips", ()) or ()))
        top = tuple(sorted(set(own) | {0}))
        t = target.double()
        zeroed = self.model(x, zero_skips=top).double()
        flat = t.flatten(1)
        cols = [se, ((zeroed - t) ** 2).flatten(1).mean(1), flat.sum(1), (flat ** 2).sum(1),
                ((x.double() - t) ** 2).flatten(1).mean(1), torch.full_like(se, float(flat.shape[1]))]
        return torch.stack(cols, 1)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.trainer is not None and self.trainer.world_size > 1:
            g = self.all_gather(t)
            return g.reshape(-1, *t.shape[1:])
        return t

    def _split_loss(self, terms: np.ndarray, pixels: int) -> float:
        """The epoch loss of a split from its per-item sums (padded duplicates dropped).

        ``seg``: BCE over every pixel of the split plus 1 - soft Dice with intersections and
        areas summed over the split (the training loss's two terms, taken over the whole
        split at once instead of per batch), plus ``cls_weight`` x the mean image-level BCE
        for models with a head. Autoencoders: the mean squared error over the split."""
        if terms.shape[0] == 0:
            return math.nan
        if self.task != "seg":
            return float(terms[:, 0].mean())
        tot = terms.sum(0)
        loss = tot[0] / (terms.shape[0] * pixels) + 1.0 - (2.0 * tot[1] + DICE_EPS) / (tot[2] + tot[3] + DICE_EPS)
        if terms.shape[1] > 4:
            loss += self.cls_weight * tot[4] / terms.shape[0]
        return float(loss)

    def on_validation_epoch_end(self) -> None:
        names = {0: "val", 1: "test"}
        results: dict[str, dict[str, Any]] = {}
        for idx, store in sorted(self._eval.items()):
            prefix = names.get(idx, f"eval{idx}")
            index = self._gather(torch.cat(store["index"])).cpu().numpy()
            keep = metrics.dedup_gathered(index)
            index = index[keep]
            terms = self._gather(torch.cat(store["terms"])).cpu().numpy()[keep]
            res: dict[str, Any] = {}
            if self.task == "seg":
                counts = self._gather(torch.cat(store["counts"])).cpu().numpy()[keep]
                score = self._gather(torch.cat(store["score"])).cpu().numpy()[keep]
                pixel_max = self._gather(torch.cat(store["pixel_max"])).cpu().numpy()[keep]
                labels = (counts[:, 2] > 0).astype(int)
                res = metrics.summarize(counts, scores=score, labels=labels)
                if store.get("has_cls"):  # an image-level head gave the scores
                    res["auc_pixel_max"] = metrics.auc(pixel_max, labels)
                res["_per_image"] = pd.DataFrame({
                    "index": index, "intersection": counts[:, 0], "pred_area": counts[:, 1],
                    "true_area": counts[:, 2], "score": score, "pixel_max": pixel_max})
            else:
                res = {"mse": float(terms[:, 0].mean()) if keep.size else math.nan, "n_images": int(keep.size),
                       "_per_image": pd.DataFrame({"index": index, "mse": terms[:, 0]})}
                if store["copy"]:
                    res["_copy_through"] = self._gather(torch.cat(store["copy"])).cpu().numpy()[keep]
            res["loss"] = self._split_loss(terms, store.get("pixels", 1))
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
