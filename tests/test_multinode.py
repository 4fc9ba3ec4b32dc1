"""Training and inference on a Ray cluster of two nodes started on this machine
(``ray.cluster_utils.Cluster``: a head and a second raylet, each with one CPU).

Training: Ray Train's two workers run on different nodes with checkpoints on the local S3
server; the second node is removed mid-run and the run goes on, elastic, on what is left,
resuming from its last checkpoint. Inference: blocks are spread over actors on both nodes and
every row is written once; when a node is lost mid-run, the blocks it had not published are run
again on what is left, in the same call, with no row twice. Small enough for 2 cores."""
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
    # The driver joins while the head is the only node, so it is attached to the head's
    # raylet (with several raylets on one address it may otherwise attach to any), and the
    # second node can be removed without taking the driver with it.
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.add_node(num_cpus=1, object_store_memory=200 * MiB)
    cluster.wait_for_nodes()
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


def test_training_spans_both_nodes_and_survives_losing_one(two_nodes, s3_bucket,
                                                            tmp_path_factory):
    """Two workers that cannot share a node (0.6 CPU each on 1-CPU nodes) train with
    checkpoints on S3; the second node is removed after the first checkpoint, and the run,
    elastic down to one worker (``min_workers=1``), resumes from its last checkpoint on the
    head and finishes every epoch once."""
    import ray
    from ray.cluster_utils import Cluster

    from raygal import storage
    from raygal.models import load_posterior
    from raygal.sim import simulate
    from raygal.train import TrainConfig
    from raygal.train.driver import fit

    cluster: Cluster = two_nodes
    if len([n for n in ray.nodes() if n["Alive"]]) < 2:         # the inference test took one
        cluster.add_node(num_cpus=1, object_store_memory=200 * MiB)
        cluster.wait_for_nodes()
    deadline = time.time() + 60          # both nodes' CPUs seen free before the group forms
    while ray.available_resources().get("CPU", 0.0) < 2 - 1e-6:
        assert time.time() < deadline, ray.available_resources()
        time.sleep(0.2)
    data = str(tmp_path_factory.mktemp("elastic") / "mock")
    simulate(600, data, seed=33, with_images=False, rows_per_shard=200)
    out = f"{s3_bucket}/runs/elastic"
    cfg = TrainConfig(model="gaussian", data=data, out=out, inputs="phot",
                      targets=("log_mstar", "z"), epochs=8, workers=2, min_workers=1,
                      cpus_per_worker=0.6, batch_size=32, max_failures=2)
    result, error = {}, []

    def run():
        try:
            result.update(fit(cfg))
        except Exception as exc:
            error.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 240
    while time.time() < deadline and t.is_alive() and \
            not storage.listdir(f"{out}/ray/train/epoch-0000"):
        time.sleep(0.5)
    assert storage.listdir(f"{out}/ray/train/epoch-0000"), "no checkpoint before the loss"
    worker = [n for n in cluster.list_all_nodes() if n is not cluster.head_node][0]
    cluster.remove_node(worker)
    t.join(timeout=360)
    assert not t.is_alive() and not error, error
    h = result["history"]
    assert [e["epoch"] for e in h] == list(range(8))        # every epoch once, finished
    # the first epoch ran on both nodes, two workers; the last on the head alone, one
    assert len(h[0]["nodes"]) == 2 and h[0]["workers"] == 2, h[0]
    assert len(h[-1]["nodes"]) == 1 and h[-1]["workers"] == 1, h[-1]
    resumed = [e["resumed_from_epoch"] for e in h if e["resumed_from_epoch"] is not None]
    assert resumed, "the run did not restart after the node was lost"
    post = load_posterior(result["model_uri"])
    assert tuple(post.targets) == ("log_mstar", "z") and result["model_uri"].startswith("s3://")


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
