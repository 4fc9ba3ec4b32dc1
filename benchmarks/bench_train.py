"""Training throughput: a plain PyTorch loop against Ray Train on 1 and on 2 workers.

Writes a mock survey (64x64 gri cutouts) to a local scratch folder, computes its normalisation
statistics once, then trains the same model on the same rows three ways:

  (a) plain    - one process, no Ray workers and no Ray Data: the real training loop
                 (``raygal.train.loop.train_loop_per_worker``) run by Ray Train's local mode
                 (``ScalingConfig(num_workers=0)``: the function runs in this process) on
                 shards read here with pyarrow: each Parquet shard into numpy, the same row
                 filters (usable rows, the split by objid hash), shuffled within the shard,
                 cut into batches of ``--batch-size``;
  (b) ray x1   - ``raygal.train.driver.fit`` with 1 worker;
  (c) ray x2   - the same with 2 workers (DDP, gloo).

Throughput is rows / training time of an epoch (``samples_per_s`` of the training loop's
per-epoch history; in (a) the pyarrow shard times the same span: from the loop asking for
its first batch to its last optimiser step, validation and checkpointing excluded), averaged
over the epochs after the first (warm-up). The Ray Train figures therefore include each epoch's Ray Data
start-up (the loop's clock starts before ``iter_batches``), as a user's epoch does. Prints the Ray Train overhead against the plain loop
(1 - b/a, goal < 15 %) and the 2-worker speed-up (c/b, goal >= 1.6x on 2 cores).

Threads (fairness): torch runs 1 intra-op thread per training process in every case -
(a) ``torch.set_num_threads(1)`` here; (b) 1 worker at ``cpus_per_worker=1``; (c) 2 workers at
``cpus_per_worker=0.5`` (on 2 CPUs, 2 workers x 1 CPU starve Ray Data's read tasks and hang),
for which the training loop sets ``max(1, int(cpus))`` = 1 thread. So (a) and (b) train on one
core each and (c) on two. Note that in (b) Ray Data's read/filter tasks run in other
processes, on the otherwise idle second core, while (a) reads on its only thread.

A breakdown (skip with ``--no-breakdown``) times the parts separately in this process: the
training loop on one batch already in memory, repeated (compute only, 1 thread), the plain
data path alone, and the Ray Data path of the trainer alone (the training dataset
``raygal.train.driver.make_trainer`` builds, iterated in batches of the loop's size; its second
pass, or its only pass with ``--quick``), with the wait for its first batch, to tell a
data-path bottleneck from compute.

    python benchmarks/bench_train.py                  # cfm image+phot, 4096 rows, 3 epochs
    python benchmarks/bench_train.py --quick          # gaussian phot, 256 rows, 2 epochs:
                                                      # ~1 min on an idle machine (two fits)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GOAL_OVERHEAD = 0.15
GOAL_SPEEDUP = 1.6


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def cfm_importable() -> str | None:
    """None when raygal.models.cfm imports, else why not (it may be mid-edit)."""
    import importlib

    try:
        importlib.import_module("raygal.models.cfm")
    except Exception as e:  # ImportError, SyntaxError, anything half-written
        return f"{type(e).__name__}: {e}"
    return None


def make_data(uri: str, rows: int, rows_per_shard: int, image_size: int) -> None:
    from raygal.sim import simulate

    simulate(rows, uri, image_size=image_size, seed=0, rows_per_shard=rows_per_shard)


def write_stats(uri: str) -> None:
    """Normalisation statistics of the dataset, computed once here with pyarrow (the same
    sums as ``raygal.pipelines.compute_stats``, without starting a Ray Data job) and saved beside
    it, where ``stats_for`` - and so every case below - finds them."""
    import pyarrow.parquet as pq

    from raygal import storage
    from raygal.pipelines import save_stats
    from raygal.shards import shard_uris
    from raygal.inputs import StatsAccumulator

    acc = StatsAccumulator()
    for s in shard_uris(uri):
        fs, path = storage.arrow_fs(s)
        acc.update(pq.read_table(path, filesystem=fs))
    save_stats(acc.finalize(), uri)


def steady_rate(rates: list[float]) -> float:
    """Mean samples/s over the epochs after the first (the warm-up); the only one if one."""
    steady = rates[1:] or rates
    return float(np.mean(steady))


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


class _Threads:
    """torch.set_num_threads(n) inside the block, restored after."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)


# ----------------------------------------------------------------------------------------------
# (a) the plain loop
# ----------------------------------------------------------------------------------------------

def plain_batches(uri: str, cfg, columns: list[str], needs_image: bool,
                  rng: np.random.Generator, split_name: str = "train",
                  batch_size: int | None = None):
    """Numpy batches of a split's usable rows, shard by shard: what a hand-written loop would
    do (the same filters as the trainer's Ray Data pipeline)."""
    import pyarrow.parquet as pq

    from raygal import storage
    from raygal.pipelines import split_of
    from raygal.shards import shard_uris
    from raygal.inputs import STATUS_OK, as_numpy_batch, row_status
    from raygal.schema import ID_COLUMN

    bs = batch_size or cfg.batch_size
    carry: dict | None = None
    for s in shard_uris(uri):
        fs, path = storage.arrow_fs(s)
        b = as_numpy_batch(pq.read_table(path, filesystem=fs, columns=columns))
        keep = (row_status(b, needs_image) == STATUS_OK) & \
            (split_of(b[ID_COLUMN], cfg.split) == split_name)
        perm = rng.permutation(np.flatnonzero(keep))          # shuffle within the shard
        b = {k: v[perm] for k, v in b.items()}
        if carry is not None:
            b = {k: np.concatenate([carry[k], b[k]]) for k in b}
        n = len(b[ID_COLUMN])
        full = n - n % bs
        for i in range(0, full, bs):
            yield {k: v[i:i + bs] for k, v in b.items()}
        carry = {k: v[full:] for k, v in b.items()}
    if carry is not None and len(carry[ID_COLUMN]):
        yield carry


class TimedShard:
    """What ``ray.train.get_dataset_shard`` hands the training loop, without Ray Data.

    ``make_batches(batch_size, seed)`` yields raw numpy batches (dataset columns). A loop that
    iterates ``iter_batches`` gets them as they are (it prepares and augments them itself); a
    loop that iterates ``iter_torch_batches`` gets them as the trainer's pipeline hands them
    over: through ``prepare`` (the model's inputs adapter and augmentation), as tensors.
    Each pass records (rows, seconds from the first request to the loop asking past the last
    batch): the span the loop's own ``epoch_time_s`` covers."""

    def __init__(self, make_batches, prepare=None):
        self.make_batches, self.prepare = make_batches, prepare
        self.passes: list[tuple[int, float]] = []

    def _timed(self, batch_size, seed, convert):
        t0 = time.perf_counter()
        n = 0
        for b in self.make_batches(batch_size, seed):
            n += len(b["objid"])
            yield convert(b)
        self.passes.append((n, time.perf_counter() - t0))

    def iter_batches(self, batch_size, batch_format="numpy", local_shuffle_seed=None, **_):
        return self._timed(batch_size, local_shuffle_seed, lambda b: b)

    def iter_torch_batches(self, batch_size, device=None, local_shuffle_seed=None, **_):
        import torch

        def convert(b):
            return {k: torch.as_tensor(v, device=device) for k, v in self.prepare(b).items()}

        return self._timed(batch_size, local_shuffle_seed, convert)


def pipeline_preparation(cfg, train: bool):
    """Raw batch -> the model's inputs as the trainer's Ray Data pipeline prepares them (for a
    loop that takes prepared batches): the model's inputs adapter, then, for training, a
    random symmetry of each image. Built on first use."""
    from raygal.pipelines import random_dihedral, stats_for
    from raygal.shards import read_schema
    from raygal.schema import cutout_shape_of
    from raygal.train.loop import build_model

    state: dict = {}
    augment = train and cfg.augment and cfg.inputs != "phot"

    def prepare(batch):
        if "inputs" not in state:
            model = build_model(cfg.to_dict(), stats_for(cfg.data),
                                cutout_shape_of(read_schema(cfg.data)))
            state["inputs"] = model.model_inputs
            state["rng"] = np.random.default_rng(cfg.seed)
        out = dict(state["inputs"](batch))
        if augment and "image" in out:
            out["image"] = np.ascontiguousarray(random_dihedral(out["image"], state["rng"]))
        return out

    return prepare


def run_local(cfg, train: TimedShard, val: TimedShard, threads: int = 1) -> dict:
    """Run ``raygal.train.loop.train_loop_per_worker`` for ``cfg`` in this process (Ray
    Train's local mode: no workers, no Ray Data) on the given shards; per-epoch history of
    the training shard's passes (rows, epoch_time_s, samples_per_s)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from raygal.pipelines import stats_for
    from raygal.shards import read_schema
    from raygal.schema import cutout_shape_of
    from raygal.train.loop import train_loop_per_worker

    image_shape = cutout_shape_of(read_schema(cfg.data))
    # The loop's configuration, as raygal.train.driver.make_trainer builds it.
    loop_config = {"cfg": cfg.to_dict(), "stats": stats_for(cfg.data).to_dict(),
                   "image_shape": list(image_shape) if image_shape else None,
                   "torch_threads": threads, "run_id": "bench"}
    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=loop_config,
                           scaling_config=ray.train.ScalingConfig(num_workers=0),
                           run_config=ray.train.RunConfig(name="plain",
                                                          storage_path=cfg.out),
                           datasets={"train": train, "val": val})
    t0 = time.perf_counter()
    with _Threads(threads):
        trainer.fit()
    history = [{"epoch": e, "train_rows": n, "epoch_time_s": dt,
                "samples_per_s": n / max(dt, 1e-9)} for e, (n, dt) in enumerate(train.passes)]
    return {"history": history, "wall_s": time.perf_counter() - t0}


def _split_columns(uri: str, cfg) -> tuple[list[str], bool]:
    """The trainer's columns for ``cfg`` and whether it needs images."""
    from raygal.shards import read_schema
    from raygal.schema import CUTOUT_COLUMN
    from raygal.train.driver import training_columns

    columns = training_columns(cfg, read_schema(uri).names)
    return columns, cfg.inputs != "phot" and CUTOUT_COLUMN in columns


def run_plain(uri: str, cfg, threads: int = 1) -> dict:
    """(a): the real training loop on pyarrow-read shards, in this process."""
    columns, needs_image = _split_columns(uri, cfg)

    def shard(split_name):
        return TimedShard(lambda bs, seed: plain_batches(
            uri, cfg, columns, needs_image, np.random.default_rng(seed), split_name, bs),
            pipeline_preparation(cfg, train=split_name == "train"))

    return run_local(cfg, shard("train"), shard("val"), threads)


# ----------------------------------------------------------------------------------------------
# (b), (c) Ray Train
# ----------------------------------------------------------------------------------------------

def run_ray(cfg) -> dict:
    from raygal.train.driver import fit

    t0 = time.perf_counter()
    summary = fit(cfg)
    return {"history": summary["history"], "wall_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# breakdown: compute alone, the plain data path alone, the Ray Data path alone
# ----------------------------------------------------------------------------------------------

def breakdown(uri: str, cfg, steps: int = 6, threads: int = 1, passes: int = 2) -> dict:
    import dataclasses

    from raygal.pipelines import random_dihedral
    from raygal.schema import CUTOUT_COLUMN
    from raygal.train import driver

    columns, needs_image = _split_columns(uri, cfg)
    augment = cfg.augment and cfg.inputs == "image+phot"
    bs = cfg.batch_size
    out: dict = {}

    # 1. plain data path: read + filter + shuffle + batch + augment, no model
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    n = 0
    first = None
    for b in plain_batches(uri, cfg, columns, needs_image, rng):
        if augment and CUTOUT_COLUMN in b:
            b[CUTOUT_COLUMN] = random_dihedral(b[CUTOUT_COLUMN], rng)
        first = first or b
        n += len(b["objid"])
    out["plain_data_rows_per_s"] = n / (time.perf_counter() - t0)

    # 2. compute only: the training loop on one in-memory batch, ``steps`` times per epoch
    #    (the second epoch's rate: the first warms up); prepared once where the loop takes
    #    prepared batches
    prepare = pipeline_preparation(cfg, train=False)
    prepared: dict = {}

    def prepare_once(batch):
        if "batch" not in prepared:
            prepared["batch"] = prepare(batch)
        return prepared["batch"]

    def repeat(batch_size, seed):
        for _ in range(steps):
            yield dict(first)

    cfg2 = dataclasses.replace(cfg, epochs=2, patience=3, out=cfg.out + "-compute")
    r = run_local(cfg2, TimedShard(repeat, prepare_once),
                  TimedShard(lambda bs, seed: iter([dict(first)]), prepare_once), threads)
    out["compute_rows_per_s"] = r["history"][-1]["samples_per_s"]
    out["compute_step_s"] = len(first["objid"]) / out["compute_rows_per_s"]

    # 3. the trainer's own Ray Data pipeline (what make_trainer hands the workers), iterated
    #    here as numpy batches of the loop's batch size
    train_ds = driver.make_trainer(cfg).datasets["train"]
    rates, first_batch = [], []
    for epoch in range(passes):  # the first pass warms Ray Data's workers up
        t0 = time.perf_counter()
        n, t_first = 0, None
        for b in train_ds.iter_batches(batch_size=bs, batch_format="numpy",
                                       local_shuffle_buffer_size=min(4 * bs, 4096),
                                       local_shuffle_seed=cfg.seed * 1000 + epoch):
            if t_first is None:
                t_first = time.perf_counter() - t0
            n += len(b["objid"])
        rates.append(n / (time.perf_counter() - t0))
        first_batch.append(t_first or 0.0)
    out["ray_data_rows_per_s"] = rates[-1]
    out["ray_data_first_batch_s"] = first_batch[-1]
    return out


# ----------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cfm", choices=("cfm", "gaussian"),
                    help="cfm (default; falls back to gaussian if raygal.models.cfm does not "
                         "import) or gaussian")
    ap.add_argument("--inputs", default="image+phot", choices=("image+phot", "phot"))
    ap.add_argument("--rows", type=int, default=4096,
                    help="galaxies in the mock survey (the 'train' split is ~80%% of them)")
    ap.add_argument("--rows-per-shard", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of (a) and cpus_per_worker of (b); (c) runs 2 workers "
                         "at 0.5 CPU, 1 thread each")
    ap.add_argument("--workdir", default=None,
                    help="scratch folder (a fresh subfolder is made and removed in it); "
                         "default: the system's temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the data and runs")
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    ap.add_argument("--quick", action="store_true",
                    help="tiny: 256 rows, 2 epochs, gaussian on photometry")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.rows_per_shard, args.epochs = 256, 128, 2
        args.model, args.inputs = "gaussian", "phot"

    fallback = None
    if args.model == "cfm":
        why = cfm_importable()
        if why:
            fallback = f"cfm not importable ({why}); fell back to gaussian {args.inputs}"
            print(f"NOTE: {fallback}")
            args.model = "gaussian"

    import ray

    from raygal.runtime import init_ray
    from raygal.train import TrainConfig

    load_start = _load()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-train-", dir=args.workdir)
    started_ray = False
    try:
        if not ray.is_initialized():
            init_ray("local")
            started_ray = True
        uri = os.path.join(work, "mock")
        t0 = time.perf_counter()
        make_data(uri, args.rows, args.rows_per_shard, args.image_size)
        t_data = time.perf_counter() - t0
        write_stats(uri)  # once, beside the data: every case uses the same statistics

        def config(name, workers, cpus):
            return TrainConfig(model=args.model, data=uri, out=os.path.join(work, name),
                               inputs=args.inputs, epochs=args.epochs,
                               batch_size=args.batch_size, patience=args.epochs + 1,
                               workers=workers, cpus_per_worker=cpus, max_failures=0)

        cfg_a = config("plain", 1, float(args.threads))
        print(f"training {args.model} ({args.inputs}) on {args.rows} mock galaxies "
              f"({args.image_size}x{args.image_size}), {args.epochs} epochs, batch "
              f"{args.batch_size}, in {work}", flush=True)
        res_a = run_plain(uri, cfg_a, threads=args.threads)
        print(f"  (a) plain loop done in {res_a['wall_s']:.1f} s", flush=True)
        res_b = run_ray(config("ray1", 1, float(args.threads)))
        print(f"  (b) Ray Train x1 done in {res_b['wall_s']:.1f} s", flush=True)
        res_c = run_ray(config("ray2", 2, 0.5))
        print(f"  (c) Ray Train x2 done in {res_c['wall_s']:.1f} s", flush=True)
        parts = breakdown(uri, cfg_a, threads=args.threads, passes=1 if args.quick else 2
                          ) if args.breakdown else {}
    finally:
        if started_ray:
            ray.shutdown()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def rates(r):
        return [float(h["samples_per_s"]) for h in r["history"]]

    ra, rb, rc = (steady_rate(rates(r)) for r in (res_a, res_b, res_c))
    res = {"model": args.model, "inputs": args.inputs, "model_fallback": fallback,
           "rows": args.rows, "train_rows": int(res_a["history"][-1]["train_rows"]),
           "ray_train_rows": int(res_b["history"][-1]["train_rows"]),
           "epochs": args.epochs, "batch_size": args.batch_size,
           "image_size": args.image_size, "torch_threads_per_process": args.threads,
           "data_write_s": t_data,
           "plain_samples_per_s": ra, "ray1_samples_per_s": rb, "ray2_samples_per_s": rc,
           "ray_overhead": 1.0 - rb / ra, "speedup_2_workers": rc / rb,
           "plain_epoch_rates": rates(res_a), "ray1_epoch_rates": rates(res_b),
           "ray2_epoch_rates": rates(res_c),
           "plain_wall_s": res_a["wall_s"], "ray1_wall_s": res_b["wall_s"],
           "ray2_wall_s": res_c["wall_s"],
           "load_avg_start": load_start, "load_avg_end": _load(), **parts}

    def fmt(xs):
        return ", ".join(f"{x:.0f}" for x in xs)

    print(f"samples/s (mean of epochs 2..{args.epochs}; per epoch in brackets; "
          f"{args.threads} torch thread(s) per process):")
    print(f"  (a) plain PyTorch loop : {ra:8.1f}  [{fmt(res['plain_epoch_rates'])}]  "
          f"wall {res['plain_wall_s']:.1f} s")
    print(f"  (b) Ray Train, 1 worker: {rb:8.1f}  [{fmt(res['ray1_epoch_rates'])}]  "
          f"wall {res['ray1_wall_s']:.1f} s")
    print(f"  (c) Ray Train, 2 workers: {rc:7.1f}  [{fmt(res['ray2_epoch_rates'])}]  "
          f"wall {res['ray2_wall_s']:.1f} s")
    print(f"  Ray Train overhead 1 - b/a : {100 * res['ray_overhead']:6.1f} %  "
          f"(goal < {100 * GOAL_OVERHEAD:.0f} %)")
    print(f"  2-worker speed-up c/b      : {res['speedup_2_workers']:6.2f} x  "
          f"(goal >= {GOAL_SPEEDUP}x)")
    if parts:
        print(f"breakdown (this process, {args.threads} torch thread(s)):")
        print(f"  compute only (batch in memory): {parts['compute_rows_per_s']:9.1f} rows/s "
              f"({1e3 * parts['compute_step_s']:.0f} ms/step)")
        print(f"  plain data path alone         : {parts['plain_data_rows_per_s']:9.1f} rows/s")
        print(f"  Ray Data path alone           : {parts['ray_data_rows_per_s']:9.1f} rows/s "
              f"(first batch after {parts['ray_data_first_batch_s']:.2f} s)")
    print(f"load average (1, 5, 15 min): start {load_start}, end {res['load_avg_end']} "
          f"on {os.cpu_count()} CPUs")
    if fallback:
        print(f"NOTE: {fallback}")
    return res


if __name__ == "__main__":
    main()
