"""VAE features + two-branch conditional RealNVP (Siddiga, Mahmud & Martinez-Galarza,
arXiv:2511.12737).

    x = [VAE features (frozen encoder: 32 means + 32 std), u-g, g-r, r-i, i-z, r]
    h = MLP(x)                                                    256-d representation
    branch 1: mean_core, mean_oh12 = MLP(h)
              core - mean_core ~ RealNVP(. | h)                   p(core | x)
              oh12 - mean_oh12 ~ affine flow(. | h, core)         p(oh12 | core, x)
              P(oh12 measurable) = sigmoid(MLP(h))
    branch 2: mean_lines = MLP(h); lines - mean_lines ~ RealNVP(. | h)   p(lines | x)

    log q(theta | x) = log p(core | x) + log p(oh12 | core, x) + log p(lines | x)

All in standardised target space (line fluxes in log1p space before standardisation). At inference the metallicity flow is conditioned on the *sampled* core
parameters (the chain rule), in training on the true ones.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..inputs import NormStats, parse_inputs
from ..schema import NF_CORE_TARGETS, NF_LINE_TARGETS, NF_METALLICITY_TARGET, parse_targets
from .estimator import ConditionalEstimator, Context
from .flows import ConditionalFlow, build_flow
from .nets import MLP, masked_mean, zero_image_columns
from .posterior import NeuralPosterior
from .vae import VAE, VAEEncoder, vae_config

DETECT_COLUMN = "oh12_detect_prob"
VAE_FEATURES_COLUMN = "vae_features"

#: Architecture defaults (``FlowPosterior`` docstring). Target-split keys are resolved apart.
NF_DEFAULTS = {
    "coupling_layers": 12,
    "line_coupling_layers": None,   # None: same as coupling_layers
    "hidden": 256,
    "representation": 256,
    "rep_layers": 2,
    "head_layers": 2,
    "flow_blocks": 2,
    "scale_bound": 3.0,
    "mse_weight": 1.0,
    "bce_weight": 1.0,
    "image_init": "zero",
    "rep_dropout": 0.0,
}


def split_targets(targets, config: dict | None = None
                  ) -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
    """(core targets, metallicity branch?, line targets) for ``targets`` and ``config``.

    With ``targets`` None the paper's set is used: ``config['core_targets']`` (default log_mstar,
    log_sfr, z, log_mbh), oh12 if ``config['metallicity']`` (default True) and
    ``config['line_targets']`` (default the four line fluxes). Otherwise ``targets`` are split:
    oh12 to the metallicity branch (unless ``metallicity=False``, which puts it in the core),
    the line fluxes (``flux_*``, or ``config['line_targets']``) to the line branch, the rest to
    the core, in the order ``config['core_targets']`` gives if set, else as passed.
    """
    c = dict(config or {})
    if targets is None:
        core = parse_targets(c.get("core_targets", NF_CORE_TARGETS))
        met = bool(c.get("metallicity", True))
        lines = parse_targets(c.get("line_targets", NF_LINE_TARGETS))
        if NF_METALLICITY_TARGET in core + lines:
            raise ValueError("oh12 is set by 'metallicity', not listed among core or line "
                             "targets")
        parse_targets(core + ((NF_METALLICITY_TARGET,) if met else ()) + lines)
        return core, met, lines
    names = parse_targets(targets)
    met = bool(c.get("metallicity", NF_METALLICITY_TARGET in names))
    if met and NF_METALLICITY_TARGET not in names:
        raise ValueError("metallicity=True needs 'oh12' among the targets")
    if c.get("line_targets") is not None:
        lines = parse_targets(c["line_targets"])
        stray = [t for t in lines if t not in names]
        if stray:
            raise ValueError(f"line_targets {stray} are not among the targets {list(names)}")
    else:
        lines = tuple(t for t in names if t.startswith("flux_"))
    rest = [t for t in names if t not in lines and not (met and t == NF_METALLICITY_TARGET)]
    if c.get("core_targets") is not None:
        core = parse_targets(c["core_targets"])
        if sorted(core) != sorted(rest):
            raise ValueError(f"core_targets {list(core)} do not match the targets left for the "
                             f"core branch {rest}")
    else:
        core = tuple(rest)
    return core, met, lines


class FlowEstimator(ConditionalEstimator):
    """Two-branch conditional RealNVP on VAE features and photometry, in standardised space.

    Args:
        targets: any target names; split into core targets (joint RealNVP), oh12 (1-d flow
            conditioned on the core: the chain rule) and line fluxes (second RealNVP). The
            estimator's ``targets`` are ordered core + [oh12] + lines. None: the paper's nine.
        spec: the inputs; with images, the frozen VAE encoder (a submodule, saved with the
            model) computes features from cutouts unless the context carries them.
        config: keys and defaults:

            core_targets      targets of the joint core flow (log_mstar, log_sfr, z, log_mbh
                              when ``targets`` is None; else the targets not oh12 / flux_*).
                              One core target: a 1-d conditional affine flow.
            metallicity       the oh12 branch (default: 'oh12' in targets)
            line_targets      the line branch (default: the flux_* targets)
            coupling_layers   12, affine-coupling layers of the core flow
            line_coupling_layers  None (= coupling_layers), of the line flow
            hidden            256, width of the heads, conditioners and the affine layers
            representation    256, width of h
            rep_layers        2, hidden layers of the representation MLP
            head_layers       2, hidden layers of the mean heads and the classifier
            flow_blocks       2, residual blocks per coupling conditioner
            scale_bound       3.0, bound of each coupling's log-scale
            mse_weight        1.0, weight of the mean heads' MSE in the loss
            bce_weight        1.0, weight of the detectability BCE in the loss
            image_init        'zero': the representation MLP's first layer starts as the
                              photometry-only model's, with zero weights on the image
                              features, so the model begins as the photometry-only one and the
                              image enters as it earns its place; 'default': PyTorch's
                              initialisation (the image model then lost to photometry alone)
            rep_dropout       0.0, dropout between the representation MLP's layers
            vae               the VAE's config (``raygal.models.vae.VAE_DEFAULTS``), images only
            image_shape       [C, H, W] of the cutouts (default the VAE's), images only
    """

    # Rows x samples per sampling pass: the flows run on [rows * n, hidden] activations.
    max_trajectories = 1 << 15

    def __init__(self, targets, spec, config=None):
        c = {**NF_DEFAULTS, **dict(config or {})}
        core, met, lines = split_targets(targets, c)
        ordered = core + ((NF_METALLICITY_TARGET,) if met else ()) + lines
        c.update(core_targets=list(core), metallicity=met, line_targets=list(lines))
        if c["line_coupling_layers"] is None:
            c["line_coupling_layers"] = c["coupling_layers"]
        if spec.image_shape is not None:
            vc = dict(c.get("vae") or {})
            if "image_shape" in c and "image_shape" not in vc:
                vc["image_shape"] = c["image_shape"]
            vc = vae_config(vc)
            if "image_shape" in c and list(c["image_shape"]) != vc["image_shape"]:
                raise ValueError(f"image_shape {list(c['image_shape'])} differs from the VAE's "
                                 f"{vc['image_shape']}")
            c["vae"], c["image_shape"] = vc, list(vc["image_shape"])
        super().__init__(ordered, spec, c)
        self.core_targets, self.metallicity, self.line_targets = core, met, lines
        nc, nl, H, R = len(core), len(lines), int(c["hidden"]), int(c["representation"])
        self._core_idx = list(range(nc))
        self._oh_idx = nc if met else None
        self._line_idx = list(range(nc + int(met), nc + int(met) + nl))

        n_in = spec.n_phot
        if spec.image_shape is not None:
            self.encoder = VAEEncoder(c["vae"])
            self.encoder.requires_grad_(False)
            self.encoder.eval()
            self.image_feature_dim = self.encoder.out_features
            n_in += self.encoder.out_features
        self.rep = MLP(n_in, R, H, int(c["rep_layers"]), dropout=float(c["rep_dropout"]))
        if spec.image_shape is not None:
            zero_image_columns(self.rep[0], c["image_init"], 0, self.image_feature_dim)
        hl = int(c["head_layers"])
        flow_kw = dict(hidden=H, blocks=int(c["flow_blocks"]), scale_bound=float(c["scale_bound"]))
        if nc + int(met):
            self.mean_head = MLP(R, nc + int(met), H, hl)
        if nc:
            self.core_flow = ConditionalFlow(
                build_flow(nc, R, int(c["coupling_layers"]), seed=1, **flow_kw), nc)
        if met:
            self.oh12_flow = ConditionalFlow(build_flow(1, R + nc, 0, **flow_kw), 1)
            self.detect = MLP(R, 1, H, hl)
        if nl:
            self.line_mean_head = MLP(R, nl, H, hl)
            self.line_flow = ConditionalFlow(
                build_flow(nl, R, int(c["line_coupling_layers"]), seed=2, **flow_kw), nl)

    @property
    def uses_image(self) -> bool:
        return self.spec.image_shape is not None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.uses_image:
            self.encoder.eval()   # frozen: always in inference mode
        return self

    # -- inputs -------------------------------------------------------------------------------
    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 64] frozen-encoder features of stretched cutouts."""
        with torch.no_grad():
            return self.encoder.features(image)

    def represent(self, ctx: Context) -> torch.Tensor:
        """[B, representation] h from the context."""
        parts = []
        if self.uses_image:
            f = ctx.features
            if f is None:
                f = self.image_features(ctx.image)
            elif f.shape[-1] != self.encoder.out_features:
                raise ValueError(f"image features must be [B, {self.encoder.out_features}], "
                                 f"got {list(f.shape)}")
            parts.append(f)
        if self.spec.n_phot:
            parts.append(ctx.phot)
        return self.rep(torch.cat([p.to(parts[-1].dtype) for p in parts], dim=-1))

    # -- the densities ------------------------------------------------------------------------
    def _heads(self, h: torch.Tensor):
        """(core means [B, nc], oh12 mean [B, 1] or None, line means [B, nl] or None)."""
        mc = mo = ml = None
        nc = len(self.core_targets)
        if nc + int(self.metallicity):
            m = self.mean_head(h)
            mc, mo = m[:, :nc], (m[:, nc:] if self.metallicity else None)
        if self.line_targets:
            ml = self.line_mean_head(h)
        return mc, mo, ml

    def _oh12_context(self, h: torch.Tensor, core: torch.Tensor | None) -> torch.Tensor:
        return h if core is None or core.shape[-1] == 0 else torch.cat([h, core], dim=-1)

    def _log_prob_parts(self, z: torch.Tensor, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-row log densities {'core', 'oh12', 'lines'} of standardised z [B, D] (NaN-free
        z expected)."""
        mc, mo, ml = self._heads(h)
        out = {}
        core = z[:, self._core_idx] if self.core_targets else None
        if self.core_targets:
            out["core"] = self.core_flow.log_prob(core - mc, h)
        if self.metallicity:
            zo = z[:, self._oh_idx:self._oh_idx + 1]
            out["oh12"] = self.oh12_flow.log_prob(zo - mo, self._oh12_context(h, core))
        if self.line_targets:
            out["lines"] = self.line_flow.log_prob(z[:, self._line_idx] - ml, h)
        return out

    def log_prob(self, theta: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = self.represent(ctx)
        return sum(self._log_prob_parts(theta.to(h.dtype), h).values())

    def sample(self, ctx: Context, n: int, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        return self.draw(ctx, n, generator, extras=False)[0]

    def draw(self, ctx, n, generator=None, extras=True):
        h = self.represent(ctx)                                     # the encoder runs once
        B, R = h.shape
        mc, mo, ml = self._heads(h)
        parts, core = [], None
        if self.core_targets:
            core = self.core_flow.sample(h, n, generator) + mc[:, None]
            parts.append(core)
        if self.metallicity:
            # The chain rule: oh12 | core, x with the core parameters just drawn.
            hc = h[:, None].expand(B, n, R)
            c = hc if core is None else torch.cat([hc, core], dim=-1)
            r = self.oh12_flow.sample(c.reshape(B * n, -1), 1, generator).view(B, n, 1)
            parts.append(r + mo[:, None])
        if self.line_targets:
            parts.append(self.line_flow.sample(h, n, generator) + ml[:, None])
        more = {DETECT_COLUMN: self._detect(h)} if extras and self.metallicity else {}
        return torch.cat(parts, dim=-1), more

    def detect_prob(self, ctx: Context) -> torch.Tensor:
        """[B] probability that the metallicity is measurable (the BCE head)."""
        if not self.metallicity:
            raise ValueError("this model has no metallicity branch")
        return self._detect(self.represent(ctx))

    def _detect(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.detect(h)).squeeze(-1)

    def extras(self, ctx: Context) -> dict[str, torch.Tensor]:
        return {DETECT_COLUMN: self.detect_prob(ctx)} if self.metallicity else {}

    @property
    def extra_columns(self) -> tuple[str, ...]:
        return (DETECT_COLUMN,) if self.metallicity else ()

    # -- training -----------------------------------------------------------------------------
    def loss(self, theta: torch.Tensor, ctx: Context,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{'loss', 'nll_core', 'nll_oh12', 'nll_lines', 'mse', 'bce'}, each averaged over the
        rows it is defined on.

        Missing targets (NaN) are never imputed: a mean head learns from the rows with its
        target, a flow from the rows with all of its targets (the oh12 flow: oh12 and every core
        target), the detectability classifier from every row (label: oh12 present). Every
        parameter stays in the graph on every batch (masked means, not row subsets), which
        DistributedDataParallel needs."""
        y = theta
        h = self.represent(ctx)
        present = torch.isfinite(y)
        y0 = torch.nan_to_num(y)
        lp = self._log_prob_parts(y0, h)
        mc, mo, ml = self._heads(h)
        means = torch.cat([m for m in (mc, mo, ml) if m is not None], dim=-1)
        zero = h.sum() * 0.0
        core_ok = present[:, self._core_idx].all(-1)
        parts = {"nll_core": zero, "nll_oh12": zero, "nll_lines": zero, "bce": zero}
        if self.core_targets:
            parts["nll_core"] = masked_mean(-lp["core"], core_ok)
        if self.metallicity:
            has_oh = present[:, self._oh_idx]
            parts["nll_oh12"] = masked_mean(-lp["oh12"], has_oh & core_ok)
            logit = self.detect(h).squeeze(-1)
            parts["bce"] = F.binary_cross_entropy_with_logits(logit, has_oh.to(logit.dtype))
        if self.line_targets:
            parts["nll_lines"] = masked_mean(-lp["lines"], present[:, self._line_idx].all(-1))
        parts["mse"] = masked_mean((y0 - means) ** 2, present)
        c = self.config
        loss = (parts["nll_core"] + parts["nll_oh12"] + parts["nll_lines"]
                + float(c["mse_weight"]) * parts["mse"] + float(c["bce_weight"]) * parts["bce"])
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}


class FlowPosterior(NeuralPosterior):
    """VAE features + two-branch conditional RealNVP (kind 'nf'): a ``FlowEstimator`` on the
    inputs of ``raygal.inputs.ModelInputs``.

    ``targets=None`` means the paper's nine targets; ``inputs`` 'image+phot' (frozen VAE
    encoder features + photometry), 'phot' or 'image'. Batches may carry a precomputed
    ``vae_features`` column ([B, 64]); otherwise the frozen encoder computes them from the
    cutouts.

    >>> from raygal.inputs import NormStats
    >>> stats = NormStats(target_mean={"z": 0.1}, target_std={"z": 0.05})
    >>> FlowPosterior(["z"], "phot", stats, {"hidden": 16, "representation": 16}).targets
    ('z',)
    """

    kind = "nf"
    estimator_class = FlowEstimator
    features_column = VAE_FEATURES_COLUMN

    @classmethod
    def from_training_config(cls, cfg: dict, stats: NormStats, image_shape=None
                             ) -> "FlowPosterior":
        """As ``NeuralPosterior``'s, with the frozen encoder of the trained VAE ``cfg['vae']``
        for image inputs."""
        if "image" not in parse_inputs(cfg["inputs"]):
            return super().from_training_config(cfg, stats, image_shape)
        from .vae import load_vae

        if not cfg.get("vae"):
            raise ValueError(f"an {cfg['inputs']} NF needs a trained VAE: train one with "
                             f"'raygal train vae' and pass its model folder as --vae")
        return cls.from_vae(load_vae(cfg["vae"]), cfg["targets"], cfg["inputs"], stats,
                            dict(cfg.get("model_config") or {}))

    @classmethod
    def from_vae(cls, vae: VAE | None, targets=None, inputs: str = "image+phot",
                 stats: NormStats | None = None, config: dict | None = None) -> "FlowPosterior":
        """A FlowPosterior whose frozen encoder is a copy of ``vae``'s (trained) encoder.
        ``inputs='phot'`` ignores ``vae`` (it may be None)."""
        config = dict(config or {})
        uses_image = "image" in parse_inputs(inputs)
        if uses_image:
            if vae is None:
                raise ValueError(f"an {inputs} FlowPosterior needs a trained VAE")
            config["vae"] = dict(vae.config)
            config["image_shape"] = list(vae.config["image_shape"])
        model = cls(targets, inputs, stats, config)
        if uses_image:
            model.estimator.encoder.load_state_dict(vae.encoder.state_dict())
            model.to(next(vae.parameters()).device)
        return model


__all__ = ["FlowPosterior", "FlowEstimator", "split_targets", "NF_DEFAULTS", "DETECT_COLUMN",
           "VAE_FEATURES_COLUMN"]
