"""Conditional flow matching posterior (Yunus, Wu & Holwerda, arXiv:2512.05078).

A velocity field v(t, theta, x) transports N(0, I) at t = 0 to q(theta | x) at t = 1. It is
trained by regressing the conditional velocity of a linear probability path (Lipman et al. 2023,
arXiv:2210.02747; Tong et al. 2024, arXiv:2302.00482, "CFM" with a constant sigma)::

    theta_t = (1 - t) theta_0 + t theta_1 + sigma eps,   theta_0, eps ~ N(0, I)
    u       = theta_1 - theta_0
    loss    = E || v(t, theta_t, x) - u ||^2

Sampling integrates d theta / dt = v from t = 0 to 1 (torchdiffeq). The density is exact up to
the ODE solver's error, by the instantaneous change of variables (Chen et al. 2018,
arXiv:1806.07366)::

    log q(theta_1 | x) = log N(theta_0; 0, I) - int_0^1 div_theta v(t, theta_t, x) dt

integrated backwards from t = 1, with the divergence computed exactly (D autograd passes; D is
the number of targets, at most a handful).

Metallicity is measurable only in star-forming galaxies (about six in ten in SDSS and in the
mock survey), so by default 12+log(O/H) is not part of the joint field but follows the chain
rule of the NF (``raygal.models.nf``)::

    q(core, oh12 | x) = q(core | x) q(oh12 | core, x),     P(oh12 measurable | x)

a core field learnt from every galaxy with its core targets, a small 1-d field for oh12 given
the core values and x learnt from the galaxies where oh12 is measured, and a detectability
classifier learnt from all. Each factor's density is exact by the formula above.
"""
from __future__ import annotations

import contextlib
import math

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchdiffeq import odeint

from ..evaluate.metrics import interval_coverage
from ..inputs import STATUS_OK, as_numpy_batch, target_matrix
from ..schema import CFM_TARGETS, NF_METALLICITY_TARGET
from .encoders import ConvEncoder
from .estimator import ConditionalEstimator, Context, rand, randn
from .nets import MLP, masked_mean, zero_image_columns
from .nf import DETECT_COLUMN
from .posterior import NeuralPosterior

#: torchdiffeq's fixed-grid methods (velocity evaluations per step) ...
FIXED_METHODS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
#: ... and its adaptive ones, which take ``rtol``/``atol``.
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
#: The paper's sampler: fixed-step RK4, 100 steps.
DEFAULT_SOLVER = "rk4-100"


@dataclass(frozen=True)
class Solver:
    """An ODE solver setting: ``'<method>-<steps>'`` for torchdiffeq's fixed-grid methods
    (``rk4-100``, ``rk4-10``, ``midpoint-10``, ``euler-20``, ...) or the name of an adaptive
    method (``dopri5``, with the model's ``rtol``/``atol``).

    >>> Solver.parse("rk4-20").evaluations
    80
    >>> Solver.parse("dopri5").steps is None
    True
    """

    method: str
    steps: int | None = None

    @classmethod
    def parse(cls, name: str) -> "Solver":
        if isinstance(name, Solver):
            return name
        name = str(name).strip().lower()
        if name in ADAPTIVE_METHODS:
            return cls(name)
        method, sep, steps = name.rpartition("-")
        if sep and method in FIXED_METHODS:
            try:
                n = int(steps)
            except ValueError:
                n = 0
            if n >= 1:
                return cls(method, n)
        raise ValueError(
            f"unknown ODE solver {name!r}: use '<method>-<steps>' with method one of "
            f"{', '.join(FIXED_METHODS)} (e.g. 'rk4-100', 'midpoint-10', 'euler-20'), or an "
            f"adaptive method: {', '.join(ADAPTIVE_METHODS)}")

    @property
    def adaptive(self) -> bool:
        return self.steps is None

    @property
    def evaluations(self) -> int | None:
        """Velocity evaluations per trajectory (None for adaptive methods: it varies)."""
        return None if self.adaptive else FIXED_METHODS[self.method] * self.steps

    def __str__(self) -> str:
        return self.method if self.adaptive else f"{self.method}-{self.steps}"


class VelocityField(nn.Module):
    """v(t, theta, c): an MLP on [t; theta; c] with ``layers`` hidden layers of width ``hidden``
    and SiLU activations; ``c`` [.., C] is the per-object context (image and photometry
    features).

    The first layer is linear in its input, so its context part W_c c + b is computed once per
    object (``context_bias``) and broadcast to every trajectory and solver step: an ODE solve
    of n trajectories then costs what an unconditional field would, whatever C is.

    >>> v = VelocityField(dim=2, context_features=5, hidden=16, layers=3)
    >>> c = v.context_bias(torch.zeros(4, 5))[:, None]                  # [4, 1, 16]
    >>> v(torch.tensor(0.5), torch.zeros(4, 100, 2), c).shape
    torch.Size([4, 100, 2])
    """

    def __init__(self, dim: int, context_features: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError("the velocity MLP needs at least one hidden layer")
        self.dim = dim
        self.context_features = context_features
        self.input = nn.Linear(1 + dim + context_features, hidden)
        self.body = MLP(hidden, dim, hidden, layers - 1)
        # MLP starts with a Linear; the first hidden layer's activation goes in front of it.
        self.act = nn.SiLU()

    def context_bias(self, c: torch.Tensor) -> torch.Tensor:
        """[..., C] context -> [..., hidden]: the first layer's context term plus its bias."""
        w = self.input.weight[:, 1 + self.dim:]
        return c @ w.t() + self.input.bias

    def forward(self, t: torch.Tensor, theta: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """t: scalar or [..., 1]; theta: [..., D]; bias: ``context_bias``, broadcastable to
        [..., hidden]. Returns [..., D]."""
        w = self.input.weight
        h = theta @ w[:, 1:1 + self.dim].t() + t * w[:, 0] + bias
        return self.body(self.act(h))


class ProbabilityPath:
    """The conditional probability path of flow matching with a constant width ``sigma``
    (Tong et al. 2024, arXiv:2302.00482, "CFM"; torchcfm's ``ConditionalFlowMatcher``)::

        t ~ U(0, 1),  theta_0, eps ~ N(0, I)
        theta_t = (1 - t) theta_0 + t theta_1 + sigma eps,    u_t = theta_1 - theta_0

    >>> path = ProbabilityPath(sigma=0.0)
    >>> theta1 = torch.ones(4, 2)
    >>> t, theta_t, u = path.sample(theta1, torch.Generator().manual_seed(0))
    >>> torch.allclose(theta_t, theta1 - (1 - t) * u)      # straight lines to the data
    True
    """

    def __init__(self, sigma: float = 0.05):
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, not {sigma}")
        self.sigma = float(sigma)

    def sample(self, theta1: torch.Tensor, generator: torch.Generator | None = None):
        """(t [B, 1], theta_t [B, D], target velocity u_t [B, D]) for data ``theta1`` [B, D];
        ``generator`` fixes every draw (validation)."""
        kw = dict(device=theta1.device, dtype=theta1.dtype)
        theta0 = randn(theta1.shape, generator, **kw)
        t = rand((theta1.shape[0], 1), generator, **kw)
        eps = randn(theta1.shape, generator, **kw)
        return t, (1 - t) * theta0 + t * theta1 + self.sigma * eps, theta1 - theta0


def split_metallicity(targets, metallicity: bool | None = None
                      ) -> tuple[tuple[str, ...], bool]:
    """(core targets, metallicity branch?) of the CFM for ``targets`` (None: ``CFM_TARGETS``).

    ``metallicity`` None means True when 'oh12' is among two or more targets. With the branch
    the core is every target but oh12, in the order given; without it, every target.

    >>> split_metallicity(["log_mstar", "oh12", "av"])
    (('log_mstar', 'av'), True)
    >>> split_metallicity(["log_mstar", "oh12"], metallicity=False)
    (('log_mstar', 'oh12'), False)
    """
    names = tuple(CFM_TARGETS if targets is None else targets)
    if metallicity is None:
        metallicity = NF_METALLICITY_TARGET in names and len(names) > 1
    if metallicity and (NF_METALLICITY_TARGET not in names or len(names) < 2):
        raise ValueError(f"metallicity=True needs 'oh12' and at least one other target, "
                         f"not {list(names)}")
    met = bool(metallicity)
    return tuple(t for t in names if not (met and t == NF_METALLICITY_TARGET)), met


class FlowMatchingEstimator(ConditionalEstimator):
    """q(theta | image, photometry) by conditional flow matching (Yunus et al. 2025), in
    standardised target space.

    Config (defaults):

    - ``hidden`` (256), ``layers`` (3): the velocity MLP on [t; theta; f_img; f_phot] (SiLU);
    - ``sigma`` (0.05): width of the probability path, in standardised units;
    - ``solver`` ('rk4-100'): ODE solver for ``sample`` and ``log_prob`` (``Solver``);
    - ``rtol`` (1e-5), ``atol`` (1e-5): tolerances of adaptive solvers (``dopri5``);
    - ``image_features`` (256), ``encoder_width`` (32): the ``ConvEncoder`` (image inputs);
    - ``phot_embed`` (0): 0 feeds the 5 standardised photometric features to the velocity MLP
      as they are; k > 0 embeds them first with a 2-layer MLP of width k;
    - ``image_shape`` (None): [C, H, W] of the training cutouts. C defaults to 3 (gri);
    - ``metallicity`` (True when 'oh12' is among two or more targets): the chain rule
      q(core | x) q(oh12 | core, x) and a detectability classifier, as the NF's; False is
      the paper's joint field over every target, learnt from the rows that have them all;
    - ``oh12_hidden`` (64), ``oh12_layers`` (3): the 1-d oh12 velocity MLP on
      [t; oh12; f_img; f_phot; core]; the classifier has 2 hidden layers of ``oh12_hidden``;
    - ``bce_weight`` (1.0): weight of the classifier's binary cross-entropy in the loss;
    - ``image_init`` ('zero'): initialises the first layers of the velocity MLPs and the
      classifier as the photometry-only model's, with zero weights on the image features
      (``raygal.models.nets.zero_image_columns``): the model starts as the photometry-only
      one and the image enters as it earns its place (same architecture as the paper's;
      'default' is PyTorch's initialisation, under which the image model trailed the
      photometry-only one at equal epochs in every measurement, see the README);
    - ``aux_weight`` (0.0): k > 0 adds k x the MSE of a linear map from the context to the
      standardised targets (an auxiliary regression head, used in training only), a direct,
      low-noise signal for the image encoder besides the flow-matching loss.

    The estimator's ``targets`` are the core targets (every target but oh12, in the order
    given) followed by oh12, as the NF's. Missing targets (NaN) are never imputed: the core
    field learns from the rows with every core target, the oh12 field from those that also
    have oh12 (conditioned on their true core values; at inference on the sampled ones), the
    classifier from every row. Each object's context is computed once and broadcast to its n
    trajectories (``VelocityField.context_bias``).
    """

    #: rows x samples per ODE solve. Measured on 2 CPU cores: ~8k trajectories run 1.2-3x
    #: faster than 131k, whose 100 MB activations are re-allocated (and page-faulted) at
    #: every velocity evaluation.
    max_trajectories: int = 1 << 13
    #: rows per ``log_prob`` solve (each carries D autograd passes per velocity evaluation).
    max_log_prob_rows: int = 1 << 14

    def __init__(self, targets, spec, config=None):
        c = dict(config or {})
        core, met = split_metallicity(targets, c.get("metallicity"))
        super().__init__(core + ((NF_METALLICITY_TARGET,) if met else ()), spec, c)
        self.core_targets, self.metallicity = core, met
        c = self.config
        c["metallicity"] = met
        for key, value in (("hidden", 256), ("layers", 3), ("sigma", 0.05),
                           ("solver", DEFAULT_SOLVER), ("rtol", 1e-5), ("atol", 1e-5),
                           ("phot_embed", 0), ("image_shape", None),
                           ("image_init", "zero"), ("aux_weight", 0.0)):
            c.setdefault(key, value)
        c["solver"] = str(Solver.parse(c["solver"]))
        self.path = ProbabilityPath(c["sigma"])
        n_ctx = self._build_context_nets()
        self.velocity = VelocityField(len(core), n_ctx, c["hidden"], c["layers"])
        if met:
            c.setdefault("oh12_hidden", 64)
            c.setdefault("oh12_layers", 3)
            c.setdefault("bce_weight", 1.0)
            self.oh12_velocity = VelocityField(1, n_ctx + len(core), c["oh12_hidden"],
                                               c["oh12_layers"])
            self.detect = MLP(n_ctx, 1, c["oh12_hidden"], 2)
        if float(c["aux_weight"]) > 0:
            self.aux_head = nn.Linear(n_ctx, len(self.targets))
        if spec.image_shape is not None:
            n_img = c["image_features"]
            zero_image_columns(self.velocity.input, c["image_init"], 1 + len(core),
                               1 + len(core) + n_img)
            if met:
                zero_image_columns(self.oh12_velocity.input, c["image_init"], 2, 2 + n_img)
                zero_image_columns(self.detect[0], c["image_init"], 0, n_img)
        #: velocity evaluations per trajectory of the last ``sample`` or ``log_prob`` call
        #: (of its costliest ODE solve: with the metallicity branch there are two, one per
        #: field, on the same grid), for benchmarks and ``choose_solver``.
        self.last_nfe = 0

    def _build_context_nets(self) -> int:
        """The image encoder and photometry embedding the inputs call for; returns the width
        C of the per-object context [f_img; f_phot]."""
        c, spec, n_ctx = self.config, self.spec, 0
        if spec.image_shape is not None:
            c.setdefault("image_features", 256)
            c.setdefault("encoder_width", 32)
            self.encoder = ConvEncoder(spec.image_shape[0], c["image_features"],
                                       c["encoder_width"])
            n_ctx += c["image_features"]
        if spec.n_phot and c["phot_embed"]:
            self.phot_net = MLP(spec.n_phot, c["phot_embed"], c["phot_embed"], 2)
            n_ctx += c["phot_embed"]
        else:
            n_ctx += spec.n_phot
        return n_ctx

    # -- solver setting -----------------------------------------------------------------------
    @property
    def solver(self) -> str:
        """The ODE solver ``sample`` and ``log_prob`` use (a ``Solver`` name). Setting it also
        sets ``config['solver']``, so a saved model keeps it."""
        return self.config["solver"]

    def set_solver(self, name: str) -> None:
        self.config["solver"] = str(Solver.parse(name))

    @contextlib.contextmanager
    def with_solver(self, name: str | None, rtol: float | None = None,
                    atol: float | None = None):
        """Temporarily use another solver (and tolerances); None keeps the current one."""
        saved = {k: self.config[k] for k in ("solver", "rtol", "atol")}
        try:
            if name is not None:
                self.set_solver(name)
            if rtol is not None:
                self.config["rtol"] = float(rtol)
            if atol is not None:
                self.config["atol"] = float(atol)
            yield self
        finally:
            self.config.update(saved)

    def _odeint(self, func, y0, t0: float, t1: float):
        """Integrate ``func`` from t0 to t1 with the current solver; returns the state at t1."""
        solver = Solver.parse(self.solver)
        y = y0[0] if isinstance(y0, tuple) else y0
        t = torch.tensor([t0, t1], dtype=y.dtype, device=y.device)
        nfe = [0]

        def counted(t, state):
            nfe[0] += 1
            return func(t, state)

        if solver.adaptive:
            out = odeint(counted, y0, t, method=solver.method, rtol=float(self.config["rtol"]),
                         atol=float(self.config["atol"]))
        else:
            steps = solver.steps
            # An explicit grid, not step_size: 1/step_size need not be an integer in floats.
            grid = {"grid_constructor": lambda f, y0, t: torch.linspace(
                float(t[0]), float(t[-1]), steps + 1, dtype=t.dtype, device=t.device)}
            out = odeint(counted, y0, t, method=solver.method, options=grid)
        self.last_nfe = max(self.last_nfe, nfe[0])
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]

    # -- networks -----------------------------------------------------------------------------
    def features(self, ctx: Context) -> torch.Tensor:
        """[B, C] per-object context of the velocity field: [f_img; f_phot]."""
        parts = []
        if self.spec.image_shape is not None:
            if ctx.image is None:
                raise ValueError("this model uses images but the context has none")
            parts.append(self.encoder(ctx.image))
        if self.spec.n_phot:
            parts.append(self.phot_net(ctx.phot) if self.config["phot_embed"] else ctx.phot)
        return torch.cat(parts, dim=-1)

    def _oh12_context(self, f: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
        """[..., C + n_core] context of the oh12 field: the object's features ``f`` [B, C]
        (broadcast over the trajectories of ``core`` [B, n, n_core], if it has them) and the
        core values."""
        if core.dim() == 3:
            f = f[:, None].expand(-1, core.shape[1], -1)
        return torch.cat([f, core.to(f.dtype)], dim=-1)

    # -- sampling -----------------------------------------------------------------------------
    def _sample_field(self, field: VelocityField, context: torch.Tensor, n: int,
                      generator: torch.Generator | None) -> torch.Tensor:
        """[B, n, dim] draws of one field, for a per-object context [B, 1, C] or a
        per-trajectory one [B, n, C]."""
        bias = field.context_bias(context)                                 # [B, 1 or n, H]
        z0 = torch.randn((bias.shape[0], n, field.dim), generator=generator,
                         device=bias.device, dtype=bias.dtype)
        return self._odeint(lambda t, z: field(t, z, bias), z0, 0.0, 1.0)

    def sample(self, ctx, n, generator=None):
        return self.draw(ctx, n, generator, extras=False)[0]

    def draw(self, ctx, n, generator=None, extras=True):
        self.last_nfe = 0
        f = self.features(ctx)                                      # the encoder runs once
        core = self._sample_field(self.velocity, f[:, None], n, generator)  # [B, n, n_core]
        if not self.metallicity:
            return core, {}
        # The chain rule: oh12 | core, x with the core values just drawn, per trajectory.
        oh12 = self._sample_field(self.oh12_velocity, self._oh12_context(f, core), n,
                                  generator)
        more = {DETECT_COLUMN: self._detect(f)} if extras else {}
        return torch.cat([core, oh12], dim=-1), more

    # -- densities ----------------------------------------------------------------------------
    def log_prob(self, theta, ctx):
        self.last_nfe = 0
        step = max(1, int(self.max_log_prob_rows))
        return torch.cat([self._log_prob_chunk(theta[i:i + step], ctx.index(slice(i, i + step)))
                          for i in range(0, len(theta), step)])

    def _log_prob_chunk(self, z: torch.Tensor, ctx: Context) -> torch.Tensor:
        f = self.features(ctx)
        z = z.to(f.dtype)
        nc = len(self.core_targets)
        lp = self._log_density(self.velocity, z[:, :nc], f)
        if self.metallicity:
            lp = lp + self._log_density(self.oh12_velocity, z[:, nc:],
                                        self._oh12_context(f, z[:, :nc]))
        return lp

    def _log_density(self, field: VelocityField, z: torch.Tensor, context: torch.Tensor
                     ) -> torch.Tensor:
        """[B] log density of one field at ``z`` [B, dim] given ``context`` [B, C]."""
        # Keep the graph through the divergence only if the caller wants gradients.
        create_graph = torch.is_grad_enabled()
        bias = field.context_bias(context)                                  # [B, H]
        dim = field.dim

        def augmented(t, state):
            theta, _ = state
            with torch.enable_grad():
                x = theta if theta.requires_grad else theta.detach().requires_grad_(True)
                v = field(t, x, bias)
                div = torch.zeros_like(v[:, 0])
                for d in range(dim):
                    g, = torch.autograd.grad(v[:, d].sum(), x, retain_graph=True,
                                             create_graph=create_graph)
                    div = div + g[:, d]
            if not create_graph:
                v, div = v.detach(), div.detach()
            return v, div

        # d/dt [theta, L] = [v, div v], from (theta_1, 0) at t = 1 back to t = 0, gives
        # L(0) = -int_0^1 div v dt.
        z0, delta = self._odeint(augmented, (z, torch.zeros_like(z[:, 0])), 1.0, 0.0)
        log_base = -0.5 * (z0 ** 2).sum(-1) - 0.5 * dim * math.log(2 * math.pi)
        return log_base + delta

    def detect_prob(self, ctx: Context) -> torch.Tensor:
        """[B] probability that the metallicity is measurable (the classifier)."""
        if not self.metallicity:
            raise ValueError("this model has no metallicity branch")
        return self._detect(self.features(ctx))

    def _detect(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.detect(f)).squeeze(-1)

    def extras(self, ctx: Context) -> dict[str, torch.Tensor]:
        return {DETECT_COLUMN: self.detect_prob(ctx)} if self.metallicity else {}

    @property
    def extra_columns(self) -> tuple[str, ...]:
        return (DETECT_COLUMN,) if self.metallicity else ()

    # -- training -----------------------------------------------------------------------------
    def _field_mse(self, field: VelocityField, theta1: torch.Tensor, context: torch.Tensor,
                   rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flow-matching MSE of one field on data ``theta1`` [B, dim] (NaN-free) given
        ``context`` [B, C], averaged over ``rows`` [B] (bool)."""
        t, theta_t, u = self.path.sample(theta1, generator)
        v = field(t, theta_t, field.context_bias(context))
        return masked_mean(((v - u) ** 2).mean(dim=-1), rows)

    def loss(self, theta, ctx, generator=None):
        """{'loss': scalar with grad, 'mse': the flow-matching part, detached}; with the
        metallicity branch also its parts 'mse_core', 'mse_oh12' and 'bce'.

        Each term is a mean over the rows it is defined on (class docstring); a batch with no
        such row gives a zero term that still reaches every parameter, so the graph is the
        same on every batch and every worker (DistributedDataParallel needs it)."""
        f = self.features(ctx)
        present = torch.isfinite(theta)
        y = torch.nan_to_num(theta).to(f.dtype)
        nc = len(self.core_targets)
        core_ok = present[:, :nc].all(dim=-1)
        mse_core = self._field_mse(self.velocity, y[:, :nc], f, core_ok, generator)
        extra, aux = 0.0, {}
        if float(self.config["aux_weight"]) > 0:
            aux_mse = masked_mean((self.aux_head(f) - y) ** 2, present)
            extra, aux = float(self.config["aux_weight"]) * aux_mse, {"aux_mse": aux_mse.detach()}
        if not self.metallicity:
            return {"loss": mse_core + extra, "mse": mse_core.detach(), **aux}
        has_oh12 = present[:, nc]
        mse_oh12 = self._field_mse(self.oh12_velocity, y[:, nc:],
                                   self._oh12_context(f, y[:, :nc]), has_oh12 & core_ok,
                                   generator)
        logit = self.detect(f).squeeze(-1)
        bce = F.binary_cross_entropy_with_logits(logit, has_oh12.to(logit.dtype))
        loss = mse_core + mse_oh12 + float(self.config["bce_weight"]) * bce + extra
        return {"loss": loss, "mse": (mse_core + mse_oh12).detach(),
                "mse_core": mse_core.detach(), "mse_oh12": mse_oh12.detach(),
                "bce": bce.detach(), **aux}


class FlowMatchingPosterior(NeuralPosterior):
    """Conditional flow matching posterior (kind 'cfm'): a ``FlowMatchingEstimator`` on the
    inputs of ``raygal.inputs.ModelInputs``.

    ``targets=None`` means ``raygal.schema.CFM_TARGETS`` (log M*, log SFR, 12+log(O/H),
    Dn(4000), A_V); any D >= 1 works. With oh12 and the metallicity branch (the default), the
    targets are ordered core first, oh12 last, and summaries carry ``oh12_detect_prob``. The
    solver is settable after loading: ``post.solver = 'rk4-10'`` or
    ``with post.with_solver(...)``; ``choose_solver`` measures which one to keep.

    >>> import numpy as np
    >>> from raygal.inputs import NormStats
    >>> stats = NormStats(target_mean={"log_mstar": 10.0}, target_std={"log_mstar": 0.5})
    >>> post = FlowMatchingPosterior(["log_mstar"], "phot", stats,
    ...                              {"hidden": 32, "solver": "rk4-10"})
    >>> batch = {f"mag_{b}": np.full(2, 18.0, np.float32) for b in "ugriz"}
    >>> post.sample(batch, 100, seed=0).shape
    torch.Size([2, 100, 1])
    >>> post.log_prob(np.full((2, 1), 10.0), batch).shape
    torch.Size([2])
    """

    kind = "cfm"
    estimator_class = FlowMatchingEstimator
    default_targets = CFM_TARGETS

    @classmethod
    def from_description(cls, desc: dict) -> "FlowMatchingPosterior":
        # A model.json without 'metallicity' holds a joint field over every target.
        config = {"metallicity": False, **desc["config"]}
        return super().from_description({**desc, "config": config})


# ----------------------------------------------------------------------------------------------
# Choosing the solver by measurement
# ----------------------------------------------------------------------------------------------

#: Solvers ``choose_solver`` tries by default (cheapest first).
SOLVER_CANDIDATES = ("euler-10", "midpoint-5", "midpoint-10", "rk4-10", "rk4-20")
#: ``choose_solver``'s default tolerances against the reference: the 68 % and 95 % coverage of
#: the truths within this many percentage points of the reference's, for every target ...
COVERAGE_TOLERANCE_POINTS = 1.0
#: ... and the truths' log q within this many nats of the reference's, on average (mean
#: absolute difference: a few per cent of the paper's mean delta log p, 1.3-2.2 nats).
LOG_Q_TOLERANCE = 0.05


def choose_solver(post, batch, candidates=SOLVER_CANDIDATES, n: int = 200, seed: int = 0,
                  reference: str = DEFAULT_SOLVER,
                  coverage_points: float = COVERAGE_TOLERANCE_POINTS,
                  log_q_tol: float = LOG_Q_TOLERANCE, store: bool = False) -> dict:
    """The cheapest ODE solver whose posteriors agree with ``reference`` (the paper's RK4-100)
    on ``batch``, rows of galaxies with their true targets (e.g. validation rows).

    Every solver samples ``n`` draws per row with the same ``seed`` (the same base draws, so
    differences are the solver's, not Monte Carlo noise) and evaluates log q of the truths.
    A candidate agrees when, for every target, its 68 % and 95 % coverage of the truths is
    within ``coverage_points`` percentage points of the reference's (on the rows where the
    target is known), and the mean |log q - log q_ref| over the rows with every target known
    is below ``log_q_tol`` nats. Among those that agree, the fewest velocity evaluations per
    trajectory wins (ties: the smaller log q difference); if none does, the reference.

    Rows whose inputs are unusable, or with no known target, are left out (counted in
    ``rows_skipped``). With ``store`` the choice becomes the model's solver and
    ``post.config['solver_choice']`` records the measurements, so a saved model says why.

    Returns {'solver', 'reference', 'tolerance', 'rows', 'rows_log_q', 'rows_skipped',
    'samples', 'seed', 'measurements': {solver: {'evaluations', 'coverage68' {target: ...},
    'coverage95', 'dcov68_points', 'dcov95_points' (largest |difference| over targets),
    'dlogq_mean', 'dlogq_mad', 'agrees'}}}; the reference is among the measurements.
    """
    b = as_numpy_batch(batch)
    truth = target_matrix(b, post.targets)                       # [B, D] model space
    keep = (post.status(b) == STATUS_OK) & np.isfinite(truth).any(axis=1)
    if not keep.any():
        raise ValueError("choose_solver needs rows with usable inputs and known targets")
    rows = {k: np.asarray(v)[keep] for k, v in b.items()}
    truth = truth[keep]
    complete = np.isfinite(truth).all(axis=1)
    rows_complete = {k: v[complete] for k, v in rows.items()}

    def measure(name: str) -> dict:
        with post.with_solver(name):
            s = post.sample(rows, n, space="model", seed=seed).cpu().numpy()
            nfe = Solver.parse(name).evaluations
            if nfe is None:
                nfe = int(getattr(getattr(post, "estimator", None), "last_nfe", 0))
            lq = (post.log_prob(truth[complete], rows_complete).cpu().numpy()
                  if complete.any() else np.zeros(0))
        out = {"evaluations": nfe, "coverage68": {}, "coverage95": {}, "log_q": lq}
        for j, t in enumerate(post.targets):
            known = np.isfinite(truth[:, j])
            cov = interval_coverage(s[known, :, j], truth[known, j])
            out["coverage68"][t], out["coverage95"][t] = cov["coverage68"], cov["coverage95"]
        return out

    reference = str(Solver.parse(reference))
    results = {reference: measure(reference)}
    for name in map(str, map(Solver.parse, candidates)):
        if name not in results:
            results[name] = measure(name)
    ref = results[reference]
    ref_log_q = ref["log_q"]
    for r in results.values():
        for level in ("68", "95"):
            key = f"coverage{level}"
            r[f"dcov{level}_points"] = max(
                (100 * abs(r[key][t] - ref[key][t]) for t in post.targets
                 if np.isfinite(ref[key][t])), default=0.0)
        d = r.pop("log_q") - ref_log_q
        r["dlogq_mean"] = float(d.mean()) if d.size else 0.0
        r["dlogq_mad"] = float(np.abs(d).mean()) if d.size else 0.0
        r["agrees"] = bool(r["dcov68_points"] <= coverage_points
                           and r["dcov95_points"] <= coverage_points
                           and r["dlogq_mad"] <= log_q_tol)
    agreeing = [k for k, r in results.items() if r["agrees"]]
    best = min(agreeing, key=lambda k: (results[k]["evaluations"], results[k]["dlogq_mad"]))
    choice = {"solver": best, "reference": reference,
              "tolerance": {"coverage_points": coverage_points, "log_q_nats": log_q_tol},
              "rows": int(keep.sum()), "rows_log_q": int(complete.sum()),
              "rows_skipped": int((~keep).sum()), "samples": n, "seed": seed,
              "measurements": results}
    if store:
        post.set_solver(best)
        post.config["solver_choice"] = choice
    return choice


__all__ = ["FlowMatchingPosterior", "FlowMatchingEstimator", "ProbabilityPath", "Solver",
           "VelocityField", "DEFAULT_SOLVER", "choose_solver", "SOLVER_CANDIDATES",
           "split_metallicity"]
