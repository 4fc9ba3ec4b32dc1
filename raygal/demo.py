"""The end-to-end demo behind ``raygal demo`` (and ``make demo``).

On a local Ray (or the cluster in RAY_ADDRESS): simulate a mock survey, ingest the real SDSS
samples when present, train the VAE + NF and the CFM (each with images and photometry-only) with
Ray Train, write posterior catalogs of the held-out test galaxies with Ray Data, evaluate them
(image vs photometry) and write the report. Sized to finish in about 10 minutes on a 2-core
CPU machine; ``scale`` multiplies the data and the training for a real run.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import pipelines, storage
from .samples import default_sdss_samples, ingest_sdss_samples


def _step(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)


def run_demo(out: str, n: int = 3000, scale: float = 1.0, image_size: int = 64,
             seed: int = 0, samples: int = 500, solver: str = "rk4-10",
             sdss_samples: str | None = None, workers: int = 2, epochs: float = 1.0) -> dict:
    """Run the demo into ``out``; ``scale`` multiplies the galaxies and the epochs, ``epochs``
    the epochs alone (e.g. 0.1 for a quick smoke run: every model trains at least 1 epoch).
    Returns {'metrics': per model, 'reports': page paths, 'runs': per model}."""
    from .evaluate.report import make_report
    from .evaluate.run import evaluate, format_table
    from .infer import infer
    from .schema import CFM_TARGETS, NF_CORE_TARGETS, NF_LINE_TARGETS
    from .sim import simulate
    from .train import TrainConfig
    from .train.driver import fit

    t0 = time.perf_counter()
    n = int(n * scale)
    mult = max(1, int(round(scale))) * float(epochs)   # epochs grow with the scale of the run

    def ep(base: int) -> int:
        return max(1, int(round(base * mult)))
    mock = storage.join(out, "mock")
    m = simulate(n, mock, image_size=image_size, seed=seed, rows_per_shard=1024)
    _step(f"mock survey: {m['num_rows']} galaxies with {image_size}x{image_size} gri cutouts "
          f"-> {mock}", t0)

    samples_dir = sdss_samples or default_sdss_samples()
    if samples_dir and Path(samples_dir).is_dir():
        for name, man in ingest_sdss_samples(samples_dir, storage.join(out, "sdss")).items():
            dropped = ", ".join(f"{k} {v}" for k, v in man.get("dropped", {}).items())
            _step(f"ingested real SDSS sample '{name}': {man['num_rows']} rows"
                  + (f" (not galaxies, dropped: {dropped})" if dropped else ""), t0)
    else:
        _step("no real SDSS samples found (--sdss-samples DIR): skipped", t0)

    stats = pipelines.stats_for(mock, recompute=True)
    test = storage.join(out, "mock-test")
    mt = pipelines.write_split(mock, "test", test)
    # Both methods learn from every galaxy (metallicity by the chain rule, where measured) and
    # are tested on the same full test set, quenched galaxies included.
    _step(f"normalisation statistics of {stats.n_rows} rows (one Ray Data pass); "
          f"{mt['num_rows']} held-out test galaxies -> {test}", t0)

    runs_dir = storage.join(out, "runs")
    # The papers' sizes for every model, phot-only too: the demo compares image and
    # photometry models of the same architecture (raygal.train.sizing would shrink the
    # photometry-only ones on 3,000 galaxies).
    common = dict(data=mock, workers=workers, seed=seed, patience=3, size="paper")
    nf_targets = NF_CORE_TARGETS + ("oh12",) + NF_LINE_TARGETS
    jobs = [
        ("vae", TrainConfig(model="vae", out=storage.join(runs_dir, "vae"), epochs=ep(4),
                            batch_size=64, lr=1e-3,
                            model_config={"image_shape": [3, image_size, image_size],
                                          "channels": [16, 32, 64]},
                            **common)),
    ]
    summaries = {}
    for name, cfg in jobs:
        s = fit(cfg)
        summaries[name] = s
        _step(f"trained {name}: {s['epochs_run']} epochs on {workers} Ray Train workers, "
              f"best validation loss {s['best_val_loss']:.3f}", t0)
    vae_uri = summaries["vae"]["model_uri"]
    models = [
        ("NF image", "nf-image", TrainConfig(
            model="nf", inputs="image+phot", vae=vae_uri, targets=nf_targets, epochs=ep(15),
            batch_size=128, lr=2e-3, out=storage.join(runs_dir, "nf-image"),
            model_config={"coupling_layers": 6, "hidden": 128}, **common)),
        ("NF phot", "nf-phot", TrainConfig(
            model="nf", inputs="phot", targets=nf_targets, epochs=ep(15), batch_size=128,
            lr=2e-3, out=storage.join(runs_dir, "nf-phot"),
            model_config={"coupling_layers": 6, "hidden": 128}, **common)),
        ("CFM image", "cfm-image", TrainConfig(
            model="cfm", inputs="image+phot", targets=CFM_TARGETS, epochs=ep(20),
            batch_size=64, lr=1e-3, out=storage.join(runs_dir, "cfm-image"), ema_decay=0.995,
            model_config={"encoder_width": 16, "solver": solver, "aux_weight": 1.0},
            **common)),
        ("CFM phot", "cfm-phot", TrainConfig(
            model="cfm", inputs="phot", targets=CFM_TARGETS, epochs=ep(25), batch_size=64,
            lr=1e-3, out=storage.join(runs_dir, "cfm-phot"), ema_decay=0.995,
            model_config={"solver": solver}, **common)),
    ]
    runs = []
    for label, key, cfg in models:
        s = fit(cfg)
        _step(f"trained {label}: {s['epochs_run']} epochs, best validation loss "
              f"{s['best_val_loss']:.3f}", t0)
        cat = storage.join(out, "posteriors", key)
        held_out = test
        r = infer(s["model_uri"], held_out, cat, samples=samples,
                  solver=solver if cfg.model == "cfm" else None)
        _step(f"posterior catalog {label}: {r['output_rows']} rows "
              f"({', '.join(f'{k} {v}' for k, v in r['rows_per_status'].items())}), "
              f"{r['posteriors_per_s']:.1f} posteriors/s ({samples} samples each)", t0)
        runs.append({"label": label, "key": key, "catalog": cat, "model": s["model_uri"],
                     "data": held_out})

    metrics = {}
    for img, phot in ((runs[0], runs[1]), (runs[2], runs[3])):
        res = evaluate(img["catalog"], img["data"], storage.join(out, "eval", img["key"]),
                       compare=phot["catalog"], labels=(img["label"], phot["label"]),
                       calib_rows=200, samples=200, kl_samples=16, solver=solver,
                       prior_data=mock)
        metrics[img["label"]] = res
        res2 = evaluate(phot["catalog"], phot["data"], storage.join(out, "eval", phot["key"]),
                        calib_rows=200, samples=200, kl_samples=16, solver=solver,
                        prior_data=mock)
        metrics[phot["label"]] = res2
    _step("evaluated: accuracy, calibration (PIT, SBC, TARP), information gain", t0)
    pages = []
    for method, group in (("nf", runs[:2]), ("cfm", runs[2:])):
        pages.append(make_report(
            storage.join(out, "report", method), group[0]["data"],
            [{"label": r["label"], "catalog": r["catalog"], "model": r["model"]}
             for r in group], vae_uri=vae_uri if method == "nf" else None,
            metrics={r["label"]: metrics[r["label"]] for r in group}))
    _step(f"reports written: {', '.join(pages)}", t0)
    for label, res in metrics.items():
        print()
        print(f"## {label}")
        print(format_table(res))
    print("reports: " + ", ".join(pages))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return {"metrics": metrics, "reports": pages, "runs": runs}
