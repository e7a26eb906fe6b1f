"""Several processes on the CPU (gloo): notebooks through papermill, the paper profile on a
DICOM phantom, a torchrun-style launch, the launcher's errors, and mixed precision."""

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


def test_reproduce_smoke_with_two_processes_through_papermill(pneumo_env):
    """The design card's main use: papermill drives every notebook, training runs in DDP."""
    home = Path(pneumo_env["PNEUMO_HOME"])
    run_pneumo(["reproduce", "--profile", "smoke", *DDP], pneumo_env, timeout=900)
    _check_profile(home, "smoke")
    nb = json.loads((home / "papermill_runs" / "smoke" / "04_finetune-random.ipynb").read_text())
    out = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "training in a child process (2 process(es)" in out and "Starting with 2 processes" in out


def test_paper_profile_end_to_end_on_a_dicom_phantom(pneumo_env, tmp_path):
    """The paper profile, shrunk for the CPU: the DICOM reader, the paper protocol, the plain
    U-Net without norm, head_prior 0 and DDP in one run of every notebook."""
    home = Path(pneumo_env["PNEUMO_HOME"])
    data = tmp_path / "siim-dicom"
    run_pneumo(["data", "phantom", "--layout", "siim-dicom", "--out", str(data), "--n", "80", "--size", "128",
                "--junk", "2"], pneumo_env)
    shrink = ["accelerator=cpu", "devices=2", "image_size=64", "base_width=8", "max_epochs=2", "ae_max_epochs=1",
              "batch_size=8", "precision=32-true", "num_workers=0", "resnet_encoder=resnet18",
              "encoder_weights=none", "torch_threads=1", "progress=false"]
    run_pneumo(["reproduce", "--profile", "paper", "--data", str(data),
                *[a for s in shrink for a in ("--set", s)]], pneumo_env, timeout=900)
    runs = _check_profile(home, "paper")
    for name, m in runs.items():
        cfg = m["provenance"]["config"]
        assert (cfg["protocol"], cfg["unet_norm"], cfg["head_prior"], cfg["strategy"]) == ("paper", "none", 0.0, "ddp")
        assert m["data"]["kind"] == "siim-dicom" and m["data"]["protocol"] == "paper", name
    assert runs["random"]["head_prior"] == 0.0
    leak = pd.read_csv(home / "results" / "paper" / "random" / "test_per_image.csv")
    assert set(leak["aug"]) >= {"orig"}  # the paper protocol splits after augmenting


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
    run_pneumo(args + ["--out", str(own)], pneumo_env)
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
    from pneumolib.training import launch

    cfg = get_config("smoke", devices="2", strategy="ddp", accelerator="cpu",
                     launcher=f"{{python}} -m torch.distributed.run --nproc-per-node 2 --master-port {_free_port()} "
                              "--no-python")
    summary = launch.train_scenario(cfg, "random", out=tmp_path / "tr")
    assert summary["batch_size"]["processes"] == 2 and summary["test"]
    assert launch.child_command(cfg, "train", tmp_path)[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node"]


def test_launcher_failure_names_the_last_lines_and_the_command(pneumo_env, tmp_path, monkeypatch):
    from pneumolib.config import get_config
    from pneumolib.training import launch

    cfg = get_config("smoke")
    with pytest.raises(launch.LaunchError) as ei:  # ae_full needs an autoencoder nobody trained
        launch.train_scenario(cfg, "ae_full", out=tmp_path / "run", child=True)
    msg = str(ei.value)
    assert "exited with status 2" in msg and "pneumo pretrain --kind xray" in msg
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
        "assert launch.process_count(paper) == 2 and launch.needs_child_process(paper)\n"
        "demo = get_config('demo')\n"
        "assert launch.process_count(demo) == 2 and launch.needs_child_process(demo)  # auto = all GPUs\n"
        "assert not launch.needs_child_process(get_config('demo', devices='1'))\n"
        "assert not launch.needs_child_process(get_config('demo', accelerator='cpu'))\n"
        "assert launch.needs_child_process(get_config('demo', devices='1', strategy='ddp'))\n"
        "assert launch.process_count(get_config('demo', devices='0,1', num_nodes=2)) == 4\n"
        "cmd = launch.child_command(paper, 'train', Path('/x/run'), ['--scenario', 'random'])\n"
        "assert cmd[1:5] == ['-m', 'pneumolib.cli', 'train', '--scenario'] and cmd[-4:] == "
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
