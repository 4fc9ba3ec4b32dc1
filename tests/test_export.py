"""Units that round-trip: catalog FITS files read back by astropy as Quantity columns with the
right units and no warnings; Parquet field metadata with units astropy parses."""
from __future__ import annotations

import io
import os
import warnings

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import QTable, Table

from raygal import storage
from raygal.catalog import LEGACY_SETTINGS_FILE, SETTINGS_FILE as CURRENT_SETTINGS_FILE
from raygal.export import (annotate_schema, catalog_field_metadata,
                           column_unit, export_fits)
from raygal.infer import SETTINGS_FILE
from raygal.schema import TARGETS, galaxy_schema

TARGETS_USED = ["log_mstar", "log_sfr", "z", "oh12", "dn4000", "av", "sigma_v", "flux_halpha"]
N = 6


def _catalog_table(rng) -> pa.Table:
    """A catalog shard as raygal infer writes it (one row per galaxy, one failed row)."""
    cols = {"objid": pa.array(np.arange(N, dtype=np.int64) + 1000),
            "ra": pa.array(rng.uniform(0, 360, N)), "dec": pa.array(rng.uniform(-10, 60, N)),
            "status": pa.array(["ok"] * (N - 1) + ["bad_photometry"])}
    for t in TARGETS_USED:
        mean = rng.uniform(TARGETS[t].lo if np.isfinite(TARGETS[t].lo) else 0, 10, N)
        mean[-1] = np.nan
        for suffix, v in (("mean", mean), ("std", np.full(N, 0.1)), ("q025", mean - 0.2),
                          ("q16", mean - 0.1), ("q50", mean), ("q84", mean + 0.1),
                          ("q975", mean + 0.2)):
            cols[f"{t}_{suffix}"] = pa.array(v.astype(np.float32))
    cols["oh12_detect_prob"] = pa.array(rng.uniform(0, 1, N).astype(np.float32))
    samples = rng.normal(size=(N, 4, len(TARGETS_USED))).astype(np.float32)
    cols["samples"] = pa.FixedShapeTensorArray.from_numpy_ndarray(samples)
    return pa.table(cols)


def _write_catalog(uri: str, table: pa.Table, shards: int = 2,
                   settings_file: str = SETTINGS_FILE) -> None:
    storage.makedirs(uri)
    storage.write_json(storage.join(uri, settings_file),
                       {"model": "runs/cfm/model", "samples": 4, "solver": "rk4-10",
                        "targets": TARGETS_USED})
    per = -(-table.num_rows // shards)
    for i in range(shards):
        buf = io.BytesIO()
        pq.write_table(table.slice(i * per, per), buf)
        storage.write_bytes(storage.join(uri, f"part-{i:05d}.parquet"), buf.getvalue())


EXPECTED_UNITS = {
    "log_mstar_mean": u.dex(u.Msun), "log_mstar_q975": u.dex(u.Msun),
    "log_mstar_std": u.dex, "log_sfr_q16": u.dex(u.Msun / u.yr), "log_sfr_std": u.dex,
    "oh12_mean": u.dex, "z_mean": u.dimensionless_unscaled,
    "dn4000_q50": u.dimensionless_unscaled, "av_mean": u.mag, "av_std": u.mag,
    "sigma_v_mean": u.km / u.s, "flux_halpha_mean": 1e-17 * u.erg / u.s / u.cm**2,
    "flux_halpha_std": 1e-17 * u.erg / u.s / u.cm**2,
    "oh12_detect_prob": u.dimensionless_unscaled, "ra": u.deg, "dec": u.deg,
}


def _read_back(path) -> QTable:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return QTable.read(path, format="fits")


def test_fits_round_trips_units_without_warnings(tmp_path):
    rng = np.random.default_rng(0)
    table = _catalog_table(rng)
    cat = str(tmp_path / "cat")
    _write_catalog(cat, table)
    files = export_fits(cat, str(tmp_path / "fits"))
    assert [os.path.basename(f) for f in files] == ["part-00000.fits", "part-00001.fits"]
    parts = [_read_back(f) for f in files]
    assert sum(len(p) for p in parts) == N          # every row exported
    t = parts[0]
    for name, unit in EXPECTED_UNITS.items():
        assert isinstance(t[name], u.Quantity), name
        assert t[name].unit == unit, (name, t[name].unit)
    assert isinstance(t["log_mstar_mean"], u.Dex)
    # values as in the catalog (nulls and NaN kept), in the catalog's units
    got = np.concatenate([p["log_mstar_mean"].value for p in parts])
    np.testing.assert_array_equal(got, table.column("log_mstar_mean").to_numpy())
    assert np.isnan(got[-1])
    assert list(np.concatenate([p["status"].astype(str) for p in parts])) == \
        table.column("status").to_pylist()
    assert t["objid"].dtype.kind == "i" and not isinstance(t["objid"], u.Quantity)
    assert "stellar mass" in t["log_mstar_mean"].info.description   # descriptions too
    assert t["samples"].shape == (3, 4, len(TARGETS_USED))
    # physical conversions work: dex(solMass) -> solMass
    m = t["log_mstar_mean"]
    np.testing.assert_allclose(m.physical.to(u.Msun).value, 10.0 ** m.value, rtol=1e-5)


@pytest.mark.parametrize("settings_file", (CURRENT_SETTINGS_FILE, LEGACY_SETTINGS_FILE))
def test_fits_header_documents_units_for_other_readers(tmp_path, settings_file):
    cat = str(tmp_path / "cat")
    _write_catalog(cat, _catalog_table(np.random.default_rng(1)), shards=1,
                   settings_file=settings_file)
    (path,) = export_fits(cat, str(tmp_path / "fits"))
    with fits.open(path) as h:
        hdr = h[1].header
        names = h[1].columns.names
        assert hdr["NSAMPLES"] == 4 and hdr["SOLVER"] == "rk4-10"
        assert hdr["TARGETS"].split(",") == TARGETS_USED
        i = names.index("log_mstar_mean") + 1
        assert "stellar mass" in hdr[f"TCOMM{i}"] and "dex(solMass)" in hdr[f"TCOMM{i}"]
        # a unit the FITS standard has is written as TUNITn too
        j = names.index("ra") + 1
        assert hdr[f"TUNIT{j}"] == "deg"
    # a plain Table read gives no warnings either
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Table.read(path)
    assert t["log_sfr_mean"].unit == u.dex(u.Msun / u.yr)


def test_export_to_s3(s3_bucket, tmp_path):
    cat = f"{s3_bucket}/cat"
    _write_catalog(cat, _catalog_table(np.random.default_rng(2)))
    files = export_fits(cat, f"{s3_bucket}/fits")
    assert len(files) == 2 and all(f.startswith("s3://") for f in files)
    local = tmp_path / "a.fits"
    local.write_bytes(storage.read_bytes(files[0]))
    assert _read_back(local)["av_mean"].unit == u.mag


def test_export_of_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no catalog shards"):
        export_fits(str(tmp_path), str(tmp_path / "fits"))


def test_catalog_field_metadata_parses_in_astropy():
    for name, unit in EXPECTED_UNITS.items():
        md = catalog_field_metadata(name, TARGETS_USED)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert u.Unit(md[b"unit"].decode()) == unit, name
        assert md[b"description"], name
    md = catalog_field_metadata("log_mstar_q16", TARGETS_USED)
    assert md[b"description"] == b"16th percentile of the posterior of log10 stellar mass"
    assert b"unit" not in catalog_field_metadata("objid", TARGETS_USED)
    assert catalog_field_metadata("something_else", TARGETS_USED) == {}
    assert column_unit("samples", TARGETS_USED) is None


def test_annotated_schema_survives_a_parquet_round_trip(tmp_path):
    table = _catalog_table(np.random.default_rng(3))
    schema = annotate_schema(table.schema, TARGETS_USED)
    assert schema.names == table.schema.names
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table.cast(schema), path)
    back = pq.read_schema(path)
    assert back.field("flux_halpha_q84").metadata[b"unit"] == b"1e-17 erg / (s cm2)"
    assert back.field("ra").metadata[b"unit"] == b"deg"
    assert b"posterior samples" in back.field("samples").metadata[b"description"]
    # existing metadata is kept
    f = pa.field("z_mean", pa.float32(), metadata={"origin": "x"})
    kept = annotate_schema(pa.schema([f]), ["z"]).field("z_mean").metadata
    assert kept[b"origin"] == b"x" and b"description" in kept


def test_every_schema_unit_parses_in_astropy():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in TARGETS.values():
            u.Unit(t.unit)
        for f in galaxy_schema((3, 8, 8)):
            md = f.metadata or {}
            if b"unit" in md and f.name != "cutout":
                u.Unit(md[b"unit"].decode())


def test_raygal_export_command(tmp_path, capsys):
    from raygal.cli import main

    cat = str(tmp_path / "cat")
    _write_catalog(cat, _catalog_table(np.random.default_rng(4)))
    assert main(["export", cat, "--out", str(tmp_path / "fits")]) == 0
    assert "2 FITS file(s)" in capsys.readouterr().out
    assert _read_back(tmp_path / "fits" / "part-00001.fits")["ra"].unit == u.deg
