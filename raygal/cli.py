"""The ``raygal`` command line.

    raygal simulate --n 10000 --image-size 64 --seed 0 --out s3://bucket/mock
    raygal ingest catalog.fits photo.fits --out s3://bucket/sdss
    raygal info s3://bucket/mock
    raygal stats s3://bucket/mock
    raygal demo

Every URI may be a local path or s3://bucket/prefix (endpoint from RAYGAL_S3_ENDPOINT_URL or
AWS_ENDPOINT_URL, credentials from the standard AWS chain). Wherever a trained model is asked
for, a training output folder (``--out`` of ``raygal train``) may be given instead of its
``model/`` folder. Options are checked before Ray starts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import __version__
from .inputs import INPUT_KINDS, parse_inputs
from .models.registry import POSTERIOR_KINDS, TRAINABLE_KINDS

#: The file that makes a folder a saved raygal model (written by Posterior.save / VAE export).
MODEL_FILE = "model.json"


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def resolve_model_uri(uri: str | None) -> str | None:
    """The model folder a user means: ``uri`` itself when it holds a saved model, else
    ``<uri>/model`` when ``uri`` is a training output folder (it has no model.json, its
    ``model/`` has one). Anything else is returned unchanged, for the loader to report."""
    from . import storage

    if not uri or storage.exists(storage.join(uri, MODEL_FILE)):
        return uri
    inner = storage.join(uri, "model")
    return inner if storage.exists(storage.join(inner, MODEL_FILE)) else uri


def _model_arg(uri: str, option: str, kinds: tuple[str, ...] | None = None) -> str:
    """A resolved model URI whose model.json was read and whose kind is one of ``kinds``;
    a ValueError naming ``option`` otherwise (before any work starts)."""
    from .models.posterior import read_model_description

    uri = resolve_model_uri(uri)
    try:
        kind = read_model_description(uri).get("kind")
    except ValueError as exc:
        raise ValueError(f"{option} {exc}") from None
    if kinds and kind not in kinds:
        raise ValueError(f"{option} {uri}: a {kind} model, where {' or '.join(kinds)} is "
                         f"needed")
    return uri


# ----------------------------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    from .sim import simulate

    from .progress import RateReporter

    t0 = time.perf_counter()
    progress = RateReporter("simulate", total=args.n, unit="galaxies")
    m = simulate(args.n, args.out, image_size=args.image_size, seed=args.seed,
                 rows_per_shard=args.rows_per_shard, with_images=not args.no_images,
                 with_latents=args.with_latents,
                 progress=lambda done, n: progress.update(done - progress.done))
    dt = time.perf_counter() - t0
    print(f"simulated {m['num_rows']} galaxies into {len(m['shards'])} shard(s) at {args.out} "
          f"in {dt:.1f} s ({m['num_rows'] / dt:.0f} galaxies/s)")
    return 0


def cmd_ingest(args) -> int:
    from .ingest import ingest

    m = ingest(args.inputs, args.out, format=args.format, cutouts=args.cutouts,
               target=args.target, rows_per_shard=args.rows_per_shard,
               cutout_size=args.cutout_size, on_duplicate=args.on_duplicate,
               allow_missing_columns=args.allow_missing_columns)
    _print_ingest_summary(args.out, m)
    return 0


def _print_ingest_summary(out, m) -> None:
    dropped = ", ".join(f"{k}: {v}" for k, v in sorted(m.get("dropped", {}).items())) or "none"
    flags = ", ".join(f"{k}: {v}" for k, v in sorted(m.get("flag_counts", {}).items())) or "none"
    print(f"{out}: {m['num_rows']} rows in {len(m['shards'])} shard(s); dropped: {dropped}; "
          f"flagged: {flags}")
    d = m.get("extra", {}).get("cutout_shape_decision")
    if d:
        how = ("--cutout-size" if d["by"] == "cutout_size" else
               f"the majority of {d['sampled_files']} sampled files")
        votes = ", ".join(f"{k}: {v}" for k, v in sorted(d["votes"].items()))
        print(f"cutouts: {'x'.join(map(str, d['shape']))} {d['unit']}, by {how} ({votes})")
    if m.get("duplicate_objids"):
        print(f"duplicate objids (first row kept): {m['dropped'].get('duplicate objid', 0)}, "
              f"e.g. {', '.join(map(str, m['duplicate_objids'][:5]))}")


def cmd_info(args) -> int:
    from .pipelines import dataset_info

    _print_json(dataset_info(args.uri))
    return 0


def cmd_stats(args) -> int:
    from . import pipelines
    from .runtime import init_ray

    init_ray(args.ray_address)
    stats = pipelines.stats_for(args.uri, recompute=True)
    print(f"normalisation statistics of {stats.n_rows} rows written to "
          f"{pipelines.STATS_FILE} in {args.uri}")
    _print_json(stats.to_dict())
    return 0


def _parse_sets(items) -> dict:
    """['coupling_layers=8', 'sigma=0.1'] -> {'coupling_layers': 8, 'sigma': 0.1} (YAML
    values)."""
    import yaml

    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--set takes key=value, not {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _train_config(args):
    """The checked TrainConfig of ``raygal train``/``tune``, its VAE found and read."""
    from .train import load_config

    cfg = load_config(
        args.config, model=args.model, data=args.data, out=args.out, inputs=args.inputs,
        targets=args.targets, vae=args.vae, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, patience=args.patience, lr_schedule=args.lr_schedule,
        ema_decay=args.ema_decay,
        workers=args.workers, min_workers=args.min_workers,
        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures, seed=args.seed, max_rows=args.max_rows,
        size=args.size, model_config=_parse_sets(args.set) or None)
    cfg.check_trainable()
    if cfg.vae and cfg.model == "nf" and "image" in parse_inputs(cfg.inputs):
        cfg.vae = _model_arg(cfg.vae, "--vae", kinds=("vae",))
    return cfg


def cmd_train(args) -> int:
    from .runtime import init_ray
    from .train.driver import fit

    cfg = _train_config(args)
    init_ray(args.ray_address)
    t0 = time.perf_counter()
    s = fit(cfg)
    print(f"trained {cfg.model} ({cfg.inputs}; {', '.join(cfg.targets) or 'images'}) on "
          f"{cfg.workers} worker(s) in {time.perf_counter() - t0:.0f} s: {s['epochs_run']} "
          f"epoch(s), best validation loss {s['best_val_loss']:.4f}")
    print(f"model: {s['model_uri']}")
    return 0


def cmd_tune(args) -> int:
    from .runtime import init_ray
    from .tune import run_sweep

    from .tune import load_search_space

    cfg = _train_config(args)
    space = load_search_space(args.config) if args.config else None
    init_ray(args.ray_address)
    s = run_sweep(cfg, args.trials, search_space=space,
                  max_concurrent_trials=args.max_concurrent_trials)
    print(f"{len(s['results'])} trial(s), at most {s['max_concurrent_trials']} at once")
    for r in sorted(s["results"], key=lambda r: (r["best_val_loss"] is None,
                                                  r["best_val_loss"])):
        params = {k: v for k, v in r.items() if k not in (
            "val_loss", "best_val_loss", "epoch", "training_iteration", "checkpoint_path",
            "error")}
        print(f"  best val loss {r['best_val_loss']!s:>22}  epochs {r['training_iteration']}"
              f"  {params}")
    print(f"best model: {s['model_uri']}")
    return 0


def cmd_features(args) -> int:
    from .runtime import init_ray
    from .train.features_job import ensure_features, extract_features

    vae = _model_arg(args.vae, "--vae", kinds=("vae",))
    init_ray(args.ray_address)
    if args.out:
        m = extract_features(vae, args.data, args.out, actors=args.actors,
                             num_gpus=args.gpus)
        out = args.out
    else:
        out = ensure_features(vae, args.data, actors=args.actors, num_gpus=args.gpus)
        from .shards import read_manifest

        m = read_manifest(out)
    print(f"VAE features of {m['num_rows']} rows written to {out}")
    return 0


def cmd_infer(args) -> int:
    from .export import export_fits
    from .infer import infer
    from .runtime import init_ray

    model = _model_arg(args.model, "--model")
    init_ray(args.ray_address)
    s = infer(model, args.data, args.out, samples=args.samples, solver=args.solver,
              keep_samples=args.keep_samples, actors=args.actors,
              cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
              batch_size=args.batch_size, seed=args.seed, min_actors=args.min_actors,
              max_actors=args.max_actors, block_rows=args.block_rows,
              allow_cutout_mismatch=args.allow_cutout_mismatch)
    rate = s["posteriors_per_s"]
    print(f"{s['output_rows']} rows for {s['input_rows']} inputs "
          f"({s['shards_written']} part(s) written, {s['shards_skipped']} already done) in "
          f"{s['elapsed_s']:.1f} s" + (f", {rate:.1f} posteriors/s" if rate else ""))
    print("rows per status: " + ", ".join(f"{k} {v}" for k, v in
                                          sorted(s["rows_per_status"].items())))
    if args.fits:
        outs = export_fits(args.out, args.fits)
        print(f"FITS: {len(outs)} file(s) under {args.fits}")
    return 0


def cmd_export(args) -> int:
    from .export import export_fits

    outs = export_fits(args.catalog, args.out)
    print(f"{len(outs)} FITS file(s) written under {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate.run import evaluate, format_table

    model = _model_arg(args.model, "--model") if args.model else None
    compare_model = _model_arg(args.compare_model, "--compare-model") \
        if args.compare_model else None
    r = evaluate(args.posteriors, args.data, args.out, model=model,
                 compare=args.compare, compare_model=compare_model,
                 labels=tuple(args.labels.split(",")), max_rows=args.max_rows,
                 calib_rows=args.calib_rows, samples=args.samples,
                 with_model=not args.no_model, solver=args.solver,
                 prior_data=args.prior_data, train_rows=args.train_rows,
                 baselines=args.baselines, z_edges=_floats(args.z_bins),
                 mag_edges=_floats(args.mag_bins))
    print(format_table(r))
    print(f"metrics: {args.out}/metrics.json")
    return 0


def _floats(spec: str | None) -> list[float] | None:
    """'0.05,0.1' -> [0.05, 0.1]; None stays None."""
    return None if spec is None else [float(x) for x in spec.split(",") if x.strip()]


def cmd_report(args) -> int:
    from . import storage
    from .evaluate.report import make_report

    runs = []
    for spec in args.run:
        parts = spec.split("=", 1)
        if len(parts) != 2:
            raise ValueError(f"--run takes LABEL=CATALOG[,MODEL], not {spec!r}")
        label, rest = parts
        cat, _, model = rest.partition(",")
        runs.append({"label": label, "catalog": cat,
                     "model": _model_arg(model, f"--run {label}:") if model else None})
    metrics = {}
    for spec in args.metrics or []:
        label, _, uri = spec.partition("=")
        # out_dir: where its calibration samples are, wherever the folder was evaluated
        metrics[label] = storage.read_json(storage.join(uri, "metrics.json")) | {"out_dir": uri}
    vae = _model_arg(args.vae, "--vae", kinds=("vae",)) if args.vae else None
    page = make_report(args.out, args.data, runs, vae_uri=vae, metrics=metrics or None,
                       max_points=args.max_points)
    print(f"report: {page}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .runtime import init_ray

    print(f"raygal demo: output in {args.out}")
    init_ray(args.ray_address)
    run_demo(args.out, n=args.n, scale=args.scale, image_size=args.image_size, seed=args.seed,
             samples=args.samples, solver=args.solver, sdss_samples=args.sdss_samples,
             workers=args.workers, epochs=args.epochs)
    return 0


# ----------------------------------------------------------------------------------------------
def _add_train_options(s, name: str) -> None:
    """The options ``raygal train`` and ``raygal tune`` share (TrainConfig fields)."""
    s.add_argument("model", choices=TRAINABLE_KINDS if name == "train" else POSTERIOR_KINDS,
                   help="what to train: vae (image features for the NF), nf (VAE + RealNVP), "
                        "cfm (conditional flow matching) or gaussian (baseline)"
                        if name == "train" else "the model to sweep")
    s.add_argument("--data", help="training dataset URI (raygal simulate / ingest)")
    s.add_argument("--out", help="output URI (checkpoints, history, model); an existing run "
                                 "there is resumed")
    s.add_argument("--config", help="YAML config file (options below override it; see the "
                                    "README for its keys)")
    s.add_argument("--inputs", choices=INPUT_KINDS,
                   help="what the model sees: image+phot (default), phot (photometry only: no "
                        "cutouts needed), image (cutouts only); '+err' adds the magnitude "
                        "errors, '+z' the redshift (for spectroscopic quantities)")
    s.add_argument("--targets", help="comma-separated targets, e.g. z,log_mstar (default: "
                                     "the paper's set for the model)")
    s.add_argument("--vae", help="trained VAE (its model folder or training output folder) "
                                 "for an image+phot NF: train one with 'raygal train vae'")
    s.add_argument("--workers", type=int, help="Ray Train workers (data-parallel)")
    s.add_argument("--min-workers", type=int,
                   help="elastic training: keep going on as few as this many workers when "
                        "nodes are lost, growing back to --workers as they return (default: "
                        "always --workers)")
    s.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (default 0)")
    s.add_argument("--cpus-per-worker", type=float,
                   help="CPUs per worker (default: leave room for Ray Data's readers)")
    s.add_argument("--epochs", type=int, help="maximum epochs (default 30)")
    s.add_argument("--batch-size", type=int, help="batch size per worker")
    s.add_argument("--lr", type=float, help="learning rate (default: the paper's)")
    s.add_argument("--patience", type=int,
                   help="early stopping: epochs without a better validation loss (default 5)")
    s.add_argument("--lr-schedule", choices=("plateau", "none"),
                   help="plateau (default): halve the learning rate after patience // 2 "
                        "epochs without a better validation loss; none: constant")
    s.add_argument("--ema-decay", type=float,
                   help="validate and export an exponential moving average of the weights "
                        "with this decay per step, e.g. 0.999 (default 0: off)")
    s.add_argument("--max-failures", type=int,
                   help="worker failures to recover from by resuming (default 2)")
    s.add_argument("--max-rows", type=int, help="cap the training rows (quick runs)")
    s.add_argument("--seed", type=int, help="random seed (default 0)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="model option, e.g. --set coupling_layers=8 (repeatable)")
    s.add_argument("--size", choices=("auto", "paper", "small"),
                   help="auto (default): photometry-only models on fewer than 20,000 training "
                        "rows get the small-data architecture and settings; paper: the "
                        "papers' always; options given here are kept either way")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raygal", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"raygal {__version__}",
                   help="print raygal's version and exit")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray; "
                        "'local' forces a new local one)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="write a mock SDSS-like survey with ground truth")
    s.add_argument("--n", type=int, required=True, help="number of galaxies (after the "
                                                        "r < 17.77 flux limit)")
    s.add_argument("--image-size", type=int, default=64, help="cutout size in pixels (64-160)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same survey)")
    s.add_argument("--out", required=True, help="output URI (path or s3://)")
    s.add_argument("--rows-per-shard", type=int, default=4096,
                   help="rows per Parquet shard (default 4096)")
    s.add_argument("--no-images", action="store_true", help="photometry and targets only")
    s.add_argument("--with-latents", action="store_true",
                   help="also write the lat_* columns the images are made from (inclination, "
                        "B/T, sizes, knots, dust lane, seeing; see raygal.sim.latents); never "
                        "model inputs")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("ingest", help="SDSS catalogs and cutouts -> sharded Parquet")
    s.add_argument("inputs", nargs="+", help="catalog file(s): FITS (CasJobs), SkyServer CSV, "
                                             "ANNz table, objID,<target> CSV")
    s.add_argument("--out", required=True, help="output URI (path or s3://)")
    s.add_argument("--format", default="auto",
                   choices=["auto", "fits", "skyserver", "annz", "lines", "images"],
                   help="input format (default: from the file names and contents)")
    s.add_argument("--cutouts", default=None, help="folder of cutouts named <objID>.jpg/.png/"
                                                   ".fits")
    s.add_argument("--target", default=None, help="target name of an objID,<value> CSV "
                                                  "(e.g. oh12)")
    s.add_argument("--cutout-size", type=int, default=None, help="resize cutouts to this size")
    s.add_argument("--rows-per-shard", type=int, default=None,
                   help="rows per Parquet shard (default 4096, or 512 with cutouts: a writer "
                        "holds one shard in memory)")
    s.add_argument("--on-duplicate", choices=["keep-first", "error"], default="keep-first",
                   help="an objid seen twice: keep the first row and count the rest in the "
                        "manifest (default), or refuse the input")
    s.add_argument("--allow-missing-columns", action="store_true",
                   help="accept a table with some ugriz magnitudes (or errors) missing, "
                        "flagging its rows, instead of refusing it")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("info", help="print a dataset's manifest facts")
    s.add_argument("uri", help="dataset URI")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("stats", help="compute and persist normalisation statistics "
                                     "(one streaming Ray Data pass)")
    s.add_argument("uri", help="dataset URI")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("train", help="train a model data-parallel with Ray Train")
    _add_train_options(s, "train")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("tune", help="hyper-parameter sweep with Ray Tune (ASHA)")
    _add_train_options(s, "tune")
    s.add_argument("--trials", type=int, default=8, help="number of trials (default 8)")
    s.add_argument("--max-concurrent-trials", type=int, default=None,
                   help="trials run at once (default: as many as the cluster's CPUs allow "
                        "beside one for data)")
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("features", help="frozen-VAE features for the NF (Ray Data job)")
    s.add_argument("--vae", required=True, help="trained VAE (model folder or training output "
                                                "folder)")
    s.add_argument("--data", required=True, help="dataset with cutouts")
    s.add_argument("--out", default=None,
                   help="default: <parent>/_features/<dataset name>/<VAE hash>")
    s.add_argument("--actors", type=int, default=1, help="actor pool size (default 1)")
    s.add_argument("--gpus", type=float, default=0.0, help="GPUs per actor")
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("infer", help="posterior catalog of a dataset (Ray Data batch "
                                     "inference, restartable)")
    s.add_argument("--model", required=True, help="trained model (nf, cfm, gaussian, "
                                                  "ensemble): its folder or training output "
                                                  "folder")
    s.add_argument("--data", required=True, help="dataset URI")
    s.add_argument("--out", required=True, help="catalog URI; re-running finishes it")
    s.add_argument("--samples", type=int, default=1000, help="posterior samples per galaxy")
    s.add_argument("--solver", default=None, help="CFM ODE solver, e.g. rk4-100 (the paper's), "
                                                  "rk4-10, midpoint-10, euler-20, dopri5")
    s.add_argument("--keep-samples", action="store_true", help="store the samples too")
    s.add_argument("--actors", type=int, default=None,
                   help="fixed actor pool size (sets --min-actors and --max-actors)")
    s.add_argument("--min-actors", type=int, default=None,
                   help="smallest actor pool (default 1)")
    s.add_argument("--max-actors", type=int, default=None,
                   help="largest actor pool (default: no limit; the pool grows with the "
                        "cluster)")
    s.add_argument("--block-rows", type=int, default=None,
                   help="rows per unit of work and catalog part (default 512)")
    s.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs per actor (default 1)")
    s.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor")
    s.add_argument("--batch-size", type=int, default=256, help="galaxies per model call")
    s.add_argument("--seed", type=int, default=0, help="random seed of the samples")
    s.add_argument("--allow-cutout-mismatch", action="store_true",
                   help="run an image model on cutouts whose unit, bands or pixel scale "
                        "differ from its training cutouts (refused by default)")
    s.add_argument("--fits", default=None, help="also export FITS tables (with units) here")
    s.set_defaults(func=cmd_infer)

    s = sub.add_parser("export", help="posterior catalog -> FITS tables with units")
    s.add_argument("catalog", help="posterior catalog URI (raygal infer --out)")
    s.add_argument("--out", required=True, help="folder for the FITS files (one per shard)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("evaluate", help="accuracy, calibration and information gain of a "
                                        "posterior catalog")
    s.add_argument("--posteriors", required=True, help="posterior catalog URI (raygal infer)")
    s.add_argument("--data", required=True, help="the dataset it was made from (with truth)")
    s.add_argument("--out", required=True, help="folder for metrics.json and metrics.md")
    s.add_argument("--model", default=None, help="model for calibration and information "
                                                 "gain (default: the catalog's)")
    s.add_argument("--compare", default=None, help="a second catalog (e.g. photometry-only)")
    s.add_argument("--compare-model", default=None, help="the second catalog's model "
                                                         "(default: its own)")
    s.add_argument("--labels", default="image,phot", help="names of the two catalogs")
    s.add_argument("--max-rows", type=int, default=200_000,
                   help="rows of the catalog to evaluate")
    s.add_argument("--calib-rows", type=int, default=500,
                   help="rows re-sampled for calibration and densities")
    s.add_argument("--samples", type=int, default=300,
                   help="posterior samples per calibration row")
    s.add_argument("--solver", default=None, help="CFM solver for calibration and densities")
    s.add_argument("--no-model", action="store_true", help="catalog-only metrics")
    s.add_argument("--prior-data", default=None,
                   help="dataset whose train split (else all rows) fits the empirical prior and "
                        "the baselines (default: the train split of --data, else evaluated "
                        "rows outside the calibration subset)")
    s.add_argument("--train-rows", type=int, default=20_000,
                   help="at most this many training rows for the prior and the baselines")
    s.add_argument("--baselines", action="store_true",
                   help="also fit a random forest and a kNN regressor on the photometry and "
                        "print their R² and σ_NMAD beside the posterior's")
    s.add_argument("--z-bins", default=None, metavar="E1,E2,...",
                   help="redshift bin edges for the per-population metrics (default quartiles)")
    s.add_argument("--mag-bins", default=None, metavar="E1,E2,...",
                   help="r-magnitude bin edges for the per-population metrics (default "
                        "quartiles)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("report", help="figures and a report page for posterior catalogs")
    s.add_argument("--data", required=True, help="the dataset the catalogs were made from")
    s.add_argument("--out", required=True, help="report folder")
    s.add_argument("--run", action="append", required=True, metavar="LABEL=CATALOG[,MODEL]",
                   help="a catalog to show (repeatable), with its model for corner plots and "
                        "calibration")
    s.add_argument("--vae", default=None, help="VAE model URI for the latent figures")
    s.add_argument("--metrics", action="append", metavar="LABEL=EVAL_DIR",
                   help="an evaluation folder (raygal evaluate --out) to tabulate")
    s.add_argument("--max-points", type=int, default=5000,
                   help="most galaxies drawn per scatter plot")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("demo", help="end-to-end run on the embedded mock survey")
    s.add_argument("--out", default="demo_out", help="output URI (default ./demo_out)")
    s.add_argument("--n", type=int, default=3000, help="mock galaxies at --scale 1")
    s.add_argument("--scale", type=float, default=1.0,
                   help="multiply the data size and the epochs (e.g. 30 for a real run)")
    s.add_argument("--image-size", type=int, default=64, help="cutout size in pixels")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--samples", type=int, default=500, help="posterior samples per galaxy")
    s.add_argument("--solver", default="rk4-10", help="CFM ODE solver")
    s.add_argument("--workers", type=int, default=2, help="Ray Train workers per model")
    s.add_argument("--epochs", type=float, default=1.0,
                   help="multiply every model's epochs alone (e.g. 0.1 for a quick smoke run)")
    s.add_argument("--sdss-samples", default=None,
                   help="folder with the small real SDSS samples (photoz/, lines_dn4000/, "
                        "metallicity_images/); default RAYGAL_SDSS_SAMPLES")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError, KeyError) as exc:
        print(f"raygal {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
