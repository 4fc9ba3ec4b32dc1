"""Do the 64x64 mock cutouts show the latents the oracle uses? A small CNN regresses them.

Simulates N galaxies with gri cutouts and their latent morphology (``raygal.sim.latents``),
splits them by objid hash (``raygal.pipelines.split_of``), trains a small CNN (3 stride-2 conv
blocks, global average pooling, a linear head; CPU, one thread) to predict the standardised
latents from the cutouts alone (asinh-stretched in units of each band's sky noise), and prints
the test R^2 of each latent. It also prints the R^2 of two simple image moments (second-moment
axis ratio against the disk axis ratio, light-weighted radius against the half-light radius)
as a model-free check.

    python benchmarks/bench_image_latents.py               # 4000 galaxies, 20 epochs
    python benchmarks/bench_image_latents.py --quick       # seconds; what the tests run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Latents regressed from the images, and the transform applied before standardising.
LATENTS = {"lat_q_disk": None, "lat_inclination": None, "lat_bulge_fraction_r": None,
           "lat_r_e_pix": "log", "lat_knot_fraction": None, "lat_lane_depth_r": None,
           "lat_psf_fwhm": None}


def load(n: int, seed: int, image_size: int) -> dict:
    """{'x' [N, 3, S, S] stretched cutouts, 'y' [N, L] transformed latents, 'split' [N],
    'raw' {latent: [N]}}."""
    from raygal.inputs import as_numpy_batch, cutout_array
    from raygal.pipelines import split_of
    from raygal.schema import ID_COLUMN, CUTOUT_BANDS
    from raygal.sim import photometry, simulate_batch

    b = as_numpy_batch(simulate_batch(n, image_size=image_size, seed=seed, with_latents=True))
    img = cutout_array(b)
    # Sky noise per pixel (nanomaggies) per band: sqrt(sky / gain).
    noise = np.array([np.sqrt(photometry.sky_per_pixel(c) / photometry.BAND_NOISE[c][1])
                      for c in CUTOUT_BANDS], dtype=np.float32)
    x = np.arcsinh(img / noise[None, :, None, None]).astype(np.float32)
    raw = {k: np.asarray(b[k], np.float64) for k in LATENTS}
    y = np.stack([np.log(raw[k]) if tf == "log" else raw[k] for k, tf in LATENTS.items()], 1)
    return {"x": x, "y": y, "split": split_of(b[ID_COLUMN]), "raw": raw, "images": img}


def _cnn(n_out: int, width: int):
    import torch.nn as nn

    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b),
                             nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU())

    return nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, n_out))


def fit_cnn(x_tr, y_tr, x_va, y_va, *, width=16, epochs=20, lr=2e-3, batch=64, seed=0):
    """MSE regression of standardised y [N, L] from x [N, 3, S, S] with random flips and
    right-angle rotations (the latents do not change under them except the position angle,
    which is not regressed); returns the model at its best validation epoch."""
    import copy

    import torch

    torch.manual_seed(seed)
    xt, yt = torch.as_tensor(x_tr), torch.as_tensor(y_tr, dtype=torch.float32)
    xv, yv = torch.as_tensor(x_va), torch.as_tensor(y_va, dtype=torch.float32)
    model = _cnn(yt.shape[1], width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    best, best_state = float("inf"), None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            xb = xt[idx]
            k = int(torch.randint(4, (1,), generator=gen))
            xb = torch.rot90(xb, k, (2, 3))
            if torch.rand(1, generator=gen) < 0.5:
                xb = xb.flip(3)
            loss = ((model(xb) - yt[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            val = float(((model(xv) - yv) ** 2).mean())
        if val < best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model


def r2(y, pred) -> float:
    return float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def moment_checks(images: np.ndarray, raw: dict) -> dict:
    """R^2 of simple r-band image moments (inside 16 px of the centre) as linear predictors:
    the second-moment axis ratio for the disk axis ratio of disk-dominated galaxies, and the
    log light-weighted radius for the log half-light radius."""
    s = images.shape[-1]
    yy, xx = np.mgrid[:s, :s] - s // 2
    m = np.clip(images[:, 1], 0, None) * (xx**2 + yy**2 < 16**2)
    f = m.sum((1, 2))
    mxx, myy = (m * xx * xx).sum((1, 2)) / f, (m * yy * yy).sum((1, 2)) / f
    mxy = (m * xx * yy).sum((1, 2)) / f
    tr, det = mxx + myy, mxx * myy - mxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    q = np.sqrt(np.clip((tr / 2 - disc) / (tr / 2 + disc), 0, 1))
    rad = np.log(np.sqrt(tr))
    disk = raw["lat_bulge_fraction_r"] < 0.3

    def lin_r2(a, b):
        return r2(b, np.polyval(np.polyfit(a, b, 1), a))

    return {"moment_q_vs_q_disk (B/T < 0.3)": lin_r2(q[disk], raw["lat_q_disk"][disk]),
            "moment_radius_vs_log_r_e": lin_r2(rad, np.log(raw["lat_r_e_pix"]))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="tiny run (for the tests)")
    args = p.parse_args(argv)

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = 512 if args.quick else args.n
        t0 = time.perf_counter()
        d = load(n, args.seed, args.image_size)
        tr, va, te = (d["split"] == s for s in ("train", "val", "test"))
        mean, std = d["y"][tr].mean(0), d["y"][tr].std(0)
        ys = (d["y"] - mean) / std
        model = fit_cnn(d["x"][tr], ys[tr], d["x"][va], ys[va],
                        width=8 if args.quick else 16, epochs=2 if args.quick else args.epochs)
        with torch.no_grad():
            pred = model.eval()(torch.as_tensor(d["x"][te])).numpy() * std + mean
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    res = {"n": n, "image_size": args.image_size, "n_test": int(te.sum()), "seconds": seconds,
           "cnn_r2": {k: r2(d["y"][te, j], pred[:, j]) for j, k in enumerate(LATENTS)},
           "moments_r2": moment_checks(d["images"], d["raw"])}
    print(f"latents from {args.image_size}x{args.image_size} cutouts: {n} galaxies, "
          f"{res['n_test']} held out, {seconds:.0f} s")
    for k, v in res["cnn_r2"].items():
        tf = LATENTS[k]
        print(f"  CNN  {(f'log {k}' if tf else k):<28} R^2 = {v:6.3f}")
    for k, v in res["moments_r2"].items():
        print(f"  moments  {k:<36} R^2 = {v:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
