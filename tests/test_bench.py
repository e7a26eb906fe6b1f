"""`pneumo bench` in a tiny configuration: the JSON has its keys and every rate is positive.

The lightning/plain ratio is not asserted here (timings of a few tiny steps are noise)."""

from __future__ import annotations

import json

import pytest
import torch

from pneumolib.cli import parse_args
from pneumolib.commands import bench
from pneumolib.commands.gpu import budget

TINY = {"data_size": 32, "data_n": 24, "data_batch": 4, "data_batches": 2,
        "train_size": 32, "train_base_width": 4, "train_batch": 2, "train_steps": 2,
        "resnet_size": 32, "resnet_batch": 2, "warmup": 1, "repeats": 1,
        "infer_n": 3, "infer_native": 48, "infer_size": 32, "infer_base_width": 4}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; robust when other jobs share the cores
    try:
        return bench.run(size=32, batch_size=4, steps=2, out=tmp / "results", work=tmp / "work",
                         settings=TINY, echo=lambda s: None)
    finally:
        torch.set_num_threads(threads)


def test_json_written_with_keys(result):
    path = result["_path"]
    data = json.loads(open(path).read())
    assert path.endswith(".json") and data["machine"]["hostname"] in path
    for key in ("machine", "versions", "settings", "data", "training", "inference", "cuda",
                "ratio_lightning_over_plain"):
        assert key in data, key
    for key in ("hostname", "cpu_count", "torch_threads", "gpu"):
        assert key in data["machine"]
    assert data["versions"]["torch"]
    assert set(data["training"]) == {"unet", "resnet50"}
    assert set(data["ratio_lightning_over_plain"]) == {"unet", "resnet50"}
    if not torch.cuda.is_available():
        assert data["cuda"] == {"skipped": "no CUDA"}


def test_rates_positive(result):
    rows = result["data"]["rows"]
    assert {(r["loader"], r["online_aug"]) for r in rows} == {
        ("memmap DataModule", False), ("memmap DataModule", True),
        ("decode PNG each step", False), ("decode PNG each step", True)}
    assert all(r["images_per_s"] > 0 for r in rows)
    for t in result["training"].values():
        assert set(t["images_per_s"]) >= {"lightning", "plain"}
        assert all(v > 0 for v in t["images_per_s"].values())
        assert t["ratio_lightning_over_plain"] > 0
        assert len(t["ratio_lightning_over_plain_paired"]) == t["repeats"]
        assert t["ratio_lightning_over_plain_paired_median"] > 0
    assert result["inference"]["images_per_min"] > 0
    assert result["inference"]["images"] == 3
    assert "rate" in bench.format_table(result)


def test_the_benchmarks_unet_is_the_papers(result):
    """The benchmarks time the paper's U-Net (plain conv + ReLU, no BatchNorm) and say so."""
    from pneumolib.commands.bench_train import build_model

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in build_model("unet", 4).modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in build_model("unet", 4, norm="batch").modules())
    t = result["training"]["unet"]
    assert t["norm"] == "none" and t["base_width"] == TINY["train_base_width"]
    assert (t["size"], t["batch_size"]) == (TINY["train_size"], TINY["train_batch"])
    assert result["inference"]["norm"] == "none" and "norm=none" in result["inference"]["model"]
    assert "norm=none" in bench.format_table(result)


def test_gpu_peaks_by_name():
    assert budget.gpu_peaks("NVIDIA H100 80GB HBM3")["matched"] == "H100"
    assert budget.gpu_peaks("NVIDIA H100 PCIe")["matched"] == "H100 PCIe"
    assert budget.gpu_peaks("NVIDIA H200")["bf16"] > 900
    assert budget.gpu_peaks("NVIDIA GeForce RTX 3090")["matched"] == "3090"
    assert budget.gpu_peaks("Some GPU") is None


def test_projection_two_gpus_faster():
    p = budget.project_paper({"unet": 100.0, "resnet50": 200.0}, {"unet": 300.0, "resnet50": 600.0})
    assert p["hours_two_gpus"] == pytest.approx(p["hours_one_gpu"] / 1.9, rel=0.01)


def test_cli_parses_bench():
    a = parse_args(["bench", "--quick", "--steps", "3", "--out", "x"])
    assert a.command == "bench" and a.quick and a.steps == 3 and a.size == 512 and a.out == "x"
