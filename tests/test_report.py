"""The HTML report (pneumolib.reporting.report) on fake figure / result / papermill folders: no training."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pneumolib.reporting import report

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SCENARIOS = ["resnet50", "ae_encoder", "random"]


def _png(path: Path, color: str) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no backend to switch

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [0, 1], color=color)
    fig.savefig(path, dpi=20)
    return path


def _metrics(name: str, dice: float) -> dict:
    return {
        "name": name, "task": "seg", "scenario": name, "best_epoch": 3, "epochs_run": 5, "fit_seconds": 12.34,
        "data": {"kind": "phantom", "root": "/cache/phantom/n60", "protocol": "clean", "n_images": 60,
                 "fingerprint": "05b43f7c89da77aff71151831d19e3a0be41d0db"},
        "test": {"dice_pooled": dice},
        "provenance": {
            "git": {"commit": COMMIT, "dirty": False}, "time_utc": "2026-01-01T00:00:00+00:00",
            "versions": {"torch": "9.9.1", "pytorch-lightning": "8.8.2"},
            "device": {"cuda": True, "gpus": ["Fake GPU X1"], "cpu_count": 4, "torch_threads": 4},
        },
    }


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A PNEUMO_HOME with a finished 'demo' profile whose figure6.png is missing."""
    h = tmp_path / "home"
    monkeypatch.setenv("PNEUMO_HOME", str(h))
    figs = h / "figures" / "demo"
    figs.mkdir(parents=True)
    for stem, color in (("figure5", "red"), ("figure7", "blue"), ("extra_metrics", "green"),
                        ("image_level", "black"), ("zeta_study", "orange"), ("leakage", "purple")):
        _png(figs / f"{stem}.png", color)
    pd.DataFrame({
        "scenario": SCENARIOS, "label": ["ResNet-50 Encoder", "Pretrained encoder only", "Randomly initialized"],
        "dice_pooled": [0.4669603524229075, 0.0, float("nan")],
        "dice_pooled_ci_low": [0.41234, 0.0, float("nan")],
        "best_epoch": [5.0, 7.0, float("nan")],
        "note": ["<script>alert('x')</script>", "", "missing: no finished run"],
    }).to_csv(figs / "table4.csv", index=False)
    (figs / "table4.md").write_text(
        "# Table 4: segmentation of the six initialisation scenarios\n\nWhich Dice is which:\n"
        "- `dice_pooled` (ours): **pooled** over the test set\n\n| scenario | dice_pooled |\n|---|---|\n"
        "| resnet50 | 0.467 |\n\nColumns:\n- `best_epoch`: the epoch of the best checkpoint\n")
    pd.DataFrame({"run": ["random"], "auc": [0.81234]}).to_csv(figs / "image_level.csv", index=False)
    (figs / "image_level.md").write_text("# Image-level detection\n\nAUC of the maximum probability.\n")
    (figs / "leakage.md").write_text("# Leakage check\n\n| split | patients |\n|---|---|\n| a & b | 3 |\n")
    runs = h / "results" / "demo"
    for i, name in enumerate(SCENARIOS[:2]):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.json").write_text(json.dumps(_metrics(name, 0.1 * i)))
        (runs / name / "config.json").write_text(json.dumps({"name": "demo", "max_epochs": 5, "seed": 42 + i}))
    (runs / "unfinished").mkdir()
    pm = h / "papermill_runs" / "demo"
    pm.mkdir(parents=True)
    for name, sec in (("01_eda", 30.0), ("05_results", 60.0)):
        (pm / f"{name}.done.json").write_text(json.dumps({"name": name, "seconds": sec, "parameters": {"data": None},
                                                          "finished_at": f"2026-01-01T00:0{int(sec) // 30}:00"}))
    return h


def test_report_is_one_self_contained_file(home):
    figs = home / "figures" / "demo"
    before = {p.name for p in figs.iterdir()}
    out = report.write_report("demo")
    assert out == figs / "report.html" and out.is_file()
    assert {p.name for p in figs.iterdir()} - before == {"report.html"}  # nothing else written
    html = out.read_text(encoding="utf-8")

    # every PNG is embedded, and nothing is loaded from outside the file
    pngs = sorted(figs.glob("*.png"))
    assert html.count('src="data:image/png;base64,') == len(pngs) == 6
    for p in pngs:
        assert base64.b64encode(p.read_bytes()).decode() in html
    assert all(s.startswith("data:") for s in re.findall(r'(?:src|href)="([^"]*)"', html))
    assert "http://" not in html and "https://" not in html and "<link" not in html

    # summary: profile, data source, total time from the markers
    assert "phantom" in html and "/cache/phantom/n60" in html
    assert "90.0 s over 2 notebook(s)" in html

    # Figures 5-7 with captions, and a note for the missing one
    assert "figure6.png not found: run pneumo reproduce --profile demo" in html
    assert "(a) train loss" in html and "test IoU" in html and "pooled" in html

    # Table 4 from the CSV (3 decimals, all columns, integers kept), with the markdown notes
    for name in SCENARIOS:
        assert f"<td>{name}</td>" in html
    assert "0.467" in html and "0.4669" not in html and "0.412" in html and "dice_pooled_ci_low" in html
    assert '<td class="num">5</td>' in html
    assert "<strong>pooled</strong>" in html and "<code>best_epoch</code>" in html
    assert html.index("Which Dice is which") < html.index("<th>dice_pooled_ci_low</th>") < html.index("Columns:")

    # studies: known names first, then alphabetical; md caption; md-only table rendered
    order = [html.index(f'id="study-{s}"') for s in ("extra_metrics", "image_level", "leakage", "zeta_study")]
    assert order == sorted(order)
    assert "AUC of the maximum probability." in html and "0.812" in html
    assert "<td>a &amp; b</td>" in html and "Leakage check" in html

    # provenance: the commit, versions, device; the config in a <details>
    assert COMMIT in html and "9.9.1" in html and "8.8.2" in html and "Fake GPU X1" in html
    assert "<details><summary>Configuration of the profile" in html and "&quot;max_epochs&quot;: 5" in html
    assert "resnet50: seed" in html  # the run whose config differs is named

    # escaped: the <script> in a CSV cell is text, and the report has no script at all
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html


def test_missing_pieces_are_noted_not_fatal(home, tmp_path):
    figs = home / "figures" / "demo"
    for p in list(figs.iterdir()):
        p.unlink()
    import shutil

    shutil.rmtree(home / "results")
    shutil.rmtree(home / "papermill_runs")
    out = report.write_report("demo", tmp_path / "sub" / "r.html")
    html = out.read_text(encoding="utf-8")
    for i in (5, 6, 7):
        assert f"figure{i}.png not found: run pneumo reproduce --profile demo" in html
    assert "table4.csv and table4.md not found" in html
    assert "No further figures or tables" in html
    assert "unknown: no papermill markers" in html and "No run folder with a metrics.json" in html


def test_missing_figures_folder_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "empty"))
    with pytest.raises(report.ReportError, match="does not exist.*pneumo reproduce --profile demo"):
        report.write_report("demo")
    with pytest.raises(FileNotFoundError):
        report.write_report("demo")
    assert report.main(["--profile", "demo"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_main_writes_the_report(home, tmp_path, capsys):
    out = tmp_path / "mail" / "report.html"
    assert report.main(["--profile", "demo", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.is_file() and not (home / "figures" / "demo" / "report.html").exists()
