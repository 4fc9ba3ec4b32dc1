"""Every benchmark runs in its quick mode, so none of them rots. No timing is asserted here:
the figures are for people (see the README's performance section)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytestmark = pytest.mark.timeout(300)


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_stream_quick(ray_local):
    import bench_stream

    r = bench_stream.main(["--quick"])
    assert _positive(r["plain_rows_per_s"]) and _positive(r["ray_rows_per_s"])


def test_bench_infer_quick(ray_local):
    import bench_infer

    r = bench_infer.main(["--quick"])
    assert r and all(_positive(v["pipeline_per_s"]) and _positive(v["model_only_per_s"])
                     for v in r.values())
