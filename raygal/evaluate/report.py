"""``raygal report``: figures and a page that show how good posterior catalogs are.

    page = make_report("runs/report", "data/mock", [
        {"label": "CFM image", "catalog": "runs/post-cfm", "model": "runs/cfm/model"},
        {"label": "CFM phot", "catalog": "runs/post-cfm-phot", "model": "runs/cfm-phot/model"},
    ], vae_uri="runs/vae/model", metrics={"CFM image": evaluate(...)})

writes PNG figures, ``report.md`` and ``report.html`` (the same page) under ``out_dir`` (a local
path or s3://) and returns the URI of ``report.md``. Figures (one file each, colours fixed per
run, truth in grey):

- ``pred_vs_true_<run>.png``: posterior mean (16-84 % bars for a subset) against the truth, per
  target, with the 1:1 line, R^2 and sigma_NMAD;
- ``corner_<run>.png``: corner plots of a few galaxies' posteriors (samples drawn with the
  run's model), truths marked;
- ``image_vs_phot_<evaluation>.png`` (with an evaluation made with ``--compare``): cutouts
  beside the marginal posteriors of the two models, and the win rates of delta log p and KL;
- ``scaling_relations.png``: M*-SFR, M*-Z and SFR-Z from the truth and from posterior means;
- ``dust_age.png``: the A_V-Dn4000 plane (the CFM paper's dust-age diagnostic);
- ``bpt.png``: log [O III]/Hbeta vs log [N II]/Halpha with the Kauffmann et al. (2003) and
  Kewley et al. (2001) demarcations;
- ``calibration.png`` (coverage at credibility 0.1..0.9 and TARP) and ``pit.png`` (PIT
  histograms), from the calibration samples ``raygal evaluate`` wrote (else drawn with the
  run's model, else the samples its catalog kept);
- ``uncertainty.png``: the aleatoric/epistemic split (or the total posterior std);
- ``latent_traversal.png`` and ``latent_embedding.png``: the VAE latent space as in Siddiga,
  Mahmud & Martinez-Galarza (arXiv:2511.12737, Figs. 3 and 4).

A figure whose inputs are missing (no model, no such targets, no VAE) is skipped and the page
says why; an optional piece that fails is reported on the page, never raised.

Memory is bounded: the report holds at most ``max_points`` galaxies (a deterministic
subsample by a hash of objid, the one ``raygal evaluate`` uses), streams the dataset shard by
shard, and reads cutouts only for the few hundred galaxies it samples posteriors for (and, with
a VAE, encodes the subsample's cutouts batch by batch, keeping only the latent means).

The work is split by job: ``data`` reads and joins, ``calibration`` holds posterior samples,
``scores`` and ``metrics`` compute, ``plots`` draws arrays, ``page`` writes the page; this
module only decides what goes on it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

from .. import storage
from ..inputs import STATUS_OK
from ..schema import ID_COLUMN, TARGETS, get_target
from . import calibration as C
from . import latent as L
from . import metrics as M
from . import plots as P
from .data import align, load_joined, load_truth, objids, read_rows, report_rows, subset
from .page import Page, demote, markdown_to_html
from .plots import corner, display, kauffmann03, kewley01, label
from .scores import catalog_scores
from .tables import format_table, num

log = logging.getLogger("raygal.report")

LINE_TARGETS = ("flux_halpha", "flux_hbeta", "flux_nii", "flux_oiii")
SCALING_PAIRS = (("log_mstar", "log_sfr"), ("log_mstar", "oh12"), ("log_sfr", "oh12"))
#: 16-84 % error bars are drawn for at most this many galaxies per panel (the rest are dots)
ERRORBAR_POINTS = 120
#: at most this many targets in a corner plot (the rest are listed in the caption)
CORNER_MAX_DIMS = 6
#: galaxies shown with their cutout in the image-vs-photometry figure
COMPARE_GALAXIES = 3


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


# ----------------------------------------------------------------------------------------------
# A run: one catalog aligned to the report's truth rows, its model and samples
# ----------------------------------------------------------------------------------------------

@dataclass
class _Run:
    label: str
    slug: str
    colour: str
    catalog: str
    model: str | None
    targets: list = field(default_factory=list)
    cat: dict | None = None          # catalog columns aligned to the truth rows
    note: str = ""                   # why the catalog is unusable, if it is
    _post: object = None
    _post_error: str | None = None
    calib: C.CalibrationSamples | None = None
    calib_note: str = ""
    calib_ids: np.ndarray | None = None
    corner_ids: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return np.asarray(self.cat["status"]).astype(str) == STATUS_OK

    def col(self, name: str, n: int) -> np.ndarray:
        if self.cat is None or name not in self.cat:
            return np.full(n, np.nan)
        return np.asarray(self.cat[name], dtype=np.float64)

    def posterior(self):
        """The run's model (loaded once), or None with ``_post_error`` saying why."""
        if self._post is None and self._post_error is None:
            if not self.model:
                self._post_error = "the run has no model"
            else:
                try:
                    from ..models import load_posterior

                    self._post = load_posterior(self.model)
                except Exception as exc:  # noqa: BLE001
                    self._post_error = f"cannot load {self.model}: {exc}"
        return self._post


def _load_run(run: _Run, data_uri: str, truth: dict, max_points: int) -> None:
    """Read the run's catalog and align it to the truth rows (status 'missing' where the
    catalog lacks a row); on failure, say why in ``run.note``."""
    try:
        j = load_joined(run.catalog, data_uri, report_rows(max_points))
    except Exception as exc:  # noqa: BLE001
        run.note = f"cannot read the catalog {run.catalog}: {exc}"
        log.warning("report: %s", run.note)
        return
    run.targets = j.targets
    idx, hit = align(j.ids, truth[ID_COLUMN])
    cat = {"status": np.where(hit, j.cat["status"][idx], "missing")}
    cat.update({k: np.where(hit, v[idx], np.nan) for k, v in j.cat.items() if k != "status"})
    run.cat = cat


def _choose_ids(truth: dict, runs: list[_Run], calib_rows: int, corner_galaxies: int) -> None:
    """Each run's galaxies for its own calibration samples (used when no evaluation gives
    them) and for corner plots: with status ok, those with the fewest unknown truths first
    (then by objid hash), so that the joint TARP sees as many complete rows as it can; the
    corner galaxies spread in stellar mass among the best known."""
    missing = np.zeros(truth["_n"], int)
    for t in sorted({t for r in runs for t in r.targets if t in truth}):
        missing += ~np.isfinite(truth[t])
    order = np.lexsort((truth["_hash"], missing))
    for r in runs:
        rows = order[r.ok[order]]
        r.calib_ids = truth[ID_COLUMN][rows[:calib_rows]]
        # Corner galaxies: spread in stellar mass (10th, 50th, 90th percentile of the best
        # known candidates) so the plot shows different kinds of galaxies.
        pool = rows[:max(10 * corner_galaxies, 30)]
        if "log_mstar" in truth and np.isfinite(truth["log_mstar"][pool]).sum() >= corner_galaxies:
            pool = pool[np.isfinite(truth["log_mstar"][pool])]
            pool = pool[np.argsort(truth["log_mstar"][pool])]
            pick = np.unique(np.round(np.linspace(0.1, 0.9, corner_galaxies)
                                      * (len(pool) - 1)).astype(int))
            r.corner_ids = truth[ID_COLUMN][pool[pick]]
        else:
            r.corner_ids = truth[ID_COLUMN][pool[:corner_galaxies]]


# ----------------------------------------------------------------------------------------------
# Calibration samples: from an evaluation, else the model, else the catalog's kept samples
# ----------------------------------------------------------------------------------------------

def _evaluation_samples(metrics: dict | None) -> dict[str, tuple[str, str]]:
    """{catalog URI: (calibration sample file URI, evaluation label)} of the evaluations."""
    out = {}
    for lab, m in (metrics or {}).items():
        if not isinstance(m, dict) or not m.get("out_dir"):
            continue
        for res in (m, m.get("compare") or {}):
            if res.get("calibration_samples") and res.get("catalog"):
                out[res["catalog"]] = (storage.join(m["out_dir"], res["calibration_samples"]),
                                       str(lab))
    return out


def _read_evaluation_samples(run: _Run, found: dict) -> bool:
    """Use the samples ``raygal evaluate`` drew for the run's catalog; False if there are
    none (or they cannot be read: the report then samples itself)."""
    if run.catalog not in found:
        return False
    uri, lab = found[run.catalog]
    try:
        cs = C.load(uri)
    except Exception as exc:  # noqa: BLE001
        log.warning("report: cannot read %s: %s", uri, exc)
        return False
    cs.source = f"{cs.source} drawn by raygal evaluate ({lab})"
    run.calib = cs
    return True


def _own_samples(run: _Run, rows, samples: int, seed: int) -> None:
    """Samples of the run's calibration galaxies: from its model, else from the samples its
    catalog kept; sets ``run.calib`` or ``run.calib_note``."""
    if run.calib_ids is None or not len(run.calib_ids):
        run.calib_note = "no galaxy with status ok"
        return
    sub = subset(rows, run.calib_ids)
    post = run.posterior()
    if post is not None:
        run.calib = C.draw(post, sub, samples, seed)
        return
    run.calib = C.from_catalog(run.catalog, sub, run.targets)
    if run.calib is None:
        run.calib_note = f"{run._post_error}; the catalog keeps no samples"


# ----------------------------------------------------------------------------------------------
# Figures: gather the arrays, draw them with raygal.evaluate.plots, caption them
# ----------------------------------------------------------------------------------------------

def _pred_vs_true(page: Page, truth: dict, run: _Run) -> None:
    n = truth["_n"]
    targets = [t for t in run.targets if t in truth and np.isfinite(truth[t]).any()]
    if not targets:
        page.skip(f"predicted vs true ({run.label})", "no target of this run has a truth")
        return
    ok = run.ok
    # Error bars for a fixed subset (lowest hashes), the same galaxies in every panel.
    bars = np.zeros(n, bool)
    bars[np.argsort(np.where(ok, truth["_hash"], np.inf))[:ERRORBAR_POINTS]] = True
    cols = {q: {t: run.col(f"{t}_{q}", n) for t in targets} for q in ("mean", "q16", "q84")}
    fig, _ = P.pred_vs_true(targets, truth, cols["mean"], cols["q16"], cols["q84"], ok, bars,
                            run.colour, f"{run.label}: posterior mean vs truth")
    missing = [t for t in run.targets if t not in targets]
    page.figure(fig, f"pred_vs_true_{run.slug}.png",
                f"{run.label}: posterior mean against the true value for "
                f"{int(ok.sum())} galaxies with status ok, with 16-84 % intervals for "
                f"{int((bars & ok).sum())} of them; dashed: 1:1. R² and σ_NMAD are computed in "
                f"the plotted space (log10(1+F) for line fluxes)."
                + (f" No truth for {', '.join(missing)}." if missing else ""))


def _truth_of(rows, t: str, g: int) -> float:
    v = rows.column(t)[g].as_py() if t in rows.column_names else None
    return np.nan if v is None else float(v)


def _corner(page: Page, rows, run: _Run, n: int, seed: int) -> None:
    post = run.posterior()
    what = f"corner plot ({run.label})"
    if post is None:
        page.skip(what, run._post_error or "no model")
        return
    ids = run.corner_ids
    if rows is None or ids is None or not len(ids):
        page.skip(what, "no galaxy with status ok")
        return
    sub = subset(rows, ids)
    theta = post.sample(sub, n, space="physical", seed=seed).cpu().numpy()
    targets = list(post.targets)
    order = sorted(range(len(targets)), key=lambda j: targets[j] in LINE_TARGETS)
    dims = order[:CORNER_MAX_DIMS]
    left = [targets[j] for j in order[CORNER_MAX_DIMS:]]
    samples, truths, names = [], [], []
    for g in range(sub.num_rows):
        if not np.isfinite(theta[g]).all():
            continue
        samples.append(np.stack([display(targets[j], theta[g, :, j]) for j in dims], 1))
        truths.append(np.array([display(targets[j], _truth_of(sub, targets[j], g))
                                for j in dims], dtype=np.float64))
        names.append(f"objid {sub.column(ID_COLUMN)[g].as_py()}")
    if not samples:
        page.skip(what, "the model gave no finite samples for the chosen galaxies")
        return
    fig, _ = P.corner(samples, truths, [label(targets[j]) for j in dims],
                      P.GALAXY_COLOURS[:len(samples)], names,
                      f"{run.label}: posteriors of {len(samples)} galaxies")
    page.figure(fig, f"corner_{run.slug}.png",
                f"{run.label}: {n} posterior samples for each of {len(samples)} galaxies "
                f"(low, middle and high stellar mass), drawn with {run.model}; diagonal: "
                f"marginal histograms, dashed the truth; below it: 68/95 % contours, stars the "
                f"truth." + (f" Not shown: {', '.join(left)}." if left else ""))


def _pair_panels(page: Page, truth: dict, runs: list[_Run], pairs, name: str, what: str,
                 caption: str) -> None:
    n = truth["_n"]
    pairs = [p for p in pairs if all(t in truth and np.isfinite(truth[t]).any() for t in p)]
    if not pairs:
        page.skip(what, "the data have no truth for these targets")
        return
    cols = [r for r in runs if any(set(p) <= set(r.targets) for p in pairs)]
    if not cols:
        needed = sorted({t for p in pairs for t in p})
        page.skip(what, f"no run has the targets ({', '.join(needed)})")
        return
    needed = {t for p in pairs for t in p}
    fig, _ = P.pair_panels(pairs, truth, [
        (r.label, r.colour, {t: r.col(f"{t}_mean", n) for t in needed & set(r.targets)}, r.ok)
        for r in cols])
    page.figure(fig, name, caption)


def _scaling_relations(page: Page, truth: dict, runs: list[_Run]) -> None:
    _pair_panels(page, truth, runs, SCALING_PAIRS, "scaling_relations.png",
                 "scaling relations",
                 "Scaling relations — star-forming main sequence (M*-SFR), mass-metallicity "
                 "(M*-Z) and SFR-Z — of the true values (left, grey) and of each run's posterior "
                 "means, on the same galaxies (those with a measured metallicity in the panels "
                 "with Z). Under the run panels: " + P.TRUTH_REFERENCE + ".")


def _dust_age(page: Page, truth: dict, runs: list[_Run]) -> None:
    _pair_panels(page, truth, runs, [("dn4000", "av")], "dust_age.png",
                 "A_V-Dn4000 plane",
                 "The dust-age plane, A_V against Dn(4000), of the true values and of each run's "
                 "posterior means (the CFM paper's diagnostic of whether a model separates old, "
                 "dust-poor from young, dusty galaxies). Under the run panels: "
                 + P.TRUTH_REFERENCE + ".")


def _bpt(page: Page, truth: dict, runs: list[_Run]) -> None:
    n = truth["_n"]
    if not all(t in truth and np.isfinite(truth[t]).any() for t in LINE_TARGETS):
        page.skip("BPT diagram", "the data have no true line fluxes")
        return
    cols = [r for r in runs if set(LINE_TARGETS) <= set(r.targets)]
    if not cols:
        page.skip("BPT diagram", "no run has the four line-flux targets")
        return
    panels = [("truth", P.TRUTH_COLOUR, *P.bpt_ratios(*(truth[t] for t in LINE_TARGETS)))]
    for r in cols:
        x, y = P.bpt_ratios(*(r.col(f"{t}_mean", n) for t in LINE_TARGETS))
        panels.append((r.label, r.colour, np.where(r.ok, x, np.nan), np.where(r.ok, y, np.nan)))
    fig, _ = P.bpt(panels)
    page.figure(fig, "bpt.png",
                "BPT diagram from the true line fluxes (left) and from each run's posterior-mean "
                "fluxes (galaxies with all four fluxes positive). Dashed: Kauffmann et al. "
                "(2003) star-forming boundary; solid: Kewley et al. (2001) maximum starburst; "
                "under the run panels: " + P.TRUTH_REFERENCE + ".")


def _tarp_dims(truth: np.ndarray, min_rows: int = 20) -> list[int]:
    """Dimensions for TARP (a joint test needs every truth): all, dropping the most often
    missing ones until at least ``min_rows`` (or 30 %) of the rows are complete."""
    dims = list(range(truth.shape[1]))
    need = max(min_rows, int(0.3 * truth.shape[0]))
    while dims:
        if np.isfinite(truth[:, dims]).all(1).sum() >= need:
            return dims
        worst = max(dims, key=lambda d: (~np.isfinite(truth[:, d])).sum())
        dims.remove(worst)
    return dims


def _tarp_curve(c: C.CalibrationSamples, seed: int):
    """(alpha, ecp, ATC, rows, dropped targets) of TARP on the targets known often enough,
    or None with fewer than 10 complete rows."""
    dims = _tarp_dims(c.truth)
    if not dims:
        return None
    full = np.isfinite(c.truth[:, dims]).all(1) & np.isfinite(c.samples[:, :, dims]).all((1, 2))
    if full.sum() < 10:
        return None
    ecp, alpha = M.tarp(c.samples[full][:, :, dims], c.truth[full][:, dims], seed=seed)
    s = M.tarp_summary(ecp, alpha, n=int(full.sum()))
    dropped = [c.targets[d] for d in range(len(c.targets)) if d not in dims]
    return alpha, ecp, s["atc"], int(full.sum()), dropped


def _quantile_points(truth: dict, r: _Run) -> list:
    """Mean coverage over targets of the catalog's central 68 % and 95 % intervals."""
    n = truth["_n"]
    pts = []
    for a, b in (("q16", "q84"), ("q025", "q975")):
        vals = [M.quantile_coverage(r.col(f"{t}_{a}", n), r.col(f"{t}_{b}", n),
                                    np.where(r.ok, truth[t], np.nan)) for t in r.targets
                if t in truth]
        vals = [cov for cov, k in vals if k]
        pts.append(np.mean(vals) if vals else np.nan)
    return pts


def _calibration(page: Page, truth: dict, runs: list[_Run], seed: int) -> None:
    if not runs:
        page.skip("calibration curves", "no readable catalog")
        return
    curves, points, tarps, notes = [], [], [], []
    for r in runs:
        c = r.calib
        if c is not None:
            cov = np.stack([M.coverage_curve(c.samples[:, :, d], c.truth[:, d],
                                             P.COVERAGE_LEVELS) for d in range(len(c.targets))])
            curves.append((r.label, r.colour, P.COVERAGE_LEVELS, cov))
            tc = _tarp_curve(c, seed)
            if tc is None:
                notes.append(f"{r.label}: {c.source}; too few galaxies with every truth for "
                             f"TARP")
                continue
            alpha, ecp, atc, k, dropped = tc
            tarps.append((r.label, r.colour, alpha, ecp, atc, k))
            notes.append(f"{r.label}: {c.source} for {c.n} galaxies"
                         + (f", TARP without {', '.join(dropped)} (too often unknown)"
                            if dropped else ""))
        else:
            pts = _quantile_points(truth, r)
            if np.isfinite(pts).any():
                points.append((r.label, r.colour, [0.68, 0.95], pts))
            notes.append(f"{r.label}: no posterior samples ({r.calib_note}); coverage from "
                         f"the catalog's quantiles, no TARP")
    if not curves and not points:
        page.skip("calibration curves", "; ".join(notes) or "no truths")
        return
    fig, _ = P.calibration(curves, points, tarps)
    page.figure(fig, "calibration.png",
                "Calibration. Left: fraction of galaxies whose truth lies in the central "
                "credible interval, against its credibility (on the diagonal: calibrated; "
                "below: over-confident; above: under-confident). Right: TARP expected coverage "
                "(Lemos et al. 2023) in model space, the diagonal for a calibrated joint "
                "posterior; ATC > 0 means under-confident. " + "; ".join(notes) + ".")


def _pit(page: Page, runs: list[_Run]) -> None:
    have = [r for r in runs if r.calib is not None]
    if not have:
        page.skip("PIT histograms", "no run has posterior samples (no model, no kept samples)")
        return
    targets = list(dict.fromkeys(t for r in have for t in r.calib.targets))
    fig, _ = P.pit_histograms(targets, [
        (r.label, r.colour, {t: M.pit(r.calib.samples[:, :, d], r.calib.truth[:, d])
                             for d, t in enumerate(r.calib.targets)}) for r in have])
    page.figure(fig, "pit.png",
                "PIT histograms (the posterior CDF at the truth) per target on the calibration "
                "subset: flat at 1 when calibrated, U-shaped when over-confident, peaked when "
                "under-confident, tilted when biased.")


def _log10(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log10(x)


def _uncertainty(page: Page, truth: dict, runs: list[_Run]) -> None:
    n = truth["_n"]
    usable = [r for r in runs if r.targets]
    if not usable:
        page.skip("uncertainty decomposition", "no readable catalog")
        return
    targets = list(dict.fromkeys(t for r in usable for t in r.targets))
    split_runs, total_runs, drawn = set(), set(), []
    for r in usable:
        parts = {}
        for t in r.targets:
            alea, epi = r.col(f"{t}_std_aleatoric", n), r.col(f"{t}_std_epistemic", n)
            if np.isfinite(alea).any() and np.isfinite(epi).any():
                split_runs.add(r.label)
                parts[t] = [(_log10(alea)[r.ok], "-"), (_log10(epi)[r.ok], "--")]
            else:
                total_runs.add(r.label)
                parts[t] = [(_log10(r.col(f"{t}_std", n))[r.ok], "-")]
        drawn.append((r.label, r.colour, parts))
    fig, _ = P.uncertainty(targets, drawn, bool(split_runs))
    what = []
    if split_runs:
        what.append(f"aleatoric (solid, the spread within ensemble members) and epistemic "
                    f"(dashed, the spread between members) posterior std for "
                    f"{', '.join(sorted(split_runs))}")
    if total_runs:
        what.append(f"the total posterior std for {', '.join(sorted(total_runs))} (no "
                    f"ensemble split in the catalog)")
    page.figure(fig, "uncertainty.png",
                "Distributions of the uncertainties per target, in physical units (log10 of "
                "the std): " + "; ".join(what) + ".")


def _latent_traversal(page: Page, truth: dict, vae, mu: np.ndarray) -> None:
    good = np.isfinite(mu).all(1)
    if good.sum() < 20:
        page.skip("latent traversal", f"only {int(good.sum())} galaxies with usable cutouts")
        return
    z = mu[good].astype(np.float64)
    rows = L.traversal_rows(z, {t: truth[t][good] for t in TARGETS if t in truth})
    if not rows:
        page.skip("latent traversal", "no target has enough truths among the encoded galaxies")
        return
    fig, _ = P.latent_traversal(L.traverse(vae, z, rows), rows, L.STEPS)
    page.figure(fig, "latent_traversal.png",
                "Latent interpretability (as Siddiga et al. 2025, Fig. 3): for each target, a "
                "linear regression on the standardised latent means picks the two dimensions "
                "with the largest |coefficient| β (R²: of the linear fit on all dimensions); "
                "starting from the galaxy nearest the median latent vector, each is moved over "
                "−3..+3 of its standard deviation and "
                f"decoded ({int(good.sum())} galaxies encoded). Images: the VAE's asinh-stretched "
                "g, r, i as B, G, R, one stretch for all.")


def _latent_embedding(page: Page, truth: dict, mu: np.ndarray, seed: int) -> None:
    good = np.isfinite(mu).all(1)
    phot = truth.get("_phot")
    if good.sum() < 20:
        page.skip("latent embedding", f"only {int(good.sum())} galaxies with usable cutouts")
        return
    colour_by = [t for t in ("log_mstar", "log_mbh") if t in truth]
    if not colour_by:
        page.skip("latent embedding", "the data have neither log_mstar nor log_mbh")
        return
    sets = [("without photometry", good, L.robust_standardise(mu[good].astype(np.float64)))]
    if phot is not None:
        pg = good & np.isfinite(phot).all(1)
        sets.append(("with photometry", pg, np.hstack(
            [L.robust_standardise(mu[pg].astype(np.float64)), L.robust_standardise(phot[pg])])))
    drawn = []
    for name, m, feats in sets:
        emb, method = L.embed(feats, seed)
        drawn.append((name, emb, method, {t: truth[t][m] for t in colour_by}))
    fig, _ = P.latent_embedding(drawn, colour_by)
    page.figure(fig, "latent_embedding.png",
                "2-D embeddings of the VAE latent means (as Siddiga et al. 2025, Fig. 4), "
                "without photometry (latents only) and with photometry (latents concatenated "
                "with the colours u-g, g-r, r-i, i-z and the r magnitude), every feature "
                "standardised by its median and MAD and clipped at ±5; method: "
                f"{', '.join(dict.fromkeys(d[2] for d in drawn))}; axes span the central 99 %. "
                "Colour: the true value; grey: unknown.")


# ----------------------------------------------------------------------------------------------
# Image vs photometry, from an evaluation made with --compare
# ----------------------------------------------------------------------------------------------

def _pick_compare_galaxies(gain: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` galaxies spread over the gain of the first model over the second
    (its 90th, 50th and 10th percentile for k = 3): where the image helped most, a typical
    galaxy, and where it helped least."""
    ok = np.flatnonzero(np.isfinite(gain))
    if not len(ok):
        return ok
    order = ok[np.argsort(-gain[ok], kind="stable")]
    pick = np.unique(np.round(np.linspace(0.1, 0.9, min(k, len(order)))
                              * (len(order) - 1)).astype(int))
    return order[pick]


def _gain(sa: C.CalibrationSamples, sb: C.CalibrationSamples) -> np.ndarray:
    """[N] delta log p of the first model minus the second's on the same galaxies."""
    nan = np.full(sa.n, np.nan)
    return sa.per_galaxy.get("delta_log_p", nan) - sb.per_galaxy.get("delta_log_p", nan)


def _image_vs_phot(page: Page, data_uri: str, lab: str, m: dict) -> None:
    c = m["compare"]
    a, b = c["labels"]
    what = f"image vs photometry ({lab})"
    if "win_rate_delta_log_p" in c:
        page.p(f"**{a} vs {b}** ({c['information'].get('n_delta_log_p', '?')} galaxies with "
               f"every truth known): {a} has the higher Δlog p on "
               f"{num(c['win_rate_delta_log_p'], '.1%')} of them and the higher KL (more "
               f"information gained over the prior) on {num(c['win_rate_kl'], '.1%')}; mean "
               f"Δlog p {num(m['information']['mean_delta_log_p'], '.2f')} vs "
               f"{num(c['information']['mean_delta_log_p'], '.2f')}, mean KL "
               f"{num(m['information']['mean_kl'], '.2f')} vs "
               f"{num(c['information']['mean_kl'], '.2f')}.")
    if not m.get("calibration_samples") or not c.get("calibration_samples"):
        page.skip(what, "the evaluation has no calibration samples (run it with the models)")
        return
    sa = C.load(storage.join(m["out_dir"], m["calibration_samples"]))
    sb = C.load(storage.join(m["out_dir"], c["calibration_samples"]))
    pick = _pick_compare_galaxies(_gain(sa, sb.select(sa.objid)), COMPARE_GALAXIES)
    ids = sa.objid[pick] if len(pick) else sa.objid[:COMPARE_GALAXIES]
    rows = read_rows(data_uri, ids)
    if "cutout" not in rows.column_names:
        page.skip(what, f"{data_uri} has no cutouts")
        return
    idx, hit = align(objids(rows), ids)             # back to the order of the gain
    ids = ids[hit]
    images = rows.column("cutout").combine_chunks().to_numpy_ndarray()[idx[hit]]
    sa, sb = sa.select(ids), sb.select(ids)
    shown = sa.targets[:CORNER_MAX_DIMS]

    def disp(cs):
        return np.stack([display(t, cs.physical(d)) for d, t in enumerate(shown)], -1)

    truths = np.stack([display(t, get_target(t).inverse(sa.truth[:, d]))
                       for d, t in enumerate(shown)], -1)
    g = _gain(sa, sb)
    fig, _ = P.cutout_marginals(images, [f"objid {i}" for i in sa.objid],
                                [label(t) for t in shown], [disp(sa), disp(sb)], truths,
                                [(a, P.RUN_COLOURS[0]), (b, P.RUN_COLOURS[1])],
                                [f"Δlog p {a} − {b}: {num(x, '+.2f')}" for x in g])
    page.figure(fig, f"image_vs_phot_{_slug(lab)}.png",
                f"What the image adds: {sa.n} galaxies of the calibration subset, where "
                f"{a} gains most, a typical amount and least over {b} in Δlog p; left the "
                f"cutout (g, r, i as B, G, R, asinh stretch), right the marginal posteriors of "
                f"both models ({sa.samples.shape[1]} samples each, drawn by raygal evaluate) "
                f"and the truth (dashed).")


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _summary_table(truth: dict, runs: list[_Run]) -> str:
    lines = ["| run | target | R² | σ_NMAD | cov68 | cov95 | N |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        for t, s in catalog_scores(r.cat, truth, r.targets, transform=display).items():
            lines.append(f"| {r.label} | {t} | {s['r2']:.3f} | {s['sigma_nmad']:.3f} | "
                         f"{s['coverage68']:.3f} | {s['coverage95']:.3f} | {s['n']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------

def _runs(runs: list[dict], data_uri: str, truth: dict, max_points: int) -> list[_Run]:
    rs: list[_Run] = []
    slugs: set[str] = set()
    for i, spec in enumerate(runs):
        lab = str(spec.get("label") or f"run {i + 1}")
        slug = _slug(lab)
        while slug in slugs:
            slug += f"-{i + 1}"
        slugs.add(slug)
        r = _Run(lab, slug, P.RUN_COLOURS[i % len(P.RUN_COLOURS)], spec["catalog"],
                 spec.get("model") or None)
        _load_run(r, data_uri, truth, max_points)
        rs.append(r)
    return rs


def _samples_for(usable: list[_Run], data_uri: str, metrics, calib_samples: int, seed: int):
    """Every run's calibration samples (from its evaluation, else drawn here) and the full
    rows of the galaxies still to be sampled (corner plots), read in one streaming pass."""
    found = _evaluation_samples(metrics)
    own = [r for r in usable if not _read_evaluation_samples(r, found)]
    need = [r.corner_ids for r in usable] + [r.calib_ids for r in own]
    need = [x for x in need if x is not None]
    rows = None
    if need and any(len(x) for x in need):
        try:
            rows = read_rows(data_uri, np.concatenate(need))
        except Exception as exc:  # noqa: BLE001
            log.warning("report: cannot read rows for sampling: %s", exc)
    for r in own:
        if rows is None:
            r.calib_note = "cannot read the calibration rows"
            continue
        try:
            _own_samples(r, rows, calib_samples, seed)
        except Exception as exc:  # noqa: BLE001
            log.warning("report: calibration samples of %s failed", r.label, exc_info=True)
            r.calib_note = f"sampling failed ({type(exc).__name__}: {exc})"
    return rows


def _header(page: Page, data_uri: str, truth: dict, rs: list[_Run], max_points: int) -> None:
    page.h(1, "raygal report")
    page.p(f"Data: `{data_uri}` — {truth['_n']} galaxies shown (at most {max_points}, a "
           f"deterministic subsample by a hash of objid, as `raygal evaluate` draws).")
    lines = ["| run | catalog | model | targets | status ok |", "|---|---|---|---|---|"]
    for r in rs:
        nok = int(r.ok.sum()) if r.cat is not None else 0
        lines.append(f"| {r.label} | `{r.catalog}` | {f'`{r.model}`' if r.model else '—'} | "
                     f"{', '.join(r.targets) or '—'} | {nok} |")
    page.md("\n".join(lines))
    for r in rs:
        if r.note:
            page.p(f"*{r.label}: {r.note}; its figures are left out.*")


def _vae_section(page: Page, data_uri: str, truth: dict, vae_uri: str | None, seed: int) -> None:
    page.h(2, "VAE latent space")
    if not vae_uri:
        page.skip("latent traversal and embedding", "no VAE given (vae_uri)")
        return
    try:
        from ..models.vae import load_vae

        vae = load_vae(vae_uri)
        mu = L.encode(vae, data_uri, truth[ID_COLUMN])
    except Exception as exc:  # noqa: BLE001
        log.warning("report: no VAE latents: %s", exc)
        page.skip("latent traversal and embedding",
                  f"cannot encode with {vae_uri} ({type(exc).__name__}: {exc})")
        return
    page.section("latent traversal", _latent_traversal, truth, vae, mu)
    page.section("latent embedding", _latent_embedding, truth, mu, seed)


def _metrics_section(page: Page, data_uri: str, metrics: dict | None) -> None:
    if not metrics:
        return
    compared = {lab: m for lab, m in metrics.items()
                if isinstance(m, dict) and m.get("compare")}
    if compared:
        page.h(2, "What the image adds")
        for lab, m in compared.items():
            page.section(f"image vs photometry ({lab})", _image_vs_phot, data_uri, lab, m)
    page.h(2, "Metrics")
    for lab, m in metrics.items():
        page.h(3, str(lab))
        try:
            page.md(demote(format_table(m), 3))
        except Exception as exc:  # noqa: BLE001
            page.p(f"*metrics of {lab} cannot be shown: {type(exc).__name__}: {exc}*")


def make_report(out_dir: str, data_uri: str, runs: list[dict], vae_uri: str | None = None,
                metrics: dict | None = None, max_points: int = 5000, seed: int = 0, *,
                calib_rows: int = 256, calib_samples: int = 500, corner_galaxies: int = 3,
                corner_samples: int = 2000) -> str:
    """Write the report of posterior catalogs of ``data_uri`` under ``out_dir``; returns the
    URI of ``report.md`` (``report.html`` beside it shows the same).

    Args:
        out_dir: output folder (local or s3://).
        data_uri: the dataset the catalogs were made from (truths, cutouts).
        runs: ``[{"label": "CFM image", "catalog": URI, "model": URI or None}, ...]``; a run
            without a model gets no corner plot and coverage from its catalog's quantiles
            (or from its kept samples).
        vae_uri: a VAE (``raygal.models.vae.save_vae``) for the latent-space figures.
        metrics: ``{label: raygal.evaluate.run.evaluate(...) result}`` (or its metrics.json
            with ``out_dir`` set to its folder), shown as tables; their calibration samples
            are used for the runs of the same catalogs instead of sampling again, and an
            evaluation made with ``compare`` adds the image-vs-photometry figure.
        max_points: at most this many galaxies (a deterministic subsample by objid hash).
        seed: seed of posterior sampling, TARP references and embeddings.
        calib_rows, calib_samples: galaxies and samples per galaxy for calibration figures of
            runs without an evaluation's samples.
        corner_galaxies, corner_samples: galaxies and samples per galaxy in corner plots.
    """
    storage.makedirs(out_dir)
    page = Page(out_dir)
    truth = load_truth(data_uri, max_points)
    rs = _runs(runs, data_uri, truth, max_points)
    usable = [r for r in rs if r.cat is not None]
    _choose_ids(truth, usable, calib_rows, corner_galaxies)
    rows = _samples_for(usable, data_uri, metrics, calib_samples, seed)

    _header(page, data_uri, truth, rs, max_points)
    page.h(2, "Accuracy")
    if usable:
        page.p("Point metrics of the posterior means and coverage of the catalog's 68 %/95 % "
               "intervals, on the galaxies shown (R² and σ_NMAD in the plotted space):")
        page.md(_summary_table(truth, usable))
    for r in usable:
        page.section(f"predicted vs true ({r.label})", _pred_vs_true, truth, r)

    page.h(2, "Posteriors of single galaxies")
    for r in usable:
        page.section(f"corner plot ({r.label})", _corner, rows, r, corner_samples, seed)

    page.h(2, "Physical relations")
    page.section("scaling relations", _scaling_relations, truth, usable)
    page.section("A_V-Dn4000 plane", _dust_age, truth, usable)
    page.section("BPT diagram", _bpt, truth, usable)

    page.h(2, "Calibration")
    page.section("calibration curves", _calibration, truth, usable, seed)
    page.section("PIT histograms", _pit, usable)

    page.h(2, "Uncertainty")
    page.section("uncertainty decomposition", _uncertainty, truth, usable)

    _vae_section(page, data_uri, truth, vae_uri, seed)
    _metrics_section(page, data_uri, metrics)
    return page.write()


__all__ = ["make_report", "corner", "display", "label", "kauffmann03", "kewley01",
           "markdown_to_html"]
