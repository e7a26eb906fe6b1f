"""The machine a number came from: CPU, instruction sets, kernel libraries, threads, GPUs.

The same seed and code give bit-identical numbers on one machine, but another CPU makes
torch's kernels (ATen's dispatch level, oneDNN's JIT ISA, MKL's code path) sum in another
order, and the last bits move. :func:`machine_info` records every fact that decides which
kernels ran, :func:`machine_summary` says it in one line, and :func:`compare_machines` names
what differs between two records when a rerun disagrees.

Sources: ``/proc/cpuinfo`` (or torch's cpuinfo, ``sysctl``, :mod:`platform`) for the CPU;
``torch.backends.cpu.get_cpu_capability()`` for ATen; ``torch.__config__.show()`` for the
oneDNN and MKL versions; and oneDNN's own verbose header (``ONEDNN_VERBOSE=1``), read from
a tiny convolution in a subprocess once per process, for the ISA oneDNN dispatches to. When
that probe cannot run, the ISA is inferred from the CPU flags and ``ONEDNN_MAX_CPU_ISA``,
and ``onednn_isa_method`` says so. Nothing here raises: a fact that cannot be had is None.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import threading
from typing import Any, Callable

__all__ = ["machine_info", "machine_summary", "compare_machines", "onednn_isa"]

PROBE_TIMEOUT_S = 3.0
# Environment variables that change which kernels run or how many threads split a sum.
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
            "ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
            "ONEDNN_DEFAULT_FPMATH_MODE", "CUBLAS_WORKSPACE_CONFIG")
# Facts that can change numbers, in the order compare_machines reports them.
NUMERIC_FACTS = {
    "cpu_model": "CPU model", "cpu_vendor": "CPU vendor", "arch": "architecture",
    "torch_cpu_capability": "ATen CPU dispatch level", "onednn_isa": "oneDNN ISA",
    "mkldnn_enabled": "oneDNN enabled", "torch": "torch version", "onednn": "oneDNN version",
    "mkl": "MKL version", "numpy_blas": "NumPy BLAS", "cuda": "CUDA version",
    "cudnn": "cuDNN version", "gpus": "GPUs", "torch_threads": "torch threads",
    "float32_matmul_precision": "float32 matmul precision",
    "deterministic_algorithms": "deterministic algorithms",
}

# oneDNN's x64 ISA levels, best first (its own dispatch order), with the CPU flags each needs.
_ISA_FLAGS = [
    ("avx512_core_amx_fp16", {"avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16"}),
    ("avx512_core_amx", {"avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"}),
    ("avx512_core_fp16", {"avx512_fp16", "avx512_bf16", "avx512_vnni"}),
    ("avx512_core_bf16", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"}),
    ("avx512_core_vnni", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}),
    ("avx512_core", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    ("avx2_vnni_2", {"avx2", "avx_vnni", "avx_ne_convert", "avx_vnni_int8"}),
    ("avx2_vnni", {"avx2", "avx_vnni"}),
    ("avx2", {"avx2"}),
    ("avx", {"avx"}),
    ("sse41", {"sse4_1"}),
]
# Each level's immediate predecessors (the partial order of oneDNN's dispatcher docs).
_ISA_BELOW = {
    "avx": ["sse41"], "avx2": ["avx"], "avx2_vnni": ["avx2"], "avx2_vnni_2": ["avx2_vnni"],
    "avx512_core": ["avx2"], "avx512_core_vnni": ["avx512_core"],
    "avx512_core_bf16": ["avx512_core_vnni"], "avx512_core_fp16": ["avx512_core_bf16", "avx2_vnni"],
    "avx512_core_amx": ["avx512_core_fp16"], "avx512_core_amx_fp16": ["avx512_core_amx"],
}
_ISA_ALIASES = {"avx10_1_512": "avx512_core_fp16", "avx10_1_512_amx": "avx512_core_amx",
                "avx10_1_512_amx_fp16": "avx512_core_amx_fp16"}
_PREVIEW = {"avx512_core_amx_fp16", "avx2_vnni_2"}       # left out unless asked for by name
# Flags reported in ``cpu_flags`` (names as /proc/cpuinfo spells them).
_FLAG_SUMMARY = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                 "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
_FLAG_SUMMARY_ARM = ("asimd", "neon", "sve", "sve2", "bf16", "i8mm", "sme")
# torch.cpu.get_capabilities() names -> /proc/cpuinfo names.
_TORCH_FLAG_NAMES = {"avx512_f": "avx512f", "avx512_bw": "avx512bw", "avx512_vl": "avx512vl",
                     "avx512_dq": "avx512dq", "fma3": "fma"}
_PROBE_CODE = ("import torch\n"
               "torch.nn.functional.conv2d(torch.zeros(2, 8, 8, 8), torch.zeros(8, 8, 3, 3))\n")
_ISA_LINE = re.compile(r"(?:onednn|dnnl)_verbose,(?:v\d+,)?info,cpu,isa:(.+)")
_ISA_CACHE: dict[tuple, dict[str, Any]] = {}
_ISA_LOCK = threading.Lock()


def _safe(fn: Callable[[], Any], default: Any = None) -> Any:
    try:
        return fn()
    except Exception:
        return default


# -- the CPU ------------------------------------------------------------------------------
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (Linux; {} elsewhere)."""
    out: dict[str, str] = {}
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                if out:
                    break
                continue
            key, _, value = line.partition(":")
            out.setdefault(key.strip(), value.strip())
    return out


def _sysctl(name: str) -> str | None:
    res = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2)
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def _torch_caps() -> dict[str, Any]:
    import torch

    return dict(torch.cpu.get_capabilities())


def _cpu_flags(cpuinfo: dict[str, str], caps: dict[str, Any]) -> set[str] | None:
    flags = cpuinfo.get("flags") or cpuinfo.get("Features")
    if flags:
        return set(flags.split())
    if caps:
        return {_TORCH_FLAG_NAMES.get(k, k) for k, v in caps.items() if v is True}
    return None


def _cpu_model(cpuinfo: dict[str, str], caps: dict[str, Any]) -> str | None:
    name = cpuinfo.get("model name") or caps.get("cpu_name")
    if not name and sys.platform == "darwin":
        name = _safe(lambda: _sysctl("machdep.cpu.brand_string"))
    return name or platform.processor() or None


def _cpu_vendor(cpuinfo: dict[str, str], model: str | None) -> str | None:
    if cpuinfo.get("vendor_id"):
        return cpuinfo["vendor_id"]
    if sys.platform == "darwin":
        return _safe(lambda: _sysctl("machdep.cpu.vendor")) or ("Apple" if platform.machine() == "arm64" else None)
    for vendor in ("Intel", "AMD", "Apple", "Ampere", "Qualcomm"):
        if model and vendor.lower() in model.lower():
            return vendor
    return None


def _flag_names() -> tuple[str, ...]:
    arm = (platform.machine() or "").lower() in ("aarch64", "arm64")
    return _FLAG_SUMMARY_ARM if arm else _FLAG_SUMMARY


def _usable_cpus() -> int | None:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


# -- oneDNN's ISA -------------------------------------------------------------------------
def isa_from_text(text: str) -> str | None:
    """oneDNN's short ISA name (``avx512_core_bf16``) for its verbose header's description
    (``Intel AVX-512 with Intel DL Boost and bfloat16 support``); None if not x64."""
    t = text.lower()
    fp16 = re.search(r"(?<!b)float16", t)
    if "amx" in t:
        return "avx512_core_amx_fp16" if re.search(r"amx with .*(?<!b)float16", t) else "avx512_core_amx"
    if "avx10.1" in t or ("avx-512" in t and fp16):
        return "avx512_core_fp16"
    if "avx-512" in t:
        return ("avx512_core_bf16" if "bfloat16" in t else
                "avx512_core_vnni" if "dl boost" in t else "avx512_core")
    if "avx2" in t:
        return "avx2_vnni_2" if fp16 else "avx2_vnni" if "dl boost" in t else "avx2"
    if "avx" in t:
        return "avx"
    return "sse41" if "sse4.1" in t else None


def _isa_cap(value: str | None) -> str | None:
    """The ISA named by ``ONEDNN_MAX_CPU_ISA``'s value; None for DEFAULT, ALL or unset."""
    v = (value or "").strip().lower()
    v = _ISA_ALIASES.get(v, v)
    return v if v in _ISA_BELOW or v == "sse41" else None


def _at_or_below(isa: str, cap: str) -> bool:
    return isa == cap or any(_at_or_below(isa, lower) for lower in _ISA_BELOW.get(cap, []))


def _env_cap() -> tuple[str | None, str | None]:
    """(variable, value) of the ISA limit oneDNN reads: ``ONEDNN_`` before ``DNNL_``."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if os.environ.get(var):
            return var, os.environ[var]
    return None, None


def infer_onednn_isa(flags: set[str] | None, max_cpu_isa: str | None = None) -> str | None:
    """The ISA oneDNN would pick on a CPU with ``flags`` under ``ONEDNN_MAX_CPU_ISA`` =
    ``max_cpu_isa``: the best level the flags allow that is at or below the limit."""
    if not flags:
        return None
    cap = _isa_cap(max_cpu_isa)
    for isa, needs in _ISA_FLAGS:
        if cap is None and isa in _PREVIEW:
            continue
        if needs <= flags and (cap is None or _at_or_below(isa, cap)):
            return isa
    return None


def _probe(timeout: float) -> dict[str, Any]:
    """Run a tiny convolution with ``ONEDNN_VERBOSE=1`` in a subprocess (this environment,
    so ``ONEDNN_MAX_CPU_ISA`` holds) and read the ISA from oneDNN's header."""
    env = dict(os.environ, ONEDNN_VERBOSE="1", PYTHONWARNINGS="ignore")
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE_CODE], env=env, capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout:g} s"}
    for line in res.stdout.splitlines():
        if m := _ISA_LINE.match(line.strip()):
            text = m.group(1).strip()
            return {"onednn_isa": isa_from_text(text) or text, "onednn_isa_text": text,
                    "onednn_isa_method": "oneDNN verbose header of a probe subprocess"}
    return {"error": f"probe printed no oneDNN ISA (exit status {res.returncode})"}


def onednn_isa(probe: bool = True, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """``{"onednn_isa", "onednn_isa_text", "onednn_isa_method", "onednn_max_cpu_isa"}``.

    With ``probe`` the first call per process (and per ``ONEDNN_MAX_CPU_ISA`` value) runs
    the subprocess probe (it starts Python and imports torch; at most ``timeout``); later
    calls are free. Without it, or when the probe fails, the ISA is inferred from the CPU
    flags and the limit.
    """
    var, value = _env_cap()
    base = {"onednn_max_cpu_isa": f"{var}={value}" if var else None}
    key = (sys.executable, var, value, probe)
    with _ISA_LOCK:
        if key in _ISA_CACHE:
            return dict(_ISA_CACHE[key])
        found: dict[str, Any] = {}
        why = "probe skipped"
        built = _safe(lambda: bool(__import__("torch").backends.mkldnn.is_available()))
        if not built:
            found = {"onednn_isa": None, "onednn_isa_text": None,
                     "onednn_isa_method": "torch is not built with oneDNN" if built is False
                     else "torch cannot be imported"}
        elif probe:
            found = _safe(lambda: _probe(timeout), {"error": "probe could not start"})
            why = found.pop("error", why)
        if not found:
            flags = _safe(lambda: _cpu_flags(_safe(_cpuinfo, {}), _safe(_torch_caps, {})))
            found = {"onednn_isa": infer_onednn_isa(flags, value), "onednn_isa_text": None,
                     "onednn_isa_method": f"inferred from CPU flags and ONEDNN_MAX_CPU_ISA ({why})"}
        _ISA_CACHE[key] = {**base, **found}
        return dict(_ISA_CACHE[key])


# -- libraries ----------------------------------------------------------------------------
def _config_version(pattern: str) -> str | None:
    import torch

    m = re.search(pattern, torch.__config__.show())
    return m.group(1) if m else None


def _numpy_blas() -> str | None:
    import numpy as np

    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k)) or None


def _gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():       # asks the driver; creates no CUDA context
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _cudnn() -> int | None:
    import torch

    return torch.backends.cudnn.version() if torch.cuda.is_available() else None


# -- the record ---------------------------------------------------------------------------
def machine_info(probe: bool = True) -> dict[str, Any]:
    """Every fact about this machine and process that decides which kernels compute a number.

    JSON-serialisable; never raises (a fact that cannot be had is None). Reads what the OS
    and the libraries report, plus one oneDNN probe subprocess (it starts Python and imports
    torch; at most ``PROBE_TIMEOUT_S``) on the first call per process when ``probe`` (see
    :func:`onednn_isa`).
    """
    cpuinfo = _safe(_cpuinfo, {})
    caps = _safe(_torch_caps, {})
    flags = _safe(lambda: _cpu_flags(cpuinfo, caps))
    model = _safe(lambda: _cpu_model(cpuinfo, caps))
    torch = _safe(lambda: __import__("torch"))
    info: dict[str, Any] = {
        "os": _safe(platform.platform), "arch": _safe(platform.machine) or None,
        "python": _safe(platform.python_version),
        "cpu_model": model, "cpu_vendor": _safe(lambda: _cpu_vendor(cpuinfo, model)),
        "cpu_count": _safe(os.cpu_count), "cpus_usable": _safe(_usable_cpus),
        "cpu_physical_cores": caps.get("num_physical_cores"),
        "cpu_flags": {f: (f in flags) for f in _flag_names()} if flags else None,
        "torch_cpu_capability": _safe(lambda: torch.backends.cpu.get_cpu_capability()),
        **_safe(lambda: onednn_isa(probe), {"onednn_isa": None, "onednn_isa_text": None,
                                            "onednn_isa_method": None, "onednn_max_cpu_isa": None}),
        "torch": _safe(lambda: torch.__version__),
        "torch_git": _safe(lambda: torch.version.git_version),
        "onednn": _safe(lambda: _config_version(r"(?:MKL-DNN|oneDNN)\s+v([\w.]+)")),
        "mkldnn_enabled": _safe(lambda: bool(torch.backends.mkldnn.is_available()
                                             and torch.backends.mkldnn.enabled)),
        "mkl": _safe(lambda: _config_version(r"Math Kernel Library Version ([\w.]+)")
                     if torch.backends.mkl.is_available() else None),
        "numpy": _safe(lambda: __import__("numpy").__version__),
        "numpy_blas": _safe(_numpy_blas),
        "cuda": _safe(lambda: torch.version.cuda),
        "cudnn": _safe(_cudnn),
        "gpus": _safe(_gpus, []),
        "torch_threads": _safe(lambda: torch.get_num_threads()),
        "torch_interop_threads": _safe(lambda: torch.get_num_interop_threads()),
        "float32_matmul_precision": _safe(lambda: torch.get_float32_matmul_precision()),
        "deterministic_algorithms": _safe(lambda: torch.are_deterministic_algorithms_enabled()),
        "env": {v: os.environ.get(v) for v in ENV_VARS},
    }
    return info


def machine_summary(info: dict[str, Any]) -> str:
    """One line, e.g. ``AMD EPYC (x86_64), 2 CPUs, torch 2.14.1 (ATen AVX512), oneDNN
    v3.12.0 ISA avx512_core_bf16, MKL 2024.2, 2 threads, no GPU``. Never raises."""
    try:
        g = info.get
        parts = [f"{g('cpu_model') or 'unknown CPU'} ({g('arch') or '?'})"]
        n, usable = g("cpu_count"), g("cpus_usable")
        if n:
            parts.append(f"{usable} of {n} CPUs" if usable and usable != n else f"{n} CPUs")
        if g("torch"):
            cap = g("torch_cpu_capability")
            parts.append(f"torch {g('torch')}" + (f" (ATen {cap})" if cap else ""))
        if g("onednn") or g("onednn_isa"):
            isa = g("onednn_isa")
            parts.append(f"oneDNN v{g('onednn') or '?'}" + (f" ISA {isa}" if isa else "")
                         + ("" if g("mkldnn_enabled") is not False else " (disabled)"))
        if g("mkl"):
            parts.append(f"MKL {g('mkl')}")
        if g("torch_threads"):
            parts.append(f"{g('torch_threads')} thread{'s' if g('torch_threads') != 1 else ''}")
        gpus = g("gpus") or []
        if gpus:
            names = sorted(set(gpus))
            parts.append(", ".join(f"{gpus.count(x)}x {x}" for x in names)
                         + (f" (CUDA {g('cuda')})" if g("cuda") else ""))
        else:
            parts.append("no GPU")
        return ", ".join(parts)
    except Exception:
        return "unknown machine"


def _show(value: Any, none: str = "unknown") -> str:
    if value is None:
        return none
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def compare_machines(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The facts that can change numbers and differ between two :func:`machine_info`
    records, as ``"oneDNN ISA: avx512_core_bf16 -> avx2"``; [] when none does. A fact
    missing from either record (an older record) is not compared. Never raises."""
    out: list[str] = []
    try:
        for key, label in NUMERIC_FACTS.items():
            if key in a and key in b and a[key] != b[key]:
                out.append(f"{label}: {_show(a[key])} -> {_show(b[key])}")
        ea, eb = a.get("env") or {}, b.get("env") or {}
        for var in ENV_VARS:
            if var in ea and var in eb and ea[var] != eb[var]:
                out.append(f"${var}: {_show(ea[var], 'unset')} -> {_show(eb[var], 'unset')}")
    except Exception as exc:
        out.append(f"records not comparable: {exc}")
    return out
