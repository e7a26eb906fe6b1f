"""Where a training runs: in this process, or in ranks started and supervised by a launcher.

:func:`pneumolib.training.runs.pretrain` / ``train_scenario`` ask :func:`needs_launch`
first, from the CLI, from a notebook cell and inside a rank alike (one entry per job):

- **in this process** when one process trains (devices 1, no DDP-family strategy), when
  this process already is a rank (torchrun, Lightning's launcher or srun started it:
  Lightning joins its peers), or, from a script, with ``launcher=lightning``;
- otherwise **in child processes**: ``python -m pneumolib.cli train --config <run>/config.json
  --out <run> ...`` started through the launcher (:func:`child_command`): by default
  PyTorch's elastic launcher, ``torch.distributed.run --standalone``, whose agent watches
  every rank and, when one fails, stops the others (SIGTERM, then SIGKILL after
  :data:`SHUTDOWN_TIMEOUT_S`) and names the failed rank; ``max_restarts`` > 0 lets it restart
  the group instead, and every restart resumes from ``checkpoints/last.ckpt``. A notebook
  kernel needs this for any DDP-family strategy (Lightning refuses to start DDP from an
  interactive process, and its fork-based ``ddp_notebook`` cannot return results).

:func:`run_child` owns the processes it starts: their output streams to the cell or the
terminal as it comes; each of them dies with its parent (``PR_SET_PDEATHSIG``: the launcher
when this process dies, a rank when the launcher dies; ``pneumolib/__init__.py`` sets it in
every pneumolib process started with :data:`DIE_ENV`), so a kernel that is killed, a
``pneumo reproduce`` that is terminated or a cell that is interrupted leaves no training
behind; on an interrupt it stops them itself (SIGTERM, the signal Slurm and torchrun expect,
then SIGKILL by pid after :data:`STOP_GRACE_S`) and reaps them. A failure raises
:class:`LaunchError` with the failed rank, its last lines and the command to rerun.

Deciding never initialises CUDA in a notebook kernel: the number of visible GPUs comes
from ``torch.cuda.device_count()``, which asks NVML, and nothing here creates a tensor.
"""

from __future__ import annotations

import codecs
import collections
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from pneumolib import paths
from pneumolib.config import Config, parse_devices
from pneumolib.errors import ConfigError, PneumoError

__all__ = ["LaunchError", "child_command", "in_launched_rank", "launch", "needs_launch",
           "process_count", "run_child"]

#: Lightning strategies that start their ranks themselves (a script relaunch or a fork).
MULTIPROCESS_STRATEGIES = ("ddp", "fsdp", "deepspeed")
#: Lines of the child's output kept for the error message.
TAIL_LINES = 60
#: Seconds torchrun's agent waits for ranks to end after SIGTERM before it SIGKILLs them.
SHUTDOWN_TIMEOUT_S = 10
#: Seconds :func:`run_child` waits after its SIGTERM before it SIGKILLs what it started.
STOP_GRACE_S = 5.0
#: Seconds the output is still read after the launcher exited (a rank may still be writing).
DRAIN_S = 5.0
#: Set in the environment of every process :func:`run_child` starts: die with the parent.
DIE_ENV = "PNEUMO_DIE_WITH_PARENT"


class LaunchError(PneumoError, RuntimeError):
    """The training ranks failed; the message names the rank, its last lines and the command."""


# -- deciding ------------------------------------------------------------------------------------
def _visible_gpus() -> int:
    import torch

    return int(torch.cuda.device_count())  # NVML first: does not initialise the CUDA runtime


def process_count(cfg: Config) -> int:
    """How many training processes ``cfg`` asks Lightning for (devices x nodes).

    ``devices`` (:func:`pneumolib.config.parse_devices`): a count, a list such as ``0,1``,
    ``-1`` (all) or ``auto``; ``-1`` and ``auto`` count the visible GPUs when the
    accelerator may be a GPU (``auto`` is 1 on a machine without one, or with
    ``accelerator=cpu``; ``-1`` on a CPU is one per core, as Lightning reads it).
    """
    d = parse_devices(cfg.devices)
    gpu_ok = cfg.accelerator in ("auto", "gpu", "cuda")
    if isinstance(d, list):
        n = len(d)
    elif d == "auto":
        n = _visible_gpus() if gpu_ok else 1
    elif d == -1:
        n = _visible_gpus() if gpu_ok and _visible_gpus() else os.cpu_count() or 1
    else:
        n = int(d)
    return max(n, 1) * max(int(cfg.num_nodes), 1)


def in_launched_rank() -> bool:
    """True inside a rank that a launcher started (torchrun, Lightning's launcher for ranks
    > 0, srun with several tasks, or any launcher that sets ``RANK`` and ``WORLD_SIZE``)."""
    env = os.environ
    return ("TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env)
            or env.get("LOCAL_RANK", "0") != "0"
            or ("SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1))


def _interactive() -> bool:
    return hasattr(sys, "ps1") or "ipykernel" in sys.modules


def _launcher(cfg: Config) -> str:
    return (cfg.launcher or "").strip() or "torchrun"


def needs_launch(cfg: Config) -> bool:
    """True when training ``cfg`` here must start its ranks in child processes."""
    if in_launched_rank():
        return False
    strategy = str(cfg.strategy).lower()
    multi = process_count(cfg) > 1
    if _interactive():
        return multi or strategy.startswith(MULTIPROCESS_STRATEGIES)
    return multi and _launcher(cfg) != "lightning"


def child_command(cfg: Config, command: str, out: Path, args: Sequence[str] = ()) -> list[str]:
    """The command that trains ``cfg`` in ranks: ``[*launcher, python, -m, pneumolib.cli,
    <command>, *args, --config <out>/config.json, --out <out>]``.

    Launchers: ``torchrun`` (default) -> ``python -m torch.distributed.run --standalone
    --nproc-per-node N --max-restarts R ...`` (one machine); ``lightning`` -> no prefix
    (Lightning's launcher starts the ranks); otherwise ``cfg.launcher`` split like a shell would
    (``{python}`` replaced by this interpreter), with ``--kill-on-bad-exit=1`` added after
    ``srun`` (Slurm then ends every task when one fails).

    Raises:
        ConfigError: several nodes without a launcher that reaches them (srun, or torchrun
            started on every node by you).
    """
    launcher = _launcher(cfg)
    script = ["-m", "pneumolib.cli", command, *args, "--config", str(Path(out) / "config.json"), "--out", str(out)]
    if launcher == "torchrun":
        if int(cfg.num_nodes) > 1:
            raise ConfigError(f"num_nodes={cfg.num_nodes}: the default launcher starts ranks on this machine only; "
                              "set launcher=srun inside a SLURM allocation, or start torchrun on every node "
                              "yourself (README, 'On a cluster')")
        n = process_count(cfg)
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                "--max-restarts", str(int(cfg.max_restarts)), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S),
                "--tee", "3", *script]
    if launcher == "lightning":
        return [sys.executable, *script]
    prefix = [w.replace("{python}", sys.executable) for w in shlex.split(launcher)]
    if prefix and Path(prefix[0]).name == "srun" and not any(w.startswith(("--kill-on-bad-exit", "-K"))
                                                             for w in prefix):
        prefix.insert(1, "--kill-on-bad-exit=1")
    return [*prefix, sys.executable, *script]


# -- owning the processes ----------------------------------------------------------------------
#: Run by ``python -c`` in front of a launcher that is not pneumolib (torchrun, srun): set
#: the parent-death signal, then become the launcher (the setting survives ``exec``).
_GUARD = ("import ctypes,os,sys;ctypes.CDLL(None).prctl(1,int(sys.argv[1]),0,0,0);"
          "os.getppid()==int(sys.argv[2]) or os._exit(1);os.execvp(sys.argv[3],sys.argv[3:])")


def _guarded(cmd: Sequence[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-c", _GUARD, str(int(signal.SIGTERM)), str(os.getpid()), *cmd]


def _rerun_hint(cmd: Sequence[str]) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in (("PNEUMO_HOME", str(paths.home())),
                                                         ("PNEUMO_CACHE", str(paths.cache_dir()))))
    return f"cd {shlex.quote(os.getcwd())} && {env} {shlex.join(cmd)}"


class _Tree:
    """The processes started for one run, remembered by pid (with their start times, so a
    reused pid is never signalled) while they run, to end whatever outlives the launcher."""

    def __init__(self, root: int):
        import psutil

        self.root = psutil.Process(root)
        self.known: dict[int, Any] = {}

    def scan(self) -> None:
        import psutil

        try:
            for p in self.root.children(recursive=True):
                self.known.setdefault(p.pid, p)
        except psutil.Error:
            pass

    def alive(self) -> list[Any]:
        import psutil

        out = []
        for p in self.known.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def kill(self, pid: int | None = None) -> None:
        """SIGKILL every remembered process (or only ``pid``, when it is one of them)."""
        import psutil

        for p in self.known.values() if pid is None else [self.known[pid]] if pid in self.known else []:
            try:
                if p.is_running():
                    p.kill()
            except psutil.Error:
                pass


def _stop(proc: subprocess.Popen, tree: _Tree, grace_s: float) -> None:
    """End a run: SIGTERM to the launcher (torchrun and srun stop their ranks on it), SIGKILL
    to everything it started after ``grace_s``, then reap. Ctrl-C while waiting goes straight
    to the SIGKILL; the kill itself runs with SIGINT blocked, so it cannot be skipped."""
    tree.scan()
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            tree.scan()
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        blocked = hasattr(signal, "pthread_sigmask")
        if blocked:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            tree.scan()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            tree.kill()
            proc.wait()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)


#: torchrun's agent announcing that it stops a rank (after another failed). It then waits 30 s
#: before SIGKILL whatever ``--shutdown-timeout`` says (torch 2.x ``_stop_workers``); a rank
#: that cannot react (stopped, or blocked in a collective) is SIGKILLed here after
#: :data:`STOP_GRACE_S` instead.
_CLOSING = re.compile(r"Sending process (\d+) closing signal")
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)", re.M)
_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.M)
_PREFIX = re.compile(r"^\[(?:[a-z]+)(\d+)\]:")


def _failure_headline(lines: Sequence[str]) -> tuple[str, int | None]:
    """``("rank 1 (local rank 1) failed first: exit code -9 (SIGKILL)", 1)`` from torchrun's
    failure summary; ``("", None)`` when there is none."""
    text = "\n".join(lines)
    i = text.rfind("Root Cause")
    if i < 0:
        return "", None
    rank, code = _RANK.search(text, i), _EXIT.search(text, i)
    if not rank:
        return "", None
    what = ""
    if code:
        c = int(code.group(1))
        what = f": exit code {c}" + (f" ({signal.Signals(-c).name})" if c < 0 and -c in signal.valid_signals() else "")
    return f"rank {rank.group(1)} (local rank {rank.group(2)}) failed first{what}", int(rank.group(2))


def run_child(cmd: Sequence[str], out: Path, stream: Any = None, grace_s: float = STOP_GRACE_S) -> dict[str, Any]:
    """Run ``cmd``, stream its output to ``stream`` (default ``sys.stdout``, i.e. the cell)
    as it comes, and return ``<out>/metrics.json``.

    Raises:
        LaunchError: the launcher exited with a non-zero status or no ``metrics.json`` was
            written; the message names the failed rank (torchrun's summary), that rank's
            last lines, and the command to rerun.
        KeyboardInterrupt: the cell or the command was interrupted; every process started
            for the run has been ended (the run resumes from its checkpoint when rerun).
    """
    import json

    stream = stream or sys.stdout
    env = dict(os.environ, PYTHONUNBUFFERED="1", PNEUMO_HOME=str(paths.home()), PNEUMO_CACHE=str(paths.cache_dir()),
               PNEUMO_HEADLESS="1", **{DIE_ENV: "1"})
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    per_rank: dict[int, collections.deque[str]] = collections.defaultdict(lambda: collections.deque(maxlen=20))
    line = ""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    proc = subprocess.Popen(_guarded(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    tree = _Tree(proc.pid)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        exited_at, last_scan = None, 0.0
        closing: dict[int, float] = {}
        while True:
            if sel.select(timeout=0.5):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                text = decoder.decode(chunk)
                stream.write(text)
                stream.flush()
                pieces = (line + text).replace("\r", "\n").split("\n")
                for p in pieces[:-1]:
                    if p.strip():
                        tail.append(p)
                        if m := _PREFIX.match(p):
                            per_rank[int(m.group(1))].append(p)
                        elif m := _CLOSING.search(p):
                            closing.setdefault(int(m.group(1)), time.monotonic())
                line = pieces[-1]
            now = time.monotonic()
            if now - last_scan > 1.0:
                tree.scan()
                last_scan = now
            for pid, since in list(closing.items()):
                if now - since > grace_s:
                    tree.kill(pid)
                    del closing[pid]
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_S:
                break  # the launcher is gone; whatever still holds the pipe is ended below
        sel.close()
        rc = proc.wait()
    except BaseException:  # KeyboardInterrupt from the kernel or a signal: end the whole run
        _stop(proc, tree, grace_s)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    leftovers = tree.alive()
    if leftovers:
        tree.kill()
    if line.strip():
        tail.append(line)
    metrics = Path(out) / "metrics.json"
    if rc != 0 or not metrics.exists():
        lines = list(tail)
        headline, local = _failure_headline(lines)
        ranked = list(per_rank.get(local, ())) if local is not None else []
        why = f"exited with status {rc}" if rc != 0 else f"exited without writing {metrics}"
        msg = f"training in child processes {why}" + (f"; {headline}" if headline else "") + "."
        if any("Timed out" in t or "collective operation timeout" in t for t in lines):
            msg += ("\nA collective timed out: a peer rank stopped responding for longer than ddp_timeout_s "
                    "(the rank that did not fail is the one that hung).")
        if ranked:
            msg += "\nThat rank's last lines:\n" + "\n".join(f"    {t}" for t in ranked)
        msg += "\nThe last lines of the run:\n" + "\n".join(f"    {t}" for t in lines[-TAIL_LINES:])
        if leftovers:
            msg += f"\n({len(leftovers)} process(es) still running after the launcher exited were killed.)"
        raise LaunchError(msg + f"\nRerun it by hand (same settings, same run folder; it resumes):\n    "
                          f"{_rerun_hint(cmd)}")
    return json.loads(metrics.read_text())


def launch(cfg: Config, command: str, out: Path, args: Sequence[str]) -> dict[str, Any]:
    """Write ``<out>/config.json``, start the ranks through :func:`child_command` and wait
    for them (:func:`run_child`). Returns the run's ``metrics.json``."""
    from pneumolib import runio

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runio.atomic_write_text(out / "config.json", cfg.to_json() + "\n")  # the ranks read it; fit judges the folder
    cmd = child_command(cfg, command, out, args)
    print(f"training in child processes ({process_count(cfg)} process(es), launcher {_launcher(cfg)}, "
          f"strategy {cfg.strategy}):\n  " + shlex.join(cmd), flush=True)
    return run_child(cmd, out)
