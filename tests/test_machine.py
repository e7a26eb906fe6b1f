"""The machine record: every fact present and JSON-serialisable, oneDNN's ISA read from
oneDNN itself (and ONEDNN_MAX_CPU_ISA honoured), one-line summaries, and comparisons."""

from __future__ import annotations

import json

import pytest

from pneumolib import machine

KEYS = {"os", "arch", "python", "cpu_model", "cpu_vendor", "cpu_count", "cpus_usable",
        "cpu_physical_cores", "cpu_flags", "torch_cpu_capability", "onednn_isa", "onednn_isa_text",
        "onednn_isa_method", "onednn_max_cpu_isa", "torch", "torch_git", "onednn", "mkldnn_enabled",
        "mkl", "numpy", "numpy_blas", "cuda", "cudnn", "gpus", "torch_threads",
        "torch_interop_threads", "float32_matmul_precision", "deterministic_algorithms", "env"}


def _has_avx2() -> bool:
    flags = machine.machine_info(probe=False)["cpu_flags"] or {}
    return bool(flags.get("avx2"))


def test_every_fact_is_there_and_the_record_is_json():
    info = machine.machine_info(probe=False)
    assert KEYS <= set(info), sorted(KEYS - set(info))
    assert json.loads(json.dumps(info)) == info
    assert info["cpu_count"] and info["torch"] and info["torch_threads"] >= 1
    assert isinstance(info["gpus"], list)
    assert set(machine.ENV_VARS) == set(info["env"])
    assert "probe skipped" in info["onednn_isa_method"]


def test_no_gpu_means_an_empty_list():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    info = machine.machine_info(probe=False)
    assert info["gpus"] == [] and info["cudnn"] is None
    assert "no GPU" in machine.machine_summary(info)


def test_missing_facts_are_none_not_a_crash(monkeypatch):
    def boom(*_a, **_k):
        raise OSError("no /proc here")

    monkeypatch.setattr(machine, "_cpuinfo", boom)
    monkeypatch.setattr(machine, "_torch_caps", boom)
    monkeypatch.setattr(machine, "_numpy_blas", boom)
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine, "_ISA_CACHE", {})
    info = machine.machine_info(probe=False)
    assert KEYS <= set(info)
    assert info["cpu_flags"] is None and info["onednn_isa"] is None and info["numpy_blas"] is None
    json.dumps(info)
    assert machine.machine_summary(info)
    assert machine.machine_summary({}) and machine.machine_summary(None) == "unknown machine"


def test_onednn_probe_honours_the_isa_limit(monkeypatch):
    """A probe subprocess under ONEDNN_MAX_CPU_ISA=AVX2 reads "Intel AVX2" from oneDNN."""
    import torch

    if not (torch.backends.mkldnn.is_available() and _has_avx2()):
        pytest.skip("needs oneDNN on an AVX2 CPU")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    got = machine.onednn_isa(timeout=120)
    assert got["onednn_isa_method"] == "oneDNN verbose header of a probe subprocess", got
    assert got["onednn_isa"] == "avx2" and got["onednn_isa_text"] == "Intel AVX2"
    assert got["onednn_max_cpu_isa"] == "ONEDNN_MAX_CPU_ISA=AVX2"
    assert machine.onednn_isa(timeout=120) == got                  # cached: no second probe
    assert machine.onednn_isa(probe=False)["onednn_isa"] == "avx2"  # the inference agrees


def test_inference_follows_flags_and_limit():
    avx512_bf16 = {"sse4_1", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                   "avx512_vnni", "avx512_bf16"}
    infer = machine.infer_onednn_isa
    assert infer(avx512_bf16) == infer(avx512_bf16, "DEFAULT") == "avx512_core_bf16"
    assert infer(avx512_bf16, "AVX512_CORE") == "avx512_core"
    assert infer(avx512_bf16, "AVX2_VNNI") == "avx2"           # no avx_vnni on this CPU
    assert infer(avx512_bf16, "SSE41") == "sse41"
    assert infer({"sse4_1", "avx", "avx2", "avx_vnni"}) == "avx2_vnni"
    assert infer(None) is None and infer(set()) is None


@pytest.mark.parametrize("text, isa", [
    ("Intel AVX-512 with Intel DL Boost and bfloat16 support", "avx512_core_bf16"),
    ("Intel AVX-512 with Intel DL Boost", "avx512_core_vnni"),
    ("Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions", "avx512_core"),
    ("Intel AVX-512 with float16, Intel DL Boost and bfloat16 support ", "avx512_core_fp16"),
    ("Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with "
     "bfloat16 and 8-bit integer support", "avx512_core_amx"),
    ("Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with "
     "bfloat16, float16 and 8-bit integer support (preview support)", "avx512_core_amx_fp16"),
    ("Intel AVX2 with Intel DL Boost, float16 and bfloat16 support (preview support)", "avx2_vnni_2"),
    ("Intel AVX2 with Intel DL Boost", "avx2_vnni"),
    ("Intel AVX2", "avx2"), ("Intel AVX", "avx"), ("Intel SSE4.1", "sse41"), ("Intel 64", None),
])
def test_onednn_isa_names(text, isa):
    assert machine.isa_from_text(text) == isa


def test_summary_names_the_cpu_and_the_kernels():
    info = machine.machine_info(probe=False)
    line = machine.machine_summary(info)
    assert info["cpu_model"] and info["cpu_model"] in line
    assert f"torch {info['torch']}" in line and "\n" not in line
    gpu = {**info, "gpus": ["NVIDIA H100", "NVIDIA H100"], "cuda": "13.0"}
    assert "2x NVIDIA H100 (CUDA 13.0)" in machine.machine_summary(gpu)


def test_compare_names_what_can_change_numbers():
    a = machine.machine_info(probe=False)
    assert machine.compare_machines(a, dict(a)) == []
    b = {**a, "onednn_isa": "avx2", "torch_threads": 7, "env": {**a["env"], "MKL_CBWR": "AVX2"},
         "os": "another OS entirely", "python": "0.0"}
    diff = machine.compare_machines(a, b)
    assert f"oneDNN ISA: {a['onednn_isa']} -> avx2" in diff
    assert any(d.startswith("torch threads:") for d in diff)
    assert "$MKL_CBWR: unset -> AVX2" in diff
    assert len(diff) == 3                                     # os and python change no kernel
    older = {k: v for k, v in a.items() if k != "onednn_isa"}
    assert machine.compare_machines(older, b) == diff[1:]     # a fact an old record lacks is skipped
