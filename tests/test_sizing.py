"""Workers and trials are sized from what the cluster can grow to, never from the nodes
running when a job is submitted: the shipped autoscaling cluster (cluster/aws-gpu.yaml) starts
with only its CPU head, and must still get GPU workers with their CPUs and trials side by
side. A local Ray (a fixed cluster) is sized from its nodes, as before."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from raygal.runtime import Capacity, NodeType, cluster_capacity, node_types_from_autoscaler_config
from raygal.train import TrainConfig
from raygal.train.driver import default_cpus_per_worker
from raygal.tune import max_concurrent

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def aws():
    config = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    return Capacity(node_types_from_autoscaler_config(config), "cluster/aws-gpu.yaml")


def _cfg(**kw):
    base = dict(model="nf", data="d", out="o", inputs="phot", targets=("z",))
    return TrainConfig(**{**base, **kw})


def test_autoscaler_config_is_read_as_node_types(aws):
    gpu = [t for t in aws.node_types if t.resources.get("GPU")]
    assert gpu and all(t.max_count > 0 for t in gpu)
    head = [t for t in aws.node_types if t.max_count == 1 and not t.resources.get("GPU")]
    assert head, aws.node_types
    assert aws.total("GPU") == sum(t.resources["GPU"] * t.max_count for t in gpu) >= 2


def test_gpu_workers_and_trials_on_a_cluster_that_starts_empty(aws):
    cfg = _cfg(workers=2, gpus_per_worker=1)
    # workers must fit the 4-CPU, 1-GPU node type (one CPU left there for data), though the
    # 48-CPU, 4-GPU type could give more
    assert default_cpus_per_worker(cfg, aws) == 3
    n = max_concurrent(cfg, 3, aws)
    assert n == int(aws.total("GPU") // 2) >= 2, "trials must run side by side once nodes come"


def test_unlimited_node_type_gives_no_submit_time_bound():
    cap = Capacity((NodeType("head", {"CPU": 4}, 1), NodeType("cpu", {"CPU": 16}, -1)), "t")
    assert math.isinf(cap.total("CPU"))
    cfg = _cfg(workers=4)
    per = default_cpus_per_worker(cfg, cap)
    assert per == 8.0                                    # capped, and fits a 16-CPU node
    assert max_concurrent(cfg, per, cap) >= 1000


def test_two_cpu_local_ray_is_sized_as_before(ray_local):
    cap = cluster_capacity(bootstrap_config="/nonexistent/ray_bootstrap_config.yaml")
    assert cap.source == "nodes alive" and cap.total("CPU") == 2
    # two workers share what one CPU for Ray Data's readers leaves
    assert default_cpus_per_worker(_cfg(workers=2), cap) == 0.5
    assert max_concurrent(_cfg(workers=1), 0.49, cap) == 2


def test_bootstrap_config_on_the_head_node_wins_over_the_nodes_alive(ray_local, tmp_path):
    p = tmp_path / "ray_bootstrap_config.yaml"
    p.write_text((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    cap = cluster_capacity(bootstrap_config=str(p))
    assert cap.source.startswith("autoscaler") and cap.total("GPU") >= 2
