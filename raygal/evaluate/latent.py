"""The VAE latent space as Siddiga, Mahmud & Martinez-Galarza (arXiv:2511.12737) show it:
latent means of survey cutouts (``encode``), the latent dimensions that predict each target
(``traversal_rows``) decoded along a traversal (``traverse``), and 2-D embeddings (``embed``).
The figures themselves are ``raygal.evaluate.plots.latent_traversal`` and
``latent_embedding``."""
from __future__ import annotations

import numpy as np

from ..inputs import cutout_array, target_matrix
from ..schema import CUTOUT_COLUMN, ID_COLUMN, TARGETS
from ..shards import read_schema, shard_uris
from .data import iter_batches, objids

#: the traversal: from -3 to +3 latent standard deviations
STEPS = np.linspace(-3, 3, 7)


def encode(vae, data_uri: str, ids: np.ndarray, batch: int = 256) -> np.ndarray:
    """Latent means [N, latent] of the rows ``ids`` (sorted objids; NaN where the cutout is
    unusable), streamed: cutouts are read batch by batch and only mu is kept."""
    import torch

    if CUTOUT_COLUMN not in read_schema(data_uri).names:
        raise ValueError(f"{data_uri} has no cutout column (a photometry-only catalog)")
    mu = np.full((len(ids), vae.latent), np.nan, np.float32)
    scale = getattr(getattr(vae, "stats", None), "cutout_scale", None)
    expected = tuple(vae.config["image_shape"])
    for uri in shard_uris(data_uri):
        for b in iter_batches(uri, [ID_COLUMN, CUTOUT_COLUMN], batch_rows=batch):
            bid = objids(b)
            keep = np.isin(bid, ids)
            if not keep.any():
                continue
            col = b.column(CUTOUT_COLUMN)
            img = cutout_array({CUTOUT_COLUMN: col.to_numpy_ndarray()
                                if hasattr(col, "to_numpy_ndarray")
                                else col.to_numpy(zero_copy_only=False)})
            img, bid = img[keep], bid[keep]
            if tuple(img.shape[1:]) != expected:
                raise ValueError(f"cutouts are {tuple(img.shape[1:])} but the VAE was trained "
                                 f"on {expected}")
            flat = img.reshape(len(img), -1)
            good = np.isfinite(flat).all(1) & (np.abs(flat).max(1, initial=0) > 0)
            if not good.any():
                continue
            img, bid = img[good], bid[good]
            if scale is None:
                # No training statistics saved with the VAE: the same stretch with this
                # batch's per-channel RMS.
                scale = np.sqrt((img.astype(np.float64) ** 2).mean(axis=(0, 2, 3))).tolist()
            s = np.asarray(scale, np.float32).reshape(1, -1, 1, 1)
            x = torch.from_numpy(np.arcsinh(img / s).astype(np.float32))
            with torch.no_grad():
                m, _ = vae.encode(x)
            mu[np.searchsorted(ids, bid)] = m.cpu().numpy()
    return mu


def robust_standardise(x: np.ndarray, clip: float = 5.0) -> np.ndarray:
    """(x - median) / (1.4826 MAD) per column, clipped to +-``clip``: a few odd galaxies must
    not take over the embedding's axes."""
    m = np.nanmedian(x, 0)
    s = 1.4826 * np.nanmedian(np.abs(x - m), 0)
    s = np.where(s > 1e-8, s, np.where(np.nanstd(x, 0) > 1e-8, np.nanstd(x, 0), 1.0))
    return np.clip((x - m) / s, -clip, clip)


def standardise(x: np.ndarray) -> np.ndarray:
    m = np.nanmean(x, 0)
    s = np.nanstd(x, 0)
    s = np.where(s > 1e-8, s, 1.0)
    return (x - m) / s


def traversal_rows(z: np.ndarray, truth: dict) -> list[tuple[str, int, float, float]]:
    """For each target with >= 20 known values among the latent means ``z`` [N, latent]
    (``truth``: physical [N] by target), the two latent dimensions with the largest
    |coefficient| in a linear fit of the standardised target on the standardised latents:
    [(target, dim, coefficient, R^2 of the fit on all dimensions)]."""
    zs = standardise(z)
    active = z.std(0) > 1e-6
    rows = []
    for t in TARGETS:
        if t not in truth:
            continue
        y = target_matrix({t: truth[t]}, [t])[:, 0]
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
    return rows


def traverse(vae, z: np.ndarray, rows, steps=STEPS) -> np.ndarray:
    """Decoded images [len(rows) * len(steps), C, H, W]: from the galaxy whose latent mean is
    nearest the median latent vector, each row's dimension moved by ``steps`` of its
    standard deviation."""
    import torch

    zs = standardise(z)
    base = z[np.argmin(((zs - np.median(zs, 0)) ** 2).sum(1))]
    sd = z.std(0)
    codes = np.repeat(base[None], len(rows) * len(steps), 0).astype(np.float32)
    for i, (_, d, _, _) in enumerate(rows):
        codes[i * len(steps):(i + 1) * len(steps), d] += steps * sd[d]
    with torch.no_grad():
        return vae.decode(torch.from_numpy(codes)).cpu().numpy()


def embed(x: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D embedding [N, 2] and its method: UMAP when importable, else PCA (numpy SVD)."""
    try:
        import umap  # type: ignore

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        pass
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    frac = (s[:2] ** 2).sum() / max((s ** 2).sum(), 1e-300)
    return xc @ vt[:2].T, f"PCA ({frac:.0%} of the variance)"
