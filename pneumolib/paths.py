"""Every path pneumolib writes to, anchored in one place.

Outputs live under the project root (the folder holding ``pyproject.toml`` when running
from a checkout) or under ``$PNEUMO_HOME`` when that is set. The cache (resized arrays,
the built-in phantom data) lives under ``$PNEUMO_CACHE`` or ``<home>/cache``.
Inputs (a dataset folder, a weights file) are never written to.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def home() -> Path:
    """Root for outputs: ``$PNEUMO_HOME`` or the checkout this package lives in (else cwd)."""
    env = os.environ.get("PNEUMO_HOME")
    if env:
        return Path(env).expanduser().resolve()
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").exists():
        return root
    return Path.cwd().resolve()


def cache_dir() -> Path:
    """Cache of derived data (phantom sets, resized arrays, splits): safe to delete."""
    env = os.environ.get("PNEUMO_CACHE")
    return Path(env).expanduser().resolve() if env else home() / "cache"


def results_dir(profile: str) -> Path:
    """Run folders of one profile: ``results/<profile>/<run name>/``."""
    return home() / "results" / profile


def figures_dir(profile: str) -> Path:
    return home() / "figures" / profile


def papermill_dir(profile: str) -> Path:
    return home() / "papermill_runs" / profile


def notebooks_dir() -> Path:
    """The notebook templates: those of the checkout holding this package (inputs, not outputs,
    so ``$PNEUMO_HOME`` does not move them), else ``<home>/notebooks``."""
    checkout = PACKAGE_DIR.parent / "notebooks"
    return checkout if checkout.is_dir() else home() / "notebooks"
