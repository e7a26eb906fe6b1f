"""The launcher's, the run folder's and the plan's decisions, without training anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pneumolib.commands.plan import plan
from pneumolib.config import get_config, notebook_config, parse_devices
from pneumolib.errors import ConfigError
from pneumolib.training import launch, runfolder


@pytest.mark.parametrize("value, expected", [("1", 1), ("2", 2), ("0,1", [0, 1]), ("[0, 1]", [0, 1]),
                                             ("[1]", [1]), ("-1", -1), ("auto", "auto")])
def test_one_devices_parser_for_lightning_and_the_launcher(value, expected):
    assert parse_devices(value) == expected


@pytest.mark.parametrize("bad", ["two", "0", "-2", "1.5"])
def test_bad_devices_name_the_accepted_forms(bad):
    with pytest.raises(ConfigError, match="a list like 0,1"):
        get_config("smoke", devices=bad)


def test_smoke_and_demo_train_with_one_process_everywhere():
    for name in ("smoke", "demo"):
        cfg = get_config(name)
        assert parse_devices(cfg.devices) == 1 and cfg.precision == "32-true"
        assert launch.process_count(cfg) == 1


def test_child_commands_per_launcher(tmp_path):
    cfg = get_config("smoke", devices="2", strategy="ddp", accelerator="cpu", max_restarts=2)
    cmd = launch.child_command(cfg, "train", tmp_path, ["--scenario", "random"])
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2" and cmd[cmd.index("--max-restarts") + 1] == "2"
    assert cmd[-4:] == ["--config", str(tmp_path / "config.json"), "--out", str(tmp_path)]
    lit = launch.child_command(cfg.replace(launcher="lightning"), "train", tmp_path)
    assert lit[:3] == [sys.executable, "-m", "pneumolib.cli"]
    srun = launch.child_command(cfg.replace(launcher="srun --ntasks-per-node 2", num_nodes=2), "train", tmp_path)
    assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]  # Slurm ends every task when one fails
    own = launch.child_command(cfg.replace(launcher="srun -K0"), "train", tmp_path)
    assert own[:2] == ["srun", "-K0"]  # the user's own choice is kept
    with pytest.raises(ConfigError, match="launcher=srun"):
        launch.child_command(cfg.replace(num_nodes=2), "train", tmp_path)


def test_inside_a_rank_training_happens_here(monkeypatch):
    cfg = get_config("smoke", devices="2", strategy="ddp", accelerator="cpu")
    for k in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    assert launch.needs_launch(cfg)
    assert not launch.needs_launch(cfg.replace(launcher="lightning"))  # a script: Lightning's own launcher
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    assert launch.in_launched_rank() and not launch.needs_launch(cfg)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning's launcher started
    assert not launch.needs_launch(cfg)


def test_the_failed_rank_is_read_from_torchruns_summary():
    lines = ["[default0]:epoch 3/8", "Root Cause (first observed failure):", "[0]:",
             "  time      : 2026-12-07_18:54:00", "  rank      : 1 (local_rank: 1)",
             "  exitcode  : -9 (pid: 9339)", "  traceback : Signal 9 (SIGKILL) received by PID 9339"]
    assert launch._failure_headline(lines) == ("rank 1 (local rank 1) failed first: exit code -9 (SIGKILL)", 1)
    assert launch._failure_headline(["plain failure"]) == ("", None)


def test_run_folder_decisions(tmp_path):
    cfg = get_config("smoke")
    ident = runfolder.identity(cfg, "abc")
    assert runfolder.decide(tmp_path, ident).reason == "new run"
    (tmp_path / "model.pt").write_text("old")
    (tmp_path / "test_per_image.csv").write_text("old")
    start = runfolder.decide(tmp_path, ident)
    assert start.mode == "fresh" and "model.pt" in start.reason
    runfolder.clear(tmp_path)
    assert not list(tmp_path.iterdir())
    (tmp_path / "metrics.json").write_text(json.dumps({"identity": ident, "test": {"dice_pooled": 0.5}}))
    assert runfolder.decide(tmp_path, ident).mode == "finished"
    other = runfolder.identity(cfg.replace(max_epochs=9), "abc")
    start = runfolder.decide(tmp_path, other)
    assert start.mode == "fresh" and "max_epochs 2 -> 9" in start.reason
    moved = runfolder.identity(cfg, "def")
    assert "data fingerprint" in runfolder.decide(tmp_path, moved).reason
    # settings that cannot change a number do not make another run
    assert runfolder.identity(cfg.replace(num_workers=3, progress=True, ddp_timeout_s=5), "abc") == ident
    assert runfolder.decide(tmp_path, ident, fresh=True).mode == "fresh"


def test_a_checkpoint_of_another_run_or_one_that_needs_code_is_not_resumed(tmp_path):
    import torch

    cfg = get_config("smoke")
    ident = runfolder.identity(cfg, "abc")
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"epoch": 3, "callbacks": {runfolder.EPOCH_STATE_KEY: {"identity": ident, "rows": [{"epoch": 0}]}}},
               last)
    start = runfolder.decide(tmp_path, ident)
    assert (start.mode, start.epoch, start.ckpt) == ("resume", 3, last)
    start = runfolder.decide(tmp_path, runfolder.identity(cfg.replace(lr=1.0), "abc"))
    assert start.mode == "fresh" and "lr" in start.reason

    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Boom()}, last)
    start = runfolder.decide(tmp_path, ident)
    assert start.mode == "fresh" and "cannot be read as data" in start.reason


def test_seeds_are_seeds_whatever_base_seed_is_set():
    steps = plan("smoke", None, {"seed": "100"}, seeds=3)
    runs = [s for s in steps if s.template == "04_finetune" and s.parameters["scenario"] == "random"]
    cfgs = [notebook_config(**{k: v for k, v in s.parameters.items() if k not in ("scenario", "run_name")})
            for s in runs]
    assert [c.seed for c in cfgs] == [100, 101, 102]
    assert {c.split_seed for c in cfgs[1:]} == {100}  # every seed scored on the same test images
    assert all("seed" not in json.loads(s.parameters["overrides_json"]) for s in runs)


def test_a_seed_given_twice_is_a_named_error():
    with pytest.raises(ConfigError, match="seed given twice"):
        notebook_config("smoke", overrides_json='{"seed": 100}', seed=43)
    assert notebook_config("smoke", overrides_json='{"seed": 43}', seed=43).seed == 43


def test_code_identity_ignores_docstrings_and_comments(tmp_path, monkeypatch):
    from pneumolib import runio

    a = tmp_path / "pkg" / "m.py"
    a.parent.mkdir()
    monkeypatch.setattr(runio.paths, "PACKAGE_DIR", tmp_path / "pkg")
    a.write_text('"""Doc."""\ndef f(x):\n    """Say."""\n    return x + 1  # why\n')
    h1 = runio._code_hash([a])
    a.write_text('"""Other doc."""\n\ndef f(x):\n    """Say more."""\n    # a comment\n    return x + 1\n')
    assert runio._code_hash([a]) == h1
    a.write_text('"""Doc."""\ndef f(x):\n    return x + 2\n')
    assert runio._code_hash([a]) != h1
    assert set(runio.code_identity()) >= {"results", "package", "version", "commit", "dirty"}


def test_seeds_3_with_a_base_seed_trains_three_different_seeds(pneumo_env, tmp_path):
    """`--seeds 3 --set seed=100`: the three planned runs of a scenario, trained the way their
    notebook trains them (notebook_config from the step's parameters, then runs.train_scenario),
    record seeds 100, 101, 102 in config.json and give three different results."""
    from pneumolib.training import runs

    steps = [s for s in plan("smoke", None, {"seed": "100", "max_epochs": "1"}, seeds=3)
             if s.template == "04_finetune" and s.parameters["scenario"] == "random"]
    results = []
    for s in steps:
        p = dict(s.parameters)
        cfg = notebook_config(p.pop("profile"), data=p.pop("data"), overrides_json=p.pop("overrides_json"),
                              seed=p.pop("seed"))
        out = tmp_path / p["run_name"]
        runs.train_scenario(cfg, p["scenario"], out=out)
        results.append((json.loads((out / "config.json").read_text())["seed"],
                        json.loads((out / "metrics.json").read_text())["val"]["loss"]))
    assert [seed for seed, _ in results] == [100, 101, 102]
    assert len({loss for _, loss in results}) == 3, results


class _CtrlC:
    """A cell's output stream that is interrupted (Ctrl-C) as the first line arrives."""

    def write(self, text: str) -> None:
        raise KeyboardInterrupt

    def flush(self) -> None:
        pass


def _fake_srun(tmp_path, on_term: str) -> Path:
    srun = tmp_path / "srun"
    srun.write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/argv\ntrap '{on_term}' TERM\n"
                    "echo started\nwhile true; do sleep 0.1; done\n")
    srun.chmod(0o755)
    return srun


def test_an_interrupted_srun_is_ended_the_way_slurm_expects(tmp_path):
    """Ctrl-C in the cell: srun gets SIGTERM (it forwards it to its tasks), is reaped, and the
    interrupt reaches the cell; --kill-on-bad-exit=1 is on its command line."""
    srun = _fake_srun(tmp_path, f"echo TERM > {tmp_path}/got; exit 143")
    cfg = get_config("smoke", devices="2", strategy="ddp", accelerator="cpu", launcher=str(srun))
    cmd = launch.child_command(cfg, "train", tmp_path, ["--scenario", "random"])
    with pytest.raises(KeyboardInterrupt):
        launch.run_child(cmd, tmp_path, stream=_CtrlC(), grace_s=5)
    assert (tmp_path / "got").read_text().strip() == "TERM"
    assert (tmp_path / "argv").read_text().startswith("--kill-on-bad-exit=1 ")


def test_a_launcher_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    import time

    srun = _fake_srun(tmp_path, "")  # ignores SIGTERM
    cfg = get_config("smoke", launcher=str(srun))
    cmd = launch.child_command(cfg, "train", tmp_path)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        launch.run_child(cmd, tmp_path, stream=_CtrlC(), grace_s=1)
    assert time.monotonic() - t0 < 10
    import psutil

    left = [p for p in psutil.process_iter(["cmdline"]) if str(srun) in " ".join(p.info["cmdline"] or [])]
    assert not left  # SIGKILLed and reaped
