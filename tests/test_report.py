"""The evaluation report end to end on a tiny mock survey, without Ray: two posterior catalogs
(an image model and a photometry-only one) written as ``raygal infer`` writes them, a tiny VAE,
and ``make_report``; then every figure the page lists exists and is a real PNG, and optional
pieces that are missing are skipped with a reason instead of failing."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from _evaluate_helpers import few_threads, train, write_catalog  # noqa: F401 (fixture)
from raygal.shards import ShardWriter, read_table
from raygal.evaluate.report import kauffmann03, kewley01, make_report, markdown_to_html
from raygal.inputs import StatsAccumulator
from raygal.models.baseline import GaussianPosterior
from raygal.models.vae import VAE, save_vae

pytestmark = pytest.mark.timeout(240)

TARGETS = ("log_mstar", "log_sfr", "oh12", "dn4000", "av",
           "flux_halpha", "flux_hbeta", "flux_nii", "flux_oiii")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED = {"pred_vs_true_image.png", "pred_vs_true_phot.png", "corner_image.png",
            "corner_phot.png", "scaling_relations.png", "dust_age.png", "bpt.png",
            "calibration.png", "pit.png", "uncertainty.png", "latent_traversal.png",
            "latent_embedding.png"}


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    from raygal.sim import simulate_batch

    tmp = tmp_path_factory.mktemp("report")
    t = simulate_batch(200, image_size=64, seed=5)
    data = str(tmp / "data")
    with ShardWriter(data, t.schema, rows_per_shard=80) as w:
        w.write(t)
    table = read_table(data)
    stats = StatsAccumulator().update(table).finalize()
    torch.manual_seed(0)
    # Convolutions on full cutouts dominate the cost: train the image model on a slice.
    image = train(GaussianPosterior(TARGETS, "image+phot", stats,
                                    {"image_shape": [3, 64, 64], "hidden": 32,
                                     "image_features": 16}), table.slice(0, 48), 4)
    phot = train(GaussianPosterior(TARGETS, "phot", stats, {"hidden": 32}), table, 60)
    runs = []
    for name, post in (("image", image), ("phot", phot)):
        model = str(tmp / f"model-{name}")
        post.save(model)
        cat = write_catalog(post, data, tmp / f"post-{name}", model,
                            split_std=(name == "phot"))
        runs.append({"label": name, "catalog": cat, "model": model})
        if name == "phot":
            kept = write_catalog(post, data, tmp / "post-phot-kept", model, samples=60,
                                 keep_samples=True)
    vae = VAE({"image_shape": [3, 64, 64], "latent": 8, "channels": [8, 16, 16],
               "fc_hidden": 32})
    x = torch.from_numpy(stats.norm_cutout(table.slice(0, 64).column("cutout").combine_chunks()
                                           .to_numpy_ndarray()))
    opt = torch.optim.Adam(vae.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        loss = vae.loss(x, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    save_vae(vae, str(tmp / "vae"), stats)
    return {"tmp": tmp, "data": data, "runs": runs, "vae": str(tmp / "vae"), "kept": kept}


def _figures(page: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text())


def test_full_report(survey):
    from raygal.evaluate.run import evaluate

    m = evaluate(survey["runs"][0]["catalog"], survey["data"], str(survey["tmp"] / "eval"),
                 with_model=False)
    out = survey["tmp"] / "report"
    page = Path(make_report(str(out), survey["data"], survey["runs"], vae_uri=survey["vae"],
                            metrics={"image": m}, max_points=150, calib_rows=80,
                            calib_samples=200, corner_samples=1000))
    assert page.name == "report.md" and page.exists()
    figs = _figures(page)
    assert EXPECTED <= set(figs), sorted(EXPECTED - set(figs))
    assert len(figs) == len(set(figs))
    for name in figs:
        f = out / name
        assert f.exists(), name
        assert f.stat().st_size > 1024, name
        assert f.read_bytes()[:8] == PNG_SIGNATURE, name
    text = page.read_text()
    assert "Skipped" not in text, re.findall(r"\*Skipped[^*]*\*", text)
    assert "raygal evaluation of" in text        # the metrics table of the 'image' run
    assert "| image | log_mstar |" in text        # the summary table
    page_html = (out / "report.html").read_text()
    for name in figs:
        assert f'<img src="{name}"' in page_html
    assert "<table>" in page_html
    # At most max_points galaxies are used.
    assert re.search(r"— (\d+) galaxies shown", text) and \
        int(re.search(r"— (\d+) galaxies shown", text).group(1)) <= 150


def test_missing_pieces_are_skipped_not_fatal(survey, tmp_path):
    """No model, no VAE, a run whose catalog does not exist: the report still comes out, with
    the coverage from the catalog's quantiles and the reasons on the page."""
    runs = [{"label": "phot", "catalog": survey["runs"][1]["catalog"], "model": None},
            {"label": "gone", "catalog": str(tmp_path / "nowhere"), "model": None}]
    page = Path(make_report(str(tmp_path / "r"), survey["data"], runs, max_points=100))
    text = page.read_text()
    figs = _figures(page)
    assert {"pred_vs_true_phot.png", "calibration.png", "uncertainty.png",
            "scaling_relations.png", "bpt.png"} <= set(figs)
    assert "corner_phot.png" not in figs and "pit.png" not in figs
    assert "latent_traversal.png" not in figs
    assert "no VAE given" in text and "the run has no model" in text
    assert "cannot read the catalog" in text
    for name in figs:
        assert (tmp_path / "r" / name).read_bytes()[:8] == PNG_SIGNATURE


def test_kept_samples_stand_in_for_the_model(survey, tmp_path):
    """A catalog written with --keep-samples gives PIT and TARP without the model."""
    runs = [{"label": "phot kept", "catalog": survey["kept"], "model": None}]
    page = Path(make_report(str(tmp_path / "r"), survey["data"], runs, max_points=120))
    figs = _figures(page)
    assert {"calibration.png", "pit.png"} <= set(figs)
    assert "60 samples kept in the catalog" in page.read_text()


def test_bpt_demarcations_and_html():
    # Kauffmann+03 lies below Kewley+01 where both are defined.
    x = np.linspace(-1.0, 0.0, 50)
    assert (kauffmann03(x) < kewley01(x)).all()
    assert abs(kauffmann03(-1.0) - (0.61 / -1.05 + 1.3)) < 1e-12
    h = markdown_to_html("# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![c](x.png)\n\n*cap*\n")
    assert "<h1>T</h1>" in h and "<td>1</td>" in h and '<img src="x.png"' in h
    assert "<em>cap</em>" in h


def test_report_reads_the_evaluation_samples_and_shows_what_the_image_adds(survey, tmp_path):
    """An evaluation made with the models and --compare: the report takes its calibration
    samples (no model and no kept samples are given, so it could not sample itself), states
    the win rates, and shows cutouts beside both models' marginals."""
    import json

    from raygal.evaluate.run import evaluate

    image, phot = survey["runs"]
    ev_dir = tmp_path / "eval"
    m = evaluate(image["catalog"], survey["data"], str(ev_dir), compare=phot["catalog"],
                 labels=("image", "phot"), calib_rows=40, samples=60, kl_samples=4)
    assert 0 <= m["compare"]["win_rate_delta_log_p"] <= 1
    # As `raygal report --metrics image=EVAL_DIR` passes it: metrics.json and its folder.
    saved = json.loads((ev_dir / "metrics.json").read_text()) | {"out_dir": str(ev_dir)}
    runs = [{"label": "image", "catalog": image["catalog"], "model": None},
            {"label": "phot", "catalog": phot["catalog"], "model": None}]
    page = Path(make_report(str(tmp_path / "r"), survey["data"], runs,
                            metrics={"image": saved}, max_points=150))
    text = page.read_text()
    figs = _figures(page)
    assert {"calibration.png", "pit.png", "image_vs_phot_image.png"} <= set(figs)
    assert "corner_image.png" not in figs            # that one needs the model
    assert "60 samples from the model drawn by raygal evaluate (image)" in text
    assert "has the higher Δlog p on" in text and "wins Δlog p on" in text
    for name in figs:
        assert (tmp_path / "r" / name).read_bytes()[:8] == PNG_SIGNATURE
