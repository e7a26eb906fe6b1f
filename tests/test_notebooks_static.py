"""The notebook templates are stored stripped, thin and parameterised the one house way;
and the runner's bookkeeping (parameters, plan, completion markers) works without a kernel."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from pneumolib import config
from pneumolib.commands import markers
from pneumolib.commands import plan as plan_mod
from pneumolib.commands import reproduce
from pneumolib.config import Config

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NAMES = list(plan_mod.TEMPLATES)


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(str(NB_DIR / f"{name}.ipynb"), as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_every_template_exists_and_nothing_else():
    assert sorted(p.stem for p in NB_DIR.glob("*.ipynb")) == NAMES
    assert tuple(NAMES) == plan_mod.TEMPLATES


@pytest.mark.parametrize("name", NAMES)
def test_stored_stripped(name):
    nb = load(name)
    nbformat.validate(nb)
    for c in code_cells(nb):
        assert c.get("outputs") == [], f"{name}: a code cell has outputs"
        assert c.get("execution_count") is None, f"{name}: a code cell has an execution_count"
    assert "papermill" not in nb.metadata
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_one_parameters_cell_of_literals_then_the_config_cell(name):
    nb = load(name)
    cells = code_cells(nb)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged 'parameters'"
    params = cells[tagged[0]]
    names = []
    for stmt in ast.parse(params.source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), \
            f"{name}: parameters cell holds something other than NAME = literal: {ast.unparse(stmt)}"
        ast.literal_eval(stmt.value)  # raises on anything but a literal
        names.append(stmt.targets[0].id)
    assert {"profile", "data", "overrides_json"} <= set(names)
    assert len(names) == len(set(names))
    # papermill must see every one of them (it silently drops lines it cannot parse)
    import papermill as pm

    assert list(pm.inspect_notebook(str(NB_DIR / f"{name}.ipynb"))) == names
    # the next code cell builds the frozen Config from the parameters
    nxt = cells[tagged[0] + 1].source
    assert "notebook_config(" in nxt and "cfg =" in nxt
    # the parameters cell's defaults give a valid config
    values = {n: ast.literal_eval(s.value) for n, s in zip(names, ast.parse(params.source).body)}
    cfg = config.notebook_config(values.pop("profile"), data=values.pop("data"),
                                    overrides_json=values.pop("overrides_json"), seed=values.pop("seed", None))
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("name", NAMES)
def test_thin(name):
    nb = load(name)
    cells = code_cells(nb)
    assert len(cells) <= 15, f"{name}: {len(cells)} code cells"
    for c in cells:
        tree = ast.parse(c.source)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{name}: defines {type(node).__name__} in {c.source[:60]!r}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert mod.split(".")[0] == "pneumolib", f"{name}: imports {mod}; notebooks call into pneumolib only"
    assert any(c.cell_type == "markdown" for c in nb.cells)


def test_the_results_and_finetune_notebooks_say_which_dice():
    for name in ("04_finetune", "05_results"):
        text = " ".join(c.source for c in load(name).cells if c.cell_type == "markdown")
        assert "Pooled" in text or "pooled" in text
        assert "Kaggle" in text


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    """What a pair must agree on: each cell's type, source and tags."""
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("name", NAMES)
def test_text_and_ipynb_of_a_pair_agree(name):
    """notebooks/<name>.py (py:percent, what people diff) and <name>.ipynb (what JupyterLab and
    papermill open) hold the same cells; a teacher's edit in either must be synced
    (``jupytext --sync notebooks/*.py``) before it is committed."""
    import jupytext

    text = jupytext.read(NB_DIR / f"{name}.py", fmt="py:percent")
    assert _cells(text) == _cells(load(name)), (
        f"notebooks/{name}.py and {name}.ipynb disagree: run `jupytext --sync notebooks/{name}.py` "
        "(or save both from JupyterLab with jupytext) and commit both")


def test_pairing_is_declared_and_nothing_generates_the_notebooks():
    toml = (NB_DIR / "jupytext.toml").read_text()
    assert 'formats = "ipynb,py:percent"' in toml
    assert sorted(p.stem for p in NB_DIR.glob("*.py")) == NAMES
    assert not (ROOT / "scripts" / "make_notebooks.py").exists()


def test_plan_runs_the_finetune_template_once_per_scenario(tmp_path, monkeypatch):
    pytest.importorskip("pneumolib.models.scenarios")
    from pneumolib.models.scenarios import SCENARIOS

    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path))
    steps = plan_mod.plan("smoke", None, {"max_epochs": "1"})
    names = [s.name for s in steps]
    assert names[:3] == ["01_eda", "02_augmentation", "03_autoencoders"] and names[-2:] == ["05_results",
                                                                                          "06_covid_screening"]
    fine = [s for s in steps if s.template == "04_finetune"]
    assert sorted(s.parameters["scenario"] for s in fine) == sorted(SCENARIOS)
    assert fine[0].parameters["scenario"] == "random"
    for s in steps:
        assert s.parameters["profile"] == "smoke" and json.loads(s.parameters["overrides_json"]) == {"max_epochs": "1"}
        assert set(s.parameters) <= set(__import__("papermill").inspect_notebook(str(NB_DIR / f"{s.template}.ipynb")))
    assert all(d == "03_autoencoders" for s in fine for d in s.deps)
    assert set(steps[-2].deps) == {"03_autoencoders", *(s.name for s in fine)}


def test_completion_markers_decide_what_reruns(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    template = tmp_path / "t.ipynb"
    template.write_text("{}")
    result = tmp_path / "result.json"
    a = plan_mod.Step("a", "t", {"profile": "smoke"})
    b = plan_mod.Step("b", "t", {"profile": "smoke"}, deps=("a",), outputs=(result,))
    assert reproduce.why_stale(a, out, template) == "no executed copy"
    (out / "a.ipynb").write_text("{}")
    assert "marker" in reproduce.why_stale(a, out, template)

    def finish(step, when):
        (out / f"{step.name}.ipynb").write_text("{}")
        (out / f"{step.name}.done.json").write_text(json.dumps({
            "parameters": step.parameters, "template_sha256": markers.sha256_file(template),
            "deps": markers.dep_stamps(out, step), "finished_at": when, "code": code}))

    code = {"results": "r1", "package": "p1"}

    finish(a, "t1")
    assert reproduce.why_stale(a, out, template) is None
    a2 = plan_mod.Step("a", "t", {"profile": "demo"})
    assert reproduce.why_stale(a2, out, template) == "parameters changed"
    finish(b, "t2")
    assert reproduce.why_stale(b, out, template).startswith("output missing")
    result.write_text("{}")
    assert reproduce.why_stale(b, out, template) is None
    finish(a, "t3")  # a reran: b is stale
    assert reproduce.why_stale(b, out, template) == "an earlier notebook was rerun"
    # code: a notebook that does not train reruns when any pneumolib code changed; one that
    # trains only on request (reproduce asks first: markers.code_changes)
    assert reproduce.why_stale(a, out, template, code) is None
    assert reproduce.why_stale(a, out, template, {"results": "r1", "package": "p2"}).startswith("pneumolib code changed")
    t = plan_mod.Step("t", "t", {"profile": "smoke"}, runs=(tmp_path / "run",))
    finish(t, "t4")
    new = {"results": "r2", "package": "p2"}
    assert reproduce.why_stale(t, out, template, new) is None
    assert markers.code_changes(t, out, new) == ["t: finished with code r1 (commit None)"]
    assert "other code" in reproduce.why_stale(t, out, template, new, rerun_changed=True)
    template.write_text('{"changed": 1}')
    assert reproduce.why_stale(a, out, template) == "notebook template changed"


def test_kernel_env_shares_home_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path / "c"))
    env = reproduce.kernel_env()
    assert env["PNEUMO_HOME"] == str((tmp_path / "h").resolve())
    assert env["PNEUMO_CACHE"] == str((tmp_path / "c").resolve())
    assert env["JUPYTER_PATH"].split(":")[0].endswith("share/jupyter")
    assert env["PNEUMO_HEADLESS"] == "1" and env["PNEUMO_DIE_WITH_PARENT"] == "1"
