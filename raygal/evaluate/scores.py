"""Per-target scores of a posterior catalog against the truth, on any subset of its rows.

One function serves the whole test set, each population (``raygal.evaluate.populations``), the
baseline regressors and the report's summary table, so that all of them count rows the same
way: a row is scored for target T when its status is 'ok' and its truth of T is known; the
others are counted (``n_no_truth``: status ok but T unknown), never silently dropped.
"""
from __future__ import annotations

import numpy as np

from . import metrics as M


def target_scores(cat: dict, truth: dict, t: str, rows=None, transform=None,
                  means=None) -> dict:
    """Scores of target ``t`` over ``rows`` (a [N] mask, all rows by default).

    Args:
        cat: catalog columns [N] (``status``, ``T_mean``, ``T_q16``.. ``T_q975``).
        truth: true values [N] by name, physical units.
        transform: a monotonic map (e.g. log10(1 + F) for line fluxes) applied to truths and
            predictions before the point metrics; coverage is unchanged by it.
        means: point predictions [N] in place of ``cat['T_mean']`` (e.g. a baseline's).

    Returns ``point_metrics`` (r2, rmse, bias, sigma_nmad, outlier_fraction, n) and, from the
    catalog's quantiles, coverage68/coverage95, plus the Wasserstein distance between the
    predictions and the true marginal (``wasserstein_means_vs_truth``) and ``n_no_truth``.
    """
    n = len(np.asarray(cat["status"]))
    rows = np.ones(n, bool) if rows is None else np.asarray(rows, bool)
    ok = (np.asarray(cat["status"]).astype(str) == "ok") & rows
    true = np.asarray(truth.get(t, np.full(n, np.nan)), dtype=np.float64)
    pred = np.asarray(cat.get(f"{t}_mean", np.full(n, np.nan)) if means is None else means,
                      dtype=np.float64)
    f = transform or (lambda x: x)
    x, y = f(np.where(ok, true, np.nan)), f(np.where(ok, pred, np.nan))
    res = M.point_metrics(y, x, t)
    scored = np.where(ok, true, np.nan)
    for key, lo, hi in (("coverage68", "q16", "q84"), ("coverage95", "q025", "q975")):
        if f"{t}_{lo}" in cat and f"{t}_{hi}" in cat:
            res[key] = M.quantile_coverage(cat[f"{t}_{lo}"], cat[f"{t}_{hi}"], scored)[0]
    both = np.isfinite(x) & np.isfinite(y)
    res["wasserstein_means_vs_truth"] = (M.wasserstein_1d(y[both], x[both]) if both.any()
                                         else float("nan"))
    res["n_no_truth"] = int((ok & ~np.isfinite(true)).sum())
    return res


def scored_targets(truth: dict, targets) -> list[str]:
    """The ``targets`` with a truth anywhere in ``truth`` (the others cannot be scored)."""
    return [t for t in targets
            if t in truth and np.isfinite(np.asarray(truth[t], dtype=np.float64)).any()]


def catalog_scores(cat: dict, truth: dict, targets, rows=None, transform=None) -> dict:
    """``{target: target_scores(...)}`` for the ``scored_targets``; ``transform(t, x)``, if
    given, maps target t's values to the space of the point metrics."""
    return {t: target_scores(cat, truth, t, rows, None if transform is None
                             else (lambda x, t=t: transform(t, x)))
            for t in scored_targets(truth, targets)}
