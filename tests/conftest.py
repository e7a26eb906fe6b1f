"""Shared fixtures. Every test writes under pytest's tmp folders: never into the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNEUMO = [sys.executable, "-m", "pneumolib.cli"]


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One cache (phantom sets, resized arrays) shared by the whole session."""
    return tmp_path_factory.mktemp("pneumo-cache")


@pytest.fixture
def pneumo_env(tmp_path, session_cache, monkeypatch) -> dict[str, str]:
    """Environment pointing outputs at a fresh tmp folder and the cache at the session's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PNEUMO_HOME", str(home))
    monkeypatch.setenv("PNEUMO_CACHE", str(session_cache))
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    return env


@pytest.fixture
def render_fails_after(monkeypatch):
    """Make the phantom's image renderer raise ``RuntimeError("disk on fire")`` after
    ``n`` images: ``render_fails_after(3)`` (an interrupted write, in this process)."""
    from pneumolib.data.phantom import compose

    def arm(n: int) -> None:
        calls = []
        real = compose.render

        def failing(index, *args, **kwargs):
            calls.append(index)
            if len(calls) > n:
                raise RuntimeError("disk on fire")
            return real(index, *args, **kwargs)

        monkeypatch.setattr(compose, "render", failing)

    return arm


def run_pneumo(args: list[str], env: dict[str, str], timeout: float = 300, check: bool = True):
    """Run the ``pneumo`` CLI in a subprocess; on failure show its output."""
    proc = subprocess.run(PNEUMO + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pneumo {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc
