"""FITS binary tables (as CasJobs writes them), streamed in row blocks from any raygal URI.

astropy parses the header; the rows are then read block by block straight from the file
(``NAXIS1`` bytes per row from the data offset) and each block is decoded by astropy as a small
table of its own, so scaling (TZERO for unsigned 64-bit ids such as specObjID), TNULL masks,
strings and booleans are handled by astropy, while no more than one block is in memory and
nothing needs a local file (S3 works the same).
"""
from __future__ import annotations

import gzip
import io
import re
import warnings
from collections.abc import Iterator

import numpy as np

from raygal import storage
from raygal.schema import BANDS

from .errors import IngestError

FITS_BLOCK = 2880

#: Vector columns (one element per band, e.g. modelMag[5] in SDSS photoObj files) that are
#: split into name_u .. name_z.
BAND_VECTOR_COLUMNS = ("modelmag", "modelmagerr", "petromag", "petromagerr", "cmodelmag",
                       "cmodelmagerr", "dered", "extinction", "psfmag", "psfmagerr")


class FitsTable:
    """The first non-empty binary table of a FITS file.

    >>> t = FitsTable("s3://bucket/photoobj.fits")                  # doctest: +SKIP
    >>> for cols in t.iter_columns(["objID", "ra"], 65536): ...     # doctest: +SKIP
    """

    def __init__(self, uri: str):
        from astropy.io import fits

        self.uri = uri
        if uri.lower().endswith((".gz", ".gzip")):
            # gzip has no random access: a compressed table is decompressed in memory.
            try:
                self._file = io.BytesIO(gzip.decompress(storage.read_bytes(uri)))
            except (OSError, EOFError) as exc:
                raise IngestError(uri, f"not a readable gzip-compressed FITS file ({exc})") \
                    from None
        else:
            self._file = storage.open_input(uri)
        size = self._size()
        if size == 0:
            raise IngestError(uri, "empty catalog (the file is empty)")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                hdul = fits.open(self._file, memmap=False, lazy_load_hdus=False,
                                 ignore_missing_end=False, uint=True)
        except Exception as exc:  # astropy raises OSError/ValueError/... on garbage
            self.close()
            raise IngestError(uri, f"not a readable FITS file ({_first_line(exc)})") from None
        tables = [i for i, h in enumerate(hdul) if isinstance(h, fits.BinTableHDU)]
        if not tables:
            self.close()
            # astropy skips an HDU it cannot read with a warning: a cut-off table lands here.
            if size % FITS_BLOCK or caught:
                why = f"{size} bytes is not a multiple of {FITS_BLOCK}" if size % FITS_BLOCK \
                    else _first_line(caught[0].message)
                raise IngestError(uri, f"truncated or corrupt FITS file ({why})")
            raise IngestError(uri, "no binary table extension (expected a CasJobs-style FITS "
                                   "table)")
        self.index = tables[0]
        hdu = hdul[self.index]
        self.header = hdu.header.copy()
        self.nrows = int(self.header["NAXIS2"])
        self.row_bytes = int(self.header["NAXIS1"])
        if any(re.match(r"^\s*\d*[PQ]", str(c.format).upper()) for c in hdu.columns):
            self.close()
            raise IngestError(uri, "variable-length array columns are not supported")
        self.names = list(hdu.columns.names)
        dtype = hdu.columns.dtype
        self._dims = {n: int(np.prod(dtype[n].shape)) for n in self.names}
        self.data_offset = int(hdul.fileinfo(self.index)["datLoc"])
        need = self.data_offset + self.row_bytes * self.nrows
        if size < need:
            self.close()
            raise IngestError(uri, f"truncated FITS file: the table needs {need} bytes "
                                   f"({self.nrows} rows of {self.row_bytes} bytes), the file "
                                   f"has {size}")
        if self.nrows == 0:
            self.close()
            raise IngestError(uri, "empty catalog (the FITS table has no rows)")

    def _size(self) -> int:
        f = self._file
        if isinstance(f, io.BytesIO):
            return len(f.getbuffer())
        return int(f.size())

    @property
    def columns(self) -> list[str]:
        """Column names, with band vectors (modelMag[5]) listed as modelMag_u .. modelMag_z."""
        out = []
        for n in self.names:
            if self._dims[n] == len(BANDS) and n.lower() in BAND_VECTOR_COLUMNS:
                out += [f"{n}_{b}" for b in BANDS]
            else:
                out.append(n)
        return out

    def iter_columns(self, wanted: list[str], chunk_rows: int = 65536
                     ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """Yield ({column: array (masked where TNULL)}, first row) for ``wanted`` columns (names
        as in ``columns``), ``chunk_rows`` rows at a time."""
        from astropy.io import fits
        from astropy.table import Table

        chunk_rows = max(1, int(chunk_rows))
        for start in range(0, self.nrows, chunk_rows):
            n = min(chunk_rows, self.nrows - start)
            self._file.seek(self.data_offset + start * self.row_bytes)
            raw = self._file.read(n * self.row_bytes)
            if len(raw) != n * self.row_bytes:
                raise IngestError(self.uri, "truncated FITS file (short read)", row=start + 1)
            hdr = self.header.copy()
            hdr["NAXIS2"] = n
            hdr["PCOUNT"] = 0
            buf = hdr.tostring().encode("ascii") + raw
            buf += b"\0" * (-len(buf) % FITS_BLOCK)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    hdu = fits.BinTableHDU.fromstring(buf, uint=True)
                    table = Table.read(hdu, mask_invalid=False)
            except Exception as exc:
                raise IngestError(self.uri, f"cannot decode table rows {start + 1}-{start + n}"
                                            f" ({_first_line(exc)})") from None
            yield {w: self._column(table, w) for w in wanted}, start

    def _column(self, table, name: str) -> np.ndarray:
        if name in table.colnames:
            col = table[name]
        else:  # a band of a vector column: modelMag_r -> modelMag[:, 2]
            base, band = name.rsplit("_", 1)
            col = table[base][:, BANDS.index(band)]
        data = np.ma.asarray(col) if getattr(col, "mask", None) is not None else np.asarray(col)
        if data.dtype.kind == "S":
            data = np.char.decode(data, "ascii", errors="replace")
        return data

    def read_all(self, wanted: list[str], chunk_rows: int = 262144) -> dict[str, np.ndarray]:
        """All rows of ``wanted`` columns (for the small side of a join)."""
        parts: dict[str, list] = {w: [] for w in wanted}
        for cols, _ in self.iter_columns(wanted, chunk_rows):
            for w in wanted:
                parts[w].append(cols[w])
        return {w: (np.ma.concatenate(v) if any(isinstance(x, np.ma.MaskedArray) for x in v)
                    else np.concatenate(v)) for w, v in parts.items()}

    def close(self) -> None:
        try:
            self._file.close()
        except Exception:  # pragma: no cover
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _first_line(exc: Exception) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__
