"""Run every benchmark (``make bench``); ``--quick`` runs each in its quick mode.

Each script is also runnable on its own: see its docstring for what it measures."""
from __future__ import annotations

import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BENCHMARKS = ("bench_sim", "bench_stream", "bench_models_nf", "bench_models_cfm",
              "bench_train", "bench_infer", "bench_scale", "bench_nodes")


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    results = {}
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        mod = importlib.import_module(name)
        results[name] = mod.main(["--quick"] if quick else [])
    out = os.environ.get("RAYGAL_BENCH_JSON")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
