"""pneumolib: the library behind the pneumothorax segmentation compendium.

Notebooks in ``notebooks/`` tell the story; this package does the work. Its subpackages
are the pipeline's stages, in the order the data flows: ``data`` (reading the dataset
layouts and the built-in phantom), ``prep`` (the paper's preparation, splits, cache,
batches), ``models`` (the U-Nets and the six initialisations), ``training`` (Lightning),
``evaluation`` (intervals, image-level decisions, predictors), ``reporting`` (tables,
figures, studies, the HTML report) and ``commands`` (what ``pneumo`` runs; ``cli`` parses
it). ``config``, ``paths``, ``errors``, ``seeding``, ``runio`` and ``metrics`` are shared by
all of them. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"


def _die_with_parent() -> None:
    """With ``PNEUMO_DIE_WITH_PARENT=1`` in the environment (set by ``pneumo reproduce`` for
    its notebook kernels and by :func:`pneumolib.training.launch.run_child` for the training
    processes it starts), ask Linux to SIGKILL this process when its parent dies
    (``PR_SET_PDEATHSIG``), so that no kernel or rank outlives the job that started it;
    exit at once if the parent is already gone. A no-op elsewhere."""
    import os
    import sys

    if os.environ.get("PNEUMO_DIE_WITH_PARENT") != "1" or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return
    if parent == 1 or os.getppid() != parent:  # the parent died before the request
        os._exit(1)


_die_with_parent()
