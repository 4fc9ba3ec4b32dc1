"""Starting or joining Ray the same way on a laptop and on a cluster."""
from __future__ import annotations

import logging
import os
import sys

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
