"""Book-keeping of one ingest run: every input row is written or counted as dropped.

The readers and the cutout attacher write into an ``IngestReport``; ``raygal.ingest.core``
turns it into the manifest's ``dropped``, ``objid_origin`` and ``extra`` entries.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: How many bad cutout file names the manifest lists (the count is always exact).
MAX_LISTED_BAD_CUTOUTS = 100


@dataclass
class CutoutStats:
    attached: int = 0            # rows with a usable cutout
    missing: int = 0             # rows without a cutout file
    resized: int = 0             # cutouts resampled to the dataset's shape
    bad: Counter = field(default_factory=Counter)   # reason -> rows with CUTOUT_BAD
    bad_files: list = field(default_factory=list)  # first MAX_LISTED_BAD_CUTOUTS names
    unused_files: int = 0        # files in the folder that no catalog row named

    def add_bad(self, name: str, reason: str) -> None:
        self.bad[reason] += 1
        if len(self.bad_files) < MAX_LISTED_BAD_CUTOUTS:
            self.bad_files.append(name)


@dataclass
class IngestReport:
    """Counts gathered while reading: input rows, dropped rows by reason, id origin, notes."""

    input_rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    objid_origin: str | None = None
    inputs: list = field(default_factory=list)     # [{"uri", "format", "rows"}]
    notes: dict = field(default_factory=dict)      # reader facts: mag type, join stats, ...
    cutouts: CutoutStats | None = None

    def set_objid_origin(self, origin: str) -> None:
        """Several inputs with different id origins make a 'mixed' dataset (their origins
        per input are still listed in ``inputs``)."""
        if self.objid_origin is None or self.objid_origin == origin:
            self.objid_origin = origin
        else:
            self.objid_origin = "mixed"

    def note(self, key: str, value) -> None:
        """Record a reader fact; a key seen again with another value keeps all values."""
        old = self.notes.get(key)
        if old is None or old == value:
            self.notes[key] = value
        elif isinstance(old, list):
            if value not in old:
                old.append(value)
        else:
            self.notes[key] = [old, value]

    def to_extra(self) -> dict:
        extra = {"input_rows": self.input_rows, "inputs": self.inputs, **self.notes}
        c = self.cutouts
        if c is not None:
            extra["cutouts"] = {"attached": c.attached, "missing": c.missing,
                                "resized": c.resized, "bad": dict(c.bad),
                                "unused_files": c.unused_files}
            extra["bad_cutouts"] = list(c.bad_files)
            extra["bad_cutouts_count"] = int(sum(c.bad.values()))
        return extra
