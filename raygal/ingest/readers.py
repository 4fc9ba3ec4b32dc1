"""Readers: one per kind of SDSS catalog, each yielding pyarrow tables in the raygal schema.

Every reader streams its input in blocks, maps columns through ``raygal.ingest.columns``, hands
each block to ``raygal.ingest.clean.clean_batch`` (the one place with cleaning rules) and adds
the rows it read to an ``IngestReport`` (rows dropped by cleaning are counted there too), so
``num_rows + sum(dropped) == input rows`` can be checked at the end.

============  ==================================================  ==============  ===============
reader        input                                               objid           objid_origin
============  ==================================================  ==============  ===============
read_fits     CasJobs FITS tables (PhotoObj, SpecObj, galSpec*),  objID           sdss
              several joined on objID / specObjID / plate-mjd-
              fiber
read_skyser.  SkyServer CSV (objid saved as float: unusable)      plate-mjd-fiber plate_mjd_fiber
read_annz     ANNz whitespace table, 11 columns, no ids           hash + row      row_index
read_lines    lines_dn4000 CSV (+ av_dn4000_fuv.csv for A_V)      plate-mjd-fiber plate_mjd_fiber
read_catalog  objID,<target> CSV (the catalog of an image set)    objID (exact)   sdss
============  ==================================================  ==============  ===============
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from raygal.schema import BANDS, TARGETS, get_target, plate_mjd_fiber_objid, synthetic_objid

from . import textfiles as tf
from .clean import EXTRA_TYPES, NUMERIC_FIELDS, RawBatch, clean_batch, extra_fields, masked
from .columns import ColumnMap, check_bands, lower_index, require, resolve
from .errors import IngestError
from .fitstables import FitsTable
from .report import IngestReport

DEFAULT_CHUNK_ROWS = 65536
ANNZ_COLUMNS = ("u", "g", "r", "i", "z", "err_u", "err_g", "err_r", "err_i", "err_z", "z_spec")
MAGS = tuple(f"mag_{b}" for b in BANDS)
PLATE_MJD_FIBER = ("plate", "mjd", "fiberid")

#: MPA-JHU galSpecExtra ``bptclass`` codes (Brinchmann et al. 2004) -> the labels the lines
#: table uses, so one ``bpt_class`` column means the same thing for every source.
MPA_BPT_LABELS = {1: "SF", 2: "SF_lowSN", 3: "Composite", 4: "AGN", 5: "LINER_lowSN"}

#: Text that means "no value" in the class columns of the lines table.
CLASS_NULL_WORDS = ("NAN", "nan", "NaN", "")


def basename(uri: str) -> str:
    return posixpath.basename(str(uri).rstrip("/"))


def _mag_note(cmap: ColumnMap, fmt: str) -> str:
    return {"dered": "dered (modelMag, extinction-corrected)",
            "model": "modelMag (not extinction-corrected)",
            "cmodel": "cModelMag (not extinction-corrected)",
            "petro": "petroMag (not extinction-corrected)",
            "mag": "mag_* as given",
            "plain": ("modelMag (SkyServer u g r i z, not extinction-corrected)"
                      if fmt == "skyserver" else "as given (type undocumented by the source)"),
            None: "none"}[cmap.mag_kind]


# ----------------------------------------------------------------------------------------------
# CSV-based readers
# ----------------------------------------------------------------------------------------------

def _csv_raw(table: pa.Table, cmap: ColumnMap, uri: str, row0: int, objid) -> RawBatch:
    """A RawBatch from a block of text columns (``objid`` already parsed)."""
    values = {f: tf.floats(table.column(c).combine_chunks(), c, uri, row0)
              for f, c in cmap.source.items() if f in NUMERIC_FIELDS}
    ivar = {f: tf.floats(table.column(c).combine_chunks(), c, uri, row0)
            .fill_null(np.nan).to_numpy(zero_copy_only=False) for f, c in cmap.ivar.items()}
    extra = {}
    for f in EXTRA_TYPES:
        c = cmap.get(f)
        if c is None or f == "specobjid":   # CSV specObjIDs went through floats: not kept
            continue
        col = table.column(c).combine_chunks()
        if f in PLATE_MJD_FIBER:
            extra[f] = tf.ints(col, c, uri, row0, allow_float=True)
        else:
            extra[f] = tf.strings(col, CLASS_NULL_WORDS)
    cls = extra["class"].to_numpy(zero_copy_only=False) if "class" in extra else None
    return RawBatch(objid=objid, values={k: masked(v) for k, v in values.items()}, ivar=ivar,
                    cls=cls, extra=extra)


def _plate_mjd_fiber_ids(table, cmap, uri, row0) -> np.ndarray:
    parts = []
    for f in PLATE_MJD_FIBER:
        col = tf.ints(table.column(cmap.get(f)).combine_chunks(), cmap.get(f), uri, row0,
                      allow_float=True)
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise IngestError(uri, f"{cmap.get(f)} is empty: the row has no identifier",
                              row=row0 + i + 1)
        parts.append(col.to_numpy(zero_copy_only=False))
    return plate_mjd_fiber_objid(*parts)


def _strict_objids(table, cmap, uri, row0) -> np.ndarray:
    col = tf.ints(table.column(cmap.get("objid")).combine_chunks(), cmap.get("objid"), uri, row0)
    if col.null_count:
        i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise IngestError(uri, f"{cmap.get('objid')} is empty", row=row0 + i + 1)
    return col.to_numpy(zero_copy_only=False).astype(np.int64)


def _block_size(chunk_rows: int) -> int:
    return int(min(max(chunk_rows * 256, 1 << 16), 1 << 26))


def _check_bands(cmap, uri, names, report, allow_missing) -> None:
    """``columns.check_bands``, recording allowed missing columns in the report."""
    missing = check_bands(cmap, uri, names, allow_missing)
    if missing:
        report.note("missing_columns", {"uri": uri, "fields": missing})


def _finish(report: IngestReport, uri: str, fmt: str, rows: int) -> None:
    if rows == 0:
        raise IngestError(uri, "empty catalog (no data rows)")
    report.inputs.append({"uri": uri, "format": fmt, "rows": rows})


def read_skyserver(uri: str, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                   report: IngestReport | None = None, mags: str = "auto",
                   allow_missing_columns: bool = False) -> Iterator[pa.Table]:
    """A SkyServer CSV (``objid, ra, dec, u..z, ..., class, redshift, plate, mjd, fiberid``).

    objid was exported as a float and is not unique: ids come from (plate, mjd, fiberid).
    ``u..z`` are modelMag without errors (magerr null + MAGERR_MISSING); ``redshift`` -> z;
    non-GALAXY rows are dropped and counted."""
    report = report if report is not None else IngestReport()
    names = tf.csv_header(uri)
    cmap = resolve(names, uri=uri, mags=mags)
    require(cmap, ("ra", "dec", *MAGS, "class", "z", *PLATE_MJD_FIBER), uri, names,
            "a SkyServer catalog")
    _check_bands(cmap, uri, names, report, allow_missing_columns)
    report.set_objid_origin("plate_mjd_fiber")
    report.note("mag_type", _mag_note(cmap, "skyserver"))
    extra = extra_fields(["plate", "mjd", "fiberid", "class"])
    yield from _clean_csv_blocks(uri, cmap, extra, report, chunk_rows,
                                 _plate_mjd_fiber_ids, "skyserver")


def _load_av(av_uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted plate-mjd-fiber keys, A_V) of the lines table's companion ``av_dn4000_fuv.csv``
    (small: one row per galaxy of the main table)."""
    names = tf.csv_header(av_uri)
    cmap = resolve(names, uri=av_uri, extra_aliases={"av": ("extinction",)})
    require(cmap, (*PLATE_MJD_FIBER, "av"), av_uri, names, "the A_V table")
    keys, av = [], []
    for table, row0 in tf.iter_csv(av_uri):
        keys.append(_plate_mjd_fiber_ids(table, cmap, av_uri, row0))
        av.append(masked(tf.floats(table.column(cmap.get("av")).combine_chunks(),
                                   cmap.get("av"), av_uri, row0)))
    if not keys:
        raise IngestError(av_uri, "empty catalog (no data rows)")
    k = np.concatenate(keys)
    v = np.ma.concatenate(av)
    order = np.argsort(k, kind="stable")
    return k[order], v[order]


def read_lines(uri: str, av_uri: str | None = None, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               report: IngestReport | None = None, mags: str = "auto",
               allow_missing_columns: bool = False) -> Iterator[pa.Table]:
    """The lines_dn4000 table: ugriz (dered where given, else modelMag) with modelMagErr,
    redshift -> z, F_Halpha/F_Hbeta/F_nii/F_oiii -> flux_* (1e-17 erg/s/cm^2; -999 -> null +
    SENTINEL), Dn4000(obs) -> dn4000, BPT_class/AGN_class extras; A_V (``extinction``) from
    ``av_uri`` joined on plate, mjd, fiber_id. ids from (plate, mjd, fiberid)."""
    report = report if report is not None else IngestReport()
    names = tf.csv_header(uri)
    cmap = resolve(names, uri=uri, mags=mags)
    require(cmap, (*PLATE_MJD_FIBER, *MAGS, "z"), uri, names, "a lines_dn4000 catalog")
    _check_bands(cmap, uri, names, report, allow_missing_columns)
    report.set_objid_origin("plate_mjd_fiber")
    report.note("mag_type", _mag_note(cmap, "lines"))
    av = _load_av(av_uri) if av_uri else None
    extra = extra_fields(["plate", "mjd", "fiberid", "bpt_class", "agn_class"])
    rows = unmatched = 0
    for table, row0 in tf.iter_csv(uri, _block_size(chunk_rows)):
        objid = _plate_mjd_fiber_ids(table, cmap, uri, row0)
        raw = _csv_raw(table, cmap, uri, row0, objid)
        if av is not None:
            keys, vals = av
            idx = np.clip(np.searchsorted(keys, objid), 0, len(keys) - 1)
            hit = keys[idx] == objid
            unmatched += int((~hit).sum())
            raw.values["av"] = np.ma.MaskedArray(np.where(hit, vals.data[idx], 0.0),
                                                 mask=~hit | np.ma.getmaskarray(vals)[idx])
        rows += len(raw)
        report.input_rows += len(raw)
        yield clean_batch(raw, source=basename(uri), extra=extra, report=report)
    if av_uri:
        report.note("av_source", {"uri": av_uri, "rows_without_av": unmatched})
    _finish(report, uri, "lines", rows)


def read_catalog(uri: str, *, target: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 report: IngestReport | None = None, mags: str = "auto",
                 allow_missing_columns: bool = False) -> Iterator[pa.Table]:
    """An ``objID,<target>`` CSV (the catalog of an image set; other known columns such as ra,
    dec or magnitudes are mapped too). objID is parsed from the text as int64, never through a
    float; a non-integer objID is an error naming the row. ``target`` names the raygal target
    of the value column when its name is not a known alias (e.g. ``oh_p50`` -> oh12 is)."""
    report = report if report is not None else IngestReport()
    names = tf.csv_header(uri)
    cmap = resolve(names, uri=uri, mags=mags)
    require(cmap, ("objid",), uri, names, "an objID catalog")
    mapped = set(cmap.source.values()) | set(cmap.ivar.values())
    unmapped = [n for n in names if n not in mapped]
    if target is not None:
        get_target(target)
        if target not in cmap:
            low = lower_index(unmapped)
            if target.lower() in low:
                cmap.source[target] = low[target.lower()]
            elif len(unmapped) == 1:
                cmap.source[target] = unmapped[0]
            else:
                raise IngestError(uri, f"cannot tell which column holds target {target!r}: "
                                       f"columns present: {', '.join(names)}")
    if not any(t in cmap for t in TARGETS) and not cmap.has_photometry:
        raise IngestError(uri, f"no target or photometry column recognised (targets: "
                               f"{', '.join(TARGETS)}; e.g. oh_p50 -> oh12); columns present: "
                               f"{', '.join(names)}; pass target=<name> for the value column")
    _check_bands(cmap, uri, names, report, allow_missing_columns)
    report.set_objid_origin("sdss")
    report.note("mag_type", _mag_note(cmap, "catalog"))
    report.note("target_columns", {t: cmap.get(t) for t in TARGETS if t in cmap})
    extra = extra_fields([f for f in EXTRA_TYPES if f in cmap and f != "specobjid"])
    yield from _clean_csv_blocks(uri, cmap, extra, report, chunk_rows, _strict_objids,
                                 "catalog")


# ----------------------------------------------------------------------------------------------
# ANNz
# ----------------------------------------------------------------------------------------------

def read_annz(uri: str, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
              report: IngestReport | None = None) -> Iterator[pa.Table]:
    """The ANNz whitespace table ``u g r i z err_u .. err_z z_spec`` (no ids, no coordinates):
    objid = ``synthetic_objid(<file name>, row index)``; non-detections (28-36 mag, errors of
    several mag) are nulled and flagged by cleaning."""
    report = report if report is not None else IngestReport()
    report.set_objid_origin("row_index")
    report.note("mag_type", "as given (ANNz: SDSS asinh magnitudes, type undocumented)")
    namespace = basename(uri)
    rows = 0
    for block, row0, header in tf.iter_whitespace_table(uri, len(ANNZ_COLUMNS), chunk_rows):
        names = header or list(ANNZ_COLUMNS)
        cmap = resolve(names, uri=uri, mags="plain")
        require(cmap, (*MAGS, "z"), uri, names, "an ANNz table")
        pos = {n: i for i, n in enumerate(names)}
        values = {f: masked(block[:, pos[c]]) for f, c in cmap.source.items()
                  if f in NUMERIC_FIELDS}
        objid = synthetic_objid(namespace, np.arange(row0, row0 + len(block)))
        raw = RawBatch(objid=objid, values=values)
        rows += len(raw)
        report.input_rows += len(raw)
        yield clean_batch(raw, source=namespace, extra=[], report=report)
    _finish(report, uri, "annz", rows)


# ----------------------------------------------------------------------------------------------
# FITS (CasJobs)
# ----------------------------------------------------------------------------------------------

def _key(cols: dict, kind: str, cmap: ColumnMap) -> np.ndarray:
    """Join key of a block as uint64 bit patterns (objIDs and specObjIDs compare exactly)."""
    if kind == "plate_mjd_fiber":
        parts = [np.ma.filled(np.ma.asarray(cols[cmap.get(f)]), -1).astype(np.int64)
                 for f in PLATE_MJD_FIBER]
        return plate_mjd_fiber_objid(*parts).view(np.uint64)
    v = np.ma.filled(np.ma.asarray(cols[cmap.get(kind)]), 0)
    if v.dtype.kind not in "iu":
        raise ValueError(kind)
    return v.astype(np.uint64) if v.dtype.kind == "u" else v.astype(np.int64).view(np.uint64)


def _int_column(t: FitsTable, cmap: ColumnMap, field: str) -> bool:
    """Does ``t`` have ``field`` as an integer column (a float objID has lost digits)?"""
    c = cmap.get(field)
    if c is None:
        return False
    cols, _ = next(t.iter_columns([c], 1))
    return np.asarray(cols[c]).dtype.kind in "iu"


def _join_kind(a: tuple, b: tuple, join_on: str | None) -> str | None:
    (ta, ca), (tb, cb) = a, b

    def has(t, c, k):
        if k == "plate_mjd_fiber":
            return all(f in c for f in PLATE_MJD_FIBER)
        return _int_column(t, c, k)

    kinds = [join_on] if join_on else ["objid", "specobjid", "plate_mjd_fiber"]
    for k in kinds:
        if has(ta, ca, k) and has(tb, cb, k):
            return k
    return None


class _Secondary:
    """The small side of a FITS join: all its rows, indexed by the join key."""

    def __init__(self, t: FitsTable, cmap: ColumnMap, kind: str, fields: list[str]):
        self.uri, self.kind, self.fields, self.cmap = t.uri, kind, fields, cmap
        key_cols = ([cmap.get(f) for f in PLATE_MJD_FIBER] if kind == "plate_mjd_fiber"
                    else [cmap.get(kind)])
        src = [cmap.get(f) for f in fields] + [cmap.ivar[f] for f in fields if f in cmap.ivar]
        data = t.read_all(sorted(set(key_cols + src)))
        keys = _key(data, kind, cmap)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        self.duplicates = int((~first).sum())
        self.keys = keys[first]
        self.data = {c: v[order][first] for c, v in data.items()}
        self.rows = t.nrows
        self.matched = self.unmatched = 0

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row index into the secondary, hit mask) for primary ``keys``."""
        if not len(self.keys):
            return np.zeros(len(keys), int), np.zeros(len(keys), bool)
        idx = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        hit = self.keys[idx] == keys
        self.matched += int(hit.sum())
        self.unmatched += int((~hit).sum())
        return idx, hit


def _gather(values: np.ndarray, idx: np.ndarray, hit: np.ndarray):
    """Secondary values at ``idx``, masked where the primary row had no match."""
    v = values[idx]
    mask = ~hit | (np.ma.getmaskarray(v) if isinstance(v, np.ma.MaskedArray) else False)
    return np.ma.MaskedArray(np.ma.getdata(v), mask=mask)


def _fits_extra(name: str, v) -> pa.Array:
    data, mask = np.ma.getdata(v), np.ma.getmaskarray(v)
    if name == "bpt_class":
        if data.dtype.kind in "iuf":
            labels = [None if m else MPA_BPT_LABELS.get(int(x)) for x, m in zip(data, mask)]
            return pa.array(labels, pa.string())
    if name in ("class", "bpt_class", "agn_class"):
        out = [None if m or not str(x).strip() else str(x).strip() for x, m in zip(data, mask)]
        return pa.array(out, pa.string())
    if name == "specobjid":
        if data.dtype.kind == "i":
            data = data.astype(np.int64).view(np.uint64)
        return pa.array(data.astype(np.uint64), mask=mask, type=pa.uint64())
    return pa.array(data.astype(np.int64), mask=mask, type=pa.int64())


def read_fits(uris: list[str] | str, *, join_on: str | None = None,
              chunk_rows: int = DEFAULT_CHUNK_ROWS, report: IngestReport | None = None,
              mags: str = "auto", allow_missing_columns: bool = False) -> Iterator[pa.Table]:
    """CasJobs FITS tables, joined.

    Column names are matched case-insensitively (``objID``, ``dered_r`` / ``modelMag_r``,
    ``modelMagErr_r``, ``lgm_tot_p50`` -> log_mstar, ``sfr_tot_p50`` -> log_sfr, ``oh_p50`` ->
    oh12, ``bptclass`` -> bpt_class, ``h_alpha_flux`` .. ``oiii_5007_flux`` -> flux_* (already
    1e-17 erg/s/cm^2), ``d4000_n`` -> dn4000, SpecObj ``z``/``class``/``plate``/``mjd``/
    ``fiberID``/``velDisp`` -> sigma_v). The first file with photometry is streamed (its rows
    are the input rows); every other file is a left-joined lookup on objID, else specObjID,
    else (plate, mjd, fiberID) - whichever both have, or ``join_on`` - held in memory, so put
    the biggest table first. A field comes from the first file (primary first) that has it.
    """
    report = report if report is not None else IngestReport()
    uris = [uris] if isinstance(uris, str) else list(uris)
    tables = [FitsTable(u) for u in uris]
    try:
        maps = [resolve(t.columns, uri=t.uri, mags=mags) for t in tables]
        with_phot = [i for i, m in enumerate(maps) if m.has_photometry]
        if not with_phot:
            raise IngestError(uris[0] if len(uris) == 1 else ", ".join(uris),
                              "no photometry columns (expected dered_u.., modelMag_u.., "
                              "petroMag_u.. or u g r i z); columns present: "
                              + "; ".join(f"{basename(t.uri)}: {', '.join(t.columns)}"
                                          for t in tables))
        p = with_phot[0]
        prim, pmap = tables[p], maps[p]
        _check_bands(pmap, prim.uri, prim.columns, report, allow_missing_columns)
        provided = {f for f in pmap.source}
        secondaries: list[_Secondary] = []
        for i, (t, m) in enumerate(zip(tables, maps)):
            if i == p:
                continue
            kind = _join_kind((prim, pmap), (t, m), join_on)
            if kind is None:
                raise IngestError(t.uri, f"cannot join with {prim.uri}: no common "
                                         f"{join_on or 'objID, specObjID or plate/mjd/fiberID'}"
                                         f" column; columns present: {', '.join(t.columns)}")
            fields = [f for f in m.source if f not in provided and f != "objid"]
            provided |= set(fields)
            secondaries.append(_Secondary(t, m, kind, fields))
        yield from _stream_fits(prim, pmap, secondaries, chunk_rows, report, mags)
    finally:
        for t in tables:
            t.close()


def _stream_fits(prim, pmap, secondaries, chunk_rows, report, mags):
    if _int_column(prim, pmap, "objid"):
        id_mode = "objid"
    elif all(f in pmap for f in PLATE_MJD_FIBER):
        id_mode = "plate_mjd_fiber"
    else:
        id_mode = "row_index"
    report.set_objid_origin({"objid": "sdss"}.get(id_mode, id_mode))
    report.note("mag_type", _mag_note(pmap, "fits"))
    all_fields = set(pmap.source) | {f for s in secondaries for f in s.fields}
    extra = extra_fields([f for f in EXTRA_TYPES if f in all_fields])
    wanted = set(pmap.source.values()) | set(pmap.ivar.values())
    rows = 0
    for cols, row0 in prim.iter_columns(sorted(wanted), chunk_rows):
        n = len(next(iter(cols.values())))
        if id_mode == "objid":
            ids = np.ma.asarray(cols[pmap.get("objid")])
            if np.ma.getmaskarray(ids).any():
                i = int(np.flatnonzero(np.ma.getmaskarray(ids))[0])
                raise IngestError(prim.uri, f"{pmap.get('objid')} is null", row=row0 + i + 1)
            objid = np.ma.getdata(ids).astype(np.int64)
        elif id_mode == "plate_mjd_fiber":
            objid = _key(cols, "plate_mjd_fiber", pmap).view(np.int64)
        else:
            objid = synthetic_objid(basename(prim.uri), np.arange(row0, row0 + n))
        values = {f: masked(cols[c]) for f, c in pmap.source.items() if f in NUMERIC_FIELDS}
        ivar = {f: np.ma.filled(np.ma.asarray(cols[c]).astype(np.float64), np.nan)
                for f, c in pmap.ivar.items()}
        extras = {f: _fits_extra(f, cols[c]) for f, c in pmap.source.items() if f in EXTRA_TYPES}
        for s in secondaries:
            idx, hit = s.lookup(_key(cols, s.kind, pmap))
            for f in s.fields:
                v = _gather(s.data[s.cmap.get(f)], idx, hit)
                if f in NUMERIC_FIELDS:
                    values[f] = masked(v)
                    if f in s.cmap.ivar:
                        iv = _gather(s.data[s.cmap.ivar[f]], idx, hit)
                        ivar[f] = np.ma.filled(iv.astype(np.float64), np.nan)
                elif f in EXTRA_TYPES:
                    extras[f] = _fits_extra(f, v)
        cls = None
        if "class" in extras:
            cls = extras["class"].to_numpy(zero_copy_only=False)
        raw = RawBatch(objid=objid, values=values, ivar=ivar, cls=cls, extra=extras)
        rows += n
        report.input_rows += n
        yield clean_batch(raw, source=basename(prim.uri), extra=extra, report=report)
    _finish(report, prim.uri, "fits", rows)
    for s in secondaries:
        report.inputs.append({"uri": s.uri, "format": f"fits (left-joined on {s.kind})",
                              "rows": s.rows, "matched_rows": s.matched,
                              "primary_rows_without_match": s.unmatched,
                              "duplicate_keys_ignored": s.duplicates})


def _clean_csv_blocks(uri, cmap, extra, report, chunk_rows, objids, kind):
    """Stream a CSV in blocks: ids from ``objids(table, cmap, uri, row0)``, then the mapped
    columns cleaned into the galaxy schema; counts input rows into ``report``."""
    rows = 0
    for table, row0 in tf.iter_csv(uri, _block_size(chunk_rows)):
        raw = _csv_raw(table, cmap, uri, row0, objids(table, cmap, uri, row0))
        rows += len(raw)
        report.input_rows += len(raw)
        yield clean_batch(raw, source=basename(uri), extra=extra, report=report)
    _finish(report, uri, kind, rows)
