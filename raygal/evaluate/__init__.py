"""Evaluation of raygal posteriors: accuracy, calibration and information-gain metrics, per
population and beside baseline regressors, and the report that shows them.

Split by job: ``metrics`` (pure numpy definitions and references), ``data`` (reading and
joining catalogs with the truth), ``calibration`` (posterior samples of a calibration subset),
``scores``, ``populations`` and ``baselines`` (what is scored on which rows), ``tables``
(Markdown), ``plots`` (arrays in, figures out), ``latent`` (the VAE latent space), ``page``
(the report page), and the two entry points ``run.evaluate`` and ``report.make_report``."""
from .metrics import (EmpiricalPrior, binary_classifier_metrics, chi2_sf, coverage_curve,
                      delta_log_p, gaussian_kl, gaussian_log_prob, interval_coverage, kl_mc,
                      kolmogorov_sf, ks_1samp_uniform, ks_2samp, pit, pit_histogram,
                      point_metrics, quantile_coverage, sbc_ranks, sbc_uniformity, sigma_nmad,
                      summarize_calibration, summary_coverage, tarp, tarp_summary,
                      wasserstein_1d, win_rate)

__all__ = [
    "EmpiricalPrior", "binary_classifier_metrics", "chi2_sf", "coverage_curve", "delta_log_p",
    "gaussian_kl", "gaussian_log_prob", "interval_coverage", "kl_mc", "kolmogorov_sf",
    "ks_1samp_uniform", "ks_2samp", "pit", "pit_histogram", "point_metrics",
    "quantile_coverage", "sbc_ranks", "sbc_uniformity", "sigma_nmad", "summarize_calibration",
    "summary_coverage", "tarp", "tarp_summary", "wasserstein_1d", "win_rate",
]
