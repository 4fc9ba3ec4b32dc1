"""A convolutional variational autoencoder for gri cutouts (Siddiga, Mahmud & Martinez-Galarza,
arXiv:2511.12737, section 3).

The encoder's posterior means and standard deviations, ``features(x) = [mu, sigma]``
(``[B, 2 * latent]``, 64-d by default), are the image summary the conditional RealNVP
(``raygal.models.nf.FlowPosterior``) sees, with the encoder frozen.

Images are expected as ``NormStats.norm_cutout`` gives them: an asinh stretch per channel, so
the decoder's output is left linear.

    >>> vae = VAE({"image_shape": [3, 64, 64]})
    >>> vae.features(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 64])

``VAEModel`` (kind 'vae') pairs a VAE with the normalisation statistics of its training
cutouts; it trains in the shared loop and is saved as a folder like every raygal model
(``save_vae`` / ``load_vae``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..inputs import ModelInputs, NormStats
from .estimator import randn
from .posterior import SavedModel, load_model

VAE_KIND = "vae"

#: Defaults of ``VAE.config``.
VAE_DEFAULTS = {
    "image_shape": [3, 64, 64],   # [C, H, W]; H and W divisible by 8 (64-160 px in practice)
    "latent": 32,                 # latent dimension; features() is 2 * latent wide
    "channels": [32, 64, 128],    # the three stride-2 conv layers
    "fc_hidden": 256,             # FC layer between the conv stack and mu / log-variance
    "beta": 1.0,                  # weight of the KL term (beta-VAE)
    "kl_warmup_steps": 0,         # beta rises linearly from 0 over this many training steps
    "free_bits": 0.0,             # nats per latent dimension the KL term does not penalise
}

# log-variance bounds: keep exp() finite on wild inputs without touching sensible values.
_LOGVAR_MIN, _LOGVAR_MAX = -12.0, 8.0


def vae_config(config: dict | None = None) -> dict:
    """``config`` completed with ``VAE_DEFAULTS`` and checked."""
    c = {**VAE_DEFAULTS, **dict(config or {})}
    c["image_shape"] = [int(s) for s in c["image_shape"]]
    c["channels"] = [int(s) for s in c["channels"]]
    if len(c["image_shape"]) != 3:
        raise ValueError(f"image_shape must be [C, H, W], not {c['image_shape']}")
    if len(c["channels"]) != 3:
        raise ValueError(f"channels must list three conv widths, not {c['channels']}")
    _, h, w = c["image_shape"]
    if h % 8 or w % 8 or h < 8 or w < 8:
        raise ValueError(f"image height and width must be multiples of 8 (three stride-2 "
                         f"convolutions), not {h}x{w}")
    c["latent"] = int(c["latent"])
    c["fc_hidden"] = int(c["fc_hidden"])
    c["beta"] = float(c["beta"])
    c["kl_warmup_steps"] = int(c["kl_warmup_steps"])
    c["free_bits"] = float(c["free_bits"])
    if c["beta"] < 0 or c["free_bits"] < 0 or c["kl_warmup_steps"] < 0:
        raise ValueError("beta, free_bits and kl_warmup_steps must be >= 0")
    return c


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class VAEEncoder(nn.Module):
    """[B, C, H, W] -> (mu, logvar), each [B, latent]: three conv layers (kernel 4, stride 2,
    padding 1: each halves H and W), then FC layers."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = c = vae_config(config)
        ch, h, w = c["image_shape"]
        c1, c2, c3 = c["channels"]
        self.conv = nn.Sequential(
            nn.Conv2d(ch, c1, 4, 2, 1), _act(),
            nn.Conv2d(c1, c2, 4, 2, 1), _act(),
            nn.Conv2d(c2, c3, 4, 2, 1), _act(),
            nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(c3 * (h // 8) * (w // 8), c["fc_hidden"]), _act())
        self.mu = nn.Linear(c["fc_hidden"], c["latent"])
        self.logvar = nn.Linear(c["fc_hidden"], c["latent"])

    @property
    def out_features(self) -> int:
        return 2 * self.config["latent"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expected = tuple(self.config["image_shape"])
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"the VAE expects images of shape {expected}, got "
                             f"{tuple(x.shape[1:])}")
        e = self.fc(self.conv(x))
        return self.mu(e), self.logvar(e).clamp(_LOGVAR_MIN, _LOGVAR_MAX)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2 * latent] = concat(mu, sigma), sigma = exp(logvar / 2)."""
        mu, logvar = self(x)
        return torch.cat([mu, torch.exp(0.5 * logvar)], dim=-1)


class VAEDecoder(nn.Module):
    """[B, latent] -> [B, C, H, W]: FC layers, then transposed convs mirroring the encoder."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = c = vae_config(config)
        ch, h, w = c["image_shape"]
        c1, c2, c3 = c["channels"]
        self._grid = (c3, h // 8, w // 8)
        self.fc = nn.Sequential(nn.Linear(c["latent"], c["fc_hidden"]), _act(),
                                nn.Linear(c["fc_hidden"], c3 * (h // 8) * (w // 8)), _act())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c3, c2, 4, 2, 1), _act(),
            nn.ConvTranspose2d(c2, c1, 4, 2, 1), _act(),
            nn.ConvTranspose2d(c1, ch, 4, 2, 1))   # linear output: asinh-stretched pixels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(-1, *self._grid))


class VAE(nn.Module):
    """Convolutional VAE with a diagonal-Gaussian posterior and a standard-normal prior.

    Args:
        config: ``image_shape`` ([3, 64, 64]; H, W multiples of 8), ``latent`` (32),
            ``channels`` ([32, 64, 128]), ``fc_hidden`` (256), ``beta`` (1.0, the KL weight),
            ``kl_warmup_steps`` (0), ``free_bits`` (0.0): the paper's VAE by default, with the
            two standard remedies against posterior collapse available.

    ``loss(x)`` = per-image sum of squared errors + beta * KL(q(z|x) || N(0, I)), both
    averaged over the batch (a unit-variance Gaussian likelihood in stretched-pixel units:
    with a per-pixel mean instead the KL term would swamp reconstruction and the posterior
    would collapse to the prior). Against collapse (latents that carry nothing, so the flows
    see no morphology): KL warm-up (Bowman et al. 2016), beta rising linearly from 0 over the
    first ``kl_warmup_steps`` training steps; free bits (Kingma et al. 2016), each latent
    dimension's batch-mean KL counted as at least ``free_bits`` nats, so the optimiser gains
    nothing by pushing a dimension below it. ``active_units`` counts the latents in use.
    """

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = vae_config(config)
        self.encoder = VAEEncoder(self.config)
        self.decoder = VAEDecoder(self.config)
        # Training steps taken (for the KL warm-up); saved, so a resumed run continues it.
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, config: dict) -> "VAE":
        return cls(config)

    @property
    def latent(self) -> int:
        return self.config["latent"]

    @property
    def feature_dim(self) -> int:
        return self.encoder.out_features

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each [B, latent]."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, latent] -> [B, C, H, W] reconstructions (e.g. for latent traversals)."""
        return self.decoder(z)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2 * latent] = concat(mu, sigma): what the flows are conditioned on."""
        return self.encoder.features(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        eps = randn(mu.shape, generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction [B, C, H, W], mu, logvar) with z drawn by reparameterisation."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, generator)), mu, logvar

    def kl_weight(self) -> float:
        """beta, ramped up over the first ``kl_warmup_steps`` training steps."""
        warm = self.config["kl_warmup_steps"]
        ramp = min(1.0, float(self.steps) / warm) if warm else 1.0
        return self.config["beta"] * ramp

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None
             ) -> dict[str, torch.Tensor]:
        """{'loss', 'recon', 'kl'}: recon and KL per image, averaged over the batch. In
        training mode each call counts one step of the KL warm-up."""
        recon, mu, logvar = self(x, generator)
        rec = ((recon - x) ** 2).flatten(1).sum(1).mean()
        kl_dim = kl_per_dim_nats(mu, logvar)                          # [latent]
        free = self.config["free_bits"]
        kl_term = (kl_dim.clamp_min(free) if free else kl_dim).sum()
        loss = rec + self.kl_weight() * kl_term
        if self.training:
            self.steps += 1
        return {"loss": loss, "recon": rec.detach(), "kl": kl_dim.sum().detach()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n, C, H, W] images decoded from prior draws."""
        z = torch.randn((n, self.latent), generator=generator, device=_device(self))
        return self.decode(z)


def _device(m: nn.Module) -> torch.device:
    for p in m.parameters():
        return p.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# The VAE as a saved, trainable raygal model
# ----------------------------------------------------------------------------------------------

class VAEModel(SavedModel):
    """A ``VAE`` with the normalisation statistics that stretch its cutouts (kind 'vae'): it
    trains in the shared training loop on batches that ``ModelInputs('image', ...)`` prepares,
    and saves and loads like every raygal model.

    Args:
        vae: the network.
        stats: ``NormStats`` whose ``cutout_scale`` says how the training images were
            stretched (None for a VAE not trained on raygal data).
    """

    kind = VAE_KIND

    def __init__(self, vae: VAE, stats: NormStats | None = None):
        super().__init__()
        self.vae = vae
        self.config = vae.config
        self.has_stats = stats is not None
        self.model_inputs = ModelInputs("image", stats if stats is not None else NormStats(),
                                        (), vae.config["image_shape"])

    @classmethod
    def from_config(cls, config: dict, stats: NormStats | None = None) -> "VAEModel":
        return cls(VAE(config), stats)

    @classmethod
    def from_training_config(cls, cfg: dict, stats: NormStats, image_shape=None) -> "VAEModel":
        mc = dict(cfg.get("model_config") or {})
        if image_shape is not None:
            mc.setdefault("image_shape", list(image_shape))
        return cls.from_config(mc, stats)

    @classmethod
    def from_description(cls, desc: dict) -> "VAEModel":
        stats = NormStats.from_dict(desc["stats"]) if desc.get("stats") else None
        return cls.from_config(desc["config"], stats)

    def describe(self) -> dict:
        desc = super().describe()
        desc["stats"] = self.stats.to_dict() if self.has_stats else None
        return desc

    @staticmethod
    def migrate_v1(state: dict) -> dict:
        state = {f"vae.{k}": v for k, v in state.items()}
        state.setdefault("vae.steps", torch.zeros((), dtype=torch.long))
        return state

    def forward(self, prepared: dict) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(prepared["image"]).to(self.device, torch.float32)
        return self.vae.loss(x, generator=self.validation_generator(prepared))


def save_vae(vae: VAE, uri: str, stats=None) -> None:
    """Save ``vae`` (with the ``NormStats`` that stretched its training cutouts, if given) as
    a raygal model folder."""
    VAEModel(vae, stats).save(uri)


def load_vae(uri: str, map_location="cpu") -> VAE:
    """The ``VAE`` of a saved VAE model, in eval mode, with its normalisation statistics (or
    None) attached as ``vae.stats``."""
    model = load_model(uri, map_location)
    if not isinstance(model, VAEModel):
        raise ValueError(f"{uri}: a raygal model of kind {model.kind!r}, not a VAE")
    vae = model.vae
    vae.stats = model.stats if model.has_stats else None
    return vae


def kl_per_dim_nats(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """[latent] mean KL of each latent dimension over a batch: active units have KL well above
    0 (a diagnostic for posterior collapse)."""
    return (0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar)).mean(0)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions in use (Burda, Grosse & Salakhutdinov 2016): those whose posterior
    mean varies across images, Var_x(E[z | x]) > ``threshold``. ``mu`` is [N, latent] over a
    sample of images; a collapsed dimension's mean is the same for every image.

    >>> active_units(torch.cat([torch.randn(100, 2), torch.zeros(100, 3)], dim=1))
    2
    """
    return int((mu.var(dim=0) > threshold).sum())


__all__ = ["VAE", "VAEModel", "VAEEncoder", "VAEDecoder", "VAE_DEFAULTS", "vae_config", "save_vae",
           "load_vae", "kl_per_dim_nats", "active_units"]
