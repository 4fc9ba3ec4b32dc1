"""Morphology of the mock galaxies: bulge and disk sizes and shapes, star-forming knots, dust
lanes. Sizes and offsets in arcsec (``survey`` converts them to pixels for ``images.render``),
angles in radians.

The choices tie the image to physical quantities that integrated photometry constrains poorly:

* disk axis ratio <- inclination (which also raises A_V, ``physics.dust_av``), and a dust lane
  across inclined dusty disks;
* bulge-to-total light <- Dn(4000) (``physics.draw_stellar_populations``), and a bulge made of
  the old stars only, so bulges are redder than disks (a colour gradient);
* size <- stellar mass (Shen et al. 2003) through the angular-diameter distance; bulges of
  disk galaxies are compact, r_e(bulge) / r_e(disk) = 0.13 (r_e / h = 0.22, MacArthur,
  Courteau & Holtzman 2003, ApJ 582, 689), rising to 1 for pure bulges as (B/T)^2, and the
  disk radius is set so that the composite's half-light radius is the galaxy's
  (``component_radii``);
* knots <- specific SFR: a share of the young stars' light, in bright compact clumps.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..schema import BANDS, CUTOUT_BANDS
from . import cosmology, photometry, physics
from .aperture import gammainc
from .images import MAX_KNOTS, SERSIC_B1, SERSIC_B4

PSF_FWHM_MEDIAN = 1.4     # arcsec, SDSS median r-band seeing
PSF_FWHM_SCATTER = 0.12   # ln
PSF_FWHM_RANGE = (0.9, 2.2)
SKY_SCATTER = 0.1         # ln, night-to-night sky brightness
BULGE_DISK_SIZE_RATIO = 0.13  # r_e(bulge) / r_e(disk) of disk galaxies (MacArthur et al. 2003)


def bulge_disk_size_ratio(bt) -> np.ndarray:
    """r_e(bulge) / r_e(disk) at r-band bulge fraction bt: 0.13 for disks, 1 for pure bulges."""
    bt = np.asarray(bt, dtype=np.float64)
    return BULGE_DISK_SIZE_RATIO + (1.0 - BULGE_DISK_SIZE_RATIO) * bt**2


@lru_cache(maxsize=1)
def _disk_radius_table() -> tuple[np.ndarray, np.ndarray]:
    """(bt grid, r_e(disk) / r_e(galaxy)) such that the bulge + disk composite holds half its
    light inside the galaxy's half-light radius. A Sersic profile holds P(2n, b_n x^(1/n)) of
    its light inside x r_e (P: regularised lower incomplete gamma); bisection on the disk
    radius for every bt at once."""
    bt = np.linspace(0.0, 1.0, 201)
    c = bulge_disk_size_ratio(bt)
    lo, hi = np.full_like(bt, 0.2), np.full_like(bt, 5.0)
    for _ in range(60):
        d = 0.5 * (lo + hi)
        inside = (bt * gammainc(8, SERSIC_B4 * (1.0 / (c * d)) ** 0.25)
                  + (1 - bt) * gammainc(2, SERSIC_B1 / d))
        lo, hi = np.where(inside > 0.5, d, lo), np.where(inside > 0.5, hi, d)
    return bt, 0.5 * (lo + hi)


def component_radii(r_gal, bt) -> tuple[np.ndarray, np.ndarray]:
    """Half-light semi-major axes (bulge, disk) of galaxies with half-light radius r_gal [N]
    and r-band bulge fraction bt [N]: compact bulges in disks (``bulge_disk_size_ratio``), the
    disk sized so that the composite's half-light radius is r_gal."""
    grid, d = _disk_radius_table()
    r_disk = np.asarray(r_gal) * np.interp(bt, grid, d)
    return bulge_disk_size_ratio(bt) * r_disk, r_disk


def draw_seeing(rng: np.random.Generator, n: int) -> np.ndarray:
    """[N] PSF FWHM in arcsec (one per galaxy, the same in g, r, i)."""
    f = PSF_FWHM_MEDIAN * np.exp(PSF_FWHM_SCATTER * rng.standard_normal(n))
    return np.clip(f, *PSF_FWHM_RANGE)


def draw_morphology(rng: np.random.Generator, cat: dict, flux_young: np.ndarray,
                    flux_old: np.ndarray) -> dict:
    """Bulge/disk decomposition, knots and dust lane of galaxies in ``cat`` (the dict of [N]
    arrays from ``physics.draw_stellar_populations`` plus ``z``, ``log_mstar``).

    flux_young, flux_old: [N, 5] ugriz nanomaggies of the two stellar populations.
    Returns [N] (or [N, K], [N, 5]) arrays: bulge_fraction_r (actual r-band B/T),
    bulge_old_share (share of the old stars in the bulge; the rest, and all young stars, are
    in the disk),
    flux_bulge / flux_disk / flux_knots [N, 5], r_bulge, r_disk (arcsec), q_bulge, q_disk,
    knot_x, knot_y (arcsec), knot_w [N, K], knot_sigma (arcsec), n_knots, knot_fraction
    (share of the total r light in knots), lane_depth [N, 3] (g, r, i), lane_width, lane_length
    (arcsec).
    """
    n = len(cat["z"])
    flux_total = flux_young + flux_old
    # Bulge = old stars only: its r-band share is the target B/T, capped by the old light.
    want = cat["bulge_fraction"] * flux_total[:, 2]
    f_bulge_old = np.clip(want / np.maximum(flux_old[:, 2], 1e-30), 0.0, 1.0)
    flux_bulge = f_bulge_old[:, None] * flux_old
    flux_disk = (1.0 - f_bulge_old[:, None]) * flux_old + flux_young
    bt_r = flux_bulge[:, 2] / flux_total[:, 2]

    # Sizes: the galaxy's half-light radius split between the components (bulges are compact
    # in disk galaxies, the whole galaxy in ellipticals).
    r_bulge, r_disk = component_radii(cat["r_e_arcsec"], bt_r)
    q_disk = physics.disk_axis_ratio(cat["cos_i"])
    q_bulge = rng.uniform(0.6, 1.0, n)

    # Knots: a share of the young light rising with sSFR (none below sSFR = 1e-11 / yr).
    log_ssfr = cat["log_sfr"] - cat["log_mstar"]
    f_young_knots = 0.35 * np.clip((log_ssfr + 11.0) / 1.5, 0.0, 1.0)
    n_knots = np.where(f_young_knots > 0,
                       np.clip(1 + rng.poisson(7 * f_young_knots / 0.35), 1, MAX_KNOTS), 0)
    slot = np.arange(MAX_KNOTS)[None, :]
    active = slot < n_knots[:, None]
    w = np.exp(0.5 * rng.standard_normal((n, MAX_KNOTS))) * active
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-30)
    # Positions follow the exponential disk's surface density (radius ~ Gamma(2) x h), in the
    # disk plane, then projected (minor axis x q_disk) and rotated to the position angle.
    h = r_disk / SERSIC_B1  # exponential scale length
    rad = rng.gamma(2.0, 1.0, (n, MAX_KNOTS)) * h[:, None]
    theta = rng.uniform(0, 2 * np.pi, (n, MAX_KNOTS))
    xp = rad * np.cos(theta)
    yp = rad * np.sin(theta) * q_disk[:, None]
    cpa, spa = np.cos(cat["position_angle"])[:, None], np.sin(cat["position_angle"])[:, None]
    knot_x = xp * cpa - yp * spa
    knot_y = xp * spa + yp * cpa
    # Star-forming complexes ~0.4 kpc across (Gaussian sigma), resolved only nearby.
    knot_sigma = 0.4 * np.exp(0.3 * rng.standard_normal(n)) / cosmology.kpc_per_arcsec(cat["z"])
    flux_knots = f_young_knots[:, None] * flux_young
    flux_disk = flux_disk - flux_knots

    # Dust lane: inclined (i > ~58 deg), disk-dominated, dusty galaxies.
    sin_i = np.sqrt(1.0 - cat["cos_i"] ** 2)
    a_lane = cat["av"] * (1.0 - bt_r) * np.clip((sin_i - 0.85) / 0.15, 0.0, 1.0)
    gri = [BANDS.index(b) for b in CUTOUT_BANDS]
    lam_rest = photometry.effective_wavelengths()[None, gri] / (1.0 + cat["z"])[:, None]
    lane_depth = 1.0 - 10.0 ** (-0.4 * a_lane[:, None] * photometry.cardelli_a_over_av(lam_rest))
    lane_width = 0.3 * r_disk * q_disk
    lane_length = 1.2 * r_disk

    return dict(bulge_fraction_r=bt_r, bulge_old_share=f_bulge_old, flux_bulge=flux_bulge,
                flux_disk=flux_disk, flux_knots=flux_knots, r_bulge=r_bulge, r_disk=r_disk, q_bulge=q_bulge,
                q_disk=q_disk, knot_x=knot_x, knot_y=knot_y, knot_w=w, knot_sigma=knot_sigma,
                n_knots=n_knots,
                knot_fraction=flux_knots[:, 2] / flux_total[:, 2],
                lane_depth=lane_depth, lane_width=lane_width, lane_length=lane_length)
