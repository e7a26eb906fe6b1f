"""Several processes on the CPU (gloo): a torchrun-style launch, the launcher's errors, and
mixed precision (the end-to-end runs through papermill: tests/test_long_job.py)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import PNEUMO, ROOT, run_pneumo

SCENARIOS = ("random", "ae_full", "ae_full_frozen", "ae_encoder", "ae_encoder_mask_decoder", "resnet50")
DDP = ["--set", "devices=2", "--set", "strategy=ddp", "--set", "accelerator=cpu"]


def _check_profile(home: Path, profile: str, processes: int = 2) -> dict[str, dict]:
    """Table 4 has the six rows with finite metrics; every run folder is complete."""
    t4 = pd.read_csv(home / "figures" / profile / "table4.csv").set_index("scenario")
    assert sorted(t4.index) == sorted(SCENARIOS)
    for col in ("dice_pooled", "iou_pooled", "dice_per_image", "empty_baseline_dice_per_image"):
        assert t4[col].map(math.isfinite).all(), col
    runs = {}
    for name in (*SCENARIOS, "ae_xray", "ae_mask"):
        run = home / "results" / profile / name
        m = json.loads((run / "metrics.json").read_text())
        assert m["val"] and m["test"], name
        assert m["batch_size"]["processes"] == processes, name
        assert m["batch_size"]["effective"] == processes * m["batch_size"]["per_process"]
        assert (run / "model.pt").exists() and (run / "epochs.csv").exists(), name
        for split in ("val", "test"):
            per = pd.read_csv(run / f"{split}_per_image.csv")
            assert len(per) == m["data"]["n_items"][split], (name, split)  # one row per item
            assert per["index"].is_unique
        runs[name] = m
    for ae in ("ae_xray", "ae_mask"):
        ct = runs[ae]["copy_through"]
        assert ct["n_images"] == runs[ae]["data"]["n_items"]["test"] and math.isfinite(ct["ratio_zeroed_over_normal"])
    return runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_style_launch_matches_lightnings_own(pneumo_env, tmp_path):
    """Two processes started from outside the way torchrun (or a cluster) starts them:
    MASTER_ADDR / MASTER_PORT / WORLD_SIZE / RANK / LOCAL_RANK. Lightning joins them instead
    of launching its own, and the run is the one its own launcher gives."""
    own = tmp_path / "own"
    ext = tmp_path / "external"
    args = ["train", "--scenario", "random", "--profile", "smoke", "--devices", "2", "--strategy", "ddp",
            "--set", "accelerator=cpu"]
    run_pneumo(args + ["--set", "launcher=lightning", "--out", str(own)], pneumo_env)
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = dict(pneumo_env, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(rank),
                   LOCAL_RANK=str(rank), NODE_RANK="0")
        procs.append(subprocess.Popen(PNEUMO + args + ["--out", str(ext)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "Starting with 2 processes" in outs[0]
    m = json.loads((ext / "metrics.json").read_text())
    assert m["batch_size"]["processes"] == 2
    a = pd.read_csv(own / "epochs.csv").drop(columns=["time_s"])
    b = pd.read_csv(ext / "epochs.csv").drop(columns=["time_s"])
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_a_notebook_launch_through_torchrun(pneumo_env, tmp_path):
    """launcher = torchrun: the notebook's training cell starts the ranks through
    torch.distributed.run (as on a cluster: srun works the same way) and Lightning joins them."""
    from pneumolib.config import get_config
    from pneumolib.training import launch, runs

    cfg = get_config("smoke", devices="2", strategy="ddp", accelerator="cpu",
                     launcher=f"{{python}} -m torch.distributed.run --nproc-per-node 2 --master-port {_free_port()} "
                              "--no-python")
    summary = runs.train_scenario(cfg, "random", out=tmp_path / "tr", child=True)
    assert summary["batch_size"]["processes"] == 2 and summary["test"]
    assert launch.child_command(cfg, "train", tmp_path)[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node"]


def test_launcher_failure_names_the_last_lines_and_the_command(pneumo_env, tmp_path, monkeypatch):
    from pneumolib.config import get_config
    from pneumolib.training import launch, runs

    cfg = get_config("smoke")
    with pytest.raises(launch.LaunchError) as ei:  # ae_full needs an autoencoder nobody trained
        runs.train_scenario(cfg, "ae_full", out=tmp_path / "run", child=True)
    msg = str(ei.value)
    assert "rank 0 (local rank 0) failed first: exit code 2" in msg and "pneumo pretrain --kind xray" in msg
    assert "Rerun it by hand" in msg and "--config" in msg and str(tmp_path / "run") in msg
    assert "PNEUMO_HOME=" in msg


def test_deciding_how_to_launch_never_touches_cuda(pneumo_env):
    """The kernel decides between in-process and child training without initialising CUDA."""
    code = (
        "import torch\n"
        "def boom(*a, **k): raise AssertionError('CUDA runtime touched')\n"
        "torch.cuda._lazy_init = boom; torch.cuda.is_available = boom; torch.cuda.init = boom\n"
        "torch.cuda.device_count = lambda: 2  # NVML's answer on a dual-GPU box\n"
        "from pneumolib.config import get_config\n"
        "from pneumolib.training import launch\n"
        "from pathlib import Path\n"
        "paper = get_config('paper', allow_phantom=True)\n"
        "assert launch.process_count(paper) == 2 and launch.needs_launch(paper)\n"
        "import sys; sys.ps1 = '>>> '  # decide as a notebook kernel does\n"
        "demo = get_config('demo')\n"
        "assert launch.process_count(demo) == 1 and not launch.needs_launch(demo)  # one process on any box\n"
        "auto = get_config('demo', devices='auto')\n"
        "assert launch.process_count(auto) == 2 and launch.needs_launch(auto)  # auto = all GPUs\n"
        "assert not launch.needs_launch(get_config('demo', devices='auto', accelerator='cpu'))\n"
        "assert launch.needs_launch(get_config('demo', devices='1', strategy='ddp'))\n"
        "assert launch.process_count(get_config('demo', devices='0,1', num_nodes=2)) == 4\n"
        "cmd = launch.child_command(paper, 'train', Path('/x/run'), ['--scenario', 'random'])\n"
        "assert cmd[1:5] == ['-m', 'torch.distributed.run', '--standalone', '--nproc-per-node'] and cmd[-4:] == "
        "['--config', '/x/run/config.json', '--out', '/x/run']\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], env=pneumo_env, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-3000:]


def test_bf16_mixed_trains_on_the_cpu(pneumo_env, tmp_path):
    """The mixed-precision path runs in CI (about 5x slower than fp32 on a CPU: one epoch)."""
    out = tmp_path / "bf16"
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--precision", "bf16-mixed",
                "--max-epochs", "1", "--out", str(out)], pneumo_env)
    m = json.loads((out / "metrics.json").read_text())
    assert m["provenance"]["config"]["precision"] == "bf16-mixed"
    ep = pd.read_csv(out / "epochs.csv")
    assert ep[["train_loss", "val_loss", "test_loss"]].map(math.isfinite).all().all()
    assert 0.0 <= m["test"]["dice_pooled"] <= 1.0
    assert os.path.getsize(out / "model.pt") > 0
