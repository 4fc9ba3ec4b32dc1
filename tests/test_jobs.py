"""`ray job submit` of jobs/train.py against a real local head started here (`ray start
--head`), whose dashboard (the job server) must listen on 127.0.0.1 only."""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _process_helpers import end_processes, process_table, with_descendants

from raygal.shards import ShardWriter
from raygal.toy import linear_gaussian

pytestmark = pytest.mark.timeout(420)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp*)."""
    out = set()
    for name, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, st = parts[1], parts[3]
            if st != "0A":  # LISTEN
                continue
            ip_hex, port_hex = addr.split(":")
            if int(port_hex, 16) != port:
                continue
            if width == 8:
                ip = socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1])
            else:
                b = bytes.fromhex(ip_hex)
                ip = socket.inet_ntop(socket.AF_INET6, b"".join(
                    b[i:i + 4][::-1] for i in range(0, 16, 4)))
            out.add(ip)
    return out


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A local Ray head (2 CPUs) with its dashboard on 127.0.0.1; stopped afterwards."""
    tmp = tmp_path_factory.mktemp("head")
    port, dash = _free_port(), _free_port()
    # Every port of its own, so that another Ray on this machine (whose agents hold Ray's
    # default ports) cannot keep this head's job agent from starting.
    own_ports = [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    # Token authentication stays on: head and client share a throw-away token.
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    f"--temp-dir={tmp}", "--disable-usage-stats", *own_ports,
                    "--object-store-memory=300000000"],
                   check=True, env=env, capture_output=True, timeout=120)
    try:
        deadline = time.time() + 60
        while not _listening_addresses(dash) and time.time() < deadline:
            time.sleep(0.5)
        yield {"address": f"http://127.0.0.1:{dash}", "dashboard_port": dash, "env": env,
               "gcs": f"127.0.0.1:{port}"}
    finally:
        _stop_head(tmp)


def _stop_head(temp_dir) -> None:
    """End this head's processes only: those started with its temp dir on their command line
    (GCS, raylet, dashboard, agents) and everything they started (workers, dashboard
    modules). `ray stop` would end every Ray on the machine, other users' jobs included."""
    procs = process_table(cmdline=True)
    end_processes(with_descendants({pid for pid, p in procs.items()
                                    if str(temp_dir) in p.cmd}, procs))


def test_job_server_requires_the_token(head):
    env = dict(head["env"])
    env.pop("RAY_AUTH_TOKEN")
    env["RAY_AUTH_TOKEN_PATH"] = "/nonexistent/token"
    r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", head["address"]],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "token" in (r.stdout + r.stderr).lower()


def test_dashboard_listens_on_loopback_only(head):
    addrs = _listening_addresses(head["dashboard_port"])
    assert addrs, "dashboard is not listening"
    assert addrs <= {"127.0.0.1", "::1"}, addrs


def test_ray_job_submit_train(head, tmp_path):
    prob = linear_gaussian()
    batch, _ = prob.simulate(800)
    import pyarrow as pa

    from raygal.schema import galaxy_schema

    schema = galaxy_schema(None)
    n = 800
    cols = {f.name: (pa.array(batch[f.name]) if f.name in batch else
                     pa.array(["toy"] * n) if f.name == "source" else pa.nulls(n, f.type))
            for f in schema}
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    with ShardWriter(data, schema, rows_per_shard=400) as w:
        w.write(pa.table(cols).select(schema.names).cast(schema))
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head["address"],
           "--working-dir", str(REPO), "--",
           "python", "jobs/train.py", "gaussian", "--data", data, "--out", out,
           "--inputs", "phot", "--targets", "log_mstar,log_sfr", "--epochs", "2",
           "--workers", "1", "--batch-size", "128"]
    deadline = time.time() + 60
    while True:
        r = subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=400)
        # a fresh head's job agent can lag its dashboard on a busy machine: Ray asks to retry
        if "No available agent to submit job" not in r.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    # the job's log shows training progress, epoch by epoch
    assert "[gaussian] epoch 1/2: train loss" in r.stdout, r.stdout[-3000:]
    assert "[gaussian] epoch 2/2: train loss" in r.stdout
    from raygal.models import load_posterior

    post = load_posterior(f"{out}/model")
    assert post.sample(batch, 4).shape == (n, 4, 2)
