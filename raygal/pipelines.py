"""Ray Data pipelines over raygal datasets: stream, validate, normalise, augment, split.

Nothing here materialises a survey: datasets are read shard by shard from any URI (local or
s3://) and every pass (statistics, validation, summaries) is a streaming ``map_batches`` whose
per-block partial results are small and merged on the driver.

>>> ds = read_dataset("s3://bucket/survey")                      # doctest: +SKIP
>>> stats = compute_stats(ds)                  # one streaming pass  # doctest: +SKIP
>>> train, val, test = split(ds).values()      # by a hash of objid  # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np

import logging

from . import storage
from .shards import fingerprint, read_manifest, read_schema, shard_uris
from .inputs import (STATUS_OK, NormStats, StatsAccumulator, as_numpy_batch, batch_size,
                       row_status)
from .schema import CUTOUT_COLUMN, ID_COLUMN, TARGETS, cutout_shape_of, validate_schema

log = logging.getLogger("raygal.pipelines")
STATS_FILE = "_stats.json"
LEGACY_STATS_FILE = "stats.json"
#: Key of the dataset fingerprint inside a statistics file (``NormStats`` ignores it).
FINGERPRINT_KEY = "data_fingerprint"
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def read_dataset(uri: str, columns: list[str] | None = None, require_cutout: bool = False,
                 override_num_blocks: int | None = None):
    """A streaming Ray Dataset over the shards of the raygal dataset at ``uri``.

    Validates the schema first (a clear error naming the dataset and the missing columns).
    Parquet goes through pyarrow's own filesystem, several times faster than fsspec's on S3.
    """
    import ray.data

    schema = read_schema(uri)
    validate_schema(schema, where=uri, require_cutout=require_cutout)
    if columns is not None:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(f"{uri}: dataset lacks column(s) {', '.join(missing)}")
    shards = shard_uris(uri)
    fs, _ = storage.arrow_fs(shards[0])
    paths = [storage.arrow_fs(s)[1] for s in shards]
    kwargs = {}
    if override_num_blocks:
        kwargs["override_num_blocks"] = override_num_blocks
    return ray.data.read_parquet(paths, filesystem=fs, columns=columns, **kwargs)


def dataset_info(uri: str) -> dict:
    """Manifest facts plus the schema's cutout shape, for printing and checks."""
    m = read_manifest(uri)
    schema = read_schema(uri)
    return {"uri": uri, "num_rows": m["num_rows"], "num_shards": len(m["shards"]),
            "version": m.get("version"), "fingerprint": fingerprint(uri),
            "cutout_shape": cutout_shape_of(schema), "columns": schema.names,
            "dropped": m.get("dropped", {}), "duplicate_objids": m.get("duplicate_objids", []),
            "flag_counts": m.get("flag_counts", {}), "sources": m.get("sources", {})}


# ----------------------------------------------------------------------------------------------
# Deterministic split by a hash of objid
# ----------------------------------------------------------------------------------------------

def hash_unit(objid) -> np.ndarray:
    """objid -> a uniform number in [0, 1), stable across runs and machines (splitmix64)."""
    x = np.asarray(objid, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_of(objid, fractions=DEFAULT_FRACTIONS) -> np.ndarray:
    """'train' / 'val' / 'test' for each objid, by ``hash_unit`` and the cumulative fractions."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, not "
                         f"{fractions}")
    u = hash_unit(objid)
    idx = np.searchsorted(np.cumsum(f)[:-1], u, side="right")
    return np.asarray(SPLITS, dtype=object)[idx]


class _SplitFilter:
    def __init__(self, name, fractions):
        self.name, self.fractions = name, fractions

    def __call__(self, batch):
        keep = split_of(batch[ID_COLUMN], self.fractions) == self.name
        return {k: v[keep] for k, v in batch.items()}


def split(ds, fractions=DEFAULT_FRACTIONS) -> dict:
    """{'train': ds, 'val': ds, 'test': ds}: lazy, disjoint, exhaustive, and the same on every
    run because membership depends only on objid."""
    return {name: ds.map_batches(_SplitFilter(name, tuple(fractions)), batch_format="numpy")
            for name in SPLITS}


# ----------------------------------------------------------------------------------------------
# Normalisation statistics in one streaming pass
# ----------------------------------------------------------------------------------------------

class _PartialStats:
    """map_batches callable: one batch -> one row holding its ``StatsAccumulator.state``."""

    def __init__(self, targets, channels):
        self.targets, self.channels = tuple(targets), channels

    def __call__(self, batch):
        state = StatsAccumulator(self.targets).update(batch).state(self.channels)
        return {k: np.asarray(v)[None] for k, v in state.items()}


def compute_stats(ds, targets=tuple(TARGETS), batch_size: int = 1024) -> NormStats:
    """``NormStats`` of a Ray Dataset in one streaming pass (partial sums per batch, merged
    here): no shard is held in memory longer than its batch."""
    schema = ds.schema()
    names = list(schema.names)
    channels = 0
    if CUTOUT_COLUMN in names:
        shape = _tensor_shape(schema, CUTOUT_COLUMN)
        channels = int(shape[0]) if shape else 0
    partial = ds.map_batches(_PartialStats(targets, channels), batch_format="numpy",
                             batch_size=batch_size)
    total = StatsAccumulator(targets)
    for b in partial.iter_batches(batch_size=256, batch_format="numpy"):
        for i in range(len(b["n"])):
            total.merge_state({k: v[i] for k, v in b.items()})
    if total.n == 0:
        raise ValueError("cannot compute normalisation statistics of an empty dataset")
    return total.finalize()


def _tensor_shape(schema, column):
    """Shape of a tensor column in a Ray Dataset schema (pyarrow or Ray's own types)."""
    try:
        t = schema.base_schema.field(column).type
    except Exception:
        t = dict(zip(schema.names, schema.types)).get(column)
    shape = getattr(t, "shape", None)
    return tuple(shape) if shape is not None else None


#: How statistics are computed. 2: the cutout scale counts every finite cutout (version 1
#: only those of rows with photometry: NaN on catalogs of cutouts alone).
STATS_VERSION = 2
STATS_VERSION_KEY = "stats_version"


def save_stats(stats: NormStats, uri: str, data_fingerprint: str | None = None) -> str:
    """Persist statistics beside a dataset (``<uri>/_stats.json``, with the fingerprint of the
    dataset they describe: by default its current one); returns the file's URI."""
    out = storage.join(uri, STATS_FILE)
    d = stats.to_dict()
    d[FINGERPRINT_KEY] = data_fingerprint or fingerprint(uri)
    d[STATS_VERSION_KEY] = STATS_VERSION
    storage.write_json(out, d)
    return out


def load_stats(uri: str, check: bool = True) -> NormStats:
    """The statistics saved beside the dataset at ``uri``; with ``check``, a clear error if
    they were computed for another version of its content (see ``stats_for``)."""
    d, why = _saved_stats(uri)
    if d is None:
        raise FileNotFoundError(f"{storage.join(uri, STATS_FILE)}: no statistics; compute them "
                                f"with 'raygal stats {uri}'")
    if check and why:
        raise ValueError(why)
    return NormStats.from_dict(d)


def _saved_stats(uri: str) -> tuple[dict | None, str | None]:
    """(saved statistics or None, why they are stale or None)."""
    for name in (STATS_FILE, LEGACY_STATS_FILE):
        f = storage.join(uri, name)
        if storage.exists(f):
            d = storage.read_json(f)
            break
    else:
        return None, None
    version = d.get(STATS_VERSION_KEY, 1)
    # version 1 differs from 2 only in the cutout scale: photometry-only statistics stay good
    if version != STATS_VERSION and not (version == 1 and d.get("cutout_scale") is None):
        return d, (f"{f}: statistics computed by an earlier method (version {version}, now "
                   f"{STATS_VERSION}: the cutout scale counts rows without photometry too)")
    current = fingerprint(uri)
    saved = d.get(FINGERPRINT_KEY)
    if saved == current:
        return d, None
    if saved is None and current.startswith("legacy-"):
        return d, None          # both from before fingerprints: nothing to compare
    return d, (f"{f}: statistics of another version of the dataset (made from content "
               f"{saved or 'unknown'}, the dataset is now {current})")


def stats_for(uri: str, recompute: bool = False, ds=None, label: str | None = None
              ) -> NormStats:
    """Statistics of the dataset at ``uri``, computed once and then read from disk.

    Saved statistics are used only if they were computed from the dataset's current content
    (same fingerprint); stale ones (the folder was re-ingested or re-simulated since) are
    recomputed, and the log says so. With ``label`` (e.g. ``"[nf]"``) a line on stdout says
    which of the two happens, before a pass over the data starts."""
    if not recompute:
        d, why = _saved_stats(uri)
        if d is not None and why is None:
            if label:
                print(f"{label} normalisation statistics of {uri}: the saved ones (same "
                      f"content)", flush=True)
            return NormStats.from_dict(d)
        if why:
            log.warning("%s; recomputing", why)
    if label:
        print(f"{label} normalisation statistics of {uri}: one streaming pass over the data "
              f"(saved beside it, reused while the data are unchanged)...", flush=True)
    fp = fingerprint(uri)
    stats = compute_stats(ds if ds is not None else read_dataset(uri))
    save_stats(stats, uri, data_fingerprint=fp)
    return stats


# ----------------------------------------------------------------------------------------------
# Validation and augmentation
# ----------------------------------------------------------------------------------------------

class _Status:
    def __init__(self, needs_image):
        self.needs_image = needs_image

    def __call__(self, batch):
        batch = dict(batch)
        batch["status"] = row_status(batch, self.needs_image).astype(str)
        return batch


def with_status(ds, needs_image: bool):
    """Add each row's input status ('ok' or why a model cannot use it)."""
    return ds.map_batches(_Status(needs_image), batch_format="numpy")


def status_counts(ds, needs_image: bool) -> dict[str, int]:
    """{status: rows} over the whole dataset, streamed."""
    def count(batch):
        s = row_status(batch, needs_image).astype(str)
        names, counts = np.unique(s, return_counts=True)
        return {"status": names, "count": counts}

    out: dict[str, int] = {}
    for b in ds.map_batches(count, batch_format="numpy").iter_batches(batch_format="numpy"):
        for k, v in zip(b["status"], b["count"]):
            out[str(k)] = out.get(str(k), 0) + int(v)
    return out


def dihedral(x, k: int):
    """The k-th (0..7) symmetry of the square applied to the last two axes of ``x`` (numpy or
    torch): k % 4 quarter turns, then a left-right flip when k >= 4. Galaxy images have no
    preferred orientation, so these 8 are free augmentations."""
    if hasattr(x, "rot90"):  # torch
        y = x.rot90(k % 4, dims=(-2, -1))
        return y.flip(-1) if k >= 4 else y
    y = np.rot90(x, k % 4, axes=(-2, -1))
    return np.flip(y, axis=-1) if k >= 4 else y


def random_dihedral(images, rng: np.random.Generator):
    """Apply an independent random one of the 8 symmetries to each image of [B, C, H, W]."""
    ks = rng.integers(0, 8, size=len(images))
    out = images.clone() if hasattr(images, "clone") else images.copy()
    for k in range(1, 8):
        idx = np.flatnonzero(ks == k)
        if len(idx):
            out[idx] = dihedral(images[idx], k)
    return out


class _Augment:
    def __init__(self, seed, column):
        self.seed, self.column = seed, column

    def __call__(self, batch):
        if self.column not in batch:
            return batch
        if self.seed is None:
            rng = np.random.default_rng()
        else:
            # Seeded by the batch's ids, so a re-run augments the same rows the same way.
            ids = np.asarray(batch[ID_COLUMN], np.int64)
            rng = np.random.default_rng([self.seed, int(ids.sum() & 0x7FFFFFFF), len(ids)])
        batch = dict(batch)
        batch[self.column] = np.ascontiguousarray(random_dihedral(batch[self.column], rng))
        return batch


def augment(ds, seed: int | None = 0, column: str = CUTOUT_COLUMN):
    """Randomly rotate/flip each image of ``column`` (one of the 8 symmetries of the square).

    With an integer ``seed`` every pass draws the same symmetries for the same rows; with
    ``seed=None`` every pass draws new ones (training: new augmentations each epoch)."""
    return ds.map_batches(_Augment(seed, column), batch_format="numpy")


# ----------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------

def summarize_dataset(ds, needs_image: bool | None = None) -> dict:
    """Streamed facts about a dataset: rows, per-status counts, per-target coverage and
    medians (approximate: from a bounded reservoir), for printing."""
    names = list(ds.schema().names)
    if needs_image is None:
        needs_image = CUTOUT_COLUMN in names
    targets = [t for t in TARGETS if t in names]

    def part(batch):
        b = as_numpy_batch(batch)
        n = batch_size(b)
        s = row_status(b, needs_image).astype(str)
        row = {"n": np.array([n]), "ok": np.array([int((s == STATUS_OK).sum())])}
        for t in targets:
            v = np.asarray(b[t], np.float64)
            fin = np.isfinite(v)
            row[f"{t}__n"] = np.array([int(fin.sum())])
            row[f"{t}__med"] = np.array([np.median(v[fin]) if fin.any() else np.nan])
        return row

    tot = {"rows": 0, "ok": 0, "targets": {t: {"n": 0, "medians": []} for t in targets}}
    for b in ds.map_batches(part, batch_format="numpy").iter_batches(batch_format="numpy"):
        tot["rows"] += int(b["n"].sum())
        tot["ok"] += int(b["ok"].sum())
        for t in targets:
            tot["targets"][t]["n"] += int(b[f"{t}__n"].sum())
            tot["targets"][t]["medians"] += [float(x) for x in b[f"{t}__med"] if np.isfinite(x)]
    for t, d in tot["targets"].items():
        meds = d.pop("medians")
        d["median"] = float(np.median(meds)) if meds else None
        d["fraction"] = d["n"] / tot["rows"] if tot["rows"] else 0.0
    return tot


def write_split(uri: str, name: str, out_uri: str, fractions=DEFAULT_FRACTIONS,
                rows_per_shard: int | None = None, require_targets=()) -> dict:
    """Write one split ('train', 'val' or 'test') of the dataset at ``uri`` as a dataset of
    its own (streamed shard by shard, no Ray needed); returns its manifest. Used to run
    inference and evaluation on held-out galaxies only. ``require_targets`` keeps only rows
    where those targets are known (e.g. 'oh12': the star-forming galaxies whose metallicity
    is measurable); the rows left out are counted in the manifest's ``dropped``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .shards import ShardWriter

    if name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {name!r}")
    m = read_manifest(uri)
    schema = read_schema(uri)
    per = rows_per_shard or max(s["num_rows"] for s in m["shards"])
    with ShardWriter(out_uri, schema, rows_per_shard=per,
                     objid_origin=m.get("objid_origin", "sdss"),
                     extra={"split_of": uri, "split": name, "source_fingerprint": fingerprint(uri),
                            "fractions": list(fractions)}) as w:
        for s in shard_uris(uri):
            fs, path = storage.arrow_fs(s)
            t = pq.read_table(path, filesystem=fs)
            keep = split_of(t.column(ID_COLUMN).to_numpy(), fractions) == name
            for target in require_targets:
                known = t.column(target).is_valid().to_numpy(zero_copy_only=False)
                w.drop(f"{target} unknown", int((keep & ~known).sum()))
                keep &= known
            w.write(t.filter(pa.array(keep)))
    return read_manifest(out_uri)
