"""Deep ensembles: an equal-weight mixture of K independently trained posteriors
(Lakshminarayanan, Pritzel & Blundell 2017), with the spread of the members' means as the
epistemic uncertainty (Siddiga et al., arXiv:2511.12737, Table 2).

    q(theta | x) = 1/K sum_k q_k(theta | x)

Members may be of any kind and may carry different ``NormStats`` (e.g. trained on different
splits), so the mixture is formed in model space, where all of them agree, and never in a
member's standardised space.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import storage
from ..inputs import STATUS_OK, as_numpy_batch, batch_size
from .posterior import (QUANTILE_NAMES, QUANTILES, Posterior, load_posterior, register)

MEMBER_DIR = "member-{:02d}"


def split_counts(n: int, k: int) -> list[int]:
    """n draws over k members as evenly as possible: the first n % k get one more."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


@register
class EnsemblePosterior(Posterior):
    """Equal-weight mixture of K posteriors with the same targets and inputs.

    Args:
        members: the K trained members (any ``Posterior`` kinds).

    ``sample`` draws n samples split over the members (``split_counts``) and shuffles them
    along the sample axis; ``log_prob`` = logsumexp_k log q_k - log K; ``summarize`` adds per
    target ``T_std_aleatoric`` = sqrt(mean_k var_k) and ``T_std_epistemic`` = std_k(mean_k)
    (population std over members, so that aleatoric^2 + epistemic^2 is the mixture variance up
    to Monte Carlo error), both in physical units, and averages the members' own extra columns
    (e.g. ``oh12_detect_prob``).

    Saved as the ensemble's ``model.json`` plus one folder per member (``member-00``, ...).
    The standardised space of the ensemble is that of its first member's statistics.
    """

    kind = "ensemble"

    def __init__(self, members):
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            if tuple(m.targets) != tuple(first.targets) or m.inputs != first.inputs:
                raise ValueError(f"ensemble member {i} has targets {m.targets} and inputs "
                                 f"{m.inputs!r}; member 0 has {first.targets} and "
                                 f"{first.inputs!r}")
        config = {"members": len(members), "member_kinds": [m.kind for m in members]}
        super().__init__(first.targets, first.inputs, first.stats, config)
        self.members = nn.ModuleList(members)

    @property
    def k(self) -> int:
        return len(self.members)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    # The mixture needs each member's own context (its own NormStats), so the work happens
    # in sample / log_prob / summarize on raw batches, never on a shared Context.
    def _sample_std(self, ctx, n, generator):
        raise NotImplementedError("EnsemblePosterior samples whole batches: use sample()")

    def _log_prob_std(self, z, ctx):
        raise NotImplementedError("EnsemblePosterior scores whole batches: use log_prob()")

    def loss(self, batch):
        raise NotImplementedError("train the members one by one, then build the ensemble")

    # -- sampling ---------------------------------------------------------------------------
    def _member_draws(self, seed: int | None):
        """(member seeds, a generator for the shuffle) derived from ``seed``."""
        if seed is None:
            return [None] * self.k, None
        gen = torch.Generator().manual_seed(int(seed))
        seeds = torch.randint(0, 2**62, (self.k,), generator=gen).tolist()
        return seeds, gen

    @staticmethod
    def _shuffle(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Independent permutation of the sample axis of every row of x [B, n, D]."""
        B, n, D = x.shape
        perm = torch.argsort(torch.rand((B, n), generator=gen), dim=1).to(x.device)
        return torch.gather(x, 1, perm[..., None].expand(B, n, D))

    def _model_space_samples(self, b: dict, n: int, seed: int | None):
        """(mixture samples [B, n, D] in model space, per-member model-space samples)."""
        if n < 1:
            raise ValueError("n must be >= 1")
        seeds, gen = self._member_draws(seed)
        per = []
        for m, nk, sk in zip(self.members, split_counts(n, self.k), seeds):
            per.append(m.sample(b, nk, space="model", seed=sk) if nk else None)
        x = torch.cat([p.to(self.device) for p in per if p is not None], dim=1)
        return self._shuffle(x, gen), per

    @torch.no_grad()
    def sample(self, batch, n: int, space: str = "physical", seed: int | None = None
               ) -> torch.Tensor:
        """[B, n, D] mixture samples (NaN rows where the inputs are unusable)."""
        y, _ = self._model_space_samples(as_numpy_batch(batch), n, seed)
        if space == "model":
            return y
        if space == "standardised":
            return self.from_model_space(y)
        if space == "physical":
            return self.to_physical(y)
        raise ValueError(f"space must be 'physical', 'model' or 'standardised', not {space!r}")

    # -- density ----------------------------------------------------------------------------
    @torch.no_grad()
    def log_prob(self, theta, batch, space: str = "model") -> torch.Tensor:
        """[B] log of the mixture density: logsumexp_k log q_k(theta | x) - log K."""
        b = as_numpy_batch(batch)
        theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32, device=self.device)
        jac = 0.0
        if space == "standardised":
            # Members disagree on standardisation: go through model space, where they agree.
            theta = self.to_model_space(theta)
            jac = float(torch.log(self._t_std).sum())
            space = "model"
        lps = torch.stack([m.log_prob(theta, b, space=space).to(self.device)
                           for m in self.members])
        return torch.logsumexp(lps, dim=0) - math.log(self.k) + jac

    # -- summary ----------------------------------------------------------------------------
    def extra_summary_columns(self) -> tuple[str, ...]:
        cols = []
        for t in self.targets:
            cols += [f"{t}_std_aleatoric", f"{t}_std_epistemic"]
        return tuple(cols) + self._shared_member_columns()

    def _shared_member_columns(self) -> tuple[str, ...]:
        common = [c for c in self.members[0].extra_summary_columns()
                  if all(c in m.extra_summary_columns() for m in self.members[1:])]
        return tuple(common)

    @torch.no_grad()
    def summarize(self, batch, n: int = 1000, seed: int | None = None,
                  keep_samples: bool = False) -> dict[str, np.ndarray]:
        """The base summary of the mixture plus ``T_std_aleatoric`` and ``T_std_epistemic``
        per target and the members' mean extra columns. Members drawing fewer than two samples
        (n < 2K) are left out of the aleatoric/epistemic split."""
        b = as_numpy_batch(batch)
        B = batch_size(b)
        status = self.members[0].status(b)
        ok = status == STATUS_OK
        seeds, gen = self._member_draws(seed)
        per, extras = [], {c: [] for c in self._shared_member_columns()}
        for m, nk, sk in zip(self.members, split_counts(n, self.k), seeds):
            if not nk:
                continue
            s = m.summarize(b, nk, seed=sk, keep_samples=True)
            per.append(s["samples"].astype(np.float64))
            for c in extras:
                extras[c].append(np.asarray(s[c], np.float64))
        x = torch.from_numpy(np.concatenate(per, axis=1))
        x = self._shuffle(x, gen).numpy()
        out: dict[str, np.ndarray] = {"status": status.astype(str)}
        out.update(_sample_summary(x, self.targets))
        wide = [p for p in per if p.shape[1] >= 2]
        if wide:
            means = np.stack([p.mean(axis=1) for p in wide])            # [K', B, D]
            vars_ = np.stack([p.var(axis=1, ddof=1) for p in wide])
            alea, epi = np.sqrt(vars_.mean(axis=0)), means.std(axis=0)
        else:
            alea = epi = np.full((B, self.dim), np.nan)
        for j, t in enumerate(self.targets):
            out[f"{t}_std_aleatoric"] = np.where(ok, alea[:, j], np.nan)
            out[f"{t}_std_epistemic"] = np.where(ok, epi[:, j], np.nan)
        for c, vals in extras.items():
            out[c] = np.mean(vals, axis=0)
        if keep_samples:
            out["samples"] = x.astype(np.float32)
        return out

    # -- persistence ------------------------------------------------------------------------
    def save(self, uri: str) -> None:
        """Each member under ``uri/member-NN``, then the ensemble's ``model.json`` (last, so a
        folder with a model.json has all of its members)."""
        for i, m in enumerate(self.members):
            m.save(storage.join(uri, MEMBER_DIR.format(i)))
        storage.write_json(storage.join(uri, "model.json"), self.describe())

    @classmethod
    def from_description(cls, desc: dict):
        raise ValueError("an ensemble's weights live in its member folders: use "
                         "load_posterior(uri)")

    @classmethod
    def load_from(cls, uri: str, desc: dict, map_location="cpu") -> "EnsemblePosterior":
        k = int(desc["config"]["members"])
        members = [load_posterior(storage.join(uri, MEMBER_DIR.format(i)), map_location)
                   for i in range(k)]
        model = cls(members)
        model.eval()
        return model


def _sample_summary(x: np.ndarray, targets) -> dict[str, np.ndarray]:
    """Mean, std and quantile columns of physical samples x [B, n, D] (as
    ``Posterior.summarize``: NaN rows stay NaN)."""
    B, n, D = x.shape
    out = {}
    q = np.quantile(x, QUANTILES, axis=1) if x.size else np.zeros((len(QUANTILES), B, D))
    mean = x.mean(axis=1) if n else np.full((B, D), np.nan)
    std = x.std(axis=1, ddof=1) if n > 1 else np.zeros((B, D))
    for j, t in enumerate(targets):
        out[f"{t}_mean"] = mean[:, j]
        out[f"{t}_std"] = std[:, j]
        for k, qn in enumerate(QUANTILE_NAMES):
            out[f"{t}_{qn}"] = q[k, :, j]
    return out


__all__ = ["EnsemblePosterior", "split_counts"]
