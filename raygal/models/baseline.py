"""A diagonal-Gaussian baseline posterior: an MLP (plus a small CNN for images) predicts a
mean and a standard deviation per target. Useful as a sanity check and a speed reference."""
from __future__ import annotations

import math

import torch

from .estimator import ConditionalEstimator, Context
from .nets import MLP, SmallCNN, masked_mean
from .posterior import NeuralPosterior


class GaussianEstimator(ConditionalEstimator):
    """q(theta | x) = N(mu(x), diag sigma(x)^2) in standardised space.

    Config: ``hidden`` (128), ``layers`` (3), ``image_features`` (64), ``image_shape``.
    """

    def __init__(self, targets, spec, config=None):
        super().__init__(targets, spec, config)
        c = self.config
        c.setdefault("hidden", 128)
        c.setdefault("layers", 3)
        c.setdefault("image_features", 64)
        n_in = spec.n_phot
        if spec.image_shape is not None:
            self.cnn = SmallCNN(spec.image_shape[0], c["image_features"])
            n_in += c["image_features"]
        self.net = MLP(n_in, 2 * self.dim, c["hidden"], c["layers"])

    def _params(self, ctx: Context):
        parts = [p for p in (ctx.phot, None if ctx.image is None else self.cnn(ctx.image))
                 if p is not None]
        mu, log_sigma = self.net(torch.cat(parts, -1)).chunk(2, dim=-1)
        return mu, log_sigma.clamp(-7, 5)

    def sample(self, ctx, n, generator=None):
        mu, log_sigma = self._params(ctx)
        eps = torch.randn((len(ctx), n, self.dim), generator=generator, device=mu.device)
        return mu[:, None] + log_sigma.exp()[:, None] * eps

    def log_prob(self, theta, ctx):
        mu, log_sigma = self._params(ctx)
        return (-0.5 * ((theta - mu) / log_sigma.exp()) ** 2 - log_sigma
                - 0.5 * math.log(2 * math.pi)).sum(-1)

    def loss(self, theta, ctx, generator=None):
        mu, log_sigma = self._params(ctx)
        present = torch.isfinite(theta)
        nll = 0.5 * ((torch.nan_to_num(theta) - mu) / log_sigma.exp()) ** 2 + log_sigma
        loss = masked_mean(nll, present)
        return {"loss": loss, "nll": loss.detach()}


class GaussianPosterior(NeuralPosterior):
    """The diagonal-Gaussian baseline (kind 'gaussian'): a ``GaussianEstimator`` on the inputs
    of ``raygal.inputs.ModelInputs``."""

    kind = "gaussian"
    estimator_class = GaussianEstimator


__all__ = ["GaussianEstimator", "GaussianPosterior"]
