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
    workers: 2                 # Ray Train workers (data-parallel, DDP)
    gpus_per_worker: 0
    cpus_per_worker: null      # null: chosen from the cluster's free CPUs
    max_failures: 2            # worker failures to recover from (resuming from checkpoints)
    seed: 0
    augment: true              # random rotations/flips of cutouts (8 symmetries of the square)
    split: [0.8, 0.1, 0.1]     # train / validation / test fractions, by a hash of objid
    max_rows: null             # cap on training rows (quick runs)
    model_config: {}           # architecture options of the model (see each model's docstring)

Defaults follow the papers: VAE Adam 1e-4; CFM AdamW 5e-5, batch 64, early stopping.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from .. import storage
from ..schema import CFM_TARGETS, NF_CORE_TARGETS, NF_LINE_TARGETS, parse_targets
from ..inputs import INPUT_KINDS
from ..models.registry import TRAINABLE_KINDS

MODEL_KINDS = TRAINABLE_KINDS

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
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    max_failures: int = 2
    seed: int = 0
    augment: bool = True
    split: tuple = (0.8, 0.1, 0.1)
    max_rows: int | None = None
    model_config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {MODEL_KINDS}, not {self.model!r}")
        d = MODEL_DEFAULTS[self.model]
        self.lr = float(self.lr if self.lr is not None else d["lr"])
        self.optimizer = self.optimizer or d["optimizer"]
        self.batch_size = int(self.batch_size or d["batch_size"])
        self.targets = parse_targets(self.targets or d["targets"])
        self.split = tuple(float(x) for x in self.split)
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"inputs must be one of {', '.join(INPUT_KINDS)}, not "
                             f"{self.inputs!r}")
        if self.model == "vae" and self.inputs == "phot":
            raise ValueError("a VAE needs images (inputs=image+phot or image)")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be adam or adamw, not {self.optimizer!r}")
        if self.workers < 1 or self.epochs < 1:
            raise ValueError("workers and epochs must be >= 1")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["split"] = list(self.split)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def load_config(path: str | None, **overrides) -> TrainConfig:
    """A TrainConfig from a YAML file (local or s3://) with ``overrides`` (None = not given)
    applied on top."""
    d = {}
    if path:
        d = yaml.safe_load(storage.read_bytes(path).decode()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a training config must be a YAML mapping")
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
