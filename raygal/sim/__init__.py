"""The mock SDSS-like survey: physically motivated galaxies with ground truth.

Galaxies are drawn jointly from published relations (``physics``), observed in ugriz through a
two-population spectral model (``photometry``), kept if brighter than r = 17.77, and imaged in
g, r, i at 0.396"/pixel (``morphology``, ``images``). ``survey`` streams them in deterministic
chunks into sharded Parquet, optionally with the latent morphology columns the images are
made from (``latents``: ``lat_*``, never model inputs).

>>> from raygal.sim import simulate_batch
>>> t = simulate_batch(8, with_images=False, seed=1)
>>> t.num_rows, bool((t.column("mag_r").to_numpy() < 17.77).all())
(8, True)
"""
from .latents import LATENT_NAMES, LATENT_PREFIX, LATENTS
from .survey import CHUNK_SIZE, GENERATOR, R_LIMIT, simulate, simulate_batch

__all__ = ["simulate", "simulate_batch", "CHUNK_SIZE", "GENERATOR", "R_LIMIT", "LATENTS",
           "LATENT_NAMES", "LATENT_PREFIX"]
