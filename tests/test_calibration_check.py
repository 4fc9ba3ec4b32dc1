"""The calibration check printed at the end of training: a posterior whose truths are its own
draws is called calibrated, one whose truths sit at its centre under-confident, one whose
truths lie far in its tails over-confident (real models and real rows, no Ray)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raygal.evaluate.calibration import format_check, heldout_check
from raygal.inputs import StatsAccumulator
from raygal.models.baseline import GaussianPosterior
from raygal.schema import MAG_COLUMNS
from test_ensemble import TARGETS, make_batch, perturb_

N = 1000


@pytest.fixture(scope="module")
def post():
    torch.set_num_threads(1)
    stats = StatsAccumulator(TARGETS).update(make_batch(500, seed=2)).finalize()
    torch.manual_seed(0)
    return perturb_(GaussianPosterior(TARGETS, "phot", stats, {"hidden": 16, "layers": 1}))


def _rows_with_truths(post, how: str) -> pa.Table:
    b = make_batch(N, seed=3)
    draws = post.sample(b, 400, space="physical", seed=7).numpy()          # [N, 400, D]
    if how == "own draw":
        truth = post.sample(b, 1, space="physical", seed=11).numpy()[:, 0]
    elif how == "centre":
        truth = np.median(draws, axis=1)
    else:                                                                  # far tail
        truth = np.median(draws, axis=1) + 4 * draws.std(axis=1)
    for j, t in enumerate(TARGETS):
        b[t] = truth[:, j].astype(np.float32)
    b["log_sfr"][:100] = np.nan                                           # unknown truths
    b[MAG_COLUMNS[0]][-7:] = np.nan                                                 # unusable inputs
    return pa.table(b)


@pytest.mark.parametrize("how, verdict", [("own draw", "calibrated"),
                                          ("centre", "under-confident"),
                                          ("far tail", "over-confident")])
def test_verdicts(post, how, verdict):
    check = heldout_check(post, _rows_with_truths(post, how), n=100)
    # every row is counted: the 7 without photometry (and a few outside the statistics'
    # domain) are skipped, not sampled
    assert check["rows"] + check["rows_skipped"] == N and check["rows_skipped"] >= 7
    assert set(check["targets"]) == set(TARGETS)
    assert check["targets"]["log_sfr"]["n"] <= check["rows"] - 90
    for t, r in check["targets"].items():
        assert r["verdict"] == verdict, (t, r)
        assert 0 < r["se68"] < 0.02 and 0 < r["se95"] < r["se68"]
    assert check["calibrated"] is (verdict == "calibrated")
    text = format_check(check, "gaussian")
    assert f"calibration on {check['rows']} held-out galaxies" in text
    assert (verdict in text) is (verdict != "calibrated")
    if verdict == "calibrated":
        for t, r in check["targets"].items():
            assert abs(r["coverage68"] - 0.68) < 0.04 and abs(r["coverage95"] - 0.95) < 0.03
            assert r["pit_ks_pvalue"] > 1e-3
