"""Figures of posteriors and their calibration: every function takes arrays and returns
(fig, axes), with no file, model or catalog in sight (``raygal.evaluate.report`` gathers the
arrays and writes the page).

Figures are Agg-backed ``matplotlib.figure.Figure`` objects made without pyplot (no global
state, safe off the main thread), laid out arithmetically with fixed panel sizes (constrained
layout costs seconds on figures of many panels). Values are shown in each target's display
space (``display``): physical, log10 for ``sigma_v``, log10(1 + F) for line fluxes.
"""
from __future__ import annotations

import math

import numpy as np

from ..schema import get_target
from . import metrics as M

DPI = 110
TRUTH_COLOUR = "0.35"
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf")
#: colours of the galaxies in a corner plot (apart from the run colours)
GALAXY_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9")
#: credibility levels of the coverage curves
COVERAGE_LEVELS = tuple(round(0.1 * k, 1) for k in range(1, 10))
#: below this many points a panel shows points, above it densities and contours
SMALL_SAMPLE = 1500
TRUTH_REFERENCE = ("the truth as faint grey points (black 68/95 % contours when there are more "
                   f"than {SMALL_SAMPLE} galaxies)")


# ----------------------------------------------------------------------------------------------
# Labels and display spaces
# ----------------------------------------------------------------------------------------------

def unit_tex(unit: str) -> str:
    """A schema unit string as matplotlib mathtext."""
    u = unit.replace("1e-17 erg / (s cm2)", r"$10^{-17}$ erg s$^{-1}$ cm$^{-2}$")
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
        s += f" [{unit_tex(tg.unit)}]"
    return s


def finite(*arrays) -> np.ndarray:
    """[N] rows where every array is finite."""
    ok = np.ones(len(arrays[0]), bool)
    for a in arrays:
        ok &= np.isfinite(np.asarray(a, dtype=np.float64))
    return ok


def plot_range(*arrays, lo=0.5, hi=99.5, pad=0.06) -> tuple[float, float]:
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
# Figure scaffolding and drawing helpers
# ----------------------------------------------------------------------------------------------

def new_figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI)


def grid(nrow: int, ncol: int, panel_w: float, panel_h: float, left: float = 0.75,
         right: float = 0.2, bottom: float = 0.6, top: float = 0.5, wgap: float = 0.7,
         hgap: float = 0.7):
    """(figure, axes [nrow, ncol]) with fixed panel sizes and margins in inches."""
    w = left + right + ncol * panel_w + (ncol - 1) * wgap
    h = bottom + top + nrow * panel_h + (nrow - 1) * hgap
    fig = new_figure(w, h)
    axes = fig.subplots(nrow, ncol, squeeze=False, gridspec_kw=dict(
        left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
        wspace=wgap / panel_w, hspace=hgap / panel_h))
    return fig, axes


def _panels(n: int, ncol_max: int, panel_w: float, panel_h: float, **kw):
    """A grid of at least ``n`` panels (``ncol_max`` per row), the spare ones hidden;
    returns (fig, flat axes [n])."""
    ncol = min(ncol_max, n)
    fig, axes = grid(math.ceil(n / ncol), ncol, panel_w, panel_h, **kw)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _run_cmap(colour: str):
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("run", ["#ffffff", colour])


def _smooth(h: np.ndarray) -> np.ndarray:
    k = np.array([0.25, 0.5, 0.25])
    h = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, h)
    return np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, h)


def contours(ax, x, y, xr, yr, colour, bins=None, levels=(0.68, 0.95), **kw) -> bool:
    """Lines enclosing ``levels`` of the points (highest-density regions of a smoothed 2-D
    histogram, ``bins`` per axis, by default growing as sqrt(N)); False if there are too few
    points."""
    ok = finite(x, y)
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


def density(ax, x, y, xr, yr, colour, n_small: int = SMALL_SAMPLE) -> None:
    """Points for small samples, a shaded 2-D histogram for large ones."""
    ok = finite(x, y)
    if ok.sum() < n_small:
        ax.scatter(x[ok], y[ok], s=7, color=colour, alpha=0.55, lw=0, rasterized=True)
        return
    bins = int(np.clip(np.sqrt(ok.sum()) / 1.5, 20, 60))
    h, xe, ye = np.histogram2d(x[ok], y[ok], bins=bins, range=[xr, yr])
    from matplotlib.colors import PowerNorm

    ax.pcolormesh(xe, ye, np.where(h > 0, h, np.nan).T, cmap=_run_cmap(colour),
                  norm=PowerNorm(0.5, vmin=0, vmax=max(h.max(), 1)), rasterized=True)


def truth_reference(ax, x, y, xr, yr, n_small: int = SMALL_SAMPLE) -> None:
    """The truth under a run's panel: grey points for small samples (where density contours
    would be noise), 68/95 % contours in black for large ones."""
    ok = finite(x, y)
    if ok.sum() < n_small:
        ax.scatter(x[ok], y[ok], s=7, color=TRUTH_COLOUR, alpha=0.3, lw=0, rasterized=True,
                   zorder=0)
    else:
        contours(ax, x, y, xr, yr, "k", lw=0.9)


def note(ax, text: str) -> None:
    """A grey message in place of a panel's content."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def legend_handles(runs, truth: bool = False):
    """Line handles for (label, colour) pairs, with a 'truth' one first if asked."""
    from matplotlib.lines import Line2D

    h = [Line2D([], [], color=TRUTH_COLOUR, lw=2, label="truth")] if truth else []
    return h + [Line2D([], [], color=c, lw=2, label=lab) for lab, c in runs]


def rgb(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[C, H, W] g, r, i -> [H, W, 3] RGB in [0, 1] (i, r, g -> R, G, B), linear between
    ``lo`` and ``hi``."""
    if img.shape[0] >= 3:
        out = np.stack([img[2], img[1], img[0]], -1)
    else:
        out = np.repeat(img.mean(0)[..., None], 3, -1)
    return np.clip((out - lo) / max(hi - lo, 1e-6), 0, 1)


def cutout_rgb(img: np.ndarray) -> np.ndarray:
    """A survey cutout [C, H, W] (fluxes) as a displayable [H, W, 3]: asinh stretch scaled by
    its own per-image noise-to-peak range, so faint and bright galaxies both show."""
    x = np.nan_to_num(np.asarray(img, np.float64))
    s = max(float(np.percentile(np.abs(x), 50)), 1e-12)
    y = np.arcsinh(x / (3 * s))
    return rgb(y, 0.0, max(float(np.percentile(y, 99.5)), 1e-6))[::-1]


# ----------------------------------------------------------------------------------------------
# Predicted vs true
# ----------------------------------------------------------------------------------------------

def pred_vs_true(targets, truth: dict, mean: dict, lo: dict, hi: dict, ok, bars, colour: str,
                 title: str):
    """Posterior mean against the truth per target (physical [N] arrays by target; ``ok`` [N]
    rows to show, ``bars`` [N] rows with 16-84 % error bars), 1:1 line, R^2 and sigma_NMAD in
    the display space. Returns (fig, axes [len(targets)])."""
    fig, axes = _panels(len(targets), 3, 3.0, 3.0, left=0.8, wgap=0.9, hgap=0.75)
    for ax, t in zip(axes, targets):
        x, y = display(t, truth[t]), display(t, mean[t])
        lo_t, hi_t = display(t, lo[t]), display(t, hi[t])
        m = ok & finite(x, y)
        ax.scatter(x[m], y[m], s=5, color=colour, alpha=0.3, lw=0, rasterized=True)
        e = m & bars & finite(lo_t, hi_t)
        ax.errorbar(x[e], y[e], yerr=[np.clip(y[e] - lo_t[e], 0, None),
                                      np.clip(hi_t[e] - y[e], 0, None)],
                    fmt="o", ms=3, color=colour, ecolor=colour, mec="k", mew=0.4,
                    elinewidth=0.7, alpha=0.9, lw=0)
        r = plot_range(x[m], y[m])
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
    fig.suptitle(title)
    return fig, axes


# ----------------------------------------------------------------------------------------------
# Corner plots and marginals
# ----------------------------------------------------------------------------------------------

def corner(samples: list[np.ndarray], truths: list[np.ndarray], labels: list[str], colours,
           names=None, title: str | None = None):
    """A corner plot: for each of G galaxies, samples [S, D] (histograms on the diagonal,
    68/95 % contours over faint points below it) and its truth [D] (lines / stars).
    Returns (fig, axes [D, D])."""
    D = samples[0].shape[1]
    fig = new_figure(1.6 * D + 1.3, 1.6 * D + 1.1)
    w, h = fig.get_size_inches()
    axes = fig.subplots(D, D, squeeze=False, gridspec_kw=dict(
        left=1.0 / w, right=1 - 0.45 / w, bottom=0.85 / h, top=1 - 0.55 / h, wspace=0.08,
        hspace=0.08))
    from matplotlib.ticker import MaxNLocator
    rng = [plot_range(*[s[:, d] for s in samples], *[t[d:d + 1] for t in truths])
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
                    contours(ax, s[:, j], s[:, i], rng[j], rng[i], c)
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
    if title:
        fig.suptitle(title, x=0.02, ha="left")
    return fig, axes


def cutout_marginals(images: np.ndarray, names: list[str], labels: list[str],
                     samples: list[np.ndarray], truths: np.ndarray, runs, captions=None):
    """For each of G galaxies a row: its cutout [C, H, W] beside the marginal posteriors of
    D targets from each of R runs (``samples``: R arrays [G, S, D], display space) and the
    truth [G, D] (dashed). ``runs``: R (label, colour) pairs; ``captions``: a line per galaxy
    under its name. Returns (fig, axes [G, 1 + D])."""
    G, D = truths.shape
    fig, axes = grid(G, 1 + D, 1.9, 1.7, left=0.3, right=0.2, bottom=0.55, top=0.6,
                     wgap=0.35, hgap=0.75)
    for g in range(G):
        ax = axes[g, 0]
        ax.imshow(cutout_rgb(images[g]), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(names[g] + (f"\n{captions[g]}" if captions else ""), fontsize=8)
        for d in range(D):
            ax = axes[g, 1 + d]
            vals = [s[g, :, d] for s in samples]
            r = plot_range(*vals, truths[g, d:d + 1])
            for v, (_, colour) in zip(vals, runs):
                v = v[np.isfinite(v)]
                if v.size:
                    bins = int(np.clip(1.5 * np.sqrt(v.size), 10, 30))
                    ax.hist(v, bins=bins, range=r, density=True, histtype="step",
                            color=colour, lw=1.4)
            if np.isfinite(truths[g, d]):
                ax.axvline(truths[g, d], color="k", ls="--", lw=1)
            ax.set_xlim(r)
            ax.set_yticks([])
            ax.tick_params(labelsize=7)
            ax.set_xlabel(labels[d], fontsize=8)
    handles = legend_handles(runs)
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], color="k", ls="--", lw=1, label="truth"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9,
               frameon=False)
    return fig, axes


# ----------------------------------------------------------------------------------------------
# Pairs of targets: scaling relations, the dust-age plane, the BPT diagram
# ----------------------------------------------------------------------------------------------

def pair_panels(pairs, truth: dict, runs):
    """One row per pair (tx, ty) of targets: the truth, then each run's posterior means on
    the same galaxies, over the truth in grey.

    Args: ``truth``: physical [N] by target; ``runs``: (label, colour, means, ok) with
    ``means`` physical [N] by target (a run without one of a pair gets a note) and ``ok`` [N].
    Returns (fig, axes [len(pairs), 1 + len(runs)])."""
    fig, axes = grid(len(pairs), 1 + len(runs), 2.9, 2.9, left=0.8, wgap=0.85, hgap=0.9)
    for i, (tx, ty) in enumerate(pairs):
        xt, yt = display(tx, truth[tx]), display(ty, truth[ty])
        both = finite(xt, yt)
        xr, yr = plot_range(xt[both], lo=1, hi=99), plot_range(yt[both], lo=1, hi=99)
        panels = [("truth", TRUTH_COLOUR, xt, yt, both)]
        for lab, colour, means, ok in runs:
            if tx in means and ty in means:
                xp, yp = display(tx, means[tx]), display(ty, means[ty])
                # the same galaxies as the truth panel, so the two are comparable
                panels.append((lab, colour, xp, yp, both & ok & finite(xp, yp)))
            else:
                panels.append((lab, colour, None, None, None))
        for j, (lab, colour, x, y, m) in enumerate(panels):
            ax = axes[i, j]
            if x is None:
                note(ax, f"{label(tx, False)} or {label(ty, False)}\nnot a target of this run")
                ax.set_title(lab, fontsize=10)
                continue
            if j > 0:
                truth_reference(ax, xt[both], yt[both], xr, yr)
            density(ax, x[m], y[m], xr, yr, colour)
            ax.set_xlim(xr)
            ax.set_ylim(yr)
            ax.set_xlabel(label(tx), fontsize=9)
            ax.set_ylabel(label(ty), fontsize=9)
            ax.tick_params(labelsize=8)
            ax.set_title(f"{lab} (N = {int(m.sum())})", fontsize=10)
    return fig, axes


def kauffmann03(x):
    """log([O III]/Hbeta) of the Kauffmann et al. (2003) star-forming boundary at
    x = log([N II]/Halpha) < 0.05."""
    return 0.61 / (np.asarray(x) - 0.05) + 1.3


def kewley01(x):
    """The Kewley et al. (2001) maximum-starburst line, for x = log([N II]/Halpha) < 0.47."""
    return 0.61 / (np.asarray(x) - 0.47) + 1.19


def bpt_ratios(ha, hb, nii, oiii) -> tuple[np.ndarray, np.ndarray]:
    """(log [N II]/Halpha, log [O III]/Hbeta) [N], NaN unless all four fluxes are positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.log10(nii / ha)
        y = np.log10(oiii / hb)
    pos = (ha > 0) & (hb > 0) & (nii > 0) & (oiii > 0)
    return np.where(pos, x, np.nan), np.where(pos, y, np.nan)


def bpt(panels):
    """BPT diagrams: ``panels`` is [(label, colour, x, y)] of line ratios [N] (``bpt_ratios``),
    the truth first (drawn under the others). Returns (fig, axes [len(panels)])."""
    xr, yr = (-2.0, 1.0), (-1.5, 1.5)
    fig, axes = grid(1, len(panels), 3.0, 3.0, left=0.8, wgap=0.85)
    axes = axes[0]
    xk = np.linspace(xr[0], 0.0, 200)
    xw = np.linspace(xr[0], 0.40, 200)
    _, _, xt, yt = panels[0]
    for j, (lab, colour, x, y) in enumerate(panels):
        ax = axes[j]
        m = finite(x, y)
        if j > 0:
            truth_reference(ax, xt, yt, xr, yr)
        density(ax, x[m], y[m], xr, yr, colour)
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
    return fig, axes


# ----------------------------------------------------------------------------------------------
# Calibration: coverage, TARP, PIT
# ----------------------------------------------------------------------------------------------

def calibration(curves, quantile_points, tarps):
    """Coverage against credibility (left) and TARP expected coverage (right).

    Args:
        curves: [(label, colour, levels [L], coverage [K, L])]: K single-target curves per
            run, drawn thin, and their mean, drawn thick;
        quantile_points: [(label, colour, levels, coverage)]: catalog-quantile coverage of runs
            without samples, drawn as open squares;
        tarps: [(label, colour, alpha [A], ecp [A], atc, n)].
    Returns (fig, axes [2])."""
    fig, axes = grid(1, 2, 3.9, 3.9, left=0.8, wgap=0.9, top=0.4)
    ax_c, ax_t = axes[0]
    ax_c.plot([0, 1], [0, 1], color="k", ls=":", lw=1)
    for lab, colour, levels, cov in curves:
        for cv in cov:
            ax_c.plot(levels, cv, color=colour, lw=0.7, alpha=0.35)
        ax_c.plot(levels, np.nanmean(cov, 0), color=colour, lw=2.2, marker="o", ms=4,
                  label=f"{lab} (mean of {len(cov)} targets)")
    for lab, colour, levels, cov in quantile_points:
        ax_c.plot(levels, cov, ls="none", marker="s", ms=8, mfc="none", mew=2, color=colour,
                  label=f"{lab} (catalog 68/95 % quantiles)")
    ax_c.set_xlabel("credibility level of the central interval", fontsize=9)
    ax_c.set_ylabel("observed coverage", fontsize=9)
    ax_c.set_title("marginal coverage" + (" (thin: single targets)" if curves else ""),
                   fontsize=10)
    ax_c.legend(fontsize=8, loc="upper left")
    for lab, colour, alpha, ecp, atc, n in tarps:
        ax_t.plot(alpha, ecp, color=colour, lw=2, label=f"{lab}: ATC {atc:+.2f}, N = {n}")
    ax_t.set_xlabel(r"credibility level $\alpha$", fontsize=9)
    ax_t.set_ylabel("expected coverage probability (ECP)", fontsize=9)
    ax_t.set_title("TARP (joint over targets)", fontsize=10)
    if tarps:
        ax_t.plot([0, 1], [0, 1], color="k", ls=":", lw=1)
        ax_t.legend(fontsize=8, loc="upper left")
    else:
        note(ax_t, "no posterior samples with\nevery truth known")
    for ax in (ax_c, ax_t):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=8)
    return fig, axes[0]


def pit_histograms(targets, runs):
    """PIT histograms per target: ``runs`` is [(label, colour, {target: PIT values [N]})].
    Returns (fig, axes [len(targets)])."""
    fig, axes = _panels(len(targets), 4, 2.5, 1.9, left=0.7, wgap=0.45, hgap=0.75, top=0.75)
    for ax, t in zip(axes, targets):
        ymax = 1.5
        for _, colour, pits in runs:
            u = np.asarray(pits.get(t, []), np.float64)
            u = u[np.isfinite(u)]
            if not u.size:
                continue
            bins = 10 if u.size < 500 else 20
            h, e = np.histogram(u, bins=bins, range=(0, 1), density=True)
            ax.stairs(h, e, color=colour, lw=1.6, baseline=None)
            ymax = max(ymax, float(h.max()) * 1.1)
        ax.axhline(1.0, color="k", ls=":", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, ymax)
        ax.set_title(label(t, False), fontsize=10)
        ax.set_xlabel("PIT", fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("density", fontsize=9)
    fig.legend(handles=legend_handles([(lab, c) for lab, c, _ in runs]), loc="upper center",
               ncol=len(runs), fontsize=9, frameon=False)
    return fig, axes


# ----------------------------------------------------------------------------------------------
# Uncertainties
# ----------------------------------------------------------------------------------------------

def uncertainty(targets, runs, split: bool):
    """Histograms of log10 posterior std per target: ``runs`` is [(label, colour,
    {target: [(log10 std [N], linestyle)]})]; ``split`` adds aleatoric (solid) / epistemic
    (dashed) to the legend. Returns (fig, axes [len(targets)])."""
    fig, axes = _panels(len(targets), 4, 2.5, 1.9, left=0.7, wgap=0.45, hgap=0.85, top=0.75)
    for ax, t in zip(axes, targets):
        for _, colour, parts in runs:
            for v, ls in parts.get(t, []):
                v = v[np.isfinite(v)]
                if v.size:
                    bins = int(np.clip(np.sqrt(v.size), 8, 40))
                    h, e = np.histogram(v, bins=bins, range=plot_range(v))
                    ax.stairs(h / max(h.sum(), 1), e, color=colour, ls=ls, lw=1.5,
                              baseline=None)
        unit = get_target(t).unit
        ax.set_xlabel(r"$\log_{10}\,\sigma$" + (f" [{unit_tex(unit)}]" if unit else ""),
                      fontsize=8)
        ax.set_title(label(t, False), fontsize=10)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("fraction of galaxies", fontsize=9)
    from matplotlib.lines import Line2D

    handles = legend_handles([(lab, c) for lab, c, _ in runs])
    if split:
        handles += [Line2D([], [], color="k", ls="-", label="aleatoric"),
                    Line2D([], [], color="k", ls="--", label="epistemic")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9,
               frameon=False)
    return fig, axes


# ----------------------------------------------------------------------------------------------
# VAE latent space (Siddiga, Mahmud & Martinez-Galarza, arXiv:2511.12737, Figs. 3 and 4)
# ----------------------------------------------------------------------------------------------

def latent_traversal(imgs: np.ndarray, rows, steps):
    """Strips of decoded images: ``imgs`` [len(rows) * len(steps), C, H, W] (the VAE's
    asinh units), one strip per (target, dim, coefficient, R^2) of ``rows``, one column per
    step (in latent standard deviations). Returns (fig, axes [blocks])."""
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
    fig = new_figure(nblk * (lab_w + ns * cell) + 0.2, per * cell + top + bottom)
    fw, fh = fig.get_size_inches()
    axes = []
    for blk in range(nblk):
        mine = list(range(blk * per, min((blk + 1) * per, len(rows))))
        mosaic = np.ones((per * (H + gap) - gap, ns * (W + gap) - gap, 3))
        for r_, i in enumerate(mine):
            for k in range(ns):
                y0, x0 = r_ * (H + gap), k * (W + gap)
                mosaic[y0:y0 + H, x0:x0 + W] = rgb(imgs[i * ns + k], lo, hi)[::-1]
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
        axes.append(ax)
    fig.suptitle("VAE latent traversals: the two latent dimensions that predict each target "
                 "best, moved from −3σ to +3σ", fontsize=10, y=1 - 0.12 / fh)
    return fig, axes


def latent_embedding(sets, colour_by: list[str]):
    """2-D embeddings coloured by true values: ``sets`` is [(name, embedding [M, 2], method,
    {target: values [M]})], one row each; one column per target of ``colour_by``, unknown
    values grey. Returns (fig, axes [len(sets), len(colour_by)])."""
    fig, axes = grid(len(sets), len(colour_by), 3.9, 3.0, left=0.7, wgap=1.3, hgap=0.8)
    for i, (name, emb, method, values) in enumerate(sets):
        for j, t in enumerate(colour_by):
            ax = axes[i, j]
            c = values[t]
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
            ax.set_xlim(plot_range(emb[:, 0]))
            ax.set_ylim(plot_range(emb[:, 1]))
            ax.tick_params(labelsize=8)
    return fig, axes
