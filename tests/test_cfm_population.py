"""The CFM on every kind of galaxy: trained on a mixed mock survey (star-forming and quenched
galaxies, photometry only; ``raygal.sim``), it learns its core targets from all of them and
stays calibrated on the quenched ones, whose metallicity is never measured.

The data, training (AdamW, one-cycle, best validation weights) and per-population metrics are
those of ``benchmarks/bench_cfm_population.py``, which measures the same at the paper's sizes.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from raygal.inputs import StatsAccumulator
from raygal.models import load_posterior
from raygal.models.cfm import FlowMatchingPosterior
from raygal.schema import CFM_TARGETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
CORE = ("log_mstar", "log_sfr", "dn4000", "av")


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_cfm_population", REPO / "benchmarks" / "bench_cfm_population.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def mock():
    """10,000 mock galaxies: 60 % to train, 10 % to validate, 30 % (~3,000) to test."""
    return bench.mock_split(10000, seed=3, test_fraction=0.3)


@pytest.fixture(scope="module")
def trained(mock):
    """A small CFM (velocity MLP 3 x 128) trained for 1500 steps of 256 on every usable
    training galaxy (~1-2 min on a busy core)."""
    train_rows = bench.usable(mock["train"][0])
    val_rows = bench.usable(mock["val"][0])
    stats = StatsAccumulator(CFM_TARGETS).update(train_rows).finalize()
    torch.manual_seed(0)
    post = FlowMatchingPosterior(CFM_TARGETS, "phot", stats,
                                 {"hidden": 128, "solver": "midpoint-10"})
    fit = bench.train(post, train_rows, val_rows, steps=1500, batch_size=256, lr=2e-3)
    return post, train_rows, fit


#: Posterior samples per test galaxy.
SAMPLES = 100


def expected_coverage(level: float, n: int = SAMPLES) -> float:
    """Coverage a calibrated posterior gets from the interval between the linearly
    interpolated sample quantiles of n draws (the truth is exchangeable with them):
    ((n - 1) level + 1) / (n + 1), e.g. 67.6 % and 94.1 % for 68 % and 95 % with n = 100."""
    return ((n - 1) * level + 1) / (n + 1)


@pytest.fixture(scope="module")
def metrics(mock, trained):
    """Posterior summaries (``SAMPLES`` draws) of every test galaxy, and their metrics per
    population."""
    post, *_ = trained
    rows, quenched = mock["test"]
    return bench.evaluate(post, rows, quenched, samples=SAMPLES, solver=None, seed=0)


@pytest.mark.slow
def test_mock_mixes_populations(mock):
    """The training rows mix both populations; most lack a metallicity."""
    rows, quenched = mock["train"]
    assert 0.35 < quenched.mean() < 0.55
    has_oh12 = np.isfinite(np.asarray(rows["oh12"], np.float64))
    assert 0.3 < has_oh12.mean() < 0.6
    assert has_oh12[quenched].mean() < 0.01


@pytest.mark.slow
def test_core_learnt_from_every_galaxy(trained):
    """Every usable training galaxy is used, those without a metallicity too (they teach the
    core field and the detectability classifier)."""
    post, train_rows, fit = trained
    assert fit["rows"] == len(train_rows["objid"])
    assert post.targets == CORE + ("oh12",) and post.config["metallicity"] is True
    assert np.isfinite(fit["best_val_loss"])


@pytest.mark.slow
def test_detectability_on_the_mock(metrics):
    """'oh12 measurable' from photometry: the paper's NF reaches ~84 % accuracy on SDSS;
    quenched galaxies get a low probability."""
    d = metrics["detect"]
    assert d["accuracy"] > 0.8 and d["mean_prob_quenched"] < 0.2, d


@pytest.mark.slow
def test_calibrated_on_quenched_galaxies(mock, metrics):
    """68 % / 95 % coverage of every core target within 6 / 4 points of what a calibrated
    posterior gets from 100 samples (``expected_coverage``) on the ~1,300 quenched test
    galaxies and on all ~3,000 (binomial errors on the quenched ones: 1.3 / 0.6 points; this
    small model was measured within 4 / 3). The metallicity is checked where it is measured.
    Every test row is accounted for: 'ok', or (a handful, < 0.5 %) 'out_of_domain' outside the
    training photometry's range. (The joint field of the paper, trained the same
    way, covers 5-38 % / 25-65 % of the quenched galaxies' SFR, Dn4000 and A_V.)"""
    rows, quenched = mock["test"]
    status = metrics["status"]
    assert set(status) <= {"ok", "out_of_domain"} and sum(status.values()) == len(quenched)
    assert status.get("out_of_domain", 0) < 0.005 * len(quenched), status
    m = metrics["metrics"]
    assert int(quenched.sum()) - 15 <= m["quenched"]["log_mstar"]["n"] <= int(quenched.sum())
    assert m["quenched"]["log_mstar"]["n"] > 1000
    c68, c95 = expected_coverage(0.68), expected_coverage(0.95)
    checks = [(pop, t) for pop in ("quenched", "all") for t in CORE]
    for pop, t in checks + [("star-forming", "oh12")]:
        c = m[pop][t]
        assert abs(c["coverage68"] - c68) < 0.06, (pop, t, c)
        assert abs(c["coverage95"] - c95) < 0.04, (pop, t, c)


@pytest.mark.slow
def test_quenched_galaxies_are_predicted(metrics):
    """The posterior means of the quenched galaxies carry information: R^2 > 0.7 over all test
    galaxies for every core target, and > 0 within the quenched population for stellar
    mass, SFR and Dn(4000) (A_V of quenched galaxies spans too narrow a range for R^2 within
    them to mean much)."""
    m = metrics["metrics"]
    for t in CORE:
        assert m["all"][t]["r2"] > 0.7, (t, m["all"][t])
    for t in ("log_mstar", "log_sfr", "dn4000"):
        assert m["quenched"][t]["r2"] > 0.0, (t, m["quenched"][t])


def test_benchmark_quick(tmp_path):
    """The benchmark runs end to end in its quick mode, accounts for every test row, and its
    saved models load."""
    threads = torch.get_num_threads()
    r = bench.main(["--quick", "--save", str(tmp_path / "models")])
    assert torch.get_num_threads() == threads
    assert list(r["models"]) == list(bench.MODELS)
    for kind, res in r["models"].items():
        assert sum(res["status"].values()) == r["test_rows"], kind
        assert set(res["metrics"]) == set(bench.POPULATIONS)
        assert set(res["metrics"]["all"]) == set(CFM_TARGETS)
        assert ("detect" in res) == (kind != "cfm-joint")
        assert load_posterior(str(tmp_path / "models" / kind)).kind == kind.split("-")[0]
