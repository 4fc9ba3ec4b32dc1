"""Cleaning: the one place where source values become nulls plus flags.

Every reader hands a ``RawBatch`` (source values already mapped to raygal names, as masked
float64 arrays whose mask means "absent in the source") to ``clean_batch``, which returns rows
in the raygal schema. The rules, applied in this order:

1. Galaxy selection: where a ``class`` column exists, rows whose class is not GALAXY (stars,
   quasars) are not written and are counted as ``dropped["class=STAR"]`` etc. Rows with no class
   (e.g. photometric objects without a spectrum in a left join) are kept.
2. SDSS sentinels (-9999, -999, -99; and 0 with zero inverse variance where an ivar column is
   present) -> null + ``SENTINEL``; NaN/inf -> null + ``NONFINITE``. A negative magnitude error
   is SDSS's "not measured" too and counts as a sentinel.
3. Magnitudes fainter than ``MAG_FAINT_LIMIT`` or with an error above ``MAGERR_HUGE`` are
   non-detections (ANNz writes them as 28-36 mag with errors of several mag): magnitude and
   error -> null + ``NONDETECTION``.
4. Every null magnitude sets ``MAG_MISSING_<band>``; a magnitude without an error sets
   ``MAGERR_MISSING``; fewer than ``MIN_GOOD_BANDS`` usable bands sets ``PHOT_BAD``.
5. Targets outside ``raygal.schema.TARGETS[t]`` [lo, hi] -> null + ``TARGET_OUT_OF_RANGE``.
6. ``log_mbh`` is derived from ``sigma_v`` where the source has no black-hole mass (the papers'
   M-sigma relation of McConnell & Ma 2013).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raygal.schema import (BANDS, FLAGS_COLUMN, ID_COLUMN, SOURCE_COLUMN, TARGETS, Flag,
                           galaxy_schema)

from .report import IngestReport

SENTINELS = (-9999.0, -999.0, -99.0)
#: Fainter than any SDSS detection (r ~ 22.2 at 95 % completeness; ANNz non-detections 28-36).
MAG_FAINT_LIMIT = 28.0
#: A 1-mag error is a < 1-sigma "detection": treat it as none.
MAGERR_HUGE = 1.0
MIN_GOOD_BANDS = 3

#: McConnell & Ma (2013) M-sigma: log M_BH = ALPHA + BETA log10(sigma / 200 km/s).
MSIGMA_ALPHA, MSIGMA_BETA = 8.32, 5.64

#: Types of the optional per-source columns appended after the standard ones.
EXTRA_TYPES: dict[str, pa.DataType] = {
    "specobjid": pa.uint64(),   # SDSS specObjID is unsigned 64-bit (above int64 since DR8)
    "plate": pa.int32(),
    "mjd": pa.int32(),
    "fiberid": pa.int32(),
    "class": pa.string(),
    "bpt_class": pa.string(),
    "agn_class": pa.string(),
}

NUMERIC_FIELDS = ("ra", "dec", *(f"mag_{b}" for b in BANDS), *(f"magerr_{b}" for b in BANDS),
                  *TARGETS)


def extra_fields(names) -> list[pa.Field]:
    """Schema fields for the extra columns ``names`` (in ``EXTRA_TYPES`` order)."""
    return [pa.field(n, EXTRA_TYPES[n]) for n in EXTRA_TYPES if n in set(names)]


@dataclass
class RawBatch:
    """Source rows mapped to raygal names, before cleaning.

    ``values``: field -> masked float64 array (mask = absent in the source; absent fields may be
    left out). ``ivar``: field -> inverse variance, where the source has one. ``cls``: the
    spectroscopic class per row (str or None) or None when the source has no class column.
    ``extra``: extra column -> list/array of values, typed by ``EXTRA_TYPES``.
    """

    objid: np.ndarray
    values: dict = field(default_factory=dict)
    ivar: dict = field(default_factory=dict)
    cls: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.objid)

    def take(self, keep: np.ndarray) -> "RawBatch":
        return RawBatch(
            objid=self.objid[keep],
            values={k: v[keep] for k, v in self.values.items()},
            ivar={k: np.asarray(v)[keep] for k, v in self.ivar.items()},
            cls=None if self.cls is None else self.cls[keep],
            extra={k: _take(v, keep) for k, v in self.extra.items()})


def _take(v, keep):
    if isinstance(v, (pa.Array, pa.ChunkedArray)):
        return v.filter(pa.array(keep))
    return np.asarray(v, dtype=object)[keep] if isinstance(v, list) else v[keep]


def masked(values, mask=None) -> np.ma.MaskedArray:
    """A masked float64 array from numpy, masked numpy or pyarrow values (nulls -> masked)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        mask = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        values = values.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values) if mask is None else mask | np.ma.getmaskarray(values)
        values = values.filled(0)
    data = np.asarray(values, dtype=np.float64)
    m = np.zeros(len(data), bool) if mask is None else np.asarray(mask, bool)
    return np.ma.MaskedArray(data, mask=m)


def select_galaxies(raw: RawBatch, report: IngestReport) -> RawBatch:
    """Keep class == GALAXY (or unknown class); count the rest in ``report.dropped``."""
    if raw.cls is None:
        return raw
    cls = np.array([None if c is None else str(c).strip().upper() or None for c in raw.cls],
                   dtype=object)
    is_gal = np.array([c is None or c == "GALAXY" for c in cls], dtype=bool)
    if is_gal.all():
        raw.cls = cls
        return raw
    labels, counts = np.unique(cls[~is_gal].astype(str), return_counts=True)
    for label, n in zip(labels, counts):
        report.dropped[f"class={label}"] += int(n)
    raw.cls = cls
    return raw.take(is_gal)


def _null_bad_values(v: np.ma.MaskedArray, ivar, flags: np.ndarray) -> np.ma.MaskedArray:
    """Null sentinels and non-finite values of one column, OR-ing their flags into ``flags``."""
    data, present = v.data, ~np.ma.getmaskarray(v)
    finite = np.isfinite(data)
    sentinel = present & finite & np.isin(data, SENTINELS)
    if ivar is not None:
        iv = np.asarray(ivar, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            sentinel |= present & (data == 0) & (iv == 0)
    nonfinite = present & ~finite
    flags |= np.where(sentinel, np.int32(Flag.SENTINEL), 0).astype(np.int32)
    flags |= np.where(nonfinite, np.int32(Flag.NONFINITE), 0).astype(np.int32)
    return np.ma.MaskedArray(data, mask=~present | sentinel | nonfinite)


def clean_batch(raw: RawBatch, *, source: str, extra: list[pa.Field],
                report: IngestReport) -> pa.Table:
    """Apply the cleaning rules (module docstring) and return rows in the raygal schema
    (photometry-only; ``raygal.ingest.cutouts`` adds the cutout column)."""
    raw = select_galaxies(raw, report)
    n = len(raw)
    flags = np.zeros(n, dtype=np.int32)
    vals: dict[str, np.ma.MaskedArray] = {}
    for name in NUMERIC_FIELDS:
        v = raw.values.get(name)
        v = masked(np.zeros(n), np.ones(n, bool)) if v is None else masked(v)
        vals[name] = _null_bad_values(v, raw.ivar.get(name), flags)

    n_good = np.zeros(n, dtype=np.int32)
    any_err_missing = np.zeros(n, dtype=bool)
    for b in BANDS:
        mag, err = vals[f"mag_{b}"], vals[f"magerr_{b}"]
        with np.errstate(invalid="ignore"):
            neg_err = ~np.ma.getmaskarray(err) & (err.data < 0)
            flags |= np.where(neg_err, np.int32(Flag.SENTINEL), 0).astype(np.int32)
            err = np.ma.MaskedArray(err.data, mask=np.ma.getmaskarray(err) | neg_err)
            nondet = ((~np.ma.getmaskarray(mag) & (mag.data > MAG_FAINT_LIMIT))
                      | (~np.ma.getmaskarray(err) & (err.data > MAGERR_HUGE)))
        flags |= np.where(nondet, np.int32(Flag.NONDETECTION), 0).astype(np.int32)
        mag = np.ma.MaskedArray(mag.data, mask=np.ma.getmaskarray(mag) | nondet)
        err = np.ma.MaskedArray(err.data, mask=np.ma.getmaskarray(err) | nondet)
        mag_ok = ~np.ma.getmaskarray(mag)
        flags |= np.where(mag_ok, 0, np.int32(Flag.mag_missing(b))).astype(np.int32)
        any_err_missing |= mag_ok & np.ma.getmaskarray(err)
        n_good += mag_ok
        vals[f"mag_{b}"], vals[f"magerr_{b}"] = mag, err
    flags |= np.where(any_err_missing, np.int32(Flag.MAGERR_MISSING), 0).astype(np.int32)
    flags |= np.where(n_good < MIN_GOOD_BANDS, np.int32(Flag.PHOT_BAD), 0).astype(np.int32)

    n_derived = _derive_log_mbh(vals)
    if n_derived:
        note = report.notes.setdefault("log_mbh_from_sigma_v", {
            "relation": f"McConnell & Ma 2013: {MSIGMA_ALPHA} + {MSIGMA_BETA} "
                        f"log10(sigma_v / 200 km/s)", "rows": 0})
        note["rows"] += n_derived
    for name, t in TARGETS.items():
        v = vals[name]
        present = ~np.ma.getmaskarray(v)
        out = present & ~t.in_range(v.data)
        flags |= np.where(out, np.int32(Flag.TARGET_OUT_OF_RANGE), 0).astype(np.int32)
        vals[name] = np.ma.MaskedArray(v.data, mask=~present | out)

    schema = galaxy_schema(None, extra=extra)
    cols = {ID_COLUMN: pa.array(np.asarray(raw.objid, dtype=np.int64), pa.int64())}
    for name in NUMERIC_FIELDS:
        typ = schema.field(name).type
        v = vals[name]
        cols[name] = pa.array(v.data.astype(typ.to_pandas_dtype()),
                              mask=np.ma.getmaskarray(v), type=typ)
    cols[FLAGS_COLUMN] = pa.array(flags, pa.int32())
    cols[SOURCE_COLUMN] = pa.array([source] * n, pa.string())
    for f in extra:
        cols[f.name] = _extra_array(raw.extra.get(f.name), n, f.type)
    return pa.Table.from_pydict(cols, schema=schema)


def _derive_log_mbh(vals: dict) -> int:
    """Fill absent log_mbh from sigma_v in place; returns the number of rows filled."""
    mbh, sig = vals["log_mbh"], vals["sigma_v"]
    sig_ok = ~np.ma.getmaskarray(sig) & TARGETS["sigma_v"].in_range(sig.data)
    fill = np.ma.getmaskarray(mbh) & sig_ok
    if not fill.any():
        return 0
    with np.errstate(divide="ignore", invalid="ignore"):
        derived = MSIGMA_ALPHA + MSIGMA_BETA * np.log10(sig.data / 200.0)
    vals["log_mbh"] = np.ma.MaskedArray(np.where(fill, derived, mbh.data),
                                        mask=np.ma.getmaskarray(mbh) & ~fill)
    return int(fill.sum())


def _extra_array(v, n: int, typ: pa.DataType) -> pa.Array:
    if v is None:
        return pa.nulls(n, typ)
    if isinstance(v, (pa.Array, pa.ChunkedArray)):
        return v.cast(typ)
    if isinstance(v, np.ma.MaskedArray):
        return pa.array(v.filled(0).astype(typ.to_pandas_dtype()),
                        mask=np.ma.getmaskarray(v), type=typ)
    return pa.array(list(v) if not isinstance(v, np.ndarray) or v.dtype == object else v,
                    type=typ)
