"""Ray Train and Ray Tune on a real local Ray (2 CPUs): every model trains data-parallel on 2
workers, checkpoints resume after a worker dies or the driver is re-run, a 2-trial sweep
finishes, and checkpoints land on the local S3 server."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from raygal import storage
from raygal.shards import read_manifest
from raygal.models import load_posterior
from raygal.train import TrainConfig
from raygal.train.driver import fit

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    from raygal.sim import simulate

    uri = str(tmp_path_factory.mktemp("mock") / "survey")
    simulate(600, uri, image_size=64, seed=3, rows_per_shard=200)
    return uri


def _improved(summary):
    h = summary["history"]
    return h[-1]["best_val_loss"] < h[0]["val_loss"]


def _check_model(uri, mock, n=3):
    from raygal.shards import read_table

    post = load_posterior(uri)
    batch = read_table(mock, max_rows=16)
    s = post.sample(batch, n, seed=0)
    assert s.shape == (16, n, len(post.targets))
    assert np.isfinite(s.numpy()).all()
    return post


def test_gaussian_two_workers_improves_loads_and_a_rerun_resumes(ray_local, mock, tmp_path,
                                                                capsys):
    cfg = TrainConfig(model="gaussian", data=mock, out=str(tmp_path / "run"), inputs="phot",
                      targets=("log_mstar", "log_sfr", "z"), epochs=3, workers=2,
                      batch_size=64)
    s = fit(cfg)
    assert s["epochs_run"] == 3 and _improved(s)
    assert [h["epoch"] for h in s["history"]] == [0, 1, 2]
    # both workers trained: the reported row count is the whole training split
    assert s["history"][0]["train_rows"] > 400
    _check_model(s["model_uri"], mock)
    assert storage.exists(str(tmp_path / "run" / "history.json"))
    # the calibration check on held-out validation galaxies: in the summary and in the model
    check = s["calibration"]
    assert check["rows"] >= 16 and set(check["targets"]) == set(cfg.targets)
    assert all(r["verdict"] in ("calibrated", "under-confident", "over-confident")
               for r in check["targets"].values())
    assert load_posterior(s["model_uri"]).config["calibration"] == check
    # every epoch's progress reached the driver's output, once
    printed = capsys.readouterr().out
    assert [printed.count(f"[gaussian] epoch {e}/3: train loss") for e in (1, 2, 3)] == [1, 1, 1]
    # and the stages before the first epoch and after the last say what is happening
    for stage in ("[gaussian] normalisation statistics", "[gaussian] preparing the training",
                  "[gaussian] starting 2 Ray Train worker(s)",
                  "[gaussian] checking calibration on"):
        assert stage in printed, stage
    # the same command again with more epochs resumes from the last checkpoint
    s = fit(dataclasses.replace(cfg, epochs=4))
    h = s["history"]
    assert [e["epoch"] for e in h] == [0, 1, 2, 3]
    assert h[0]["resumed_from_epoch"] is None and h[3]["resumed_from_epoch"] == 2
    assert all(e["lr"] > 0 for e in h)               # the learning rate each epoch ran at
    assert all(e["workers"] == 2 and len(e["nodes"]) == 1 for e in h)
    printed = capsys.readouterr().out                # the resumed run shows only its epoch
    assert "[gaussian] epoch 4/4" in printed and "epoch 3/4" not in printed
    # the statistics are read back, and the line says so (no pass over the data announced)
    assert "[gaussian] normalisation statistics of" in printed and "the saved ones" in printed
    assert "one streaming pass" not in printed


def test_cfm_two_workers_checkpoints_to_s3(ray_local, mock, s3_bucket, capsys):
    out = f"{s3_bucket}/runs/cfm"
    cfg = TrainConfig(model="cfm", data=mock, out=out, inputs="image+phot",
                      targets=("log_mstar", "log_sfr"), epochs=3, workers=2, batch_size=64,
                      lr=1e-3, model_config={"hidden": 64, "encoder_width": 8,
                                             "image_features": 32})
    s = fit(cfg)
    assert _improved(s)
    # No solver given: the cheapest one that agrees with RK4-100 on validation galaxies is
    # chosen at the end of training, and the saved model says why.
    post = load_posterior(s["model_uri"])
    choice = post.config["solver_choice"]
    assert post.solver == choice["solver"] and choice["reference"] == "rk4-100"
    assert 16 <= choice["rows"] <= 128 and choice["measurements"][post.solver]["agrees"]
    assert s["calibration"]["rows"] == choice["rows"]       # the same validation galaxies
    ckpts = [u for u in storage.listdir(f"{out}/ray/train/epoch-0002") if
             u.endswith("state.pt")]
    assert ckpts, "per-epoch checkpoint not on the S3 server"
    # the driver saw every epoch's checkpoint folder on S3 and printed its progress
    assert "[cfm] epoch 3/3: train loss" in capsys.readouterr().out
    post = _check_model(s["model_uri"], mock)
    assert post.kind == "cfm" and s["model_uri"].startswith("s3://")


def test_vae_then_image_nf_on_stored_features(ray_local, mock, tmp_path):
    vae_cfg = TrainConfig(model="vae", data=mock, out=str(tmp_path / "vae"), epochs=2,
                          workers=2, batch_size=32, lr=1e-3,
                          model_config={"image_shape": [3, 64, 64], "latent": 8,
                                        "channels": [8, 16, 16], "fc_hidden": 64})
    sv = fit(vae_cfg)
    assert _improved(sv)
    nf_cfg = TrainConfig(model="nf", data=mock, out=str(tmp_path / "nf"), inputs="image+phot",
                         vae=sv["model_uri"], targets=("log_mstar", "log_sfr", "oh12"),
                         epochs=2, workers=2, batch_size=64, lr=2e-3,
                         model_config={"coupling_layers": 2, "hidden": 32,
                                       "representation": 32})
    s = fit(nf_cfg)
    assert _improved(s)
    from raygal.train.features_job import features_uri

    feats = features_uri(sv["model_uri"], mock)
    assert read_manifest(feats)["num_rows"] == read_manifest(mock)["num_rows"]
    post = _check_model(s["model_uri"], mock)
    assert "oh12_detect_prob" in post.summarize(
        __import__("raygal.shards", fromlist=["x"]).read_table(mock, max_rows=4), 8)


def test_worker_death_resumes_from_checkpoint(ray_local, mock, tmp_path):
    from raygal.train.loop import load_checkpoint_state

    cfg = TrainConfig(model="gaussian", data=mock, out=str(tmp_path / "ft"), inputs="phot",
                      targets=("log_mstar",), epochs=3, workers=2, batch_size=64,
                      max_failures=1, ema_decay=0.9)
    s = fit(cfg, fail_at_epoch=1)
    h = s["history"]
    assert [e["epoch"] for e in h] == [0, 1, 2]              # every epoch once, finished
    # the restarted group resumed from the checkpoint of epoch 0: at most one epoch redone
    assert h[0]["resumed_from_epoch"] is None
    assert h[1]["resumed_from_epoch"] == 0 and h[2]["resumed_from_epoch"] == 0
    # the weight average survived the restart: it kept counting from epoch 0's updates
    # (a fresh one would have as many updates at epoch 1 as epochs 1-2 added)
    (s1, _), (s2, _) = (load_checkpoint_state(str(tmp_path / "ft" / "ray" / "train" /
                                                  f"epoch-{e:04d}")) for e in (1, 2))
    per_epoch = s2["ema"]["updates"] - s1["ema"]["updates"]
    assert per_epoch > 0 and s1["ema"]["updates"] == 2 * per_epoch
    # validation and the exported model use the averaged weights, not the raw ones
    exported = load_posterior(s["model_uri"]).state_dict()
    best = s2["best_model"]
    assert all(torch.equal(exported[k], best[k]) for k in exported)
    assert any(not torch.equal(best[k], s2["model"][k]) for k in s2["ema"]["shadow"])


def test_plateau_schedule_halves_on_a_stall_and_survives_a_checkpoint():
    import io

    import torch

    from raygal.train.loop import _state_bytes, make_scheduler

    cfg = {"lr_schedule": "plateau", "patience": 4, "lr": 1e-3}
    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    sched = make_scheduler(cfg, opt)
    lrs = []
    for val_loss in (1.0, 0.9, 0.95, 0.95, 0.8, 0.85):
        sched.step(val_loss)
        lrs.append(opt.param_groups[0]["lr"])
    # patience 4: halved after 2 epochs without improvement, kept while it improves
    assert lrs == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4]
    # the schedule's state goes into the checkpoint and loads with weights_only=True
    state = torch.load(io.BytesIO(_state_bytes({"s": sched.state_dict()})), weights_only=True)
    opt2 = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=5e-4)
    again = make_scheduler(cfg, opt2)
    again.load_state_dict(state["s"])
    again.step(0.9)
    assert opt2.param_groups[0]["lr"] == 2.5e-4     # the stall count carried over
    assert make_scheduler({**cfg, "lr_schedule": "none"}, opt) is None
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(model="gaussian", data="/d", out="/o", lr_schedule="cosine")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(model="gaussian", data="/d", out="/o", ema_decay=1.0)


def test_two_trial_sweep_exports_best(ray_local, mock, tmp_path, capsys):
    from raygal.tune import run_sweep

    cfg = TrainConfig(model="gaussian", data=mock, out=str(tmp_path / "sweep"), inputs="phot",
                      targets=("log_mstar", "log_sfr"), epochs=2, workers=1, batch_size=64)
    with pytest.raises(ValueError, match="--max-concurrent-trials 0"):
        run_sweep(cfg, trials=2, max_concurrent_trials=0)
    # --max-concurrent-trials caps the trials run at once (here one after the other)
    s = run_sweep(cfg, trials=2, search_space={"hidden": [16, 32], "lr": [1e-3, 3e-3]},
                  max_concurrent_trials=1)
    assert s["max_concurrent_trials"] == 1
    # each trial's epochs are printed on the driver (the sweep's and the job's log)
    printed = capsys.readouterr().out
    assert printed.count("[tune] trial ") >= 2 and " epoch 1/2: val loss " in printed
    assert len(s["results"]) == 2
    assert all(r["error"] is None for r in s["results"])
    assert s["best"]["best_val_loss"] == min(r["best_val_loss"] for r in s["results"])
    _check_model(s["model_uri"], mock)
    assert storage.exists(str(tmp_path / "sweep" / "results.csv"))
    # no resources leaked: every CPU is free again soon after the sweep (a trial's trainer
    # that kept its workers would hold their CPUs, and the next training run would wait
    # for them forever)
    total = ray_local.cluster_resources()["CPU"]
    deadline = time.time() + 60
    while ray_local.available_resources().get("CPU", 0.0) < total - 1e-6:
        assert time.time() < deadline, ray_local.available_resources()
        time.sleep(0.5)


def test_config_file_and_overrides(tmp_path):
    from raygal.train import load_config

    f = tmp_path / "nf.yaml"
    f.write_text("model: nf\ndata: /d\nout: /o\nepochs: 7\nmodel_config: {coupling_layers: 6}\n")
    cfg = load_config(str(f), epochs=3, model_config={"hidden": 64})
    assert cfg.epochs == 3 and cfg.model_config == {"coupling_layers": 6, "hidden": 64}
    assert cfg.lr == 1e-3 and "oh12" in cfg.targets
    with pytest.raises(ValueError, match="unknown training option"):
        load_config(None, model="cfm", data="/d", out="/o", bogus=1)
    with pytest.raises(ValueError, match="lacks"):
        load_config(None, model="cfm")
