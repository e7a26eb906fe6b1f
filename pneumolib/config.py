"""Typed, frozen run configuration and the named profiles (``smoke``, ``demo``, ``paper``).

A :class:`Config` holds every setting of a run. Profiles are Configs with different
defaults; any field can be overridden by name (``get_config("demo", max_epochs=3)``), and an
unknown name or a value of the wrong type fails with the list of valid names. This is the
only place where defaults live: the CLI, the notebooks and the tests all come through here.
"""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence, Union, get_args, get_origin, get_type_hints

from pneumolib.errors import ConfigError

#: The paper's test share after augmentation: 1,952 of 17,385 images (its Table 2).
PAPER_TEST_FRAC = 1952 / 17385

PROTOCOLS = ("clean", "paper")


@dataclass(frozen=True)
class Config:
    """All settings of one run. Sizes in pixels, fractions in [0, 1].

    Data
        data: path of a dataset folder (``siim-png`` or ``siim-dicom`` layout), or None for
            the built-in phantom data, generated on first use into the cache.
        data_kind: force a layout (``siim-png``, ``siim-dicom``, ``phantom``); None detects it.
        phantom_n / phantom_size / phantom_difficulty: the phantom set (images, native pixels,
            difficulty >= 0; see :mod:`pneumolib.data.phantom`).
        image_size: training resolution (the paper: 512); must be divisible by 16.
        protocol: ``clean`` (split by source image, augment only train; the default) or
            ``paper`` (augment positives first, then split: reproduces the paper's leakage).
        test_frac / val_frac: test share of all items; validation share of the rest.
        split_seed: seed of the split (None = ``seed``). ``pneumo reproduce --seeds`` fixes it
            to the profile's seed so that every seed is scored on the same test images.
        paper_augment: the paper's offline minority augmentation (flip + one rotation).
        online_aug: albumentations augmentation of training batches (not in the paper).
        label_frac: share of the training labels used, in (0, 1] (the label-efficiency
            study). A fixed, class-stratified subset of training *source images* (with their
            flipped / rotated copies) keeps its masks; the subset is repeated so that an epoch
            has as many steps as with all labels. Validation, test and the normalisation
            statistics are unchanged.
    Model and training
        base_width: channels of the first U-Net block (64 in Ronneberger et al. and the paper).
        unet_norm: ``batch`` (BatchNorm after each conv; the default) or ``none`` (the paper's
            plain conv + ReLU blocks, as written in its section 3.3.1).
        batch_size, lr, max_epochs, ae_max_epochs, patience, min_delta: the paper's Table 3
            and early stopping (patience 5, min delta 0.001 on validation loss).
        precision: ``auto`` (``16-mixed`` on CUDA, ``32`` on CPU) or any Lightning precision.
        accelerator / devices / strategy / num_nodes: passed to Lightning's Trainer.
        launcher: how a training that needs several processes starts them, from the CLI and a
            notebook alike (:mod:`pneumolib.training.launch`): ``""`` (default) or ``torchrun``:
            PyTorch's elastic launcher supervises the ranks (one that dies ends the job, which
            fails naming it); ``lightning``: Lightning's own launcher (no supervision beyond
            Lightning's); anything else is a command prefix that starts the ranks instead, e.g. ``srun`` inside a SLURM
            allocation (``--kill-on-bad-exit=1`` is added; Lightning's SLURM environment joins
            the tasks over ``num_nodes`` nodes) or a torchrun command of your own
            (``{python}`` is this interpreter). Not a result-affecting setting.
        max_restarts: torchrun's ``--max-restarts``: how often the elastic agent restarts all
            ranks after one failed (each restart resumes from ``checkpoints/last.ckpt``);
            0 (default) ends the job at the first failure.
        ddp_timeout_s: the process-group timeout of DDP (seconds): a rank that waits longer
            than this in a collective for a peer that stopped responding fails, and the launcher
            ends the job. The first build of the cache happens before the process group
            starts, so it never counts against this; the longest wait inside training is one
            rank writing a checkpoint while the others wait.
        sync_batchnorm: Lightning's ``sync_batchnorm``: BatchNorm statistics over all processes
            (``resnet50`` and ``unet_norm=batch``; the paper's plain U-Net has no BatchNorm).
        encoder_weights: ``imagenet`` (smp's own download), ``none``, or a local file
            (torchvision ``resnet50-*.pth`` state dict or ``.safetensors``).
        resnet_encoder: the smp encoder of the ``resnet50`` scenario (``resnet50`` as in the
            paper; the ``demo`` profile uses ``resnet18`` to fit two CPU cores in ten minutes).
        resnet_decoder_channels: channels of smp's five decoder blocks, deepest first
            (``256,128,64,32,16``: smp's default and the paper's model; the ``demo``
            stand-in halves them to fit the CPU budget).
        resnet_fallback_random: when ImageNet weights cannot be had, train the ResNet-50
            scenario from random weights with a loud warning instead of failing.
        head_prior: the segmentation head's output bias starts at the log-odds of this
            foreground share (the "prior probability" initialisation of Lin et al. 2017,
            Focal Loss), also after autoencoder weights were transferred, whose head bias
            meant an intensity, not a logit. 0 keeps the bias as initialised / transferred,
            as the paper (which does not mention it) presumably did; the ``paper`` profile
            uses 0. With a zero bias every pixel starts at p = 0.5, the BCE term first has to
            push ~99 % background pixels down, and a small U-Net can spend many epochs
            predicting all-empty (see docs/METHODS.md, "Deviations").
        threshold: probability above which a pixel counts as pneumothorax.
        channels_last / cudnn_benchmark / compile: GPU speed switches, all off by default:
            the channels-last memory format, ``torch.backends.cudnn.benchmark`` (through
            Lightning's ``Trainer(benchmark=...)``) and ``nn.Module.compile()`` of the network
            (in place, so checkpoints keep their keys). Each stays off until ``pneumo bench``
            on a GPU shows it helps (README, "Speed"); none has been measured on a GPU yet.
        num_workers: DataLoader worker processes (0 = load in the training process; the
            fastest on small CPU machines, where batches come straight from the memmap cache).
        torch_threads: intra-op CPU threads for torch (0 = torch's default, one per core).
            On a machine whose cores are busy with other work, torch's OpenMP threads can
            slow down markedly (measure: docs/BENCHMARKS.md); ``smoke`` uses 1 so CI never hits it.
    """

    name: str = "custom"
    # data
    data: str | None = None
    data_kind: str | None = None
    phantom_n: int = 2000
    phantom_size: int = 512
    phantom_difficulty: float = 1.0
    allow_phantom: bool = True
    image_size: int = 512
    protocol: str = "clean"
    test_frac: float = PAPER_TEST_FRAC
    val_frac: float = 0.1
    split_seed: int | None = None
    paper_augment: bool = True
    online_aug: bool = True
    skip_bad: bool = False
    label_frac: float = 1.0
    # model
    base_width: int = 64
    unet_norm: str = "batch"
    encoder_weights: str = "imagenet"
    resnet_encoder: str = "resnet50"
    resnet_decoder_channels: str = "256,128,64,32,16"
    resnet_fallback_random: bool = False
    # training
    batch_size: int = 32
    lr: float = 1e-4
    max_epochs: int = 50
    ae_max_epochs: int = 50
    patience: int = 5
    min_delta: float = 0.001
    threshold: float = 0.5
    head_prior: float = 0.01
    precision: str = "auto"
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    launcher: str = ""
    max_restarts: int = 0
    ddp_timeout_s: float = 900.0
    sync_batchnorm: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    num_workers: int = 2
    torch_threads: int = 0
    seed: int = 42
    deterministic: bool = False
    limit_train_batches: float = 1.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.image_size % 16:
            raise ConfigError(
                f"image_size={self.image_size} is not divisible by 16: the U-Net pools four "
                "times. Use e.g. 64, 128, 256 or 512."
            )
        if self.unet_norm not in ("batch", "none"):
            raise ConfigError(f"unet_norm={self.unet_norm!r} is unknown; valid: batch, none")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol={self.protocol!r} is unknown; valid: {', '.join(PROTOCOLS)}")
        for name in ("test_frac", "val_frac"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(f"{name}={v} must lie strictly between 0 and 1")
        ch = [c.strip() for c in str(self.resnet_decoder_channels).split(",")]
        if len(ch) != 5 or not all(c.isdigit() and int(c) > 0 for c in ch):
            raise ConfigError(f"resnet_decoder_channels={self.resnet_decoder_channels!r}: give five positive "
                              "integers, deepest block first, e.g. 256,128,64,32,16")
        if not 0.0 <= self.head_prior < 1.0:
            raise ConfigError(f"head_prior={self.head_prior} must lie in [0, 1) (0 = off)")
        if not 0.0 < self.label_frac <= 1.0:
            raise ConfigError(f"label_frac={self.label_frac} must lie in (0, 1]")
        if self.max_restarts < 0 or self.ddp_timeout_s <= 0:
            raise ConfigError(f"max_restarts={self.max_restarts} must be >= 0 and ddp_timeout_s="
                              f"{self.ddp_timeout_s} > 0")
        parse_devices(self.devices)  # fails with the accepted forms
        for name in ("batch_size", "max_epochs", "base_width", "phantom_n", "phantom_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")

    # -- helpers -----------------------------------------------------------------------
    def replace(self, **overrides: Any) -> "Config":
        """A copy with ``overrides`` applied; names and types are checked (strings coerced)."""
        return dataclasses.replace(self, **coerce_overrides(overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def uses_phantom(self) -> bool:
        return self.data is None or self.data_kind == "phantom"


def parse_devices(devices: str | int) -> int | list[int] | str:
    """``Config.devices`` as Lightning's Trainer takes it: ``3`` -> 3, ``0,1`` or ``[0, 1]``
    -> ``[0, 1]`` (those device indices), ``-1`` -> -1 (all), ``auto`` -> ``"auto"``.

    Raises:
        ConfigError: anything else (the message gives the accepted forms).
    """
    d = str(devices).strip().strip("[]() ").replace(" ", "")
    if d in ("auto", ""):
        return "auto"
    try:
        if "," in d:
            return [int(x) for x in d.split(",") if x]
        n = int(d)
    except ValueError:
        raise ConfigError(f"devices={devices!r} is not a number, a list like 0,1, -1 or auto") from None
    if n < -1 or n == 0:
        raise ConfigError(f"devices={devices!r}: give a count >= 1, a list like 0,1, -1 (all) or auto")
    if str(devices).strip().startswith(("[", "(")):
        return [n]  # "[1]": the device with index 1, as Lightning reads a list
    return n


def field_names() -> list[str]:
    return [f.name for f in fields(Config)]


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn CLI / papermill values into the field's type, or explain why not."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = args[0]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"parameter {name}={value!r} is not a valid {getattr(hint, '__name__', hint)}")


def coerce_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Check override names against :class:`Config` and coerce their values."""
    hints = get_type_hints(Config)
    unknown = sorted(set(overrides) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s): {', '.join(unknown)}. Valid names: {', '.join(field_names())}"
        )
    return {k: _coerce(k, v, hints[k]) for k, v in overrides.items()}


PROFILES: dict[str, Config] = {
    # CI: a tiny phantom, seconds per run. smoke and demo train with one process in fp32 on
    # any machine (a dual-GPU box included), so they mean the same run everywhere.
    "smoke": Config(
        name="smoke", phantom_n=64, phantom_size=128, image_size=32, base_width=4,
        batch_size=8, max_epochs=2, ae_max_epochs=2, patience=5, num_workers=0, torch_threads=1,
        online_aug=True, resnet_encoder="resnet18", resnet_fallback_random=True, progress=False,
        devices="1", precision="32-true",
    ),
    # The whole paper pipeline on two CPU cores in minutes: a phantom at 64 px, a
    # base-8 U-Net, a 10x learning rate, 8 epochs (enough with head_prior), a ResNet-18 encoder
    # with a halved decoder standing in for ResNet-50. 60 % of the images are held out for test
    # to narrow Table 4's intervals (docs/RESULTS.md); more would lengthen the per-epoch test
    # passes of Figures 5-7. The rest: training, and validation for every choice.
    "demo": Config(
        name="demo", phantom_n=1600, phantom_size=256, image_size=64, base_width=8, test_frac=0.6,
        val_frac=0.15, batch_size=16, lr=1e-3, max_epochs=8, ae_max_epochs=3, patience=5, num_workers=0,
        online_aug=True, resnet_encoder="resnet18", resnet_decoder_channels="128,64,32,16,8",
        resnet_fallback_random=True, devices="1", precision="32-true",
    ),
    # The paper's settings as written (its section 3 and Table 3), with two readings of ours.
    # Batch: Lightning's batch_size is per process, so "batch 32 on two GPUs" is read as 32
    # per GPU, 64 per optimiser step (what a Lightning user of the paper's setup gets);
    # `--set batch_size=16` gives 32 in all. Either way metrics.json records both
    # (batch_size.per_process / .effective). Processes: training on 2 differs from training
    # on 1 by more than the batch (BatchNorm statistics, for the resnet50 scenario, are per
    # process unless sync_batchnorm; the Dice term is per process batch); evaluation is exact
    # for any number. Real data required.
    "paper": Config(
        name="paper", image_size=512, base_width=64, batch_size=32, lr=1e-4, max_epochs=50,
        ae_max_epochs=50, patience=5, min_delta=0.001, precision="16-mixed", devices="2",  # 32 per GPU
        strategy="ddp", protocol="paper", online_aug=False, allow_phantom=False, unet_norm="none",
        head_prior=0.0,
        num_workers=8,
    ),
}


def get_config(profile: str = "demo", **overrides: Any) -> Config:
    """The named profile with ``overrides`` applied.

    Raises:
        ConfigError: unknown profile or parameter, or an invalid value; the message lists
            the valid names.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    cfg = PROFILES[profile].replace(**overrides) if overrides else PROFILES[profile]
    if cfg.uses_phantom and not cfg.allow_phantom:
        raise ConfigError(
            f"profile {profile!r} reproduces the paper and needs the real SIIM-ACR data: pass "
            "--data PATH (see README, 'The real data'), or allow_phantom=true to run it on the "
            "built-in phantom anyway."
        )
    return cfg


def load_config(path: str | Path) -> Config:
    """The Config saved in a ``config.json`` (a run folder's, or one written for a child
    process by :mod:`pneumolib.training.launch`), names and types checked.

    Raises:
        ConfigError: the file is missing, is not JSON, or holds an unknown field.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not a JSON config file ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file holds one JSON object of Config fields")
    return Config(**coerce_overrides(data))


# -- from the notebooks and the command line ---------------------------------------------------
def notebook_config(profile: str = "demo", data: str | None = None, overrides_json: str = "",
                    **params: Any) -> Config:
    """The notebook's typed, frozen Config from its parameters cell.

    Args:
        profile: ``smoke``, ``demo`` or ``paper``.
        data: dataset folder, or None for the built-in phantom.
        overrides_json: JSON object ``{"field": value}`` (the ``--set`` pairs of
            ``pneumo reproduce``); "" or "{}" for none.
        **params: other parameters that are Config fields (e.g. ``seed``); None keeps
            the profile's value.

    Raises:
        ConfigError: unknown profile or field, a value of the wrong type, or
            ``overrides_json`` that is not a JSON object; the message names the valid ones.
    """
    try:
        overrides = json.loads(overrides_json) if overrides_json and overrides_json.strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"overrides_json={overrides_json!r} is not valid JSON ({e})") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides_json must be a JSON object of Config fields, got {overrides_json!r}")
    merged = {k: v for k, v in params.items() if v is not None}
    if data is not None:
        merged["data"] = str(data)
    clash = sorted(k for k in set(merged) & set(overrides) if str(merged[k]) != str(overrides[k]))
    if clash:  # e.g. seed=43 from a --seeds run and seed=100 inside overrides_json: never silently one of them
        raise ConfigError(f"{', '.join(clash)} given twice with different values: as a parameter "
                          f"({', '.join(f'{k}={merged[k]!r}' for k in clash)}) and in overrides_json "
                          f"({', '.join(f'{k}={overrides[k]!r}' for k in clash)}); give it once")
    merged.update(overrides)
    return get_config(profile, **merged)


def parse_sets(sets: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> ``{key: value}`` (``-`` in keys read as ``_``)."""
    from pneumolib.config import field_names

    out: dict[str, str] = {}
    for item in sets or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE; names: {', '.join(field_names())}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out
