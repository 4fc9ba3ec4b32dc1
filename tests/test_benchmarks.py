"""Every benchmark runs in its quick mode, so none of them rots. Speeds are not asserted (they
are for people: see the README's performance section); the figures are checked to be sane:
positive, finite, consistent with each other and within what the hardware allows."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytestmark = pytest.mark.timeout(300)

#: No 2-core machine moves 3x64x64 float32 cutouts (48 KiB a row) at 10 GB/s.
MAX_CUTOUT_ROWS_PER_S = 10e9 / (3 * 64 * 64 * 4)


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_stream_quick(ray_local):
    import bench_stream

    r = bench_stream.main(["--quick"])
    assert _positive(r["plain_rows_per_s"]) and _positive(r["ray_rows_per_s"])
    assert r["ratio"] == pytest.approx(r["ray_rows_per_s"] / r["plain_rows_per_s"])
    assert r["rows"] > 0 and _positive(r["write_rows_per_s"])
    if r["image_size"] == 64:
        for key in ("plain_rows_per_s", "ray_rows_per_s", "write_rows_per_s"):
            assert r[key] < MAX_CUTOUT_ROWS_PER_S, (key, r[key])
    sim = r["sim_galaxies_per_s_per_core"]
    assert sim is None or _positive(sim)


def test_bench_infer_quick(ray_local):
    import bench_infer

    r = bench_infer.main(["--quick"])
    assert r and all(_positive(v["pipeline_per_s"]) and _positive(v["model_only_per_s"])
                     for v in r.values())
    for label, v in r.items():
        assert v["ratio"] == pytest.approx(v["pipeline_per_s"] / v["model_only_per_s"]), label
        # the pipeline runs the same model on one actor: it cannot be many times faster than
        # the model alone in one process (the bound leaves room for a loaded machine)
        assert v["ratio"] < 10, (label, v)
        assert v["galaxies"] > 0


def test_bench_sdss_cv_quick(ray_local):
    """Five-fold cross-validation on the real SDSS samples, in its quick mode (one fold of 400
    rows, 2 epochs): every method scored on the same held-out rows."""
    import bench_sdss_cv

    if not bench_sdss_cv.samples_folder().exists():
        pytest.skip(f"real SDSS samples not present at {bench_sdss_cv.samples_folder()} (set "
                    f"RAYGAL_SDSS_SAMPLES)")
    r = bench_sdss_cv.main(["--quick", "--sample", "photoz", "--models", "nf"])
    res = r["photoz"]
    fold = res["folds"][0]
    assert fold["test_rows"] + fold["train_rows"] == res["rows"] == 400
    assert 40 < fold["test_rows"] < 130                       # a fifth, by the fold hash
    for method in ("nf", "random_forest", "knn"):
        z = fold[method]["targets"]["z"]
        assert z["n"] > 0.8 * fold["test_rows"] and math.isfinite(z["r2"])
        assert _positive(z["sigma_nmad"])
    assert 0 <= fold["nf"]["targets"]["z"]["coverage68"] <= 1
    assert res["mean"]["nf"]["z"]["r2"] == pytest.approx(fold["nf"]["targets"]["z"]["r2"])


def test_bench_image_gain_quick(ray_local, tmp_path):
    import bench_image_gain

    r = bench_image_gain.main(["--quick", "--model", "cfm", "--out", str(tmp_path / "b")])
    assert set(r) == {"phot", "image (zero)"}
    for v in r.values():
        assert math.isfinite(v["log_q"]) and v["rows"] > 0 and v["epochs"] == 1
        assert all(0 <= c <= 1 for c in v["coverage68"].values())
    assert 0 <= r["image (zero)"]["wins_over_phot"] <= 1
