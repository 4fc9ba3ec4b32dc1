"""Mock-survey generation speed: galaxies per second per CPU core, with and without images.

Generates the survey chunk by chunk as ``raygal.sim.simulate`` streams it (Arrow tables, no
Parquet I/O) with torch limited to one thread, and reports the rate both per CPU-second of this
process (the per-core figure, robust to other load on the machine) and per wall-clock second.

    python benchmarks/bench_sim.py                  # 8192 galaxies at 64x64 (goal > 2000/s/core)
    python benchmarks/bench_sim.py --image-size 160
    python benchmarks/bench_sim.py --quick          # seconds; what the tests run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GOAL_PER_CORE = 2000.0


def _survey(n: int, **kw) -> int:
    """Generate n galaxies chunk by chunk, as ``simulate`` streams them (Arrow tables)."""
    from raygal.sim import CHUNK_SIZE, simulate_batch

    rows = 0
    for off in range(0, n, CHUNK_SIZE):
        rows += simulate_batch(min(CHUNK_SIZE, n - off), offset=off, **kw).num_rows
    return rows


def _rate(fn, n: int) -> tuple[float, float]:
    """(galaxies per CPU-second, galaxies per wall-second) of ``fn()`` producing n galaxies."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return n / max(cpu, 1e-9), n / max(wall, 1e-9)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8192, help="galaxies per measurement")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = per core)")
    p.add_argument("--quick", action="store_true", help="tiny run (for the tests)")
    args = p.parse_args(argv)

    import torch

    from raygal.sim import CHUNK_SIZE, simulate_batch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        n = CHUNK_SIZE if args.quick else max(args.n, CHUNK_SIZE)
        # Warm-up: distance, spectral, selection and profile tables are built once per process.
        simulate_batch(CHUNK_SIZE, image_size=args.image_size, seed=12345)
        img_cpu, img_wall = _rate(lambda: _survey(n, image_size=args.image_size, seed=1), n)
        cat_cpu, cat_wall = _rate(lambda: _survey(n, with_images=False, seed=1), n)
    finally:
        torch.set_num_threads(threads_before)
    res = {
        "n": n,
        "image_size": args.image_size,
        "threads": args.threads,
        "images_galaxies_per_s_per_core": img_cpu,
        "images_galaxies_per_s_wall": img_wall,
        "catalog_galaxies_per_s_per_core": cat_cpu,
        "catalog_galaxies_per_s_wall": cat_wall,
        "goal_per_core": GOAL_PER_CORE,
    }
    print(f"mock survey, {n} galaxies, torch threads = {args.threads}")
    print(f"  with {args.image_size}x{args.image_size} gri images: {img_cpu:8.0f} galaxies/s/core "
          f"({img_wall:.0f}/s wall)  goal > {GOAL_PER_CORE:.0f}")
    print(f"  catalogue only:            {cat_cpu:8.0f} galaxies/s/core ({cat_wall:.0f}/s wall)")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
