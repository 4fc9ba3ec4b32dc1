"""Storage layer and Ray Data pipelines, on a real local Ray and a real S3 server (moto)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raygal import pipelines, storage
from raygal.shards import ShardWriter, read_manifest, read_table, shard_uris
from raygal.inputs import StatsAccumulator
from raygal.schema import Flag, galaxy_schema
from raygal.toy import random_catalog

pytestmark = pytest.mark.timeout(240)

SHAPE = (3, 16, 16)


def write(uri, n=300, rows_per_shard=128, seed=0, shape=SHAPE):
    table = random_catalog(n, shape, seed=seed)
    with ShardWriter(uri, table.schema, rows_per_shard=rows_per_shard) as w:
        w.write(table)
        w.drop("class=STAR", 7)
    return table


# -- storage --------------------------------------------------------------------------------

def test_parse_uri_forms(tmp_path):
    assert storage.parse_uri("s3://b/p/q/").uri == "s3://b/p/q"
    assert storage.parse_uri("s3://b").bucket == "b"
    assert storage.parse_uri(f"file://{tmp_path}").path == str(tmp_path)
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.parse_uri("gs://bucket/x")
    with pytest.raises(ValueError, match="needs a bucket"):
        storage.parse_uri("s3:///x")


def test_shard_writer_manifest_counts(tmp_path):
    table = write(str(tmp_path / "ds"), n=300, rows_per_shard=128)
    m = read_manifest(str(tmp_path / "ds"))
    assert m["num_rows"] == 300
    assert [s["num_rows"] for s in m["shards"]] == [128, 128, 44]
    assert m["dropped"] == {"class=STAR": 7}
    assert m["cutout_shape"] == list(SHAPE)
    back = read_table(str(tmp_path / "ds"))
    assert back.equals(table)


def test_not_a_dataset_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a raygal dataset"):
        read_manifest(str(tmp_path))


def test_s3_round_trip_identical_to_local(tmp_path, s3_bucket):
    local = str(tmp_path / "ds")
    remote = f"{s3_bucket}/surveys/ds"
    write(local)
    write(remote)
    assert read_manifest(remote)["num_rows"] == read_manifest(local)["num_rows"]
    assert read_table(remote).equals(read_table(local))
    assert storage.listdir(remote, ".parquet") == shard_uris(remote)


def test_s3_missing_bucket_is_a_clear_error(s3_server):
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.check_reachable("s3://no-such-bucket-here/x")


def test_s3_wrong_endpoint_is_a_clear_error(s3_server, monkeypatch):
    monkeypatch.setenv("RAYGAL_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(storage.StorageError) as err:
        storage.check_reachable("s3://any-bucket/x")
    assert "127.0.0.1:9" in str(err.value)
    assert "testing-secret" not in str(err.value)


# -- split ----------------------------------------------------------------------------------

def test_split_is_deterministic_disjoint_and_balanced():
    ids = np.arange(20000, dtype=np.int64) * 7919 + 1237648704043942146
    s1, s2 = pipelines.split_of(ids), pipelines.split_of(ids.copy())
    assert (s1 == s2).all()
    frac = {k: float(np.mean(s1 == k)) for k in pipelines.SPLITS}
    assert abs(frac["train"] - 0.8) < 0.015 and abs(frac["val"] - 0.1) < 0.01
    with pytest.raises(ValueError):
        pipelines.split_of(ids, (0.5, 0.5, 0.5))


def test_dihedral_group():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    outs = [pipelines.dihedral(x, k) for k in range(8)]
    flat = {o.tobytes() for o in outs}
    assert len(flat) == 8                        # all 8 symmetries are distinct
    for o in outs:                               # and preserve the pixel values and flux
        assert np.allclose(np.sort(o, axis=None), np.sort(x, axis=None))
    import torch

    for k in range(8):
        assert np.array_equal(pipelines.dihedral(torch.from_numpy(x), k).numpy(), outs[k])


# -- Ray Data -------------------------------------------------------------------------------

def test_stream_local_and_s3_identical(ray_local, tmp_path, s3_bucket):
    local, remote = str(tmp_path / "ds"), f"{s3_bucket}/ds"
    write(local)
    write(remote)
    rows = {}
    for uri in (local, remote):
        ds = pipelines.read_dataset(uri, columns=["objid", "mag_r", "cutout"])
        ids, imgs = [], []
        for b in ds.iter_batches(batch_size=64, batch_format="numpy"):
            assert b["cutout"].shape[1:] == SHAPE and b["cutout"].dtype == np.float32
            ids.append(b["objid"])
            imgs.append(b["cutout"][:, 0, 8, 8])
        order = np.argsort(np.concatenate(ids))
        rows[uri] = (np.concatenate(ids)[order], np.concatenate(imgs)[order])
    assert len(rows[local][0]) == 300
    assert np.array_equal(rows[local][0], rows[remote][0])
    assert np.array_equal(rows[local][1], rows[remote][1])


def test_streaming_stats_match_in_memory(ray_local, tmp_path):
    uri = str(tmp_path / "ds")
    table = write(uri, n=500, rows_per_shard=100)
    stats = pipelines.compute_stats(pipelines.read_dataset(uri))
    ref = StatsAccumulator().update(table).finalize()
    assert stats.n_rows == 500
    np.testing.assert_allclose(stats.phot_mean, ref.phot_mean, rtol=1e-6)
    np.testing.assert_allclose(stats.phot_std, ref.phot_std, rtol=1e-5)
    np.testing.assert_allclose(stats.cutout_scale, ref.cutout_scale, rtol=1e-5)
    for t in ("z", "log_mstar", "flux_halpha"):
        assert stats.target_mean[t] == pytest.approx(ref.target_mean[t], rel=1e-6)
    # persisted beside the data and read back
    pipelines.save_stats(stats, uri)
    assert pipelines.stats_for(uri).to_dict() == stats.to_dict()


def test_ray_split_partitions_every_row(ray_local, tmp_path):
    uri = str(tmp_path / "ds")
    write(uri, n=400)
    parts = pipelines.split(pipelines.read_dataset(uri, columns=["objid"]))
    seen = {k: np.concatenate([b["objid"] for b in v.iter_batches(batch_format="numpy")])
            for k, v in parts.items()}
    allids = np.concatenate(list(seen.values()))
    assert len(allids) == 400 and len(np.unique(allids)) == 400
    for k, ids in seen.items():
        assert (pipelines.split_of(ids) == k).all()


def test_augment_keeps_rows_and_flux(ray_local, tmp_path):
    uri = str(tmp_path / "ds")
    write(uri, n=200)
    ds = pipelines.read_dataset(uri, columns=["objid", "cutout"])
    a = {int(i): img for b in pipelines.augment(ds, seed=1).iter_batches(batch_format="numpy")
         for i, img in zip(b["objid"], b["cutout"])}
    o = {int(i): img for b in ds.iter_batches(batch_format="numpy")
         for i, img in zip(b["objid"], b["cutout"])}
    assert a.keys() == o.keys()
    changed = sum(not np.array_equal(a[i], o[i]) for i in o)
    assert changed > 100                       # ~7/8 of rows get a non-identity symmetry
    for i in o:
        assert np.isclose(a[i].sum(), o[i].sum(), rtol=1e-5)
        assert any(np.array_equal(a[i], pipelines.dihedral(o[i], k)) for k in range(8))


def test_status_counts_flag_bad_rows(ray_local, tmp_path):
    table = random_catalog(100, SHAPE, seed=3)
    mags = table.column("mag_g").to_numpy().copy()
    mags[:5] = np.nan
    img = table.column("cutout").combine_chunks().to_numpy_ndarray().copy()
    img[10:13] = 0.0
    flags = np.zeros(100, np.int32)
    flags[10:13] = int(Flag.CUTOUT_MISSING)
    table = (table.set_column(table.schema.get_field_index("mag_g"), table.schema.field("mag_g"),
                              pa.array(mags))
             .set_column(table.schema.get_field_index("cutout"), table.schema.field("cutout"),
                         pa.FixedShapeTensorArray.from_numpy_ndarray(img))
             .set_column(table.schema.get_field_index("flags"), table.schema.field("flags"),
                         pa.array(flags)))
    uri = str(tmp_path / "ds")
    with ShardWriter(uri, table.schema, rows_per_shard=40) as w:
        w.write(table)
    counts = pipelines.status_counts(pipelines.read_dataset(uri), needs_image=True)
    assert counts == {"ok": 92, "bad_photometry": 5, "missing_cutout": 3}
    assert sum(counts.values()) == 100
    assert pipelines.status_counts(pipelines.read_dataset(uri), needs_image=False) == {
        "ok": 95, "bad_photometry": 5}


def test_missing_column_named(ray_local, tmp_path):
    uri = str(tmp_path / "ds")
    t = random_catalog(20, None).drop_columns(["mag_u"])
    schema = galaxy_schema(None)
    schema = schema.remove(schema.get_field_index("mag_u"))
    with ShardWriter(uri, schema) as w:
        w.write(t)
    with pytest.raises(ValueError, match="missing required column.*mag_u"):
        pipelines.read_dataset(uri)


def test_cutout_shards_are_cut_into_small_row_groups_that_blocks_read_across(tmp_path):
    """A shard of 64x64 cutouts is written in row groups of about ROW_GROUP_BYTES (so an
    inference block reads its own rows, not the whole shard), with the pixel column
    byte-stream split; rows read across group boundaries come back exactly."""
    import pyarrow.parquet as pq

    from raygal.shards import read_rows

    table = random_catalog(600, (3, 64, 64), seed=5)
    uri = str(tmp_path / "ds")
    with ShardWriter(uri, table.schema, rows_per_shard=600) as w:
        w.write(table)
    (shard,) = shard_uris(uri)
    meta = pq.ParquetFile(shard).metadata
    assert meta.num_row_groups == 5 and meta.row_group(0).num_rows == 128
    group = meta.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings
                 for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["cutout.list.element"]
    got = read_rows(shard, 100, 200)                         # groups 0 and 1 (rows 100..299)
    assert got.column("objid").to_pylist() == table.column("objid").to_pylist()[100:300]
    assert np.array_equal(got.column("cutout").combine_chunks().to_numpy_ndarray(),
                          table.column("cutout").combine_chunks().to_numpy_ndarray()[100:300])
    photometry = random_catalog(600, None, seed=5)           # small rows: one group
    with ShardWriter(str(tmp_path / "phot"), photometry.schema, rows_per_shard=600) as w:
        w.write(photometry)
    assert pq.ParquetFile(shard_uris(str(tmp_path / "phot"))[0]).metadata.num_row_groups == 1
