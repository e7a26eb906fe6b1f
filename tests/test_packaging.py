"""environment.yml and pyproject.toml must declare the same dependencies."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _env_pip_requirements() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    reqs, in_pip = [], False
    for line in lines:
        s = line.strip()
        if s.startswith("- pip:"):
            in_pip = True
            continue
        if in_pip and s.startswith("- "):
            reqs.append(s[2:].strip())
    return reqs


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = [r for r in _env_pip_requirements() if not r.startswith(("-e", "-c"))]
    assert sorted(declared, key=_name) == sorted(env, key=_name), (
        "environment.yml's pip section and pyproject.toml differ: keep them identical")
    assert "-e ." in _env_pip_requirements(), "environment.yml must install this package"


def test_jpeg_decoder_declared():
    names = {_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert {"pydicom", "pylibjpeg", "pylibjpeg-libjpeg"} <= names


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = "./setup.sh && .venv/bin/python -m pytest"
    assert cmd in readme and cmd in ci


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements-lock.txt: {line!r} is not an exact pin (name==version)"
            pins[_name(name)] = version
    return pins


def test_lock_pins_every_dependency_and_is_used():
    """The exact versions CI ran: every declared dependency is pinned, setup.sh and
    environment.yml install through the lock, and the lock satisfies the floors."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock()
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        r = Requirement(req)
        name = _name(r.name)
        assert name in pins, f"{name} is not pinned in requirements-lock.txt: run scripts/refresh_lock.sh"
        assert r.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(r.specifier))
    assert 'LOCK=${PNEUMO_LOCK:-requirements-lock.txt}' in (ROOT / "setup.sh").read_text()
    assert "-c requirements-lock.txt" in _env_pip_requirements()
    assert pins["torch"] in (ROOT / "setup.sh").read_text()  # setup.sh's torch is the locked one
