"""Non-finite posterior draws (a flow's far tail overflowing exp in physical units) never make
an 'ok' row's summary infinite: they are left out of it, and a row with too many of them gets
the status ``outside_support``."""
from __future__ import annotations

import numpy as np
import torch

from raygal.inputs import STATUS_OUTSIDE_SUPPORT, NormStats
from raygal.models.baseline import GaussianPosterior
from raygal.models.posterior import MAX_OUTSIDE_SUPPORT, outside_support
from raygal.schema import MAG_COLUMNS


def test_outside_support_marks_draws():
    x = np.array([[[10.0, 50.0], [10.0, np.inf], [np.nan, 1.0], [10.0, -2.0]]])
    assert outside_support(x).tolist() == [[False, True, True, False]]


def test_overflowing_tails_are_left_out_or_flagged():
    """A Gaussian in log1p(flux) around 5 (model space): with sd 30 about 0.3 % of draws
    pass log1p F = 88.7, where float32 exp overflows, so the row stays 'ok', summarised
    without them; with sd 148 (the baseline's largest) about 29 % do, and the row is
    'outside_support' with NaN values."""
    t = ("flux_halpha",)
    stats = NormStats(target_mean={t[0]: 5.0}, target_std={t[0]: 1.0})
    post = GaussianPosterior(t, "phot", stats, {"hidden": 8, "layers": 1})
    batch = {c: np.full(3, 18.0, np.float32) for c in MAG_COLUMNS}
    last = post.estimator.net[-1]
    for log_sd, expect_ok in ((np.log(30.0), True), (5.0, False)):
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor([0.0, log_sd]))
        s = post.summarize(batch, 4000, seed=0)
        if expect_ok:
            assert (s["status"] == "ok").all()
            assert np.isfinite(s["flux_halpha_mean"]).all()
            assert np.isfinite(s["flux_halpha_std"]).all()
        else:
            assert (s["status"] == STATUS_OUTSIDE_SUPPORT).all()
            assert np.isnan(s["flux_halpha_mean"]).all()
    assert MAX_OUTSIDE_SUPPORT == 0.05
