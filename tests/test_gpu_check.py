"""`pneumo bench --gpu` on a machine without a GPU: it refuses clearly, and its pure parts
(peaks, budget, timing windows, projection, recommendations, the JSON of a run, the epoch's
read-back) are right. The CUDA measurements themselves are replaced by fakes here."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from pneumolib.cli import parse_args
from pneumolib.commands import bench
from pneumolib.commands.gpu import advice, budget, check, children, command, measure
from pneumolib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _no_cuda_env(tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore", PNEUMO_HOME=str(tmp_path / "home"),
               PNEUMO_CACHE=str(tmp_path / "cache"))
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- refusal without CUDA -----------------------------------------------------------------
def test_cli_refuses_without_cuda(tmp_path):
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "pneumolib.cli", "bench", "--gpu", "--out", str(out)],
                       env=_no_cuda_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "needs CUDA" in lines[0] and "512 px" in lines[0] and "Nothing was written" in lines[0]
    assert not out.exists()
    assert not list(tmp_path.rglob("gpu-*.json"))


def test_wrapper_refuses_without_cuda(tmp_path):
    out = tmp_path / "results"
    env = {**_no_cuda_env(tmp_path), "PYTHON": sys.executable, "OUT_DIR": str(out), "BUDGET_S": "60"}
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2, (p.stdout, p.stderr)
    both = p.stdout + p.stderr
    assert "needs CUDA" in both and "no JSON written" in both and "Traceback" not in both
    assert not out.exists()


def test_bad_options_are_refused_before_cuda():
    with pytest.raises(ConfigError, match="--quick"):
        command.main(quick=True)
    with pytest.raises(ConfigError, match="compile"):
        command.main(skip="compile,nonsense")
    with pytest.raises(ConfigError, match="budget"):
        command.main(budget_s=5)


def test_cli_parses_gpu_options():
    a = parse_args(["bench", "--gpu", "--budget-s", "240", "--epoch-images", "256", "--skip", "compile"])
    assert a.gpu and a.budget_s == 240 and a.epoch_images == 256 and a.skip == "compile"
    b = parse_args(["bench"])
    assert not b.gpu and b.budget_s == 300


def test_plain_bench_cuda_part_points_at_gpu(tmp_path, monkeypatch):
    res = bench.run(out=tmp_path, work=tmp_path / "w", parts=("cuda",), settings={}, echo=lambda s: None)
    if not torch.cuda.is_available():
        assert res["cuda"] == {"skipped": "no CUDA"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "machine_info", lambda: {"hostname": "h"})
    res = bench.run(out=tmp_path, work=tmp_path / "w", parts=("cuda",), settings={}, echo=lambda s: None)
    assert "pneumo bench --gpu" in res["cuda"]["skipped"]


# -- peaks ----------------------------------------------------------------------------------
def test_peaks_lookup_by_whole_words():
    assert budget.gpu_peaks("NVIDIA H200")["matched"] == "H200"
    assert budget.gpu_peaks("NVIDIA H200 NVL")["matched"] == "H200 NVL"
    assert budget.gpu_peaks("NVIDIA H100 80GB HBM3")["matched"] == "H100"
    assert budget.gpu_peaks("NVIDIA A100-SXM4-80GB")["matched"] == "A100"
    assert budget.gpu_peaks("NVIDIA A10")["matched"] == "A10"
    assert budget.gpu_peaks("NVIDIA A10G") is None  # not an A10, not an A100
    assert budget.gpu_peaks("NVIDIA L40S")["matched"] == "L40S"
    assert budget.gpu_peaks("NVIDIA L4")["matched"] == "L4"
    assert "bf16" not in budget.gpu_peaks("Tesla V100-SXM2-16GB")
    assert budget.gpu_peaks(None) is None and budget.gpu_peaks("Some GPU") is None
    for _, peaks in budget.GPU_PEAKS_TFLOPS:  # dense tensor-core peaks are above the plain fp32 one
        assert peaks["fp16"] >= peaks["fp32"]


def test_peak_kind_and_fraction():
    assert budget.peak_kind("16-mixed", True) == "fp16"
    assert budget.peak_kind("bf16-mixed", True) == "bf16"
    assert budget.peak_kind("32-true", True) == "tf32"
    assert budget.peak_kind("32-true", False) == "fp32"
    row = {"precision": "32-true", "train_images_per_s": 100.0, "eval_images_per_s": 300.0}
    measure.add_flops(row, {"train_per_image": 10**12, "forward_per_image": 3 * 10**11}, budget.gpu_peaks("NVIDIA H200"), True)
    assert row["achieved_tflops"] == 100.0 and row["peak_kind"] == "tf32"
    assert row["fraction_of_peak"] == pytest.approx(100 / 494.7, abs=1e-4)
    assert row["fraction_of_fp32_peak"] == pytest.approx(100 / 66.9, abs=1e-4)
    assert row["eval_achieved_tflops"] == 90.0
    bare = {"precision": "bf16-mixed", "train_images_per_s": 1.0}
    measure.add_flops(bare, {"train_per_image": 10**12, "forward_per_image": 1}, budget.gpu_peaks("Tesla T4"), True)
    assert "fraction_of_peak" not in bare and bare["peak_kind"] == "bf16"


# -- budget and timing ----------------------------------------------------------------------
class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_budget_with_a_fake_clock():
    c = Clock()
    b = budget.Budget(100, reserve_s=10, clock=c, already_used_s=4, margin_s=5)
    assert b.used() == 4 and b.usable() == 86 and b.distributable() == 81
    c.t += 80
    assert b.usable() == 6 and b.distributable() == 1
    c.t += 50
    assert b.left() < 0 and b.distributable() == 0


def test_time_steps_syncs_only_at_window_ends():
    c = Clock(0.0)
    log = []

    def step():
        c.t += 0.1
        log.append("step")

    def sync():
        log.append("sync")

    tm = budget.time_steps(step, sync, warmup=2, probe=2, window_s=0.5, windows=3, min_steps=1, max_steps=40, clock=c)
    assert tm["steps"] == 5 and tm["seconds"] == pytest.approx([0.5, 0.5, 0.5])
    assert tm["warmup_s"] == pytest.approx(0.2) and tm["probe_step_s"] == pytest.approx(0.1)
    # warm-up, probe, then each window: its steps and one sync at its end
    assert log == ["step"] * 2 + ["sync"] + ["step"] * 2 + ["sync"] + (["step"] * 5 + ["sync"]) * 3
    slow = budget.time_steps(lambda: setattr(c, "t", c.t + 10), lambda: None, window_s=1.5, min_steps=3, clock=c)
    assert slow["steps"] == 3  # never fewer than min_steps


def test_measure_on_cpu_and_oom_is_a_row():
    s = measure.Settings(size=16, batch_size=2, warmup_steps=1, probe_steps=1, window_s=0.01, windows=2, min_steps=1,
                   max_steps=2, eval_window_s=0.01)

    def tiny(arch, s_):
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))

    row = measure.measure("unet", "32-true", True, s, torch.device("cpu"), builder=tiny)
    assert "error" not in row, row
    assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
    assert len(row["train_images_per_s_windows"]) == 2 and row["channels_last"] is True

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    old = torch.backends.cudnn.benchmark
    row = measure.measure("unet", "32-true", False, s, torch.device("cpu"), builder=lambda a, s_: Boom(),
                    cudnn_benchmark=not old)
    assert row["oom"] is True and row["error"].startswith("out of memory in train")
    assert "train_images_per_s" not in row
    assert torch.backends.cudnn.benchmark is old  # restored


def test_count_flops_of_a_conv():
    model = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    f = measure.count_flops(model, 8, torch.device("cpu"))
    fwd = 2 * 8 * 8 * 9  # 2 FLOPs per multiply-add, 64 outputs x 9 taps
    assert f["forward_per_image"] == fwd
    assert f["train_per_image"] == 2 * fwd  # forward + weight gradient (no input gradient)


# -- projection -----------------------------------------------------------------------------
RT = {"unet": 100.0, "resnet50": 200.0}
RE = {"unet": 400.0, "resnet50": 800.0}


def test_projection_arithmetic():
    assert budget.paper_items() == {"train": 13890, "val": 1543, "test": 1952}
    ev = 1543 + 1952
    unet_run = 50 * (13890 / 100 + ev / 400) + ev / 400
    resnet_run = 50 * (13890 / 200 + ev / 800) + ev / 800
    total = 7 * unet_run + 1 * resnet_run
    p = budget.project_paper(RT, RE)
    assert p["hours_compute_only_one_gpu"] == pytest.approx(total / 3600, abs=0.01)
    assert p["hours_one_gpu"] == pytest.approx(total / 3600, abs=0.01)
    assert p["hours_two_gpus"] == pytest.approx(total / 3600 / 1.9, abs=0.01)
    assert "assumed" in p["gpus"]["2"]["factor_source"] and "assumed" in p["gpus"]["1"]["factor_source"]
    assert p["compute_seconds_per_epoch_one_gpu"]["unet"] == pytest.approx(13890 / 100 + ev / 400, abs=0.1)


def test_projection_with_measured_factors():
    p = budget.project_paper(RT, RE, end_to_end={1: 0.8}, visible_gpus=1)
    comp = p["hours_compute_only_one_gpu"]
    assert p["hours_one_gpu"] == pytest.approx(comp / 0.8, rel=0.01)
    assert p["hours_two_gpus"] == pytest.approx(comp / (0.8 * 1.9), rel=0.01)
    assert p["gpus"]["1"]["factor_source"].startswith("measured")
    assert "assumed" in p["gpus"]["2"]["factor_source"] and "0.800 measured" in p["gpus"]["2"]["factor_source"]
    q = budget.project_paper(RT, RE, end_to_end={1: 0.8, 4: 2.4}, visible_gpus=4)
    assert set(q["gpus"]) == {"1", "2", "4"}
    assert q["hours_visible_gpus"] == pytest.approx(comp / 2.4, rel=0.01)
    assert q["gpus"]["4"]["measured_speedup_over_one_gpu"] == pytest.approx(3.0)
    assert q["gpus"]["4"]["factor_source"].startswith("measured")


def test_choose_epoch_images_fits_the_allotment():
    assert budget.choose_epoch_images(300.0, 900.0, 120, 2) == 1024
    small = budget.choose_epoch_images(30.0, 90.0, 60, 2)
    assert small is not None and small < 1024
    assert budget.choose_epoch_images(30.0, 90.0, 40, 1, fixed_s=45) is None  # the fixed costs alone do not fit
    assert budget.choose_epoch_images(300.0, 900.0, 120, 2, max_images=600) == 512  # the phantom's limit
    assert budget.choose_epoch_images(None, None, 200, 1) is not None  # no rate measured: a guess


# -- recommendations on a fake result -------------------------------------------------------
def _row(arch, precision, cl, train, ev=None, **kw):
    return {"arch": arch, "precision": precision, "channels_last": cl, "cudnn_benchmark": False, "compile": False,
            "train_images_per_s": train, "eval_images_per_s": ev or 3 * train, "train_peak_memory_gib": 20.0, **kw}


def fake_rows():
    rows = []
    for arch, k in (("unet", 1.0), ("resnet50", 3.0)):
        rows += [_row(arch, "16-mixed", False, 100 * k), _row(arch, "16-mixed", True, 120 * k),
                 _row(arch, "bf16-mixed", False, 101 * k), _row(arch, "bf16-mixed", True, 122 * k),
                 _row(arch, "32-true", False, 40 * k), _row(arch, "32-true", True, 45 * k)]
    rows.append({"arch": "unet", "precision": "32-true", "channels_last": True, "error": "out of memory in train"})
    return rows


def test_recommendations_from_a_fake_result():
    res = {"rows": fake_rows(),
           "cudnn_benchmark": {"precision": "16-mixed", "channels_last": True, "pairs": {
               "unet": {"off": _row("unet", "16-mixed", True, 120), "on": _row("unet", "16-mixed", True, 132)},
               "resnet50": {"off": _row("resnet50", "16-mixed", True, 360),
                            "on": _row("resnet50", "16-mixed", True, 396)}}},
           "compile": {"precision": "16-mixed", "channels_last": True,
                       "rows": {"unet": {"arch": "unet", "train_images_per_s": 121.0, "train_warmup_s": 55.0}}}}
    rec = advice.recommend(res)
    p = rec["precision"]
    assert p["favoured"] == "bf16-mixed" and p["default"] == "16-mixed"
    assert p["recommended"] == "16-mixed" and p["change_default"] is False  # 1-2 % is within noise
    assert "within noise" in p["basis"] and set(p["projected_compute_hours_one_gpu"]) == set(budget.PRECISIONS_CUDA)
    c = rec["channels_last"]
    assert c["recommended"] is True and c["change_default"] is True and c["at_precision"] == "16-mixed"
    assert c["gain_over_default"] == pytest.approx(0.2, abs=0.01)
    b = rec["cudnn_benchmark"]
    assert b["recommended"] is True and b["change_default"] is True
    k = rec["compile"]
    assert k["favoured"] is True and k["change_default"] is False  # 121 vs 120: noise
    assert "unet runs only" in k["basis"] and k["compile_seconds"] == {"unet": 55.0}
    assert rec["change"] == {"channels_last": True, "cudnn_benchmark": True}
    assert set(rec["summary"]) == {"precision", "channels_last", "cudnn_benchmark", "compile"}


def test_recommendations_without_measurements_keep_the_defaults():
    rec = advice.recommend({"rows": [], "compile": {"skipped": "budget: needs about 120 s"}})
    assert rec["change"] == {}
    assert rec["precision"]["favoured"] is None and rec["precision"]["recommended"] == "16-mixed"
    assert rec["compile"]["recommended"] is False and "needs about 120 s" in rec["compile"]["basis"]
    assert rec["cudnn_benchmark"]["basis"].startswith("not measured")


# -- a whole run with fakes: the JSON's schema and the budget --------------------------------
def _fakes(clock: Clock, cost: float):
    speed = {(r["arch"], r["precision"], r["channels_last"]): r["train_images_per_s"]
             for r in fake_rows() if "error" not in r}

    def measure_fn(arch, precision, cl, s, device, cudnn_benchmark=False, compile=False, **kw):
        clock.t += cost
        v = speed[(arch, precision, cl)] * (1.1 if cudnn_benchmark else 1.0)
        return _row(arch, precision, cl, v, cudnn_benchmark=cudnn_benchmark, seconds=cost)

    def epoch_fn(work, n, devices, epochs, timeout, size, batch_size, **kw):
        clock.t += 3 * cost
        return {"devices": devices, "phantom_images": n, "n_items": {"train": 800, "val": 100, "test": 100},
                "epochs": [{"epoch": 0, "time_s": 20.0}, {"epoch": 1, "time_s": 10.0}], "epoch_seconds": 10.0,
                "train_images_per_s": 80.0}

    def compile_fn(arch, precision, cl, s, timeout, work):
        clock.t += 6 * cost
        return {"arch": arch, "precision": precision, "channels_last": cl, "compile": True,
                "train_images_per_s": speed[(arch, precision, cl)] * 1.3, "train_warmup_s": 50.0}

    def flops_fn(arch, s, device):
        return {"train_per_image": 1_443_813_654_528 if arch == "unet" else 252_304_162_816,
                "forward_per_image": 481_371_881_472 if arch == "unet" else 84_238_401_536}

    return {"measure_fn": measure_fn, "epoch_fn": epoch_fn, "compile_fn": compile_fn, "flops_fn": flops_fn,
            "probe_fn": lambda work, size: 0.01}


def test_json_schema_of_a_fake_run(tmp_path):
    c = Clock()
    res = check.run_gpu_check(out=tmp_path / "results", budget_s=300, work=tmp_path / "work",
                          device=torch.device("cpu"), clock=c, echo=lambda s: None, **_fakes(c, 2.0))
    path = Path(res["_path"])
    assert path.parent == tmp_path / "results" and path.name.startswith("gpu-") and path.suffix == ".json"
    data = json.loads(path.read_text())
    for key in ("schema", "complete", "command", "date", "machine", "gpus", "visible_gpus", "versions", "git",
                "tf32", "peaks_tflops", "peak_note", "settings", "flops", "rows", "epoch", "cudnn_benchmark",
                "compile", "projection", "recommendations", "budget", "parts", "skipped", "errors",
                "seconds_total"):
        assert key in data, key
    assert data["schema"] == budget.SCHEMA and data["complete"] is True and data["errors"] == []
    order = [p["part"] for p in data["parts"]]
    # priority: core rows, the epoch, bf16 / channels-last, the U-Net's switches, fp32, the ResNet-50's
    assert order.index("epoch") < order.index("row:unet:bf16-mixed:cl=False") < order.index("compile:unet") \
        < order.index("row:unet:32-true:cl=False") < order.index("compile:resnet50")
    assert data["skipped"] == [] and data["budget"]["seconds_used"] <= 300
    assert {(r["arch"], r["precision"], r["channels_last"]) for r in data["rows"]} == {
        (a, p, cl) for a in budget.ARCHS for p in budget.PRECISIONS_CUDA for cl in (False, True)}
    for r in data["rows"]:
        assert r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0 and r["achieved_tflops"] > 0
        assert r["peak_kind"] in ("fp16", "bf16", "tf32", "fp32")
    assert data["epoch"]["end_to_end_factor"] == pytest.approx(
        (800 / 100 + 200 / 300) / 10.0, rel=1e-3)
    assert data["cudnn_benchmark"]["precision"] == "16-mixed" and data["cudnn_benchmark"]["channels_last"] is True
    assert set(data["cudnn_benchmark"]["pairs"]) == {"unet", "resnet50"}
    assert set(data["compile"]["rows"]) == {"unet", "resnet50"}
    for key in ("paper_profile_as_configured", "recommended_precision_and_memory_format"):
        proj = data["projection"][key]
        assert proj["gpus"]["1"]["factor_source"].startswith("measured")
        assert "assumed" in proj["gpus"]["2"]["factor_source"]
    rec = data["recommendations"]
    assert rec["summary"] == {"precision": "16-mixed", "channels_last": True, "cudnn_benchmark": True,
                              "compile": True}
    # training 30 % faster; evaluation keeps the uncompiled rate, so the whole profile gains less
    assert 0.2 < rec["compile"]["gain_over_default"] < 0.3
    table = command.format_gpu_table(data)
    assert "recommend channels_last" in table and "projection: paper profile as configured" in table


def test_parts_past_their_shares_are_recorded_not_measured(tmp_path):
    c = Clock()  # every fake part takes 10 s of a fake clock: more than any share of 100 s
    res = check.run_gpu_check(out=tmp_path / "results", budget_s=100, work=tmp_path / "work",
                              device=torch.device("cpu"), clock=c, echo=lambda s: None, **_fakes(c, 10.0))
    data = json.loads(Path(res["_path"]).read_text())
    assert data["complete"] is True and data["errors"] == []
    assert data["shares"]["distributed_s"] == 100 - 12 - 8 and data["shares"]["total_s"] == 92
    # every row: a measurement or a reason; the core rows (the paper's 16-mixed) come first
    assert [(r["arch"], r["precision"], r["channels_last"]) for r in data["rows"][:2]] == [
        ("unet", "16-mixed", False), ("resnet50", "16-mixed", False)]
    reason = r"(over its [\d.]+ s share|[\d.]+ s left of its [\d.]+ s share.*|no time left of its [\d.]+ s share)$"
    for r in data["rows"]:
        assert r.get("train_images_per_s") or re.match(reason, r["not_measured"]), r
    statuses = {p["part"]: p["status"] for p in data["parts"]}
    assert list(statuses) == [p for p, _, _ in budget.part_plan(list(budget.ARCHS), set(), 1, None, None)]
    own = data["shares"]["parts"]["row:unet:16-mixed:cl=False"]["share_s"]
    rest = data["shares"]["parts"]["flops:unet"]["share_s"]  # the fast flops part left its share over
    assert statuses["row:unet:16-mixed:cl=False"] == f"not measured: over its {own + rest:.1f} s share"
    assert all(st == "ok" or re.match(reason, st.removeprefix("not measured: ")) for st in statuses.values())
    assert {s["part"] for s in data["skipped"]} == {p for p, st in statuses.items() if st != "ok"}
    # the epoch needs 30 s and was not started: its time flowed forward to the rows after it
    assert "it needs at least 30 s" in data["epoch"]["skipped"]
    after = next(p for p in data["parts"] if p["part"] == "row:unet:16-mixed:cl=True")
    assert after["status"] == "ok" and after["available_s"] > after["share_s"] + 10
    assert "needs at least 40 s" in data["compile"]["skipped"]
    assert data["recommendations"]["compile"]["recommended"] is False
    assert "not measured" in command.format_gpu_table(data)


def test_skip_option_and_oom_rows(tmp_path):
    c = Clock()
    fakes = _fakes(c, 1.0)
    inner = fakes["measure_fn"]

    def oom_fp32(arch, precision, cl, s, device, **kw):
        if precision == "32-true":
            return {"arch": arch, "precision": precision, "channels_last": cl, "error": "out of memory in train",
                    "oom": True, "seconds": 1.0}
        return inner(arch, precision, cl, s, device, **kw)

    fakes["measure_fn"] = oom_fp32
    res = check.run_gpu_check(out=tmp_path / "r", budget_s=300, work=tmp_path / "w", device=torch.device("cpu"),
                          clock=c, echo=lambda s: None, skip={"compile", "epoch"}, **fakes)
    assert res["compile"]["skipped"] == "--skip" and res["epoch"]["skipped"] == "--skip"
    ooms = [r for r in res["rows"] if r.get("oom")]
    assert len(ooms) == 4 and all("achieved_tflops" not in r for r in ooms)
    prec = res["recommendations"]["precision"]
    assert set(prec["projected_compute_hours_one_gpu"]) == {"16-mixed", "bf16-mixed"}  # 32-true ran out of memory
    assert "out of memory" in prec["not_compared"]["32-true"] and prec["favoured"] == "bf16-mixed"
    assert len(prec["projected_compute_hours_one_gpu"]) == 2 and "whole paper profile" in prec["basis"]
    assert "out of memory" in command.format_gpu_table(res)


# -- the epoch part's read-back ------------------------------------------------------------
def test_run_epoch_reads_back_the_run(tmp_path):
    calls = []

    def runner(cmd, timeout_s, log, env=None):
        calls.append(cmd)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("log line\n")
        if "phantom" in cmd:
            Path(cmd[cmd.index("--out") + 1]).mkdir(parents=True)
        else:
            run = Path(cmd[cmd.index("--out") + 1])
            run.mkdir(parents=True)
            with open(run / "epochs.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["epoch", "train_loss", "val_loss", "time_s"])
                w.writerow([0, 1.2, 1.1, 12.0])
                w.writerow([1, 1.0, 0.9, 8.0])
            (run / "metrics.json").write_text(json.dumps(
                {"fit_seconds": 23.0, "data": {"n_items": {"train": 800, "val": 90, "test": 110}}}))
            (run / "config.json").write_text(json.dumps({"precision": "16-mixed", "strategy": "ddp", "devices": "2"}))
        return {"rc": 0, "timed_out": False, "seconds": 30.0, "log": str(log)}

    r = children.run_epoch(tmp_path, 256, 2, 2, 100, runner=runner)
    phantom, train = calls
    assert phantom[phantom.index("--layout") + 1] == "siim-dicom" and phantom[phantom.index("--n") + 1] == "256"
    assert train[train.index("--profile") + 1] == "paper" and train[train.index("--strategy") + 1] == "ddp"
    assert train[train.index("--devices") + 1] == "2" and train[train.index("--max-epochs") + 1] == "2"
    assert "allow_phantom=true" in train
    assert r["steady_epoch"] == 1 and r["epoch_seconds"] == 8.0
    assert r["train_images_per_s"] == 100.0 and r["all_images_per_s"] == 125.0
    assert r["fit_seconds_outside_epochs"] == 3.0 and r["run_config"]["strategy"] == "ddp"
    assert "error" not in r

    def killed(cmd, timeout_s, log, env=None):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("epoch 0 ...\n")
        return {"rc": -15, "timed_out": True, "seconds": timeout_s, "log": str(log)}

    r = children.run_epoch(tmp_path / "k", 128, 1, 1, 50, runner=killed)
    assert "timed out" in r["error"] and "epoch 0" in r["log_tail"]


def test_run_subprocess_times_out_and_ends_the_group(tmp_path):
    r = children.run_subprocess([sys.executable, "-c", "import time; time.sleep(30)"], 1.0, tmp_path / "x.log")
    assert r["timed_out"] is True and r["seconds"] < 15 and not children._CHILD_GROUPS
    ok = children.run_subprocess([sys.executable, "-c", "print('hi')"], 30, tmp_path / "y.log")
    assert ok["rc"] == 0 and not ok["timed_out"] and "hi" in Path(ok["log"]).read_text()


# -- the budget holds by construction: parts made slow on purpose, on the real clock ---------
FAST = measure.Settings(reserve_s=0.5, margin_s=0.5, row_min_s=0.0, epoch_min_s=0.0, compile_min_s=0.0,
                        epoch_images=128)
OVER = r"not measured: over its [\d.]+ s share$"


@pytest.fixture
def release():
    """Set at the end of a test: ends the fakes that hang (the threads the check abandoned)."""
    ev = threading.Event()
    yield ev
    ev.set()
    for _, thread in children._ABANDONED:
        thread.join(timeout=5)
    children._ABANDONED.clear()


def _run(tmp_path, budget_s, fakes, **kw):
    t0 = time.monotonic()
    res = check.run_gpu_check(out=tmp_path / "results", budget_s=budget_s, settings=FAST, work=tmp_path / "work",
                              device=torch.device("cpu"), echo=lambda s: None, **fakes, **kw)
    wall = time.monotonic() - t0
    data = json.loads(Path(res["_path"]).read_text())  # the JSON exists and parses
    return data, wall


def _every_row_has_a_number_or_a_reason(data):
    for r in data["rows"]:
        assert r.get("train_images_per_s") or r.get("error") or r.get("not_measured"), r
    assert {p["part"] for p in data["parts"]} == {p for p, _, _ in budget.part_plan(
        list(budget.ARCHS), set(), 1, None, None)}
    for p in data["parts"]:
        assert p["status"] == "ok" or p["status"].startswith(("not measured: ", "failed: ")), p


def test_a_hanging_row_is_stopped_and_later_parts_keep_their_shares(tmp_path, release):
    fakes = _fakes(Clock(), 0.0)  # instant fakes (their clock is not the check's)
    inner = fakes["measure_fn"]

    def measure_fn(arch, precision, cl, s, device, **kw):
        if (arch, precision, cl) == ("unet", "16-mixed", False):
            release.wait(60)  # hangs, deaf to its stop
        return inner(arch, precision, cl, s, device, **kw)

    fakes["measure_fn"] = measure_fn
    data, wall = _run(tmp_path, 20, fakes)
    assert wall < 20 and data["complete"] is True and data["errors"] == []
    _every_row_has_a_number_or_a_reason(data)
    parts = [p["part"] for p in data["parts"]]
    hung = parts.index("row:unet:16-mixed:cl=False")
    entry = data["parts"][hung]
    assert re.match(OVER, entry["status"])
    assert entry["seconds"] <= entry["available_s"] + 0.3  # stopped at its deadline, not when it returned
    assert data["rows"][0]["not_measured"].startswith("over its")
    for p in data["parts"][hung + 1:]:  # every later part ran, with (nearly) its whole share
        assert p["status"] == "ok", p
        assert p["available_s"] >= 0.8 * p["share_s"], p
    assert data["abandoned_still_running"] == ["row:unet:16-mixed:cl=False"]
    later = [r for r in data["rows"][1:] if r["arch"] == "unet"]
    assert later and all(r["measured_while_abandoned_parts_ran"] == ["row:unet:16-mixed:cl=False"] for r in later)
    assert data["recommendations"]["compile"]["favoured"] is True  # compile still ran, after the hang


def test_every_part_hanging_still_ends_within_the_budget(tmp_path, release):
    def hang(*a, **kw):
        release.wait(60)
        return {}

    fakes = {"measure_fn": hang, "flops_fn": hang, "epoch_fn": hang, "compile_fn": hang,
             "probe_fn": lambda work, size: 0.01}
    data, wall = _run(tmp_path, 5, fakes)
    assert wall < 5, wall  # start-up + every share + the final JSON, inside --budget-s
    assert data["complete"] is True and data["errors"] == [] and data["seconds_total"] < 5
    assert data["shares"]["parts_end_s"] == 4 and data["shares"]["total_s"] == 4.5
    _every_row_has_a_number_or_a_reason(data)
    for p in data["parts"]:
        assert re.match(OVER + "|not measured: no time left", p["status"]), p
    assert all(r["not_measured"] for r in data["rows"])
    assert "over its" in data["epoch"]["skipped"] and "over its" in data["compile"]["skipped"]
    assert all("skipped" in p for p in data["projection"].values())
    assert data["recommendations"]["change"] == {}


def test_a_hung_child_process_is_killed_by_pid(tmp_path, release, monkeypatch):
    pids = []

    class Groups(set):
        def add(self, pid):
            pids.append(pid)
            super().add(pid)

    monkeypatch.setattr(children, "_CHILD_GROUPS", Groups())
    fakes = _fakes(Clock(), 0.0)

    def epoch_fn(work, n, devices, epochs, timeout, **kw):  # a child that ignores every timeout
        return children.run_subprocess([sys.executable, "-c", "import time; time.sleep(60)"], 60,
                                       Path(work) / "hung.log")

    fakes["epoch_fn"] = epoch_fn
    data, wall = _run(tmp_path, 8, fakes)
    assert wall < 8 and re.match(OVER, next(p["status"] for p in data["parts"] if p["part"] == "epoch"))
    assert "over its" in data["epoch"]["skipped"]
    assert len(pids) == 1
    for _ in range(50):  # killed (SIGKILL to its group) and reaped by the abandoned thread
        try:
            os.kill(pids[0], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the hung child {pids[0]} still runs")
    assert [p["status"] for p in data["parts"] if p["part"].startswith("compile:")] == ["ok", "ok"]


def test_no_c_compiler_is_a_recorded_reason(tmp_path, monkeypatch):
    c = Clock()
    monkeypatch.setattr(check, "find_c_compiler", lambda: None)
    res = check.run_gpu_check(out=tmp_path / "r", budget_s=300, work=tmp_path / "w", device=torch.device("cpu"),
                              clock=c, echo=lambda s: None, **_fakes(c, 1.0))
    data = json.loads(Path(res["_path"]).read_text())
    assert data["complete"] is True and data["errors"] == [] and data["shares"]["c_compiler"] is None
    reason = "no C compiler (torch.compile needs one; install gcc)"
    assert {p["part"]: p["status"] for p in data["parts"] if p["part"].startswith("compile:")} == {
        "compile:unet": "not measured: " + reason, "compile:resnet50": "not measured: " + reason}
    assert data["compile"]["skipped"] == reason and "compile:unet" not in data["shares"]["parts"]
    assert data["recommendations"]["compile"]["basis"] == "not measured: " + reason
    assert len(data["rows"]) == 12 and all(r["train_images_per_s"] for r in data["rows"])  # the rest measured

    # a compiler that is there but fails the same way: the same reason, not an error
    monkeypatch.setattr(check, "find_c_compiler", lambda: "/usr/bin/gcc")
    fakes = _fakes(c, 1.0)

    def no_cc(*a, **kw):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    fakes["compile_fn"] = no_cc
    res = check.run_gpu_check(out=tmp_path / "r2", budget_s=300, work=tmp_path / "w", device=torch.device("cpu"),
                              clock=c, echo=lambda s: None, **fakes)
    assert res["errors"] == [] and res["compile"]["skipped"] == reason


def test_compile_row_reads_a_missing_compiler_from_its_log(tmp_path):
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\necho 'RuntimeError: Failed to find C compiler. Please specify via CC "
                      "environment variable.'\nexit 1\n")
    script.chmod(0o755)
    row = children.compile_row("unet", "16-mixed", False, FAST, 30, tmp_path, python=str(script))
    assert row["no_c_compiler"] is True and row["error"] == children.NO_CC_REASON
    assert children.is_no_c_compiler("/bin/sh: 1: gcc: not found") and not children.is_no_c_compiler("CUDA OOM")
    assert not children.is_no_c_compiler("sh: nvcc: not found")
    monkeypatch_env = {**os.environ, "CC": "", "PATH": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", "from pneumolib.commands.gpu.children import find_c_compiler as f; "
                        "print(f())"], env=monkeypatch_env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "None"


def test_a_row_told_to_stop_ends_at_its_next_step():
    s = measure.Settings(size=16, batch_size=2, warmup_steps=1, probe_steps=1, window_s=0.01, windows=2, min_steps=1,
                         max_steps=2, eval_window_s=0.01)
    tiny = lambda arch, s_: nn.Conv2d(1, 1, 3, padding=1)  # noqa: E731
    with pytest.raises(budget.OverShare, match="--budget-s"):
        measure.measure("unet", "32-true", False, s, torch.device("cpu"), builder=tiny, stop=lambda: True)
    steps = []
    with pytest.raises(budget.OverShare):
        budget.time_steps(lambda: steps.append(1), lambda: None, stop=lambda: len(steps) >= 4)
    assert len(steps) == 4


def test_run_within_returns_values_errors_and_stops_at_the_deadline(release):
    assert children.run_within(lambda stop: 7, time.monotonic() + 5).value == 7
    o = children.run_within(lambda stop: 1 / 0, time.monotonic() + 5)
    assert isinstance(o.error, ZeroDivisionError) and "ZeroDivisionError" in o.traceback
    seen = []
    t0 = time.monotonic()
    o = children.run_within(lambda stop: seen.append(stop.wait(10)), time.monotonic() + 0.3, part="w")
    assert o.over and time.monotonic() - t0 < 1.0
    for _ in range(20):  # the stop it was told reaches the part
        if seen:
            break
        time.sleep(0.05)
    assert seen == [True]


def test_shares_flow_forward_and_the_docstring_shows_them():
    plan = budget.part_plan(list(budget.ARCHS), set(), 1, None, None)
    sh = budget.plan_shares(plan, 280.0)
    assert sum(v["share_s"] for v in sh.values()) == pytest.approx(280.0)
    ends = [v["ends_s"] for v in sh.values()]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(280.0)
    # a part left out gets no share; the others split its time, in the same order
    skipped = budget.part_plan(list(budget.ARCHS), {"compile"}, 1, None, None)
    sh2 = budget.plan_shares(skipped, 280.0)
    assert "compile:unet" not in sh2 and sh2["epoch"]["share_s"] > sh["epoch"]["share_s"]
    d = measure.Settings()
    assert budget.worst_case_s(300, d.reserve_s, d.margin_s) == {"parts_end_s": 280, "total_s": 292, "margin_s": 8}
    # the table in check's docstring is this plan (with no start-up: 280 s shared)
    doc = check.__doc__
    assert "the last deadline at 280 s, the end by 292 s" in doc
    total = sum(v["share_s"] for v in sh.values())
    for part, v in sh.items():
        generic = re.sub(r"^row:(unet|resnet50):(?!16-mixed:cl=False)", "row:<arch>:", part)
        generic = re.sub(r"^(cudnn:\w+):(off|on)$", r"\1:off|on", generic)
        line = f"{generic:<34} {100 * v['share_s'] / total:4.1f} %  {v['share_s']:5.1f} s"
        assert line in doc, line


def test_phantom_probe_times_a_few_images_and_cleans_up(tmp_path):
    per_image = children.phantom_probe(tmp_path, 64)
    assert 0 < per_image < 30 and list(tmp_path.iterdir()) == []
