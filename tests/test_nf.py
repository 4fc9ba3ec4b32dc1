"""FlowPosterior (VAE features + two-branch conditional RealNVP) and its flows.

Properties, not pinned outputs (as zuko's and sbi's tests): shapes for every target split and
input kind, invertibility and log-determinants of the flows against autograd Jacobians,
normalisation on a grid, calibration on the linear-Gaussian problem, the chain rule, the
detectability classifier, persistence, and bad inputs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raygal.inputs import (STATUS_BAD_CUTOUT, STATUS_BAD_PHOT, STATUS_OK, STATUS_OUT_OF_DOMAIN,
                           StatsAccumulator)
from raygal.models import load_posterior
from raygal.models.flows import ConditionalFlow, build_flow
from raygal.models.nf import DETECT_COLUMN, FlowPosterior, split_targets
from raygal.models.vae import VAE
from raygal.schema import MAG_COLUMNS, NF_CORE_TARGETS, NF_LINE_TARGETS, TARGET_NAMES
from raygal.toy import linear_gaussian

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORE = NF_CORE_TARGETS
TARGET_SETS = {
    "z": ("z",),
    "core": CORE,
    "core+oh12": CORE + ("oh12",),
    "core+oh12+lines": CORE + ("oh12",) + NF_LINE_TARGETS,
}
VAE_SMALL = {"channels": [4, 8, 8], "fc_hidden": 32, "latent": 32}
SMALL = {"coupling_layers": 2, "hidden": 32, "representation": 32, "rep_layers": 1,
         "head_layers": 1, "flow_blocks": 1, "vae": VAE_SMALL}


def make_batch(n: int, size: int | None = 64, seed: int = 0) -> dict:
    """n galaxy rows with every target, photometry and (unless size is None) gri cutouts of
    Gaussian blobs plus noise."""
    rng = np.random.default_rng(seed)
    b = {"objid": np.arange(n, dtype=np.int64), "flags": np.zeros(n, np.int32)}
    base = 17.0 + rng.normal(0, 0.7, n)
    for j, c in enumerate(MAG_COLUMNS):
        b[c] = (base + 0.4 * (2 - j) + rng.normal(0, 0.2, n)).astype(np.float32)
    values = {"log_mstar": rng.normal(10, 0.5, n), "log_sfr": rng.normal(0, 0.6, n),
              "z": rng.uniform(0.02, 0.3, n), "log_mbh": rng.normal(7.5, 0.6, n),
              "oh12": rng.normal(8.8, 0.2, n), "sigma_v": rng.uniform(50, 300, n),
              "dn4000": rng.normal(1.5, 0.2, n), "av": rng.uniform(0, 2, n)}
    for t in NF_LINE_TARGETS:
        values[t] = np.exp(rng.normal(3, 1, n))
    for t in TARGET_NAMES:
        b[t] = values[t].astype(np.float32)
    if size:
        yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
        r2 = (xx ** 2 + yy ** 2)[None, None]
        w = rng.uniform(3, 8, (n, 1, 1, 1))
        img = np.exp(-r2 / (2 * w ** 2)) * rng.uniform(0.5, 2, (n, 3, 1, 1))
        b["cutout"] = (img + rng.normal(0, 0.05, img.shape)).astype(np.float32)
    return b


def stats_of(batch):
    return StatsAccumulator().update(batch).finalize()


def perturb_(module: torch.nn.Module, scale: float = 0.1, seed: int = 0):
    """Move every parameter off its initialisation (zero-initialised output layers make a
    fresh flow the identity: too easy a test)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@pytest.fixture(scope="module")
def image_batch():
    return make_batch(6, 64, seed=1)


@pytest.fixture(scope="module")
def stats(image_batch):
    # The statistics' sample covers the test galaxies, as a training set covers the survey
    # it is applied to (outside its range a row is 'out_of_domain' and gets no posterior).
    sample = make_batch(256, 64, seed=2)
    return stats_of({k: np.concatenate([v, image_batch[k]]) for k, v in sample.items()})


# ----------------------------------------------------------------------------------------------
# Target splitting and shapes
# ----------------------------------------------------------------------------------------------

def test_targets_are_split_and_ordered(stats):
    m = FlowPosterior(("flux_hbeta", "oh12", "z", "flux_halpha", "log_sfr"), "phot", stats,
                      SMALL)
    assert m.targets == ("z", "log_sfr", "oh12", "flux_hbeta", "flux_halpha")
    assert m.config["core_targets"] == ["z", "log_sfr"]
    assert m.config["metallicity"] is True
    assert m.config["line_targets"] == ["flux_hbeta", "flux_halpha"]
    # metallicity=False puts oh12 into the joint core flow
    m2 = FlowPosterior(("z", "oh12"), "phot", stats, {**SMALL, "metallicity": False})
    assert m2.estimator.core_targets == ("z", "oh12") and not m2.estimator.metallicity
    assert m2.extra_summary_columns() == ()
    # the paper's nine targets by default
    assert split_targets(None) == (CORE, True, NF_LINE_TARGETS)
    with pytest.raises(ValueError, match="oh12"):
        split_targets(("z",), {"metallicity": True})
    with pytest.raises(ValueError, match="core_targets"):
        split_targets(("z", "log_sfr"), {"core_targets": ["z"]})


@pytest.mark.parametrize("inputs", ["image+phot", "phot"])
@pytest.mark.parametrize("tset", list(TARGET_SETS))
@pytest.mark.parametrize("B,n", [(1, 1), (4, 7)])
def test_shapes(inputs, tset, B, n, image_batch, stats):
    torch.manual_seed(0)
    targets = TARGET_SETS[tset]
    m = FlowPosterior(targets, inputs, stats, SMALL)
    batch = {k: v[:B] for k, v in image_batch.items()}
    if inputs == "phot":
        batch.pop("cutout")
    D = len(targets)
    s = m.sample(batch, n, seed=0)
    assert s.shape == (B, n, D) and torch.isfinite(s).all()
    theta = m.sample(batch, 1, space="model", seed=1)[:, 0]
    lp = m.log_prob(theta, batch)
    assert lp.shape == (B,) and torch.isfinite(lp).all()
    summ = m.summarize(batch, max(n, 2), seed=0)
    assert set(summ) == set(m.summary_columns())
    assert all(len(v) == B for v in summ.values())
    assert (DETECT_COLUMN in summ) == ("oh12" in targets)
    if "oh12" in targets:
        p = summ[DETECT_COLUMN]
        assert np.all((p > 0) & (p < 1))
    loss = m.loss(batch)
    assert set(loss) == {"loss", "nll_core", "nll_oh12", "nll_lines", "mse", "bce"}
    assert torch.isfinite(loss["loss"])


def test_default_architecture(image_batch, stats):
    m = FlowPosterior(None, "image+phot", stats)
    c = m.config
    assert (c["coupling_layers"], c["hidden"], c["representation"]) == (12, 256, 256)
    assert c["line_coupling_layers"] == 12 and c["image_shape"] == [3, 64, 64]
    assert m.estimator.encoder.out_features == 64 and len(m.targets) == 9
    n_coupling = sum(type(t).__name__ == "AffineCoupling"
                     for t in m.estimator.core_flow.transform._transforms)
    assert n_coupling == 12
    assert m.sample(image_batch, 3, seed=0).shape == (6, 3, 9)


# ----------------------------------------------------------------------------------------------
# Flows: inversion, log-determinants, normalisation
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("D", [1, 2, 3, 4])
def test_flow_inverts_and_logdet_matches_jacobian(D):
    torch.manual_seed(0)
    C = 5
    flow = perturb_(ConditionalFlow(build_flow(D, C, layers=4, hidden=16, blocks=1), D), 0.15)
    t = flow.transform
    x, c = torch.randn(16, D), torch.randn(16, C)
    u, ld = t(x, c)
    x2, ld_inv = t.inverse(u, c)
    assert torch.allclose(x2, x, atol=1e-4)
    assert torch.allclose(ld, -ld_inv, atol=1e-4)
    assert u.abs().max() > 0 and not torch.allclose(u, x, atol=1e-2)   # not the identity

    t64 = flow.double().transform
    x, c = x.double(), c.double()
    _, ld = t64(x, c)
    for i in range(len(x)):
        J = torch.autograd.functional.jacobian(
            lambda xi: t64(xi[None], c[i:i + 1])[0][0], x[i])
        assert torch.allclose(ld[i], torch.linalg.slogdet(J.reshape(D, D))[1], atol=1e-8)


def test_broadcast_context_equals_expanded_context():
    torch.manual_seed(0)
    flow = perturb_(ConditionalFlow(build_flow(3, 4, layers=3, hidden=16), 3), 0.3)
    B, k = 5, 6
    c = torch.randn(B, 4)
    x = torch.randn(B * k, 3)
    full = c.repeat_interleave(k, 0)
    assert torch.allclose(flow.log_prob(x, c), flow.log_prob(x, full), atol=1e-5)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s = flow.sample(c, k, g1)
    u = torch.randn((B, k, 3), generator=g2)
    s2, _ = flow.transform.inverse(u.reshape(B * k, 3), full)
    assert torch.allclose(s.reshape(B * k, 3), s2, atol=1e-5)


def _grid_mass(m: FlowPosterior, batch: dict, D: int, half: float, n: int) -> float:
    m = m.double()
    ctx = m.context(batch)
    ctx.phot = ctx.phot.double()
    g = torch.linspace(-half, half, n, dtype=torch.float64)
    if D == 1:
        z = g[:, None]
    else:
        z = torch.cartesian_prod(g, g)
    ctx_rep = ctx.index(np.zeros(len(z), dtype=int))
    with torch.no_grad():
        p = m.estimator.log_prob(z, ctx_rep).exp().reshape((n,) * D)
    for _ in range(D):
        p = torch.trapezoid(p, g, dim=0)
    return float(p)


@pytest.mark.parametrize("targets,tol", [(("z",), 1e-6), (("log_mstar", "log_sfr"), 1e-3),
                                         (("z", "oh12"), 1e-6)])
def test_log_prob_integrates_to_one(targets, tol, image_batch, stats):
    """Trapezoid rule on [-8, 8]^D in standardised space, float64. The 1-d and the
    affine-times-affine chain densities are exactly Gaussian (tight tolerance); the perturbed
    coupling flow is not (grid error ~1e-4)."""
    torch.manual_seed(0)
    m = perturb_(FlowPosterior(targets, "phot", stats, {**SMALL, "coupling_layers": 4}), 0.1)
    for row in range(2):
        batch = {k: v[row:row + 1] for k, v in image_batch.items() if k != "cutout"}
        D = len(targets)
        mass = _grid_mass(m, batch, D, half=8.0, n=4001 if D == 1 else 201)
        assert mass == pytest.approx(1.0, abs=tol)


# ----------------------------------------------------------------------------------------------
# Calibration on the linear-Gaussian problem; chain rule; detectability classifier
# ----------------------------------------------------------------------------------------------

LG_TARGETS = ("log_mstar", "log_sfr", "oh12")
OH_SLOPE, OH_NOISE = 0.4, 0.03


def _lg_batch(problem, n, seed):
    """Linear-Gaussian rows plus oh12 = 8.8 + 0.4 (log_mstar - 10) + N(0, 0.03^2), measured
    only where the analytic posterior mean of log_sfr is > 0 (a label the photometry
    separates)."""
    b, theta = problem.simulate(n, seed)
    rng = np.random.default_rng(seed + 100)
    oh = 8.8 + OH_SLOPE * (theta[:, 0] - 10) + OH_NOISE * rng.standard_normal(n)
    detected = problem.post_mean(b)[:, 1] > 0
    b["oh12"] = np.where(detected, oh, np.nan).astype(np.float32)
    return b, theta, detected


@pytest.fixture(scope="module")
def trained_lg():
    """A photometry-only FlowPosterior trained briefly (1000 Adam steps, ~10 s) on the
    linear-Gaussian problem."""
    torch.manual_seed(0)
    problem = linear_gaussian(LG_TARGETS[:2], noise=0.5, seed=0)
    train, _, _ = _lg_batch(problem, 20000, seed=1)
    stats = StatsAccumulator(LG_TARGETS).update(train).finalize()
    cfg = {"coupling_layers": 4, "hidden": 64, "representation": 64, "rep_layers": 2,
           "head_layers": 1, "flow_blocks": 1}
    m = FlowPosterior(LG_TARGETS, "phot", stats, cfg)
    steps, bs, lr = 1000, 256, 3e-3
    opt = torch.optim.Adam(m.trainable_parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    rng = np.random.default_rng(0)
    m.train()
    for _ in range(steps):
        idx = rng.integers(0, len(train["objid"]), bs)
        loss = m.loss({k: v[idx] for k, v in train.items()})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    m.eval()
    test, theta, detected = _lg_batch(problem, 2000, seed=2)
    summ = m.summarize(test, 500, seed=0, keep_samples=True)
    return problem, m, test, theta, detected, summ


def test_linear_gaussian_posterior_and_coverage(trained_lg):
    """Tolerances: posterior means within 0.15 posterior std (RMS), median std ratio within
    10 %, 68 % / 95 % coverage within 4 / 2.5 points over 2000 test objects (binomial errors
    1.0 / 0.5 points)."""
    problem, m, test, theta, _, summ = trained_lg
    mean, sd = problem.post_mean(test), np.sqrt(np.diag(problem.post_cov))
    for j, t in enumerate(LG_TARGETS[:2]):
        dz = (summ[f"{t}_mean"] - mean[:, j]) / sd[j]
        assert np.sqrt(np.mean(dz ** 2)) < 0.15, t
        assert np.median(summ[f"{t}_std"] / sd[j]) == pytest.approx(1.0, abs=0.1), t
        cov68 = np.mean((theta[:, j] >= summ[f"{t}_q16"]) & (theta[:, j] <= summ[f"{t}_q84"]))
        cov95 = np.mean((theta[:, j] >= summ[f"{t}_q025"]) & (theta[:, j] <= summ[f"{t}_q975"]))
        assert cov68 == pytest.approx(0.68, abs=0.04), t
        assert cov95 == pytest.approx(0.95, abs=0.025), t


def test_linear_gaussian_joint_posterior(trained_lg):
    """The joint, not only the marginals: within each object the samples' correlation matches
    the analytic posterior's (-0.31 here) within 0.08 on average, samples whitened by the
    analytic covariance have unit covariance (every entry within 0.1 of I), and the truths'
    Mahalanobis distances under the analytic covariance, measured from each sample mean, follow
    chi^2_2: the 68 % and 95 % joint regions cover within 4 / 2.5 points."""
    problem, m, test, theta, _, summ = trained_lg
    s = summ["samples"][:, :, :2].astype(np.float64)             # [B, n, 2] core targets
    mu, cov = problem.post_mean(test), problem.post_cov
    rho = cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1])
    corr = np.array([np.corrcoef(x[:, 0], x[:, 1])[0, 1] for x in s[:300]])
    assert abs(corr.mean() - rho) < 0.08, (corr.mean(), rho)
    white = np.linalg.solve(np.linalg.cholesky(cov), (s - mu[:, None]).reshape(-1, 2).T).T
    assert np.abs(np.cov(white.T) - np.eye(2)).max() < 0.1, np.cov(white.T)
    d = theta[:, :2] - s.mean(axis=1)
    maha = np.einsum("bi,ij,bj->b", d, np.linalg.inv(cov), d)
    assert np.mean(maha <= -2 * math.log(1 - 0.68)) == pytest.approx(0.68, abs=0.04)
    assert np.mean(maha <= -2 * math.log(1 - 0.95)) == pytest.approx(0.95, abs=0.025)


def test_chain_rule_conditions_metallicity_on_sampled_core(trained_lg):
    """oh12 | log_mstar is N(8.8 + 0.4 (log_mstar - 10), 0.03^2) whatever the photometry, so
    within one galaxy the sampled oh12 must follow the sampled log_mstar (correlation ~0.94
    analytically) and the oh12 posterior is Gaussian with a known mean and std. Checked where
    oh12 was measurable (the flow never sees the other galaxies' metallicities)."""
    problem, m, test, _, detected, summ = trained_lg
    s = summ["samples"]
    rows = np.flatnonzero(detected)[:50]
    corr = np.array([np.corrcoef(s[i, :, 0], s[i, :, 2])[0, 1] for i in rows])
    slope = np.array([np.polyfit(s[i, :, 0], s[i, :, 2], 1)[0] for i in rows])
    assert corr.mean() > 0.85 and corr.min() > 0.6
    assert np.median(slope) == pytest.approx(OH_SLOPE, rel=0.15)
    sd_m = math.sqrt(problem.post_cov[0, 0])
    sd_oh = math.sqrt(OH_SLOPE ** 2 * sd_m ** 2 + OH_NOISE ** 2)
    mean_oh = 8.8 + OH_SLOPE * (problem.post_mean(test)[:, 0] - 10)
    d = detected
    assert np.sqrt(np.mean(((summ["oh12_mean"] - mean_oh) / sd_oh)[d] ** 2)) < 0.2
    assert np.median(summ["oh12_std"][d]) == pytest.approx(sd_oh, rel=0.15)


def test_detectability_classifier_learns_separable_label(trained_lg):
    *_, detected, summ = trained_lg
    p = summ[DETECT_COLUMN]
    assert np.mean((p > 0.5) == detected) > 0.95
    assert p[detected].mean() > 0.8 and p[~detected].mean() < 0.2


# ----------------------------------------------------------------------------------------------
# Training details: missing targets, the frozen encoder, precomputed features
# ----------------------------------------------------------------------------------------------

def test_missing_targets_are_masked_not_imputed(stats):
    torch.manual_seed(0)
    m = FlowPosterior(TARGET_SETS["core+oh12+lines"], "phot", stats, SMALL)
    b = make_batch(16, None, seed=3)
    b["oh12"][:] = np.nan                       # no metallicity at all
    b["log_mbh"][::2] = np.nan                  # half the rows lack a core target
    b["flux_oiii"][:5] = np.nan
    out = m.loss(b)
    assert float(out["nll_oh12"]) == 0.0
    assert torch.isfinite(out["loss"]) and float(out["bce"]) > 0
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    # a flow with no complete row contributes nothing, the mean heads still learn
    b["log_sfr"][:] = np.nan
    out = m.loss(b)
    assert float(out["nll_core"]) == 0.0 and float(out["mse"]) > 0


def test_from_vae_freezes_the_encoder(image_batch, stats):
    torch.manual_seed(0)
    vae = VAE({"image_shape": [3, 64, 64], **VAE_SMALL})
    m = FlowPosterior.from_vae(vae, TARGET_SETS["core+oh12"], "image+phot", stats,
                               {k: v for k, v in SMALL.items() if k != "vae"})
    for (k1, v1), (k2, v2) in zip(vae.encoder.state_dict().items(),
                                  m.estimator.encoder.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert not any(p.requires_grad for p in m.estimator.encoder.parameters())
    n_enc = sum(p.numel() for p in m.estimator.encoder.parameters())
    assert sum(p.numel() for p in m.trainable_parameters()) == \
        sum(p.numel() for p in m.parameters()) - n_enc
    m.train()
    assert not m.estimator.encoder.training
    m.loss(image_batch)["loss"].backward()
    assert all(p.grad is None for p in m.estimator.encoder.parameters())
    # photometry-only: no VAE needed
    assert not hasattr(FlowPosterior.from_vae(None, ("z",), "phot", stats, SMALL).estimator, "encoder")


def test_precomputed_vae_features_match_the_encoder(image_batch, stats):
    torch.manual_seed(0)
    m = perturb_(FlowPosterior(TARGET_SETS["core+oh12"], "image+phot", stats, SMALL))
    img = torch.from_numpy(stats.norm_cutout(image_batch["cutout"]))
    feats = m.estimator.image_features(img).numpy()
    assert feats.shape == (6, 64)
    ref = m.sample(image_batch, 20, seed=5)
    with_cols = dict(image_batch, vae_features=feats)
    assert torch.allclose(m.sample(with_cols, 20, seed=5), ref, atol=1e-5)
    as_objects = np.empty(6, dtype=object)              # an Arrow list column's to_numpy()
    as_objects[:] = list(feats)
    assert torch.allclose(m.sample(dict(image_batch, vae_features=as_objects), 20, seed=5),
                          ref, atol=1e-5)
    with pytest.raises(ValueError, match="vae_features"):
        m.sample(dict(image_batch, vae_features=feats[:, :10]), 2)


# ----------------------------------------------------------------------------------------------
# Persistence and determinism
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("inputs", ["image+phot", "phot"])
def test_save_load_round_trip(inputs, tmp_path, image_batch, stats):
    torch.manual_seed(0)
    m = perturb_(FlowPosterior(TARGET_SETS["core+oh12+lines"], inputs, stats, SMALL))
    a = m.sample(image_batch, 50, seed=11)
    assert torch.equal(a, m.sample(image_batch, 50, seed=11))
    assert not torch.equal(a, m.sample(image_batch, 50, seed=12))
    m.save(str(tmp_path / "nf"))
    m2 = load_posterior(str(tmp_path / "nf"))
    assert isinstance(m2, FlowPosterior) and m2.targets == m.targets
    assert m2.config == m.config
    assert torch.equal(m2.sample(image_batch, 50, seed=11), a)
    theta = a[:, 0]
    assert torch.equal(m2.log_prob(theta, image_batch, space="physical"),
                       m.log_prob(theta, image_batch, space="physical"))
    s1, s2 = m.summarize(image_batch, 30, seed=1), m2.summarize(image_batch, 30, seed=1)
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------

def test_nan_photometry_in_training_names_the_column(image_batch, stats):
    m = FlowPosterior(("z",), "phot", stats, SMALL)
    b = {k: v.copy() for k, v in image_batch.items()}
    b["mag_g"][2] = np.nan
    with pytest.raises(ValueError, match="g-r"):
        m.loss(b)


def test_unusable_rows_come_back_nan_with_status(image_batch, stats):
    torch.manual_seed(0)
    b = {k: v.copy() for k, v in image_batch.items()}
    b["mag_r"][1] = np.nan
    b["cutout"][2] = 0.0
    for inputs in ("image+phot", "phot"):
        m = FlowPosterior(TARGET_SETS["core+oh12"], inputs, stats, SMALL)
        summ = m.summarize(b, 20, seed=0)
        assert summ["status"][1] == STATUS_BAD_PHOT
        bad = [1, 2] if inputs == "image+phot" else [1]
        if inputs == "image+phot":
            assert summ["status"][2] == STATUS_BAD_CUTOUT
        # The rest are 'ok', or 'out_of_domain' where the statistics' sample was narrower
        # (refused too: no extrapolated posterior).
        assert all(summ["status"][i] in (STATUS_OK, STATUS_OUT_OF_DOMAIN)
                   for i in range(6) if i not in bad), summ["status"]
        bad = [i for i in range(6) if summ["status"][i] != STATUS_OK]
        good = [i for i in range(6) if i not in bad]
        assert len(good) >= 3
        for col in ("log_mstar_mean", "oh12_q84", DETECT_COLUMN):
            assert np.isnan(summ[col][bad]).all() and np.isfinite(summ[col][good]).all()
        s = m.sample(b, 5, seed=0)
        assert torch.isnan(s[bad]).all() and torch.isfinite(s[good]).all()


# ----------------------------------------------------------------------------------------------
# The benchmark runs
# ----------------------------------------------------------------------------------------------

def test_benchmark_quick():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_models_nf.py"
    spec = importlib.util.spec_from_file_location("bench_models_nf", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        out = bench.main(["--quick"])
    finally:
        torch.set_num_threads(threads)
    for inputs in ("phot", "image+phot"):
        assert out[inputs]["samples_per_s"] > 0
