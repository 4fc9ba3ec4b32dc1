"""Posteriors per second per CPU core through the whole batch-inference pipeline, beside the
model-only rate.

For each model (the NF with images, and the CFM with images under several ODE solvers), on
64x64 mock galaxies with 1000 posterior samples each:
- model-only: ``Posterior.summarize`` on in-memory batches in this process, torch on 1 thread;
- pipeline: ``raygal.infer.infer`` (Ray Data read -> actor pool of 1 actor on 1 CPU with 1
  torch thread -> per-shard Parquet writes), so both figures are per core.
The pipeline rate is the steady one, counted after the first result comes back (actor
start-up and model loading are reported apart, as the wall rate). The ratio pipeline /
model-only is the share of the model's speed the pipeline keeps (goal
>= 80 %). Models are untrained but full-size: speed does not depend on the weights.

    python benchmarks/bench_infer.py            # 64 galaxies per model (RK4-100: 16)
    python benchmarks/bench_infer.py --quick    # seconds; what the tests run
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_models(tmp: str, image_size: int, quick: bool) -> dict[str, tuple[str, str | None]]:
    """{label: (model URI, solver)} of untrained, full-size models."""
    import torch

    from raygal.pipelines import stats_for
    from raygal.models.cfm import FlowMatchingPosterior
    from raygal.models.nf import FlowPosterior
    from raygal.models.vae import VAE
    from raygal.schema import CFM_TARGETS, NF_CORE_TARGETS, NF_LINE_TARGETS

    torch.manual_seed(0)
    stats = stats_for(os.path.join(tmp, "data"))
    shape = [3, image_size, image_size]
    small = {"coupling_layers": 2, "hidden": 32, "representation": 32} if quick else {}
    nf = FlowPosterior.from_vae(VAE({"image_shape": shape}),
                                NF_CORE_TARGETS + ("oh12",) + NF_LINE_TARGETS, "image+phot",
                                stats, {"image_shape": shape, **small})
    nf.save(os.path.join(tmp, "nf"))
    cfm = FlowMatchingPosterior(CFM_TARGETS, "image+phot", stats,
                                {"image_shape": shape, **({"hidden": 32} if quick else {})})
    cfm.save(os.path.join(tmp, "cfm"))
    out = {"NF image+phot": (os.path.join(tmp, "nf"), None)}
    solvers = ["euler-4"] if quick else ["rk4-10", "midpoint-10", "rk4-100"]
    for s in solvers:
        out[f"CFM image+phot {s}"] = (os.path.join(tmp, "cfm"), s)
    return out


def model_only_rate(uri: str, solver: str | None, batch, samples: int) -> float:
    import torch

    from raygal.infer import set_solver
    from raygal.models import load_posterior

    torch.set_num_threads(1)
    post = load_posterior(uri)
    if solver:
        set_solver(post, solver)
    post.summarize(batch.slice(0, 2), samples, seed=0)        # warm-up
    t0 = time.perf_counter()
    step = 16
    for i in range(0, batch.num_rows, step):
        post.summarize(batch.slice(i, step), samples, seed=i)
    return batch.num_rows / (time.perf_counter() - t0)


def pipeline_rate(uri: str, solver: str | None, data: str, out: str, samples: int
                  ) -> tuple[float, float]:
    """(steady-state rate after the first result, wall rate including start-up)."""
    from raygal.infer import infer

    shutil.rmtree(out, ignore_errors=True)
    s = infer(uri, data, out, samples=samples, solver=solver, actors=1, cpus_per_actor=1.0,
              batch_size=16, progress_every_s=1e9)
    assert s["complete"] and s["output_rows"] == s["input_rows"]
    return s["steady_posteriors_per_s"] or s["posteriors_per_s"], s["posteriors_per_s"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--galaxies", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.galaxies, args.samples = 16, 100
    import ray

    from raygal.shards import read_table
    from raygal.runtime import init_ray
    from raygal.sim import simulate

    tmp = tempfile.mkdtemp(prefix="raygal-bench-infer-")
    started = False
    results = {}
    try:
        simulate(args.galaxies, os.path.join(tmp, "data"), image_size=args.image_size,
                 seed=5, rows_per_shard=max(8, args.galaxies // 4))
        models = build_models(tmp, args.image_size, args.quick)
        batch = read_table(os.path.join(tmp, "data"))
        if not ray.is_initialized():
            init_ray("local")
            started = True
        for label, (uri, solver) in models.items():
            n = args.galaxies
            data = os.path.join(tmp, "data")
            if solver == "rk4-100" and not args.quick:
                n = max(8, args.galaxies // 4)     # the paper's solver: ~1 galaxy/s/core
                data = os.path.join(tmp, "data-small")
                if not os.path.exists(data):
                    simulate(n, data, image_size=args.image_size, seed=5, rows_per_shard=n // 2)
            model = model_only_rate(uri, solver, batch.slice(0, n), args.samples)
            pipe, wall = pipeline_rate(uri, solver, data, os.path.join(tmp, "out"),
                                       args.samples)
            results[label] = {"model_only_per_s": model, "pipeline_per_s": pipe,
                              "pipeline_wall_per_s": wall, "ratio": pipe / model,
                              "galaxies": n}
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"posteriors per second per core ({args.samples} samples each, "
          f"{args.image_size}x{args.image_size} gri, 1 torch thread):")
    print(f"  {'model':<26} {'model-only':>11} {'pipeline':>9} {'kept':>6} "
          f"{'with start-up':>14}")
    for label, r in results.items():
        print(f"  {label:<26} {r['model_only_per_s']:>11.2f} {r['pipeline_per_s']:>9.2f} "
              f"{r['ratio']:>6.0%} {r['pipeline_wall_per_s']:>14.2f}")
    print("  (goal: the pipeline keeps >= 80 % of the model-only rate)")
    return results


if __name__ == "__main__":
    main()
