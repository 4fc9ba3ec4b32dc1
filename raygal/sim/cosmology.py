"""Distance and volume tables for the mock survey.

astropy's distance integrals cost ~10 us per redshift; the survey needs millions of them, so
they are tabulated once per process on a fine redshift grid and linearly interpolated
(dz = 2e-4; the volume is interpolated as V^(1/3), nearly linear in z; relative errors
< 1e-4 for z > 0.005).

Cosmology: Planck 2018 (Planck Collaboration 2020, A&A 641, A6) as shipped in astropy.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

Z_TABLE_MAX = 0.5
_DZ = 2e-4
MPC_CM = 3.0856775814913673e24  #: 1 Mpc in cm
ARCSEC_PER_RAD = 206264.80624709636


@lru_cache(maxsize=1)
def tables() -> dict[str, np.ndarray]:
    """{'z', 'dl_mpc', 'da_mpc', 'vc_mpc3'} on ``z = 0 .. Z_TABLE_MAX`` (comoving volume over
    the full sky)."""
    from astropy.cosmology import Planck18

    z = np.arange(0.0, Z_TABLE_MAX + _DZ / 2, _DZ)
    dl = Planck18.luminosity_distance(z).to_value("Mpc")
    da = Planck18.angular_diameter_distance(z).to_value("Mpc")
    vc = Planck18.comoving_volume(z).to_value("Mpc3")
    return {"z": z, "dl_mpc": dl, "da_mpc": da, "vc_mpc3": vc, "vc_cbrt": np.cbrt(vc)}


def luminosity_distance_cm(z: np.ndarray) -> np.ndarray:
    """[N] luminosity distance in cm."""
    t = tables()
    return np.interp(z, t["z"], t["dl_mpc"]) * MPC_CM


def luminosity_distance_mpc(z: np.ndarray) -> np.ndarray:
    t = tables()
    return np.interp(z, t["z"], t["dl_mpc"])


def kpc_per_arcsec(z: np.ndarray) -> np.ndarray:
    """[N] proper kpc per arcsec (through the angular-diameter distance)."""
    t = tables()
    return np.interp(z, t["z"], t["da_mpc"]) * 1e3 / ARCSEC_PER_RAD


def comoving_volume(z: np.ndarray) -> np.ndarray:
    """[N] full-sky comoving volume inside redshift z, Mpc^3."""
    t = tables()
    return np.interp(z, t["z"], t["vc_cbrt"]) ** 3


def redshift_at_volume(v: np.ndarray) -> np.ndarray:
    """Inverse of ``comoving_volume``: draw z uniform in comoving volume by passing
    uniform volumes (V is monotonic in z)."""
    t = tables()
    return np.interp(np.cbrt(v), t["vc_cbrt"], t["z"])
