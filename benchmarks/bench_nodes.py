"""Batch inference on a Ray cluster of one node against two nodes, both started on this machine
with ``ray.cluster_utils.Cluster``: what spreading the same CPUs over two raylets costs.

First (in a child process) ``--n`` photometry-only mock galaxies (no cutouts) are simulated to
a local folder of several shards, and a small photometry-only NF (4 coupling layers, width 64,
representation 64; untrained: speed does not depend on the weights) is built from the data's
statistics. Then the same ``raygal.infer.infer`` call (``--actors`` actors of 1 CPU,
``--samples`` posterior samples per galaxy, ``--block-rows`` rows per unit of work) runs on:

- one node: a Cluster whose head has 2 CPUs; both actors on it;
- two nodes: a Cluster whose head has 1 CPU (the driver joins it while it is alone, as
  tests/test_multinode.py does) and a second node with 1 CPU; one actor on each.

Each configuration runs in its own fresh child process (this file with ``--child``), which
starts its Cluster (200 MiB of object store per node, no dashboard), runs infer once and shuts
the Cluster and Ray down, so no Ray state passes from one to the other (and ``RAY_ADDRESS`` is
not inherited: the children never join another Ray on the machine). Ray Data is told to start the
whole actor pool before it gives out the first block (``wait_for_min_actors_s``), so that the
split of rows over the nodes reflects scheduling, not which actor happened to start first.

For each: the wall time of the infer call (actor start-up and model loading included), the
steady posteriors/s (infer's ``steady_posteriors_per_s``: after the first batch is done) and
the overall one (``posteriors_per_s``: rows / infer's run time), the time to start the Cluster
(reported apart), and the rows written on each node (from the node id every catalog part
records in its Parquet footer). Every input row must appear exactly once in the catalog (rows
and unique ``objid`` equal to the input's, and the same ids): the run fails loudly otherwise.
The ratio two-node / one-node is printed for each figure.

On a 2-core machine both configurations have the same 2 CPUs, so the ratio is not a speed-up:
it is the cost of spreading the work over nodes (scheduling across raylets, objects moved
between the nodes' object stores, one more raylet and its workers to start and run on the same
cores). A ratio near 1 says the pipeline adds little for being spread; on a real cluster each
node brings its own cores, and the rate grows with the nodes (less this cost).

    python benchmarks/bench_nodes.py                   # 20,000 galaxies, 100 samples
    python benchmarks/bench_nodes.py --n 10000         # shorter
    python benchmarks/bench_nodes.py --quick           # ~1 min; what the tests run
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import children  # noqa: E402

MIB = 1024 * 1024
#: Single-threaded numerics in the children (the actors set torch to 1 thread themselves).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
#: The configurations: (key, label, CPUs of the head, CPUs of each further node).
CONFIGS = (("one-node", "1 node  (head 2 CPUs)", 2, []),
           ("two-node", "2 nodes (1 + 1 CPU)", 1, [1]))


# ----------------------------------------------------------------------------------------------
# The children (one fresh process each)
# ----------------------------------------------------------------------------------------------

def child_prepare(spec: dict) -> dict:
    """Simulate the survey (no cutouts) and build and save the untrained photometry NF from its
    statistics (``stats_for``, on a local Ray, shut down before returning)."""
    import ray
    import torch

    from raygal.models.nf import FlowPosterior
    from raygal.pipelines import stats_for
    from raygal.runtime import configure_ray_data
    from raygal.schema import NF_CORE_TARGETS, NF_LINE_TARGETS
    from raygal.sim import simulate

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    m = simulate(spec["n"], spec["data"], seed=spec["seed"],
                 rows_per_shard=spec["rows_per_shard"], with_images=False)
    sim_s = time.perf_counter() - t0
    torch.manual_seed(0)
    # A fresh local Ray (never one already running here), without a dashboard: nothing here
    # needs one, and another Ray on this machine may hold its port.
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=200 * MIB, log_to_driver=False, configure_logging=False)
    configure_ray_data(progress=False)
    try:
        stats = stats_for(spec["data"])
    finally:
        ray.shutdown()
    post = FlowPosterior(NF_CORE_TARGETS + ("oh12",) + NF_LINE_TARGETS, "phot", stats,
                         {"coupling_layers": 4, "hidden": 64, "representation": 64})
    post.save(spec["model"])
    return {"rows": int(m["num_rows"]), "shards": len(m["shards"]), "simulate_s": sim_s,
            "model_params": sum(p.numel() for p in post.parameters())}


def _catalog_check(out: str, data: str) -> dict:
    """Rows of the catalog per node (from each part's footer) and the check that every input
    row is in it exactly once; raises if not."""
    import numpy as np
    import pyarrow.parquet as pq

    from raygal import storage
    from raygal.catalog import catalog_parts
    from raygal.infer import PART_META_KEY
    from raygal.schema import ID_COLUMN
    from raygal.shards import read_table

    rows_per_node: dict[str, int] = {}
    workers: dict[str, set] = {}
    ids = []
    parts = catalog_parts(out)
    for p in parts:
        fs, path = storage.arrow_fs(p["uri"])
        t = pq.read_table(path, columns=[ID_COLUMN], filesystem=fs)
        meta = json.loads(t.schema.metadata[PART_META_KEY])
        rows_per_node[meta["node"]] = rows_per_node.get(meta["node"], 0) + t.num_rows
        workers.setdefault(meta["node"], set()).add(meta.get("worker"))
        ids.append(t.column(ID_COLUMN).to_numpy())
    got = np.sort(np.concatenate(ids)) if ids else np.array([], dtype=np.int64)
    want = np.sort(read_table(data, columns=[ID_COLUMN]).column(ID_COLUMN).to_numpy())
    unique = int(len(np.unique(got)))
    if len(got) != len(want) or unique != len(want) or not np.array_equal(got, want):
        raise RuntimeError(f"{out}: the catalog does not hold every input row exactly once: "
                           f"{len(got)} rows, {unique} unique objid, for {len(want)} input rows "
                           f"({len(np.setdiff1d(want, got))} input ids missing)")
    return {"input_rows": int(len(want)), "output_rows": int(len(got)),
            "unique_objids": unique, "parts": len(parts), "rows_per_node_id": rows_per_node,
            "actors_per_node_id": {n: len(w) for n, w in workers.items()}}


def _free_port() -> int:
    """A free TCP port on 127.0.0.1 (for the head's dashboard process, which runs even without
    the dashboard: Ray's default 8265 may be another Ray's on this machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_run(spec: dict) -> dict:
    """Start a Cluster (head of ``head_cpus``; the driver joins it while it is alone; then one
    node per entry of ``node_cpus``), run infer once, shut it all down, check the catalog."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.data import DataContext

    from raygal.infer import infer
    from raygal.runtime import configure_ray_data

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")      # as init_ray does
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": spec["head_cpus"],
                                      "object_store_memory": 200 * MIB,
                                      "include_dashboard": False,
                                      "dashboard_port": _free_port()})
    try:
        # Joined while the head is the only node: the driver is attached to the head's raylet.
        ray.init(address=cluster.address, log_to_driver=False)
        for cpus in spec["node_cpus"]:
            cluster.add_node(num_cpus=cpus, object_store_memory=200 * MIB)
        cluster.wait_for_nodes()
        configure_ray_data(progress=False)
        # The whole pool starts before the first block is given out (see the docstring).
        DataContext.get_current().wait_for_min_actors_s = spec["wait_for_actors_s"]
        nodes = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
        head = cluster.head_node.node_id
        start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        s = infer(spec["model"], spec["data"], spec["out"], samples=spec["samples"],
                  actors=spec["actors"], cpus_per_actor=1.0, batch_size=spec["batch_size"],
                  block_rows=spec["block_rows"], progress_every_s=1e9)
        wall = time.perf_counter() - t1
    finally:
        ray.shutdown()
        cluster.shutdown()
    check = _catalog_check(spec["out"], spec["data"])
    if not s["complete"] or s["output_rows"] != check["input_rows"]:
        raise RuntimeError(f"infer's summary disagrees with the catalog: {s}")
    others = sorted(n for n in nodes if n != head)
    label = {head: "head", **{n: f"node{i + 2}" for i, n in enumerate(others)}}
    per_node = {label.get(n, n): r for n, r in check.pop("rows_per_node_id").items()}
    actors = {label.get(n, n): a for n, a in check.pop("actors_per_node_id").items()}
    return {**check, "complete": bool(s["complete"]), "nodes": len(nodes),
            "cpus_per_node": {label[n]: c for n, c in nodes.items()},
            "rows_per_node": per_node, "actors_writing_per_node": actors,
            "cluster_start_s": start_s, "wall_s": wall,
            "infer_elapsed_s": s["elapsed_s"],
            "steady_posteriors_per_s": s["steady_posteriors_per_s"],
            "posteriors_per_s": s["posteriors_per_s"],
            "wall_posteriors_per_s": check["input_rows"] / wall, "blocks": s["shards"]}


CHILDREN = {"prepare": child_prepare, "run": child_run}


def child_main(kind: str, spec_json: str) -> None:
    children.child_main(CHILDREN, kind, spec_json)


def _child_env() -> dict:
    """This process's environment without ``RAY_ADDRESS`` (a child must never join a Ray that
    is running here, e.g. a test module's), with single-threaded numerics and without Ray
    Data's usage collection (at the end of each run it queries a Prometheus server on
    localhost:9090, absent here, and logs the failure)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **ONE_THREAD, "RAY_DATA_USAGE_DISABLED": "1"}


#: Lines of a child's stderr that are expected, not worth reporting.
QUIET = ("Progress bars disabled",)


def _warnings(stderr: str) -> list[str]:
    """The distinct warning and error lines of a child's stderr (first 200 characters)."""
    seen = []
    for line in (stderr or "").splitlines():
        line = line.strip()
        if any(q in line for q in QUIET):
            continue
        if ("warn" in line.lower() or "error" in line.lower()) and line[:200] not in seen:
            seen.append(line[:200])
    return seen[:20]


def run_child(kind: str, spec: dict) -> dict:
    out, stderr = children.run_child(__file__, kind, spec, _child_env(), name="bench_nodes")
    return {**out, "stderr_warnings": _warnings(stderr)}


# ----------------------------------------------------------------------------------------------
# The driver of the benchmark
# ----------------------------------------------------------------------------------------------

def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def print_table(res: dict) -> None:
    c = res["config"]
    print(f"\nbatch inference, {res['prepare']['rows']} photometry-only galaxies "
          f"({res['prepare']['shards']} shards, {res['configurations']['one-node']['blocks']} "
          f"blocks of <= {c['block_rows']} rows), {c['samples']} samples, untrained NF "
          f"({res['prepare']['model_params']} parameters), {c['actors']} actors x 1 CPU:")
    print("configuration | cluster start s | infer wall s | steady posteriors/s | "
          "posteriors/s | rows per node | rows once")
    print("--- | ---: | ---: | ---: | ---: | --- | ---")
    for key, label, _, _ in CONFIGS:
        r = res["configurations"][key]
        nodes = ", ".join(f"{n} {v}" for n, v in sorted(r["rows_per_node"].items()))
        ok = "yes" if r["output_rows"] == r["unique_objids"] == r["input_rows"] else "NO"
        print(f"{label} | {_fmt(r['cluster_start_s'])} | {_fmt(r['wall_s'])} | "
              f"{_fmt(r['steady_posteriors_per_s'], '.0f')} | "
              f"{_fmt(r['posteriors_per_s'], '.0f')} | {nodes} | {ok}")
    q = res["ratio"]
    print(f"two-node / one-node: steady rate x{_fmt(q['steady_posteriors_per_s'], '.2f')}, "
          f"overall rate x{_fmt(q['posteriors_per_s'], '.2f')}, infer wall time "
          f"x{_fmt(q['wall_s'], '.2f')}, cluster start x{_fmt(q['cluster_start_s'], '.2f')}")
    print("(same 2 CPUs in both: the ratio is the cost of spreading over two raylets, not a "
          "speed-up; on a real cluster each node brings its own cores)")
    loads = [x for r in res["configurations"].values() for x in r.get("loadavg_1min", [])]
    if loads:
        print(f"machine 1-min load average during the runs: {min(loads):.1f} .. "
              f"{max(loads):.1f} on {os.cpu_count()} CPUs (rates are noisy above that)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="galaxies to simulate and infer")
    ap.add_argument("--samples", type=int, default=100, help="posterior samples per galaxy")
    ap.add_argument("--actors", type=int, default=2, help="inference actors of 1 CPU")
    ap.add_argument("--rows-per-shard", type=int, default=2500)
    ap.add_argument("--block-rows", type=int, default=512, help="rows per unit of work")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--wait-for-actors-s", type=int, default=300,
                    help="how long Ray Data may wait for the whole pool before the first block")
    ap.add_argument("--workdir", default=None, help="default: a temporary folder, removed")
    ap.add_argument("--out", default=None, help="write the results here as JSON")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "SPEC_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return {}
    if args.quick:
        args.n, args.samples, args.rows_per_shard, args.block_rows = 1000, 8, 250, 100

    work = args.workdir or tempfile.mkdtemp(prefix="raygal-bench-nodes-")
    os.makedirs(work, exist_ok=True)
    data, model = os.path.join(work, "data"), os.path.join(work, "model-phot-nf")
    res = {"config": {k: v for k, v in vars(args).items() if k != "child"},
           "configurations": {}}
    t_start = time.perf_counter()

    def log(msg):
        print(f"[bench_nodes {time.perf_counter() - t_start:7.1f}s] {msg}", file=sys.stderr,
              flush=True)

    try:
        log(f"simulate {args.n} photometry-only galaxies -> {data}; build the untrained NF")
        res["prepare"] = run_child("prepare", {"n": args.n, "data": data, "model": model,
                                               "seed": 17,
                                               "rows_per_shard": args.rows_per_shard})
        for key, label, head_cpus, node_cpus in CONFIGS:
            log(f"{label}: infer {args.samples} samples, {args.actors} actors x 1 CPU")
            res["configurations"][key] = run_child("run", {
                "head_cpus": head_cpus, "node_cpus": node_cpus, "model": model, "data": data,
                "out": os.path.join(work, f"catalog-{key}"), "samples": args.samples,
                "actors": args.actors, "batch_size": args.batch_size,
                "block_rows": args.block_rows, "wait_for_actors_s": args.wait_for_actors_s})
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    one, two = res["configurations"]["one-node"], res["configurations"]["two-node"]
    res["ratio"] = {k: _ratio(two[k], one[k]) for k in
                    ("steady_posteriors_per_s", "posteriors_per_s", "wall_posteriors_per_s",
                     "wall_s", "cluster_start_s")}
    res["total_s"] = time.perf_counter() - t_start
    print_table(res)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    main()
