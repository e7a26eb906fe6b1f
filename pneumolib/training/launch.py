"""Training from a notebook cell, in this process or, when it needs several, in a child.

Inside a Jupyter or papermill kernel IPython sets ``sys.ps1``, so Lightning takes the
process for interactive: it refuses ``strategy="ddp"`` (which relaunches the script it runs
in), and ``ddp_notebook`` forks workers whose results never come back to the kernel (and
aborts when anything touched CUDA before the fork). So a training cell calls
:func:`pretrain` or :func:`train_scenario` here, which

- trains **in the kernel** when one process does it (devices 1, no DDP-family strategy):
  the very same :func:`pneumolib.training.runs.pretrain` / ``train_scenario``, with
  Lightning's live progress bar in the cell;
- otherwise runs **the same training as** ``pneumo pretrain`` / ``pneumo train`` **in a
  child process**: the cell's Config is written to the run folder's ``config.json`` and the
  child is ``python -m pneumolib.cli train --config <run>/config.json --out <run> ...``, a
  plain script, so Lightning's own DDP launcher starts the other ranks, or, with
  ``cfg.launcher`` (e.g. ``srun``, a torchrun command), the cluster's does and Lightning
  joins them (its SLURM and torchelastic environments). The child's output streams into the cell as it comes; the summary is read
  back from the run folder's ``metrics.json``; a failure raises :class:`LaunchError` with
  the child's last lines and the command to rerun it by hand.

Deciding which way never initialises CUDA in the kernel: the number of visible GPUs comes
from ``torch.cuda.device_count()``, which asks NVML, and nothing here creates a tensor.
"""

from __future__ import annotations

import codecs
import collections
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from pneumolib import paths
from pneumolib.config import Config
from pneumolib.errors import ConfigError, PneumoError

__all__ = ["LaunchError", "child_command", "needs_child_process", "pretrain", "process_count",
           "run_child", "train_scenario"]

#: Lightning strategies that start their ranks themselves (a script relaunch or a fork):
#: from a kernel they must run in a child process.
MULTIPROCESS_STRATEGIES = ("ddp", "fsdp", "deepspeed")
#: Lines of the child's output kept for the error message.
TAIL_LINES = 40


class LaunchError(PneumoError, RuntimeError):
    """The training child process failed; the message holds its last lines and the command."""


def _visible_gpus() -> int:
    import torch

    return int(torch.cuda.device_count())  # NVML first: does not initialise the CUDA runtime


def process_count(cfg: Config) -> int:
    """How many training processes ``cfg`` asks Lightning for (devices x nodes).

    ``devices``: an integer, a list such as ``0,1`` or ``[0, 1]``, ``-1`` (all) or ``auto``;
    ``-1`` and ``auto`` count the visible GPUs when the accelerator may be a GPU (1 on a
    machine without one, or with ``accelerator=cpu``).
    """
    d = str(cfg.devices).strip().strip("[]() ")
    gpu_ok = cfg.accelerator in ("auto", "gpu", "cuda")
    if d in ("auto", "-1", ""):
        n = _visible_gpus() if gpu_ok else (1 if d != "-1" else os.cpu_count() or 1)
        n = max(n, 1)
    elif "," in d:
        n = len([x for x in d.split(",") if x.strip()])
    else:
        try:
            n = int(d)
        except ValueError:
            raise ConfigError(f"devices={cfg.devices!r} is not a number, a list like 0,1, -1 or auto") from None
    return max(n, 1) * max(int(cfg.num_nodes), 1)


def needs_child_process(cfg: Config) -> bool:
    """True when training ``cfg`` from a notebook kernel must happen in a child process:
    more than one process, or a strategy that launches processes itself."""
    strategy = str(cfg.strategy).lower()
    return process_count(cfg) > 1 or strategy.startswith(MULTIPROCESS_STRATEGIES)


def child_command(cfg: Config, command: str, out: Path, args: Sequence[str] = ()) -> list[str]:
    """``[*launcher, python, -m, pneumolib.cli, <command>, *args, --config <out>/config.json,
    --out <out>]``; ``launcher`` is ``cfg.launcher`` split like a shell would (``{python}``
    replaced by this interpreter), e.g. ``srun`` or a torchrun command."""
    prefix = [w.replace("{python}", sys.executable) for w in shlex.split(cfg.launcher or "")]
    return [*prefix, sys.executable, "-m", "pneumolib.cli", command, *args,
            "--config", str(Path(out) / "config.json"), "--out", str(out)]


def _rerun_hint(cmd: Sequence[str]) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in (("PNEUMO_HOME", str(paths.home())),
                                                         ("PNEUMO_CACHE", str(paths.cache_dir()))))
    return f"cd {shlex.quote(os.getcwd())} && {env} {shlex.join(cmd)}"


def run_child(cmd: Sequence[str], out: Path, stream: Any = None) -> dict[str, Any]:
    """Run ``cmd``, stream its output to ``stream`` (default ``sys.stdout``, i.e. the cell)
    as it comes, and return ``<out>/metrics.json``.

    The child runs in its own process group (its DDP ranks too), which is stopped when the
    kernel is interrupted.

    Raises:
        LaunchError: the child exited with a non-zero status or wrote no ``metrics.json``;
            the message has its last :data:`TAIL_LINES` lines and the command to rerun.
    """
    stream = stream or sys.stdout
    env = dict(os.environ, PYTHONUNBUFFERED="1", PNEUMO_HOME=str(paths.home()), PNEUMO_CACHE=str(paths.cache_dir()))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    line = ""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 8192)
            if not chunk:
                break
            text = decoder.decode(chunk)
            stream.write(text)
            stream.flush()
            for piece in (line + text).replace("\r", "\n").split("\n")[:-1]:
                if piece.strip():
                    tail.append(piece)
            line = (line + text).replace("\r", "\n").split("\n")[-1]
        rc = proc.wait()
    except BaseException:  # KeyboardInterrupt from the kernel, or anything else: stop the group
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise
    if line.strip():
        tail.append(line)
    metrics = Path(out) / "metrics.json"
    if rc != 0 or not metrics.exists():
        why = f"exited with status {rc}" if rc != 0 else f"exited without writing {metrics}"
        raise LaunchError(f"training in a child process {why}. Its last lines:\n"
                          + "\n".join(f"    {t}" for t in tail)
                          + f"\nRerun it by hand (same settings, same run folder):\n    {_rerun_hint(cmd)}")
    return json.loads(metrics.read_text())


def _launch(cfg: Config, command: str, out: Path, args: Sequence[str]) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from pneumolib import runio

    runio.atomic_write_text(out / "config.json", cfg.to_json() + "\n")  # fit writes the same again
    cmd = child_command(cfg, command, out, args)
    print(f"training in a child process ({process_count(cfg)} process(es), strategy {cfg.strategy}):\n  "
          + shlex.join(cmd), flush=True)
    return run_child(cmd, out)


def pretrain(cfg: Config, kind: str, out: Path | str | None = None, child: bool | None = None) -> dict[str, Any]:
    """:func:`pneumolib.training.runs.pretrain` from a notebook: in this process, or in a
    child when :func:`needs_child_process` (``child=True`` / ``False`` forces either way).

    Returns:
        The run's ``metrics.json`` content.
    """
    from . import runs

    if kind not in runs.AE_KINDS:
        raise ConfigError(f"autoencoder kind {kind!r} is unknown; valid: {', '.join(runs.AE_KINDS)}")
    if not (needs_child_process(cfg) if child is None else child):
        return runs.pretrain(cfg, kind, out=out)
    folder = runs.run_dir(cfg, runs.AE_KINDS[kind], out)
    return _launch(cfg, "pretrain", folder, ["--kind", kind])


def train_scenario(cfg: Config, scenario: str, out: Path | str | None = None, ae_dir: Path | str | None = None,
                   child: bool | None = None) -> dict[str, Any]:
    """:func:`pneumolib.training.runs.train_scenario` from a notebook: in this process, or in
    a child when :func:`needs_child_process` (``child=True`` / ``False`` forces either way).

    Returns:
        The run's ``metrics.json`` content.
    """
    from pneumolib.models.scenarios import ALL_SCENARIOS

    from . import runs

    if scenario not in ALL_SCENARIOS:
        raise ConfigError(f"scenario {scenario!r} is unknown; valid: {', '.join(ALL_SCENARIOS)}")
    if not (needs_child_process(cfg) if child is None else child):
        return runs.train_scenario(cfg, scenario, out=out, ae_dir=ae_dir)
    folder = runs.run_dir(cfg, scenario, out)
    args = ["--scenario", scenario] + (["--ae-dir", str(ae_dir)] if ae_dir else [])
    return _launch(cfg, "train", folder, args)
