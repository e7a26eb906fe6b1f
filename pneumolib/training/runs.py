"""The entry points of training: :func:`pretrain` (an autoencoder, plus the copy-through
measurement) and :func:`train_scenario` (one initialisation of the segmentation U-Net),
both writing a run folder under ``results/<profile>/``.

They are the one entry per job: ``pneumo pretrain`` / ``pneumo train``, the notebooks'
training cells and every rank of a multi-process run call them. Each first asks
:func:`pneumolib.training.launch.needs_launch` whether the ranks must be started (and
supervised) in child processes, which then call the same function through ``pneumo``;
otherwise it trains here. Either way the run folder decides whether the run starts afresh,
resumes or is already finished (:mod:`pneumolib.training.runfolder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pneumolib import paths
from pneumolib.config import Config
from pneumolib.errors import ConfigError, WeightsError

from . import launch
from .copythrough import copy_through, copy_through_summary  # noqa: F401 - re-exported (their old home)
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
    from pneumolib.models.weights_io import load_checkpoint_file

    return load_checkpoint_file(p, "model weights", hint="Rerun that run or copy its model.pt again.")


def _launched(cfg: Config, child: bool | None) -> bool:
    return launch.needs_launch(cfg) if child is None else bool(child)


def pretrain(cfg: Config, kind: str, out: Path | str | None = None, resume: bool | None = None,
             child: bool | None = None) -> dict[str, Any]:
    """Train one autoencoder of :data:`AE_KINDS` with MSE; the run folder is the task name.

    Kinds: ``xray`` (reconstruct the X-ray), ``mask`` (the mask), ``genesis`` (restore the
    clean X-ray from its Models Genesis distortion, skips on; folder ``ae_genesis``),
    ``xray_noskip`` (reconstruct the X-ray with every skip zeroed; ``ae_xray_noskip``).

    The final evaluation pass also measures the copy-through trap on the test split, on the
    training device: the reconstruction error with the top skip connection zeroed, next to
    the normal one (``metrics.json`` ``copy_through``; :func:`copy_through_summary`).

    Args:
        resume: None (default) continues an interrupted run of the same settings, data and
            code, and reads a finished one back; False starts afresh.
        child: None decides with :func:`~pneumolib.training.launch.needs_launch`; True /
            False forces ranks in child processes / training here.

    Returns:
        The run's ``metrics.json`` content.
    """
    from pneumolib.models.unet import ALL_SKIPS, UNet
    from pneumolib.prep.datamodule import PneumoDataModule

    if kind not in AE_KINDS:
        raise ConfigError(f"autoencoder kind {kind!r} is unknown; valid: {', '.join(AE_KINDS)}")
    task = AE_KINDS[kind]
    out_dir = run_dir(cfg, task, out)
    if _launched(cfg, child):
        return launch.launch(cfg, "pretrain", out_dir, ["--kind", kind, *(["--fresh"] if resume is False else [])])
    _start(cfg)
    model = UNet(in_channels=1, out_channels=1, base_width=cfg.base_width, norm=cfg.unet_norm,
                 zero_skips=ALL_SKIPS if kind == "xray_noskip" else ())
    return fit(cfg, model, task, out_dir, cfg.ae_max_epochs, datamodule=PneumoDataModule(cfg), resume=resume)


def train_scenario(cfg: Config, scenario: str, out: Path | str | None = None,
                   ae_dir: Path | str | None = None, resume: bool | None = None,
                   child: bool | None = None) -> dict[str, Any]:
    """Fine-tune one of :data:`pneumolib.models.scenarios.ALL_SCENARIOS` (the paper's six and the
    extras) for segmentation.

    Args:
        ae_dir: folder holding the autoencoder runs (``ae_xray``, ``ae_mask``, ``ae_genesis``,
            ``ae_xray_noskip``; default: the profile's results folder); only read for
            scenarios that transfer autoencoder weights.
        resume, child: as for :func:`pretrain`.

    Returns:
        The run's ``metrics.json`` content.
    """
    from pneumolib.models.scenarios import ALL_SCENARIOS, build_model, transfer_report

    if scenario not in ALL_SCENARIOS:
        raise ConfigError(f"scenario {scenario!r} is unknown; valid: {', '.join(ALL_SCENARIOS)}")
    sc = ALL_SCENARIOS[scenario]
    if _launched(cfg, child):
        args = ["--scenario", scenario, *(["--ae-dir", str(ae_dir)] if ae_dir else []),
                *(["--fresh"] if resume is False else [])]
        return launch.launch(cfg, "train", run_dir(cfg, scenario, out), args)
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
