"""The one Posterior interface every raygal model implements, and the saved-model format.

Metrics, batch inference and reports talk only to this interface::

    post = load_posterior("s3://bucket/models/cfm")      # any kind, or an ensemble
    theta = post.sample(batch, 1000)                     # [B, 1000, D] torch, physical units
    lp = post.log_prob(theta_model, batch)               # [B] density in model space
    table = post.summarize(batch, 1000)                  # dict of columns (see below)
    post.status(batch)                                   # [B] 'ok' or why not
    post.save("runs/cfm")

A batch is rows in the galaxy schema: a dict of columns, a pyarrow Table or a pandas
DataFrame.

Three pieces make a trained posterior (``NeuralPosterior``), each with one job:

- an *estimator* (``raygal.models.estimator.ConditionalEstimator``): pure torch, tensors in and
  out, in standardised target space;
- the *inputs adapter* (``raygal.inputs.ModelInputs``): rows -> network inputs, with the
  normalisation statistics, and per-row status;
- the *target spaces* (``TargetSpace``): standardised <-> model <-> physical, with Jacobians.

Spaces:
- *physical*: catalog units (``raygal.schema.TARGETS``), e.g. line fluxes in 1e-17 erg/s/cm^2;
- *model*: each target's ``Transform`` of physical (log10 of ``sigma_v``, log1p of line fluxes,
  identity otherwise). Densities are reported in model space by default, where priors and
  posteriors of every model are compared (delta log p, KL);
- *standardised*: model space minus the training mean over the training std; what the
  networks see.

Rows whose inputs are unusable get NaN samples and densities and a ``status`` other than 'ok'
in ``summarize``: never NaN marked ok.

Saved models are a folder (local or s3://): ``weights.pt`` (a state dict, loaded with
``torch.load(weights_only=True)``) and then ``model.json`` (format, kind, targets, inputs,
config, normalisation statistics): the model.json written last marks a complete model.
"""
from __future__ import annotations

import abc
import contextlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import storage
from ..inputs import (STATUS_OK, STATUS_OUTSIDE_SUPPORT, ModelInputs, NormStats, as_numpy_batch,
                      batch_size)
from ..schema import get_target, parse_targets
from .estimator import ConditionalEstimator, Context, ContextSpec, RowNoise, rows_generator
from .registry import model_class

MODEL_FORMAT = "raygal-model"
#: 2: posteriors keep their networks under ``estimator.`` (version 1 files are migrated).
MODEL_VERSION = 2
QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)
QUANTILE_NAMES = ("q025", "q16", "q50", "q84", "q975")
SPACES = ("physical", "model", "standardised")


# ----------------------------------------------------------------------------------------------
# Target spaces
# ----------------------------------------------------------------------------------------------

class TargetSpace(nn.Module):
    """Standardised <-> model <-> physical values of D targets, with log-Jacobians.

    ``to_model(theta, space)`` returns model-space values and log |d model / d theta| [...],
    which a density in model space needs to become a density of ``theta``.
    """

    def __init__(self, targets, stats: NormStats):
        super().__init__()
        self.targets = tuple(targets)
        self.transforms = [get_target(t).transform for t in self.targets]
        m, s = stats.target_arrays(self.targets)
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32), persistent=False)

    def from_model(self, y: torch.Tensor, space: str) -> torch.Tensor:
        """Model-space ``y`` [..., D] expressed in ``space``."""
        if space == "model":
            return y
        if space == "standardised":
            return (y - self.mean) / self.std
        if space == "physical":
            return torch.stack([tr.inverse(y[..., j]) for j, tr in enumerate(self.transforms)],
                               dim=-1)
        raise ValueError(f"space must be one of {SPACES}, not {space!r}")

    def to_model(self, theta: torch.Tensor, space: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(model-space values, log |d model / d theta| summed over D) of ``theta`` [..., D]."""
        if space == "model":
            return theta, torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
        if space == "standardised":
            jac = torch.log(self.std).sum().expand(theta.shape[:-1])
            return theta * self.std + self.mean, jac
        if space == "physical":
            y = torch.stack([tr.forward(theta[..., j]) for j, tr in enumerate(self.transforms)],
                            dim=-1)
            jac = sum(tr.log_abs_det_jacobian(theta[..., j])
                      for j, tr in enumerate(self.transforms))
            return y, jac
        raise ValueError(f"space must be one of {SPACES}, not {space!r}")


#: The largest share of a row's draws that may be non-finite in physical units (a flow's far
#: tail overflowing exp: a line flux of e^800) before its status becomes ``outside_support``;
#: below it, those draws are left out of the summary.
MAX_OUTSIDE_SUPPORT = 0.05


def outside_support(x: np.ndarray) -> np.ndarray:
    """[B, n] draws of physical samples x [B, n, D] with a target that is not finite."""
    return ~np.isfinite(x).all(axis=-1)


def sample_summary(x: np.ndarray, targets) -> dict[str, np.ndarray]:
    """Mean, std and quantile columns of physical samples x [B, n, D]; NaN draws are left out
    (a row of NaN draws stays NaN)."""
    B, n, D = x.shape
    q = np.quantile(x, QUANTILES, axis=1) if x.size else np.zeros((len(QUANTILES), B, D))
    mean = x.mean(axis=1) if n else np.full((B, D), np.nan)
    std = x.std(axis=1, ddof=1) if n > 1 else np.zeros((B, D))
    # NaN-aware statistics (2-3x slower) only for the rows that have some NaN draws.
    nan = np.isnan(x).any(axis=-1) if x.size else np.zeros((B, n), bool)
    some = nan.any(axis=1) & ~nan.all(axis=1)
    if some.any():
        xs = x[some]
        q[:, some] = np.nanquantile(xs, QUANTILES, axis=1)
        mean[some] = np.nanmean(xs, axis=1)
        if n > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # a single finite draw: NaN
                std[some] = np.nanstd(xs, axis=1, ddof=1)
    out = {}
    for j, t in enumerate(targets):
        out[f"{t}_mean"] = mean[:, j]
        out[f"{t}_std"] = std[:, j]
        for k, qn in enumerate(QUANTILE_NAMES):
            out[f"{t}_{qn}"] = q[k, :, j]
    return out


@dataclass
class Draw:
    """Posterior draws of a batch: ``y`` [B, n, D] model-space samples (NaN rows where the
    status is not 'ok'), ``status`` [B], and extra per-row columns [B]."""

    y: torch.Tensor
    status: np.ndarray
    extras: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------

class Posterior(abc.ABC):
    """What every posterior offers: q(theta | image, photometry) for rows of galaxies.

    Subclasses provide ``targets``, ``inputs`` (the input kind: 'image+phot', 'phot',
    'image'), ``space`` (a ``TargetSpace``), and implement ``status``, ``_draw`` and
    ``_log_prob_model``; sampling in every space, densities with Jacobians and summaries are
    done here, once.
    """

    kind: str = "abstract"
    targets: tuple[str, ...]
    inputs: str
    space: TargetSpace

    @abc.abstractmethod
    def status(self, batch) -> np.ndarray:
        """[B] per-row input status, 'ok' or the reason there is no posterior."""

    @abc.abstractmethod
    def _draw(self, b: dict, n: int, seed: int | None, extras: bool) -> Draw:
        """n draws per row of the numpy batch ``b`` (and the extra columns if asked)."""

    @abc.abstractmethod
    def _log_prob_model(self, y: torch.Tensor, b: dict) -> torch.Tensor:
        """[B] log q of model-space ``y`` [B, D]; NaN where the status is not 'ok'."""

    # -- derived --------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.targets)

    @property
    def uses_image(self) -> bool:
        return "image" in self.inputs.split("+")

    @property
    def solver(self) -> str | None:
        """The ODE solver sampling uses, for models that integrate one; else None."""
        return None

    def set_solver(self, name: str) -> None:
        """Choose the ODE solver (an unknown name raises); an error for models without one."""
        raise ValueError(f"this model ({self.kind}) has no ODE solver (asked for {name!r})")

    def with_solver(self, name: str | None, rtol: float | None = None,
                    atol: float | None = None):
        """Temporarily sample with another ODE solver (a no-op when ``name`` is None)::

            with post.with_solver("midpoint-10"):
                theta = post.sample(batch, 1000)
        """
        if name is not None:
            raise ValueError(f"a {self.kind} model has no ODE solver to set to {name!r}")
        return contextlib.nullcontext(self)

    def extra_summary_columns(self) -> tuple[str, ...]:
        """Model-specific summary columns (e.g. ``oh12_detect_prob``)."""
        return ()

    def summary_columns(self) -> tuple[str, ...]:
        cols = ["status"]
        for t in self.targets:
            cols += [f"{t}_mean", f"{t}_std"] + [f"{t}_{q}" for q in QUANTILE_NAMES]
        return tuple(cols) + tuple(self.extra_summary_columns())

    # -- the interface ----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch, n: int, space: str = "physical", seed: int | None = None
               ) -> torch.Tensor:
        """[B, n, D] posterior samples in ``space`` ('physical', 'model' or 'standardised');
        rows whose status is not 'ok' are NaN. ``seed`` makes the draw reproducible."""
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, not {space!r}")
        return self.space.from_model(self._draw(as_numpy_batch(batch), n, seed, False).y, space)

    @torch.no_grad()
    def log_prob(self, theta, batch, space: str = "model") -> torch.Tensor:
        """[B] log q(theta | x) of ``theta`` [B, D] given in ``space`` ('model' by default,
        'physical' or 'standardised'); NaN for rows whose status is not 'ok'."""
        b = as_numpy_batch(batch)
        device = self.space.mean.device
        theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32, device=device)
        if theta.shape != (batch_size(b), self.dim):
            raise ValueError(f"theta must be [B, D] = [{batch_size(b)}, {self.dim}], "
                             f"got {list(theta.shape)}")
        y, jac = self.space.to_model(theta, space)
        return self._log_prob_model(y, b) + jac

    @torch.no_grad()
    def summarize(self, batch, n: int = 1000, seed: int | None = None,
                  keep_samples: bool = False) -> dict[str, np.ndarray]:
        """Per-row posterior summary in physical units.

        Columns: ``status``; for each target T: ``T_mean``, ``T_std``, ``T_q025``, ``T_q16``,
        ``T_q50``, ``T_q84``, ``T_q975``; the model's ``extra_summary_columns`` (e.g.
        ``oh12_detect_prob``, ``T_std_aleatoric``/``T_std_epistemic`` for ensembles);
        ``samples`` [B, n, D] with ``keep_samples``. Values of rows whose status is not 'ok'
        are NaN."""
        if n < 1:
            raise ValueError("n must be >= 1")
        d = self._draw(as_numpy_batch(batch), n, seed, True)
        x = self.space.from_model(d.y, "physical").cpu().numpy().astype(np.float64)
        status = d.status.astype(object)
        # Non-finite draws (a flow's far tail overflowing exp) are left out of the summary; a
        # row with too many of them is not 'ok'. Finite draws are kept whatever their value.
        ok = status == STATUS_OK
        bad = outside_support(x) & ok[:, None]
        summary_x = x
        if bad.any():
            status[ok & (bad.mean(axis=1) > MAX_OUTSIDE_SUPPORT)] = STATUS_OUTSIDE_SUPPORT
            summary_x = np.where((bad | (status != STATUS_OK)[:, None])[..., None], np.nan, x)
        out: dict[str, np.ndarray] = {"status": status.astype(str)}
        out.update(sample_summary(summary_x, self.targets))
        for k in self.extra_summary_columns():
            out[k] = np.asarray(d.extras.get(k, np.full(len(d.status), np.nan)), np.float64)
        if keep_samples:
            out["samples"] = x.astype(np.float32)
        return out

    @classmethod
    def load(cls, uri: str, map_location="cpu") -> "Posterior":
        return load_posterior(uri, map_location)


# ----------------------------------------------------------------------------------------------
# Saved models
# ----------------------------------------------------------------------------------------------

class SavedModel(nn.Module):
    """A torch model that saves as a raygal model folder and trains in the shared loop.

    Subclasses set ``kind`` and implement ``forward(prepared)`` (the training loss on a batch
    that ``ModelInputs.prepare`` made, as tensors) and ``from_description``.
    """

    kind: str = "abstract"
    model_inputs: ModelInputs

    @property
    def stats(self) -> NormStats:
        return self.model_inputs.stats

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (frozen parts, e.g. a VAE encoder, excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, prepared: dict) -> dict[str, torch.Tensor]:
        """The training loss of a prepared batch (``ModelInputs.prepare`` output, numpy or
        torch): {'loss': scalar with grad, ...}. The loss runs through ``forward`` so that
        DistributedDataParallel's hooks (gradient synchronisation) see it."""
        raise NotImplementedError

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """The training loss of a batch of rows (prepared here, on this process)."""
        return self(self.model_inputs.prepare(as_numpy_batch(batch)))

    def validation_generator(self, prepared: dict) -> RowNoise | None:
        """None while training; in eval mode noise draws that belong to the rows
        (``RowNoise``, from their ids), so that validation losses compare models rather than
        noise draws."""
        if self.training:
            return None
        return rows_generator(prepared["objid"])

    def describe(self) -> dict:
        return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "kind": self.kind,
                "targets": list(self.model_inputs.targets), "inputs": self.model_inputs.kind,
                "config": self.config, "stats": self.stats.to_dict()}

    def save(self, uri: str) -> None:
        """Write ``weights.pt`` then ``model.json`` under ``uri`` (local or s3://)."""
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, buf)
        storage.write_bytes(storage.join(uri, "weights.pt"), buf.getvalue())
        storage.write_json(storage.join(uri, "model.json"), self.describe())

    @classmethod
    def from_description(cls, desc: dict) -> "SavedModel":
        """A freshly initialised model from ``describe()`` output (weights not loaded)."""
        raise NotImplementedError

    @classmethod
    def from_training_config(cls, cfg: dict, stats: NormStats, image_shape=None
                             ) -> "SavedModel":
        """A freshly initialised model for a training config (``TrainConfig.to_dict()``):
        its targets, inputs and ``model_config``; ``image_shape`` is the data's cutouts'."""
        mc = dict(cfg.get("model_config") or {})
        if image_shape is not None and ModelInputs(cfg["inputs"], stats).uses_image:
            mc.setdefault("image_shape", list(image_shape))
        return cls(cfg["targets"], cfg["inputs"], stats, mc)

    @classmethod
    def load_saved(cls, uri: str, desc: dict, map_location="cpu") -> "SavedModel":
        model = cls.from_description(desc)
        state = load_state_dict(uri, map_location)
        if int(desc.get("version", 1)) < 2:
            state = cls.migrate_v1(state)
        model.load_state_dict(state)
        model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
        model.eval()
        return model

    @staticmethod
    def migrate_v1(state: dict) -> dict:
        """State-dict keys of a version-1 file (networks at the top level)."""
        return {f"estimator.{k}": v for k, v in state.items()}


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
    """Weights saved by ``SavedModel.save``, loaded safely (tensors only, no pickle code)."""
    data = storage.read_bytes(storage.join(uri, "weights.pt"))
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ValueError(f"{storage.join(uri, 'weights.pt')} cannot be loaded safely: not a "
                         f"tensors-only weights file, refused ({type(exc).__name__}: {first})"
                         ) from None


def load_model(uri: str, map_location="cpu"):
    """Any saved raygal model (a posterior or a VAE) from ``uri``; a clear error if it is not
    one."""
    desc = read_model_description(uri)
    try:
        cls = model_class(desc.get("kind"))
    except ValueError as exc:
        raise ValueError(f"{uri}: {exc}") from None
    return cls.load_saved(uri, desc, map_location)


def load_posterior(uri: str, map_location="cpu") -> Posterior:
    """A saved posterior (any kind, or an ensemble) from ``uri``."""
    model = load_model(uri, map_location)
    if not isinstance(model, Posterior):
        raise ValueError(f"{uri}: a raygal {model.kind} model, not a posterior")
    return model


# ----------------------------------------------------------------------------------------------
# Neural posteriors: an estimator + the inputs adapter + the target spaces
# ----------------------------------------------------------------------------------------------

class NeuralPosterior(SavedModel, Posterior):
    """A posterior made of a ``ConditionalEstimator`` (``estimator_class``) on the inputs of
    ``ModelInputs``.

    Args:
        targets: target names (``raygal.schema.TARGETS``); None: the kind's default set. The
            estimator may order them (the NF puts oh12 after the core targets).
        inputs: 'image+phot', 'phot' or 'image'.
        stats: normalisation statistics of the training data.
        config: the estimator's hyper-parameters (see each estimator), plus ``image_shape``
            [C, H, W] of the training cutouts (inference refuses other shapes).
    """

    estimator_class: type[ConditionalEstimator]
    #: targets when ``targets`` is None.
    default_targets: tuple[str, ...] | None = None
    #: a batch column that stands in for the cutout (e.g. precomputed VAE features).
    features_column: str | None = None

    def __init__(self, targets, inputs: str, stats: NormStats, config: dict | None = None):
        super().__init__()
        if stats is None:
            raise ValueError(f"a {self.kind} posterior needs normalisation statistics (stats)")
        if targets is None and self.default_targets is not None:
            targets = self.default_targets
        targets = None if targets is None else parse_targets(targets)
        if targets is not None and not targets:
            raise ValueError("a posterior needs at least one target")
        config = dict(config or {})
        # The adapter checks the input kind before any network is built.
        probe = ModelInputs(inputs, stats)
        inputs = probe.kind
        image_shape = config.get("image_shape")
        spec = ContextSpec(probe.n_phot, (tuple(image_shape) if image_shape else (3,))
                           if probe.uses_image else None)
        self.estimator = self.estimator_class(targets, spec, config)
        self.config = self.estimator.config
        self.targets = self.estimator.targets
        self.inputs = inputs
        self.model_inputs = ModelInputs(inputs, stats, self.targets,
                                        self.config.get("image_shape"), self.features_column,
                                        self.estimator.image_feature_dim)
        self.space = TargetSpace(self.targets, stats)

    @classmethod
    def from_description(cls, desc: dict) -> "NeuralPosterior":
        return cls(targets=desc["targets"], inputs=desc["inputs"],
                   stats=NormStats.from_dict(desc["stats"]), config=desc["config"])

    # -- training ---------------------------------------------------------------------------
    def forward(self, prepared: dict) -> dict[str, torch.Tensor]:
        ctx = Context.from_arrays(prepared, self.device)
        theta = torch.as_tensor(prepared["theta"]).to(self.device, torch.float32)
        return self.estimator.loss(theta, ctx, self.validation_generator(prepared))

    # -- inputs -----------------------------------------------------------------------------
    def status(self, batch) -> np.ndarray:
        return self.model_inputs.status(batch)

    def context(self, batch, rows: np.ndarray | None = None) -> Context:
        """The estimator's inputs for ``rows`` (default: all) of a batch of rows."""
        return Context.from_arrays(self.model_inputs.arrays(batch, rows), self.device)

    # -- ODE solvers ------------------------------------------------------------------------
    @property
    def solver(self) -> str | None:
        return self.estimator.solver

    @solver.setter
    def solver(self, name: str) -> None:
        self.set_solver(name)

    def set_solver(self, name: str) -> None:
        if self.estimator.solver is None:
            super().set_solver(name)
        self.estimator.set_solver(name)

    def with_solver(self, name, rtol=None, atol=None):
        return self.estimator.with_solver(name, rtol=rtol, atol=atol)

    def extra_summary_columns(self) -> tuple[str, ...]:
        return self.estimator.extra_columns

    # -- the interface ----------------------------------------------------------------------
    def _draw(self, b: dict, n: int, seed: int | None, extras: bool) -> Draw:
        if n < 1:
            raise ValueError("n must be >= 1")
        self.eval()
        status = self.status(b)
        rows = np.flatnonzero(status == STATUS_OK)
        out = torch.full((batch_size(b), n, self.dim), float("nan"), device=self.device)
        cols = {}
        if len(rows):
            gen = None
            if seed is not None:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(int(seed))
            ctx = self.context(b, rows)
            step = max(1, self.estimator.max_trajectories // n)
            chunks = [self.estimator.draw(ctx.index(slice(i, i + step)), n, gen, extras)
                      for i in range(0, len(rows), step)]
            z = torch.cat([c[0] for c in chunks])
            out[torch.as_tensor(rows, device=self.device)] = self.space.to_model(
                z.to(out.dtype), "standardised")[0]
            for k in chunks[0][1]:
                col = np.full(len(status), np.nan)
                col[rows] = torch.cat([c[1][k] for c in chunks]).detach().cpu().numpy()
                cols[k] = col
        return Draw(out, status, cols)

    def _log_prob_model(self, y: torch.Tensor, b: dict) -> torch.Tensor:
        self.eval()
        status = self.status(b)
        rows = np.flatnonzero(status == STATUS_OK)
        out = torch.full((batch_size(b),), float("nan"), device=self.device)
        if len(rows):
            idx = torch.as_tensor(rows, device=self.device)
            z = self.space.from_model(y[idx], "standardised")
            lp = self.estimator.log_prob(z, self.context(b, rows))
            out[idx] = lp - torch.log(self.space.std).sum()
        return out


__all__ = ["Posterior", "NeuralPosterior", "SavedModel", "TargetSpace", "Draw", "Context",
           "load_posterior", "load_model", "read_model_description", "load_state_dict",
           "sample_summary", "QUANTILES", "QUANTILE_NAMES", "MODEL_FORMAT", "MODEL_VERSION"]
