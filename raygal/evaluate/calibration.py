"""Posterior samples of a calibration subset, and what the model computes from them.

``raygal evaluate`` draws them once (``draw``), scores them (``information_gain``), and writes
them beside ``metrics.json`` (``save``); ``raygal report`` reads them back (``load``) instead
of sampling again, and falls back to ``draw`` (a model) or ``from_catalog`` (samples a catalog
kept with ``--keep-samples``) when there is no evaluation to read.

Shapes: N galaxies, S samples each, D targets; everything in model space (the targets'
transforms applied, as the models work), where PIT, SBC, TARP and densities are compared.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..inputs import target_matrix
from ..pipelines import hash_unit
from ..progress import RateReporter
from ..schema import ID_COLUMN, get_target
from . import metrics as M
from .data import align, catalog_samples, objids, read_parquet, subset

#: the calibration sample file ``raygal evaluate`` writes beside metrics.json
SAMPLES_FILE = "calibration_samples.parquet"
COMPARE_SAMPLES_FILE = "calibration_samples_compare.parquet"
#: per-galaxy columns that ``information_gain`` adds
PER_GALAXY = ("log_q", "log_prior", "delta_log_p", "kl")


@dataclass
class CalibrationSamples:
    """Posterior samples of N galaxies in model space.

    objid [N]; samples [N, S, D]; truth [N, D] (NaN where a target is unknown); ``source`` says
    where the samples come from; ``per_galaxy`` holds [N] arrays such as ``delta_log_p``."""
    objid: np.ndarray
    targets: list
    samples: np.ndarray
    truth: np.ndarray
    source: str
    per_galaxy: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.objid))

    @property
    def complete(self) -> np.ndarray:
        """[N] rows with every truth known (joint metrics use only these)."""
        return np.isfinite(self.truth).all(1)

    def physical(self, d: int) -> np.ndarray:
        """Samples [N, S] of target ``d`` in physical units."""
        return np.asarray(get_target(self.targets[d]).inverse(self.samples[:, :, d]))

    def select(self, ids) -> "CalibrationSamples":
        """The galaxies of ``ids`` that are here, in the order of ``ids``."""
        idx, hit = align(self.objid, ids)
        idx = idx[hit]
        return CalibrationSamples(self.objid[idx], list(self.targets), self.samples[idx],
                                  self.truth[idx], self.source,
                                  {k: v[idx] for k, v in self.per_galaxy.items()})


def choose_ids(ids: np.ndarray, usable: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` usable objids of lowest ``hash_unit`` (a deterministic uniform sample, the
    same for every model evaluated on the same rows), sorted."""
    ids = np.asarray(ids, dtype=np.int64)[np.asarray(usable, bool)]
    return np.sort(ids[np.argsort(hash_unit(ids), kind="stable")[:n]])


def _truth(rows: pa.Table, targets) -> np.ndarray:
    return target_matrix({t: rows.column(t).to_numpy(zero_copy_only=False)
                          for t in targets if t in rows.column_names}, targets)


#: Rows sampled at a time by ``draw`` (a progress line after each block, once it is slow).
DRAW_BLOCK_ROWS = 64


def draw(post, rows: pa.Table, n: int, seed: int = 0,
         label: str = "evaluate: posterior samples") -> CalibrationSamples:
    """``n`` samples per row of ``rows`` (full input rows, sorted by objid) from ``post``,
    ``DRAW_BLOCK_ROWS`` rows at a time (block k with seed ``seed + k``), reporting progress
    under ``label``."""
    import torch

    torch.manual_seed(seed)
    progress = RateReporter(label, total=rows.num_rows, unit="galaxies")
    blocks = []
    for k, start in enumerate(range(0, rows.num_rows, DRAW_BLOCK_ROWS)):
        block = rows.slice(start, DRAW_BLOCK_ROWS)
        blocks.append(post.sample(block, n, space="model", seed=seed + k).cpu().numpy())
        progress.update(block.num_rows)
    progress.finish()
    theta = (np.concatenate(blocks) if blocks
             else np.zeros((0, n, len(post.targets)), np.float32))
    return CalibrationSamples(objids(rows), list(post.targets), theta.astype(np.float64),
                              _truth(rows, post.targets), f"{n} samples from the model")


def from_catalog(catalog: str, rows: pa.Table, targets) -> CalibrationSamples | None:
    """The samples a catalog kept (``raygal infer --keep-samples``) for ``rows``, or None."""
    got = catalog_samples(catalog, objids(rows))
    if got is None:
        return None
    gid, phys = got
    sub = subset(rows, gid)
    idx, hit = align(gid, objids(sub))
    phys = phys[idx[hit]]
    sub = sub.filter(pa.array(hit))
    theta = np.stack([get_target(t).forward(phys[..., j]) for j, t in enumerate(targets)], -1)
    return CalibrationSamples(objids(sub), list(targets), theta, _truth(sub, targets),
                              f"{phys.shape[1]} samples kept in the catalog")


def information_gain(post, rows: pa.Table, cs: CalibrationSamples,
                     prior: M.EmpiricalPrior | None, kl_samples: int) -> dict:
    """Per galaxy, into ``cs.per_galaxy``: ``log_q`` = log q(theta*|x) at the truth (NaN where
    a target is unknown: the joint density needs every one) and, with an empirical prior, the
    information gain of Yunus, Wu & Holwerda (arXiv:2512.05078): ``log_prior`` =
    log p_prior(theta*), ``delta_log_p`` = log_q - log_prior, and ``kl`` = KL(q || p_prior)
    from the first ``kl_samples`` samples (which needs no truth). Returns the summary (means,
    medians, galaxies used)."""
    full = cs.complete
    lq = np.full(cs.n, np.nan)
    if full.any():
        lq[full] = post.log_prob(cs.truth[full], rows.filter(pa.array(full)),
                                 space="model").cpu().numpy()
    cs.per_galaxy["log_q"] = lq
    k = min(int(kl_samples), cs.samples.shape[1])
    if prior is not None:
        lp = prior.log_prob(cs.truth)
        progress = RateReporter("evaluate: KL", total=k, unit="draws")
        lq_s = []
        for s in range(k):
            lq_s.append(post.log_prob(cs.samples[:, s], rows, space="model").cpu().numpy())
            progress.update(1)
        progress.finish()
        lq_s = np.stack(lq_s, 1)
        lp_s = prior.log_prob(cs.samples[:, :k].reshape(-1, len(cs.targets))).reshape(cs.n, k)
        cs.per_galaxy.update(log_prior=lp, delta_log_p=M.delta_log_p(lq, lp),
                             kl=M.kl_mc(lq_s, lp_s))
    return summarize_information(cs.per_galaxy) | {"samples": int(cs.samples.shape[1]),
                                                    "kl_samples": k if prior else 0}


def summarize_information(per_galaxy: dict, rows=None) -> dict:
    """Means and medians of log q, delta log p and KL over ``rows`` (a mask; all by default),
    each with the number of galaxies it used."""
    out = {}
    for name in ("log_q", "delta_log_p", "kl"):
        v = np.asarray(per_galaxy.get(name, []), dtype=np.float64)
        if rows is not None and v.size:
            v = v[rows]
        v = v[np.isfinite(v)]
        out[f"mean_{name}"] = float(v.mean()) if v.size else float("nan")
        out[f"median_{name}"] = float(np.median(v)) if v.size else float("nan")
        out[f"n_{name}"] = int(v.size)
    out["n"] = out["n_delta_log_p"]
    return out


# ----------------------------------------------------------------------------------------------
# On disk: one Parquet file, objid + samples [S, D] + truth [D] + per-galaxy columns
# ----------------------------------------------------------------------------------------------

def save(cs: CalibrationSamples, uri: str) -> str:
    """Write ``cs`` to ``uri`` (a Parquet file); returns ``uri``."""
    import io

    cols = {ID_COLUMN: pa.array(cs.objid, pa.int64()),
            "samples": pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.ascontiguousarray(cs.samples, dtype=np.float32)),
            "truth": pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.ascontiguousarray(cs.truth, dtype=np.float64))}
    cols.update({k: pa.array(np.asarray(v, np.float64)) for k, v in cs.per_galaxy.items()})
    meta = {"targets": list(cs.targets), "source": cs.source, "space": "model"}
    table = pa.table(cols).replace_schema_metadata({"raygal": json.dumps(meta)})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())
    return uri


def load(uri: str) -> CalibrationSamples:
    """Read what ``save`` wrote."""
    t = read_parquet(uri)
    meta = json.loads(t.schema.metadata[b"raygal"])
    per = {k: t.column(k).to_numpy(zero_copy_only=False).astype(np.float64)
           for k in t.column_names if k in PER_GALAXY}
    return CalibrationSamples(objids(t), meta["targets"],
                              t.column("samples").combine_chunks().to_numpy_ndarray()
                              .astype(np.float64),
                              t.column("truth").combine_chunks().to_numpy_ndarray()
                              .astype(np.float64), meta["source"], per)


# ----------------------------------------------------------------------------------------------
# The check at the end of training
# ----------------------------------------------------------------------------------------------
#: nominal levels of the central intervals the check counts
CHECK_LEVELS = (0.68, 0.95)


def heldout_check(post, rows: pa.Table, n: int = 100, seed: int = 0) -> dict:
    """Coverage and PIT of ``post`` on held-out ``rows`` (galaxies with their true targets),
    with a verdict per target, so that a miscalibrated model is seen before it is used.

    For each target, on the rows where it is known: the 68 % and 95 % central-interval
    coverage of the truths, each with its binomial standard error sqrt(p (1 - p) / N) at the
    nominal p, and the KS p-value of the PIT against uniform. The verdict is 'calibrated' when
    both coverages are within ``max(3 points, 2.5 standard errors)`` of nominal (a calibrated
    model is flagged about once in 80 intervals by chance),
    'under-confident' (intervals wider than needed) when a coverage is above that, and
    'over-confident' when below. Rows whose inputs are unusable are left out (counted).

    Returns {'rows', 'rows_skipped', 'samples', 'seed', 'targets': {target: {'n',
    'coverage68', 'coverage95', 'se68', 'se95', 'pit_ks_pvalue', 'verdict'}}, 'calibrated'}.
    """
    from ..inputs import STATUS_OK, as_numpy_batch

    ok = np.asarray(post.status(as_numpy_batch(rows)) == STATUS_OK)
    usable = rows.filter(pa.array(ok))
    cs = draw(post, usable, n, seed=seed, label=f"{post.kind}: calibration check")
    out = {"rows": cs.n, "rows_skipped": int((~ok).sum()), "samples": n, "seed": seed,
           "targets": {}}
    for d, t in enumerate(cs.targets):
        known = np.isfinite(cs.truth[:, d])
        k = int(known.sum())
        if k == 0:
            continue
        cov = M.interval_coverage(cs.samples[known, :, d], cs.truth[known, d], CHECK_LEVELS)
        _, ks_p = M.ks_1samp_uniform(M.pit(cs.samples[known, :, d], cs.truth[known, d]))
        r = {"n": k, "pit_ks_pvalue": float(ks_p)}
        verdicts = []
        for level in CHECK_LEVELS:
            key = f"{round(100 * level)}"
            c = float(cov[f"coverage{key}"])
            se = float(np.sqrt(level * (1 - level) / k))
            tol = max(0.03, 2.5 * se)
            r[f"coverage{key}"], r[f"se{key}"] = c, se
            verdicts.append("under-confident" if c > level + tol else
                            "over-confident" if c < level - tol else "calibrated")
        bad = [v for v in verdicts if v != "calibrated"]
        r["verdict"] = bad[0] if bad else "calibrated"
        out["targets"][t] = r
    out["calibrated"] = all(r["verdict"] == "calibrated" for r in out["targets"].values())
    return out


def format_check(check: dict, label: str) -> str:
    """The held-out check as the lines a training run prints."""
    lines = [f"[{label}] calibration on {check['rows']} held-out galaxies ({check['samples']} "
             f"draws each): 68 % / 95 % interval coverage, PIT KS p-value"]
    for t, r in check["targets"].items():
        flag = "" if r["verdict"] == "calibrated" else f"  <- {r['verdict']}"
        lines.append(f"[{label}]   {t:<14} {100 * r['coverage68']:5.1f} % ± {100 * r['se68']:.1f}"
                     f"   {100 * r['coverage95']:5.1f} % ± {100 * r['se95']:.1f}   "
                     f"p={r['pit_ks_pvalue']:.2g}{flag}")
    if not check["calibrated"]:
        lines.append(f"[{label}] some intervals are miscalibrated on held-out galaxies: see "
                     f"'raygal evaluate' before using this model (an ensemble, more data or "
                     f"a smaller model may help)")
    return "\n".join(lines)
