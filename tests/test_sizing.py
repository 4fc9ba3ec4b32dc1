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
from raygal.train.sizing import SMALL, SMALL_DATA_ROWS, describe, size_for_data
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


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifest_mounted_on_the_head_is_read_as_node_types(name, monkeypatch):
    """On KubeRay the shipped manifests mount themselves (a ConfigMap) on the head and name it
    in RAYGAL_AUTOSCALER_CONFIG: workers and trials are sized from the worker groups, as on
    the cluster launcher, not from the pods up at submit time (only the CPU-less head)."""
    path = ROOT / "cluster" / "kuberay" / name
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    manifest = next(d for d in docs if d.get("kind") in ("RayCluster", "RayJob"))
    spec = manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"][
        "rayClusterSpec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    mount = head["containers"][0]["volumeMounts"][0]
    assert env["RAYGAL_AUTOSCALER_CONFIG"] == f"{mount['mountPath']}/{name}"
    assert {v["name"]: v["configMap"]["name"] for v in head["volumes"]}[mount["name"]]

    monkeypatch.setenv("RAYGAL_AUTOSCALER_CONFIG", str(path))     # as mounted on the head
    cap = cluster_capacity()
    assert cap.source.startswith("KubeRay manifest")
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    types = {t.name: t for t in cap.node_types}
    assert set(types) == {"head", *groups}
    assert types["head"].max_count == 1 and types["head"].resources["CPU"] == 0
    for name_, g in groups.items():
        assert types[name_].max_count == g["maxReplicas"]
    gpu = [t for t in cap.node_types if t.resources.get("GPU")]
    assert cap.total("GPU") == sum(t.resources["GPU"] * t.max_count for t in gpu) >= 2
    cfg = _cfg(workers=2, gpus_per_worker=1)
    assert default_cpus_per_worker(cfg, cap) >= 1                  # the GPU pods' CPUs
    assert max_concurrent(cfg, 3, cap) == int(cap.total("GPU") // 2) >= 2


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


# -- models sized for their data (raygal.train.sizing) -----------------------------------------


def test_small_photometry_catalog_gets_the_small_data_settings():
    cfg = _cfg(model="cfm", inputs="phot+z", targets=("dn4000", "av"))
    sized, rec = size_for_data(cfg, 746)
    assert rec["size"] == "small" and "746 training rows" in rec["why"]
    assert sized.model_config == SMALL["cfm"]["model_config"]
    assert (sized.lr, sized.batch_size, sized.weight_decay, sized.epochs, sized.patience) == \
        (1e-3, 128, 1e-4, 100, 15)
    assert rec["changed"]["lr"] == [5e-5, 1e-3]
    assert "hidden 64" in describe(rec, "cfm") and "--size paper" in describe(rec, "cfm")
    assert cfg.lr == 5e-5, "the caller's config is not modified"


def test_what_the_run_sets_is_kept():
    cfg = _cfg(model="nf", inputs="phot", lr=3e-4, epochs=7,
               model_config={"coupling_layers": 2, "solver": "x"})
    sized, rec = size_for_data(cfg, 4000)
    assert rec["size"] == "small"
    assert sized.model_config == cfg.model_config          # an architecture key was given
    assert sized.lr == 3e-4 and sized.epochs == 7
    assert sized.batch_size == 128 and sized.patience == 15


@pytest.mark.parametrize("kw, rows, why", [
    (dict(model="nf", inputs="phot"), SMALL_DATA_ROWS, "at least"),
    (dict(model="cfm", inputs="image+phot"), 500, "image models"),
    (dict(model="cfm", inputs="phot", size="paper"), 500, "size='paper'"),
    (dict(model="gaussian", inputs="phot"), 500, "no small-data settings"),
])
def test_papers_settings_where_they_belong(kw, rows, why):
    cfg = _cfg(**kw)
    sized, rec = size_for_data(cfg, rows)
    assert sized is cfg and rec["size"] == "paper" and why in rec["why"]


def test_size_small_applies_to_any_row_count_and_bad_size_is_refused():
    _, rec = size_for_data(_cfg(model="nf", inputs="phot", size="small"), 10 ** 6)
    assert rec["size"] == "small"
    with pytest.raises(ValueError, match="size must be one of auto, paper, small"):
        _cfg(size="tiny")


def test_gpus_asked_on_a_cpu_only_cluster_fail_at_once_naming_what_is_missing(ray_local,
                                                                              tmp_path):
    """The local Ray has CPUs only: a GPU worker, actor or trial would wait forever."""
    import time

    from raygal.infer import infer
    from raygal.train.driver import fit
    from raygal.tune import run_sweep

    cfg = _cfg(data=str(tmp_path / "none"), out=str(tmp_path / "run"), gpus_per_worker=1)
    t0 = time.perf_counter()
    for call in (lambda: fit(cfg), lambda: run_sweep(cfg, trials=2),
                 lambda: infer(str(tmp_path / "m"), str(tmp_path / "d"), str(tmp_path / "o"),
                               gpus_per_actor=1)):
        with pytest.raises(ValueError, match=r"asks for .*1 GPU.*no node of this cluster"):
            call()
    with pytest.raises(ValueError, match="asks for 64 CPU"):
        fit(_cfg(data="d", out=str(tmp_path / "run2"), cpus_per_worker=64))
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "run").exists()              # nothing written before the error
