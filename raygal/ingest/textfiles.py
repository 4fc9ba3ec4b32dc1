"""Streaming readers for text catalogs (CSV with a header, whitespace tables without one) and the
typed parsing of their columns, with errors that name the file and the row.

Everything is read as text first and converted here, column by column, because a catalog
column's type must not depend on what the first block happens to contain (an objID must never
silently become a float, a stray word in a magnitude column must be reported with its row).
"""
from __future__ import annotations

import csv
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from raygal import storage

from .errors import IngestError

#: Only these are "absent in the source"; 'nan'/'inf' stay as text so that cleaning can flag
#: them NONFINITE instead of treating them as never measured.
NULL_STRINGS = ["", "NULL", "null", "None"]

_INT_RE = r"^\s*[+-]?[0-9]+\s*$"


def peek(uri: str, nbytes: int = 65536) -> bytes:
    """The first ``nbytes`` of a file (for format detection and headers)."""
    with storage.open_input(uri) as f:
        return f.read(nbytes)


def first_line(uri: str) -> str:
    head = peek(uri)
    if not head.strip():
        raise IngestError(uri, "empty catalog (the file is empty)")
    return head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()[0]


def csv_header(uri: str) -> list[str]:
    """Column names of a CSV file, from its first line."""
    return [c.strip() for c in next(csv.reader([first_line(uri)]))]


def iter_csv(uri: str, block_size: int = 1 << 22) -> Iterator[tuple[pa.Table, int]]:
    """Yield (table of string columns, index of its first data row) block by block."""
    names = csv_header(uri)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise IngestError(uri, f"duplicate column name(s) {', '.join(dup)} in the header")
    bad_rows: list = []

    def on_invalid(row):
        bad_rows.append(row)
        return "error"

    read = pacsv.ReadOptions(block_size=block_size, column_names=names, skip_rows=1)
    parse = pacsv.ParseOptions(invalid_row_handler=on_invalid)
    conv = pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                null_values=NULL_STRINGS, strings_can_be_null=True)
    f = storage.open_input(uri)
    row0 = 0
    try:
        try:
            reader = pacsv.open_csv(f, read_options=read, parse_options=parse,
                                    convert_options=conv)
        except pa.ArrowInvalid as exc:
            raise _csv_error(uri, exc, bad_rows) from None
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise _csv_error(uri, exc, bad_rows) from None
            table = pa.Table.from_batches([batch])
            yield table, row0
            row0 += table.num_rows
    finally:
        f.close()


def _csv_error(uri, exc, bad_rows) -> IngestError:
    if bad_rows:
        r = bad_rows[0]
        where = f"line {r.number}: " if r.number is not None else ""
        return IngestError(uri, f"{where}expected {r.expected_columns} columns, found "
                                f"{r.actual_columns}: {r.text[:200]!r}")
    return IngestError(uri, f"not a readable CSV file ({str(exc).splitlines()[0]})")


def _first_bad(col: pa.Array, ok: pa.Array) -> int:
    """Index of the first non-null value where ``ok`` is False."""
    bad = pc.and_(pc.invert(pc.fill_null(ok, True)), col.is_valid())
    return int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])


def floats(col: pa.Array, name: str, uri: str, row0: int) -> pa.Array:
    """Text column -> float64 (nulls kept; 'nan'/'inf' parse as non-finite numbers)."""
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        return col.cast(pa.float64())
    col = pc.utf8_trim_whitespace(col)
    try:
        return pc.cast(col, pa.float64())
    except pa.ArrowInvalid:
        ok = pa.array([_is_float(s) for s in col.to_pylist()])
        i = _first_bad(col, ok)
        raise IngestError(uri, f"column {name!r}: {col[i].as_py()!r} is not a number",
                          row=row0 + i + 1) from None


def _is_float(s) -> bool:
    if s is None:
        return True
    try:
        float(s)
        return True
    except ValueError:
        return False


def ints(col: pa.Array, name: str, uri: str, row0: int, allow_float: bool = False) -> pa.Array:
    """Text column -> int64, exactly: 19-digit SDSS objIDs never go through a float.

    ``allow_float`` accepts integral floats such as '267.0' (for plate numbers written by a
    spreadsheet), never for identifiers wider than a double's 53-bit mantissa."""
    if pa.types.is_integer(col.type):
        return col.cast(pa.int64())
    col = pc.utf8_trim_whitespace(col)
    is_int = pc.match_substring_regex(col, _INT_RE)
    if not pc.all(pc.fill_null(is_int, True)).as_py():
        if allow_float:
            f = floats(col, name, uri, row0)
            fnp = f.fill_null(0).to_numpy(zero_copy_only=False)
            integral = pa.array(np.isfinite(fnp) & (np.floor(fnp) == fnp)
                                & (np.abs(fnp) < 2.0**53))
            if pc.all(integral).as_py():
                return pa.array(fnp.astype(np.int64), mask=f.is_null().to_numpy(
                    zero_copy_only=False), type=pa.int64())
            i = _first_bad(col, integral)
        else:
            i = _first_bad(col, is_int)
        raise IngestError(uri, f"column {name!r}: {col[i].as_py()!r} is not an integer",
                          row=row0 + i + 1)
    try:
        return pc.cast(col, pa.int64())
    except pa.ArrowInvalid:  # more digits than int64 holds
        for i, s in enumerate(col.to_pylist()):
            if s is not None and not (-2**63 <= int(s) < 2**63):
                raise IngestError(uri, f"column {name!r}: {s!r} does not fit in int64",
                                  row=row0 + i + 1) from None
        raise


def strings(col: pa.Array, null_words: tuple[str, ...] = ()) -> pa.Array:
    """Text column, trimmed, with ``null_words`` (e.g. 'NAN' for 'no class') as nulls."""
    col = pc.utf8_trim_whitespace(col.cast(pa.string()))
    for w in null_words:
        col = pc.if_else(pc.equal(col, w), pa.scalar(None, pa.string()), col)
    return col


def iter_lines(uri: str, block: int = 1 << 22) -> Iterator[str]:
    """Decoded lines of a text file, streamed in blocks (works on any raygal URI)."""
    with storage.open_input(uri) as f:
        rest = b""
        while True:
            chunk = f.read(block)
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for ln in lines:
                yield ln.decode("utf-8", errors="replace").rstrip("\r")
        if rest:
            yield rest.decode("utf-8", errors="replace").rstrip("\r")


def iter_whitespace_table(uri: str, ncols: int, chunk_rows: int = 65536
                          ) -> Iterator[tuple[np.ndarray, int, list[str] | None]]:
    """Yield ([n, ncols] float64 array, index of its first data row, header names or None) from
    a whitespace-separated numeric table. Blank lines and '#' comments are skipped; a first line
    of words is taken as a header."""
    rows: list[list[str]] = []
    header = None
    row0 = n_data = 0
    first = True
    for lineno, line in enumerate(iter_lines(uri), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if first:
            first = False
            if not _is_float(parts[0]):
                header = parts
                if len(header) != ncols:
                    raise IngestError(uri, f"header has {len(header)} columns, expected "
                                           f"{ncols}: {s[:200]!r}")
                continue
        n_data += 1
        if len(parts) != ncols:
            raise IngestError(uri, f"line {lineno}: expected {ncols} columns, found "
                                   f"{len(parts)}: {s[:200]!r}", row=n_data)
        rows.append(parts)
        if len(rows) >= chunk_rows:
            yield _to_float_block(rows, uri, row0), row0, header
            row0 += len(rows)
            rows = []
    if rows:
        yield _to_float_block(rows, uri, row0), row0, header


def _to_float_block(rows, uri, row0) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        for i, r in enumerate(rows):
            for j, s in enumerate(r):
                if not _is_float(s):
                    raise IngestError(uri, f"column {j + 1}: {s!r} is not a number",
                                      row=row0 + i + 1) from None
        raise

