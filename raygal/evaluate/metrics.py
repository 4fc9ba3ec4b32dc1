"""How accurate and how calibrated raygal's posteriors are: pure numpy metrics.

Everything here takes plain arrays (posterior samples, log densities, summary columns, truths)
so that it works for any model behind the ``Posterior`` interface and for catalogs read back
from disk. No Ray, no torch, no scipy: numpy only (the few special functions needed, the
Kolmogorov and chi-square tail probabilities, are implemented below).

Shapes: N objects, S posterior samples per object, D targets, M evaluation points.
Rows with a NaN (a galaxy whose status is not 'ok', a missing truth) are left out of each metric
and every aggregate reports ``n``, the number of rows it used.

Accuracy
    ``point_metrics``: R^2, RMSE, bias, sigma_NMAD, outlier fraction (photo-z conventions for z).
Calibration
    ``coverage_curve`` and ``interval_coverage`` (central credible intervals from samples),
    ``quantile_coverage`` and ``summary_coverage`` (from the catalog's q16/q84 and q025/q975
    columns); ``pit`` and ``pit_histogram``; ``sbc_ranks`` and ``sbc_uniformity`` (Talts et al. 2018, as sbi's
    ``run_sbc``/``check_sbc``); ``tarp`` and ``tarp_summary`` (Lemos et al. 2023, as sbi's
    ``run_tarp``/``check_tarp``); ``summarize_calibration`` puts them together.
Information gain (Yunus, Wu & Holwerda, arXiv:2512.05078)
    ``EmpiricalPrior`` (Gaussian KDE of the training targets), ``delta_log_p``, ``kl_mc``,
    ``win_rate``, ``wasserstein_1d``.
Classifier
    ``binary_classifier_metrics`` (e.g. the metallicity detectability head).
Closed forms
    ``gaussian_log_prob``, ``gaussian_kl``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "point_metrics", "sigma_nmad",
    "coverage_curve", "interval_coverage", "quantile_coverage", "summary_coverage",
    "pit", "pit_histogram", "sbc_ranks", "sbc_uniformity", "tarp", "tarp_summary",
    "summarize_calibration",
    "EmpiricalPrior", "delta_log_p", "kl_mc", "win_rate", "wasserstein_1d",
    "binary_classifier_metrics",
    "gaussian_log_prob", "gaussian_kl",
    "kolmogorov_sf", "ks_1samp_uniform", "ks_2samp", "chi2_sf",
]

#: |dz| / (1 + z) above which a redshift is a catastrophic outlier (the photo-z convention,
#: e.g. Hildebrandt et al. 2010).
Z_OUTLIER_THRESHOLD = 0.15
#: Outliers of other targets: |pred - true| > this many sigma_NMAD.
OUTLIER_NSIGMA = 3.0
#: sigma_NMAD = 1.4826 * MAD is the Gaussian sigma for Gaussian errors (1 / Phi^-1(3/4)).
NMAD_SCALE = 1.4826


def _as_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-d [N], got shape {a.shape}")
    return a


def _level_key(prefix: str, level: float) -> str:
    return f"{prefix}{100 * level:g}"


# ----------------------------------------------------------------------------------------------
# Point metrics
# ----------------------------------------------------------------------------------------------

def sigma_nmad(d) -> float:
    """Normalised median absolute deviation 1.4826 * median(|d - median(d)|) of ``d`` [N],
    ignoring NaN; a robust Gaussian sigma. NaN if no finite value."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not d.size:
        return float("nan")
    return float(NMAD_SCALE * np.median(np.abs(d - np.median(d))))


def point_metrics(pred, true, target: str) -> dict[str, float]:
    """Accuracy of point predictions (e.g. posterior means or medians) of one target.

    Args:
        pred: [N] predictions, true: [N] true values, in the same units (usually physical).
        target: the target's name; ``'z'`` switches on the photo-z conventions.

    Returns a dict:
        ``r2``: 1 - sum(d^2) / sum((true - mean(true))^2), with d = pred - true;
        ``rmse``: sqrt(mean(d^2));
        ``bias``: mean(d) (positive: predictions too high);
        ``sigma_nmad``: 1.4826 * median(|e - median(e)|) with e = d, or for z the normalised
        residual e = d / (1 + true) (Brammer et al. 2008; Ilbert et al. 2006);
        ``outlier_fraction``: for z the fraction with |d| / (1 + true) > 0.15; for other
        targets the fraction with |d| > 3 sigma_nmad (so a constant offset with sigma_nmad = 0
        makes every row with d != 0 an outlier);
        ``n``: rows used (rows where either value is NaN are ignored).
    Metrics that need more rows than there are (R^2 with < 2 rows or constant truth) are NaN.
    """
    pred, true = _as_1d(pred, "pred"), _as_1d(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"pred {pred.shape} and true {true.shape} differ in shape")
    ok = np.isfinite(pred) & np.isfinite(true)
    p, t = pred[ok], true[ok]
    n = int(ok.sum())
    nan = float("nan")
    if n == 0:
        return {"r2": nan, "rmse": nan, "bias": nan, "sigma_nmad": nan,
                "outlier_fraction": nan, "n": 0}
    d = p - t
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum(d ** 2)) / ss_tot if n > 1 and ss_tot > 0 else nan
    if target == "z":
        e = d / (1.0 + t)
        snmad = sigma_nmad(e)
        outliers = np.abs(e) > Z_OUTLIER_THRESHOLD
    else:
        snmad = sigma_nmad(d)
        outliers = np.abs(d) > OUTLIER_NSIGMA * snmad
    return {"r2": r2, "rmse": float(np.sqrt(np.mean(d ** 2))), "bias": float(d.mean()),
            "sigma_nmad": snmad, "outlier_fraction": float(outliers.mean()), "n": n}


# ----------------------------------------------------------------------------------------------
# Tail probabilities (numpy stand-ins for scipy.stats)
# ----------------------------------------------------------------------------------------------

def kolmogorov_sf(x) -> np.ndarray | float:
    """Survival function of the Kolmogorov distribution,
    Q(x) = P(K > x) = 2 sum_{k>=1} (-1)^(k-1) exp(-2 k^2 x^2).

    For x < 1 the equivalent theta-function form
    1 - sqrt(2 pi) / x sum_{k>=1} exp(-(2k-1)^2 pi^2 / (8 x^2)) converges faster.
    The limit of sqrt(n) D_n for the one-sample KS statistic (Kolmogorov 1933)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.ones_like(x)
    k = np.arange(1, 101, dtype=np.float64)
    small = (x > 0) & (x < 1.0)
    if small.any():
        xs = x[small][..., None]
        s = np.exp(-((2 * k - 1) ** 2) * np.pi ** 2 / (8 * xs ** 2)).sum(-1)
        out[small] = 1.0 - np.sqrt(2 * np.pi) / x[small] * s
    big = x >= 1.0
    if big.any():
        xb = x[big][..., None]
        out[big] = 2.0 * ((-1.0) ** (k - 1) * np.exp(-2 * k ** 2 * xb ** 2)).sum(-1)
    out = np.clip(out, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def ks_1samp_uniform(u) -> tuple[float, float]:
    """One-sample Kolmogorov-Smirnov test of ``u`` [N] against Uniform(0, 1), NaN ignored.

    Returns (D, p): D = sup |F_N(u) - u|; p from the Kolmogorov distribution with Stephens'
    (1970) finite-n correction, Q((sqrt(n) + 0.12 + 0.11 / sqrt(n)) D), within ~0.02 of the
    exact p-value for n >= 5 and closer for larger n (Numerical Recipes, sec. 14.3)."""
    u = np.sort(np.asarray(u, dtype=np.float64).ravel())
    u = u[np.isfinite(u)]
    n = u.size
    if n == 0:
        return float("nan"), float("nan")
    i = np.arange(1, n + 1)
    d = float(max(np.max(i / n - u), np.max(u - (i - 1) / n)))
    en = math.sqrt(n)
    return d, float(kolmogorov_sf((en + 0.12 + 0.11 / en) * d))


def _prob_paths_touch(n: int, h: int) -> float:
    """P(max_k |i_k - j_k| >= h) for a uniformly random monotone lattice path from (0, 0) to
    (n, n): the exact null distribution of n * D for the two-sample KS test with n = m.

    Propagates probability along the path (step to (i+1, j) with probability
    (n - i) / (2n - i - j)), so nothing overflows for large n."""
    if h <= 0:
        return 1.0
    if h > n:
        return 0.0
    # prob[i] = probability of being at (i, s - i) without having touched |i - j| >= h.
    prob = np.zeros(n + 1)
    prob[0] = 1.0
    for s in range(2 * n):
        i = np.arange(n + 1)
        j = s - i
        valid = (j >= 0) & (j <= n)
        remaining = 2 * n - s
        p_right = np.where(valid, (n - i) / remaining, 0.0)  # take one more from sample 1
        new = np.zeros(n + 1)
        new[1:] += (prob * p_right)[:-1]
        new += np.where(valid, prob * (1.0 - p_right), 0.0)
        i2 = np.arange(n + 1)
        j2 = s + 1 - i2
        new[np.abs(i2 - j2) >= h] = 0.0
        new[(j2 < 0) | (j2 > n)] = 0.0
        prob = new
    return float(np.clip(1.0 - prob[n], 0.0, 1.0))


def ks_2samp(a, b) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test of ``a`` [n] and ``b`` [m] (NaN ignored).

    Returns (D, p), D = sup_x |F_a(x) - F_b(x)|. The p-value is exact for n = m <= 1000
    (lattice-path count, as scipy's ``ks_2samp(method='exact')``), otherwise asymptotic:
    Q((en + 0.12 + 0.11 / en) D), en = sqrt(n m / (n + m))."""
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n, m = a.size, b.size
    if n == 0 or m == 0:
        return float("nan"), float("nan")
    x = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, x, "right") / n
                            - np.searchsorted(b, x, "right") / m)))
    if n == m and n <= 1000:
        return d, _prob_paths_touch(n, int(round(d * n)))
    en = math.sqrt(n * m / (n + m))
    return d, float(kolmogorov_sf((en + 0.12 + 0.11 / en) * d))


def chi2_sf(x: float, dof: int) -> float:
    """P(chi^2_dof > x) for an integer number of degrees of freedom: the regularised upper
    incomplete gamma Q(dof/2, x/2) by its finite series (Abramowitz & Stegun 26.4.4-5)."""
    dof = int(dof)
    if dof < 1:
        raise ValueError("dof must be >= 1")
    if not np.isfinite(x):
        return float("nan") if np.isnan(x) else 0.0
    if x <= 0:
        return 1.0
    h = x / 2.0
    if dof % 2 == 0:
        # exp(-h) sum_{i < dof/2} h^i / i!
        terms = [i * math.log(h) - h - math.lgamma(i + 1) for i in range(dof // 2)]
        q = sum(math.exp(t) for t in terms)
    else:
        # erfc(sqrt(h)) + exp(-h) sum_{i=1}^{(dof-1)/2} h^(i - 1/2) / Gamma(i + 1/2)
        terms = [(i - 0.5) * math.log(h) - h - math.lgamma(i + 0.5)
                 for i in range(1, (dof - 1) // 2 + 1)]
        q = math.erfc(math.sqrt(h)) + sum(math.exp(t) for t in terms)
    return float(min(max(q, 0.0), 1.0))


# ----------------------------------------------------------------------------------------------
# Coverage, PIT, SBC
# ----------------------------------------------------------------------------------------------

def _finite_rows(samples: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Rows of [N, S(, D)] samples and [N(, D)] truths with every value finite."""
    ok = np.isfinite(samples).reshape(samples.shape[0], -1).all(axis=1)
    return ok & np.isfinite(true).reshape(true.shape[0], -1).all(axis=1)


def _check_samples_1d(samples, true) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(samples, dtype=np.float64)
    true = _as_1d(true, "true")
    if samples.ndim != 2 or samples.shape[0] != true.shape[0]:
        raise ValueError(f"samples must be [N, S] with N = len(true) = {true.shape[0]}, got "
                         f"{samples.shape}")
    return samples, true


def coverage_curve(samples, true, levels: Sequence[float] = (0.68, 0.95)) -> np.ndarray:
    """Observed coverage [L] of the central credible intervals of ``levels`` [L]: the fraction
    of objects whose truth lies between the (1 - c)/2 and (1 + c)/2 sample quantiles (bounds
    included) of its posterior samples [N, S]; truths [N]. Rows with a NaN sample or truth are
    ignored; NaN where no row is left."""
    samples, true = _check_samples_1d(samples, true)
    ok = _finite_rows(samples, true)
    s, t = samples[ok], true[ok]
    out = np.full(len(levels), np.nan)
    for i, c in enumerate(levels):
        if not 0 < c < 1:
            raise ValueError(f"levels must be in (0, 1), got {c}")
        if s.shape[0]:
            lo, hi = np.quantile(s, [(1 - c) / 2, (1 + c) / 2], axis=1)
            out[i] = np.mean((t >= lo) & (t <= hi))
    return out


def interval_coverage(samples, true, levels: Sequence[float] = (0.68, 0.95)
                      ) -> dict[str, float]:
    """Fraction of objects whose truth lies in the central credible interval of its posterior.

    Args:
        samples: [N, S] posterior samples of one target; true: [N].
        levels: credibilities; the interval of level c runs from the (1 - c)/2 to the
            (1 + c)/2 sample quantile (bounds included).

    Returns ``{'coverage68': ..., 'coverage95': ..., 'n': N_used}`` (keys ``coverage`` + 100 c).
    Calibrated posteriors give coverage ~ c; over-confident (too narrow) ones less, under-
    confident (too wide) ones more. Rows with a NaN sample or truth are ignored
    (``coverage_curve``).
    """
    samples, true = _check_samples_1d(samples, true)
    cov = coverage_curve(samples, true, levels)
    out = {_level_key("coverage", c): float(v) for c, v in zip(levels, cov)}
    out["n"] = int(_finite_rows(samples, true).sum())
    return out


def quantile_coverage(lo, hi, true) -> tuple[float, int]:
    """(fraction of rows with lo <= true <= hi, rows used) from interval bounds [N] such as a
    posterior catalog's quantile columns; rows with any NaN are ignored."""
    lo, hi, true = _as_1d(lo, "lo"), _as_1d(hi, "hi"), _as_1d(true, "true")
    ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(true)
    n = int(ok.sum())
    if n == 0:
        return float("nan"), 0
    return float(np.mean((true[ok] >= lo[ok]) & (true[ok] <= hi[ok]))), n


def summary_coverage(summary: dict, true, target: str) -> dict[str, float]:
    """Coverage from the columns of ``Posterior.summarize`` (or a posterior catalog):
    ``coverage68`` from ``T_q16``..``T_q84`` and ``coverage95`` from ``T_q025``..``T_q975``
    of target T, against ``true`` [N] in the same (physical) units. Rows whose ``status``
    column, if present, is not 'ok' are ignored; ``n`` is the number of rows used."""
    true = _as_1d(true, "true")
    keep = np.ones(true.shape, bool)
    if "status" in summary:
        keep = np.asarray(summary["status"]).astype(str) == "ok"
    t = np.where(keep, true, np.nan)
    c68, n = quantile_coverage(summary[f"{target}_q16"], summary[f"{target}_q84"], t)
    c95, _ = quantile_coverage(summary[f"{target}_q025"], summary[f"{target}_q975"], t)
    return {"coverage68": c68, "coverage95": c95, "n": n}


def pit(samples, true) -> np.ndarray:
    """Probability integral transform of each truth under its posterior, [N] in [0, 1].

    PIT_i = (#{s < true_i} + #{s = true_i} / 2) / S from samples [N, S] (Dawid 1984; the
    photo-z calibration test of e.g. Polsterer et al. 2016). Uniform on [0, 1] for calibrated
    posteriors; U-shaped when over-confident, peaked at 0.5 when under-confident, tilted when
    biased. NaN where the row has a NaN."""
    samples, true = _check_samples_1d(samples, true)
    ok = _finite_rows(samples, true)
    out = np.full(true.shape, np.nan)
    if samples.shape[1] == 0:
        return out
    t = true[ok, None]
    s = samples[ok]
    out[ok] = ((s < t).sum(1) + 0.5 * (s == t).sum(1)) / samples.shape[1]
    return out


def pit_histogram(pit_values, bins: int = 20) -> dict:
    """Histogram of PIT values with uniformity statistics.

    Returns ``counts`` [bins], ``edges`` [bins + 1] on [0, 1], ``chi2`` = sum (O - E)^2 / E with
    E = n / bins, ``dof`` = bins - 1, ``pvalue`` = P(chi^2_dof > chi2) (small: not uniform),
    ``ks_stat``/``ks_pvalue`` of a one-sample KS test against U(0, 1), and ``n``."""
    u = np.asarray(pit_values, dtype=np.float64).ravel()
    u = u[np.isfinite(u)]
    counts, edges = np.histogram(u, bins=bins, range=(0.0, 1.0))
    n = int(u.size)
    if n == 0:
        return {"counts": counts, "edges": edges, "chi2": float("nan"), "dof": bins - 1,
                "pvalue": float("nan"), "ks_stat": float("nan"), "ks_pvalue": float("nan"),
                "n": 0}
    expected = n / bins
    chi2 = float(np.sum((counts - expected) ** 2) / expected)
    ks_d, ks_p = ks_1samp_uniform(u)
    return {"counts": counts, "edges": edges, "chi2": chi2, "dof": bins - 1,
            "pvalue": chi2_sf(chi2, bins - 1), "ks_stat": ks_d, "ks_pvalue": ks_p, "n": n}


def sbc_ranks(samples, true) -> np.ndarray:
    """Simulation-based calibration ranks (Talts et al. 2018, arXiv:1804.06788).

    rank[i, d] = #{s : samples[i, s, d] < true[i, d]}, in 0..S, from samples [N, S, D] and
    true [N, D] (the marginal ranks of sbi's ``run_sbc``). Uniform on 0..S when the posterior
    is calibrated. Returns float [N, D] with NaN where the sample row or truth has a NaN."""
    samples = np.asarray(samples, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if samples.ndim != 3 or true.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(f"samples must be [N, S, D] and true [N, D], got {samples.shape} and "
                         f"{true.shape}")
    ranks = (samples < true[:, None, :]).sum(axis=1).astype(np.float64)
    bad = ~np.isfinite(samples).all(axis=1) | ~np.isfinite(true)
    ranks[bad] = np.nan
    return ranks


def sbc_uniformity(ranks, num_samples: int, bins: int | None = None) -> dict:
    """Uniformity checks of SBC ranks [N, D] (or [N]) from ``num_samples`` = S samples each.

    As sbi's ``check_sbc`` (frequentist part): a KS test per dimension, here of the mid-rank
    transform (rank + 1/2) / (S + 1), which is uniform on (0, 1) up to the discreteness
    (sbi tests rank against U(0, S), which is off by up to 1/S). The c2st checks are not done;
    instead a chi-square test of the rank histogram in ``bins`` (default min(20, S + 1)) bins
    of whole ranks, with expected counts from the discrete uniform on 0..S.

    Returns per-dimension arrays [D]: ``ks_stat``, ``ks_pvalue``, ``chi2``, ``chi2_pvalue``,
    ``n``, plus ``dof``. Small p-values mean miscalibration."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim == 1:
        r = r[:, None]
    S = int(num_samples)
    bins = min(20, S + 1) if bins is None else int(bins)
    # Bin edges on whole ranks: bin k holds ranks in [edge_k, edge_{k+1}).
    edges = np.unique(np.floor(np.linspace(0, S + 1, bins + 1)).astype(int))
    nb = len(edges) - 1
    widths = np.diff(edges)
    out = {k: np.full(r.shape[1], np.nan) for k in ("ks_stat", "ks_pvalue", "chi2",
                                                    "chi2_pvalue", "n")}
    for d in range(r.shape[1]):
        x = r[:, d]
        x = x[np.isfinite(x)]
        out["n"][d] = x.size
        if not x.size:
            continue
        out["ks_stat"][d], out["ks_pvalue"][d] = ks_1samp_uniform((x + 0.5) / (S + 1))
        counts = np.histogram(x, bins=edges - 0.5)[0]
        expected = x.size * widths / (S + 1)
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        out["chi2"][d] = chi2
        out["chi2_pvalue"][d] = chi2_sf(chi2, max(nb - 1, 1))
    out["dof"] = max(nb - 1, 1)
    return out


# ----------------------------------------------------------------------------------------------
# TARP
# ----------------------------------------------------------------------------------------------

def tarp(samples, true, references=None, seed: int = 0, num_bins: int | None = None,
         z_score: bool = True, return_coverage: bool = False, chunk_rows: int = 1024):
    """Tests of Accuracy with Random Points (Lemos, Coogan et al. 2023, arXiv:2302.03026),
    following sbi's ``run_tarp``: a joint (all D targets at once) coverage test.

    For object i with a reference point r_i, the credibility f_i is the fraction of its
    posterior samples closer (L2) to r_i than the truth is. The expected coverage probability
    ECP(alpha) = fraction of objects with f_i < alpha is the diagonal ECP = alpha iff the
    posterior is calibrated (uniform f).

    Args:
        samples: [N, S, D] posterior samples; true: [N, D] truths (model space is the natural
            choice). Rows with any NaN are dropped.
        references: [N, D] reference points, or None to draw them uniformly in the bounding
            box of the truths with ``numpy.random.default_rng(seed)`` (as sbi's
            ``get_tarp_references``: one per object).
        num_bins: number of credibility bins K (default N // 10, at least 1, as sbi).
        z_score: rescale every dimension by the truths' min/max to [0, 1] first (sbi's
            ``z_score_theta``), so that no target dominates the distance by its units.
        return_coverage: also return f [N_used].
        chunk_rows: objects per chunk, bounding memory to about chunk_rows * S * D floats.

    Returns:
        (ecp [K + 1], alpha [K + 1]) with ecp[0] = 0 and alpha = linspace(0, 1, K + 1); and f
        when ``return_coverage``. Unlike sbi, whose histogram spans min(f)..max(f), the bins
        always span [0, 1], so that alpha is the credibility level the paper defines even when
        f is concentrated (under-confident posteriors).
    """
    samples = np.asarray(samples)
    true = np.asarray(true, dtype=np.float64)
    if samples.ndim != 3 or true.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(f"samples must be [N, S, D] and true [N, D], got {samples.shape} and "
                         f"{true.shape}")
    ok = _finite_rows(samples, true)
    if references is not None:
        references = np.asarray(references, dtype=np.float64)
        if references.shape != true.shape:
            raise ValueError(f"references must be [N, D] = {true.shape}, got "
                             f"{references.shape}")
        ok &= np.isfinite(references).all(axis=1)
        references = references[ok]
    true = true[ok]
    idx = np.flatnonzero(ok)
    n = true.shape[0]
    if n == 0:
        raise ValueError("tarp: no rows with finite samples and truth")
    lo, hi = true.min(axis=0), true.max(axis=0)
    if references is None:
        references = np.random.default_rng(seed).uniform(lo, hi, size=true.shape)
    scale = (hi - lo + 1e-10) if z_score else np.ones_like(lo)
    shift = lo if z_score else np.zeros_like(lo)
    t = (true - shift) / scale
    r = (references - shift) / scale
    d_true = np.sqrt(((t - r) ** 2).sum(-1))
    f = np.empty(n)
    for a in range(0, n, chunk_rows):
        s = (np.asarray(samples[idx[a:a + chunk_rows]], dtype=np.float64) - shift) / scale
        d_s = np.sqrt(((s - r[a:a + chunk_rows, None, :]) ** 2).sum(-1))
        f[a:a + chunk_rows] = (d_s < d_true[a:a + chunk_rows, None]).mean(axis=1)
    k = max(1, n // 10) if num_bins is None else int(num_bins)
    hist, alpha = np.histogram(f, bins=k, range=(0.0, 1.0))
    ecp = np.concatenate([[0.0], np.cumsum(hist) / hist.sum()])
    return (ecp, alpha, f) if return_coverage else (ecp, alpha)


def tarp_summary(ecp, alpha, n: int | None = None) -> dict[str, float]:
    """Summaries of a TARP curve (ecp, alpha) from ``tarp``, as sbi's ``check_tarp``.

    Args:
        ecp, alpha: [K + 1] from ``tarp``.
        n: the number of objects behind the curve (``summarize_calibration`` passes it);
            needed for ``ks_pvalue``.

    Returns:
        ``atc``: area to curve, sum over alpha >= 1/2 of (ECP - alpha) d alpha (sbi's
            definition). ~0 when calibrated; > 0 when the posterior is under-confident (too
            wide, overdispersed: the coverage values f pile up around 1/2); < 0 when it is
            over-confident (too narrow, underdispersed: f piles up at 0 and 1). A bias also
            lowers it (Lemos et al. 2023, fig. 2).
        ``ks_stat``: max |ECP - alpha|, the curve's largest distance to the diagonal; the KS
            statistic of the n coverage values against U(0, 1) (evaluated on the alpha grid).
        ``ks_pvalue``: its Kolmogorov p-value for n objects (small: the curve is not the
            diagonal). Slightly conservative, as the deviation is only seen on the grid. NaN
            without ``n``.
        ``ks_stat_sbi``, ``ks_pvalue_sbi``: sbi's ``check_tarp`` test, a two-sample KS test of
            the set of ECP values against the set of alpha values (exact p-value here). It has
            little power: for 1000 objects (100 bins) whose posteriors are twice too narrow or
            too wide it gives p ~ 0.04-0.1, where ``ks_pvalue`` is < 1e-20.
    """
    ecp = np.asarray(ecp, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if ecp.shape != alpha.shape or ecp.ndim != 1 or ecp.size < 2:
        raise ValueError(f"ecp and alpha must be equal 1-d arrays of >= 2 values, got "
                         f"{ecp.shape} and {alpha.shape}")
    mid = alpha.shape[0] // 2
    dalpha = alpha[1] - alpha[0]
    atc = float(((ecp[mid:] - alpha[mid:]) * dalpha).sum())
    dev = float(np.max(np.abs(ecp - alpha)))
    p = float("nan")
    if n is not None and n > 0:
        en = math.sqrt(n)
        p = float(kolmogorov_sf((en + 0.12 + 0.11 / en) * dev))
    d_sbi, p_sbi = ks_2samp(ecp, alpha)
    return {"atc": atc, "ks_stat": dev, "ks_pvalue": p, "ks_stat_sbi": d_sbi,
            "ks_pvalue_sbi": p_sbi}


# ----------------------------------------------------------------------------------------------
# Together
# ----------------------------------------------------------------------------------------------

def summarize_calibration(samples, true, names: Sequence[str], pit_bins: int = 20,
                          seed: int = 0, num_bins: int | None = None) -> dict:
    """Calibration report of posterior samples [N, S, D] against truths [N, D].

    Returns ``{'targets': {name: {...}}, 'tarp': {...}, 'n': rows with everything finite}``.
    Per target (its own finite rows): ``coverage68``, ``coverage95``, ``pit_chi2``,
    ``pit_pvalue``, ``pit_ks_pvalue``, ``sbc_ks_pvalue``, ``n``. Joint: the ``tarp_summary``
    (``atc``, ``ks_stat``, ``ks_pvalue``, ``ks_stat_sbi``, ``ks_pvalue_sbi``) of ``tarp`` over
    all D targets with references drawn with ``seed``, or {} if no row is usable.
    """
    samples = np.asarray(samples, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    names = list(names)
    if samples.ndim != 3 or true.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(f"samples must be [N, S, D] and true [N, D], got {samples.shape} and "
                         f"{true.shape}")
    if len(names) != true.shape[1]:
        raise ValueError(f"{len(names)} names for {true.shape[1]} targets")
    S = samples.shape[1]
    ranks = sbc_ranks(samples, true)
    sbc = sbc_uniformity(ranks, S)
    per: dict[str, dict] = {}
    for d, name in enumerate(names):
        cov = interval_coverage(samples[:, :, d], true[:, d])
        ph = pit_histogram(pit(samples[:, :, d], true[:, d]), bins=pit_bins)
        per[name] = {"coverage68": cov["coverage68"], "coverage95": cov["coverage95"],
                     "pit_chi2": ph["chi2"], "pit_pvalue": ph["pvalue"],
                     "pit_ks_pvalue": ph["ks_pvalue"],
                     "sbc_ks_pvalue": float(sbc["ks_pvalue"][d]), "n": cov["n"]}
    ok = _finite_rows(samples, true)
    n = int(ok.sum())
    joint = {}
    if n:
        ecp, alpha = tarp(samples[ok], true[ok], seed=seed, num_bins=num_bins)
        joint = tarp_summary(ecp, alpha, n=n)
    return {"targets": per, "tarp": joint, "n": n}


# ----------------------------------------------------------------------------------------------
# Information gain
# ----------------------------------------------------------------------------------------------

class EmpiricalPrior:
    """The empirical prior p_prior(theta) of the CFM paper (Yunus, Wu & Holwerda,
    arXiv:2512.05078): a Gaussian kernel density estimate of the true target vectors of a
    (training) set, in model space, with a full-covariance kernel and Scott's (1992) bandwidth
    factor n^(-1/(D+4)) (the kernel covariance is the data covariance times the factor squared,
    as ``scipy.stats.gaussian_kde``).

    Example::

        prior = EmpiricalPrior().fit(train_targets)      # [N, D]
        lp = prior.log_prob(test_targets)                # [M]
    """

    def __init__(self, chunk_elements: int = 1 << 22):
        #: bounds memory: about this many kernel evaluations per chunk of ``log_prob``.
        self.chunk_elements = int(chunk_elements)
        self.points: np.ndarray | None = None
        self.cov: np.ndarray | None = None

    def fit(self, true, max_points: int = 5000, seed: int = 0) -> "EmpiricalPrior":
        """Fit to ``true`` [N, D] (or [N]); rows with a NaN are dropped, and at most
        ``max_points`` rows, drawn without replacement with ``seed``, are kept as kernel
        centres. Returns self."""
        x = np.asarray(true, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"true must be [N, D], got shape {x.shape}")
        x = x[np.isfinite(x).all(axis=1)]
        n, dim = x.shape
        if n < dim + 1:
            raise ValueError(f"need more than D = {dim} finite rows to fit a prior, got {n}")
        if n > max_points:
            x = x[np.random.default_rng(seed).choice(n, size=max_points, replace=False)]
            n = max_points
        factor = n ** (-1.0 / (dim + 4))
        cov = np.atleast_2d(np.cov(x, rowvar=False)) * factor ** 2
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ValueError("the training targets are degenerate (a constant or collinear "
                             f"dimension; variances {np.diag(cov) / factor ** 2})") from None
        self.points, self.cov, self.factor = x, cov, factor
        self._chol_inv = np.linalg.inv(chol)
        self._points_w = x @ self._chol_inv.T
        self._points_sq = (self._points_w ** 2).sum(1)
        self._log_norm = (-0.5 * dim * math.log(2 * math.pi) - np.log(np.diag(chol)).sum()
                          - math.log(n))
        return self

    @property
    def dim(self) -> int:
        self._check_fitted()
        return self.points.shape[1]

    def _check_fitted(self):
        if self.points is None:
            raise RuntimeError("EmpiricalPrior is not fitted; call fit(true) first")

    def log_prob(self, theta) -> np.ndarray:
        """log p_prior(theta) [M] of ``theta`` [M, D] (or [M] for D = 1), NaN for rows with a
        NaN; evaluated in chunks of rows to bound memory."""
        self._check_fitted()
        th = np.asarray(theta, dtype=np.float64)
        if th.ndim == 1 and self.dim == 1:
            th = th[:, None]
        if th.ndim != 2 or th.shape[1] != self.dim:
            raise ValueError(f"theta must be [M, {self.dim}], got shape {th.shape}")
        out = np.full(th.shape[0], np.nan)
        ok = np.flatnonzero(np.isfinite(th).all(axis=1))
        step = max(1, self.chunk_elements // self.points.shape[0])
        for a in range(0, len(ok), step):
            rows = ok[a:a + step]
            tw = th[rows] @ self._chol_inv.T
            d2 = (tw ** 2).sum(1)[:, None] + self._points_sq[None, :] - 2.0 * tw @ self._points_w.T
            e = -0.5 * np.maximum(d2, 0.0)
            mx = e.max(axis=1)
            out[rows] = mx + np.log(np.exp(e - mx[:, None]).sum(axis=1)) + self._log_norm
        return out


def delta_log_p(log_q_true, log_prior_true) -> np.ndarray:
    """Information gain at the truth (Yunus, Wu & Holwerda 2025, arXiv:2512.05078):
    delta log p_i = log q(theta*_i | D_i) - log p_prior(theta*_i), [N].

    Positive: the posterior puts more density on the true value than the prior does (the data
    were informative and the posterior is right). Both densities must be in the same space
    (raygal: model space). NaN propagates."""
    a, b = _as_1d(log_q_true, "log_q_true"), _as_1d(log_prior_true, "log_prior_true")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    return a - b


def kl_mc(log_q_samples, log_prior_samples) -> np.ndarray:
    """Monte-Carlo KL(q || prior) per object, [N]: the mean over the S posterior samples
    theta_s ~ q(. | D_i) of log q(theta_s | D_i) - log p_prior(theta_s), from two [N, S]
    arrays evaluated at the same samples. Non-finite samples are left out of the mean; NaN if
    a row has none. >= 0 in expectation; its standard error is std / sqrt(S)."""
    a = np.asarray(log_q_samples, dtype=np.float64)
    b = np.asarray(log_prior_samples, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"log densities must both be [N, S], got {a.shape} and {b.shape}")
    d = a - b
    ok = np.isfinite(d)
    cnt = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.where(ok, d, 0.0).sum(axis=1) / cnt, np.nan)


def win_rate(a, b) -> float:
    """Fraction of objects with a > b (strictly) among those where both are finite, e.g. the
    share of galaxies whose delta log p is higher for the image model than the photometry
    model. NaN if no row is usable."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.mean(a[ok] > b[ok])) if ok.any() else float("nan")


def wasserstein_1d(a, b) -> float:
    """Exact 1-Wasserstein distance between the empirical distributions of ``a`` [N] and
    ``b`` [M] (NaN ignored), e.g. posterior means against the true marginal:

        W1 = int_0^1 |F_a^-1(u) - F_b^-1(u)| du = int |F_a(x) - F_b(x)| dx,

    computed exactly from the two step CDFs on the merged sorted values (as
    ``scipy.stats.wasserstein_distance``). Equals |c| for b = a + c."""
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not a.size or not b.size:
        return float("nan")
    x = np.sort(np.concatenate([a, b]))
    dx = np.diff(x)
    fa = np.searchsorted(a, x[:-1], "right") / a.size
    fb = np.searchsorted(b, x[:-1], "right") / b.size
    return float(np.sum(np.abs(fa - fb) * dx))


# ----------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------

def binary_classifier_metrics(prob, label, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of a probabilistic binary classifier (e.g. 'is the metallicity measurable').

    Args: prob [N] predicted P(positive), label [N] bool (or 0/1, NaN = unknown); a row is
    predicted positive when prob >= threshold. Rows with NaN in either are ignored.

    Returns accuracy, precision = TP / (TP + FP) (NaN with no predicted positive),
    recall = TP / (TP + FN) (NaN with no positive), brier = mean((prob - label)^2), n."""
    p = _as_1d(prob, "prob")
    y = _as_1d(label, "label")
    if p.shape != y.shape:
        raise ValueError(f"prob {p.shape} and label {y.shape} differ in shape")
    ok = np.isfinite(p) & np.isfinite(y)
    p, y = p[ok], y[ok] > 0.5
    n = int(ok.sum())
    nan = float("nan")
    if n == 0:
        return {"accuracy": nan, "precision": nan, "recall": nan, "brier": nan, "n": 0}
    pred = p >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    return {"accuracy": float(np.mean(pred == y)),
            "precision": tp / (tp + fp) if tp + fp else nan,
            "recall": tp / (tp + fn) if tp + fn else nan,
            "brier": float(np.mean((p - y) ** 2)), "n": n}


# ----------------------------------------------------------------------------------------------
# Gaussian closed forms
# ----------------------------------------------------------------------------------------------

def _as_mvn(mu, cov) -> tuple[np.ndarray, np.ndarray]:
    """mu [..., D], cov [..., D, D]; scalars are a 1-d Gaussian with variance ``cov``."""
    mu = np.asarray(mu, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if mu.ndim == 0:
        mu = mu[None]
    if cov.ndim == 0:
        cov = cov[None, None]
    if cov.shape[-2:] != (mu.shape[-1], mu.shape[-1]):
        raise ValueError(f"cov {cov.shape} does not fit mu {mu.shape}")
    return mu, cov


def gaussian_log_prob(x, mu, cov) -> np.ndarray:
    """log N(x; mu, cov) for x [..., D], mu [..., D], cov [..., D, D] (broadcast); for D = 1,
    scalars or x [M] with scalar mu and variance ``cov`` give [M]."""
    mu, cov = _as_mvn(mu, cov)
    x = np.asarray(x, dtype=np.float64)
    if mu.shape[-1] == 1 and (x.ndim == 0 or x.shape[-1] != 1):
        x = x[..., None]
    dim = mu.shape[-1]
    chol = np.linalg.cholesky(cov)
    sol = (np.linalg.inv(chol) @ (x - mu)[..., None])[..., 0]
    maha = (sol ** 2).sum(-1)
    logdet = 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    out = -0.5 * (maha + logdet + dim * math.log(2 * math.pi))
    return float(out) if np.ndim(out) == 0 else out


def gaussian_kl(mu_q, cov_q, mu_p, cov_p) -> np.ndarray | float:
    """KL(N(mu_q, cov_q) || N(mu_p, cov_p)) in nats:

        1/2 [tr(cov_p^-1 cov_q) + (mu_p - mu_q)^T cov_p^-1 (mu_p - mu_q) - D
             + ln det cov_p - ln det cov_q].

    mu [..., D], cov [..., D, D] (broadcast); scalars are 1-d Gaussians with variance cov."""
    mu_q, cov_q = _as_mvn(mu_q, cov_q)
    mu_p, cov_p = _as_mvn(mu_p, cov_p)
    dim = mu_q.shape[-1]
    inv_p = np.linalg.inv(cov_p)
    diff = (mu_p - mu_q)[..., None]
    tr = np.trace(inv_p @ cov_q, axis1=-2, axis2=-1)
    maha = (np.swapaxes(diff, -1, -2) @ inv_p @ diff)[..., 0, 0]
    logdet = np.linalg.slogdet(cov_p)[1] - np.linalg.slogdet(cov_q)[1]
    out = 0.5 * (tr + maha - dim + logdet)
    return float(out) if np.ndim(out) == 0 else out
