"""Hyper-parameter sweeps with Ray Tune over Ray Train (the V2 pattern).

A Tuner runs ``_trial``, a small driver function per trial that builds and fits a TorchTrainer
(``raygal.train.driver.make_trainer``) whose ``TuneReportCallback`` forwards each epoch's
metrics to Tune; ASHA stops poor trials early on the validation loss. The best trial's best
weights are exported as a loadable Posterior.

Search spaces (``SEARCH_SPACES``): for the NF, coupling layers (flow depth), width and learning
rate; for the CFM, sigma, width and learning rate. A config file's ``search_space`` mapping
replaces them: ``{coupling_layers: [4, 8, 12], lr: {loguniform: [1e-4, 3e-3]}}``.

Layout of ``out``::

    trials/<trial id>/ray/...   each trial's Ray Train run and checkpoints
    results.csv, results.json   one row per trial: its parameters and final metrics
    best/model/                 the best trial's model
"""
from __future__ import annotations

import math

from . import storage
from .train.config import TrainConfig

SEARCH_SPACES = {
    "nf": {"coupling_layers": [4, 8, 12], "hidden": [128, 256],
           "lr": {"loguniform": [3e-4, 3e-3]}},
    "cfm": {"sigma": [0.01, 0.05, 0.1], "hidden": [128, 256],
            "lr": {"loguniform": [5e-5, 1e-3]}},
    "gaussian": {"hidden": [64, 128], "lr": {"loguniform": [3e-4, 3e-3]}},
}
#: keys of a search space that are TrainConfig fields; the rest go to model_config.
TRAIN_KEYS = {"lr", "batch_size", "weight_decay"}


#: Domains a search space may use, with the number of arguments each takes (None: a list).
DOMAINS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": None}


def validate_search_space(space, where: str = "search_space") -> dict:
    """Check a YAML-friendly search space before Ray starts; returns it.

    Each key is a model option (``model_config``) or one of ``TRAIN_KEYS``; each value a list
    of choices, ``{choice: [...]}``, ``{loguniform|uniform|randint: [low, high]}``, or a fixed
    value.

    >>> validate_search_space({"coupling_layers": [4, 8], "lr": {"loguniform": [1e-4, 1e-3]}})
    {'coupling_layers': [4, 8], 'lr': {'loguniform': [0.0001, 0.001]}}
    """
    import dataclasses

    if not isinstance(space, dict) or not space:
        raise ValueError(f"{where} must be a non-empty mapping of option: values, e.g. "
                         f"{{coupling_layers: [4, 8, 12], lr: {{loguniform: [1e-4, 1e-3]}}}}")
    fixed = {f.name for f in dataclasses.fields(TrainConfig)} - TRAIN_KEYS
    for k, v in space.items():
        if k in fixed:
            raise ValueError(f"{where}: {k!r} cannot be searched (searchable training "
                             f"options: {', '.join(sorted(TRAIN_KEYS))}; any other key is a "
                             f"model option)")
        if isinstance(v, list) and not v:
            raise ValueError(f"{where}: {k!r} has an empty list of choices")
        if isinstance(v, dict):
            if len(v) != 1 or next(iter(v)) not in DOMAINS:
                raise ValueError(f"{where}: {k!r} must be a list or one of "
                                 f"{{{' | '.join(DOMAINS)}: [...]}}, not {v!r}")
            (kind, args), = v.items()
            n = DOMAINS[kind]
            if not isinstance(args, list) or (n is None and not args) or \
                    (n is not None and len(args) != n):
                raise ValueError(f"{where}: {k!r}: {kind} takes "
                                 f"{'a list of choices' if n is None else '[low, high]'}, "
                                 f"not {args!r}")
            if n is not None and not (all(isinstance(a, (int, float)) for a in args)
                                      and args[0] < args[1]):
                raise ValueError(f"{where}: {k!r}: {kind} needs numbers low < high, not "
                                 f"{args!r}")
            if kind == "loguniform" and args[0] <= 0:
                raise ValueError(f"{where}: {k!r}: loguniform needs low > 0, not {args!r}")
    return space


def load_search_space(path: str) -> dict | None:
    """The checked ``search_space`` of a config file (None if the file has none)."""
    from .train.config import read_config_file

    space = read_config_file(path).get("search_space")
    return None if space is None else validate_search_space(space, f"{path}: search_space")


def to_tune_space(space: dict) -> dict:
    """A YAML-friendly search space -> Ray Tune domains (lists become grid/choice)."""
    from ray import tune

    out = {}
    for k, v in validate_search_space(space).items():
        if isinstance(v, list):
            out[k] = tune.choice(v)
        elif isinstance(v, dict):
            (kind, args), = v.items()
            fn = getattr(tune, kind)
            out[k] = fn(args) if kind == "choice" else fn(*args)
        else:
            out[k] = v
    return out


def trial_config(base: dict, params: dict, trial_id: str) -> TrainConfig:
    d = dict(base)
    d["model_config"] = dict(d.get("model_config") or {})
    for k, v in params.items():
        if k in TRAIN_KEYS:
            d[k] = v
        else:
            d["model_config"][k] = v
    d["out"] = storage.join(base["out"], "trials", trial_id)
    return TrainConfig.from_dict(d)


def _trial(params: dict) -> None:
    """One Tune trial: fit a TorchTrainer for ``params`` on top of the base config."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .train.driver import make_trainer

    base = params.pop("__base__")
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(base, params, trial_id)
    trainer = make_trainer(cfg, run_name="train", callbacks=[TuneReportCallback()])
    trainer.fit()


def _trial_progress(epochs: int):
    """A Tune callback printing every trial's epochs on the driver (Tune's controller runs
    there), so the sweep's output and ``ray job logs`` show each trial's losses and rate."""
    from ray import tune

    class TrialProgress(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" not in result:
                return
            print(f"[tune] trial {trial.trial_id} epoch {int(result['epoch']) + 1}/{epochs}: "
                  f"val loss {result['val_loss']:.4f} (best {result['best_val_loss']:.4f}), "
                  f"{result.get('samples_per_s', float('nan')):.0f} samples/s", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            print(f"[tune] trial {trial.trial_id} finished", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[tune] trial {trial.trial_id} failed: {trial.error_file or 'see its log'}",
                  flush=True)

    return TrialProgress()


#: the bound on trials at once where the cluster's growth has no limit (Tune queues the rest)
UNBOUNDED_TRIALS = 1_000_000


def max_concurrent(cfg: TrainConfig, cpus_per_worker: float, capacity=None) -> int:
    """Trials that fit the cluster at once without starving Ray Data or deadlocking: one CPU
    is kept for data tasks; GPUs bound it too. Sized from what the cluster can grow to
    (``raygal.runtime.cluster_capacity``), so an autoscaling cluster that starts with no
    workers still runs trials side by side once its nodes come up."""
    from .runtime import cluster_capacity

    cap = capacity or cluster_capacity()
    cpus = min(cap.total("CPU"), float(UNBOUNDED_TRIALS))
    per_trial = cfg.workers * cpus_per_worker + 0.01
    n = max(1, int(math.floor((cpus - 1.0) / per_trial + 1e-9)))
    if cfg.gpus_per_worker:
        gpus = min(cap.total("GPU"), float(UNBOUNDED_TRIALS))
        n = min(n, max(1, int(gpus // (cfg.workers * cfg.gpus_per_worker))))
    return min(n, UNBOUNDED_TRIALS)


def run_sweep(cfg: TrainConfig, trials: int, search_space: dict | None = None,
              grace_period: int = 2, seed: int = 0,
              max_concurrent_trials: int | None = None) -> dict:
    """Run a sweep of ``trials`` trials; returns {'results': rows, 'best': row,
    'model_uri': ...}. ``max_concurrent_trials`` caps the trials run at once (default:
    ``max_concurrent``, from the cluster's CPUs and GPUs)."""
    if max_concurrent_trials is not None and max_concurrent_trials < 1:
        raise ValueError(f"--max-concurrent-trials {max_concurrent_trials}: must be at least 1")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .runtime import cluster_capacity

    from .train.driver import check_worker_resources, export_checkpoint, sized, trained_on

    space = to_tune_space(search_space or SEARCH_SPACES[cfg.model])
    check_worker_resources(cfg)   # GPUs on a CPU-only cluster: an error now, not a wait
    cfg, _ = sized(cfg)           # the search space's options override the sizing's
    cap = cluster_capacity()
    if cfg.cpus_per_worker is None:
        total = min(cap.total("CPU"), float(UNBOUNDED_TRIALS))
        # Each trial's workers share what is left after one CPU for data; the driver needs a
        # sliver (0 raises).
        at_once = min(trials, max_concurrent_trials or max(1, int(total - 1)))
        per = (total - 1.0) / max(1, at_once * cfg.workers)
        cfg.cpus_per_worker = max(0.25, min(1.0, per) - 0.01)
    concurrency = min(trials, max_concurrent_trials or max_concurrent(cfg, cfg.cpus_per_worker,
                                                                      cap))
    print(f"[tune] {trials} trials, up to {concurrency} at once, {cfg.workers} worker(s) of "
          f"{cfg.cpus_per_worker:.2f} CPU each (sized from {cap.source})", flush=True)
    base = cfg.to_dict()
    space["__base__"] = base
    fs, path = storage.arrow_fs(storage.join(cfg.out, "tune"))
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"cpu": 0.01}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", num_samples=trials,
            max_concurrent_trials=concurrency,
            scheduler=ASHAScheduler(max_t=cfg.epochs, grace_period=min(grace_period,
                                                                       cfg.epochs),
                                    time_attr="training_iteration")),
        run_config=tune.RunConfig(name="sweep", storage_path=path, storage_filesystem=fs,
                                  callbacks=[_trial_progress(cfg.epochs)]))
    grid = tuner.fit()
    rows = []
    for r in grid:
        m = dict(r.metrics or {})
        row = {k: v for k, v in (r.config or {}).items() if k != "__base__"}
        row.update({k: m.get(k) for k in ("val_loss", "best_val_loss", "epoch",
                                          "training_iteration")})
        row["checkpoint_path"] = m.get("checkpoint_path")
        row["error"] = str(r.error) if r.error else None
        rows.append(row)
    ok = [r for r in rows if r["best_val_loss"] is not None and r["checkpoint_path"]]
    if not ok:
        raise RuntimeError(f"no trial finished; errors: {[r['error'] for r in rows]}")
    best = min(ok, key=lambda r: r["best_val_loss"])
    from ray.train import Checkpoint

    ckpt = Checkpoint(path=best["checkpoint_path"], filesystem=fs)
    model_uri = storage.join(cfg.out, "best", "model")
    export_checkpoint(ckpt, model_uri, heldout_data=trained_on(cfg))
    _write_results(cfg.out, rows)
    summary = {"results": rows, "best": best, "model_uri": model_uri,
               "max_concurrent_trials": concurrency}
    storage.write_json(storage.join(cfg.out, "results.json"), summary)
    return summary


def _write_results(out: str, rows: list[dict]) -> None:
    import csv
    import io

    keys = sorted({k for r in rows for k in r})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    storage.write_bytes(storage.join(out, "results.csv"), buf.getvalue().encode())
