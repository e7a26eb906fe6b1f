"""The copy-through measurement of a U-Net autoencoder: how much of its reconstruction goes
through the highest-resolution skip connection instead of the deep path."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


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
