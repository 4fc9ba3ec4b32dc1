"""Posterior draws outside the targets' physical ranges (a flow's far tail) never make an 'ok'
row's summary infinite: they are left out of it, and a row with too many of them gets the
status ``outside_support``."""
from __future__ import annotations

import numpy as np
import torch

from raygal.inputs import STATUS_OUTSIDE_SUPPORT, NormStats
from raygal.models.baseline import GaussianPosterior
from raygal.models.posterior import MAX_OUTSIDE_SUPPORT, outside_support
from raygal.schema import MAG_COLUMNS, TARGETS


def test_outside_support_marks_draws():
    x = np.array([[[10.0, 50.0], [10.0, 5e12], [np.nan, 1.0], [10.0, -2.0]]])
    assert outside_support(x, ("log_mstar", "flux_halpha")).tolist() == [[False, True, True,
                                                                          True]]


def test_far_tails_are_left_out_or_flagged():
    """A Gaussian in log1p(flux) around 5: with sd 3.5 about 0.6 % of draws pass the range's
    1e6 (log1p 13.8), so the row stays 'ok', summarised without them; with sd 8 about 14 %
    do, and the row is 'outside_support' with NaN values."""
    t = ("flux_halpha",)
    stats = NormStats(target_mean={t[0]: 5.0}, target_std={t[0]: 1.0})
    post = GaussianPosterior(t, "phot", stats, {"hidden": 8, "layers": 1})
    batch = {c: np.full(3, 18.0, np.float32) for c in MAG_COLUMNS}
    last = post.estimator.net[-1]
    for sd, expect_ok in ((3.5, True), (8.0, False)):
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor([0.0, np.log(sd)]))
        s = post.summarize(batch, 2000, seed=0)
        if expect_ok:
            assert (s["status"] == "ok").all()
            assert np.isfinite(s["flux_halpha_mean"]).all()
            assert (s["flux_halpha_q975"] <= 1e6).all()
        else:
            assert (s["status"] == STATUS_OUTSIDE_SUPPORT).all()
            assert np.isnan(s["flux_halpha_mean"]).all()
    assert TARGETS["flux_halpha"].hi == 1e6 and MAX_OUTSIDE_SUPPORT < 0.25
