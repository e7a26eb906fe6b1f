"""The entry points of training: :func:`pretrain` (an autoencoder, plus the copy-through
measurement) and :func:`train_scenario` (one initialisation of the segmentation U-Net),
both writing a run folder under ``results/<profile>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumolib import paths
from pneumolib.config import Config
from pneumolib.errors import ConfigError, WeightsError

from .module import CLS_WEIGHT
from .trainer import fit, run_dir

#: ``pneumo pretrain --kind`` -> task name, which is also the run folder's name.
AE_KINDS = {"xray": "ae_xray", "mask": "ae_mask", "genesis": "ae_genesis", "xray_noskip": "ae_xray_noskip"}


def _start(cfg: Config) -> None:
    """Thread settings and seeds, before anything random happens (model initialisation)."""
    from pneumolib.seeding import seed_everything

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

    The final evaluation pass also measures the copy-through trap on the test split, on the
    training device: the reconstruction error with the top skip connection zeroed, next to
    the normal one (``metrics.json`` ``copy_through``; :func:`copy_through_summary`).
    """
    from pneumolib.models.unet import ALL_SKIPS, UNet
    from pneumolib.prep.datamodule import PneumoDataModule

    if kind not in AE_KINDS:
        raise ConfigError(f"autoencoder kind {kind!r} is unknown; valid: {', '.join(AE_KINDS)}")
    task = AE_KINDS[kind]
    out_dir = run_dir(cfg, task, out)
    _start(cfg)
    model = UNet(in_channels=1, out_channels=1, base_width=cfg.base_width, norm=cfg.unet_norm,
                 zero_skips=ALL_SKIPS if kind == "xray_noskip" else ())
    return fit(cfg, model, task, out_dir, cfg.ae_max_epochs, datamodule=PneumoDataModule(cfg), resume=resume)


def copy_through_summary(terms: np.ndarray, task: str, model: nn.Module) -> dict[str, Any]:
    """The copy-through measurement of an autoencoder from per-item terms.

    A U-Net autoencoder can copy its input through the highest-resolution skip and learn
    little in its deep layers. If zeroing that skip barely raises the error, the deep path
    carries the reconstruction; a large ratio means the network mostly copies.

    Args:
        terms: ``(N, 6)`` rows of :meth:`~pneumolib.training.module.PneumoModule.copy_through_terms`
            over the test split (gathered across processes, duplicates dropped): computed in
            the final evaluation pass on the training device.
        task: the autoencoder's task (``ae_genesis`` adds ``mse_input_as_output``).
        model: the network (its own ``zero_skips`` are reported).

    Returns:
        ``mse`` (test MSE), ``mse_top_skip_zeroed``, ``ratio_zeroed_over_normal``,
        ``mse_identity_baseline`` (predicting the test split's mean value everywhere), for
        ``ae_genesis`` ``mse_input_as_output`` (returning the distorted input unchanged),
        ``n_images``, and ``model_zero_skips`` when the model zeroes skips itself (for the
        no-skip autoencoder both errors are the same: ratio 1, nothing to copy through).
    """
    terms = np.asarray(terms, dtype=np.float64)
    n_pix = float(terms[:, 5].sum())
    mean = terms[:, 2].sum() / n_pix
    out: dict[str, Any] = {"mse": float(terms[:, 0].mean()), "mse_top_skip_zeroed": float(terms[:, 1].mean()),
                           "mse_identity_baseline": float(terms[:, 3].sum() / n_pix - mean ** 2),
                           "n_images": int(terms.shape[0])}
    if task == "ae_genesis":
        out["mse_input_as_output"] = float(terms[:, 4].mean())
    out["ratio_zeroed_over_normal"] = out["mse_top_skip_zeroed"] / max(out["mse"], 1e-12)
    own = tuple(sorted(getattr(model, "zero_skips", ()) or ()))
    if own:
        out["model_zero_skips"] = list(own)
    return out


@torch.no_grad()
def copy_through(model: nn.Module, batches: Any, task: str) -> dict[str, Any]:
    """:func:`copy_through_summary` of ``model`` over ``batches`` (an iterable of batch dicts,
    or anything with a ``test_dataloader()``), in this process on the model's device:
    the same per-item terms as the evaluation pass of training, without a Trainer."""
    from .module import PneumoModule

    module = PneumoModule(model, task=task).eval()
    loader = batches.test_dataloader() if hasattr(batches, "test_dataloader") else batches
    rows = []
    for batch in loader:
        x, target = module._inputs(batch)
        out = model(x).double()
        se = ((out - target.double()) ** 2).flatten(1).mean(1)
        rows.append(module.copy_through_terms(x, target, se).cpu().numpy())
    return copy_through_summary(np.concatenate(rows), task, model)


def train_scenario(cfg: Config, scenario: str, out: Path | str | None = None,
                   ae_dir: Path | str | None = None, resume: bool = False) -> dict[str, Any]:
    """Fine-tune one of :data:`pneumolib.models.scenarios.ALL_SCENARIOS` (the paper's six and the
    extras) for segmentation.

    Args:
        ae_dir: folder holding the autoencoder runs (``ae_xray``, ``ae_mask``, ``ae_genesis``,
            ``ae_xray_noskip``; default: the profile's results folder); only read for
            scenarios that transfer autoencoder weights.
    """
    from pneumolib.models.scenarios import ALL_SCENARIOS, build_model, transfer_report

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
