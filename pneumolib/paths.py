"""Every path pneumolib writes to, anchored in one place.

Outputs live under the project root (the folder holding ``pyproject.toml`` when running
from a checkout) or under ``$PNEUMO_HOME`` when that is set. The cache (resized arrays,
the built-in phantom data) lives under ``$PNEUMO_CACHE`` or ``<home>/cache``.
Inputs (a dataset folder, a weights file) are never written to.
"""

from __future__ import annotations

import os
import sys
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


# -- who watches: headless or interactive (pneumolib.training.progress) --------------------------
#: The environment variable that decides headless (1) or interactive (0); unset: guessed.
HEADLESS_ENV = "PNEUMO_HEADLESS"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _in_ipython_kernel() -> bool:
    """True inside a Jupyter / papermill kernel (an IPython shell with a kernel)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - an odd IPython: take it for no kernel
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _stdout_is_tty() -> bool:
    try:
        return bool(sys.stdout is not None and sys.stdout.isatty())
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def is_headless() -> bool:
    """Whether nobody watches this run live (see the module's docstring for the rule).

    Raises:
        ConfigError: ``PNEUMO_HEADLESS`` holds something other than 1/0 (true/false, ...).
    """
    value = os.environ.get(HEADLESS_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if value:
        from pneumolib.errors import ConfigError

        raise ConfigError(f"{HEADLESS_ENV}={os.environ[HEADLESS_ENV]!r} is neither 1 (headless) nor 0 (interactive); "
                          "unset it to let pneumolib decide")
    return not (_in_ipython_kernel() or _stdout_is_tty())
