"""Baseline regressors that a posterior has to beat: a random forest and a k-nearest-neighbour
regressor on the photometric features the models see (``raygal.inputs.phot_matrix``: u-g,
g-r, r-i, i-z and r), one per target, fitted in model space (log quantities in log) on training
rows and scored on the evaluated rows exactly as the posterior means are
(``raygal.evaluate.scores``).

Needs scikit-learn >= 1.4 (a raygal dependency).
"""
from __future__ import annotations

import numpy as np

from ..schema import get_target

#: the baselines and how they are built (sklearn estimators, made by ``_make``)
BASELINES = ("random_forest", "knn")
DESCRIPTION = {
    "random_forest": "random forest (100 trees, min 5 rows per leaf) on u-g, g-r, r-i, i-z, r",
    "knn": "k-nearest neighbours (k = 15, distance-weighted) on standardised u-g, g-r, r-i, "
           "i-z, r",
}


def check_available() -> None:
    """A clear ImportError when scikit-learn is missing."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError("raygal evaluate --baselines needs scikit-learn >= 1.4 (pip install "
                          "'scikit-learn>=1.4')") from None


def _make(name: str, seed: int):
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "random_forest":
        return RandomForestRegressor(n_estimators=100, min_samples_leaf=5, n_jobs=1,
                                     random_state=seed)
    if name == "knn":
        return make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=15,
                                                                   weights="distance"))
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")


def fit_predict(name: str, target: str, x_train: np.ndarray, y_train: np.ndarray,
                x_test: np.ndarray, seed: int = 0, chunk: int = 65536) -> tuple[np.ndarray, int]:
    """Fit baseline ``name`` to features [N, F] and physical truths [N] of ``target`` (rows
    with a NaN, or outside the target's transform, are left out) and predict physical values
    [M] for ``x_test`` (NaN where a feature is missing), in chunks of ``chunk`` rows.
    Returns (predictions, training rows used)."""
    check_available()
    tg = get_target(target)
    y = np.asarray(y_train, dtype=np.float64)
    use = np.isfinite(x_train).all(1) & tg.in_domain(y)
    pred = np.full(len(x_test), np.nan)
    k = int(use.sum())
    if k < 20:
        return pred, k
    model = _make(name, seed).fit(x_train[use], tg.forward(y[use]))
    rows = np.flatnonzero(np.isfinite(x_test).all(1))
    for a in range(0, len(rows), chunk):
        r = rows[a:a + chunk]
        pred[r] = tg.inverse(model.predict(x_test[r]))
    return pred, k


def cross_fit_predict(name: str, target: str, x: np.ndarray, y: np.ndarray, fold: np.ndarray,
                      seed: int = 0) -> tuple[np.ndarray, int]:
    """Two-fold cross-fitting when there are no separate training rows: rows of ``fold``
    (bool [N]) are predicted by a model fitted on the others and the other way round, so no
    row is predicted by a model that saw it. Returns (predictions [N], the smaller training
    fold's size)."""
    pred = np.full(len(x), np.nan)
    used = []
    for part in (fold, ~fold):
        p, k = fit_predict(name, target, x[~part], y[~part], x[part], seed)
        pred[part] = p
        used.append(k)
    return pred, min(used)
