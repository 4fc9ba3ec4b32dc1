"""Deep ensembles: an equal-weight mixture of K independently trained posteriors
(Lakshminarayanan, Pritzel & Blundell 2017), with the spread of the members' means as the
epistemic uncertainty (Siddiga et al., arXiv:2511.12737, Table 2).

    q(theta | x) = 1/K sum_k q_k(theta | x)

Members may be of any kind and may carry different ``NormStats`` (e.g. trained on different
splits), so the mixture is formed in model space, where all of them agree, and never in a
member's standardised space.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from .. import storage
from ..inputs import STATUS_OK
from .posterior import (MODEL_FORMAT, MODEL_VERSION, Draw, Posterior, TargetSpace,
                        load_posterior)

MEMBER_DIR = "member-{:02d}"


def split_counts(n: int, k: int) -> list[int]:
    """n draws over k members as evenly as possible: the first n % k get one more."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


class EnsemblePosterior(Posterior, nn.Module):
    """Equal-weight mixture of K posteriors with the same targets and inputs (kind 'ensemble').

    Args:
        members: the K trained members (any ``Posterior`` kinds).

    ``sample`` draws n samples split over the members (``split_counts``) and shuffles them
    along the sample axis; ``log_prob`` = logsumexp_k log q_k - log K; ``summarize`` adds per
    target ``T_std_aleatoric`` = sqrt(mean_k var_k) and ``T_std_epistemic`` = std_k(mean_k)
    (population std over members, so that aleatoric^2 + epistemic^2 is the mixture variance up
    to Monte Carlo error), both in physical units, and averages the members' own extra columns
    (e.g. ``oh12_detect_prob``). Members drawing fewer than two samples (n < 2K) are left out
    of the aleatoric/epistemic split.

    Saved as the ensemble's ``model.json`` plus one folder per member (``member-00``, ...).
    The standardised space of the ensemble is that of its first member's statistics.
    """

    kind = "ensemble"

    def __init__(self, members):
        nn.Module.__init__(self)
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            if tuple(m.targets) != tuple(first.targets) or m.inputs != first.inputs:
                raise ValueError(f"ensemble member {i} has targets {m.targets} and inputs "
                                 f"{m.inputs!r}; member 0 has {first.targets} and "
                                 f"{first.inputs!r}")
        self.members = nn.ModuleList(members)
        self.targets, self.inputs, self.stats = first.targets, first.inputs, first.stats
        self.config = {"members": len(members), "member_kinds": [m.kind for m in members]}
        self.space = TargetSpace(self.targets, first.stats).to(first.space.mean.device)

    @property
    def k(self) -> int:
        return len(self.members)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    # -- ODE solvers: the members' ------------------------------------------------------------
    @property
    def solver(self) -> str | None:
        return self.members[0].solver

    def set_solver(self, name: str) -> None:
        """Set the solver of every member that has one."""
        with_solver = [m for m in self.members if m.solver is not None]
        if not with_solver:
            super().set_solver(name)
        for m in with_solver:
            m.set_solver(name)

    @contextlib.contextmanager
    def with_solver(self, name, rtol=None, atol=None):
        with contextlib.ExitStack() as stack:
            for m in self.members:
                stack.enter_context(m.with_solver(name, rtol=rtol, atol=atol))
            yield self

    # -- the mixture ----------------------------------------------------------------------------
    def status(self, batch) -> np.ndarray:
        return self.members[0].status(batch)

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

    def _draw(self, b, n, seed, extras) -> Draw:
        if n < 1:
            raise ValueError("n must be >= 1")
        seeds, gen = self._member_draws(seed)
        draws = [m._draw(b, nk, sk, extras)
                 for m, nk, sk in zip(self.members, split_counts(n, self.k), seeds) if nk]
        y = self._shuffle(torch.cat([d.y.to(self.device) for d in draws], dim=1), gen)
        status = draws[0].status
        return Draw(y, status, self._split_uncertainty(draws, status) if extras else {})

    def _split_uncertainty(self, draws: list[Draw], status: np.ndarray) -> dict:
        """Aleatoric/epistemic columns (physical units) and the members' mean extras."""
        ok = status == STATUS_OK
        wide = [self.space.from_model(d.y, "physical").cpu().numpy().astype(np.float64)
                for d in draws if d.y.shape[1] >= 2]
        if wide:
            alea = np.sqrt(np.stack([x.var(axis=1, ddof=1) for x in wide]).mean(axis=0))
            epi = np.stack([x.mean(axis=1) for x in wide]).std(axis=0)
        else:
            alea = epi = np.full((len(status), self.dim), np.nan)
        cols = {}
        for j, t in enumerate(self.targets):
            cols[f"{t}_std_aleatoric"] = np.where(ok, alea[:, j], np.nan)
            cols[f"{t}_std_epistemic"] = np.where(ok, epi[:, j], np.nan)
        for c in self._shared_member_columns():
            cols[c] = np.mean([d.extras[c] for d in draws], axis=0)
        return cols

    def _log_prob_model(self, y, b):
        lps = torch.stack([m._log_prob_model(y.to(m.device), b).to(self.device)
                           for m in self.members])
        return torch.logsumexp(lps, dim=0) - math.log(self.k)

    def extra_summary_columns(self) -> tuple[str, ...]:
        cols = []
        for t in self.targets:
            cols += [f"{t}_std_aleatoric", f"{t}_std_epistemic"]
        return tuple(cols) + self._shared_member_columns()

    def _shared_member_columns(self) -> tuple[str, ...]:
        return tuple(c for c in self.members[0].extra_summary_columns()
                     if all(c in m.extra_summary_columns() for m in self.members[1:]))

    # -- persistence ------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "kind": self.kind,
                "targets": list(self.targets), "inputs": self.inputs, "config": self.config,
                "stats": self.stats.to_dict()}

    def save(self, uri: str) -> None:
        """Each member under ``uri/member-NN``, then the ensemble's ``model.json`` (last, so a
        folder with a model.json has all of its members)."""
        for i, m in enumerate(self.members):
            m.save(storage.join(uri, MEMBER_DIR.format(i)))
        storage.write_json(storage.join(uri, "model.json"), self.describe())

    @classmethod
    def load_saved(cls, uri: str, desc: dict, map_location="cpu") -> "EnsemblePosterior":
        k = int(desc["config"]["members"])
        model = cls([load_posterior(storage.join(uri, MEMBER_DIR.format(i)), map_location)
                     for i in range(k)])
        model.eval()
        return model


__all__ = ["EnsemblePosterior", "split_counts"]
