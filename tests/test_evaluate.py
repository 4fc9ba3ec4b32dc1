"""``raygal evaluate`` on a tiny mock survey, without Ray: photometry-only models trained
in-process, catalogs written as ``raygal infer`` writes them, then the metrics that must not
hide anything: an empirical prior fitted away from the truths it scores, per-population
metrics, baseline regressors scored on the same rows, and every target scored on the rows
whose truth of it is known."""
from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pytest

from _evaluate_helpers import few_threads, train, write_catalog  # noqa: F401 (fixture)
from raygal.evaluate import baselines as B
from raygal.evaluate import calibration as C
from raygal.evaluate import metrics as M
from raygal.evaluate.data import sample_rows
from raygal.evaluate.populations import SSFR_QUENCHED, populations
from raygal.evaluate.run import evaluate
from raygal.evaluate.scores import target_scores
from raygal.inputs import StatsAccumulator, target_matrix
from raygal.models.baseline import GaussianPosterior
from raygal.pipelines import hash_unit, split_of
from raygal.shards import ShardWriter, read_table

pytestmark = pytest.mark.timeout(300)

TARGETS = ("log_mstar", "log_sfr", "z", "oh12", "dn4000")


def _write(table: pa.Table, uri: str) -> str:
    with ShardWriter(uri, table.schema, rows_per_shard=150) as w:
        w.write(table)
    return uri


@pytest.fixture(scope="module")
def ev(tmp_path_factory):
    """A 600-galaxy survey (every split; dn4000 unknown for about a quarter of the rows, oh12
    for the quenched ones), its held-out rows as a dataset of their own, a photometry-only
    model and catalogs of both datasets."""
    from raygal.sim import simulate_batch

    tmp = tmp_path_factory.mktemp("evaluate")
    t = simulate_batch(600, seed=11, with_images=False)
    ids = t.column("objid").to_numpy()
    dn = t.column("dn4000").to_numpy(zero_copy_only=False).astype(np.float64)
    dn[hash_unit(ids + 7) < 0.25] = np.nan      # a real catalog's missing measurements
    t = t.set_column(t.schema.get_field_index("dn4000"), t.schema.field("dn4000"),
                     pa.array(dn, t.schema.field("dn4000").type, from_pandas=True))
    full = _write(t, str(tmp / "full"))
    held = _write(t.filter(pa.array(split_of(ids) != "train")), str(tmp / "held-out"))
    table = read_table(full)
    stats = StatsAccumulator().update(table).finalize()
    post = train(GaussianPosterior(TARGETS, "phot", stats, {"hidden": 32}), table, 60)
    model = str(tmp / "model")
    post.save(model)
    return {"tmp": tmp, "full": full, "held": held, "model": model,
            "cat_full": write_catalog(post, full, tmp / "post-full", model),
            "cat_held": write_catalog(post, held, tmp / "post-held", model),
            "ids": ids, "n_train": int((split_of(ids) == "train").sum())}


def _evaluate(ev, name: str, catalog: str, data: str, **kw) -> dict:
    kw = {"calib_rows": 40, "samples": 60, "kl_samples": 8} | kw
    return evaluate(catalog, data, str(ev["tmp"] / name), **kw)


def test_prior_comes_from_the_training_split(ev):
    r = _evaluate(ev, "eval-full", ev["cat_full"], ev["full"])
    prior = r["prior"]
    assert prior["source"] == "train split of the evaluated data"
    # The calibration galaxies come from the held-out rows, so every training row is eligible
    # and none of them is scored.
    assert prior["rows_eligible"] == ev["n_train"]
    assert 20 <= prior["kernel_centres"] <= prior["rows_complete"] <= ev["n_train"]
    cs = C.load(str(ev["tmp"] / "eval-full" / r["calibration_samples"]))
    assert cs.n == r["information"]["n_galaxies"] and cs.samples.shape[1:] == (60, 5)
    assert (split_of(cs.objid) != "train").all()
    assert {"log_q", "delta_log_p", "kl"} <= set(cs.per_galaxy)
    # The catalog covers the training rows too, and the output says so.
    assert r["rows_in_train_split"] == ev["n_train"]
    md = (ev["tmp"] / "eval-full" / "metrics.md").read_text()
    assert f"{ev['n_train']} evaluated rows are in the training split" in md
    assert "Empirical prior: a KDE of" in md and "train split of the evaluated data" in md


def test_prior_never_fits_the_scored_truths(ev):
    # Held-out rows only: no training split in the data, so the prior comes from the
    # evaluated rows outside the calibration subset, or from --prior-data's training split.
    r = _evaluate(ev, "eval-held", ev["cat_held"], ev["held"], calib_rows=20)
    n_cal = r["information"]["n_galaxies"]
    assert r["prior"]["source"].startswith("evaluated rows outside the calibration subset")
    assert r["prior"]["rows_eligible"] == r["rows_evaluated"] - n_cal
    r2 = _evaluate(ev, "eval-held-prior", ev["cat_held"], ev["held"], prior_data=ev["full"])
    assert r2["prior"]["source"] == "train split of the prior data"
    assert r2["prior"]["uri"] == ev["full"] and r2["prior"]["rows_eligible"] == ev["n_train"]
    saved = json.loads((ev["tmp"] / "eval-held-prior" / "metrics.json").read_text())
    assert saved["prior"]["source"] == "train split of the prior data"


def test_a_prior_fitted_on_the_scored_truths_flatters_them():
    """Why the prior must not see the truths it scores: each would be a kernel centre, which
    raises log p_prior at the truth and so lowers delta log p."""
    rng = np.random.default_rng(3)
    train_y = rng.normal(size=(400, 3))
    scored = rng.normal(size=(60, 3))
    fair = M.EmpiricalPrior().fit(train_y).log_prob(scored)
    leaky = M.EmpiricalPrior().fit(np.vstack([train_y, scored])).log_prob(scored)
    assert np.mean(leaky - fair) > 0.1


def test_every_target_is_scored_on_the_rows_that_have_it(ev):
    r = _evaluate(ev, "eval-missing", ev["cat_full"], ev["full"])
    ok = r["rows_per_status"]["ok"]
    for t in TARGETS:
        m = r["targets"][t]
        assert m["n"] + m["n_no_truth"] == ok, t
    assert r["targets"]["dn4000"]["n_no_truth"] > 0.15 * ok
    assert r["targets"]["oh12"]["n_no_truth"] > 0          # quenched galaxies
    cs = C.load(str(ev["tmp"] / "eval-missing" / r["calibration_samples"]))
    known = np.isfinite(cs.truth)
    for d, t in enumerate(TARGETS):
        assert r["calibration"]["targets"][t]["n"] == known[:, d].sum(), t
    info = r["information"]
    assert info["n_kl"] == cs.n                           # KL needs no truth
    assert info["n_delta_log_p"] == known.all(1).sum() == r["calibration"]["n"]
    assert 0 < info["n_delta_log_p"] < cs.n
    assert np.isfinite(info["mean_log_q"]) and np.isfinite(info["mean_delta_log_p"])
    text = (ev["tmp"] / "eval-missing" / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text   # missing values are null
    json.loads(text)


def test_metrics_by_population(ev):
    r = _evaluate(ev, "eval-pop", ev["cat_full"], ev["full"])
    pops = r["populations"]
    m = pops["metrics"]
    n = r["rows_evaluated"]
    groups = {}
    for name, p in m.items():
        groups.setdefault(p["group"], []).append(name)
        assert p["n_ok"] <= p["n"]
        for t, s in p["targets"].items():
            assert s["n"] + s["n_no_truth"] == p["n_ok"], (name, t)
    assert groups["activity"] == ["star-forming", "quenched"]
    assert len(groups["redshift"]) == len(pops["groups"]["redshift"]["edges"]) + 1
    assert len(groups["r_mag"]) >= 2
    for g, names in groups.items():
        assert sum(m[k]["n"] for k in names) + pops["groups"][g]["unclassified"] == n, g
    # The quenched have no measured metallicity, so no complete truth vector: their
    # information gain is KL only, and says so.
    assert m["quenched"]["targets"]["oh12"]["n"] == 0
    assert m["quenched"]["information"]["n_delta_log_p"] == 0
    assert m["quenched"]["information"]["n_kl"] > 0
    assert sum(m[k]["information"]["n_kl"] for k in groups["activity"]) \
        <= r["information"]["n_galaxies"]
    md = (ev["tmp"] / "eval-pop" / "metrics.md").read_text()
    assert "R² of the posterior means by population" in md
    assert "| quenched |" in md and "| star-forming |" in md and "r < " in md


def test_populations_show_what_an_average_hides():
    """A model perfect on star-forming galaxies and useless on quenched ones looks fair on
    average; the per-population R^2 shows both."""
    rng = np.random.default_rng(0)
    n = 400
    mstar = rng.uniform(9, 11.5, n)
    quenched = np.arange(n) >= n // 2
    sfr = np.where(quenched, mstar - 12.0, mstar - 10.0) + rng.normal(0, 0.2, n)
    truth = {"objid": np.arange(n), "log_mstar": mstar, "log_sfr": sfr}
    pred = np.where(quenched, sfr.mean(), sfr)
    cat = {"status": np.full(n, "ok"), "log_sfr_mean": pred}
    pops, notes = populations(truth)
    by = {p.name: p for p in pops}
    assert notes["activity"]["by_ssfr"] == n
    assert (by["quenched"].rows == (sfr - mstar < SSFR_QUENCHED)).all()
    whole = target_scores(cat, truth, "log_sfr")["r2"]
    sf = target_scores(cat, truth, "log_sfr", by["star-forming"].rows)["r2"]
    q = target_scores(cat, truth, "log_sfr", by["quenched"].rows)["r2"]
    assert sf == pytest.approx(1.0) and q < 0 < whole < 0.9


def test_baselines_beside_the_posterior(ev):
    r = _evaluate(ev, "eval-base", ev["cat_full"], ev["full"], with_model=False,
                  baselines=True)
    base = r["baselines"]
    assert base["training"]["source"] == "train split of the evaluated data"
    # Scored only on rows no baseline was fitted on: the held-out ones.
    assert base["training"]["rows_scored"] == r["rows_evaluated"] - ev["n_train"]
    for t in TARGETS:
        post = base["models"]["posterior"][t]
        for name in B.BASELINES:
            b = base["models"][name][t]
            assert b["n"] == post["n"] > 0, (name, t)
            assert np.isfinite(b["r2"]) and np.isfinite(b["sigma_nmad"])
            assert b["n_train"] >= 20
    # Stellar mass follows from the photometry: the forest must find it.
    assert base["models"]["random_forest"]["log_mstar"]["r2"] > 0.5
    md = (ev["tmp"] / "eval-base" / "metrics.md").read_text()
    assert "R² random_forest" in md and "σ_NMAD knn" in md and "Δz/(1+z)" in md


def test_baselines_cross_fit_without_training_rows(ev):
    r = _evaluate(ev, "eval-base-held", ev["cat_held"], ev["held"], with_model=False,
                  baselines=True)
    base = r["baselines"]
    assert base["training"]["source"].startswith("evaluated rows, two-fold cross-fitted")
    assert base["training"]["rows_scored"] == r["rows_evaluated"]
    assert np.isfinite(base["models"]["knn"]["log_mstar"]["r2"])


def test_baselines_say_when_scikit_learn_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match="scikit-learn >= 1.4"):
        B.check_available()


def test_training_sample_is_bounded_uniform_and_deterministic(ev):
    rows, eligible = sample_rows(ev["full"], ["log_mstar", "mag_r"], 50, "train")
    assert eligible == ev["n_train"] and len(rows["objid"]) == 50
    assert (split_of(rows["objid"]) == "train").all()
    again, _ = sample_rows(ev["full"], ["log_mstar", "mag_r"], 50, "train")
    np.testing.assert_array_equal(rows["objid"], again["objid"])
    out, eligible2 = sample_rows(ev["full"], ["log_mstar"], 1000, "train",
                                 exclude_ids=rows["objid"][:10])
    assert eligible2 == ev["n_train"] - 10 and not np.isin(rows["objid"][:10], out["objid"]).any()
    # Uniform over the split, not its lowest-hash corner.
    assert np.ptp(hash_unit(rows["objid"])) > 0.5
    assert set(rows) == {"objid", "log_mstar", "mag_r"}
    tm = target_matrix(rows, ["log_mstar"])
    assert np.isfinite(tm).all()


def test_cli_evaluate_options(ev, capsys):
    from raygal.cli import main

    out = str(ev["tmp"] / "eval-cli")
    rc = main(["evaluate", "--posteriors", ev["cat_held"], "--data", ev["held"], "--out", out,
               "--no-model", "--baselines", "--prior-data", ev["full"], "--train-rows", "200",
               "--z-bins", "0.05,0.1", "--mag-bins", "16.5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "R² random_forest" in printed and "0.050 <= z < 0.100" in printed
    saved = json.loads((ev["tmp"] / "eval-cli" / "metrics.json").read_text())
    assert saved["populations"]["groups"]["redshift"]["edges"] == [0.05, 0.1]
    assert saved["populations"]["groups"]["r_mag"]["edges_from"] == "given"
    assert saved["baselines"]["training"]["source"] == "train split of the prior data"
    assert saved["baselines"]["training"]["rows_read"] == 200


def test_evaluate_and_report_on_object_storage(ev, s3_bucket):
    """The same on the local S3 server: data, catalog, prior data, evaluation folder and report
    all s3://, and the report takes the evaluation's calibration samples from there."""
    from pathlib import Path

    from raygal import storage
    from raygal.evaluate.report import make_report

    def upload(local: str, name: str) -> str:
        uri = f"{s3_bucket}/{name}"
        for f in Path(local).iterdir():
            storage.write_bytes(storage.join(uri, f.name), f.read_bytes())
        return uri

    data, full = upload(ev["held"], "held-out"), upload(ev["full"], "full")
    cat = upload(ev["cat_held"], "post-held")
    out = f"{s3_bucket}/eval"
    r = evaluate(cat, data, out, calib_rows=20, samples=40, kl_samples=4, prior_data=full,
                 baselines=True)
    assert r["prior"]["source"] == "train split of the prior data" and r["prior"]["uri"] == full
    saved = storage.read_json(storage.join(out, "metrics.json")) | {"out_dir": out}
    assert storage.exists(storage.join(out, saved["calibration_samples"]))
    page = make_report(f"{s3_bucket}/report", data,
                       [{"label": "phot", "catalog": cat, "model": None}],
                       metrics={"phot": saved}, max_points=100)
    text = storage.read_bytes(page).decode()
    assert "drawn by raygal evaluate (phot)" in text
    assert storage.exists(f"{s3_bucket}/report/pit.png")
    assert "R² random_forest" in text


def test_baseline_features_follow_the_model_inputs():
    from raygal.evaluate.run import baseline_features
    from raygal.schema import MAG_COLUMNS, MAGERR_COLUMNS

    rows = {"objid": np.arange(3), **{c: np.full(3, 18.0) for c in MAG_COLUMNS},
            **{c: np.full(3, 0.02) for c in MAGERR_COLUMNS}, "z": np.array([0.1, 0.2, 0.3])}
    assert baseline_features(rows).shape == (3, 5)
    x = baseline_features(rows, "phot+z")
    assert x.shape == (3, 6) and x[:, 5].tolist() == [0.1, 0.2, 0.3]
    assert baseline_features(rows, "phot+err+z").shape == (3, 11)
    del rows["z"]
    assert np.isnan(baseline_features(rows, "phot+z")[:, 5]).all()   # absent: not fitted on
