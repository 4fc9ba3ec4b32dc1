"""raygal's posterior estimators, all behind one interface (``Posterior``).

- ``GaussianPosterior`` ('gaussian'): a diagonal-Gaussian MLP baseline;
- ``FlowPosterior`` ('nf'): VAE features + two-branch conditional RealNVP (Siddiga et al.);
- ``FlowMatchingPosterior`` ('cfm'): conditional flow matching with an image encoder
  (Yunus et al.);
- ``EnsemblePosterior`` ('ensemble'): a mixture of K independently seeded members.
"""
import importlib

from .posterior import (QUANTILE_NAMES, QUANTILES, Context, Posterior, _REGISTRY,
                        load_posterior, read_model_description, register)

_MODULES = ("baseline", "nf", "cfm", "ensemble")


def available_kinds() -> list[str]:
    """Import every model module (so each registers its kind) and list the kinds."""
    for m in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{m}")
        except ModuleNotFoundError as exc:  # a module not written yet
            if exc.name != f"{__name__}.{m}":
                raise
    return sorted(_REGISTRY)


__all__ = ["Posterior", "Context", "register", "load_posterior", "read_model_description",
           "available_kinds", "QUANTILES", "QUANTILE_NAMES"]
