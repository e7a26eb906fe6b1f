"""The ``pneumo`` command.

    pneumo data phantom --out DIR --n N --size S --seed K     write the built-in phantom set
        [--layout siim-png|siim-dicom] [--junk N]             (PNG re-packaging, or the DICOM download)
    pneumo data info PATH                                     what a data folder holds
    pneumo pretrain --kind xray|mask|genesis|xray_noskip      train an autoencoder
    pneumo train --scenario NAME                              fine-tune one scenario
    pneumo evaluate --run DIR                                 re-evaluate a finished run
    pneumo params                                             parameter counts of the models
    pneumo reproduce [--profile demo|smoke|paper]             every notebook, figures, Table 4
    pneumo bench [--size 512] [--batch-size 32] [--quick]     speed of data, training, inference
    pneumo predict INPUT... --checkpoint RUN --out DIR        masks, overlays, CSV for any X-rays

Training commands take ``--profile``, ``--data``, ``--out``, ``--seed``, ``--max-epochs`` and
``--set KEY=VALUE`` for any other setting of :class:`pneumolib.config.Config`. Errors that
pneumolib raises on purpose are printed without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from pneumolib.config import PROFILES, field_names, get_config
from pneumolib.errors import ConfigError, PneumoError

SCENARIO_NAMES = ("random", "ae_full", "ae_full_frozen", "ae_encoder", "ae_encoder_mask_decoder", "resnet50",
                  # beyond the paper: pneumolib.models.scenarios.EXTRA_SCENARIOS
                  "genesis_full", "genesis_encoder", "noskip_encoder", "random_cls")


class _Parser(argparse.ArgumentParser):
    """argparse that names the valid options when it meets an unknown one."""

    def error(self, message: str):  # noqa: D102
        valid = sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})
        hint = f"\nvalid options: {' '.join(valid)}" if "unrecognized" in message and valid else ""
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="demo", choices=sorted(PROFILES),
                   help="settings profile (default: demo)")
    p.add_argument("--data", help="dataset folder (siim-png or siim-dicom layout); default: the built-in phantom")
    p.add_argument("--config", metavar="FILE",
                   help="start from this config.json (e.g. a run folder's) instead of the profile; "
                        "the options below still apply on top")
    p.add_argument("--out", help="run folder (default: results/<profile>/<name>/)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--protocol", choices=["clean", "paper"])
    p.add_argument("--devices", help="Lightning devices, e.g. 1, 2 or auto")
    p.add_argument("--strategy", help="Lightning strategy, e.g. auto, ddp")
    p.add_argument("--precision", help="auto, 32-true, 16-mixed, bf16-mixed")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run's last checkpoint (the default whenever the run folder holds one "
                        "of the same settings, data and code; kept for old scripts)")
    p.add_argument("--fresh", action="store_true",
                   help="start afresh: remove what the run folder holds from an earlier run first")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"any other setting; names: {', '.join(field_names())}")


def config_from_args(args: argparse.Namespace):
    """The Config for parsed ``args``: the profile's (or ``--config FILE``'s) settings, then
    named options, then --set."""
    if getattr(args, "config", None):
        from pneumolib.config import load_config

        return load_config(args.config).replace(**overrides_from_args(args))
    return get_config(args.profile, **overrides_from_args(args))


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given explicitly on the command line, by Config field name."""
    overrides: dict[str, Any] = {}
    for opt, key in [("data", "data"), ("seed", "seed"), ("max_epochs", "max_epochs"),
                     ("image_size", "image_size"), ("batch_size", "batch_size"), ("protocol", "protocol"),
                     ("devices", "devices"), ("strategy", "strategy"), ("precision", "precision")]:
        v = getattr(args, opt, None)
        if v is not None:
            overrides[key] = v
    if getattr(args, "command", None) == "pretrain" and args.max_epochs is not None:
        overrides["ae_max_epochs"] = args.max_epochs
    from pneumolib.config import parse_sets

    overrides.update(parse_sets(getattr(args, "set", []) or []))
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pneumo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="data sets: the phantom, inspecting a folder")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    ph = dsub.add_parser("phantom", help="write the built-in phantom set in the siim-png (default) "
                         "or siim-dicom layout")
    ph.add_argument("--out", required=True)
    ph.add_argument("--n", type=int, default=2000)
    ph.add_argument("--size", type=int, default=512)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--difficulty", type=float, default=None, help="0 = obvious; default: calibrated")
    ph.add_argument("--workers", type=int, default=None)
    ph.add_argument("--layout", choices=["siim-png", "siim-dicom"], default="siim-png",
                    help="siim-png (default): png_images/, png_masks/ and the stage_1 CSVs, as "
                         "training's built-in phantom; siim-dicom: the competition download, "
                         "dicom-images-train/<study>/<series>/<ImageId>.dcm (JPEG Baseline) and "
                         "train-rle.csv with its quirks")
    ph.add_argument("--junk", type=int, default=0, metavar="N",
                    help="siim-dicom only: add N macOS '._<ImageId>.dcm' junk files beside the "
                         "DICOMs, as real downloads have (default: 0)")
    info = dsub.add_parser("info", help="detect a folder's layout and count its images")
    info.add_argument("path")
    info.add_argument("--kind")
    info.add_argument("--skip-bad", action="store_true")

    pre = sub.add_parser("pretrain", help="train the X-ray or mask autoencoder (MSE)")
    pre.add_argument("--kind", required=True, choices=["xray", "mask", "genesis", "xray_noskip"])
    _run_options(pre)

    tr = sub.add_parser("train", help="fine-tune one transfer scenario for segmentation")
    tr.add_argument("--scenario", required=True, choices=SCENARIO_NAMES)
    tr.add_argument("--ae-dir", help="folder with the ae_<kind> autoencoder runs (default: the profile's results)")
    _run_options(tr)

    ev = sub.add_parser("evaluate", help="re-evaluate a finished run's model on its val and test splits")
    ev.add_argument("--run", required=True, help="run folder holding model.pt and config.json")
    _run_options(ev)

    sub.add_parser("params", help="parameter counts of the paper U-Net (base 64) and the ResNet-50 U-Net")

    rep = sub.add_parser("reproduce", help="run every notebook with papermill; write figures and Table 4")
    rep.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    rep.add_argument("--data")
    rep.add_argument("--force", action="store_true", help="rerun notebooks that already completed")
    rep.add_argument("--rerun-changed", action="store_true",
                     help="train again the runs that other code on the results path made (see --keep-results)")
    rep.add_argument("--keep-results", action="store_true",
                     help="keep runs made by other code on the results path as they are (recorded in "
                          "kept_results.json and the report); interrupted ones resume under this code")
    rep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    rep.add_argument("--seeds", type=int, default=1, metavar="N",
                     help="train every scenario with N seeds (the base seed, +1, ...; 5 or more to rank scenarios); "
                          "Table 4 then shows the mean over seeds, intervals over seeds and test images (default: 1)")
    rep.add_argument("--studies", default="", metavar="NAME,...",
                     help="also run studies beyond the paper: leakage, image_level, pretext, "
                          "label_efficiency, or all (see README, 'Beyond the paper')")
    rep.add_argument("--label-fractions", default="0.01,0.1", metavar="F,...",
                     help="label shares of the label_efficiency study, in (0, 1); the main runs are 1.0 "
                          "(default: 0.01,0.1)")
    rep.add_argument("--label-scenarios", default="", metavar="NAME,...",
                     help="scenarios of the label_efficiency study (default: all six)")
    bench = sub.add_parser("bench", help="speed: data loading, training (Lightning vs plain), inference, GPU")
    bench.add_argument("--size", type=int, default=512, help="image side in px (data, GPU parts)")
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--steps", type=int, default=None, help="timed training steps per measurement")
    bench.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a CPU")
    bench.add_argument("--out", help="results folder (default: benchmarks/results)")
    bench.add_argument("--gpu", action="store_true",
                       help="the GPU check instead (needs CUDA): 512 px training/eval images/s, peak memory and "
                            "TFLOP/s of both models per precision and memory format, one paper-profile epoch, "
                            "the projected paper wall time, recommended GPU switches; one JSON within --budget-s")
    bench.add_argument("--budget-s", type=float, default=300.0, help="--gpu: time budget in seconds (default: 300)")
    bench.add_argument("--epoch-images", type=int, default=None, metavar="N",
                       help="--gpu: phantom images of the epoch part (default: chosen to fit the budget)")
    bench.add_argument("--skip", default="", metavar="PART,...",
                       help="--gpu: parts to leave out: epoch, rows, epoch_1gpu, cudnn, compile, resnet50, 32-true")
    pred = sub.add_parser("predict", help="pneumothorax masks, overlays and a CSV for X-ray files "
                          "(PNG, JPEG, DICOM; any size or mode)")
    pred.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="image files or folders (searched recursively)")
    pred.add_argument("--checkpoint", required=True,
                      help="run folder (config.json + model.pt + metrics.json), its model.pt, or a .ckpt")
    pred.add_argument("--out", required=True, help="output folder: predictions.csv, masks/, overlays/")
    pred.add_argument("--threshold", type=float,
                      help="plain pixel threshold in [0, 1] (default: the run's postprocess.json, else 0.5)")
    pred.add_argument("--min-area", type=int,
                      help="positive only with more than N pixels above the threshold, at the model's size")
    pred.add_argument("--batch-size", type=int, default=16)
    pred.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    pred.add_argument("--no-images", action="store_true", help="write only predictions.csv")
    parser.commands = {"bench": bench, "data": data, "pretrain": pre, "train": tr, "evaluate": ev,
                       "reproduce": rep, "predict": pred}
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, and answer an unknown option with the valid options of *that* command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "phantom":
        import time

        from pneumolib.data import phantom

        kw = {} if args.difficulty is None else {"difficulty": args.difficulty}
        t0 = time.perf_counter()
        out = phantom.write_phantom(args.out, n=args.n, size=args.size, seed=args.seed,
                                    workers=args.workers, layout=args.layout, junk=args.junk, **kw)
        print(f"wrote {args.n} phantom images ({args.size} px) to {out} in the {args.layout} layout "
              f"in {time.perf_counter() - t0:.1f} s")
        return 0
    from pneumolib.data import open_source

    src = open_source(args.path, kind=args.kind, skip_bad=args.skip_bad)
    pos = sum(1 for r in src.records if r.has_pneumo == 1)
    neg = sum(1 for r in src.records if r.has_pneumo == 0)
    splits: dict[str, int] = {}
    for r in src.records:
        splits[str(r.split)] = splits.get(str(r.split), 0) + 1
    print(json.dumps({"kind": src.kind, "root": str(src.root), "images": len(src), "positive": pos,
                      "negative": neg, "unknown": len(src) - pos - neg, "by_source_split": splits,
                      "skipped": len(src.skipped)}, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pneumolib.evaluation.evaluate import evaluate_run

    res = evaluate_run(args.run, overrides_from_args(args), out=args.out)
    print(json.dumps(res, indent=2, default=str))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pneumolib.commands.predict import POSITIVE, predict_paths

    df = predict_paths(args.inputs, args.checkpoint, args.out, batch_size=args.batch_size,
                       device=args.device, threshold=args.threshold, min_area=args.min_area,
                       write_images=not args.no_images, progress=True)
    ok = df["status"] == "ok"
    n_skipped = len(df.attrs.get("skipped", []))
    skipped = f", {n_skipped} other files skipped" if n_skipped else ""
    print(f"predict: {len(df)} inputs, {int(ok.sum())} ok, {int((~ok).sum())} errors, "
          f"{int((df['decision'] == POSITIVE).sum())} positive{skipped} -> {df.attrs['csv']}")
    if not ok.any():
        first = df["status"].iloc[0]
        print(f"pneumo: error: none of the {len(df)} inputs could be read; the first: "
              f"{first.removeprefix('error: ')} (every reason is in {df.attrs['csv']})", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "data":
            return _cmd_data(args)
        if args.command == "params":
            from pneumolib.models.parts import param_table

            print(param_table())
            return 0
        if args.command == "bench":
            if args.gpu:
                from pneumolib.commands.gpu.command import main as gpu_main

                return gpu_main(size=args.size, batch_size=args.batch_size, steps=args.steps, out=args.out,
                                budget_s=args.budget_s, epoch_images=args.epoch_images, skip=args.skip,
                                quick=args.quick)
            from pneumolib.commands.bench import main as bench_main

            return bench_main(size=args.size, batch_size=args.batch_size, steps=args.steps,
                              quick=args.quick, out=args.out)
        if args.command == "predict":
            return _cmd_predict(args)
        if args.command == "reproduce":
            from pneumolib.commands.reproduce import reproduce

            try:
                fracs = [float(f) for f in args.label_fractions.split(",") if f.strip()]
            except ValueError:
                raise ConfigError(f"--label-fractions {args.label_fractions!r}: give numbers like 0.01,0.1") from None
            scs = [x.strip() for x in args.label_scenarios.split(",") if x.strip()] or None
            return reproduce(profile=args.profile, data=args.data, force=args.force, sets=args.set,
                             seeds=args.seeds, studies=args.studies, label_fractions=fracs, label_scenarios=scs,
                             rerun_changed=args.rerun_changed, keep_results=args.keep_results)
        cfg = config_from_args(args)
        from pneumolib.training import runs as train

        resume = False if args.fresh else None
        if args.command == "pretrain":
            res = train.pretrain(cfg, args.kind, out=args.out, resume=resume)
        elif args.command == "train":
            res = train.train_scenario(cfg, args.scenario, out=args.out, ae_dir=args.ae_dir, resume=resume)
        elif args.command == "evaluate":
            return _cmd_evaluate(args)
        else:  # pragma: no cover - argparse rejects unknown commands
            raise ConfigError(f"unknown command {args.command}")
        if res:
            test = res.get("test", {})
            keys = [k for k in ("dice_pooled", "iou_pooled", "dice_per_image", "dice_positive", "auc", "mse")
                    if k in test]
            best = res.get("best_epoch")
            print(f"{res.get('name')}: best epoch {best + 1 if isinstance(best, int) else best} (from 1), test " +
                  ", ".join(f"{k}={test[k]:.4f}" for k in keys) + f"  ({Path(args.out or '') or ''})")
        return 0
    except PneumoError as e:
        print(f"pneumo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        why = f" ({e})" if str(e) else ""
        print(f"pneumo: interrupted{why}. Finished files are kept; the same command again resumes a "
              "training run from its last checkpoint.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
