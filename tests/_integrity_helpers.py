"""Small real datasets and models for the integrity and scale-out tests: mock galaxies written
with ShardWriter, a briefly trained photometry model, and helpers that run the real CLI in a
subprocess (to kill it) and check a folder against a complete version."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raygal.shards import ShardWriter, read_table

REPO = Path(__file__).resolve().parents[1]


def make_dataset(uri: str, n: int = 200, seed: int = 0, rows_per_shard: int = 50,
                 images: bool = False) -> dict:
    """Mock galaxies (survey ``seed``) as a raygal dataset at ``uri``; returns its manifest."""
    from raygal.sim import simulate_batch

    t = simulate_batch(n, seed=seed, with_images=images)
    with ShardWriter(uri, t.schema, rows_per_shard=rows_per_shard) as w:
        w.write(t)
    from raygal.shards import read_manifest

    return read_manifest(uri)


def make_model(uri: str, data: str, targets=("log_mstar", "z"), steps: int = 30) -> str:
    """A photometry-only Gaussian posterior, trained for a few steps in-process; saved at
    ``uri``."""
    import torch

    from raygal.inputs import StatsAccumulator
    from raygal.models.baseline import GaussianPosterior

    table = read_table(data)
    stats = StatsAccumulator().update(table).finalize()
    torch.manual_seed(0)
    model = GaussianPosterior(targets, "phot", stats, {"hidden": 16})
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(steps):
        loss = model.loss(table)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save(uri)
    return uri


def dataset_and_model(tmp: Path, n: int, seed: int, rows_per_shard: int) -> dict:
    """A mock dataset of ``n`` galaxies in ``tmp``/data and a photometry model trained on it:
    {'tmp', 'data', 'model'}."""
    data = str(tmp / "data")
    make_dataset(data, n=n, seed=seed, rows_per_shard=rows_per_shard)
    return {"tmp": tmp, "data": data, "model": make_model(str(tmp / "model"), data)}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "raygal.cli", *args]


def env() -> dict:
    e = dict(os.environ)
    e.pop("RAY_ADDRESS", None)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def start(cmd: list[str]) -> subprocess.Popen:
    """Run ``cmd`` in its own process group (so a kill takes its Ray workers too)."""
    return subprocess.Popen(cmd, env=env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def wait_for(pred, proc: subprocess.Popen, timeout: float = 240.0) -> bool:
    """Poll ``pred()`` until it is true or ``proc`` ends; True if ``pred`` became true."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        if proc.poll() is not None:
            return bool(pred())
        time.sleep(0.1)
    return False


def visible_parquet(folder) -> list[str]:
    """The Parquet files a folder reader sees (no hidden or ``_`` names)."""
    return sorted(p.name for p in Path(folder).glob("*.parquet")
                  if not p.name.startswith((".", "_")))


def catalog_table(uri: str) -> pa.Table:
    from raygal.infer import catalog_shards

    return pa.concat_tables([pq.read_table(s) for s in catalog_shards(uri)])


def assert_unique_complete(cat: pa.Table, n: int) -> None:
    ids = cat.column("objid").to_numpy()
    assert len(ids) == n and len(np.unique(ids)) == n
