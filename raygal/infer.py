"""Survey-scale batch inference: a posterior catalog from a model and a dataset, with Ray Data.

    summary = infer("s3://b/runs/cfm/model", "s3://b/survey", "s3://b/posteriors/cfm",
                    samples=1000, solver="rk4-10")

The input shards stream through ``map_batches`` on an actor pool (the model is loaded once per
actor; a GPU per actor when asked). The driver routes result rows back to their input shard
and writes ``part-NNNNN.parquet`` under the *same name* as the input shard as soon as all of
that shard's rows are in, so:

- a re-run after a crash skips the finished shards (an output shard whose row count equals
  its input shard's) and does the rest: the catalog is exact, with no duplicates;
- the output has exactly one row per input row, with ``objid`` and ``status`` ('ok', or why
  there is no posterior: bad_photometry, missing_cutout, bad_cutout) and, for each target T,
  ``T_mean``, ``T_std``, ``T_q025``, ``T_q16``, ``T_q50``, ``T_q84``, ``T_q975`` in physical
  units; model extras (``oh12_detect_prob``, ``T_std_aleatoric``/``T_std_epistemic``); and
  with ``keep_samples`` the samples themselves ([n, D] per row).

Beside the shards: ``infer.json`` (model and settings: a re-run with other settings is refused)
and, at the end, ``summary.json`` (rows per status, time, posteriors/s).
"""
from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .shards import read_manifest, read_schema, shard_uris
from .models.posterior import read_model_description
from .schema import CUTOUT_COLUMN, ID_COLUMN, MAG_COLUMNS, cutout_shape_of

log = logging.getLogger("raygal.infer")
SETTINGS_FILE = "infer.json"
SUMMARY_FILE = "summary.json"
PATH_COLUMN = "path"


class PosteriorPredictor:
    """Ray Data actor: loads a Posterior once and summarises batches of galaxies."""

    def __init__(self, model_uri: str, samples: int, solver: str | None, seed: int,
                 keep_samples: bool, threads: int = 1):
        import torch

        from .models import load_posterior

        torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.post = load_posterior(model_uri, map_location=device).to(device)
        if solver:
            set_solver(self.post, solver)
        self.samples, self.seed, self.keep = samples, seed, keep_samples

    def __call__(self, batch: dict) -> dict:
        ids = np.asarray(batch[ID_COLUMN], dtype=np.int64)
        # Seeded by the rows themselves, so a re-run reproduces a shard exactly.
        seed = int((ids.astype(np.uint64).sum() + np.uint64(self.seed)) % np.uint64(2**62))
        summ = self.post.summarize(batch, self.samples, seed=seed, keep_samples=self.keep)
        out = {ID_COLUMN: ids, PATH_COLUMN: np.asarray(batch[PATH_COLUMN])}
        out.update(summ)
        return out


def set_solver(post, solver: str) -> None:
    """Choose the ODE solver of a CFM (or of every CFM member of an ensemble)."""
    members = getattr(post, "members", None)
    targets = list(members) if members is not None else [post]
    done = False
    for m in targets:
        if hasattr(m, "solver"):
            m.solver = solver          # validated by the model (an unknown name raises)
            done = True
    if not done:
        raise ValueError(f"--solver {solver!r}: this model ({post.kind}) has no ODE solver")


def check_compatible(model_uri: str, data_uri: str) -> dict:
    """A clear error if the model is not a raygal model or the data does not fit it."""
    desc = read_model_description(model_uri)
    if desc.get("kind") == "vae":
        raise ValueError(f"{model_uri}: a VAE is not a posterior model; use an nf, cfm, "
                         f"gaussian or ensemble model")
    schema = read_schema(data_uri)
    missing = [c for c in (ID_COLUMN, *MAG_COLUMNS) if c not in schema.names]
    if missing:
        raise ValueError(f"{data_uri}: columns {', '.join(missing)} are missing; the model "
                         f"{model_uri} needs ugriz photometry and objid")
    if desc.get("inputs") == "image+phot":
        if CUTOUT_COLUMN not in schema.names:
            raise ValueError(f"{data_uri}: no cutout column, but {model_uri} is an image model "
                             f"(use a photometry-only model for this catalog)")
        shape = (desc.get("config") or {}).get("image_shape")
        have = cutout_shape_of(schema)
        if shape and tuple(shape) != tuple(have):
            raise ValueError(f"{data_uri}: cutouts are {tuple(have)} but {model_uri} was "
                             f"trained on {tuple(shape)}")
    return desc


def _out_name(uri: str) -> str:
    return os.path.basename(uri)


def _shard_done(out_uri: str, name: str, rows: int) -> bool:
    uri = storage.join(out_uri, name)
    if not storage.exists(uri):
        return False
    fs, path = storage.arrow_fs(uri)
    try:
        return pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows == rows
    except Exception:
        return False  # a damaged leftover: redo it


def _to_table(rows: dict, order: np.ndarray) -> pa.Table:
    cols = {}
    for k, v in rows.items():
        if k == PATH_COLUMN:
            continue
        v = v[order]
        if k == "samples":
            cols[k] = pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.ascontiguousarray(v, dtype=np.float32))
        elif k == "status":
            cols[k] = pa.array(v.astype(str))
        else:
            cols[k] = pa.array(v)
    return pa.table(cols)


def infer(model_uri: str, data_uri: str, out_uri: str, samples: int = 1000,
          solver: str | None = None, keep_samples: bool = False, actors: int | None = None,
          cpus_per_actor: float | None = None, gpus_per_actor: float = 0.0,
          batch_size: int = 256, seed: int = 0, progress_every_s: float = 10.0,
          max_shards: int | None = None) -> dict:
    """Write the posterior catalog of ``data_uri`` under ``out_uri``; returns the summary.

    ``max_shards`` stops after that many newly written shards (for tests of restarts)."""
    import ray
    import ray.data

    desc = check_compatible(model_uri, data_uri)
    manifest = read_manifest(data_uri)
    shards = shard_uris(data_uri)
    rows_of = {_out_name(u): s["num_rows"] for u, s in zip(shards, manifest["shards"])}
    settings = {"model": model_uri, "data": data_uri, "samples": samples, "solver": solver,
                "keep_samples": keep_samples, "seed": seed, "targets": desc["targets"]}
    storage.makedirs(out_uri)
    sfile = storage.join(out_uri, SETTINGS_FILE)
    if storage.exists(sfile):
        old = storage.read_json(sfile)
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise ValueError(f"{out_uri} holds a catalog made with other settings {diff}; "
                             f"use a new output URI")
    else:
        storage.write_json(sfile, settings)

    todo = [u for u in shards if not _shard_done(out_uri, _out_name(u), rows_of[_out_name(u)])]
    skipped = len(shards) - len(todo)
    t0 = time.perf_counter()
    done_rows = 0
    total_rows = sum(rows_of[_out_name(u)] for u in todo)
    written = 0
    t_first, first_rows = None, 0
    if todo:
        total_cpus = ray.cluster_resources().get("CPU", 1.0)
        if cpus_per_actor is None:
            cpus_per_actor = 1.0 if gpus_per_actor or total_cpus > 4 else 0.5
        if actors is None:
            actors = max(1, int((total_cpus - 1) // cpus_per_actor)) if not gpus_per_actor \
                else max(1, int(ray.cluster_resources().get("GPU", 1) // gpus_per_actor))
        fs, _ = storage.arrow_fs(todo[0])
        paths = [storage.arrow_fs(u)[1] for u in todo]
        cols = [c for c in read_schema(data_uri).names if c not in ("source",)]
        ds = ray.data.read_parquet(paths, filesystem=fs, columns=cols, include_paths=True,
                                   override_num_blocks=len(paths))
        ds = ds.map_batches(
            PosteriorPredictor,
            fn_constructor_args=(model_uri, samples, solver, seed, keep_samples,
                                 max(1, int(cpus_per_actor))),
            batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)
        pending: dict[str, list[dict]] = {}
        counts: dict[str, int] = {}
        last = time.perf_counter()
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if t_first is None:
                # Start-up (actors, model loading) ends with the first result; the steady
                # rate counts the rows after it.
                t_first, first_rows = time.perf_counter(), len(b[ID_COLUMN])
            names = np.array([_out_name(p) for p in b[PATH_COLUMN]])
            for name in np.unique(names):
                sel = names == name
                pending.setdefault(name, []).append({k: v[sel] for k, v in b.items()})
                counts[name] = counts.get(name, 0) + int(sel.sum())
                if counts[name] == rows_of[name]:
                    _write_shard(out_uri, name, pending.pop(name))
                    written += 1
                    if max_shards is not None and written >= max_shards:
                        break
                elif counts[name] > rows_of[name]:
                    raise RuntimeError(f"{name}: more result rows than input rows")
            done_rows += len(names)
            if time.perf_counter() - last > progress_every_s:
                last = time.perf_counter()
                rate = done_rows / (last - t0)
                eta = (total_rows - done_rows) / max(rate, 1e-9)
                print(f"[raygal infer] {done_rows}/{total_rows} rows, {rate:.1f} posteriors/s, "
                      f"ETA {eta:.0f} s", file=sys.stderr, flush=True)
            if max_shards is not None and written >= max_shards:
                break
        if max_shards is None and pending:
            raise RuntimeError(f"incomplete shards after inference: {sorted(pending)}")
    t_end = time.perf_counter()
    steady = None
    if t_first is not None and done_rows > first_rows and t_end > t_first:
        steady = (done_rows - first_rows) / (t_end - t_first)
    return _finish(out_uri, shards, rows_of, settings, t_end - t0, done_rows, skipped, written,
                   steady)


def _write_shard(out_uri: str, name: str, parts: list[dict]) -> None:
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(rows[ID_COLUMN], kind="stable")
    table = _to_table(rows, order)
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(storage.join(out_uri, name), buf.getvalue())  # atomic per shard


def _finish(out_uri, shards, rows_of, settings, elapsed, done_rows, skipped, written,
            steady=None) -> dict:
    status: dict[str, int] = {}
    n_out, complete = 0, True
    for u in shards:
        name = _out_name(u)
        ouri = storage.join(out_uri, name)
        if not storage.exists(ouri):
            complete = False
            continue
        fs, path = storage.arrow_fs(ouri)
        t = pq.read_table(path, filesystem=fs, columns=["status"])
        n_out += t.num_rows
        for k, v in zip(*np.unique(t.column("status").to_numpy(zero_copy_only=False),
                                   return_counts=True)):
            status[str(k)] = status.get(str(k), 0) + int(v)
    summary = {"complete": complete, "input_rows": sum(rows_of.values()), "output_rows": n_out,
               "rows_per_status": status, "shards": len(shards), "shards_written": written,
               "shards_skipped": skipped, "elapsed_s": elapsed,
               "posteriors_per_s": done_rows / elapsed if elapsed > 0 else None,
               "steady_posteriors_per_s": steady, **settings}
    if complete and n_out != summary["input_rows"]:
        raise RuntimeError(f"{out_uri}: {n_out} output rows for {summary['input_rows']} inputs")
    storage.write_json(storage.join(out_uri, SUMMARY_FILE), summary)
    return summary


def catalog_shards(uri: str) -> list[str]:
    """The posterior catalog's shard URIs."""
    return storage.listdir(uri, ".parquet")
