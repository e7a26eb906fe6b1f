"""`pneumo reproduce --profile smoke`: every notebook through papermill, end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from conftest import run_pneumo


def test_reproduce_smoke_runs_every_notebook(pneumo_env):
    home = Path(pneumo_env["PNEUMO_HOME"])
    t0 = time.perf_counter()
    run_pneumo(["reproduce", "--profile", "smoke"], pneumo_env, timeout=600)
    wall = time.perf_counter() - t0
    # budget: 300 s alone on two cores; the suite runs two test files side by side (pytest-xdist),
    # and the other one may be the two-process fault chain
    assert wall < 450, f"reproduce --profile smoke took {wall:.0f} s (budget 450 s beside another test file)"

    runs = home / "papermill_runs" / "smoke"
    names = ["01_eda", "02_augmentation", "03_autoencoders", "05_results", "06_covid_screening"] + [
        f"04_finetune-{s}" for s in ("random", "ae_full", "ae_full_frozen", "ae_encoder",
                                     "ae_encoder_mask_decoder", "resnet50")]
    for n in names:
        assert (runs / f"{n}.ipynb").exists(), n
    figs = home / "figures" / "smoke"
    for f in ("figure5.png", "figure6.png", "figure7.png", "table4.csv", "table4.md"):
        assert (figs / f).stat().st_size > 0, f
    t4 = pd.read_csv(figs / "table4.csv")
    assert len(t4) == 6 and t4["dice_pooled"].notna().all()
    assert {"paper_dice", "paper_iou", "dice_per_image"} <= set(t4.columns)
    assert "pooled" in (figs / "table4.md").read_text()

    # headless: a line per epoch, no progress-bar frames, a small executed copy
    for n in names:
        if n.startswith("04_finetune"):
            text = (runs / f"{n}.ipynb").read_text()
            assert (runs / f"{n}.ipynb").stat().st_size < 100_000 and "\\r" not in text, n

    # a second run skips every finished notebook
    t0 = time.perf_counter()
    proc = run_pneumo(["reproduce", "--profile", "smoke"], pneumo_env, timeout=300)
    assert time.perf_counter() - t0 < 60
    assert proc.stdout.count("complete, skipped") == len(names)

    # an interrupted notebook (no completion marker, no final copy) is the only one redone,
    # with the results notebook that reads its run
    (runs / "04_finetune-ae_full.done.json").unlink()
    (runs / "04_finetune-ae_full.ipynb").rename(runs / ".04_finetune-ae_full.running.ipynb")
    proc = run_pneumo(["reproduce", "--profile", "smoke"], pneumo_env, timeout=300)
    redone = [ln.split(":")[0].split()[-1] for ln in proc.stdout.splitlines() if ": done in" in ln]
    assert redone == ["04_finetune-ae_full", "05_results", "06_covid_screening"], proc.stdout

    # runs made by other code on the results path (faked in the records): reproduce serves
    # and retrains nothing, and says which runs came from which code
    fake = "0" * 16
    marker = runs / "04_finetune-random.done.json"
    m = json.loads(marker.read_text())
    m["code"]["results"] = fake
    marker.write_text(json.dumps(m))
    metrics = home / "results" / "smoke" / "random" / "metrics.json"
    mm = json.loads(metrics.read_text())
    mm["identity"]["code"] = fake
    metrics.write_text(json.dumps(mm))
    proc = run_pneumo(["reproduce", "--profile", "smoke"], pneumo_env, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"04_finetune-random: finished with code {fake}" in proc.stderr
    assert f"random: finished, trained by code {fake}" in proc.stderr and "Nothing was run" in proc.stderr
    # --keep-results keeps them, recorded; a change of code elsewhere reruns the notebooks that
    # do not train (here 01_eda) by themselves
    eda = runs / "01_eda.done.json"
    m = json.loads(eda.read_text())
    m["code"]["package"] = fake
    eda.write_text(json.dumps(m))
    proc = run_pneumo(["reproduce", "--profile", "smoke", "--keep-results"], pneumo_env, timeout=300)
    redone = [ln.split(":")[0].split()[-1] for ln in proc.stdout.splitlines() if ": done in" in ln]
    assert redone == ["01_eda"], proc.stdout
    kept = json.loads((runs / "kept_results.json").read_text())
    assert any(k.startswith("04_finetune-random") for k in kept["kept"])
    assert "Kept deliberately" in (figs / "report.html").read_text()
    # --rerun-changed trains that run again, afresh, and redraws what reads it
    proc = run_pneumo(["reproduce", "--profile", "smoke", "--rerun-changed"], pneumo_env, timeout=300)
    redone = [ln.split(":")[0].split()[-1] for ln in proc.stdout.splitlines() if ": done in" in ln]
    assert redone == ["04_finetune-random", "05_results", "06_covid_screening"], proc.stdout
    nb = (runs / "04_finetune-random.ipynb").read_text()
    assert "starting afresh" in nb and "code on the results path" in nb
    assert json.loads(metrics.read_text())["identity"]["code"] != fake

    # the screening notebook predicted every held-out image through the predict path
    screen = pd.read_csv(figs / "covid_screening.csv")
    assert len(screen) >= 10 and (screen["status"] == "ok").all()
    assert {"probability", "decision", "finding", "view"} <= set(screen.columns)

    # the studies beyond the paper on top of the finished runs (label efficiency cut to one
    # scenario and one fraction to keep the suite short): notebooks 07-10, their tables and
    # figures, and the HTML report with all of them
    t0 = time.perf_counter()
    proc = run_pneumo(["reproduce", "--profile", "smoke", "--studies", "all", "--label-fractions", "0.1",
                       "--label-scenarios", "random"], pneumo_env, timeout=600)
    wall = time.perf_counter() - t0
    assert proc.stdout.count("complete, skipped") == len(names)
    for nb in ("07_leakage", "08_image_level", "09_pretext", "10_label_efficiency"):
        assert (runs / f"{nb}.ipynb").exists(), nb
    for study in ("leakage", "image_level", "pretext", "label_efficiency"):
        for ext in ("csv", "md", "png"):
            assert (figs / f"{study}.{ext}").stat().st_size > 0, (study, ext)
    leak = pd.read_csv(figs / "leakage.csv")
    assert set(leak["protocol"]) == {"clean", "paper"}
    assert (leak.loc[leak["protocol"] == "clean", "leaked_test_items"] == 0).all()
    assert (leak.loc[leak["protocol"] == "paper", "leaked_test_items"] > 0).all()
    pretext = pd.read_csv(figs / "pretext.csv")
    assert {"genesis_full", "genesis_encoder", "noskip_encoder"} <= set(pretext["scenario"])
    noskip = pretext.loc[pretext["scenario"] == "noskip_encoder", "ae_copy_through_ratio"].item()
    assert noskip == 1.0  # every skip already zeroed: nothing to copy through
    lab = pd.read_csv(figs / "label_efficiency.csv")
    assert sorted(lab["label_frac"]) == [0.1, 1.0] and set(lab["scenario"]) == {"random"}
    image_level = pd.read_csv(figs / "image_level.csv")
    assert {"threshold", "triplet", "gate"} <= set(image_level["method"])
    assert (home / "results" / "smoke" / "random" / "postprocess.json").exists()
    html = (figs / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 8 and "Leakage study" in html
    print(f"studies on smoke: {wall:.0f} s")
