"""Frozen-VAE features for the NF stage, computed once by a Ray Data batch job.

The NF trains on ``[mu, sigma]`` of the frozen VAE encoder. Recomputing them every epoch would
run the encoder over every cutout each time; instead this job writes, beside the data (outside
its folder, so the dataset stays one plain Parquet folder), a copy of the catalog without
cutouts and with a ``vae_features`` column ([2 * latent] float32), and the NF trainer reads
that.

    <parent>/_features/<dataset name>/<key>/   a raygal dataset, key = hash of the VAE

Its manifest records the content fingerprint of the dataset it was computed from; features of
an older version of the dataset are recomputed, never used.
"""
from __future__ import annotations

import hashlib
import logging
import posixpath

import numpy as np
import pyarrow as pa

from .. import storage
from ..pipelines import read_dataset
from ..shards import ShardWriter, fingerprint, read_manifest, read_schema
from ..inputs import row_status
from ..schema import CUTOUT_COLUMN

log = logging.getLogger("raygal.train")
FEATURES_COLUMN = "vae_features"
FEATURES_FOLDER = "_features"


def vae_key(vae_uri: str) -> str:
    """A short content hash of the VAE (its description and weights)."""
    h = hashlib.sha1()
    h.update(storage.read_bytes(storage.join(vae_uri, "model.json")))
    h.update(storage.read_bytes(storage.join(vae_uri, "weights.pt")))
    return h.hexdigest()[:12]


def features_uri(vae_uri: str, data_uri: str) -> str:
    """``<parent>/_features/<dataset name>/<VAE key>`` (a dataset at a bucket's root keeps
    them in its own ``_features``, which Parquet readers skip)."""
    loc = storage.parse_uri(data_uri)
    if loc.is_s3 and "/" not in loc.path:
        return storage.join(loc.uri, FEATURES_FOLDER, vae_key(vae_uri))
    parent, name = posixpath.split(loc.uri)
    return storage.join(parent, FEATURES_FOLDER, name, vae_key(vae_uri))


class _Encode:
    """Ray Data actor: loads the VAE once, maps cutouts to features."""

    def __init__(self, vae_uri: str, stats_dict: dict | None):
        import torch

        from ..inputs import NormStats
        from ..models.vae import load_vae

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.vae = load_vae(vae_uri, map_location=self.device)
        stats = self.vae.stats or (NormStats.from_dict(stats_dict) if stats_dict else None)
        if stats is None or stats.cutout_scale is None:
            raise ValueError(f"{vae_uri}: the VAE carries no cutout normalisation statistics")
        self.stats = stats

    def __call__(self, batch):
        img = batch.pop(CUTOUT_COLUMN)
        n = len(img)
        feats = np.full((n, self.vae.feature_dim), np.nan, np.float32)
        ok = row_status({**batch, CUTOUT_COLUMN: img}, needs_image=True) != "bad_cutout"
        ok &= np.isfinite(img.reshape(n, -1)).all(axis=1)
        if ok.any():
            x = self.torch.from_numpy(self.stats.norm_cutout(img[ok])).to(self.device)
            with self.torch.no_grad():
                feats[ok] = self.vae.features(x).cpu().numpy()
        batch[FEATURES_COLUMN] = feats
        return batch


def extract_features(vae_uri: str, data_uri: str, out_uri: str, batch_size: int = 256,
                     actors: int = 1, num_gpus: float = 0.0, num_cpus: float = 0.5) -> dict:
    """Run the frozen encoder over every row of ``data_uri`` (streamed, on an actor pool) and
    write the catalog with ``vae_features`` instead of cutouts to ``out_uri``. Rows with an
    unusable cutout keep NaN features (and their flags), so every input row is accounted for."""
    import ray.data

    from ..models.vae import load_vae

    latent2 = load_vae(vae_uri).feature_dim
    schema = read_schema(data_uri)
    if CUTOUT_COLUMN not in schema.names:
        raise ValueError(f"{data_uri}: no cutout column to encode")
    out_schema = schema.remove(schema.get_field_index(CUTOUT_COLUMN)).append(
        pa.field(FEATURES_COLUMN, pa.list_(pa.float32(), latent2),
                 metadata={"vae": vae_uri, "description": "[mu, sigma] of the frozen VAE"}))
    ds = read_dataset(data_uri).map_batches(
        _Encode, fn_constructor_args=(vae_uri, None), batch_size=batch_size,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus if not num_gpus else None, num_gpus=num_gpus or None)
    source = read_manifest(data_uri)
    n_in = source["num_rows"]
    with ShardWriter(out_uri, out_schema, objid_origin=source.get("objid_origin", "sdss"),
                     extra={"vae": vae_uri, "vae_key": vae_key(vae_uri),
                            "source_dataset": data_uri,
                            "source_fingerprint": fingerprint(data_uri)}) as w:
        for b in ds.iter_batches(batch_size=4096, batch_format="pyarrow"):
            w.write(_fix_features(b, out_schema, latent2))
    m = read_manifest(out_uri)
    if m["num_rows"] != n_in:
        raise RuntimeError(f"feature extraction wrote {m['num_rows']} rows for {n_in} inputs")
    return m


def _fix_features(table: pa.Table, schema: pa.Schema, width: int) -> pa.Table:
    """Ray hands the features back as a tensor column; store a fixed-size list."""
    col = table.column(FEATURES_COLUMN).combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        arr = np.asarray(col.to_numpy_ndarray() if hasattr(col, "to_numpy_ndarray")
                         else np.stack(col.to_numpy(zero_copy_only=False)), np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), width)
    table = table.set_column(table.schema.get_field_index(FEATURES_COLUMN), FEATURES_COLUMN,
                             col)
    return table.select(schema.names).cast(schema)


def ensure_features(vae_uri: str, data_uri: str, **kwargs) -> str:
    """URI of the features dataset for (VAE, data), extracting it first if absent or if it
    was computed from another version of the dataset's content."""
    out = features_uri(vae_uri, data_uri)
    try:
        made_from = read_manifest(out).get("extra", {}).get("source_fingerprint")
    except FileNotFoundError:
        made_from = None
    else:
        if made_from == fingerprint(data_uri):
            return out
        log.warning("%s: features of another version of %s (content %s, now %s); "
                    "recomputing", out, data_uri, made_from, fingerprint(data_uri))
    extract_features(vae_uri, data_uri, out, **kwargs)
    return out
