"""Seeds that really seed: Python, NumPy, torch, DataLoader workers and albumentations.

``seed_everything(seed)`` is the one call a run makes. Randomness that must not depend on
call order (split angles, phantom draws) comes from :func:`rng_for`, a NumPy generator
derived from the seed and a few named keys, so adding a draw in one place never shifts
the numbers drawn in another.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

__all__ = ["seed_everything", "rng_for", "worker_init_fn"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global state and torch (CPU and CUDA).

    Uses Lightning's ``seed_everything(seed, workers=True)``, which also sets
    ``PL_GLOBAL_SEED`` / ``PL_SEED_WORKERS`` so a Trainer seeds DataLoader workers. Our own
    loaders pass :func:`worker_init_fn` explicitly as well (it also reseeds the online
    augmentation of each worker, which Lightning does not know about).
    """
    import pytorch_lightning as pl

    os.environ["PYTHONHASHSEED"] = str(seed)  # child processes only; ours is already running
    pl.seed_everything(int(seed), workers=True, verbose=False)


def _key_int(key: object) -> int:
    """A stable (run-to-run, machine-to-machine) 32-bit integer for a key."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= int(key) < 2**32:
        return int(key)
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """A NumPy generator determined by ``seed`` and ``keys`` only.

    Args:
        seed: the run's seed (``Config.seed``).
        keys: names or numbers that make the stream independent of others with the same
            seed, e.g. ``rng_for(42, "split", "angles")``. Strings are hashed with SHA-256
            (not Python's salted ``hash``), so streams are identical across processes.

    Returns:
        ``np.random.Generator`` (PCG64) seeded from ``SeedSequence([seed, *keys])``.
    """
    entropy = [int(seed) % 2**63] + [_key_int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: distinct, reproducible seeds for every worker.

    Seeds torch, ``random`` and NumPy from the loader's base seed, the worker id and the
    process rank (Lightning's scheme), then reseeds the dataset's albumentations pipeline
    (albumentations 2.x keeps its own generator, copied identically into every worker
    otherwise) through the dataset's ``worker_init(seed)`` (or ``reseed(seed)``) method.
    """
    import torch
    from lightning_fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    dataset = getattr(info, "dataset", None)
    seed = int(torch.initial_seed() % 2**32)
    if dataset is not None and hasattr(dataset, "worker_init"):
        dataset.worker_init(seed)  # pneumolib's datasets: reseed + per-worker set-up
    elif dataset is not None and hasattr(dataset, "reseed"):
        dataset.reseed(seed)
    # (torch already runs workers single-threaded. Do NOT call cv2.setNumThreads here: in a
    # forked child it waits forever for the parent's pool threads, which fork did not copy.)
