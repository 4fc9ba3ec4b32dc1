"""Building and fitting a Ray Train TorchTrainer from a ``TrainConfig``.

    cfg = load_config("nf.yaml", data="s3://b/mock", out="s3://b/runs/nf", workers=4)
    summary = fit(cfg)          # -> {'model_uri': ..., 'history': [...], ...}

Layout of ``cfg.out``::

    ray/<run name>/...   Ray Train's run folder: per-epoch checkpoints (state.pt, meta.json)
    model/               the exported model (best validation epoch): model.json + weights.pt
    history.json         per-epoch metrics (and the dataset fingerprint the model was made from)
    _run.json            the dataset (URI and content fingerprint) and model kind of the run

Re-running with the same ``out`` resumes the run from its last checkpoint (a killed driver
loses at most the epoch in progress), on the same dataset content only; use a new ``out`` for
a fresh run.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..pipelines import DEFAULT_FRACTIONS, augment, read_dataset, split, split_of, stats_for
from ..shards import fingerprint, read_schema, shard_uris
from ..inputs import NormStats, parse_inputs
from ..schema import (CUTOUT_COLUMN, FLAGS_COLUMN, ID_COLUMN, MAG_COLUMNS, MAGERR_COLUMNS,
                      cutout_properties, cutout_shape_of)
from .config import TrainConfig
from .loop import build_model, load_checkpoint_state, train_loop_per_worker

log = logging.getLogger("raygal.train")
RUN_NAME = "train"
FEATURES_COLUMN = "vae_features"


class _UsableRows:
    """Keep the rows a model can train on, as its inputs adapter decides (finite photometry, a
    usable cutout when the model uses images)."""

    def __init__(self, model_inputs):
        self.model_inputs = model_inputs

    def __call__(self, batch):
        keep = self.model_inputs.trainable(batch)
        return {k: v[keep] for k, v in batch.items()}


def training_columns(cfg: TrainConfig, names) -> list[str]:
    cols = [ID_COLUMN, FLAGS_COLUMN, *MAG_COLUMNS, *MAGERR_COLUMNS]
    cols += [t for t in cfg.targets if t in names]
    if cfg.model == "nf" and "oh12" not in cols and "oh12" in names:
        cols.append("oh12")
    if "z" in parse_inputs(cfg.inputs):
        cols.append("z")
    if "image" in parse_inputs(cfg.inputs):
        if FEATURES_COLUMN in names and cfg.model == "nf":
            cols.append(FEATURES_COLUMN)
        else:
            cols.append(CUTOUT_COLUMN)
    return [c for c in dict.fromkeys(cols) if c in names]


def _fits_in_object_store(data_uri: str, cols, image_shape, max_rows=None,
                          fraction: float = 0.3) -> bool:
    """True if the training columns take less than ``fraction`` of the object store."""
    import ray

    from ..shards import read_manifest

    rows = read_manifest(data_uri)["num_rows"]
    if max_rows:
        rows = min(rows, int(max_rows * 1.25) + 64)
    per_row = 8 * len(cols) + (4 * int(np.prod(image_shape)) if image_shape else 0)
    store = ray.cluster_resources().get("object_store_memory", 0)
    return rows * per_row < fraction * store


def default_cpus_per_worker(cfg: TrainConfig, capacity=None) -> float:
    """CPUs per worker: ``cfg.cpus_per_worker`` if set, else sized from what the cluster can
    grow to (``raygal.runtime.cluster_capacity``: an autoscaling cluster's node types, not the
    nodes running at submit time), leaving room for Ray Data's read tasks (on 2 CPUs, 2
    workers at 1 CPU each starve the readers and hang silently). A GPU worker gets what fits
    on every GPU node type (its CPUs less one for data, shared by the workers its GPUs hold),
    between 1 and 4."""
    if cfg.cpus_per_worker:
        return float(cfg.cpus_per_worker)
    from ..runtime import cluster_capacity

    cap = capacity or cluster_capacity()
    if cfg.gpus_per_worker:
        fits = [math.floor((t.resources.get("CPU", 0) - 1)
                           / max(1.0, math.floor(t.resources["GPU"] / cfg.gpus_per_worker)))
                for t in cap.node_types if t.max_count != 0 and t.resources.get("GPU", 0) > 0]
        return float(max(1, min(4, *fits)) if fits else 1)
    node = cap.largest_node("CPU")
    per = min((cap.total("CPU") - 1.0) / cfg.workers, node - 1.0 if node >= 2 else node)
    return max(0.25, min(float(math.floor(per)) if per >= 1 else per, 8.0))


def check_worker_resources(cfg: TrainConfig, capacity=None) -> None:
    """An error naming what is missing, before anything starts, when no node of the cluster
    can hold one training worker (GPUs asked on a CPU-only cluster, more CPUs than a node
    has), instead of Ray Train waiting for it silently."""
    from ..runtime import require_resources

    require_resources({"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker},
                      "a training worker",
                      hint="lower --gpus-per-worker / --cpus-per-worker (0 GPUs: train on "
                           "CPUs), or add such a node type to the cluster",
                      capacity=capacity)


class EpochProgress:
    """Prints each epoch's losses and rate on the driver as the epoch's checkpoint lands in the
    run folder (local or S3), so the command's output and ``ray job logs`` show training
    progress: Ray Train's controller and workers print only to their own processes' logs.

    A thread polls the run folder every ``interval`` seconds. Each checkpoint's history holds
    every epoch so far, so epochs whose folders were already rotated away (fast epochs,
    ``num_to_keep``) are printed too; epochs already there when it starts (a resumed run) are
    not repeated. Used as a context manager around ``trainer.fit()``."""

    def __init__(self, run_uri: str, epochs: int, label: str, interval: float = 1.0):
        import threading

        self.run_uri, self.epochs, self.label, self.interval = run_uri, epochs, label, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="epoch-progress")
        self._printed = max((int(n.split("-")[1]) for n in self._epoch_dirs()), default=-1)

    def _epoch_dirs(self) -> list[str]:
        try:
            folders = storage.listdir(self.run_uri, folders=True)
        except storage.StorageError:    # a passing storage error: try again at the next poll
            return []
        names = (u.rsplit("/", 1)[-1] for u in folders)
        return [n for n in names if n.startswith("epoch-")]

    def poll(self) -> None:
        from .loop import META_FILE

        newer = [n for n in self._epoch_dirs() if int(n.split("-")[1]) > self._printed]
        if not newer:
            return
        try:
            history = storage.read_json(storage.join(self.run_uri, newer[-1], META_FILE))[
                "history"]
        except Exception:               # still being written: read it at the next poll
            return
        for m in history:
            if int(m["epoch"]) <= self._printed:
                continue
            self._printed = int(m["epoch"])
            print(f"[{self.label}] epoch {int(m['epoch']) + 1}/{self.epochs}: "
                  f"train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f} "
                  f"(best {m['best_val_loss']:.4f}), {m['samples_per_s']:.0f} samples/s, "
                  f"{m['epoch_time_s']:.1f} s, lr {m.get('lr', float('nan')):.2g}, "
                  f"{m.get('workers', '?')} worker(s)", flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()                     # the last epochs, written just before the end
        return False


def make_trainer(cfg: TrainConfig, run_name: str = RUN_NAME, stats: NormStats | None = None,
                 callbacks=None, fail_at_epoch: int | None = None):
    """The TorchTrainer for ``cfg`` (data split, statistics, prepared inputs, scaling and run
    config). ``fail_at_epoch`` kills a worker once in that epoch (fault-tolerance tests)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg.check_trainable()
    data_uri = cfg.data
    uses_image = "image" in parse_inputs(cfg.inputs)
    if cfg.model == "nf" and uses_image:
        from .features_job import ensure_features

        data_uri = ensure_features(cfg.vae, cfg.data)
    schema = read_schema(data_uri)
    if stats is None:
        stats = stats_for(cfg.data, label=f"[{cfg.model}]")
    image_shape = cutout_shape_of(schema)
    if uses_image:
        # What the cutouts are (unit, bands, pixel scale) goes into the model, so that
        # inference can refuse cutouts of another kind.
        props = cutout_properties(read_schema(cfg.data))
        if props:
            cfg = dataclasses.replace(cfg, model_config={**cfg.model_config, "cutout": props})
    if uses_image and image_shape is None and FEATURES_COLUMN not in \
            schema.names:
        raise ValueError(f"{cfg.data}: no cutout column; train a photometry-only model "
                         f"(--inputs phot) on this catalog")
    missing = [t for t in cfg.targets if t not in schema.names]
    if missing and cfg.model != "vae":
        raise ValueError(f"{cfg.data}: dataset has no column for target(s) "
                         f"{', '.join(missing)}")
    cols = training_columns(cfg, schema.names)
    needs_image = uses_image and CUTOUT_COLUMN in cols
    # The model's own inputs adapter prepares every row in Ray Data (colours, asinh stretch,
    # standardised targets), so CPU preprocessing overlaps training on the workers.
    prepare = build_model(cfg.to_dict(), stats, image_shape).model_inputs
    ds = read_dataset(data_uri, columns=cols).map_batches(_UsableRows(prepare),
                                                          batch_format="numpy")
    parts = split(ds, cfg.split)
    train_ds, val_ds = parts["train"], parts["val"]
    if cfg.max_rows:
        train_ds = train_ds.limit(cfg.max_rows)
        val_ds = val_ds.limit(max(cfg.max_rows // 4, 64))
    train_ds = train_ds.map_batches(prepare, batch_format="numpy")
    val_ds = val_ds.map_batches(prepare, batch_format="numpy")
    if _fits_in_object_store(data_uri, cols, image_shape if CUTOUT_COLUMN in cols else None,
                             cfg.max_rows):
        # Small enough to keep in Ray's object store: read, filter and prepare once, instead
        # of listing, reading and preparing every shard again at every epoch.
        print(f"[{cfg.model}] preparing the training and validation rows once (Ray Data, "
              f"kept in the object store)...", flush=True)
        train_ds, val_ds = train_ds.materialize(), val_ds.materialize()
    if cfg.augment and needs_image:
        # After materialising, so each epoch draws new rotations and flips.
        train_ds = augment(train_ds, column="image")

    cpus = default_cpus_per_worker(cfg)
    resources = {"CPU": cpus}
    if cfg.gpus_per_worker:
        resources["GPU"] = cfg.gpus_per_worker
    # Elastic when min_workers is set: Ray Train restarts the group on what is left after a
    # node is lost (resuming from the last checkpoint) and grows it back as nodes return.
    elastic = cfg.min_workers is not None and cfg.min_workers < cfg.workers
    scaling = ray.train.ScalingConfig(num_workers=(cfg.min_workers, cfg.workers) if elastic
                                      else cfg.workers,
                                      use_gpu=bool(cfg.gpus_per_worker),
                                      resources_per_worker=resources)
    fs, path = storage.arrow_fs(storage.join(cfg.out, "ray"))
    run_config = ray.train.RunConfig(
        name=run_name, storage_path=path, storage_filesystem=fs,
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        callbacks=list(callbacks or []))
    print(f"[{cfg.model}] starting {cfg.workers} Ray Train worker(s) at {cpus:g} CPU"
          + (f" and {cfg.gpus_per_worker:g} GPU" if cfg.gpus_per_worker else "")
          + " each; a line per epoch follows as its checkpoint lands", flush=True)
    loop_config = {"cfg": cfg.to_dict(), "stats": stats.to_dict(),
                   "image_shape": list(image_shape) if image_shape else None,
                   "torch_threads": max(1, int(cpus)), "run_id": uuid.uuid4().hex[:8],
                   "fail_at_epoch": fail_at_epoch}
    return TorchTrainer(train_loop_per_worker, train_loop_config=loop_config,
                        scaling_config=scaling, run_config=run_config,
                        datasets={"train": train_ds, "val": val_ds})


def export_checkpoint(checkpoint, out_uri: str, heldout_data: str | None = None) -> dict:
    """Write the best-validation weights of a training checkpoint as a loadable model at
    ``out_uri`` (a Posterior, or a VAE); returns the checkpoint's meta (config, history), with
    ``calibration`` (the held-out check) when it ran.

    With ``heldout_data`` (the dataset the model trained on, as its inputs adapter reads it),
    two things are decided on validation galaxies of that dataset before the model is saved:
    a model that integrates an ODE (the CFM) and was given no solver in its ``model_config``
    gets the cheapest solver that agrees with the paper's RK4-100 (``choose_default_solver``,
    saved as ``solver_choice``); then every posterior's coverage and PIT are checked
    (``check_calibration``, printed and saved as ``calibration`` in ``model.json``)."""
    with checkpoint.as_directory() as d:
        state, meta = load_checkpoint_state(d)
    stats = NormStats.from_dict(meta["stats"])
    model = build_model(meta["config"], stats, meta.get("image_shape"))
    model.load_state_dict(state.get("best_model") or state["model"])
    if heldout_data is not None:
        fractions = meta["config"].get("split", DEFAULT_FRACTIONS)
        if "solver" not in meta["config"].get("model_config", {}):
            choose_default_solver(model, heldout_data, fractions)
        check = check_calibration(model, heldout_data, fractions)
        if check is not None:
            meta["calibration"] = check
    # Published in one step: a kill mid-export leaves the previous model whole.
    with storage.staged_folder(out_uri) as staging:
        model.save(staging)
    return meta


#: Validation galaxies and draws per galaxy on which a CFM's default solver is chosen.
SOLVER_ROWS = 128
SOLVER_SAMPLES = 100


def validation_rows(data_uri: str, fractions=DEFAULT_FRACTIONS, n: int = SOLVER_ROWS):
    """Up to ``n`` rows of the validation split of ``data_uri`` (an Arrow table), read shard
    by shard from the first, stopping as soon as there are enough: a small sample for the
    driver, never the dataset."""
    tables, have = [], 0
    for uri in shard_uris(data_uri):
        fs, path = storage.arrow_fs(uri)
        t = pq.read_table(path, filesystem=fs)
        keep = split_of(t.column(ID_COLUMN).to_numpy(), fractions) == "val"
        t = t.filter(pa.array(keep))
        tables.append(t.slice(0, n - have))
        have += tables[-1].num_rows
        if have >= n:
            break
    return pa.concat_tables(tables) if tables else None


def choose_default_solver(model, data_uri: str, fractions=DEFAULT_FRACTIONS,
                          rows: int = SOLVER_ROWS, samples: int = SOLVER_SAMPLES) -> dict | None:
    """Set ``model``'s ODE solver to the cheapest one whose posteriors agree with RK4-100 on
    up to ``rows`` validation galaxies of ``data_uri`` (``raygal.models.cfm.choose_solver``),
    print the choice, and return it; None (the model unchanged) for models without an ODE
    or when fewer than 16 validation galaxies are usable."""
    from ..models.cfm import choose_solver
    from ..models.posterior import Posterior

    if not isinstance(model, Posterior) or model.solver is None:
        return None

    table = validation_rows(data_uri, fractions, rows)
    if table is None or table.num_rows < 16:
        log.warning("solver kept at %s: only %d validation galaxies to choose on",
                    model.solver, 0 if table is None else table.num_rows)
        return None
    model.eval()
    print(f"[{model.kind}] choosing the ODE solver on {table.num_rows} validation galaxies "
          f"({samples} draws each, against RK4-100)...", flush=True)
    try:
        choice = choose_solver(model, table, n=samples, store=True)
    except ValueError as exc:       # no usable validation rows
        log.warning("solver kept at %s: %s", model.solver, exc)
        return None
    m = choice["measurements"][choice["solver"]]
    ref = choice["measurements"][choice["reference"]]
    print(f"[{model.kind}] ODE solver {choice['solver']}: agrees with {choice['reference']} on "
          f"{choice['rows']} validation galaxies (68/95 % coverage within "
          f"{m['dcov68_points']:.1f}/{m['dcov95_points']:.1f} points, mean |d log q| "
          f"{m['dlogq_mad']:.3f} nats) at {m['evaluations']} instead of "
          f"{ref['evaluations']} evaluations per draw", flush=True)
    return choice


#: Held-out galaxies and draws per galaxy of the calibration check at the end of training.
CHECK_ROWS = 512
CHECK_SAMPLES = 100


def check_calibration(model, data_uri: str, fractions=DEFAULT_FRACTIONS,
                      rows: int = CHECK_ROWS, samples: int = CHECK_SAMPLES) -> dict | None:
    """Coverage and PIT of ``model`` on up to ``rows`` validation galaxies of ``data_uri``
    (``raygal.evaluate.calibration.heldout_check``): printed, stored in the model's config
    (``calibration``, saved in model.json) and returned; None for models that are not
    posteriors (the VAE) or when fewer than 16 validation galaxies are usable."""
    from ..evaluate.calibration import format_check, heldout_check
    from ..models.posterior import Posterior

    if not isinstance(model, Posterior):
        return None
    table = validation_rows(data_uri, fractions, rows)
    if table is None or table.num_rows < 16:
        log.warning("no calibration check: only %d validation galaxies",
                    0 if table is None else table.num_rows)
        return None
    model.eval()
    print(f"[{model.kind}] checking calibration on {table.num_rows} validation galaxies "
          f"({samples} draws each)...", flush=True)
    check = heldout_check(model, table, n=samples)
    if check["rows"] < 16:
        log.warning("no calibration check: only %d usable validation galaxies", check["rows"])
        return None
    model.config["calibration"] = check
    print(format_check(check, model.kind), flush=True)
    return check


# -- which dataset a run trains on: checked before resuming ------------------------------------
RUN_RECORD = "_run.json"


def claim_run(cfg: TrainConfig, run_name: str = RUN_NAME) -> dict:
    """Record the dataset (URI and content fingerprint) and model kind of the run in
    ``cfg.out`` or, when ``cfg.out`` already holds checkpoints of a run, refuse to resume it on
    other data: they were made from the other content."""
    record = {"data": cfg.data, "data_fingerprint": fingerprint(cfg.data),
              "model": cfg.model, "inputs": cfg.inputs}
    uri = storage.join(cfg.out, RUN_RECORD)
    old = storage.read_json(uri) if storage.exists(uri) else None
    resuming = storage.exists(storage.join(cfg.out, "ray", run_name))
    diff = {k: (old.get(k), v) for k, v in record.items() if old.get(k) != v} if old else {}
    if old is None or (diff and not resuming):
        storage.write_json(uri, record)
        return record
    if diff:
        what = ("the dataset changed since the run started" if set(diff) == {"data_fingerprint"}
                else "it is another run")
        raise ValueError(f"{cfg.out} holds a training run on {old.get('data')} (content "
                         f"{old.get('data_fingerprint')}, model {old.get('model')}); resuming it "
                         f"with {cfg.data} (content {record['data_fingerprint']}) would "
                         f"continue from checkpoints of other data ({what}: {diff}). Use a new "
                         f"--out, or delete {cfg.out} to start over")
    return record


def sized(cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    """``cfg`` with the settings its data calls for (``raygal.train.sizing``), printed, and the
    record of the choice."""
    from ..shards import read_manifest
    from .sizing import describe, size_for_data, training_rows

    cfg, record = size_for_data(cfg, training_rows(cfg, read_manifest(cfg.data)["num_rows"]))
    print(describe(record, cfg.model), flush=True)
    return cfg, record


def trained_on(cfg: TrainConfig) -> str:
    """The dataset whose rows the model's inputs adapter reads: the image NF's is the stored
    VAE features of ``cfg.data`` (made before training), every other model's ``cfg.data``."""
    if cfg.model == "nf" and "image" in parse_inputs(cfg.inputs):
        from .features_job import features_uri

        return features_uri(cfg.vae, cfg.data)
    return cfg.data


def fit(cfg: TrainConfig, run_name: str = RUN_NAME, fail_at_epoch: int | None = None) -> dict:
    """Train ``cfg`` on the running Ray cluster; export the best model to ``<out>/model``.
    ``fail_at_epoch`` kills a worker once in that epoch (fault-tolerance tests)."""
    check_worker_resources(cfg)
    record = claim_run(cfg, run_name)
    cfg, sizing = sized(cfg)
    trainer = make_trainer(cfg, run_name, fail_at_epoch=fail_at_epoch)
    with EpochProgress(storage.join(cfg.out, "ray", run_name), cfg.epochs, cfg.model):
        result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError("training produced no checkpoint")
    model_uri = storage.join(cfg.out, "model")
    meta = export_checkpoint(result.checkpoint, model_uri, heldout_data=trained_on(cfg))
    summary = {"model_uri": model_uri, "history": meta["history"],
               "best_val_loss": min(h["val_loss"] for h in meta["history"]),
               "epochs_run": len(meta["history"]), "config": cfg.to_dict(),
               "data_fingerprint": record["data_fingerprint"], "sizing": sizing,
               "calibration": meta.get("calibration")}
    storage.write_json(storage.join(cfg.out, "history.json"), summary)
    return summary
