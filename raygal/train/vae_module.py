"""The VAE as a Ray Train model: ``forward(batch)`` returns its loss like every Posterior."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..inputs import NormStats, as_numpy_batch, check_training_batch, cutout_array
from ..models.vae import VAE, save_vae


class VAETrainingModule(nn.Module):
    """Wraps a ``VAE`` so the shared training loop can train it on galaxy batches: cutouts are
    stretched with the dataset's ``NormStats`` and the loss is MSE + beta KL."""

    def __init__(self, vae: VAE, stats: NormStats):
        super().__init__()
        self.vae = vae
        self.stats = stats

    @classmethod
    def from_config(cls, config: dict, stats: NormStats) -> "VAETrainingModule":
        return cls(VAE(config), stats)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        b = as_numpy_batch(batch)
        check_training_batch(b, (), needs_image=True)
        x = torch.from_numpy(self.stats.norm_cutout(cutout_array(b)))
        device = next(self.vae.parameters()).device
        gen = None
        if not self.training:
            # Validation draws the same latent noise for the same rows at every epoch.
            ids = np.asarray(b.get("objid", np.arange(len(x))))
            gen = torch.Generator(device=device)
            gen.manual_seed(int(ids.astype(np.uint64).sum() % np.uint64(2**62)))
        return self.vae.loss(x.to(device), generator=gen)

    loss = forward

    def describe(self) -> dict:
        return {"kind": "vae", "config": self.vae.config}

    def export(self, uri: str) -> None:
        save_vae(self.vae, uri, self.stats)
