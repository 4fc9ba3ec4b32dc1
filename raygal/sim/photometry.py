"""ugriz photometry of the mock galaxies: a two-population (young + old) spectral model with dust
and redshift, SDSS-like filters, and magnitude errors at SDSS depth.

The spectral model
------------------
Three rest-frame spectral templates, each per solar mass of stars:

* ``young``  stars formed at a constant rate over the last ``T_YOUNG_GYR`` = 2 Gyr (blue,
  FUV - r = 1.0, rest-frame g - r ~ 0.25, Dn(4000) ~ 1.1, M/L_r = 0.4). Its mass is
  SFR x T_YOUNG_GYR; its 1500 A luminosity per unit SFR is then within 0.15 mag of the
  Kennicutt (1998, ARA&A 36, 189) / Madau & Dickinson (2014) UV calibration for a Chabrier IMF.
* ``old1``   an intermediate-age (~2 Gyr) population: Dn(4000) ~ 1.5, g-r ~ 0.56, M/L_r = 1.0.
* ``old2``   an old (~11 Gyr) population: Dn(4000) ~ 2.05, g-r ~ 0.82, M/L_r = 2.3.

The "old" component of a galaxy is a mass-weighted mix of old1 and old2 (``age_mix`` in [0, 1]).
The templates are smooth piecewise-linear curves in AB magnitude (log f_nu) through anchor
points chosen to reproduce the rest-frame colours, 4000 A breaks and mass-to-light ratios of
Bruzual & Charlot (2003)-like populations and Bell et al. (2003, ApJS 149, 289) M/L-colour
relations; they are not a population-synthesis model, and were checked against the observed
colour-redshift distribution of SDSS main-sample galaxies (the red sequence's g-r, r-i, i-z
within ~0.05 mag; blue galaxies ~0.1 mag redder in g-r than observed). The Sun's absolute r
magnitude (AB) is 4.65 (Willmer 2018, ApJS 236, 47).

Observed fluxes: f_nu,obs(lambda) = (1+z) L_nu(lambda/(1+z)) / (4 pi D_L^2), averaged over each
filter with the AB photon-counting weight T(lambda)/lambda (Fukugita et al. 1996). This is the
k-correction. Tables of band fluxes against redshift are built once per process.

Dust on the stars: Calzetti et al. (2000, ApJ 533, 682) curve, R_V = 4.05, evaluated at each
band's rest-frame effective wavelength; the stellar continuum sees 0.44 of the nebular
(Balmer-decrement) attenuation ``av`` (Calzetti 2000), so A_V,stars = 0.44 av.

Magnitudes: mag = 22.5 - 2.5 log10(flux / nanomaggy) (SDSS convention). Flux errors come from
a sky + Poisson noise model with each band's SDSS sky brightness and gain (see ``BAND_NOISE``,
the same noise model the images use), over an effective aperture that grows with the galaxy's
size, plus a 0.3 % calibration floor; the noise is added in flux space.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..schema import BANDS, SDSS_PIXEL_SCALE
from . import cosmology

#: Length of the young population's constant star formation, Gyr.
T_YOUNG_GYR = 2.0
#: Fraction of the nebular attenuation seen by the stellar continuum (Calzetti et al. 2000).
STELLAR_DUST_FRACTION = 0.44
#: Absolute AB magnitude of the Sun in SDSS r (Willmer 2018).
M_SUN_R = 4.65
#: 1 nanomaggy = 3.631e-6 Jy = 3.631e-29 erg/s/cm^2/Hz.
NANOMAGGY_CGS = 3.631e-29
PC_CM = 3.0856775814913673e18

TEMPLATES = ("young", "old1", "old2")

# Rest-frame anchors: wavelength (A) and AB magnitude relative to the template's r-band value.
_ANCHOR_WAVE = np.array([900, 1000, 1500, 2000, 2500, 3000, 3400, 3650, 3850, 3950, 4000,
                         4100, 4400, 4686, 5500, 6166, 7480, 8932, 10000, 12000, 14000],
                        dtype=np.float64)
_ANCHOR_MAG = {
    # Constant star formation over 2 Gyr: weak Balmer and 4000 A breaks, Dn(4000) ~ 1.1.
    "young": [2.0, 1.4, 1.00, 1.10, 1.20, 1.30, 1.20, 0.95, 0.58, 0.55, 0.48,
              0.45, 0.33, 0.22, 0.08, 0.0, -0.05, -0.08, -0.10, -0.13, -0.15],
    # ~2 Gyr: Dn(4000) ~ 1.5.
    "old1": [7.0, 5.8, 4.6, 4.0, 3.3, 2.5, 2.0, 1.75, 1.45, 1.37, 1.00,
             0.95, 0.74, 0.53, 0.19, 0.0, -0.27, -0.45, -0.56, -0.71, -0.80],
    # ~11 Gyr: Dn(4000) ~ 2.05.
    "old2": [8.0, 7.0, 6.5, 6.0, 5.0, 3.9, 3.0, 2.7, 2.35, 2.25, 1.55,
             1.50, 1.12, 0.78, 0.30, 0.0, -0.40, -0.68, -0.82, -1.0, -1.1],
}
#: r-band mass-to-light ratios (Msun / Lsun,r), Chabrier IMF.
MASS_TO_LIGHT_R = {"young": 0.4, "old1": 1.0, "old2": 2.3}

# SDSS filter shapes: smooth top hats (lo, hi, edge width in A) roughly following the 2.5 m
# system responses (Doi et al. 2010, AJ 139, 1628), with effective wavelengths within 0.5 % of
# the canonical 3551/4686/6166/7480/8932 A (Fukugita et al. 1996).
_FILTER_EDGES = {"u": (3180, 3950, 70), "g": (3990, 5450, 80), "r": (5480, 6930, 70),
                 "i": (6850, 8150, 90), "z": (8250, 9700, 200)}

# Sky and detector per band, for images and magnitude errors: dark-sky surface brightness
# (mag/arcsec^2, Stoughton et al. 2002) and electrons per nanomaggy (gain / nMgyPerCount of
# typical SDSS frames).
BAND_NOISE = {
    #      sky mag/arcsec^2, electrons per nanomaggy
    "u": (22.3, 160.0),
    "g": (21.8, 890.0),
    "r": (20.9, 940.0),
    "i": (20.2, 750.0),
    "z": (18.9, 180.0),
}
MAGERR_FLOOR = 0.003

# The 4000 A break windows of Balogh et al. (1999): <f_nu> over 4000-4100 / 3850-3950 A.
_DN_RED = (4000.0, 4100.0)
_DN_BLUE = (3850.0, 3950.0)

_WAVE = np.arange(900.0, 14000.0, 5.0)  # rest-frame template grid, A
_Z_GRID = np.linspace(0.0, 0.5, 501)


def calzetti_k(wave_angstrom) -> np.ndarray:
    """Calzetti et al. (2000) starburst attenuation curve k(lambda) = A_lambda / E(B-V)_s,
    R_V = 4.05; extrapolated linearly in 1/lambda outside 0.12-2.2 um."""
    lam = np.asarray(wave_angstrom, dtype=np.float64) / 1e4
    lam = np.clip(lam, 0.1, 2.2)
    blue = 2.659 * (-2.156 + 1.509 / lam - 0.198 / lam**2 + 0.011 / lam**3) + 4.05
    red = 2.659 * (-1.857 + 1.040 / lam) + 4.05
    return np.where(lam < 0.63, blue, red)


def cardelli_a_over_av(wave_angstrom, r_v: float = 3.1) -> np.ndarray:
    """Cardelli, Clayton & Mathis (1989, ApJ 345, 245) A_lambda / A_V, optical/NIR branch
    (0.3 <= x = 1/lambda[um] <= 3.3)."""
    x = 1e4 / np.asarray(wave_angstrom, dtype=np.float64)
    y = x - 1.82
    a = (1 + 0.17699 * y - 0.50447 * y**2 - 0.02427 * y**3 + 0.72085 * y**4
         + 0.01979 * y**5 - 0.77530 * y**6 + 0.32999 * y**7)
    b = (1.41338 * y + 2.28305 * y**2 + 1.07233 * y**3 - 5.38434 * y**4
         - 0.62251 * y**5 + 5.30260 * y**6 - 2.09002 * y**7)
    ir = x < 1.1
    a = np.where(ir, 0.574 * x**1.61, a)
    b = np.where(ir, -0.527 * x**1.61, b)
    return a + b / r_v


def filter_curve(band: str, wave: np.ndarray) -> np.ndarray:
    lo, hi, w = _FILTER_EDGES[band]
    return 0.5 * (np.tanh((wave - lo) / w) - np.tanh((wave - hi) / w))


@lru_cache(maxsize=1)
def effective_wavelengths() -> np.ndarray:
    """[5] AB effective (pivot-like, log-mean) wavelengths of u, g, r, i, z in A."""
    wave = np.arange(2500.0, 12000.0, 2.0)
    out = []
    for b in BANDS:
        t = filter_curve(b, wave) / wave
        out.append(np.exp(np.sum(t * np.log(wave)) / np.sum(t)))
    return np.array(out)


def _template_shape(name: str, wave: np.ndarray) -> np.ndarray:
    mag = np.interp(wave, _ANCHOR_WAVE, np.asarray(_ANCHOR_MAG[name], dtype=np.float64))
    return 10.0 ** (-0.4 * mag)


@lru_cache(maxsize=None)
def _template_norm(name: str) -> float:
    """Scale that makes 1 Msun of the template have absolute r = M_SUN_R + 2.5 log10(M/L_r)."""
    r_shape = _band_average(_WAVE, _template_shape(name, _WAVE), "r")
    abs_r = M_SUN_R + 2.5 * np.log10(MASS_TO_LIGHT_R[name])
    fnu_10pc = NANOMAGGY_CGS * 10 ** (-0.4 * (abs_r - 22.5))  # erg/s/cm^2/Hz at 10 pc
    return float(fnu_10pc * 4 * np.pi * (10 * PC_CM) ** 2 / r_shape)


def _template_fnu(name: str, wave: np.ndarray) -> np.ndarray:
    """Rest-frame L_nu (erg/s/Hz) per solar mass of the named template on ``wave``."""
    return _template_shape(name, wave) * _template_norm(name)


def _band_average(wave: np.ndarray, fnu: np.ndarray, band: str) -> np.ndarray:
    """<f_nu> through ``band`` with the photon-counting weight T(lambda)/lambda."""
    t = filter_curve(band, wave) / wave
    return np.sum(fnu * t, axis=-1) / np.sum(t)


@dataclass(frozen=True)
class SpectralTables:
    """Precomputed template quantities.

    band_lnu  [3 templates, 5 bands, Z]  (1+z) <L_nu(lambda/(1+z))>_band per Msun, erg/s/Hz
    dn_red    [3]  <L_nu> over 4000-4100 A per Msun;   dn_blue [3] over 3850-3950 A
    z         [Z]  redshift grid
    """

    band_lnu: np.ndarray
    dn_red: np.ndarray
    dn_blue: np.ndarray
    z: np.ndarray


@lru_cache(maxsize=1)
def spectral_tables() -> SpectralTables:
    obs = np.arange(2800.0, 11500.0, 5.0)
    filt = np.stack([filter_curve(b, obs) / obs for b in BANDS])  # [5, W]
    filt = filt / filt.sum(axis=1, keepdims=True)
    band = np.empty((len(TEMPLATES), len(BANDS), len(_Z_GRID)))
    red, blue = [], []
    for i, name in enumerate(TEMPLATES):
        for j, z in enumerate(_Z_GRID):
            lnu = _template_fnu(name, obs / (1 + z)) * (1 + z)
            band[i, :, j] = filt @ lnu
        w = np.arange(3800.0, 4150.0, 1.0)
        lnu = _template_fnu(name, w)
        red.append(lnu[(w >= _DN_RED[0]) & (w <= _DN_RED[1])].mean())
        blue.append(lnu[(w >= _DN_BLUE[0]) & (w <= _DN_BLUE[1])].mean())
    return SpectralTables(band, np.array(red), np.array(blue), _Z_GRID.copy())


def template_dn4000() -> dict[str, float]:
    """Dn(4000) of each template alone (a check of the anchors)."""
    t = spectral_tables()
    return {n: float(t.dn_red[i] / t.dn_blue[i]) for i, n in enumerate(TEMPLATES)}


def _interp_z(table: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``table[..., Z]`` at ``z[N]`` -> ``[..., N]``."""
    zg = _Z_GRID
    pos = np.clip((z - zg[0]) / (zg[1] - zg[0]), 0, len(zg) - 1.000001)
    i0 = pos.astype(np.int64)
    w = pos - i0
    return table[..., i0] * (1 - w) + table[..., i0 + 1] * w


def population_fluxes(mass_young, mass_old, age_mix, av_stars, z) -> np.ndarray:
    """Observed fluxes of the young and old populations, nanomaggies.

    mass_young, mass_old, age_mix, av_stars, z: [N] (Msun, Msun, old2 mass fraction of the
    old stars, stellar A_V in mag, redshift).
    Returns [2, N, 5]: (young, old) x galaxy x ugriz, dust-attenuated.
    """
    t = spectral_tables()
    q = _interp_z(t.band_lnu, z)  # [3, 5, N]
    dl = cosmology.luminosity_distance_cm(z)
    to_nmgy = 1.0 / (4 * np.pi * dl**2 * NANOMAGGY_CGS)  # [N]
    # Calzetti attenuation at each band's rest-frame effective wavelength.
    lam_rest = effective_wavelengths()[:, None] / (1 + z)[None, :]  # [5, N]
    att = 10 ** (-0.4 * av_stars[None, :] * calzetti_k(lam_rest) / 4.05)  # [5, N]
    young = mass_young * q[0] * att * to_nmgy
    old = mass_old * ((1 - age_mix) * q[1] + age_mix * q[2]) * att * to_nmgy
    return np.stack([young.T, old.T])


def dn4000(mass_young, mass_old, age_mix, av_stars) -> np.ndarray:
    """[N] Dn(4000) of the young + old mix (Balogh et al. 1999 narrow windows), with the
    stellar dust's slight reddening across the break."""
    t = spectral_tables()
    att_red = 10 ** (-0.4 * av_stars * calzetti_k(4050.0) / 4.05)
    att_blue = 10 ** (-0.4 * av_stars * calzetti_k(3900.0) / 4.05)
    red = mass_young * t.dn_red[0] + mass_old * ((1 - age_mix) * t.dn_red[1]
                                                 + age_mix * t.dn_red[2])
    blue = mass_young * t.dn_blue[0] + mass_old * ((1 - age_mix) * t.dn_blue[1]
                                                   + age_mix * t.dn_blue[2])
    return red * att_red / (blue * att_blue)


def flux_to_mag(flux_nmgy) -> np.ndarray:
    return 22.5 - 2.5 * np.log10(flux_nmgy)


def mag_to_flux(mag) -> np.ndarray:
    return 10 ** (-0.4 * (np.asarray(mag) - 22.5))


def sky_per_pixel(band: str, pixel_scale: float = SDSS_PIXEL_SCALE) -> float:
    """Sky flux per pixel in nanomaggies."""
    mu, _ = BAND_NOISE[band]
    return float(10 ** (-0.4 * (mu - 22.5)) * pixel_scale**2)


def flux_errors(flux_nmgy: np.ndarray, aperture_pix: np.ndarray,
                sky_scale: np.ndarray | None = None) -> np.ndarray:
    """[N, 5] 1-sigma flux errors (nanomaggies) of true fluxes [N, 5] measured over an
    effective aperture of ``aperture_pix`` [N] pixels: Poisson noise of sky + source in
    electrons, plus a MAGERR_FLOOR calibration floor in quadrature."""
    sky = np.array([sky_per_pixel(b) for b in BANDS])
    e_per = np.array([BAND_NOISE[b][1] for b in BANDS])
    s = 1.0 if sky_scale is None else sky_scale[:, None]
    f = np.maximum(flux_nmgy, 0.0)
    var = (sky[None, :] * s * aperture_pix[:, None] + f) / e_per[None, :]
    return np.sqrt(var + (MAGERR_FLOOR / 1.0857 * f) ** 2)


def observe(flux_nmgy: np.ndarray, flux_err: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Noisy magnitudes and their errors [N, 5]: Gaussian noise in flux (so faint sources
    cannot scatter to bright magnitudes), Pogson magnitudes of the measured flux; NaN where the
    measured flux is not positive (a non-detection)."""
    f_obs = flux_nmgy + flux_err * rng.standard_normal(flux_nmgy.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        good = f_obs > 0
        mag = np.where(good, 22.5 - 2.5 * np.log10(np.where(good, f_obs, 1.0)), np.nan)
        err = np.where(good, 1.0857 * flux_err / np.where(good, f_obs, 1.0), np.nan)
    return mag, err
