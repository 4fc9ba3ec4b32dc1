"""The processes of this machine, read from /proc (Linux): each one's parent, CPU time and
command line, and the tree below a process. The benchmarks use it to count the CPU and memory
of the local Ray a stage starts; the tests use it to end only the processes they started."""
from __future__ import annotations

import os
from typing import NamedTuple


class Proc(NamedTuple):
    ppid: int
    cpu_ticks: int          # user + system time, in clock ticks (os.sysconf("SC_CLK_TCK"))
    cmd: str                # command line, arguments joined by spaces ("" unless asked for)


def process_table(cmdline: bool = False) -> dict[int, Proc]:
    """pid -> ``Proc`` of every process visible in /proc (gone ones are skipped)."""
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                # The command name in parentheses may hold spaces: split after the last ')'.
                fields = f.read().rsplit(")", 1)[1].split()
            cmd = ""
            if cmdline:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            procs[int(d)] = Proc(int(fields[1]), int(fields[11]) + int(fields[12]), cmd)
        except (OSError, ValueError, IndexError):
            continue
    return procs


def with_descendants(roots: set[int], procs: dict[int, Proc] | None = None) -> set[int]:
    """``roots`` and every process below them."""
    procs = process_table() if procs is None else procs
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    mine, todo = set(roots), list(roots)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in mine:
                mine.add(c)
                todo.append(c)
    return mine
