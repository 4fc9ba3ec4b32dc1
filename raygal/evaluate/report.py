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
- ``scaling_relations.png``: M*-SFR, M*-Z and SFR-Z from the truth and from posterior means;
- ``dust_age.png``: the A_V-Dn4000 plane (the CFM paper's dust-age diagnostic);
- ``bpt.png``: log [O III]/Hbeta vs log [N II]/Halpha with the Kauffmann et al. (2003) and
  Kewley et al. (2001) demarcations;
- ``calibration.png`` (coverage at credibility 0.1..0.9 and TARP) and ``pit.png`` (PIT
  histograms), from posterior samples on a calibration subset;
- ``uncertainty.png``: the aleatoric/epistemic split (or the total posterior std);
- ``latent_traversal.png`` and ``latent_embedding.png``: the VAE latent space as in Siddiga,
  Mahmud & Martinez-Galarza (arXiv:2511.12737, Figs. 3 and 4).

A figure whose inputs are missing (no model, no such targets, no VAE) is skipped and the page
says why; an optional piece that fails is reported on the page, never raised.

Memory is bounded: the report holds at most ``max_points`` galaxies (a deterministic
subsample by a hash of objid, the one ``raygal evaluate`` uses), streams the dataset shard by
shard, and reads cutouts only for the few hundred galaxies it samples posteriors for (and, with
a VAE, encodes the subsample's cutouts batch by batch, keeping only the latent means).
"""
from __future__ import annotations

import html
import io
import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..pipelines import hash_unit
from ..shards import read_manifest, read_schema, shard_uris
from ..inputs import STATUS_OK, cutout_array, phot_matrix, target_matrix
from ..schema import CUTOUT_COLUMN, ID_COLUMN, MAG_COLUMNS, TARGETS, get_target
from . import metrics as M

log = logging.getLogger("raygal.report")

DPI = 110
PAGE = "report.md"
HTML_PAGE = "report.html"
#: credibility levels of the coverage curves
COVERAGE_LEVELS = tuple(round(0.1 * k, 1) for k in range(1, 10))
TRUTH_COLOUR = "0.35"
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf")
#: colours of the galaxies in a corner plot (apart from the run colours)
GALAXY_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9")
LINE_TARGETS = ("flux_halpha", "flux_hbeta", "flux_nii", "flux_oiii")
SCALING_PAIRS = (("log_mstar", "log_sfr"), ("log_mstar", "oh12"), ("log_sfr", "oh12"))
#: 16-84 % error bars are drawn for at most this many galaxies per panel (the rest are dots)
ERRORBAR_POINTS = 120
#: at most this many targets in a corner plot (the rest are listed in the caption)
CORNER_MAX_DIMS = 6


# ----------------------------------------------------------------------------------------------
# Labels and display spaces
# ----------------------------------------------------------------------------------------------

def _unit_tex(unit: str) -> str:
    """A schema unit string as matplotlib mathtext."""
    u = unit.replace("1e-17 erg/s/cm^2", r"$10^{-17}$ erg s$^{-1}$ cm$^{-2}$")
    return u.replace("Msun", r"M$_\odot$")


def display(t: str, x) -> np.ndarray:
    """Physical values of target ``t`` in the space figures show them in: as they are for
    identity targets, log10 for ``sigma_v``, log10(1 + F) for line fluxes (which can be 0)."""
    return get_target(t).transform.display(x)


def label(t: str, with_unit: bool = True) -> str:
    """An axis label of target ``t`` in its display space, with its unit."""
    tg = get_target(t)
    s = f"${tg.transform.display_label((tg.latex or t).strip('$'))}$"
    if with_unit and tg.unit:
        s += f" [{_unit_tex(tg.unit)}]"
    return s


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def _finite(*arrays) -> np.ndarray:
    ok = np.ones(len(arrays[0]), bool)
    for a in arrays:
        ok &= np.isfinite(np.asarray(a, dtype=np.float64))
    return ok


def _range(*arrays, lo=0.5, hi=99.5, pad=0.06) -> tuple[float, float]:
    """A plotting range holding the central ``lo``..``hi`` percentiles of the values."""
    v = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    a, b = np.percentile(v, [lo, hi])
    if b <= a:
        a, b = a - 0.5, b + 0.5
    d = (b - a) * pad
    return float(a - d), float(b + d)


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------

class _Page:
    """Collects the Markdown page and writes the figures beside it."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.lines: list[str] = []
        self.figures: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._n = 0

    def h(self, level: int, text: str) -> None:
        self.lines += ["#" * level + " " + text, ""]

    def p(self, text: str) -> None:
        self.lines += [text, ""]

    def md(self, text: str) -> None:
        self.lines += [text.rstrip("\n"), ""]

    def figure(self, fig, name: str, caption: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        storage.write_bytes(storage.join(self.out_dir, name), buf.getvalue())
        self._n += 1
        self.figures.append(name)
        alt = re.sub(r"[\[\]]", "", caption.split(".")[0])
        self.lines += [f"![{alt}]({name})", "", f"*Figure {self._n}. {caption}*", ""]

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append((what, reason))
        self.lines += [f"*Skipped — {what}: {reason}*", ""]

    def markdown(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    # An Agg-backed Figure without pyplot: no global state, safe off the main thread.
    return Figure(figsize=(w, h), dpi=DPI)


def _grid(nrow: int, ncol: int, panel_w: float, panel_h: float, left: float = 0.75,
          right: float = 0.2, bottom: float = 0.6, top: float = 0.5, wgap: float = 0.7,
          hgap: float = 0.7):
    """(figure, axes [nrow, ncol]) with fixed panel sizes and margins in inches: laid out
    arithmetically, because constrained layout costs seconds on figures of many panels."""
    w = left + right + ncol * panel_w + (ncol - 1) * wgap
    h = bottom + top + nrow * panel_h + (nrow - 1) * hgap
    fig = _figure(w, h)
    axes = fig.subplots(nrow, ncol, squeeze=False, gridspec_kw=dict(
        left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
        wspace=wgap / panel_w, hspace=hgap / panel_h))
    return fig, axes


def _section(page: _Page, what: str, fn, *args) -> None:
    """Run one figure's code; a failure of an optional piece goes on the page, not up."""
    try:
        fn(page, *args)
    except Exception as exc:  # noqa: BLE001 - the report must not die for one figure
        log.warning("report: %s failed", what, exc_info=True)
        page.skip(what, f"failed with {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------------------------
# Data: the truth subsample, the runs' catalogs aligned to it, rows with cutouts on demand
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
    calib: dict | None = None        # posterior samples on the calibration subset
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


def _eval_rows(max_points: int) -> int:
    # Slightly more than max_points pass the hash cut (its count fluctuates); the report then
    # keeps the max_points lowest hashes.
    return int(max_points * 1.1) + 20


def _sample_fraction(data_uri: str, max_rows: int) -> float:
    """The fraction ``raygal.evaluate.run.load_for_evaluation`` keeps for ``max_rows``."""
    n = read_manifest(data_uri)["num_rows"]
    return min(1.0, max_rows / max(n, 1))


def _iter_shard_batches(uri: str, columns, batch_rows: int = 4096):
    fs, path = storage.arrow_fs(uri)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        cols = [c for c in columns if c in pf.schema_arrow.names]
        for b in pf.iter_batches(batch_size=batch_rows, columns=cols):
            yield b


def _load_truth(data_uri: str, max_points: int) -> dict:
    """Truth columns (objid, hash, ugriz, every target present) of the report's subsample,
    sorted by objid, streamed shard by shard."""
    frac = _sample_fraction(data_uri, _eval_rows(max_points))
    names = read_schema(data_uri).names
    cols = [c for c in (ID_COLUMN, *MAG_COLUMNS, *TARGETS) if c in names]
    parts: list[dict] = []
    for uri in shard_uris(data_uri):
        for b in _iter_shard_batches(uri, cols):
            ids = b.column(ID_COLUMN).to_numpy(zero_copy_only=False).astype(np.int64)
            h = hash_unit(ids)
            keep = h < frac
            if not keep.any():
                continue
            part = {ID_COLUMN: ids[keep], "_hash": h[keep]}
            for c in cols[1:]:
                v = b.column(c).to_numpy(zero_copy_only=False)
                part[c] = np.asarray(v, dtype=np.float64)[keep]
            parts.append(part)
    if not parts:
        raise ValueError(f"{data_uri}: no rows")
    truth = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = np.argsort(truth["_hash"], kind="stable")[:max_points]
    keep = keep[np.argsort(truth[ID_COLUMN][keep], kind="stable")]
    truth = {k: v[keep] for k, v in truth.items()}
    truth["_n"] = len(keep)
    if all(c in truth for c in MAG_COLUMNS):
        truth["_phot"] = phot_matrix(truth)
    return truth


def _align(ids_from: np.ndarray, ids_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into ids_from for each ids_to, found mask)."""
    order = np.argsort(ids_from, kind="stable")
    pos = np.searchsorted(ids_from[order], ids_to)
    pos = np.clip(pos, 0, max(len(order) - 1, 0))
    found = len(order) > 0
    idx = order[pos] if len(order) else np.zeros(len(ids_to), np.int64)
    hit = (ids_from[idx] == ids_to) if found else np.zeros(len(ids_to), bool)
    return idx, hit


def _load_run(run: _Run, data_uri: str, truth: dict, max_points: int) -> None:
    from .run import load_for_evaluation

    try:
        cd, td, settings, _ = load_for_evaluation(run.catalog, data_uri, _eval_rows(max_points))
    except Exception as exc:  # noqa: BLE001
        run.note = f"cannot read the catalog {run.catalog}: {exc}"
        log.warning("report: %s", run.note)
        return
    run.targets = list(settings.get("targets") or [])
    ids = np.asarray(td[ID_COLUMN], dtype=np.int64)
    idx, hit = _align(ids, truth[ID_COLUMN])
    cat = {}
    for k, v in cd.items():
        v = np.asarray(v)
        if k == "status":
            cat[k] = np.where(hit, v[idx].astype(str), "missing")
        elif v.dtype.kind in "fiu":
            cat[k] = np.where(hit, v[idx].astype(np.float64), np.nan)
    run.cat = cat


def _read_rows(data_uri: str, ids) -> pa.Table:
    """The full rows (cutouts included) of ``ids``, streamed from the dataset, by objid."""
    want = np.unique(np.asarray(ids, dtype=np.int64))
    parts, found = [], 0
    names = [c for c in read_schema(data_uri).names if c != "source"]
    for uri in shard_uris(data_uri):
        for b in _iter_shard_batches(uri, names, batch_rows=1024):
            keep = np.isin(b.column(ID_COLUMN).to_numpy(zero_copy_only=False), want)
            if keep.any():
                parts.append(pa.Table.from_batches([b]).filter(pa.array(keep)))
                found += int(keep.sum())
        if found >= len(want):
            break
    if not parts:
        raise ValueError(f"{data_uri}: none of the requested objids found")
    return pa.concat_tables(parts).sort_by(ID_COLUMN)


def _catalog_samples(catalog: str, ids) -> tuple[np.ndarray, np.ndarray] | None:
    """(objid, physical samples [N, S, D]) of ``ids`` from a catalog written with
    ``--keep-samples``, or None if it has no samples."""
    from ..infer import catalog_shards

    want = np.asarray(ids, dtype=np.int64)
    got_ids, got = [], []
    for uri in catalog_shards(catalog):
        fs, path = storage.arrow_fs(uri)
        if "samples" not in pq.read_schema(path, filesystem=fs).names:
            return None
        t = pq.read_table(path, filesystem=fs, columns=[ID_COLUMN, "samples"])
        keep = np.isin(t.column(ID_COLUMN).to_numpy(), want)
        if keep.any():
            t = t.filter(pa.array(keep))
            got_ids.append(t.column(ID_COLUMN).to_numpy())
            got.append(t.column("samples").combine_chunks().to_numpy_ndarray())
        if sum(len(g) for g in got_ids) >= len(want):
            break
    if not got:
        return None
    return np.concatenate(got_ids), np.concatenate(got).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# Choosing galaxies for posterior samples
# ----------------------------------------------------------------------------------------------

def _candidate_order(truth: dict, runs: list[_Run]) -> np.ndarray:
    """Truth rows ordered by how many of the runs' targets they lack, then by hash, so that
    calibration sees as many fully known rows as possible, deterministically."""
    targets = sorted({t for r in runs for t in r.targets if t in truth})
    missing = np.zeros(truth["_n"], int)
    for t in targets:
        missing += ~np.isfinite(truth[t])
    return np.lexsort((truth["_hash"], missing))


def _choose_ids(truth: dict, runs: list[_Run], calib_rows: int, corner_galaxies: int) -> None:
    order = _candidate_order(truth, runs)
    for r in runs:
        if r.cat is None:
            continue
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


def _calibration_samples(run: _Run, rows: pa.Table, samples: int, seed: int) -> None:
    """Posterior samples in model space on the run's calibration subset: from the model, else
    from the catalog's kept samples; sets ``run.calib`` or ``run.calib_note``."""
    ids = run.calib_ids
    if ids is None or not len(ids):
        run.calib_note = "no galaxy with status ok"
        return
    post = run.posterior()
    if post is not None:
        sub = rows.filter(pa.array(np.isin(rows.column(ID_COLUMN).to_numpy(), ids)))
        theta = post.sample(sub, samples, space="model", seed=seed).cpu().numpy()
        b = {t: sub.column(t).to_numpy(zero_copy_only=False) for t in post.targets
             if t in sub.column_names}
        truth = target_matrix(b, post.targets)
        run.calib = {"targets": list(post.targets), "samples": theta.astype(np.float64),
                     "truth": truth, "source": f"{samples} samples from the model"}
        return
    got = _catalog_samples(run.catalog, ids)
    if got is None:
        run.calib_note = f"{run._post_error}; the catalog keeps no samples"
        return
    gid, phys = got
    sub = rows.filter(pa.array(np.isin(rows.column(ID_COLUMN).to_numpy(), gid)))
    idx, hit = _align(gid, sub.column(ID_COLUMN).to_numpy())
    phys = phys[idx[hit]]
    sub = sub.filter(pa.array(hit))
    theta = np.stack([get_target(t).forward(phys[..., j]) for j, t in enumerate(run.targets)], -1)
    b = {t: sub.column(t).to_numpy(zero_copy_only=False) for t in run.targets
         if t in sub.column_names}
    run.calib = {"targets": list(run.targets), "samples": theta,
                 "truth": target_matrix(b, run.targets),
                 "source": f"{phys.shape[1]} samples kept in the catalog"}


# ----------------------------------------------------------------------------------------------
# Plot helpers
# ----------------------------------------------------------------------------------------------

def _run_cmap(colour: str):
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("run", ["#ffffff", colour])


def _smooth(h: np.ndarray) -> np.ndarray:
    k = np.array([0.25, 0.5, 0.25])
    h = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, h)
    return np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, h)


def _contours(ax, x, y, xr, yr, colour, bins=None, levels=(0.68, 0.95), **kw) -> bool:
    """Lines enclosing ``levels`` of the points (highest-density regions of a smoothed 2-D
    histogram, ``bins`` per axis, by default growing as sqrt(N)); False if there are too few
    points."""
    ok = _finite(x, y)
    if ok.sum() < 20:
        return False
    if bins is None:
        bins = int(np.clip(np.sqrt(ok.sum()) / 2, 10, 40))
    h, xe, ye = np.histogram2d(x[ok], y[ok], bins=bins, range=[xr, yr])
    h = _smooth(_smooth(h))
    flat = np.sort(h.ravel())[::-1]
    cum = np.cumsum(flat) / max(flat.sum(), 1e-300)
    th = sorted({float(flat[min(np.searchsorted(cum, lv), len(flat) - 1)]) for lv in levels})
    th = [t for t in th if t > 0]
    if not th:
        return False
    xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
    ax.contour(xc, yc, h.T, levels=th, colors=[colour], linewidths=kw.get("lw", 1.0),
               linestyles=kw.get("ls", "solid"))
    return True


def _density(ax, x, y, xr, yr, colour, n_small: int = 1500) -> None:
    """Points for small samples, a shaded 2-D histogram for large ones."""
    ok = _finite(x, y)
    if ok.sum() < n_small:
        ax.scatter(x[ok], y[ok], s=7, color=colour, alpha=0.55, lw=0, rasterized=True)
        return
    bins = int(np.clip(np.sqrt(ok.sum()) / 1.5, 20, 60))
    h, xe, ye = np.histogram2d(x[ok], y[ok], bins=bins, range=[xr, yr])
    from matplotlib.colors import PowerNorm

    ax.pcolormesh(xe, ye, np.where(h > 0, h, np.nan).T, cmap=_run_cmap(colour),
                  norm=PowerNorm(0.5, vmin=0, vmax=max(h.max(), 1)), rasterized=True)


def _truth_reference(ax, x, y, xr, yr, n_small: int = 1500) -> None:
    """The truth under a run's panel: grey points for small samples (where density contours
    would be noise), 68/95 % contours in black for large ones."""
    ok = _finite(x, y)
    if ok.sum() < n_small:
        ax.scatter(x[ok], y[ok], s=7, color=TRUTH_COLOUR, alpha=0.3, lw=0, rasterized=True,
                   zorder=0)
    else:
        _contours(ax, x, y, xr, yr, "k", lw=0.9)


TRUTH_REFERENCE = ("the truth as faint grey points (black 68/95 % contours when there are more "
                   "than 1500 galaxies)")


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend_handles(runs: list[_Run], truth: bool = False):
    from matplotlib.lines import Line2D

    h = [Line2D([], [], color=TRUTH_COLOUR, lw=2, label="truth")] if truth else []
    return h + [Line2D([], [], color=r.colour, lw=2, label=r.label) for r in runs]


# ----------------------------------------------------------------------------------------------
# 1. Predicted vs true
# ----------------------------------------------------------------------------------------------

def _pred_vs_true(page: _Page, truth: dict, run: _Run) -> None:
    n = truth["_n"]
    targets = [t for t in run.targets if t in truth and np.isfinite(truth[t]).any()]
    if not targets:
        page.skip(f"predicted vs true ({run.label})", "no target of this run has a truth")
        return
    ok = run.ok
    ncol = min(3, len(targets))
    nrow = math.ceil(len(targets) / ncol)
    fig, axes = _grid(nrow, ncol, 3.0, 3.0, left=0.8, wgap=0.9, hgap=0.75)
    axes = axes.ravel()
    # Error bars for a fixed subset (lowest hashes), the same galaxies in every panel.
    bar = np.zeros(n, bool)
    bar[np.argsort(np.where(ok, truth["_hash"], np.inf))[:ERRORBAR_POINTS]] = True
    for ax, t in zip(axes, targets):
        x = display(t, truth[t])
        y = display(t, run.col(f"{t}_mean", n))
        lo, hi = display(t, run.col(f"{t}_q16", n)), display(t, run.col(f"{t}_q84", n))
        m = ok & _finite(x, y)
        ax.scatter(x[m], y[m], s=5, color=run.colour, alpha=0.3, lw=0, rasterized=True)
        e = m & bar & _finite(lo, hi)
        ax.errorbar(x[e], y[e], yerr=[np.clip(y[e] - lo[e], 0, None), np.clip(hi[e] - y[e], 0,
                    None)], fmt="o", ms=3, color=run.colour, ecolor=run.colour, mec="k",
                    mew=0.4, elinewidth=0.7, alpha=0.9, lw=0)
        r = _range(x[m], y[m])
        ax.plot(r, r, color="k", lw=1, ls="--")
        ax.set_xlim(r)
        ax.set_ylim(r)
        ax.set_aspect("equal")
        pm = M.point_metrics(y[m], x[m], t)
        ax.text(0.04, 0.96, f"$R^2$ = {pm['r2']:.2f}\n"
                            f"$\\sigma_\\mathrm{{NMAD}}$ = {pm['sigma_nmad']:.3f}\nN = {pm['n']}",
                transform=ax.transAxes, va="top", fontsize=9,
                bbox=dict(fc="white", ec="none", alpha=0.8))
        ax.set_xlabel("true " + label(t), fontsize=9)
        ax.set_ylabel("posterior mean", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    fig.suptitle(f"{run.label}: posterior mean vs truth")
    missing = [t for t in run.targets if t not in targets]
    page.figure(fig, f"pred_vs_true_{run.slug}.png",
                f"{run.label}: posterior mean against the true value for "
                f"{int(ok.sum())} galaxies with status ok, with 16-84 % intervals for "
                f"{int((bar & ok).sum())} of them; dashed: 1:1. R² and σ_NMAD are computed in "
                f"the plotted space (log10(1+F) for line fluxes)."
                + (f" No truth for {', '.join(missing)}." if missing else ""))


# ----------------------------------------------------------------------------------------------
# 2. Corner plots
# ----------------------------------------------------------------------------------------------

def corner(fig, samples: list[np.ndarray], truths: list[np.ndarray], labels: list[str],
           colours, names=None) -> None:
    """A corner plot on ``fig``: for each of G galaxies, samples [S, D] (histograms on the
    diagonal, 68/95 % contours over faint points below it) and its truth [D] (lines / stars)."""
    D = samples[0].shape[1]
    w, h = fig.get_size_inches()
    axes = fig.subplots(D, D, squeeze=False, gridspec_kw=dict(
        left=1.0 / w, right=1 - 0.45 / w, bottom=0.85 / h, top=1 - 0.55 / h, wspace=0.08,
        hspace=0.08))
    from matplotlib.ticker import MaxNLocator
    rng = [_range(*[s[:, d] for s in samples], *[t[d:d + 1] for t in truths], lo=0.5, hi=99.5)
           for d in range(D)]
    for i in range(D):
        for j in range(D):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            for s, t, c in zip(samples, truths, colours):
                if i == j:
                    ax.hist(s[:, i][np.isfinite(s[:, i])], bins=40, range=rng[i], density=True,
                            histtype="step", color=c, lw=1.2)
                    if np.isfinite(t[i]):
                        ax.axvline(t[i], color=c, ls="--", lw=1)
                else:
                    ax.scatter(s[:, j], s[:, i], s=1, color=c, alpha=0.06, lw=0,
                               rasterized=True)
                    _contours(ax, s[:, j], s[:, i], rng[j], rng[i], c)
                    if np.isfinite(t[i]) and np.isfinite(t[j]):
                        ax.plot(t[j], t[i], marker="*", ms=11, color=c, mec="k", mew=0.6)
            ax.set_xlim(rng[j])
            # pruned ticks: no label collides with its neighbour's at a shared corner
            ax.xaxis.set_major_locator(MaxNLocator(4, prune="both"))
            if i != j:
                ax.set_ylim(rng[i])
                ax.yaxis.set_major_locator(MaxNLocator(4, prune="both"))
            else:
                ax.set_yticks([])
            ax.tick_params(labelsize=7)
            if i == D - 1:
                ax.set_xlabel(labels[j], fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i], fontsize=8)
            elif j > 0:
                ax.set_yticklabels([])
    if names is not None:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=c, lw=2, label=n) for n, c in zip(names, colours)]
        handles.append(Line2D([], [], color="k", marker="*", ms=10, ls="--", lw=1,
                              label="truth"))
        fig.legend(handles=handles, loc="upper right", fontsize=9, frameon=False)


def _corner(page: _Page, rows: pa.Table | None, run: _Run, n: int, seed: int) -> None:
    post = run.posterior()
    what = f"corner plot ({run.label})"
    if post is None:
        page.skip(what, run._post_error or "no model")
        return
    ids = run.corner_ids
    if rows is None or ids is None or not len(ids):
        page.skip(what, "no galaxy with status ok")
        return
    sub = rows.filter(pa.array(np.isin(rows.column(ID_COLUMN).to_numpy(), ids)))
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
        tv = []
        for j in dims:
            t = targets[j]
            v = (sub.column(t)[g].as_py() if t in sub.column_names else None)
            tv.append(display(t, np.nan if v is None else v))
        truths.append(np.asarray(tv, dtype=np.float64).ravel())
        names.append(f"objid {sub.column(ID_COLUMN)[g].as_py()}")
    if not samples:
        page.skip(what, "the model gave no finite samples for the chosen galaxies")
        return
    D = len(dims)
    fig = _figure(1.6 * D + 1.3, 1.6 * D + 1.1)
    corner(fig, samples, truths, [label(targets[j]) for j in dims],
           GALAXY_COLOURS[:len(samples)], names)
    fig.suptitle(f"{run.label}: posteriors of {len(samples)} galaxies", x=0.02, ha="left")
    page.figure(fig, f"corner_{run.slug}.png",
                f"{run.label}: {n} posterior samples for each of {len(samples)} galaxies "
                f"(low, middle and high stellar mass), drawn with {run.model}; diagonal: "
                f"marginal histograms, dashed the truth; below it: 68/95 % contours, stars the "
                f"truth." + (f" Not shown: {', '.join(left)}." if left else ""))


# ----------------------------------------------------------------------------------------------
# 3-5. Scaling relations, the dust-age plane, the BPT diagram
# ----------------------------------------------------------------------------------------------

def _pair_panels(page: _Page, truth: dict, runs: list[_Run], pairs, name: str, what: str,
                 caption: str) -> None:
    n = truth["_n"]
    pairs = [p for p in pairs if all(t in truth and np.isfinite(truth[t]).any() for t in p)]
    if not pairs:
        page.skip(what, "the data have no truth for these targets")
        return
    cols = [r for r in runs if r.cat is not None and any(set(p) <= set(r.targets)
                                                        for p in pairs)]
    if not cols:
        needed = sorted({t for p in pairs for t in p})
        page.skip(what, f"no run has the targets ({', '.join(needed)})")
        return
    fig, axes = _grid(len(pairs), 1 + len(cols), 2.9, 2.9, left=0.8, wgap=0.85, hgap=0.9)
    for i, (tx, ty) in enumerate(pairs):
        xt, yt = display(tx, truth[tx]), display(ty, truth[ty])
        both = _finite(xt, yt)
        xr, yr = _range(xt[both], lo=1, hi=99), _range(yt[both], lo=1, hi=99)
        panels = [("truth", TRUTH_COLOUR, xt, yt, both)]
        for r in cols:
            if {tx, ty} <= set(r.targets):
                xp = display(tx, r.col(f"{tx}_mean", n))
                yp = display(ty, r.col(f"{ty}_mean", n))
                # the same galaxies as the truth panel, so the two are comparable
                panels.append((r.label, r.colour, xp, yp, both & r.ok & _finite(xp, yp)))
            else:
                panels.append((r.label, r.colour, None, None, None))
        for j, (lab, colour, x, y, m) in enumerate(panels):
            ax = axes[i, j]
            if x is None:
                _note(ax, f"{label(tx, False)} or {label(ty, False)}\nnot a target of this run")
                ax.set_title(lab, fontsize=10)
                continue
            if j > 0:
                _truth_reference(ax, xt[both], yt[both], xr, yr)
            _density(ax, x[m], y[m], xr, yr, colour)
            ax.set_xlim(xr)
            ax.set_ylim(yr)
            ax.set_xlabel(label(tx), fontsize=9)
            ax.set_ylabel(label(ty), fontsize=9)
            ax.tick_params(labelsize=8)
            ax.set_title(f"{lab} (N = {int(m.sum())})", fontsize=10)
    page.figure(fig, name, caption)


def _scaling_relations(page: _Page, truth: dict, runs: list[_Run]) -> None:
    _pair_panels(page, truth, runs, SCALING_PAIRS, "scaling_relations.png",
                 "scaling relations",
                 "Scaling relations — star-forming main sequence (M*-SFR), mass-metallicity "
                 "(M*-Z) and SFR-Z — of the true values (left, grey) and of each run's posterior "
                 "means, on the same galaxies (those with a measured metallicity in the panels "
                 "with Z). Under the run panels: " + TRUTH_REFERENCE + ".")


def _dust_age(page: _Page, truth: dict, runs: list[_Run]) -> None:
    _pair_panels(page, truth, runs, [("dn4000", "av")], "dust_age.png",
                 "A_V-Dn4000 plane",
                 "The dust-age plane, A_V against Dn(4000), of the true values and of each run's "
                 "posterior means (the CFM paper's diagnostic of whether a model separates old, "
                 "dust-poor from young, dusty galaxies). Under the run panels: "
                 + TRUTH_REFERENCE + ".")


def kauffmann03(x):
    """log([O III]/Hbeta) of the Kauffmann et al. (2003) star-forming boundary at
    x = log([N II]/Halpha) < 0.05."""
    return 0.61 / (np.asarray(x) - 0.05) + 1.3


def kewley01(x):
    """The Kewley et al. (2001) maximum-starburst line, for x = log([N II]/Halpha) < 0.47."""
    return 0.61 / (np.asarray(x) - 0.47) + 1.19


def _bpt_ratios(ha, hb, nii, oiii):
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.log10(nii / ha)
        y = np.log10(oiii / hb)
    pos = (ha > 0) & (hb > 0) & (nii > 0) & (oiii > 0)
    return np.where(pos, x, np.nan), np.where(pos, y, np.nan)


def _bpt(page: _Page, truth: dict, runs: list[_Run]) -> None:
    n = truth["_n"]
    if not all(t in truth and np.isfinite(truth[t]).any() for t in LINE_TARGETS):
        page.skip("BPT diagram", "the data have no true line fluxes")
        return
    cols = [r for r in runs if r.cat is not None and set(LINE_TARGETS) <= set(r.targets)]
    if not cols:
        page.skip("BPT diagram", "no run has the four line-flux targets")
        return
    xt, yt = _bpt_ratios(*(truth[t] for t in LINE_TARGETS))
    panels = [("truth", TRUTH_COLOUR, xt, yt)]
    for r in cols:
        xp, yp = _bpt_ratios(*(r.col(f"{t}_mean", n) for t in LINE_TARGETS))
        ok = r.ok
        panels.append((r.label, r.colour, np.where(ok, xp, np.nan), np.where(ok, yp, np.nan)))
    xr = (-2.0, 1.0)
    yr = (-1.5, 1.5)
    fig, axes = _grid(1, len(panels), 3.0, 3.0, left=0.8, wgap=0.85)
    axes = axes[0]
    xk = np.linspace(xr[0], 0.0, 200)
    xw = np.linspace(xr[0], 0.40, 200)
    for j, (lab, colour, x, y) in enumerate(panels):
        ax = axes[j]
        m = _finite(x, y)
        if j > 0:
            _truth_reference(ax, xt, yt, xr, yr)
        _density(ax, x[m], y[m], xr, yr, colour)
        ax.plot(xk, kauffmann03(xk), color="k", ls="--", lw=1.2, label="Kauffmann+03")
        ax.plot(xw, kewley01(xw), color="k", ls="-", lw=1.2, label="Kewley+01")
        ax.set_xlim(xr)
        ax.set_ylim(yr)
        ax.set_xlabel(r"$\log_{10}$([N II] 6584 / H$\alpha$)", fontsize=9)
        ax.set_ylabel(r"$\log_{10}$([O III] 5007 / H$\beta$)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_title(f"{lab} (N = {int(m.sum())})", fontsize=10)
        if j == 0:
            ax.legend(fontsize=8, loc="lower left")
    page.figure(fig, "bpt.png",
                "BPT diagram from the true line fluxes (left) and from each run's posterior-mean "
                "fluxes (galaxies with all four fluxes positive). Dashed: Kauffmann et al. "
                "(2003) star-forming boundary; solid: Kewley et al. (2001) maximum starburst; "
                "under the run panels: " + TRUTH_REFERENCE + ".")


# ----------------------------------------------------------------------------------------------
# 6. Calibration: coverage, TARP, PIT
# ----------------------------------------------------------------------------------------------

def _coverage_curve(theta: np.ndarray, true: np.ndarray, levels=COVERAGE_LEVELS) -> np.ndarray:
    """Observed coverage of central credible intervals at ``levels`` for one target, from
    samples [N, S] and truths [N] (NaN rows left out)."""
    ok = np.isfinite(true) & np.isfinite(theta).all(1)
    if not ok.any():
        return np.full(len(levels), np.nan)
    s, t = theta[ok], true[ok]
    out = []
    for c in levels:
        lo, hi = np.quantile(s, [(1 - c) / 2, (1 + c) / 2], axis=1)
        out.append(np.mean((t >= lo) & (t <= hi)))
    return np.asarray(out)


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


def _calibration(page: _Page, truth: dict, runs: list[_Run], seed: int) -> None:
    n = truth["_n"]
    usable = [r for r in runs if r.cat is not None]
    if not usable:
        page.skip("calibration curves", "no readable catalog")
        return
    fig, axes = _grid(1, 2, 3.9, 3.9, left=0.8, wgap=0.9, top=0.4)
    ax_c, ax_t = axes[0]
    ax_c.plot([0, 1], [0, 1], color="k", ls=":", lw=1)
    notes, any_tarp, any_cov = [], False, False
    for r in usable:
        if r.calib is not None:
            c = r.calib
            curves = np.stack([_coverage_curve(c["samples"][:, :, d], c["truth"][:, d])
                               for d in range(len(c["targets"]))])
            for cv in curves:
                ax_c.plot(COVERAGE_LEVELS, cv, color=r.colour, lw=0.7, alpha=0.35)
            ax_c.plot(COVERAGE_LEVELS, np.nanmean(curves, 0), color=r.colour, lw=2.2,
                      marker="o", ms=4, label=f"{r.label} (mean of {len(c['targets'])} targets)")
            any_cov = True
            dims = _tarp_dims(c["truth"])
            full = np.isfinite(c["truth"][:, dims]).all(1) & \
                np.isfinite(c["samples"][:, :, dims]).all((1, 2)) if dims else None
            if dims and full.sum() >= 10:
                ecp, alpha = M.tarp(c["samples"][full][:, :, dims], c["truth"][full][:, dims],
                                    seed=seed)
                s = M.tarp_summary(ecp, alpha, n=int(full.sum()))
                ax_t.plot(alpha, ecp, color=r.colour, lw=2,
                          label=f"{r.label}: ATC {s['atc']:+.2f}, N = {int(full.sum())}")
                any_tarp = True
                dropped = [c["targets"][d] for d in range(len(c["targets"])) if d not in dims]
                notes.append(f"{r.label}: {c['source']} for {c['samples'].shape[0]} galaxies"
                             + (f", TARP without {', '.join(dropped)} (too often unknown)"
                                if dropped else ""))
            else:
                notes.append(f"{r.label}: {c['source']}; too few galaxies with every truth "
                             f"for TARP")
        else:
            # Fallback: the catalog's central 68 % and 95 % intervals from its quantiles.
            pts = []
            for lv, (a, b) in ((0.68, ("q16", "q84")), (0.95, ("q025", "q975"))):
                vals = []
                for t in r.targets:
                    if t not in truth:
                        continue
                    tt = np.where(r.ok, truth[t], np.nan)
                    cov, k = M.quantile_coverage(r.col(f"{t}_{a}", n), r.col(f"{t}_{b}", n), tt)
                    if k:
                        vals.append(cov)
                pts.append(np.mean(vals) if vals else np.nan)
            if np.isfinite(pts).any():
                ax_c.plot([0.68, 0.95], pts, ls="none", marker="s", ms=8, mfc="none", mew=2,
                          color=r.colour, label=f"{r.label} (catalog 68/95 % quantiles)")
                any_cov = True
            notes.append(f"{r.label}: no posterior samples ({r.calib_note}); coverage from "
                         f"the catalog's quantiles, no TARP")
    if not any_cov:
        page.skip("calibration curves", "; ".join(notes) or "no truths")
        return
    ax_c.set_xlabel("credibility level of the central interval", fontsize=9)
    ax_c.set_ylabel("observed coverage", fontsize=9)
    ax_c.set_title("marginal coverage" + (" (thin: single targets)" if any(
        r.calib is not None for r in usable) else ""), fontsize=10)
    ax_c.legend(fontsize=8, loc="upper left")
    ax_t.set_xlabel(r"credibility level $\alpha$", fontsize=9)
    ax_t.set_ylabel("expected coverage probability (ECP)", fontsize=9)
    ax_t.set_title("TARP (joint over targets)", fontsize=10)
    if any_tarp:
        ax_t.plot([0, 1], [0, 1], color="k", ls=":", lw=1)
        ax_t.legend(fontsize=8, loc="upper left")
    else:
        _note(ax_t, "no posterior samples with\nevery truth known")
    for ax in (ax_c, ax_t):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=8)
    page.figure(fig, "calibration.png",
                "Calibration. Left: fraction of galaxies whose truth lies in the central "
                "credible interval, against its credibility (on the diagonal: calibrated; "
                "below: over-confident; above: under-confident). Right: TARP expected coverage "
                "(Lemos et al. 2023) in model space, the diagonal for a calibrated joint "
                "posterior; ATC > 0 means under-confident. " + "; ".join(notes) + ".")


def _pit(page: _Page, runs: list[_Run]) -> None:
    have = [r for r in runs if r.calib is not None]
    if not have:
        page.skip("PIT histograms", "no run has posterior samples (no model, no kept samples)")
        return
    targets = list(dict.fromkeys(t for r in have for t in r.calib["targets"]))
    ncol = min(4, len(targets))
    nrow = math.ceil(len(targets) / ncol)
    fig, axes = _grid(nrow, ncol, 2.5, 1.9, left=0.7, wgap=0.45, hgap=0.75, top=0.75)
    axes = axes.ravel()
    for ax, t in zip(axes, targets):
        ymax = 1.5
        for r in have:
            if t not in r.calib["targets"]:
                continue
            d = r.calib["targets"].index(t)
            u = M.pit(r.calib["samples"][:, :, d], r.calib["truth"][:, d])
            u = u[np.isfinite(u)]
            if not u.size:
                continue
            bins = 10 if u.size < 500 else 20
            h, e = np.histogram(u, bins=bins, range=(0, 1), density=True)
            ax.stairs(h, e, color=r.colour, lw=1.6, baseline=None)
            ymax = max(ymax, float(h.max()) * 1.1)
        ax.axhline(1.0, color="k", ls=":", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, ymax)
        ax.set_title(label(t, False), fontsize=10)
        ax.set_xlabel("PIT", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    axes[0].set_ylabel("density", fontsize=9)
    fig.legend(handles=_legend_handles(have), loc="upper center", ncol=len(have),
               fontsize=9, frameon=False)
    page.figure(fig, "pit.png",
                "PIT histograms (the posterior CDF at the truth) per target on the calibration "
                "subset: flat at 1 when calibrated, U-shaped when over-confident, peaked when "
                "under-confident, tilted when biased.")


# ----------------------------------------------------------------------------------------------
# 7. Uncertainty decomposition
# ----------------------------------------------------------------------------------------------

def _uncertainty(page: _Page, truth: dict, runs: list[_Run]) -> None:
    n = truth["_n"]
    usable = [r for r in runs if r.cat is not None and r.targets]
    if not usable:
        page.skip("uncertainty decomposition", "no readable catalog")
        return
    targets = list(dict.fromkeys(t for r in usable for t in r.targets))
    ncol = min(4, len(targets))
    nrow = math.ceil(len(targets) / ncol)
    fig, axes = _grid(nrow, ncol, 2.5, 1.9, left=0.7, wgap=0.45, hgap=0.85, top=0.75)
    axes = axes.ravel()
    split_runs, total_runs = set(), set()
    for ax, t in zip(axes, targets):
        for r in usable:
            if t not in r.targets:
                continue
            alea, epi = r.col(f"{t}_std_aleatoric", n), r.col(f"{t}_std_epistemic", n)
            with np.errstate(invalid="ignore", divide="ignore"):
                if np.isfinite(alea).any() and np.isfinite(epi).any():
                    split_runs.add(r.label)
                    parts = [(np.log10(alea), "-"), (np.log10(epi), "--")]
                else:
                    total_runs.add(r.label)
                    parts = [(np.log10(r.col(f"{t}_std", n)), "-")]
            for v, ls in parts:
                v = v[r.ok & np.isfinite(v)]
                if v.size:
                    bins = int(np.clip(np.sqrt(v.size), 8, 40))
                    h, e = np.histogram(v, bins=bins, range=_range(v, lo=0.5, hi=99.5))
                    ax.stairs(h / max(h.sum(), 1), e, color=r.colour, ls=ls, lw=1.5,
                              baseline=None)
        unit = get_target(t).unit
        ax.set_xlabel(r"$\log_{10}\,\sigma$" + (f" [{_unit_tex(unit)}]" if unit else ""),
                      fontsize=8)
        ax.set_title(label(t, False), fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    axes[0].set_ylabel("fraction of galaxies", fontsize=9)
    from matplotlib.lines import Line2D

    handles = _legend_handles(usable)
    if split_runs:
        handles += [Line2D([], [], color="k", ls="-", label="aleatoric"),
                    Line2D([], [], color="k", ls="--", label="epistemic")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9,
               frameon=False)
    parts = []
    if split_runs:
        parts.append(f"aleatoric (solid, the spread within ensemble members) and epistemic "
                     f"(dashed, the spread between members) posterior std for "
                     f"{', '.join(sorted(split_runs))}")
    if total_runs:
        parts.append(f"the total posterior std for {', '.join(sorted(total_runs))} (no "
                     f"ensemble split in the catalog)")
    page.figure(fig, "uncertainty.png",
                "Distributions of the uncertainties per target, in physical units (log10 of "
                "the std): " + "; ".join(parts) + ".")


# ----------------------------------------------------------------------------------------------
# 8. VAE latent space (Siddiga, Mahmud & Martinez-Galarza, arXiv:2511.12737, Figs. 3 and 4)
# ----------------------------------------------------------------------------------------------

def _encode_latents(vae, data_uri: str, truth: dict, batch: int = 256) -> np.ndarray:
    """Latent means [N, latent] of the truth rows (NaN where the cutout is unusable),
    streamed: cutouts are read batch by batch and only mu is kept."""
    import torch

    if CUTOUT_COLUMN not in read_schema(data_uri).names:
        raise ValueError(f"{data_uri} has no cutout column (a photometry-only catalog)")
    n = truth["_n"]
    mu = np.full((n, vae.latent), np.nan, np.float32)
    want = truth[ID_COLUMN]
    scale = getattr(getattr(vae, "stats", None), "cutout_scale", None)
    expected = tuple(vae.config["image_shape"])
    for uri in shard_uris(data_uri):
        for b in _iter_shard_batches(uri, [ID_COLUMN, CUTOUT_COLUMN], batch_rows=batch):
            ids = b.column(ID_COLUMN).to_numpy(zero_copy_only=False).astype(np.int64)
            keep = np.isin(ids, want)
            if not keep.any():
                continue
            col = b.column(CUTOUT_COLUMN)
            img = cutout_array({CUTOUT_COLUMN: col.to_numpy_ndarray()
                                if hasattr(col, "to_numpy_ndarray")
                                else col.to_numpy(zero_copy_only=False)})
            img, ids = img[keep], ids[keep]
            if tuple(img.shape[1:]) != expected:
                raise ValueError(f"cutouts are {tuple(img.shape[1:])} but the VAE was trained "
                                 f"on {expected}")
            flat = img.reshape(len(img), -1)
            good = np.isfinite(flat).all(1) & (np.abs(flat).max(1, initial=0) > 0)
            if not good.any():
                continue
            img, ids = img[good], ids[good]
            if scale is None:
                # No training statistics saved with the VAE: the same stretch with this
                # batch's per-channel RMS.
                scale = np.sqrt((img.astype(np.float64) ** 2).mean(axis=(0, 2, 3))).tolist()
            s = np.asarray(scale, np.float32).reshape(1, -1, 1, 1)
            x = torch.from_numpy(np.arcsinh(img / s).astype(np.float32))
            with torch.no_grad():
                m, _ = vae.encode(x)
            idx = np.searchsorted(want, ids)
            mu[idx] = m.cpu().numpy()
    return mu


def _rgb(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[C, H, W] asinh-stretched g, r, i -> [H, W, 3] RGB in [0, 1] (i, r, g -> R, G, B)."""
    if img.shape[0] >= 3:
        rgb = np.stack([img[2], img[1], img[0]], -1)
    else:
        rgb = np.repeat(img.mean(0)[..., None], 3, -1)
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)


def _robust_standardise(x: np.ndarray, clip: float = 5.0) -> np.ndarray:
    """(x - median) / (1.4826 MAD) per column, clipped to +-``clip``: a few odd galaxies must
    not take over the embedding's axes."""
    m = np.nanmedian(x, 0)
    s = 1.4826 * np.nanmedian(np.abs(x - m), 0)
    s = np.where(s > 1e-8, s, np.where(np.nanstd(x, 0) > 1e-8, np.nanstd(x, 0), 1.0))
    return np.clip((x - m) / s, -clip, clip)


def _standardise(x: np.ndarray) -> np.ndarray:
    m = np.nanmean(x, 0)
    s = np.nanstd(x, 0)
    s = np.where(s > 1e-8, s, 1.0)
    return (x - m) / s


def _latent_traversal(page: _Page, truth: dict, vae, mu: np.ndarray) -> None:
    import torch

    good = np.isfinite(mu).all(1)
    if good.sum() < 20:
        page.skip("latent traversal", f"only {int(good.sum())} galaxies with usable cutouts")
        return
    z = mu[good].astype(np.float64)
    zs = _standardise(z)
    sd = z.std(0)
    active = sd > 1e-6
    rows = []   # (target, dim, coefficient, R^2 of the linear fit)
    for t in TARGETS:
        if t not in truth:
            continue
        y = target_matrix({t: truth[t][good]}, [t])[:, 0]
        ok = np.isfinite(y)
        if ok.sum() < 20 or np.std(y[ok]) == 0:
            continue
        ys = (y[ok] - y[ok].mean()) / y[ok].std()
        X = zs[ok][:, active]
        # Ridge with a tiny penalty: the plain least-squares fit, kept stable when the
        # latent dimensions outnumber or duplicate each other.
        lam = 1e-2 * len(ys)
        beta = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ ys)
        r2 = 1 - np.mean((ys - X @ beta) ** 2)
        coef = np.zeros(z.shape[1])
        coef[active] = beta
        for d in np.argsort(-np.abs(coef))[:2]:
            rows.append((t, int(d), float(coef[d]), float(r2)))
    if not rows:
        page.skip("latent traversal", "no target has enough truths among the encoded galaxies")
        return
    # The galaxy whose latent mean is nearest the median latent vector.
    base = z[np.argmin(((zs - np.median(zs, 0)) ** 2).sum(1))]
    steps = np.linspace(-3, 3, 7)
    codes = np.repeat(base[None], len(rows) * len(steps), 0).astype(np.float32)
    for i, (_, d, _, _) in enumerate(rows):
        codes[i * len(steps):(i + 1) * len(steps), d] += steps * sd[d]
    with torch.no_grad():
        imgs = vae.decode(torch.from_numpy(codes)).cpu().numpy()
    # Black at zero flux (the sky-subtracted background), white at the brightest decoded
    # pixels, never stretching less than the noise level (asinh(1) in the VAE's units), so
    # that a flat decoder output stays flat instead of becoming amplified noise.
    lo, hi = 0.0, max(float(np.percentile(imgs, 99.7)), 1.0)
    # One mosaic image per block of strips (one axes each: fast to lay out and draw); two
    # blocks side by side keep the figure about as wide as tall.
    nblk = 2 if len(rows) > 6 else 1
    per = math.ceil(len(rows) / nblk)
    C, H, W = imgs.shape[1:]
    gap = max(2, H // 16)
    ns = len(steps)
    cell, lab_w, top, bottom = 0.72, 1.75, 0.75, 0.15
    fig = _figure(nblk * (lab_w + ns * cell) + 0.2, per * cell + top + bottom)
    fw, fh = fig.get_size_inches()
    for blk in range(nblk):
        mine = list(range(blk * per, min((blk + 1) * per, len(rows))))
        mosaic = np.ones((per * (H + gap) - gap, ns * (W + gap) - gap, 3))
        for r_, i in enumerate(mine):
            for k in range(ns):
                y0, x0 = r_ * (H + gap), k * (W + gap)
                mosaic[y0:y0 + H, x0:x0 + W] = _rgb(imgs[i * ns + k], lo, hi)[::-1]
        x0 = (blk * (lab_w + ns * cell) + lab_w) / fw
        ax = fig.add_axes([x0, bottom / fh, ns * cell / fw, per * cell / fh])
        ax.imshow(mosaic, interpolation="nearest", aspect="auto")
        ax.set_xticks([k * (W + gap) + W / 2 for k in range(ns)],
                      [f"{s:+.0f}σ" if s else "0σ" for s in steps], fontsize=8)
        ax.xaxis.tick_top()
        ax.set_yticks([r_ * (H + gap) + H / 2 for r_ in range(len(mine))],
                      [f"{label(rows[i][0], False)}\n$z_{{{rows[i][1]}}}$, β = {rows[i][2]:+.2f}, "
                       f"$R^2$ = {rows[i][3]:.2f}" for i in mine], fontsize=8)
        ax.tick_params(length=0)
        for sp in ax.spines.values():
            sp.set_visible(False)
    fig.suptitle("VAE latent traversals: the two latent dimensions that predict each target "
                 "best, moved from −3σ to +3σ", fontsize=10, y=1 - 0.12 / fh)
    page.figure(fig, "latent_traversal.png",
                "Latent interpretability (as Siddiga et al. 2025, Fig. 3): for each target, a "
                "linear regression on the standardised latent means picks the two dimensions "
                "with the largest |coefficient| β (R²: of the linear fit on all dimensions); "
                "starting from the galaxy nearest the median latent vector, each is moved over "
                "−3..+3 of its standard deviation and "
                f"decoded ({int(good.sum())} galaxies encoded). Images: the VAE's asinh-stretched "
                "g, r, i as B, G, R, one stretch for all.")


def _embed(x: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D embedding: UMAP when importable, else PCA (numpy SVD)."""
    try:
        import umap  # type: ignore

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        pass
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    frac = (s[:2] ** 2).sum() / max((s ** 2).sum(), 1e-300)
    return xc @ vt[:2].T, f"PCA ({frac:.0%} of the variance)"


def _latent_embedding(page: _Page, truth: dict, mu: np.ndarray, seed: int) -> None:
    good = np.isfinite(mu).all(1)
    phot = truth.get("_phot")
    if good.sum() < 20:
        page.skip("latent embedding", f"only {int(good.sum())} galaxies with usable cutouts")
        return
    colour_by = [t for t in ("log_mstar", "log_mbh") if t in truth]
    if not colour_by:
        page.skip("latent embedding", "the data have neither log_mstar nor log_mbh")
        return
    sets = [("without photometry", good,
             lambda m: _robust_standardise(mu[m].astype(np.float64)))]
    if phot is not None:
        pg = good & np.isfinite(phot).all(1)
        sets.append(("with photometry", pg, lambda m: np.hstack(
            [_robust_standardise(mu[m].astype(np.float64)), _robust_standardise(phot[m])])))
    fig, axes = _grid(len(sets), len(colour_by), 3.9, 3.0, left=0.7, wgap=1.3, hgap=0.8)
    methods = []
    for i, (name, m, feats) in enumerate(sets):
        emb, method = _embed(feats(m), seed)
        methods.append(method)
        for j, t in enumerate(colour_by):
            ax = axes[i, j]
            c = truth[t][m]
            known = np.isfinite(c)
            ax.scatter(emb[~known, 0], emb[~known, 1], s=5, color="0.8", lw=0, rasterized=True)
            sc = ax.scatter(emb[known, 0], emb[known, 1], c=c[known], s=6, cmap="viridis",
                            lw=0, rasterized=True,
                            vmin=np.percentile(c[known], 2) if known.any() else None,
                            vmax=np.percentile(c[known], 98) if known.any() else None)
            cb = fig.colorbar(sc, ax=ax, shrink=0.9)
            cb.set_label(label(t), fontsize=9)
            cb.ax.tick_params(labelsize=8)
            ax.set_title(f"{name}: coloured by {label(t, False)}", fontsize=10)
            short = "PC" if method.startswith("PCA") else method
            ax.set_xlabel(f"{short} 1", fontsize=9)
            ax.set_ylabel(f"{short} 2", fontsize=9)
            ax.set_xlim(_range(emb[:, 0], lo=0.5, hi=99.5))
            ax.set_ylim(_range(emb[:, 1], lo=0.5, hi=99.5))
            ax.tick_params(labelsize=8)
    page.figure(fig, "latent_embedding.png",
                "2-D embeddings of the VAE latent means (as Siddiga et al. 2025, Fig. 4), "
                "without photometry (latents only) and with photometry (latents concatenated "
                "with the colours u-g, g-r, r-i, i-z and the r magnitude), every feature "
                "standardised by its median and MAD and clipped at ±5; method: "
                f"{', '.join(dict.fromkeys(methods))}; axes span the central 99 %. Colour: the "
                "true value; grey: unknown.")


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _summary_table(truth: dict, runs: list[_Run]) -> str:
    n = truth["_n"]
    lines = ["| run | target | R² | σ_NMAD | cov68 | cov95 | N |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.cat is None:
            continue
        for t in r.targets:
            if t not in truth or not np.isfinite(truth[t]).any():
                continue
            x, y = display(t, truth[t]), display(t, r.col(f"{t}_mean", n))
            m = r.ok & _finite(x, y)
            pm = M.point_metrics(y[m], x[m], t)
            cols = {f"{t}_{q}": r.col(f"{t}_{q}", n) for q in ("q16", "q84", "q025", "q975")}
            cov = M.summary_coverage({**cols, "status": r.cat["status"]}, truth[t], t)
            lines.append(f"| {r.label} | {t} | {pm['r2']:.3f} | {pm['sigma_nmad']:.3f} | "
                         f"{cov['coverage68']:.3f} | {cov['coverage95']:.3f} | {pm['n']} |")
    return "\n".join(lines)


def _demote(md: str, by: int = 2) -> str:
    return "\n".join(("#" * by + line) if line.startswith("#") else line
                     for line in md.splitlines())


# ----------------------------------------------------------------------------------------------
# Markdown -> HTML (just what this page uses: headings, tables, images, paragraphs, emphasis)
# ----------------------------------------------------------------------------------------------

def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", s)
    return s


def markdown_to_html(md: str, title: str = "raygal report") -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
           "line-height:1.4}img{max-width:100%;border:1px solid #ddd}table{border-collapse:"
           "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:"
           "right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
           "em{color:#444}</style>", "</head><body>"]
    lines = md.splitlines()
    para: list[str] = []

    def flush():
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append("<table>")
            for k, cells in enumerate(rows):
                if all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                    continue
                tag = "th" if k == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells)
                           + "</tr>")
            out.append("</table>")
            continue
        m_h = re.match(r"^(#{1,6}) (.*)$", line)
        m_img = re.match(r"^!\[(.*?)\]\((.*?)\)$", line)
        if m_h:
            flush()
            k = len(m_h.group(1))
            out.append(f"<h{k}>{_inline(m_h.group(2))}</h{k}>")
        elif m_img:
            flush()
            out.append(f"<p><img src=\"{html.escape(m_img.group(2))}\" "
                       f"alt=\"{html.escape(m_img.group(1))}\"></p>")
        elif not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------

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
        metrics: ``{label: raygal.evaluate.run.evaluate(...) result}``, shown as tables.
        max_points: at most this many galaxies (a deterministic subsample by objid hash).
        seed: seed of posterior sampling, TARP references and embeddings.
        calib_rows, calib_samples: galaxies and samples per galaxy for calibration figures.
        corner_galaxies, corner_samples: galaxies and samples per galaxy in corner plots.
    """
    storage.makedirs(out_dir)
    page = _Page(out_dir)
    truth = _load_truth(data_uri, max_points)
    rs: list[_Run] = []
    slugs: set[str] = set()
    for i, spec in enumerate(runs):
        lab = str(spec.get("label") or f"run {i + 1}")
        slug = _slug(lab)
        while slug in slugs:
            slug += f"-{i + 1}"
        slugs.add(slug)
        r = _Run(lab, slug, RUN_COLOURS[i % len(RUN_COLOURS)], spec["catalog"],
                 spec.get("model") or None)
        _load_run(r, data_uri, truth, max_points)
        rs.append(r)
    usable = [r for r in rs if r.cat is not None]

    # Rows with cutouts for posterior sampling: one streaming pass for every run's galaxies.
    _choose_ids(truth, usable, calib_rows, corner_galaxies)
    need = [x for r in usable for x in (r.calib_ids, r.corner_ids) if x is not None]
    rows = None
    if need and any(len(x) for x in need):
        try:
            rows = _read_rows(data_uri, np.concatenate(need))
        except Exception as exc:  # noqa: BLE001
            log.warning("report: cannot read rows for sampling: %s", exc)
    for r in usable:
        if rows is None:
            r.calib_note = "cannot read the calibration rows"
            continue
        try:
            _calibration_samples(r, rows, calib_samples, seed)
        except Exception as exc:  # noqa: BLE001
            log.warning("report: calibration samples of %s failed", r.label, exc_info=True)
            r.calib_note = f"sampling failed ({type(exc).__name__}: {exc})"

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

    page.h(2, "Accuracy")
    if usable:
        page.p("Point metrics of the posterior means and coverage of the catalog's 68 %/95 % "
               "intervals, on the galaxies shown (R² and σ_NMAD in the plotted space):")
        page.md(_summary_table(truth, usable))
    for r in usable:
        _section(page, f"predicted vs true ({r.label})", _pred_vs_true, truth, r)

    page.h(2, "Posteriors of single galaxies")
    for r in usable:
        _section(page, f"corner plot ({r.label})", _corner, rows, r, corner_samples, seed)

    page.h(2, "Physical relations")
    _section(page, "scaling relations", _scaling_relations, truth, usable)
    _section(page, "A_V-Dn4000 plane", _dust_age, truth, usable)
    _section(page, "BPT diagram", _bpt, truth, usable)

    page.h(2, "Calibration")
    _section(page, "calibration curves", _calibration, truth, usable, seed)
    _section(page, "PIT histograms", _pit, usable)

    page.h(2, "Uncertainty")
    _section(page, "uncertainty decomposition", _uncertainty, truth, usable)

    page.h(2, "VAE latent space")
    if not vae_uri:
        page.skip("latent traversal and embedding", "no VAE given (vae_uri)")
    else:
        try:
            from ..models.vae import load_vae

            vae = load_vae(vae_uri)
            mu = _encode_latents(vae, data_uri, truth)
        except Exception as exc:  # noqa: BLE001
            log.warning("report: no VAE latents: %s", exc)
            page.skip("latent traversal and embedding",
                      f"cannot encode with {vae_uri} ({type(exc).__name__}: {exc})")
        else:
            _section(page, "latent traversal", _latent_traversal, truth, vae, mu)
            _section(page, "latent embedding", _latent_embedding, truth, mu, seed)

    if metrics:
        from .run import format_table

        page.h(2, "Metrics")
        for lab, m in metrics.items():
            page.h(3, str(lab))
            try:
                page.md(_demote(format_table(m), 3))
            except Exception as exc:  # noqa: BLE001
                page.p(f"*metrics of {lab} cannot be shown: {type(exc).__name__}: {exc}*")

    md = page.markdown()
    storage.write_bytes(storage.join(out_dir, PAGE), md.encode())
    storage.write_bytes(storage.join(out_dir, HTML_PAGE), markdown_to_html(md).encode())
    return storage.join(out_dir, PAGE)


__all__ = ["make_report", "corner", "display", "label", "kauffmann03", "kewley01",
           "markdown_to_html"]
