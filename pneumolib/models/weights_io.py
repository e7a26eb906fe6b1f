"""Weights files loaded as data, never as code: :func:`load_checkpoint_file` is the one way
pneumolib reads a ``model.pt``, a Lightning ``.ckpt`` or a local encoder ``.pth``.

It calls ``torch.load(path, map_location="cpu", weights_only=True)`` only: tensors, plain
values and containers load, and a file that would need pickle to call code (``os.system``,
``exec``, any class) is refused before anything in it runs. The refusal is an
:class:`~pneumolib.errors.UnsafeCheckpointError` naming the file and the globals it asks for
(listed by parsing the pickle with :mod:`pickletools`, which executes nothing).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from pneumolib.errors import UnsafeCheckpointError, WeightsError

__all__ = ["load_checkpoint_file", "pickle_globals"]

#: Bytes of a pickle read to list the globals it asks for (a state dict's pickle is small).
_SCAN_LIMIT = 64 * 2**20

_RESAVE = ("If the file comes from a source you trust, load it there and re-save only the weights with "
           "torch.save(model.state_dict(), 'model.pt'), or pass the run folder's model.pt written by "
           "`pneumo train` (checkpoints written by `pneumo train` hold only tensors and plain values).")


def load_checkpoint_file(path: str | os.PathLike, what: str = "checkpoint", hint: str = "") -> dict:
    """The dict in a PyTorch weights file, loaded on the CPU as data only.

    Args:
        path: a file written by ``torch.save`` (a state dict, a Lightning checkpoint...).
        what: what the file is, for messages (``"checkpoint"``, ``"encoder_weights"``...):
            they start ``"{what} {path} ..."``.
        hint: a sentence appended to every message (what to pass instead).

    Returns:
        The loaded dict (a state dict or a checkpoint of tensors and plain values).

    Raises:
        UnsafeCheckpointError: the file is a pickle that asks for globals outside torch's
            weights-only allow-list (code); it was not run.
        WeightsError: missing, a folder, empty, truncated, not a PyTorch file, or no dict.
    """
    p = Path(path).expanduser()
    tail = f" {hint}" if hint else ""
    if not p.is_file():
        why = "is a folder, not a weights file" if p.is_dir() else "does not exist"
        raise WeightsError(f"{what} {p} {why}.{tail}")
    try:
        with warnings.catch_warnings():  # protocol-4 pickles: torch warns, then refuses or loads
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip, EOF errors of every kind
        reason = _first_line(e)
        if _refused_as_unsafe(e):
            names = _merge(pickle_globals(p), _reported_globals(str(e)))
            if names:
                raise UnsafeCheckpointError(
                    f"{what} {p} is unsafe and was not loaded: it is a pickle that asks for "
                    f"{', '.join(names)}, i.e. it needs arbitrary code to load, not only tensors and plain "
                    "values. Nothing in it was run (pneumolib loads weights with "
                    "torch.load(weights_only=True) only). "
                    f"{_RESAVE}{tail}") from None
        raise WeightsError(f"{what} {p} cannot be read as PyTorch weights ({reason}). It may be empty, "
                           f"truncated or not a weights file: copy it again.{tail}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{what} {p} holds a {type(obj).__name__}, not a state dict or checkpoint "
                           f"dict. Save weights with torch.save(model.state_dict(), path).{tail}")
    return obj


def _merge(scanned: list[str], reported: list[str]) -> list[str]:
    """The scanned names, then those torch reported that the scan missed (torch may name
    ``exec`` where the pickle says ``builtins.exec``)."""
    extra = [r for r in reported if not any(s == r or s.endswith("." + r) for s in scanned)]
    return list(dict.fromkeys(scanned + extra))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:  # torch's own words, not its advice to load unsafely
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    elif "Weights only load failed" in text:
        text = next((ln for ln in text.splitlines()[1:] if "GLOBAL" in ln), text.splitlines()[-1])
    line = text.splitlines()[0].strip() if text else ""
    if len(line) > 120 and ". " in line:  # torch's zip errors go on with advice
        line = line.split(". ", 1)[0]
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _refused_as_unsafe(e: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused the file (vs. a broken file)."""
    msg = str(e)
    return isinstance(e, (pickle.UnpicklingError, RuntimeError)) and (
        "Weights only load failed" in msg or "weights_only" in msg)


def _reported_globals(msg: str) -> list[str]:
    """``posix.system`` from torch's "unsupported GLOBAL posix.system whose module ...". """
    return [g for g in re.findall(r"GLOBAL ([A-Za-z_][\w.]*)", msg) if g not in ("was", "whose")]


def _allowed_globals() -> set[str]:
    try:
        from torch import _weights_only_unpickler as wou

        return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - torch moved its private list
        return {"collections.OrderedDict"}


def pickle_globals(path: str | os.PathLike) -> list[str]:
    """The globals outside torch's weights-only allow-list that the pickle(s) in ``path``
    ask for (``["posix.system"]``), read with :func:`pickletools.genops`: parsing only,
    nothing is imported or run. ``[]`` when the file cannot be parsed as pickles."""
    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                blobs = [z.read(i) for i in z.infolist()
                         if i.filename.endswith(".pkl") and i.file_size <= _SCAN_LIMIT]
        else:
            with open(p, "rb") as f:
                blobs = [f.read(_SCAN_LIMIT)]
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []
    allowed = _allowed_globals()
    found = [g for blob in blobs for g in _scan(blob)]
    return [g for g in dict.fromkeys(found) if g not in allowed and not g.startswith("torch.")]


def _builtins(name: str) -> str:
    """``__builtin__.exec`` (protocol 2 spelling) -> ``builtins.exec``."""
    return "builtins." + name[len("__builtin__."):] if name.startswith("__builtin__.") else name


_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
               "BINUNICODE8"}


def _scan(blob: bytes, max_pickles: int = 8) -> list[str]:
    """Global names in successive pickles of ``blob`` (torch's legacy format holds several)."""
    out: list[str] = []
    strings: list[str] = []
    memo: dict[int, str | None] = {}
    stream = io.BytesIO(blob)
    for _ in range(max_pickles):
        prev: str | None = None
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name in ("GLOBAL", "INST"):
                    out.append(_builtins(str(arg).replace(" ", ".", 1)))
                elif name == "STACK_GLOBAL":
                    out.append(_builtins(".".join(strings[-2:])) if len(strings) >= 2
                               else "<a global built on the stack>")
                elif name in ("EXT1", "EXT2", "EXT4"):
                    out.append(f"<copyreg extension {arg}>")
                elif name == "MEMOIZE":
                    memo[len(memo)] = prev
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = prev
                elif name in ("GET", "BINGET", "LONG_BINGET") and isinstance(memo.get(int(arg)), str):
                    strings.append(memo[int(arg)])
                if name in _STRING_OPS:
                    prev = arg if isinstance(arg, str) else bytes(arg).decode("latin-1")
                    strings.append(prev)
                elif name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"):
                    prev = None
        except Exception:  # noqa: BLE001 - end of the pickles or not a pickle at all
            break
        if stream.tell() >= len(blob):
            break
    return out
