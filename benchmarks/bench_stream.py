"""Streaming 64x64 gri cutout shards from an S3 server: Ray Data against a plain pyarrow read.

Writes a mock survey to a local S3-compatible server (moto, started here on 127.0.0.1 unless
--endpoint is given), then reads the same shards (a) with pyarrow's S3 filesystem, one shard at
a time into numpy, and (b) through ``raygal.pipelines.read_dataset`` (Ray Data) into numpy batches.
Prints rows/s for each and the ratio. Also reports the mock survey's galaxies/s/core.

    python benchmarks/bench_stream.py                 # full: 16384 rows
    python benchmarks/bench_stream.py --quick         # seconds; what the tests run
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import uuid


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def make_data(uri: str, rows: int, rows_per_shard: int, image_size: int) -> None:
    try:
        from raygal.sim import simulate

        simulate(rows, uri, image_size=image_size, seed=0, rows_per_shard=rows_per_shard)
    except ImportError:  # simulator absent: random rows of the same shape
        from raygal.shards import ShardWriter
        from raygal.toy import random_catalog

        t = random_catalog(rows, (3, image_size, image_size))
        with ShardWriter(uri, t.schema, rows_per_shard=rows_per_shard) as w:
            w.write(t)


def read_plain(uri: str) -> tuple[int, float]:
    """pyarrow only: each shard -> table -> numpy cutouts, as a hand-written loop would."""
    import pyarrow.parquet as pq

    from raygal import storage
    from raygal.shards import shard_uris

    t0 = time.perf_counter()
    n = 0
    checksum = 0.0
    for s in shard_uris(uri):
        fs, path = storage.arrow_fs(s)
        pf = pq.ParquetFile(fs.open_input_file(path))
        for rb in pf.iter_batches(batch_size=1024, columns=["objid", "mag_r", "cutout"]):
            img = rb.column(2).to_numpy_ndarray()
            checksum += float(img[:, 1, 0, 0].sum())
            n += len(img)
    return n, time.perf_counter() - t0


def read_ray(uri: str, batch_size: int) -> tuple[int, float]:
    from raygal import pipelines

    t0 = time.perf_counter()
    ds = pipelines.read_dataset(uri, columns=["objid", "mag_r", "cutout"])
    n = 0
    checksum = 0.0
    for b in ds.iter_batches(batch_size=batch_size, batch_format="numpy",
                             prefetch_batches=2):
        checksum += float(b["cutout"][:, 1, 0, 0].sum())
        n += len(b["cutout"])
    return n, time.perf_counter() - t0


def sim_rate(image_size: int, n: int) -> float | None:
    """Mock-survey galaxies per second on one core (with images)."""
    try:
        import torch

        from raygal.sim import simulate_batch
    except ImportError:
        return None
    torch.set_num_threads(1)
    simulate_batch(min(n, 256), image_size=image_size, seed=1)  # warm-up
    t0 = time.perf_counter()
    simulate_batch(n, image_size=image_size, seed=2)
    rate = n / (time.perf_counter() - t0)
    torch.set_num_threads(os.cpu_count() or 1)
    return rate


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--rows-per-shard", type=int, default=2048)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--endpoint", default=None, help="use this S3 endpoint instead of moto")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.rows_per_shard, args.repeats = 1024, 512, 1

    import boto3

    proc = None
    endpoint = args.endpoint
    # The S3 settings this run changes, restored at the end (a caller's own server stays in use)
    saved_env = {k: os.environ.get(k) for k in ("RAYGAL_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                 "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    if endpoint is None:
        proc, endpoint = start_moto()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["RAYGAL_S3_ENDPOINT_URL"] = endpoint
    from raygal.runtime import init_ray

    started_ray = False
    try:
        import ray

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        uri = f"s3://{bucket}/mock"
        t0 = time.perf_counter()
        make_data(uri, args.rows, args.rows_per_shard, args.image_size)
        t_write = time.perf_counter() - t0
        if not ray.is_initialized():
            init_ray("local")
            started_ray = True
        read_ray(uri, args.batch_size)  # warm the Ray Data workers once
        plain, rayd = [], []
        for _ in range(args.repeats):
            n, dt = read_plain(uri)
            plain.append(n / dt)
            n2, dt2 = read_ray(uri, args.batch_size)
            assert n2 == n == args.rows, (n, n2, args.rows)
            rayd.append(n2 / dt2)
        res = {"rows": args.rows, "image_size": args.image_size,
               "write_rows_per_s": args.rows / t_write,
               "plain_rows_per_s": max(plain), "ray_rows_per_s": max(rayd),
               "ratio": max(rayd) / max(plain),
               "sim_galaxies_per_s_per_core": sim_rate(args.image_size,
                                                       256 if args.quick else 4096)}
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    print(f"cutout streaming, {res['rows']} rows of 3x{args.image_size}x{args.image_size} "
          f"float32 from a local S3 server:")
    print(f"  plain pyarrow read : {res['plain_rows_per_s']:8.0f} rows/s")
    print(f"  Ray Data           : {res['ray_rows_per_s']:8.0f} rows/s")
    print(f"  ratio Ray/plain    : {res['ratio']:8.2f}   (goal >= 0.5)")
    if res["sim_galaxies_per_s_per_core"]:
        print(f"mock survey at {args.image_size}x{args.image_size}: "
              f"{res['sim_galaxies_per_s_per_core']:.0f} galaxies/s/core (goal > 2000)")
    return res


if __name__ == "__main__":
    main()
