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
               cutout_size=args.cutout_size)
    _print_ingest_summary(args.out, m)
    return 0


def _print_ingest_summary(out, m) -> None:
    dropped = ", ".join(f"{k}: {v}" for k, v in sorted(m.get("dropped", {}).items())) or "none"
    flags = ", ".join(f"{k}: {v}" for k, v in sorted(m.get("flag_counts", {}).items())) or "none"
    print(f"{out}: {m['num_rows']} rows in {len(m['shards'])} shard(s); dropped: {dropped}; "
          f"flagged: {flags}")


def cmd_info(args) -> int:
    from .data import dataset_info

    _print_json(dataset_info(args.uri))
    return 0


def cmd_stats(args) -> int:
    from . import data
    from .runtime import init_ray

    init_ray(args.ray_address)
    stats = data.stats_for(args.uri, recompute=True)
    print(f"normalisation statistics of {stats.n_rows} rows written to "
          f"{data.STATS_FILE} in {args.uri}")
    _print_json(stats.to_dict())
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
    from . import data, storage
    from .runtime import init_ray
    from .sim import simulate

    t_start = time.perf_counter()
    out = args.out
    n = int(args.n * args.scale)
    print(f"raygal demo: output in {out}")
    init_ray(args.ray_address)

    mock_uri = storage.join(out, "mock")
    t0 = time.perf_counter()
    m = simulate(n, mock_uri, image_size=args.image_size, seed=args.seed,
                 rows_per_shard=args.rows_per_shard)
    print(f"[1] mock survey: {m['num_rows']} galaxies ({args.image_size}x{args.image_size} gri) "
          f"in {len(m['shards'])} shards, {time.perf_counter() - t0:.1f} s")

    samples = args.sdss_samples or default_sdss_samples()
    if samples and Path(samples).is_dir():
        t0 = time.perf_counter()
        manifests = ingest_sdss_samples(samples, storage.join(out, "sdss"))
        print(f"[2] real SDSS samples from {samples} ({time.perf_counter() - t0:.1f} s):")
        for name, man in manifests.items():
            print("    ", end="")
            _print_ingest_summary(name, man)
    else:
        print("[2] no real SDSS samples found (pass --sdss-samples DIR): skipped")

    t0 = time.perf_counter()
    ds = data.read_dataset(mock_uri)
    stats = data.compute_stats(ds)
    data.save_stats(stats, mock_uri)
    summary = data.summarize_dataset(ds)
    counts = {k: int((data.split_of(
        b["objid"]) == k).sum()) for b in data.read_dataset(
        mock_uri, columns=["objid"]).iter_batches(batch_format="numpy", batch_size=4096)
        for k in data.SPLITS}
    print(f"[3] streamed through Ray Data in {time.perf_counter() - t0:.1f} s: "
          f"{summary['rows']} rows, {summary['ok']} usable; split "
          f"{ {k: v for k, v in counts.items()} }")
    print(f"    {'target':<12} {'coverage':>9} {'median':>10}")
    for t, d in summary["targets"].items():
        med = "-" if d["median"] is None else f"{d['median']:.3f}"
        print(f"    {t:<12} {d['fraction']:>9.1%} {med:>10}")
    print(f"done in {time.perf_counter() - t_start:.1f} s")
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
    s.add_argument("--rows-per-shard", type=int, default=4096)
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("info", help="print a dataset's manifest facts")
    s.add_argument("uri")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("stats", help="compute and persist normalisation statistics "
                                     "(one streaming Ray Data pass)")
    s.add_argument("uri")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("demo", help="end-to-end run on the embedded mock survey")
    s.add_argument("--out", default="demo_out", help="output URI (default ./demo_out)")
    s.add_argument("--n", type=int, default=4000, help="mock galaxies at --scale 1")
    s.add_argument("--scale", type=float, default=1.0, help="multiply the demo's sizes")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rows-per-shard", type=int, default=1024)
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
