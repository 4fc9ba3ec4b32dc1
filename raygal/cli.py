"""The ``raygal`` command line.

    raygal simulate --n 10000 --image-size 64 --seed 0 --out s3://bucket/mock
    raygal ingest catalog.fits photo.fits --out s3://bucket/sdss
    raygal info s3://bucket/mock
    raygal stats s3://bucket/mock
    raygal demo

Every URI may be a local path or s3://bucket/prefix (endpoint from RAYGAL_S3_ENDPOINT_URL or
AWS_ENDPOINT_URL, credentials from the standard AWS chain).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    from .sim import simulate

    t0 = time.perf_counter()
    m = simulate(args.n, args.out, image_size=args.image_size, seed=args.seed,
                 rows_per_shard=args.rows_per_shard, with_images=not args.no_images)
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
    from .train import load_config

    return load_config(
        args.config, model=args.model, data=args.data, out=args.out, inputs=args.inputs,
        targets=args.targets, vae=args.vae, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, patience=args.patience, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures, seed=args.seed, max_rows=args.max_rows,
        model_config=_parse_sets(args.set) or None)


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

    cfg = _train_config(args)
    space = None
    if args.config:
        import yaml

        from . import storage

        space = (yaml.safe_load(storage.read_bytes(args.config).decode()) or {}).get(
            "search_space")
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

    init_ray(args.ray_address)
    if args.out:
        m = extract_features(args.vae, args.data, args.out, actors=args.actors,
                             num_gpus=args.gpus)
        out = args.out
    else:
        out = ensure_features(args.vae, args.data, actors=args.actors, num_gpus=args.gpus)
        from .shards import read_manifest

        m = read_manifest(out)
    print(f"VAE features of {m['num_rows']} rows written to {out}")
    return 0


def cmd_infer(args) -> int:
    from .infer import export_fits, infer
    from .runtime import init_ray

    init_ray(args.ray_address)
    s = infer(args.model, args.data, args.out, samples=args.samples, solver=args.solver,
              keep_samples=args.keep_samples, actors=args.actors,
              cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
              batch_size=args.batch_size, seed=args.seed, min_actors=args.min_actors,
              max_actors=args.max_actors, block_rows=args.block_rows)
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
    from .infer import export_fits

    outs = export_fits(args.catalog, args.out)
    print(f"{len(outs)} FITS file(s) written under {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate.run import evaluate, format_table

    r = evaluate(args.posteriors, args.data, args.out, model=args.model,
                 compare=args.compare, compare_model=args.compare_model,
                 labels=tuple(args.labels.split(",")), max_rows=args.max_rows,
                 calib_rows=args.calib_rows, samples=args.samples,
                 with_model=not args.no_model, solver=args.solver)
    print(format_table(r))
    print(f"metrics: {args.out}/metrics.json")
    return 0


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
        runs.append({"label": label, "catalog": cat, "model": model or None})
    metrics = {}
    for spec in args.metrics or []:
        label, _, uri = spec.partition("=")
        metrics[label] = storage.read_json(storage.join(uri, "metrics.json"))
    page = make_report(args.out, args.data, runs, vae_uri=args.vae, metrics=metrics or None,
                       max_points=args.max_points)
    print(f"report: {page}")
    return 0


# ----------------------------------------------------------------------------------------------
def default_sdss_samples() -> str | None:
    """The folder of real SDSS samples, if this checkout has one beside it."""
    env = os.environ.get("RAYGAL_SDSS_SAMPLES")
    if env:
        return env
    here = Path(__file__).resolve().parents[1]
    cand = here.parent / "shared" / "data" / "sdss"
    return str(cand) if cand.is_dir() else None


def ingest_sdss_samples(folder: str, out: str) -> dict:
    """Ingest the small real SDSS samples (photo-z tables, line/Dn4000 table, metallicity
    cutouts) found in ``folder`` into datasets under ``out``; returns {name: manifest}."""
    from . import storage
    from .ingest import ingest

    f = Path(folder)
    jobs = {
        "annz": dict(inputs=[f / "photoz" / "annz_sdss_ugriz_train.dat"], format="annz"),
        "skyserver": dict(inputs=[f / "photoz" / "skyserver_dr14_10k.csv"],
                          format="skyserver"),
        "lines": dict(inputs=[f / "lines_dn4000" / "output_results_with_lines_d4000.csv",
                              f / "lines_dn4000" / "av_dn4000_fuv.csv"], format="lines"),
        "metallicity_images": dict(inputs=[f / "metallicity_images" / "catalog.csv"],
                                   format="images", target="oh12",
                                   cutouts=str(f / "metallicity_images" / "cutouts")),
    }
    out_m = {}
    for name, job in jobs.items():
        inputs = [str(p) for p in job.pop("inputs") if p.exists()]
        if not inputs:
            continue
        out_m[name] = ingest(inputs, storage.join(out, name), **job)
    return out_m


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .runtime import init_ray

    print(f"raygal demo: output in {args.out}")
    init_ray(args.ray_address)
    run_demo(args.out, n=args.n, scale=args.scale, image_size=args.image_size, seed=args.seed,
             samples=args.samples, solver=args.solver, sdss_samples=args.sdss_samples,
             workers=args.workers)
    return 0


# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raygal", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray; "
                        "'local' forces a new local one)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write a mock SDSS-like survey with ground truth")
    s.add_argument("--n", type=int, required=True, help="number of galaxies (after the "
                                                        "r < 17.77 flux limit)")
    s.add_argument("--image-size", type=int, default=64, help="cutout size in pixels (64-160)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output URI (path or s3://)")
    s.add_argument("--rows-per-shard", type=int, default=4096)
    s.add_argument("--no-images", action="store_true", help="photometry and targets only")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("ingest", help="SDSS catalogs and cutouts -> sharded Parquet")
    s.add_argument("inputs", nargs="+", help="catalog file(s): FITS (CasJobs), SkyServer CSV, "
                                             "ANNz table, objID,<target> CSV")
    s.add_argument("--out", required=True, help="output URI (path or s3://)")
    s.add_argument("--format", default="auto",
                   choices=["auto", "fits", "skyserver", "annz", "lines", "images"])
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
    s.add_argument("uri")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("stats", help="compute and persist normalisation statistics "
                                     "(one streaming Ray Data pass)")
    s.add_argument("uri")
    s.set_defaults(func=cmd_stats)

    for name, helptext in (("train", "train a model data-parallel with Ray Train"),
                           ("tune", "hyper-parameter sweep with Ray Tune (ASHA)")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("model", choices=["vae", "nf", "cfm", "gaussian"] if name == "train"
                       else ["nf", "cfm", "gaussian"])
        s.add_argument("--data", help="training dataset URI")
        s.add_argument("--out", help="output URI (checkpoints, history, model)")
        s.add_argument("--config", help="YAML config file (options below override it)")
        s.add_argument("--inputs", choices=["image+phot", "phot"])
        s.add_argument("--targets", help="comma-separated targets, e.g. z,log_mstar")
        s.add_argument("--vae", help="trained VAE (model URI) for an image+phot NF")
        s.add_argument("--workers", type=int)
        s.add_argument("--gpus-per-worker", type=float)
        s.add_argument("--cpus-per-worker", type=float)
        s.add_argument("--epochs", type=int)
        s.add_argument("--batch-size", type=int)
        s.add_argument("--lr", type=float)
        s.add_argument("--patience", type=int)
        s.add_argument("--max-failures", type=int)
        s.add_argument("--max-rows", type=int, help="cap the training rows (quick runs)")
        s.add_argument("--seed", type=int)
        s.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="model option, e.g. --set coupling_layers=8 (repeatable)")
        if name == "tune":
            s.add_argument("--trials", type=int, default=8)
            s.add_argument("--max-concurrent-trials", type=int, default=None,
                           help="trials run at once (default: as many as the cluster's CPUs "
                                "allow beside one for data)")
            s.set_defaults(func=cmd_tune)
        else:
            s.set_defaults(func=cmd_train)

    s = sub.add_parser("features", help="frozen-VAE features for the NF (Ray Data job)")
    s.add_argument("--vae", required=True, help="trained VAE model URI")
    s.add_argument("--data", required=True, help="dataset with cutouts")
    s.add_argument("--out", default=None,
                   help="default: <parent>/_features/<dataset name>/<VAE hash>")
    s.add_argument("--actors", type=int, default=1)
    s.add_argument("--gpus", type=float, default=0.0, help="GPUs per actor")
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("infer", help="posterior catalog of a dataset (Ray Data batch "
                                     "inference, restartable)")
    s.add_argument("--model", required=True, help="trained model URI (nf, cfm, gaussian, "
                                                  "ensemble)")
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
    s.add_argument("--cpus-per-actor", type=float, default=None)
    s.add_argument("--gpus-per-actor", type=float, default=0.0)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--fits", default=None, help="also export FITS tables (with units) here")
    s.set_defaults(func=cmd_infer)

    s = sub.add_parser("export", help="posterior catalog -> FITS tables with units")
    s.add_argument("catalog")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("evaluate", help="accuracy, calibration and information gain of a "
                                        "posterior catalog")
    s.add_argument("--posteriors", required=True, help="posterior catalog URI (raygal infer)")
    s.add_argument("--data", required=True, help="the dataset it was made from (with truth)")
    s.add_argument("--out", required=True, help="folder for metrics.json and metrics.md")
    s.add_argument("--model", default=None, help="model for calibration and information "
                                                 "gain (default: the catalog's)")
    s.add_argument("--compare", default=None, help="a second catalog (e.g. photometry-only)")
    s.add_argument("--compare-model", default=None)
    s.add_argument("--labels", default="image,phot", help="names of the two catalogs")
    s.add_argument("--max-rows", type=int, default=200_000)
    s.add_argument("--calib-rows", type=int, default=500)
    s.add_argument("--samples", type=int, default=300)
    s.add_argument("--solver", default=None, help="CFM solver for calibration and densities")
    s.add_argument("--no-model", action="store_true", help="catalog-only metrics")
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
    s.add_argument("--max-points", type=int, default=5000)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("demo", help="end-to-end run on the embedded mock survey")
    s.add_argument("--out", default="demo_out", help="output URI (default ./demo_out)")
    s.add_argument("--n", type=int, default=3000, help="mock galaxies at --scale 1")
    s.add_argument("--scale", type=float, default=1.0,
                   help="multiply the data size and the epochs (e.g. 30 for a real run)")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--samples", type=int, default=500, help="posterior samples per galaxy")
    s.add_argument("--solver", default="rk4-10", help="CFM ODE solver")
    s.add_argument("--workers", type=int, default=2, help="Ray Train workers per model")
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
