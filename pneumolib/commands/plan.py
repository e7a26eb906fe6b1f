"""What ``pneumo reproduce`` runs: the notebooks of a profile in order, with their parameters,
dependencies and the outputs that must exist to skip them (:func:`plan`); ``--seeds`` and
``--studies`` add runs of the one ``04_finetune`` template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pneumolib import paths
from pneumolib.config import notebook_config
from pneumolib.errors import ConfigError
from pneumolib.models.scenarios import scenario_order

TEMPLATES = ("01_eda", "02_augmentation", "03_autoencoders", "04_finetune", "05_results", "06_covid_screening",
             "07_leakage", "08_image_level", "09_pretext", "10_label_efficiency")


@dataclass
class Step:
    """One notebook execution."""

    name: str                      # executed copy's stem, e.g. "04_finetune-random"
    template: str                  # notebook template stem, e.g. "04_finetune"
    parameters: dict[str, Any]
    deps: tuple[str, ...] = ()     # steps whose rerun makes this one stale
    outputs: tuple[Path, ...] = field(default_factory=tuple)  # must exist to skip
    runs: tuple[Path, ...] = field(default_factory=tuple)     # run folders it trains (03, 04)

    @property
    def trains(self) -> bool:
        """A step that trains: rerunning it costs hours on the paper profile."""
        return bool(self.runs)


#: The studies beyond the paper (``pneumo reproduce --studies``), in the order they run.
STUDIES = ("leakage", "image_level", "pretext", "label_efficiency")


#: Scenarios trained under the paper's leaky protocol in the leakage study.
LEAKAGE_SCENARIOS = ("random", "resnet50")


#: Autoencoders and scenarios of the pretext study (see pneumolib.models.scenarios.EXTRA_SCENARIOS).
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


def seed_list(base_seed: int, seeds: int) -> list[int]:
    """The seeds of a ``--seeds N`` run: the base seed (``--set seed=`` or the profile's),
    then +1, +2, ..."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    return [base_seed + i for i in range(seeds)]


def _finetune(base: dict[str, Any], results: Path, scenario: str, name: str, run_name: str,
              deps: tuple[str, ...], seed: int | None = None, extra: dict[str, Any] | None = None) -> Step:
    """A run of the ``04_finetune`` template (one template, many runs)."""
    params = {**base, "scenario": scenario, "run_name": run_name}
    if seed is not None:
        params["seed"] = seed
    if extra:
        params["overrides_json"] = json.dumps({**json.loads(base["overrides_json"]), **extra}, sort_keys=True)
    return Step(name, "04_finetune", params, deps=deps, outputs=(results / run_name / "metrics.json",),
                runs=(results / run_name,))


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
    overrides = dict(overrides or {})
    # the base seed (``--set seed=K`` or the profile's) travels as each run's own ``seed``
    # parameter, never inside overrides_json, where it would win over every run's seed
    cfg_seed = notebook_config(profile, data=data, overrides_json=json.dumps(overrides)).seed
    overrides.pop("seed", None)
    base = {"profile": profile, "data": data, "overrides_json": json.dumps(overrides, sort_keys=True),
            "seed": cfg_seed}
    results, figures = paths.results_dir(profile), paths.figures_dir(profile)
    split = {} if "split_seed" in overrides else {"split_seed": cfg_seed}
    ae = "03_autoencoders"
    steps = [Step("01_eda", "01_eda", dict(base)), Step("02_augmentation", "02_augmentation", dict(base)),
             Step(ae, ae, {**base, "kinds": "xray,mask"},
                  outputs=(results / "ae_xray" / "metrics.json", results / "ae_mask" / "metrics.json"),
                  runs=(results / "ae_xray", results / "ae_mask"))]
    fine = [_finetune(base, results, sc, f"04_finetune-{sc}", sc, (ae,)) for sc in scenario_order()]
    for seed in seed_list(cfg_seed, seeds)[1:]:
        # the same split (and so the same test images) for every seed: only the
        # initialisation, the batch order and the augmentations change
        fine += [_finetune(base, results, sc, f"04_finetune-{sc}-seed{seed}", f"{sc}-seed{seed}", (ae,), seed=seed,
                           extra=split) for sc in scenario_order()]
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
                         outputs=tuple(results / f"ae_{k}" / "metrics.json" for k in PRETEXT_KINDS),
                         runs=tuple(results / f"ae_{k}" for k in PRETEXT_KINDS))]
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
