"""The training benchmark (benchmarks/bench_train.py) runs end to end in its quick mode: a plain
PyTorch loop, Ray Train on 1 and on 2 workers. Figures are only checked to be positive numbers:
timings on a shared 2-core machine are not asserted."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Two short Ray Train fits: about a minute on an idle 2-core machine, three on a loaded one.
pytestmark = pytest.mark.timeout(600)


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_train",
                                                  REPO / "benchmarks" / "bench_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) \
        and x > 0


def test_quick_benchmark_reports_positive_figures(ray_local, tmp_path):
    res = _load_bench().main(["--quick", "--workdir", str(tmp_path)])
    for key in ("plain_samples_per_s", "ray1_samples_per_s", "ray2_samples_per_s",
                "speedup_2_workers", "plain_wall_s", "ray1_wall_s", "ray2_wall_s",
                "compute_rows_per_s", "plain_data_rows_per_s", "ray_data_rows_per_s"):
        assert _positive(res[key]), (key, res[key])
    assert isinstance(res["ray_overhead"], float) and math.isfinite(res["ray_overhead"])
    for key in ("plain_epoch_rates", "ray1_epoch_rates", "ray2_epoch_rates"):
        assert len(res[key]) == 2 and all(_positive(x) for x in res[key]), (key, res[key])
    # the same rows in every case: the plain loop applies the trainer's filters and split
    assert res["train_rows"] == res["ray_train_rows"] > 0
    assert res["model"] == "gaussian" and res["inputs"] == "phot"
    # Ray was started by the fixture, so the benchmark must leave it running
    assert ray_local.is_initialized()
    # and its scratch folder is cleaned up
    assert not list(tmp_path.iterdir())
