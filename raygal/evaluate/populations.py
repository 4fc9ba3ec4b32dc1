"""Populations of galaxies that evaluation scores apart, so that a model that works on half of
the survey cannot hide behind an average.

- activity: star-forming vs quenched, by the true specific SFR, log10(SFR / M*) below
  ``SSFR_QUENCHED`` = -11 (log10 yr^-1) being quenched; where SFR or M* is unknown, a
  measured 12+log(O/H) (measurable only in star-forming galaxies) marks star-forming and an
  unmeasured one quenched; rows with neither are unclassified;
- redshift: bins of the true z (quartiles of the evaluated rows unless edges are given);
- r magnitude: bins of the observed r (quartiles unless edges are given).

Each population says how it is defined and how many rows it holds; rows that fall in none of
a group's populations are counted as ``unclassified`` in that group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: log10(sSFR / yr^-1) below which a galaxy is quenched (e.g. Wetzel et al. 2012; the valley
#: between the main sequence and the red sequence at z ~ 0.1)
SSFR_QUENCHED = -11.0
QUARTILES = (0.25, 0.5, 0.75)


@dataclass
class Population:
    name: str          # e.g. 'quenched', '0.06 <= z < 0.09'
    group: str         # 'activity', 'redshift' or 'r_mag'
    selection: str     # how it is defined, in words
    rows: np.ndarray   # [N] bool


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def activity(truth: dict) -> tuple[list[Population], dict]:
    """Star-forming and quenched populations from the truth; (populations, notes) where notes
    count the rows classified by each rule and those left unclassified."""
    n = len(truth["objid"])
    nan = np.full(n, np.nan)
    with np.errstate(invalid="ignore"):
        ssfr = _f(truth.get("log_sfr", nan)) - _f(truth.get("log_mstar", nan))
    by_ssfr = np.isfinite(ssfr)
    has_oh = "oh12" in truth
    by_oh = ~by_ssfr & has_oh
    oh_known = np.isfinite(_f(truth.get("oh12", nan)))
    with np.errstate(invalid="ignore"):
        sf = (by_ssfr & (ssfr >= SSFR_QUENCHED)) | (by_oh & oh_known)
        q = (by_ssfr & (ssfr < SSFR_QUENCHED)) | (by_oh & ~oh_known)
    rule = (f"log10 sSFR = log_sfr - log_mstar (true values) vs {SSFR_QUENCHED:g} /yr"
            + ("; where either is unknown, oh12 measured (star-forming) or not (quenched)"
               if has_oh else ""))
    pops = [Population("star-forming", "activity", f"{rule}: sSFR >= 1e-11 /yr", sf),
            Population("quenched", "activity", f"{rule}: sSFR < 1e-11 /yr", q)]
    notes = {"by_ssfr": int(by_ssfr.sum()), "by_oh12": int(by_oh.sum()),
             "unclassified": int((~sf & ~q).sum())}
    return pops, notes


def bin_edges(values, edges=None, decimals: int = 2) -> list[float]:
    """Inner bin edges: ``edges`` as given, else the quartiles of the finite ``values``
    rounded to ``decimals`` (duplicates merged); [] when there is nothing to bin."""
    if edges is not None:
        return sorted(float(e) for e in edges)
    v = _f(values)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return []
    return sorted({round(float(q), decimals) for q in np.quantile(v, QUARTILES)})


def binned(values, edges, group: str, symbol: str, source: str, fmt: str = "{:.2f}"
           ) -> list[Population]:
    """One population per bin (-inf, e1), [e1, e2), ..., [ek, inf) of ``values``."""
    v = _f(values)
    bounds = [-np.inf, *edges, np.inf]
    pops = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if np.isinf(lo):
            name = f"{symbol} < {fmt.format(hi)}"
        elif np.isinf(hi):
            name = f"{symbol} >= {fmt.format(lo)}"
        else:
            name = f"{fmt.format(lo)} <= {symbol} < {fmt.format(hi)}"
        with np.errstate(invalid="ignore"):
            rows = np.isfinite(v) & (v >= lo) & (v < hi)
        pops.append(Population(name, group, f"{source}: {name}", rows))
    return pops


def populations(truth: dict, z_edges=None, mag_edges=None) -> tuple[list[Population], dict]:
    """Every population of the evaluated rows (``truth``: arrays [N] by column name, with
    ``objid``), and notes on each group: its definition, edges and unclassified rows, or why
    the group is missing (e.g. no true redshift in the data)."""
    pops, notes = [], {}
    act, act_notes = activity(truth)
    if act_notes["by_ssfr"] + act_notes["by_oh12"]:
        pops += act
        notes["activity"] = act_notes | {"definition": act[0].selection.split(":")[0]}
    else:
        notes["activity"] = {"missing": "no true log_sfr and log_mstar, nor oh12, in the data"}
    n = len(truth["objid"])
    for group, col, symbol, source, edges, dec in (
            ("redshift", "z", "z", "true redshift", z_edges, 3),
            ("r_mag", "mag_r", "r", "observed r magnitude (AB)", mag_edges, 2)):
        v = _f(truth.get(col, np.full(n, np.nan)))
        e = bin_edges(v, edges, dec)
        if not np.isfinite(v).any() or not e:
            notes[group] = {"missing": f"no {source} in the data"}
            continue
        group_pops = binned(v, e, group, symbol, source, "{:.%df}" % dec)
        pops += group_pops
        notes[group] = {"edges": e, "source": source,
                        "edges_from": "given" if edges is not None else "quartiles",
                        "unclassified": int((~np.any([p.rows for p in group_pops], 0)).sum())}
    return pops, notes
