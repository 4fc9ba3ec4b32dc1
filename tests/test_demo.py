"""``raygal demo``, the README's first command, end to end on a tiny survey: every step runs
(simulate, ingest, statistics, the VAE, the four models on Ray Train, inference with Ray Data,
evaluation image vs photometry, reports) and every catalog accounts for every test galaxy."""
from __future__ import annotations

import json
import os

import pytest

from raygal.cli import main
from raygal.shards import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_demo_end_to_end(ray_local, tmp_path, capsys):
    out = str(tmp_path / "demo")
    rc = main(["demo", "--out", out, "--n", "500", "--epochs", "0.01", "--samples", "40",
               "--sdss-samples", str(tmp_path / "no-samples")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "demo finished" in printed and "reports: " in printed
    n_test = read_manifest(os.path.join(out, "mock-test"))["num_rows"]
    for key in ("nf-image", "nf-phot", "cfm-image", "cfm-phot"):
        with open(os.path.join(out, "posteriors", key, "_summary.json")) as f:
            s = json.load(f)
        assert s["complete"] and s["output_rows"] == s["input_rows"] == n_test
        with open(os.path.join(out, "eval", key, "metrics.json")) as f:
            m = json.load(f)
        assert m["rows_evaluated"] == n_test
    for label in ("NF image", "NF phot", "CFM image", "CFM phot"):
        assert f"## {label}" in printed
    for method in ("nf", "cfm"):
        assert os.path.exists(os.path.join(out, "report", method, "report.html"))
