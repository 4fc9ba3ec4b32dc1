"""Ending only the processes a test started (found in /proc), never every Ray on the machine
as `ray stop` would."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from procfs import process_table, with_descendants  # noqa: E402,F401  (re-exported)


def end_processes(pids: set[int], wait_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, each followed by a wait for the processes to go."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
