"""Shared fixtures: a real local Ray (one per test module), a real S3-compatible server on
127.0.0.1 (moto's server, one per session), and the real SDSS samples when present."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# Must be in the environment before ray.init: faster worker health checks halve small fits.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_SDSS = Path(os.environ.get("RAYGAL_SDSS_SAMPLES", REPO.parent / "shared" / "data" / "sdss"))


def sdss_path(*parts: str) -> Path:
    """Path to a real SDSS sample, or skip the test (saying why) where the samples are absent."""
    p = SHARED_SDSS.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real SDSS sample {p} not present (set RAYGAL_SDSS_SAMPLES to the folder "
                    f"holding photoz/, lines_dn4000/ and metallicity_images/)")
    return p


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module's in-process training (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): the test networks are small, a second
    OpenMP thread buys little, and on a shared 2-core machine threads waiting on each other
    made training steps 10-20x slower."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """A real local Ray sized for this 2-core machine, started once per test module. It starts
    after the local S3 server so that its worker processes inherit the server's endpoint and
    throw-away credentials, as a cluster's workers inherit their node's."""
    import ray

    from raygal.runtime import configure_ray_data, init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray("local", num_cpus=2, object_store_memory=512 * 1024**2)
    configure_ray_data(progress=False)
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible server as a subprocess on 127.0.0.1; yields its endpoint URL and
    points raygal (and boto/s3fs/pyarrow) at it with throw-away credentials."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION", "RAYGAL_S3_ENDPOINT_URL",
                                             "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing-secret",
                      AWS_DEFAULT_REGION="us-east-1", RAYGAL_S3_ENDPOINT_URL=endpoint,
                      AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the local S3 server; yields 's3://<name>'."""
    import boto3

    name = f"raygal-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"
