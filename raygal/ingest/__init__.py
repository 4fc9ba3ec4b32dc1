"""``raygal ingest``: SDSS catalogs and cutouts -> sharded raygal Parquet datasets.

The API the CLI calls is ``ingest``; the readers return streams of pyarrow tables in the raygal
schema (``raygal.schema.galaxy_schema``) and can be used on their own.

Modules, one job each:

``core``        format detection and the ``ingest`` driver (ShardWriter, manifest, accounting)
``readers``     FITS (CasJobs, joined), SkyServer CSV, ANNz table, lines_dn4000, objID catalogs
``cutouts``     JPEG/PNG/FITS cutouts by objID: decode, one shape per dataset, per-row flags
``clean``       the cleaning rules: sentinels, non-finite, non-detections, ranges, galaxy cut
``columns``     source column names -> raygal fields (case-insensitive aliases)
``textfiles``   streamed CSV / whitespace reading with row-numbered errors
``fitstables``  streamed FITS binary tables from any URI
"""
from .core import FORMATS, detect_format, ingest
from .errors import IngestError
from .readers import read_annz, read_catalog, read_fits, read_lines, read_skyserver
from .report import IngestReport

__all__ = ["FORMATS", "IngestError", "IngestReport", "detect_format", "ingest", "read_annz",
           "read_catalog", "read_fits", "read_lines", "read_skyserver"]
