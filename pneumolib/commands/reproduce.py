"""``pneumo reproduce``: run every notebook with papermill, in order, into ``papermill_runs/``.

The plan (:func:`pneumolib.commands.plan.plan`) for a profile is::

    01_eda                      counts, mask sizes and places, pixel statistics
    02_augmentation             the paper's Figures 2-3; split tables of both protocols
    03_autoencoders             X-ray and mask autoencoders (+ the copy-through measurement)
    04_finetune-<scenario>      one template, run once per scenario of pneumolib.models.scenarios
    05_results                  Figures 5-7 and Table 4 from the run files only

How parameters travel. Every notebook's ``parameters`` cell holds flat literals
(``profile``, ``data``, ``overrides_json``, and e.g. ``scenario``). ``reproduce`` checks each
name against the notebook's declared parameters (papermill itself only warns) and every
``--set KEY=VALUE`` against :class:`pneumolib.config.Config` before anything runs; the
``--set`` pairs travel as one JSON string ``overrides_json`` and the notebook's next cell
turns everything into a frozen Config with :func:`notebook_config`, which fails loudly on an
unknown name or a bad value.

Resuming. After a notebook succeeds, its executed copy is renamed into place (it is
written under a temporary name while it runs) and ``<name>.done.json`` records its
parameters, the template's hash, its dependencies' completion times, the code that ran it
(:func:`pneumolib.runio.code_identity`) and the time taken. A later ``reproduce`` skips a
notebook whose copy and marker exist, whose parameters, template, dependencies and code are
unchanged and whose outputs exist, unless ``force``. An interrupted training notebook is
simply run again: its training cell continues from the run's last checkpoint
(:mod:`pneumolib.training.runfolder`).

Code. A notebook that does not train (EDA, results, studies' tables) reruns by itself when
any pneumolib code changed. A training notebook (03, 04) whose runs came from other code on
the results path (a hash that ignores comments and docstrings) is never rerun, nor served,
silently: ``reproduce`` stops before running anything, lists which runs came from which
code, and asks for ``--rerun-changed`` (train them again) or ``--keep-results`` (keep them;
recorded in ``papermill_runs/<profile>/kept_results.json`` and the report's provenance).

Signals. SIGTERM and SIGHUP end a run like Ctrl-C: the kernel is shut down, and every
training process with it (they die with their parent); the same command again continues.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from pneumolib import paths
from pneumolib.config import notebook_config, parse_sets
from pneumolib.errors import ConfigError

from .markers import (code_changes, current_code, dep_stamps, keep_changes, kept_changes, marker_path, resume_note,
                      sha256_file, why_stale)
from .plan import LABEL_FRACTIONS, Step, parse_studies, plan

KERNEL_NAME = "python3"


# -- running ------------------------------------------------------------------------------------
def _declared_parameters(template: Path) -> set[str]:
    import papermill as pm

    return set(pm.inspect_notebook(str(template)))


def _cell_head(nb_path: Path, exec_count: int | None, cell_index: int | None) -> str:
    """First lines of the failing cell of an executed copy."""
    try:
        import nbformat

        nb = nbformat.read(str(nb_path), as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code"]
        cell = next((c for c in cells if exec_count is not None and c.get("execution_count") == exec_count), None)
        if cell is None and cell_index is not None and cell_index < len(nb.cells):
            cell = nb.cells[cell_index]
        if cell is None:
            return ""
        lines = cell.source.strip().splitlines()
        return "\n".join("    " + ln for ln in lines[:4]) + ("\n    ..." if len(lines) > 4 else "")
    except Exception:  # noqa: BLE001 - only a hint in an error message
        return ""


def run_step(step: Step, template: Path, out_dir: Path, code: dict[str, Any] | None = None) -> float:
    """Execute one notebook into ``out_dir`` atomically; returns the seconds taken.

    Raises:
        papermill's PapermillExecutionError (a cell failed; the partial copy is kept as
        ``<name>.failed.ipynb``) or any error starting the kernel.
    """
    import papermill as pm

    out = out_dir / f"{step.name}.ipynb"
    tmp = out_dir / f".{step.name}.running.ipynb"
    failed = out_dir / f"{step.name}.failed.ipynb"
    marker_path(out_dir, step.name).unlink(missing_ok=True)  # a rerun that dies is never "complete"
    failed.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(template), str(tmp), parameters=step.parameters, kernel_name=KERNEL_NAME,
            cwd=str(paths.home()), progress_bar=False, log_output=False, report_mode=False,
            # the kernel's own start-up chatter (e.g. ipykernel 7's plain-TCP notice on
            # localhost, a KeyboardInterrupt notice at shut-down) would repeat for every notebook;
            # a kernel that dies or fails still fails the run through papermill
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    seconds = time.perf_counter() - t0
    os.replace(tmp, out)
    from pneumolib.runio import atomic_write_json

    atomic_write_json(marker_path(out_dir, step.name), {
        "name": step.name, "template": str(template), "template_sha256": sha256_file(template),
        "parameters": step.parameters, "deps": dep_stamps(out_dir, step),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "seconds": round(seconds, 2), "python": sys.executable,
        "code": code if code is not None else current_code(),
    })
    return seconds


class _Env:
    """Set environment variables for the kernels (children inherit them), restore after."""

    def __init__(self, **env: str):
        self.env, self.old = env, {}

    def __enter__(self):
        for k, v in self.env.items():
            self.old[k] = os.environ.get(k)
            os.environ[k] = v
        return self

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kernel_env(keep_results: bool = False) -> dict[str, str]:
    """What the kernels must share with this process: where outputs and the cache live, a
    Jupyter path that finds this interpreter's ``python3`` kernel before any user-wide one;
    and that they run headless (a line per epoch, no progress bars) and die with this
    process (``PNEUMO_DIE_WITH_PARENT``: a kernel, and the training it started, never
    outlive a terminated ``reproduce``)."""
    jp = str(Path(sys.prefix) / "share" / "jupyter")
    old = os.environ.get("JUPYTER_PATH")
    env = {"PNEUMO_HOME": str(paths.home()), "PNEUMO_CACHE": str(paths.cache_dir()),
           "JUPYTER_PATH": jp + (os.pathsep + old if old else ""), "PNEUMO_HEADLESS": "1",
           "PNEUMO_DIE_WITH_PARENT": "1"}
    if keep_results:
        from pneumolib.training.runfolder import KEEP_ENV

        env[KEEP_ENV] = "1"
    return env


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: handled as an interruption."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(f"received {signal.Signals(signum).name}")


def reproduce(profile: str = "demo", data: str | None = None, force: bool = False,
              sets: Sequence[str] = (), seeds: int = 1, studies: str | Sequence[str] = "",
              label_fractions: Sequence[float] = LABEL_FRACTIONS,
              label_scenarios: Sequence[str] | None = None, rerun_changed: bool = False,
              keep_results: bool = False) -> int:
    """Run every notebook for ``profile`` (see the module docstring); 0 on success, 1 when a
    notebook fails (its executed copy and failing cell are printed), 2 when runs made by other
    code wait for ``rerun_changed`` or ``keep_results``, 130 when interrupted (Ctrl-C,
    SIGTERM, SIGHUP: the same command again continues).

    Raises:
        ConfigError: an unknown profile, ``--set`` name or value (before anything runs).
    """
    overrides = parse_sets(sets)
    data = str(Path(data).expanduser().resolve()) if data else None
    notebook_config(profile, data=data, overrides_json=json.dumps(overrides))  # fail fast
    nb_dir, out_dir = paths.notebooks_dir(), paths.papermill_dir(profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_names = parse_studies(studies)
    steps = plan(profile, data, overrides, seeds=seeds, studies=study_names, label_fractions=label_fractions,
                 label_scenarios=label_scenarios)
    for s in steps:
        template = nb_dir / f"{s.template}.ipynb"
        if not template.exists():
            raise ConfigError(f"notebook template {template} is missing (restore it from git, or pair it from its text: jupytext --sync notebooks/{s.template}.py)")
        unknown = set(s.parameters) - _declared_parameters(template)
        if unknown:
            raise ConfigError(f"{template.name} declares no parameter(s) {', '.join(sorted(unknown))}; "
                              f"declared: {', '.join(sorted(_declared_parameters(template)))}")
    if rerun_changed and keep_results:
        raise ConfigError("--rerun-changed and --keep-results exclude each other: choose one")
    code = current_code()
    changes = [] if force else [c for s in steps if s.trains for c in code_changes(s, out_dir, code)]
    kept_file = out_dir / "kept_results.json"
    if changes and not (rerun_changed or keep_results) and set(changes) <= set(kept_changes(kept_file)):
        keep_results = True  # kept before, deliberately, and still recorded
    if not (changes and keep_results):
        kept_file.unlink(missing_ok=True)
    if changes and not (rerun_changed or keep_results):
        print(f"pneumo reproduce: {len(changes)} run(s) of profile {profile} came from other code on the results "
              f"path than this checkout's ({code['results']}, commit {str(code.get('commit'))[:12]}"
              f"{', uncommitted changes' if code.get('dirty') else ''}):\n"
              + "".join(f"  - {c}\n" for c in changes)
              + "Nothing was run. Choose:\n"
              "  --rerun-changed   train them again with this code (the other notebooks rerun as needed)\n"
              "  --keep-results    keep them as they are; recorded in kept_results.json and the report\n"
              "(comments and docstrings do not count as code changes)", file=sys.stderr, flush=True)
        return 2
    if changes and keep_results:
        print(f"pneumo reproduce: keeping {len(changes)} run(s) made by other code: recorded in "
              f"{keep_changes(out_dir, changes, code)}", flush=True)
    print(f"pneumo reproduce: profile {profile}, data {data or 'built-in phantom'}"
          + (f", overrides {overrides}" if overrides else "") + f"\n  executed notebooks -> {out_dir}", flush=True)
    t_all = time.perf_counter()
    handlers = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run_steps(steps, nb_dir, out_dir, code, force, rerun_changed, keep_results, profile, study_names,
                          t_all)
    except KeyboardInterrupt as e:
        why = f" ({e})" if str(e) else ""
        print(f"pneumo reproduce: interrupted{why} after {_fmt_s(time.perf_counter() - t_all)}. Finished notebooks "
              "are kept; the same command again continues, and an interrupted training resumes from its last "
              "checkpoint.", file=sys.stderr, flush=True)
        return 130
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)


def _run_steps(steps: list[Step], nb_dir: Path, out_dir: Path, code: dict[str, Any], force: bool,
               rerun_changed: bool, keep_results: bool, profile: str, study_names: Sequence[str],
               t_all: float) -> int:
    with _Env(**kernel_env(keep_results)):
        for i, s in enumerate(steps, 1):
            template = nb_dir / f"{s.template}.ipynb"
            tag = f"[{i:2d}/{len(steps)}] {s.name}"
            reason = "forced" if force else why_stale(s, out_dir, template, code, rerun_changed)
            if reason is None:
                print(f"{tag}: complete, skipped", flush=True)
                continue
            print(f"{tag}: running ({reason}{resume_note(s) if s.trains and not force else ''}) ...", flush=True)
            try:
                seconds = run_step(s, template, out_dir, code)
            except Exception as e:  # noqa: BLE001 - report and stop with status 1
                failed = out_dir / f"{s.name}.failed.ipynb"
                cell = getattr(e, "cell_index", None)
                count = getattr(e, "exec_count", None)
                print(f"{tag}: FAILED after {_fmt_s(time.perf_counter() - t_all)} in total", file=sys.stderr)
                if hasattr(e, "ename"):
                    print(f"  cell In [{count}] (index {cell}): {e.ename}: {str(e.evalue).strip()[:2000]}",
                          file=sys.stderr)
                    head = _cell_head(failed, count, cell)
                    if head:
                        print(head, file=sys.stderr)
                else:
                    print(f"  {type(e).__name__}: {e}", file=sys.stderr)
                print(f"  executed copy: {failed if failed.exists() else '(none written)'}", file=sys.stderr)
                return 1
            print(f"{tag}: done in {_fmt_s(seconds)}", flush=True)
    figs = paths.figures_dir(profile)
    from pneumolib.reporting.report import write_report

    report = write_report(profile)
    print(f"figures: {figs}/figure5.png, figure6.png, figure7.png, extra_metrics.png"
          + "".join(f", {s}.png" for s in study_names) + "\n"
          f"Table 4: {figs / 'table4.md'} (and table4.csv)\n"
          f"report: {report} (one self-contained HTML file)\n"
          f"total time: {_fmt_s(time.perf_counter() - t_all)}", flush=True)
    return 0
