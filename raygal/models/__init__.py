"""raygal's posterior estimators, all behind one interface (``Posterior``).

- ``GaussianPosterior`` ('gaussian'): a diagonal-Gaussian MLP baseline;
- ``FlowPosterior`` ('nf'): VAE features + two-branch conditional RealNVP (Siddiga et al.);
- ``FlowMatchingPosterior`` ('cfm'): conditional flow matching with an image encoder
  (Yunus et al.);
- ``EnsemblePosterior`` ('ensemble'): a mixture of K independently seeded members;
- ``VAEModel`` ('vae'): the image autoencoder whose frozen encoder the NF uses.

Each is an estimator (``raygal.models.estimator``: pure torch) composed with the inputs
adapter (``raygal.inputs.ModelInputs``) by ``NeuralPosterior``. The kinds are listed once, in
``raygal.models.registry``.
"""
from .estimator import ConditionalEstimator, Context, ContextSpec
from .posterior import (QUANTILE_NAMES, QUANTILES, NeuralPosterior, Posterior, SavedModel,
                        TargetSpace, load_model, load_posterior, read_model_description)
from .registry import POSTERIOR_KINDS, TRAINABLE_KINDS, model_class, model_kinds

__all__ = ["Posterior", "NeuralPosterior", "SavedModel", "ConditionalEstimator", "Context",
           "ContextSpec", "TargetSpace", "load_posterior", "load_model",
           "read_model_description", "model_class", "model_kinds", "TRAINABLE_KINDS",
           "POSTERIOR_KINDS", "QUANTILES", "QUANTILE_NAMES"]
