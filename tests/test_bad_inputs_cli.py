"""Bad input handed to the CLI: a clear message naming the input, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

from conftest import run_pneumo


def _fails(args, env, *needles):
    p = run_pneumo(args, env, check=False)
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    for n in needles:
        assert n in p.stderr, (n, p.stderr[-3000:])
    return p


def test_checkpoint_of_another_architecture(pneumo_env):
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke"], pneumo_env)
    run = Path(pneumo_env["PNEUMO_HOME"]) / "results" / "smoke" / "random"
    _fails(["evaluate", "--run", str(run), "--set", "base_width=8"], pneumo_env, "model.pt", "does not fit")


def test_not_a_run_folder(pneumo_env, tmp_path):
    _fails(["evaluate", "--run", str(tmp_path)], pneumo_env, str(tmp_path), "not a pneumolib run folder")


def test_data_folders_of_the_wrong_kind(pneumo_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(["data", "info", str(empty)], pneumo_env, str(empty))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "notes.txt").write_text("not a data set")
    _fails(["data", "info", str(wrong)], pneumo_env, str(wrong))
    _fails(["data", "info", str(tmp_path / "missing")], pneumo_env, "missing")


def test_zero_byte_and_non_image_files_are_named(pneumo_env, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("hello")
    p = _fails(["data", "info", str(folder)], pneumo_env)
    assert "empty.png" in p.stderr or "text.jpg" in p.stderr
    ok = run_pneumo(["data", "info", str(folder), "--skip-bad"], pneumo_env, check=False)
    assert ok.returncode in (0, 2) and "Traceback" not in ok.stderr


def test_unknown_profile_and_parameter(pneumo_env):
    p = run_pneumo(["train", "--scenario", "random", "--profile", "fast"], pneumo_env, check=False)
    assert p.returncode == 2 and "smoke" in p.stderr
    _fails(["train", "--scenario", "random", "--profile", "smoke", "--set", "image_size=100"], pneumo_env,
           "image_size=100", "divisible by 16")
    _fails(["reproduce", "--profile", "paper"], pneumo_env, "--data")
