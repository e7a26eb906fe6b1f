"""Re-evaluate a finished run: its model on its own val and test splits, any devices.

Used to check that metrics do not depend on how many processes compute them (DDP gathers
exact per-image counts), and to score a run again after the data or a threshold changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pneumolib import runio
from pneumolib.config import Config, load_config
from pneumolib.errors import WeightsError


def run_config(run: Path | str, overrides: dict[str, Any] | None = None) -> Config:
    """The Config a run was trained with (``config.json``), with ``overrides`` applied."""
    run = Path(run)
    if not (run / "config.json").exists():
        raise WeightsError(f"{run / 'config.json'} is missing: {run} is not a pneumolib run folder")
    cfg = load_config(run / "config.json")
    return cfg.replace(**overrides) if overrides else cfg


def model_for_run(run: Path | str, cfg: Config) -> tuple[torch.nn.Module, str]:
    """An untrained network of the run's architecture and its task, from ``metrics.json``."""
    from pneumolib.models.resnet import config_kwargs, resnet50_unet
    from pneumolib.models.scenarios import get_scenario
    from pneumolib.models.unet import UNet

    run = Path(run)
    meta = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    task = meta.get("task", "seg")
    scenario = meta.get("scenario")
    sc = get_scenario(scenario) if scenario else None  # any registered scenario, paper's or extra
    cls_head = bool(getattr(sc, "cls_head", False))  # the image-level head of e.g. random_cls
    if sc is not None and sc.arch == "resnet50":
        return resnet50_unet(in_channels=1, classes=1, encoder_weights=None,
                             aux_params=dict(classes=1) if cls_head else None, **config_kwargs(cfg)), task
    return UNet(in_channels=1, out_channels=1, base_width=cfg.base_width, norm=cfg.unet_norm,
                aux_head=cls_head), task


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """``load_state_dict`` that explains an architecture mismatch instead of a raw traceback."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[:3]
        raise WeightsError(
            f"{where} does not fit this architecture ({type(model).__name__}): {' '.join(first)} ... "
            "Was it trained with another scenario, base_width or unet_norm? Evaluate it with the "
            "config it was trained with (its config.json).") from None


def evaluate_run(run: Path | str, overrides: dict[str, Any] | None = None,
                 out: Path | str | None = None) -> dict[str, Any]:
    """Metrics of a run's ``model.pt`` on its val and test splits; writes ``evaluation.json``."""
    from pneumolib.prep.datamodule import PneumoDataModule
    from pneumolib.training.module import PneumoModule
    from pneumolib.training.runs import load_model_state
    from pneumolib.training.trainer import evaluate_module

    run = Path(run)
    cfg = run_config(run, overrides)
    model, task = model_for_run(run, cfg)
    load_state_checked(model, load_model_state(run), run / "model.pt")
    dm = PneumoDataModule(cfg)
    dm.setup("validate")
    module = PneumoModule(model, task=task, lr=cfg.lr, threshold=cfg.threshold)
    results = evaluate_module(cfg, module, dm, None)
    out_path = Path(out) if out else run / "evaluation.json"
    if out_path.suffix != ".json":
        out_path = out_path / "evaluation.json"
    payload = {"run": str(run), "results": results,
               "provenance": runio.provenance(cfg)}
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        runio.atomic_write_json(out_path, payload)
    return results
