"""Physical parameters of the mock galaxies, drawn jointly from published scaling relations.

Every function takes and returns numpy arrays of shape [N] (one value per galaxy) unless its
docstring says otherwise; random draws take a ``numpy.random.Generator``.

Relations and sources
---------------------
* Stellar mass function: double Schechter fit of Baldry et al. (2012, MNRAS 421, 621), GAMA
  z < 0.06, Chabrier IMF: log M* = 10.66, phi1 = 3.96e-3, alpha1 = -0.35, phi2 = 0.79e-3,
  alpha2 = -1.47 (per dex per Mpc^3, h = 0.7).
* Quenched fraction: the mass-quenching form of Peng et al. (2010, ApJ 721, 193),
  f_q = 1 - exp(-M/M_q), plus a 5 % floor (satellite quenching); M_q = 10^10.8 Msun puts the
  red fraction near one half at 10^10.7 Msun, as in SDSS (Baldry et al. 2006, MNRAS 373, 469).
* Star-forming main sequence: log SFR = 0.7 (log M - 10) + a(z), scatter 0.3 dex; slope ~0.7
  (e.g. Whitaker et al. 2012), normalisation a(z) = -0.1 + 2.8 log10(1+z) so that
  SFR(10^10 Msun, z=0.1) ~ 1 Msun/yr (Renzini & Peng 2015) and SFR ~ (1+z)^2.8 (Speagle et al.
  2014 evolution). Quenched galaxies lie U(1.0, 1.5) dex below it with the same scatter.
  The scatter is truncated at 3 sigma so the survey's selection bound is rigorous.
* Gas metallicity: Tremonti et al. (2004, ApJ 613, 898) mass-metallicity relation
  12+log(O/H) = -1.492 + 1.847 x - 0.08026 x^2, with x = mu = log M - 0.32 Delta_MS: the
  fundamental-metallicity-relation term of Mannucci et al. (2010, MNRAS 408, 2115) written
  relative to the main sequence, so at fixed mass galaxies above the sequence are metal-poorer
  while the median at Delta_MS = 0 is exactly T04. x is clipped to [8.0, 11.5] (T04's turnover)
  and 0.1 dex intrinsic scatter added (T04's scatter). T04 measured metallicities through 3"
  fibres, so this is the fibre value of a galaxy whose fibre covers the survey's typical part
  of its disk (see "The SDSS fibre" below).
* Dust: the mass dependence of Halpha attenuation of Garn & Best (2010, MNRAS 409, 421),
  A_Halpha = 0.91 + 0.77 X + 0.11 X^2 - 0.09 X^3, X = log M - 10, converted to A_V with
  Cardelli et al. (1989); rising with SFR at fixed mass (x 10^(0.3 Delta_MS)) and with disk
  inclination as gamma log10(a/b) (Maller et al. 2009, ApJ 691, 394; gamma = 1.5 for pure
  disks, reduced by the bulge fraction), normalised so that the inclination average is the
  Garn & Best value. Quenched galaxies carry 30 % of it.
* Stellar populations (``photometry``): the young stars are those formed over the last 2 Gyr
  at the current SFR (<= 80 % of M*); the rest are old, a mix of ~2 Gyr and ~11 Gyr
  populations whose old share rises with mass and is higher in quenched galaxies (downsizing).
* Dn(4000): computed from the young + old stellar mix (``photometry.dn4000``), so it rises
  from ~1.1 (young) to ~2.05 (old) as sSFR falls (cf. Kauffmann et al. 2003a, Brinchmann et al.
  2004), plus 0.03 of scatter; measured on the stars inside the fibre (below).
* Bulge fraction: rises with the dust-free Dn(4000) (old, quiescent galaxies are bulge
  dominated; Kauffmann et al. 2003a), capped by the old stars' share of the light.
* Size: Shen et al. (2003, MNRAS 343, 978) r-band half-light radius - mass relations, late
  types R = 0.1 kpc M^0.14 (1 + M/3.98e10)^0.25 with sigma_lnR = 0.34 + 0.13/(1+(M/M0)^2),
  early types R = 2.88e-6 kpc M^0.56 with sigma_lnR = 0.30; interpolated in log by bulge
  fraction.
* Velocity dispersion: sigma proportional to M^0.3 above 10^10.3 Msun (Zahid et al. 2016,
  ApJ 832, 203), normalised to ~160 km/s at 10^11 Msun for a B/T = 0.5 galaxy, flattening to
  M^0.2 below the break; +0.12 dex per unit B/T (bulge-dominated galaxies are hotter at fixed
  mass); at fixed mass, compact galaxies are hotter as the virial theorem has it,
  sigma^2 ~ M / R_e (the mass plane of Cappellari et al. 2013, MNRAS 432, 1862; the inferred
  dispersions of Bezanson et al. 2011, ApJ 737, L31): -0.5 dex per dex of the galaxy's size
  offset from the Shen et al. (2003) median; 0.03 dex further scatter.
* Black-hole mass: McConnell & Ma (2013, ApJ 764, 184):
  log M_BH = 8.32 + 5.64 log10(sigma / 200 km/s), intrinsic scatter 0.38 dex.
* Halpha: Kennicutt (1998, ARA&A 36, 189) SFR = 7.9e-42 L(Halpha) (Salpeter), x 0.63 for a
  Chabrier IMF (Madau & Dickinson 2014) -> L(Halpha) = SFR / 4.98e-42 erg/s; Cardelli et al.
  (1989) attenuation with R_V = 3.1; flux = L / (4 pi D_L^2), Planck18 distances.
* Hbeta: case-B Balmer decrement Halpha/Hbeta = 2.86 (Osterbrock & Ferland 2006) before dust.
* [N II] 6584/Halpha: Pettini & Pagel (2004, MNRAS 348, L59) N2 calibration
  12+log(O/H) = 8.90 + 0.57 N2, inverted. T04 and N2 metallicities are on different scales
  (Kewley & Ellison 2008, ApJ 681, 1183); the T04 value is mapped to the N2 scale by
  8.68 + 0.55 (oh12 - 9.07), an approximate linear fit to their mass-metallicity curves.
  0.07 dex scatter.
* [O III] 5007/Hbeta: on the ridge of the star-forming BPT sequence (tabulated; it runs
  0.3-0.6 dex below the Kauffmann et al. 2003b, MNRAS 346, 1055 demarcation
  log([O III]/Hbeta) = 0.61/(N2 - 0.05) + 1.3 and meets it near N2 = -0.2), 0.1 dex scatter.
* AGN: a fraction 0.4 / (1 + exp(-(log M - 10.6)/0.2)) of galaxies hosts an AGN with Eddington
  ratio log lambda ~ N(-2.7, 0.5); L_bol = lambda 1.26e38 M_BH erg/s,
  L([O III]) = L_bol / 3500 (Heckman et al. 2004, ApJ 613, 109); log([O III]/Hbeta)_AGN ~
  N(0.6, 0.2), Halpha/Hbeta = 3.1 (Osterbrock & Ferland 2006), log([N II]/Halpha)_AGN ~
  N(0.0, 0.15). Quenched galaxies' weak lines have LINER-like ("retired") ratios
  (Cid Fernandes et al. 2011): log [N II]/Halpha ~ N(0.1, 0.15), log [O III]/Hbeta ~ N(0, 0.2).
* The SDSS fibre (``aperture``): as in the MPA-JHU catalogue, the line fluxes, Dn(4000) and
  12+log(O/H) are those of the light inside the 3" fibre, whose share of each component
  (bulge, disk, nucleus) depends on its size, distance, shape and the seeing of the
  spectroscopic exposure (drawn like the imaging seeing but independently: another night)
  (aperture bias: Kewley, Jansen & Geller 2005, PASP 117, 227;
  Brinchmann et al. 2004, MNRAS 351, 1151 correct the SFR for it; the mock's SFR is the total).
  The young stars and the star-forming gas follow the disk, the old stars the bulge and the
  disk, retired-galaxy emission the old stars, an AGN is a point source. So the fibre of a large
  nearby galaxy sees mostly its bulge: its Dn(4000) is older than the whole galaxy's and its
  lines are a small share of the total. Gas metallicity falls by 0.1 dex per r_e (the common
  gradient of Sanchez et al. 2014, A&A 563, A49): the fibre metallicity is the value at the
  light-weighted mean radius of the disk light inside the fibre, fixed to the mass-metallicity
  relation at that radius's survey median (FIBRE_REF_RADIUS), so a fibre that sees only the
  centre reads up to ~0.05 dex high and one that sees the whole disk ~0.07 dex low.
* Metallicity detectability (the ``oh12`` non-null label): as in the MPA-JHU catalogue,
  12+log(O/H) is measured only for galaxies with S/N > 3 in the fibre's Halpha, Hbeta,
  [N II] and [O III] (2e-17 erg/s/cm^2 of noise per line) whose (noisy) line ratios lie below
  the Kauffmann et al. (2003b) line. The stored line fluxes are the noise-free fibre fluxes
  (not aperture-corrected, like MPA-JHU's).
"""
from __future__ import annotations

import numpy as np

from . import cosmology, photometry

# --- mass function, quenching, main sequence -----------------------------------------------
LOGM_MIN, LOGM_MAX = 8.0, 12.3
BALDRY12 = dict(log_mstar=10.66, phi1=3.96e-3, alpha1=-0.35, phi2=0.79e-3, alpha2=-1.47)
MS_SLOPE = 0.7
MS_SCATTER = 0.3
MS_TRUNCATE = 3.0  # sigma
QUENCH_OFFSET = (1.0, 1.5)
LOG_M_QUENCH = 10.8

# --- metallicity, lines ---------------------------------------------------------------------
FMR_ALPHA = 0.32
OH12_SCATTER = 0.1
BALMER_DECREMENT = 2.86
AGN_BALMER_DECREMENT = 3.1
KENNICUTT_CHABRIER = 7.9e-42 * 0.63  # Msun/yr per erg/s of Halpha
LINE_WAVE = {"halpha": 6562.8, "hbeta": 4861.3, "nii": 6583.4, "oiii": 5006.8}
LINE_NOISE = 2.0  # 1e-17 erg/s/cm^2 per line in the fibre
LINE_SNR_MIN = 3.0

# --- the SDSS fibre (``aperture``) ---------------------------------------------------------
METALLICITY_GRADIENT = -0.1  # dex per r_e (Sanchez et al. 2014)
FIBRE_REF_RADIUS = 0.47      # median mean r / r_e of the disk light in the fibres of
                             # galaxies with a measured metallicity (survey seed 11)
DN4000_SCATTER = 0.03

# --- structure ------------------------------------------------------------------------------
DISK_THICKNESS = 0.15  # intrinsic axis ratio q0 of disks (Unterborn & Ryden 2008)
INCLINATION_GAMMA = 1.5
MBH_SCATTER = 0.38
VIRIAL_SIZE_SLOPE = -0.5  # d log sigma / d log R_e at fixed mass (sigma^2 ~ M / R_e)
SIGMA_SCATTER = 0.03      # dex, beyond the size term


def mass_function(logm) -> np.ndarray:
    """Baldry et al. (2012) double Schechter phi(log M) in dex^-1 Mpc^-3."""
    p = BALDRY12
    x = 10.0 ** (np.asarray(logm) - p["log_mstar"])
    return np.log(10) * np.exp(-x) * (p["phi1"] * x ** (p["alpha1"] + 1)
                                       + p["phi2"] * x ** (p["alpha2"] + 1))


def quenched_fraction(logm) -> np.ndarray:
    """Peng et al. (2010) mass quenching with a 5 % floor."""
    return 0.05 + 0.95 * (1.0 - np.exp(-(10.0 ** (np.asarray(logm) - LOG_M_QUENCH))))


def main_sequence(logm, z) -> np.ndarray:
    """log SFR (Msun/yr) of the star-forming main sequence at mass ``logm`` and redshift z."""
    return MS_SLOPE * (np.asarray(logm) - 10.0) - 0.1 + 2.8 * np.log10(1.0 + np.asarray(z))


def tremonti_oh12(x) -> np.ndarray:
    """Tremonti et al. (2004) eq. 3: 12+log(O/H) at log M* = x (valid 8.5 < x < 11.5)."""
    x = np.asarray(x, dtype=np.float64)
    return -1.492 + 1.847 * x - 0.08026 * x**2


def fmr_oh12(logm, delta_ms) -> np.ndarray:
    """T04 evaluated at mu = log M - 0.32 Delta_MS (Mannucci et al. 2010 FMR), x in [8, 11.5]."""
    mu = np.clip(np.asarray(logm) - FMR_ALPHA * np.asarray(delta_ms), 8.0, 11.5)
    return tremonti_oh12(mu)


def n2_from_oh12(oh12) -> np.ndarray:
    """log([N II]6584/Halpha) of a star-forming galaxy: T04 -> N2 scale (approximate, after
    Kewley & Ellison 2008), then Pettini & Pagel (2004) N2 = (12+log(O/H) - 8.90) / 0.57."""
    oh_n2 = 8.68 + 0.55 * (np.asarray(oh12) - 9.07)
    return (oh_n2 - 8.90) / 0.57


def kauffmann03_line(n2) -> np.ndarray:
    """Kauffmann et al. (2003b) star-forming / AGN demarcation: log([O III]/Hbeta) at N2 < 0.05
    (-inf at and beyond the asymptote)."""
    n2 = np.asarray(n2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = 0.61 / (n2 - 0.05) + 1.3
    return np.where(n2 < 0.05, y, -np.inf)


# Ridge of the SDSS star-forming sequence in the BPT diagram (N2, log [O III]/Hbeta), read off
# the locus that the Kauffmann et al. (2003b) line bounds: ~0.3-0.6 dex below it at
# N2 < -0.4, meeting it near N2 = -0.2 where star-forming galaxies turn into composites.
_SF_RIDGE_N2 = np.array([-1.6, -1.3, -1.2, -1.0, -0.8, -0.6, -0.5, -0.4, -0.3, -0.2, -0.1])
_SF_RIDGE_O3 = np.array([0.75, 0.6, 0.5, 0.3, 0.05, -0.25, -0.42, -0.62, -0.85, -1.05, -1.2])


def star_forming_o3(n2) -> np.ndarray:
    """log([O III]/Hbeta) on the star-forming BPT sequence at log([N II]/Halpha) = n2."""
    return np.interp(n2, _SF_RIDGE_N2, _SF_RIDGE_O3)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def garn_best_av(logm) -> np.ndarray:
    """Inclination-averaged nebular A_V of star-forming galaxies at mass logm (Garn & Best 2010
    A_Halpha, / 0.818 = A_Halpha/A_V of Cardelli et al. 1989)."""
    x = np.clip(np.asarray(logm) - 10.0, -1.5, 1.3)
    a_ha = 0.91 + 0.77 * x + 0.11 * x**2 - 0.09 * x**3
    return a_ha / float(photometry.cardelli_a_over_av(LINE_WAVE["halpha"]))


def disk_axis_ratio(cos_i) -> np.ndarray:
    """Projected axis ratio b/a of an oblate disk with intrinsic thickness q0 (Hubble 1926)."""
    c2 = np.asarray(cos_i) ** 2
    return np.sqrt(c2 + DISK_THICKNESS**2 * (1.0 - c2))


def _mean_log_axis_ratio() -> float:
    """<log10(a/b)> of disks over isotropic inclinations (cos i uniform)."""
    c = (np.arange(20000) + 0.5) / 20000
    return float(np.mean(-np.log10(disk_axis_ratio(c))))


_MEAN_LOG_AB = _mean_log_axis_ratio()


def dust_av(logm, delta_ms, cos_i, bulge_fraction, quenched) -> np.ndarray:
    """Nebular A_V (mag): mass (Garn & Best 2010), SFR and inclination (Maller et al. 2009)."""
    gamma = INCLINATION_GAMMA * (1.0 - bulge_fraction)
    incl = (1.0 + gamma * -np.log10(disk_axis_ratio(cos_i))) / (1.0 + gamma * _MEAN_LOG_AB)
    sfr_term = 10.0 ** (0.3 * np.clip(delta_ms, -1.0, 1.0))
    return garn_best_av(logm) * sfr_term * incl * np.where(quenched, 0.3, 1.0)


def shen03_radius_kpc(logm, bulge_fraction) -> tuple[np.ndarray, np.ndarray]:
    """Median half-light radius (kpc) and its ln-scatter at mass logm: Shen et al. (2003) late-
    and early-type relations, interpolated in log R by bulge fraction."""
    m = 10.0 ** np.asarray(logm)
    m0 = 3.98e10
    late = 0.1 * m**0.14 * (1 + m / m0) ** (0.39 - 0.14)
    early = 2.88e-6 * m**0.56
    s_late = 0.34 + (0.47 - 0.34) / (1 + (m / m0) ** 2)
    s_early = 0.30
    b = np.asarray(bulge_fraction)
    log_r = (1 - b) * np.log(late) + b * np.log(early)
    return np.exp(log_r), (1 - b) * s_late + b * s_early


def velocity_dispersion(logm, bulge_fraction) -> np.ndarray:
    """Median log10 sigma_v (km/s): sigma ~ M^0.3 above 10^10.3 (Zahid et al. 2016), M^0.2
    below, hotter for bulge-dominated galaxies."""
    logm = np.asarray(logm)
    above = 2.2 + 0.3 * (logm - 11.0)
    below = 2.2 + 0.3 * (10.3 - 11.0) + 0.2 * (logm - 10.3)
    return np.where(logm >= 10.3, above, below) + 0.12 * (np.asarray(bulge_fraction) - 0.5)


def mcconnell_ma_mbh(sigma_kms) -> np.ndarray:
    """McConnell & Ma (2013) M-sigma: log M_BH = 8.32 + 5.64 log10(sigma / 200 km/s)."""
    return 8.32 + 5.64 * np.log10(np.asarray(sigma_kms) / 200.0)


def agn_fraction(logm) -> np.ndarray:
    return 0.4 * sigmoid((np.asarray(logm) - 10.6) / 0.2)


def _trunc_normal(rng, n, scale, k=MS_TRUNCATE):
    """N(0, scale) truncated at +-k sigma (resampled, so the result is exact)."""
    x = rng.standard_normal(n)
    bad = np.abs(x) > k
    while bad.any():
        x[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(x) > k
    return x * scale


# ----------------------------------------------------------------------------------------------
# Joint draw
# ----------------------------------------------------------------------------------------------

def draw_stellar_populations(rng: np.random.Generator, logm: np.ndarray, z: np.ndarray) -> dict:
    """Star formation, stellar populations, structure and dust of galaxies of mass logm [N] at
    redshift z [N]: everything the photometry and the images need.

    Returns a dict of [N] arrays: is_quenched, log_sfr, delta_ms, mass_young, mass_old,
    age_mix, cos_i, inclination (rad), position_angle (rad), dn4000_nodust, bulge_fraction
    (target B/T in r-band light, before the old-light cap), av, av_stars, dn4000_global (the
    whole galaxy's, noise-free; the catalogue's Dn(4000) is the fibre's, ``fibre_dn4000``),
    r_e_kpc, r_e_arcsec.
    """
    n = len(logm)
    quenched = rng.random(n) < quenched_fraction(logm)
    ms = main_sequence(logm, z)
    offset = np.where(quenched, -rng.uniform(*QUENCH_OFFSET, size=n), 0.0)
    delta_ms = offset + _trunc_normal(rng, n, MS_SCATTER)
    log_sfr = ms + delta_ms

    mass = 10.0 ** logm
    # Young population: the stars formed at the current rate over T_YOUNG_GYR (<= 80 % of M*).
    mass_young = np.minimum(10.0 ** log_sfr * photometry.T_YOUNG_GYR * 1e9, 0.8 * mass)
    mass_old = mass - mass_young
    # Old stars are older in massive and quenched galaxies ("downsizing").
    age_mix = np.clip(0.15 + 0.25 * (logm - 10.5) + 0.7 * quenched
                      + 0.15 * rng.standard_normal(n), 0.0, 1.0)

    # Geometry: isotropic inclinations, random position angles.
    cos_i = rng.random(n)
    pa = rng.uniform(0.0, np.pi, n)

    # Bulge fraction rises with the (dust-free) 4000 A break: old galaxies are bulge-dominated.
    dn_nodust = photometry.dn4000(mass_young, mass_old, age_mix, np.zeros(n))
    bt = np.clip(0.05 + 0.8 * sigmoid((dn_nodust - 1.55) / 0.1)
                 + 0.08 * rng.standard_normal(n), 0.0, 0.95)

    av = dust_av(logm, delta_ms, cos_i, bt, quenched) * 10 ** (0.15 * rng.standard_normal(n))
    av = np.clip(av, 0.0, 4.0)
    av_stars = photometry.STELLAR_DUST_FRACTION * av
    dn = photometry.dn4000(mass_young, mass_old, age_mix, av_stars)

    r_med, s_ln = shen03_radius_kpc(logm, bt)
    r_e_kpc = r_med * np.exp(s_ln * rng.standard_normal(n))
    r_e_arcsec = r_e_kpc / cosmology.kpc_per_arcsec(z)
    return dict(is_quenched=quenched, log_sfr=log_sfr, delta_ms=delta_ms,
                mass_young=mass_young, mass_old=mass_old, age_mix=age_mix, cos_i=cos_i,
                inclination=np.arccos(cos_i), position_angle=pa, dn4000_nodust=dn_nodust,
                bulge_fraction=bt, av=av, av_stars=av_stars, dn4000_global=dn, r_e_kpc=r_e_kpc,
                r_e_arcsec=r_e_arcsec)


def draw_dynamics(rng: np.random.Generator, logm: np.ndarray, bulge_fraction: np.ndarray,
                  r_e_kpc: np.ndarray) -> dict:
    """sigma_v (km/s) and log M_BH [N] from mass, bulge fraction and size (virial term)."""
    n = len(logm)
    r_med, _ = shen03_radius_kpc(logm, bulge_fraction)
    size_offset = np.log10(np.asarray(r_e_kpc) / r_med)
    log_sigma = (velocity_dispersion(logm, bulge_fraction) + VIRIAL_SIZE_SLOPE * size_offset
                 + SIGMA_SCATTER * rng.standard_normal(n))
    sigma = 10.0 ** log_sigma
    log_mbh = mcconnell_ma_mbh(sigma) + MBH_SCATTER * rng.standard_normal(n)
    return dict(sigma_v=sigma, log_mbh=log_mbh)


def draw_metallicity(rng: np.random.Generator, logm, delta_ms) -> np.ndarray:
    """True 12+log(O/H) [N] (T04 + FMR + 0.1 dex scatter), clipped to the schema's 7.0-9.8."""
    oh = fmr_oh12(logm, delta_ms) + OH12_SCATTER * rng.standard_normal(len(logm))
    return np.clip(oh, 7.0, 9.8)


def halpha_luminosity(log_sfr) -> np.ndarray:
    """Kennicutt (1998) for a Chabrier IMF: L(Halpha) erg/s."""
    return 10.0 ** np.asarray(log_sfr) / KENNICUTT_CHABRIER


def fibre_metallicity(oh12_ref, disk_radius) -> np.ndarray:
    """12+log(O/H) [N] of the gas seen through the fibre, whose light-weighted mean radius is
    ``disk_radius`` r_e (``aperture.disk_mean_radius``), on a gradient of METALLICITY_GRADIENT
    dex per r_e through ``oh12_ref``, the value at the survey's median radius
    FIBRE_REF_RADIUS; clipped to the schema's 7.0-9.8."""
    return np.clip(oh12_ref + METALLICITY_GRADIENT * (np.asarray(disk_radius)
                                                     - FIBRE_REF_RADIUS), 7.0, 9.8)


def fibre_dn4000(rng: np.random.Generator, pops: dict, fibre: dict) -> np.ndarray:
    """Dn(4000) [N] of the light in the fibre, plus DN4000_SCATTER: the young stars (all in
    the disk) weighted by the disk's share inside the fibre, the old stars by theirs
    (``fibre['fibre_old']``: bulge and disk). ``pops``: mass_young, mass_old, age_mix,
    av_stars [N]."""
    n = len(pops["mass_young"])
    dn = photometry.dn4000(pops["mass_young"] * fibre["fibre_disk"],
                           pops["mass_old"] * fibre["fibre_old"], pops["age_mix"],
                           pops["av_stars"])
    return dn + DN4000_SCATTER * rng.standard_normal(n)


def draw_lines(rng: np.random.Generator, logm, log_sfr, oh12, av, z, log_mbh, quenched,
               fibre: dict) -> dict:
    """Emission lines [N] in 1e-17 erg/s/cm^2 (noise-free, dust-attenuated, inside the 3"
    fibre) and the metallicity-detectability label.

    oh12: the gas metallicity seen through the fibre. fibre: ``aperture.fibre_shares``; the
    star-forming gas follows the disk, retired-galaxy emission the old stars, an AGN is a
    point source.
    Returns flux_halpha, flux_hbeta, flux_nii, flux_oiii, is_agn, oh12_detectable, the
    fibre S/N of each line (snr_<line>) and the whole galaxy's Halpha (flux_halpha_total).
    """
    n = len(logm)
    dl = cosmology.luminosity_distance_cm(z)
    to_flux = 1e17 / (4 * np.pi * dl**2)

    # Star formation (HII regions), or retired-galaxy (LINER-like) emission when quenched.
    ha_sf = halpha_luminosity(log_sfr)
    hb_sf = ha_sf / BALMER_DECREMENT
    n2_hii = n2_from_oh12(oh12) + 0.07 * rng.standard_normal(n)
    o3_hii = star_forming_o3(n2_hii) + 0.1 * rng.standard_normal(n)
    n2_ret = 0.1 + 0.15 * rng.standard_normal(n)
    o3_ret = 0.0 + 0.2 * rng.standard_normal(n)
    n2_sf = np.where(quenched, n2_ret, n2_hii)
    o3_sf = np.where(quenched, o3_ret, o3_hii)
    # Inside the fibre: HII regions follow the disk, retired emission the old stars.
    f_gas = np.where(quenched, fibre["fibre_old"], fibre["fibre_disk"])
    ha_sf_total = ha_sf
    ha_sf, hb_sf = ha_sf * f_gas, hb_sf * f_gas
    nii = ha_sf * 10.0**n2_sf
    oiii = hb_sf * 10.0**o3_sf
    ha, hb = ha_sf, hb_sf

    # AGN in some massive hosts (Heckman et al. 2004 bolometric correction).
    is_agn = rng.random(n) < agn_fraction(logm)
    log_edd = -2.7 + 0.5 * rng.standard_normal(n)
    l_oiii_agn = 10.0 ** (log_edd + np.log10(1.26e38) + log_mbh) / 3500.0
    hb_agn = l_oiii_agn / 10.0 ** (0.6 + 0.2 * rng.standard_normal(n))
    ha_agn = AGN_BALMER_DECREMENT * hb_agn
    nii_agn = ha_agn * 10.0 ** (0.15 * rng.standard_normal(n))
    agn = is_agn.astype(np.float64) * fibre["fibre_point"]
    ha = ha + agn * ha_agn
    hb = hb + agn * hb_agn
    nii = nii + agn * nii_agn
    oiii = oiii + agn * l_oiii_agn

    # Dust (Cardelli et al. 1989, R_V = 3.1) and distance.
    out = {}
    for name, lum in (("halpha", ha), ("hbeta", hb), ("nii", nii), ("oiii", oiii)):
        a_line = av * float(photometry.cardelli_a_over_av(LINE_WAVE[name]))
        out[f"flux_{name}"] = lum * 10.0 ** (-0.4 * a_line) * to_flux

    a_ha = av * float(photometry.cardelli_a_over_av(LINE_WAVE["halpha"]))
    out["flux_halpha_total"] = (ha_sf_total + is_agn * ha_agn) * 10.0 ** (-0.4 * a_ha) * to_flux

    # Detectability of the metallicity (MPA-JHU-like): fibre S/N > 3 in the four BPT lines and
    # a star-forming BPT classification from the noisy ratios.
    meas = {}
    for name in LINE_WAVE:
        f = out[f"flux_{name}"]
        meas[name] = f + LINE_NOISE * rng.standard_normal(n)
        out[f"snr_{name}"] = f / LINE_NOISE
    snr_ok = np.all([meas[k] > LINE_SNR_MIN * LINE_NOISE for k in LINE_WAVE], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        n2_obs = np.log10(np.maximum(meas["nii"], 1e-6) / np.maximum(meas["halpha"], 1e-6))
        o3_obs = np.log10(np.maximum(meas["oiii"], 1e-6) / np.maximum(meas["hbeta"], 1e-6))
    bpt_sf = o3_obs < kauffmann03_line(n2_obs)
    out["is_agn"] = is_agn
    out["oh12_detectable"] = snr_ok & bpt_sf
    return out
