"""The survey-scale run: how rate and memory behave from 10^4 to 10^6 galaxies, and what a
10^9-galaxy LSST-like survey would cost, computed from the measured rates.

For each survey size N (``--sizes``):
- simulate: N photometry-only mock galaxies (no cutouts) written to local disk (one process,
  1 thread): rows/s and the peak RSS of that process;
- infer phot: a small photometry-only NF (4 coupling layers, width 64; untrained: speed does
  not depend on the weights) through ``raygal.infer.infer`` with ``--samples`` posterior
  samples per galaxy on an actor pool of ``--actors`` actors of ``--cpus-per-actor`` CPU:
  posteriors/s (steady, after the first batch, and wall) and the peak RSS of the driver and of
  the largest Ray worker.
For each image survey size (``--image-sizes``), the same two stages with 64x64 gri cutouts,
stored in a local S3 server (moto, started here on 127.0.0.1), and a small image+photometry
CFM (width 64, encoder width 8, 32 image features, solver ``--solver``).
The model-only rate of each model (``Posterior.summarize`` in one process, torch on 1 thread,
on ``--model-only-rows`` rows, in batches of ``--batch-size`` as the actors use) gives the share
of the model's speed the pipeline keeps: (steady rate / CPUs of the pool) / model-only rate.

Then training on data larger than the object store: a small image+photometry CFM trained for
``--train-epochs`` epochs on the smallest image survey (on the S3 server) by a local Ray whose
object store is ``--train-object-store-mib`` (default 128 MiB, under the data's size): the
cutouts stream from S3 every epoch; samples/s per epoch, MiB spilled and peak RSS.

Every (stage, N) runs in a fresh child process (this file with ``--child``), so its peak RSS
is its own: the driver's is ``getrusage(RUSAGE_SELF).ru_maxrss``; the workers' is the largest
VmHWM (kernel high-water mark) of the ``ray::`` processes descending from that child (its own
local Ray), sampled every 0.5 s. CPU seconds are counted too (the process's getrusage; for
infer, every process of its Ray from /proc): on a machine shared with other jobs wall-clock
rates stretch, rows per CPU-second do not (``--rate-basis cpu`` extrapolates from them).

Finally the 10^9-galaxy extrapolation from the measured per-core rates: core-hours, GPU-hours
(under the assumed ``--gpu-speedup``), hours on ``--nodes`` x ``--cores-per-node`` cores, the
storage of inputs and catalogs from the measured bytes per row, and the limiting stage.

    python benchmarks/bench_scale.py                                  # 1e4..1e6; 1e4, 1e5 images
    python benchmarks/bench_scale.py --sizes 10000 --image-sizes 2000 # a few minutes
    python benchmarks/bench_scale.py --quick                          # what the tests run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stream import start_moto  # noqa: E402
import children  # noqa: E402
from procfs import process_table, with_descendants  # noqa: E402

MIB = 1024 * 1024
S3_ENV = ("RAYGAL_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
          "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
#: Single-threaded numerics in the simulate and model-only children (per-core rates).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
STAGES = {"simulate-phot": "simulate phot (disk)", "infer-phot": "infer phot NF",
          "simulate-image": "simulate image (S3)", "infer-image": "infer image CFM"}


# ----------------------------------------------------------------------------------------------
# Memory: the driver's own peak, and the Ray workers' peaks
# ----------------------------------------------------------------------------------------------

def self_peak_mib() -> float:
    """Peak RSS of this process (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CLK_TCK = os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    """CPU seconds (user + system) this process has used."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _descendants(root: int) -> dict[int, int]:
    """{pid: CPU clock ticks used (utime + stime)} of every process descending from ``root``."""
    procs = process_table()
    return {pid: procs[pid].cpu_ticks for pid in with_descendants({root}, procs) - {root}}


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


class WorkerPeaks(threading.Thread):
    """Samples every ``every_s`` the peak RSS (VmHWM, the kernel's high-water mark) of every
    ``ray::`` process descending from this process: the workers and actors of the Ray this
    process started (its raylet is our child, the workers the raylet's), never another Ray
    on the machine. Also the CPU time of every descendant (the whole local Ray) and of the
    inference actors, since the first sample: CPU seconds do not stretch when other jobs
    load the machine, wall seconds do."""

    def __init__(self, every_s: float = 0.5):
        super().__init__(daemon=True, name="bench-scale-rss")
        self.every_s, self.root = every_s, os.getpid()
        self.peak_kib: dict[int, int] = {}
        self.titles: dict[int, set] = {}
        self.sum_peak_kib = 0
        self.ticks0 = _descendants(self.root)          # CPU already used at the start
        self.self_cpu0 = self_cpu_s()
        self.ticks: dict[int, int] = dict(self.ticks0)
        self._halt = threading.Event()

    def sample(self) -> None:
        total = 0
        for pid, cpu in _descendants(self.root).items():
            self.ticks[pid] = cpu
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().split(b"\0")[0].decode(errors="replace").strip()
            except OSError:
                continue
            if not title.startswith("ray::"):
                continue
            st = _status_kib(pid)
            if not st:
                continue
            total += st.get("VmRSS", 0)
            self.peak_kib[pid] = max(self.peak_kib.get(pid, 0),
                                     st.get("VmHWM", st.get("VmRSS", 0)))
            if title != "ray::IDLE":
                self.titles.setdefault(pid, set()).add(title)
        self.sum_peak_kib = max(self.sum_peak_kib, total)

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            self.sample()

    def stop(self) -> dict:
        self._halt.set()
        self.join(timeout=10)
        self.sample()
        actors = [p for p, t in self.titles.items() if any("PartWriter" in x for x in t)]
        used = {p: (c - self.ticks0.get(p, 0)) / CLK_TCK for p, c in self.ticks.items()}
        cpu = {"actor_cpu_s": sum(used[p] for p in actors) if actors else None,
               "tree_cpu_s": sum(used.values()) + self_cpu_s() - self.self_cpu0}
        if not self.peak_kib:
            return {"worker_peak_mib": None, "worker_peak_title": None,
                    "actor_peak_mib": None, "ray_workers_seen": 0, **cpu}
        pid = max(self.peak_kib, key=self.peak_kib.get)
        return {"worker_peak_mib": self.peak_kib[pid] / 1024,
                "worker_peak_title": sorted(self.titles.get(pid, {"ray::IDLE"}))[-1],
                "actor_peak_mib": (max(self.peak_kib[p] for p in actors) / 1024
                                   if actors else None),
                "ray_workers_seen": len(self.peak_kib),
                "ray_rss_sum_peak_mib": self.sum_peak_kib / 1024, **cpu}


# ----------------------------------------------------------------------------------------------
# The child stages (one fresh process each)
# ----------------------------------------------------------------------------------------------

def _bytes_of(uris: list[str]) -> int:
    from raygal import storage

    return int(sum(storage.file_size(u) or 0 for u in uris))


def child_simulate(spec: dict) -> dict:
    import torch

    from raygal.shards import shard_uris
    from raygal.sim import simulate

    torch.set_num_threads(1)
    images = spec["image_size"] is not None
    t0, c0 = time.perf_counter(), self_cpu_s()
    m = simulate(spec["n"], spec["uri"], image_size=spec["image_size"] or 64, seed=spec["seed"],
                 rows_per_shard=spec["rows_per_shard"], with_images=images)
    wall, cpu, peak = time.perf_counter() - t0, self_cpu_s() - c0, self_peak_mib()
    rows = int(m["num_rows"])
    return {"rows": rows, "wall_s": wall, "rows_per_s": rows / wall,
            "wall_rows_per_s": rows / wall, "cpu_s": cpu, "rows_per_cpu_s": rows / cpu,
            "input_bytes_per_row": _bytes_of(shard_uris(spec["uri"])) / max(rows, 1),
            "driver_peak_mib": peak}


def child_models(spec: dict) -> dict:
    """Build and save the two untrained models from the statistics of the data (stats_for, on
    a local Ray), then, with Ray shut down, measure each model's model-only rate here."""
    import ray
    import torch

    from raygal.models.cfm import FlowMatchingPosterior
    from raygal.models.nf import FlowPosterior
    from raygal.pipelines import stats_for
    from raygal.runtime import init_ray
    from raygal.schema import CFM_TARGETS, NF_CORE_TARGETS, NF_LINE_TARGETS

    torch.manual_seed(0)
    init_ray("local", num_cpus=2)
    out = {"params": {}, "model_only": {}}
    try:
        for kind, m in spec["models"].items():
            stats = stats_for(m["data"])
            if kind == "phot":
                post = FlowPosterior(NF_CORE_TARGETS + ("oh12",) + NF_LINE_TARGETS, "phot",
                                     stats, {"coupling_layers": 4, "hidden": 64,
                                             "representation": 64})
            else:
                s = m["image_size"]
                post = FlowMatchingPosterior(CFM_TARGETS, "image+phot", stats,
                                             {"image_shape": [3, s, s], "hidden": 64,
                                              "encoder_width": 8, "image_features": 32,
                                              "solver": m["solver"]})
            post.save(m["model"])
            out["params"][kind] = sum(p.numel() for p in post.parameters())
    finally:
        ray.shutdown()
    for kind, m in spec["models"].items():
        out["model_only"][kind] = model_only_rate(m["model"], m["solver"], m["data"],
                                                  spec["rows"], m["samples"],
                                                  spec["batch_size"])
    return out


def model_only_rate(model: str, solver: str | None, data: str, n: int, samples: int,
                    batch_size: int) -> dict:
    """Posteriors/s of ``Posterior.summarize`` alone, in this process, torch on 1 thread, in
    batches of the pipeline's batch size (as ``bench_infer.model_only_rate``)."""
    import torch

    from raygal.infer import UNUSED_COLUMNS, load_model
    from raygal.shards import read_table

    torch.set_num_threads(1)
    post = load_model(model, solver)
    rows = read_table(data, max_rows=n)
    rows = rows.drop_columns([c for c in UNUSED_COLUMNS if c in rows.column_names])
    post.summarize(rows.slice(0, 2), samples, seed=0)          # warm-up
    t0, c0 = time.perf_counter(), self_cpu_s()
    for i in range(0, rows.num_rows, batch_size):
        post.summarize(rows.slice(i, batch_size), samples, seed=i)
    wall, cpu = time.perf_counter() - t0, self_cpu_s() - c0
    return {"rows": rows.num_rows, "wall_s": wall, "rows_per_s": rows.num_rows / wall,
            "cpu_s": cpu, "rows_per_cpu_s": rows.num_rows / cpu}


def child_infer(spec: dict) -> dict:
    import pyarrow.parquet as pq

    import ray

    from raygal import storage
    from raygal.catalog import catalog_parts
    from raygal.infer import infer
    from raygal.runtime import init_ray
    from raygal.shards import read_manifest

    init_ray("local", num_cpus=spec["ray_cpus"])
    peaks = WorkerPeaks()
    peaks.start()
    try:
        t0 = time.perf_counter()
        s = infer(spec["model"], spec["data"], spec["out"], samples=spec["samples"],
                  solver=spec["solver"], min_actors=spec["actors"], max_actors=spec["actors"],
                  cpus_per_actor=spec["cpus_per_actor"], batch_size=spec["batch_size"],
                  block_rows=spec["block_rows"], progress_every_s=1e9)
        wall = time.perf_counter() - t0
    finally:
        driver_peak = self_peak_mib()           # before the catalog check below adds to it
        workers = peaks.stop()
        ray.shutdown()
    # The catalog counted from the parts' own Parquet footers, not from infer's summary.
    parts = catalog_parts(spec["out"])
    catalog_rows, catalog_bytes = 0, 0
    for p in parts:
        fs, path = storage.arrow_fs(p["uri"])
        catalog_rows += pq.read_metadata(path, filesystem=fs).num_rows
        catalog_bytes += storage.file_size(p["uri"]) or 0
    input_rows = int(read_manifest(spec["data"])["num_rows"])
    steady = s["steady_posteriors_per_s"] or s["posteriors_per_s"]
    return {"rows": input_rows, "input_rows": input_rows, "catalog_rows": catalog_rows,
            "complete": bool(s["complete"]), "summary_output_rows": s["output_rows"],
            "parts": len(parts), "catalog_bytes_per_row": catalog_bytes / max(catalog_rows, 1),
            "rows_per_s": steady, "wall_rows_per_s": input_rows / wall,
            "blocks_rows_per_s": s["posteriors_per_s"], "wall_s": wall,
            "blocks_s": s["elapsed_s"], "driver_peak_mib": driver_peak,
            "rows_per_cpu_s": input_rows / workers["tree_cpu_s"],
            "rows_per_actor_cpu_s": (input_rows / workers["actor_cpu_s"]
                                     if workers["actor_cpu_s"] else None), **workers}


def _spilled_mib() -> float | None:
    """MiB the local Ray spilled from its object store to disk so far (its memory summary)."""
    import re

    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Spilled (\d+) MiB", text)
    return float(m.group(1)) if m else 0.0


def child_train(spec: dict) -> dict:
    """Train a small image+photometry CFM on a dataset larger than this Ray's object store
    (``object_store_mib``): Ray Data streams the cutouts from S3 every epoch instead of
    keeping them (raygal.train.driver keeps only what fits in 30 % of the store)."""
    import ray

    from raygal.runtime import init_ray
    from raygal.shards import read_manifest, shard_uris
    from raygal.train import TrainConfig
    from raygal.train.driver import fit

    init_ray("local", num_cpus=spec["ray_cpus"],
             object_store_memory=spec["object_store_mib"] * MIB)
    store_mib = ray.cluster_resources()["object_store_memory"] / MIB
    data_mib = _bytes_of(shard_uris(spec["data"])) / MIB
    peaks = WorkerPeaks()
    peaks.start()
    try:
        t0 = time.perf_counter()
        s = fit(TrainConfig(model="cfm", data=spec["data"], out=spec["out"],
                            inputs="image+phot", epochs=spec["epochs"], workers=1,
                            batch_size=64, lr=1e-3,
                            model_config={"hidden": 64, "encoder_width": 8,
                                          "image_features": 32, "solver": "midpoint-5"}))
        wall = time.perf_counter() - t0
        spilled = _spilled_mib()
    finally:
        driver_peak = self_peak_mib()
        workers = peaks.stop()
        ray.shutdown()
    h = s["history"]
    return {"rows": int(read_manifest(spec["data"])["num_rows"]), "data_mib": data_mib,
            "object_store_mib": store_mib, "epochs": len(h), "train_rows": h[-1]["train_rows"],
            "samples_per_s": [e["samples_per_s"] for e in h],
            "val_loss": [e["val_loss"] for e in h], "wall_s": wall, "spilled_mib": spilled,
            "driver_peak_mib": driver_peak, **workers}


CHILDREN = {"simulate": child_simulate, "models": child_models, "infer": child_infer,
            "train": child_train}


def child_main(kind: str, spec_json: str) -> None:
    children.child_main(CHILDREN, kind, spec_json)


def run_child(kind: str, spec: dict, env: dict | None = None) -> dict:
    return children.run_child(__file__, kind, spec, {**os.environ, **(env or {})},
                              name="bench_scale")[0]


# ----------------------------------------------------------------------------------------------
# The 10^9-galaxy extrapolation
# ----------------------------------------------------------------------------------------------

def extrapolate(res: dict, args) -> dict:
    """Per stage, from the rate per core measured at the largest N: core-hours, GPU-hours
    (inference only; one GPU = ``gpu_speedup`` cores, an assumption) and hours on the cluster;
    storage from the measured bytes per row."""
    n = args.survey
    cores = args.nodes * args.cores_per_node
    out = {"survey_rows": n, "nodes": args.nodes, "cores_per_node": args.cores_per_node,
           "cores": cores, "gpu_speedup_assumed": args.gpu_speedup,
           "rate_basis": args.rate_basis, "stages": {}}
    for stage in STAGES:
        runs = [r for r in res["runs"] if r["stage"] == stage]
        if not runs:
            continue
        r = max(runs, key=lambda x: x["n"])
        if args.rate_basis == "cpu":    # rows per CPU-second (infer: of driver + whole Ray)
            per_core = r["rows_per_cpu_s"]
        else:                           # rows per wall second per CPU given to the stage
            per_core = r["rows_per_s"] / (r.get("cpus") or 1)
        core_h = n / per_core / 3600
        e = {"from_n": r["n"], "rows_per_s_per_core": per_core, "core_hours": core_h,
             "cluster_hours_cpu": core_h / cores}
        if stage.startswith("infer"):
            e["gpu_hours"] = core_h / args.gpu_speedup
            e["cluster_hours_gpu_1_per_node"] = e["gpu_hours"] / args.nodes
        out["stages"][stage] = e
    infer_stages = {k: v for k, v in out["stages"].items() if k.startswith("infer")}
    if infer_stages:
        out["limiting_inference_stage"] = max(infer_stages,
                                              key=lambda k: infer_stages[k]["core_hours"])
    if out["stages"]:
        out["limiting_stage"] = max(out["stages"], key=lambda k: out["stages"][k]["core_hours"])
    storage_ = {}
    for key, stage, field in (("input_phot", "simulate-phot", "input_bytes_per_row"),
                              ("input_with_cutouts", "simulate-image", "input_bytes_per_row"),
                              ("catalog_phot_model", "infer-phot", "catalog_bytes_per_row"),
                              ("catalog_image_model", "infer-image", "catalog_bytes_per_row")):
        runs = [r for r in res["runs"] if r["stage"] == stage and r.get(field)]
        if runs:
            r = max(runs, key=lambda x: x["n"])
            storage_[key] = {"bytes_per_row": r[field], "from_n": r["n"],
                             "survey_tb": r[field] * n / 1e12}
    out["storage"] = storage_
    # Aggregate read bandwidth the cluster needs to keep its cores busy with cutout inference.
    if "infer-image" in out["stages"] and "input_with_cutouts" in storage_:
        rate = out["stages"]["infer-image"]["rows_per_s_per_core"] * cores
        out["image_read_gb_per_s"] = rate * storage_["input_with_cutouts"]["bytes_per_row"] / 1e9
    return out


def print_extrapolation(x: dict) -> None:
    n, cores = x["survey_rows"], x["cores"]
    basis = ("rows per CPU-second: simulate's process; infer's driver + every Ray process"
             if x["rate_basis"] == "cpu" else "steady rows/s / CPUs of the stage")
    print(f"\nextrapolation to a {n:.0e}-galaxy survey, from the measured per-core rates "
          f"(at the largest N run of each stage; {basis}):")
    print(f"  cluster: {x['nodes']} nodes x {x['cores_per_node']} cores = {cores} cores; "
          f"ASSUMED: one GPU does the work of {x['gpu_speedup_assumed']:g} cores "
          f"(--gpu-speedup; not measured)")
    print(f"  core-hours = N / (rows/s/core) / 3600;  cluster hours = core-hours / {cores};  "
          f"GPU-hours = core-hours / {x['gpu_speedup_assumed']:g}")
    print(f"  {'stage':<22} {'rows/s/core':>12} {'core-hours':>12} {'hours on cluster':>17} "
          f"{'GPU-hours':>11} {'h, 1 GPU/node':>14}")
    for stage, e in x["stages"].items():
        gpu = f"{e['gpu_hours']:>11.4g} {e['cluster_hours_gpu_1_per_node']:>14.4g}" \
            if "gpu_hours" in e else f"{'(CPU only)':>11} {'':>14}"
        print(f"  {STAGES[stage]:<22} {e['rows_per_s_per_core']:>12.4g} "
              f"{e['core_hours']:>12.4g} {e['cluster_hours_cpu']:>17.4g} {gpu}")
    for key, s in x["storage"].items():
        print(f"  storage {key:<22}: {s['bytes_per_row']:>9.1f} B/row x {n:.0e} = "
              f"{s['survey_tb']:.3g} TB   (measured at N={s['from_n']})")
    if "image_read_gb_per_s" in x:
        print(f"  reading cutouts for the image model on all {cores} cores needs "
              f"{x['image_read_gb_per_s']:.3g} GB/s from the object store")
    inf = {k: e for k, e in x["stages"].items() if k.startswith("infer")}
    if len(inf) > 1:
        ch = sum(e["core_hours"] for e in inf.values())
        print(f"  both models on every galaxy: {ch:.4g} core-hours = {ch / cores:.4g} h on the "
              f"cluster, or {ch / x['gpu_speedup_assumed']:.4g} GPU-hours")
    if "limiting_inference_stage" in x:
        print(f"  limiting stage of a survey run (its data exist, only inference runs): "
              f"{STAGES[x['limiting_inference_stage']]} (most core-hours)")
    if x.get("limiting_stage") and x["limiting_stage"] != x.get("limiting_inference_stage"):
        print(f"  (making a mock survey of that size would be limited by "
              f"{STAGES[x['limiting_stage']]})")


# ----------------------------------------------------------------------------------------------
# The driver of the benchmark
# ----------------------------------------------------------------------------------------------

def _fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def print_table(res: dict) -> None:
    print("\nstage | N | rows/s | wall rows/s | wall s | rows/CPU-s | driver peak RSS MiB | "
          "largest worker peak RSS MiB | pipeline/model-only (CPU basis)")
    print("--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---:")
    for r in res["runs"]:
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.0%}"
        if r.get("ratio_cpu") is not None:
            ratio += f" ({r['ratio_cpu']:.0%})"
        print(f"{STAGES[r['stage']]} | {r['n']} | {_fmt(r['rows_per_s'])} | "
              f"{_fmt(r.get('wall_rows_per_s'))} | {_fmt(r['wall_s'], '.1f')} | "
              f"{_fmt(r.get('rows_per_cpu_s'))} | "
              f"{_fmt(r['driver_peak_mib'])} | {_fmt(r.get('worker_peak_mib'))} | {ratio}")
    mo = res["model_only"]
    for k, v in mo.items():
        print(f"model-only {k}: {v['rows_per_s']:.0f} posteriors/s on 1 core, "
              f"{v['rows_per_cpu_s']:.0f} per CPU-second ({v['rows']} rows)")
    print("rows/s of infer: steady posteriors/s of the whole pool (after the first batch); "
          "wall rows/s: N / the whole infer() call; rows/CPU-s: N / CPU seconds of the driver "
          "and every process of its Ray (simulate: of its process);\n"
          "pipeline/model-only = (steady rate / CPUs of the pool) / model-only rate "
          "(CPU basis: N / CPU-s of the actors, over model-only rows per CPU-s); "
          "goal >= 95 % at 1e5 rows")
    for stage, g in res["driver_rss_growth"].items():
        print(f"driver peak RSS growth, {STAGES[stage]}: {g['from_mib']:.0f} MiB at "
              f"N={g['from_n']} -> {g['to_mib']:.0f} MiB at N={g['to_n']}: "
              f"{g['percent']:+.1f} % (goal: within 20 %)")
    loads = [x for r in res["runs"] for x in r.get("loadavg_1min", [])]
    if loads:
        print(f"machine 1-min load average during the runs: {min(loads):.1f} .. "
              f"{max(loads):.1f} on {os.cpu_count()} CPUs (rates are noisy above that)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    ap.add_argument("--image-sizes", type=int, nargs="*", default=[10**4, 10**5])
    ap.add_argument("--samples", type=int, default=100, help="posterior samples, phot model")
    ap.add_argument("--image-samples", type=int, default=32,
                    help="posterior samples, image model")
    ap.add_argument("--solver", default="midpoint-5", help="ODE solver of the image CFM")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--ray-cpus", type=int, default=None,
                    help="CPUs of each child's local Ray (default actors x cpus-per-actor)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--block-rows", type=int, default=None, help="default: infer's")
    ap.add_argument("--rows-per-shard", type=int, default=4096)
    ap.add_argument("--image-rows-per-shard", type=int, default=1024)
    ap.add_argument("--model-only-rows", type=int, default=1000)
    ap.add_argument("--train-epochs", type=int, default=2,
                    help="epochs of the streaming-training stage (0: skip it); it trains on "
                         "the smallest image survey")
    ap.add_argument("--train-object-store-mib", type=int, default=128,
                    help="object store of that stage's Ray (smaller than the data)")
    ap.add_argument("--survey", type=float, default=1e9, help="galaxies to extrapolate to")
    ap.add_argument("--gpu-speedup", type=float, default=20.0,
                    help="ASSUMED work of one GPU in cores, for GPU-hours (not measured)")
    ap.add_argument("--rate-basis", choices=("wall", "cpu"), default="wall",
                    help="extrapolate from wall-clock rates per CPU (default) or from rows per "
                         "CPU-second (steadier on a machine shared with other jobs)")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--cores-per-node", type=int, default=8)
    ap.add_argument("--workdir", default=None, help="default: a temporary folder, removed")
    ap.add_argument("--out", default=None, help="write the results here as JSON")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "SPEC_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return {}
    if args.quick:
        args.sizes, args.image_sizes = [2000, 4000], [1000]
        args.samples, args.image_samples, args.model_only_rows = 8, 4, 200
        args.train_epochs, args.train_object_store_mib = 1, 80
        args.rows_per_shard, args.image_rows_per_shard = 1000, 500
    args.sizes, args.image_sizes = sorted(set(args.sizes)), sorted(set(args.image_sizes))
    ray_cpus = args.ray_cpus or max(1, int(round(args.actors * args.cpus_per_actor)))
    pool_cpus = args.actors * args.cpus_per_actor

    work = args.workdir or tempfile.mkdtemp(prefix="raygal-bench-scale-")
    os.makedirs(work, exist_ok=True)
    saved_env = {k: os.environ.get(k) for k in S3_ENV}
    moto = None
    res = {"config": {k: v for k, v in vars(args).items() if k != "child"}, "runs": [],
           "model_only": {}}
    t_start = time.perf_counter()
    try:
        if args.image_sizes:
            import boto3

            spill = os.path.join(work, "moto-tmp")      # moto spills large objects here
            os.makedirs(spill, exist_ok=True)
            old_tmp = os.environ.get("TMPDIR")
            os.environ["TMPDIR"] = spill
            try:
                moto, endpoint = start_moto()
            finally:
                if old_tmp is None:
                    os.environ.pop("TMPDIR")
                else:
                    os.environ["TMPDIR"] = old_tmp
            os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                              AWS_DEFAULT_REGION="us-east-1", RAYGAL_S3_ENDPOINT_URL=endpoint,
                              AWS_ENDPOINT_URL=endpoint)
            bucket = f"bench-scale-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            s3 = f"s3://{bucket}"

        def log(msg):
            print(f"[bench_scale {time.perf_counter() - t_start:7.1f}s] {msg}",
                  file=sys.stderr, flush=True)

        phot_data = {n: os.path.join(work, f"phot-{n}") for n in args.sizes}
        image_data = {n: f"{s3}/image-{n}" for n in args.image_sizes}
        for n, uri in phot_data.items():
            log(f"simulate {n} photometry-only galaxies -> {uri}")
            r = run_child("simulate", {"n": n, "uri": uri, "image_size": None, "seed": 11,
                                       "rows_per_shard": args.rows_per_shard}, ONE_THREAD)
            res["runs"].append({"stage": "simulate-phot", "n": n, "cpus": 1, **r})
        for n, uri in image_data.items():
            log(f"simulate {n} galaxies with {args.image_size}x{args.image_size} cutouts -> "
                f"{uri}")
            r = run_child("simulate", {"n": n, "uri": uri, "image_size": args.image_size,
                                       "seed": 12, "rows_per_shard": args.image_rows_per_shard},
                          ONE_THREAD)
            res["runs"].append({"stage": "simulate-image", "n": n, "cpus": 1, **r})

        models = {}
        if args.sizes:
            models["phot"] = {"model": os.path.join(work, "model-phot-nf"), "solver": None,
                              "data": phot_data[args.sizes[0]], "samples": args.samples}
        if args.image_sizes:
            models["image"] = {"model": os.path.join(work, "model-image-cfm"),
                               "solver": args.solver, "data": image_data[args.image_sizes[0]],
                               "samples": args.image_samples, "image_size": args.image_size}
        log(f"build the untrained models from the data's statistics; model-only rates on "
            f"{args.model_only_rows} rows")
        r = run_child("models", {"models": models, "rows": args.model_only_rows,
                                 "batch_size": args.batch_size}, ONE_THREAD)
        res["model_params"], res["model_only"] = r["params"], r["model_only"]
        plan = []
        if args.sizes:
            plan.append(("phot", models["phot"]["model"], None, args.samples, phot_data))
        if args.image_sizes:
            plan.append(("image", models["image"]["model"], args.solver, args.image_samples,
                         image_data))
        for kind, model, solver, samples, data in plan:
            for n, uri in data.items():
                out = (os.path.join(work, f"catalog-phot-{n}") if kind == "phot"
                       else f"{s3}/catalog-image-{n}")
                log(f"infer {kind} model on {n} galaxies ({samples} samples) -> {out}")
                r = run_child("infer", {
                    "model": model, "data": uri, "out": out, "samples": samples,
                    "solver": solver, "actors": args.actors,
                    "cpus_per_actor": args.cpus_per_actor, "ray_cpus": ray_cpus,
                    "batch_size": args.batch_size, "block_rows": args.block_rows})
                mo = res["model_only"][kind]["rows_per_s"]
                r["ratio"] = r["rows_per_s"] / pool_cpus / mo
                if r.get("rows_per_actor_cpu_s"):
                    r["ratio_cpu"] = (r["rows_per_actor_cpu_s"]
                                      / res["model_only"][kind]["rows_per_cpu_s"])
                res["runs"].append({"stage": f"infer-{kind}", "n": n, "cpus": pool_cpus, **r})
        if args.image_sizes and args.train_epochs:
            n = args.image_sizes[0]
            log(f"train a small image CFM for {args.train_epochs} epoch(s) on the {n} galaxies "
                f"with cutouts, with a {args.train_object_store_mib} MiB object store")
            res["train_streaming"] = run_child("train", {
                "data": image_data[n], "out": os.path.join(work, "train-image"),
                "epochs": args.train_epochs, "ray_cpus": ray_cpus,
                "object_store_mib": args.train_object_store_mib})
    finally:
        if moto is not None:
            moto.terminate()
            try:
                moto.wait(timeout=10)
            except subprocess.TimeoutExpired:
                moto.kill()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    res["driver_rss_growth"] = {}
    for stage in STAGES:
        runs = sorted((r for r in res["runs"] if r["stage"] == stage), key=lambda r: r["n"])
        if len(runs) >= 2:
            a, b = runs[0], runs[-1]
            res["driver_rss_growth"][stage] = {
                "from_n": a["n"], "to_n": b["n"], "from_mib": a["driver_peak_mib"],
                "to_mib": b["driver_peak_mib"],
                "percent": 100 * (b["driver_peak_mib"] / a["driver_peak_mib"] - 1)}
    res["extrapolation"] = extrapolate(res, args)
    res["total_s"] = time.perf_counter() - t_start
    print(f"survey-scale run: phot NF {args.samples} samples, image CFM {args.image_samples} "
          f"samples ({args.solver}), pool of {args.actors} actor(s) x {args.cpus_per_actor:g} "
          f"CPU, batch {args.batch_size}")
    print_table(res)
    if res.get("train_streaming"):
        t = res["train_streaming"]
        print(f"\ntraining on data larger than the object store: {t['rows']} galaxies with "
              f"cutouts, {t['data_mib']:.0f} MiB on S3, object store {t['object_store_mib']:.0f} "
              f"MiB ({t['data_mib'] / t['object_store_mib']:.1f}x): {t['epochs']} epoch(s) "
              f"on {t['train_rows']} rows at "
              f"{', '.join(f'{r:.0f}' for r in t['samples_per_s'])} samples/s, spilled "
              f"{t['spilled_mib']:.0f} MiB, driver peak {t['driver_peak_mib']:.0f} MiB, "
              f"largest worker {_fmt(t.get('worker_peak_mib'))} MiB "
              f"({t.get('worker_peak_title')})")
    print_extrapolation(res["extrapolation"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    main()
