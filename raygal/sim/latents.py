"""The simulator's latent morphology columns (``raygal simulate --with-latents``).

Each mock image is made from a handful of numbers (``morphology.draw_morphology`` and the
survey's seeing and sky). With ``with_latents=True`` the survey writes them as extra float32
columns named ``lat_*``, after the standard galaxy columns, with a unit and a description in
each field's metadata. They are ground truth for studies of what the images carry (e.g.
``benchmarks/bench_oracle.py``), never model inputs: training, statistics, inference and
evaluation select their columns by name and never read a ``lat_*`` column.

Angles are in degrees, sizes are half-light semi-major axes, pixels are SDSS pixels
(0.396"), B/T is a share of the light in a band.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from ..schema import BANDS, CUTOUT_BANDS, SDSS_PIXEL_SCALE

LATENT_PREFIX = "lat_"


@dataclass(frozen=True)
class Latent:
    """One latent column: ``name`` (with the ``lat_`` prefix), its unit, what it is, and how
    to compute it ([N] array) from a survey chunk dict."""

    name: str
    unit: str
    description: str
    value: Callable[[dict], np.ndarray]


def _band(key: str, band: str) -> Callable[[dict], np.ndarray]:
    j = BANDS.index(band)
    return lambda c: c[key][:, j] / np.maximum(c["flux_bulge"][:, j] + c["flux_disk"][:, j]
                                               + c["flux_knots"][:, j], 1e-30)


def _pix(key: str) -> Callable[[dict], np.ndarray]:
    return lambda c: c[key] / SDSS_PIXEL_SCALE


LATENTS: tuple[Latent, ...] = (
    Latent("lat_inclination", "deg", "disk inclination (0 = face-on)",
           lambda c: np.degrees(c["inclination"])),
    Latent("lat_q_disk", "", "projected disk axis ratio b/a (oblate disk, intrinsic "
           "thickness 0.15)", lambda c: c["q_disk"]),
    Latent("lat_q_bulge", "", "projected bulge axis ratio b/a", lambda c: c["q_bulge"]),
    Latent("lat_position_angle", "deg", "major-axis position angle, from the +x (column) axis "
           "towards +y (row)", lambda c: np.degrees(c["position_angle"])),
    *(Latent(f"lat_bulge_fraction_{b}", "", f"bulge-to-total light ratio B/T in {b}",
             _band("flux_bulge", b)) for b in CUTOUT_BANDS),
    Latent("lat_r_e_kpc", "kpc", "half-light radius from the size-mass relation (the bulge "
           "and disk radii scale with it)", lambda c: c["r_e_kpc"]),
    Latent("lat_r_e_pix", "pixel", "the same half-light radius in pixels",
           _pix("r_e_arcsec")),
    Latent("lat_r_bulge_pix", "pixel", "bulge (de Vaucouleurs) half-light semi-major axis",
           _pix("r_bulge")),
    Latent("lat_r_disk_pix", "pixel", "disk (exponential) half-light semi-major axis",
           _pix("r_disk")),
    Latent("lat_n_knots", "", "number of star-forming knots",
           lambda c: c["n_knots"].astype(np.float64)),
    Latent("lat_knot_fraction", "", "share of the r-band light in knots",
           lambda c: c["knot_fraction"]),
    Latent("lat_knot_sigma_pix", "pixel", "intrinsic Gaussian sigma of the knots (before the "
           "PSF)", _pix("knot_sigma")),
    Latent("lat_lane_depth_r", "", "fractional r-band dip at the dust lane's centre (0 = no "
           "lane)", lambda c: c["lane_depth"][:, CUTOUT_BANDS.index("r")]),
    Latent("lat_psf_fwhm", "arcsec", "seeing: Moffat PSF FWHM (g, r, i alike)",
           lambda c: c["psf_fwhm"]),
    Latent("lat_sky_scale", "", "sky brightness relative to the band's dark-sky value",
           lambda c: c["sky_scale"]),
    Latent("lat_fibre_seeing", "arcsec", "seeing FWHM of the spectroscopic exposure (not the "
           "image's)", lambda c: c["fibre_seeing"]),
    Latent("lat_fibre_fraction_r", "", "share of the r-band light inside the 3\" fibre "
           "during the spectroscopic exposure", lambda c: c["fibre_r"]),
)

LATENT_NAMES = tuple(lat.name for lat in LATENTS)


def latent_fields() -> list[pa.Field]:
    """Arrow fields of the latent columns (float32, unit and description in the metadata)."""
    return [pa.field(lat.name, pa.float32(), metadata={"unit": lat.unit,
                                                       "description": lat.description,
                                                       "latent": "true"})
            for lat in LATENTS]


def latent_arrays(cat: dict) -> dict[str, np.ndarray]:
    """{name: [N] float32} of every latent column of a survey chunk dict."""
    return {lat.name: np.asarray(lat.value(cat), dtype=np.float32) for lat in LATENTS}


def is_latent(name: str) -> bool:
    return name.startswith(LATENT_PREFIX)
