"""Light inside the SDSS spectroscopic fibre: what aperture-measured quantities see.

MPA-JHU line fluxes, Dn(4000) and gas metallicities are measured on spectra taken through 3"
fibres (radius 1.5"), which collect a fraction of a galaxy's light that depends on its size,
distance, bulge fraction and the seeing, and mostly its centre when the galaxy is large and
nearby (aperture bias: Kewley, Jansen & Geller 2005, PASP 117, 227; the aperture corrections
of Brinchmann et al. 2004, MNRAS 351, 1151). The integrated ugriz photometry does not know that
fraction; the image does.

Enclosed light. For a circular profile with normalised 2-d Fourier transform H(k) seen through a
PSF with transform P(k), the share of the light inside radius R is

    L(<R) / L = 2 pi R int_0^inf H(k) P(k) J1(2 pi k R) dk.

It is tabulated once per process on a grid of r_e / R and FWHM / R for the exponential disk
and the de Vaucouleurs bulge (the cutouts' own profiles and Moffat PSF,
``images.profile_transform``) and for a point source, then interpolated bilinearly (in
log r_e / R and FWHM / R). An inclined (elliptical) component uses its circularised half-light
radius r_e sqrt(q).

Radius of the light inside the fibre. The emission-weighted mean radius of an exponential disk's
light inside the fibre, <r / r_e>, follows from the share of the disk inside it: an exponential
disk of scale length h holds P(2, x) of its light within x = R / h (P the regularised lower
incomplete gamma function) at a mean radius 2 h P(3, x) / P(2, x). The seeing is folded in by
using the (seeing-convolved) share to find the equivalent x.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import images

FIBRE_RADIUS_ARCSEC = 1.5   # SDSS spectroscopic fibres are 3" across
PROFILES = ("exp", "dev", "point")

_LOG_X = np.linspace(np.log(0.01), np.log(50.0), 161)   # ln(r_e / R)
_W = np.linspace(0.2, 2.6, 49)                           # FWHM / R


def _special(name: str, *args) -> np.ndarray:
    """A ``torch.special`` function on numpy arrays, in float64."""
    import torch

    t = [torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in args]
    return getattr(torch.special, name)(*t).numpy()


def gammainc(s, x) -> np.ndarray:
    """Regularised lower incomplete gamma function P(s, x)."""
    return _special("gammainc", np.full(np.shape(x), float(s)), x)


def _k_grid() -> tuple[np.ndarray, np.ndarray]:
    """Wavenumbers (cycles per R; fine near 0 for large galaxies) and trapezoid weights."""
    k = np.concatenate([np.linspace(0.0, 0.02, 201)[:-1], np.linspace(0.02, 14.0, 3500)])
    w = np.zeros_like(k)
    dk = np.diff(k)
    w[1:] += dk / 2
    w[:-1] += dk / 2
    return k, w


@lru_cache(maxsize=1)
def enclosed_tables() -> dict[str, np.ndarray]:
    """{'exp', 'dev': [X, W], 'point': [W]} shares of the light inside radius R, on the grids
    ln(r_e / R) = ``_LOG_X`` and FWHM / R = ``_W`` (built once per process, ~0.1 s)."""
    k, wts = _k_grid()
    kernel = wts * 2 * np.pi * _special("bessel_j1", 2 * np.pi * k)  # [K]
    psf = images.profile_transform("moffat", _W[:, None] * k[None, :])  # [W, K]
    out = {"point": np.clip(psf @ kernel, 0.0, 1.0)}
    x = np.exp(_LOG_X)
    for name in ("exp", "dev"):
        gal = images.profile_transform(name, x[:, None] * k[None, :])    # [X, K]
        out[name] = np.clip((gal * kernel) @ psf.T, 0.0, 1.0)
    return out


def _bilinear(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """table [X, W] at fractional grid positions u (along X) and v (along W), clipped."""
    u = np.clip(u, 0, table.shape[0] - 1.000001)
    v = np.clip(v, 0, table.shape[1] - 1.000001)
    i, j = u.astype(np.int64), v.astype(np.int64)
    a, b = u - i, v - j
    return ((1 - a) * (1 - b) * table[i, j] + a * (1 - b) * table[i + 1, j]
            + (1 - a) * b * table[i, j + 1] + a * b * table[i + 1, j + 1])


def enclosed_fraction(profile: str, r_e_arcsec, q, fwhm_arcsec,
                      radius: float = FIBRE_RADIUS_ARCSEC) -> np.ndarray:
    """[N] share of a component's light inside a circular aperture of ``radius`` arcsec
    centred on it: ``profile`` 'exp', 'dev' or 'point' (r_e and q ignored), half-light
    semi-major axis r_e [N] (arcsec), axis ratio q [N], seeing FWHM [N] (arcsec)."""
    t = enclosed_tables()
    fw = np.asarray(fwhm_arcsec, dtype=np.float64) / radius
    v = (fw - _W[0]) / (_W[1] - _W[0])
    if profile == "point":
        return np.interp(fw, _W, t["point"])
    if profile not in t:
        raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
    r_circ = np.asarray(r_e_arcsec, dtype=np.float64) * np.sqrt(np.asarray(q, np.float64))
    u = (np.log(np.maximum(r_circ / radius, 1e-6)) - _LOG_X[0]) / (_LOG_X[1] - _LOG_X[0])
    return _bilinear(t[profile], u, v)


@lru_cache(maxsize=1)
def _disk_radius_table() -> tuple[np.ndarray, np.ndarray]:
    """(share inside, mean r / r_e of that light) of an exponential disk for x = R / h."""
    from .images import SERSIC_B1

    x = np.geomspace(1e-3, 60.0, 2000)
    share = gammainc(2, x)
    return share, 2 * gammainc(3, x) / share / SERSIC_B1


def disk_mean_radius(share) -> np.ndarray:
    """[N] light-weighted mean radius, in units of r_e, of the part of an exponential disk
    inside the fibre, given the share of the disk's light inside it [N] (see module doc):
    ~0.56 sqrt(share) for a fibre much smaller than the disk, 1.19 for the whole disk."""
    s, g = _disk_radius_table()
    return np.interp(np.asarray(share), s, g)


def fibre_shares(cat: dict, seeing_fwhm: np.ndarray) -> dict[str, np.ndarray]:
    """Shares of each light component of the galaxies in ``cat`` inside the fibre, for a
    spectroscopic seeing ``seeing_fwhm`` [N] (arcsec).

    ``cat`` holds the [N] arrays of ``morphology.draw_morphology`` (r_bulge, q_bulge, r_disk,
    q_disk, bulge_old_share, flux_bulge / flux_disk / flux_knots [N, 5]).
    Returns [N] arrays: fibre_bulge, fibre_disk (the disk and its knots: the young stars and the
    star-forming gas), fibre_old (the old stars: bulge and disk), fibre_point (a nucleus),
    fibre_r (the galaxy's r-band light) and fibre_disk_radius (mean r / r_e of the disk light
    inside the fibre, ``disk_mean_radius``).
    """
    f_b = enclosed_fraction("dev", cat["r_bulge"], cat["q_bulge"], seeing_fwhm)
    f_d = enclosed_fraction("exp", cat["r_disk"], cat["q_disk"], seeing_fwhm)
    share = cat["bulge_old_share"]
    lb = cat["flux_bulge"][:, 2]
    ld = cat["flux_disk"][:, 2] + cat["flux_knots"][:, 2]
    return {"fibre_bulge": f_b, "fibre_disk": f_d,
            "fibre_old": share * f_b + (1.0 - share) * f_d,
            "fibre_point": enclosed_fraction("point", None, None, seeing_fwhm),
            "fibre_r": (lb * f_b + ld * f_d) / np.maximum(lb + ld, 1e-30),
            "fibre_disk_radius": disk_mean_radius(f_d)}
