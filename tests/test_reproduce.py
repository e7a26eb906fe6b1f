"""`pneumo reproduce --profile smoke`: every notebook through papermill, end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from conftest import run_pneumo


def test_reproduce_smoke_runs_every_notebook(pneumo_env):
    home = Path(pneumo_env["PNEUMO_HOME"])
    t0 = time.perf_counter()
    run_pneumo(["reproduce", "--profile", "smoke"], pneumo_env, timeout=600)
    wall = time.perf_counter() - t0
    assert wall < 300, f"reproduce --profile smoke took {wall:.0f} s (budget 300 s)"

    runs = home / "papermill_runs" / "smoke"
    names = ["01_eda", "02_augmentation", "03_autoencoders", "05_results"] + [
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
    assert redone == ["04_finetune-ae_full", "05_results"], proc.stdout
