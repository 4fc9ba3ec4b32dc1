"""Data-parallel training on Ray Train (VAE, flows, CFM, baseline) and its configuration."""
from .config import MODEL_KINDS, TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "MODEL_KINDS", "fit", "make_trainer"]


def __getattr__(name):
    if name in ("fit", "make_trainer", "export_checkpoint"):
        from . import driver

        return getattr(driver, name)
    raise AttributeError(name)
