"""The layout of a posterior catalog, and reading it.

A catalog folder (``raygal infer --out``) holds Parquet parts (one or more per input shard,
``part-SSSSS-BBBB.parquet``) and sidecar files whose names start with '_' so that Parquet
readers (pandas, pyarrow.dataset, DuckDB) skip them:

    _infer.json      the settings it was made with (model, data, samples, solver, targets,
                     fingerprints); ``infer.json`` in catalogs of earlier versions
    _summary.json    rows per status, rates
    _manifest.json   written last, when every part is published: the parts in input order

This module only reads and names; ``raygal.infer`` writes.
"""
from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage

SETTINGS_FILE = "_infer.json"
SUMMARY_FILE = "_summary.json"
CATALOG_MANIFEST = "_manifest.json"
LEGACY_SETTINGS_FILE = "infer.json"
LEGACY_SUMMARY_FILE = "summary.json"
#: A part's name: input shard index and block within the shard.
PART_FMT = "part-{shard:05d}-{block:04d}.parquet"


def read_settings(catalog_uri: str, missing_ok: bool = False) -> dict | None:
    """The settings a catalog was made with (``_infer.json``, or a legacy ``infer.json``)."""
    for name in (SETTINGS_FILE, LEGACY_SETTINGS_FILE):
        try:
            return storage.read_json(storage.join(catalog_uri, name))
        except FileNotFoundError:
            continue
    if missing_ok:
        return None
    raise FileNotFoundError(f"{catalog_uri}: not a raygal posterior catalog (no "
                            f"{SETTINGS_FILE}); make one with 'raygal infer'")


def catalog_parts(uri: str) -> list[dict]:
    """The parts of a finished catalog: [{'name', 'uri', 'shard', 'offset', 'num_rows'}], in
    input order. A catalog still being written (or from before catalog manifests) has no
    manifest: its Parquet files are listed, each taken to hold the input shard of its name."""
    muri = storage.join(uri, CATALOG_MANIFEST)
    if storage.exists(muri):
        parts = storage.read_json(muri)["parts"]
        return [dict(p, uri=storage.join(uri, p["name"])) for p in parts]
    return [{"name": posixpath.basename(u), "uri": u, "shard": posixpath.basename(u),
             "offset": 0, "num_rows": None} for u in storage.listdir(uri, ".parquet")]


def catalog_shards(uri: str) -> list[str]:
    """The posterior catalog's Parquet files (its parts), in input order."""
    return [p["uri"] for p in catalog_parts(uri)]


def catalog_rows_for_shard(catalog_uri: str, shard_uri: str, columns=None) -> pa.Table:
    """The catalog rows made from one input shard of the dataset (all its parts), for joins
    shard by shard with the truth; a clear error if a part is missing."""
    name = posixpath.basename(shard_uri)
    parts = [p for p in catalog_parts(catalog_uri) if p["shard"] == name]
    if not parts:
        raise FileNotFoundError(f"{catalog_uri}: no catalog part for {shard_uri}; finish the "
                                f"catalog with 'raygal infer' (re-running completes it)")
    tables = []
    for p in parts:
        fs, path = storage.arrow_fs(p["uri"])
        try:
            tables.append(pq.read_table(path, filesystem=fs, columns=columns))
        except FileNotFoundError:
            raise FileNotFoundError(f"{p['uri']}: missing catalog part for {shard_uri}; "
                                    f"finish the catalog with 'raygal infer'") from None
    return pa.concat_tables(tables)
