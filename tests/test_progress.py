"""Progress lines: quiet for short steps, rows/s and ETA for long ones, the same format for
every command (simulate, ingest, infer, evaluate)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from raygal.progress import RateReporter, format_rate

REPO = Path(__file__).resolve().parents[1]


def test_format_has_rate_percent_and_eta():
    line = format_rate("infer", 250, 5.0, 1000, "posteriors", "3 part(s) published")
    assert line == ("[raygal infer] 250/1000 posteriors (25 %), 50 posteriors/s, ETA 15 s, "
                    "3 part(s) published")
    assert format_rate("ingest x", 10, 2.0) == "[raygal ingest x] 10 rows, 5 rows/s"


def test_reporter_is_quiet_until_its_interval_then_closes():
    out = io.StringIO()
    quiet = RateReporter("evaluate", total=10, every_s=3600, stream=out)
    quiet.update(10)
    quiet.finish()
    assert out.getvalue() == ""                      # short steps print nothing
    loud = RateReporter("evaluate", total=10, every_s=0, unit="galaxies", stream=out)
    for _ in range(5):
        loud.update(2)
    loud.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and lines[-1].endswith(", done")
    assert lines[0].startswith("[raygal evaluate] 2/10 galaxies (20 %)")
    assert "10/10 galaxies (100 %)" in lines[-1]
    never = RateReporter("x", every_s=None, stream=out)
    never.update(5)
    never.finish()
    assert len(out.getvalue().splitlines()) == 6


def test_simulate_shows_progress(tmp_path):
    env = dict(os.environ, RAYGAL_PROGRESS_EVERY_S="0",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "raygal.cli", "simulate", "--n", "300",
                        "--no-images", "--out", str(tmp_path / "mock")],
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[raygal simulate]")]
    assert lines and "300/300 galaxies (100 %)" in lines[-1] and "galaxies/s" in lines[-1]
