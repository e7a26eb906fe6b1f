"""The README and docs are a front door whose numbers come from committed run summaries."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from pneumolib.reporting import summaries

ROOT = Path(__file__).resolve().parents[1]


def test_every_generated_block_matches_its_summary():
    stale = summaries.check()
    assert not stale, ("these blocks differ from figures/readme/: run `python -m pneumolib.reporting.summaries "
                       "render` (after collecting a run of the committed code): " + "; ".join(stale))
    for doc in summaries.DOCUMENTS:
        text = (ROOT / doc).read_text()
        assert "<!-- summary:" not in text or summaries.BLOCK.search(text), doc


def test_a_changed_number_is_caught(tmp_path):
    """The check is not vacuous: alter one number in a summary and the README goes stale."""
    root = tmp_path / "readme"
    for d in summaries.SUMMARIES.iterdir():
        if d.is_dir():
            (root / d.name).mkdir(parents=True)
            for f in d.iterdir():
                (root / d.name / f.name).write_bytes(f.read_bytes())
    t4 = pd.read_csv(root / "demo" / "table4.csv")
    t4.loc[0, "dice_pooled"] += 0.01
    t4.to_csv(root / "demo" / "table4.csv", index=False)
    assert any("demo/table4" in s for s in summaries.check(root=root))


def test_the_summaries_are_of_the_code_as_it_is():
    """Every set's stamped commits are in this repository's history, its runs had no
    uncommitted changes, and no results-path code changed between the stamp and now; each
    failure names the command that regenerates the set."""
    from pneumolib.reporting import stamps

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: stamps cannot be checked against the history")
    reasons = []
    for run in sorted(summaries.SUMMARIES.glob("*/RUN.json")):
        try:
            reasons += stamps.stale_reasons(run.parent.name, json.loads(run.read_text()), ROOT, ROOT / "pneumolib")
        except LookupError as e:
            pytest.skip(f"shallow clone: {e}")
    assert not reasons, "\n".join(reasons)


@pytest.fixture()
def code_repo(tmp_path):
    """A git repository holding a copy of this package, one commit deep."""
    repo = tmp_path / "repo"
    for f in (ROOT / "pneumolib").rglob("*.py"):
        if "__pycache__" not in f.parts:
            dst = repo / "pneumolib" / f.relative_to(ROOT / "pneumolib")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "stamp")
    return repo, git


def test_a_stamp_goes_stale_on_a_made_up_commit_and_on_a_results_path_change(code_repo):
    from pneumolib import runio
    from pneumolib.reporting import stamps

    repo, git = code_repo
    pkg = repo / "pneumolib"
    stamp = {"commits": [git("rev-parse", "HEAD")], "command": "pneumo reproduce --seeds 5", "profile": "demo"}
    assert stamps.stale_reasons("s", stamp, repo, pkg) == []
    assert stamps.stale_reasons("s", {**stamp, "commits": ["0123456789abcdef0123456789abcdef01234567"]}, repo, pkg)[0] \
        .startswith("s: stamped commit 0123456789ab is not in this repository's history")
    assert "uncommitted" in stamps.stale_reasons("s", {**stamp, "commits": [stamp["commits"][0] + "+dirty"]},
                                                 repo, pkg)[0]
    # a comment, a docstring or a module off the results path: the stamp still holds
    trainer = pkg / "training" / "trainer.py"
    trainer.write_text(trainer.read_text().replace('"""', '"""Reworded. ', 1) + "\n# a comment\n")
    (pkg / "reporting" / "stamps.py").write_text((pkg / "reporting" / "stamps.py").read_text() + "\nX = 1\n")
    git("commit", "-qam", "comments and reporting")
    assert stamps.stale_reasons("s", stamp, repo, pkg) == []
    # code on the results path, committed or not: stale, naming the module and the fix
    trainer.write_text(trainer.read_text() + "\nEXTRA = 1\n")
    (why,) = stamps.stale_reasons("s", stamp, repo, pkg)
    assert "results-path code changed since" in why and "training/trainer.py" in why
    assert "pneumo reproduce --seeds 5" in why and "summaries collect --home /tmp/s --set s" in why
    git("commit", "-qam", "results path")
    assert stamps.stale_reasons("s", stamp, repo, pkg)
    # the command keeps the environment the run was made under; timed sets rerun the timing script
    assert stamps.regenerate_command("a", {"command": "ONEDNN_MAX_CPU_ISA=AVX2 pneumo reproduce --seeds 5"}) \
        .startswith("ONEDNN_MAX_CPU_ISA=AVX2 PNEUMO_HOME=/tmp/a .venv/bin/pneumo reproduce --seeds 5 && ")
    assert stamps.regenerate_command("d", {"timings": {"1": {"setup_seconds": 1}, "2": {"setup_seconds": 1}}}) \
        .startswith("scripts/time_fresh_clone.sh 1 d && scripts/time_fresh_clone.sh 2 d && ")
    # the hash of a past commit's files is the hash the runs recorded
    assert runio.sources_hash(stamps.results_sources_at("HEAD", repo)) == \
        runio.sources_hash(stamps.results_sources_now(pkg))


def test_summaries_check_reports_a_stale_stamp(tmp_path, monkeypatch, capsys):
    root = tmp_path / "readme"
    (root / "made_up").mkdir(parents=True)
    (root / "made_up" / "RUN.json").write_text(json.dumps({"commits": ["f" * 40], "command": "pneumo reproduce"}))
    monkeypatch.setattr(summaries, "SUMMARIES", root)
    monkeypatch.setattr(summaries, "check", lambda: [])
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert summaries.main(["check"]) == 1
    assert "stale stamp: made_up: stamped commit ffffffffffff is not in this repository's history" in \
        capsys.readouterr().out


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 11_000, "the README grew past ~10 KB: move detail into docs/"
    assert "./setup.sh && .venv/bin/python -m pytest" in text
    links = re.findall(r"\]\(((?:docs/)?[\w/.-]+\.md)\)", text)
    pages = sorted({p for p in links if p.startswith("docs/")})
    for p in pages:
        assert (ROOT / p).exists(), p
    for p in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{p.name}" in pages, f"docs/{p.name} is not linked from the README"
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (ROOT / img).exists(), img
    for doc in ("docs/RESULTS.md", "docs/STUDIES.md", "docs/DATA.md"):
        for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / doc).read_text()):
            assert (ROOT / "docs" / img).resolve().exists(), (doc, img)


# -- no measured number typed by hand ---------------------------------------------------------------
# A number "looks measured" when it is a decimal, a count with thousands separators, a number
# with a unit (img/s, s, min, %, MB, px, ...; "30x"), or two numbers set against each other
# ("13 vs 102"). Generated blocks, code (fenced or inline) and link targets are not prose.
_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_UNITS = (r"(?:img/s|images/s|images/min|img/min|it/s|steps/s|[GT]FLOP/s|seconds|sec|ms|min|minutes|hours|h|s|%"
          r"|[KMGT]i?B|px|W)")
MEASURED = re.compile(rf"(?<![\w.])(?:{_NUM}\s?{_UNITS}(?![\w/])|\d+(?:\.\d+)?x\b|{_NUM}\s+(?:vs\.?|against)\s+{_NUM}"
                      rf"|\d+\.\d+|\d{{1,3}}(?:,\d{{3}})+)")

_DOCS = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
_NOTEBOOKS = tuple(sorted(f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")))

#: The deliberate exceptions: (numbers, the documents they may stand in, why). Anything else
#: that looks measured must come from a generated block, be computed by a notebook cell, or go.
ALLOWED: list[tuple[set[str], set[str], str]] = [
    # -- the paper's own numbers, quoted from it --------------------------------------------------
    ({"0.60", "0.44"}, {"docs/METHODS.md"}, "the paper's Table 4: Dice / IoU of its best scenario"),
    ({"0.48", "0.23", "0.50", "0.53", "0.38"}, {"notebooks/05_results.ipynb"}, "the paper's Table 4"),
    ({"12,047", "2,669", "22 %", "9,378"}, {"notebooks/01_eda.ipynb", "notebooks/02_augmentation.ipynb",
                                            "notebooks/07_leakage.ipynb"},
     "the paper's Table 1 (images, positives, their share, negatives)"),
    ({"8,007", "17,385", "15,433", "1,952", "1,082", "46 %", "11.2 %", "11 %"}, {"notebooks/02_augmentation.ipynb",
                                                                               "notebooks/07_leakage.ipynb"},
     "the paper's Table 2 and shares computed from it (1,952 / 17,385; 8,007 / 17,385)"),
    ({"0.4828", "0.2488"}, {"notebooks/01_eda.ipynb"}, "the paper's normalisation mean / standard deviation"),
    ({"3.1", "3.2", "3.3"}, {"notebooks/01_eda.ipynb", "notebooks/02_augmentation.ipynb",
                             "notebooks/03_autoencoders.ipynb"}, "section numbers of the paper"),
    ({"3.8"}, {"docs/METHODS.md"}, "a section number of Davison & Hinkley (1997)"),
    ({"2 %"}, {"notebooks/06_covid_screening.ipynb"}, "pneumothorax in 1-2 % of COVID-19 cases, from the literature"),
    # -- settings, definitions and rules, not measurements ---------------------------------------
    ({"3.10"}, {"README.md"}, "the Python version required"),
    ({"512 px", "64 px", "32 px"}, {"README.md", "docs/METHODS.md", "docs/BENCHMARKS.md", "docs/DATA.md",
                                    "docs/DEVELOPING.md"}, "image sizes of the profiles (settings)"),
    ({"1024 px"}, {"docs/DATA.md"}, "the native size the real masks are decoded at"),
    ({"1,600", "60 %"}, {"README.md", "docs/METHODS.md", "notebooks/02_augmentation.ipynb"},
     "the demo profile's phantom size and test share (settings)"),
    ({"1,500", "256 px"}, {"notebooks/01_eda.ipynb"}, "the size of the reference phantom (a setting)"),
    ({"2,000 px", "500 px"}, {"notebooks/01_eda.ipynb", "notebooks/08_image_level.ipynb"},
     "the Kaggle winners' minimum mask area at 1024 px, and it scaled to 512 px (arithmetic)"),
    ({"95 %"}, {"docs/METHODS.md", "docs/RESULTS.md", "docs/STUDIES.md", "notebooks/05_results.ipynb",
                "notebooks/07_leakage.ipynb", "notebooks/09_pretext.ipynb", "notebooks/10_label_efficiency.ipynb"},
     "the level of every interval (a setting)"),
    ({"2.5", "97.5"}, {"docs/METHODS.md"}, "the percentiles a 95 % interval is made of (its definition)"),
    ({"1,000"}, {"docs/METHODS.md"}, "bootstrap replicates (a setting)"),
    ({"80 %"}, {"docs/METHODS.md"}, "a rule of thumb for when a choice is a coin toss, not a result"),
    ({"0.001"}, {"docs/METHODS.md", "notebooks/04_finetune.ipynb"}, "early stopping's min delta (a setting)"),
    ({"1 %"}, {"docs/METHODS.md", "notebooks/04_finetune.ipynb"}, "head_prior=0.01 (a setting)"),
    ({"0.5"}, {"docs/METHODS.md", "docs/PREDICT.md", "notebooks/06_covid_screening.ipynb"},
     "p = 0.5 at a zero bias (arithmetic); the default threshold (a setting)"),
    ({"1.0"}, {"docs/DATA.md"}, "the phantom's default difficulty (a setting)"),
    ({"1 %", "10 %", "100 %"}, {"docs/NOTEBOOKS.md", "docs/STUDIES.md", "notebooks/02_augmentation.ipynb",
                                "notebooks/10_label_efficiency.ipynb"},
     "the label fractions of the label-efficiency study (settings); in 02 a probability from the test share"),
    ({"30 s"}, {"docs/NOTEBOOKS.md"}, "torchrun's own default wait (its setting)"),
]


def prose(text: str) -> str:
    """``text`` without generated blocks, code and link targets: what a person typed as prose."""
    text = summaries.BLOCK.sub(lambda m: m.group(1) + m.group(4), text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def typed_numbers(doc: str, text: str) -> list[tuple[str, int, str]]:
    """``(document, line, number)`` of every number in ``text``'s prose that looks measured
    and is not allowed for ``doc``."""
    ok = set().union(*(nums for nums, docs, _ in ALLOWED if doc in docs))
    return [(doc, i, m.group(0)) for i, line in enumerate(prose(text).splitlines(), 1)
            for m in MEASURED.finditer(line) if m.group(0) not in ok]


def _notebook_markdown(path: str) -> str:
    cells = json.loads((ROOT / path).read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_no_measured_number_is_typed_by_hand():
    """README.md, docs/*.md and the notebooks' markdown hold no measured number outside the
    generated blocks, except the commented exceptions of :data:`ALLOWED`."""
    bad = [hit for d in _DOCS for hit in typed_numbers(d, (ROOT / d).read_text())]
    bad += [hit for nb in _NOTEBOOKS for hit in typed_numbers(nb, _notebook_markdown(nb))]
    assert not bad, ("numbers typed by hand (render them from a committed summary, compute them in the "
                     "notebook, or remove them; a deliberate exception goes on ALLOWED with why):\n"
                     + "\n".join(f"{d}: prose line {i}: {n!r}" for d, i, n in bad))
    for d in summaries.DOCUMENTS:
        assert d in _DOCS


def test_every_exception_is_still_needed():
    """No stale entry: each allowed number stands in each document it is allowed for."""
    found = {d: {m.group(0) for m in MEASURED.finditer(prose((ROOT / d).read_text()))} for d in _DOCS}
    found.update({nb: {m.group(0) for m in MEASURED.finditer(prose(_notebook_markdown(nb)))} for nb in _NOTEBOOKS})
    unused = sorted(n for nums, docs, _ in ALLOWED for n in nums if not any(n in found.get(d, set()) for d in docs))
    assert not unused, f"allowed numbers that none of their documents uses any more: {unused}"
    for nums, docs, why in ALLOWED:
        assert why and docs <= set(_DOCS) | set(_NOTEBOOKS), (nums, docs)


def test_the_scan_catches_what_it_should():
    """Known offenders are caught; the same numbers inside a block or code are not."""
    text = ("Loading: 13 img/s with 2 threads against 102 img/s with 1; 156 against 96 when quiet.\n"
            "Predicting empty scores about 0.78 at 22 % prevalence (0.7785 on the real data).\n"
            "2,669 → 8,007 positives; **585 images/min**; 9.0 min; 164.9 s; 1.2 GB; 30x faster.\n")
    got = {n for _, _, n in typed_numbers("docs/X.md", text)}
    assert {"13 img/s", "102 img/s", "156 against 96", "0.78", "22 %", "0.7785", "2,669", "8,007",
            "585 images/min", "9.0 min", "164.9 s", "1.2 GB", "30x"} <= got, got
    quiet = ("<!-- summary:demo/timing_total -->\n" + text + "<!-- /summary -->\n"
             "Run `pneumo bench --steps 15 --size 0.5` and\n```bash\nsleep 9.5s\n```\nsee [x](a/0.78.md).\n")
    assert typed_numbers("docs/X.md", quiet) == []
    assert typed_numbers("docs/METHODS.md", "the paper's 0.60 / 0.44 and 95 % intervals") == []
    assert typed_numbers("docs/RESULTS.md", "its 0.60") == [("docs/RESULTS.md", 1, "0.60")]


# -- where the machine and command of a summary come from -------------------------------------------
def test_stamps_take_machine_and_command_from_run_json(tmp_path):
    from pneumolib.machine import machine_summary
    from pneumolib.reporting import stamps

    assert stamps.machine_text({}) == "machine not recorded"
    assert stamps.machine_text({"machine": "x86_64, 2 CPUs, no GPU"}) == "x86_64, 2 CPUs, no GPU"
    facts = {"cpu_model": "Some CPU", "arch": "x86_64", "cpu_count": 16, "torch": "2.0", "gpus": []}
    assert stamps.machine_text({"machine": facts}) == machine_summary(facts)
    folder = tmp_path / "set"
    folder.mkdir()
    pd.DataFrame({"notebook": ["01_eda"], "seconds": [120.0]}).to_csv(folder / "timing-1.csv", index=False)
    (folder / "RUN.json").write_text(json.dumps({"timings": {"1": {"command": "pneumo reproduce --x"}}}))
    total = stamps.timing_block(folder, "timing_total")
    assert "machine not recorded" in total and "`pneumo reproduce --x`" in total and "2.0 min" in total
    assert "2-core" not in total and "fresh clone" not in total
    (folder / "RUN.json").write_text(json.dumps({"machine": facts, "command": "c", "timings": {"1": {}}}))
    total = stamps.timing_block(folder, "timing_total")
    assert machine_summary(facts) in total and "`c`" in total


def test_collect_writes_the_runs_machine(tmp_path, monkeypatch):
    facts = {"cpu_model": "Recorded CPU", "arch": "x86_64", "cpu_count": 3}
    run = tmp_path / "home" / "results" / "demo" / "random"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"task": "seg", "scenario": "random", "test": {"dice_pooled": 0.4},
                                                  "provenance": {"git": {"commit": "abc"}, "code": {"results": "r1"},
                                                                 "config": {"seed": 42},
                                                                 "device": {"machine": facts}}}))
    monkeypatch.setattr(summaries, "SUMMARIES", tmp_path / "readme")
    out = summaries.collect(tmp_path / "home", "t", command="pneumo reproduce", what=("tables",))
    stamp = json.loads((out / "RUN.json").read_text())
    assert stamp["machine"] == facts and stamp["machine_from"] == "the runs' metrics.json"
    assert stamp["commits"] == ["abc"] and stamp["command"] == "pneumo reproduce" and stamp["results_code"] == ["r1"]
    runs = pd.read_csv(out / "runs.csv")
    assert runs[["run", "scenario", "seed", "dice_pooled"]].values.tolist() == [["random", "random", 42, 0.4]]
    # a run whose ISA probe timed out (ISA inferred from the flags) is still the same machine
    other = tmp_path / "home" / "results" / "demo" / "ae_xray"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"provenance": {"git": {"commit": "abc"}, "device": {
        "machine": {**facts, "onednn_isa_method": "inferred from CPU flags"}}}}))
    assert summaries._run_machine(tmp_path / "home", "demo") == (facts, "the runs' metrics.json")
    (other / "metrics.json").write_text(json.dumps({"provenance": {"device": {
        "machine": {**facts, "cpu_model": "Another CPU"}}}}))
    assert summaries._run_machine(tmp_path / "home", "demo")[1].startswith("the machine that collected (the runs")


# -- the benchmark page and the real-data table -----------------------------------------------------
def test_benchmark_rows_name_their_model():
    from pneumolib.reporting import bench_blocks

    t = {"arch": "unet", "base_width": 16, "norm": "none", "size": 128, "batch_size": 8, "precision": "32-true",
         "device": "cpu", "images_per_s": {"plain": 10.0, "lightning": 9.0}, "ratio_lightning_over_plain": 0.9,
         "ratio_lightning_over_plain_median": 0.9, "ratio_lightning_over_plain_paired_median": 0.9,
         "seconds_repeats": {"plain": [1.0, 1.5], "lightning": [1.1, 1.2]}, "repeats": 2, "steps_timed": 3,
         "warmup_steps": 1}
    md = bench_blocks.fmt_training({"training": {"unet": t}})
    assert "paper U-Net, width 16, norm `none`" in md and "128 px, batch 8" in md and "+50 %" in md
    # a file from before norm was recorded: named by its parameter count (BatchNorm, the old default)
    old = json.loads((bench_blocks.RESULTS / "vm-2026-11-27.json").read_text())["training"]["unet"]
    assert "norm" not in old and bench_blocks.unet_norm(old).startswith("`batch`")


def test_real_split_summary_matches_the_table(tmp_path, monkeypatch):
    """figures/readme/real/paper_split.json is what real_split.compute() gives on the table."""
    import importlib.util

    from pneumolib.reporting import real_split

    if importlib.util.find_spec("torchxrayvision") is None:
        pytest.skip("torchxrayvision (the real RLE table) not installed")
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path))
    committed = json.loads((summaries.SUMMARIES / "real" / f"{real_split.NAME}.json").read_text())
    assert real_split.compute() == committed, "rerun `python -m pneumolib.reporting.summaries real`"


def test_pair_summaries_rank_only_over_seeds_and_images():
    """One seed: nothing is ranked and the page says why; several seeds: the told-apart pairs
    are named with their direction; an old pairs table without verdicts is refused."""
    one = pd.DataFrame({"a": ["x"], "b": ["y"], "diff": [0.1], "lo": [0.05], "hi": [0.15], "told_apart": [None],
                        "verdict": ["training variance unmeasured (1 seed)"]})
    assert "none of the 1 pairs is ranked" in summaries.fmt_pairs_short(one)
    assert "Not ranked (1 of 1)" in summaries.fmt_pairs(one) and "Told apart (0 of 1" in summaries.fmt_pairs(one)
    many = pd.DataFrame({"a": ["x", "x"], "b": ["y", "z"], "diff": [-0.1, 0.01], "lo": [-0.15, -0.02],
                         "hi": [-0.05, 0.04], "verdict": ["told apart", "not told apart"]})
    short = summaries.fmt_pairs_short(many)
    assert "**1 of the 2 pairs**" in short and "`y` > `x`" in short and "resampling training seeds" in short
    with pytest.raises(ValueError, match="no `verdict` column"):
        summaries.fmt_pairs(many.drop(columns="verdict"))


def test_ae_choice_summary_says_what_it_resampled():
    df = pd.DataFrame({"scenario": ["ae_full", "ae_encoder"], "val_dice_pooled": [0.3, 0.35], "n_seeds": [5, 5],
                       "share": [0.25, 0.75], "chosen": [False, True]})
    text = summaries.fmt_ae_choice(df)
    assert "`ae_encoder`" in text and "**75%**" in text and "training seeds and validation images" in text
    assert "training variance unmeasured" in summaries.fmt_ae_choice(df.assign(n_seeds=1))


def test_table4_says_what_its_intervals_resample():
    row = {"scenario": "x", "dice_pooled": 0.4, "dice_pooled_ci95_lo": 0.3, "dice_pooled_ci95_hi": 0.5,
           "dice_pooled_seed_sd": 0.05, "paper_dice": 0.5, "n_test_images": 100, "n_test_positive": 20}
    many = pd.DataFrame([{**row, "n_seeds": 5, "seeds": "1, 2, 3, 4, 5", "training_variance": "resampled (5 seeds)"}])
    one = pd.DataFrame([{**row, "n_seeds": 1, "seeds": "1", "training_variance": "unmeasured (1 seed)"}])
    for fmt in (summaries.fmt_table4, summaries.fmt_table4_short):
        assert "over training seeds and test images" in fmt(many) and "sd over seeds" in fmt(many)
        assert "test images only" in fmt(one) and "do not rank" in fmt(one) and "sd over seeds" not in fmt(one)
