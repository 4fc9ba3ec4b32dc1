"""The one error type ingest raises for bad input (besides FileNotFoundError and StorageError).

Every message starts with the URI of the offending file and, where there is one, the row, so a
user with a survey of many files can go straight to the culprit.
"""
from __future__ import annotations


class IngestError(ValueError):
    """An input catalog or cutout folder that ingest cannot use."""

    def __init__(self, uri: str, message: str, row: int | None = None):
        self.uri = uri
        self.row = row
        where = f"{uri}: row {row}" if row is not None else uri
        super().__init__(f"{where}: {message}")
