"""The convolutional VAE: shapes over input sizes, the loss, training signal, persistence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raygal.inputs import NormStats
from raygal.models import load_posterior, read_model_description
from raygal.models.vae import VAE, VAE_DEFAULTS, kl_per_dim_nats, load_vae, save_vae, vae_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"channels": [8, 16, 16], "fc_hidden": 64}


def blobs(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """[n, 3, size, size] asinh-stretched Gaussian blobs of random widths and colours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    w = rng.uniform(size / 20, size / 8, (n, 1, 1, 1))
    img = np.exp(-(xx ** 2 + yy ** 2)[None, None] / (2 * w ** 2)) * rng.uniform(1, 5, (n, 3, 1, 1))
    img += rng.normal(0, 0.05, img.shape)
    return torch.from_numpy(np.arcsinh(img).astype(np.float32))


@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 128, 128), (3, 64, 96), (1, 160, 160)])
@pytest.mark.parametrize("B", [1, 3])
def test_shapes(shape, B):
    torch.manual_seed(0)
    vae = VAE({"image_shape": list(shape), **SMALL})
    x = torch.randn(B, *shape)
    recon, mu, logvar = vae(x)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == (B, 32)
    f = vae.features(x)
    assert f.shape == (B, 64)
    assert torch.equal(f[:, :32], mu) and torch.allclose(f[:, 32:], torch.exp(0.5 * logvar))
    assert vae.decode(torch.zeros(B, 32)).shape == x.shape
    assert vae.sample(2).shape == (2, *shape)


def test_config_defaults_and_errors():
    vae = VAE()
    assert vae.config == vae_config(VAE_DEFAULTS)
    assert vae.config["latent"] == 32 and vae.config["beta"] == 1.0
    assert VAE.from_config(vae.config).config == vae.config
    assert VAE({"latent": 8}).features(torch.zeros(1, 3, 64, 64)).shape == (1, 16)
    with pytest.raises(ValueError, match="multiples of 8"):
        VAE({"image_shape": [3, 60, 60]})
    with pytest.raises(ValueError, match="expects images"):
        vae(torch.zeros(1, 3, 128, 128))


def test_loss_parts_and_beta():
    torch.manual_seed(0)
    x = blobs(4, 64)
    for beta in (1.0, 4.0):
        vae = VAE({"beta": beta, **SMALL})
        torch.manual_seed(1)
        out = vae.loss(x, generator=torch.Generator().manual_seed(0))
        assert set(out) == {"loss", "recon", "kl"}
        total = float(out["recon"] + beta * out["kl"])
        assert float(out["loss"].detach()) == pytest.approx(total, rel=1e-6)
        assert float(out["kl"]) >= 0 and float(out["recon"]) > 0
    # the KL of q = prior is 0
    mu, logvar = torch.zeros(5, 32), torch.zeros(5, 32)
    assert torch.equal(kl_per_dim_nats(mu, logvar), torch.zeros(32))


def test_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    x = blobs(8, 64)
    vae = VAE(SMALL)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        out = vae.loss(x, generator=gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_reparameterisation_is_seeded():
    torch.manual_seed(0)
    vae = VAE(SMALL)
    x = blobs(2, 64)
    a = vae(x, torch.Generator().manual_seed(3))[0]
    b = vae(x, torch.Generator().manual_seed(3))[0]
    c = vae(x, torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    vae = VAE({"image_shape": [3, 64, 64], **SMALL})
    stats = NormStats(cutout_scale=[0.1, 0.2, 0.3])
    uri = str(tmp_path / "vae")
    save_vae(vae, uri, stats)
    desc = read_model_description(uri)
    assert desc["format"] == "raygal-model" and desc["kind"] == "vae"
    vae2 = load_vae(uri)
    assert vae2.config == vae.config and not vae2.training
    assert vae2.stats.cutout_scale == [0.1, 0.2, 0.3]
    x = blobs(3, 64)
    assert torch.equal(vae2.features(x), vae.features(x))
    z = torch.randn(2, 32)
    assert torch.equal(vae2.decode(z), vae.decode(z))
    save_vae(vae, str(tmp_path / "nostats"))
    assert load_vae(str(tmp_path / "nostats")).stats is None
    # a VAE folder is a raygal model, but not a posterior
    with pytest.raises(ValueError, match="vae"):
        load_posterior(uri)


def test_kl_warmup_ramps_beta_and_counts_training_steps():
    vae = VAE({"image_shape": [3, 16, 16], "latent": 4, "channels": [4, 4, 4], "fc_hidden": 8,
               "beta": 2.0, "kl_warmup_steps": 4})
    x = torch.randn(3, 3, 16, 16)
    assert vae.kl_weight() == 0.0
    vae.train()
    for step in range(1, 6):
        vae.loss(x)
        assert vae.kl_weight() == pytest.approx(2.0 * min(1.0, step / 4))
    vae.eval()
    vae.loss(x)                                    # validation does not advance the ramp
    assert int(vae.steps) == 5
    again = VAE(vae.config)
    again.load_state_dict(vae.state_dict())       # the ramp survives a checkpoint
    assert again.kl_weight() == pytest.approx(2.0)


def test_free_bits_floor_each_dimension_kl():
    torch.manual_seed(0)
    cfg = {"image_shape": [3, 16, 16], "latent": 4, "channels": [4, 4, 4], "fc_hidden": 8}
    plain, floored = VAE(cfg), VAE({**cfg, "free_bits": 5.0})
    floored.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 16, 16)
    g = torch.Generator().manual_seed(1)
    a = plain.loss(x, torch.Generator().manual_seed(1))
    b = floored.loss(x, g)
    # every dimension's KL is far below 5 nats at initialisation: the floor counts 4 x 5
    assert float(b["loss"].detach() - b["recon"]) == pytest.approx(20.0)
    assert float(a["kl"]) == pytest.approx(float(b["kl"]))          # the reported KL is true


def test_active_units_counts_latents_that_vary():
    from raygal.models.vae import active_units

    mu = torch.cat([torch.randn(200, 3), 1e-3 * torch.randn(200, 5)], dim=1)
    assert active_units(mu) == 3
