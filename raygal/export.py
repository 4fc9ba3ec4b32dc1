"""Units and descriptions of posterior-catalog columns, and the catalog as FITS tables.

A posterior catalog (``raygal infer``) is Parquet; this module says what each of its columns
means, in two forms that astronomy and data tools read without help:

- Parquet field metadata (``catalog_field_metadata``, ``annotate_schema``): ``unit`` as a
  string astropy parses (``astropy.units.Unit(s)``) and a ``description``;
- FITS binary tables (``export_fits``), one per catalog shard, written from an astropy
  ``QTable``: ``QTable.read`` gives Quantity columns with these units and no warnings.

Units, per catalog column of a target T (see ``raygal.schema.TARGETS``)::

    T_mean, T_q025 .. T_q975         the target's unit: dex(solMass) for log_mstar and
                                      log_mbh, dex(solMass / yr) for log_sfr, dex for oh12,
                                      km / s, mag (A_V), 1e-17 erg / (s cm2) for line fluxes,
                                      dimensionless for z and dn4000
    T_std, T_std_aleatoric/epistemic  a spread: dex for the dex(...) targets, else as T_mean
    T_detect_prob                     dimensionless (a probability)
    ra, dec                           deg

The logarithmic units are astropy function units (``u.dex(u.Msun)``). The FITS standard has
no such units, so astropy keeps them in its own table description in the header (which
``QTable.read`` restores exactly) and leaves ``TUNITn`` empty; for other FITS readers (TOPCAT,
fitsio) every column also gets a ``TCOMMn`` card with its description and unit as text.
"""
from __future__ import annotations

import io
import os
import re
import warnings

import pyarrow as pa

from . import storage
from .catalog import catalog_shards, read_settings
from .schema import ID_COLUMN, TARGETS, get_target

#: Columns of a catalog that are not per-target summaries: (unit, description).
FIXED_COLUMNS = {
    ID_COLUMN: (None, "object id: the SDSS objID, or the dataset's stable id"),
    "ra": ("deg", "right ascension (J2000)"),
    "dec": ("deg", "declination (J2000)"),
    "status": (None, "'ok', or why the row has no posterior (bad_photometry, "
                     "missing_cutout, bad_cutout)"),
    "flags": (None, "quality flags of the input row (bit mask of raygal.schema.Flag)"),
    "samples": (None, "posterior samples [n, D] in physical units; the targets are in the "
                      "order of the TARGETS header keyword"),
}
#: Suffixes of per-target columns that are spreads (a difference of values, not a value).
SPREAD_SUFFIXES = {"std": "posterior standard deviation",
                   "std_aleatoric": "aleatoric part of the posterior standard deviation",
                   "std_epistemic": "epistemic part of the posterior standard deviation"}
_QUANTILE = re.compile(r"q(\d+)")


def _target_of(column: str, targets) -> tuple[str, str] | None:
    """(target, suffix) of a per-target column such as 'log_mstar_q16', else None. The
    longest matching target name wins."""
    for t in sorted(targets, key=len, reverse=True):
        if column.startswith(t + "_"):
            return t, column[len(t) + 1:]
    return None


def _quantile_percent(suffix: str) -> float | None:
    """'q025' -> 2.5, 'q16' -> 16, 'q975' -> 97.5 (two digits before the implied point)."""
    m = _QUANTILE.fullmatch(suffix)
    if not m:
        return None
    digits = m.group(1)
    return int(digits) / 10 ** (len(digits) - 2)


def column_unit(column: str, targets):
    """The astropy unit of catalog ``column`` (None: the column has no unit, e.g. objid).

    >>> column_unit("log_mstar_q84", ["log_mstar"])
    Unit("dex(solMass)")
    >>> column_unit("log_mstar_std", ["log_mstar"])
    Unit("dex")
    >>> column_unit("flux_halpha_mean", ["flux_halpha"]).to_string()
    '1e-17 erg / (s cm2)'
    """
    import astropy.units as u

    if column in FIXED_COLUMNS:
        unit = FIXED_COLUMNS[column][0]
        return u.Unit(unit) if unit else None
    found = _target_of(column, targets)
    if found is None:
        return None
    target, suffix = found
    unit = u.Unit(get_target(target).unit)
    if suffix == "detect_prob":
        return u.dimensionless_unscaled
    if suffix in SPREAD_SUFFIXES:
        # The spread of a log quantity is a ratio: dex, not dex(solMass).
        return getattr(unit, "function_unit", unit)
    if suffix == "mean" or _quantile_percent(suffix) is not None:
        return unit
    return None


def column_description(column: str, targets) -> str | None:
    """A one-line description of catalog ``column`` (None for a column raygal does not
    know).

    >>> column_description("z_q975", ["z"])
    '97.5th percentile of the posterior of spectroscopic redshift'
    """
    if column in FIXED_COLUMNS:
        return FIXED_COLUMNS[column][1]
    found = _target_of(column, targets)
    if found is None:
        return None
    target, suffix = found
    what = get_target(target).description
    if suffix == "mean":
        return f"posterior mean of {what}"
    if suffix in SPREAD_SUFFIXES:
        return f"{SPREAD_SUFFIXES[suffix]} of {what}"
    if suffix == "detect_prob":
        return f"probability that {what} is measurable"
    pct = _quantile_percent(suffix)
    if pct is not None:
        return f"{pct:g}th percentile of the posterior of {what}"
    return None


def catalog_field_metadata(column: str, targets) -> dict[bytes, bytes]:
    """Parquet field metadata of catalog ``column``: ``unit`` (an astropy unit string; absent
    for unitless columns such as objid) and ``description``; {} for unknown columns.

    >>> catalog_field_metadata("log_sfr_mean", ["log_sfr"])[b"unit"]
    b'dex(solMass / yr)'
    """
    md = {}
    unit = column_unit(column, targets)
    if unit is not None:
        md[b"unit"] = unit.to_string().encode()
    desc = column_description(column, targets)
    if desc:
        md[b"description"] = desc.encode()
    return md


def annotate_schema(schema: pa.Schema, targets) -> pa.Schema:
    """``schema`` with each known column's unit and description added to its field metadata
    (other metadata kept). Write a catalog shard with it:
    ``pq.write_table(table.cast(annotate_schema(table.schema, targets)), ...)``.

    >>> s = annotate_schema(pa.schema([("z_mean", pa.float32())]), ["z"])
    >>> s.field("z_mean").metadata[b"description"]
    b'posterior mean of spectroscopic redshift'
    """
    fields = []
    for f in schema:
        md = dict(f.metadata or {})
        md.update(catalog_field_metadata(f.name, targets))
        fields.append(f.with_metadata(md) if md else f)
    return pa.schema(fields, metadata=schema.metadata)


def catalog_targets(column_names, settings: dict | None = None) -> list[str]:
    """The targets of a catalog: from its inference settings, else from its ``T_mean``
    columns."""
    if settings and settings.get("targets"):
        return list(settings["targets"])
    return [t for t in TARGETS if f"{t}_mean" in column_names]


# ----------------------------------------------------------------------------------------------
# FITS
# ----------------------------------------------------------------------------------------------

def _catalog_settings(catalog_uri: str) -> dict:
    """The catalog's inference settings (model, samples, targets), or {} if it has none."""
    return read_settings(catalog_uri, missing_ok=True) or {}


def shard_qtable(table: pa.Table, targets):
    """A catalog shard (pyarrow) as an astropy QTable: a Quantity for every column with a
    unit, strings for ``status``, the samples as an [N, n, D] array column."""
    from astropy.table import QTable

    qt = QTable()
    for name in table.column_names:
        col = table.column(name)
        if name == "samples":
            values = col.combine_chunks().to_numpy_ndarray()
        else:
            values = col.to_numpy(zero_copy_only=False)
            if name == "status":
                values = values.astype(str)
        unit = column_unit(name, targets)
        # ``<<`` makes the right class: a Dex for dex(solMass), a Quantity otherwise.
        qt[name] = values << unit if unit is not None else values
        qt[name].info.description = column_description(name, targets)
    return qt


def fits_bytes(qt, header: dict) -> bytes:
    """A FITS file (empty primary HDU + one binary table) of QTable ``qt``, with ``header``
    cards on the table and a TCOMMn card (description [unit]) per described column."""
    from astropy.utils.exceptions import AstropyUserWarning

    for key, value in header.items():
        qt.meta[key] = value
    for i, name in enumerate(qt.colnames, start=1):
        desc = qt[name].info.description
        unit = getattr(qt[name], "unit", None)
        if desc:
            qt.meta[f"TCOMM{i}"] = desc + (f" [{unit.to_string()}]" if unit is not None
                                           and unit.to_string() else "")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Function units (dex(solMass)) have no FITS form: astropy says so, then keeps them in
        # its serialised table description, which QTable.read restores (module docstring).
        warnings.filterwarnings("ignore", message=".*could not be saved in native FITS",
                                category=AstropyUserWarning)
        qt.write(buf, format="fits")
    return buf.getvalue()


def export_fits(catalog_uri: str, out_uri: str) -> list[str]:
    """Write each catalog shard as a FITS binary table with units (astropy), streaming one
    shard at a time, under the shard's name with ``.fits``; returns the FITS URIs."""
    import pyarrow.parquet as pq

    settings = _catalog_settings(catalog_uri)
    shards = catalog_shards(catalog_uri)
    if not shards:
        raise FileNotFoundError(f"{catalog_uri}: no catalog shards (*.parquet) to export")
    outs = []
    for s in shards:
        fs, path = storage.arrow_fs(s)
        table = pq.read_table(path, filesystem=fs)
        targets = catalog_targets(table.column_names, settings)
        header = {"TARGETS": ",".join(targets),
                  "COMMENT": "raygal posterior catalog: one row per input galaxy"}
        if settings.get("model"):
            header["MODEL"] = settings["model"][-68:]
        if settings.get("samples") is not None:
            header["NSAMPLES"] = int(settings["samples"])
        if settings.get("solver"):
            header["SOLVER"] = str(settings["solver"])
        ouri = storage.join(out_uri, os.path.basename(s).rsplit(".", 1)[0] + ".fits")
        storage.write_bytes(ouri, fits_bytes(shard_qtable(table, targets), header))
        outs.append(ouri)
    return outs
