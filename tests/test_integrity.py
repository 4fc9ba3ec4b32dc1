"""Nothing lost, nothing stale: each behaviour a hostile user can provoke (outputs of another
dataset reused, a failed write over a good one, an odd first cutout, a kill mid-run, two jobs
on one output, bad options, duplicates, missing columns, a malicious weights file) reproduced
with real files, a real local Ray and the local S3 server, and a fault-injection loop that
kills ingest, train and infer at random points."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _ingest_helpers import jpeg_bytes, rgb, write_casjobs_fits, write_skyserver_csv
from _integrity_helpers import (assert_unique_complete, catalog_table, cli, kill, make_dataset,
                                make_model, start, visible_parquet, wait_for)

from raygal import pipelines, storage
from raygal.infer import PART_META_KEY, catalog_parts, infer
from raygal.ingest import IngestError, ingest
from raygal.lease import LOCK_FILE, OutputBusy
from raygal.shards import MANIFEST, DuplicateObjidError, fingerprint, read_manifest, read_table

pytestmark = pytest.mark.timeout(420)


# ----------------------------------------------------------------------------------------------
# 1. statistics of another dataset are never used
# ----------------------------------------------------------------------------------------------

def test_stale_statistics_are_recomputed_not_used(ray_local, tmp_path, caplog):
    from raygal.sim import simulate

    uri = str(tmp_path / "mock")
    simulate(120, uri, seed=1, with_images=False, rows_per_shard=50)
    assert pipelines.stats_for(uri).n_rows == 120            # computed and saved
    simulate(300, uri, seed=2, with_images=False, rows_per_shard=50)   # another survey
    with pytest.raises(ValueError, match="_stats.json: statistics of another version of the "
                                         "dataset"):
        pipelines.load_stats(uri)
    with caplog.at_level(logging.WARNING, logger="raygal.pipelines"):
        stats = pipelines.stats_for(uri)                       # what training calls
    assert stats.n_rows == 300
    assert "another version of the dataset" in caplog.text and "recomputing" in caplog.text
    saved = storage.read_json(storage.join(uri, "_stats.json"))
    assert saved["data_fingerprint"] == fingerprint(uri)
    assert pipelines.stats_for(uri).to_dict() == stats.to_dict()   # now reused as it is


def test_statistics_of_an_earlier_method_are_recomputed(ray_local, tmp_path, caplog):
    """Statistics with a cutout scale from version 1 (which left rows without photometry
    out of it) are not reused; photometry-only ones are (nothing in them changed)."""
    from raygal.sim import simulate

    uri = str(tmp_path / "mock")
    simulate(40, uri, seed=1, image_size=64, rows_per_shard=40)
    stats = pipelines.stats_for(uri)
    f = storage.join(uri, "_stats.json")
    old = storage.read_json(f)
    assert old["stats_version"] == pipelines.STATS_VERSION
    del old["stats_version"]
    old["cutout_scale"] = [float("nan")] * 3            # what version 1 gave image-only data
    storage.write_json(f, old)
    with caplog.at_level(logging.WARNING, logger="raygal.pipelines"):
        again = pipelines.stats_for(uri)
    assert "earlier method" in caplog.text
    assert again.cutout_scale == stats.cutout_scale
    phot_only = {k: v for k, v in storage.read_json(f).items() if k != "stats_version"}
    phot_only["cutout_scale"] = None
    storage.write_json(f, phot_only)
    assert pipelines.stats_for(uri).cutout_scale is None      # version 1, no cutouts: reused


# ----------------------------------------------------------------------------------------------
# 2. resume trusts content, not names
# ----------------------------------------------------------------------------------------------

def test_infer_refuses_a_catalog_of_a_changed_dataset_or_model(ray_local, tmp_path):
    from raygal.sim import simulate

    data, out = str(tmp_path / "data"), str(tmp_path / "post")
    simulate(150, data, seed=3, with_images=False, rows_per_shard=50)
    model = make_model(str(tmp_path / "model"), data)
    infer(model, data, out, samples=20, actors=1)
    before = catalog_table(out)
    simulate(150, data, seed=4, with_images=False, rows_per_shard=50)   # same names, new rows
    with pytest.raises(ValueError, match=r"dataset at .*data changed since this catalog was "
                                         r"started .*describe galaxies that may no longer"):
        infer(model, data, out, samples=20, actors=1)
    assert catalog_table(out).equals(before)                   # untouched
    make_model(model, data, steps=5)                            # retrained in place
    simulate(150, data, seed=3, with_images=False, rows_per_shard=50)
    with pytest.raises(ValueError, match=r"model at .*model changed since this catalog"):
        infer(model, data, out, samples=20, actors=1)


def test_train_refuses_to_resume_another_datasets_run(ray_local, tmp_path):
    from raygal.models import load_posterior
    from raygal.sim import simulate
    from raygal.train import TrainConfig
    from raygal.train.driver import fit

    a, b, out = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "run")
    simulate(300, a, seed=5, with_images=False, rows_per_shard=150)
    simulate(300, b, seed=6, with_images=False, rows_per_shard=150)
    base = dict(model="gaussian", out=out, inputs="phot", targets=("z",), workers=1,
                batch_size=64, epochs=1)
    s = fit(TrainConfig(data=a, **base))
    assert s["data_fingerprint"] == fingerprint(a)
    digest = storage.tree_digest(s["model_uri"])
    with pytest.raises(ValueError, match=r"holds a training run on .*a \(content .*would "
                                         r"continue from checkpoints of other data"):
        fit(TrainConfig(data=b, **base))
    assert storage.tree_digest(s["model_uri"]) == digest       # the first run's model stays
    load_posterior(s["model_uri"])
    # the same dataset path with new content is refused too
    simulate(300, a, seed=7, with_images=False, rows_per_shard=150)
    with pytest.raises(ValueError, match="the dataset changed since the run started"):
        fit(TrainConfig(data=a, **base))


# ----------------------------------------------------------------------------------------------
# 3. a failed write leaves the previous version intact
# ----------------------------------------------------------------------------------------------

def _csv_with_bad_row(path: Path, n: int, bad_line: int) -> None:
    write_skyserver_csv(path, n=n, seed=9)
    lines = path.read_text().splitlines()
    parts = lines[bad_line - 1].split(",")
    parts[5] = "bright"                                       # not a number in column r
    lines[bad_line - 1] = ",".join(parts)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_failed_ingest_keeps_the_previous_dataset(tmp_path, where, request):
    out = str(tmp_path / "out")
    if where == "s3":
        out = request.getfixturevalue("s3_bucket") + "/out"
    write_skyserver_csv(tmp_path / "good.csv", n=60)
    old = ingest(str(tmp_path / "good.csv"), out, rows_per_shard=7)
    old_table = read_table(out)
    # a big catalog whose bad row comes after many shards were written
    _csv_with_bad_row(tmp_path / "big.csv", n=3000, bad_line=2501)
    with pytest.raises(IngestError, match=r"big.csv: row 2500: column 'r'.*'bright'"):
        ingest(str(tmp_path / "big.csv"), out, rows_per_shard=20, chunk_rows=16)
    assert read_manifest(out) == old                            # the old version, whole
    assert read_table(out).equals(old_table)
    names = sorted(os.path.basename(u) for u in storage.listdir(out, hidden=True))
    assert names == sorted([MANIFEST] + [s["name"] for s in old["shards"]])   # no debris
    assert not storage.exists(storage.join(out, LOCK_FILE))


def test_simulate_over_an_existing_dataset_replaces_it(tmp_path):
    from raygal.sim import simulate

    uri = str(tmp_path / "mock")
    simulate(300, uri, seed=1, with_images=False, rows_per_shard=50)
    m = simulate(80, uri, seed=2, with_images=False, rows_per_shard=50)
    assert visible_parquet(uri) == sorted(s["name"] for s in m["shards"])   # old ones gone
    assert read_table(uri).num_rows == 80
    assert sorted(os.listdir(uri)) == sorted([MANIFEST] + [s["name"] for s in m["shards"]])


# ----------------------------------------------------------------------------------------------
# 4. the majority, not the first file, decides the cutout shape
# ----------------------------------------------------------------------------------------------

def test_cutout_shape_by_majority_not_first_file(tmp_path):
    folder = tmp_path / "set"
    (folder / "cutouts").mkdir(parents=True)
    ids = [1237648702973411443 + 7 * k for k in range(60)]
    for k, oid in enumerate(ids):           # the first objID's image is the odd one
        size = 64 if k == 0 else 128
        (folder / "cutouts" / f"{oid}.jpg").write_bytes(jpeg_bytes(rgb(k, size)))
    (folder / "catalog.csv").write_text("objID,oh_p50\n" + "".join(f"{i},8.7\n" for i in ids))
    m = ingest(str(folder), str(tmp_path / "out"))
    assert m["cutout_shape"] == [3, 128, 128]
    assert m["extra"]["cutouts"]["attached"] == 59
    assert m["extra"]["cutouts"]["bad"] == {"wrong_shape": 1}
    assert m["extra"]["bad_cutouts"] == [f"{ids[0]}.jpg"]
    d = m["extra"]["cutout_shape_decision"]
    assert d["by"] == "majority" and d["sampled_files"] == 60
    assert d["votes"] == {"3x128x128 jpeg_rgb_scaled": 59, "3x64x64 jpeg_rgb_scaled": 1}
    # an explicit size is reported as such and resamples the odd one
    m2 = ingest(str(folder), str(tmp_path / "out2"), cutout_size=96)
    assert m2["cutout_shape"] == [3, 96, 96]
    assert m2["extra"]["cutout_shape_decision"]["by"] == "cutout_size"
    assert m2["extra"]["cutouts"]["attached"] == 60 and m2["extra"]["cutouts"]["resized"] == 60


# ----------------------------------------------------------------------------------------------
# 5. inference publishes its progress during the run
# ----------------------------------------------------------------------------------------------

def test_infer_publishes_parts_during_the_run_and_a_kill_keeps_them(tmp_path):
    """One shard of 400 rows (one input before): parts appear while the job runs, a kill keeps
    them, and the re-run does only the rest."""
    data, out = str(tmp_path / "data"), str(tmp_path / "post")
    make_dataset(data, n=400, seed=8, rows_per_shard=400)
    model = make_model(str(tmp_path / "model"), data)
    cmd = cli("--ray-address", "local", "infer", "--model", model, "--data", data, "--out", out,
              "--samples", "100000", "--actors", "1", "--batch-size", "10", "--block-rows", "50")
    proc = start(cmd)
    try:
        seen = wait_for(lambda: len(visible_parquet(out)) >= 2, proc)
        running = proc.poll() is None
    finally:
        kill(proc)
    assert seen and running, proc.stderr.read()[-2000:] if proc.stderr else ""
    kept = visible_parquet(out)
    assert 2 <= len(kept) < 8 and not storage.exists(os.path.join(out, "_manifest.json"))
    for name in kept:                                          # each one complete
        meta = json.loads(pq.read_schema(os.path.join(out, name)).metadata[PART_META_KEY])
        assert meta["block"]["rows"] == pq.read_metadata(os.path.join(out, name)).num_rows
    r = start(cmd)
    _, err = r.communicate(timeout=400)
    assert r.returncode == 0, err[-2000:]
    summary = storage.read_json(os.path.join(out, "_summary.json"))
    assert summary["complete"] and summary["shards_skipped"] >= len(kept)
    assert_unique_complete(catalog_table(out), 400)


# ----------------------------------------------------------------------------------------------
# smaller ones
# ----------------------------------------------------------------------------------------------

def test_bad_solver_or_samples_fail_before_anything_is_written(tmp_path):
    data = str(tmp_path / "data")
    make_dataset(data, n=60, rows_per_shard=30)
    model = make_model(str(tmp_path / "model"), data)
    out = str(tmp_path / "post")
    with pytest.raises(ValueError, match=r"--samples 1: at least 2"):
        infer(model, data, out, samples=1)
    with pytest.raises(ValueError, match=r"--solver 'rk4-10': this model \(gaussian\) has no "
                                         r"ODE solver"):
        infer(model, data, out, solver="rk4-10")
    assert not os.path.exists(out) or os.listdir(out) == []
    from raygal.cli import main

    assert main(["infer", "--model", model, "--data", data, "--out", out,
                 "--samples", "0"]) == 2                      # one line, exit code 2
    assert not os.path.exists(out) or os.listdir(out) == []


def test_bad_cfm_solver_is_named_on_the_driver(tmp_path):
    from raygal.inputs import StatsAccumulator
    from raygal.models.cfm import FlowMatchingPosterior

    data = str(tmp_path / "data")
    make_dataset(data, n=40, rows_per_shard=40)
    stats = StatsAccumulator().update(read_table(data)).finalize()
    FlowMatchingPosterior(("z",), "phot", stats, {"hidden": 16}).save(str(tmp_path / "cfm"))
    with pytest.raises(ValueError, match=r"--solver 'rk5-7'.*unknown ODE solver"):
        infer(str(tmp_path / "cfm"), data, str(tmp_path / "post"), solver="rk5-7")
    assert not os.path.exists(tmp_path / "post")


def test_malicious_weights_are_refused_in_one_line(tmp_path):
    import torch

    data = str(tmp_path / "data")
    make_dataset(data, n=40, rows_per_shard=40)
    model = make_model(str(tmp_path / "model"), data)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": Evil()}, os.path.join(model, "weights.pt"))
    with pytest.raises(ValueError) as err:
        infer(model, data, str(tmp_path / "post"))
    msg = str(err.value)
    assert "cannot be loaded safely" in msg and model in msg and "\n" not in msg
    assert not marker.exists()
    assert not os.path.exists(tmp_path / "post")


def _dup_fits(folder: Path) -> list[str]:
    from astropy.table import Table, vstack

    tr = write_casjobs_fits(folder)
    photo = Table.read(tr["files"][0])
    vstack([photo, photo[:3]]).write(tr["files"][0], overwrite=True)   # rows 0-2 again
    return [str(f) for f in tr["files"][:2]]


def test_duplicate_objids_counted_or_refused(tmp_path):
    # CSV objID catalog of an image set (three rows repeated)
    (tmp_path / "set" / "cutouts").mkdir(parents=True)
    ids = [1237648702973411443 + 7 * k for k in range(10)]
    for k, oid in enumerate(ids):
        (tmp_path / "set" / "cutouts" / f"{oid}.png").write_bytes(jpeg_bytes(rgb(k), "PNG"))
    rows = ids + ids[:3]
    (tmp_path / "set" / "catalog.csv").write_text(
        "objID,oh_p50\n" + "".join(f"{i},{8.5 + j / 100}\n" for j, i in enumerate(rows)))
    m = ingest(str(tmp_path / "set"), str(tmp_path / "o1"))
    assert m["num_rows"] == 10 and m["dropped"] == {"duplicate objid": 3}
    assert m["duplicate_objids"] == ids[:3]
    assert m["num_rows"] + sum(m["dropped"].values()) == m["extra"]["input_rows"] == 13
    t = read_table(str(tmp_path / "o1"))
    np.testing.assert_allclose(t.column("oh12").to_numpy()[:3], [8.5, 8.51, 8.52], rtol=1e-6)
    with pytest.raises(DuplicateObjidError, match=rf"objid {ids[0]} appears more than once "
                                                  r"\(in catalog.csv\).*keep-first"):
        ingest(str(tmp_path / "set"), str(tmp_path / "o2"), on_duplicate="error")
    assert not storage.exists(str(tmp_path / "o2" / MANIFEST))
    # FITS
    files = _dup_fits(tmp_path / "fits")
    m = ingest(files, str(tmp_path / "o3"))
    assert m["dropped"]["duplicate objid"] == 3 - 0            # rows 0, 1, 2 are galaxies
    assert len(set(read_table(str(tmp_path / "o3")).column("objid").to_pylist())) == \
        m["num_rows"]
    # SkyServer CSV: the same spectrum twice (plate, mjd, fiberid)
    write_skyserver_csv(tmp_path / "sky.csv", n=20)
    lines = (tmp_path / "sky.csv").read_text().splitlines()
    (tmp_path / "sky.csv").write_text("\n".join(lines + [lines[1]]) + "\n")
    m = ingest(str(tmp_path / "sky.csv"), str(tmp_path / "o4"))
    assert m["dropped"]["duplicate objid"] == 1
    assert m["num_rows"] + sum(m["dropped"].values()) == 21


def test_fits_missing_a_magnitude_column_is_an_error(tmp_path):
    from astropy.table import Table

    tr = write_casjobs_fits(tmp_path / "in")
    photo = Table.read(tr["files"][0])
    photo.remove_columns(["dered_r", "modelMag_r"])
    photo.write(tmp_path / "no_r.fits")
    with pytest.raises(IngestError, match=r"no_r.fits: missing required column\(s\) for ugriz "
                                          r"photometry.*mag_r"):
        ingest(str(tmp_path / "no_r.fits"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / MANIFEST)
    m = ingest(str(tmp_path / "no_r.fits"), str(tmp_path / "out"), allow_missing_columns=True)
    assert m["flag_counts"]["MAG_MISSING_R"] == m["num_rows"]
    assert m["extra"]["missing_columns"]["fields"] == ["mag_r"]


def test_two_infer_runs_on_one_output_do_not_both_work(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "post")
    make_dataset(data, n=600, rows_per_shard=50)
    model = make_model(str(tmp_path / "model"), data)
    cmd = cli("--ray-address", "local", "infer", "--model", model, "--data", data, "--out", out,
              "--samples", "150000", "--actors", "1", "--batch-size", "10", "--block-rows", "50")
    first = start(cmd)
    second = None
    try:
        assert wait_for(lambda: os.path.exists(os.path.join(out, LOCK_FILE)), first)
        second = start(cmd)                                     # the CLI: one line, exit 2
        with pytest.raises(OutputBusy, match=r"post is being written by another job \(raygal "
                                             r"infer, pid"):
            infer(model, data, out, samples=150000, batch_size=10, block_rows=50)
        _, err = second.communicate(timeout=300)
        assert first.poll() is None, "the first job ended before the second was refused"
        assert second.returncode == 2, err[-3000:]
        assert err.strip().splitlines()[-1].startswith("raygal infer: error: ")
        assert "being written by another job" in err.strip().splitlines()[-1]
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-2000:]
    finally:
        kill(first)
        if second is not None:
            kill(second)
    s = storage.read_json(os.path.join(out, "_summary.json"))
    assert s["complete"] and s["shards_written"] == 12         # done once, by the first
    assert_unique_complete(catalog_table(out), 600)


# ----------------------------------------------------------------------------------------------
# fault injection: kill at random points, find the previous or the new complete version
# ----------------------------------------------------------------------------------------------

def test_fault_injection_ingest(tmp_path):
    """Kill `raygal ingest` (switching the output between catalogs A and B) at points spread
    over a whole run, with random jitter: the output is always A or B, whole."""
    rng = np.random.default_rng(0)
    csvs = {"A": tmp_path / "a.csv", "B": tmp_path / "b.csv"}
    write_skyserver_csv(csvs["A"], n=30000, seed=1)
    write_skyserver_csv(csvs["B"], n=45000, seed=2)
    refs = {}
    for k, f in csvs.items():
        ref = str(tmp_path / f"ref_{k}")
        t0 = time.perf_counter()
        r = start(cli("ingest", str(f), "--out", ref, "--rows-per-shard", "50"))
        _, err = r.communicate(timeout=300)
        assert r.returncode == 0, err
        refs[k] = (fingerprint(ref), read_table(ref), time.perf_counter() - t0)
    out = str(tmp_path / "out")
    ingest(str(csvs["A"]), out, rows_per_shard=50)
    state, outcomes = "A", []
    for i, frac in enumerate((0.1, 0.3, 0.5, 0.7, 0.9, 1.5)):
        nxt = "B" if state == "A" else "A"
        proc = start(cli("ingest", str(csvs[nxt]), "--out", out, "--rows-per-shard", "50"))
        time.sleep(frac * refs[nxt][2] * rng.uniform(0.8, 1.2))
        kill(proc)
        fp = fingerprint(out)
        found = [k for k, v in refs.items() if v[0] == fp]
        assert found, f"iteration {i}: {out} is neither version (fingerprint {fp})"
        outcomes.append("new" if found[0] == nxt else "previous")
        state = found[0]                                       # one of the two, whole
        assert read_table(out).equals(refs[state][1])
        m = read_manifest(out)
        assert visible_parquet(out) == sorted(s["name"] for s in m["shards"])
    assert {"new", "previous"} <= set(outcomes), outcomes       # both paths were taken
    # a killed writer's lease never blocks the next one
    ingest(str(csvs["A"]), out, rows_per_shard=50)
    assert fingerprint(out) == refs["A"][0]


def test_fault_injection_infer(tmp_path):
    rng = np.random.default_rng(1)
    data, out = str(tmp_path / "data"), str(tmp_path / "post")
    make_dataset(data, n=300, rows_per_shard=100)
    model = make_model(str(tmp_path / "model"), data)
    cmd = cli("--ray-address", "local", "infer", "--model", model, "--data", data, "--out", out,
              "--samples", "50000", "--actors", "1", "--batch-size", "10", "--block-rows", "50")
    for i in range(3):
        proc = start(cmd)
        time.sleep(rng.uniform(3, 20))
        kill(proc)
        parts = visible_parquet(out)
        for name in parts:                 # every visible part is a whole, valid one
            t = pq.read_table(os.path.join(out, name))
            meta = json.loads(t.schema.metadata[PART_META_KEY])
            assert t.num_rows == meta["block"]["rows"]
        if os.path.exists(os.path.join(out, "_manifest.json")):
            assert len(parts) == 6                             # complete, or no manifest
    r = start(cmd)
    _, err = r.communicate(timeout=400)
    assert r.returncode == 0, err[-2000:]
    assert_unique_complete(catalog_table(out), 300)
    assert [p["name"] for p in catalog_parts(out)] == visible_parquet(out)


def test_fault_injection_train(tmp_path):
    from raygal.models import load_posterior
    from raygal.sim import simulate

    rng = np.random.default_rng(2)
    data, out = str(tmp_path / "data"), str(tmp_path / "run")
    simulate(400, data, seed=4, with_images=False, rows_per_shard=200)
    model = os.path.join(out, "model")
    base = ["--ray-address", "local", "train", "gaussian", "--data", data, "--out", out,
            "--inputs", "phot", "--targets", "z", "--workers", "1", "--batch-size", "64"]
    digests = set()
    epochs = 1
    for i in range(3):
        epochs += 1
        proc = start(cli(*base, "--epochs", str(epochs)))
        time.sleep(rng.uniform(3, 25))
        kill(proc)
        if os.path.exists(model):          # absent (never exported) or whole: loads and runs
            post = load_posterior(model)
            assert np.isfinite(post.sample(read_table(data, max_rows=4), 2, seed=0).numpy()
                               ).all()
            digests.add(storage.tree_digest(model))
        if os.path.exists(os.path.join(out, "history.json")):
            json.loads(Path(out, "history.json").read_text())
    r = start(cli(*base, "--epochs", str(epochs)))
    _, err = r.communicate(timeout=400)
    assert r.returncode == 0, err[-2000:]
    load_posterior(model)
    h = json.loads(Path(out, "history.json").read_text())
    assert [e["epoch"] for e in h["history"]] == list(range(epochs))
