"""The mock survey reproduces the relations it encodes, its images agree with its photometry,
it is deterministic per seed, and it streams into sharded Parquet.

Tolerances are stated per test; they hold with margin for the sample sizes used (a few
thousand galaxies, seeds fixed), and would flag a broken relation, not sampling noise.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raygal import shards
from raygal.schema import MAG_COLUMNS, TARGET_NAMES, galaxy_schema
from raygal.sim import (CHUNK_SIZE, LATENT_NAMES, LATENT_PREFIX, R_LIMIT, simulate,
                        simulate_batch)
from raygal.sim import aperture, photometry, physics
from raygal.sim.survey import DEC_RANGE, RA_RANGE, Z_MAX

REPO = Path(__file__).resolve().parents[1]
N_CAT = 6144  # catalogue-only sample for the relations
N_IMG = 768   # sample with 64x64 images


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _rank_corr(x, y) -> float:
    """Spearman rank correlation (no scipy dependency)."""
    rx = np.argsort(np.argsort(x))
    ry = np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


@pytest.fixture(scope="module")
def cat():
    table, truth = simulate_batch(N_CAT, with_images=False, seed=11, return_truth=True)
    cols = {n: _np(table, n) for n in table.column_names if n not in ("source",)}
    return table, cols, truth


@pytest.fixture(scope="module")
def imgs():
    table, truth = simulate_batch(N_IMG, image_size=64, seed=5, return_truth=True)
    cut = table.column("cutout").combine_chunks().to_numpy_ndarray()
    return table, cut, truth


# ----------------------------------------------------------------------------------------------
# Catalogue: schema, selection
# ----------------------------------------------------------------------------------------------

def test_schema_and_every_target_filled(cat):
    table, d, truth = cat
    assert table.num_rows == N_CAT
    assert table.schema.equals(galaxy_schema(None), check_metadata=True)
    for name in TARGET_NAMES:
        col = table.column(name)
        if name == "oh12":
            # The detectability label is oh12 being non-null, exactly the detectable galaxies.
            assert np.array_equal(col.is_valid().to_numpy(zero_copy_only=False),
                                  truth["oh12_detectable"])
        else:
            assert col.null_count == 0, name
            assert np.isfinite(d[name]).all(), name
    for name in ("flux_halpha", "flux_hbeta", "flux_nii", "flux_oiii"):
        assert (d[name] >= 0).all(), name
    assert set(table.column("source").to_pylist()) == {"mock"}
    assert (d["flags"] == 0).all()
    ids = table.column("objid").to_numpy()
    assert len(np.unique(ids)) == N_CAT
    assert (d["ra"] >= RA_RANGE[0]).all() and (d["ra"] <= RA_RANGE[1]).all()
    assert (d["dec"] >= DEC_RANGE[0]).all() and (d["dec"] <= DEC_RANGE[1]).all()
    # True metallicity is available for every galaxy, detectable or not.
    assert np.isfinite(truth["oh12_true"]).all()


def test_flux_limit_and_redshift_distribution(cat):
    _, d, truth = cat
    assert (d["mag_r"] < R_LIMIT).all()
    assert (d["z"] > 0).all() and (d["z"] <= Z_MAX).all()
    # SDSS main sample: median z ~ 0.1.
    assert 0.08 < np.median(d["z"]) < 0.12
    # A flux-limited survey sees a small fraction of the volume-limited population.
    assert 0.001 < truth["selection_fraction"] < 0.2
    # Magnitude errors grow with magnitude, u is the noisiest band.
    for b in "ugriz":
        assert _rank_corr(d[f"mag_{b}"], d[f"magerr_{b}"]) > 0.5
    assert np.median(d["magerr_u"]) > np.median(d["magerr_r"])
    assert 0.002 < np.median(d["magerr_r"]) < 0.02


# ----------------------------------------------------------------------------------------------
# The encoded relations
# ----------------------------------------------------------------------------------------------

def test_main_sequence(cat):
    """Star-forming galaxies: slope 0.7 +- 0.1 (after the (1+z)^2.8 evolution), scatter
    0.3 +- 0.05 dex; quenched galaxies 1-1.5 dex below (median offset -0.9 .. -1.6)."""
    _, d, truth = cat
    sf = ~truth["is_quenched"]
    m, sfr, z = d["log_mstar"][sf], d["log_sfr"][sf], d["z"][sf]
    slope = np.polyfit(m, sfr - 2.8 * np.log10(1 + z), 1)[0]
    assert abs(slope - physics.MS_SLOPE) < 0.1
    resid = sfr - physics.main_sequence(m, z)
    assert abs(np.mean(resid)) < 0.1
    assert abs(np.std(resid) - physics.MS_SCATTER) < 0.05
    q = truth["is_quenched"]
    off = d["log_sfr"][q] - physics.main_sequence(d["log_mstar"][q], d["z"][q])
    assert -1.6 < np.median(off) < -0.9
    # Quenched fraction rises with mass.
    frac = [q[(d["log_mstar"] >= lo) & (d["log_mstar"] < lo + 0.5)].mean()
            for lo in (9.5, 10.0, 10.5, 11.0)]
    assert all(a < b for a, b in zip(frac, frac[1:]))


def test_mass_metallicity_relation(cat):
    """Binned medians vs Tremonti et al. (2004): the true 12+log(O/H) of star-forming galaxies
    within 0.03 dex (bins of >= 50); the catalogue's measured (non-null) values within 0.06 dex
    (bins of >= 100): at high mass they sit 0.02-0.05 dex low, because the flux limit favours
    high-SFR galaxies, which the FMR makes metal-poorer, and the [O III] S/N cut favours
    metal-poor ones - the same biases a real flux-limited survey has."""
    _, d, truth = cat
    sf = ~truth["is_quenched"]
    det = truth["oh12_detectable"]
    n_bins = 0
    for lo in np.arange(9.0, 11.25, 0.25):
        mbin = (d["log_mstar"] >= lo) & (d["log_mstar"] < lo + 0.25)
        ref = physics.tremonti_oh12(lo + 0.125)
        s = mbin & sf
        if s.sum() >= 50:
            assert abs(np.median(truth["oh12_true"][s]) - ref) < 0.03, lo
            n_bins += 1
        s = mbin & det
        if s.sum() >= 100:
            assert abs(np.median(d["oh12"][s]) - ref) < 0.06, lo
    assert n_bins >= 6
    # FMR: at fixed mass, galaxies above the main sequence are metal-poorer.
    s = sf & (d["log_mstar"] > 9.0) & (d["log_mstar"] < 10.0)
    resid = truth["oh12_true"][s] - physics.tremonti_oh12(d["log_mstar"][s])
    assert np.corrcoef(truth["delta_ms"][s], resid)[0, 1] < -0.1


def test_balmer_decrement_and_nitrogen(cat):
    """Balmer decrement 2.86 for dust-free (non-AGN) gas, rising with A_V as Cardelli's curve
    predicts; [N II]/Halpha follows the N2 calibration of the (T04-scale) metallicity."""
    _, d, truth = cat
    ok = ~truth["is_agn"]
    bd = d["flux_halpha"][ok] / d["flux_hbeta"][ok]
    b, a = np.polyfit(d["av"][ok], np.log10(bd), 1)
    assert abs(10**a / physics.BALMER_DECREMENT - 1) < 0.02
    k = photometry.cardelli_a_over_av(np.array([4861.3, 6562.8]))
    assert abs(b - 0.4 * (k[0] - k[1])) < 0.01
    assert np.corrcoef(d["av"][ok], bd)[0, 1] > 0.9
    # N2 of star-forming, non-AGN galaxies.
    sf = ~truth["is_quenched"] & ok
    n2 = np.log10(d["flux_nii"][sf] / d["flux_halpha"][sf])
    pred = physics.n2_from_oh12(truth["oh12_true"][sf])
    assert abs(np.median(n2 - pred)) < 0.02
    assert np.std(n2 - pred) < 0.1
    # Detectable galaxies lie on the star-forming side of the Kauffmann et al. (2003) line;
    # AGN hosts more often than not do not.
    det = truth["oh12_detectable"]
    n2d = np.log10(d["flux_nii"][det] / d["flux_halpha"][det])
    o3d = np.log10(d["flux_oiii"][det] / d["flux_hbeta"][det])
    assert np.mean(o3d < physics.kauffmann03_line(n2d)) > 0.95
    agn = truth["is_agn"]
    n2a = np.log10(d["flux_nii"][agn] / d["flux_halpha"][agn])
    o3a = np.log10(d["flux_oiii"][agn] / d["flux_hbeta"][agn])
    assert np.mean(o3a >= physics.kauffmann03_line(n2a)) > 0.5


def test_m_sigma_relation(cat):
    """McConnell & Ma (2013): slope 5.64 +- 0.3, zero point 8.32 +- 0.05, scatter 0.38 +- 0.04;
    sigma_v rises with mass."""
    _, d, _ = cat
    x = np.log10(d["sigma_v"] / 200.0)
    slope, icpt = np.polyfit(x, d["log_mbh"], 1)
    assert abs(slope - 5.64) < 0.3
    assert abs(icpt - 8.32) < 0.05
    assert abs(np.std(d["log_mbh"] - (8.32 + 5.64 * x)) - physics.MBH_SCATTER) < 0.04
    assert _rank_corr(d["log_mstar"], d["sigma_v"]) > 0.7
    assert 30 < np.median(d["sigma_v"]) < 250


def test_dn4000_tracks_specific_sfr(cat):
    _, d, truth = cat
    ssfr = d["log_sfr"] - d["log_mstar"]
    assert _rank_corr(ssfr, d["dn4000"]) < -0.8
    lo, hi = np.percentile(d["dn4000"], [2, 98])
    assert 1.0 < lo < 1.25 and 1.8 < hi < 2.2
    assert np.median(d["dn4000"][ssfr > -10.0]) < 1.35
    assert np.median(d["dn4000"][ssfr < -11.3]) > 1.6
    # Bulge fraction rises with Dn(4000).
    assert _rank_corr(d["dn4000"], truth["bulge_fraction_r"]) > 0.5


def test_dust_rises_with_inclination_mass_and_sfr(cat):
    _, d, truth = cat
    disk = ~truth["is_quenched"] & (truth["bulge_fraction_r"] < 0.3)
    # More inclined (smaller cos i) -> more dust, at any mass.
    assert _rank_corr(truth["cos_i"][disk], d["av"][disk]) < -0.2
    sf = ~truth["is_quenched"]
    assert _rank_corr(d["log_mstar"][sf], d["av"][sf]) > 0.3
    resid = d["av"][sf] / physics.garn_best_av(d["log_mstar"][sf])
    assert _rank_corr(truth["delta_ms"][sf], resid) > 0.1
    assert (d["av"] >= 0).all()


def test_detectable_fraction(cat):
    _, d, truth = cat
    det = truth["oh12_detectable"]
    sf = ~truth["is_quenched"] & ~truth["is_agn"]
    assert 0.25 < det.mean() < 0.6
    assert det[sf].mean() > 0.6
    assert det[truth["is_quenched"]].mean() < 0.05


def test_structure_follows_mass_and_sfr(cat):
    _, d, truth = cat
    assert _rank_corr(d["log_mstar"], truth["r_e_kpc"]) > 0.3
    ssfr = d["log_sfr"] - d["log_mstar"]
    assert _rank_corr(ssfr, truth["n_knots"]) > 0.5
    assert (truth["n_knots"][ssfr < -11.0] == 0).all()


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------

def test_image_flux_matches_photometry(imgs):
    """Noise-free stamp flux vs the g, r, i photometry (mag = 22.5 - 2.5 log10 nanomaggies):
    within 0.5 % for galaxies with r_e < 4 px (little light beyond a 64 px stamp); never more
    than the photometry (+0.1 %) and within 1 % at the median for all; the mean noisy stamp sum
    equals the model's within 0.5 %."""
    table, cut, truth = imgs
    assert cut.shape == (N_IMG, 3, 64, 64) and cut.dtype == np.float32
    assert np.isfinite(cut).all()
    phot = photometry.mag_to_flux(truth["mag_true"][:, 1:4])  # g, r, i
    ratio = truth["image_model_sum"] / phot
    small = truth["r_e_arcsec"] / 0.396 < 4.0
    assert small.sum() > 100
    assert np.abs(ratio[small] - 1).max() < 0.005
    assert ratio.max() < 1.001
    assert np.median(ratio) > 0.99
    noisy = cut.sum((2, 3), dtype=np.float64)
    rel = (noisy - truth["image_model_sum"]).sum(0) / truth["image_model_sum"].sum(0)
    assert np.abs(rel).max() < 0.005
    # Against the catalogue's (noisy) magnitudes: within 3 % for 99 % of small galaxies.
    mags = np.stack([_np(table, c) for c in ("mag_g", "mag_r", "mag_i")], 1)
    r = truth["image_model_sum"][small] / photometry.mag_to_flux(mags[small])
    assert np.percentile(np.abs(r - 1), 99) < 0.03


def _moments(img: np.ndarray, rmax: float = 16.0):
    """Axis ratio and flux-weighted radius of a [H, W] image inside rmax of the centre."""
    h, w = img.shape
    y, x = np.mgrid[:h, :w] - np.array([h // 2, w // 2])[:, None, None]
    m = np.clip(img, 0, None) * (x**2 + y**2 < rmax**2)
    f = m.sum()
    xx, yy, xy = (m * x * x).sum() / f, (m * y * y).sum() / f, (m * x * y).sum() / f
    ev = np.linalg.eigvalsh(np.array([[xx, xy], [xy, yy]]))
    return np.sqrt(ev[0] / ev[1]), np.sqrt(xx + yy)


def test_morphology_in_images(imgs):
    """The images carry inclination (disk axis ratio), bulge fraction (concentration) and a
    colour gradient (bluer disks than bulges)."""
    _, cut, truth = imgs
    bright = truth["mag_true"][:, 2] < 17.5
    resolved = bright & (truth["r_e_arcsec"] / 0.396 > 3)
    disks = resolved & (truth["bulge_fraction_r"] < 0.3)
    q = np.array([_moments(cut[i, 1])[0] for i in np.flatnonzero(disks)])
    assert disks.sum() > 40
    assert _rank_corr(truth["cos_i"][disks], q) > 0.5
    # Concentration: light within 2 px / within 8 px rises with B/T at fixed size.
    idx = np.flatnonzero(resolved)
    y, x = np.mgrid[:64, :64] - 32
    r2 = x**2 + y**2
    conc = np.array([cut[i, 1][r2 < 4].sum() / cut[i, 1][r2 < 64].sum() for i in idx])
    size = truth["r_e_arcsec"][idx]
    resid = np.log(conc) - np.polyval(np.polyfit(np.log(size), np.log(conc), 1), np.log(size))
    assert _rank_corr(truth["bulge_fraction_r"][idx], resid) > 0.3
    # Colour gradient: g-i bluer outside the half-light radius than inside, for composite
    # bulge + disk galaxies (noise-free expectation; the check uses bright galaxies).
    comp = np.flatnonzero(resolved & (truth["bulge_fraction_r"] > 0.2)
                          & (truth["bulge_fraction_r"] < 0.8))
    grad = []
    for i in comp:
        re_pix = truth["r_e_arcsec"][i] / 0.396
        inner, outer = r2 < re_pix**2, (r2 >= re_pix**2) & (r2 < (2.5 * re_pix) ** 2)
        g_in, i_in = cut[i, 0][inner].sum(), cut[i, 2][inner].sum()
        g_out, i_out = cut[i, 0][outer].sum(), cut[i, 2][outer].sum()
        grad.append(np.log(g_out / i_out) - np.log(g_in / i_in))
    assert len(grad) > 20 and np.median(grad) > 0


# ----------------------------------------------------------------------------------------------
# Determinism and streaming
# ----------------------------------------------------------------------------------------------

def test_deterministic_per_seed_and_chunking():
    whole = simulate_batch(600, with_images=False, seed=3)
    a = simulate_batch(300, with_images=False, seed=3)
    b = simulate_batch(300, with_images=False, seed=3, offset=300)
    assert pa.concat_tables([a, b]).equals(whole)
    odd = simulate_batch(77, with_images=False, seed=3, offset=250)  # spans two chunks
    assert odd.equals(whole.slice(250, 77))
    other = simulate_batch(300, with_images=False, seed=4)
    assert not np.array_equal(_np(other, "log_mstar"), _np(a, "log_mstar"))
    assert len(set(other.column("objid").to_pylist()) & set(a.column("objid").to_pylist())) == 0
    # Images do not change the catalogue, and are themselves reproducible.
    t1 = simulate_batch(20, image_size=64, seed=3, offset=CHUNK_SIZE - 10)
    t2 = simulate_batch(20, image_size=64, seed=3, offset=CHUNK_SIZE - 10)
    assert t1.equals(t2)
    assert t1.drop_columns(["cutout"]).equals(whole.slice(CHUNK_SIZE - 10, 20))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        simulate_batch(4, image_size=32)
    with pytest.raises(ValueError):
        simulate_batch(4, image_size=200)
    with pytest.raises(ValueError):
        simulate_batch(4, seed=-1)
    assert simulate_batch(0, with_images=False).num_rows == 0


def test_simulate_writes_sharded_parquet(tmp_path):
    out = str(tmp_path / "mock")
    seen = []
    m = simulate(700, out, image_size=64, seed=2, rows_per_shard=300,
                 progress=lambda done, total: seen.append((done, total)))
    assert m["num_rows"] == 700
    assert [s["num_rows"] for s in m["shards"]] == [300, 300, 100]
    assert sum(s["num_rows"] for s in m["shards"]) == m["num_rows"]
    assert m["cutout_shape"] == [3, 64, 64]
    assert m["objid_origin"] == "simulated"
    assert m["sources"] == {"mock": 700}
    ex = m["extra"]
    assert ex["seed"] == 2 and ex["image_size"] == 64 and ex["generator"]
    assert 0 < ex["selection_fraction"] < 1
    assert seen[-1] == (700, 700)
    assert shards.read_manifest(out)["num_rows"] == 700
    t = shards.read_table(out)
    assert t.num_rows == 700
    assert t.schema.field("cutout").type == galaxy_schema((3, 64, 64)).field("cutout").type
    ref = simulate_batch(700, with_images=False, seed=2)
    assert t.column("objid").to_pylist() == ref.column("objid").to_pylist()
    for c in MAG_COLUMNS:
        assert np.array_equal(_np(t, c), _np(ref, c))


def test_simulate_without_images(tmp_path):
    m = simulate(300, str(tmp_path / "cat"), with_images=False, seed=1)
    assert m["num_rows"] == 300 and m["cutout_shape"] is None
    assert m["extra"]["image_size"] is None
    # Latent columns only on request.
    assert "latent_columns" not in m["extra"]
    names = shards.read_schema(str(tmp_path / "cat")).names
    assert not [c for c in names if c.startswith(LATENT_PREFIX)]


def test_benchmark_quick():
    spec = importlib.util.spec_from_file_location("bench_sim", REPO / "benchmarks" / "bench_sim.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--quick"])
    assert res["images_galaxies_per_s_per_core"] > 0
    assert res["catalog_galaxies_per_s_per_core"] > res["images_galaxies_per_s_per_core"]


# ----------------------------------------------------------------------------------------------
# Latent morphology columns
# ----------------------------------------------------------------------------------------------

def test_latent_columns_are_extra_documented_and_consistent():
    """with_latents adds exactly the lat_* columns (float32, unit + description, no nulls,
    finite) after the standard ones and changes nothing else; they agree with the truth the
    images are rendered from."""
    plain = simulate_batch(300, with_images=False, seed=3)
    t, truth = simulate_batch(300, with_images=False, seed=3, with_latents=True,
                              return_truth=True)
    lat = [c for c in t.column_names if c.startswith(LATENT_PREFIX)]
    assert tuple(lat) == LATENT_NAMES and t.column_names[-len(lat):] == lat
    assert t.drop_columns(lat).equals(plain)
    for name in lat:
        f = t.schema.field(name)
        assert f.type == pa.float32(), name
        assert f.metadata[b"description"] and b"unit" in f.metadata, name
        assert t.column(name).null_count == 0 and np.isfinite(_np(t, name)).all(), name
    inc = np.radians(_np(t, "lat_inclination"))
    assert np.allclose(_np(t, "lat_q_disk"), physics.disk_axis_ratio(np.cos(inc)), atol=1e-4)
    assert np.allclose(_np(t, "lat_r_e_pix") * 0.396, truth["r_e_arcsec"], rtol=1e-5)
    assert np.allclose(_np(t, "lat_bulge_fraction_r"), truth["bulge_fraction_r"], atol=1e-5)
    assert np.allclose(_np(t, "lat_fibre_fraction_r"), truth["fibre_r"], atol=1e-5)
    # With images too, the catalogue part is the same.
    ti = simulate_batch(20, image_size=64, seed=3, with_latents=True)
    assert ti.drop_columns(["cutout"]).equals(t.slice(0, 20))


def test_simulate_cli_with_latents(tmp_path):
    from raygal.cli import main

    out = str(tmp_path / "lat")
    assert main(["simulate", "--n", "300", "--no-images", "--with-latents", "--seed", "4",
                 "--out", out]) == 0
    m = shards.read_manifest(out)
    assert m["extra"]["latent_columns"] == list(LATENT_NAMES)
    t = shards.read_table(out)
    assert set(LATENT_NAMES) <= set(t.column_names)
    assert t.drop_columns(list(LATENT_NAMES)).equals(
        simulate_batch(300, with_images=False, seed=4))


def test_pipeline_ignores_latents():
    """Latents are never model inputs: training selects its columns by name, and the
    photometric features, targets, row status and normalisation statistics of a batch are
    the same with or without them."""
    from raygal.inputs import (StatsAccumulator, as_numpy_batch, phot_matrix, row_status,
                               target_matrix)
    from raygal.train.config import TrainConfig
    from raygal.train.driver import training_columns

    t = simulate_batch(300, image_size=64, seed=6, with_latents=True)
    for model, inputs in (("cfm", "image+phot"), ("nf", "phot"), ("gaussian", "phot")):
        cfg = TrainConfig(model=model, data="unused", out="unused", inputs=inputs)
        assert not [c for c in training_columns(cfg, t.column_names)
                    if c.startswith(LATENT_PREFIX)]
    full = as_numpy_batch(t)
    bare = as_numpy_batch(t.drop_columns(list(LATENT_NAMES)))
    assert np.array_equal(phot_matrix(full), phot_matrix(bare))
    assert np.array_equal(target_matrix(full, TARGET_NAMES), target_matrix(bare, TARGET_NAMES),
                          equal_nan=True)
    assert np.array_equal(row_status(full, True), row_status(bare, True))
    a = StatsAccumulator().update(full).finalize().to_dict()
    b = StatsAccumulator().update(bare).finalize().to_dict()
    assert a == b


# ----------------------------------------------------------------------------------------------
# The SDSS fibre
# ----------------------------------------------------------------------------------------------

def test_enclosed_fraction_against_closed_forms():
    """An exponential disk holds P(2, R/h) of its light within R (seeing 0.3", a fifth of the
    fibre radius, blurs it by < 1.5 %); a point source's share is the PSF's; shares fall with
    size and with seeing."""
    from raygal.sim.aperture import gammainc
    from raygal.sim.images import SERSIC_B1

    r_e = np.array([0.5, 1.5, 5.0, 15.0, 30.0])
    exact = gammainc(2, aperture.FIBRE_RADIUS_ARCSEC / (r_e / SERSIC_B1))
    got = aperture.enclosed_fraction("exp", r_e, np.ones(5), np.full(5, 0.3))
    assert np.allclose(got, exact, rtol=0.015)
    # A tiny galaxy is a point source.
    seeing = np.array([0.9, 1.4, 2.0])
    point = aperture.enclosed_fraction("point", None, None, seeing)
    assert np.all(np.diff(point) < 0) and 0.6 < point[-1] < point[0] < 1.0
    for prof in ("exp", "dev"):
        tiny = aperture.enclosed_fraction(prof, np.full(3, 0.02), np.ones(3), seeing)
        assert np.allclose(tiny, point, atol=0.01), prof
        sizes = aperture.enclosed_fraction(prof, np.geomspace(0.1, 20, 30), np.ones(30),
                                           np.full(30, 1.4))
        assert np.all(np.diff(sizes) < 0), prof
    # Half the light inside r_e (de Vaucouleurs truncated at 7-8 r_e: a little more).
    half = aperture.enclosed_fraction("dev", np.array([1.5]), np.ones(1), np.array([0.3]))
    assert 0.49 < half[0] < 0.55
    assert aperture.disk_mean_radius(np.array([0.9999]))[0] == pytest.approx(2 / SERSIC_B1,
                                                                             rel=0.01)


def test_fibre_aperture_bias(cat):
    """Line fluxes, Dn(4000) and 12+log(O/H) are measured inside the 3" fibre: lines are the
    fibre's share of the total (the disk's for star-forming gas), the share falls with angular
    size, the fibre Dn(4000) is older than the whole galaxy's where the fibre favours the
    bulge, and the fibre metallicity is higher where it sees only the centre (-0.1 dex per
    r_e)."""
    _, d, truth = cat
    sf = ~truth["is_quenched"] & ~truth["is_agn"]
    ratio = d["flux_halpha"][sf] / truth["flux_halpha_total"][sf]
    assert np.allclose(ratio, truth["fibre_disk"][sf], rtol=1e-4)
    assert _rank_corr(truth["r_e_arcsec"], truth["fibre_r"]) < -0.8
    assert 0.25 < np.median(truth["fibre_r"]) < 0.6  # SDSS fibres see about a third
    comp = (truth["bulge_fraction_r"] > 0.15) & (truth["bulge_fraction_r"] < 0.7)
    excess = truth["fibre_old"] - truth["fibre_disk"]
    d_dn = d["dn4000"] - truth["dn4000_global"]
    assert _rank_corr(excess[comp], d_dn[comp]) > 0.4
    d_oh = truth["oh12_true"] - truth["oh12_re"]
    inside = (truth["oh12_true"] > 7.01) & (truth["oh12_true"] < 9.79)
    expect = physics.METALLICITY_GRADIENT * (truth["fibre_disk_radius"] - 1.0)
    assert np.allclose(d_oh[inside], expect[inside], atol=2e-6)
    assert _rank_corr(truth["r_e_arcsec"], d_oh) > 0.8
