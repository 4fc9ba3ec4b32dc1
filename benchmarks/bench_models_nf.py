"""Posterior sampling speed of the two-branch RealNVP (``FlowPosterior``, the paper's
architecture: 12 coupling layers per flow, width 256, nine targets).

Draws 1000 samples per object for batches of objects, photometry-only and image+photometry
(64x64 gri cutouts through the frozen VAE encoder), with ``torch.set_num_threads(--threads)``,
and prints posterior samples per second (and objects per second). Untrained weights: the cost
of sampling does not depend on them.

    python benchmarks/bench_models_nf.py                  # 4 batches of 64 objects
    python benchmarks/bench_models_nf.py --quick          # seconds; what the tests run
    python benchmarks/bench_models_nf.py --threads 2 --batch 128
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic_batch(n: int, size: int, seed: int = 0) -> dict:
    """n galaxy rows with photometry, every NF target and gri cutouts (Gaussian blobs)."""
    from raygal.schema import MAG_COLUMNS, NF_CORE_TARGETS, NF_LINE_TARGETS

    rng = np.random.default_rng(seed)
    b = {"objid": np.arange(n, dtype=np.int64), "flags": np.zeros(n, np.int32)}
    base = 17.0 + rng.normal(0, 0.7, n)
    for j, c in enumerate(MAG_COLUMNS):
        b[c] = (base + 0.4 * (2 - j) + rng.normal(0, 0.2, n)).astype(np.float32)
    for t in NF_CORE_TARGETS + ("oh12",):
        b[t] = rng.normal(0.0, 1.0, n).astype(np.float32)
    for t in NF_LINE_TARGETS:
        b[t] = np.exp(rng.normal(3, 1, n)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    w = rng.uniform(3, 8, (n, 1, 1, 1))
    img = (np.exp(-(xx ** 2 + yy ** 2)[None, None] / (2 * w ** 2))
           * rng.uniform(0.5, 2, (n, 3, 1, 1)))
    b["cutout"] = (img + rng.normal(0, 0.05, img.shape)).astype(np.float32)
    return b


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small batch per variant")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--batch", type=int, default=64, help="objects per batch")
    p.add_argument("--batches", type=int, default=4, help="timed batches per variant")
    p.add_argument("--samples", type=int, default=1000, help="samples per object")
    p.add_argument("--size", type=int, default=64, help="cutout size (pixels)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.batches = 4, 1

    import torch

    from raygal.inputs import StatsAccumulator
    from raygal.models.nf import FlowPosterior

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = synthetic_batch(args.batch * args.batches, args.size)
    stats = StatsAccumulator().update(data).finalize()
    results = {"threads": args.threads, "samples_per_object": args.samples,
               "batch": args.batch, "quick": args.quick}
    for inputs in ("phot", "image+phot"):
        model = FlowPosterior(None, inputs, stats,
                              {"image_shape": [3, args.size, args.size]}
                              if inputs == "image+phot" else {})
        model.eval()
        warm = {k: v[:1] for k, v in data.items()}
        model.sample(warm, args.samples, seed=0)
        t0 = time.perf_counter()
        for i in range(args.batches):
            sl = slice(i * args.batch, (i + 1) * args.batch)
            model.sample({k: v[sl] for k, v in data.items()}, args.samples, seed=i)
        dt = time.perf_counter() - t0
        n_obj = args.batch * args.batches
        r = {"objects": n_obj, "seconds": dt, "objects_per_s": n_obj / dt,
             "samples_per_s": n_obj * args.samples / dt,
             "parameters": sum(q.numel() for q in model.parameters())}
        results[inputs] = r
        print(f"FlowPosterior {inputs:>10}: {r['samples_per_s']:10.0f} samples/s "
              f"({r['objects_per_s']:.1f} objects/s, {args.samples} samples each, "
              f"{args.threads} thread(s), {r['parameters'] / 1e6:.1f} M parameters)")
    return results


if __name__ == "__main__":
    main()
