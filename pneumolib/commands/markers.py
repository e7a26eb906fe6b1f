"""The completion markers of ``pneumo reproduce`` and what makes a notebook stale: its
parameters, template, dependencies, outputs and the code that ran it; runs made by other
code on the results path, and the decision to keep them (``kept_results.json``)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .plan import Step


# -- markers ----------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def marker_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.done.json"


def read_marker(out_dir: Path, name: str) -> dict[str, Any] | None:
    return _read_json_file(marker_path(out_dir, name))


def dep_stamps(out_dir: Path, step: Step) -> dict[str, str | None]:
    return {d: (read_marker(out_dir, d) or {}).get("finished_at") for d in step.deps}


def _run_code(run: Path) -> str | None:
    """The results-path code hash that made the run in ``run`` (its metrics.json, or the
    identity inside its last checkpoint); None when there is no run or it records none."""
    try:
        m = json.loads((run / "metrics.json").read_text())
        return ((m.get("identity") or {}).get("code")) or ((m.get("provenance") or {}).get("code") or {}).get("results")
    except (OSError, ValueError):
        pass
    last = run / "checkpoints" / "last.ckpt"
    if last.exists():
        from pneumolib.errors import PneumoError
        from pneumolib.training.runfolder import read_checkpoint_state

        try:
            ident = read_checkpoint_state(last)[0]
        except PneumoError:
            return None
        return (ident or {}).get("code")
    return None


def code_changes(step: Step, out_dir: Path, code: dict[str, Any]) -> list[str]:
    """For a training step: its runs (finished or interrupted) made by other code on the
    results path than ``code``, in words; empty when none."""
    out = []
    m = read_marker(out_dir, step.name)
    done = (m or {}).get("code") or {}
    if m is not None and done.get("results") not in (None, code["results"]):
        out.append(f"{step.name}: finished with code {done.get('results')} (commit {str(done.get('commit'))[:12]}"
                   f"{', uncommitted changes' if done.get('dirty') else ''})")
    for run in step.runs:
        made = _run_code(Path(run))
        if made not in (None, code["results"]):
            state = "finished" if (Path(run) / "metrics.json").exists() else "interrupted, with a checkpoint"
            out.append(f"{Path(run).name}: {state}, trained by code {made}")
    return out


def why_stale(step: Step, out_dir: Path, template: Path, code: dict[str, Any] | None = None,
              rerun_changed: bool = False) -> str | None:
    """None when ``step`` is complete and up to date; else the reason to run it.

    ``code`` (:func:`pneumolib.runio.code_identity`): a step that does not train is stale
    when any pneumolib code changed since it ran; a training step only with
    ``rerun_changed`` (see :func:`code_changes` for how the choice is asked for)."""
    if not (out_dir / f"{step.name}.ipynb").exists():
        return "no executed copy"
    m = read_marker(out_dir, step.name)
    if m is None:
        return "no completion marker (never finished)"
    if m.get("parameters") != step.parameters:
        return "parameters changed"
    if m.get("template_sha256") != sha256_file(template):
        return "notebook template changed"
    if m.get("deps") != dep_stamps(out_dir, step):
        return "an earlier notebook was rerun"
    missing = [p for p in step.outputs if not Path(p).exists()]
    if missing:
        return f"output missing: {missing[0]}"
    if code is not None:
        done = m.get("code") or {}
        if step.trains and rerun_changed and code_changes(step, out_dir, code):
            return "its runs came from other code on the results path (--rerun-changed)"
        if not step.trains and done.get("package") != code["package"]:
            return f"pneumolib code changed since it ran ({done.get('package')} -> {code['package']})"
    return None


def current_code() -> dict[str, Any]:
    from pneumolib.runio import code_identity
    return code_identity()


def resume_note(step: Step) -> str:
    """`` (interrupted earlier: its training resumes after epoch k)`` for a training step
    whose run folder holds a checkpoint but no finished run."""
    for run in step.runs:
        last = Path(run) / "checkpoints" / "last.ckpt"
        if last.exists() and not (Path(run) / "metrics.json").exists():
            try:
                from pneumolib.training.runfolder import read_checkpoint_state

                epoch = read_checkpoint_state(last)[1]
            except Exception:  # noqa: BLE001 - only a hint; the training itself decides
                continue
            return f"; {Path(run).name} resumes after epoch {(epoch or 0) + 1} from its checkpoint"
    return ""


def kept_changes(path: Path) -> list[str]:
    return list((_read_json_file(path) or {}).get("kept") or [])


def _read_json_file(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def keep_changes(out_dir: Path, changes: list[str], code: dict[str, Any]) -> Path:
    from pneumolib.runio import atomic_write_json

    p = out_dir / "kept_results.json"
    atomic_write_json(p, {"kept": changes, "current_code": code,
                          "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "how": "pneumo reproduce --keep-results"})
    return p
