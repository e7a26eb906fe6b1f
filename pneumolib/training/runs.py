"""The entry points of training: :func:`pretrain` (an autoencoder, plus the copy-through
measurement) and :func:`train_scenario` (one initialisation of the segmentation U-Net),
both writing a run folder under ``results/<profile>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pneumolib import paths, runio
from pneumolib.config import Config
from pneumolib.errors import ConfigError, WeightsError

from .module import CLS_WEIGHT, EVAL_PRETEXT_SEED
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

    Also measures the copy-through trap: the test reconstruction error with the top skip
    connection zeroed, next to the normal one (recorded in ``metrics.json``; see
    :func:`copy_through`).
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
        from pneumolib.models.pretext import genesis_distort_items, item_seeds

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
