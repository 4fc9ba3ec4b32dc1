"""Training configuration: a documented schema, YAML files, command-line overrides.

A config file (YAML) holds any of these keys; every command-line option overrides the file::

    model: nf                  # vae | nf | cfm | gaussian
    data: s3://bucket/mock     # a raygal dataset (raygal simulate / raygal ingest)
    out: s3://bucket/runs/nf   # checkpoints, history and the exported model go here
    inputs: image+phot         # or phot (photometry-only: no cutouts needed)
    targets: [log_mstar, log_sfr, z, log_mbh, oh12]   # default: the paper's set per model
    vae: s3://bucket/runs/vae/model   # nf with images: the trained VAE whose features it uses
    epochs: 30
    batch_size: 64
    lr: 5.0e-5
    weight_decay: 0.0
    optimizer: adamw           # adam | adamw
    patience: 5                # early stopping: epochs without a better validation loss
    lr_schedule: plateau       # plateau: halve the learning rate when the validation loss
                               # stalls (after patience // 2 epochs); none: constant
    ema_decay: 0.0             # > 0: validate, early-stop and export an exponential moving
                               # average of the weights (e.g. 0.999); 0: the raw weights
    workers: 2                 # Ray Train workers (data-parallel, DDP)
    min_workers: null          # elastic: keep training on as few as this many workers when
                               # nodes are lost (null: always exactly `workers`)
    gpus_per_worker: 0
    cpus_per_worker: null      # null: chosen from the cluster's free CPUs
    max_failures: 2            # worker failures to recover from (resuming from checkpoints)
    seed: 0
    augment: true              # random rotations/flips of cutouts (8 symmetries of the square)
    split: [0.8, 0.1, 0.1]     # train / validation / test fractions, by a hash of objid
    max_rows: null             # cap on training rows (quick runs)
    model_config: {}           # architecture options of the model (see each model's docstring)
    size: auto                 # auto | paper | small: auto gives photometry-only models on
                               # fewer than 20,000 training rows the small-data settings
                               # (raygal.train.sizing); options set here are kept
    search_space: {...}        # raygal tune only (raygal.tune); raygal train ignores it

Defaults follow the papers: VAE Adam 1e-4; CFM AdamW 5e-5, batch 64, early stopping.

Every value is checked here, before Ray starts: a wrong option, type or split is an error that
names the option and says what to give instead; ``TrainConfig.check_trainable`` adds what a
run needs beyond valid values (an image NF's VAE).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from .. import storage
from ..schema import CFM_TARGETS, NF_CORE_TARGETS, NF_LINE_TARGETS, parse_targets
from ..inputs import INPUT_KINDS, parse_inputs
from ..models.registry import TRAINABLE_KINDS

MODEL_KINDS = TRAINABLE_KINDS
#: how a run is sized for its data (raygal.train.sizing)
SIZES = ("auto", "paper", "small")
#: learning-rate schedules (raygal.train.loop.make_scheduler)
LR_SCHEDULES = ("plateau", "none")

#: The papers' optimiser settings and target sets, per model.
MODEL_DEFAULTS = {
    "vae": dict(lr=1e-4, optimizer="adam", batch_size=64, targets=()),
    "nf": dict(lr=1e-3, optimizer="adam", batch_size=256,
               targets=NF_CORE_TARGETS + ("oh12",) + NF_LINE_TARGETS),
    "cfm": dict(lr=5e-5, optimizer="adamw", batch_size=64, targets=CFM_TARGETS),
    "gaussian": dict(lr=1e-3, optimizer="adam", batch_size=256, targets=CFM_TARGETS),
}


@dataclass
class TrainConfig:
    model: str
    data: str
    out: str
    inputs: str = "image+phot"
    targets: tuple = ()
    vae: str | None = None
    epochs: int = 30
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    optimizer: str | None = None
    patience: int = 5
    lr_schedule: str = "plateau"
    ema_decay: float = 0.0
    workers: int = 1
    min_workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    max_failures: int = 2
    seed: int = 0
    augment: bool = True
    split: tuple = (0.8, 0.1, 0.1)
    max_rows: int | None = None
    model_config: dict = field(default_factory=dict)
    size: str = "auto"

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {MODEL_KINDS}, not {self.model!r}")
        d = MODEL_DEFAULTS[self.model]
        _coerce_types(self)
        self.lr = float(self.lr if self.lr is not None else d["lr"])
        self.optimizer = self.optimizer or d["optimizer"]
        self.batch_size = int(self.batch_size or d["batch_size"])
        self.targets = parse_targets(self.targets or d["targets"])
        self.split = tuple(float(x) for x in self.split)
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"inputs must be one of {', '.join(INPUT_KINDS)}, not "
                             f"{self.inputs!r}")
        if self.model == "vae" and "image" not in parse_inputs(self.inputs):
            raise ValueError("a VAE needs images (inputs=image+phot or image)")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, not {self.size!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not "
                             f"{self.lr_schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be 0 (off) or in (0, 1), e.g. 0.999, not "
                             f"{self.ema_decay}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be adam or adamw, not {self.optimizer!r}")
        if self.workers < 1 or self.epochs < 1:
            raise ValueError("workers and epochs must be >= 1")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.workers:
            raise ValueError(f"min_workers must be between 1 and workers ({self.workers}), "
                             f"not {self.min_workers}")
        _check_split(self.split)

    def check_trainable(self) -> None:
        """Raise a ValueError saying what is missing if this config cannot start training
        (checked before Ray starts; a config may lack a VAE while it is being assembled)."""
        if self.model == "nf" and "image" in parse_inputs(self.inputs) and not self.vae:
            raise ValueError(
                "an NF on images works on the features of a trained VAE, and no VAE was "
                "given: train one first (raygal train vae --data DATA --out runs/vae), then "
                "pass it with --vae runs/vae (or 'vae:' in the config file); or train a "
                "photometry-only NF with --inputs phot")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["split"] = list(self.split)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(d) - set(names)
        if unknown:
            known = ", ".join(n for n in names if n != "fail_at_epoch")
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))} "
                             f"(known: {known})")
        return cls(**d)


#: Options whose values must be whole numbers / numbers, named in errors as given.
INT_OPTIONS = ("epochs", "batch_size", "patience", "workers", "min_workers", "max_failures",
               "seed", "max_rows")
FLOAT_OPTIONS = ("lr", "weight_decay", "ema_decay", "gpus_per_worker", "cpus_per_worker")
#: Keys of a config file that belong to one command and are not training options.
COMMAND_KEYS = {"search_space": "raygal tune"}


def _coerce_types(cfg: TrainConfig) -> None:
    """Convert YAML/CLI values to their types in place, or raise naming the option."""
    def convert(name, fn, value):
        try:
            if isinstance(value, bool) or (fn is int and float(value) != int(value)):
                raise ValueError
            return fn(value)
        except (TypeError, ValueError):
            kind = "a whole number" if fn is int else "a number"
            raise ValueError(f"training option {name} must be {kind}, not {value!r}") from None

    for names, fn in ((INT_OPTIONS, int), (FLOAT_OPTIONS, float)):
        for name in names:
            value = getattr(cfg, name)
            if value is not None:          # None: the model's default (lr, batch_size, ...)
                setattr(cfg, name, convert(name, fn, value))
    if isinstance(cfg.split, (str, bytes)) or not hasattr(cfg.split, "__iter__"):
        raise ValueError(f"split must be a list of three fractions, e.g. [0.8, 0.1, 0.1], "
                         f"not {cfg.split!r}")
    cfg.split = [convert("split", float, x) for x in cfg.split]
    if not isinstance(cfg.model_config, dict):
        raise ValueError(f"model_config must be a mapping, e.g. {{coupling_layers: 8}}, not "
                         f"{cfg.model_config!r}")


def _check_split(split: tuple) -> None:
    """Train / validation / test fractions: three, none negative, a positive training
    fraction, summing to 1 (the split is by a hash of objid: fractions are not rescaled)."""
    if len(split) != 3:
        raise ValueError(f"split must be three fractions (train, validation, test), not "
                         f"{list(split)}")
    if any(f < 0 for f in split) or split[0] <= 0:
        raise ValueError(f"split fractions must be >= 0 with a positive training fraction, "
                         f"not {list(split)}")
    if abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, not {sum(split):g} "
                         f"({list(split)})")


def read_config_file(path: str) -> dict:
    """The YAML mapping of a config file (local or s3://), training options and command keys
    (``COMMAND_KEYS``) alike."""
    try:
        d = yaml.safe_load(storage.read_bytes(path).decode())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    d = d or {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a training config must be a YAML mapping")
    return d


def load_config(path: str | None, **overrides) -> TrainConfig:
    """A TrainConfig from a YAML file (local or s3://) with ``overrides`` (None = not given)
    applied on top. Command keys such as ``search_space`` are left to their command."""
    d = {}
    if path:
        d = {k: v for k, v in read_config_file(path).items() if k not in COMMAND_KEYS}
    for k, v in overrides.items():
        if v is not None:
            if k == "model_config":
                d.setdefault("model_config", {}).update(v)
            else:
                d[k] = v
    missing = [k for k in ("model", "data", "out") if not d.get(k)]
    if missing:
        raise ValueError(f"training config lacks {', '.join(missing)} (give them in the file "
                         f"or on the command line)")
    return TrainConfig.from_dict(d)
