"""The training benchmark (benchmarks/bench_train.py) runs end to end in its quick mode: the
training loop without Ray workers, Ray Train on 1 and on 2 workers. Speeds on a shared 2-core
machine are not asserted; the figures are checked to be sane: positive, finite, consistent with
each other and with the rows trained, and within what the hardware allows."""
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
    # about 80 % of the rows are in the training split (hash of objid)
    assert 0.6 * res["rows"] <= res["train_rows"] <= 0.95 * res["rows"]
    # the summary figures are the ones the per-epoch rates give (mean after the warm-up epoch)
    for case in ("plain", "ray1", "ray2"):
        rates = res[f"{case}_epoch_rates"]
        assert res[f"{case}_samples_per_s"] == pytest.approx(sum(rates[1:]) / len(rates[1:]))
        # an epoch's training time is part of the run's wall time
        assert res[f"{case}_wall_s"] > res["train_rows"] / max(rates)
    assert res["ray_overhead"] == pytest.approx(
        1 - res["ray1_samples_per_s"] / res["plain_samples_per_s"])
    assert res["ray_overhead"] < 1
    assert res["speedup_2_workers"] == pytest.approx(
        res["ray2_samples_per_s"] / res["ray1_samples_per_s"])
    # two workers on two cores: not faster than about twice one worker
    assert res["speedup_2_workers"] < 3
    # no figure beyond what one core can do for this model (a step of a batch of 64 takes
    # far more than 10 microseconds)
    for key in ("plain_samples_per_s", "ray1_samples_per_s", "ray2_samples_per_s",
                "compute_rows_per_s"):
        assert res[key] < 64 / 10e-6, (key, res[key])
    assert res["compute_step_s"] == pytest.approx(res["batch_size"] / res["compute_rows_per_s"])
    assert res["model"] == "gaussian" and res["inputs"] == "phot"
    # Ray was started by the fixture, so the benchmark must leave it running
    assert ray_local.is_initialized()
    # and its scratch folder is cleaned up
    assert not list(tmp_path.iterdir())
