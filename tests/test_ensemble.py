"""EnsemblePosterior: an equal-weight mixture of members of any kind."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raygal.inputs import STATUS_BAD_PHOT, NormStats, StatsAccumulator
from raygal.models import load_posterior
from raygal.models.baseline import GaussianPosterior
from raygal.models.ensemble import EnsemblePosterior, split_counts
from raygal.models.nf import DETECT_COLUMN, FlowPosterior
from raygal.schema import MAG_COLUMNS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGETS = ("log_mstar", "log_sfr", "oh12")
NF_SMALL = {"coupling_layers": 2, "hidden": 32, "representation": 32, "rep_layers": 1,
            "head_layers": 1, "flow_blocks": 1}
GAUSS_SMALL = {"hidden": 32, "layers": 2}


def make_batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    b = {"objid": np.arange(n, dtype=np.int64), "flags": np.zeros(n, np.int32)}
    base = 17.0 + rng.normal(0, 0.7, n)
    for j, c in enumerate(MAG_COLUMNS):
        b[c] = (base + 0.4 * (2 - j) + rng.normal(0, 0.2, n)).astype(np.float32)
    b["log_mstar"] = rng.normal(10, 0.5, n).astype(np.float32)
    b["log_sfr"] = rng.normal(0, 0.6, n).astype(np.float32)
    b["oh12"] = rng.normal(8.8, 0.2, n).astype(np.float32)
    return b


def shifted(stats: NormStats, d: float) -> NormStats:
    """Statistics of a 'different training split': other means and scales."""
    s = NormStats.from_dict(stats.to_dict())
    s.target_mean = {k: v + d for k, v in s.target_mean.items()}
    s.target_std = {k: v * (1 + d) for k, v in s.target_std.items()}
    return s


def perturb_(m, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def batch():
    return make_batch(5, seed=1)


@pytest.fixture(scope="module")
def stats():
    return StatsAccumulator(TARGETS).update(make_batch(500, seed=2)).finalize()


@pytest.fixture(scope="module")
def ensemble(stats):
    """Three members of two kinds with different normalisation statistics."""
    torch.manual_seed(0)
    members = [perturb_(GaussianPosterior(TARGETS, "phot", stats, GAUSS_SMALL), seed=0),
               perturb_(FlowPosterior(TARGETS, "phot", shifted(stats, 0.1), NF_SMALL), seed=1),
               perturb_(FlowPosterior(TARGETS, "phot", shifted(stats, -0.2), NF_SMALL), seed=2)]
    return EnsemblePosterior(members)


def test_split_counts():
    assert split_counts(10, 3) == [4, 3, 3]
    assert split_counts(2, 3) == [1, 1, 0]
    assert sum(split_counts(1001, 7)) == 1001


@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_sample_shapes_and_spaces(ensemble, batch, B, n):
    b = {k: v[:B] for k, v in batch.items()}
    s = ensemble.sample(b, n, seed=0)
    assert s.shape == (B, n, 3) and torch.isfinite(s).all()
    m = ensemble.sample(b, n, space="model", seed=0)
    assert torch.allclose(ensemble.space.from_model(m, "physical"), s)
    z = ensemble.sample(b, n, space="standardised", seed=0)
    assert torch.allclose(ensemble.space.to_model(z, "standardised")[0], m, atol=1e-5)
    assert torch.equal(ensemble.sample(b, n, seed=0), s)


def test_samples_come_from_every_member_and_are_shuffled(stats, batch):
    """Members with far-apart posteriors: each contributes its share of the draws, spread
    over the sample axis."""
    torch.manual_seed(0)
    members = []
    for k in range(3):
        s = NormStats.from_dict(stats.to_dict())
        s.target_mean = {t: v + 100.0 * k for t, v in s.target_mean.items()}
        members.append(GaussianPosterior(TARGETS, "phot", s, GAUSS_SMALL))
    ens = EnsemblePosterior(members)
    x = ens.sample(batch, 10, space="model", seed=3)[..., 0].numpy()
    which = np.round((x - 10.0) / 100.0).astype(int)     # member of each draw
    for row in which:
        assert sorted(np.bincount(row, minlength=3)) == [3, 3, 4]
    assert not all((np.diff(row) >= 0).all() for row in which)


@pytest.mark.parametrize("space", ["model", "physical", "standardised"])
def test_log_prob_is_the_mixture(ensemble, batch, space):
    theta = ensemble.sample(batch, 1, space=space, seed=5)[:, 0]
    lp = ensemble.log_prob(theta, batch, space=space)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    if space == "standardised":
        th = ensemble.space.to_model(theta, "standardised")[0]
        member = torch.stack([m.log_prob(th, batch, space="model") for m in ensemble.members])
        ref = torch.logsumexp(member, 0) - math.log(3) + torch.log(ensemble.space.std).sum()
    else:
        member = torch.stack([m.log_prob(theta, batch, space=space)
                              for m in ensemble.members])
        ref = torch.logsumexp(member, 0) - math.log(3)
    assert torch.allclose(lp, ref, atol=1e-5)
    # direct check of the formula in float64 for one row
    p = np.exp(member[:, 0].double().numpy()).mean()
    assert float(lp[0]) == pytest.approx(math.log(p) + (float(torch.log(
        ensemble.space.std).sum()) if space == "standardised" else 0.0), abs=1e-4)


def test_summary_columns(ensemble, batch):
    s = ensemble.summarize(batch, 40, seed=0)
    assert set(s) == set(ensemble.summary_columns())
    for t in TARGETS:
        assert f"{t}_std_aleatoric" in s and f"{t}_std_epistemic" in s
        assert np.all(s[f"{t}_std_epistemic"] >= 0)
    # the FlowPosterior's detection probability is only reported when every member has it
    assert DETECT_COLUMN not in s
    flows = EnsemblePosterior(list(ensemble.members)[1:])
    p = flows.summarize(batch, 20, seed=0)[DETECT_COLUMN]
    singles = [m.summarize(batch, 10, seed=0)[DETECT_COLUMN] for m in flows.members]
    np.testing.assert_allclose(p, np.mean(singles, axis=0), rtol=1e-6)


def test_epistemic_vanishes_for_identical_members(stats, batch):
    torch.manual_seed(0)
    first = perturb_(FlowPosterior(TARGETS, "phot", stats, NF_SMALL))
    members = [first]
    for _ in range(2):
        m = FlowPosterior(TARGETS, "phot", stats, NF_SMALL)
        m.load_state_dict(first.state_dict())
        members.append(m)
    s = EnsemblePosterior(members).summarize(batch, 6000, seed=0)
    single = first.summarize(batch, 6000, seed=1)
    for t in TARGETS:
        alea, epi = s[f"{t}_std_aleatoric"], s[f"{t}_std_epistemic"]
        # Monte Carlo spread of 2000-draw means: std / sqrt(2000) ~ 0.02 std
        assert np.all(epi < 0.1 * alea)
        np.testing.assert_allclose(alea, single[f"{t}_std"], rtol=0.05)


def test_total_variance_splits_into_aleatoric_and_epistemic(ensemble, batch):
    s = ensemble.summarize(batch, 6000, seed=0)
    for t in TARGETS:
        total = np.sqrt(s[f"{t}_std_aleatoric"] ** 2 + s[f"{t}_std_epistemic"] ** 2)
        np.testing.assert_allclose(total, s[f"{t}_std"], rtol=0.02)
        assert np.all(s[f"{t}_std_epistemic"] > 0)


def test_bad_rows_are_nan(ensemble, batch):
    b = {k: v.copy() for k, v in batch.items()}
    b["mag_u"][3] = np.nan
    s = ensemble.summarize(b, 20, seed=0)
    assert s["status"][3] == STATUS_BAD_PHOT
    for k, v in s.items():
        if k != "status":
            assert np.isnan(v[3]) and np.isfinite(np.delete(v, 3)).all(), k
    assert torch.isnan(ensemble.sample(b, 4)[3]).all()
    theta = torch.zeros(5, 3) + torch.tensor([10.0, 0.0, 8.8])
    lp = ensemble.log_prob(theta, b)
    assert torch.isnan(lp[3]) and torch.isfinite(lp[[0, 1, 2, 4]]).all()


def test_members_must_agree(stats):
    a = GaussianPosterior(TARGETS, "phot", stats, GAUSS_SMALL)
    with pytest.raises(ValueError, match="targets"):
        EnsemblePosterior([a, GaussianPosterior(TARGETS[:2], "phot", stats, GAUSS_SMALL)])
    with pytest.raises(ValueError, match="at least one"):
        EnsemblePosterior([])


def test_save_load_round_trip(ensemble, batch, tmp_path):
    uri = str(tmp_path / "ens")
    ensemble.save(uri)
    assert sorted(p.name for p in (tmp_path / "ens").iterdir()) == \
        ["member-00", "member-01", "member-02", "model.json"]
    loaded = load_posterior(uri)
    assert isinstance(loaded, EnsemblePosterior)
    assert [m.kind for m in loaded.members] == ["gaussian", "nf", "nf"]
    assert loaded.members[1].stats == ensemble.members[1].stats
    assert torch.equal(loaded.sample(batch, 25, seed=4), ensemble.sample(batch, 25, seed=4))
    theta = ensemble.sample(batch, 1, space="model", seed=1)[:, 0]
    assert torch.equal(loaded.log_prob(theta, batch), ensemble.log_prob(theta, batch))
    s1, s2 = loaded.summarize(batch, 30, seed=2), ensemble.summarize(batch, 30, seed=2)
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])
