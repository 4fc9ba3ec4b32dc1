"""``raygal evaluate``: metrics of a posterior catalog against the truth in its dataset.

    m = evaluate("runs/post-cfm", "data/mock-test", "runs/eval-cfm",
                 compare="runs/post-cfm-phot", labels=("image", "phot"),
                 prior_data="data/mock", baselines=True)

Streams the catalog shard by shard beside the dataset shard of the same name (inference keeps
the names), so memory holds only the rows evaluated: all of them up to ``max_rows``, else a
deterministic subsample by a hash of objid (said in the output). Writes ``metrics.json``,
``metrics.md`` and the calibration samples (``calibration_samples.parquet``, read by
``raygal report``) to ``out_dir``. Metrics:

- per target with truth, on the rows whose truth of it is known (``n``; ``n_no_truth`` counts
  the others): R^2, RMSE, bias, sigma_NMAD, outlier fraction of the posterior means, 68 %/95 %
  interval coverage from the catalog's quantiles, the Wasserstein distance between the
  posterior means and the true marginal;
- the same per population (star-forming / quenched, redshift bins, r-magnitude bins:
  ``raygal.evaluate.populations``), so that an average cannot hide a failing half;
- the metallicity-detectability classifier's accuracy, where the model has one;
- with the model (by default the one that made the catalog), on a calibration subset of
  ``calib_rows`` galaxies with status ok and a target known (a uniform sample by objid hash,
  outside the training split when the data hold other rows): PIT, SBC ranks and
  coverage per target, TARP on the galaxies with every target known (model space), and the
  information gain of the CFM paper: log q(theta*|x), delta log p = log q(theta*|x) -
  log p_prior(theta*) and KL(q || p_prior), per galaxy and per population. p_prior is an
  empirical prior (a KDE of true target vectors) fitted on training rows, never on the truths
  it scores: the ``train`` split (``raygal.pipelines.split_of``) of the data or of
  ``prior_data``, else evaluated rows outside the calibration subset; metrics.json says which;
- with ``compare``: the same for a second catalog (e.g. the photometry-only model) on the same
  galaxies, and the fraction of galaxies where the first wins on delta log p and on KL;
- with ``baselines``: a random forest and a k-nearest-neighbour regressor on the photometric
  features, fitted on the same training rows (cross-fitted on the evaluated rows when there
  are none), scored beside the posterior means on the rows none of them was fitted on.
"""
from __future__ import annotations

import numpy as np

from .. import storage
from ..inputs import magerr_matrix, parse_inputs, phot_matrix, target_matrix
from ..pipelines import hash_unit, split_of
from ..schema import ID_COLUMN, MAG_COLUMNS, MAGERR_COLUMNS
from . import baselines as B
from . import calibration as C
from . import metrics as M
from .data import Joined, align, load_joined, read_rows, sample_rows
from .populations import populations
from .scores import catalog_scores, scored_targets, target_scores
from .tables import format_table

__all__ = ["evaluate", "format_table"]

#: fewest complete target vectors an empirical prior is fitted to
MIN_PRIOR_ROWS = 20
#: kernel centres of the empirical prior (a KDE costs O(centres) per density evaluation)
PRIOR_POINTS = 5000


def evaluate(posteriors: str, data: str, out_dir: str, model: str | None = None,
             compare: str | None = None, compare_model: str | None = None,
             labels=("A", "B"), max_rows: int = 200_000, calib_rows: int = 500,
             samples: int = 300, kl_samples: int = 32, with_model: bool = True,
             solver: str | None = None, seed: int = 0, *, prior_data: str | None = None,
             train_rows: int = 20_000, baselines: bool = False, z_edges=None,
             mag_edges=None) -> dict:
    """Evaluate a posterior catalog (and optionally a second one) against ``data``; see the
    module docstring. ``train_rows`` bounds the training rows read for the prior and the
    baselines; ``z_edges``/``mag_edges`` override the redshift / r-magnitude bins."""
    a = load_joined(posteriors, data, max_rows)
    result = {"catalog": posteriors, "data": data, "model": model or a.settings["model"],
              "out_dir": out_dir} | _catalog_metrics(a)
    pops, groups = populations(a.truth, z_edges, mag_edges)
    b = None
    if compare:
        b = _load_compare(a, compare, data, max_rows)
        result["compare"] = {"catalog": compare, "labels": list(labels),
                             "model": compare_model or b.settings["model"],
                             **_catalog_metrics(b)}
    storage.makedirs(out_dir)
    ids = C.choose_ids(a.ids, _calibratable(a, b), calib_rows) if with_model else []
    if with_model or baselines:
        # Training rows never include a galaxy whose density is scored.
        training = _training_rows(data, prior_data, a.targets, train_rows, ids)
    cs = {}
    if len(ids):
        rows = read_rows(data, ids)
        prior, result["prior"] = _fit_prior(training, a, ids, seed)
        for key, res, name, cat in (("a", result, C.SAMPLES_FILE, a),
                                    ("b", result.get("compare"), C.COMPARE_SAMPLES_FILE, b)):
            if res is not None:
                # The solver the catalog was made with, unless told otherwise: the densities
                # then describe the posteriors the catalog holds.
                cs[key] = _calibrate(res, rows, samples, kl_samples, prior, seed,
                                     solver or cat.settings.get("solver"),
                                     storage.join(out_dir, name))
        if b is not None and prior is not None:
            for k in ("delta_log_p", "kl"):
                result["compare"][f"win_rate_{k}"] = M.win_rate(cs["a"].per_galaxy[k],
                                                                cs["b"].per_galaxy[k])
    result["populations"] = _population_metrics(pops, groups, a, cs.get("a"))
    if b is not None:
        result["compare"]["populations"] = _population_metrics(pops, groups, b, cs.get("b"))
    if baselines:
        result["baselines"] = _baselines(training, a, seed, _model_inputs(result["model"]))
    storage.write_json(storage.join(out_dir, "metrics.json"), _jsonable(result))
    storage.write_bytes(storage.join(out_dir, "metrics.md"), format_table(result).encode())
    return result


# ----------------------------------------------------------------------------------------------
# Catalog-only metrics
# ----------------------------------------------------------------------------------------------

def _catalog_metrics(j: Joined) -> dict:
    """Row counts, per-target scores and the detectability classifier of one catalog."""
    status, counts = np.unique(np.asarray(j.cat["status"]).astype(str), return_counts=True)
    out = {"rows_evaluated": int(len(j.ids)), "fraction_evaluated": j.fraction,
           "rows_per_status": {str(k): int(v) for k, v in zip(status, counts)},
           "rows_in_train_split": int((split_of(j.ids) == "train").sum()),
           "targets": catalog_scores(j.cat, j.truth, j.targets)}
    out["targets_without_truth"] = [t for t in j.targets if t not in out["targets"]]
    if "oh12_detect_prob" in j.cat and "oh12" in j.truth:
        out["oh12_detectability"] = M.binary_classifier_metrics(
            j.cat["oh12_detect_prob"][j.ok], np.isfinite(j.truth["oh12"][j.ok]))
    return out


def _load_compare(a: Joined, compare: str, data: str, max_rows: int) -> Joined:
    """The second catalog, which must hold the same rows and targets as the first."""
    b = load_joined(compare, data, max_rows)
    if b.targets != a.targets:
        raise ValueError(f"{compare}: targets {b.targets} differ from {a.targets}; cannot "
                         f"compare")
    if not np.array_equal(b.ids, a.ids):
        raise ValueError(f"{compare}: not the same rows of {data} as the first catalog; "
                         f"cannot compare")
    return b


def _population_metrics(pops, groups: dict, j: Joined, cs: C.CalibrationSamples | None
                        ) -> dict:
    """Per population: rows, per-target scores and, with calibration samples, the
    information gain of the calibration galaxies in it."""
    out = {}
    at = align(j.ids, cs.objid)[0] if cs is not None else None
    for p in pops:
        m = {"group": p.group, "selection": p.selection, "n": int(p.rows.sum()),
             "n_ok": int((p.rows & j.ok).sum()),
             "targets": catalog_scores(j.cat, j.truth, j.targets, p.rows)}
        if cs is not None:
            m["information"] = C.summarize_information(cs.per_galaxy, p.rows[at])
        out[p.name] = m
    return {"groups": groups, "metrics": out}


# ----------------------------------------------------------------------------------------------
# Training rows, the empirical prior, calibration with the model
# ----------------------------------------------------------------------------------------------

def _training_rows(data: str, prior_data: str | None, targets, max_rows: int, exclude
                   ) -> tuple[dict, dict]:
    """(rows, description): a uniform sample of the training rows' targets and photometry,
    leaving out ``exclude`` (the galaxies whose densities are scored): the ``train`` split of
    ``prior_data`` (all its rows if it has no such split) or of ``data``; empty when ``data``
    has no training split."""
    cols = [*targets, *MAG_COLUMNS, "z", *MAGERR_COLUMNS]     # the baselines' features
    if prior_data:
        for split, what in (("train", "train split of the prior data"),
                            (None, "prior data (all rows: it has no train split)")):
            rows, eligible = sample_rows(prior_data, cols, max_rows, split, exclude)
            if eligible:
                return rows, _described(what, prior_data, split, eligible, rows)
    rows, eligible = sample_rows(data, cols, max_rows, "train", exclude)
    return rows, _described("train split of the evaluated data", data, "train", eligible, rows)


def _described(what: str, uri: str, split, eligible: int, rows: dict) -> dict:
    return {"source": what, "uri": uri, "split": split, "rows_eligible": eligible,
            "rows_read": int(len(rows[ID_COLUMN]))}


def _fit_prior(training: tuple[dict, dict], j: Joined, scored_ids, seed: int
               ) -> tuple[M.EmpiricalPrior | None, dict]:
    """The empirical prior on the training rows or, when they have too few complete target
    vectors, on the evaluated rows outside ``scored_ids``; and a description of its source."""
    rows, desc = training
    y = target_matrix(rows, j.targets)
    desc = dict(desc)
    if np.isfinite(y).all(1).sum() < MIN_PRIOR_ROWS:
        y = target_matrix(j.truth, j.targets)[~np.isin(j.ids, scored_ids)]
        desc = {"source": "evaluated rows outside the calibration subset (a disjoint "
                          "sample: no training rows with every target known)",
                "split": None, "rows_eligible": int(len(y))}
    full = np.isfinite(y).all(1)
    desc["rows_complete"] = int(full.sum())
    if full.sum() < MIN_PRIOR_ROWS:
        return None, desc | {"missing": f"only {int(full.sum())} rows of the {desc['source']} "
                                        f"have every target known"}
    try:
        prior = M.EmpiricalPrior().fit(y[full], max_points=PRIOR_POINTS, seed=seed)
    except ValueError as exc:          # degenerate targets (a constant column)
        return None, desc | {"missing": str(exc)}
    return prior, desc | {"kernel_centres": int(prior.points.shape[0])}


def _calibrate(res: dict, rows, samples: int, kl_samples: int, prior: M.EmpiricalPrior | None,
               seed: int, solver: str | None, out_uri: str) -> C.CalibrationSamples:
    """Sample ``res['model']`` on ``rows``, put its calibration and information summaries in
    ``res``, write the samples to ``out_uri`` (named in ``res['calibration_samples']``, relative
    to the evaluation folder) and return them."""
    from ..infer import set_solver
    from ..models import load_posterior

    post = load_posterior(res["model"])
    if solver and post.solver is not None:   # only ODE models have one
        set_solver(post, solver)
    cs = C.draw(post, rows, samples, seed)
    res["calibration"] = M.summarize_calibration(cs.samples, cs.truth, cs.targets, seed=seed)
    res["information"] = C.information_gain(post, rows, cs, prior, kl_samples) | {
        "n_galaxies": cs.n}
    C.save(cs, out_uri)
    res["calibration_samples"] = out_uri.rsplit("/", 1)[-1]
    return cs


def _calibratable(a: Joined, b: Joined | None) -> np.ndarray:
    """Rows a calibration subset may hold: status ok (in both catalogs when comparing, so both
    are scored on the same galaxies), at least one target known, and outside the training
    split (``raygal.pipelines.split_of``) unless every such row is in it."""
    known = np.isfinite(target_matrix(a.truth, a.targets)).any(1)
    rows = a.ok & known & (b.ok if b is not None else True)
    held_out = rows & (split_of(a.ids) != "train")
    return held_out if held_out.any() else rows


# ----------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------

def _model_inputs(model_uri: str | None) -> str:
    """The input kind of the catalog's model (its model.json), for the baselines' features;
    'phot' when the model cannot be read (the catalog alone was given)."""
    from ..models import read_model_description

    try:
        return str(read_model_description(model_uri)["inputs"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return "phot"


def baseline_features(rows: dict, inputs: str = "phot") -> np.ndarray:
    """[N, F] features of the baseline regressors for a model with ``inputs``: the
    photometric features (``raygal.inputs.phot_matrix``), then the redshift and the ugriz
    magnitude errors where the model sees them ('+z', '+err'), so that both learn from the
    same information. NaN where a column is missing (such rows are neither fitted nor
    predicted)."""
    parts = parse_inputs(inputs)
    n = len(rows[ID_COLUMN])
    cols = [phot_matrix({c: rows.get(c, np.full(n, np.nan)) for c in MAG_COLUMNS})]
    if "z" in parts:
        cols.append(np.asarray(rows.get("z", np.full(n, np.nan)), np.float64)[:, None])
    if "err" in parts:
        cols.append(magerr_matrix({c: rows.get(c, np.full(n, np.nan))
                                   for c in MAGERR_COLUMNS}))
    return np.concatenate(cols, axis=1)


def _baselines(training: tuple[dict, dict], j: Joined, seed: int, inputs: str = "phot"
               ) -> dict:
    """Scores (R^2, sigma_NMAD, ...) of each baseline regressor and of the posterior means per
    target, on the same rows: the evaluated rows a baseline was not fitted on. Fitted on the
    training rows or, without any, cross-fitted in two halves of the evaluated rows (by objid
    hash). The features follow the model's ``inputs`` (``baseline_features``)."""
    B.check_available()
    rows, desc = training
    x = baseline_features(j.truth, inputs)
    if len(rows[ID_COLUMN]) >= MIN_PRIOR_ROWS:
        scored = ~np.isin(j.ids, rows[ID_COLUMN])
        x_train = baseline_features(rows, inputs)

        def predict(name, t):
            y = rows.get(t, np.full(len(x_train), np.nan))
            return B.fit_predict(name, t, x_train, y, x, seed)
    else:
        desc = {"source": "evaluated rows, two-fold cross-fitted (no training rows)"}
        scored = np.ones(len(j.ids), bool)
        fold = hash_unit(~j.ids) < 0.5

        def predict(name, t):
            return B.cross_fit_predict(name, t, x, j.truth[t], fold, seed)

    keep = ("r2", "rmse", "bias", "sigma_nmad", "outlier_fraction", "n")
    targets = scored_targets(j.truth, j.targets)
    models = {"posterior": {}}
    for t in targets:
        s = target_scores(j.cat, j.truth, t, scored)
        models["posterior"][t] = {k: s[k] for k in keep}
    for name in B.BASELINES:
        models[name] = {}
        for t in targets:
            pred, n_train = predict(name, t)
            s = target_scores(j.cat, j.truth, t, scored, means=pred)
            models[name][t] = {k: s[k] for k in keep} | {"n_train": n_train}
    extra = [f for f in ("z", "err") if f in parse_inputs(inputs)]
    features = {"z": "z", "err": "the ugriz magnitude errors"}
    suffix = "".join(f", {features[f]}" for f in extra)
    return {"training": desc | {"rows_scored": int(scored.sum())}, "inputs": inputs,
            "description": {n: B.DESCRIPTION[n] + suffix for n in B.BASELINES},
            "models": models}


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.floating, float)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return o
