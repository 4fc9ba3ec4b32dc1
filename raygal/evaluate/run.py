"""``raygal evaluate``: metrics of a posterior catalog against the truth in its dataset.

    m = evaluate("runs/post-cfm", "data/mock", "runs/eval-cfm",
                 compare="runs/post-cfm-phot", labels=("image", "phot"))

Streams the catalog shard by shard beside the dataset shard of the same name (inference keeps
the names), so memory holds only the rows evaluated: all of them up to ``max_rows``, else a
deterministic subsample by a hash of objid (said in the output). Writes ``metrics.json`` and
``metrics.md`` to ``out_dir``. Metrics:

- per target with truth: R^2, RMSE, bias, sigma_NMAD, outlier fraction (``point_metrics``) of
  the posterior means, 68 %/95 % interval coverage from the catalog's quantiles, and the
  Wasserstein distance between the posterior means and the true marginal;
- the metallicity-detectability classifier's accuracy, where the model has one;
- with the model (by default the one that made the catalog), on a calibration subset of
  ``calib_rows`` galaxies with every target known: PIT, SBC ranks, TARP (in model space), and
  the information gain of the CFM paper: delta log p = log q(theta*|x) - log p_prior(theta*)
  and KL(q || p_prior), with p_prior an empirical prior (a KDE of the true targets);
- with ``compare``: the same for a second catalog (e.g. the photometry-only model) on the same
  galaxies, and the fraction of galaxies where the first wins on delta log p and on KL.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..pipelines import hash_unit
from ..shards import read_manifest, read_schema, shard_uris
from ..inputs import target_matrix
from ..schema import ID_COLUMN
from . import metrics as M

SETTINGS_FILE = "infer.json"


def _read(uri: str, columns=None) -> pa.Table:
    fs, path = storage.arrow_fs(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def _joined_rows(catalog: str, data: str, targets, keep_frac: float, extra_cols=()):
    """Yield (catalog table, truth table) per shard, aligned on objid, subsampled."""
    names = read_schema(data).names          # every shard shares the dataset's schema
    want = [c for c in dict.fromkeys([ID_COLUMN, *targets, *extra_cols]) if c in names]
    for duri in shard_uris(data):
        name = os.path.basename(duri)
        curi = storage.join(catalog, name)
        if not storage.exists(curi):
            raise FileNotFoundError(f"{curi}: missing catalog shard for {duri}; finish the "
                                    f"catalog with 'raygal infer' (re-running completes it)")
        cat = _read(curi)
        truth = _read(duri, want)
        cat = cat.sort_by(ID_COLUMN)
        truth = truth.sort_by(ID_COLUMN)
        if not np.array_equal(cat.column(ID_COLUMN).to_numpy(),
                              truth.column(ID_COLUMN).to_numpy()):
            raise ValueError(f"{curi}: rows do not match {duri} (was the catalog made from "
                             f"this dataset?)")
        if keep_frac < 1.0:
            keep = hash_unit(truth.column(ID_COLUMN).to_numpy()) < keep_frac
            cat, truth = cat.filter(pa.array(keep)), truth.filter(pa.array(keep))
        yield cat, truth


def _col(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def load_for_evaluation(catalog: str, data: str, max_rows: int = 200_000):
    """(catalog columns, truth columns, settings, fraction kept) as dicts of numpy arrays."""
    settings = storage.read_json(storage.join(catalog, SETTINGS_FILE))
    targets = settings["targets"]
    n = read_manifest(data)["num_rows"]
    frac = min(1.0, max_rows / max(n, 1))
    cats, truths = [], []
    for c, t in _joined_rows(catalog, data, targets + ["oh12"], frac):
        cats.append(c)
        truths.append(t)
    cat = pa.concat_tables(cats)
    truth = pa.concat_tables(truths, promote_options="default")
    cd = {k: (cat.column(k).to_numpy(zero_copy_only=False) if k == "status" else _col(cat, k))
          for k in cat.column_names if k != "samples"}
    td = {k: _col(truth, k) for k in truth.column_names}
    td[ID_COLUMN] = truth.column(ID_COLUMN).to_numpy()
    return cd, td, settings, frac


def point_and_coverage(cd: dict, td: dict, targets) -> dict:
    out = {}
    ok = np.asarray(cd["status"]).astype(str) == "ok"
    for t in targets:
        if t not in td or not np.isfinite(td[t]).any():
            continue
        pred = np.where(ok, cd[f"{t}_mean"], np.nan)
        res = M.point_metrics(pred, td[t], t)
        res.update({k: v for k, v in M.summary_coverage(cd, td[t], t).items() if k != "n"})
        both = ok & np.isfinite(td[t]) & np.isfinite(pred)
        res["wasserstein_means_vs_truth"] = (M.wasserstein_1d(pred[both], td[t][both])
                                             if both.any() else float("nan"))
        out[t] = res
    return out


def _calibration_batch(data: str, ids: np.ndarray):
    """The full input rows (cutouts included) of ``ids``, streamed from the dataset."""
    want = set(int(i) for i in ids)
    parts = []
    for duri in shard_uris(data):
        t = _read(duri)
        keep = np.isin(t.column(ID_COLUMN).to_numpy(), ids)
        if keep.any():
            parts.append(t.filter(pa.array(keep)))
        if sum(p.num_rows for p in parts) >= len(want):
            break
    return pa.concat_tables(parts).sort_by(ID_COLUMN)


def information_and_calibration(model_uri: str, data: str, td: dict, cd: dict, targets,
                                calib_rows: int, samples: int, kl_samples: int,
                                prior: M.EmpiricalPrior, seed: int = 0,
                                solver: str | None = None) -> dict:
    """PIT/SBC/TARP and delta log p / KL on a calibration subset, with the model."""
    import torch

    from ..infer import set_solver
    from ..models import load_posterior

    post = load_posterior(model_uri)
    if solver and post.solver is not None:   # only ODE models have one
        set_solver(post, solver)
    y = np.stack([td[t] for t in targets], 1)
    ok = (np.asarray(cd["status"]).astype(str) == "ok") & np.isfinite(y).all(1)
    ids = td[ID_COLUMN][ok]
    if not len(ids):
        return {}
    order = np.argsort(hash_unit(ids))[:calib_rows]
    ids = np.sort(ids[order])
    batch = _calibration_batch(data, ids)
    truth_model = target_matrix({t: batch.column(t).to_numpy(zero_copy_only=False)
                                 for t in targets}, targets)
    torch.manual_seed(seed)
    theta = post.sample(batch, samples, space="model", seed=seed).cpu().numpy()
    calib = M.summarize_calibration(theta, truth_model, list(targets), seed=seed)
    lq_true = post.log_prob(truth_model, batch, space="model").cpu().numpy()
    lp_true = prior.log_prob(truth_model)
    dlogp = M.delta_log_p(lq_true, lp_true)
    k = min(kl_samples, samples)
    lq_s = np.stack([post.log_prob(theta[:, s], batch, space="model").cpu().numpy()
                     for s in range(k)], 1)
    lp_s = prior.log_prob(theta[:, :k].reshape(-1, len(targets))).reshape(len(ids), k)
    kl = M.kl_mc(lq_s, lp_s)
    return {"calibration": calib, "objid": ids, "delta_log_p": dlogp, "kl": kl,
            "n": int(len(ids)), "samples": samples, "kl_samples": k}


def evaluate(posteriors: str, data: str, out_dir: str, model: str | None = None,
             compare: str | None = None, compare_model: str | None = None,
             labels=("A", "B"), max_rows: int = 200_000, calib_rows: int = 500,
             samples: int = 300, kl_samples: int = 32, with_model: bool = True,
             solver: str | None = None, seed: int = 0) -> dict:
    """Evaluate a posterior catalog (and optionally a second one) against ``data``."""
    cd, td, settings, frac = load_for_evaluation(posteriors, data, max_rows)
    targets = settings["targets"]
    result = {"catalog": posteriors, "data": data, "model": model or settings["model"],
              "rows_evaluated": int(len(td[ID_COLUMN])), "fraction_evaluated": frac,
              "rows_per_status": {str(k): int(v) for k, v in zip(*np.unique(
                  np.asarray(cd["status"]).astype(str), return_counts=True))},
              "targets": point_and_coverage(cd, td, targets)}
    if "oh12_detect_prob" in cd and "oh12" in td:
        ok = np.asarray(cd["status"]).astype(str) == "ok"
        result["oh12_detectability"] = M.binary_classifier_metrics(
            cd["oh12_detect_prob"][ok], np.isfinite(td["oh12"][ok]))
    # Empirical prior: a KDE of the true target vectors (model space) of the evaluated rows.
    y = target_matrix(td, targets)
    full = np.isfinite(y).all(1)
    prior = None
    if with_model and full.sum() >= 20:
        prior = M.EmpiricalPrior().fit(y[full], max_points=5000, seed=seed)
        info = information_and_calibration(result["model"], data, td, cd, targets, calib_rows,
                                           samples, kl_samples, prior, seed, solver)
        if info:
            result["calibration"] = info["calibration"]
            result["information"] = _info_summary(info)
            if compare:
                cd2, td2, s2, _ = load_for_evaluation(compare, data, max_rows)
                if list(s2["targets"]) != list(targets):
                    raise ValueError(f"{compare}: targets {s2['targets']} differ from "
                                     f"{targets}; cannot compare")
                result["compare"] = {"catalog": compare, "labels": list(labels),
                                     "targets": point_and_coverage(cd2, td2, targets)}
                info2 = information_and_calibration(compare_model or s2["model"], data, td2,
                                                    cd2, targets, calib_rows, samples,
                                                    kl_samples, prior, seed, solver)
                same = np.array_equal(info["objid"], info2["objid"])
                result["compare"]["calibration"] = info2["calibration"]
                result["compare"]["information"] = _info_summary(info2)
                if same:
                    result["compare"]["win_rate_delta_log_p"] = M.win_rate(
                        info["delta_log_p"], info2["delta_log_p"])
                    result["compare"]["win_rate_kl"] = M.win_rate(info["kl"], info2["kl"])
    storage.makedirs(out_dir)
    storage.write_json(storage.join(out_dir, "metrics.json"), _jsonable(result))
    storage.write_bytes(storage.join(out_dir, "metrics.md"), format_table(result).encode())
    return result


def _info_summary(info: dict) -> dict:
    d, k = info["delta_log_p"], info["kl"]
    return {"mean_delta_log_p": float(np.nanmean(d)), "median_delta_log_p":
            float(np.nanmedian(d)), "mean_kl": float(np.nanmean(k)),
            "median_kl": float(np.nanmedian(k)), "n": info["n"],
            "samples": info["samples"], "kl_samples": info["kl_samples"]}


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, float)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return o


def format_table(result: dict) -> str:
    """The metrics as a Markdown table, for people."""
    lines = [f"# raygal evaluation of {result['catalog']}", "",
             f"{result['rows_evaluated']} rows evaluated "
             f"({result['fraction_evaluated']:.0%} of the data); status: "
             + ", ".join(f"{k} {v}" for k, v in result["rows_per_status"].items()), "",
             "| target | R² | RMSE | bias | σ_NMAD | outliers | cov68 | cov95 | W1(means) | n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t, m in result["targets"].items():
        lines.append(f"| {t} | {m['r2']:.3f} | {m['rmse']:.3f} | {m['bias']:+.3f} | "
                     f"{m['sigma_nmad']:.3f} | {m['outlier_fraction']:.3f} | "
                     f"{m['coverage68']:.3f} | {m['coverage95']:.3f} | "
                     f"{m['wasserstein_means_vs_truth']:.3f} | {m['n']} |")
    if "oh12_detectability" in result:
        c = result["oh12_detectability"]
        lines += ["", f"Metallicity detectability classifier: accuracy {c['accuracy']:.3f}, "
                      f"precision {c['precision']:.3f}, recall {c['recall']:.3f} "
                      f"(n = {c['n']})"]
    if "calibration" in result:
        cal = result["calibration"]
        lines += ["", f"Calibration on {cal['n']} galaxies with every target known "
                      f"(model space, {result['information']['samples']} samples each):", "",
                  "| target | cov68 | cov95 | PIT χ² p | SBC KS p |", "|---|---|---|---|---|"]
        for t, m in cal["targets"].items():
            lines.append(f"| {t} | {m['coverage68']:.3f} | {m['coverage95']:.3f} | "
                         f"{m['pit_pvalue']:.3g} | {m['sbc_ks_pvalue']:.3g} |")
        if cal.get("tarp"):
            lines += ["", f"TARP: ATC {cal['tarp']['atc']:+.3f} (0 is calibrated, > 0 "
                          f"under-confident), KS p {cal['tarp']['ks_pvalue']:.3g}"]
        info = result["information"]
        lines += ["", f"Information gain over the empirical prior: mean Δlog p "
                      f"{info['mean_delta_log_p']:.2f}, mean KL {info['mean_kl']:.2f}"]
    if "compare" in result and "information" in result["compare"]:
        a, b = result["compare"]["labels"]
        c = result["compare"]
        lines += ["", f"Compared with {c['catalog']} ({b}): mean Δlog p "
                      f"{c['information']['mean_delta_log_p']:.2f}, mean KL "
                      f"{c['information']['mean_kl']:.2f}"]
        if "win_rate_delta_log_p" in c:
            lines.append(f"{a} wins Δlog p on {c['win_rate_delta_log_p']:.1%} and KL on "
                         f"{c['win_rate_kl']:.1%} of galaxies")
    return "\n".join(lines) + "\n"

