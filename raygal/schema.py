"""The galaxy data model: one Arrow schema, the targets and their transforms, the row flags.

Everything that reads, writes, trains on or reports galaxies takes its column names, units and
transforms from here, so the data model is defined exactly once.

A galaxy row::

    objid            int64    stable id (SDSS objID, or assigned at ingest: see ``synthetic_objid``)
    ra, dec          float64  deg (null where the source has no coordinates)
    mag_u .. mag_z   float32  AB magnitudes (null where missing, a sentinel or a non-detection)
    magerr_u .. _z   float32  1-sigma magnitude errors (null where unknown)
    cutout           fixed_shape_tensor<float32>[C, H, W]  (optional column: photometry-only
                     catalogs have none); field metadata gives the pixel scale and the unit
    <targets>        float32  nullable, see ``TARGETS``
    flags            int32    bit mask of ``Flag``
    source           string   the catalog the row came from

Colours are derived (``colours``), never stored.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

BANDS = ("u", "g", "r", "i", "z")
MAG_COLUMNS = tuple(f"mag_{b}" for b in BANDS)
MAGERR_COLUMNS = tuple(f"magerr_{b}" for b in BANDS)
COLOUR_NAMES = ("u-g", "g-r", "r-i", "i-z")
CUTOUT_COLUMN = "cutout"
ID_COLUMN = "objid"
FLAGS_COLUMN = "flags"
SOURCE_COLUMN = "source"

#: SDSS imaging pixel scale, arcsec / pixel.
SDSS_PIXEL_SCALE = 0.396
#: Bands of the image cutouts, in channel order.
CUTOUT_BANDS = ("g", "r", "i")


class Flag(enum.IntFlag):
    """Per-row quality flags (the ``flags`` column). A flagged value is null, never a number."""

    MAG_MISSING_U = 1 << 0
    MAG_MISSING_G = 1 << 1
    MAG_MISSING_R = 1 << 2
    MAG_MISSING_I = 1 << 3
    MAG_MISSING_Z = 1 << 4
    MAGERR_MISSING = 1 << 5      # at least one magnitude error unknown
    SENTINEL = 1 << 6            # an SDSS sentinel (-9999, -999, -99, 0 with zero ivar) was nulled
    NONDETECTION = 1 << 7        # a magnitude fainter than the survey limit with a huge error
    CUTOUT_MISSING = 1 << 8      # no cutout for this row
    CUTOUT_BAD = 1 << 9          # unreadable, wrong shape, blank or non-finite cutout
    TARGET_OUT_OF_RANGE = 1 << 10  # a target outside its physical domain was nulled
    NONFINITE = 1 << 11          # a NaN/inf in the source was nulled
    PHOT_BAD = 1 << 12           # photometry unusable for inference (e.g. too many bands missing)

    @classmethod
    def mag_missing(cls, band: str) -> "Flag":
        return cls[f"MAG_MISSING_{band.upper()}"]

    @classmethod
    def describe(cls, value: int) -> list[str]:
        """Names of the flags set in ``value``."""
        return [f.name for f in cls if value & f]


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------

class Transform:
    """A bijection from catalog values x to the space the models work in, y = forward(x).

    Like ``torch.distributions.Transform`` (and zuko's transforms) it carries its own inverse
    and log-Jacobian, so no caller needs to know which transform a target has; unlike them it
    also works on numpy arrays, which ingest and the data pipelines use.

    >>> LOG10.inverse(LOG10.forward(np.array([100.0])))
    array([100.])
    >>> abs(float(LOG1P.log_abs_det_jacobian(np.array(0.0))))  # d log1p(x) / dx = 1 at 0
    0.0
    """

    name = "identity"

    def forward(self, x):
        return x

    def inverse(self, y):
        return y

    def log_abs_det_jacobian(self, x):
        """log |dy/dx| at catalog values ``x`` (elementwise)."""
        return x * 0.0

    def in_domain(self, x) -> np.ndarray:
        """Boolean mask of values the transform accepts (nulls/NaN are False)."""
        return np.isfinite(np.asarray(x, dtype=np.float64))

    def display(self, x: np.ndarray) -> np.ndarray:
        """Catalog values in the space figures show them in (decimal logs where logs)."""
        return np.asarray(x, dtype=np.float64)

    def display_label(self, name: str) -> str:
        """The TeX label (without $) of ``display`` values of a quantity called ``name``."""
        return name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Transform({self.name!r})"


class _Log10(Transform):
    name = "log10"

    def forward(self, x):
        return _xp(x).log10(x)

    def inverse(self, y):
        return 10.0 ** y

    def log_abs_det_jacobian(self, x):
        return -_xp(x).log(x * np.log(10.0))

    def in_domain(self, x):
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return np.isfinite(x) & (x > 0)

    def display(self, x):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log10(np.asarray(x, dtype=np.float64))

    def display_label(self, name):
        return rf"\log_{{10}}\,{name}"


class _Log1p(Transform):
    """log(1 + x): for emission-line fluxes, which can be zero (or slightly negative)."""

    name = "log1p"

    def forward(self, x):
        return _xp(x).log1p(x)

    def inverse(self, y):
        return _xp(y).expm1(y)

    def log_abs_det_jacobian(self, x):
        return -_xp(x).log1p(x)

    def in_domain(self, x):
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return np.isfinite(x) & (x > -1)

    def display(self, x):
        # log10(1 + F) rather than ln(1 + F): decimal logs read as magnitudes of flux.
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log10(1.0 + np.asarray(x, dtype=np.float64))

    def display_label(self, name):
        return rf"\log_{{10}}(1+{name})"


IDENTITY, LOG10, LOG1P = Transform(), _Log10(), _Log1p()
TRANSFORMS = {t.name: t for t in (IDENTITY, LOG10, LOG1P)}


def _xp(x):
    """The array module of ``x``: torch for tensors, numpy otherwise."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


@dataclass(frozen=True)
class Target:
    """A physical quantity raygal infers.

    ``transform`` (a ``Transform``) maps the catalog value to the space the models work in
    (before standardisation): ``IDENTITY``, ``LOG10`` (domain x > 0) or ``LOG1P`` (domain
    x > -1, used for emission-line fluxes, which can be zero). ``lo``/``hi`` bound physically
    sensible values; ingest nulls and flags values outside them.
    """

    name: str
    unit: str
    description: str
    transform: Transform = IDENTITY
    lo: float = -np.inf
    hi: float = np.inf
    latex: str = ""

    def forward(self, x):
        """Catalog value -> model space. Works on numpy arrays and torch tensors."""
        return self.transform.forward(x)

    def inverse(self, y):
        """Model space -> catalog value."""
        return self.transform.inverse(y)

    def in_domain(self, x) -> np.ndarray:
        """Boolean mask of values the transform accepts (nulls/NaN are False)."""
        return self.transform.in_domain(x)

    def in_range(self, x) -> np.ndarray:
        """Boolean mask of values inside [lo, hi] (and finite)."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return np.isfinite(x) & (x >= self.lo) & (x <= self.hi)


#: Unit strings are astropy's (``astropy.units.Unit(s)`` parses each without a warning);
#: "" is dimensionless. raygal.export turns them into FITS and Parquet units.
LINE_FLUX_UNIT = "1e-17 erg / (s cm2)"

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("z", "", "spectroscopic redshift", IDENTITY, 0.0, 7.0, r"$z$"),
        Target("log_mstar", "dex(Msun)", "log10 stellar mass", IDENTITY, 5.0, 13.0,
               r"$\log M_\star$"),
        Target("log_sfr", "dex(Msun/yr)", "log10 star-formation rate", IDENTITY, -6.0, 4.0,
               r"$\log\,\mathrm{SFR}$"),
        Target("oh12", "dex", "gas-phase metallicity 12+log(O/H)", IDENTITY, 7.0, 9.8,
               r"$12+\log(\mathrm{O/H})$"),
        Target("log_mbh", "dex(Msun)", "log10 black-hole mass (M-sigma)", IDENTITY, 3.0, 11.5,
               r"$\log M_\mathrm{BH}$"),
        Target("sigma_v", "km/s", "stellar velocity dispersion", LOG10, 1.0, 1000.0,
               r"$\sigma_v$"),
        Target("dn4000", "", "4000 A break strength Dn(4000)", IDENTITY, 0.5, 3.0,
               r"$D_n(4000)$"),
        Target("av", "mag", "internal dust attenuation A_V", IDENTITY, 0.0, 6.0, r"$A_V$"),
        Target("flux_halpha", LINE_FLUX_UNIT, "H-alpha 6563 line flux", LOG1P, -1.0 + 1e-6,
               1e6, r"$F(\mathrm{H}\alpha)$"),
        Target("flux_hbeta", LINE_FLUX_UNIT, "H-beta 4861 line flux", LOG1P, -1.0 + 1e-6,
               1e6, r"$F(\mathrm{H}\beta)$"),
        Target("flux_nii", LINE_FLUX_UNIT, "[N II] 6584 line flux", LOG1P, -1.0 + 1e-6,
               1e6, r"$F([\mathrm{N\,II}])$"),
        Target("flux_oiii", LINE_FLUX_UNIT, "[O III] 5007 line flux", LOG1P, -1.0 + 1e-6,
               1e6, r"$F([\mathrm{O\,III}])$"),
    )
}
TARGET_NAMES = tuple(TARGETS)

#: The papers' target sets (defaults for the models).
NF_CORE_TARGETS = ("log_mstar", "log_sfr", "z", "log_mbh")
NF_METALLICITY_TARGET = "oh12"
NF_LINE_TARGETS = ("flux_halpha", "flux_hbeta", "flux_nii", "flux_oiii")
CFM_TARGETS = ("log_mstar", "log_sfr", "oh12", "dn4000", "av")


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None


def parse_targets(spec) -> tuple[str, ...]:
    """'z,log_mstar' or a sequence -> validated tuple of target names."""
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    names = tuple(spec)
    for n in names:
        get_target(n)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate targets in {names}")
    return names


# ----------------------------------------------------------------------------------------------
# The Arrow schema
# ----------------------------------------------------------------------------------------------

def cutout_type(shape: tuple[int, int, int]) -> pa.DataType:
    """The cutout column's type: a canonical Arrow fixed-shape float32 tensor (C, H, W)."""
    c, h, w = (int(s) for s in shape)
    return pa.fixed_shape_tensor(pa.float32(), [c, h, w])


def galaxy_schema(cutout_shape: tuple[int, int, int] | None = None,
                  pixel_scale: float | None = SDSS_PIXEL_SCALE,
                  cutout_unit: str = "nanomaggies",
                  cutout_bands: tuple[str, ...] = CUTOUT_BANDS,
                  extra: list[pa.Field] | None = None) -> pa.Schema:
    """The Arrow schema of a galaxy row.

    ``cutout_shape=None`` gives a photometry-only catalog (no cutout column);
    ``pixel_scale=None`` records no pixel scale (cutouts at a per-galaxy scale). ``extra`` fields
    (e.g. ``plate``, ``mjd``, ``fiberid``, ``class``) are appended after the standard ones.
    """
    fields = [
        pa.field(ID_COLUMN, pa.int64(), nullable=False),
        pa.field("ra", pa.float64(), metadata={"unit": "deg"}),
        pa.field("dec", pa.float64(), metadata={"unit": "deg"}),
    ]
    fields += [pa.field(c, pa.float32(), metadata={"unit": "mag(AB)"}) for c in MAG_COLUMNS]
    fields += [pa.field(c, pa.float32(), metadata={"unit": "mag"}) for c in MAGERR_COLUMNS]
    if cutout_shape is not None:
        md = {"unit": cutout_unit, "bands": ",".join(cutout_bands), "layout": "CHW"}
        # None (or NaN): no single pixel scale, e.g. composites cut at a per-galaxy scale.
        if pixel_scale is not None and np.isfinite(pixel_scale):
            md["pixel_scale_arcsec"] = repr(float(pixel_scale))
        fields.append(pa.field(CUTOUT_COLUMN, cutout_type(cutout_shape), metadata=md))
    for t in TARGETS.values():
        fields.append(pa.field(t.name, pa.float32(),
                               metadata={"unit": t.unit, "description": t.description,
                                         "transform": t.transform.name}))
    fields.append(pa.field(FLAGS_COLUMN, pa.int32(), nullable=False))
    fields.append(pa.field(SOURCE_COLUMN, pa.string()))
    fields += list(extra or [])
    return pa.schema(fields, metadata={"raygal_schema_version": str(SCHEMA_VERSION)})


def cutout_shape_of(schema: pa.Schema) -> tuple[int, int, int] | None:
    """(C, H, W) of a schema's cutout column, or None for a photometry-only schema."""
    if CUTOUT_COLUMN not in schema.names:
        return None
    t = schema.field(CUTOUT_COLUMN).type
    shape = getattr(t, "shape", None)
    if shape is None:  # e.g. Ray's own tensor extension type
        shape = getattr(t, "_shape", None) or getattr(t, "shape", None)
    return tuple(int(s) for s in shape)


def pixel_scale_of(schema: pa.Schema) -> float | None:
    if CUTOUT_COLUMN not in schema.names:
        return None
    md = schema.field(CUTOUT_COLUMN).metadata or {}
    v = md.get(b"pixel_scale_arcsec")
    return float(v) if v is not None else None


def cutout_properties(schema: pa.Schema) -> dict | None:
    """What the cutouts of a schema are: {'shape', 'unit', 'bands', 'pixel_scale'} (None where
    not recorded), or None for a photometry-only schema. Models record it at training, and
    inference refuses cutouts that differ (a model trained on nanomaggies gives confident
    nonsense on display-stretched JPEGs of the same shape)."""
    if CUTOUT_COLUMN not in schema.names:
        return None
    md = {k.decode(): v.decode() for k, v in (schema.field(CUTOUT_COLUMN).metadata or {}).items()}
    return {"shape": list(cutout_shape_of(schema)), "unit": md.get("unit"),
            "bands": md.get("bands"), "pixel_scale": pixel_scale_of(schema)}


def cutout_mismatch(trained: dict | None, data: dict | None) -> list[str]:
    """How the cutouts ``data`` (``cutout_properties``) differ from those a model was
    ``trained`` on: one phrase per property, empty when they agree (or nothing is known)."""
    if not trained or not data:
        return []
    out = []
    for key in ("shape", "unit", "bands", "pixel_scale"):
        a, b = trained.get(key), data.get(key)
        if a is None and b is None:
            continue
        same = (a is not None and b is not None and abs(float(a) - float(b)) < 1e-3 * float(a)
                ) if key == "pixel_scale" else a == b
        if not same:
            out.append(f"{key} {b!r} (trained on {a!r})")
    return out


REQUIRED_COLUMNS = (ID_COLUMN, *MAG_COLUMNS, FLAGS_COLUMN)


def validate_schema(schema: pa.Schema, where: str = "dataset",
                    require_cutout: bool = False) -> None:
    """Raise a ValueError naming ``where`` and the missing columns if ``schema`` is not a galaxy
    table raygal can use."""
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if require_cutout and CUTOUT_COLUMN not in schema.names:
        missing.append(CUTOUT_COLUMN)
    if missing:
        raise ValueError(f"{where}: missing required column(s) {', '.join(missing)}; "
                         f"columns present: {', '.join(schema.names)}")


def colours(mags: np.ndarray) -> np.ndarray:
    """[N, 5] ugriz magnitudes -> [N, 4] colours u-g, g-r, r-i, i-z."""
    mags = np.asarray(mags)
    return mags[..., :-1] - mags[..., 1:]


def synthetic_objid(namespace: str, index) -> np.ndarray:
    """Stable int64 ids for sources without one: a 31-bit hash of ``namespace`` (e.g. the
    catalog's name) in the high bits and the row index in the low 32 bits. Positive, and far
    below real SDSS objIDs' range only by chance, so ingest records the id origin in the
    manifest."""
    h = int.from_bytes(hashlib.sha1(namespace.encode()).digest()[:4], "little") & 0x7FFFFFFF
    index = np.asarray(index, dtype=np.int64)
    return (np.int64(h) << np.int64(32)) | index


def plate_mjd_fiber_objid(plate, mjd, fiber) -> np.ndarray:
    """A readable, stable id for SDSS spectra: PPPPP MMMMM FFFF as one int64
    (e.g. plate 267, mjd 51608, fiber 28 -> 267516080028)."""
    plate = np.asarray(plate, dtype=np.int64)
    mjd = np.asarray(mjd, dtype=np.int64)
    fiber = np.asarray(fiber, dtype=np.int64)
    return plate * 10**9 + mjd * 10**4 + fiber
