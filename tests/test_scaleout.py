"""Inference that scales out, and outputs any Parquet tool opens: blocks spread over an
autoscaling actor pool, per-batch progress, workers writing their own parts on local disk and
on the local S3 server, a failed object-storage read named with its URI and finished by a
re-run, objid/ra/dec carried to the catalog, sidecars that pandas, pyarrow.dataset and DuckDB
skip, folders of the earlier layout still read, and the write lease."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _integrity_helpers import (assert_unique_complete, catalog_table, dataset_and_model,
                                make_dataset, make_model)

from raygal import pipelines, storage
from raygal.infer import (PART_META_KEY, catalog_parts, catalog_rows_for_shard, catalog_shards,
                          infer, plan_blocks, read_settings)
from raygal.lease import LOCK_FILE, Lease, OutputBusy
from raygal.shards import fingerprint, read_manifest, read_rows, read_table, shard_uris

# The S3 server (session-wide) starts before this module's Ray, so Ray's workers share its
# throw-away credentials as a cluster's nodes share theirs.
pytestmark = [pytest.mark.timeout(420), pytest.mark.usefixtures("s3_server")]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A one-shard dataset of 240 mock galaxies and a photometry model."""
    return dataset_and_model(tmp_path_factory.mktemp("scaleout"), n=240, seed=21,
                             rows_per_shard=240)


# -- blocks and the actor pool ----------------------------------------------------------------

def test_plan_cuts_shards_into_near_equal_blocks():
    m = {"shards": [{"name": "a", "num_rows": 1000, "sha256": "x"},
                    {"name": "b", "num_rows": 30, "sha256": "y"}]}
    blocks = plan_blocks(m, 300)
    assert [b.rows for b in blocks] == [250, 250, 250, 250, 30]
    assert [b.offset for b in blocks[:4]] == [0, 250, 500, 750]
    assert [b.name for b in blocks] == ["part-00000-0000.parquet", "part-00000-0001.parquet",
                                        "part-00000-0002.parquet", "part-00000-0003.parquet",
                                        "part-00001-0000.parquet"]
    assert sum(b.rows for b in blocks) == 1030


def test_one_shard_is_spread_over_every_actor_with_progress(ray_local, small, capfd):
    out = str(small["tmp"] / "spread")
    s = infer(small["model"], small["data"], out, samples=100000, batch_size=10,
              block_rows=40, min_actors=2, max_actors=2, cpus_per_actor=0.9,
              progress_every_s=0.5)
    assert s["complete"] and s["shards"] == 6 and s["input_shards"] == 1
    workers = set()
    for p in catalog_parts(out):
        meta = json.loads(pq.read_schema(p["uri"]).metadata[PART_META_KEY])
        workers.add(meta["worker"])
    assert len(workers) == 2                                   # both actors wrote parts
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("[raygal infer]")]
    assert lines and all("posteriors/s" in ln and "ETA" in ln for ln in lines)
    assert_unique_complete(catalog_table(out), 240)


def test_catalog_carries_objid_ra_dec(ray_local, small):
    out = str(small["tmp"] / "radec")
    infer(small["model"], small["data"], out, samples=50, block_rows=100)
    cat = catalog_table(out).sort_by("objid")
    truth = read_table(small["data"], columns=["objid", "ra", "dec"]).sort_by("objid")
    assert cat.column_names[:4] == ["objid", "ra", "dec", "status"]
    for c in ("objid", "ra", "dec"):
        np.testing.assert_array_equal(cat.column(c).to_numpy(), truth.column(c).to_numpy())
    # the catalog rows of one input shard, whatever the number of its parts
    rows = catalog_rows_for_shard(out, shard_uris(small["data"])[0])
    assert rows.num_rows == 240 and len(catalog_parts(out)) == 3


def test_bad_pool_options_fail_first(small, tmp_path):
    with pytest.raises(ValueError, match="--max-actors 1 is below --min-actors 2"):
        infer(small["model"], small["data"], str(tmp_path / "o"), min_actors=2, max_actors=1)
    with pytest.raises(ValueError, match="--block-rows 0"):
        infer(small["model"], small["data"], str(tmp_path / "o"), block_rows=0)
    assert not os.path.exists(tmp_path / "o")


# -- object storage ---------------------------------------------------------------------------

def test_s3_catalog_and_a_failed_read_names_the_uri(ray_local, s3_bucket, tmp_path):
    data, out = f"{s3_bucket}/survey", f"{s3_bucket}/posteriors"
    make_dataset(data, n=180, seed=22, rows_per_shard=60)
    model = make_model(str(tmp_path / "model"), data)
    last = shard_uris(data)[-1]
    saved = storage.read_bytes(last)
    storage.delete(last)                                      # lost after the plan was made
    with pytest.raises((storage.StorageError, FileNotFoundError)) as err:
        infer(model, data, out, samples=50, block_rows=30, actors=1)
    msg = str(err.value)
    assert last in msg and "re-run the same command to finish" in msg
    assert "Traceback" not in msg and "\n" not in msg
    storage.write_bytes(last, saved)                          # the store is back
    s = infer(model, data, out, samples=50, block_rows=30, actors=1)
    assert s["complete"] and s["output_rows"] == 180
    names = sorted(os.path.basename(u) for u in storage.listdir(out, ".parquet"))
    assert names == sorted(p["name"] for p in catalog_parts(out)) and len(names) == 6
    assert_unique_complete(pa.concat_tables(
        [pq.read_table(storage.arrow_fs(u)[1], filesystem=storage.arrow_fs(u)[0])
         for u in catalog_shards(out)]), 180)
    assert not storage.exists(storage.join(out, LOCK_FILE))


def test_fingerprint_is_content_not_place(s3_bucket, tmp_path):
    local, remote = str(tmp_path / "ds"), f"{s3_bucket}/ds"
    make_dataset(local, n=90, seed=23, rows_per_shard=40)
    make_dataset(remote, n=90, seed=23, rows_per_shard=40)
    assert fingerprint(local) == fingerprint(remote)
    make_dataset(local, n=90, seed=23, rows_per_shard=40)     # rewritten, same content
    assert read_manifest(local)["version"] == 2 and fingerprint(local) == fingerprint(remote)
    make_dataset(local, n=90, seed=24, rows_per_shard=40)
    assert fingerprint(local) != fingerprint(remote)
    t = read_rows(shard_uris(remote)[1], 5, 20)
    assert t.equals(read_table(remote).slice(45, 20))


# -- outputs any Parquet tool opens -----------------------------------------------------------

def test_parquet_tools_open_dataset_and_catalog_by_folder(ray_local, small):
    import pandas as pd
    import pyarrow.dataset as pads

    data = small["data"]
    pipelines.stats_for(data)                                   # adds _stats.json
    out = str(small["tmp"] / "tools")
    infer(small["model"], data, out, samples=50, block_rows=80)
    assert {"_manifest.json", "_stats.json"} <= set(os.listdir(data))
    assert {"_infer.json", "_summary.json", "_manifest.json"} <= set(os.listdir(out))
    for folder, n in ((data, 240), (out, 240)):
        assert len(pd.read_parquet(folder)) == n
        assert pads.dataset(folder, format="parquet").count_rows() == n
    # astropy reads a catalog part without a warning, the status column at its fixed width
    import warnings

    from astropy.table import Table

    from raygal.infer import STATUS_WIDTH

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        part = Table.read(catalog_parts(out)[0]["uri"])
    assert part["status"].dtype == np.dtype(f"<U{STATUS_WIDTH}") and len(part) > 0
    import duckdb                                             # the test extra has it
    for folder in (data, out):
        got = duckdb.sql(f"select count(*) from read_parquet('{folder}/*.parquet')").fetchall()
        assert got[0][0] == 240


def test_folders_of_the_earlier_layout_are_still_read(tmp_path):
    from raygal.inputs import StatsAccumulator

    make_dataset(str(tmp_path / "new"), n=50, rows_per_shard=50)
    t = read_table(str(tmp_path / "new"))
    old = tmp_path / "old"
    old.mkdir()
    pq.write_table(t, old / "part-00000.parquet")
    (old / "manifest.json").write_text(json.dumps({
        "format": "raygal-dataset", "schema_version": 1, "num_rows": 50, "created": "x",
        "shards": [{"name": "part-00000.parquet", "num_rows": 50}]}))
    stats = StatsAccumulator().update(t).finalize()
    (old / "stats.json").write_text(json.dumps(stats.to_dict()))
    assert read_table(str(old)).equals(t)
    assert fingerprint(str(old)).startswith("legacy-")
    assert pipelines.stats_for(str(old)).to_dict() == stats.to_dict()   # no Ray needed
    cat = tmp_path / "oldcat"
    cat.mkdir()
    pq.write_table(pa.table({"objid": t.column("objid"), "status": ["ok"] * 50}),
                   cat / "part-00000.parquet")
    (cat / "infer.json").write_text(json.dumps({"targets": ["z"], "samples": 10}))
    assert read_settings(str(cat))["samples"] == 10
    assert catalog_shards(str(cat)) == [str(cat / "part-00000.parquet")]
    assert catalog_rows_for_shard(str(cat), str(old / "part-00000.parquet")).num_rows == 50
    # a new version written over the old layout replaces it whole
    make_dataset(str(old), n=30, rows_per_shard=50)
    assert sorted(os.listdir(old)) == ["_manifest.json", "part-00000-v1.parquet", "stats.json"]
    with pytest.raises(ValueError, match="another version"):
        pipelines.load_stats(str(old))


# -- the write lease --------------------------------------------------------------------------

def test_lease_is_exclusive_and_stale_ones_are_taken_over(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    with Lease(out, "job one"):
        with pytest.raises(OutputBusy, match=r"out is being written by another job \(job one"):
            Lease(out, "job two").acquire()
    assert not os.path.exists(os.path.join(out, LOCK_FILE))
    # a holder that died without releasing (pid gone) or whose lease expired
    lock = os.path.join(out, LOCK_FILE)
    import socket

    for rec in ({"host": socket.gethostname(), "pid": 2**22 + 12345, "expires": 1e12},
                {"host": "elsewhere", "pid": 1, "expires": time.time() - 1},
                "half-written"):
        with open(lock, "w") as f:
            f.write(rec if isinstance(rec, str) else json.dumps(rec))
        with Lease(out, "job three") as lease:
            assert json.loads(open(lock).read())["token"] == lease.token
    # renewal keeps a long job's lease alive past its first expiry
    monkeypatch.setenv("RAYGAL_LEASE_TTL_S", "0.6")
    with Lease(out, "long job"):
        time.sleep(1.5)
        with pytest.raises(OutputBusy):
            Lease(out, "job four").acquire()


def test_lease_on_s3_uses_a_conditional_put(s3_bucket):
    out = f"{s3_bucket}/out"
    assert storage.create_exclusive(f"{out}/x", b"1")
    assert not storage.create_exclusive(f"{out}/x", b"2")
    assert storage.read_bytes(f"{out}/x") == b"1"
    with Lease(out, "s3 job"):
        with pytest.raises(OutputBusy, match="another job"):
            Lease(out, "other").acquire()
    assert not storage.exists(f"{out}/{LOCK_FILE}")
