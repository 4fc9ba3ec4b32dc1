"""Accuracy and calibration of the CFM on every kind of galaxy of the mock survey.

About four in ten galaxies of the mock survey (and of SDSS) are quenched: no measurable
gas-phase metallicity. This script trains, the same way (AdamW, one-cycle schedule, the weights of the best
validation loss kept) and on the same photometry-only mock (``raygal.sim``, split by
``raygal.pipelines.split_of``), three posteriors over the CFM targets (log M*, log SFR,
12+log(O/H), Dn(4000), A_V):

- ``cfm-joint``: the paper's joint field (``metallicity=False``), which learns only from the
  galaxies with every target measured, i.e. star-forming ones;
- ``cfm``: the default, core field from every galaxy, oh12 by the chain rule, detectability
  classifier;
- ``nf``: the photometry-only NF on the same targets (its own chain rule and classifier);

then reports, on the test galaxies, per target: R^2 of the posterior mean and the 68 % / 95 %
coverage of the truths, over all galaxies and over quenched and star-forming ones (the
simulator's labels); oh12 where it is measured. Every test row is accounted for (``status``).

    python benchmarks/bench_cfm_population.py                   # ~10-20 min on 2 busy cores
    python benchmarks/bench_cfm_population.py --n 20000 --json out.json
    python benchmarks/bench_cfm_population.py --quick           # a smoke run (seconds)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raygal.evaluate.metrics import (binary_classifier_metrics, point_metrics,  # noqa: E402
                                     summary_coverage)
from raygal.inputs import STATUS_OK, StatsAccumulator, as_numpy_batch, row_status  # noqa: E402
from raygal.models.cfm import FlowMatchingPosterior  # noqa: E402
from raygal.models.nf import DETECT_COLUMN, FlowPosterior  # noqa: E402
from raygal.pipelines import split_of  # noqa: E402
from raygal.schema import CFM_TARGETS  # noqa: E402
from raygal.sim import simulate_batch  # noqa: E402

MODELS = ("cfm-joint", "cfm", "nf")
POPULATIONS = ("all", "quenched", "star-forming")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes")
    p.add_argument("--n", type=int, default=None, help="mock galaxies (6000; quick 600)")
    p.add_argument("--seed", type=int, default=1, help="mock survey seed")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="fraction of the galaxies held out for the test (by objid hash)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " +
                   ", ".join(MODELS))
    p.add_argument("--steps", type=int, default=None, help="training steps (4000; quick 30)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW rate of the CFMs "
                   "(one-cycle)")
    p.add_argument("--nf-lr", type=float, default=1e-3, help="peak rate of the NF")
    p.add_argument("--hidden", type=int, default=None,
                   help="CFM velocity MLP width (the paper's 256; quick 32)")
    p.add_argument("--samples", type=int, default=None, help="posterior samples per galaxy "
                   "(500; quick 50)")
    p.add_argument("--solver", default="rk4-10", help="CFM ODE solver at inference")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--save", default=None,
                   help="also save each trained model under this folder (URI), as <kind>")
    a = p.parse_args(argv)
    a.n = a.n or (600 if a.quick else 6000)
    a.steps = a.steps or (30 if a.quick else 4000)
    a.hidden = a.hidden or (32 if a.quick else 256)
    a.samples = a.samples or (50 if a.quick else 500)
    a.models = tuple(m.strip() for m in a.models.split(",") if m.strip())
    unknown = [m for m in a.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {MODELS}")
    return a


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def mock_split(n: int, seed: int, test_fraction: float = 0.1) -> dict:
    """{'train', 'val', 'test'}: (rows as a dict of numpy columns, quenched [N] bool) of ``n``
    mock galaxies without images, split by ``split_of``: 10 % for validation,
    ``test_fraction`` for the test (0.1: the default split), the rest for training."""
    table, truth = simulate_batch(n, seed=seed, with_images=False, return_truth=True)
    rows = as_numpy_batch(table)
    which = split_of(rows["objid"], (0.9 - test_fraction, 0.1, test_fraction))
    quenched = np.asarray(truth["is_quenched"], bool)
    return {name: ({k: v[which == name] for k, v in rows.items()}, quenched[which == name])
            for name in ("train", "val", "test")}


def usable(rows: dict) -> dict:
    """The rows a photometry-only model can train on (finite photometry)."""
    keep = row_status(rows, needs_image=False) == STATUS_OK
    return {k: v[keep] for k, v in rows.items()}


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------

def build(kind: str, stats, hidden: int):
    """A fresh photometry-only posterior over the CFM targets."""
    if kind == "nf":
        cfg = {} if hidden >= 256 else {"hidden": hidden, "representation": hidden,
                                        "coupling_layers": 4}
        return FlowPosterior(CFM_TARGETS, "phot", stats, cfg)
    return FlowMatchingPosterior(CFM_TARGETS, "phot", stats,
                                 {"hidden": hidden, "metallicity": kind == "cfm"})


def validation_loss(post, data: dict, batch_size: int = 1024) -> float:
    """Mean loss over prepared validation rows, with the noise draws fixed by the rows' ids
    (eval mode), as the training loop's validation."""
    post.eval()
    n = len(data["objid"])
    with torch.no_grad():
        total = sum(float(post({k: v[i:i + batch_size] for k, v in data.items()})["loss"])
                    * min(batch_size, n - i) for i in range(0, n, batch_size))
    post.train()
    return total / max(n, 1)


def train(post, rows: dict, val_rows: dict, steps: int, batch_size: int, lr: float,
          seed: int = 0, check_every: int = 100) -> dict:
    """AdamW with a one-cycle schedule on shuffled mini-batches of ``rows``; every
    ``check_every`` steps the validation loss is measured and the best weights are kept (the
    training loop's early stopping exports the best validation epoch the same way)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data, val = post.model_inputs.prepare(rows), post.model_inputs.prepare(val_rows)
    n = len(data["objid"])
    opt = torch.optim.AdamW(post.trainable_parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    post.train()
    t0, best, best_step, best_state = time.perf_counter(), float("inf"), 0, None
    for step in range(1, steps + 1):
        idx = rng.integers(0, n, batch_size)
        out = post({k: v[idx] for k, v in data.items()})
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(post.parameters(), 10.0)
        opt.step()
        sched.step()
        if step % check_every == 0 or step == steps:
            loss = validation_loss(post, val)
            if loss < best:
                best, best_step = loss, step
                best_state = {k: v.detach().clone() for k, v in post.state_dict().items()}
    post.load_state_dict(best_state)
    post.eval()
    return {"steps": steps, "rows": n, "seconds": time.perf_counter() - t0,
            "best_val_loss": best, "best_step": best_step}


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------

def population_metrics(summary: dict, rows: dict, quenched: np.ndarray, targets) -> dict:
    """{population: {target: {'r2', 'coverage68', 'coverage95', 'n'}}} of a posterior summary
    (``Posterior.summarize``) against the truths in ``rows``, over all galaxies and over the
    quenched and star-forming ones; rows whose status is not 'ok' or whose truth is missing
    are left out (``n`` counts the rows used)."""
    ok = np.asarray(summary["status"]).astype(str) == STATUS_OK
    masks = {"all": ok, "quenched": ok & quenched, "star-forming": ok & ~quenched}
    out = {}
    for pop, m in masks.items():
        out[pop] = {}
        for t in targets:
            true = np.where(m, np.asarray(rows[t], np.float64), np.nan)
            cov = summary_coverage(summary, true, t)
            r2 = point_metrics(summary[f"{t}_mean"], true, t)["r2"]
            out[pop][t] = {"r2": r2, "coverage68": cov["coverage68"],
                           "coverage95": cov["coverage95"], "n": cov["n"]}
    return out


def evaluate(post, rows: dict, quenched: np.ndarray, samples: int, solver: str | None,
             seed: int = 0) -> dict:
    """Summaries of every test row, then ``population_metrics``, the status counts and, for
    models with one, the detectability classifier against 'oh12 measured' (and its mean
    probability on quenched galaxies)."""
    with post.with_solver(solver if post.solver is not None else None):
        t0 = time.perf_counter()
        summary = post.summarize(rows, samples, seed=seed)
        seconds = time.perf_counter() - t0
    status, counts = np.unique(summary["status"], return_counts=True)
    out = {"metrics": population_metrics(summary, rows, quenched, post.targets),
           "status": dict(zip(status.tolist(), counts.tolist())), "infer_seconds": seconds}
    if DETECT_COLUMN in summary:
        p = summary[DETECT_COLUMN]
        out["detect"] = {**binary_classifier_metrics(p, np.isfinite(rows["oh12"])),
                         "mean_prob_quenched": float(np.nanmean(p[quenched]))}
    return out


def main(argv=None) -> dict:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    saved = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        return _run(a)
    finally:
        torch.set_num_threads(saved)


def _run(a) -> dict:
    print(f"mock survey: {a.n} galaxies (seed {a.seed}), photometry only ...", flush=True)
    data = mock_split(a.n, a.seed, a.test_fraction)
    train_rows, val_rows = usable(data["train"][0]), usable(data["val"][0])
    test_rows, test_quenched = data["test"]
    stats = StatsAccumulator(CFM_TARGETS).update(train_rows).finalize()
    report = {"settings": {k: v for k, v in vars(a).items() if k not in ("json", "save")},
              "train_rows": len(train_rows["objid"]), "val_rows": len(val_rows["objid"]),
              "test_rows": len(test_rows["objid"]),
              "test_quenched": int(test_quenched.sum()), "models": {}}
    for kind in a.models:
        torch.manual_seed(0)
        post = build(kind, stats, a.hidden)
        lr = a.nf_lr if kind == "nf" else a.lr
        print(f"training {kind} ({a.steps} steps of {a.batch_size}, lr {lr}) ...", flush=True)
        fit = train(post, train_rows, val_rows, a.steps, a.batch_size, lr)
        print(f"  {fit['seconds']:.0f} s, best validation loss {fit['best_val_loss']:.3f} at "
              f"step {fit['best_step']}", flush=True)
        if a.save:
            post.save(f"{a.save.rstrip('/')}/{kind}")
        res = evaluate(post, test_rows, test_quenched, a.samples, a.solver)
        report["models"][kind] = {"train": fit, **res}
        _print(kind, res)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return report


def _print(kind: str, res: dict) -> None:
    print(f"{kind}: status {res['status']}, inference {res['infer_seconds']:.0f} s")
    if "detect" in res:
        d = res["detect"]
        print(f"  oh12 detectability: accuracy {d['accuracy']:.3f}, mean probability on "
              f"quenched galaxies {d['mean_prob_quenched']:.3f}")
    head = f"  {'target':<10}" + "".join(f"{p + ' R2/c68/c95':>28}" for p in POPULATIONS)
    print(head)
    for t in next(iter(res["metrics"].values())):
        cells = []
        for p in POPULATIONS:
            m = res["metrics"][p][t]
            cells.append(f"{m['r2']:>8.2f} {100 * m['coverage68']:>6.1f} "
                         f"{100 * m['coverage95']:>6.1f} ({m['n']:>4})")
        print(f"  {t:<10}" + "".join(f"{c:>28}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
