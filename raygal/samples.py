"""The small real SDSS samples that can sit beside a checkout (``../shared/data/sdss``).

They are photo-z training tables (ANNz, SkyServer), a line-flux/Dn4000 table and metallicity
cutouts: real catalogs to try ``raygal ingest`` on, used by the demo and the tests when found.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that points at the samples folder.
SAMPLES_ENV = "RAYGAL_SDSS_SAMPLES"


def default_sdss_samples() -> str | None:
    """The folder of real SDSS samples: ``RAYGAL_SDSS_SAMPLES``, else ``shared/data/sdss``
    beside this checkout, else None."""
    env = os.environ.get(SAMPLES_ENV)
    if env:
        return env
    here = Path(__file__).resolve().parents[1]
    cand = here.parent / "shared" / "data" / "sdss"
    return str(cand) if cand.is_dir() else None


def ingest_sdss_samples(folder: str, out: str) -> dict:
    """Ingest the small real SDSS samples (photo-z tables, line/Dn4000 table, metallicity
    cutouts) found in ``folder`` into datasets under ``out``; returns {name: manifest}. A
    sample whose files are absent is skipped."""
    from . import storage
    from .ingest import ingest

    f = Path(folder)
    jobs = {
        "annz": dict(inputs=[f / "photoz" / "annz_sdss_ugriz_train.dat"], format="annz"),
        "skyserver": dict(inputs=[f / "photoz" / "skyserver_dr14_10k.csv"],
                          format="skyserver"),
        "lines": dict(inputs=[f / "lines_dn4000" / "output_results_with_lines_d4000.csv",
                              f / "lines_dn4000" / "av_dn4000_fuv.csv"], format="lines"),
        "metallicity_images": dict(inputs=[f / "metallicity_images" / "catalog.csv"],
                                   format="images", target="oh12",
                                   cutouts=str(f / "metallicity_images" / "cutouts")),
    }
    out_m = {}
    for name, job in jobs.items():
        inputs = [str(p) for p in job.pop("inputs") if p.exists()]
        if not inputs:
            continue
        out_m[name] = ingest(inputs, storage.join(out, name), **job)
    return out_m
