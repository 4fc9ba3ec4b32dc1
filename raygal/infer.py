"""Survey-scale batch inference: a posterior catalog from a model and a dataset, with Ray Data.

    summary = infer("s3://b/runs/cfm/model", "s3://b/survey", "s3://b/posteriors/cfm",
                    samples=1000, solver="rk4-10")

Every check runs on the driver before anything is written: the model loads safely (weights
only) and fits the data, the solver and sample count are valid, and a dry run summarises two
rows. Then the input shards are cut into blocks of at most ``block_rows`` rows (so every actor
of the pool has work, however few the shards), and each block is one unit of work and one
catalog part ``part-SSSSS-BBBB.parquet`` (input shard S, block B). An autoscaling actor pool
(``min_actors`` .. ``max_actors``; the model is loaded once per actor, a GPU per actor when
asked) reads its block straight from the shard, summarises it batch by batch, and writes and
publishes the part itself (atomically: a hidden temporary file and a rename on local disk, one
PUT on S3). The driver only plans the blocks, tracks which parts are done and prints progress
(rows, posteriors/s, ETA) from per-batch counts; no result row passes through it. So:

- progress survives a kill: every finished part is published during the run, and a re-run
  skips the parts that are complete for these settings and this dataset content (their
  Parquet footers record both) and does the rest: the catalog is exact, with no duplicates;
- the output has exactly one row per input row: ``objid``, ``ra``, ``dec``, ``status`` ('ok',
  or why there is no posterior: bad_photometry, missing_cutout, bad_cutout) and, for each target
  T, ``T_mean``, ``T_std``, ``T_q025``, ``T_q16``, ``T_q50``, ``T_q84``, ``T_q975`` in physical
  units; model extras (``oh12_detect_prob``, ``T_std_aleatoric``/``T_std_epistemic``); and
  with ``keep_samples`` the samples themselves ([n, D] per row).

Beside the parts (``_``-prefixed, so Parquet readers skip them): ``_infer.json`` (model, data
and settings, with the content fingerprints of both: a re-run with other settings, another
model or a changed dataset is refused), ``_lock.json`` while a job writes (a second job on the
same output is refused) and, at the end, ``_manifest.json`` (the parts, the input rows each
holds, rows per status) and ``_summary.json`` (rows per status, time, posteriors/s).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .lease import Lease
from .progress import format_rate
from .models.posterior import read_model_description
from .inputs import parse_inputs
from .schema import (CUTOUT_COLUMN, ID_COLUMN, MAG_COLUMNS, cutout_mismatch, cutout_properties,
                     cutout_shape_of)
from .catalog import (CATALOG_MANIFEST, LEGACY_SETTINGS_FILE, LEGACY_SUMMARY_FILE,  # noqa: F401
                      PART_FMT, SETTINGS_FILE, SUMMARY_FILE, catalog_parts, catalog_rows_for_shard,
                      catalog_shards, read_settings)
from .export import annotate_schema, catalog_targets
from .shards import fingerprint, read_manifest, read_rows, read_schema

log = logging.getLogger("raygal.infer")
#: Parquet schema metadata key of a part's provenance (block, input shard hash, settings).
PART_META_KEY = b"raygal.part"
DEFAULT_BLOCK_ROWS = 512
#: Characters of the catalog's ``status`` column for astropy (every status name is shorter).
STATUS_WIDTH = 32
#: Dataset columns the catalog carries through beside the posterior summary.
CARRIED_COLUMNS = (ID_COLUMN, "ra", "dec")
#: Dataset columns a model never reads (left out of the blocks it is given).
UNUSED_COLUMNS = ("source",)


# ----------------------------------------------------------------------------------------------
# The model, loaded and checked
# ----------------------------------------------------------------------------------------------

def set_solver(post, solver: str) -> None:
    """Choose the ODE solver of a CFM (or of every CFM member of an ensemble)."""
    post.set_solver(solver)          # validated by the model (an unknown name raises)


def load_model(model_uri: str, solver: str | None = None, map_location="cpu"):
    """The Posterior at ``model_uri`` with ``solver`` set; a one-line error naming the model
    if it cannot be loaded safely (e.g. a weights file that is not plain tensors) or the
    solver is unknown."""
    from .models import load_posterior

    try:
        post = load_posterior(model_uri, map_location=map_location)
    except (ValueError, FileNotFoundError, storage.StorageError):
        raise
    except Exception as exc:          # torch's UnpicklingError and the like
        raise ValueError(f"{model_uri}: the model cannot be loaded safely "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None
    if solver:
        try:
            set_solver(post, solver)
        except (ValueError, KeyError) as exc:
            msg = _first_line(exc)
            raise ValueError(msg if msg.startswith("--solver") else
                             f"--solver {solver!r}: {msg}") from None
    return post


def check_compatible(model_uri: str, data_uri: str, allow_cutout_mismatch: bool = False
                     ) -> dict:
    """A clear error if the model is not a raygal model or the data does not fit it: missing
    columns, or cutouts of another shape, unit, band set or pixel scale than the model was
    trained on (``allow_cutout_mismatch`` lets a user who knows what they do go on)."""
    desc = read_model_description(model_uri)
    if desc.get("kind") == "vae":
        raise ValueError(f"{model_uri}: a VAE is not a posterior model; use an nf, cfm, "
                         f"gaussian or ensemble model")
    schema = read_schema(data_uri)
    components = parse_inputs(desc.get("inputs", "image+phot"))
    needed = [ID_COLUMN] + (list(MAG_COLUMNS) if "phot" in components else [])
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise ValueError(f"{data_uri}: columns {', '.join(missing)} are missing; the model "
                         f"{model_uri} needs ugriz photometry and objid")
    mismatch = cutout_mismatch((desc.get("config") or {}).get("cutout"),
                               cutout_properties(schema))
    if mismatch and not allow_cutout_mismatch:
        raise ValueError(f"{data_uri}: its cutouts differ from those {model_uri} was trained "
                         f"on: {'; '.join(mismatch)}. A model gives confident nonsense on "
                         f"cutouts of another kind; pass --allow-cutout-mismatch only if you "
                         f"know they are equivalent")
    if "image" in components:
        if CUTOUT_COLUMN not in schema.names:
            raise ValueError(f"{data_uri}: no cutout column, but {model_uri} is an image model "
                             f"(use a photometry-only model for this catalog)")
        shape = (desc.get("config") or {}).get("image_shape")
        have = cutout_shape_of(schema)
        if shape and tuple(shape) != tuple(have):
            raise ValueError(f"{data_uri}: cutouts are {tuple(have)} but {model_uri} was "
                             f"trained on {tuple(shape)}")
    return desc


def _check_options(samples, block_rows, batch_size, min_actors, max_actors) -> None:
    if not isinstance(samples, (int, np.integer)) or samples < 2:
        raise ValueError(f"--samples {samples!r}: at least 2 posterior samples per galaxy are "
                         f"needed (a spread needs two)")
    for name, v in (("--block-rows", block_rows), ("--batch-size", batch_size),
                    ("--min-actors", min_actors)):
        if v is not None and v < 1:
            raise ValueError(f"{name} {v}: must be at least 1")
    if max_actors is not None and max_actors < (min_actors or 1):
        raise ValueError(f"--max-actors {max_actors} is below --min-actors {min_actors or 1}")


def _dry_run(post, data_uri: str, shard: str, n: int, columns: list[str]) -> None:
    """Summarise ``n`` (two) rows on the driver, so that a model that cannot run on this data
    fails here, with its own message, before any output exists."""
    rows = read_rows(storage.join(data_uri, shard), 0, n, columns)
    try:
        post.summarize(rows, 2, seed=0)
    except Exception as exc:
        raise ValueError(f"the model cannot summarise rows of {data_uri} "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None


# ----------------------------------------------------------------------------------------------
# Blocks: units of work and catalog parts
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """``rows`` rows of input shard number ``index`` (file ``shard``, content ``sha256``) from
    row ``offset``: one unit of work, written as catalog part ``name``."""

    index: int
    shard: str
    sha256: str | None
    offset: int
    rows: int
    block: int

    @property
    def name(self) -> str:
        return PART_FMT.format(shard=self.index, block=self.block)

    def same_rows(self, other: dict) -> bool:
        """Does a part's recorded block (``asdict``) cover the same input rows? By content
        where the shard has a hash (a rewritten dataset with the same content keeps its
        parts), else by shard name."""
        key = ("index", "offset", "rows", "block", "sha256" if self.sha256 else "shard")
        mine = asdict(self)
        return all(other.get(k) == mine[k] for k in key)


def plan_blocks(manifest: dict, block_rows: int) -> list[Block]:
    """Cut every shard of a dataset manifest into blocks of at most ``block_rows`` rows, of
    near-equal size (so no block is a small remainder)."""
    out = []
    for i, s in enumerate(manifest["shards"]):
        n = int(s["num_rows"])
        k = max(1, -(-n // block_rows))
        edges = np.linspace(0, n, k + 1).round().astype(int)
        for b in range(k):
            out.append(Block(i, s["name"], s.get("sha256"), int(edges[b]),
                             int(edges[b + 1] - edges[b]), b))
    return out


def _settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _part_meta(block: Block, digest: str, status: dict | None = None,
               worker: str | None = None, node: str | None = None) -> dict:
    return {"block": asdict(block), "settings": digest, "status": status or {},
            "worker": worker, "node": node}


def _read_part_meta(uri: str) -> tuple[int, dict] | None:
    """(rows, provenance) from a part's Parquet footer, or None if it is absent or damaged."""
    fs, path = storage.arrow_fs(uri)
    try:
        md = pq.read_metadata(path, filesystem=fs)
    except FileNotFoundError:
        return None
    except Exception:                 # a damaged leftover: redo it
        return None
    raw = (md.metadata or {}).get(PART_META_KEY)
    return md.num_rows, (json.loads(raw) if raw else {})


def _part_done(out_uri: str, block: Block, digest: str) -> dict | None:
    """The provenance of a finished part for ``block`` under these settings, or None."""
    got = _read_part_meta(storage.join(out_uri, block.name))
    if got is None:
        return None
    rows, meta = got
    if rows != block.rows or meta.get("settings") != digest or \
            not block.same_rows(meta.get("block") or {}):
        return None
    return meta


def _published(out_uri: str, blocks: list[Block], digest: str) -> dict[str, dict]:
    """{part name: provenance} of the ``blocks`` whose parts are published under these
    settings."""
    return {b.name: m for b in blocks if (m := _part_done(out_uri, b, digest))}


# ----------------------------------------------------------------------------------------------
# The actor: one block in, one published part out
# ----------------------------------------------------------------------------------------------

class PartWriter:
    """Ray Data actor: loads the model once; for each block, reads its rows from the shard,
    summarises them ``batch_size`` at a time (reporting each batch to the progress counter),
    and writes the catalog part itself. Returns one small row per block."""

    def __init__(self, model_uri: str, data_uri: str, out_uri: str, settings: dict,
                 columns: list[str], batch_size: int, threads: int = 1, progress=None):
        import torch

        torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.post = load_model(model_uri, settings["solver"], map_location=device).to(device)
        self.data_uri, self.out_uri = data_uri, out_uri
        self.settings, self.digest = settings, _settings_digest(settings)
        self.columns, self.batch_size, self.progress = columns, batch_size, progress
        import ray

        #: the Ray node this actor runs on, recorded in every part it writes
        self.node = ray.get_runtime_context().get_node_id()

    def summarize(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Catalog columns of ``table``'s rows: the carried columns, then the summary."""
        ids = table.column(ID_COLUMN).to_numpy(zero_copy_only=False).astype(np.int64)
        # Seeded by the rows themselves, so a re-run reproduces a part exactly.
        seed = int((ids.astype(np.uint64).sum() + np.uint64(self.settings["seed"]))
                   % np.uint64(2**62))
        out = {c: table.column(c).to_numpy(zero_copy_only=False)
               for c in CARRIED_COLUMNS if c in table.column_names}
        out.update(self.post.summarize(table, self.settings["samples"], seed=seed,
                                       keep_samples=self.settings["keep_samples"]))
        return out

    def __call__(self, batch: dict) -> dict:
        names, status, errors = [], [], []
        for k in range(len(batch["index"])):
            block = Block(**{f: _scalar(batch[f][k]) for f in Block.__dataclass_fields__})
            names.append(block.name)
            try:
                status.append(json.dumps(self.write_block(block)))
                errors.append("")
            except (OSError, ValueError) as exc:
                # The input's own problem (an unreadable shard, a lost object): handed to the
                # driver as data, so it can name it in one line; other blocks go on.
                status.append("{}")
                errors.append(json.dumps([type(exc).__name__, _first_line(exc)]))
        return {"name": np.array(names), "status": np.array(status),
                "error": np.array(errors)}

    def write_block(self, block: Block) -> dict[str, int]:
        rows = read_rows(storage.join(self.data_uri, block.shard), block.offset, block.rows,
                         self.columns)
        parts = []
        for start in range(0, rows.num_rows, self.batch_size):
            parts.append(self.summarize(rows.slice(start, self.batch_size)))
            if self.progress is not None:
                self.progress.add.remote(min(self.batch_size, rows.num_rows - start),
                                         time.time())
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        names, counts = np.unique(cols["status"].astype(str), return_counts=True)
        status = {str(k): int(v) for k, v in zip(names, counts)}
        worker = f"{socket.gethostname()}:{os.getpid()}"
        table = _part_table(cols, _part_meta(block, self.digest, status, worker, self.node))
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        storage.write_bytes(storage.join(self.out_uri, block.name), buf.getvalue())
        return status


def _scalar(v):
    return v.item() if hasattr(v, "item") else v


def _part_table(cols: dict[str, np.ndarray], meta: dict) -> pa.Table:
    """One part's rows, sorted by objid, with its provenance in the schema metadata."""
    order = np.argsort(cols[ID_COLUMN], kind="stable")
    arrays = {}
    for k, v in cols.items():
        v = v[order]
        if k == "samples":
            arrays[k] = pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.ascontiguousarray(v, dtype=np.float32))
        elif k == "status":
            arrays[k] = pa.array(v.astype(str))
        else:
            arrays[k] = pa.array(v)
    table = pa.table(arrays)
    # Units and descriptions in the field metadata, for every Parquet reader.
    table = table.cast(annotate_schema(table.schema, catalog_targets(table.column_names)))
    # astropy's Parquet reader sizes a string column from ``table::len::<name>`` (else it
    # warns and uses the longest string of each part, so parts would read as different dtypes).
    return table.replace_schema_metadata({PART_META_KEY: json.dumps(meta).encode(),
                                          b"table::len::status": str(STATUS_WIDTH).encode()})


class _Progress:
    """Rows summarised so far, counted by the actors batch by batch (a Ray actor), with the
    times the actors finished the first and the last batch."""

    def __init__(self):
        self.rows, self.first_rows = 0, 0
        self.t_first = self.t_last = None

    def add(self, n: int, t: float) -> None:
        if self.t_first is None or t < self.t_first:
            self.t_first, self.first_rows = t, int(n)
        self.t_last = t if self.t_last is None else max(self.t_last, t)
        self.rows += int(n)

    def get(self) -> tuple[int, float | None, int, float | None]:
        return self.rows, self.t_first, self.first_rows, self.t_last


class _ProgressPrinter(threading.Thread):
    """Prints rows done, posteriors/s and ETA from the progress actor every ``every_s``."""

    def __init__(self, progress, total_rows: int, parts_done, every_s: float):
        super().__init__(daemon=True, name="raygal-infer-progress")
        self.progress, self.total, self.parts_done = progress, total_rows, parts_done
        self.every_s, self.t0 = every_s, time.time()
        self.stop_event = threading.Event()

    def run(self) -> None:
        import ray

        while not self.stop_event.wait(self.every_s):
            try:
                rows = ray.get(self.progress.get.remote(), timeout=30)[0]
            except Exception:
                continue
            extra = f"{self.parts_done()} part(s) published"
            print(format_rate("infer", rows, time.time() - self.t0, self.total, "posteriors",
                              extra + ("; actors starting" if rows == 0 else "")),
                  file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

def infer(model_uri: str, data_uri: str, out_uri: str, samples: int = 1000,
          solver: str | None = None, keep_samples: bool = False, actors: int | None = None,
          cpus_per_actor: float | None = None, gpus_per_actor: float = 0.0,
          batch_size: int = 256, seed: int = 0, progress_every_s: float = 10.0,
          min_actors: int | None = None, max_actors: int | None = None,
          block_rows: int | None = None, allow_cutout_mismatch: bool = False) -> dict:
    """Write the posterior catalog of ``data_uri`` under ``out_uri``; returns the summary.

    ``min_actors`` .. ``max_actors`` bound the autoscaling actor pool (default 1 .. no limit:
    it grows with the cluster, never sized from the resources present at submit time);
    ``actors`` fixes both. Each actor takes ``cpus_per_actor`` CPUs (default 1) and
    ``gpus_per_actor`` GPUs. ``block_rows`` (default ``DEFAULT_BLOCK_ROWS``) bounds the
    rows of one unit of work and catalog part; it is part of the settings, so a re-run
    resumes with the same one."""
    if actors is not None:
        min_actors = max_actors = actors
    # One spelling per place, so that a re-run given "./data" continues a catalog of "data".
    model_uri, data_uri, out_uri = (storage.parse_uri(u).uri for u in
                                    (model_uri, data_uri, out_uri))
    block_rows = DEFAULT_BLOCK_ROWS if block_rows is None else block_rows
    _check_options(samples, block_rows, batch_size, min_actors, max_actors)
    from .runtime import require_resources

    require_resources({"CPU": cpus_per_actor or 1.0, "GPU": gpus_per_actor},
                      "an inference actor",
                      hint="lower --gpus-per-actor / --cpus-per-actor (0 GPUs: run on CPUs), "
                           "or add such a node type to the cluster")
    desc = check_compatible(model_uri, data_uri, allow_cutout_mismatch)
    post = load_model(model_uri, solver)
    solver = solver or post.solver          # the settings name the solver really used
    manifest = read_manifest(data_uri)
    columns = [c for c in read_schema(data_uri).names if c not in UNUSED_COLUMNS]
    _dry_run(post, data_uri, manifest["shards"][0]["name"],
             min(2, manifest["shards"][0]["num_rows"]), columns)
    del post
    settings = {"model": model_uri, "model_fingerprint": storage.tree_digest(model_uri),
                "data": data_uri, "data_fingerprint": fingerprint(data_uri),
                "samples": int(samples), "solver": solver, "keep_samples": bool(keep_samples),
                "seed": int(seed), "targets": desc["targets"], "block_rows": int(block_rows)}
    blocks = plan_blocks(manifest, block_rows)
    storage.makedirs(out_uri)
    with Lease(out_uri, "raygal infer"):
        _claim(out_uri, settings)
        digest = _settings_digest(settings)
        done = _published(out_uri, blocks, digest)
        todo = [b for b in blocks if b.name not in done]
        t0 = time.perf_counter()
        steady = None
        left = todo
        for attempt in range(LOST_WORKER_RETRIES + 1):
            if not left:
                break
            try:
                ran, steady = _run_blocks(left, model_uri, data_uri, out_uri, settings,
                                          columns, batch_size=batch_size,
                                          min_actors=min_actors or 1, max_actors=max_actors,
                                          cpus=cpus_per_actor or 1.0, gpus=gpus_per_actor,
                                          every_s=progress_every_s)
                done.update(ran)
                left = []
            except Exception as exc:
                if not _lost_worker(exc) or attempt == LOST_WORKER_RETRIES:
                    raise
                # Parts are published whole under deterministic names: what a lost worker
                # finished is kept, what it was doing is done again, nothing twice.
                done.update(_published(out_uri, left, digest))
                left = [b for b in left if b.name not in done]
                print(f"[raygal infer] a worker was lost ({type(exc).__name__}): "
                      f"{len(blocks) - len(left)} of {len(blocks)} block(s) published, "
                      f"running the other {len(left)} again", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t0
        return _finish(out_uri, blocks, done, settings, elapsed,
                       rows_run=sum(b.rows for b in todo), written=len(todo),
                       steady=steady)


#: times ``infer`` runs the blocks left after a worker (an actor, or its node) is lost
LOST_WORKER_RETRIES = 3


def _lost_worker(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) says a Ray worker or its node went away."""
    import ray.exceptions as rex

    kinds = tuple(k for k in (getattr(rex, n, None) for n in
                              ("ActorDiedError", "ActorUnavailableError", "NodeDiedError",
                               "WorkerCrashedError", "OwnerDiedError")) if k is not None)
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kinds):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _claim(out_uri: str, settings: dict) -> None:
    """Record the settings in a new catalog, or refuse a catalog made otherwise: another
    model, another dataset content, other sampling settings."""
    sfile = storage.join(out_uri, SETTINGS_FILE)
    old = read_settings(out_uri, missing_ok=True)
    if old is None:
        storage.write_json(sfile, settings)
        return
    if old == settings:
        return
    diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
    if "data_fingerprint" in diff and old.get("data") == settings["data"]:
        why = (f"the dataset at {settings['data']} changed since this catalog was started "
               f"(content {old['data_fingerprint']}, now {settings['data_fingerprint']}): its "
               f"parts describe galaxies that may no longer be in it")
    elif "model_fingerprint" in diff and old.get("model") == settings["model"]:
        why = (f"the model at {settings['model']} changed since this catalog was started "
               f"(content {old['model_fingerprint']}, now {settings['model_fingerprint']})")
    else:
        why = f"it was made with other settings {diff}"
    raise ValueError(f"{out_uri} holds a catalog that cannot be continued: {why}; use a new "
                     f"output URI (or delete this one)")


def _run_blocks(todo: list[Block], model_uri, data_uri, out_uri, settings, columns, *,
                batch_size, min_actors, max_actors, cpus, gpus, every_s):
    """Run the blocks on an autoscaling actor pool; returns ({part name: provenance},
    steady posteriors/s after the first batch)."""
    import ray
    import ray.data

    digest = _settings_digest(settings)
    progress = ray.remote(num_cpus=0)(_Progress).remote()
    done: dict[str, dict] = {}
    printer = _ProgressPrinter(progress, sum(b.rows for b in todo), lambda: len(done),
                               every_s)
    printer.start()
    by_name = {b.name: b for b in todo}
    # Two blocks in flight per actor: one running, one queued. Ray Data grows the pool when
    # in-flight tasks per actor exceed 1.75, so one would never let it grow; more would
    # leave blocks queued behind a busy actor while a new one sits idle.
    ds = ray.data.from_items([asdict(b) for b in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        PartWriter,
        fn_constructor_args=(model_uri, data_uri, out_uri, settings, columns, batch_size,
                             max(1, int(cpus)), progress),
        batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors,
                                           max_tasks_in_flight_per_actor=2),
        num_cpus=cpus, num_gpus=gpus or None, **_worker_env())
    errors = []
    try:
        for row in ds.iter_rows():
            name = str(row["name"])
            if row["error"]:
                errors.append(json.loads(str(row["error"])))
                continue
            done[name] = _part_meta(by_name[name], digest, json.loads(str(row["status"])))
    finally:
        printer.stop_event.set()
        rows, t_first, first_rows, t_last = ray.get(progress.get.remote())
        ray.kill(progress)
    if errors:
        raise _input_error(errors, out_uri, len(done), len(todo))
    steady = None        # the rate after start-up: from the first batch done to the last
    if t_first is not None and rows > first_rows and t_last > t_first:
        steady = (rows - first_rows) / (t_last - t_first)
    return done, steady


def _worker_env() -> dict:
    """Ray remote arguments that give the actors the driver's object-store endpoint and
    region (never credentials: workers use their own, e.g. the node's IAM role)."""
    env = storage.forwarded_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


def _input_error(errors: list, out_uri: str, n_done: int, n_todo: int) -> Exception:
    """One error for the blocks whose input could not be read: the first one's message
    (naming its URI), how many failed, and how far the run got."""
    kind, first = errors[0]
    msg = (f"{first} ({len(errors)} block(s) failed; {n_done} of {n_todo} catalog part(s) of "
           f"this run were published in {out_uri}; re-run the same command to finish)")
    if kind == "FileNotFoundError":
        return FileNotFoundError(msg)
    return ValueError(msg) if kind in _VALUE_ERRORS else storage.StorageError(msg)


#: Error types of the input's content (not of its storage), reported as ValueError.
_VALUE_ERRORS = ("ValueError", "IngestError", "ArrowInvalid", "KeyError")


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__


def _finish(out_uri, blocks, done, settings, elapsed, rows_run, written, steady=None) -> dict:
    """Check that every input row has its output row, then publish the catalog manifest and
    the summary."""
    status: dict[str, int] = {}
    for m in done.values():
        for k, v in m.get("status", {}).items():
            status[k] = status.get(k, 0) + int(v)
    missing = [b.name for b in blocks if b.name not in done]
    n_in = sum(b.rows for b in blocks)
    if missing or sum(status.values()) != n_in:     # a bug, never the user's: fail loudly
        raise RuntimeError(f"{out_uri}: {sum(status.values())} output rows for {n_in} inputs "
                           f"(parts missing: {missing[:5]})")
    parts = [{"name": b.name, "shard": b.shard, "offset": b.offset, "num_rows": b.rows,
              "status": done[b.name].get("status", {})} for b in blocks]
    storage.write_json(storage.join(out_uri, CATALOG_MANIFEST), {
        "format": "raygal-catalog", "num_rows": n_in, "parts": parts,
        "data_fingerprint": settings["data_fingerprint"],
        "model_fingerprint": settings["model_fingerprint"]})
    summary = {"complete": True, "input_rows": n_in, "output_rows": n_in,
               "rows_per_status": status, "input_shards": len({b.shard for b in blocks}),
               "shards": len(blocks), "shards_written": written,
               "shards_skipped": len(blocks) - written, "elapsed_s": elapsed,
               "posteriors_per_s": rows_run / elapsed if elapsed > 0 and rows_run else None,
               "steady_posteriors_per_s": steady, **settings}
    storage.write_json(storage.join(out_uri, SUMMARY_FILE), summary)
    return summary
