"""Models sized for their data.

The papers' architectures (12 couplings x 256 for the NF, a 3 x 256 velocity MLP for the CFM)
and optimiser settings (the CFM's AdamW at 5e-5 for 30 epochs) are for ~90,000 galaxies. On a
catalog of a few thousand, they train too little (the CFM) or fit noise, and their intervals
come out wider than they need to be. Photometry-only models with fewer than
``SMALL_DATA_ROWS`` training rows therefore get the small-data settings (``SMALL``) unless the
run says otherwise: ``size='paper'`` keeps the papers' settings, and any option the run sets
itself (architecture keys in ``model_config``, a learning rate, batch size, weight decay,
epochs or patience other than the defaults) is kept.

The small-data settings were chosen by five-fold cross-validation on the real SDSS samples
(``python benchmarks/bench_sdss_cv.py``, figures in the README): on the 5,000-galaxy ANNz
photo-z sample they give posterior medians as accurate as a random forest's on the same rows,
with calibrated 68 % / 95 % intervals. Image models are sized as the papers size them (no
measurement of small-data image models yet).
"""
from __future__ import annotations

import dataclasses

from ..inputs import parse_inputs
from .config import MODEL_DEFAULTS, TrainConfig

#: training rows below which a photometry-only model gets the small-data settings
SMALL_DATA_ROWS = 20_000
#: the small-data settings per model kind: architecture (``model_config``) and optimisation
SMALL = {
    "nf": {"model_config": {"coupling_layers": 4, "hidden": 64, "representation": 64,
                            "rep_layers": 1, "head_layers": 1, "flow_blocks": 1},
           "lr": 1e-3, "batch_size": 128, "weight_decay": 1e-4, "epochs": 100,
           "patience": 15},
    "cfm": {"model_config": {"hidden": 64, "layers": 3},
            "lr": 1e-3, "batch_size": 128, "weight_decay": 1e-4, "epochs": 100,
            "patience": 15},
}
#: the TrainConfig defaults that the small-data settings replace when a run keeps them
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                   if f.default is not dataclasses.MISSING}


def training_rows(cfg: TrainConfig, num_rows: int) -> int:
    """The rows of a ``num_rows`` dataset that ``cfg`` trains on (its train fraction, capped
    by ``max_rows``)."""
    n = int(num_rows * cfg.split[0])
    return min(n, cfg.max_rows) if cfg.max_rows else n


def size_for_data(cfg: TrainConfig, train_rows: int) -> tuple[TrainConfig, dict]:
    """``cfg`` with the settings its data calls for, and a record of the choice: {'size':
    'paper' | 'small', 'train_rows', 'why', 'changed': {option: [before, after]}}."""
    record = {"size": "paper", "train_rows": int(train_rows), "changed": {}}
    photometry_only = "image" not in parse_inputs(cfg.inputs)
    if cfg.size == "paper" or cfg.model not in SMALL:
        record["why"] = ("asked for (size='paper')" if cfg.size == "paper"
                         else f"no small-data settings for a {cfg.model}")
        return cfg, record
    if cfg.size == "auto" and not photometry_only:
        record["why"] = "image models keep the papers' settings"
        return cfg, record
    if cfg.size == "auto" and train_rows >= SMALL_DATA_ROWS:
        record["why"] = f"{train_rows:,} training rows (at least {SMALL_DATA_ROWS:,})"
        return cfg, record
    preset = SMALL[cfg.model]
    changes = {}
    arch = preset["model_config"]
    if not any(k in cfg.model_config for k in arch):
        changes["model_config"] = {**arch, **cfg.model_config}
    defaults = {"lr": MODEL_DEFAULTS[cfg.model]["lr"],
                "batch_size": MODEL_DEFAULTS[cfg.model]["batch_size"],
                "weight_decay": _FIELD_DEFAULTS["weight_decay"],
                "epochs": _FIELD_DEFAULTS["epochs"], "patience": _FIELD_DEFAULTS["patience"]}
    for key, default in defaults.items():
        if getattr(cfg, key) == default and preset[key] != default:
            changes[key] = preset[key]
    record.update(size="small", why=(
        "asked for (size='small')" if cfg.size == "small" else
        f"{train_rows:,} training rows (fewer than {SMALL_DATA_ROWS:,}), photometry only"))
    record["changed"] = {k: [getattr(cfg, k), v] for k, v in changes.items()}
    return dataclasses.replace(cfg, **changes), record


def describe(record: dict, label: str) -> str:
    """One line for the training log."""
    if record["size"] == "paper":
        return f"[{label}] the papers' architecture and settings: {record['why']}"
    parts = []
    for key, (_, after) in record["changed"].items():
        if key == "model_config":
            parts.append(", ".join(f"{k} {v}" for k, v in after.items()))
        else:
            parts.append(f"{key.replace('_', ' ')} {after:g}")
    what = "; ".join(parts) or "every option was set by the run"
    return (f"[{label}] small-data settings ({record['why']}): {what}. size='paper' (--size "
            f"paper) keeps the papers'")
