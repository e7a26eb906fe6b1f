"""Run folders: atomic writes, provenance, and reading finished runs back.

A run folder (``results/<profile>/<name>/``) holds ``config.json``, ``epochs.csv`` (one row
per epoch), ``metrics.json`` (the best checkpoint's metrics and where the run came from),
``test_per_image.csv`` (per-image counts and scores, the raw material of every later table),
``checkpoints/`` and ``logs/``. Every file is written to a temporary name and renamed into
place, so a crash never leaves a half-written file that later steps would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from pneumolib import __version__, paths


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be read
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_csv(path: Path | str, df: pd.DataFrame) -> Path:
    return atomic_write_text(path, df.to_csv(index=False))


def atomic_torch_save(obj: Any, path: Path | str) -> Path:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def git_commit(root: Path | None = None) -> dict[str, Any]:
    """The commit of the checkout holding pneumolib, and whether it has uncommitted changes."""
    root = root or paths.PACKAGE_DIR.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha or None, "dirty": bool(dirty) if sha else None}


#: The parts of pneumolib that decide a run's numbers (issue 18's "results path"): a change
#: here can change a trained model; a change elsewhere (reporting, commands, the launcher's
#: messages) cannot.
RESULTS_PATH = ("data", "prep", "models", "training", "evaluation", "metrics.py", "config.py", "seeding.py")


def code_text(src: str) -> str:
    """A module's code with comments, docstrings and formatting dropped (its AST, dumped
    without docstrings); the source itself when it does not parse."""
    import ast

    try:
        tree = ast.parse(src)
    except SyntaxError:
        return src
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def sources_hash(sources: dict[str, str]) -> str:
    """sha256 over ``{path relative to the package: source}``, by :func:`code_text`, so that a
    reworded docstring never makes results stale. Also computed for a past commit's files
    (:mod:`pneumolib.reporting.stamps`), so it depends on nothing but the texts and paths."""
    import hashlib

    h = hashlib.sha256()
    for rel in sorted(sources):
        h.update(rel.encode() + b"\0" + code_text(sources[rel]).encode() + b"\0")
    return h.hexdigest()


def is_results_path(rel: str) -> bool:
    """Whether a module (path relative to the package, ``/``-separated) is on :data:`RESULTS_PATH`."""
    return rel.split("/", 1)[0] in RESULTS_PATH


def _code_hash(files: list[Path]) -> str:
    """:func:`sources_hash` of package files."""
    return sources_hash({f.relative_to(paths.PACKAGE_DIR).as_posix(): f.read_text(encoding="utf-8") for f in files})


_CODE: dict[str, Any] = {}


def code_identity() -> dict[str, Any]:
    """The code that makes results: ``results`` (hash of :data:`RESULTS_PATH`), ``package``
    (hash of every module), ``version``, and the git ``commit`` / ``dirty`` when the package
    runs from a checkout. Hashes ignore comments and docstrings. Cached per process."""
    if not _CODE:
        pkg = paths.PACKAGE_DIR
        every = [p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts]
        results = [p for p in every if is_results_path(p.relative_to(pkg).as_posix())]
        _CODE.update({"results": _code_hash(results)[:16], "package": _code_hash(every)[:16],
                      "version": __version__, **git_commit()})
    return dict(_CODE)


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    names = ["torch", "torchvision", "pytorch-lightning", "segmentation-models-pytorch", "timm",
             "albumentations", "numpy", "pandas", "pydicom", "pillow", "opencv-python-headless",
             "papermill"]
    out: dict[str, str | None] = {"pneumolib": __version__, "python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["machine"] = machine_facts()
    return info


def machine_facts() -> dict[str, Any]:
    """:func:`pneumolib.machine.machine_info` (CPU model, the ISA oneDNN and ATen use, torch /
    oneDNN / MKL versions, threads, GPUs). Its oneDNN probe (a subprocess that starts Python
    and imports torch) runs once per machine, build and ISA setting: the answer is kept in
    the cache folder."""
    import hashlib

    from pneumolib.machine import machine_info

    fast = machine_info(probe=False)
    key = hashlib.sha256(json.dumps([fast.get(k) for k in ("cpu_model", "cpu_flags", "torch", "onednn",
                                                            "onednn_max_cpu_isa", "env")], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    cached = paths.cache_dir() / "machine" / f"{key}.json"
    try:
        probed = json.loads(cached.read_text())
    except (OSError, ValueError):
        full = machine_info(probe=True)
        probed = {k: full.get(k) for k in ("onednn_isa", "onednn_isa_text", "onednn_isa_method")}
        if str(probed.get("onednn_isa_method") or "").startswith("oneDNN verbose"):  # a real answer
            try:
                atomic_write_json(cached, probed)
            except OSError:
                pass
    return {**fast, **probed}


def provenance(cfg: Any = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where a result came from: time, command, git commit, versions, device, config."""
    out: dict[str, Any] = {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "git": git_commit(),
        "code": code_identity(),
        "versions": package_versions(),
        "device": device_info(),
    }
    if cfg is not None:
        out["config"] = cfg.to_dict()
    if extra:
        out.update(extra)
    return out


# -- reading runs back ------------------------------------------------------------------
def read_run(folder: Path | str) -> dict[str, Any]:
    """A finished run: ``{"name", "folder", "metrics" (dict), "epochs" (DataFrame)}``.

    Raises:
        FileNotFoundError: the folder has no ``metrics.json`` (the run did not finish).
    """
    folder = Path(folder)
    mpath = folder / "metrics.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{mpath} is missing: the run in {folder} has not finished")
    metrics = json.loads(mpath.read_text())
    epochs = pd.read_csv(folder / "epochs.csv") if (folder / "epochs.csv").exists() else pd.DataFrame()
    return {"name": folder.name, "folder": folder, "metrics": metrics, "epochs": epochs}


def read_runs(profile_dir: Path | str, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """All finished runs under ``results/<profile>/`` (or only ``names``), keyed by name."""
    profile_dir = Path(profile_dir)
    out = {}
    folders = [profile_dir / n for n in names] if names else sorted(p for p in profile_dir.iterdir() if p.is_dir())
    for f in folders:
        try:
            out[f.name] = read_run(f)
        except FileNotFoundError:
            continue
    return out


# -- small helpers -----------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` (POSIX ``flock``; a no-op elsewhere).

    Serialises builds of the same folder by several processes (DDP ranks, two notebooks).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
