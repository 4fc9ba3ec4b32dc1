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
"""
from __future__ import annotations

import contextlib
import math

from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint

from ..schema import CFM_TARGETS
from .encoders import ConvEncoder
from .estimator import ConditionalEstimator, Context
from .nets import MLP, masked_mean
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
        kw = dict(generator=generator, device=theta1.device, dtype=theta1.dtype)
        theta0 = torch.randn(theta1.shape, **kw)
        t = torch.rand((theta1.shape[0], 1), **kw)
        eps = torch.randn(theta1.shape, **kw)
        return t, (1 - t) * theta0 + t * theta1 + self.sigma * eps, theta1 - theta0


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
    - ``image_shape`` (None): [C, H, W] of the training cutouts. C defaults to 3 (gri).

    The model is of the *joint* posterior: training rows missing any target are left out of
    the loss (the path needs a complete theta_1). Each object's context is computed once and
    broadcast to its n trajectories (``VelocityField.context_bias``).
    """

    #: rows x samples per ODE solve. Measured on 2 CPU cores: ~8k trajectories run 1.2-3x
    #: faster than 131k, whose 100 MB activations are re-allocated (and page-faulted) at
    #: every velocity evaluation.
    max_trajectories: int = 1 << 13
    #: rows per ``log_prob`` solve (each carries D autograd passes per velocity evaluation).
    max_log_prob_rows: int = 1 << 14

    def __init__(self, targets, spec, config=None):
        super().__init__(targets, spec, config)
        c = self.config
        c.setdefault("hidden", 256)
        c.setdefault("layers", 3)
        c.setdefault("sigma", 0.05)
        c.setdefault("solver", DEFAULT_SOLVER)
        c.setdefault("rtol", 1e-5)
        c.setdefault("atol", 1e-5)
        c.setdefault("phot_embed", 0)
        c.setdefault("image_shape", None)
        c["solver"] = str(Solver.parse(c["solver"]))
        self.path = ProbabilityPath(c["sigma"])
        n_ctx = 0
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
        self.velocity = VelocityField(self.dim, n_ctx, c["hidden"], c["layers"])
        #: velocity evaluations of the last ODE solve (per trajectory), for benchmarks.
        self.last_nfe = 0

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
        self.last_nfe = nfe[0]
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

    def sample(self, ctx, n, generator=None):
        bias = self.velocity.context_bias(self.features(ctx))[:, None, :]     # [B, 1, H]
        z0 = torch.randn((len(ctx), n, self.dim), generator=generator, device=bias.device,
                         dtype=bias.dtype)
        return self._odeint(lambda t, z: self.velocity(t, z, bias), z0, 0.0, 1.0)

    def log_prob(self, theta, ctx):
        step = max(1, int(self.max_log_prob_rows))
        return torch.cat([self._log_prob_chunk(theta[i:i + step], ctx.index(slice(i, i + step)))
                          for i in range(0, len(theta), step)])

    def _log_prob_chunk(self, z: torch.Tensor, ctx: Context) -> torch.Tensor:
        # Keep the graph through the divergence only if the caller wants gradients.
        create_graph = torch.is_grad_enabled()
        bias = self.velocity.context_bias(self.features(ctx))                  # [B, H]
        dim = self.dim

        def augmented(t, state):
            theta, _ = state
            with torch.enable_grad():
                x = theta if theta.requires_grad else theta.detach().requires_grad_(True)
                v = self.velocity(t, x, bias)
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

    # -- training -----------------------------------------------------------------------------
    def loss(self, theta, ctx, generator=None):
        """Flow-matching MSE: {'loss': scalar with grad, 'mse': detached}.

        Rows missing any target do not count; a batch with no complete row gives a zero loss
        that still reaches every parameter (DDP needs the same graph on every worker)."""
        complete = torch.isfinite(theta).all(dim=-1)
        theta1 = torch.nan_to_num(theta)
        t, theta_t, u = self.path.sample(theta1, generator)
        v = self.velocity(t, theta_t, self.velocity.context_bias(self.features(ctx)))
        mse = masked_mean(((v - u) ** 2).mean(dim=-1), complete)
        return {"loss": mse, "mse": mse.detach()}


class FlowMatchingPosterior(NeuralPosterior):
    """Conditional flow matching posterior (kind 'cfm'): a ``FlowMatchingEstimator`` on the
    inputs of ``raygal.inputs.ModelInputs``.

    ``targets=None`` means ``raygal.schema.CFM_TARGETS`` (log M*, log SFR, 12+log(O/H),
    Dn(4000), A_V); any D >= 1 works. The solver is settable after loading:
    ``post.solver = 'rk4-10'`` or ``with post.with_solver(...)``.

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


__all__ = ["FlowMatchingPosterior", "FlowMatchingEstimator", "ProbabilityPath", "Solver",
           "VelocityField", "DEFAULT_SOLVER"]
