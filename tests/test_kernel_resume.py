"""A notebook cell interrupted in a live kernel, then run again: it resumes (one process)."""

from __future__ import annotations

import json
import time

import pandas as pd

from conftest import ROOT, run_pneumo


def _rows(run) -> int:
    try:
        return len(pd.read_csv(run / "epochs.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def _epochs(run) -> pd.DataFrame:
    return pd.read_csv(run / "epochs.csv").drop(columns=["time_s"])


def test_an_interrupted_cell_resumes_in_the_kernel(pneumo_env, tmp_path):
    """One process in the kernel: interrupt the training cell mid-way (as JupyterLab's stop
    button does), run the cell again: it says it resumes, the kernel still takes interrupts,
    and epochs.csv equals an uninterrupted run's."""
    from jupyter_client.manager import start_new_kernel

    out, whole = tmp_path / "cell", tmp_path / "whole"
    cell = ("from pneumolib.config import get_config\nfrom pneumolib.training import runs\n"
            f"cfg = get_config('smoke', max_epochs=10, patience=50)\n"
            f"summary = runs.train_scenario(cfg, 'random', out={str(out)!r})\n")
    km, kc = start_new_kernel(kernel_name="python3", env=dict(pneumo_env, PNEUMO_HEADLESS="1"), cwd=str(ROOT))
    try:
        msg_id = kc.execute(cell)
        deadline = time.time() + 240
        while _rows(out) < 2 and time.time() < deadline:
            time.sleep(0.02)
        assert 2 <= _rows(out) < 10
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=120)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=120)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert not (out / "metrics.json").exists()

        texts: list[str] = []
        reply = kc.execute_interactive(cell, timeout=240, output_hook=lambda m: texts.append(
            m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert "resuming at epoch" in "".join(texts)
        check = kc.execute_interactive("import signal; assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN",
                                       timeout=30)
        assert check["content"]["status"] == "ok"  # Lightning's SIG_IGN did not stick
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--max-epochs", "10", "--set", "patience=50",
                "--out", str(whole)], pneumo_env)
    pd.testing.assert_frame_equal(_epochs(out), _epochs(whole), check_exact=True)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (out, whole))
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"] and a["resumed_after_epoch"] is not None
