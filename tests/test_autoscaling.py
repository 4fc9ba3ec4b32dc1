"""The autoscaler, really exercised: a Ray head with no CPUs of its own and an autoscaling
config of worker node types (Ray's fake multi-node provider, which starts each "node" as a
raylet on this machine), shaped like cluster/aws-gpu.yaml's (a small and a large worker type,
min 0 workers, an idle timeout). An inference job makes the autoscaler add nodes; every row is
written once; raygal sizes itself from the node types the autoscaler reports, not from the
(CPU-less) nodes alive at submit time; the nodes go away after the idle timeout.

Not ``ray.cluster_utils.AutoscalingCluster``: its start and shutdown run ``ray stop --force``,
which ends every Ray on the machine, and the pip wheel lacks the example config it reads. The
head here is ``ray.cluster_utils.Cluster``'s, with the same fake-provider settings, and only the
processes this module started are ended. The fake GPU nodes of Ray's examples are left out: a
"GPU" there is a label, and torch here has no CUDA to back it (GPU sizing is tested in
test_tune_sizing/test_infer with declared node types).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
from _integrity_helpers import assert_unique_complete, catalog_table, dataset_and_model
from _process_helpers import end_processes, with_descendants

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

MiB = 1024 ** 2
IDLE_TIMEOUT_MIN = 0.25          # 15 s: the autoscaler removes nodes idle this long

#: Worker node types shaped like cluster/aws-gpu.yaml's (names, min 0, a cap), scaled to
#: fit 2 cores: one CPU per node.
NODE_TYPES = {
    "cpu-small": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0,
                  "max_workers": 2},
    "cpu-large": {"resources": {"CPU": 1, "large": 1}, "node_config": {},
                  "min_workers": 0, "max_workers": 1},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    import ray
    from ray._private import ray_constants
    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import Cluster

    from raygal.runtime import AUTOSCALER_CONFIG_ENV, configure_ray_data

    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()
    config = {
        "cluster_name": "raygal-autoscaling-test", "max_workers": 3,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": f"{get_node_ip_address()}:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {},
                                 "max_workers": 0},
            **NODE_TYPES},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": []}
    path = tmp_path_factory.mktemp("autoscaler") / "config.json"
    path.write_text(json.dumps(config))
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           # where raygal reads the node types (the launcher's ~/ray_bootstrap_config.yaml)
           AUTOSCALER_CONFIG_ENV: str(path)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "gcs_server_port": port, "object_store_memory": 150 * MiB,
        "dashboard_host": "127.0.0.1", "dashboard_port": _free_port(),
        "autoscaling_config": str(path)})
    monitor = cluster.head_node.all_processes[ray_constants.PROCESS_TYPE_MONITOR][0].process
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        configure_ray_data(progress=False)
        yield cluster
    finally:
        ray.shutdown()
        # the nodes the autoscaler started are the monitor's children: end them first
        end_processes(with_descendants({monitor.pid}) - {monitor.pid}, wait_s=10)
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0)


def test_an_inference_job_grows_the_cluster_and_it_shrinks_when_idle(autoscaling_cluster,
                                                                       tmp_path):
    import pyarrow.parquet as pq
    import ray

    from raygal.infer import PART_META_KEY, catalog_parts, infer
    from raygal.runtime import cluster_capacity

    # raygal reads the node types the autoscaler reports, not the CPU-less head alone
    cap = cluster_capacity()
    assert cap.source.startswith("autoscaler"), cap
    assert cap.total("CPU") == 3 and cap.largest_node("CPU") == 1
    assert _worker_nodes() == 0

    small = dataset_and_model(tmp_path, n=160, seed=41, rows_per_shard=80)
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(_worker_nodes())
            time.sleep(0.5)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out = str(tmp_path / "catalog")
    try:
        s = infer(small["model"], small["data"], out, samples=16, min_actors=2, max_actors=2,
                  block_rows=40)
    finally:
        stop.set()
        t.join()
    assert max(seen) >= 2, "the autoscaler did not add a node per actor"
    print(f"worker nodes during the job: up to {max(seen)} (sampled {seen[::4]})")
    assert s["complete"]
    assert_unique_complete(catalog_table(out), 160)
    # the parts were written by the actors on the added nodes (the head has no CPU)
    head = ray.get_runtime_context().get_node_id()
    writers = {json.loads(pq.read_schema(p["uri"]).metadata[PART_META_KEY])["node"]
               for p in catalog_parts(out)}
    assert writers and head not in writers
    # idle nodes are removed after the idle timeout (plus the autoscaler's update period)
    t0 = time.time()
    while _worker_nodes() and time.time() < t0 + 60 * IDLE_TIMEOUT_MIN + 90:
        time.sleep(2)
    assert _worker_nodes() == 0, "idle nodes were not removed"
    print(f"idle nodes removed {time.time() - t0:.0f} s after the job")
