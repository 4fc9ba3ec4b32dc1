"""Benchmark stages in fresh child processes: each stage runs as ``python SCRIPT --child KIND
SPEC_JSON`` so that its memory, CPU time and Ray are its own, and hands its result back as one
marked JSON line on stdout. A child whose local Ray did not start in time (Ray gives up after a
fixed wait when the machine is overloaded) is run again; its Ray processes die with it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

MARK = "BENCH_CHILD_RESULT "
#: Ray's start-up messages when it gives up on an overloaded machine.
RAY_START_TIMEOUTS = ("The current node timed out during startup",
                      "Timed out while waiting for nodes to join")


def child_main(children: dict, kind: str, spec_json: str) -> None:
    """In the child: run ``children[kind](spec)`` and print its result (with the machine's
    1-minute load average before and after) as the marked line."""
    spec = json.loads(spec_json)
    load0 = os.getloadavg()[0]
    out = children[kind](spec)
    out["loadavg_1min"] = [load0, os.getloadavg()[0]]
    sys.stdout.flush()
    print(MARK + json.dumps(out), flush=True)


def run_child(script: str, kind: str, spec: dict, env: dict | None = None, attempts: int = 3,
              name: str = "bench") -> tuple[dict, str]:
    """In the parent: run ``script --child kind spec`` with environment ``env`` (default this
    process's) and return (its result with ``child_s`` and ``attempts``, its stderr)."""
    cmd = [sys.executable, os.path.abspath(script), "--child", kind, json.dumps(spec)]
    for attempt in range(1, attempts + 1):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(os.environ) if env is None else env)
        lines = [x for x in p.stdout.splitlines() if x.startswith(MARK)]
        if p.returncode == 0 and lines:
            return ({**json.loads(lines[-1][len(MARK):]), "child_s": time.perf_counter() - t0,
                     "attempts": attempt}, p.stderr or "")
        if any(m in (p.stderr or "") for m in RAY_START_TIMEOUTS) and attempt < attempts:
            print(f"[{name}] child {kind}: Ray did not start in time (machine overloaded?); "
                  f"trying again", file=sys.stderr, flush=True)
            continue
        tail = "\n".join((p.stderr or "").strip().splitlines()[-25:])
        raise RuntimeError(f"{name} child {kind} {spec} failed (exit {p.returncode}):\n{tail}")
