"""Model inputs from galaxy rows: photometric features, cutouts, targets, and their
normalisation statistics.

A *batch* is what Ray Data hands a worker: a dict of equal-length columns (numpy arrays or torch
tensors), or a pyarrow Table / pandas DataFrame, in the galaxy schema (``raygal.schema``).

Model space: each target's ``Target.forward`` (log10 for ``sigma_v``, log1p for line fluxes,
identity otherwise). Networks see model space standardised with ``NormStats``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .schema import (CUTOUT_COLUMN, FLAGS_COLUMN, ID_COLUMN, MAG_COLUMNS, MAGERR_COLUMNS, TARGETS,
                     get_target)

#: Photometric input features, in order: the four colours and the r-band magnitude.
PHOT_FEATURES = ("u-g", "g-r", "r-i", "i-z", "mag_r")
N_PHOT = len(PHOT_FEATURES)

STATUS_OK = "ok"
STATUS_BAD_PHOT = "bad_photometry"
STATUS_MISSING_CUTOUT = "missing_cutout"
STATUS_BAD_CUTOUT = "bad_cutout"
STATUS_MISSING_MAGERR = "missing_magerr"
STATUS_MISSING_REDSHIFT = "missing_redshift"
STATUS_OUT_OF_DOMAIN = "out_of_domain"
#: More than ``MAX_OUTSIDE_SUPPORT`` of a row's posterior draws are not finite in physical
#: units (a flow's far tail overflowing exp): its summary would not be trustworthy.
STATUS_OUTSIDE_SUPPORT = "outside_support"
#: How far outside the training range of a photometric feature a galaxy may lie, in that
#: feature's training standard deviations, before it is out of the model's domain.
DOMAIN_MARGIN = 0.5


def as_numpy_batch(batch) -> dict[str, np.ndarray]:
    """Any batch (dict of numpy/torch, pyarrow Table, pandas DataFrame) -> dict of numpy."""
    if isinstance(batch, dict):
        out = {}
        for k, v in batch.items():
            if hasattr(v, "detach"):
                v = v.detach().cpu().numpy()
            out[k] = np.asarray(v) if not isinstance(v, np.ndarray) else v
        return out
    try:
        import pyarrow as pa

        if isinstance(batch, pa.Table):
            out = {}
            for name in batch.column_names:
                col = batch.column(name)
                if name == CUTOUT_COLUMN or isinstance(col.type, pa.FixedShapeTensorType):
                    out[name] = col.combine_chunks().to_numpy_ndarray()
                else:
                    out[name] = col.to_numpy(zero_copy_only=False)
            return out
    except ImportError:  # pragma: no cover
        pass
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        return {c: np.stack(batch[c].to_numpy()) if c == CUTOUT_COLUMN
                else batch[c].to_numpy() for c in batch.columns}
    raise TypeError(f"unsupported batch type {type(batch).__name__}")


def batch_size(batch: dict) -> int:
    for v in batch.values():
        return len(v)
    return 0


def _float(col) -> np.ndarray:
    """A numeric column with nulls (None / masked) as NaN, as float64."""
    a = np.asarray(col)
    if a.dtype == object:
        a = np.array([np.nan if v is None else v for v in a], dtype=np.float64)
    return a.astype(np.float64, copy=False)


def phot_matrix(batch: dict) -> np.ndarray:
    """[B, 5] raw photometric features (u-g, g-r, r-i, i-z, r); NaN where a band is missing."""
    missing = [c for c in MAG_COLUMNS if c not in batch]
    if missing:
        raise KeyError(f"batch lacks photometry column(s) {', '.join(missing)}")
    mags = np.stack([_float(batch[c]) for c in MAG_COLUMNS], axis=1)
    return np.concatenate([mags[:, :-1] - mags[:, 1:], mags[:, 2:3]], axis=1)


def magerr_matrix(batch: dict) -> np.ndarray:
    """[B, 5] ugriz magnitude errors; NaN where missing (or non-positive)."""
    missing = [c for c in MAGERR_COLUMNS if c not in batch]
    if missing:
        raise KeyError(f"batch lacks magnitude-error column(s) {', '.join(missing)}")
    e = np.stack([_float(batch[c]) for c in MAGERR_COLUMNS], axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(e > 0, e, np.nan)


def cutout_array(batch: dict) -> np.ndarray | None:
    """[B, C, H, W] float32 cutouts, or None when the batch has no cutout column."""
    if CUTOUT_COLUMN not in batch:
        return None
    c = batch[CUTOUT_COLUMN]
    if isinstance(c, np.ndarray) and c.dtype != object:
        return c.astype(np.float32, copy=False)
    # Rows of a tensor column may arrive as an object array of arrays (or None).
    shapes = {np.shape(x) for x in c if x is not None}
    if len(shapes) > 1:
        raise ValueError(f"cutouts of several shapes in one batch: {sorted(shapes)}")
    shape = shapes.pop() if shapes else (0,)
    return np.stack([np.full(shape, np.nan, np.float32) if x is None else
                     np.asarray(x, np.float32) for x in c])


def row_status(batch: dict, needs_image: bool, needs_phot: bool = True) -> np.ndarray:
    """Per-row input status: 'ok', or why the row cannot be given a posterior."""
    n = batch_size(batch)
    status = np.full(n, STATUS_OK, dtype=object)
    if needs_phot:
        bad_phot = ~np.isfinite(phot_matrix(batch)).all(axis=1)
        status[bad_phot] = STATUS_BAD_PHOT
    if needs_image:
        img = cutout_array(batch)
        if img is None:
            status[:] = np.where(status == STATUS_OK, STATUS_MISSING_CUTOUT, status)
        else:
            flat = img.reshape(n, -1)
            finite = np.isfinite(flat).all(axis=1)
            with np.errstate(invalid="ignore"):
                blank = np.nanmax(np.abs(flat), axis=1, initial=0.0) == 0.0
            bad = ~finite | blank
            from .schema import Flag

            if FLAGS_COLUMN in batch:
                flags = np.asarray(batch[FLAGS_COLUMN]).astype(np.int64)
                missing = (flags & int(Flag.CUTOUT_MISSING)) != 0
                bad |= (flags & int(Flag.CUTOUT_BAD)) != 0
                status[missing & (status == STATUS_OK)] = STATUS_MISSING_CUTOUT
            status[bad & (status == STATUS_OK)] = STATUS_BAD_CUTOUT
    return status


def target_matrix(batch: dict, targets) -> np.ndarray:
    """[B, D] targets in model space (transform applied); NaN where missing or outside the
    transform's domain."""
    cols = []
    for name in targets:
        t = get_target(name)
        if name not in batch:
            cols.append(np.full(batch_size(batch), np.nan))
            continue
        x = _float(batch[name])
        ok = t.in_domain(x)
        y = np.full_like(x, np.nan)
        y[ok] = t.forward(x[ok])
        cols.append(y)
    return np.stack(cols, axis=1) if cols else np.zeros((batch_size(batch), 0))


def check_training_batch(batch: dict, targets, needs_image: bool, needs_phot: bool = True
                         ) -> None:
    """Raise a ValueError naming the column when training data is unusable: non-finite
    photometry, a blank/NaN cutout, or a target outside its transform's domain."""
    ids = np.asarray(batch.get(ID_COLUMN, np.arange(batch_size(batch))))
    phot = phot_matrix(batch) if needs_phot else np.zeros((batch_size(batch), 0))
    bad = ~np.isfinite(phot).all(axis=1)
    if bad.any():
        col = [c for c, m in zip(PHOT_FEATURES, (~np.isfinite(phot)).any(axis=0)) if m]
        raise ValueError(f"non-finite photometry ({', '.join(col)}) in {int(bad.sum())} "
                         f"training row(s), e.g. objid {ids[bad][0]}; filter them out first")
    if needs_image:
        img = cutout_array(batch)
        if img is None:
            raise ValueError(f"column '{CUTOUT_COLUMN}' missing: an image model needs cutouts "
                             f"(use inputs='phot' for a photometry-only model)")
        flat = img.reshape(len(img), -1)
        badimg = ~np.isfinite(flat).all(axis=1) | (np.abs(flat).max(axis=1) == 0)
        if badimg.any():
            raise ValueError(f"column '{CUTOUT_COLUMN}': {int(badimg.sum())} blank or "
                             f"non-finite cutout(s), e.g. objid {ids[badimg][0]}")
    for name in targets:
        if name not in batch:
            continue
        x = _float(batch[name])
        present = np.isfinite(x)
        bad = present & ~get_target(name).in_domain(x)
        if bad.any():
            raise ValueError(f"column '{name}': {int(bad.sum())} value(s) outside the domain of "
                             f"its {get_target(name).transform} transform, e.g. {x[bad][0]!r} "
                             f"at objid {ids[bad][0]}")


# ----------------------------------------------------------------------------------------------
# Normalisation statistics
# ----------------------------------------------------------------------------------------------

@dataclass
class NormStats:
    """Means and standard deviations that standardise network inputs and targets.

    Computed in one streaming pass (``StatsAccumulator``; ``raygal.pipelines.compute_stats`` runs it
    on Ray Data), persisted with the dataset and inside every saved model.
    """

    phot_mean: list = field(default_factory=lambda: [0.0] * N_PHOT)
    phot_std: list = field(default_factory=lambda: [1.0] * N_PHOT)
    target_mean: dict = field(default_factory=dict)     # model space
    target_std: dict = field(default_factory=dict)
    target_count: dict = field(default_factory=dict)
    cutout_scale: list | None = None                    # per-channel RMS, for asinh(x / scale)
    n_rows: int = 0
    magerr_mean: list | None = None                     # of log10(magnitude error), per band
    magerr_std: list | None = None
    phot_min: list | None = None                        # the training range of each feature
    phot_max: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NormStats":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def target_arrays(self, targets) -> tuple[np.ndarray, np.ndarray]:
        missing = [t for t in targets if t not in self.target_mean]
        if missing:
            raise KeyError(f"normalisation statistics lack target(s) {', '.join(missing)}")
        return (np.array([self.target_mean[t] for t in targets], np.float64),
                np.array([self.target_std[t] for t in targets], np.float64))

    # -- transforms used by every model ---------------------------------------------------
    def norm_phot(self, phot: np.ndarray) -> np.ndarray:
        return ((phot - np.asarray(self.phot_mean)) / np.asarray(self.phot_std)).astype(np.float32)

    def in_domain(self, phot: np.ndarray) -> np.ndarray:
        """[B] bool: raw photometric features [B, 5] inside the training range (widened by
        ``DOMAIN_MARGIN`` standard deviations); all True where no range was recorded."""
        if self.phot_min is None or self.phot_max is None:
            return np.ones(len(phot), bool)
        pad = DOMAIN_MARGIN * np.asarray(self.phot_std)
        with np.errstate(invalid="ignore"):
            return ((phot >= np.asarray(self.phot_min) - pad)
                    & (phot <= np.asarray(self.phot_max) + pad)).all(axis=1)

    def norm_magerr(self, err: np.ndarray) -> np.ndarray:
        """[B, 5] magnitude errors -> standardised log10 errors."""
        if self.magerr_mean is None:
            raise ValueError("normalisation statistics have no magnitude-error statistics (a "
                             "catalog without magerr_* columns?)")
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log10(err)
        return ((x - np.asarray(self.magerr_mean)) / np.asarray(self.magerr_std)
                ).astype(np.float32)

    def norm_cutout(self, img: np.ndarray) -> np.ndarray:
        """asinh stretch per channel: keeps faint outskirts and bright cores both in range."""
        if self.cutout_scale is None:
            raise ValueError("normalisation statistics have no cutout scale (photometry-only "
                             "data?)")
        s = np.asarray(self.cutout_scale, np.float32).reshape(1, -1, 1, 1)
        return np.arcsinh(img / s).astype(np.float32)

    def standardise(self, y: np.ndarray, targets) -> np.ndarray:
        m, s = self.target_arrays(targets)
        return ((y - m) / s).astype(np.float32)


class StatsAccumulator:
    """Streaming sums for ``NormStats``; ``update`` per batch, ``merge`` across workers."""

    def __init__(self, targets=tuple(TARGETS)):
        self.targets = tuple(targets)
        self.n = 0
        self.p = np.zeros((3, N_PHOT))            # count, sum, sum of squares
        self.t = {t: np.zeros(3) for t in self.targets}
        self.c: np.ndarray | None = None           # per channel: pixel count, sum of squares
        self.e = np.zeros((3, len(MAGERR_COLUMNS)))  # log10 magnitude errors
        self.lo = np.full(N_PHOT, np.inf)           # range of each photometric feature
        self.hi = np.full(N_PHOT, -np.inf)

    def update(self, batch) -> "StatsAccumulator":
        batch = as_numpy_batch(batch)
        self.n += batch_size(batch)
        phot = phot_matrix(batch)
        ok = np.isfinite(phot).all(axis=1)
        ph = phot[ok]
        self.p += np.stack([np.full(N_PHOT, len(ph)), ph.sum(0), (ph ** 2).sum(0)])
        if len(ph):
            self.lo = np.minimum(self.lo, ph.min(0))
            self.hi = np.maximum(self.hi, ph.max(0))
        y = target_matrix(batch, self.targets)
        for j, name in enumerate(self.targets):
            v = y[:, j][np.isfinite(y[:, j])]
            self.t[name] += [len(v), v.sum(), (v ** 2).sum()]
        if all(c in batch for c in MAGERR_COLUMNS):
            e = magerr_matrix(batch)
            with np.errstate(divide="ignore", invalid="ignore"):
                le = np.log10(e)
            fin = np.isfinite(le)
            le = np.where(fin, le, 0.0)
            self.e += np.stack([fin.sum(0), le.sum(0), (le ** 2).sum(0)])
        img = cutout_array(batch)
        if img is not None and img.size:
            # every finite cutout, whether or not the row has photometry (image-only
            # catalogs have none)
            good = np.isfinite(img.reshape(len(img), -1)).all(axis=1)
            im = img[good].astype(np.float64)
            part = np.stack([np.full(im.shape[1], im.shape[0] * im.shape[2] * im.shape[3]),
                             (im ** 2).sum(axis=(0, 2, 3))])
            self.c = part if self.c is None else self.c + part
        return self

    def merge(self, other: "StatsAccumulator") -> "StatsAccumulator":
        self.n += other.n
        self.p += other.p
        for k in self.t:
            self.t[k] += other.t[k]
        if other.c is not None:
            self.c = other.c.copy() if self.c is None else self.c + other.c
        self.e = self.e + other.e
        self.lo = np.minimum(self.lo, other.lo)
        self.hi = np.maximum(self.hi, other.hi)
        return self

    def state(self, channels: int = 0) -> dict[str, np.ndarray]:
        """The accumulator as flat arrays (one row of a Ray Data batch), for partial sums
        computed in parallel and merged with ``merge_state``. ``channels``: cutout channels
        (the width of the cutout sums, zero where this batch had none)."""
        c = self.c if self.c is not None else np.zeros((2, channels))
        return {"n": np.array([self.n], np.int64), "p": self.p.ravel(),
                "t": np.stack([self.t[k] for k in self.targets]).ravel()
                if self.targets else np.zeros(0),
                "c": c.ravel(), "has_c": np.array([self.c is not None]), "e": self.e.ravel(),
                "lo": self.lo, "hi": self.hi}

    def merge_state(self, st: dict) -> "StatsAccumulator":
        """Add a ``state()`` (of an accumulator with the same targets) to this one."""
        other = StatsAccumulator(self.targets)
        other.n = int(np.asarray(st["n"]).sum())
        other.p = np.asarray(st["p"], np.float64).reshape(other.p.shape)
        t = np.asarray(st["t"], np.float64).reshape(len(self.targets), 3)
        other.t = {k: t[j] for j, k in enumerate(self.targets)}
        if bool(np.asarray(st["has_c"]).any()):
            other.c = np.asarray(st["c"], np.float64).reshape(2, -1)
        other.e = np.asarray(st["e"], np.float64).reshape(other.e.shape)
        other.lo, other.hi = np.asarray(st["lo"]), np.asarray(st["hi"])
        return self.merge(other)

    @staticmethod
    def _mean_std(cnt, s, ss):
        if cnt < 2:
            return 0.0, 1.0
        m = s / cnt
        var = max(ss / cnt - m * m, 0.0)
        return float(m), float(max(np.sqrt(var), 1e-6))

    def finalize(self) -> NormStats:
        pm, ps = zip(*(self._mean_std(*self.p[:, j]) for j in range(N_PHOT)))
        tm, ts, tc = {}, {}, {}
        for k, (cnt, s, ss) in self.t.items():
            if cnt >= 2:
                tm[k], ts[k] = self._mean_std(cnt, s, ss)
                tc[k] = int(cnt)
        scale = None
        if self.c is not None:
            if not (self.c[0] > 0).all():
                raise ValueError("no finite cutout to compute the image scale from: every "
                                 "cutout has NaN or infinite pixels")
            scale = [float(max(np.sqrt(ss / cnt), 1e-12)) for cnt, ss in self.c.T]
        em = es = None
        if (self.e[0] >= 2).all():
            em, es = (list(v) for v in zip(*(self._mean_std(*self.e[:, j])
                                              for j in range(self.e.shape[1]))))
        lo = hi = None
        if np.isfinite(self.lo).all() and np.isfinite(self.hi).all():
            lo, hi = [float(v) for v in self.lo], [float(v) for v in self.hi]
        return NormStats(list(pm), list(ps), tm, ts, tc, scale, int(self.n), em, es, lo, hi)


# ----------------------------------------------------------------------------------------------
# The adapter from rows to network inputs
# ----------------------------------------------------------------------------------------------

#: What a model can see, joined with '+' in this order: the cutout, the photometry (colours
#: and r magnitude), the magnitude errors, the (spectroscopic) redshift.
INPUT_COMPONENTS = ("image", "phot", "err", "z")
#: The input kinds the command line offers.
INPUT_KINDS = ("image+phot", "phot", "image", "phot+err", "image+phot+err", "phot+z",
               "phot+err+z", "image+phot+z", "image+phot+err+z")


def parse_inputs(kind: str) -> tuple[str, ...]:
    """'image+phot+z' -> ('image', 'phot', 'z'): the components of an input kind, checked.

    >>> parse_inputs("phot+z")
    ('phot', 'z')
    """
    parts = tuple(p.strip() for p in str(kind).split("+"))
    unknown = [p for p in parts if p not in INPUT_COMPONENTS]
    if unknown or not parts or len(set(parts)) != len(parts):
        raise ValueError(f"inputs must be one of {INPUT_KINDS} (components "
                         f"{'+'.join(INPUT_COMPONENTS)}), not {kind!r}")
    if ("err" in parts or "z" in parts) and "phot" not in parts:
        raise ValueError(f"inputs {kind!r}: magnitude errors and redshift go with 'phot'")
    return tuple(c for c in INPUT_COMPONENTS if c in parts)


class ModelInputs:
    """The one adapter from galaxy rows to the float32 arrays the estimators take.

    Args:
        kind: which inputs (``INPUT_KINDS``): 'image+phot', 'phot', 'image', and photometry
            with its magnitude errors ('+err') and/or the redshift ('+z').
        stats: normalisation statistics of the training data.
        targets: the model's targets, in order (for ``theta`` and ``prepare``).
        image_shape: [C, H, W] the model was trained on; other shapes are refused.
        features_column: a column of precomputed image features (e.g. the frozen VAE's
            ``vae_features``) that stands in for the cutout when a batch has it.
        feature_dim: the width F that column must have.

    ``arrays(batch)`` gives, for the rows asked for:

    - ``phot`` [B, P]: standardised colours and r magnitude (P = 5), then the standardised
      log10 magnitude errors (5 more with 'err'), then the standardised redshift ('z');
    - ``image`` [B, C, H, W]: asinh-stretched cutouts, or ``features`` [B, F] when the batch
      carries ``features_column`` (kinds with images).

    ``prepare(batch)`` adds ``theta`` [B, D] (standardised model-space targets, NaN where
    missing) and ``objid``: it is what a Ray Data ``map_batches`` runs before the trainer, so
    CPU preprocessing overlaps training. ``status(batch)`` says per row whether a posterior
    can be computed ('ok') or why not, including 'out_of_domain' for a galaxy whose
    photometry lies outside what the model was trained on (``NormStats.in_domain``): the
    model would extrapolate, so it gives no posterior rather than a confident guess.

    >>> stats = NormStats(target_mean={"z": 0.1}, target_std={"z": 0.05})
    >>> rows = {f"mag_{b}": np.array([19.0, np.nan]) for b in "ugriz"} | {"z": np.array([0.2, 0.1])}
    >>> inputs = ModelInputs("phot", stats, ["z"])
    >>> list(inputs.status(rows))
    ['ok', 'bad_photometry']
    >>> inputs.arrays(rows, rows=np.array([0]))["phot"].shape
    (1, 5)
    """

    def __init__(self, kind: str, stats: NormStats, targets=(), image_shape=None,
                 features_column: str | None = None, feature_dim: int | None = None):
        self.components = parse_inputs(kind)
        self.kind = "+".join(self.components)
        self.stats = stats
        self.targets = tuple(targets)
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        self.features_column = features_column
        self.feature_dim = feature_dim

    @property
    def uses_phot(self) -> bool:
        return "phot" in self.components

    @property
    def uses_image(self) -> bool:
        return "image" in self.components

    @property
    def n_phot(self) -> int:
        """Width P of the ``phot`` array (0 without photometry)."""
        c = self.components
        return ("phot" in c) * N_PHOT + ("err" in c) * len(MAGERR_COLUMNS) + ("z" in c)

    def _phot(self, b: dict) -> np.ndarray:
        """[B, P] standardised photometric inputs (NaN where missing)."""
        parts = [self.stats.norm_phot(phot_matrix(b))]
        if "err" in self.components:
            parts.append(self.stats.norm_magerr(magerr_matrix(b)))
        if "z" in self.components:
            if "z" not in b:
                raise ValueError("this model takes the redshift as an input but the batch has "
                                 "no 'z' column")
            m, s = self.stats.target_arrays(["z"])
            parts.append(((_float(b["z"]) - m[0]) / s[0]).astype(np.float32)[:, None])
        return np.concatenate(parts, axis=1)

    def _has_features(self, b: dict) -> bool:
        return self.uses_image and bool(self.features_column) and self.features_column in b

    def _features(self, b: dict) -> np.ndarray:
        f = b[self.features_column]
        if getattr(f, "dtype", None) == object:
            f = np.stack([np.asarray(v, np.float32) for v in f])
        f = np.asarray(f, np.float32)
        if f.ndim != 2 or (self.feature_dim and f.shape[1] != self.feature_dim):
            raise ValueError(f"column '{self.features_column}' must be "
                             f"[B, {self.feature_dim or 'F'}], got {list(f.shape)}")
        return f

    def status(self, batch) -> np.ndarray:
        """[B] 'ok', or why the row cannot be given a posterior (``STATUS_*``)."""
        b = as_numpy_batch(batch)
        uses_features = self._has_features(b)
        status = row_status(b, self.uses_image and not uses_features, self.uses_phot)
        if self.uses_phot:
            out = ~self.stats.in_domain(phot_matrix(b))
            status[out & (status == STATUS_OK)] = STATUS_OUT_OF_DOMAIN
        if "err" in self.components:
            bad = ~np.isfinite(magerr_matrix(b)).all(axis=1)
            status[bad & (status == STATUS_OK)] = STATUS_MISSING_MAGERR
        if "z" in self.components:
            bad = ~np.isfinite(_float(b["z"])) if "z" in b else np.ones(len(status), bool)
            status[bad & (status == STATUS_OK)] = STATUS_MISSING_REDSHIFT
        if uses_features:
            feats = self._features(b)
            bad = ~np.isfinite(feats.reshape(len(feats), -1)).all(axis=1)
            status[bad & (status == STATUS_OK)] = STATUS_BAD_CUTOUT
        return status

    def trainable(self, batch) -> np.ndarray:
        """[B] bool: rows a model can learn from. The training range is no limit here (it is
        what the statistics describe, and statistics from another sample may be narrower)."""
        status = self.status(batch)
        return (status == STATUS_OK) | (status == STATUS_OUT_OF_DOMAIN)

    def arrays(self, batch, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Network inputs of ``rows`` (default: all) of a batch: ``phot``, ``image`` or
        ``features`` (see the class docstring)."""
        b = as_numpy_batch(batch)
        rows = np.arange(batch_size(b)) if rows is None else rows
        out = {}
        if self.uses_phot:
            out["phot"] = self._phot(b)[rows]
        if self._has_features(b):
            out["features"] = np.ascontiguousarray(self._features(b)[rows])
        elif self.uses_image:
            img = cutout_array(b)
            if img is None:
                raise ValueError(f"this model uses images but the batch has no "
                                 f"'{CUTOUT_COLUMN}' column")
            if self.image_shape is not None and tuple(img.shape[1:]) != self.image_shape:
                raise ValueError(f"cutouts of shape {tuple(img.shape[1:])} do not fit this "
                                 f"model, trained on {self.image_shape}")
            out["image"] = self.stats.norm_cutout(img[rows])
        return out

    def theta(self, batch) -> np.ndarray:
        """[B, D] standardised model-space targets; NaN where missing."""
        b = as_numpy_batch(batch)
        if not self.targets:
            return np.zeros((batch_size(b), 0), np.float32)
        return self.stats.standardise(target_matrix(b, self.targets), self.targets)

    def prepare(self, batch) -> dict[str, np.ndarray]:
        """Training inputs of every row: ``arrays`` plus ``theta`` and ``objid``.

        Raises a ValueError naming the column for unusable training data."""
        b = as_numpy_batch(batch)
        check_training_batch(b, self.targets, self.uses_image and not self._has_features(b),
                             self.uses_phot)
        bad = ~self.trainable(b)
        if bad.any():
            ids = np.asarray(b.get(ID_COLUMN, np.arange(batch_size(b))))
            raise ValueError(f"{int(bad.sum())} training row(s) unusable for inputs "
                             f"{self.kind!r} ({self.status(b)[bad][0]}), e.g. objid "
                             f"{ids[bad][0]}; filter them out first")
        out = self.arrays(b)
        out["theta"] = self.theta(b)
        out["objid"] = np.asarray(b.get(ID_COLUMN, np.arange(batch_size(b))), np.int64)
        return out

    def __call__(self, batch) -> dict[str, np.ndarray]:
        """``prepare``: lets a ``ModelInputs`` be a Ray Data ``map_batches`` function."""
        return self.prepare(batch)
