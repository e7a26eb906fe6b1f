"""Data-loading throughput: the memmap DataModule against decoding PNGs every step.

Builds a phantom set (``pneumolib.data.phantom.write_phantom``; a synthetic PNG set when the
phantom module is missing or ``--fake``), caches it at ``--size`` px through
:class:`pneumolib.prep.datamodule.PneumoDataModule`, then measures images/s of one pass over
the train loader (batch 32) with ``num_workers`` 0 and 2, without and with the online
augmentation, and of a naive loader that decodes + resizes the PNGs each step.

    .venv/bin/python benchmarks/bench_data.py            # n=2000 at 512 px
    .venv/bin/python benchmarks/bench_data.py --n 300 --size 256 --batches 10   # quick

Prints a table and writes ``benchmarks/results/data-<hostname>-<date>.json``. The data
and caches go to ``--work`` (default ``<cache_dir>/bench``) and are reused by later runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumolib import paths  # noqa: E402
from pneumolib.config import Config  # noqa: E402
from pneumolib.prep.augment import resize_image, resize_mask  # noqa: E402
from pneumolib.prep.datamodule import PneumoDataModule  # noqa: E402


# -- a stand-in Source when the phantom module is not there ---------------------------------
@dataclass(frozen=True)
class _Record:
    image_id: str
    has_pneumo: int
    split: str | None
    image_path: Path
    mask_path: Path | None


class FakeSource:
    """PNG pairs ``images/<id>_<label>.png`` / ``masks/...``: the Source contract, minimal."""

    kind = "fake"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.skipped: list = []
        self.records = []
        for p in sorted((self.root / "images").glob("*.png")):
            image_id, label = p.stem.rsplit("_", 1)
            self.records.append(_Record(image_id, int(label), None, p, self.root / "masks" / p.name))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> _Record:
        return self.records[i]

    def read_image(self, i: int) -> np.ndarray:
        return cv2.imread(str(self.records[i].image_path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255

    def read_mask(self, i: int) -> np.ndarray:
        return cv2.imread(str(self.records[i].mask_path), cv2.IMREAD_GRAYSCALE) > 0

    def has_masks(self) -> bool:
        return True

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in sorted(self.root.rglob("*.png")):
            st = p.stat()
            h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def write_fake(root: Path, n: int, size: int) -> Path:
    """Smooth random images (PNG-compressible like radiographs) with ~22 % elliptic masks."""
    if (root / "DONE").exists():
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        low = cv2.resize(rng.random((16, 16), dtype=np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        img = np.clip(160 * low + 40 * np.sin(6 * xx + i) + rng.normal(0, 6, (size, size)), 0, 255)
        pos = int(rng.random() < 0.22)
        mask = np.zeros((size, size), np.uint8)
        if pos:
            cx, cy = rng.uniform(0.2, 0.8, 2)
            mask[((xx - cx) / 0.08) ** 2 + ((yy - cy) / 0.03) ** 2 < 1] = 255
        cv2.imwrite(str(root / "images" / f"{i:05d}_{pos}.png"), img.astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"{i:05d}_{pos}.png"), mask)
    (root / "DONE").write_text("ok")
    return root


def open_data(work: Path, n: int, size: int, fake: bool):
    """(source, description, seconds to write it) for the benchmark's data set."""
    t = time.perf_counter()
    if not fake:
        try:
            from pneumolib.data import open_source
            from pneumolib.data.phantom import write_phantom
        except ImportError as e:
            print(f"(phantom / data module unavailable: {e}; using synthetic PNGs)")
        else:
            root = write_phantom(work / f"phantom-n{n}-s{size}", n, size, seed=0, workers=2)
            return open_source(root), f"phantom n={n} at {size}px", time.perf_counter() - t
    root = write_fake(work / f"fake-n{n}-s{size}", n, size)
    return FakeSource(root), f"synthetic PNGs n={n} at {size}px", time.perf_counter() - t


# -- the naive comparison: decode every step -------------------------------------------------
class DecodeEachStep(Dataset):
    """What a loader without a cache does: decode, resize and normalise per item."""

    def __init__(self, source, size: int, mean: float, std: float):
        self.source, self.size, self.mean, self.std = source, size, mean, std

    def __len__(self) -> int:
        return len(self.source.records)

    def __getitem__(self, i: int):
        img = resize_image(self.source.read_image(i), self.size)
        mask = resize_mask(self.source.read_mask(i), self.size)
        return {"image": torch.from_numpy((img - self.mean) / self.std)[None],
                "mask": torch.from_numpy(mask.astype(np.float32))[None], "index": i}


def rate(loader, max_batches: int) -> dict:
    """Images/s over up to ``max_batches`` batches; the first batch (worker start-up) is
    timed separately and not counted."""
    it = iter(loader)
    t0 = time.perf_counter()
    first = next(it)
    t1 = time.perf_counter()
    n, b = 0, 0
    for batch in it:
        n += batch["image"].shape[0]
        b += 1
        if b >= max_batches:
            break
    t2 = time.perf_counter()
    del it
    return {"images": n, "batches": b, "seconds": round(t2 - t1, 4),
            "images_per_s": round(n / (t2 - t1), 1) if n else None,
            "first_batch_s": round(t1 - t0, 4), "batch_shape": list(first["image"].shape)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images in the data set")
    ap.add_argument("--size", type=int, default=512, help="native = training size, px")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=0,
                    help="batches timed per memmap run (0: a whole epoch)")
    ap.add_argument("--repeats", type=int, default=2, help="epochs timed per configuration (best kept)")
    ap.add_argument("--decode-batches", type=int, default=12, help="batches timed for PNG decoding")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--fake", action="store_true", help="synthetic PNGs instead of the phantom")
    ap.add_argument("--work", type=Path, default=None, help="data + cache folder")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    work = (args.work or paths.cache_dir() / "bench").resolve()
    work.mkdir(parents=True, exist_ok=True)
    source, what, t_write = open_data(work, args.n, args.size, args.fake)
    print(f"data: {what} ({len(source.records)} images, {t_write:.1f}s to write or find)")

    results: dict = {"rows": []}
    base = Config(image_size=args.size, batch_size=args.batch_size, num_workers=2, progress=True,
                  online_aug=False, protocol="clean", seed=0)
    t = time.perf_counter()
    dm = PneumoDataModule(base, source=source, cache_root=work)
    dm.setup()
    t_prep = time.perf_counter() - t
    n_train = len(dm.datasets["train"])
    print(f"prepare (cache + split + items + stats, or reuse): {t_prep:.1f}s; "
          f"{n_train} train items; mean {dm.mean:.4f} std {dm.std:.4f}")
    max_batches = args.batches or 10**9
    # read the train items once so every configuration finds them in the page cache (the
    # steady state of a training run from its second epoch; the first epoch reads the disk)
    t = time.perf_counter()
    ds = dm.datasets["train"]
    images, _ = ds._arrays()
    for s in range(0, ds.rows.size, 256):
        int(np.asarray(images[ds.rows[s:s + 256]]).sum(dtype=np.int64))
    print(f"page-cache warm-up of the train items: {time.perf_counter() - t:.1f}s")

    for aug in (False, True):
        for w in args.workers:
            cfg = base.replace(num_workers=w, online_aug=aug)
            m = PneumoDataModule(cfg, source=source, cache_root=work)
            m.setup()
            runs = [rate(m.train_dataloader(), max_batches) for _ in range(args.repeats)]
            r = max(runs, key=lambda x: x["images_per_s"] or 0)
            row = {"loader": "memmap DataModule", "online_aug": aug, "num_workers": w, **r,
                   "images_per_s_all_repeats": [x["images_per_s"] for x in runs]}
            results["rows"].append(row)
            print(f"  memmap  aug={aug!s:5}  workers={w}: {r['images_per_s']:>8} img/s best of "
                  f"{args.repeats} ({[x['images_per_s'] for x in runs]})")
    for w in args.workers:
        ds = DecodeEachStep(source, args.size, dm.mean, dm.std)
        g = torch.Generator().manual_seed(0)
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=w,
                            generator=g, persistent_workers=False)
        r = rate(loader, args.decode_batches)
        results["rows"].append({"loader": "decode PNG each step", "online_aug": False,
                                "num_workers": w, **r})
        print(f"  decode PNG each step  workers={w}: {r['images_per_s']:>8} img/s "
              f"({r['images']} images in {r['seconds']}s)")

    import albumentations
    import pandas as pd

    results.update({
        "command": "python benchmarks/bench_data.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": what, "n_images": len(source.records), "size": args.size,
        "batch_size": args.batch_size, "train_items": n_train,
        "seconds_write_data": round(t_write, 2), "seconds_prepare": round(t_prep, 2),
        "host": socket.gethostname(), "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "opencv": cv2.__version__,
        "albumentations": albumentations.__version__,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    })
    table = pd.DataFrame(results["rows"])[["loader", "online_aug", "num_workers", "images_per_s",
                                           "images", "seconds", "first_batch_s"]]
    print()
    print(table.to_string(index=False))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"data-{socket.gethostname()}-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
