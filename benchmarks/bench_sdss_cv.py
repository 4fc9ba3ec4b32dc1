"""Five-fold cross-validation of the photometry-only posteriors on the real SDSS samples, beside
a random forest and k-nearest neighbours fitted on the same rows with the same inputs.

Samples (``../shared/data/sdss``, or the folder ``RAYGAL_SDSS_SAMPLES`` names):
- ``photoz``: photoz/annz_sdss_ugriz_train.dat, 5,000 galaxies; target z from ugriz;
- ``lines``: lines_dn4000, 933 galaxies at 0.05 < z < 0.075; targets Dn4000, A_V and the
  Halpha, Hbeta, [N II], [O III] fluxes from ugriz plus the spectroscopic redshift.

Folds are fixed: a galaxy's fold is ``floor(5 u)``, u = ``raygal.pipelines.hash_unit`` of its
objid XOR ``FOLD_SALT`` (independent of the train/validation split, which hashes the objid
itself). For fold k every model trains on the other four folds (85 % train, 15 % validation for
early stopping and model selection, by raygal's usual split) and is scored on fold k: the
posterior median of ``--draws`` draws per galaxy (R^2 per target, of log10(1 + F) for the line
fluxes as ``raygal report`` shows them; for z also sigma_NMAD of
(z_med - z) / (1 + z) and the fraction of |dz| / (1 + z) > 0.15), and the 68 % / 95 % central
interval coverage. The random forest and kNN (``raygal.evaluate.baselines``) see the same inputs
(colours and r, plus z where the model has it) and the same training rows (train and
validation). Figures are means over folds; the spread over folds is printed beside them.

    python benchmarks/bench_sdss_cv.py                          # both samples, NF and CFM
    python benchmarks/bench_sdss_cv.py --sample photoz --size paper   # the papers' settings
    python benchmarks/bench_sdss_cv.py --sample photoz --models nf --ensemble 5  # 5-seed ensembles
    python benchmarks/bench_sdss_cv.py --quick                  # one fold, tiny (the tests)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FOLDS = 5
FOLD_SALT = 0x5DEECE66D
SAMPLES = {
    "photoz": {"files": ["photoz/annz_sdss_ugriz_train.dat"], "inputs": "phot",
               "targets": ("z",)},
    "lines": {"files": ["lines_dn4000/output_results_with_lines_d4000.csv",
                        "lines_dn4000/av_dn4000_fuv.csv"], "inputs": "phot+z",
              "targets": ("dn4000", "av", "flux_halpha", "flux_hbeta", "flux_nii",
                          "flux_oiii")},
}


def samples_folder() -> Path:
    env = os.environ.get("RAYGAL_SDSS_SAMPLES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "sdss"


def fold_of(objid) -> np.ndarray:
    from raygal.pipelines import hash_unit

    ids = np.asarray(objid, dtype=np.int64) ^ np.int64(FOLD_SALT)
    return np.minimum((FOLDS * hash_unit(ids)).astype(int), FOLDS - 1)


def write_rows(table, out: str, source: str) -> str:
    """``table`` as a raygal dataset at ``out`` (one shard), marked as rows of ``source``."""
    from raygal.shards import ShardWriter, read_manifest

    with ShardWriter(out, table.schema, rows_per_shard=max(1, table.num_rows),
                     objid_origin=read_manifest(source).get("objid_origin", "sdss"),
                     extra={"cv_of": source}) as w:
        w.write(table)
    return out


def features(table, inputs: str) -> np.ndarray:
    """The baselines' inputs: raygal's photometric features, plus z for 'phot+z'."""
    from raygal.inputs import as_numpy_batch, phot_matrix

    b = as_numpy_batch(table)
    x = phot_matrix(b)
    if inputs.endswith("+z"):
        x = np.concatenate([x, np.asarray(b["z"], np.float64)[:, None]], 1)
    return x


def score(pred: np.ndarray, truth: np.ndarray, target: str) -> dict:
    """R^2 in the target's display space (``raygal.evaluate.plots.display``: log10(1 + F) for
    line fluxes, which span decades, as ``raygal report`` scores them; physical otherwise), and
    for z sigma_NMAD and the outlier fraction."""
    from raygal.schema import get_target

    ok = np.isfinite(pred) & np.isfinite(truth)
    show = get_target(target).transform.display
    p, t = np.asarray(show(pred[ok]), np.float64), np.asarray(show(truth[ok]), np.float64)
    out = {"n": int(ok.sum()),
           "r2": float(1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2))}
    if target == "z":
        p, t = pred[ok], truth[ok]
        dz = (p - t) / (1 + t)
        out["sigma_nmad"] = float(1.4826 * np.median(np.abs(dz - np.median(dz))))
        out["outliers"] = float(np.mean(np.abs(dz) > 0.15))
    return out


def run_model(model, sample, spec, train_uri, test, fold, args, tmp) -> dict:
    from raygal.models import load_posterior
    from raygal.train import TrainConfig
    from raygal.train.driver import fit

    # Only what was asked for on the command line is set: the rest is what a user gets by
    # default (raygal.train.sizing for --size auto).
    given = {k: getattr(args, k) for k in ("epochs", "patience", "batch_size", "lr",
                                           "weight_decay") if getattr(args, k) is not None}
    t0 = time.perf_counter()
    members, epochs = [], []
    for m in range(args.ensemble):
        # Members differ by seed only (initialisation, batch order, noise), on the same rows.
        cfg = TrainConfig(model=model, data=train_uri,
                          out=os.path.join(tmp, f"{sample}-{model}-{fold}-{m}"),
                          inputs=spec["inputs"], targets=spec["targets"], workers=1,
                          split=(0.85, 0.15, 0.0), size=args.size, seed=m, **given)
        summary = fit(cfg)
        members.append(load_posterior(summary["model_uri"]))
        epochs.append(summary["epochs_run"])
    train_s = time.perf_counter() - t0
    if len(members) > 1:
        from raygal.models.ensemble import EnsemblePosterior

        post = EnsemblePosterior(members)
    else:
        post = members[0]
    out = {"train_s": train_s, "epochs_run": epochs if len(epochs) > 1 else epochs[0],
           "targets": score_posterior(post, test, args.draws, fold, f"{model} fold {fold}")}
    if len(members) > 1:     # the first member alone (the single model of the same seed)
        out["first_member"] = score_posterior(members[0], test, args.draws, fold,
                                              f"{model} fold {fold}, member 0")
    return out


def score_posterior(post, test, draws: int, seed: int, label: str) -> dict:
    """{target: score of the posterior median and interval coverage} on ``test``."""
    from raygal.evaluate.calibration import draw
    from raygal.evaluate.metrics import interval_coverage
    from raygal.schema import get_target

    cs = draw(post, test, draws, seed=seed, label=label)
    out = {}
    for d, t in enumerate(post.targets):
        med = np.asarray(get_target(t).inverse(np.median(cs.samples[:, :, d], axis=1)))
        truth = np.asarray(get_target(t).inverse(cs.truth[:, d]))
        r = score(med, truth, t)
        known = np.isfinite(cs.truth[:, d])
        r.update(interval_coverage(cs.samples[known, :, d], cs.truth[known, d]))
        out[t] = r
    return out


def run_baselines(spec, train, test) -> dict:
    from raygal.evaluate.baselines import BASELINES, fit_predict

    x_tr, x_te = features(train, spec["inputs"]), features(test, spec["inputs"])
    out = {}
    for name in BASELINES:
        out[name] = {"targets": {}}
        for t in spec["targets"]:
            y_tr = train.column(t).to_numpy(zero_copy_only=False).astype(np.float64)
            y_te = test.column(t).to_numpy(zero_copy_only=False).astype(np.float64)
            pred, _ = fit_predict(name, t, x_tr, y_tr, x_te)
            out[name]["targets"][t] = score(pred, y_te, t)
    return out


def run_sample(sample: str, args, tmp: str) -> dict:
    import pyarrow as pa

    from raygal.ingest import ingest
    from raygal.shards import read_table

    spec = dict(SAMPLES[sample])
    if args.inputs:
        spec["inputs"] = args.inputs
    folder = samples_folder()
    files = [str(folder / f) for f in spec["files"]]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"SDSS sample files not found: {missing} (set "
                                f"RAYGAL_SDSS_SAMPLES to the folder holding photoz/ and "
                                f"lines_dn4000/)")
    data = os.path.join(tmp, sample)
    ingest(files if len(files) > 1 else files[0], data)
    table = read_table(data)
    if args.max_rows:
        table = table.slice(0, args.max_rows)
    folds = fold_of(table.column("objid").to_numpy())
    results = {"rows": table.num_rows, "folds": {}, "inputs": spec["inputs"]}
    for k in range(args.folds):
        test = table.filter(pa.array(folds == k))
        train = table.filter(pa.array(folds != k))
        train_uri = write_rows(train, os.path.join(tmp, f"{sample}-train-{k}"), data)
        fold = {"test_rows": test.num_rows, "train_rows": train.num_rows}
        fold.update(run_baselines(spec, train, test))
        for model in args.models:
            fold[model] = run_model(model, sample, spec, train_uri, test, k, args, tmp)
        results["folds"][k] = fold
        print(f"[{sample}] fold {k}: " + ", ".join(
            f"{m} " + " ".join(f"{t} R2 {fold[m]['targets'][t]['r2']:.3f}"
                               for t in spec["targets"]) for m in (*args.models, "random_forest")),
              flush=True)
    results["mean"] = summarize(results["folds"], (*args.models, "random_forest", "knn"),
                                spec["targets"])
    return results


def summarize(folds: dict, methods, targets) -> dict:
    out = {}
    for m in methods:
        out[m] = {}
        for t in targets:
            rows = [f[m]["targets"][t] for f in folds.values() if m in f]
            keys = [k for k in rows[0] if k != "n"]
            out[m][t] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
            out[m][t].update({f"{k}_sd": float(np.std([r[k] for r in rows])) for k in keys})
    return out


def print_table(sample: str, res: dict, methods) -> None:
    mean = res["mean"]
    targets = list(next(iter(mean.values())))
    print(f"\n{sample}: {res['rows']} galaxies, {len(res['folds'])} fold(s), inputs "
          f"{res['inputs']}; posterior median vs baselines (mean ± sd over folds)")
    for t in targets:
        print(f"  {t}")
        for m in methods:
            r = mean[m][t]
            line = f"    {m:<14} R2 {r['r2']:.3f} ± {r['r2_sd']:.3f}"
            if "sigma_nmad" in r:
                line += (f"   sigma_NMAD {r['sigma_nmad']:.4f} ± {r['sigma_nmad_sd']:.4f}"
                         f"   outliers {100 * r['outliers']:.1f} %")
            if "coverage68" in r:
                line += (f"   coverage 68 % {100 * r['coverage68']:.1f}   95 % "
                         f"{100 * r['coverage95']:.1f}")
            print(line)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sample", choices=[*SAMPLES, "all"], default="all")
    p.add_argument("--models", default="nf,cfm")
    p.add_argument("--folds", type=int, default=FOLDS, help="folds to run (of 5)")
    p.add_argument("--size", choices=["auto", "small", "paper"], default="auto",
                   help="the models' sizing (raygal.train.sizing): auto, what users get")
    p.add_argument("--epochs", type=int, default=None, help="default: the sizing's")
    p.add_argument("--patience", type=int, default=None, help="default: the sizing's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the sizing's")
    p.add_argument("--lr", type=float, default=None, help="default: the sizing's")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the sizing's")
    p.add_argument("--inputs", default=None,
                   help="the models' inputs (default: phot for photoz, phot+z for lines), "
                        "e.g. phot+err")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--ensemble", type=int, default=1,
                   help="members per model (seeds 0..K-1), scored as one EnsemblePosterior")
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    if args.quick:
        args.folds, args.epochs, args.patience, args.draws = 1, 2, 2, 20
        args.max_rows = args.max_rows or 400
    if not samples_folder().exists():
        print(f"SDSS samples not found at {samples_folder()}: set RAYGAL_SDSS_SAMPLES")
        return {}
    from raygal.runtime import init_ray

    init_ray()
    samples = list(SAMPLES) if args.sample == "all" else [args.sample]
    tmp = tempfile.mkdtemp(prefix="raygal-cv-")
    results = {"args": vars(args), "fold_salt": FOLD_SALT}
    print(f"[cv] settings: size {args.size}; given: " + (", ".join(
        f"{k} {getattr(args, k)}" for k in ("epochs", "patience", "batch_size", "lr",
                                             "weight_decay") if getattr(args, k) is not None)
        or "none (the defaults)"), flush=True)
    try:
        for s in samples:
            results[s] = run_sample(s, args, tmp)
            print_table(s, results[s], (*args.models, "random_forest", "knn"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
