"""Checkpoints load as data, never as code (issue 17 item 4).

A weights file that is a pickle asking for code (``os.system``, ``exec``) is refused by
``pneumolib.models.weights_io.load_checkpoint_file`` before anything in it runs: `pneumo
predict` exits with status 2 naming the file, and the payload's marker file never appears.
The Lightning checkpoints `pneumo train` writes load under the same rule.
"""

from __future__ import annotations

import builtins
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_pneumo
from PIL import Image

from pneumolib.errors import UnsafeCheckpointError, WeightsError
from pneumolib.models.weights_io import load_checkpoint_file, pickle_globals


class _System:
    """Unpickling this runs ``touch <marker>`` (os.system, i.e. posix.system on Linux)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Exec:
    """Unpickling this runs Python code that creates ``<marker>`` (builtins.exec)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def env(tmp_path_factory, session_cache) -> dict[str, str]:
    home = tmp_path_factory.mktemp("ckpt-safety-home")
    return dict(os.environ, PNEUMO_HOME=str(home), PNEUMO_CACHE=str(session_cache), PYTHONWARNINGS="ignore")


@pytest.fixture(scope="module")
def run_dir(env, tmp_path_factory) -> Path:
    """One tiny trained run (smoke profile, one epoch), shared by the module."""
    out = tmp_path_factory.mktemp("ckpt-safety-run") / "random"
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--max-epochs", "1",
                "--out", str(out)], env)
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    return out


@pytest.fixture
def image(tmp_path) -> Path:
    p = tmp_path / "in" / "x.png"
    p.parent.mkdir()
    Image.fromarray((np.arange(64 * 48).reshape(64, 48) % 256).astype(np.uint8)).save(p)
    return p


def _run_shell(run_dir: Path, dest: Path) -> Path:
    """A run folder with the real run's config.json and metrics.json and no weights."""
    dest.mkdir(parents=True)
    for name in ("config.json", "metrics.json"):
        shutil.copy(run_dir / name, dest / name)
    return dest


def _plain(obj, where: str = "") -> list[str]:
    """Paths of values that are not tensors, plain scalars, strings or containers of them."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _plain(k, f"{where}[key]") + _plain(v, f"{where}[{k!r}]")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _plain(v, f"{where}[{i}]")]
    if obj is None or type(obj) in (bool, int, float, str, torch.Tensor):
        return []
    return [f"{where}: {type(obj).__module__}.{type(obj).__qualname__}"]


def test_the_payloads_are_live(tmp_path):
    """Control: the crafted pickles really run their code when loaded unsafely."""
    for cls, name in ((_System, "sys"), (_Exec, "exec")):
        marker = tmp_path / name
        pickle.loads(pickle.dumps(cls(marker)))
        assert marker.exists(), name


def test_our_lightning_checkpoints_load_as_data(run_dir):
    for name in ("best.ckpt", "last.ckpt"):
        path = run_dir / "checkpoints" / name
        ck = load_checkpoint_file(path, "checkpoint")
        assert {"state_dict", "optimizer_states", "callbacks", "loops", "hyper_parameters"} <= set(ck)
        assert ck["state_dict"] and all(k.startswith("model.") and isinstance(v, torch.Tensor)
                                        for k, v in ck["state_dict"].items())
        assert _plain(ck) == [], f"{path}: values weights_only may refuse in a future writer"
        assert pickle_globals(path) == []
    state = load_checkpoint_file(run_dir / "model.pt", "checkpoint")
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())


def test_broken_files_are_weights_errors_not_unsafe(run_dir, tmp_path):
    data = (run_dir / "model.pt").read_bytes()
    cases = {"empty.pt": b"", "cut.pt": data[: len(data) // 3], "text.pt": b"not a checkpoint"}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    for p in [tmp_path / n for n in cases] + [tmp_path / "absent.pt", tmp_path]:
        with pytest.raises(WeightsError) as e:
            load_checkpoint_file(p, "checkpoint", hint="Pass a run folder.")
        assert not isinstance(e.value, UnsafeCheckpointError), p
        assert str(p) in str(e.value) and "Pass a run folder." in str(e.value)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds a list"):
        load_checkpoint_file(tmp_path / "list.pt", "checkpoint")


def test_crafted_files_are_refused_in_process(run_dir, tmp_path):
    from pneumolib.evaluation.predictor import load_predictor
    from pneumolib.models.resnet import _read_weights_file

    marker = tmp_path / "pwned"
    # a run folder whose model.pt is a torch.save of the payload
    run = _run_shell(run_dir, tmp_path / "run")
    torch.save({"conv.weight": _System(marker)}, run / "model.pt")
    with pytest.raises(UnsafeCheckpointError, match="posix.system") as e:
        load_predictor(run, device="cpu")
    assert str(run / "model.pt") in str(e.value) and "Nothing in it was run" in str(e.value)
    # an encoder_weights file (pickle.dump, protocol 2: no torch zip around it)
    pth = tmp_path / "resnet50.pth"
    pth.write_bytes(pickle.dumps(_Exec(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec") as e:
        _read_weights_file(pth)
    assert str(pth) in str(e.value) and "ResNet-50" in str(e.value)
    assert not marker.exists()


def _assert_refused(proc, weights: Path, global_name: str, marker: Path) -> None:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert str(weights) in err and global_name in err, err[-3000:]
    assert "unsafe and was not loaded" in err and "arbitrary code" in err and "Nothing in it was run" in err
    assert "torch.save(model.state_dict()" in err and "model.pt" in err
    assert not marker.exists(), "the crafted checkpoint ran its payload"


def test_predict_refuses_a_crafted_ckpt_file(env, run_dir, image, tmp_path):
    """(a) a .ckpt passed directly: a Lightning-shaped dict whose 'tensor' is a payload."""
    marker = tmp_path / "pwned-a"
    run = _run_shell(run_dir, tmp_path / "a")
    ckpt = run / "checkpoints" / "evil.ckpt"
    ckpt.parent.mkdir()
    torch.save({"epoch": 0, "state_dict": {"model.enc1.0.weight": _System(marker)}}, ckpt)
    proc = run_pneumo(["predict", str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")],
                      env, check=False)
    _assert_refused(proc, ckpt, "posix.system", marker)
    assert not (tmp_path / "o" / "predictions.csv").exists()


def test_predict_refuses_a_run_folder_with_a_crafted_best_ckpt(env, run_dir, image, tmp_path):
    """(b) a run folder without model.pt whose checkpoints/best.ckpt is a raw pickle.dump."""
    marker = tmp_path / "pwned-b"
    run = _run_shell(run_dir, tmp_path / "b")
    best = run / "checkpoints" / "best.ckpt"
    best.parent.mkdir()
    with open(best, "wb") as f:
        pickle.dump({"state_dict": _Exec(marker)}, f)  # the default protocol (4+), not torch's
    proc = run_pneumo(["predict", str(image), "--checkpoint", str(run), "--out", str(tmp_path / "o")],
                      env, check=False)
    _assert_refused(proc, best, "builtins.exec", marker)
