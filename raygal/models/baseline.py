"""A diagonal-Gaussian baseline posterior: an MLP (plus a small CNN for images) predicts a
mean and a standard deviation per target. Useful as a sanity check and a speed reference."""
from __future__ import annotations

import math

import torch


from .nets import MLP, SmallCNN, masked_mean
from .posterior import Context, Posterior, register


@register
class GaussianPosterior(Posterior):
    """q(theta | x) = N(mu(x), diag sigma(x)^2) in standardised space.

    Config: ``hidden`` (128), ``layers`` (3), ``image_features`` (64), ``image_shape``.
    """

    kind = "gaussian"

    def __init__(self, targets, inputs, stats, config=None):
        super().__init__(targets, inputs, stats, config)
        c = self.config
        c.setdefault("hidden", 128)
        c.setdefault("layers", 3)
        c.setdefault("image_features", 64)
        n_in = 5
        if self.uses_image:
            self.cnn = SmallCNN(c.get("image_shape", [3])[0], c["image_features"])
            n_in += c["image_features"]
        self.net = MLP(n_in, 2 * self.dim, c["hidden"], c["layers"])

    def _params(self, ctx: Context):
        h = ctx.phot if ctx.image is None else torch.cat([ctx.phot, self.cnn(ctx.image)], -1)
        mu, log_sigma = self.net(h).chunk(2, dim=-1)
        return mu, log_sigma.clamp(-7, 5)

    def _sample_std(self, ctx, n, generator):
        mu, log_sigma = self._params(ctx)
        eps = torch.randn((len(ctx), n, self.dim), generator=generator, device=mu.device)
        return mu[:, None] + log_sigma.exp()[:, None] * eps

    def _log_prob_std(self, z, ctx):
        mu, log_sigma = self._params(ctx)
        return (-0.5 * ((z - mu) / log_sigma.exp()) ** 2 - log_sigma
                - 0.5 * math.log(2 * math.pi)).sum(-1)

    def loss(self, batch):
        ctx, y = self.training_tensors(batch)
        mu, log_sigma = self._params(ctx)
        present = torch.isfinite(y)
        nll = 0.5 * ((torch.nan_to_num(y) - mu) / log_sigma.exp()) ** 2 + log_sigma
        loss = masked_mean(nll, present)
        return {"loss": loss, "nll": loss.detach()}
