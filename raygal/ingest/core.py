"""``ingest``: SDSS catalogs (+ cutouts) -> a sharded raygal Parquet dataset with a manifest.

>>> m = ingest("photoz/skyserver_dr14_10k.csv", "s3://bucket/skyserver")   # doctest: +SKIP
>>> m["num_rows"], m["dropped"]                                            # doctest: +SKIP
(4998, {'class=QSO': 850, 'class=STAR': 4152})

Formats (``format="auto"`` detects them from the extension and the columns):

``fits``       CasJobs FITS tables; several inputs are joined (see ``readers.read_fits``)
``skyserver``  SkyServer CSV with class/redshift/plate/mjd/fiberid
``annz``       ANNz whitespace table (11 columns, no ids)
``lines``      lines_dn4000 CSV; a second input with plate/mjd/fiber_id/extinction gives A_V
``images``     ``objID,<target>`` catalog + a cutout folder (``cutouts``, default the
               ``cutouts/`` folder next to the catalog); the input may also be the folder
               holding ``catalog.csv`` and ``cutouts/``
``catalog``    the same ``objID,<target>`` CSV without images

Any format takes ``cutouts=<folder>`` to attach images named by objID.
"""
from __future__ import annotations

import posixpath

from raygal import storage
from raygal.lease import Lease
from raygal.progress import RateReporter
from raygal.shards import ON_DUPLICATE, ShardWriter
from raygal.schema import CUTOUT_COLUMN, galaxy_schema

from . import readers
from . import textfiles as tf
from .columns import lower_index
from .cutouts import CutoutAttacher
from .errors import IngestError
from .report import IngestReport

FORMATS = ("fits", "skyserver", "annz", "lines", "images", "catalog")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fz")
#: Shard sizes when ``rows_per_shard`` is not given: a shard of 128x128x3 cutouts is 200 kB
#: per row, so image datasets get smaller shards (a ShardWriter holds one shard in memory).
ROWS_PER_SHARD_PHOTOMETRY = 4096
ROWS_PER_SHARD_CUTOUTS = 512



def _check_input(uri: str) -> None:
    storage.check_reachable(uri)
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri}: no such file")


def detect_format(uri: str) -> str:
    """The format of one input, from its extension and (for text) its first line."""
    if storage.is_dir(uri):
        return "images"
    low = uri.lower()
    if low.endswith(FITS_SUFFIXES):
        return "fits"
    head = tf.peek(uri, 4096)
    if head[:9] == b"SIMPLE  =":
        return "fits"
    line = tf.first_line(uri)
    if "," not in line:
        return "annz"
    names = lower_index(tf.csv_header(uri))
    if {"f_halpha", "dn4000(obs)"} & set(names):
        return "lines"
    if {"plate", "mjd", "fiber_id", "extinction"} <= set(names):
        return "lines_av"
    if {"class", "redshift", "plate", "mjd", "fiberid", "u", "g", "r", "i", "z"} <= set(names):
        return "skyserver"
    if "objid" in names:
        sibling = posixpath.join(posixpath.dirname(storage.parse_uri(uri).uri), "cutouts")
        return "images" if storage.is_dir(sibling) else "catalog"
    raise IngestError(uri, f"cannot tell the catalog format from its columns "
                           f"({', '.join(tf.csv_header(uri))}); pass format= one of "
                           f"{', '.join(FORMATS)}")


def _sibling(uri: str, name: str) -> str:
    loc = storage.parse_uri(uri)
    parent = posixpath.dirname(loc.uri)
    return parent + "/" + name if loc.is_s3 else posixpath.join(parent, name)


def _plan(inputs: list[str], format: str, cutouts: str | None):
    """(format, main inputs, companion A_V input, cutout folder) after detection."""
    if format == "auto":
        kinds = [detect_format(u) for u in inputs]
    else:
        if format not in FORMATS:
            raise ValueError(f"format={format!r}: choose auto or one of {', '.join(FORMATS)}")
        kinds = [format] * len(inputs)
        if format == "lines":   # the A_V companion is told apart by its columns
            kinds = ["lines_av" if detect_format(u) == "lines_av" else "lines" for u in inputs]
    av = [u for u, k in zip(inputs, kinds) if k == "lines_av"]
    main = [(u, k) for u, k in zip(inputs, kinds) if k != "lines_av"]
    if av and (len(av) > 1 or {k for _, k in main} != {"lines"}):
        raise IngestError(", ".join(av), "an A_V table (plate, mjd, fiber_id, extinction) goes "
                                         "with exactly one lines_dn4000 catalog")
    fmts = {k for _, k in main}
    if len(fmts) != 1:
        raise IngestError(", ".join(inputs), f"inputs of different formats "
                                             f"({', '.join(f'{u}: {k}' for u, k in main)}); "
                                             f"ingest one format at a time")
    fmt = fmts.pop()
    uris = [u for u, _ in main]
    if fmt == "images":
        resolved = []
        for u in uris:
            if storage.is_dir(u):
                cat = storage.join(u, "catalog.csv")
                if not storage.exists(cat):
                    raise IngestError(u, "an image folder needs a catalog.csv (objID,<target>)"
                                         " next to its cutouts/ folder")
                cutouts = cutouts or storage.join(u, "cutouts")
                resolved.append(cat)
            else:
                cutouts = cutouts or _sibling(u, "cutouts")
                resolved.append(u)
        uris = resolved
        if not storage.is_dir(cutouts):
            raise FileNotFoundError(f"{cutouts}: no such cutout folder")
    elif fmt == "lines" and len(uris) > 1:
        raise IngestError(", ".join(uris), "one lines_dn4000 catalog at a time")
    return fmt, uris, (av[0] if av else None), cutouts


def _tables(fmt, uris, av, *, target, join_on, chunk_rows, report, mags, allow_missing):
    """The rows of all inputs, as a stream of raygal tables."""
    common = dict(chunk_rows=chunk_rows, report=report)
    checked = dict(common, mags=mags, allow_missing_columns=allow_missing)
    if fmt == "fits":
        yield from readers.read_fits(uris, join_on=join_on, **checked)
        return
    for u in uris:
        if fmt == "skyserver":
            yield from readers.read_skyserver(u, **checked)
        elif fmt == "annz":
            yield from readers.read_annz(u, **common)
        elif fmt == "lines":
            yield from readers.read_lines(u, av, **checked)
        else:  # images, catalog
            yield from readers.read_catalog(u, target=target, **checked)


class _Progress(RateReporter):
    """Rows written (and read so far) into ``out_uri``, printed to stderr every ``every_s``
    seconds once an ingest has run that long (short ones stay quiet)."""

    def __init__(self, report: IngestReport, out_uri: str, every_s: float | None):
        super().__init__("ingest", every_s=every_s, unit="rows")
        self.report, self.out_uri = report, out_uri

    def update(self, rows_written: int, extra: str = "") -> None:
        super().update(rows_written, f"{self.report.input_rows} rows read, into {self.out_uri}")


def ingest(inputs: list[str] | str, out_uri: str, *, format: str = "auto",
           cutouts: str | None = None, target: str | None = None,
           rows_per_shard: int | None = None, cutout_size=None, join_on: str | None = None,
           mags: str = "auto", pixel_scale: float | None = None,
           cutout_bands: tuple[str, ...] | None = None, chunk_rows: int = 65536,
           workers: int = 8, on_duplicate: str = "keep-first",
           allow_missing_columns: bool = False, progress_every_s: float | None = 5.0) -> dict:
    """Read SDSS catalogs (and cutouts) from ``inputs`` and write a raygal dataset to
    ``out_uri`` (local path or s3://); returns the manifest.

    Args:
        inputs: one URI or a list: several FITS tables to join, a lines catalog plus its A_V
            table, or several catalogs of one format to concatenate.
        format: ``auto`` or one of ``FORMATS``.
        cutouts: folder of ``<objID>.jpg|png|fits`` images to attach by objID.
        target: raygal target held by an ``objID,<value>`` catalog's value column when its
            name is not a known alias (``oh_p50`` is).
        rows_per_shard: rows per Parquet shard (default 4096, or 512 with cutouts).
        cutout_size: int or (H, W) to resample every cutout to; default the shape of the
            majority of the cutout files (the decision is in ``extra["cutout_shape_decision"]``).
        join_on: FITS join key: ``objid``, ``specobjid`` or ``plate_mjd_fiber``.
        mags: magnitude family: ``auto`` (dered > model > cmodel > petro), or one of
            ``raygal.ingest.columns.MAG_KINDS``.
        pixel_scale, cutout_bands: override the cutout metadata (arcsec/pixel; band per
            channel).
        chunk_rows: catalog rows read per block (memory bound of the readers).
        workers: threads fetching and decoding cutouts.
        on_duplicate: ``keep-first`` writes the first row of each objid and counts the others
            in ``dropped["duplicate objid"]`` (listing the first few in ``duplicate_objids``);
            ``error`` refuses the input at the first duplicate.
        allow_missing_columns: accept a table with some of the five magnitudes (or errors)
            missing, flagging its rows, instead of refusing it; the manifest lists what was
            missing (``extra["missing_columns"]``).
        progress_every_s: print rows read/written and rows/s to stderr this often (None:
            never).

    Publication is atomic (``raygal.shards``): until the new manifest is written, the
    dataset that was at ``out_uri`` stays intact, and a failed ingest leaves it as it was.

    The manifest's ``dropped`` counts the rows not written (e.g. ``class=STAR``),
    ``flag_counts`` the rows written with each flag, ``objid_origin`` where ids come from, and
    ``extra`` holds ``input_rows``, per-input facts, the magnitude type and cutout statistics
    (``bad_cutouts``: names of up to 100 unusable images, ``bad_cutouts_count``).
    """
    inputs = [inputs] if isinstance(inputs, str) else [str(u) for u in inputs]
    if not inputs:
        raise ValueError("ingest: no inputs")
    if on_duplicate not in ON_DUPLICATE:
        raise ValueError(f"on_duplicate={on_duplicate!r}: choose one of "
                         f"{', '.join(ON_DUPLICATE)}")
    storage.check_reachable(out_uri)
    for u in inputs:
        _check_input(u)
    if cutouts is not None:
        _check_input(cutouts)
    fmt, uris, av, cutouts = _plan(inputs, format, cutouts)
    if av:
        _check_input(av)
    storage.makedirs(out_uri)
    with Lease(out_uri, "raygal ingest") as lease:
        return _ingest(fmt, uris, av, cutouts, out_uri, lease, target=target,
                       rows_per_shard=rows_per_shard, cutout_size=cutout_size,
                       join_on=join_on, mags=mags, pixel_scale=pixel_scale,
                       cutout_bands=cutout_bands, chunk_rows=chunk_rows, workers=workers,
                       on_duplicate=on_duplicate, allow_missing=allow_missing_columns,
                       progress_every_s=progress_every_s)


def _ingest(fmt, uris, av, cutouts, out_uri, lease, *, target, rows_per_shard, cutout_size,
            join_on, mags, pixel_scale, cutout_bands, chunk_rows, workers, on_duplicate,
            allow_missing, progress_every_s) -> dict:
    """Stream the planned inputs into a new version of ``out_uri`` (under ``lease``)."""
    report = IngestReport()
    tables = _tables(fmt, uris, av, target=target, join_on=join_on, chunk_rows=chunk_rows,
                     report=report, mags=mags, allow_missing=allow_missing)
    attacher = None
    if cutouts is not None:
        attacher = CutoutAttacher(cutouts, report=report, size=cutout_size,
                                  pixel_scale=pixel_scale, bands=cutout_bands, workers=workers)
        tables = attacher.attach_all(tables)
    if rows_per_shard is None:
        rows_per_shard = ROWS_PER_SHARD_CUTOUTS if attacher else ROWS_PER_SHARD_PHOTOMETRY

    def open_writer(table_schema):
        extra = [f for f in table_schema
                 if f.name not in galaxy_schema(None).names and f.name != CUTOUT_COLUMN]
        if attacher is not None:
            schema = galaxy_schema(attacher.shape, pixel_scale=attacher.pixel_scale,
                                   cutout_unit=attacher.unit, cutout_bands=attacher.bands,
                                   extra=extra)
        else:
            schema = galaxy_schema(None, extra=extra)
        return ShardWriter(out_uri, schema, rows_per_shard=rows_per_shard,
                           objid_origin=report.objid_origin or "sdss",
                           on_duplicate=on_duplicate, lease=lease)

    writer = None
    first_schema = None
    progress = _Progress(report, out_uri, progress_every_s)
    try:
        for t in tables:
            if first_schema is None:
                first_schema = t.schema
            if t.num_rows == 0:
                continue
            if writer is None:
                writer = open_writer(t.schema)
            writer.write(t)
            progress.update(t.num_rows)
        if writer is None:  # every row dropped (e.g. a catalog of stars): an empty dataset
            writer = open_writer(first_schema)
        writer.objid_origin = report.objid_origin or writer.objid_origin
        for reason, n in sorted(report.dropped.items()):
            writer.drop(reason, n)
        writer.extra.update(report.to_extra())
        writer.extra["format"] = fmt
        manifest = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    accounted = manifest["num_rows"] + sum(manifest["dropped"].values())
    if accounted != report.input_rows:   # a bug here, never a user error: fail loudly
        raise RuntimeError(f"ingest lost rows: {report.input_rows} read, {manifest['num_rows']}"
                           f" written + {sum(manifest['dropped'].values())} dropped")
    return manifest
