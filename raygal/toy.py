"""Problems whose posterior is known in closed form, for tests and calibration checks.

``linear_gaussian``: theta ~ N(mu0, diag(s0^2)) over identity-transform targets; the five
magnitudes are mag = 18 + A theta + N(0, noise^2). Colours and r are an invertible linear map
of the magnitudes, so the posterior given raygal's photometric features equals the posterior
given the magnitudes, which is Gaussian:

    Sigma_post = (diag(1/s0^2) + A^T A / noise^2)^-1
    mu_post    = Sigma_post (mu0 / s0^2 + A^T (mag - 18) / noise^2)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schema import IDENTITY, MAG_COLUMNS, get_target

DEFAULT_TARGETS = ("log_mstar", "log_sfr")
_PRIOR_MEAN = {"log_mstar": 10.0, "log_sfr": 0.0, "z": 0.1, "oh12": 8.8, "dn4000": 1.5,
               "av": 1.0, "log_mbh": 7.5}
_PRIOR_STD = {"log_mstar": 0.5, "log_sfr": 0.6, "z": 0.03, "oh12": 0.2, "dn4000": 0.2,
              "av": 0.4, "log_mbh": 0.6}


@dataclass
class LinearGaussianProblem:
    targets: tuple[str, ...]
    A: np.ndarray            # [5, D]
    mu0: np.ndarray          # [D]
    s0: np.ndarray           # [D]
    noise: float

    @property
    def post_cov(self) -> np.ndarray:
        prec = np.diag(1 / self.s0 ** 2) + self.A.T @ self.A / self.noise ** 2
        return np.linalg.inv(prec)

    def post_mean(self, batch) -> np.ndarray:
        """[B, D] analytic posterior means for a batch."""
        mags = np.stack([np.asarray(batch[c], np.float64) for c in MAG_COLUMNS], 1) - 18.0
        rhs = self.mu0 / self.s0 ** 2 + mags @ self.A / self.noise ** 2
        return rhs @ self.post_cov.T

    def simulate(self, n: int, seed: int = 0) -> tuple[dict, np.ndarray]:
        """(batch in the galaxy schema, true theta [n, D])."""
        rng = np.random.default_rng(seed)
        theta = self.mu0 + self.s0 * rng.standard_normal((n, len(self.targets)))
        mags = 18.0 + theta @ self.A.T + self.noise * rng.standard_normal((n, 5))
        batch = {"objid": np.arange(n, dtype=np.int64), "flags": np.zeros(n, np.int32)}
        for j, c in enumerate(MAG_COLUMNS):
            batch[c] = mags[:, j].astype(np.float32)
            batch[c.replace("mag_", "magerr_")] = np.full(n, self.noise, np.float32)
        for j, t in enumerate(self.targets):
            batch[t] = theta[:, j].astype(np.float32)
        return batch, theta


def linear_gaussian(targets=DEFAULT_TARGETS, noise: float = 0.5, seed: int = 0
                    ) -> LinearGaussianProblem:
    """A conditional linear-Gaussian problem over identity-transform ``targets``."""
    targets = tuple(targets)
    for t in targets:
        if get_target(t).transform is not IDENTITY:
            raise ValueError(f"linear_gaussian needs identity-transform targets, not {t}")
    rng = np.random.default_rng(1000 + seed)
    mu0 = np.array([_PRIOR_MEAN.get(t, 0.0) for t in targets])
    s0 = np.array([_PRIOR_STD.get(t, 1.0) for t in targets])
    # Scale A by 1/s0 so that every target is comparably informed by the photometry.
    A = rng.normal(0.0, 1.0, (5, len(targets))) / s0 * 0.6
    return LinearGaussianProblem(targets, A, mu0, s0, noise)


def random_catalog(n: int, cutout_shape=(3, 16, 16), seed: int = 0, source: str = "random"):
    """A pyarrow Table of ``n`` schema-valid galaxy rows with random (not physical) values: for
    exercising storage and pipelines where physics does not matter. ``cutout_shape=None`` gives
    a photometry-only table."""
    import pyarrow as pa

    from .schema import FLAGS_COLUMN, TARGETS, galaxy_schema

    rng = np.random.default_rng(seed)
    schema = galaxy_schema(cutout_shape)
    cols = {"objid": pa.array(np.arange(n, dtype=np.int64) + 1_000_000 * seed),
            "ra": pa.array(rng.uniform(0, 360, n)), "dec": pa.array(rng.uniform(-10, 10, n))}
    for c in MAG_COLUMNS:
        cols[c] = pa.array(rng.normal(17.5, 1.0, n).astype(np.float32))
        cols[c.replace("mag_", "magerr_")] = pa.array(rng.uniform(0.01, 0.1, n).astype(np.float32))
    if cutout_shape is not None:
        img = rng.normal(0.0, 0.05, (n, *cutout_shape)).astype(np.float32)
        img[..., cutout_shape[1] // 2, cutout_shape[2] // 2] += 5.0
        cols["cutout"] = pa.FixedShapeTensorArray.from_numpy_ndarray(img)
    for t in TARGETS.values():
        lo = max(t.lo, 0.01)
        hi = min(t.hi, lo + 5.0)
        cols[t.name] = pa.array(rng.uniform(lo, hi, n).astype(np.float32))
    cols[FLAGS_COLUMN] = pa.array(np.zeros(n, np.int32))
    cols["source"] = pa.array([source] * n)
    return pa.table(cols).select(schema.names).cast(schema)
