"""The model kinds raygal knows, in one place.

Each saved model folder names its ``kind`` in ``model.json``; this table says which class
loads it. It imports nothing heavy, so the command line can list the kinds without loading
torch; ``model_class`` imports a model's module only when it is needed.
"""
from __future__ import annotations

import importlib

#: kind -> (module under raygal.models, class name)
MODELS = {
    "gaussian": ("baseline", "GaussianPosterior"),
    "nf": ("nf", "FlowPosterior"),
    "cfm": ("cfm", "FlowMatchingPosterior"),
    "vae": ("vae", "VAEModel"),
    "ensemble": ("ensemble", "EnsemblePosterior"),
}
#: kinds that ``raygal train`` trains (an ensemble is built from trained members).
TRAINABLE_KINDS = ("vae", "nf", "cfm", "gaussian")
#: trainable kinds that are posteriors (``raygal tune``, ``raygal infer``).
POSTERIOR_KINDS = ("nf", "cfm", "gaussian")


def model_kinds() -> list[str]:
    return sorted(MODELS)


def model_class(kind: str):
    """The class that builds and loads models of ``kind``."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {model_kinds()}")
    module, name = MODELS[kind]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


__all__ = ["MODELS", "TRAINABLE_KINDS", "POSTERIOR_KINDS", "model_kinds", "model_class"]
