"""Batch inference on a real local Ray: one row per input with sane intervals, per-row status
for bad inputs, clear errors for wrong models or data, and a real catalog evaluated through its
manifest. A killed run finished by a re-run with no duplicates: tests/test_integrity.py."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raygal import storage
from raygal.shards import ShardWriter, read_table, shard_uris
from raygal.inputs import StatsAccumulator
from raygal.export import export_fits
from raygal.infer import catalog_shards, infer
from raygal.models.baseline import GaussianPosterior
from raygal.schema import Flag

pytestmark = pytest.mark.timeout(300)
TARGETS = ("log_mstar", "log_sfr", "z")


def _catalog(uri):
    return pa.concat_tables([pq.read_table(s) for s in catalog_shards(uri)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A mock survey with a few broken rows, and a briefly trained image+phot model."""
    from raygal.sim import simulate_batch

    tmp = tmp_path_factory.mktemp("infer")
    t = simulate_batch(300, image_size=64, seed=11)
    mags = t.column("mag_g").to_numpy(zero_copy_only=False).copy()
    mags[:4] = np.nan                                     # missing photometry
    img = t.column("cutout").combine_chunks().to_numpy_ndarray().copy()
    img[4:7] = 0.0                                        # blank cutouts
    img[7, 0, 5, 5] = np.nan                              # a NaN pixel
    flags = t.column("flags").to_numpy().copy()
    flags[4:7] |= int(Flag.CUTOUT_MISSING)
    t = t.set_column(t.schema.get_field_index("mag_g"), t.schema.field("mag_g"),
                     pa.array(mags, pa.float32()))
    t = t.set_column(t.schema.get_field_index("cutout"), t.schema.field("cutout"),
                     pa.FixedShapeTensorArray.from_numpy_ndarray(img))
    t = t.set_column(t.schema.get_field_index("flags"), t.schema.field("flags"),
                     pa.array(flags, pa.int32()))
    data = str(tmp / "data")
    with ShardWriter(data, t.schema, rows_per_shard=40) as w:
        w.write(t)
    good = read_table(data).slice(8)
    stats = StatsAccumulator().update(good).finalize()
    torch.manual_seed(0)
    model = GaussianPosterior(TARGETS, "image+phot", stats, {"image_shape": [3, 64, 64],
                                                              "hidden": 32})
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(40):        # mini-batches of 64: a model that runs, not a good one
        loss = model.loss(good.slice((64 * step) % (good.num_rows - 64), 64))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save(str(tmp / "model"))
    return {"tmp": tmp, "data": data, "model": str(tmp / "model"), "n": 300}


def test_one_row_per_input_with_sane_intervals(ray_local, setup):
    out = str(setup["tmp"] / "post")
    s = infer(setup["model"], setup["data"], out, samples=200, actors=2, batch_size=64)
    assert s["complete"] and s["output_rows"] == s["input_rows"] == setup["n"]
    cat = _catalog(out)
    ids = cat.column("objid").to_numpy()
    assert len(ids) == len(np.unique(ids)) == setup["n"]
    truth = read_table(setup["data"], columns=["objid", *TARGETS])
    assert set(ids) == set(truth.column("objid").to_numpy())
    ok = cat.column("status").to_numpy(zero_copy_only=False) == "ok"
    for t in TARGETS:
        q = {k: cat.column(f"{t}_{k}").to_numpy(zero_copy_only=False)[ok]
             for k in ("q025", "q16", "q50", "q84", "q975", "mean", "std")}
        assert np.isfinite(np.stack(list(q.values()))).all()
        assert (q["q025"] <= q["q16"]).all() and (q["q16"] <= q["q50"]).all()
        assert (q["q50"] <= q["q84"]).all() and (q["q84"] <= q["q975"]).all()
        assert (q["std"] > 0).all()
    assert s["rows_per_status"]["ok"] == int(ok.sum())
    assert storage.exists(os.path.join(out, "_summary.json"))


def test_bad_rows_come_back_with_status(ray_local, setup):
    out = str(setup["tmp"] / "post")
    if not os.path.exists(out):
        infer(setup["model"], setup["data"], out, samples=200, actors=2, batch_size=64)
    cat = _catalog(out).sort_by("objid")
    truth = read_table(setup["data"], columns=["objid"]).column("objid").to_numpy()
    status = dict(zip(cat.column("objid").to_numpy(),
                      cat.column("status").to_numpy(zero_copy_only=False)))
    assert [status[i] for i in truth[:4]] == ["bad_photometry"] * 4
    assert [status[i] for i in truth[4:7]] == ["missing_cutout"] * 3
    assert status[truth[7]] == "bad_cutout"
    bad = cat.column("status").to_numpy(zero_copy_only=False) != "ok"
    assert np.isnan(cat.column("log_mstar_mean").to_numpy(zero_copy_only=False)[bad]).all()


def test_fits_export_has_units(ray_local, setup):
    from astropy.io import fits

    out = str(setup["tmp"] / "post")
    if not os.path.exists(out):
        infer(setup["model"], setup["data"], out, samples=200, actors=2, batch_size=64)
    files = export_fits(out, str(setup["tmp"] / "fits"))
    assert len(files) == len(catalog_shards(out))
    with fits.open(files[0]) as h:
        assert h[1].header["NSAMPLES"] == 200
        assert len(h[1].data) == 40
    # dex(Msun) as an astropy unit (tests/test_export.py checks every column's unit)
    import astropy.units as u
    from astropy.table import QTable

    assert QTable.read(files[0])["log_mstar_mean"].unit == u.Unit("dex(Msun)")


def test_wrong_model_or_data_is_a_clear_error(ray_local, setup, tmp_path):
    with pytest.raises(ValueError, match="not a raygal model"):
        infer(setup["data"], setup["data"], str(tmp_path / "x"))
    phot_only = str(tmp_path / "phot")
    t = read_table(setup["data"]).drop_columns(["cutout"])
    with ShardWriter(phot_only, t.schema) as w:
        w.write(t)
    with pytest.raises(ValueError, match="no cutout column"):
        infer(setup["model"], phot_only, str(tmp_path / "y"))


def test_evaluate_reads_a_real_catalog(ray_local, setup, tmp_path):
    """``raygal evaluate`` joins what ``infer`` writes (several parts per input shard, named
    by block) with the truth; a part gone missing is an error naming the input shard."""
    from raygal.evaluate.run import evaluate

    out = str(tmp_path / "post")
    infer(setup["model"], setup["data"], out, samples=50, actors=2, batch_size=64,
          block_rows=16)
    assert len(catalog_shards(out)) > len(shard_uris(setup["data"]))
    r = evaluate(out, setup["data"], str(tmp_path / "eval"), with_model=False)
    assert r["rows_evaluated"] == setup["n"]
    assert sum(r["rows_per_status"].values()) == setup["n"]
    lost = catalog_shards(out)[1]                     # the second block of the first shard
    os.remove(lost)
    with pytest.raises(FileNotFoundError, match=os.path.basename(lost)):
        evaluate(out, setup["data"], str(tmp_path / "eval2"), with_model=False)
