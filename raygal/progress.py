"""Progress lines for long-running steps: rows done, rows/s and, when the total is known,
percent and ETA, printed to stderr every few seconds once a step has run that long (short
steps stay quiet, so tests and small jobs print nothing extra).

    p = RateReporter("simulate", total=n)
    for chunk in chunks:
        ...
        p.update(len(chunk))
    p.finish()

Every command that makes users wait (simulate, ingest, infer, evaluate) reports through this
one class, so their lines look alike in a terminal and in ``ray job logs``.
"""
from __future__ import annotations

import os
import sys
import time

#: Seconds between progress lines, unless a caller says otherwise; the environment variable
#: RAYGAL_PROGRESS_EVERY_S overrides it (e.g. 60 for quieter logs, 0 for a line per update).
DEFAULT_EVERY_S = 5.0


def default_every_s() -> float:
    return float(os.environ.get("RAYGAL_PROGRESS_EVERY_S", DEFAULT_EVERY_S))


def format_rate(label: str, done: int, elapsed_s: float, total: int | None = None,
                unit: str = "rows", extra: str = "") -> str:
    """One progress line: '[raygal <label>] 1200/5000 rows (24 %), 310 rows/s, ETA 12 s'."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if total:
        eta = (total - done) / rate if rate > 0 else float("inf")
        eta_s = f"ETA {eta:.0f} s" if eta != float("inf") else "ETA unknown"
        head = f"{done}/{total} {unit} ({100 * done / total:.0f} %), {rate:.0f} {unit}/s, {eta_s}"
    else:
        head = f"{done} {unit}, {rate:.0f} {unit}/s"
    return f"[raygal {label}] {head}{', ' + extra if extra else ''}"


class RateReporter:
    """Counts work done and prints a progress line every ``every_s`` seconds (None: never;
    the default: ``default_every_s()``).

    ``total`` (optional) adds percent and ETA; ``unit`` names what is counted. ``finish``
    prints a closing line only if a progress line was printed before.
    """

    def __init__(self, label: str, total: int | None = None, every_s: float | None = -1.0,
                 unit: str = "rows", stream=None):
        if every_s is not None and every_s < 0:
            every_s = default_every_s()
        self.label, self.total, self.every_s, self.unit = label, total, every_s, unit
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = self.last = time.perf_counter()
        self.done = 0
        self.printed = 0

    def update(self, n: int, extra: str = "") -> None:
        self.done += int(n)
        now = time.perf_counter()
        if self.every_s is None or now - self.last < self.every_s:
            return
        self.last = now
        self._print(now, extra)

    def finish(self, extra: str = "") -> None:
        if self.printed:
            self._print(time.perf_counter(), extra or "done")

    def _print(self, now: float, extra: str) -> None:
        print(format_rate(self.label, self.done, now - self.t0, self.total, self.unit, extra),
              file=self.stream, flush=True)
        self.printed += 1


__all__ = ["RateReporter", "format_rate"]
