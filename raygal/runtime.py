"""Starting or joining Ray the same way on a laptop and on a cluster."""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass

log = logging.getLogger("raygal")


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_memory: int | None = None, quiet: bool = True):
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``, as ``ray job submit`` sets),
    else start a local one. ``address='local'`` always starts a fresh local Ray.

    A local Ray binds its dashboard to 127.0.0.1 only; Ray's other ports listen on all
    interfaces, so clusters belong on a private network (see cluster/README.md).
    """
    import ray

    # Faster worker health checks make short Ray Train fits much quicker; must precede init.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=not quiet, configure_logging=not quiet)
    if address and address != "local":
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                 dashboard_host="127.0.0.1",
                 object_store_memory=object_store_memory or 1024**3, **kwargs)
    configure_ray_data(progress=sys.stderr.isatty())
    return ray


def configure_ray_data(progress: bool = False) -> None:
    """Quiet Ray Data's console output unless a person is watching a terminal."""
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = progress
        ctx.print_on_execution_start = progress
    except Exception:  # pragma: no cover - older Ray
        pass


# -- what the cluster can grow to, for sizing workers and trials --------------------------------
#: Where Ray's cluster launcher leaves the autoscaling config on the head node (where
#: ``ray job submit`` runs the driver).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
#: An environment variable naming another autoscaling config to read (a head started by hand
#: with ``ray start --head --autoscaling-config=PATH``).
AUTOSCALER_CONFIG_ENV = "RAYGAL_AUTOSCALER_CONFIG"


@dataclass(frozen=True)
class NodeType:
    """One kind of node: its resources and how many of it the cluster may have (-1: no
    limit)."""
    name: str
    resources: dict
    max_count: int


@dataclass(frozen=True)
class Capacity:
    """The nodes a cluster can have: on an autoscaling cluster its configured node types (not
    the nodes running when a job is submitted, often only the head), on a fixed cluster the
    nodes it has. ``source`` says which."""
    node_types: tuple
    source: str

    def total(self, key: str) -> float:
        """The most of resource ``key`` the cluster can have (inf: no limit)."""
        out = 0.0
        for t in self.node_types:
            r = float(t.resources.get(key, 0))
            if r > 0 and t.max_count != 0:
                if t.max_count < 0:
                    return math.inf
                out += r * t.max_count
        return out

    def largest_node(self, key: str = "CPU") -> float:
        """The largest amount of ``key`` on one node."""
        return max((float(t.resources.get(key, 0)) for t in self.node_types
                    if t.max_count != 0), default=0.0)


def node_types_from_autoscaler_config(config: dict) -> tuple:
    """The node types of a Ray cluster-launcher config (``available_node_types``; the head
    counts once)."""
    head = config.get("head_node_type")
    out = []
    for name, t in (config.get("available_node_types") or {}).items():
        count = 1 if name == head else int(t.get("max_workers",
                                                  config.get("max_workers", 0)) or 0)
        out.append(NodeType(name, dict(t.get("resources") or {}), count))
    return tuple(out)


def _quantity(v) -> float:
    """A Kubernetes CPU or count quantity ("4", "500m", 2) as a number."""
    v = str(v).strip()
    return float(v[:-1]) / 1000 if v.endswith("m") else float(v)


def _group_resources(group: dict) -> dict:
    """Ray's resources of a KubeRay head or worker group: ``rayStartParams`` num-cpus /
    num-gpus where given, else the Ray container's limits (KubeRay's own rule; the Ray container
    is the first)."""
    params = group.get("rayStartParams") or {}
    containers = (((group.get("template") or {}).get("spec") or {}).get("containers") or [{}])
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    res = {}
    cpu = params.get("num-cpus", limits.get("cpu"))
    gpu = params.get("num-gpus", limits.get("nvidia.com/gpu"))
    if cpu is not None:
        res["CPU"] = _quantity(cpu)
    if gpu is not None and _quantity(gpu) > 0:
        res["GPU"] = _quantity(gpu)
    return res


def node_types_from_kuberay(manifest: dict) -> tuple:
    """The node types of a KubeRay ``RayCluster`` (or a ``RayJob``'s ``rayClusterSpec``): the
    head group once, each worker group up to its ``maxReplicas`` (absent: no limit, -1).

    >>> rc = {"kind": "RayCluster", "spec": {
    ...     "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}},
    ...     "workerGroupSpecs": [{"groupName": "gpu", "maxReplicas": 8, "template": {"spec": {
    ...         "containers": [{"resources": {"limits": {"cpu": "6", "nvidia.com/gpu": 1}}}]}}}]}}
    >>> node_types_from_kuberay(rc)[1]
    NodeType(name='gpu', resources={'CPU': 6.0, 'GPU': 1.0}, max_count=8)
    """
    spec = manifest.get("spec") or {}
    if manifest.get("kind") == "RayJob":
        spec = spec.get("rayClusterSpec") or {}
    out = [NodeType("head", _group_resources(spec.get("headGroupSpec") or {}), 1)]
    for g in spec.get("workerGroupSpecs") or []:
        out.append(NodeType(g.get("groupName", "workers"), _group_resources(g),
                            int(g.get("maxReplicas", -1))))
    return tuple(out)


def _gcs_node_types() -> tuple | None:
    """Node types from the cluster config the autoscaler reports to Ray's GCS (what Ray Train
    itself reads), or None when there is none."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:       # pragma: no cover - older Ray, or no GCS access
        return None
    if config is None or not config.node_group_configs:
        return None
    return tuple(NodeType(g.name, dict(g.resources), int(g.max_count))
                 for g in config.node_group_configs)


def cluster_capacity(bootstrap_config: str | None = None) -> Capacity:
    """What the running cluster can grow to: the autoscaler's node types when the cluster
    autoscales (reported to the GCS, or the autoscaling config on the head node: the cluster
    launcher's ``BOOTSTRAP_CONFIG``, or the file ``$RAYGAL_AUTOSCALER_CONFIG`` names, which
    may also be a KubeRay RayCluster or RayJob manifest), else the nodes alive now (a fixed
    cluster, or a local Ray: what it has is all it will have)."""
    import ray

    types = _gcs_node_types()
    if types:
        return Capacity(types, "autoscaler (GCS)")
    path = os.path.expanduser(bootstrap_config or os.environ.get(AUTOSCALER_CONFIG_ENV)
                              or BOOTSTRAP_CONFIG)
    if os.path.exists(path):
        import yaml

        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
        kuberay = [d for d in docs if d.get("kind") in ("RayCluster", "RayJob")]
        if kuberay:             # a KubeRay manifest mounted into the head pod (cluster/kuberay)
            return Capacity(node_types_from_kuberay(kuberay[0]), f"KubeRay manifest ({path})")
        types = node_types_from_autoscaler_config(docs[0] if docs else {})
        if types:
            return Capacity(types, f"autoscaler ({path})")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return Capacity(tuple(NodeType(n.get("NodeID", "?")[:8], dict(n.get("Resources") or {}), 1)
                          for n in nodes), "nodes alive")


def require_resources(per_unit: dict, what: str, hint: str = "",
                      capacity: Capacity | None = None) -> None:
    """Raise a ValueError at once when no node the cluster has or can grow to
    (``cluster_capacity``) holds one ``what`` asking ``per_unit`` resources (e.g.
    ``{"GPU": 1}`` on a CPU-only cluster): Ray would queue it and wait, silently, forever.

    >>> cap = Capacity((NodeType("cpu", {"CPU": 8}, 4),), "test")
    >>> require_resources({"CPU": 2}, "an actor", capacity=cap)
    >>> require_resources({"CPU": 1, "GPU": 1}, "a training worker", capacity=cap)
    Traceback (most recent call last):
    ...
    ValueError: a training worker asks for 1 CPU and 1 GPU on one node, but no node of this cluster has that (node types from test: cpu: 8 CPU)
    """
    import ray

    want = {k: float(v) for k, v in per_unit.items() if v}
    if not want or (capacity is None and not ray.is_initialized()):
        return                                 # nothing asked, or no cluster to ask
    cap = capacity or cluster_capacity()
    usable = [t for t in cap.node_types if t.max_count != 0]
    if any(all(float(t.resources.get(k, 0)) >= v - 1e-9 for k, v in want.items())
           for t in usable):
        return

    def fmt(res: dict) -> str:
        keys = [k for k in ("CPU", "GPU") if k in res] + sorted(
            k for k in res if k not in ("CPU", "GPU") and k in want)
        return " and ".join(f"{res[k]:g} {k}" for k in keys) or "no CPU or GPU"

    types = "; ".join(f"{t.name}: {fmt(t.resources)}" for t in usable) or "none"
    raise ValueError(f"{what} asks for {fmt(want)} on one node, but no node of this cluster "
                     f"has that (node types from {cap.source}: {types})"
                     + (f"; {hint}" if hint else ""))
