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


@pytest.mark.timeout(1200)      # ~9 fresh child processes, 4 of them starting a local Ray
def test_bench_scale_quick(tmp_path):
    """The survey-scale run in its quick mode: every (stage, N) runs in its own process and
    reports a rate and a peak RSS; every catalog has one row per input row."""
    import json

    import bench_scale

    r = bench_scale.main(["--quick", "--out", str(tmp_path / "scale.json")])
    runs = r["runs"]
    assert {(x["stage"], x["n"]) for x in runs} == {
        ("simulate-phot", 2000), ("simulate-phot", 4000), ("simulate-image", 1000),
        ("infer-phot", 2000), ("infer-phot", 4000), ("infer-image", 1000)}
    for x in runs:
        key = (x["stage"], x["n"])
        assert _positive(x["rows_per_s"]) and _positive(x["wall_s"]), key
        assert _positive(x["driver_peak_mib"]), key
        assert x["rows"] == x["n"], key
        if x["stage"].startswith("infer"):
            assert x["complete"] and x["catalog_rows"] == x["input_rows"] == x["n"], key
            assert _positive(x["worker_peak_mib"]) and _positive(x["ratio"]), key
            assert "PartWriter" in x["worker_peak_title"] or _positive(x["actor_peak_mib"])
            assert _positive(x["catalog_bytes_per_row"]), key
        else:
            assert _positive(x["input_bytes_per_row"]), key
    sim = {x["stage"]: x["input_bytes_per_row"] for x in runs if x["stage"].startswith("sim")}
    assert sim["simulate-image"] > 3 * 64 * 64 * 2 > sim["simulate-phot"]   # cutouts dominate
    assert all(_positive(v["rows_per_s"]) for v in r["model_only"].values())
    assert set(r["driver_rss_growth"]) == {"simulate-phot", "infer-phot"}
    x = r["extrapolation"]
    for stage, e in x["stages"].items():
        assert e["core_hours"] == pytest.approx(1e9 / e["rows_per_s_per_core"] / 3600), stage
        assert e["cluster_hours_cpu"] == pytest.approx(e["core_hours"] / 800), stage
    assert x["limiting_inference_stage"] in ("infer-phot", "infer-image")
    # The streaming-training stage (its data outgrow the store only in the full run).
    t = r["train_streaming"]
    assert t["epochs"] == 1 and t["rows"] == 1000 and 0 < t["train_rows"] < 1000
    assert _positive(t["samples_per_s"][0]) and t["object_store_mib"] < 100
    assert json.loads((tmp_path / "scale.json").read_text())["runs"][0]["n"] == runs[0]["n"]


def test_bench_sdss_images_quick(ray_local):
    """Image-only metallicity cross-validation on the real SDSS cutouts, in its quick mode (one
    fold, one epoch): the CFM posterior and the baselines scored on every held-out row."""
    from conftest import sdss_path

    sdss_path("metallicity_images", "catalog.csv")
    import bench_sdss_images

    r = bench_sdss_images.main(["--quick"])
    res = r["metallicity_images"]
    fold = res["folds"][0]
    assert res["rows"] == 400 and fold["test_rows"] + fold["train_rows"] == 400
    assert 40 < fold["test_rows"] < 130                       # a fifth, by the fold hash
    models = [*r["args"]["models"], *bench_sdss_images.BASELINES]
    assert "cfm" in models
    for m in models:
        s = fold[m]["targets"]["oh12"]
        assert s["n"] == fold["test_rows"], m                 # every held-out row scored
        assert math.isfinite(s["rmse"]) and s["rmse"] > 0, m
        assert res["mean"][m]["oh12"]["rmse"] == pytest.approx(s["rmse"])
    for m in r["args"]["models"]:
        s = fold[m]["targets"]["oh12"]
        assert 0 <= s["coverage68"] <= s["coverage95"] <= 1, m
        assert _positive(s["width68"]) and fold[m]["epochs_run"] == 1
    assert fold["mean"]["targets"]["oh12"]["rmse"] == pytest.approx(
        res["target_sd"], rel=0.5)                            # the mean's RMSE: the spread
    assert r["reference"]["rmse"] == 0.085 and not r["reference"]["measured"]


@pytest.mark.timeout(600)       # 3 fresh child processes, each starting a Ray (2 of them Clusters)
def test_bench_nodes_quick(tmp_path):
    """One node against two on this machine, in quick mode: each configuration runs infer in
    its own child process on its own Cluster and writes every input row exactly once; on two
    nodes the rows are written on both."""
    import json

    import bench_nodes

    r = bench_nodes.main(["--quick", "--out", str(tmp_path / "n.json")])
    one, two = r["configurations"]["one-node"], r["configurations"]["two-node"]
    n = r["prepare"]["rows"]
    assert n == 1000 and r["prepare"]["shards"] > 1
    for key, c in r["configurations"].items():
        assert c["complete"], key
        assert c["input_rows"] == c["output_rows"] == c["unique_objids"] == n, key
        assert sum(c["rows_per_node"].values()) == n, key
        assert _positive(c["steady_posteriors_per_s"]) and _positive(c["posteriors_per_s"]), key
        assert _positive(c["wall_s"]) and _positive(c["cluster_start_s"]), key
    assert one["nodes"] == 1 and set(one["rows_per_node"]) == {"head"}
    assert two["nodes"] == 2 and len(two["rows_per_node"]) == 2          # written on both
    assert all(v > 0 for v in two["rows_per_node"].values())
    assert two["cpus_per_node"] == {"head": 1.0, "node2": 1.0} and one["cpus_per_node"] == {
        "head": 2.0}
    assert r["ratio"]["posteriors_per_s"] == pytest.approx(
        two["posteriors_per_s"] / one["posteriors_per_s"])
    saved = json.loads((tmp_path / "n.json").read_text())
    assert saved["configurations"]["two-node"]["rows_per_node"] == two["rows_per_node"]
