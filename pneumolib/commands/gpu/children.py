"""What the GPU check runs apart from its own thread, each stopped at its deadline: every
part in a worker thread (:func:`run_within`), the subprocesses (the ``compile`` row, the
phantom and the real ``paper`` training epoch), and the probes they need (a C compiler, the
phantom's speed)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .budget import KILL_WAITS_S
from .measure import Settings, measure


# -- every part in a worker thread with a deadline ------------------------------------------
@dataclass
class Outcome:
    """What :func:`run_within` saw: the part's value, or its exception (and traceback), or
    ``over``: it was still running at its deadline (abandoned, its children killed)."""

    value: Any = None
    error: BaseException | None = None
    traceback: str = ""
    over: bool = False


#: Worker threads abandoned at their deadline that may still run: ``(part, thread)``.
_ABANDONED: list[tuple[str, threading.Thread]] = []


def abandoned_alive() -> list[str]:
    """The parts whose abandoned worker threads are still running."""
    return [part for part, t in _ABANDONED if t.is_alive()]


def run_within(fn: Callable[[threading.Event], Any], deadline: float, clock: Callable[[], float] = time.monotonic,
               part: str = "part", poll_s: float = 0.25) -> Outcome:
    """Run ``fn(stop)`` in a daemon thread and wait for it until ``deadline`` (a ``clock()``
    value) at the latest. A part still running then, or one that ended after it (a fake
    clock), is ``over``: ``stop`` is set (timed loops end at their next step), every child
    process group is killed (SIGKILL) and the thread is left behind; a value that comes
    later is dropped."""
    stop = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(stop)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, who records it
            box["error"], box["traceback"] = e, traceback.format_exc()[-3000:]

    t = threading.Thread(target=target, name=f"gpu-check {part}", daemon=True)
    t.start()
    while t.is_alive():
        left = deadline - clock()
        if left <= 0:
            break
        t.join(timeout=min(left, poll_s))
    if t.is_alive() or clock() > deadline:
        stop.set()
        end_children(signal.SIGKILL)
        if t.is_alive():
            _ABANDONED.append((part, t))
        return Outcome(over=True)
    return Outcome(value=box.get("value"), error=box.get("error"), traceback=box.get("traceback", ""))


# -- probes: a C compiler for torch.compile, the phantom's speed ----------------------------
NO_CC_REASON = "no C compiler (torch.compile needs one; install gcc)"


def find_c_compiler() -> str | None:
    """The C compiler that torch.compile's Triton back end would use (``$CC``, else ``gcc``,
    else ``clang``: Triton's own order), or None."""
    for name in (os.environ.get("CC"), "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


_NO_CC_PATTERNS = re.compile(r"failed to find c compiler|specify via cc environment|invalidcxxcompiler|"
                             r"no working c(\+\+)? compiler|\b(gcc|cc|clang): (command )?not found", re.IGNORECASE)


def is_no_c_compiler(text: str | None) -> bool:
    """Whether an error text or log says that no C compiler was found."""
    return bool(text and _NO_CC_PATTERNS.search(text))


def phantom_probe(work: Path, size: int, n: int = 2) -> float:
    """Seconds per image of writing the ``siim-dicom`` phantom at ``size`` px in this process
    (one CPU core), from ``n`` images written to a scratch folder under ``work``."""
    from pneumolib.data.phantom import write_phantom

    out = Path(work) / f"phantom-probe-s{size}"
    t0 = time.perf_counter()
    write_phantom(out, n=n, size=size, workers=0, layout="siim-dicom", progress=False, overwrite=True)
    secs = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return secs / n


# -- subprocesses: the compile row and the real training epoch ----------------------------
def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child ``python``: this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.update(extra or {})
    return env


#: Process groups of the running children (their own sessions, so that a timeout can end a
#: whole DDP group): ended by :func:`end_children` when this process is told to stop.
_CHILD_GROUPS: set[int] = set()


def end_children(sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to every running child's process group."""
    for pgid in list(_CHILD_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def on_sigterm(signum, frame):  # pragma: no cover - exercised by `timeout` on the GPU box
    end_children(signal.SIGTERM)
    raise SystemExit(128 + signum)


def run_subprocess(cmd: list[str], timeout_s: float, log: Path, env: dict[str, str] | None = None,
                   clock: Callable[[], float] = time.monotonic,
                   kill_waits_s: tuple[float, float] = KILL_WAITS_S) -> dict[str, Any]:
    """Run ``cmd`` in its own process group with output to ``log``; on timeout the whole
    group (DDP workers included) is terminated, then killed: it returns at most
    ``timeout_s + sum(kill_waits_s)`` seconds after the start (a group that survives SIGKILL
    is left behind)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = clock()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env or _child_env(),
                                start_new_session=True)
        _CHILD_GROUPS.add(proc.pid)
        try:
            rc = proc.wait(timeout=max(0.1, timeout_s))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, wait_s in zip((signal.SIGTERM, signal.SIGKILL), kill_waits_s):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
        finally:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt, SystemExit): leave no orphans
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            _CHILD_GROUPS.discard(proc.pid)
    return {"rc": rc, "timed_out": timed_out, "seconds": round(clock() - t0, 2), "log": str(log)}


def _tail(path: str | Path, n: int = 2500) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


ROW_MARK = "GPU_CHECK_ROW "


def _child_measure() -> None:  # pragma: no cover - runs in the compile subprocess, on a GPU
    """Entry of the compile subprocess: ``sys.argv[1]`` is a JSON spec; prints one row."""
    spec = json.loads(sys.argv[1])
    s = Settings(**spec.pop("settings"))
    row = measure(spec["arch"], spec["precision"], spec["channels_last"], s, torch.device(spec.get("device", "cuda")),
                  cudnn_benchmark=spec.get("cudnn_benchmark", False), compile=spec.get("compile", True),
                  eval_too=False)
    print(ROW_MARK + json.dumps(row), flush=True)


def compile_row(arch: str, precision: str, channels_last: bool, s: Settings, timeout_s: float, work: Path,
                python: str = sys.executable, device: str = "cuda") -> dict[str, Any]:
    """The ``model.compile()`` row, measured in a subprocess killed after ``timeout_s``."""
    spec = {"arch": arch, "precision": precision, "channels_last": channels_last, "compile": True,
            "settings": asdict(s), "device": device}
    code = "from pneumolib.commands.gpu.children import _child_measure; _child_measure()"
    log = work / f"compile-{arch}.log"
    run = run_subprocess([python, "-c", code, json.dumps(spec)], timeout_s, log)
    for line in _tail(log, 200000).splitlines()[::-1]:
        if line.startswith(ROW_MARK):
            row = json.loads(line[len(ROW_MARK):])
            row["subprocess_seconds"] = run["seconds"]
            return row
    base = {"arch": arch, "precision": precision, "channels_last": channels_last, "compile": True,
            "subprocess_seconds": run["seconds"]}
    if run["timed_out"]:
        return {**base, "timed_out": True,
                "error": f"compiling and timing did not finish within {timeout_s:.0f} s (killed)"}
    tail = _tail(log)
    if is_no_c_compiler(tail):
        return {**base, "no_c_compiler": True, "error": NO_CC_REASON, "log_tail": tail}
    return {**base, "error": f"the compile subprocess exited with status {run['rc']}", "log_tail": tail}


def _read_epochs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: (float(v) if k != "epoch" else int(float(v))) for k, v in r.items()
                 if k in ("epoch", "time_s", "train_loss", "val_loss") and v not in ("", None)}
                for r in csv.DictReader(fh)]


def run_epoch(work: Path, n_images: int, devices: int, epochs: int, timeout_s: float, size: int = 512,
              batch_size: int = 32, python: str = sys.executable, extra_sets: tuple[str, ...] = (),
              runner: Callable[..., dict[str, Any]] = run_subprocess,
              clock: Callable[[], float] = time.monotonic, phantom_timeout_s: float | None = None) -> dict[str, Any]:
    """A short real ``paper``-profile training run: ``pneumo data phantom --layout siim-dicom``
    then ``pneumo train --scenario random --profile paper`` with ``max_epochs=epochs`` on
    ``devices`` GPUs (DDP when more than one), each a subprocess; read back ``epochs.csv``
    and ``metrics.json``. The last epoch is the steady one (the first pays for start-up:
    cuDNN's first calls, worker processes). The phantom's subprocess is killed after
    ``phantom_timeout_s`` (default: ``timeout_s``), the whole after ``timeout_s`` plus the
    kill waits; ``timed_out`` says which one ran out (``phantom`` or ``train``)."""
    t_start = clock()
    work = Path(work)
    data = work / f"phantom-siim-dicom-n{n_images}-s{size}"
    run_dir = work / f"epoch-run-{devices}gpu"
    env = _child_env({"PNEUMO_HOME": str(work / "home"), "PNEUMO_CACHE": str(work / "cache")})
    cli = [python, "-m", "pneumolib.cli"]
    ph_cmd = cli + ["data", "phantom", "--layout", "siim-dicom", "--out", str(data), "--n", str(n_images),
                    "--size", str(size)]
    strategy = "ddp" if devices > 1 else "auto"
    tr_cmd = cli + ["train", "--scenario", "random", "--profile", "paper", "--data", str(data), "--out", str(run_dir),
                    "--devices", str(devices), "--strategy", strategy, "--max-epochs", str(epochs),
                    "--image-size", str(size), "--batch-size", str(batch_size), "--set", "allow_phantom=true"]
    for kv in extra_sets:
        tr_cmd += ["--set", kv]
    out: dict[str, Any] = {"devices": devices, "strategy": strategy, "profile": "paper", "scenario": "random",
                           "phantom_images": n_images, "layout": "siim-dicom", "size": size, "batch_size": batch_size,
                           "max_epochs": epochs, "commands": {"phantom": " ".join(ph_cmd[1:]),
                                                              "train": " ".join(tr_cmd[1:])}}
    if not data.exists():
        ph_timeout = timeout_s if phantom_timeout_s is None else min(timeout_s, phantom_timeout_s)
        ph = runner(ph_cmd, ph_timeout, work / "phantom.log", env=env)
        out["seconds_phantom"] = ph["seconds"]
        if ph["timed_out"]:
            out["timed_out"] = "phantom"
            shutil.rmtree(data, ignore_errors=True)  # a half-written set is not reused
        if ph["rc"] != 0 or ph["timed_out"]:
            out["error"] = ("writing the phantom timed out" if ph["timed_out"] else
                            f"writing the phantom exited with status {ph['rc']}")
            out["log_tail"] = _tail(ph["log"])
            return out
    left = timeout_s - (clock() - t_start)
    if left < 1.0:
        return {**out, "timed_out": "train", "error": "no time was left for the training command"}
    tr = runner(tr_cmd, left, work / f"train-{devices}gpu.log", env=env)
    out["seconds_train_command"] = tr["seconds"]
    rows = _read_epochs(run_dir / "epochs.csv")
    metrics = {}
    if (run_dir / "metrics.json").exists():
        metrics = json.loads((run_dir / "metrics.json").read_text())
    if tr["timed_out"]:
        out["timed_out"] = "train"
        out["error"] = f"the training command did not finish within {left:.0f} s (killed)"
    elif tr["rc"] != 0:
        out["error"] = f"the training command exited with status {tr['rc']}"
    if "error" in out:
        out["log_tail"] = _tail(tr["log"])
    if (run_dir / "config.json").exists():
        cfg = json.loads((run_dir / "config.json").read_text())
        out["run_config"] = {k: cfg.get(k) for k in ("precision", "devices", "strategy", "num_workers", "unet_norm",
                                                     "base_width", "channels_last", "cudnn_benchmark", "compile",
                                                     "protocol", "online_aug", "batch_size", "image_size")}
    n_items = (metrics.get("data") or {}).get("n_items")
    out["fit_seconds"] = metrics.get("fit_seconds")
    out["n_items"] = n_items
    if rows and n_items:
        ev = n_items.get("val", 0) + n_items.get("test", 0)
        for r in rows:
            if r.get("time_s"):
                r["train_images_per_s"] = round(n_items["train"] / r["time_s"], 2)
                r["all_images_per_s"] = round((n_items["train"] + ev) / r["time_s"], 2)
        out["epochs"] = rows
        steady = rows[-1]
        if steady.get("time_s"):
            out["steady_epoch"] = steady["epoch"]
            out["epoch_seconds"] = steady["time_s"]
            out["train_images_per_s"] = steady["train_images_per_s"]
            out["all_images_per_s"] = steady["all_images_per_s"]
    elif "error" not in out:
        out["error"] = "the run left no epochs.csv / metrics.json"
        out["log_tail"] = _tail(tr["log"])
    inside = sum(r.get("time_s", 0.0) for r in rows)
    if rows and out.get("fit_seconds"):
        out["fit_seconds_outside_epochs"] = round(out["fit_seconds"] - inside, 3)
    if rows and not tr["timed_out"]:  # measured: what the training command spent outside its epochs
        out["seconds_train_startup_and_teardown"] = round(tr["seconds"] - inside, 2)
    out["measures"] = ("epochs.csv time_s: from the start of a training epoch (on_train_epoch_start) to its end "
                       "(EpochCSV's on_train_epoch_end), which includes the data loading (memmap cache, the "
                       "profile's workers), Lightning, the GradScaler and the per-epoch val + test evaluation; "
                       "the checkpoint writes (ModelCheckpoint saves after EpochCSV) and the fit's start-up fall "
                       "outside, in fit_seconds_outside_epochs; train_images_per_s = train items / time_s, "
                       "all_images_per_s = (train + val + test items) / time_s")
    return out
