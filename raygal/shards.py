"""Sharded Parquet datasets with a manifest.

A raygal dataset is a folder (local or s3://) of ``part-NNNNN.parquet`` shards that all share
one galaxy schema (``raygal.schema``), plus ``manifest.json``::

    {
      "format": "raygal-dataset", "schema_version": 1,
      "num_rows": 12345, "shards": [{"name": "part-00000.parquet", "num_rows": 4096}, ...],
      "cutout_shape": [3, 64, 64] | null, "pixel_scale_arcsec": 0.396 | null,
      "sources": {"<source>": rows},
      "dropped": {"<reason>": count},      # rows not written, and why (e.g. stars, quasars)
      "flag_counts": {"<FLAG>": count},    # rows kept with a flag
      "objid_origin": "sdss" | "plate_mjd_fiber" | "row_index" | "simulated",
      "extra": {...}                       # writer-specific facts (simulation settings, ...)
    }

Shards are written one at a time and the manifest last, so a reader never sees a manifest that
names a missing shard, and no writer holds more than one shard in memory.
"""
from __future__ import annotations

import datetime as _dt
import io
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .schema import FLAGS_COLUMN, SCHEMA_VERSION, Flag, cutout_shape_of, pixel_scale_of

MANIFEST = "manifest.json"
SHARD_FMT = "part-{:05d}.parquet"


class ShardWriter:
    """Write record batches of one schema as Parquet shards of ``rows_per_shard`` rows.

    >>> w = ShardWriter(out_uri, schema)                 # doctest: +SKIP
    >>> w.write(table); w.drop("star", 12); w.close()    # doctest: +SKIP
    """

    def __init__(self, out_uri: str, schema: pa.Schema, rows_per_shard: int = 4096,
                 objid_origin: str = "sdss", extra: dict | None = None,
                 compression: str = "zstd"):
        if rows_per_shard < 1:
            raise ValueError("rows_per_shard must be >= 1")
        self.out_uri = out_uri
        self.schema = schema
        self.rows_per_shard = int(rows_per_shard)
        self.objid_origin = objid_origin
        self.extra = dict(extra or {})
        self.compression = compression
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._shards: list[dict] = []
        self._dropped: Counter = Counter()
        self._flags: Counter = Counter()
        self._sources: Counter = Counter()
        self._closed = False
        storage.makedirs(out_uri)

    # -- writing ---------------------------------------------------------------------------
    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if data.num_rows == 0:
            return
        data = data.select(self.schema.names).cast(self.schema)
        self._count(data)
        self._pending.append(data)
        self._pending_rows += data.num_rows
        while self._pending_rows >= self.rows_per_shard:
            table = pa.concat_tables(self._pending)
            self._flush(table.slice(0, self.rows_per_shard))
            rest = table.slice(self.rows_per_shard)
            self._pending = [rest] if rest.num_rows else []
            self._pending_rows = rest.num_rows

    def drop(self, reason: str, count: int = 1) -> None:
        """Record ``count`` input rows that were not written, and why."""
        if count:
            self._dropped[reason] += int(count)

    def _count(self, table: pa.Table) -> None:
        flags = table.column(FLAGS_COLUMN).to_numpy(zero_copy_only=False)
        for f in Flag:
            n = int(np.count_nonzero(flags & int(f)))
            if n:
                self._flags[f.name] += n
        if "source" in table.column_names:
            for k, v in Counter(table.column("source").to_pylist()).items():
                self._sources[str(k)] += v

    def _flush(self, table: pa.Table) -> None:
        name = SHARD_FMT.format(len(self._shards))
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=self.compression)
        storage.write_bytes(storage.join(self.out_uri, name), buf.getvalue())
        self._shards.append({"name": name, "num_rows": table.num_rows})

    def close(self) -> dict:
        """Flush the last shard and write the manifest; returns the manifest."""
        if self._closed:
            raise RuntimeError("ShardWriter already closed")
        if self._pending_rows:
            self._flush(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0
        self._closed = True
        manifest = {
            "format": "raygal-dataset",
            "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "num_rows": sum(s["num_rows"] for s in self._shards),
            "shards": self._shards,
            "columns": self.schema.names,
            "cutout_shape": list(cutout_shape_of(self.schema) or []) or None,
            "pixel_scale_arcsec": pixel_scale_of(self.schema),
            "sources": dict(self._sources),
            "dropped": dict(self._dropped),
            "flag_counts": dict(self._flags),
            "objid_origin": self.objid_origin,
            "extra": self.extra,
        }
        storage.write_json(storage.join(self.out_uri, MANIFEST), manifest)
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self._closed:
            self.close()


def read_manifest(uri: str) -> dict:
    """The manifest of the dataset at ``uri``; a clear error if there is none."""
    muri = storage.join(uri, MANIFEST)
    try:
        m = storage.read_json(muri)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{uri}: not a raygal dataset (no {MANIFEST}); create one with "
            f"'raygal ingest' or 'raygal simulate'") from None
    if m.get("format") != "raygal-dataset":
        raise ValueError(f"{muri}: not a raygal dataset manifest")
    if int(m.get("schema_version", -1)) > SCHEMA_VERSION:
        raise ValueError(f"{muri}: schema version {m['schema_version']} is newer than this "
                         f"raygal's ({SCHEMA_VERSION}); upgrade raygal")
    return m


def shard_uris(uri: str) -> list[str]:
    """URIs of the dataset's shards, in manifest order."""
    m = read_manifest(uri)
    return [storage.join(uri, s["name"]) for s in m["shards"]]


def read_schema(uri: str) -> pa.Schema:
    """The Arrow schema of the dataset's first shard (all shards share it)."""
    shards = shard_uris(uri)
    if not shards:
        raise ValueError(f"{uri}: dataset has no shards (empty catalog)")
    fs, path = storage.arrow_fs(shards[0])
    return pq.read_schema(path, filesystem=fs)


def read_table(uri: str, columns: list[str] | None = None, max_rows: int | None = None
               ) -> pa.Table:
    """Read a (small) dataset into one table, shard by shard, stopping after ``max_rows``.

    For tests, reports and small samples only: survey-scale code streams with Ray Data
    (``raygal.pipelines``)."""
    tables, n = [], 0
    for s in shard_uris(uri):
        fs, path = storage.arrow_fs(s)
        t = pq.read_table(path, filesystem=fs, columns=columns)
        tables.append(t)
        n += t.num_rows
        if max_rows is not None and n >= max_rows:
            break
    if not tables:
        raise ValueError(f"{uri}: dataset has no shards (empty catalog)")
    t = pa.concat_tables(tables)
    return t.slice(0, max_rows) if max_rows is not None else t
