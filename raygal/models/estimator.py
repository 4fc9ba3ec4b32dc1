"""Conditional density estimators: pure torch, tensors in and out (as sbi's
``ConditionalEstimator``).

An estimator knows nothing of rows, catalogs, units or files. It sees a ``Context`` (the
network inputs of B objects, prepared by ``raygal.inputs.ModelInputs``) and standardised
targets ``theta`` [B, D], and does three things::

    est.loss(theta, ctx)            # {'loss': scalar with grad, ...named parts}
    est.sample(ctx, n, generator)   # [B, n, D]
    est.log_prob(theta, ctx)        # [B]

``raygal.models.posterior.NeuralPosterior`` composes an estimator with the inputs adapter and
the target spaces; that is what users and the pipelines see.
"""
from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Context:
    """Network inputs of B objects, on one device.

    phot: [B, 5] standardised photometric features, or None (image-only models);
    image: [B, C, H, W] stretched cutouts, or None;
    features: [B, F] precomputed image features (e.g. a frozen VAE's), or None.
    """

    phot: torch.Tensor | None = None
    image: torch.Tensor | None = None
    features: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, arrays: dict, device=None) -> "Context":
        """A Context from ``ModelInputs.arrays`` output (numpy arrays or tensors)."""
        def t(name):
            v = arrays.get(name)
            if v is None:
                return None
            v = torch.as_tensor(v) if isinstance(v, np.ndarray) else v
            return v.to(device=device, dtype=torch.float32)

        return cls(t("phot"), t("image"), t("features"))

    def __len__(self) -> int:
        for v in (self.phot, self.image, self.features):
            if v is not None:
                return v.shape[0]
        return 0

    def index(self, idx) -> "Context":
        return Context(*(None if v is None else v[idx]
                         for v in (self.phot, self.image, self.features)))

    def repeat_interleave(self, n: int) -> "Context":
        """Each object's inputs repeated n times along the batch axis."""
        return Context(*(None if v is None else v.repeat_interleave(n, dim=0)
                         for v in (self.phot, self.image, self.features)))


@dataclass(frozen=True)
class ContextSpec:
    """The shapes of a ``Context`` an estimator is built for: ``n_phot`` photometric features
    (0: none), ``image_shape`` [C, H, W] (None: no images)."""

    n_phot: int
    image_shape: tuple | None = None


class ConditionalEstimator(nn.Module, abc.ABC):
    """Base class of every estimator q(theta | context) in standardised target space.

    Args:
        targets: names of the D target dimensions, in order (some estimators structure
            themselves by target, e.g. the NF's metallicity branch).
        spec: the ``ContextSpec`` of the inputs.
        config: architecture hyper-parameters; subclasses complete it with their defaults,
            and it is saved with the weights.
    """

    #: rows x samples per sampling pass, bounding memory (sbi's lesson: users sample
    #: millions of objects). Callers chunk their batches by it.
    max_trajectories: int = 1 << 17
    #: an ODE solver setting, for estimators that integrate one (None otherwise).
    solver: str | None = None
    #: width of precomputed image features (``Context.features``) the estimator accepts.
    image_feature_dim: int | None = None

    def __init__(self, targets, spec: ContextSpec, config: dict | None = None):
        super().__init__()
        self.targets = tuple(targets)
        self.spec = spec
        self.config = dict(config or {})

    @property
    def dim(self) -> int:
        return len(self.targets)

    @abc.abstractmethod
    def loss(self, theta: torch.Tensor, ctx: Context,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training loss on standardised ``theta`` [B, D] (NaN where a target is missing):
        {'loss': scalar with grad, ...detached parts}. ``generator`` fixes the noise draws
        (validation)."""

    @abc.abstractmethod
    def sample(self, ctx: Context, n: int, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """[B, n, D] samples."""

    @abc.abstractmethod
    def log_prob(self, theta: torch.Tensor, ctx: Context) -> torch.Tensor:
        """[B] log density of ``theta`` [B, D]."""

    def extras(self, ctx: Context) -> dict[str, torch.Tensor]:
        """Extra per-object outputs [B] (e.g. a detectability probability), named as
        ``extra_columns``."""
        return {}

    def draw(self, ctx: Context, n: int, generator: torch.Generator | None = None,
             extras: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(``sample(ctx, n)`` [B, n, D], ``extras(ctx)`` or {}) in one call. An estimator
        whose samples and extras start from the same encoding of the context overrides this
        to encode once (the image encoder is most of an image model's sampling cost)."""
        return self.sample(ctx, n, generator), (self.extras(ctx) if extras else {})

    @property
    def extra_columns(self) -> tuple[str, ...]:
        return ()

    def set_solver(self, name: str) -> None:
        raise ValueError(f"{type(self).__name__} has no ODE solver to set to {name!r}")

    def with_solver(self, name: str | None, rtol: float | None = None,
                    atol: float | None = None):
        """A context manager that temporarily sets the ODE solver; a no-op for estimators
        without one (``name`` must then be None)."""
        if name is not None:
            self.set_solver(name)
        return contextlib.nullcontext(self)


class RowNoise:
    """Noise that belongs to rows: row i's draws are a hash of (its object id, the call
    number, the draw's index), so a validation loss gets the same draws for the same galaxy
    at every epoch whatever batch it lands in and in whatever order (Ray Data streams blocks
    in varying order; a generator per batch would tie the draws to the batch's make-up and
    add noise of its own to the loss that early stopping compares).

    Used where a torch generator would be: ``randn(shape, noise, device, dtype)`` and
    ``rand(...)`` below take either. Counter-based (SplitMix64), vectorised, the same on
    every device. Not for sampling posteriors: only for the draws inside a loss.

    >>> a = RowNoise([7, 8, 9])
    >>> b = RowNoise([9, 7])                     # other rows, other order, same galaxies
    >>> x, y = randn((3, 2), a), randn((2, 2), b)
    >>> torch.equal(x[0], y[1]) and torch.equal(x[2], y[0])
    True
    >>> torch.equal(randn((3, 2), a), x)        # the next call draws afresh
    False
    """

    _GOLDEN = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, objid):
        ids = np.asarray(objid.cpu() if isinstance(objid, torch.Tensor) else objid)
        self.ids = ids.astype(np.int64).astype(np.uint64)
        self.calls = 0

    @staticmethod
    def _mix(z: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    def uniform(self, shape) -> np.ndarray:
        """[B, ...] uniforms in (0, 1), float64, one stream per row and per call."""
        shape = tuple(shape)
        if shape[0] != len(self.ids):
            raise ValueError(f"{len(self.ids)} rows of noise, asked for shape {list(shape)}")
        self.calls += 1
        per_row = int(np.prod(shape[1:], dtype=np.int64))
        with np.errstate(over="ignore"):
            row = self._mix(self.ids * self._GOLDEN + np.uint64(self.calls))
            k = np.arange(1, per_row + 1, dtype=np.uint64) * self._GOLDEN
            z = self._mix(row[:, None] + k[None, :])
        return (((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53).reshape(shape)


def rand(shape, noise=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """U(0, 1) draws of ``shape`` from a torch generator (or None) or a ``RowNoise``."""
    if isinstance(noise, RowNoise):
        return torch.as_tensor(noise.uniform(shape), dtype=dtype, device=device)
    return torch.rand(shape, generator=noise, device=device, dtype=dtype)


def randn(shape, noise=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """N(0, 1) draws of ``shape`` from a torch generator (or None) or a ``RowNoise``
    (Box-Muller on two of its uniforms per draw)."""
    if isinstance(noise, RowNoise):
        u = noise.uniform(tuple(shape) + (2,))
        z = np.sqrt(-2.0 * np.log(u[..., 0])) * np.cos(2.0 * np.pi * u[..., 1])
        return torch.as_tensor(z, dtype=dtype, device=device)
    return torch.randn(shape, generator=noise, device=device, dtype=dtype)


def rows_generator(objid) -> RowNoise:
    """The draws of a validation loss for a batch's rows (``RowNoise``): the same for the
    same galaxy at every epoch, so validation losses compare models rather than draws
    (early stopping, checkpoint choice). ``rand``/``randn`` put them on the caller's
    device."""
    return RowNoise(objid)


__all__ = ["Context", "ContextSpec", "ConditionalEstimator", "RowNoise", "rand", "randn",
           "rows_generator"]
