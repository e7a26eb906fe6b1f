"""``pneumo bench``: how fast data, training and inference run on this machine.

Four parts, each a function returning plain JSON-able dicts, put together by :func:`run`:

* :func:`bench_data` -- images/s of the memmap-cached :class:`~pneumolib.prep.datamodule.PneumoDataModule`
  against decoding the PNGs each step, with and without the online augmentation. It calls
  the functions of ``benchmarks/bench_data.py`` (``open_data``, ``DecodeEachStep``, ``rate``).
* :func:`~pneumolib.commands.bench_train.bench_training` -- images/s of steady-state training steps through
  :class:`~pneumolib.training.module.PneumoModule` + Lightning's Trainer against a plain PyTorch loop
  doing the same work (same model, batch, :func:`~pneumolib.training.losses.bce_dice_loss`, Adam,
  precision, data loader), for the paper U-Net (plain conv + ReLU blocks, ``norm="none"``) and
  the smp ResNet-50 U-Net; each result names its model (norm, width, size, batch). The ratio
  lightning/plain is ``ratio_lightning_over_plain``.
* :func:`bench_inference` -- images per minute of the full predict path on CPU, the one
  ``pneumo predict`` takes (:func:`pneumolib.commands.predict.predict_paths`: read, resize, model,
  post-process, write mask and overlay PNGs and the CSV).
* ``cuda`` -- a pointer only: the GPU measurements (512 px speed of both models per precision
  and memory format, peak memory, FLOP/s against the card's peak, one epoch of the ``paper``
  profile, its projected wall time, the recommended GPU switches) are ``pneumo bench --gpu``
  (:mod:`pneumolib.commands.gpu`), which keeps to a time budget and writes its own
  ``gpu-<hostname>-<date>.json``. Here the part records ``{"skipped": "no CUDA"}`` on CPU and
  where to look on a GPU machine, so that this command's run time and JSON stay the same
  everywhere and the GPU numbers are measured under one set of rules only.

Timing rules: steady state only (``warmup`` steps are run first and not counted; CUDA is
synchronised at the two ends of the timed window only, so per-step host syncs show up),
each measurement repeated ``repeats`` times with the order of the contenders alternated;
training keeps the best (other processes on the machine only ever slow a run down) and
also reports the median and the median of the per-repeat (paired, back-to-back) ratios,
which cancels slow drifts of the machine's speed; every repeat is in the JSON.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .bench_train import PAPER_NORM, bench_training, build_model, median

#: The checkout (``benchmarks/`` lives beside the package).
ROOT = Path(__file__).resolve().parents[2]

#: The ``cuda`` part on a GPU machine: where the GPU measurements are.
CUDA_POINTER = ("measured by `pneumo bench --gpu` (benchmarks/gpu_check.sh): time-budgeted, writes "
                "benchmarks/results/gpu-<hostname>-<date>.json")


def machine_info() -> dict[str, Any]:
    """Hostname, CPU count, torch threads, GPU name (or None), CUDA."""
    cuda = torch.cuda.is_available()
    return {
        "hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cuda": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# -- data -------------------------------------------------------------------------------
def load_bench_data():
    """``benchmarks/bench_data.py`` as a module (it lives beside the package, not in it)."""
    path = ROOT / "benchmarks" / "bench_data.py"
    if "pneumo_bench_data" in sys.modules:
        return sys.modules["pneumo_bench_data"]
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("pneumo_bench_data", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["pneumo_bench_data"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def bench_data(size: int, batch_size: int, n: int, batches: int, work: Path,
               workers: tuple[int, ...] = (0,), repeats: int = 2) -> dict[str, Any]:
    """Images/s of the cached DataModule vs decoding PNGs each step, +/- online augmentation.

    Uses ``benchmarks/bench_data.py``'s ``open_data`` (phantom set), ``rate`` (first batch
    excluded) and ``DecodeEachStep``; ``batches`` batches are timed per configuration.
    """
    bd = load_bench_data()
    if bd is None:
        return {"skipped": "benchmarks/bench_data.py not found (installed without the checkout)"}
    from pneumolib.config import Config
    from pneumolib.prep.augment import to_uint8
    from pneumolib.prep.datamodule import PneumoDataModule
    from pneumolib.prep.transforms import train_transform

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    source, what, t_write = bd.open_data(work, n, size, False)
    base = Config(image_size=size, batch_size=batch_size, num_workers=0, progress=False,
                  online_aug=False, protocol="clean", seed=0)
    dm = PneumoDataModule(base, source=source, cache_root=work)
    t = time.perf_counter()
    dm.setup()
    t_prep = time.perf_counter() - t
    rows: list[dict[str, Any]] = []

    class DecodeAug(bd.DecodeEachStep):
        """Decode + resize each step, then the same online augmentation as the DataModule."""

        def __init__(self, *a, transform=None, **k):
            super().__init__(*a, **k)
            self.transform = transform

        def __getitem__(self, i: int):
            item = super().__getitem__(i)
            if self.transform is None:
                return item
            img = item["image"][0].numpy() * self.std + self.mean
            out = self.transform(image=to_uint8(np.clip(img, 0, 1)),
                                 mask=item["mask"][0].numpy().astype(np.uint8))
            x = (out["image"].astype(np.float32) / 255.0 - self.mean) / self.std
            return {**item, "image": torch.from_numpy(x)[None],
                    "mask": torch.from_numpy(out["mask"].astype(np.float32))[None]}

    for aug in (False, True):
        for w in workers:
            cfg = base.replace(num_workers=w, online_aug=aug)
            m = PneumoDataModule(cfg, source=source, cache_root=work)
            m.setup()
            runs = [bd.rate(m.train_dataloader(), batches) for _ in range(repeats)]
            rates = [r["images_per_s"] or 0.0 for r in runs]
            rows.append({"loader": "memmap DataModule", "online_aug": aug, "num_workers": w,
                         "images_per_s": median(rates), "images_per_s_repeats": rates})
            ds = DecodeAug(source, size, dm.mean, dm.std, transform=train_transform(cfg))
            loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=w,
                                                 generator=torch.Generator().manual_seed(0))
            runs = [bd.rate(loader, batches) for _ in range(repeats)]
            rates = [r["images_per_s"] or 0.0 for r in runs]
            rows.append({"loader": "decode PNG each step", "online_aug": aug, "num_workers": w,
                         "images_per_s": median(rates), "images_per_s_repeats": rates})
    return {"data": what, "n_images": len(source.records), "size": size, "batch_size": batch_size,
            "batches_timed": batches, "seconds_write_data": round(t_write, 2),
            "seconds_prepare": round(t_prep, 2), "rows": rows,
            "memmap_over_decode": {
                f"aug={a}": round(next(r["images_per_s"] for r in rows if r["online_aug"] == a and r["loader"].startswith("memmap"))
                                  / max(next(r["images_per_s"] for r in rows if r["online_aug"] == a and r["loader"].startswith("decode")), 1e-9), 2)
                for a in (False, True)}}


# -- inference --------------------------------------------------------------------------
def bench_run_folder(model: nn.Module, size: int, base_width: int, folder: Path, norm: str = "none") -> Path:
    """A minimal run folder (``config.json``, ``model.pt``, ``metrics.json``) holding ``model``
    (a paper U-Net of ``base_width`` and ``norm``), so that the benchmark times
    :func:`pneumolib.commands.predict.predict_paths`, the path ``pneumo predict`` takes, and
    nothing hand-made."""
    from pneumolib.config import get_config
    from pneumolib.runio import atomic_torch_save, atomic_write_json, atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    cfg = get_config("demo", image_size=size, base_width=base_width, unet_norm=norm)
    atomic_write_text(folder / "config.json", cfg.to_json() + "\n")
    atomic_torch_save(model.state_dict(), folder / "model.pt")
    atomic_write_json(folder / "metrics.json", {"task": "seg", "scenario": "random", "name": "bench",
                                                "data": {"mean": 0.5, "std": 0.25}})
    return folder


def bench_inference(model: nn.Module, size: int, n_images: int, native: int, work: Path,
                    batch_size: int = 8, base_width: int = 16, repeats: int = 2,
                    norm: str = "none") -> dict[str, Any]:
    """Images per minute of the full predict path on CPU: :func:`pneumolib.commands.predict.predict_paths`
    over a phantom folder of ``native`` px PNGs (read, resize, normalise, U-Net, sigmoid,
    post-process, resize back, write the CSV, a mask PNG and an overlay PNG per image).
    Median of ``repeats`` after one warm-up pass."""
    from pneumolib.data.phantom import write_phantom

    from .predict import load_predictor, predict_paths

    work = Path(work)
    root = write_phantom(work / f"infer-phantom-n{n_images}-s{native}", n_images, native, seed=1,
                         workers=0, progress=False)
    images = sorted((root / "png_images").glob("*.png"))[:n_images]
    run = bench_run_folder(model.to("cpu"), size, base_width, work / "infer-run", norm)
    predictor = load_predictor(run, device="cpu")
    out_dir = work / "infer-out"
    predict_paths(images[:batch_size], predictor, out_dir, batch_size=batch_size, progress=False)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        df = predict_paths(images, predictor, out_dir, batch_size=batch_size, progress=False)
        times.append(time.perf_counter() - t0)
    sec = median(times)
    return {"images": len(images), "ok": int((df["status"] == "ok").sum()), "native_size": native,
            "size": size, "batch_size": batch_size, "base_width": base_width, "norm": norm, "device": "cpu",
            "torch_threads": torch.get_num_threads(), "repeats": repeats,
            "path": "pneumolib.commands.predict.predict_paths (masks and overlays written)",
            "seconds": round(sec, 3), "seconds_repeats": [round(t, 3) for t in times],
            "images_per_min": round(60.0 * len(images) / sec, 1)}


# -- everything -------------------------------------------------------------------------
def settings_for(size: int, batch_size: int, steps: int | None, quick: bool, on_cuda: bool) -> dict[str, Any]:
    """The sizes each part runs at. CPU training runs small (full size takes minutes per step).
    The U-Nets are the paper's (``unet_norm`` ``none``: plain conv + ReLU blocks)."""
    if quick:
        s = {"data_size": size, "data_n": 200, "data_batch": batch_size,
             "data_batches": 4, "train_size": 128, "train_base_width": 16, "train_batch": 8,
             "train_steps": steps or 5, "resnet_size": 64, "resnet_batch": 8,
             "warmup": 2, "repeats": 5, "infer_n": 32, "infer_native": size, "infer_size": 256,
             "infer_base_width": 16, "unet_norm": PAPER_NORM}
    else:
        s = {"data_size": size, "data_n": 600, "data_batch": batch_size, "data_batches": 10,
             "train_size": size if on_cuda else 256, "train_base_width": 64 if on_cuda else 16,
             "train_batch": batch_size if on_cuda else 8, "train_steps": steps or (30 if on_cuda else 8),
             "resnet_size": size if on_cuda else 256, "resnet_batch": batch_size if on_cuda else 8,
             "warmup": 5 if on_cuda else 2, "repeats": 3, "infer_n": 64, "infer_native": size,
             "infer_size": size, "infer_base_width": 64, "unet_norm": PAPER_NORM}
    return s


def run(size: int = 512, batch_size: int = 32, steps: int | None = None, quick: bool = False,
        out: Path | str | None = None, work: Path | str | None = None,
        settings: dict[str, Any] | None = None, parts: tuple[str, ...] = ("data", "training", "inference", "cuda"),
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark parts, write ``<out>/<hostname>-<date>.json`` and return the result."""
    from pneumolib import paths
    from pneumolib.runio import atomic_write_json, package_versions

    on_cuda = torch.cuda.is_available()
    s = settings or settings_for(size, batch_size, steps, quick, on_cuda)
    work = Path(work) if work else paths.cache_dir() / "bench"
    res: dict[str, Any] = {
        "command": "pneumo bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
        "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
        "versions": package_versions(),
        "settings": {"size": size, "batch_size": batch_size, "steps": steps, "quick": quick, **s},
    }
    t_all = time.perf_counter()
    if "data" in parts:
        echo("data loading ...")
        res["data"] = bench_data(s["data_size"], s["data_batch"], s["data_n"], s["data_batches"], work,
                                 repeats=2)
    if "training" in parts:
        res["training"] = {}
        for arch, sz, bs in (("unet", s["train_size"], s["train_batch"]),
                             ("resnet50", s["resnet_size"], s["resnet_batch"])):
            echo(f"training {arch} ...")
            res["training"][arch] = bench_training(
                arch, sz, bs, s["train_steps"], warmup=s["warmup"], repeats=s["repeats"],
                base_width=s["train_base_width"], precision="16-mixed" if on_cuda else "32-true",
                norm=s.get("unet_norm", PAPER_NORM))
        res["ratio_lightning_over_plain"] = {a: r["ratio_lightning_over_plain"] for a, r in res["training"].items()}
    if "inference" in parts:
        echo("inference ...")
        torch.manual_seed(0)
        norm = s.get("unet_norm", PAPER_NORM)
        res["inference"] = bench_inference(build_model("unet", s["infer_base_width"], norm), s["infer_size"],
                                           s["infer_n"], s["infer_native"], work,
                                           base_width=s["infer_base_width"], norm=norm)
        res["inference"]["model"] = f"paper U-Net, base width {s['infer_base_width']}, norm={norm}"
    if "cuda" in parts:
        res["cuda"] = {"skipped": CUDA_POINTER if on_cuda else "no CUDA"}
    res["seconds_total"] = round(time.perf_counter() - t_all, 1)
    res["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out_dir = Path(out) if out else ROOT / "benchmarks" / "results"
    path = out_dir / f"{socket.gethostname()}-{dt.date.today().isoformat()}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, res)
    res["_path"] = str(path)
    return res


def format_table(res: dict[str, Any]) -> str:
    """The result as a plain-text table."""
    lines = []
    m = res["machine"]
    lines.append(f"machine: {m['hostname']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, "
                 f"GPU {m['gpu'] or 'none'}; torch {res['versions'].get('torch')}, "
                 f"lightning {res['versions'].get('pytorch-lightning')}")
    row = "{:<44} {:>14}  {}"
    lines.append(row.format("measurement", "rate", "notes"))
    lines.append("-" * 96)
    d = res.get("data", {})
    if "rows" in d:
        for r in d["rows"]:
            lines.append(row.format(f"data: {r['loader']}, aug={r['online_aug']}, workers={r['num_workers']}",
                                    f"{r['images_per_s']:.1f} img/s", f"{d['size']} px, batch {d['batch_size']}"))
    elif d:
        lines.append(row.format("data", "-", d.get("skipped", "")))
    for arch, t in res.get("training", {}).items():
        what = f"{arch}" + (f" w{t['base_width']} norm={t.get('norm', '?')}" if t["base_width"] else "")
        note = f"{t['size']} px, batch {t['batch_size']}, {t['precision']}, {t['device']}"
        for k, v in t["images_per_s"].items():
            lines.append(row.format(f"train {what}: {k}", f"{v:.2f} img/s", note))
        lines.append(row.format(f"train {what}: ratio lightning/plain", f"{t['ratio_lightning_over_plain']:.3f}",
                                f"best of {t['repeats']}; median {t.get('ratio_lightning_over_plain_median', '-')}; "
                                f"paired median {t.get('ratio_lightning_over_plain_paired_median', '-')}"))
    inf = res.get("inference")
    if inf:
        lines.append(row.format("inference: pneumo predict path, CPU", f"{inf['images_per_min']:.0f} img/min",
                                f"{inf['images']} x {inf['native_size']} px -> {inf['size']} px, "
                                f"{inf['model']}, cpu"))
    c = res.get("cuda", {})
    if "skipped" in c:
        lines.append(row.format("CUDA: 512 px precisions, FLOP/s, projection", "skipped", c["skipped"]))
    return "\n".join(lines)


def main(size: int = 512, batch_size: int = 32, steps: int | None = None, quick: bool = False,
         out: str | None = None) -> int:
    res = run(size=size, batch_size=batch_size, steps=steps, quick=quick, out=out)
    print()
    print(format_table(res))
    print(f"\nwrote {res['_path']}")
    return 0
