"""Evaluation of raygal posteriors: accuracy, calibration and information-gain metrics.

See ``raygal.evaluate.metrics`` for the definitions and references."""
from .metrics import (EmpiricalPrior, binary_classifier_metrics, chi2_sf, delta_log_p,
                      gaussian_kl, gaussian_log_prob, interval_coverage, kl_mc, kolmogorov_sf,
                      ks_1samp_uniform, ks_2samp, pit, pit_histogram, point_metrics,
                      quantile_coverage, sbc_ranks, sbc_uniformity, sigma_nmad,
                      summarize_calibration, summary_coverage, tarp, tarp_summary,
                      wasserstein_1d, win_rate)

__all__ = [
    "EmpiricalPrior", "binary_classifier_metrics", "chi2_sf", "delta_log_p", "gaussian_kl",
    "gaussian_log_prob", "interval_coverage", "kl_mc", "kolmogorov_sf", "ks_1samp_uniform",
    "ks_2samp", "pit", "pit_histogram", "point_metrics", "quantile_coverage", "sbc_ranks",
    "sbc_uniformity", "sigma_nmad", "summarize_calibration", "summary_coverage", "tarp",
    "tarp_summary", "wasserstein_1d", "win_rate",
]
