"""Cutouts: find each catalog row's image by objID, decode it to float32 (C, H, W), give every
row of a dataset one shape, and flag (never drop, never crash on) the rows whose image is
missing or unusable.

What is stored:

* JPEG / PNG (e.g. SkyServer ImgCutout colour composites): Pillow decodes; pixel values / 255
  (/ 65535 for 16-bit PNG) -> [0, 1], channels in the file's order. An SDSS colour composite's
  R, G, B are the i, r, g bands, so the cutout field metadata says ``bands="i,r,g"`` and
  ``unit="jpeg_rgb_scaled"``: these are asinh-stretched display values, not fluxes. A greyscale
  image is one channel. The pixel scale of such composites is recorded as NaN (unknown) unless
  given, because SkyServer composites are often requested at a per-galaxy scale.
* FITS: the first HDU with a 2-D or 3-D image; (C, H, W), (H, W, C) (C <= 4 last) or a single
  band (H, W) -> (1, H, W); unit from BUNIT (default nanomaggies), pixel scale from the WCS
  (CDELT / CD) or SDSS's 0.396"/pixel.

Shape policy, decided before any row is written: every cutout of a dataset has the shape (and
unit) of the majority of the cutout files (all of them, or ``SHAPE_SAMPLE`` spread evenly over
the folder in objID order), so one odd image cannot impose its shape on the rest; or ``size``
(H, W) when given, in which case other shapes are resampled (bilinear; FITS values are scaled
by the pixel-area ratio so that the total flux is kept). Without ``size`` a cutout of another
shape is zeroed and flagged CUTOUT_BAD. The decision and the votes are recorded in the
manifest (``extra["cutout_shape_decision"]``). Per row: no file -> zeros + CUTOUT_MISSING;
unreadable, truncated, wrong shape, another unit than the dataset's, blank or non-finite ->
zeros + CUTOUT_BAD, with the file name listed in the manifest (``extra["bad_cutouts"]``).
"""
from __future__ import annotations

import gzip
import io
import math
import posixpath
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from raygal import storage
from raygal.schema import (CUTOUT_BANDS, CUTOUT_COLUMN, FLAGS_COLUMN, ID_COLUMN,
                           SDSS_PIXEL_SCALE, Flag, cutout_type)

from .errors import IngestError
from .report import CutoutStats, IngestReport

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
FITS_EXTS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
JPEG_UNIT = "jpeg_rgb_scaled"
#: SDSS colour composites (SkyServer ImgCutout): R, G, B = i, r, g.
COMPOSITE_BANDS = ("i", "r", "g")
#: Rows decoded together (bounded memory: 256 x 3 x 160 x 160 float32 = 79 MB).
BATCH_ROWS = 256
#: Cutout files read to decide the dataset's shape by majority (spread over the folder).
SHAPE_SAMPLE = 200


class CutoutProblem(Exception):
    """One cutout that cannot be used (a per-row problem, never fatal)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _stem(name: str) -> str:
    low = name.lower()
    for ext in sorted(IMAGE_EXTS + FITS_EXTS, key=len, reverse=True):
        if low.endswith(ext):
            return name[: -len(ext)]
    return ""


def index_folder(folder: str) -> dict[int, str]:
    """objID -> URI of the cutout files ``<objID>.<jpg|jpeg|png|fits|fit|fits.gz>`` in
    ``folder`` (files of other names are ignored; where one objID has several files, the first
    in name order wins)."""
    out: dict[int, str] = {}
    for uri in storage.listdir(folder):
        stem = _stem(posixpath.basename(uri))
        if stem.lstrip("+-").isdigit():
            out.setdefault(int(stem), uri)
    return out


# ----------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------

def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> float32 (C, H, W) in [0, 1], channels in the file's order."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            im.load()   # decodes now: a truncated file raises here, not later
    except Exception as exc:
        raise CutoutProblem("unreadable", str(exc).splitlines()[0] if str(exc) else "") from None
    mode = im.mode
    if mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float32) / 65535.0
    elif mode in ("1", "L", "LA"):
        arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    else:
        raise CutoutProblem("unsupported", f"image mode {mode}")
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode_fits(data: bytes) -> tuple[np.ndarray, str, float | None]:
    """FITS bytes -> (float32 (C, H, W), unit, pixel scale in arcsec or None)."""
    from astropy.io import fits

    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise CutoutProblem("unreadable", f"gzip: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(io.BytesIO(data), memmap=False, ignore_missing_end=False)
            for i, hdu in enumerate(hdul):
                naxis = int(hdu.header.get("NAXIS", 0))
                if naxis >= 2 and getattr(hdu, "is_image", False):
                    break
            else:
                raise CutoutProblem("unreadable", "no image HDU")
            h = hdu.header
            nbytes = abs(int(h["BITPIX"])) // 8 * math.prod(int(h[f"NAXIS{k}"])
                                                           for k in range(1, naxis + 1))
            if not isinstance(hdu, fits.CompImageHDU) and \
                    hdul.fileinfo(i)["datLoc"] + nbytes > len(data):
                raise CutoutProblem("unreadable", "truncated FITS image")
            arr = np.asarray(hdu.data, dtype=np.float32)
    except CutoutProblem:
        raise
    except Exception as exc:
        raise CutoutProblem("unreadable", str(exc).splitlines()[0] if str(exc) else "") \
            from None
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        if arr.shape[-1] <= 4 < arr.shape[0]:  # (H, W, C)
            arr = arr.transpose(2, 0, 1)
    else:
        raise CutoutProblem("wrong_shape", f"{arr.ndim}-d image")
    unit = str(h.get("BUNIT", "")).strip() or "nanomaggies"
    scale = None
    for key in ("CDELT1", "CD1_1"):
        if key in h:
            try:
                scale = abs(float(h[key])) * 3600.0
            except (TypeError, ValueError):
                pass
            break
    return np.ascontiguousarray(arr, dtype=np.float32), unit, scale


def decode(data: bytes, name: str) -> tuple[np.ndarray, str, float | None]:
    """Cutout file bytes -> (float32 (C, H, W), unit, pixel scale or None), by file name."""
    if name.lower().endswith(FITS_EXTS):
        return decode_fits(data)
    return decode_image(data), JPEG_UNIT, None


def resize(arr: np.ndarray, hw: tuple[int, int], conserve_flux: bool) -> np.ndarray:
    """Bilinear resampling of each channel to (H, W); ``conserve_flux`` scales by the pixel-area
    ratio so that the summed flux is unchanged (for calibrated images, not display values)."""
    from PIL import Image

    h, w = hw
    out = np.stack([np.asarray(Image.fromarray(ch, mode="F").resize((w, h), Image.BILINEAR),
                               dtype=np.float32) for ch in arr.astype(np.float32)])
    if conserve_flux:
        out *= (arr.shape[1] * arr.shape[2]) / float(h * w)
    return out


# ----------------------------------------------------------------------------------------------
# attaching cutouts to catalog rows
# ----------------------------------------------------------------------------------------------

class CutoutAttacher:
    """Adds the ``cutout`` column to catalog tables, looking files up by objID in ``folder``.

    ``size``: (H, W) or an int to resample every cutout to; else the majority's shape (see
    the module docstring). ``pixel_scale`` / ``bands`` override what is recorded in the field
    metadata. ``shape``, ``unit``, ``bands``, ``pixel_scale`` and ``decision`` (how the shape
    was chosen) are known once constructed, before any row is read.
    """

    def __init__(self, folder: str, *, report: IngestReport, size=None,
                 pixel_scale: float | None = None, bands: tuple[str, ...] | None = None,
                 workers: int = 8):
        self.folder = folder
        self.report = report
        self.stats = report.cutouts = report.cutouts or CutoutStats()
        if isinstance(size, int):
            size = (size, size)
        self.size = tuple(int(s) for s in size) if size is not None else None
        self._pixel_scale_arg = pixel_scale
        self._bands_arg = tuple(bands) if bands else None
        self.index = index_folder(folder)
        if not self.index:
            raise IngestError(folder, "no cutout files named <objID>.jpg/.jpeg/.png/.fits in "
                                      "the cutout folder")
        self.shape: tuple[int, int, int] | None = None
        self.unit = self.bands = None
        self.pixel_scale: float | None = None
        self.decision: dict = {}
        self._used: set[int] = set()
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(workers)))
        try:
            self._decide_shape()
        except BaseException:
            self._pool.shutdown(wait=False)
            raise
        self.report.note("cutout_shape_decision", self.decision)

    # -- per file ----------------------------------------------------------------------------
    def _load(self, uri: str | None):
        """(array, unit, scale) or a CutoutProblem / None (missing) for one file."""
        if uri is None:
            return None
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            return None
        if not data:
            return CutoutProblem("unreadable", "empty file")
        try:
            return decode(data, posixpath.basename(uri))
        except CutoutProblem as p:
            return p

    def _decide_shape(self) -> None:
        """Fix shape, unit, bands and pixel scale from the majority of a sample of files."""
        uris = [self.index[k] for k in sorted(self.index)]
        if len(uris) > SHAPE_SAMPLE:
            pick = np.linspace(0, len(uris) - 1, SHAPE_SAMPLE).round().astype(int)
            uris = [uris[i] for i in dict.fromkeys(pick.tolist())]
        votes: dict[tuple, list] = {}
        for got in self._pool.map(self._load, uris):
            if isinstance(got, tuple):
                arr, unit, _ = got
                votes.setdefault((arr.shape, unit), []).append(got)
        if not votes:
            raise IngestError(self.folder, f"no readable cutout among {len(uris)} sampled "
                                           f"files")
        # The most common (shape, unit); ties go to the one seen first in objID order.
        (shape, unit), group = max(votes.items(), key=lambda kv: len(kv[1]))
        self._fix_shape(group[0])
        self.decision = {
            "shape": list(self.shape), "unit": self.unit,
            "by": "cutout_size" if self.size is not None else "majority",
            "sampled_files": len(uris),
            "votes": {f"{'x'.join(map(str, s))} {u}": len(g) for (s, u), g in votes.items()}}

    def _fix_shape(self, first) -> None:
        arr, unit, scale = first
        c, h, w = arr.shape
        if self.size is not None:
            h, w = self.size
        self.shape = (c, h, w)
        self.unit = unit
        if self._bands_arg:
            self.bands = self._bands_arg
        elif unit == JPEG_UNIT:
            self.bands = COMPOSITE_BANDS if c == 3 else ("L",) * c
        else:
            self.bands = CUTOUT_BANDS if c == len(CUTOUT_BANDS) else tuple(
                f"band{k}" for k in range(c))
        if self._pixel_scale_arg is not None:
            self.pixel_scale = float(self._pixel_scale_arg)
        elif unit == JPEG_UNIT:
            self.pixel_scale = float("nan")
        else:
            native = scale if scale else SDSS_PIXEL_SCALE
            self.pixel_scale = native * arr.shape[1] / h
        if len(self.bands) != c:
            raise IngestError(self.folder, f"{len(self.bands)} band names {self.bands} for "
                                           f"{c}-channel cutouts")

    def _fit(self, got) -> np.ndarray:
        """The cutout in the dataset's shape and unit, or a CutoutProblem."""
        arr, unit, _ = got
        if unit != self.unit:
            raise CutoutProblem("unit_mismatch", f"{unit} in a {self.unit} dataset")
        if arr.shape != self.shape:
            if self.size is None or arr.shape[0] != self.shape[0]:
                raise CutoutProblem("wrong_shape", f"{arr.shape} != {self.shape}")
            arr = resize(arr, self.shape[1:], conserve_flux=unit != JPEG_UNIT)
            if unit == JPEG_UNIT:
                arr = np.clip(arr, 0.0, 1.0)
            self.stats.resized += 1
        if not np.isfinite(arr).all():
            raise CutoutProblem("nonfinite")
        if float(arr.max()) == float(arr.min()):
            raise CutoutProblem("blank")
        return arr

    # -- per table -----------------------------------------------------------------------------
    def attach(self, table: pa.Table) -> pa.Table:
        """``table`` with a ``cutout`` column and CUTOUT_* flags."""
        objids = table.column(ID_COLUMN).to_numpy()
        uris = [self.index.get(int(o)) for o in objids]
        loaded = list(self._pool.map(self._load, uris))
        n = len(uris)
        out = np.zeros((n, *self.shape), dtype=np.float32)
        flags = table.column(FLAGS_COLUMN).to_numpy().astype(np.int32)
        for i, (uri, got) in enumerate(zip(uris, loaded)):
            if uri is not None:
                self._used.add(int(objids[i]))
            if got is None:
                flags[i] |= Flag.CUTOUT_MISSING
                self.stats.missing += 1
                continue
            try:
                if isinstance(got, CutoutProblem):
                    raise got
                out[i] = self._fit(got)
                self.stats.attached += 1
            except CutoutProblem as p:
                flags[i] |= Flag.CUTOUT_BAD
                self.stats.add_bad(posixpath.basename(uri), p.reason)
        tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(out)
        table = table.set_column(table.schema.get_field_index(FLAGS_COLUMN), FLAGS_COLUMN,
                                 pa.array(flags, pa.int32()))
        return table.append_column(pa.field(CUTOUT_COLUMN, cutout_type(self.shape)), tensor)

    def attach_all(self, tables) -> Iterator[pa.Table]:
        """``attach`` over a stream of tables, ``BATCH_ROWS`` rows at a time."""
        try:
            for t in tables:
                for start in range(0, t.num_rows, BATCH_ROWS):
                    yield self.attach(t.slice(start, BATCH_ROWS))
            self.stats.unused_files = len(set(self.index) - self._used)
        finally:
            self._pool.shutdown(wait=True)
