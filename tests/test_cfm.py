"""Conditional flow matching posterior (raygal.models.cfm): shapes, exact densities,
calibration on a problem with a closed-form posterior, the metallicity branch (chain rule,
detectability, missing metallicities), solvers and their choice, persistence, bad inputs.

Properties, not pinned outputs (zuko / sbi style). Small networks and few ODE steps wherever a
property does not depend on them; the paper's sizes are exercised by the benchmark smoke run.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from raygal.inputs import NormStats, StatsAccumulator
from raygal.models import load_posterior
from raygal.models import read_model_description
from raygal.models.cfm import (SOLVER_CANDIDATES, FlowMatchingPosterior, Solver, VelocityField,
                               choose_solver)
from raygal.models.nf import DETECT_COLUMN
from raygal.models.encoders import ConvEncoder
from raygal.schema import CFM_TARGETS, MAG_COLUMNS
from raygal.toy import linear_gaussian

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
SMALL = {"hidden": 32, "layers": 3, "image_features": 16, "encoder_width": 4}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def make_stats(targets, image: bool = False) -> NormStats:
    return NormStats(target_mean={t: 0.0 for t in targets},
                     target_std={t: 1.0 for t in targets},
                     cutout_scale=[1.0, 1.0, 1.0] if image else None)


def make_batch(n: int, targets=(), size: int | None = None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    b = {"objid": np.arange(n, dtype=np.int64), "flags": np.zeros(n, np.int32)}
    for c in MAG_COLUMNS:
        b[c] = (18 + rng.normal(0, 1, n)).astype(np.float32)
    for t in targets:
        b[t] = rng.normal(0, 1, n).astype(np.float32)
    if size:
        b["cutout"] = rng.normal(0, 1, (n, 3, size, size)).astype(np.float32)
    return b


def repeat_row(batch: dict, row: int, n: int) -> dict:
    return {k: np.repeat(np.asarray(v)[row:row + 1], n, axis=0) for k, v in batch.items()}


def train(post, data: dict, steps: int, batch_size: int, lr: float, seed: int = 0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(post.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    n = len(data["objid"])
    post.train()
    for i in range(steps):
        j = (i * batch_size) % n
        out = post.loss({k: v[j:j + batch_size] for k, v in data.items()})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
    return post.eval()


# ----------------------------------------------------------------------------------------------
# module fixtures: briefly trained models
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    """A photometry-only CFM trained on the 2-d linear-Gaussian problem (~5-10 s)."""
    targets = ("log_mstar", "log_sfr")
    problem = linear_gaussian(targets)
    stats = StatsAccumulator(targets).update(problem.simulate(20000, seed=1)[0]).finalize()
    torch.manual_seed(0)
    post = FlowMatchingPosterior(targets, "phot", stats, {"hidden": 128})
    data, _ = problem.simulate(2000 * 512, seed=2)
    train(post, data, steps=2000, batch_size=512, lr=3e-3)
    return problem, post


@pytest.fixture(scope="module")
def toy_reference(toy):
    """Posterior samples [B, n, D] (model space) of 100 test objects with the default solver,
    the paper's RK4-100, and the truths."""
    problem, post = toy
    assert post.solver == "rk4-100"
    test, truth = problem.simulate(100, seed=3)
    samples = post.sample(test, 200, space="model", seed=11).numpy()
    return test, truth, samples


@pytest.fixture(scope="module")
def bimodal():
    """A 1-d CFM trained on a bimodal target that the photometry says nothing about:
    log_mstar = 10 +- 1 (equal odds) + N(0, 0.25^2)."""
    rng = np.random.default_rng(5)
    n = 1500 * 512
    data = make_batch(n, seed=6)
    data["log_mstar"] = (10 + rng.choice([-1.0, 1.0], n) + 0.25 * rng.normal(size=n)
                         ).astype(np.float32)
    stats = StatsAccumulator(["log_mstar"]).update(data).finalize()
    torch.manual_seed(0)
    post = FlowMatchingPosterior(["log_mstar"], "phot", stats,
                                 {"hidden": 64, "solver": "rk4-20"})
    return train(post, data, steps=1500, batch_size=512, lr=3e-3)


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,method,steps,evals", [
    ("rk4-100", "rk4", 100, 400), ("rk4-10", "rk4", 10, 40), ("midpoint-10", "midpoint", 10, 20),
    ("euler-20", "euler", 20, 20), ("dopri5", "dopri5", None, None), ("RK4-20", "rk4", 20, 80)])
def test_solver_names(name, method, steps, evals):
    s = Solver.parse(name)
    assert (s.method, s.steps, s.evaluations) == (method, steps, evals)
    assert Solver.parse(str(s)) == s


@pytest.mark.parametrize("name", ["rk4", "rk5-10", "euler-0", "euler-x", "dopri5-10", "", "ode"])
def test_solver_names_rejected(name):
    with pytest.raises(ValueError, match="unknown ODE solver"):
        Solver.parse(name)


@pytest.mark.parametrize("size", [32, 64, 100, 160])
def test_encoder_sizes(size):
    enc = ConvEncoder(3, 256, width=4)
    assert enc(torch.randn(2, 3, size, size)).shape == (2, 256)


def test_encoder_rejects_bad_input():
    enc = ConvEncoder(3, 8, width=4)
    with pytest.raises(ValueError, match="too small"):
        enc(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="expected images"):
        enc(torch.zeros(1, 1, 64, 64))


def test_velocity_context_bias_equals_concatenation():
    """The split first layer is exactly the MLP on [t; theta; c]."""
    torch.manual_seed(0)
    v = VelocityField(dim=3, context_features=7, hidden=16, layers=3)
    t, theta, c = torch.rand(10, 1), torch.randn(10, 3), torch.randn(10, 7)
    full = v.body(v.act(v.input(torch.cat([t, theta, c], -1))))
    torch.testing.assert_close(v(t, theta, v.context_bias(c)), full)


# ----------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("inputs", ["image+phot", "phot"])
@pytest.mark.parametrize("D", [1, 5])
@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("n", [1, 10])
def test_shapes(inputs, D, B, n):
    targets = CFM_TARGETS[:D]
    image = inputs == "image+phot"
    torch.manual_seed(0)
    post = FlowMatchingPosterior(targets, inputs, make_stats(targets, image),
                                 dict(SMALL, solver="rk4-4"))
    batch = make_batch(B, targets, size=32 if image else None)
    s = post.sample(batch, n, seed=0)
    assert s.shape == (B, n, D) and torch.isfinite(s).all()
    for space in ("model", "standardised"):
        assert post.sample(batch, n, space=space, seed=0).shape == (B, n, D)
    lp = post.log_prob(s[:, 0], batch, space="physical")
    assert lp.shape == (B,) and torch.isfinite(lp).all()
    table = post.summarize(batch, n, seed=0)
    assert set(table) == set(post.summary_columns())
    assert all(len(v) == B for v in table.values())
    assert (table["status"] == "ok").all()
    assert np.isfinite(table[f"{targets[0]}_q50"]).all()


@pytest.mark.parametrize("metallicity", [False, True])
@pytest.mark.parametrize("inputs", ["image+phot", "phot"])
def test_loss_reaches_every_parameter(inputs, metallicity):
    targets = CFM_TARGETS
    image = inputs == "image+phot"
    # PyTorch's initialisation: under image_init='zero' the encoder's gradient is zero until
    # the first step moves the image columns off zero (tests/test_image_init.py).
    post = FlowMatchingPosterior(targets, inputs, make_stats(targets, image),
                                 dict(SMALL, metallicity=metallicity, image_init="default"))
    out = post.loss(make_batch(16, targets, size=32 if image else None))
    if metallicity:
        assert set(out) == {"loss", "mse", "mse_core", "mse_oh12", "bce"}
        assert out["loss"].ndim == 0
    else:
        assert set(out) == {"loss", "mse"} and out["loss"].ndim == 0
    out["loss"].backward()
    for name, p in post.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_loss_without_complete_rows_is_zero_with_grad():
    targets = ("log_mstar", "log_sfr")
    post = FlowMatchingPosterior(targets, "phot", make_stats(targets), SMALL)
    batch = make_batch(8, targets)
    batch["log_sfr"][:] = np.nan
    out = post.loss(batch)
    assert float(out["mse"]) == 0.0 and out["loss"].requires_grad
    out["loss"].backward()
    assert all(p.grad is not None for p in post.parameters())


def test_loss_ignores_incomplete_rows():
    """The joint model learns from complete rows only: what the other targets of an
    incomplete row hold does not change the loss."""
    targets = ("log_mstar", "log_sfr")
    post = FlowMatchingPosterior(targets, "phot", make_stats(targets), SMALL)
    batch = make_batch(32, targets)
    batch["log_sfr"][::2] = np.nan
    other = {k: v.copy() for k, v in batch.items()}
    other["log_mstar"][::2] = 5.0
    torch.manual_seed(1)
    a = post.loss(batch)["loss"]
    torch.manual_seed(1)
    b = post.loss(other)["loss"]
    assert torch.isfinite(a) and a > 0
    assert torch.equal(a, b)


@pytest.mark.parametrize("targets", [CFM_TARGETS[:2], CFM_TARGETS])
def test_image_encoded_once_per_object(targets):
    """The CNN runs once per object, not once per trajectory or solver step (nor once per
    field with the metallicity branch)."""
    post = FlowMatchingPosterior(targets, "image+phot", make_stats(targets, True),
                                 dict(SMALL, solver="rk4-10"))
    calls = []
    post.estimator.encoder.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    batch = make_batch(3, targets, size=32)
    post.sample(batch, 50, seed=0)
    assert calls == [3]
    calls.clear()
    post.log_prob(np.zeros((3, len(targets))), batch)
    assert calls == [3]


def test_with_solver_and_attribute():
    targets = ("log_mstar",)
    post = FlowMatchingPosterior(targets, "phot", make_stats(targets), SMALL)
    assert post.solver == "rk4-100" and post.config["solver"] == "rk4-100"
    batch = make_batch(2)
    with post.with_solver("euler-5", rtol=1e-3):
        assert post.solver == "euler-5" and post.config["rtol"] == 1e-3
        post.sample(batch, 4, seed=0)
        assert post.estimator.last_nfe == 5
    assert post.solver == "rk4-100" and post.config["rtol"] == 1e-5
    post.solver = "midpoint-3"
    post.sample(batch, 4, seed=0)
    assert post.estimator.last_nfe == 6
    with pytest.raises(ValueError, match="unknown ODE solver"):
        post.solver = "rk4"
    with pytest.raises(ValueError, match="unknown ODE solver"):
        FlowMatchingPosterior(targets, "phot", make_stats(targets), {"solver": "leapfrog-5"})


# ----------------------------------------------------------------------------------------------
# the metallicity branch: targets and what each row teaches
# ----------------------------------------------------------------------------------------------

def test_targets_ordered_core_then_oh12():
    post = FlowMatchingPosterior(CFM_TARGETS, "phot", make_stats(CFM_TARGETS), SMALL)
    assert post.targets == ("log_mstar", "log_sfr", "dn4000", "av", "oh12")
    assert post.config["metallicity"] is True
    assert post.estimator.core_targets == ("log_mstar", "log_sfr", "dn4000", "av")
    assert post.extra_summary_columns() == (DETECT_COLUMN,)
    assert post.summary_columns()[-1] == DETECT_COLUMN
    # metallicity=False: the paper's joint field, targets as given, no classifier
    joint = FlowMatchingPosterior(CFM_TARGETS, "phot", make_stats(CFM_TARGETS),
                                  dict(SMALL, metallicity=False))
    assert joint.targets == CFM_TARGETS and joint.extra_summary_columns() == ()
    assert not hasattr(joint.estimator, "oh12_velocity")
    # oh12 alone is a 1-d joint model; the branch needs oh12 and a core
    alone = FlowMatchingPosterior(("oh12",), "phot", make_stats(("oh12",)), SMALL)
    assert alone.config["metallicity"] is False
    for targets in [("log_mstar",), ("oh12",)]:
        with pytest.raises(ValueError, match="metallicity"):
            FlowMatchingPosterior(targets, "phot", make_stats(targets),
                                  dict(SMALL, metallicity=True))


def _losses(post, batch, seed=1):
    torch.manual_seed(seed)
    return post.loss(batch)


def test_missing_metallicity_is_masked_not_imputed():
    """Rows without oh12 teach the core field and the classifier, never the oh12 field; rows
    missing a core target teach neither field; a batch with no oh12 at all still reaches
    every parameter (zero terms in the graph, as DDP needs)."""
    targets = ("log_mstar", "log_sfr", "oh12")
    post = FlowMatchingPosterior(targets, "phot", make_stats(targets), SMALL)
    batch = make_batch(32, targets)
    batch["oh12"][::2] = np.nan
    batch["log_sfr"][1::4] = np.nan
    a = _losses(post, batch)
    assert all(torch.isfinite(v) and v > 0 for v in a.values())

    other = {k: v.copy() for k, v in batch.items()}
    other["log_mstar"][::2] += 3.0                 # the core of rows without oh12 ...
    b = _losses(post, other)
    assert not torch.equal(a["mse_core"], b["mse_core"])          # ... teaches the core field
    assert torch.equal(a["mse_oh12"], b["mse_oh12"]) and torch.equal(a["bce"], b["bce"])

    other = {k: v.copy() for k, v in batch.items()}
    other["oh12"][1::4] += 1.0                     # oh12 of rows missing log_sfr
    other["log_mstar"][1::4] += 3.0
    b = _losses(post, other)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    batch["oh12"][:] = np.nan
    out = _losses(post, batch)
    assert float(out["mse_oh12"]) == 0.0 and float(out["bce"]) > 0
    assert float(out["mse_core"]) > 0
    out["loss"].backward()
    for name, p in post.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_validation_loss_fixes_every_draw():
    """In eval mode the loss draws its noise (both fields) from the rows' ids: the same rows
    give the same losses, whatever the global random state."""
    targets = CFM_TARGETS
    post = FlowMatchingPosterior(targets, "phot", make_stats(targets), SMALL).eval()
    batch = make_batch(64, targets)
    batch["oh12"][::3] = np.nan
    a, b = _losses(post, batch, seed=1), _losses(post, batch, seed=2)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    post.train()
    assert not torch.equal(_losses(post, batch, seed=1)["mse_oh12"],
                           _losses(post, batch, seed=2)["mse_oh12"])


# ----------------------------------------------------------------------------------------------
# exact densities
# ----------------------------------------------------------------------------------------------

def test_log_prob_normalised_1d(bimodal):
    """int q(theta | x) dtheta = 1 (standardised space, trained bimodal model, RK4-20)."""
    grid = np.linspace(-6, 6, 1201)
    batch = repeat_row(make_batch(1, seed=9), 0, len(grid))
    lp = bimodal.log_prob(grid[:, None], batch, space="standardised").numpy()
    integral = np.trapezoid(np.exp(lp), grid)
    assert abs(integral - 1) < 0.01, integral


def test_log_prob_normalised_2d():
    """int q = 1 in 2-d for a strongly non-Gaussian (random, amplified) velocity field."""
    torch.manual_seed(3)
    targets = ("log_mstar", "log_sfr")
    post = FlowMatchingPosterior(targets, "phot", make_stats(targets),
                                 {"hidden": 32, "solver": "rk4-20"})
    with torch.no_grad():
        post.estimator.velocity.body[-1].weight.mul_(8.0)
    g = np.linspace(-7, 7, 201)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    theta = np.stack([xx.ravel(), yy.ravel()], 1)
    batch = repeat_row(make_batch(1, seed=4), 0, len(theta))
    lp = post.log_prob(theta, batch, space="standardised").numpy()
    q = np.exp(lp).reshape(xx.shape)
    integral = np.trapezoid(np.trapezoid(q, g, axis=1), g)
    assert abs(integral - 1) < 0.01, integral
    # ... and it is not N(0, I) in disguise.
    log_normal = -0.5 * (theta ** 2).sum(1) - math.log(2 * math.pi)
    core = (theta ** 2).sum(1) < 4
    assert np.abs(lp - log_normal)[core].max() > 0.5


def test_chain_log_prob_normalised_2d():
    """log q(core) + log q(oh12 | core) is a normalised density over (core, oh12), for random
    amplified fields whose oh12 part depends strongly on the core value."""
    torch.manual_seed(3)
    targets = ("log_mstar", "oh12")
    post = FlowMatchingPosterior(targets, "phot", make_stats(targets),
                                 {"hidden": 32, "oh12_hidden": 32, "solver": "rk4-20"})
    est = post.estimator
    with torch.no_grad():
        est.velocity.body[-1].weight.mul_(8.0)
        est.oh12_velocity.body[-1].weight.mul_(8.0)
        est.oh12_velocity.input.weight[:, -1].normal_(0.0, 4.0)   # the core value's weights
    g = np.linspace(-7, 7, 201)
    xx, yy = np.meshgrid(g, g, indexing="ij")                 # log_mstar, oh12
    theta = np.stack([xx.ravel(), yy.ravel()], 1)
    batch = repeat_row(make_batch(1, seed=4), 0, len(theta))
    lp = post.log_prob(theta, batch, space="standardised").numpy()
    q = np.exp(lp).reshape(xx.shape)
    integral = np.trapezoid(np.trapezoid(q, g, axis=1), g)
    assert abs(integral - 1) < 0.01, integral
    # q(oh12 | core) differs between core values: not a product of marginals
    cond = q / np.trapezoid(q, g, axis=1)[:, None]
    i, j = np.searchsorted(g, [-1.0, 1.0])
    assert 0.5 * np.trapezoid(np.abs(cond[i] - cond[j]), g) > 0.15


def test_log_prob_matches_samples(bimodal):
    """Histogram of 20k samples = exp(log_prob): total variation < 0.04 (Monte Carlo noise
    alone gives ~0.02), and the model did learn the two modes."""
    batch = make_batch(1, seed=9)
    s = bimodal.sample(batch, 20000, space="standardised", seed=2).numpy().ravel()
    edges = np.linspace(-4, 4, 81)
    hist, _ = np.histogram(s, edges, density=False)
    hist = hist / len(s) / np.diff(edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    lp = bimodal.log_prob(centres[:, None], repeat_row(batch, 0, len(centres)),
                          space="standardised").numpy()
    tv = 0.5 * np.abs(hist - np.exp(lp)).sum() * (edges[1] - edges[0])
    assert tv < 0.04, tv
    mode = 1 / bimodal.stats.target_std["log_mstar"]          # +-1 dex, standardised
    q = np.exp(bimodal.log_prob(np.array([[-mode], [0.0], [mode]]), repeat_row(batch, 0, 3),
                                space="standardised").numpy())
    assert q[1] < 0.3 * min(q[0], q[2]), q


def test_log_prob_spaces_consistent(toy):
    """Model-space density = standardised density / prod(std); physical adds the Jacobian
    (identity transforms here, so physical = model)."""
    problem, post = toy
    test, truth = problem.simulate(5, seed=7)
    with post.with_solver("rk4-10"):
        lm = post.log_prob(truth, test, space="model")
        z = (truth - post.stats.target_arrays(post.targets)[0]) / \
            post.stats.target_arrays(post.targets)[1]
        ls = post.log_prob(z, test, space="standardised")
        lph = post.log_prob(truth, test, space="physical")
    shift = float(np.log(post.stats.target_arrays(post.targets)[1]).sum())
    torch.testing.assert_close(lm, ls - shift, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(lph, lm)


# ----------------------------------------------------------------------------------------------
# calibration against a closed-form posterior
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_toy_posterior_matches_analytic(toy, toy_reference):
    """Briefly trained, sampled with RK4-100 (100 objects x 200 samples). Tolerances, in units
    of the analytic posterior std: mean bias < 0.1 per target, RMS mean error < 0.15 (Monte
    Carlo alone ~0.07); std ratio within 7 %; coverage of the truths within 5 (68 %) and 4 (95 %)
    points of the analytic posterior's own coverage on the same 200 object-targets (the
    paired difference; MC noise ~1.6 and ~1 point), and within 8 / 4 points of nominal."""
    problem, post = toy
    test, truth, s = toy_reference
    mu, sd = problem.post_mean(test), np.sqrt(np.diag(problem.post_cov))
    err = (s.mean(1) - mu) / sd
    assert (np.abs(err.mean(0)) < 0.1).all(), err.mean(0)
    assert (np.sqrt((err ** 2).mean(0)) < 0.15).all(), np.sqrt((err ** 2).mean(0))
    ratio = (s.std(1) / sd).mean(0)
    assert (np.abs(ratio - 1) < 0.07).all(), ratio
    z = np.abs(truth - mu) / sd
    for lo, hi, zq, tol, tol_nominal in ((0.16, 0.84, 0.9944579, 0.05, 0.08),
                                         (0.025, 0.975, 1.959964, 0.04, 0.04)):
        ql, qh = np.quantile(s, [lo, hi], axis=1)
        cov = ((truth >= ql) & (truth <= qh)).mean()
        cov_exact = (z <= zq).mean()
        assert abs(cov - cov_exact) < tol, (hi - lo, cov, cov_exact)
        assert abs(cov - (hi - lo)) < tol_nominal, (hi - lo, cov)


@pytest.mark.slow
def test_toy_joint_posterior_matches_analytic(toy, toy_reference):
    """The joint, not only the marginals (100 objects x 200 samples, RK4-100): the mean
    within-object correlation of the samples matches the analytic one (-0.31) within 0.1, and
    samples whitened by the analytic posterior covariance have unit covariance (every entry
    within 0.12 of I; Monte Carlo error ~0.02)."""
    problem, post = toy
    test, _, s = toy_reference
    mu, cov = problem.post_mean(test), problem.post_cov
    rho = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    corr = np.array([np.corrcoef(x[:, 0], x[:, 1])[0, 1] for x in s])
    assert abs(corr.mean() - rho) < 0.1, (corr.mean(), rho)
    white = np.linalg.solve(np.linalg.cholesky(cov), (s - mu[:, None]).reshape(-1, 2).T).T
    assert np.abs(np.cov(white.T) - np.eye(2)).max() < 0.12, np.cov(white.T)


#: Agreement with RK4-100 on the trained toy (same seed, hence the same base draws), in units
#: of the analytic posterior std: (max |mean difference|, max |std ratio - 1|). Euler-20 is
#: first order: it shrinks the posterior by ~5-8 % on this problem and gets a looser bound.
SOLVER_TOLERANCE = {"rk4-20": (0.01, 0.01), "rk4-10": (0.01, 0.01),
                    "midpoint-10": (0.02, 0.02), "dopri5": (0.01, 0.01),
                    "euler-20": (0.05, 0.12)}


@pytest.mark.slow
@pytest.mark.parametrize("solver", list(SOLVER_TOLERANCE))
def test_cheaper_solvers_agree_with_rk4_100(toy, toy_reference, solver):
    problem, post = toy
    test, _, ref = toy_reference
    sd = np.sqrt(np.diag(problem.post_cov))
    with post.with_solver(solver):
        s = post.sample(test, 200, space="model", seed=11).numpy()
    dmean = np.abs(s.mean(1) - ref.mean(1)).max(0) / sd
    dstd = np.abs(s.std(1).mean(0) / ref.std(1).mean(0) - 1)
    tol_mean, tol_std = SOLVER_TOLERANCE[solver]
    assert (dmean < tol_mean).all(), (solver, dmean)
    assert (dstd < tol_std).all(), (solver, dstd)


# ----------------------------------------------------------------------------------------------
# the metallicity branch on a closed-form problem: the chain rule and missing metallicities
# ----------------------------------------------------------------------------------------------

LG_TARGETS = ("log_mstar", "log_sfr", "oh12")
OH_SLOPE, OH_NOISE = 0.4, 0.03
#: Phi^-1(0.4): oh12 is missing in the 40 % of rows with the lowest posterior mean of log_sfr.
Z40 = -0.2533471


def lg_rows(problem, n: int, seed: int):
    """Linear-Gaussian rows over (log_mstar, log_sfr) plus oh12 = 8.8 + 0.4 (log_mstar - 10)
    + N(0, 0.03^2), measured only in the 60 % of rows with the highest analytic posterior mean
    of log_sfr: a label the photometry sets, as quenching does, so the rows without oh12 are
    not a random subset. Returns (rows, true (log_mstar, log_sfr, oh12) [n, 3], measured)."""
    b, theta = problem.simulate(n, seed)
    rng = np.random.default_rng(seed + 100)
    oh = 8.8 + OH_SLOPE * (theta[:, 0] - 10) + OH_NOISE * rng.standard_normal(n)
    sd_mean = math.sqrt(problem.s0[1] ** 2 - problem.post_cov[1, 1])
    measured = problem.post_mean(b)[:, 1] > problem.mu0[1] + Z40 * sd_mean
    b["oh12"] = np.where(measured, oh, np.nan).astype(np.float32)
    return b, np.column_stack([theta, oh]), measured


@pytest.fixture(scope="module")
def chain_toy():
    """(problem, a photometry-only CFM with the metallicity branch trained briefly on
    ``lg_rows``: 1500 steps of 256, ~2-3 min on a busy core). It samples with midpoint-10,
    which agrees with RK4-100 within 0.02 posterior std on such problems (above)."""
    problem = linear_gaussian(LG_TARGETS[:2])
    stats = StatsAccumulator(LG_TARGETS).update(lg_rows(problem, 20000, seed=1)[0]).finalize()
    torch.manual_seed(0)
    post = FlowMatchingPosterior(LG_TARGETS, "phot", stats,
                                 {"hidden": 128, "solver": "midpoint-10"})
    data, _, _ = lg_rows(problem, 1500 * 256, seed=2)
    train(post, data, steps=1500, batch_size=256, lr=3e-3)
    return problem, post


@pytest.fixture(scope="module")
def chain_summary(chain_toy):
    """(test rows, truths [600, 3], oh12 measured [600], summaries with 200 samples each)."""
    problem, post = chain_toy
    test, truth, measured = lg_rows(problem, 600, seed=3)
    return test, truth, measured, post.summarize(test, 200, seed=0, keep_samples=True)


@pytest.mark.slow
def test_detectability_classifier_learns_separable_label(chain_toy):
    problem, post = chain_toy
    test, _, measured = lg_rows(problem, 2000, seed=4)
    p = post.estimator.detect_prob(post.context(test)).detach().numpy()
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert np.mean((p > 0.5) == measured) > 0.95
    assert p[measured].mean() > 0.8 and p[~measured].mean() < 0.2


@pytest.mark.slow
def test_chain_log_prob_matches_analytic(chain_toy):
    """log q(core) + log q(oh12 | core) at the truths equals the analytic log density
    N(core; mu, Sigma) N(oh12; 8.8 + 0.4 (log_mstar - 10), 0.03^2): the mean difference
    estimates -KL(p || q) (measured about -0.02 nats), the median |difference| about 0.1."""
    problem, post = chain_toy
    test, truth, measured = lg_rows(problem, 300, seed=5)
    rows = np.flatnonzero(measured)
    sub = {k: v[rows] for k, v in test.items()}
    lq = post.log_prob(truth[rows], sub).numpy()
    d = truth[rows, :2] - problem.post_mean(sub)
    cov = problem.post_cov
    lp_core = (-0.5 * np.einsum("bi,ij,bj->b", d, np.linalg.inv(cov), d)
               - 0.5 * np.log(np.linalg.det(2 * np.pi * cov)))
    r = truth[rows, 2] - 8.8 - OH_SLOPE * (truth[rows, 0] - 10)
    lp_oh = -0.5 * (r / OH_NOISE) ** 2 - np.log(OH_NOISE * math.sqrt(2 * math.pi))
    diff = lq - (lp_core + lp_oh)
    assert abs(diff.mean()) < 0.1, diff.mean()
    assert np.median(np.abs(diff)) < 0.25, np.median(np.abs(diff))


@pytest.mark.slow
def test_core_posterior_with_missing_metallicity(chain_toy, chain_summary):
    """The core field learns from every row, so the core posterior matches the analytic one on
    all test objects and on those without oh12 alike. Tolerances, in analytic posterior stds:
    RMS mean error < 0.15, median std ratio within 7 %; coverage of the truths within 4 / 3
    points (68 % / 95 %) of the analytic posterior's own coverage on the same objects (the
    paired difference) over all 600, within 6 / 4 over the ~240 without oh12."""
    problem, post = chain_toy
    test, truth, measured, summ = chain_summary
    assert post.targets == LG_TARGETS and 0.35 < 1 - measured.mean() < 0.45
    mean, sd = problem.post_mean(test), np.sqrt(np.diag(problem.post_cov))
    for rows, tol68, tol95 in ((np.ones(len(truth), bool), 0.04, 0.03),
                               (~measured, 0.06, 0.04)):
        for j, t in enumerate(LG_TARGETS[:2]):
            dz = (summ[f"{t}_mean"] - mean[:, j])[rows] / sd[j]
            assert np.sqrt(np.mean(dz ** 2)) < 0.15, (t, rows.sum())
            assert np.median(summ[f"{t}_std"][rows] / sd[j]) == pytest.approx(1.0, abs=0.07), t
            x, z = truth[rows, j], np.abs(truth[rows, j] - mean[rows, j]) / sd[j]
            for lo, hi, zq, tol in (("q16", "q84", 0.9944579, tol68),
                                    ("q025", "q975", 1.959964, tol95)):
                cov = np.mean((x >= summ[f"{t}_{lo}"][rows]) & (x <= summ[f"{t}_{hi}"][rows]))
                assert abs(cov - np.mean(z <= zq)) < tol, (t, lo, rows.sum(), cov)


@pytest.mark.slow
def test_chain_rule_conditions_metallicity_on_sampled_core(chain_toy, chain_summary):
    """oh12 | log_mstar is N(8.8 + 0.4 (log_mstar - 10), 0.03^2) whatever the photometry, so
    within one galaxy the sampled oh12 must follow the sampled log_mstar (correlation ~0.94
    analytically) and the oh12 posterior is Gaussian with a known mean and std. Checked where
    oh12 was measured (the oh12 field never sees the other galaxies' metallicities)."""
    problem, post = chain_toy
    test, truth, measured, summ = chain_summary
    s = summ["samples"]
    rows = np.flatnonzero(measured)[:50]
    corr = np.array([np.corrcoef(s[i, :, 0], s[i, :, 2])[0, 1] for i in rows])
    slope = np.array([np.polyfit(s[i, :, 0], s[i, :, 2], 1)[0] for i in rows])
    assert corr.mean() > 0.85 and corr.min() > 0.6
    assert np.median(slope) == pytest.approx(OH_SLOPE, rel=0.15)
    sd_m = math.sqrt(problem.post_cov[0, 0])
    sd_oh = math.sqrt(OH_SLOPE ** 2 * sd_m ** 2 + OH_NOISE ** 2)
    mean_oh = 8.8 + OH_SLOPE * (problem.post_mean(test)[:, 0] - 10)
    m = measured
    assert np.sqrt(np.mean(((summ["oh12_mean"] - mean_oh) / sd_oh)[m] ** 2)) < 0.2
    assert np.median(summ["oh12_std"][m]) == pytest.approx(sd_oh, rel=0.1)
    x, z = truth[m, 2], np.abs(truth[m, 2] - mean_oh[m]) / sd_oh
    cov68 = np.mean((x >= summ["oh12_q16"][m]) & (x <= summ["oh12_q84"][m]))
    assert abs(cov68 - np.mean(z <= 0.9944579)) < 0.05, cov68


# ----------------------------------------------------------------------------------------------
# choosing the solver by measurement
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_choose_solver_on_trained_toy(chain_toy):
    """Every candidate is measured against RK4-100 on validation rows (unusable rows left out
    and counted, coverage per target where it is known, log q where every target is); the
    choice agrees within the tolerances and is the cheapest that does. RK4-10 and RK4-20
    agree with RK4-100 within 0.01 posterior std on this kind of problem (above), so the choice
    costs at most RK4-10's 40 evaluations. 100 rows x 100 samples: one row crossing an
    interval bound moves a coverage by 1 point."""
    problem, post = chain_toy
    val, _, measured = lg_rows(problem, 101, seed=12)
    val["mag_g"][0] = np.nan
    choice = choose_solver(post, val, n=100, seed=0)
    m = choice["measurements"]
    assert list(m) == ["rk4-100", *SOLVER_CANDIDATES]
    assert (choice["reference"], choice["samples"]) == ("rk4-100", 100)
    assert choice["rows"] == 100 and choice["rows_skipped"] == 1
    assert choice["rows_log_q"] == int(measured[1:].sum())
    ref = m["rk4-100"]
    assert ref["agrees"] and ref["evaluations"] == 400
    assert ref["dcov68_points"] == ref["dcov95_points"] == ref["dlogq_mad"] == 0.0
    tol = choice["tolerance"]
    for name, r in m.items():
        assert r["evaluations"] == Solver.parse(name).evaluations
        assert set(r["coverage68"]) == set(post.targets)
        assert r["agrees"] == (r["dcov68_points"] <= tol["coverage_points"]
                               and r["dcov95_points"] <= tol["coverage_points"]
                               and r["dlogq_mad"] <= tol["log_q_nats"]), name
    assert m["rk4-10"]["agrees"] and m["rk4-20"]["agrees"]
    best = m[choice["solver"]]
    assert best["agrees"]
    assert best["evaluations"] == min(r["evaluations"] for r in m.values() if r["agrees"])
    assert best["evaluations"] <= 40
    assert post.solver == "midpoint-10"                  # measuring does not change the model


def test_choose_solver_stores_its_choice(toy, tmp_path):
    """``store=True`` makes the choice the model's solver and records the measurements in its
    config, which a saved model keeps; when no candidate agrees, the reference is chosen."""
    problem, post = toy
    val, _ = problem.simulate(20, seed=13)
    try:
        none = choose_solver(post, val, candidates=("euler-2",), n=50, log_q_tol=0.0)
        assert none["solver"] == "rk4-100" and not none["measurements"]["euler-2"]["agrees"]
        post.solver = "rk4-20"
        choice = choose_solver(post, val, candidates=("rk4-10",), n=50, store=True)
        assert choice["solver"] == "rk4-10" and post.solver == "rk4-10"
        assert post.config["solver_choice"]["solver"] == "rk4-10"
        post.save(str(tmp_path / "chosen"))
        loaded = load_posterior(str(tmp_path / "chosen"))
        assert loaded.solver == "rk4-10"
        assert loaded.config["solver_choice"]["measurements"]["rk4-10"]["agrees"]
    finally:
        post.solver = "rk4-100"
        post.config.pop("solver_choice", None)


def test_choose_solver_needs_usable_rows(toy):
    problem, post = toy
    val, _ = problem.simulate(3, seed=14)
    val["mag_r"][:] = np.nan
    with pytest.raises(ValueError, match="usable inputs and known targets"):
        choose_solver(post, val, n=5)


# ----------------------------------------------------------------------------------------------
# reproducibility and persistence
# ----------------------------------------------------------------------------------------------

def test_seed_reproducible(toy):
    problem, post = toy
    test, _ = problem.simulate(3, seed=8)
    with post.with_solver("rk4-10"):
        a = post.sample(test, 50, seed=4)
        b = post.sample(test, 50, seed=4)
        c = post.sample(test, 50, seed=5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_save_load_roundtrip(toy, tmp_path):
    problem, post = toy
    test, truth = problem.simulate(4, seed=9)
    post.solver = "rk4-10"
    try:
        post.save(str(tmp_path / "cfm"))
        loaded = load_posterior(str(tmp_path / "cfm"))
        assert type(loaded) is FlowMatchingPosterior and loaded.kind == "cfm"
        assert loaded.solver == "rk4-10" and loaded.config == post.config
        for k, v in post.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
        assert torch.equal(post.sample(test, 30, seed=1), loaded.sample(test, 30, seed=1))
        assert torch.equal(post.log_prob(truth, test), loaded.log_prob(truth, test))
    finally:
        post.solver = "rk4-100"


def test_save_load_image_model(tmp_path):
    targets = CFM_TARGETS
    torch.manual_seed(0)
    post = FlowMatchingPosterior(targets, "image+phot", make_stats(targets, True),
                                 dict(SMALL, solver="midpoint-4", phot_embed=8,
                                      image_shape=[3, 32, 32]))
    batch = make_batch(3, targets, size=32)
    post.save(str(tmp_path / "img"))
    loaded = load_posterior(str(tmp_path / "img"))
    assert torch.equal(post.sample(batch, 20, seed=3), loaded.sample(batch, 20, seed=3))
    with pytest.raises(ValueError, match="do not fit this model"):
        loaded.sample(make_batch(2, size=64), 5)


@pytest.mark.slow
def test_save_load_metallicity_branch(chain_toy, tmp_path):
    problem, post = chain_toy
    test, truth, _ = lg_rows(problem, 5, seed=6)
    rows = test
    post.save(str(tmp_path / "chain"))
    loaded = load_posterior(str(tmp_path / "chain"))
    assert loaded.targets == LG_TARGETS and loaded.config == post.config
    assert loaded.config["metallicity"] is True
    for k, v in post.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert any(k.startswith("estimator.oh12_velocity.") for k in loaded.state_dict())
    assert torch.equal(post.sample(rows, 30, seed=1), loaded.sample(rows, 30, seed=1))
    assert torch.equal(post.log_prob(truth, rows), loaded.log_prob(truth, rows))
    a, b = post.summarize(rows, 20, seed=2), loaded.summarize(rows, 20, seed=2)
    np.testing.assert_array_equal(a[DETECT_COLUMN], b[DETECT_COLUMN])


def test_model_without_metallicity_key_loads_as_joint(tmp_path):
    """A model.json whose config does not name 'metallicity' holds a joint field over every
    target, oh12 included (the architecture of such files)."""
    torch.manual_seed(0)
    post = FlowMatchingPosterior(CFM_TARGETS, "phot", make_stats(CFM_TARGETS),
                                 dict(SMALL, metallicity=False, solver="rk4-4"))
    uri = tmp_path / "joint"
    post.save(str(uri))
    desc = read_model_description(str(uri))
    del desc["config"]["metallicity"]
    (uri / "model.json").write_text(json.dumps(desc))
    loaded = load_posterior(str(uri))
    assert loaded.targets == CFM_TARGETS and loaded.config["metallicity"] is False
    batch = make_batch(3)
    assert torch.equal(post.sample(batch, 10, seed=0), loaded.sample(batch, 10, seed=0))


# ----------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------

def test_bad_rows_at_inference():
    targets = CFM_TARGETS[:2]
    post = FlowMatchingPosterior(targets, "image+phot", make_stats(targets, True),
                                 dict(SMALL, solver="euler-4"))
    batch = make_batch(5, size=32)
    batch["mag_g"][1] = np.nan
    batch["cutout"][2] = 0.0
    batch["cutout"][3, 1, 5, 5] = np.nan
    batch["mag_u"][4] = np.inf
    table = post.summarize(batch, 20, seed=0)
    assert list(table["status"]) == ["ok", "bad_photometry", "bad_cutout", "bad_cutout",
                                     "bad_photometry"]
    for col in post.summary_columns()[1:]:
        assert np.isfinite(table[col][0]), col
        assert np.isnan(table[col][1:]).all(), col
    s = post.sample(batch, 7, seed=0)
    assert torch.isfinite(s[0]).all() and torch.isnan(s[1:]).all()
    lp = post.log_prob(np.zeros((5, 2)), batch)
    assert torch.isfinite(lp[0]) and torch.isnan(lp[1:]).all()

    phot = FlowMatchingPosterior(targets, "phot", make_stats(targets),
                                 dict(SMALL, solver="euler-4"))
    table = phot.summarize(make_batch(5, size=None) | {"mag_r": np.array(
        [18, np.nan, 18, 18, 18], np.float32)}, 10, seed=0)
    assert list(table["status"]) == ["ok", "bad_photometry", "ok", "ok", "ok"]
    assert np.isnan(table[f"{targets[0]}_mean"][1])
    assert np.isfinite(np.delete(table[f"{targets[0]}_mean"], 1)).all()


@pytest.mark.parametrize("column,value", [("flux_halpha", -5.0), ("sigma_v", 0.0),
                                          ("sigma_v", -10.0)])
def test_training_rejects_out_of_domain_target(column, value):
    targets = ("log_mstar", column)
    post = FlowMatchingPosterior(targets, "phot", make_stats(targets), SMALL)
    batch = make_batch(6, ("log_mstar",))
    batch[column] = np.full(6, 50.0, np.float32)
    batch[column][2] = value
    with pytest.raises(ValueError, match=column):
        post.loss(batch)


def test_training_rejects_bad_cutout():
    targets = ("log_mstar",)
    post = FlowMatchingPosterior(targets, "image+phot", make_stats(targets, True), SMALL)
    batch = make_batch(4, targets, size=32)
    batch["cutout"][1] = 0.0
    with pytest.raises(ValueError, match="cutout"):
        post.loss(batch)


# ----------------------------------------------------------------------------------------------
# the benchmark, as a smoke run
# ----------------------------------------------------------------------------------------------

def test_benchmark_quick():
    spec = importlib.util.spec_from_file_location("bench_models_cfm",
                                                  REPO / "benchmarks" / "bench_models_cfm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    r = bench.main(["--quick", "--steps", "30", "--objects", "8", "--samples", "200"])
    assert torch.get_num_threads() == threads
    assert list(r["solvers"]) == ["rk4-100", "rk4-20", "rk4-10", "midpoint-10", "euler-20",
                                  "dopri5"]
    nfe = {k: v["nfe"] for k, v in r["solvers"].items()}
    assert nfe["rk4-100"] == 400 and nfe["rk4-10"] == 40 and nfe["midpoint-10"] == 20
    for v in r["solvers"].values():
        assert v["samples_per_s"] > 0 and 0 <= v["coverage68"] <= v["coverage95"] <= 1
    assert isinstance(r["goal_met"], bool)
    assert "rk4-100" in r["image_64px"]


def test_validation_loss_does_not_depend_on_how_rows_are_batched():
    """In eval mode the loss's draws belong to the rows (``RowNoise``): the same galaxies give
    the same validation loss in one batch or in shuffled pieces (Ray Data streams blocks in
    varying order), so epochs compare models, not draws."""
    targets = ("log_mstar", "log_sfr")
    post = FlowMatchingPosterior(targets, "phot", make_stats(targets), SMALL).eval()
    data = make_batch(96, targets, seed=4)
    whole = float(post.loss(data)["loss"].detach())
    order = np.random.default_rng(0).permutation(96)
    pieces = [order[:40], order[40:]]
    parts = sum(float(post.loss({k: v[i] for k, v in data.items()})["loss"].detach()) * len(i)
                for i in pieces) / 96
    assert abs(parts - whole) < 1e-5
    post.train()                                     # training draws stay random
    assert float(post.loss(data)["loss"].detach()) != float(post.loss(data)["loss"].detach())
