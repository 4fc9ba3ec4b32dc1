"""The image models' start (``image_init='zero'``, ``raygal.models.nets.zero_image_columns``)
and the CFM's auxiliary regression head (``aux_weight``): an image model that starts as its
photometry-only counterpart, at the photometry-only model's initial scale."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raygal.inputs import StatsAccumulator
from raygal.models.cfm import FlowMatchingPosterior
from raygal.models.nets import zero_image_columns
from raygal.models.nf import FlowPosterior
from raygal.schema import CFM_TARGETS, MAG_COLUMNS, NF_CORE_TARGETS

CFM_SMALL = {"hidden": 32, "layers": 2, "image_features": 16, "encoder_width": 4,
             "solver": "euler-4", "oh12_hidden": 16}
NF_SMALL = {"coupling_layers": 2, "hidden": 32, "representation": 32, "rep_layers": 1,
            "head_layers": 1, "flow_blocks": 1,
            "vae": {"channels": [4, 8, 8], "fc_hidden": 32, "latent": 32}}
TARGETS = tuple(dict.fromkeys(CFM_TARGETS + NF_CORE_TARGETS))


def batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    b = {"objid": np.arange(n, dtype=np.int64), "flags": np.zeros(n, np.int32)}
    base = 17.0 + rng.normal(0, 0.5, n)
    for j, c in enumerate(MAG_COLUMNS):
        b[c] = (base + 0.4 * (2 - j) + rng.normal(0, 0.1, n)).astype(np.float32)
    for t in TARGETS:
        b[t] = rng.normal(1.0, 0.3, n).astype(np.float32)
    b["cutout"] = rng.gamma(2.0, 1.0, (n, 3, 64, 64)).astype(np.float32)
    return b


@pytest.fixture(scope="module")
def rows():
    """Two batches with the same photometry and targets and different cutouts, and stats."""
    a = batch(8, seed=1)
    b = dict(a, cutout=batch(8, seed=2)["cutout"])
    stats = StatsAccumulator().update(batch(256, seed=3)).finalize()
    return a, b, stats


def models(stats, image_init: str):
    torch.manual_seed(0)
    return [FlowMatchingPosterior(CFM_TARGETS, "image+phot", stats,
                                  dict(CFM_SMALL, image_init=image_init)),
            FlowPosterior(NF_CORE_TARGETS, "image+phot", stats,
                          dict(NF_SMALL, image_init=image_init))]


def test_zero_start_ignores_the_image(rows):
    a, b, stats = rows
    for post in models(stats, "zero"):
        theta = post.sample(a, 4, space="model", seed=0)[:, 0].numpy()
        assert np.allclose(post.sample(a, 4, space="model", seed=5).numpy(),
                           post.sample(b, 4, space="model", seed=5).numpy(), atol=1e-5)
        assert np.allclose(post.log_prob(theta, a).numpy(), post.log_prob(theta, b).numpy(),
                           atol=1e-4)
    for post in models(stats, "default"):          # the paper's start does see the image
        assert not np.allclose(post.sample(a, 4, space="model", seed=5).numpy(),
                               post.sample(b, 4, space="model", seed=5).numpy(), atol=1e-5)


def test_zero_start_learns_the_image_and_keeps_the_photometry_scale(rows):
    a, _, stats = rows
    cfm, nf = models(stats, "zero")
    layer = cfm.estimator.velocity.input              # [t; theta (4 core); f_img (16); phot (5)]
    n_img = CFM_SMALL["image_features"]
    bound = 1 / np.sqrt(layer.in_features - n_img)
    w = layer.weight.detach()
    assert float(w[:, 5:5 + n_img].abs().max()) == 0.0
    # the photometric weights at the photometry-only model's scale, not diluted by the image
    assert float(w[:, 5 + n_img:].abs().max()) > 1 / np.sqrt(layer.in_features)
    assert float(w.abs().max()) <= bound
    nf_img = nf.estimator.image_feature_dim
    for post, layer, cols in ((cfm, layer, slice(5, 5 + n_img)),
                              (nf, nf.estimator.rep[0], slice(0, nf_img))):
        post.loss(a)["loss"].backward()
        assert float(layer.weight.grad[:, cols].abs().sum()) > 0   # the image columns learn
    with pytest.raises(ValueError, match="image_init"):
        zero_image_columns(layer, "ones", 0, 1)


def test_auxiliary_head_reaches_the_encoder(rows):
    a, _, stats = rows
    post = FlowMatchingPosterior(CFM_TARGETS, "image+phot", stats, dict(CFM_SMALL, aux_weight=0.5))
    out = post.loss(a)
    assert "aux_mse" in out and float(out["aux_mse"]) > 0
    out["loss"].backward()
    est = post.estimator
    assert float(est.aux_head.weight.grad.abs().sum()) > 0
    assert float(est.encoder.blocks[0][0].weight.grad.abs().sum()) > 0
    assert "aux_mse" not in FlowMatchingPosterior(CFM_TARGETS, "image+phot", stats,
                                                  CFM_SMALL).loss(a)
