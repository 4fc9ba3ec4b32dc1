"""Data access for ``raygal evaluate`` and ``raygal report``: one place that reads datasets and
posterior catalogs, joins a catalog with the truth, subsamples, and fetches full rows.

Everything streams shard by shard (datasets through ``raygal.shards``, catalogs through
``raygal.catalog``), so memory holds only the rows kept:

- ``load_joined``: a catalog joined with its dataset's truth on objid, every row up to
  ``max_rows`` and else a deterministic subsample by a hash of objid (``eval_fraction``);
- ``load_truth``: the report's truth subsample (the ``max_points`` lowest hashes);
- ``read_rows``: the full input rows (cutouts included) of a few objids, for sampling models;
- ``catalog_samples``: the samples a catalog kept (``raygal infer --keep-samples``);
- ``sample_rows``: a bounded uniform sample of some columns of a dataset (optionally of its
  training split), e.g. for the empirical prior and the baseline regressors.

Arrays are float64 with NaN for a missing value; ``objid`` is int64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..catalog import catalog_rows_for_shard, catalog_shards, read_settings
from ..inputs import STATUS_OK, phot_matrix
from ..pipelines import hash_unit, split_of
from ..schema import ID_COLUMN, MAG_COLUMNS, TARGETS
from ..shards import read_manifest, read_schema, shard_uris

#: columns of the evaluated rows that populations and baselines need beside the targets
CONTEXT_COLUMNS = (*MAG_COLUMNS, "log_mstar", "log_sfr", "oh12", "z")


def read_parquet(uri: str, columns=None) -> pa.Table:
    """One Parquet file (local or s3://) as a table."""
    fs, path = storage.arrow_fs(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def iter_batches(uri: str, columns, batch_rows: int = 4096):
    """Record batches of the ``columns`` (those the file has) of one Parquet file."""
    fs, path = storage.arrow_fs(uri)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        cols = [c for c in columns if c in pf.schema_arrow.names]
        yield from pf.iter_batches(batch_size=batch_rows, columns=cols)


def column(table, name: str) -> np.ndarray:
    """Column ``name`` of a table or record batch as float64 (nulls NaN); all NaN if absent."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def objids(table) -> np.ndarray:
    return np.asarray(table.column(ID_COLUMN).to_numpy(zero_copy_only=False), dtype=np.int64)


def catalog_settings(catalog: str) -> dict:
    """The settings ``raygal infer`` wrote beside the catalog (model, targets, samples...)."""
    return read_settings(catalog)


def eval_fraction(data: str, max_rows: int) -> float:
    """The fraction of rows (by ``hash_unit(objid) < fraction``) that ``max_rows`` keeps."""
    n = read_manifest(data)["num_rows"]
    return min(1.0, max_rows / max(n, 1))


def align(ids_from: np.ndarray, ids_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into ``ids_from`` for each of ``ids_to``, found mask [len(ids_to)])."""
    ids_from = np.asarray(ids_from, dtype=np.int64)
    ids_to = np.asarray(ids_to, dtype=np.int64)
    if not len(ids_from):
        return np.zeros(len(ids_to), np.int64), np.zeros(len(ids_to), bool)
    order = np.argsort(ids_from, kind="stable")
    pos = np.clip(np.searchsorted(ids_from[order], ids_to), 0, len(order) - 1)
    idx = order[pos]
    return idx, ids_from[idx] == ids_to


# ----------------------------------------------------------------------------------------------
# A catalog joined with the truth
# ----------------------------------------------------------------------------------------------

def joined_shards(catalog: str, data: str, columns, keep_frac: float):
    """Yield (catalog table, truth table) per dataset shard, aligned on objid and subsampled
    to ``hash_unit(objid) < keep_frac``. The catalog's manifest says which parts were made
    from each input shard (``raygal.catalog.catalog_rows_for_shard``); a missing or
    mismatched part is an error naming both."""
    names = read_schema(data).names          # every shard shares the dataset's schema
    want = [c for c in dict.fromkeys([ID_COLUMN, *columns]) if c in names]
    for duri in shard_uris(data):
        cat = catalog_rows_for_shard(catalog, duri).sort_by(ID_COLUMN)
        truth = read_parquet(duri, want).sort_by(ID_COLUMN)
        if not np.array_equal(objids(cat), objids(truth)):
            raise ValueError(f"{catalog}: the catalog rows made from {duri} do not match its "
                             f"rows (was the catalog made from this dataset?)")
        if keep_frac < 1.0:
            keep = pa.array(hash_unit(objids(truth)) < keep_frac)
            cat, truth = cat.filter(keep), truth.filter(keep)
        yield cat, truth


@dataclass
class Joined:
    """A catalog's columns and the truth of the same rows (dicts of [N] arrays, same order).

    ``cat['status']`` is str; other catalog columns float64 (samples are not loaded).
    ``truth`` holds ``objid`` (int64), the targets and ``CONTEXT_COLUMNS`` the data have."""
    cat: dict
    truth: dict
    settings: dict
    fraction: float

    @property
    def targets(self) -> list[str]:
        return list(self.settings["targets"])

    @property
    def ids(self) -> np.ndarray:
        return self.truth[ID_COLUMN]

    @property
    def ok(self) -> np.ndarray:
        return np.asarray(self.cat["status"]).astype(str) == STATUS_OK


def load_joined(catalog: str, data: str, max_rows: int = 200_000) -> Joined:
    """The catalog joined with the truth of ``data`` (every row up to ``max_rows``, else the
    deterministic subsample by objid hash)."""
    settings = catalog_settings(catalog)
    frac = eval_fraction(data, max_rows)
    cats, truths = [], []
    for c, t in joined_shards(catalog, data, [*settings["targets"], *CONTEXT_COLUMNS], frac):
        cats.append(c)
        truths.append(t)
    cat = pa.concat_tables(cats)
    truth = pa.concat_tables(truths, promote_options="default")
    cd = {k: (cat.column(k).to_numpy(zero_copy_only=False).astype(str) if k == "status"
              else column(cat, k)) for k in cat.column_names if k != "samples"}
    td = {k: column(truth, k) for k in truth.column_names}
    td[ID_COLUMN] = objids(truth)
    return Joined(cd, td, settings, frac)


# ----------------------------------------------------------------------------------------------
# The report's truth subsample
# ----------------------------------------------------------------------------------------------

def report_rows(max_points: int) -> int:
    """Rows to ask ``eval_fraction`` for so that at least ``max_points`` pass the hash cut
    (its count fluctuates); the report then keeps the ``max_points`` lowest hashes."""
    return int(max_points * 1.1) + 20


def load_truth(data: str, max_points: int) -> dict:
    """Truth columns (objid, ``_hash``, ugriz, every target present) of the ``max_points``
    rows with the lowest objid hash, sorted by objid, streamed shard by shard. Adds ``_n``
    (rows) and ``_phot`` ([N, 5] photometric features) when the data have ugriz."""
    frac = eval_fraction(data, report_rows(max_points))
    names = read_schema(data).names
    cols = [c for c in (ID_COLUMN, *MAG_COLUMNS, *TARGETS) if c in names]
    parts: list[dict] = []
    for uri in shard_uris(data):
        for b in iter_batches(uri, cols):
            ids = objids(b)
            h = hash_unit(ids)
            keep = h < frac
            if keep.any():
                parts.append({ID_COLUMN: ids[keep], "_hash": h[keep],
                              **{c: column(b, c)[keep] for c in cols[1:]}})
    if not parts:
        raise ValueError(f"{data}: no rows")
    truth = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = np.argsort(truth["_hash"], kind="stable")[:max_points]
    keep = keep[np.argsort(truth[ID_COLUMN][keep], kind="stable")]
    truth = {k: v[keep] for k, v in truth.items()}
    truth["_n"] = len(keep)
    if all(c in truth for c in MAG_COLUMNS):
        truth["_phot"] = phot_matrix(truth)
    return truth


# ----------------------------------------------------------------------------------------------
# Rows by objid
# ----------------------------------------------------------------------------------------------

def read_rows(data: str, ids) -> pa.Table:
    """The full rows (cutouts included) of ``ids``, streamed from the dataset, sorted by objid;
    stops reading once every id is found."""
    want = np.unique(np.asarray(ids, dtype=np.int64))
    parts, found = [], 0
    names = [c for c in read_schema(data).names if c != "source"]
    for uri in shard_uris(data):
        for b in iter_batches(uri, names, batch_rows=1024):
            keep = np.isin(objids(b), want)
            if keep.any():
                parts.append(pa.Table.from_batches([b]).filter(pa.array(keep)))
                found += int(keep.sum())
        if found >= len(want):
            break
    if not parts:
        raise ValueError(f"{data}: none of the requested objids found")
    return pa.concat_tables(parts).sort_by(ID_COLUMN)


def subset(rows: pa.Table, ids) -> pa.Table:
    """The rows of ``rows`` whose objid is in ``ids``."""
    return rows.filter(pa.array(np.isin(objids(rows), np.asarray(ids, dtype=np.int64))))


def catalog_samples(catalog: str, ids) -> tuple[np.ndarray, np.ndarray] | None:
    """(objid [N], physical samples [N, S, D]) of ``ids`` from a catalog written with
    ``--keep-samples``, or None if it kept no samples."""
    want = np.asarray(ids, dtype=np.int64)
    got_ids, got = [], []
    for uri in catalog_shards(catalog):
        fs, path = storage.arrow_fs(uri)
        if "samples" not in pq.read_schema(path, filesystem=fs).names:
            return None
        t = read_parquet(uri, [ID_COLUMN, "samples"])
        keep = np.isin(objids(t), want)
        if keep.any():
            t = t.filter(pa.array(keep))
            got_ids.append(objids(t))
            got.append(t.column("samples").combine_chunks().to_numpy_ndarray())
        if sum(len(g) for g in got_ids) >= len(want):
            break
    if not got:
        return None
    return np.concatenate(got_ids), np.concatenate(got).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# A bounded uniform sample of a dataset (training rows)
# ----------------------------------------------------------------------------------------------

def _sample_key(ids: np.ndarray) -> np.ndarray:
    # A second hash, independent of the split's (which is hash_unit(objid) itself): the rows
    # kept are a uniform sample of the split, not its lowest-hash corner.
    return hash_unit(~np.asarray(ids, dtype=np.int64))


def sample_rows(data: str, columns, max_rows: int, split: str | None = "train",
                exclude_ids=None) -> tuple[dict, int]:
    """A uniform sample of at most ``max_rows`` rows of ``columns`` (those the data have) of
    ``data``: of its ``split`` (``raygal.pipelines.split_of``) or of every row with
    ``split=None``, leaving out ``exclude_ids``. Streams shard by shard, keeping the
    ``max_rows`` rows of lowest ``_sample_key`` (a bottom-k sample, deterministic).

    Returns ({objid: int64 [n], column: float64 [n]}, rows eligible in the data)."""
    names = read_schema(data).names
    cols = [c for c in dict.fromkeys([ID_COLUMN, *columns]) if c in names]
    exclude = np.unique(np.asarray(exclude_ids if exclude_ids is not None else [], np.int64))
    kept: dict | None = None
    eligible = 0
    for uri in shard_uris(data):
        for b in iter_batches(uri, cols):
            ids = objids(b)
            keep = ~np.isin(ids, exclude)
            if split is not None:
                keep &= split_of(ids) == split
            eligible += int(keep.sum())
            if not keep.any():
                continue
            part = {ID_COLUMN: ids[keep], **{c: column(b, c)[keep] for c in cols[1:]}}
            if kept is not None:
                part = {k: np.concatenate([kept[k], part[k]]) for k in part}
            if len(part[ID_COLUMN]) > max_rows:
                best = np.argsort(_sample_key(part[ID_COLUMN]), kind="stable")[:max_rows]
                part = {k: v[np.sort(best)] for k, v in part.items()}
            kept = part
    if kept is None:
        kept = {ID_COLUMN: np.zeros(0, np.int64), **{c: np.zeros(0) for c in cols[1:]}}
    return kept, eligible
