"""Inference on a Ray cluster of two nodes started on this machine (``ray.cluster_utils.Cluster``:
a head and a second raylet, each with one CPU): blocks are spread over actors on both nodes
and every row is written once; when a node is lost mid-run, the blocks it had not published
are run again on what is left, in the same call, with no row twice. Small enough for 2
cores."""
from __future__ import annotations

import json
import threading
import time

import pyarrow.parquet as pq
import pytest
from _integrity_helpers import assert_unique_complete, catalog_table, dataset_and_model

from raygal.infer import PART_META_KEY, catalog_parts, infer

pytestmark = [pytest.mark.timeout(420), pytest.mark.usefixtures("s3_server")]

MiB = 1024 ** 2


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    from raygal.runtime import configure_ray_data

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "object_store_memory": 200 * MiB,
                                      "dashboard_host": "127.0.0.1"})
    cluster.add_node(num_cpus=1, object_store_memory=200 * MiB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    configure_ray_data(progress=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return dataset_and_model(tmp_path_factory.mktemp("multinode"), n=240, seed=31,
                             rows_per_shard=120)


def _nodes_of(out: str) -> list[str]:
    return [json.loads(pq.read_schema(p["uri"]).metadata[PART_META_KEY])["node"]
            for p in catalog_parts(out)]


def test_inference_spreads_over_both_nodes(two_nodes, small):
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    out = str(small["tmp"] / "spread")
    s = infer(small["model"], small["data"], out, samples=20000, batch_size=20,
              block_rows=30, min_actors=2, max_actors=2, cpus_per_actor=0.5)
    assert s["complete"]
    assert len(set(_nodes_of(out))) == 2                       # parts written on each node
    assert_unique_complete(catalog_table(out), 240)


def test_a_node_lost_mid_run_is_redone_without_duplicates(two_nodes, small, tmp_path, capfd):
    """The second node goes away while its actor works: the blocks it had not published are
    run again on what is left (the head), in the same call, and no row is written twice."""
    from ray.cluster_utils import Cluster

    cluster: Cluster = two_nodes
    out = str(tmp_path / "cat")
    result, error = {}, []

    def run():
        try:
            result.update(infer(small["model"], small["data"], out, samples=100000,
                                batch_size=10, block_rows=20, min_actors=2, max_actors=2,
                                cpus_per_actor=0.5))
        except Exception as exc:
            error.append(exc)

    t = threading.Thread(target=run)
    t.start()
    worker = [n for n in cluster.list_all_nodes() if n is not cluster.head_node][0]
    deadline = time.time() + 180
    while time.time() < deadline and not catalog_parts(out):
        time.sleep(0.2)
    assert catalog_parts(out), "no part was published before the node was removed"
    cluster.remove_node(worker)
    t.join(timeout=360)
    assert not t.is_alive()
    assert not error, error
    assert result["complete"]
    assert_unique_complete(catalog_table(out), 240)
    # Ray Data may restart the lost actor and retry its block itself; when it gives up
    # instead (ActorDiedError), infer runs the unpublished blocks again and says so.
    err = capfd.readouterr().err
    print("retried by raygal" if "a worker was lost" in err else "retried by Ray Data")
    # and a re-run finds nothing left to do
    s = infer(small["model"], small["data"], out, samples=100000, batch_size=10,
              block_rows=20, min_actors=1, max_actors=1, cpus_per_actor=0.5)
    assert s["complete"] and s["shards_written"] == 0


def test_lost_workers_are_told_apart_from_other_errors():
    import ray.exceptions as rex

    from raygal.infer import _lost_worker

    assert _lost_worker(rex.ActorDiedError())
    try:
        try:
            raise rex.ActorDiedError()
        except Exception as inner:
            raise RuntimeError("map_batches failed") from inner
    except RuntimeError as wrapped:
        assert _lost_worker(wrapped)
    assert not _lost_worker(ValueError("bad option"))
    assert not _lost_worker(OSError("s3://bucket/x: access denied"))
