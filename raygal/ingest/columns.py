"""Which source column becomes which raygal field, case-insensitively.

SDSS catalogs name the same quantity many ways (CasJobs ``modelMag_u``, SkyServer ``u``, MPA-JHU
``lgm_tot_p50``, the lines table's ``F_Halpha``). This module holds those names once, so every
reader maps columns the same way, and the "missing column" error lists what was expected and
what the file has.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from raygal.schema import BANDS

from .errors import IngestError

#: Magnitude families, in the order ``mags="auto"`` prefers them. Extinction-corrected
#: ``dered`` first, because the data model stores extinction-corrected magnitudes where the
#: source gives them; its errors are the model-magnitude errors (dereddening adds none).
MAG_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dered": ("dered_{b}", ("modelmagerr_{b}", "dered_err_{b}")),
    "model": ("modelmag_{b}", ("modelmagerr_{b}",)),
    "cmodel": ("cmodelmag_{b}", ("cmodelmagerr_{b}",)),
    "petro": ("petromag_{b}", ("petromagerr_{b}",)),
    "mag": ("mag_{b}", ("magerr_{b}",)),
    # Bare u, g, r, i, z: SkyServer/PhotoObj shorthand for modelMag, and the ANNz layout.
    "plain": ("{b}", ("err_{b}", "{b}_err", "magerr_{b}", "err{b}")),
}

#: raygal target -> source names (lower case). ``z`` alone means the redshift only when the
#: table does not use bare ``u g r i z`` magnitudes (see ``resolve``).
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "z": ("redshift", "z_spec", "zspec", "specz", "z"),
    "log_mstar": ("log_mstar", "lgm_tot_p50"),
    "log_sfr": ("log_sfr", "sfr_tot_p50"),
    "oh12": ("oh12", "oh_p50"),
    "log_mbh": ("log_mbh",),
    # Stellar velocity dispersion: SpecObj velDisp, galSpecInfo v_disp (sigma_balmer is the
    # gas line width, not the stellar one, so it is deliberately not mapped).
    "sigma_v": ("sigma_v", "veldisp", "v_disp"),
    "dn4000": ("dn4000", "d4000_n", "dn4000(obs)"),
    "av": ("av",),
    # MPA-JHU galSpecLine and the lines table are both in 1e-17 erg/s/cm^2 already.
    "flux_halpha": ("flux_halpha", "h_alpha_flux", "f_halpha"),
    "flux_hbeta": ("flux_hbeta", "h_beta_flux", "f_hbeta"),
    "flux_nii": ("flux_nii", "nii_6584_flux", "f_nii"),
    "flux_oiii": ("flux_oiii", "oiii_5007_flux", "f_oiii"),
}

#: Identifier and bookkeeping columns.
ID_ALIASES: dict[str, tuple[str, ...]] = {
    "objid": ("objid", "bestobjid"),
    "specobjid": ("specobjid",),
    "ra": ("ra",),
    "dec": ("dec",),
    "plate": ("plate",),
    "mjd": ("mjd",),
    "fiberid": ("fiberid", "fiber_id"),
    "class": ("class",),
    "bpt_class": ("bpt_class", "bptclass"),
    "agn_class": ("agn_class",),
}


@dataclass
class ColumnMap:
    """raygal field -> source column name (original spelling) for one table."""

    source: dict[str, str] = field(default_factory=dict)
    ivar: dict[str, str] = field(default_factory=dict)   # field -> inverse-variance column
    mag_kind: str | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.source

    def get(self, name: str) -> str | None:
        return self.source.get(name)

    @property
    def has_photometry(self) -> bool:
        return any(f"mag_{b}" in self.source for b in BANDS)


def lower_index(names) -> dict[str, str]:
    """lower-case name -> original name (the first one wins on a case-only clash)."""
    out: dict[str, str] = {}
    for n in names:
        out.setdefault(n.strip().lower(), n)
    return out


def _pick_mag_kind(low: dict[str, str], mags: str, uri: str) -> str | None:
    def nbands(kind):
        return sum(MAG_KINDS[kind][0].format(b=b) in low for b in BANDS)

    if mags != "auto":
        if mags not in MAG_KINDS:
            raise ValueError(f"mags={mags!r}: choose one of auto, {', '.join(MAG_KINDS)}")
        return mags if nbands(mags) else None
    # Bare names count only as a full ugriz set: a lone 'z' or 'r' column is something else.
    candidates = [k for k in MAG_KINDS if nbands(k) and (k != "plain" or nbands(k) == 5)]
    if not candidates:
        return None
    full = [k for k in candidates if nbands(k) == 5]
    return full[0] if full else max(candidates, key=nbands)


def resolve(names, *, uri: str = "", mags: str = "auto", extra_aliases: dict | None = None
            ) -> ColumnMap:
    """Map a table's column ``names`` to raygal fields.

    ``extra_aliases`` (field -> names) adds format-specific names, e.g. the lines table's
    ``extinction`` for ``av``.
    """
    low = lower_index(names)
    cmap = ColumnMap()
    kind = _pick_mag_kind(low, mags, uri)
    used: set[str] = set()
    if kind is not None:
        cmap.mag_kind = kind
        mag_pat, err_pats = MAG_KINDS[kind]
        for b in BANDS:
            m = mag_pat.format(b=b)
            if m in low:
                cmap.source[f"mag_{b}"] = low[m]
                used.add(m)
                for iv in (f"{m}_ivar", f"{m}ivar", m.replace("mag_", "mag_ivar_")):
                    if iv != m and iv in low:
                        cmap.ivar[f"mag_{b}"] = low[iv]
                        break
            for e in err_pats:
                e = e.format(b=b)
                if e in low:
                    cmap.source[f"magerr_{b}"] = low[e]
                    used.add(e)
                    break
    aliases = {**ID_ALIASES, **TARGET_ALIASES}
    for name, extra in (extra_aliases or {}).items():
        aliases[name] = tuple(extra) + tuple(aliases.get(name, ()))
    for name, cands in aliases.items():
        for c in cands:
            if c in low and c not in used:
                cmap.source[name] = low[c]
                used.add(c)
                for iv in (f"{c}_ivar", f"{c}ivar"):
                    if iv in low:
                        cmap.ivar[name] = low[iv]
                        break
                break
    return cmap


def require(cmap: ColumnMap, fields, uri: str, names, what: str = "") -> None:
    """Raise an IngestError naming the missing field(s), the source names that would have been
    accepted, and the columns the file has."""
    missing = [f for f in fields if f not in cmap]
    if not missing:
        return
    accepted = []
    for f in missing:
        if f.startswith("mag_") or f.startswith("magerr_"):
            accepted.append(f"{f} (e.g. modelMag_{f[-1]}, dered_{f[-1]} or {f[-1]})")
        else:
            alias = {**ID_ALIASES, **TARGET_ALIASES}.get(f, (f,))
            accepted.append(f"{f} (any of {', '.join(alias)})")
    raise IngestError(uri, f"missing required column(s){' for ' + what if what else ''}: "
                           f"{'; '.join(accepted)}; columns present: {', '.join(names)}")


def check_bands(cmap: ColumnMap, uri: str, names, allow_missing: bool = False) -> list[str]:
    """A table with photometry must have all five magnitudes of its family, and either all
    five errors or none (SkyServer exports have none: rows are flagged MAGERR_MISSING). A
    partial set is an error naming what is missing, unless ``allow_missing``: then the
    missing fields are returned (to record in the manifest) and their rows are flagged."""
    if not cmap.has_photometry:
        return []
    missing = [f"mag_{b}" for b in BANDS if f"mag_{b}" not in cmap]
    errs = [f"magerr_{b}" for b in BANDS if f"magerr_{b}" not in cmap]
    if len(errs) < len(BANDS):
        missing += errs
    if missing and not allow_missing:
        require(cmap, missing, uri, names, "ugriz photometry (or pass allow_missing_columns="
                                           "True / --allow-missing-columns to flag the rows)")
    return missing
