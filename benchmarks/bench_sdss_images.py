"""Five-fold cross-validation of image-only metallicity posteriors on real SDSS cutouts, beside
the training-set mean and a ridge regression on the pixels, fitted on the same rows.

Sample (``../shared/data/sdss``, or the folder ``RAYGAL_SDSS_SAMPLES`` names):
``metallicity_images``: 400 SDSS gri JPEG cutouts (128x128, each spanning about twice the
galaxy's Petrosian R90) of star-forming galaxies with their MPA-JHU 12+log(O/H) (``oh_p50``),
from Wu & Boada (2019); no photometry. raygal ingests it as the ``metallicity_images`` job of
``raygal.samples`` does (``format='images', target='oh12'``), resampled to ``--image-size``
pixels (64 by default: the encoder's global pooling makes the field of view, not the pixel
count, what matters, and 64 px trains 4x faster than 128 px).

Folds are bench_sdss_cv's: a galaxy's fold is ``floor(5 u)``, u = ``raygal.pipelines.hash_unit``
of its objid XOR ``FOLD_SALT`` (``bench_sdss_cv.fold_of``). For fold k every model trains on the
other four folds (85 % train, 15 % validation for early stopping, by raygal's usual split) and
is scored on fold k:

- ``cfm``: raygal's conditional flow matching posterior with ``inputs='image'``, target oh12,
  sized for ~270 training images (``CFM_SETTINGS``: a ConvEncoder of width 8 with 16 image
  features, a 3 x 64 velocity MLP, AdamW 1e-3, batch 32, weight decay 1e-4, an exponential
  moving average of the weights (``ema_decay`` 0.95) validated and exported, up to 60 epochs
  with patience 10, RK4-20 sampling; cutouts randomly rotated/flipped, the 8 symmetries of the
  square, raygal's default);
- ``nf`` (not run by default; ``--models cfm,nf``): raygal's RealNVP posterior with
  ``inputs='image'``. An image NF works on the features of a trained VAE
  (``TrainConfig.check_trainable``), so each fold first trains a small VAE (``VAE_SETTINGS``)
  on its training images, as bench_image_gain.py does, then the NF (``NF_SETTINGS``: the
  small-data NF of ``raygal.train.sizing`` with oh12 as a plain 1-d target, ``metallicity:
  False``, as every row has oh12). It is skipped by default: on this 2-core machine (shared
  with another benchmark) the VAE fit, the feature extraction and the NF fit took about
  4.5 minutes per fold, over the ~3 minute budget, nearly all of it Ray job start-up, and on
  fold 0's internal validation rows its median was barely better than the mean (RMSE 0.20
  against 0.22 dex: the VAE's unsupervised features carry little of the metallicity);
- ``mean``: the training rows' mean oh12 for every galaxy (RMSE = the fold's spread);
- ``ridge``: ridge regression (numpy, closed form) on the cutouts block-averaged to 16x16x3
  and flattened (768 features, each standardised with the training rows' mean and standard
  deviation), intercept the training mean; alpha chosen per fold by an inner 5-fold CV on the
  training rows over ``RIDGE_ALPHAS`` (10^0 ... 10^5).

The CFM's settings were chosen on fold 0's internal 15 % validation split (42 galaxies of its
training rows), never on a test fold: 32 against 64 px, 16 against 32 image features, learning
rate 1e-3 against 3e-4, with and without the weight average and an auxiliary regression head
(``aux_weight``); 64 px, 16 features, 1e-3 and the average had the lowest validation loss
(0.77 against 0.80-0.88), and every variant's median was within noise of the others there
(RMSE 0.122-0.135 dex; mean 0.218, ridge 0.145). The best validation epoch came at 15-30.

Scores: RMSE of the posterior median of ``--draws`` draws per galaxy (dex; baselines: of their
prediction), R^2, and for the posterior models the 68 % / 95 % central-interval coverage and
the mean width of the 68 % interval (dex). Figures are means over folds with the spread
(standard deviation) over folds. Wu & Boada's CNN, trained on ~100,000 such images, reaches an
RMSE of 0.085 dex on its test set: printed as a published reference, not measured here; with
320 training images nothing comes near it, and what is measured is whether the posterior
beats the mean and the ridge on the same rows and is calibrated.

    python benchmarks/bench_sdss_images.py --out results.json   # 5 folds, CFM + baselines
    python benchmarks/bench_sdss_images.py --models cfm,nf      # with the VAE + NF as well
    python benchmarks/bench_sdss_images.py --quick              # one fold, tiny (the tests)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_sdss_cv import FOLD_SALT, FOLDS, fold_of, samples_folder, score, summarize, \
    write_rows  # noqa: E402

SAMPLE = "metallicity_images"
TARGET = "oh12"
#: Wu & Boada (2019, MNRAS 484, 4683): CNN on ~100,000 SDSS gri cutouts, test RMSE (published).
REFERENCE = {"name": "Wu & Boada (2019) CNN", "rmse": 0.085, "train_images": 100_000,
             "measured": False}
#: Posterior models' training settings, sized for ~270 training images (see the docstring).
CFM_SETTINGS = dict(lr=1e-3, batch_size=32, weight_decay=1e-4, epochs=60, patience=10,
                    ema_decay=0.95,
                    model_config={"encoder_width": 8, "image_features": 16, "hidden": 64,
                                  "layers": 3, "solver": "rk4-20"})
VAE_SETTINGS = dict(lr=1e-3, batch_size=32, epochs=30, patience=6,
                    model_config={"channels": [8, 16, 32], "latent": 8, "fc_hidden": 64})
NF_SETTINGS = dict(lr=1e-3, batch_size=64, weight_decay=1e-4, epochs=100, patience=15,
                   model_config={"coupling_layers": 4, "hidden": 64, "representation": 64,
                                 "rep_layers": 1, "head_layers": 1, "flow_blocks": 1,
                                 "metallicity": False})
#: ridge penalties tried by the inner cross-validation (features standardised, 768 of them)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(0, 5, 11))
RIDGE_SIZE = 16
POSTERIOR_MODELS = ("cfm", "nf")
#: what runs without --models: the NF is too slow here for what it gives (see the docstring)
DEFAULT_MODELS = ("cfm",)
NF_SKIPPED = ("nf skipped (--models cfm,nf runs it): VAE + feature extraction + NF took about "
              "4.5 min per fold on this 2-core machine, and its median barely beat the mean on "
              "fold 0's validation rows")
BASELINES = ("mean", "ridge")


# -- baselines ----------------------------------------------------------------------------------

def pixels(table, size: int = RIDGE_SIZE) -> np.ndarray:
    """[N, 3 * size * size] cutouts block-averaged to size x size (the ridge's features)."""
    from raygal.inputs import as_numpy_batch, cutout_array

    img = cutout_array(as_numpy_batch(table.select(["cutout"]))).astype(np.float64)
    n, c, h, w = img.shape
    if h % size or w % size:
        raise ValueError(f"cutouts of {h}x{w} px do not block-average to {size}x{size}")
    return img.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5)).reshape(n, -1)


def ridge_fit_predict(x_tr, y_tr, x_te, alpha: float) -> np.ndarray:
    """Ridge regression in closed form (dual: n < p), intercept the training mean; features
    standardised with the training rows' statistics."""
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    a, b = (x_tr - mu) / sd, (x_te - mu) / sd
    ym = y_tr.mean()
    coef = np.linalg.solve(a @ a.T + alpha * np.eye(len(a)), y_tr - ym)
    return ym + b @ (a.T @ coef)


def ridge_alpha(x, y, alphas=RIDGE_ALPHAS, folds: int = 5) -> tuple[float, dict]:
    """The alpha of lowest inner-CV RMSE on the training rows (fixed, seeded inner folds)."""
    inner = np.random.default_rng(0).permutation(len(y)) % folds
    rmse = {}
    for alpha in alphas:
        err = np.concatenate([
            ridge_fit_predict(x[inner != j], y[inner != j], x[inner == j], alpha)
            - y[inner == j] for j in range(folds)])
        rmse[alpha] = float(np.sqrt(np.mean(err ** 2)))
    return min(rmse, key=rmse.get), rmse


def run_baselines(train, test) -> dict:
    y_tr = train.column(TARGET).to_numpy(zero_copy_only=False).astype(np.float64)
    y_te = test.column(TARGET).to_numpy(zero_copy_only=False).astype(np.float64)
    out = {"mean": {"targets": {TARGET: _scored(np.full(len(y_te), y_tr.mean()), y_te)}}}
    x_tr, x_te = pixels(train), pixels(test)
    alpha, curve = ridge_alpha(x_tr, y_tr)
    out["ridge"] = {"alpha": alpha, "inner_cv_rmse": curve,
                    "targets": {TARGET: _scored(ridge_fit_predict(x_tr, y_tr, x_te, alpha),
                                                y_te)}}
    return out


def _scored(pred: np.ndarray, truth: np.ndarray) -> dict:
    """bench_sdss_cv's score (n, R^2) plus the RMSE in dex."""
    r = score(pred, truth, TARGET)
    ok = np.isfinite(pred) & np.isfinite(truth)
    r["rmse"] = float(np.sqrt(np.mean((pred[ok] - truth[ok]) ** 2)))
    return r


# -- posterior models ---------------------------------------------------------------------------

def _fit(model: str, train_uri: str, out: str, settings: dict, args, fold: int, **extra):
    from raygal.train import TrainConfig
    from raygal.train.driver import fit

    s = {k: v for k, v in settings.items() if k != "model_config"}
    if args.epochs is not None:                     # --quick / --epochs: every model
        s["epochs"], s["patience"] = args.epochs, min(s["patience"], args.epochs)
    cfg = TrainConfig(model=model, data=train_uri, out=out, inputs="image",
                      targets=() if model == "vae" else (TARGET,), workers=1,
                      split=(0.85, 0.15, 0.0), seed=fold, size=args.size,
                      model_config=dict(settings["model_config"]), **s, **extra)
    return fit(cfg)


def run_model(model: str, train_uri: str, test, fold: int, image_size: int, args, tmp) -> dict:
    from raygal.evaluate.calibration import draw
    from raygal.evaluate.metrics import interval_coverage
    from raygal.models import load_posterior
    from raygal.schema import get_target

    t0 = time.perf_counter()
    out = {}
    if model == "cfm":
        summary = _fit("cfm", train_uri, os.path.join(tmp, f"cfm-{fold}"), CFM_SETTINGS, args,
                       fold)
    else:
        vae_settings = dict(VAE_SETTINGS, model_config={
            **VAE_SETTINGS["model_config"], "image_shape": [3, image_size, image_size]})
        sv = _fit("vae", train_uri, os.path.join(tmp, f"vae-{fold}"), vae_settings, args, fold)
        out["vae"] = {"epochs_run": sv["epochs_run"], "best_val_loss": sv["best_val_loss"],
                      "train_s": time.perf_counter() - t0}
        summary = _fit("nf", train_uri, os.path.join(tmp, f"nf-{fold}"), NF_SETTINGS, args,
                       fold, vae=sv["model_uri"])
    train_s = time.perf_counter() - t0
    post = load_posterior(summary["model_uri"])
    cs = draw(post, test, args.draws, seed=fold, label=f"{model} fold {fold}")
    d = list(post.targets).index(TARGET)
    t = get_target(TARGET)
    med = np.asarray(t.inverse(np.median(cs.samples[:, :, d], axis=1)))
    truth = np.asarray(t.inverse(cs.truth[:, d]))
    r = _scored(med, truth)
    known = np.isfinite(cs.truth[:, d])
    r.update(interval_coverage(cs.samples[known, :, d], cs.truth[known, d]))
    lo, hi = np.percentile(t.inverse(cs.samples[known, :, d]), [16, 84], axis=1)
    r["width68"] = float(np.mean(hi - lo))
    out.update(train_s=train_s, epochs_run=summary["epochs_run"],
               best_val_loss=summary["best_val_loss"], targets={TARGET: r})
    return out


# -- the cross-validation -----------------------------------------------------------------------

def load_sample(tmp: str, image_size: int | None):
    """The ingested sample (cutouts resampled to ``image_size``) and its dataset folder."""
    from raygal.ingest import ingest
    from raygal.shards import read_table

    folder = samples_folder() / SAMPLE
    catalog, cutouts = folder / "catalog.csv", folder / "cutouts"
    if not catalog.exists() or not cutouts.is_dir():
        raise FileNotFoundError(f"SDSS sample {folder} (catalog.csv and cutouts/) not found: "
                                f"set RAYGAL_SDSS_SAMPLES to the folder holding "
                                f"metallicity_images/")
    data = os.path.join(tmp, SAMPLE)
    # as raygal.samples.ingest_sdss_samples ingests it, resampled to image_size
    ingest([str(catalog)], data, format="images", target=TARGET, cutouts=str(cutouts),
           cutout_size=image_size, progress_every_s=None)
    return read_table(data), data


def run_sample(args, tmp: str) -> dict:
    import pyarrow as pa

    from raygal.inputs import as_numpy_batch, cutout_array

    table, data = load_sample(tmp, args.image_size)
    if args.max_rows:
        table = table.slice(0, args.max_rows)
    image_size = int(cutout_array(as_numpy_batch(table.slice(0, 1).select(["cutout"])))
                     .shape[-1])
    folds = fold_of(table.column("objid").to_numpy())
    oh = table.column(TARGET).to_numpy(zero_copy_only=False)
    results = {"rows": table.num_rows, "inputs": "image", "target": TARGET,
               "image_size": image_size, "target_sd": float(np.std(oh)), "folds": {}}
    for k in range(args.folds):
        test = table.filter(pa.array(folds == k))
        train = table.filter(pa.array(folds != k))
        train_uri = write_rows(train, os.path.join(tmp, f"{SAMPLE}-train-{k}"), data)
        fold = {"test_rows": test.num_rows, "train_rows": train.num_rows}
        fold.update(run_baselines(train, test))
        for model in args.models:
            fold[model] = run_model(model, train_uri, test, k, image_size, args, tmp)
        results["folds"][k] = fold
        print(f"[{SAMPLE}] fold {k} ({test.num_rows} held out): " + ", ".join(
            f"{m} RMSE {fold[m]['targets'][TARGET]['rmse']:.4f}"
            for m in (*args.models, *BASELINES)), flush=True)
    results["mean"] = summarize(results["folds"], (*args.models, *BASELINES), (TARGET,))
    return results


def print_table(res: dict, methods) -> None:
    mean = res["mean"]
    n = len(res["folds"])
    print(f"\n{SAMPLE}: {res['rows']} galaxies, {n} fold(s), inputs image only "
          f"({res['image_size']}x{res['image_size']} gri), target 12+log(O/H) (sd "
          f"{res['target_sd']:.3f} dex); mean ± sd over folds\n")
    print("| model | RMSE (dex) | R^2 | 68 % coverage | 95 % coverage | 68 % width (dex) "
          "| train s / fold |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        r = mean[m][TARGET]
        cells = [f"{r['rmse']:.4f} ± {r['rmse_sd']:.4f}", f"{r['r2']:.3f} ± {r['r2_sd']:.3f}"]
        if "coverage68" in r:
            cells += [f"{100 * r['coverage68']:.1f} ± {100 * r['coverage68_sd']:.1f} %",
                      f"{100 * r['coverage95']:.1f} ± {100 * r['coverage95_sd']:.1f} %",
                      f"{r['width68']:.3f}"]
        else:
            cells += ["-", "-", "-"]
        secs = [f[m]["train_s"] for f in res["folds"].values() if "train_s" in f.get(m, {})]
        cells.append(f"{np.mean(secs):.0f}" if secs else "-")
        label = {"cfm": "raygal CFM (image)", "nf": "raygal VAE + NF (image)",
                 "mean": "training mean", "ridge": "ridge, 16x16x3 pixels"}.get(m, m)
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"| {REFERENCE['name']}, ~{REFERENCE['train_images']:,} training images "
          f"(published, not measured) | {REFERENCE['rmse']:.3f} | - | - | - | - | - |")
    alphas = [f["ridge"]["alpha"] for f in res["folds"].values()]
    print(f"\nridge alpha per fold (inner 5-fold CV): {', '.join(f'{a:g}' for a in alphas)}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="posterior models to train (cfm, nf; default cfm); the baselines "
                        "always run")
    p.add_argument("--folds", type=int, default=FOLDS, help="folds to run (of 5)")
    p.add_argument("--image-size", type=int, default=64,
                   help="resample the 128x128 cutouts to this size at ingest (0: keep 128)")
    p.add_argument("--size", choices=["auto", "small", "paper"], default="auto",
                   help="raygal's sizing (image models keep the settings given here)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every model (default: CFM_SETTINGS, VAE_SETTINGS, "
                        "NF_SETTINGS, with early stopping)")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--out", "--json", dest="out", default=None, help="write results JSON here")
    p.add_argument("--quick", action="store_true",
                   help="one fold, one epoch, 20 draws (the tests)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = set(args.models) - set(POSTERIOR_MODELS)
    if unknown:
        p.error(f"unknown model(s) {', '.join(sorted(unknown))}: choose from "
                f"{', '.join(POSTERIOR_MODELS)}")
    args.image_size = args.image_size or None
    if args.quick:
        args.folds, args.epochs, args.draws = 1, 1, 20
    if not (samples_folder() / SAMPLE).exists():
        print(f"SDSS sample {samples_folder() / SAMPLE} not found: set RAYGAL_SDSS_SAMPLES")
        return {}
    from raygal.runtime import init_ray

    init_ray()
    tmp = tempfile.mkdtemp(prefix="raygal-cv-images-")
    results = {"args": vars(args), "fold_salt": FOLD_SALT, "reference": REFERENCE,
               "settings": {"cfm": CFM_SETTINGS, "vae": VAE_SETTINGS, "nf": NF_SETTINGS,
                            "ridge": {"pixels": [3, RIDGE_SIZE, RIDGE_SIZE],
                                      "alphas": RIDGE_ALPHAS, "alpha_by": "inner 5-fold CV"}}}
    print(f"[cv-images] models {', '.join(args.models) or 'none'} + baselines; "
          f"{args.folds} fold(s); epochs "
          f"{args.epochs if args.epochs is not None else 'per model (early stopping)'}",
          flush=True)
    if "nf" not in args.models:
        print(f"[cv-images] {NF_SKIPPED}", flush=True)
        results["nf_skipped"] = NF_SKIPPED
    t0 = time.perf_counter()
    try:
        results[SAMPLE] = run_sample(args, tmp)
        print_table(results[SAMPLE], (*args.models, *BASELINES))
        if "nf" not in args.models:
            print(NF_SKIPPED)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["wall_s"] = time.perf_counter() - t0
    print(f"\nwall time {results['wall_s']:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
