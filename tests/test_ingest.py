"""raygal.ingest: every reader on the real SDSS samples (skipped where absent) and on small files
written here; every bad input gives its error or its flag; s3:// gives what a local path gives.

The property checked everywhere: each input row is written or counted in ``dropped``."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from _ingest_helpers import (rgb, write_annz, write_casjobs_fits, write_image_set,
                             write_lines, write_skyserver_csv)
from conftest import sdss_path

from raygal import storage
from raygal.shards import read_manifest, read_schema, read_table
from raygal.ingest import (IngestError, IngestReport, detect_format, ingest, read_annz,
                           read_skyserver)
from raygal.schema import (TARGETS, Flag, cutout_shape_of, galaxy_schema,
                           plate_mjd_fiber_objid, synthetic_objid)

BANDS = "ugriz"


def assert_accounted(m: dict, n_input: int) -> None:
    """Nothing lost: rows written + rows dropped == rows read."""
    assert m["extra"]["input_rows"] == n_input
    assert m["num_rows"] + sum(m["dropped"].values()) == n_input


def flags_of(t: pa.Table) -> np.ndarray:
    return t.column("flags").to_numpy()


def n_flagged(t: pa.Table, flag: Flag) -> int:
    return int(np.count_nonzero(flags_of(t) & int(flag)))


def cutouts_of(t: pa.Table) -> np.ndarray:
    return t.column("cutout").combine_chunks().to_numpy_ndarray()


# ----------------------------------------------------------------------------------------------
# the real SDSS samples
# ----------------------------------------------------------------------------------------------

def test_real_skyserver_keeps_galaxies_and_reports_stars_and_quasars(tmp_path):
    src = sdss_path("photoz", "skyserver_dr14_10k.csv")
    m = ingest(str(src), str(tmp_path / "out"))
    assert m["num_rows"] == 4998
    assert m["dropped"] == {"class=STAR": 4152, "class=QSO": 850}
    assert m["objid_origin"] == "plate_mjd_fiber"
    assert_accounted(m, 10_000)

    t = read_table(str(tmp_path / "out"))
    raw = pd.read_csv(src)
    gal = raw[raw["class"] == "GALAXY"]
    want = plate_mjd_fiber_objid(gal.plate, gal.mjd, gal.fiberid)
    assert sorted(t.column("objid").to_pylist()) == sorted(want.tolist())
    assert len(set(t.column("objid").to_pylist())) == 4998      # unique, unlike the float objid
    assert set(t.column("class").to_pylist()) == {"GALAXY"}
    # modelMag without errors: every error null, every row says so
    assert all(t.column(f"magerr_{b}").null_count == 4998 for b in BANDS)
    assert m["flag_counts"]["MAGERR_MISSING"] == 4998
    zt = TARGETS["z"]
    assert t.column("z").null_count == int((~zt.in_range(gal.redshift.to_numpy())).sum())
    assert m["flag_counts"].get("TARGET_OUT_OF_RANGE", 0) == t.column("z").null_count


def test_real_annz_flags_its_nondetections(tmp_path):
    src = sdss_path("photoz", "annz_sdss_ugriz_train.dat")
    m = ingest(str(src), str(tmp_path / "out"))
    assert m["num_rows"] == 5000 and m["dropped"] == {}
    assert m["objid_origin"] == "row_index"
    assert_accounted(m, 5000)

    # independent count from the raw text: fainter than 28 mag or an error above 1 mag
    raw = np.array([ln.split() for ln in src.read_text().splitlines() if ln.strip()], float)
    nondet = (raw[:, :5] > 28) | (raw[:, 5:10] > 1)
    assert nondet.any()
    t = read_table(str(tmp_path / "out"))
    assert m["flag_counts"]["NONDETECTION"] == int(nondet.any(axis=1).sum())
    for k, b in enumerate(BANDS):
        mag = t.column(f"mag_{b}").to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(np.isnan(mag), nondet[:, k])
        assert m["flag_counts"].get(f"MAG_MISSING_{b.upper()}", 0) == int(nondet[:, k].sum())
    assert m["flag_counts"].get("PHOT_BAD", 0) == int((nondet.sum(axis=1) > 2).sum())
    ids = synthetic_objid(src.name, np.arange(5000))
    np.testing.assert_array_equal(t.column("objid").to_numpy(), ids)
    z = t.column("z").to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(z, raw[:, 10].astype(np.float32))


def test_real_metallicity_images(tmp_path):
    folder = sdss_path("metallicity_images")
    m = ingest(str(folder), str(tmp_path / "out"))
    assert m["num_rows"] == 400 and m["dropped"] == {}
    assert m["cutout_shape"] == [3, 128, 128]
    assert m["extra"]["cutouts"]["attached"] == 400
    assert m["extra"]["bad_cutouts_count"] == 0
    assert_accounted(m, 400)

    t = read_table(str(tmp_path / "out"))
    # objIDs exactly as the text says (19 digits: a float would have lost the last ones)
    text_ids = [int(ln.split(",")[0]) for ln in
                (folder / "catalog.csv").read_text().splitlines()[1:] if ln.strip()]
    assert t.column("objid").type == pa.int64()
    assert t.column("objid").to_pylist() == text_ids
    cat = pd.read_csv(folder / "catalog.csv", dtype={"objID": "int64"})
    np.testing.assert_allclose(t.column("oh12").to_numpy(), cat.oh_p50.to_numpy(np.float32))
    cut = cutouts_of(t)
    assert cut.shape == (400, 3, 128, 128) and cut.dtype == np.float32
    assert 0.0 <= cut.min() and cut.max() <= 1.0
    from PIL import Image

    first = np.asarray(Image.open(folder / "cutouts" / f"{text_ids[0]}.jpg"), np.float32)
    np.testing.assert_allclose(cut[0], first.transpose(2, 0, 1) / 255.0)
    md = read_schema(str(tmp_path / "out")).field("cutout").metadata
    assert md[b"unit"] == b"jpeg_rgb_scaled" and md[b"bands"] == b"i,r,g"


def test_real_lines_dn4000(tmp_path):
    main = sdss_path("lines_dn4000", "output_results_with_lines_d4000.csv")
    av = sdss_path("lines_dn4000", "av_dn4000_fuv.csv")
    m = ingest([str(main), str(av)], str(tmp_path / "out"))
    assert m["num_rows"] == 933 and m["dropped"] == {}
    assert m["objid_origin"] == "plate_mjd_fiber"
    assert_accounted(m, 933)

    raw = pd.read_csv(main)
    t = read_table(str(tmp_path / "out")).to_pandas()
    fluxes = {"flux_halpha": "F_Halpha", "flux_hbeta": "F_Hbeta", "flux_nii": "F_nii",
              "flux_oiii": "F_oiii"}
    for col, src in fluxes.items():
        sentinel = raw[src].to_numpy() == -999
        assert sentinel.any() or col == "flux_oiii"
        outside = ~TARGETS[col].in_range(raw[src].to_numpy()) & ~sentinel
        np.testing.assert_array_equal(t[col].isna().to_numpy(), sentinel | outside)
    used = ([f"dered_{b}" for b in BANDS] + [f"modelMagErr_{b}" for b in BANDS]
            + ["redshift", "Dn4000(obs)", *fluxes.values()])
    sentinel_rows = raw[used].isin([-9999, -999, -99]).any(axis=1)
    assert sentinel_rows.sum() >= 4
    assert m["flag_counts"]["SENTINEL"] == int(sentinel_rows.sum())
    np.testing.assert_array_equal(
        (t["flags"].to_numpy() & int(Flag.SENTINEL)) != 0, sentinel_rows.to_numpy())
    # A_V from the companion table, joined on plate/mjd/fiber_id
    avt = pd.read_csv(av)
    in_range = TARGETS["av"].in_range(avt.extinction.to_numpy())
    assert t.av.notna().sum() == int(in_range.sum())
    assert set(t.bpt_class) == {"SF", "Composite", "AGN"}
    want = plate_mjd_fiber_objid(raw.plate, raw.mjd, raw.fiberid)
    np.testing.assert_array_equal(t.objid.to_numpy(), want)


# ----------------------------------------------------------------------------------------------
# small files written here: the readers without the shared folder
# ----------------------------------------------------------------------------------------------

def test_casjobs_fits_join(tmp_path):
    tr = write_casjobs_fits(tmp_path / "in")
    files = [str(f) for f in tr["files"]]
    m = ingest(files, str(tmp_path / "out"))
    assert m["num_rows"] == tr["n_galaxies"]
    assert m["dropped"] == {"class=STAR": tr["n_star"], "class=QSO": tr["n_qso"]}
    assert m["objid_origin"] == "sdss"
    assert_accounted(m, len(tr["objid"]))
    t = read_table(str(tmp_path / "out"))
    df = t.to_pandas()
    gal = tr["class"] == "GALAXY"
    np.testing.assert_array_equal(df.objid.to_numpy(), tr["objid"][gal])
    assert t.column("specobjid").type == pa.uint64()
    np.testing.assert_array_equal(df.specobjid.to_numpy(), tr["specobjid"][gal])
    # dered preferred over modelMag, errors from modelMagErr
    np.testing.assert_allclose(df.mag_g.to_numpy()[2:], tr["dered"]["g"][gal][2:])
    assert m["extra"]["mag_type"].startswith("dered")
    by = {int(o): r for o, r in zip(df.objid, df.itertuples())}
    fl = {int(o): int(f) for o, f in zip(df.objid, df["flags"])}
    o = lambda k: int(tr["objid"][k])  # noqa: E731
    assert np.isnan(by[o(1)].mag_u) and fl[o(1)] & Flag.SENTINEL and fl[o(1)] & Flag.MAG_MISSING_U
    assert np.isnan(by[o(2)].magerr_g) and fl[o(2)] & Flag.NONFINITE
    assert fl[o(2)] & Flag.MAGERR_MISSING
    assert np.isnan(by[o(4)].mag_r) and fl[o(4)] & Flag.NONDETECTION
    assert np.isnan(by[o(5)].log_mstar) and fl[o(5)] & Flag.SENTINEL
    assert np.isnan(by[o(6)].oh12) and fl[o(6)] & Flag.TARGET_OUT_OF_RANGE
    assert np.isnan(by[o(8)].flux_halpha) and fl[o(8)] & Flag.SENTINEL
    assert not np.isnan(by[o(8)].flux_hbeta)
    # rows without galSpec entries: left join keeps them with null MPA-JHU targets
    for k in (0, 9):
        assert np.isnan(by[o(k)].log_mstar) and np.isnan(by[o(k)].dn4000)
        assert not np.isnan(by[o(k)].z)
    # joined values land on the right rows (specObjID, not row order)
    for k in (11, 12, 18):
        sid = int(tr["specobjid"][k])
        assert by[o(k)].log_mstar == pytest.approx(tr["lgm"][sid], rel=1e-6)
        assert by[o(k)].z == pytest.approx(tr["z"][sid], rel=1e-6)
        sig = tr["veldisp"][sid]
        assert by[o(k)].sigma_v == pytest.approx(sig, rel=1e-6)
        assert by[o(k)].log_mbh == pytest.approx(8.32 + 5.64 * np.log10(sig / 200), rel=1e-5)
    assert set(df.bpt_class.dropna()) <= {"SF", "SF_lowSN", "Composite", "AGN", "LINER_lowSN"}
    assert set(df["class"]) == {"GALAXY"}
    assert m["extra"]["log_mbh_from_sigma_v"]["rows"] == tr["n_galaxies"]
    joined = {os.path.basename(i["uri"]): i for i in m["extra"]["inputs"]}
    assert joined["galspecextra.fits"]["primary_rows_without_match"] == 2


def test_fits_band_vector_columns_and_row_streaming(tmp_path):
    from astropy.table import Table

    n = 25
    tab = Table()
    tab["OBJID"] = np.arange(n, dtype=np.int64) + 10**18
    tab["modelMag"] = np.full((n, 5), 18.0, np.float32)
    tab["modelMagErr"] = np.full((n, 5), 0.05, np.float32)
    tab["modelMag"][3, 4] = np.inf
    tab.write(tmp_path / "phot.fits")
    rep = IngestReport()
    from raygal.ingest import read_fits

    tables = list(read_fits(str(tmp_path / "phot.fits"), chunk_rows=7, report=rep))
    assert [t.num_rows for t in tables] == [7, 7, 7, 4]
    t = pa.concat_tables(tables)
    assert t.column("mag_z").null_count == 1 and n_flagged(t, Flag.NONFINITE) == 1
    assert t.column("objid").to_pylist() == list(range(10**18, 10**18 + n))
    assert rep.input_rows == n


def test_skyserver_like_csv(tmp_path):
    tr = write_skyserver_csv(tmp_path / "sky.csv")
    assert detect_format(str(tmp_path / "sky.csv")) == "skyserver"
    rep = IngestReport()
    tables = list(read_skyserver(str(tmp_path / "sky.csv"), report=rep))
    t = pa.concat_tables(tables)
    want = galaxy_schema(None).names
    assert t.schema.names[:len(want)] == want
    assert {"plate", "mjd", "fiberid", "class"} <= set(t.schema.names)
    assert t.num_rows == tr["n_galaxies"]
    assert dict(rep.dropped) == {k: v for k, v in (("class=STAR", tr["n_star"]),
                                                    ("class=QSO", tr["n_qso"])) if v}
    assert n_flagged(t, Flag.MAGERR_MISSING) == t.num_rows
    assert len(set(t.column("objid").to_pylist())) == t.num_rows
    m = ingest(str(tmp_path / "sky.csv"), str(tmp_path / "out"), rows_per_shard=4)
    assert_accounted(m, 30)
    assert len(m["shards"]) == -(-m["num_rows"] // 4)
    assert read_table(str(tmp_path / "out")).equals(t)


def test_annz_like_table(tmp_path):
    tr = write_annz(tmp_path / "annz.dat")
    assert detect_format(str(tmp_path / "annz.dat")) == "annz"
    t = pa.concat_tables(list(read_annz(str(tmp_path / "annz.dat"), chunk_rows=16)))
    assert t.num_rows == 50
    nondet = (tr["mags"] > 28) | (tr["errs"] > 1)
    assert n_flagged(t, Flag.NONDETECTION) == int(nondet.any(axis=1).sum()) == 3
    assert n_flagged(t, Flag.PHOT_BAD) == 1
    assert flags_of(t)[9] & Flag.PHOT_BAD
    assert t.column("mag_g")[7].as_py() is None and t.column("magerr_g")[7].as_py() is None
    np.testing.assert_array_equal(t.column("objid").to_numpy(),
                                  synthetic_objid("annz.dat", np.arange(50)))


def test_lines_like_csv_with_av(tmp_path):
    tr = write_lines(tmp_path / "lines.csv", tmp_path / "av.csv")
    m = ingest([str(tmp_path / "lines.csv"), str(tmp_path / "av.csv")], str(tmp_path / "o"))
    assert_accounted(m, tr["n"])
    t = read_table(str(tmp_path / "o")).to_pandas()
    assert np.isnan(t.flux_halpha[2]) and np.isnan(t.flux_nii[5])
    assert m["flag_counts"]["SENTINEL"] == 2
    assert np.isnan(t.av[4]) and t["flags"][4] & Flag.TARGET_OUT_OF_RANGE
    assert np.isnan(t.av[tr["n"] - 1])                       # no row in the A_V table
    assert m["extra"]["av_source"]["rows_without_av"] == 1
    np.testing.assert_allclose(t.av[[0, 1, 2]], tr["av"][[0, 1, 2]], atol=1e-4)
    assert t.agn_class[0] == "Seyfert" and pd.isna(t.agn_class[1])   # 'NAN' means no class
    assert t.dn4000[0] == pytest.approx(1.3)


def test_jpeg_png_cutouts_missing_and_bad_are_flagged_not_fatal(tmp_path):
    kinds = ["jpg", "png", "missing", "corrupt_jpg", "truncated_jpg", "wrong_shape_jpg",
             "blank_png", "fits_chw"]
    tr = write_image_set(tmp_path / "set", kinds)
    m = ingest(str(tmp_path / "set" / "catalog.csv"), str(tmp_path / "out"))
    assert m["extra"]["format"] == "images"
    assert m["num_rows"] == len(kinds)
    assert_accounted(m, len(kinds))
    assert m["cutout_shape"] == [3, 32, 32]
    assert m["flag_counts"]["CUTOUT_MISSING"] == 1
    assert m["flag_counts"]["CUTOUT_BAD"] == 5
    assert m["extra"]["bad_cutouts_count"] == 5
    bad = {tr["names"][tr["ids"][kinds.index(k)]] for k in
           ("corrupt_jpg", "truncated_jpg", "wrong_shape_jpg", "blank_png", "fits_chw")}
    assert set(m["extra"]["bad_cutouts"]) == bad
    assert m["extra"]["cutouts"]["bad"] == {"unreadable": 2, "wrong_shape": 1, "blank": 1,
                                            "unit_mismatch": 1}
    t = read_table(str(tmp_path / "out"))
    cut = cutouts_of(t)
    np.testing.assert_allclose(cut[1], rgb(1).transpose(2, 0, 1) / 255.0)   # PNG is lossless
    assert np.abs(cut[0] - rgb(0).transpose(2, 0, 1) / 255.0).mean() < 0.1  # JPEG is not
    for k in range(2, len(kinds)):
        assert not cut[k].any()                                            # zeroed
    assert t.column("objid").to_pylist() == tr["ids"]
    np.testing.assert_allclose(t.column("oh12").to_numpy(), tr["values"].astype(np.float32))


def test_cutouts_resized_to_cutout_size(tmp_path):
    write_image_set(tmp_path / "set", ["jpg", "wrong_shape_jpg", "png"])
    m = ingest(str(tmp_path / "set"), str(tmp_path / "out"), cutout_size=16)
    assert m["cutout_shape"] == [3, 16, 16]
    assert m["extra"]["cutouts"]["resized"] == 3
    assert "CUTOUT_BAD" not in m["flag_counts"]
    cut = cutouts_of(read_table(str(tmp_path / "out")))
    assert cut.shape == (3, 3, 16, 16) and 0 <= cut.min() and cut.max() <= 1


def test_fits_cutouts(tmp_path):
    kinds = ["fits_chw", "fits_hwc", "nan_fits", "truncated_fits", "fits_2d"]
    tr = write_image_set(tmp_path / "set", kinds)
    m = ingest(str(tmp_path / "set"), str(tmp_path / "out"), cutout_bands=("g", "r", "i"))
    assert m["cutout_shape"] == [3, 32, 32]
    assert m["pixel_scale_arcsec"] == pytest.approx(0.396)
    assert m["extra"]["cutouts"]["bad"] == {"nonfinite": 1, "unreadable": 1, "wrong_shape": 1}
    t = read_table(str(tmp_path / "out"))
    cut = cutouts_of(t)
    np.testing.assert_array_equal(cut[0], rgb(0).transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(cut[1], rgb(1).transpose(2, 0, 1).astype(np.float32))
    md = read_schema(str(tmp_path / "out")).field("cutout").metadata
    assert md[b"unit"] == b"nanomaggies" and md[b"bands"] == b"g,r,i"
    assert t.num_rows == len(tr["ids"])
    # a single-band FITS set is (1, H, W)
    (tmp_path / "one").mkdir()
    write_image_set(tmp_path / "one", ["fits_2d"])
    m1 = ingest(str(tmp_path / "one"), str(tmp_path / "out1"))
    assert m1["cutout_shape"] == [1, 32, 32]


def test_cutouts_attach_to_any_catalog_and_all_missing_is_counted(tmp_path):
    tr = write_skyserver_csv(tmp_path / "sky.csv")
    write_image_set(tmp_path / "imgs", ["jpg"])        # objIDs that match no SkyServer row
    m = ingest(str(tmp_path / "sky.csv"), str(tmp_path / "out"),
               cutouts=str(tmp_path / "imgs" / "cutouts"))
    assert m["flag_counts"]["CUTOUT_MISSING"] == tr["n_galaxies"]
    assert m["extra"]["cutouts"]["unused_files"] == 1
    assert m["cutout_shape"] == [3, 32, 32]


def test_reingest_replaces_previous_dataset(tmp_path):
    write_skyserver_csv(tmp_path / "sky.csv")
    ingest(str(tmp_path / "sky.csv"), str(tmp_path / "out"), rows_per_shard=2)
    m = ingest(str(tmp_path / "sky.csv"), str(tmp_path / "out"))
    # one manifest and one shard: the previous version's shards are gone
    assert sorted(os.listdir(tmp_path / "out")) == ["_manifest.json", m["shards"][0]["name"]]
    assert read_manifest(str(tmp_path / "out"))["num_rows"] == m["num_rows"]


# ----------------------------------------------------------------------------------------------
# bad input: a clear error naming the file (and row), or a flag
# ----------------------------------------------------------------------------------------------

def test_corrupt_fits_names_the_file(tmp_path):
    bad = tmp_path / "broken_photo.fits"
    bad.write_bytes(b"this is not a FITS file" * 200)
    with pytest.raises(IngestError, match="broken_photo.fits.*not a readable FITS"):
        ingest(str(bad), str(tmp_path / "out"))


def test_truncated_fits_names_the_file(tmp_path):
    tr = write_casjobs_fits(tmp_path / "in")
    data = tr["files"][0].read_bytes()
    cut = tmp_path / "cut_photo.fits"
    cut.write_bytes(data[: 5760 + 1000])
    with pytest.raises(IngestError, match="cut_photo.fits.*truncated"):
        ingest(str(cut), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_missing_required_column_is_named(tmp_path):
    src = tmp_path / "sky_noz.csv"
    write_skyserver_csv(src)
    df = pd.read_csv(src, dtype=str).drop(columns=["redshift"])
    df.to_csv(src, index=False)
    with pytest.raises(IngestError, match=r"sky_noz.csv.*missing required.*redshift.*"
                                          r"columns present: objid, ra"):
        ingest(str(src), str(tmp_path / "out"), format="skyserver")


def test_fits_without_photometry_or_join_key(tmp_path):
    tr = write_casjobs_fits(tmp_path / "in")
    with pytest.raises(IngestError, match="no photometry"):
        ingest([str(tr["files"][2])], str(tmp_path / "out"))
    from astropy.table import Table

    Table({"foo": np.arange(3)}).write(tmp_path / "nokey.fits")
    with pytest.raises(IngestError, match="nokey.fits.*cannot join"):
        ingest([str(tr["files"][0]), str(tmp_path / "nokey.fits")], str(tmp_path / "out"))


def test_empty_catalogs(tmp_path):
    head = tmp_path / "head_only.csv"
    head.write_text("objid,ra,dec,u,g,r,i,z,run,rerun,camcol,field,specobjid,class,redshift,"
                    "plate,mjd,fiberid\n")
    with pytest.raises(IngestError, match="head_only.csv.*empty catalog"):
        ingest(str(head), str(tmp_path / "out"))
    (tmp_path / "zero.dat").write_bytes(b"")
    with pytest.raises(IngestError, match="zero.dat.*empty"):
        ingest(str(tmp_path / "zero.dat"), str(tmp_path / "out"))
    from astropy.table import Table

    Table({"objID": np.zeros(0, np.int64), "modelMag_r": np.zeros(0)}).write(
        tmp_path / "norows.fits")
    with pytest.raises(IngestError, match="norows.fits.*empty catalog"):
        ingest(str(tmp_path / "norows.fits"), str(tmp_path / "out"))


def test_nonexistent_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_catalog.csv"):
        ingest(str(tmp_path / "no_such_catalog.csv"), str(tmp_path / "out"))


def test_non_integer_objid_names_the_row(tmp_path):
    write_image_set(tmp_path / "set", ["jpg", "jpg", "jpg"])
    cat = tmp_path / "set" / "catalog.csv"
    lines = cat.read_text().splitlines()
    lines[3] = "1.23764870297341E+018," + lines[3].split(",")[1]
    cat.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=r"catalog.csv: row 3: .*objID.*not an integer"):
        ingest(str(tmp_path / "set"), str(tmp_path / "out"))


def test_bad_numbers_and_ragged_rows_name_the_row(tmp_path):
    src = tmp_path / "sky.csv"
    write_skyserver_csv(src)
    lines = src.read_text().splitlines()
    parts = lines[5].split(",")
    parts[5] = "bright"
    lines[5] = ",".join(parts)
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=r"sky.csv: row 5: column 'r'.*'bright'"):
        ingest(str(src), str(tmp_path / "out"))
    annz = tmp_path / "ragged.dat"
    write_annz(annz)
    rows = annz.read_text().splitlines()
    rows[6] = " ".join(rows[6].split()[:9])
    annz.write_text("\n".join(rows) + "\n")
    with pytest.raises(IngestError, match=r"ragged.dat: row 7: .*expected 11 columns"):
        ingest(str(annz), str(tmp_path / "out"))


def test_nonexistent_bucket(s3_server, tmp_path):
    write_skyserver_csv(tmp_path / "sky.csv")
    with pytest.raises(storage.StorageError, match="raygal-no-such-bucket"):
        ingest(str(tmp_path / "sky.csv"), "s3://raygal-no-such-bucket/out")
    with pytest.raises((storage.StorageError, FileNotFoundError),
                       match="raygal-no-such-bucket"):
        ingest("s3://raygal-no-such-bucket/sky.csv", str(tmp_path / "out"))


def test_wrong_s3_endpoint(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # nothing listens here once the socket is closed
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"RAYGAL_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": endpoint,
                 "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    write_skyserver_csv(tmp_path / "sky.csv")
    with pytest.raises(storage.StorageError, match=rf"s3://somebucket/out.*{port}"):
        ingest(str(tmp_path / "sky.csv"), "s3://somebucket/out")


# ----------------------------------------------------------------------------------------------
# object storage
# ----------------------------------------------------------------------------------------------

def _upload(local: Path, uri: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            storage.write_bytes(uri + "/" + p.relative_to(local).as_posix(), p.read_bytes())


def test_s3_ingest_reads_back_identical_to_local(s3_bucket, tmp_path):
    tr = write_casjobs_fits(tmp_path / "fits")
    write_image_set(tmp_path / "imgs", ["jpg", "png", "missing", "corrupt_jpg", "jpg"])
    _upload(tmp_path / "fits", f"{s3_bucket}/in/fits")
    _upload(tmp_path / "imgs", f"{s3_bucket}/in/imgs")
    names = [f.name for f in tr["files"]]

    local_fits = ingest([str(f) for f in tr["files"]], str(tmp_path / "out_fits"))
    s3_fits = ingest([f"{s3_bucket}/in/fits/{n}" for n in names], f"{s3_bucket}/out/fits")
    local_img = ingest(str(tmp_path / "imgs"), str(tmp_path / "out_imgs"))
    s3_img = ingest(f"{s3_bucket}/in/imgs", f"{s3_bucket}/out/imgs")

    for (lm, sm, lu, su) in ((local_fits, s3_fits, tmp_path / "out_fits", "out/fits"),
                             (local_img, s3_img, tmp_path / "out_imgs", "out/imgs")):
        for key in ("num_rows", "dropped", "flag_counts", "objid_origin", "cutout_shape",
                    "shards"):
            assert lm[key] == sm[key]
        a = read_table(str(lu))
        b = read_table(f"{s3_bucket}/{su}")
        assert a.schema.equals(b.schema, check_metadata=True)
        assert a.equals(b)
    assert s3_img["extra"]["bad_cutouts_count"] == 1
    assert cutout_shape_of(read_schema(f"{s3_bucket}/out/imgs")) == (3, 32, 32)


def test_s3_fits_cutouts_and_csv_catalogs_read_as_local(s3_bucket, tmp_path):
    """FITS cutouts (several layouts, one with a NaN) and the text catalogs, read from s3://
    exactly as from a local folder."""
    write_image_set(tmp_path / "fits", ["fits_chw", "fits_hwc", "nan_fits", "fits_chw"])
    (tmp_path / "csv").mkdir()
    write_skyserver_csv(tmp_path / "csv" / "sky.csv")
    write_lines(tmp_path / "csv" / "lines.csv", tmp_path / "csv" / "av.csv")
    _upload(tmp_path / "fits", f"{s3_bucket}/in/fits")
    _upload(tmp_path / "csv", f"{s3_bucket}/in/csv")
    jobs = {"fits": ([str(tmp_path / "fits")], [f"{s3_bucket}/in/fits"]),
            "sky": ([str(tmp_path / "csv" / "sky.csv")], [f"{s3_bucket}/in/csv/sky.csv"]),
            "lines": ([str(tmp_path / "csv" / n) for n in ("lines.csv", "av.csv")],
                      [f"{s3_bucket}/in/csv/{n}" for n in ("lines.csv", "av.csv")])}
    got = {}
    for name, (local, remote) in jobs.items():
        lm = ingest(local, str(tmp_path / "out" / name))
        got[name] = sm = ingest(remote, f"{s3_bucket}/out/{name}")
        for key in ("num_rows", "dropped", "flag_counts", "cutout_shape", "shards"):
            assert lm[key] == sm[key]
        assert read_table(str(tmp_path / "out" / name)).equals(
            read_table(f"{s3_bucket}/out/{name}"))
    assert got["fits"]["cutout_shape"] == [3, 32, 32]
    assert got["fits"]["extra"]["cutouts"]["bad"] == {"nonfinite": 1}
    assert got["lines"]["num_rows"] == 12 and got["lines"]["flag_counts"]["SENTINEL"] == 2


def test_ingest_prints_progress_when_it_runs_long(tmp_path, capfd):
    write_skyserver_csv(tmp_path / "sky.csv", n=300)
    ingest(str(tmp_path / "sky.csv"), str(tmp_path / "out"), chunk_rows=1,
           progress_every_s=0.0)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("[raygal ingest]")]
    assert lines and "rows read" in lines[-1] and "rows/s" in lines[-1]
    ingest(str(tmp_path / "sky.csv"), str(tmp_path / "out"))        # short: quiet
    assert "[raygal ingest]" not in capfd.readouterr().err


def test_catalog_of_only_stars_gives_an_empty_dataset_that_says_why(tmp_path):
    src = tmp_path / "stars.csv"
    write_skyserver_csv(src)
    df = pd.read_csv(src, dtype=str)
    df["class"] = "STAR"
    df.to_csv(src, index=False)
    m = ingest(str(src), str(tmp_path / "out"))
    assert m["num_rows"] == 0 and m["shards"] == []
    assert m["dropped"] == {"class=STAR": 30}
    assert_accounted(m, 30)
