"""A run folder's life: start afresh, resume from its last checkpoint, or read a finished
run back, decided from what the folder holds and what made it.

A run is identified by :func:`identity`: the result-affecting settings of its Config, the
fingerprint of its data and the fingerprint of the code on the results path
(:func:`pneumolib.runio.code_identity`). The identity travels inside every checkpoint (the
state of :class:`~pneumolib.training.trainer.EpochCSV`, with the rows of ``epochs.csv``)
and inside ``metrics.json``. :func:`decide` compares it with the run about to start:

- ``finished``: ``metrics.json`` has the same identity: nothing to train, read it back;
- ``resume``: ``checkpoints/last.ckpt`` has the same identity: Lightning continues from it
  (``trainer.fit(ckpt_path=...)``) and ``epochs.csv`` is rewritten from its rows;
- ``fresh``: nothing to continue, or what is there came from other settings, data or code
  (the reason names which): every file a run writes is removed first (:func:`clear`), so a
  new run never sits beside the old one's ``model.pt`` or per-image tables.

Checkpoints are read with ``weights_only=True``: they are data, never code.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumolib import runio
from pneumolib.config import Config

#: Files and folders a run writes into its folder (:func:`clear` removes exactly these).
#: ``config.json`` is not among them: the launcher writes it for the ranks to read, and the run
#: rewrites it as it starts.
RUN_FILES = ("metrics.json", "epochs.csv", "model.pt", "val_per_image.csv", "test_per_image.csv",
             "postprocess.json", "evaluation.json")
RUN_DIRS = ("checkpoints", "logs")

#: Config fields that do not change a run's numbers: a run may resume under other values.
NOT_IN_IDENTITY = frozenset({"name", "progress", "num_workers", "launcher", "max_restarts", "ddp_timeout_s",
                             "torch_threads", "allow_phantom", "skip_bad"})

#: The ``state_key`` of :class:`~pneumolib.training.trainer.EpochCSV` in a checkpoint.
EPOCH_STATE_KEY = "pneumolib.EpochCSV"


#: Set by ``pneumo reproduce --keep-results``: a checkpoint made by other code on the results
#: path is resumed under this code instead of being started afresh (recorded in metrics.json).
KEEP_ENV = "PNEUMO_KEEP_RESULTS"


def identity(cfg: Config, data_fingerprint: str | None) -> dict[str, Any]:
    """What makes a run this run: ``{"config": {...}, "data": fingerprint, "code": hash}``."""
    conf = {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_IDENTITY}
    return {"config": conf, "data": data_fingerprint, "code": runio.code_identity()["results"]}


def differences(old: dict[str, Any] | None, new: dict[str, Any], keep_code: bool = False) -> list[str]:
    """What differs between two identities, in words (empty: the same run)."""
    if not isinstance(old, dict) or "config" not in old:
        return ["it records no run identity (written by an older pneumolib)"]
    out = []
    a, b = old.get("config") or {}, new["config"]
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k} {a.get(k)!r} -> {b.get(k)!r}")
    if old.get("data") != new["data"]:
        out.append(f"data fingerprint {str(old.get('data'))[:12]} -> {str(new['data'])[:12]}")
    if old.get("code") != new["code"] and not keep_code:
        out.append(f"code on the results path {old.get('code')} -> {new['code']}")
    return out


@dataclass
class Start:
    """How a run starts: ``mode`` ``fresh`` | ``resume`` | ``finished``."""

    mode: str
    reason: str
    ckpt: Path | None = None          # resume: the checkpoint to continue from
    epoch: int | None = None          # resume: the last finished epoch (0-based) in it
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None  # finished: metrics.json
    code_before: str | None = None    # resume across a code change (--keep-results)


def read_checkpoint_state(ckpt: Path) -> tuple[dict[str, Any] | None, int | None, list[dict[str, Any]]]:
    """``(identity, epoch, rows)`` recorded in a Lightning checkpoint of this project, read as
    data (``weights_only=True``).

    Raises:
        pneumolib.errors.WeightsError: the file is unreadable or needs code to load.
    """
    from pneumolib.models.weights_io import load_checkpoint_file

    obj = load_checkpoint_file(ckpt, "a training checkpoint")
    state = (obj.get("callbacks") or {}).get(EPOCH_STATE_KEY) or {}
    epoch = obj.get("epoch")
    return state.get("identity"), (int(epoch) if epoch is not None else None), list(state.get("rows") or [])


def decide(out_dir: Path, ident: dict[str, Any], fresh: bool = False) -> Start:
    """How the run in ``out_dir`` with identity ``ident`` starts (nothing is changed here)."""
    out_dir = Path(out_dir)
    if fresh:
        return Start("fresh", "a fresh start was asked for")
    keep_code = os.environ.get(KEEP_ENV) == "1"
    metrics = out_dir / "metrics.json"
    if metrics.exists():
        try:
            summary = json.loads(metrics.read_text())
        except (OSError, ValueError):
            summary = None
        diff = differences((summary or {}).get("identity"), ident)
        if summary is not None and not diff:
            return Start("finished", "this run already finished with these settings, data and code", summary=summary)
        return Start("fresh", "the finished run in this folder differs: " + "; ".join(diff[:6]))
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        from pneumolib.errors import PneumoError

        try:
            old, epoch, rows = read_checkpoint_state(last)
        except PneumoError as e:
            return Start("fresh", f"its last checkpoint cannot be read as data ({str(e).splitlines()[0]})")
        diff = differences(old, ident, keep_code=keep_code)
        if diff:
            return Start("fresh", "its last checkpoint came from another run: " + "; ".join(diff[:6]))
        before = old.get("code") if old and old.get("code") != ident["code"] else None
        return Start("resume", f"resuming after epoch {epoch} from {last}", ckpt=last, epoch=epoch, rows=rows,
                     code_before=before)
    leftovers = [n for n in (*RUN_FILES, *RUN_DIRS) if (out_dir / n).exists()]
    if leftovers:
        return Start("fresh", f"no checkpoint to continue from (removing {', '.join(leftovers)})")
    return Start("fresh", "new run")


def clear(out_dir: Path) -> None:
    """Remove every file and folder a run writes (:data:`RUN_FILES`, :data:`RUN_DIRS`) from
    ``out_dir``; anything else in it is left alone."""
    out_dir = Path(out_dir)
    for n in RUN_FILES:
        (out_dir / n).unlink(missing_ok=True)
    for n in RUN_DIRS:
        shutil.rmtree(out_dir / n, ignore_errors=True)


def announce(start: Start, out_dir: Path, total_epochs: int) -> None:
    """One line saying how the run starts (in the cell, the log, the terminal)."""
    if start.mode == "resume":
        nxt = (start.epoch or 0) + 1
        print(f"{out_dir.name}: resuming at epoch {nxt + 1} of {total_epochs} "
              f"(epochs 1-{nxt} done, from {start.ckpt})", flush=True)
    elif start.mode == "finished":
        print(f"{out_dir.name}: {start.reason}; read back from {out_dir / 'metrics.json'} "
              "(train it again with fresh=True, or `--fresh` on the command line)", flush=True)
    elif start.reason != "new run":
        print(f"{out_dir.name}: starting afresh: {start.reason}", flush=True)
