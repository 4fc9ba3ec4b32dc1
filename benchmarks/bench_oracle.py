"""The ceiling of what images can add on the mock survey: photometry-only against an oracle.

Simulates N mock galaxies with their latent morphology (``raygal.sim.latents``; no images
needed), splits them by objid hash (``raygal.pipelines.split_of``: train / val / test) and fits,
for every target, a conditional density estimator q(theta | x) on two feature sets:

* ``phot``    the models' photometric features (``raygal.inputs.phot_matrix``: u-g, g-r, r-i,
              i-z, r) and the five magnitude errors;
* ``oracle``  the same plus the latents an image shows (``ORACLE_LATENTS``: axis ratios, B/T
              in g, r, i, angular sizes, knots, dust lane, seeing). A perfect image model
              could at best recover these, so the oracle bounds what images can add.

The estimator is a mixture density network (Bishop 1994): an MLP (3 x 64, SiLU) giving a
K = 5 Gaussian mixture over the standardised target. Every target has its own network; the
networks are trained side by side as one batched module (weights [M, in, out]) with Adam and
keep their best validation epoch. The comparison is made fair in two stages (``run``): the
photometry nets are trained first, then continued beside a copy that also sees the latents
(their input weights starting at zero), so the oracle starts where photometry ends and both
get the same training. Targets are in model space (``Target.forward``:
log1p for line fluxes); ``oh12`` is fitted where it is measured (non-null).

Per target, on the held-out test split: R^2 of the mixture mean, the mean log q(theta* | x)
(nats, model space), the 68 % central-interval coverage, and the gap oracle - phot in mean
log q. Prints a table and returns (and with --json writes) the numbers.

    python benchmarks/bench_oracle.py                  # 40,000 galaxies (~32,000 to train)
    python benchmarks/bench_oracle.py --n 120000 --json oracle.json
    python benchmarks/bench_oracle.py --quick          # seconds; what the tests run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGETS = ("log_mstar", "log_sfr", "z", "oh12", "log_mbh", "dn4000", "av",
           "flux_halpha", "flux_hbeta", "flux_nii", "flux_oiii")
#: Latents an image shows (angular, not physical, sizes: the kpc size with the angular one
#: would give the redshift away; position angle, sky level and knot size say nothing physical).
ORACLE_LATENTS = ("lat_q_disk", "lat_q_bulge", "lat_bulge_fraction_g", "lat_bulge_fraction_r",
                  "lat_bulge_fraction_i", "lat_r_e_pix", "lat_r_bulge_pix", "lat_r_disk_pix",
                  "lat_n_knots", "lat_knot_fraction", "lat_lane_depth_r", "lat_psf_fwhm")
#: Sizes enter in log: a physical size is then the angular one plus a function of redshift.
LOG_LATENTS = ("lat_r_e_pix", "lat_r_bulge_pix", "lat_r_disk_pix")
FEATURE_SETS = ("phot", "oracle")
COVERAGE_LEVEL = 0.68


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def load_survey(n: int, seed: int) -> dict:
    """Features, targets and split of n mock galaxies.

    Returns {'phot': [N, 10], 'oracle': [N, 10 + L], 'y': [N, T] model space (NaN where
    unknown), 'split': [N] 'train'/'val'/'test', 'n_simulated', 'dropped': {reason: count}}.
    Rows without finite photometry (a non-detection in u or z) are dropped and counted.
    """
    from raygal.inputs import as_numpy_batch, phot_matrix, target_matrix
    from raygal.pipelines import split_of
    from raygal.schema import ID_COLUMN, MAGERR_COLUMNS
    from raygal.sim import GENERATOR, simulate_batch

    batch = as_numpy_batch(simulate_batch(n, with_images=False, seed=seed, with_latents=True))
    phot = np.concatenate([phot_matrix(batch),
                           np.stack([np.asarray(batch[c], np.float64) for c in MAGERR_COLUMNS],
                                    axis=1)], axis=1)
    lat = np.stack([np.log(np.asarray(batch[c], np.float64)) if c in LOG_LATENTS
                    else np.asarray(batch[c], np.float64) for c in ORACLE_LATENTS], axis=1)
    ok = np.isfinite(phot).all(1) & np.isfinite(lat).all(1)
    y = target_matrix(batch, TARGETS)
    return {"phot": phot[ok], "oracle": np.concatenate([phot, lat], axis=1)[ok], "y": y[ok],
            "split": split_of(batch[ID_COLUMN])[ok], "n_simulated": n, "generator": GENERATOR,
            "dropped": {"non-finite photometry or latent": int((~ok).sum())}}


# ----------------------------------------------------------------------------------------------
# Mixture density networks trained side by side
# ----------------------------------------------------------------------------------------------

def _build(n_nets: int, n_in: int, hidden: int, depth: int, k: int, input_mask=None):
    import torch

    class MixtureDensityNets(torch.nn.Module):
        """M independent MLPs x [B, F] -> a K-Gaussian mixture each (one per target, or per
        target and feature set). Net m sees x * input_mask[m] (1 = feature used).

        ``forward(x)`` gives (log_w, mu, log_sigma), each [M, B, K], in standardised target
        units; ``log_prob(x, y)`` with y [B, M] gives [M, B].
        """

        def __init__(self):
            super().__init__()
            sizes = [n_in] + [hidden] * depth + [3 * k]
            self.weights = torch.nn.ParameterList()
            self.biases = torch.nn.ParameterList()
            for a, b in zip(sizes[:-1], sizes[1:]):
                w = torch.empty(n_nets, a, b)
                for t in range(n_nets):
                    torch.nn.init.kaiming_uniform_(w[t].T, a=math.sqrt(5))
                self.weights.append(torch.nn.Parameter(w))
                self.biases.append(torch.nn.Parameter(torch.zeros(n_nets, 1, b)))
            mask = torch.ones(n_nets, 1, n_in) if input_mask is None else \
                torch.as_tensor(input_mask, dtype=torch.float32).reshape(n_nets, 1, n_in)
            self.register_buffer("input_mask", mask)
            self.k = k

        def forward(self, x):
            h = x.unsqueeze(0) * self.input_mask
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                h = torch.baddbmm(b, h, w)
                if i < len(self.weights) - 1:
                    h = torch.nn.functional.silu(h)
            logit, mu, log_sigma = h.split(self.k, dim=-1)
            return (torch.log_softmax(logit, -1), mu,
                    log_sigma.clamp(-7.0, 3.0))

        def log_prob(self, x, y):
            log_w, mu, log_s = self(x)
            yt = y.T.unsqueeze(-1)  # [M, B, 1]
            comp = -0.5 * ((yt - mu) / log_s.exp()) ** 2 - log_s - 0.5 * math.log(2 * math.pi)
            return torch.logsumexp(log_w + comp, -1)

    return MixtureDensityNets()


def widen(model, n_in: int, input_mask, hidden: int, depth: int, k: int):
    """Two copies of the trained nets ``model`` (T nets on the first F0 features) as 2T nets
    on n_in >= F0 features: the weights of the new inputs start at zero, so every copy starts
    with exactly the trained nets' predictions. ``input_mask`` [2T, n_in]."""
    import torch

    wide = _build(2 * len(model.weights[0]), n_in, hidden, depth, k, input_mask)
    with torch.no_grad():
        for i, (w, b) in enumerate(zip(model.weights, model.biases)):
            wide.weights[i].zero_()
            wide.weights[i][:, :w.shape[1]] = torch.cat([w, w])
            wide.biases[i].copy_(torch.cat([b, b]))
    return wide


def _masked_nll(model, x, y):
    """[M] mean negative log-likelihood per net over the rows where its target is known."""
    import torch

    known = torch.isfinite(y)
    lp = model.log_prob(x, torch.where(known, y, torch.zeros_like(y)))  # [M, B]
    k = known.T.to(lp.dtype)
    return -(lp * k).sum(1) / k.sum(1).clamp_min(1.0)


def fit(model, x_tr, y_tr, x_va, y_va, *, lr=3e-3, batch=1024, max_epochs=100, patience=10,
        seed=0, log=None):
    """Train the M nets of ``model`` on standardised arrays (x [N, F], y [N, M], NaN =
    unknown), each keeping its best validation epoch (epoch 0: the starting weights).
    Returns {'epochs', 'best_epoch' [M]}."""
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.as_tensor(x_tr, dtype=torch.float32), torch.as_tensor(y_tr, dtype=torch.float32)
    xv, yv = torch.as_tensor(x_va, dtype=torch.float32), torch.as_tensor(y_va, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max_epochs, eta_min=lr / 20)
    with torch.no_grad():
        best = _masked_nll(model, xv, yv)
    best_epoch = torch.zeros(len(best), dtype=torch.long)
    best_state = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(seed)
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            loss = _masked_nll(model, xt[idx], yt[idx]).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            val = _masked_nll(model, xv, yv)
            better = val < best
            best = torch.where(better, val, best)
            best_epoch[better] = epoch
            for p, s in zip(model.parameters(), best_state):
                s[better] = p.detach()[better]
        if log and (epoch % 10 == 0 or epoch == 1):
            log(f"    epoch {epoch:3d}  val nll per net (std units) "
                + " ".join(f"{v:.3f}" for v in val.tolist()))
        if int((epoch - best_epoch).min()) > patience:
            break
    with torch.no_grad():
        for p, s in zip(model.parameters(), best_state):
            p.copy_(s)
    return {"epochs": epoch, "best_epoch": best_epoch.tolist()}


def mixture_summary(model, x) -> dict:
    """Mixture parameters per target on standardised x [N, F]: numpy log_w, mu, sigma
    [T, N, K] (standardised units)."""
    import torch

    with torch.no_grad():
        log_w, mu, log_s = model(torch.as_tensor(x, dtype=torch.float32))
    return {"log_w": log_w.double().numpy(), "mu": mu.double().numpy(),
            "sigma": log_s.double().exp().numpy()}


def _norm_cdf(z):
    import torch

    return torch.special.ndtr(torch.as_tensor(z)).numpy()


def metrics(mix: dict, y: np.ndarray, y_mean: np.ndarray, y_std: np.ndarray) -> list[dict]:
    """Per target (rows where y [N, T] is known, model space): n, R^2 of the mixture mean,
    mean log q(theta* | x) in nats, 68 % central-interval coverage, mean posterior std."""
    out = []
    for t in range(y.shape[1]):
        ok = np.isfinite(y[:, t])
        w = np.exp(mix["log_w"][t, ok])
        mu = mix["mu"][t, ok] * y_std[t] + y_mean[t]
        s = mix["sigma"][t, ok] * y_std[t]
        yt = y[ok, t]
        mean = (w * mu).sum(1)
        var = (w * (s**2 + mu**2)).sum(1) - mean**2
        zz = (yt[:, None] - mu) / s
        log_q = np.log((w * np.exp(-0.5 * zz**2) / (s * math.sqrt(2 * math.pi))).sum(1)
                       + 1e-300)
        pit = (w * _norm_cdf(zz)).sum(1)
        lo = (1 - COVERAGE_LEVEL) / 2
        ss_res = np.sum((yt - mean) ** 2)
        ss_tot = np.sum((yt - yt.mean()) ** 2)
        out.append({"n": int(ok.sum()), "r2": float(1 - ss_res / ss_tot),
                    "mean_log_q": float(log_q.mean()),
                    "coverage68": float(np.mean((pit > lo) & (pit < 1 - lo))),
                    "mean_std": float(np.sqrt(np.maximum(var, 0)).mean())})
    return out


# ----------------------------------------------------------------------------------------------
# The measurement
# ----------------------------------------------------------------------------------------------

def run(data: dict, fit_kw: dict, log=None) -> dict[str, list[dict]]:
    """Fit both feature sets on the train split and score the test split.

    Stage 1 trains the photometry-only nets (``epochs``). Stage 2 continues them for half as
    many epochs (learning rate / 3) beside a copy that also sees the latents, whose weights
    start at zero (``widen``): both sets get the same training, the oracle starts where
    photometry ends, and a target that gains nothing from the latents comes out even instead of
    behind because a wider input converged more slowly. Returns {'phot': [T metrics],
    'oracle': [T metrics]}.
    """
    x, y, sp = data["oracle"], data["y"], data["split"]
    n_phot, n_t = data["phot"].shape[1], y.shape[1]
    tr, va, te = (sp == "train"), (sp == "val"), (sp == "test")
    x_mean, x_std = x[tr].mean(0), x[tr].std(0) + 1e-9
    y_mean, y_std = np.nanmean(y[tr], 0), np.nanstd(y[tr], 0)
    xs = (x - x_mean) / x_std
    ys = (y - y_mean) / y_std
    arch = {k: fit_kw[k] for k in ("hidden", "depth", "k")}
    train = {k: fit_kw[k] for k in ("lr", "batch", "patience", "seed")}
    epochs = fit_kw["max_epochs"]

    phot = _build(n_t, n_phot, **arch)
    if log:
        log("  stage 1: photometry only")
    fit(phot, xs[tr, :n_phot], ys[tr], xs[va, :n_phot], ys[va], max_epochs=epochs, log=log,
        **train)
    mask = np.ones((2 * n_t, x.shape[1]))
    mask[:n_t, n_phot:] = 0.0
    both = widen(phot, x.shape[1], mask, **arch)
    if log:
        log("  stage 2: photometry (continued) and photometry + latents (oracle)")
    info = fit(both, xs[tr], np.concatenate([ys[tr], ys[tr]], 1), xs[va],
               np.concatenate([ys[va], ys[va]], 1), max_epochs=max(1, epochs // 2), log=log,
               **{**train, "lr": train["lr"] / 3})
    res = metrics(mixture_summary(both, xs[te]), np.concatenate([y[te], y[te]], 1),
                  np.concatenate([y_mean, y_mean]), np.concatenate([y_std, y_std]))
    for r, e in zip(res, info["best_epoch"]):
        r["best_epoch_stage2"] = int(e)
    return {"phot": res[:n_t], "oracle": res[n_t:]}


def format_table(result: dict) -> str:
    rows = [f"{'target':<12}{'n test':>7} | {'R2 phot':>8}{'oracle':>8} | "
            f"{'log q phot':>10}{'oracle':>8}{'gap':>7} | {'cov68 phot':>10}{'oracle':>8}"]
    for t, r in result["targets"].items():
        p, o = r["phot"], r["oracle"]
        rows.append(f"{t:<12}{p['n']:>7} | {p['r2']:>8.3f}{o['r2']:>8.3f} | "
                    f"{p['mean_log_q']:>10.3f}{o['mean_log_q']:>8.3f}{r['gap_log_q']:>7.3f} | "
                    f"{p['coverage68']:>10.3f}{o['coverage68']:>8.3f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40000, help="galaxies to simulate")
    p.add_argument("--seed", type=int, default=0, help="mock survey seed")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs")
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--components", type=int, default=5)
    p.add_argument("--json", default=None, help="write the result to this file")
    p.add_argument("--quick", action="store_true", help="tiny run (for the tests)")
    p.add_argument("--verbose", action="store_true", help="print validation loss per 10 epochs")
    args = p.parse_args(argv)

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = 2048 if args.quick else args.n
        fit_kw = dict(hidden=32 if args.quick else args.hidden, depth=3, k=args.components,
                      lr=3e-3, batch=1024, seed=0,
                      max_epochs=2 if args.quick else args.epochs, patience=args.patience)
        t0 = time.perf_counter()
        data = load_survey(n, args.seed)
        t_sim = time.perf_counter() - t0
        counts = {s: int((data["split"] == s).sum()) for s in ("train", "val", "test")}
        print(f"oracle benchmark: {n} mock galaxies (seed {args.seed}) simulated in "
              f"{t_sim:.1f} s; split {counts}; dropped {data['dropped']}; features: "
              f"phot {data['phot'].shape[1]}, oracle {data['oracle'].shape[1]}", flush=True)
        t1 = time.perf_counter()
        per_set = run(data, fit_kw, log=print if args.verbose else None)
        seconds = time.perf_counter() - t1
        print(f"  fitted in {seconds:.0f} s", flush=True)
    finally:
        torch.set_num_threads(threads)
    result = {
        "n": n, "seed": args.seed, "split": counts, "dropped": data["dropped"],
        "oracle_latents": list(ORACLE_LATENTS), "fit": fit_kw, "fit_seconds": seconds,
        "generator": data["generator"],
        "targets": {t: {"phot": per_set["phot"][i], "oracle": per_set["oracle"][i],
                        "gap_log_q": per_set["oracle"][i]["mean_log_q"]
                        - per_set["phot"][i]["mean_log_q"]}
                    for i, t in enumerate(TARGETS)},
    }
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
