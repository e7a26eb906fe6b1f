"""Inference on arbitrary files (`pneumo predict`, pneumolib.commands.predict) and the COVID screening."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_pneumo
from dicom_utils import write_dicom
from PIL import Image

from pneumolib.errors import DataError, WeightsError


@pytest.fixture(scope="module")
def env(tmp_path_factory, session_cache) -> dict[str, str]:
    home = tmp_path_factory.mktemp("predict-home")
    e = dict(os.environ, PNEUMO_HOME=str(home), PNEUMO_CACHE=str(session_cache), PYTHONWARNINGS="ignore")
    return e


@pytest.fixture(scope="module")
def run_dir(env, tmp_path_factory) -> Path:
    """One tiny trained segmentation run (smoke profile, ~10 s), shared by the module."""
    out = tmp_path_factory.mktemp("predict-run") / "random"
    run_pneumo(["train", "--scenario", "random", "--profile", "smoke", "--out", str(out)], env)
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    return out


def _ramp(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 3 + y * 5) % 256).astype(np.uint8)


def _mixed_folder(root: Path) -> dict[str, tuple[int, int] | str]:
    """Good files -> their (height, width); bad files -> a word their error must contain."""
    root.mkdir(parents=True)
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(_ramp(70, 50)).save(root / "small.png")                                  # L 50x70
    Image.fromarray(np.dstack([_ramp(200, 300)] * 3)).save(root / "wide.jpg", quality=90)    # RGB JPEG
    g = _ramp(120, 96)
    Image.fromarray(np.dstack([g, g, g, np.full_like(g, 200)])).save(root / "nested" / "rgba.png")
    Image.fromarray(_ramp(64, 64)).convert("RGB").save(root / "nested" / "small.png")       # same name
    big = (np.linspace(0, 65535, 1024)[None, :].repeat(1024, 0)).astype(np.uint16)
    Image.fromarray(big).save(root / "nested" / "deeper" / "big16.png")                     # 16-bit 1024
    px = (_ramp(80, 90).astype(np.uint16) * 16)
    write_dicom(root / "dicom" / "mono1.dcm", px, image_id="1.2.826.0.1.1", photometric="MONOCHROME1",
                bits_stored=12)
    write_dicom(root / "dicom" / "IM0001", _ramp(60, 60), image_id="1.2.826.0.1.2")         # no extension
    (root / "empty.png").write_bytes(b"")
    (root / "nested" / "notes.png").write_text("this is not an image\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")                                        # junk: skipped
    (root / "README.txt").write_text("skipped")
    return {"small.png": (70, 50), "wide.jpg": (200, 300), "nested/rgba.png": (120, 96),
            "nested/small.png": (64, 64), "nested/deeper/big16.png": (1024, 1024),
            "dicom/mono1.dcm": (80, 90), "dicom/IM0001": (60, 60),
            "empty.png": "empty", "nested/notes.png": "not a readable image"}


def test_cli_predicts_a_mixed_folder_and_reports_bad_files(env, run_dir, tmp_path):
    data = tmp_path / "in"
    expect = _mixed_folder(data)
    out = tmp_path / "out"
    proc = run_pneumo(["predict", str(data), "--checkpoint", str(run_dir), "--out", str(out),
                       "--batch-size", "3"], env)
    assert "9 inputs, 7 ok, 2 errors" in proc.stdout and "predictions.csv" in proc.stdout
    df = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(df.columns) == ["file", "status", "width", "height", "probability", "predicted_area_px",
                                "predicted_area_frac", "decision", "mask", "overlay"]
    rel = {Path(f).relative_to(data).as_posix(): r for f, r in zip(df["file"], df.to_dict("records"))}
    assert set(rel) == set(expect)                       # one row per input; junk not listed
    for name, want in expect.items():
        r = rel[name]
        if isinstance(want, str):
            assert r["status"].startswith("error: ") and want in r["status"]
            assert name.split("/")[-1] in r["status"]          # the message names the file
            assert r["decision"] == "" and r["mask"] == ""
            continue
        assert r["status"] == "ok", (name, r["status"])
        h, w = want
        assert (int(r["height"]), int(r["width"])) == (h, w)
        assert 0.0 <= float(r["probability"]) <= 1.0
        assert r["decision"] in ("pneumothorax", "no pneumothorax")
        mask = np.asarray(Image.open(out / r["mask"]))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert int(r["predicted_area_px"]) == int((mask > 0).sum())
        assert abs(float(r["predicted_area_frac"]) - (mask > 0).mean()) < 1e-9
        assert (r["decision"] == "pneumothorax") == (int(r["predicted_area_px"]) > 0)
        ov = Image.open(out / r["overlay"])
        assert ov.mode == "RGB" and ov.size == (w, h)
    oks = df[df["status"] == "ok"]
    assert oks["mask"].is_unique and oks["overlay"].is_unique   # small.png twice, other folders


def test_all_bad_inputs_and_bad_checkpoints_exit_non_zero(run_dir, tmp_path, capsys):
    from pneumolib.cli import main  # in-process: the exit code main() returns is the command's

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.png").write_bytes(b"")
    (bad / "text.png").write_text("hello")
    rc = main(["predict", str(bad), "--checkpoint", str(run_dir), "--out", str(tmp_path / "o1")])
    err = capsys.readouterr().err
    assert rc != 0 and "none of the 2 inputs" in err and "text.png" in err
    assert (tmp_path / "o1" / "predictions.csv").is_file()
    missing = tmp_path / "no-such-run"
    rc = main(["predict", str(bad), "--checkpoint", str(missing), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc != 0 and str(missing) in err and "pneumo train" in err
    rc = main(["predict", str(bad), "--checkpoint", str(run_dir), "--out", str(tmp_path / "o3"),
               "--threshold", "1.5"])
    assert rc != 0 and "--threshold" in capsys.readouterr().err


def test_load_predictor_explains_bad_checkpoints(run_dir, tmp_path):
    from pneumolib.evaluation.predictor import load_predictor

    not_run = tmp_path / "loose"
    not_run.mkdir()
    torch.save({"w": torch.zeros(1)}, not_run / "model.pt")
    with pytest.raises(WeightsError, match="config.json"):
        load_predictor(not_run / "model.pt")
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    data = (cut / "model.pt").read_bytes()
    (cut / "model.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="cannot be read") as e:
        load_predictor(cut)
    assert str(cut / "model.pt") in str(e.value)
    wide = tmp_path / "wide"
    shutil.copytree(run_dir, wide, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "base_width": 8}))
    with pytest.raises(WeightsError, match="does not fit"):
        load_predictor(wide)


def test_postprocess_triplet_ckpt_and_class_head(run_dir, tmp_path):
    from pneumolib.commands.predict import predict_paths
    from pneumolib.evaluation.predictor import load_predictor
    from pneumolib.models.unet import UNet

    img = tmp_path / "in" / "x.png"
    img.parent.mkdir()
    Image.fromarray(_ramp(100, 80)).save(img)
    base = load_predictor(run_dir, device="cpu")
    assert base.post.source == "default" and base.image_size == 32
    # the Lightning checkpoint gives the same network as model.pt
    ck = load_predictor(run_dir / "checkpoints" / "best.ckpt", device="cpu")
    x = base.prepare(np.asarray(Image.open(img), np.float32) / 255)[None]
    assert np.allclose(base.forward(x)[0], ck.forward(x)[0], atol=1e-6)
    # postprocess.json: nothing exceeds 1.0, so every image is negative with an empty mask
    pp = tmp_path / "pp"
    shutil.copytree(run_dir, pp, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    (pp / "postprocess.json").write_text(json.dumps({"top_threshold": 1.0, "min_area": 5,
                                                     "bottom_threshold": 0.3}))
    df = predict_paths([img], pp, tmp_path / "o", progress=False)
    assert df.loc[0, "decision"] == "no pneumothorax" and df.loc[0, "predicted_area_px"] == 0
    # --threshold 0 overrides it: every pixel is above 0
    df = predict_paths([img], pp, tmp_path / "o2", threshold=0.0, min_area=0, progress=False)
    assert df.loc[0, "decision"] == "pneumothorax" and df.loc[0, "predicted_area_px"] == 100 * 80
    # a U-Net with an image-level head: probability = sigmoid(class logit)
    aux = tmp_path / "aux"
    shutil.copytree(run_dir, aux, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    torch.manual_seed(0)
    net = UNet(1, 1, base_width=4, aux_head=True).eval()
    torch.save(net.state_dict(), aux / "model.pt")
    pr = load_predictor(aux, device="cpu")
    _, image_prob = pr.forward(x)
    with torch.no_grad():
        want = torch.sigmoid(net(torch.from_numpy(x)[:, None])[1]).item()
    assert abs(float(image_prob[0]) - want) < 1e-5


def test_screening_heldout_phantom_end_to_end(run_dir, tmp_path):
    from matplotlib.figure import Figure

    from pneumolib.commands import screening
    from pneumolib.config import get_config
    from pneumolib.data import covid

    cfg = get_config("smoke")
    folder = covid.heldout_phantom(cfg, n=10, out=tmp_path / "covid")
    assert covid.heldout_phantom(cfg, n=10, out=tmp_path / "covid") == folder   # reused
    meta = pd.read_csv(folder / "metadata.csv")
    for col in covid.METADATA_COLUMNS:
        assert col in meta.columns
    assert {Path(f).suffix for f in meta["filename"]} == {".png", ".jpg"}
    modes = {Image.open(folder / "images" / f).mode for f in meta["filename"]}
    assert {"L", "RGB", "RGBA"} <= modes
    assert set(meta["modality"]) == {"X-ray"} and meta["view"].str.contains("synthetic").all()
    df = screening.screen(folder, run_dir, tmp_path / "screen", progress=False)
    assert len(df) == len(meta) and (df["status"] == "ok").all()
    assert list(df["filename"]) == list(meta["filename"])
    s = screening.summarise(df)
    assert s["n"].sum() == len(df) and (s["n_ok"] + s["n_error"] == s["n"]).all()
    assert s["n_positive"].sum() == (df["decision"] == "pneumothorax").sum()
    assert set(s["finding"]) <= {"Pneumothorax (phantom)", "No finding (phantom)"}
    top = screening.most_suspicious(df, k=4)
    assert len(top) == 4 and top["probability"].is_monotonic_decreasing
    fig = screening.plot_most_suspicious(df, k=4)
    assert isinstance(fig, Figure) and len([a for a in fig.axes if a.images]) == 4
    out = screening.write_outputs(df, s, fig, tmp_path / "figs")
    assert all(p.is_file() for p in out.values()) and "png" in out


def test_pick_run_takes_the_best_validation_run(run_dir, tmp_path, monkeypatch):
    from pneumolib.commands import screening
    from pneumolib.config import get_config

    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path))
    cfg = get_config("smoke")
    results = tmp_path / "results" / "smoke"
    with pytest.raises(WeightsError, match="pneumo train"):
        screening.pick_run(cfg)
    for name, dice, task in (("a", 0.2, "seg"), ("b", 0.4, "seg"), ("ae_xray", 0.9, "ae_xray")):
        shutil.copytree(run_dir, results / name, ignore=shutil.ignore_patterns("checkpoints", "logs"))
        m = json.loads((results / name / "metrics.json").read_text())
        m["val"]["dice_pooled"], m["test"]["dice_pooled"], m["task"] = dice, 1.0 - dice, task
        (results / name / "metrics.json").write_text(json.dumps(m))
    assert screening.pick_run(cfg) == results / "b"
    assert screening.pick_run(cfg, "a") == results / "a"
    with pytest.raises(WeightsError, match="not a run folder"):
        screening.pick_run(cfg, "zzz")


def test_covid_metadata_errors_and_modality_filter(tmp_path):
    from pneumolib.data.covid import read_covid_metadata

    with pytest.raises(DataError, match="metadata.csv"):
        read_covid_metadata(tmp_path)
    (tmp_path / "metadata.csv").write_text("filename,finding,modality,view\na.png,COVID-19,X-ray,PA\n"
                                           "b.jpg,COVID-19,CT,Axial\n")
    with pytest.raises(DataError, match="images"):
        read_covid_metadata(tmp_path)
    (tmp_path / "images").mkdir()
    df = read_covid_metadata(tmp_path)
    assert list(df["filename"]) == ["a.png"] and df.loc[0, "clinical_notes"] == ""
    assert df.loc[0, "path"] == str((tmp_path / "images" / "a.png").absolute())
