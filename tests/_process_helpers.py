"""Ending only the processes a test started (found in /proc), never every Ray on the machine
as `ray stop` would."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process visible in /proc."""
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(d.name)] = (ppid, cmd)
    return procs


def with_descendants(roots: set[int], procs: dict | None = None) -> set[int]:
    """``roots`` and every process below them."""
    procs = process_table() if procs is None else procs
    mine = set(roots)
    while True:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in mine} - mine
        if not more:
            return mine
        mine |= more


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
