"""``pneumo reproduce``: run every notebook with papermill, in order, into ``papermill_runs/``.

The plan (:func:`plan`) for a profile is::

    01_eda                      counts, mask sizes and places, pixel statistics
    02_augmentation             the paper's Figures 2-3; split tables of both protocols
    03_autoencoders             X-ray and mask autoencoders (+ the copy-through measurement)
    04_finetune-<scenario>      one template, run once per scenario of pneumolib.scenarios
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
parameters, the template's hash, its dependencies' completion times and the time taken.
A later ``reproduce`` skips a notebook whose copy and marker exist, whose parameters,
template and dependencies are unchanged and whose outputs exist, unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from . import paths
from .config import Config, get_config
from .errors import ConfigError

KERNEL_NAME = "python3"
TEMPLATES = ("01_eda", "02_augmentation", "03_autoencoders", "04_finetune", "05_results", "06_covid_screening",
             "07_leakage", "08_image_level", "09_pretext", "10_label_efficiency")


# -- inside the notebooks --------------------------------------------------------------------
def notebook_config(profile: str = "demo", data: str | None = None, overrides_json: str = "",
                    **params: Any) -> Config:
    """The notebook's typed, frozen Config from its parameters cell.

    Args:
        profile: ``smoke``, ``demo`` or ``paper``.
        data: dataset folder, or None for the built-in phantom.
        overrides_json: JSON object ``{"field": value}`` (the ``--set`` pairs of
            ``pneumo reproduce``); "" or "{}" for none.
        **params: other parameters that are Config fields (e.g. ``seed``); None keeps
            the profile's value.

    Raises:
        ConfigError: unknown profile or field, a value of the wrong type, or
            ``overrides_json`` that is not a JSON object; the message names the valid ones.
    """
    try:
        overrides = json.loads(overrides_json) if overrides_json and overrides_json.strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"overrides_json={overrides_json!r} is not valid JSON ({e})") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides_json must be a JSON object of Config fields, got {overrides_json!r}")
    merged = {k: v for k, v in params.items() if v is not None}
    if data is not None:
        merged["data"] = str(data)
    merged.update(overrides)
    return get_config(profile, **merged)


def parse_sets(sets: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> ``{key: value}`` (``-`` in keys read as ``_``)."""
    from .config import field_names

    out: dict[str, str] = {}
    for item in sets or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE; names: {', '.join(field_names())}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


# -- the plan -------------------------------------------------------------------------------
@dataclass
class Step:
    """One notebook execution."""

    name: str                      # executed copy's stem, e.g. "04_finetune-random"
    template: str                  # notebook template stem, e.g. "04_finetune"
    parameters: dict[str, Any]
    deps: tuple[str, ...] = ()     # steps whose rerun makes this one stale
    outputs: tuple[Path, ...] = field(default_factory=tuple)  # must exist to skip


def scenario_order() -> list[str]:
    """Scenario names of :data:`pneumolib.scenarios.SCENARIOS`, the benchmark first."""
    from .scenarios import SCENARIOS

    names = list(SCENARIOS)
    return (["random"] if "random" in names else []) + [n for n in names if n != "random"]


#: The studies beyond the paper (``pneumo reproduce --studies``), in the order they run.
STUDIES = ("leakage", "image_level", "pretext", "label_efficiency")
#: Scenarios trained under the paper's leaky protocol in the leakage study.
LEAKAGE_SCENARIOS = ("random", "resnet50")
#: Autoencoders and scenarios of the pretext study (see pneumolib.scenarios.EXTRA_SCENARIOS).
PRETEXT_KINDS = ("genesis", "xray_noskip")
PRETEXT_SCENARIOS = ("genesis_full", "genesis_encoder", "noskip_encoder")
#: Label fractions of the label-efficiency study (1.0 = the main runs).
LABEL_FRACTIONS = (0.01, 0.1)


def parse_studies(studies: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"leakage,pretext"`` or ``"all"`` -> the study names in run order.

    Raises:
        ConfigError: an unknown study name (the message lists the valid ones).
    """
    if not studies:
        return ()
    items = studies.split(",") if isinstance(studies, str) else list(studies)
    names = {x.strip() for x in items if x.strip()}
    if "all" in names:
        return STUDIES
    unknown = sorted(names - set(STUDIES))
    if unknown:
        raise ConfigError(f"unknown stud{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                          f"valid: {', '.join(STUDIES)}, all")
    return tuple(n for n in STUDIES if n in names)


def seed_list(profile_seed: int, seeds: int) -> list[int]:
    """The seeds of a ``--seeds N`` run: the profile's seed, then +1, +2, ..."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    return [profile_seed + i for i in range(seeds)]


def _finetune(base: dict[str, Any], results: Path, scenario: str, name: str, run_name: str,
              deps: tuple[str, ...], seed: int | None = None, extra: dict[str, Any] | None = None) -> Step:
    """A run of the ``04_finetune`` template (one template, many runs)."""
    params = {**base, "scenario": scenario, "run_name": run_name}
    if seed is not None:
        params["seed"] = seed
    if extra:
        params["overrides_json"] = json.dumps({**json.loads(base["overrides_json"]), **extra}, sort_keys=True)
    return Step(name, "04_finetune", params, deps=deps, outputs=(results / run_name / "metrics.json",))


def plan(profile: str, data: str | None = None, overrides: dict[str, Any] | None = None,
         seeds: int = 1, studies: Sequence[str] = (), label_fractions: Sequence[float] = LABEL_FRACTIONS,
         label_scenarios: Sequence[str] | None = None) -> list[Step]:
    """The notebooks to run for ``profile``, in order, with their parameters.

    ``seeds`` > 1 adds runs ``<scenario>-seed<k>`` of every scenario; ``studies`` (names of
    :data:`STUDIES`) adds their training runs (under ``results/<profile>/studies/<study>/``)
    and their notebooks 07-10. The label-efficiency study trains ``label_scenarios``
    (default: all six) at each of ``label_fractions`` (the main runs are 1.0).
    """
    fracs = tuple(float(f) for f in label_fractions)
    if not fracs or any(not 0.0 < f < 1.0 for f in fracs):
        raise ConfigError(f"label fractions {label_fractions} must lie strictly between 0 and 1 "
                          "(1.0 is the main run)")
    label_scs = list(label_scenarios) if label_scenarios else scenario_order()
    unknown = sorted(set(label_scs) - set(scenario_order()))
    if unknown:
        raise ConfigError(f"label-efficiency scenario(s) {', '.join(unknown)} unknown; valid: "
                          f"{', '.join(scenario_order())}")
    base = {"profile": profile, "data": data, "overrides_json": json.dumps(overrides or {}, sort_keys=True)}
    results, figures = paths.results_dir(profile), paths.figures_dir(profile)
    cfg_seed = notebook_config(profile, data=data, overrides_json=base["overrides_json"]).seed
    ae = "03_autoencoders"
    steps = [Step("01_eda", "01_eda", dict(base)), Step("02_augmentation", "02_augmentation", dict(base)),
             Step(ae, ae, {**base, "kinds": "xray,mask"},
                  outputs=(results / "ae_xray" / "metrics.json", results / "ae_mask" / "metrics.json"))]
    fine = [_finetune(base, results, sc, f"04_finetune-{sc}", sc, (ae,)) for sc in scenario_order()]
    for seed in seed_list(cfg_seed, seeds)[1:]:
        # the same split (and so the same test images) for every seed: only the
        # initialisation, the batch order and the augmentations change
        fine += [_finetune(base, results, sc, f"04_finetune-{sc}-seed{seed}", f"{sc}-seed{seed}", (ae,), seed=seed,
                           extra={"split_seed": cfg_seed}) for sc in scenario_order()]
    steps += fine
    main_runs = (ae, *(s.name for s in fine))
    steps.append(Step("05_results", "05_results", dict(base), deps=main_runs,
                      outputs=tuple(figures / f"figure{i}.png" for i in (5, 6, 7)) + (figures / "table4.md",)))
    steps.append(Step("06_covid_screening", "06_covid_screening", dict(base), deps=main_runs,
                      outputs=(figures / "covid_screening_summary.csv",)))
    for study in studies:
        sdir = f"studies/{study}"
        runs: list[Step] = []
        if study == "leakage":
            runs = [_finetune(base, results, sc, f"04_finetune-leakage-{sc}", f"{sdir}/{sc}-paper_protocol", (ae,),
                              extra={"protocol": "paper"}) for sc in LEAKAGE_SCENARIOS]
            nb = "07_leakage"
        elif study == "image_level":
            runs = [_finetune(base, results, "random_cls", "04_finetune-random_cls", f"{sdir}/random_cls", (ae,))]
            nb = "08_image_level"
        elif study == "pretext":
            pre = f"{ae}-pretext"
            runs = [Step(pre, ae, {**base, "kinds": ",".join(PRETEXT_KINDS)},
                         outputs=tuple(results / f"ae_{k}" / "metrics.json" for k in PRETEXT_KINDS))]
            runs += [_finetune(base, results, sc, f"04_finetune-{sc}", f"{sdir}/{sc}", (pre,))
                     for sc in PRETEXT_SCENARIOS]
            nb = "09_pretext"
        else:  # label_efficiency
            runs = [_finetune(base, results, sc, f"04_finetune-{sc}-labels{f:g}", f"{sdir}/{sc}-labels{f:g}", (ae,),
                              extra={"label_frac": f}) for f in fracs for sc in label_scs]
            nb = "10_label_efficiency"
        steps += runs
        steps.append(Step(nb, nb, dict(base), deps=(*main_runs, *(r.name for r in runs)),
                          outputs=(figures / f"{study}.csv", figures / f"{study}.png")))
    return steps


# -- markers ----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marker(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.done.json"


def _read_marker(out_dir: Path, name: str) -> dict[str, Any] | None:
    p = _marker(out_dir, name)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _dep_stamps(out_dir: Path, step: Step) -> dict[str, str | None]:
    return {d: (_read_marker(out_dir, d) or {}).get("finished_at") for d in step.deps}


def why_stale(step: Step, out_dir: Path, template: Path) -> str | None:
    """None when ``step`` is complete and up to date; else the reason to run it."""
    if not (out_dir / f"{step.name}.ipynb").exists():
        return "no executed copy"
    m = _read_marker(out_dir, step.name)
    if m is None:
        return "no completion marker (never finished)"
    if m.get("parameters") != step.parameters:
        return "parameters changed"
    if m.get("template_sha256") != _sha256(template):
        return "notebook template changed"
    if m.get("deps") != _dep_stamps(out_dir, step):
        return "an earlier notebook was rerun"
    missing = [p for p in step.outputs if not Path(p).exists()]
    if missing:
        return f"output missing: {missing[0]}"
    return None


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


def run_step(step: Step, template: Path, out_dir: Path) -> float:
    """Execute one notebook into ``out_dir`` atomically; returns the seconds taken.

    Raises:
        papermill's PapermillExecutionError (a cell failed; the partial copy is kept as
        ``<name>.failed.ipynb``) or any error starting the kernel.
    """
    import papermill as pm

    out = out_dir / f"{step.name}.ipynb"
    tmp = out_dir / f".{step.name}.running.ipynb"
    failed = out_dir / f"{step.name}.failed.ipynb"
    _marker(out_dir, step.name).unlink(missing_ok=True)  # a rerun that dies is never "complete"
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
    from .runio import atomic_write_json

    atomic_write_json(_marker(out_dir, step.name), {
        "name": step.name, "template": str(template), "template_sha256": _sha256(template),
        "parameters": step.parameters, "deps": _dep_stamps(out_dir, step),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "seconds": round(seconds, 2), "python": sys.executable,
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


def kernel_env() -> dict[str, str]:
    """What the kernels must share with this process: where outputs and the cache live, and
    a Jupyter path that finds this interpreter's ``python3`` kernel before any user-wide one."""
    jp = str(Path(sys.prefix) / "share" / "jupyter")
    old = os.environ.get("JUPYTER_PATH")
    return {"PNEUMO_HOME": str(paths.home()), "PNEUMO_CACHE": str(paths.cache_dir()),
            "JUPYTER_PATH": jp + (os.pathsep + old if old else "")}


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def reproduce(profile: str = "demo", data: str | None = None, force: bool = False,
              sets: Sequence[str] = (), seeds: int = 1, studies: str | Sequence[str] = "",
              label_fractions: Sequence[float] = LABEL_FRACTIONS,
              label_scenarios: Sequence[str] | None = None) -> int:
    """Run every notebook for ``profile`` (see the module docstring); 0 on success, 1 when a
    notebook fails (its executed copy and failing cell are printed).

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
            raise ConfigError(f"notebook template {template} is missing (regenerate with scripts/make_notebooks.py)")
        unknown = set(s.parameters) - _declared_parameters(template)
        if unknown:
            raise ConfigError(f"{template.name} declares no parameter(s) {', '.join(sorted(unknown))}; "
                              f"declared: {', '.join(sorted(_declared_parameters(template)))}")
    print(f"pneumo reproduce: profile {profile}, data {data or 'built-in phantom'}"
          + (f", overrides {overrides}" if overrides else "") + f"\n  executed notebooks -> {out_dir}", flush=True)
    t_all = time.perf_counter()
    with _Env(**kernel_env()):
        for i, s in enumerate(steps, 1):
            template = nb_dir / f"{s.template}.ipynb"
            tag = f"[{i:2d}/{len(steps)}] {s.name}"
            reason = "forced" if force else why_stale(s, out_dir, template)
            if reason is None:
                print(f"{tag}: complete, skipped", flush=True)
                continue
            print(f"{tag}: running ({reason}) ...", flush=True)
            try:
                seconds = run_step(s, template, out_dir)
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
    from .report import write_report

    report = write_report(profile)
    print(f"figures: {figs}/figure5.png, figure6.png, figure7.png, extra_metrics.png"
          + "".join(f", {s}.png" for s in study_names) + "\n"
          f"Table 4: {figs / 'table4.md'} (and table4.csv)\n"
          f"report: {report} (one self-contained HTML file)\n"
          f"total time: {_fmt_s(time.perf_counter() - t_all)}", flush=True)
    return 0
