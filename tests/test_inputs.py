"""The inputs adapter: rows -> network inputs for every input kind, with per-row status."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raygal.inputs import (INPUT_KINDS, STATUS_BAD_PHOT, STATUS_MISSING_MAGERR,
                           STATUS_MISSING_REDSHIFT, STATUS_OK, ModelInputs, StatsAccumulator,
                           parse_inputs)
from raygal.models.baseline import GaussianPosterior
from raygal.schema import MAG_COLUMNS, MAGERR_COLUMNS


def _rows(n=64, seed=0):
    rng = np.random.default_rng(seed)
    b = {"objid": np.arange(n, dtype=np.int64), "flags": np.zeros(n, np.int32)}
    for c in MAG_COLUMNS:
        b[c] = (18 + rng.normal(0, 1, n)).astype(np.float32)
    for c in MAGERR_COLUMNS:
        b[c] = rng.uniform(0.01, 0.2, n).astype(np.float32)
    b["z"] = rng.uniform(0.02, 0.3, n).astype(np.float32)
    b["log_mstar"] = (10 + rng.normal(0, 0.5, n)).astype(np.float32)
    return b


def test_every_offered_kind_parses_to_itself():
    for kind in INPUT_KINDS:
        assert "+".join(parse_inputs(kind)) == kind
    assert parse_inputs("z+phot") == ("phot", "z")             # canonical order
    for bad in ("", "phot+phot", "colour", "z", "image+err"):
        with pytest.raises(ValueError, match="inputs"):
            parse_inputs(bad)


@pytest.mark.parametrize("kind,width", [("phot", 5), ("phot+err", 10), ("phot+z", 6),
                                        ("phot+err+z", 11)])
def test_phot_width_and_standardisation(kind, width):
    b = _rows(2000)
    stats = StatsAccumulator(["z", "log_mstar"]).update(b).finalize()
    inputs = ModelInputs(kind, stats, ["log_mstar"])
    x = inputs.arrays(b)["phot"]
    assert inputs.n_phot == width and x.shape == (2000, width)
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-3)       # standardised with its stats
    np.testing.assert_allclose(x.std(0), 1, atol=1e-2)


def test_status_names_what_is_missing_for_the_kind():
    b = _rows(4)
    stats = StatsAccumulator(["z", "log_mstar"]).update(_rows(200)).finalize()
    b["mag_g"][0] = np.nan
    b["magerr_r"][1] = np.nan
    b["z"][2] = np.nan
    assert list(ModelInputs("phot", stats).status(b)) == [STATUS_BAD_PHOT] + [STATUS_OK] * 3
    assert list(ModelInputs("phot+err+z", stats).status(b)) == [
        STATUS_BAD_PHOT, STATUS_MISSING_MAGERR, STATUS_MISSING_REDSHIFT, STATUS_OK]
    with pytest.raises(ValueError, match="missing_magerr"):
        ModelInputs("phot+err", stats, ["log_mstar"]).prepare({k: v[1:] for k, v in b.items()})


def test_statistics_without_magnitude_errors_refuse_err_inputs():
    b = _rows(100)
    for c in MAGERR_COLUMNS:
        del b[c]
    stats = StatsAccumulator(["log_mstar"]).update(b).finalize()
    assert stats.magerr_mean is None
    with pytest.raises(ValueError, match="magnitude-error"):
        ModelInputs("phot+err", stats).arrays(_rows(3))


def test_a_posterior_learns_from_redshift_as_an_input():
    """log_mstar = 10 + 5 (z - 0.16) exactly: with z as an input the posterior is at least
    twice as sharp after the same brief training."""
    b = _rows(2000, seed=1)
    b["log_mstar"] = (10 + 5 * (b["z"] - 0.16)).astype(np.float32)
    stats = StatsAccumulator(["z", "log_mstar"]).update(b).finalize()
    torch.manual_seed(0)
    widths = {}
    for kind in ("phot", "phot+z"):
        post = GaussianPosterior(["log_mstar"], kind, stats, {"hidden": 32})
        opt = torch.optim.Adam(post.parameters(), 1e-2)
        for _ in range(300):
            loss = post.loss(b)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        widths[kind] = float(np.median(post.summarize(_rows(50, seed=2), 200, seed=0)
                                       ["log_mstar_std"]))
    assert widths["phot+z"] < 0.5 * widths["phot"], widths


def test_galaxies_outside_the_training_range_are_out_of_domain():
    train = _rows(500)
    stats = StatsAccumulator(["log_mstar"]).update(train).finalize()
    assert stats.phot_min is not None and len(stats.phot_max) == 5
    test = _rows(3, seed=9)
    for c in MAG_COLUMNS:
        test[c][:] = 18.0                               # colours 0, r = 18: inside
    test["mag_r"][1] = 30.0                             # far fainter than anything trained on
    test["mag_u"][2] = 10.0                             # a u-g colour never seen
    inputs = ModelInputs("phot", stats, ["log_mstar"])
    assert list(inputs.status(test)) == [STATUS_OK, "out_of_domain", "out_of_domain"]
    post = GaussianPosterior(["log_mstar"], "phot", stats, {"hidden": 8})
    s = post.summarize(test, 10, seed=0)
    assert list(s["status"]) == [STATUS_OK, "out_of_domain", "out_of_domain"]
    assert np.isfinite(s["log_mstar_mean"][0]) and np.isnan(s["log_mstar_mean"][1:]).all()


def test_statistics_merge_through_flat_state():
    a, b = _rows(100, seed=1), _rows(150, seed=2)
    whole = StatsAccumulator(["z", "log_mstar"]).update(
        {k: np.concatenate([a[k], b[k]]) for k in a}).finalize()
    merged = StatsAccumulator(["z", "log_mstar"])
    for part in (a, b):
        merged.merge_state(StatsAccumulator(["z", "log_mstar"]).update(part).state())
    m = merged.finalize()
    for key, value in whole.to_dict().items():
        np.testing.assert_allclose(np.asarray(getattr(m, key), dtype=float) if not isinstance(
            value, dict) else [getattr(m, key)[k] for k in value],
            np.asarray(value, dtype=float) if not isinstance(value, dict) else list(
                value.values()), rtol=1e-9, err_msg=key)


def test_image_only_catalogs_get_a_finite_image_scale():
    """A catalog of cutouts without photometry (e.g. the 400 real SDSS metallicity cutouts)
    still has its cutout scale; it was NaN (cutouts were only counted on rows with
    photometry) and every image a model saw became NaN."""
    from raygal.inputs import StatsAccumulator

    rng = np.random.default_rng(0)
    batch = {"objid": np.arange(8), "oh12": rng.normal(8.9, 0.2, 8).astype(np.float32),
             "cutout": rng.normal(0, 2.0, (8, 3, 16, 16)).astype(np.float32),
             **{c: np.full(8, np.nan, np.float32) for c in MAG_COLUMNS}}   # as ingested
    stats = StatsAccumulator(("oh12",)).update(batch).finalize()
    assert np.all(np.isfinite(stats.cutout_scale)) and np.allclose(stats.cutout_scale, 2.0,
                                                                   rtol=0.1)
    batch["cutout"][:] = np.nan
    with pytest.raises(ValueError, match="no finite cutout"):
        StatsAccumulator(("oh12",)).update(batch).finalize()
