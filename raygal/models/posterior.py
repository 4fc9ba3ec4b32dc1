"""The one Posterior interface every raygal model implements.

Metrics, batch inference and reports talk only to this interface::

    post = load_posterior("s3://bucket/models/cfm")      # or any Posterior subclass
    theta = post.sample(batch, 1000)                     # [B, 1000, D] torch, physical units
    lp = post.log_prob(theta_model, batch)               # [B] density in model space
    table = post.summarize(batch, 1000)                  # dict of columns (see below)
    post.save("runs/cfm")

Spaces:
- *physical*: catalog units (``raygal.schema.TARGETS``), e.g. line fluxes in 1e-17 erg/s/cm^2;
- *model*: ``Target.forward`` of physical (log10 of ``sigma_v``, log1p of line fluxes,
  identity otherwise). Densities are reported in model space by default, where priors and
  posteriors of every model are compared (delta log p, KL);
- *standardised*: model space minus ``NormStats.target_mean`` over ``target_std``; what the
  networks see. Subclasses implement ``_sample_std`` and ``_log_prob_std`` there and the base
  class handles the rest: input checks and per-row status, chunking, transforms, Jacobians.

Rows whose inputs are unusable (``raygal.inputs.row_status``) get NaN samples and densities
here and a ``status`` other than 'ok' in ``summarize``: never NaN marked ok.

Saved models are a folder (local or s3://): ``model.json`` (kind, config, targets, inputs,
normalisation statistics) and ``weights.pt`` (a state dict, loaded with
``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import abc
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import storage
from ..inputs import (STATUS_OK, NormStats, as_numpy_batch, batch_size, check_training_batch,
                        cutout_array, phot_matrix, row_status, target_matrix)
from ..schema import get_target, parse_targets

MODEL_FORMAT = "raygal-model"
MODEL_VERSION = 1
QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)
QUANTILE_NAMES = ("q025", "q16", "q50", "q84", "q975")
INPUT_KINDS = ("image+phot", "phot")

_REGISTRY: dict[str, type["Posterior"]] = {}


def register(cls):
    """Class decorator: make a Posterior subclass loadable by its ``kind``."""
    _REGISTRY[cls.kind] = cls
    return cls


@dataclass
class Context:
    """Network inputs of the usable rows of a batch, on the model's device.

    phot: [B, 5] standardised photometric features; image: [B, C, H, W] stretched cutouts or
    None; extra: model-specific inputs (e.g. precomputed VAE features)."""

    phot: torch.Tensor
    image: torch.Tensor | None
    extra: dict

    def __len__(self):
        return self.phot.shape[0]

    def index(self, idx) -> "Context":
        return Context(self.phot[idx], None if self.image is None else self.image[idx],
                       {k: v[idx] for k, v in self.extra.items()})


class Posterior(nn.Module, abc.ABC):
    """Base class of every raygal posterior estimator q(theta | image, photometry).

    Args:
        targets: target names (``raygal.schema.TARGETS``) in the order of the D dimensions.
        inputs: 'image+phot' or 'phot' (photometry-only: no cutout column needed).
        stats: normalisation statistics of the training data.
        config: the architecture hyper-parameters, saved with the weights.
    """

    kind: str = "abstract"
    #: rows x samples per forward pass when sampling, to bound memory (sbi's lesson).
    max_trajectories: int = 1 << 17

    def __init__(self, targets, inputs: str, stats: NormStats, config: dict | None = None):
        super().__init__()
        if inputs not in INPUT_KINDS:
            raise ValueError(f"inputs must be one of {INPUT_KINDS}, not {inputs!r}")
        self.targets = parse_targets(targets)
        if not self.targets:
            raise ValueError("a posterior needs at least one target")
        self.inputs = inputs
        self.stats = stats
        self.config = dict(config or {})
        m, s = stats.target_arrays(self.targets)
        self.register_buffer("_t_mean", torch.tensor(m, dtype=torch.float32), persistent=False)
        self.register_buffer("_t_std", torch.tensor(s, dtype=torch.float32), persistent=False)

    # -- what subclasses implement ----------------------------------------------------------
    @abc.abstractmethod
    def _sample_std(self, ctx: Context, n: int, generator: torch.Generator | None
                    ) -> torch.Tensor:
        """[B, n, D] samples in standardised space."""

    @abc.abstractmethod
    def _log_prob_std(self, z: torch.Tensor, ctx: Context) -> torch.Tensor:
        """[B] log density of standardised ``z`` [B, D]."""

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Training loss on a batch: {'loss': scalar, ...named parts}."""
        raise NotImplementedError(f"{type(self).__name__} has no training loss")

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """The training loss, so that DistributedDataParallel's forward hooks (gradient
        synchronisation) see it: ``DDP(model)(batch)["loss"].backward()``."""
        return self.loss(batch)

    def _extra_inputs(self, batch: dict, rows: np.ndarray) -> dict:
        """Model-specific context tensors for the usable rows (e.g. VAE features)."""
        return {}

    def _extra_summary(self, ctx: Context, samples_std: torch.Tensor) -> dict[str, np.ndarray]:
        """Extra per-row summary columns (e.g. a detectability probability)."""
        return {}

    # -- inputs -----------------------------------------------------------------------------
    @property
    def uses_image(self) -> bool:
        return self.inputs == "image+phot"

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dim(self) -> int:
        return len(self.targets)

    #: a batch column that can stand in for the cutout (e.g. precomputed VAE features).
    precomputed_image_column: str | None = None

    def _needs_cutout(self, b: dict) -> bool:
        return self.uses_image and not (self.precomputed_image_column
                                         and self.precomputed_image_column in b)

    def _row_status(self, b: dict) -> np.ndarray:
        status = row_status(b, self._needs_cutout(b))
        if self.uses_image and not self._needs_cutout(b):
            feats = b[self.precomputed_image_column]
            feats = (np.stack([np.asarray(v, np.float32) for v in feats])
                     if getattr(feats, "dtype", None) == object else
                     np.asarray(feats, np.float32))
            bad = ~np.isfinite(feats.reshape(len(feats), -1)).all(axis=1)
            status[bad & (status == STATUS_OK)] = "bad_cutout"
        return status

    def status(self, batch) -> np.ndarray:
        """Per-row input status, 'ok' or the reason there is no posterior."""
        return self._row_status(as_numpy_batch(batch))

    def context(self, batch, rows: np.ndarray | None = None) -> Context:
        """Network inputs for ``rows`` (default: all) of a batch."""
        b = as_numpy_batch(batch)
        rows = np.arange(batch_size(b)) if rows is None else rows
        phot = self.stats.norm_phot(phot_matrix(b)[rows])
        image = None
        if self._needs_cutout(b):
            img = cutout_array(b)
            if img is None:
                raise ValueError("this model uses images but the batch has no 'cutout' column")
            expected = self.config.get("image_shape")
            if expected is not None and tuple(img.shape[1:]) != tuple(expected):
                raise ValueError(f"cutouts of shape {tuple(img.shape[1:])} do not fit this "
                                 f"model, trained on {tuple(expected)}")
            image = torch.from_numpy(self.stats.norm_cutout(img[rows])).to(self.device)
        extra = {k: v.to(self.device) for k, v in self._extra_inputs(b, rows).items()}
        return Context(torch.from_numpy(phot).to(self.device), image, extra)

    def training_tensors(self, batch) -> tuple[Context, torch.Tensor]:
        """(context, standardised targets [B, D] with NaN where missing) for training.

        Raises a ValueError naming the column for unusable training data."""
        b = as_numpy_batch(batch)
        check_training_batch(b, self.targets, self._needs_cutout(b))
        y = self.stats.standardise(target_matrix(b, self.targets), self.targets)
        return self.context(b), torch.from_numpy(y).to(self.device)

    # -- spaces -----------------------------------------------------------------------------
    def to_model_space(self, z: torch.Tensor) -> torch.Tensor:
        return z * self._t_std + self._t_mean

    def from_model_space(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self._t_mean) / self._t_std

    def to_physical(self, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([get_target(t).inverse(y[..., j]) for j, t in
                            enumerate(self.targets)], dim=-1)

    def from_physical(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([get_target(t).forward(x[..., j]) for j, t in
                            enumerate(self.targets)], dim=-1)

    def _log_jacobian_physical(self, x: torch.Tensor) -> torch.Tensor:
        """log |d model / d physical| summed over dimensions, [...]."""
        out = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        for j, t in enumerate(self.targets):
            tr = get_target(t).transform
            if tr == "log10":
                out = out - torch.log(x[..., j] * math.log(10.0))
            elif tr == "log1p":
                out = out - torch.log1p(x[..., j])
        return out

    # -- the interface ----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch, n: int, space: str = "physical", seed: int | None = None
               ) -> torch.Tensor:
        """[B, n, D] posterior samples; rows whose status is not 'ok' are NaN.

        space: 'physical' (catalog units), 'model' or 'standardised'. ``seed`` makes the draw
        reproducible."""
        z, status = self._sample_rows(as_numpy_batch(batch), n, seed)
        return self._convert(z, space)

    def _convert(self, z: torch.Tensor, space: str) -> torch.Tensor:
        if space == "standardised":
            return z
        y = self.to_model_space(z)
        if space == "model":
            return y
        if space == "physical":
            return self.to_physical(y)
        raise ValueError(f"space must be 'physical', 'model' or 'standardised', not {space!r}")

    def _sample_rows(self, b: dict, n: int, seed: int | None, return_ctx: bool = False):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.eval()
        status = self._row_status(b)
        rows = np.flatnonzero(status == STATUS_OK)
        B = batch_size(b)
        out = torch.full((B, n, self.dim), float("nan"), device=self.device)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(seed))
        ctx = self.context(b, rows) if len(rows) else None
        if ctx is not None:
            step = max(1, self.max_trajectories // n)
            parts = [self._sample_std(ctx.index(slice(i, i + step)), n, gen)
                     for i in range(0, len(rows), step)]
            out[torch.as_tensor(rows, device=self.device)] = torch.cat(parts).to(out.dtype)
        if return_ctx:
            return out, status, rows, ctx
        return out, status

    @torch.no_grad()
    def log_prob(self, theta, batch, space: str = "model") -> torch.Tensor:
        """[B] log q(theta | x) of ``theta`` [B, D] given in ``space`` ('model' by default,
        'physical' or 'standardised'); NaN for rows whose status is not 'ok'."""
        self.eval()
        b = as_numpy_batch(batch)
        theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32, device=self.device)
        if theta.shape != (batch_size(b), self.dim):
            raise ValueError(f"theta must be [B, D] = [{batch_size(b)}, {self.dim}], "
                             f"got {list(theta.shape)}")
        status = self._row_status(b)
        rows = np.flatnonzero(status == STATUS_OK)
        out = torch.full((batch_size(b),), float("nan"), device=self.device)
        if not len(rows):
            return out
        th = theta[torch.as_tensor(rows, device=self.device)]
        jac = torch.zeros(len(rows), device=self.device)
        if space == "physical":
            jac = self._log_jacobian_physical(th)
            th = self.from_physical(th)
            space = "model"
        if space == "model":
            z = self.from_model_space(th)
            jac = jac - torch.log(self._t_std).sum()
        elif space == "standardised":
            z = th
        else:
            raise ValueError(f"space must be 'physical', 'model' or 'standardised', not "
                             f"{space!r}")
        ctx = self.context(b, rows)
        out[torch.as_tensor(rows, device=self.device)] = self._log_prob_std(z, ctx) + jac
        return out

    @torch.no_grad()
    def summarize(self, batch, n: int = 1000, seed: int | None = None,
                  keep_samples: bool = False) -> dict[str, np.ndarray]:
        """Per-row posterior summary in physical units.

        Columns: ``status``; for each target T: ``T_mean``, ``T_std``, ``T_q025``, ``T_q16``,
        ``T_q50``, ``T_q84``, ``T_q975``; model extras (e.g. ``oh12_detect_prob``,
        ``T_std_aleatoric``/``T_std_epistemic`` for ensembles); ``samples`` [B, n, D] with
        ``keep_samples``. Values of rows whose status is not 'ok' are NaN."""
        b = as_numpy_batch(batch)
        z, status, rows, ctx = self._sample_rows(b, n, seed, return_ctx=True)
        x = self.to_physical(self.to_model_space(z)).cpu().numpy().astype(np.float64)
        out: dict[str, np.ndarray] = {"status": status.astype(str)}
        q = np.quantile(x, QUANTILES, axis=1) if x.size else np.zeros((5,) + x.shape[::2])
        mean, std = x.mean(axis=1), x.std(axis=1, ddof=1) if n > 1 else np.zeros(x.shape[::2])
        for j, t in enumerate(self.targets):
            out[f"{t}_mean"] = mean[:, j]
            out[f"{t}_std"] = std[:, j]
            for k, qn in enumerate(QUANTILE_NAMES):
                out[f"{t}_{qn}"] = q[k, :, j]
        if ctx is not None:
            extra = self._extra_summary(ctx, z[torch.as_tensor(rows, device=z.device)])
            for k, v in extra.items():
                col = np.full(len(status), np.nan)
                col[rows] = np.asarray(v, dtype=np.float64)
                out[k] = col
        else:
            for k in self.extra_summary_columns():
                out[k] = np.full(len(status), np.nan)
        if keep_samples:
            out["samples"] = x.astype(np.float32)
        return out

    def extra_summary_columns(self) -> tuple[str, ...]:
        """Names of the columns ``_extra_summary`` adds (so empty batches keep the schema)."""
        return ()

    def summary_columns(self) -> tuple[str, ...]:
        cols = ["status"]
        for t in self.targets:
            cols += [f"{t}_mean", f"{t}_std"] + [f"{t}_{q}" for q in QUANTILE_NAMES]
        return tuple(cols) + tuple(self.extra_summary_columns())

    # -- persistence ------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "kind": self.kind,
                "targets": list(self.targets), "inputs": self.inputs, "config": self.config,
                "stats": self.stats.to_dict()}

    def save(self, uri: str) -> None:
        """Write ``model.json`` and ``weights.pt`` under ``uri`` (local or s3://)."""
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, buf)
        storage.write_bytes(storage.join(uri, "weights.pt"), buf.getvalue())
        storage.write_json(storage.join(uri, "model.json"), self.describe())

    @classmethod
    def from_description(cls, desc: dict) -> "Posterior":
        """A freshly initialised model from ``describe()`` output (weights not loaded)."""
        return cls(targets=desc["targets"], inputs=desc["inputs"],
                   stats=NormStats.from_dict(desc["stats"]), config=desc["config"])

    @classmethod
    def load(cls, uri: str, map_location="cpu") -> "Posterior":
        return load_posterior(uri, map_location)


def read_model_description(uri: str) -> dict:
    try:
        desc = storage.read_json(storage.join(uri, "model.json"))
    except FileNotFoundError:
        raise ValueError(f"{uri}: not a raygal model (no model.json)") from None
    except Exception as exc:
        raise ValueError(f"{uri}: not a raygal model ({exc})") from None
    if not isinstance(desc, dict) or desc.get("format") != MODEL_FORMAT:
        raise ValueError(f"{uri}: not a raygal model (model.json has no format "
                         f"'{MODEL_FORMAT}')")
    if int(desc.get("version", 0)) > MODEL_VERSION:
        raise ValueError(f"{uri}: model format version {desc['version']} is newer than this "
                         f"raygal's; upgrade raygal")
    return desc


def load_state_dict(uri: str, map_location="cpu") -> dict:
    """Weights saved by ``Posterior.save``, loaded safely (tensors only, no pickle code)."""
    data = storage.read_bytes(storage.join(uri, "weights.pt"))
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def load_posterior(uri: str, map_location="cpu") -> Posterior:
    """Load any saved raygal model from ``uri``; a clear error if it is not one."""
    # Import the model modules so that they register their kinds.
    from . import available_kinds

    available_kinds()
    desc = read_model_description(uri)
    kind = desc.get("kind")
    if kind not in _REGISTRY:
        raise ValueError(f"{uri}: unknown model kind {kind!r}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[kind]
    if hasattr(cls, "load_from"):
        return cls.load_from(uri, desc, map_location)
    model = cls.from_description(desc)
    model.load_state_dict(load_state_dict(uri, map_location))
    model.eval()
    return model
