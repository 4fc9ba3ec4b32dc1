"""The streaming survey driver: flux-limited chunks of mock galaxies -> Arrow tables -> shards.

Determinism. The survey for a seed is a fixed sequence of galaxies; galaxy k lives in chunk
k // CHUNK_SIZE, and every chunk is generated from its own random streams
(``SeedSequence(seed, spawn_key=(chunk,))`` for the catalogue, ``spawn_key=(chunk, 1)`` for
the image noise). A galaxy therefore has the same properties, image and objid however the
survey is split into calls and whether images are rendered or not. Across machines the random
draws are identical (numpy's PCG64 and torch's CPU generator); floating-point results can
differ in the last bits where vectorised math libraries differ.

Selection. Candidates are drawn from the volume- and mass-function-weighted population
(stellar mass from Baldry et al. 2012, redshift uniform in comoving volume over
Z_MIN < z < Z_MAX), observed (ugriz with noise) and kept when the observed r < 17.77 and the
half-light surface brightness mu50 < 24.5 mag/arcsec^2 (the SDSS main-sample target
selection, Strauss et al. 2002). To avoid drawing mostly invisible dwarfs, the
candidates come from the same population restricted to z < z_max(M*), the largest redshift at
which the brightest possible galaxy of that mass (main sequence + 3 sigma, youngest old stars,
no dust) is still brighter than r = 17.77 + 0.3; every galaxy beyond z_max(M*) would fail the
cut, so the kept sample is exactly the flux-limited one (barring > 0.3 mag of photometric
scatter; in a brute-force check, 9e5 galaxies selected from unrestricted candidates all had
z < 0.84 z_max(M*) where z_max < Z_MAX).
``selection_fraction`` is the fraction of the whole volume-limited population (8 < log M* <
12.3, Z_MIN < z < Z_MAX) that enters the survey.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import torch

from ..schema import (BANDS, CUTOUT_BANDS, MAG_COLUMNS, MAGERR_COLUMNS, SDSS_PIXEL_SCALE,
                      TARGET_NAMES, Flag, galaxy_schema, synthetic_objid)
from . import aperture, cosmology, images, morphology, photometry, physics
from .latents import LATENT_NAMES, latent_arrays, latent_fields

GENERATOR = "raygal.sim/2"
CHUNK_SIZE = 256           # galaxies per deterministic chunk
ROUND_SIZE = 1024          # candidates drawn per selection round
Z_MIN, Z_MAX = 0.01, 0.3
R_LIMIT = 17.77
MU50_LIMIT = 24.5          # mag/arcsec^2, r-band mean surface brightness inside r_50
_BOUND_MARGIN = 0.3        # mag of photometric scatter the selection bound allows for
RA_RANGE = (120.0, 240.0)  # deg: a patch of the SDSS northern cap
DEC_RANGE = (0.0, 60.0)
SOURCE = "mock"
IMAGE_SIZE_RANGE = (64, 160)
_GRI = [BANDS.index(b) for b in CUTOUT_BANDS]


# ----------------------------------------------------------------------------------------------
# The candidate population and its selection bound
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Proposal:
    logm: np.ndarray        # [M] mass grid
    zmax: np.ndarray        # [M] largest redshift at which a galaxy of that mass can pass
    cdf: np.ndarray         # [M] cumulative candidate-mass distribution
    fraction: float         # candidate population / whole volume-limited population


@lru_cache(maxsize=1)
def proposal() -> Proposal:
    logm = np.arange(physics.LOGM_MIN, physics.LOGM_MAX + 1e-9, 0.005)
    zg = np.linspace(Z_MIN, Z_MAX, 581)
    mm, zz = np.meshgrid(logm, zg, indexing="ij")
    mm, zz = mm.ravel(), zz.ravel()
    log_sfr = physics.main_sequence(mm, zz) + physics.MS_TRUNCATE * physics.MS_SCATTER
    mass = 10.0 ** mm
    my = np.minimum(10.0 ** log_sfr * photometry.T_YOUNG_GYR * 1e9, 0.8 * mass)
    zeros = np.zeros_like(mm)
    f = photometry.population_fluxes(my, mass - my, zeros, zeros, zz).sum(0)[:, 2]
    r_bright = photometry.flux_to_mag(f).reshape(len(logm), len(zg))
    ok = r_bright < R_LIMIT + _BOUND_MARGIN
    # r_bright rises with z; z_max is the last passing grid redshift plus one step.
    last = np.where(ok.any(1), ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1), -1)
    zmax = np.where(last >= 0, zg[np.minimum(last + 1, len(zg) - 1)], Z_MIN)
    vol = np.maximum(cosmology.comoving_volume(zmax) - cosmology.comoving_volume(Z_MIN), 0.0)
    phi = physics.mass_function(logm)
    w = phi * vol
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(logm))])
    v_all = cosmology.comoving_volume(Z_MAX) - cosmology.comoving_volume(Z_MIN)
    phi_int = np.trapezoid(phi, logm) if hasattr(np, "trapezoid") else np.trapz(phi, logm)
    return Proposal(logm, zmax, cdf / cdf[-1], float(cdf[-1] / (phi_int * v_all)))


def _draw_candidates(rng: np.random.Generator, n: int) -> dict:
    """[n] candidates: mass, redshift, stellar populations, seeing and observed ugriz."""
    prop = proposal()
    logm = np.interp(rng.random(n), prop.cdf, prop.logm)
    zmax = np.interp(logm, prop.logm, prop.zmax)
    v0 = cosmology.comoving_volume(Z_MIN)
    v = v0 + rng.random(n) * (cosmology.comoving_volume(zmax) - v0)
    z = np.clip(cosmology.redshift_at_volume(v), Z_MIN, Z_MAX)

    cat = physics.draw_stellar_populations(rng, logm, z)
    cat["log_mstar"] = logm
    cat["z"] = z
    pops = photometry.population_fluxes(cat["mass_young"], cat["mass_old"], cat["age_mix"],
                                        cat["av_stars"], z)  # [2, n, 5]
    cat["flux_young"], cat["flux_old"] = pops[0], pops[1]
    flux = pops[0] + pops[1]
    cat["psf_fwhm"] = morphology.draw_seeing(rng, n)
    cat["sky_scale"] = np.exp(morphology.SKY_SCATTER * rng.standard_normal(n))
    # Effective aperture of a model magnitude: ~4 pi (r_e^2 + sigma_psf^2) pixels.
    re_pix = cat["r_e_arcsec"] / SDSS_PIXEL_SCALE
    sig_pix = cat["psf_fwhm"] / 2.3548 / SDSS_PIXEL_SCALE
    aperture = 4 * np.pi * (re_pix**2 + sig_pix**2)
    flux_err = photometry.flux_errors(flux, aperture, cat["sky_scale"])
    cat["mag_true"] = photometry.flux_to_mag(flux)
    cat["mag"], cat["magerr"] = photometry.observe(flux, flux_err, rng)
    return cat


def surface_brightness_r50(cat: dict) -> np.ndarray:
    """[N] mean r-band surface brightness inside the half-light radius, mag/arcsec^2 (the
    half-light circle holds half the flux: mu50 = r + 0.75 + 2.5 log10(pi r50^2))."""
    return cat["mag"][:, 2] + 0.7526 + 2.5 * np.log10(np.pi * cat["r_e_arcsec"] ** 2)


def selected(cat: dict) -> np.ndarray:
    """The SDSS main-sample target selection (Strauss et al. 2002, AJ 124, 1810) on observed
    quantities: r < 17.77 and mu50 < 24.5 mag/arcsec^2."""
    with np.errstate(invalid="ignore"):
        return (cat["mag"][:, 2] < R_LIMIT) & (surface_brightness_r50(cat) < MU50_LIMIT)


def _take(cat: dict, idx) -> dict:
    """Rows ``idx`` (an index array or a slice) of every per-galaxy array of ``cat``."""
    return {k: v[idx] for k, v in cat.items()}


def _concat(cats: list[dict]) -> dict:
    if len(cats) == 1:
        return cats[0]
    return {k: np.concatenate([c[k] for c in cats]) for k in cats[0]}


def _rng(seed: int, *key: int) -> np.random.SeedSequence:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in key))


# ----------------------------------------------------------------------------------------------
# One chunk
# ----------------------------------------------------------------------------------------------

def generate_chunk(seed: int, chunk: int, image_size: int | None = 64) -> dict:
    """The ``CHUNK_SIZE`` galaxies of chunk ``chunk`` of survey ``seed``.

    Returns a dict of [CHUNK_SIZE, ...] numpy arrays: the catalogue quantities, the latent
    truths, ``cutout`` [n, 3, S, S] and ``image_model_sum`` [n, 3] when ``image_size`` is not
    None, and the scalars ``n_candidates`` (candidates drawn) and ``n_selected``.
    """
    rng = np.random.Generator(np.random.PCG64(_rng(seed, chunk)))
    kept, n_cand, n_kept = [], 0, 0
    while n_kept < CHUNK_SIZE:
        cand = _draw_candidates(rng, ROUND_SIZE)
        sel = np.flatnonzero(selected(cand))
        sel = sel[:CHUNK_SIZE - n_kept]
        # Candidates after the last one needed were never "looked at": count only up to it.
        n_cand += ROUND_SIZE if n_kept + len(sel) < CHUNK_SIZE else int(sel[-1]) + 1
        kept.append(_take(cand, sel))
        n_kept += len(sel)
    cat = _concat(kept)
    n = CHUNK_SIZE

    # Properties that do not affect the selection, drawn for the kept galaxies only. The
    # structure comes first: what the spectroscopic fibre sees depends on it.
    cat.update(morphology.draw_morphology(rng, cat, cat["flux_young"], cat["flux_old"]))
    cat["fibre_seeing"] = morphology.draw_seeing(rng, n)
    cat.update(aperture.fibre_shares(cat, cat["fibre_seeing"]))
    cat.update(physics.draw_dynamics(rng, cat["log_mstar"], cat["bulge_fraction"],
                                     cat["r_e_kpc"]))
    oh12_ref = physics.draw_metallicity(rng, cat["log_mstar"], cat["delta_ms"])
    cat["oh12_re"] = physics.fibre_metallicity(oh12_ref, 1.0)
    cat["oh12_true"] = physics.fibre_metallicity(oh12_ref, cat["fibre_disk_radius"])
    cat.update(physics.draw_lines(rng, cat["log_mstar"], cat["log_sfr"], cat["oh12_true"],
                                  cat["av"], cat["z"], cat["log_mbh"], cat["is_quenched"],
                                  cat))
    cat["dn4000"] = physics.fibre_dn4000(rng, cat, cat)
    cat["ra"] = rng.uniform(*RA_RANGE, n)
    s0, s1 = np.sin(np.radians(DEC_RANGE))
    cat["dec"] = np.degrees(np.arcsin(rng.uniform(s0, s1, n)))
    cat["objid"] = synthetic_objid(f"sim-seed{seed}", chunk * CHUNK_SIZE + np.arange(n))
    cat["n_candidates"] = n_cand
    cat["n_selected"] = n

    if image_size is not None:
        gen = torch.Generator().manual_seed(int(_rng(seed, chunk, 1).generate_state(1)[0]))
        cat["cutout"], cat["image_model_sum"] = images.render(
            image_params(cat), image_size, generator=gen)
    return cat


def image_params(cat: dict) -> images.GalaxyImageParams:
    """Pixel-unit rendering parameters of the galaxies in ``cat`` (g, r, i)."""
    px = 1.0 / SDSS_PIXEL_SCALE
    sky = np.array([photometry.sky_per_pixel(b) for b in CUTOUT_BANDS])
    gain = np.array([photometry.BAND_NOISE[b][1] for b in CUTOUT_BANDS])
    sig_psf = cat["psf_fwhm"] / 2.3548 * px
    return images.GalaxyImageParams(
        flux_bulge=cat["flux_bulge"][:, _GRI], flux_disk=cat["flux_disk"][:, _GRI],
        flux_knots=cat["flux_knots"][:, _GRI],
        r_bulge=cat["r_bulge"] * px, r_disk=cat["r_disk"] * px,
        q_bulge=cat["q_bulge"], q_disk=cat["q_disk"], position_angle=cat["position_angle"],
        psf_fwhm=cat["psf_fwhm"] * px,
        knot_fwhm=np.clip(np.hypot(cat["psf_fwhm"], 2.3548 * cat["knot_sigma"]) * px, 2.0, 14.0),
        knot_x=cat["knot_x"] * px, knot_y=cat["knot_y"] * px, knot_w=cat["knot_w"],
        lane_depth=cat["lane_depth"],
        # The lane is applied after the PSF: widen it by the PSF.
        lane_width=np.sqrt((cat["lane_width"] * px) ** 2 + sig_psf**2),
        lane_length=np.sqrt((cat["lane_length"] * px) ** 2 + sig_psf**2),
        sky=cat["sky_scale"][:, None] * sky[None, :], e_per_nmgy=gain)


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

TRUTH_KEYS = (
    "oh12_true", "oh12_detectable", "is_quenched", "is_agn", "log_sfr", "delta_ms",
    "inclination", "cos_i", "position_angle", "bulge_fraction_r", "r_e_arcsec", "r_e_kpc",
    "r_bulge", "r_disk", "q_bulge", "q_disk", "n_knots", "knot_fraction", "age_mix",
    "mass_young", "av_stars", "psf_fwhm", "sky_scale", "mag_true", "snr_halpha",
    "snr_hbeta", "snr_nii", "snr_oiii", "lane_depth", "oh12_re", "dn4000_global",
    "flux_halpha_total", "fibre_seeing", "fibre_bulge", "fibre_disk", "fibre_old",
    "fibre_point", "fibre_r", "fibre_disk_radius",
)


def _check_image_size(image_size: int) -> int:
    s = int(image_size)
    lo, hi = IMAGE_SIZE_RANGE
    if not lo <= s <= hi or s % 2:
        raise ValueError(f"image_size must be an even number of pixels in {lo}..{hi}, "
                         f"got {image_size}")
    return s


def survey_schema(image_size: int | None, with_latents: bool = False) -> pa.Schema:
    """The galaxy schema of a mock survey: a (3, S, S) cutout column unless ``image_size`` is
    None, and the ``lat_*`` columns (``raygal.sim.latents``) after the standard ones when
    ``with_latents``."""
    shape = None if image_size is None else (3, image_size, image_size)
    return galaxy_schema(shape, extra=latent_fields() if with_latents else None)


def to_table(cat: dict, image_size: int | None, with_latents: bool = False) -> pa.Table:
    """Arrow table (``survey_schema``) of a chunk dict."""
    schema = survey_schema(image_size, with_latents)
    n = len(cat["objid"])
    cols: dict[str, pa.Array] = {
        "objid": pa.array(cat["objid"], pa.int64()),
        "ra": pa.array(cat["ra"], pa.float64()),
        "dec": pa.array(cat["dec"], pa.float64()),
    }
    flags = np.zeros(n, dtype=np.int32)
    for j, (c, e) in enumerate(zip(MAG_COLUMNS, MAGERR_COLUMNS)):
        # A non-positive measured flux (rare, faint u or z) is a non-detection: null + flags.
        miss = ~np.isfinite(cat["mag"][:, j])
        flags[miss] |= int(Flag.mag_missing(BANDS[j]) | Flag.NONDETECTION | Flag.MAGERR_MISSING)
        cols[c] = pa.array(cat["mag"][:, j].astype(np.float32), mask=miss)
        cols[e] = pa.array(cat["magerr"][:, j].astype(np.float32), mask=miss)
    if image_size is not None:
        # Built on the schema's own tensor type (from_numpy_ndarray would add a permutation
        # attribute that makes the type differ from galaxy_schema's).
        flat = pa.array(np.ascontiguousarray(cat["cutout"], dtype=np.float32).reshape(-1))
        storage = pa.FixedSizeListArray.from_arrays(flat, 3 * image_size * image_size)
        cols["cutout"] = pa.ExtensionArray.from_storage(schema.field("cutout").type, storage)
    values = {"z": cat["z"], "log_mstar": cat["log_mstar"], "log_sfr": cat["log_sfr"],
              "log_mbh": cat["log_mbh"], "sigma_v": cat["sigma_v"], "dn4000": cat["dn4000"],
              "av": cat["av"], "flux_halpha": cat["flux_halpha"],
              "flux_hbeta": cat["flux_hbeta"], "flux_nii": cat["flux_nii"],
              "flux_oiii": cat["flux_oiii"]}
    for name in TARGET_NAMES:
        if name == "oh12":
            oh = cat["oh12_true"].astype(np.float32)
            cols[name] = pa.array(oh, mask=~cat["oh12_detectable"].astype(bool))
        else:
            cols[name] = pa.array(np.asarray(values[name], dtype=np.float32))
    cols["flags"] = pa.array(flags)
    cols["source"] = pa.array([SOURCE] * n, pa.string())
    if with_latents:
        cols.update({k: pa.array(v) for k, v in latent_arrays(cat).items()})
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def _chunk_range(n: int, offset: int) -> range:
    if n < 0 or offset < 0:
        raise ValueError("n and offset must be >= 0")
    if n == 0:
        return range(0)
    return range(offset // CHUNK_SIZE, (offset + n - 1) // CHUNK_SIZE + 1)


def simulate_batch(n: int, image_size: int = 64, seed: int = 0, offset: int = 0,
                   with_images: bool = True, return_truth: bool = False,
                   with_latents: bool = False):
    """Galaxies ``offset .. offset+n-1`` of the mock survey ``seed`` as an Arrow table
    (``survey_schema``; with a (3, S, S) gri cutout column when ``with_images``, and the
    ``lat_*`` latent morphology columns of ``raygal.sim.latents`` when ``with_latents``).

    With ``return_truth=True`` returns ``(table, truth)``: ``truth`` is a dict of numpy arrays
    [n, ...] of latent quantities (see ``TRUTH_KEYS``: true 12+log(O/H) for every galaxy,
    inclination, bulge fraction, sizes, quenched / AGN labels, noise-free magnitudes, ...), plus
    ``image_model_sum`` [n, 3] (noise-free g, r, i flux inside the stamp) with images, and the
    selection: ``n_candidates`` / ``n_selected`` per chunk spanned and ``selection_fraction``.
    """
    size = _check_image_size(image_size) if with_images else None
    chunks = _chunk_range(n, offset)
    parts, n_cand = [], 0
    for c in chunks:
        cat = generate_chunk(seed, c, size)
        n_cand += cat.pop("n_candidates")
        cat.pop("n_selected")
        lo = max(offset - c * CHUNK_SIZE, 0)
        hi = min(offset + n - c * CHUNK_SIZE, CHUNK_SIZE)
        parts.append(cat if (lo, hi) == (0, CHUNK_SIZE) else _take(cat, slice(lo, hi)))
    if not parts:
        table = survey_schema(size, with_latents).empty_table()
        return (table, {}) if return_truth else table
    cat = _concat(parts)
    table = to_table(cat, size, with_latents)
    if not return_truth:
        return table
    truth = {k: cat[k] for k in TRUTH_KEYS}
    if size is not None:
        truth["image_model_sum"] = cat["image_model_sum"]
    n_sel = len(chunks) * CHUNK_SIZE
    truth["n_candidates"] = n_cand
    truth["n_selected"] = n_sel
    truth["selection_fraction"] = selection_fraction(n_sel, n_cand)
    return table, truth


def selection_fraction(n_selected: int, n_candidates: int) -> float:
    """Fraction of the volume-limited population (8 < log M* < 12.3, Z_MIN < z < Z_MAX) that
    passes r < 17.77, from a run's counts."""
    return float(n_selected / max(n_candidates, 1) * proposal().fraction)


def simulate(n: int, out_uri: str, image_size: int = 64, seed: int = 0,
             rows_per_shard: int = 4096, with_images: bool = True, progress=None,
             compression: str = "zstd", with_latents: bool = False) -> dict:
    """Write ``n`` mock galaxies (survey ``seed``) to a sharded Parquet dataset at ``out_uri``
    (local path or s3://) and return its manifest.

    Streams: one chunk of ``CHUNK_SIZE`` galaxies is generated, written and dropped at a
    time, and ``ShardWriter`` holds at most one shard, so memory stays bounded for any n.
    ``progress``, if given, is called as ``progress(done, n)`` after every chunk.
    The manifest's ``extra`` records the generator, seed, image size and selection fraction,
    and the names of the ``lat_*`` columns written with ``with_latents`` (``latent_columns``).
    ``compression`` is the Parquet codec: noise-dominated cutouts barely compress (zstd saves
    ~6 %), and zstd costs about as much CPU as generating them; "snappy" halves that.
    """
    from ..shards import ShardWriter

    size = _check_image_size(image_size) if with_images else None
    schema = survey_schema(size, with_latents)
    extra = {"generator": GENERATOR, "seed": int(seed), "image_size": size,
             "pixel_scale_arcsec": SDSS_PIXEL_SCALE, "r_limit": R_LIMIT,
             "z_range": [Z_MIN, Z_MAX], "chunk_size": CHUNK_SIZE}
    if with_latents:
        extra["latent_columns"] = list(LATENT_NAMES)
    writer = ShardWriter(out_uri, schema, rows_per_shard=rows_per_shard,
                         objid_origin="simulated", extra=extra, compression=compression)
    done, n_cand, n_sel = 0, 0, 0
    for c in _chunk_range(n, 0):
        cat = generate_chunk(seed, c, size)
        n_cand += cat.pop("n_candidates")
        n_sel += cat.pop("n_selected")
        take = min(CHUNK_SIZE, n - done)
        if take < CHUNK_SIZE:
            cat = _take(cat, slice(0, take))
        writer.write(to_table(cat, size, with_latents))
        done += take
        del cat
        if progress is not None:
            progress(done, n)
    writer.extra.update({
        "selection_fraction": selection_fraction(n_sel, n_cand),
        "candidates_drawn": int(n_cand),
        "candidate_acceptance": float(n_sel / max(n_cand, 1)),
    })
    return writer.close()
