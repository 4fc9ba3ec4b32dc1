"""Small SDSS-like inputs for the ingest tests, written with astropy / Pillow / plain text, with
the facts a test needs to check what ingest made of them (``truth`` dicts)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

BANDS = "ugriz"


# ----------------------------------------------------------------------------------------------
# CasJobs-like FITS tables
# ----------------------------------------------------------------------------------------------

def write_casjobs_fits(folder: Path, n: int = 40, seed: int = 0) -> dict:
    """PhotoObj (x SpecObj ids), SpecObj, galSpecExtra, galSpecLine, galSpecIndx as CasJobs
    writes them (mixed-case names, int64 objID, unsigned 64-bit specObjID, -9999 sentinels).

    Row k is a GALAXY except k % 10 == 3 (STAR) and k % 10 == 7 (QSO). Planted problems:
    row 1 dered_u = -9999, row 2 modelMagErr_g = NaN, row 4 r = 30.5 (non-detection), row 5
    lgm_tot_p50 = -9999, row 6 oh_p50 = 11.5 (out of range), row 8 h_alpha_flux = -999 and
    rows 0 and 9 have no galSpec entry (left join leaves them null). galSpecExtra has an extra
    row for a specObjID that is not in PhotoObj.
    """
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    k = np.arange(n)
    objid = 1237648700000000000 + 1000 * k + 17
    specobjid = (np.uint64(2**63) + np.uint64(12345) * k.astype(np.uint64)).astype(np.uint64)
    cls = np.array(["STAR" if i % 10 == 3 else "QSO" if i % 10 == 7 else "GALAXY" for i in k])
    plate, mjd, fiber = 266 + k // 5, 51600 + k // 5, 1 + k

    dered = {b: rng.uniform(15.5, 19.5, n).astype(np.float32) for b in BANDS}
    err = {b: rng.uniform(0.01, 0.1, n).astype(np.float32) for b in BANDS}
    dered["u"][1] = -9999.0
    err["g"][2] = np.nan
    dered["r"][4] = 30.5
    photo = Table()
    photo["objID"] = objid.astype(np.int64)
    photo["specObjID"] = specobjid
    photo["ra"] = rng.uniform(0, 360, n)
    photo["dec"] = rng.uniform(-10, 60, n)
    for b in BANDS:
        photo[f"dered_{b}"] = dered[b]
        photo[f"modelMag_{b}"] = dered[b] + np.float32(0.1)
        photo[f"modelMagErr_{b}"] = err[b]
    photo.write(folder / "photoobj.fits", overwrite=True)

    spec = Table()
    spec["SPECOBJID"] = specobjid[::-1].copy()          # other order and case on purpose
    spec["z"] = rng.uniform(0.02, 0.3, n)[::-1].copy()
    spec["class"] = cls[::-1].copy()
    spec["plate"] = plate[::-1].astype(np.int16)
    spec["mjd"] = mjd[::-1].astype(np.int32)
    spec["fiberID"] = fiber[::-1].astype(np.int16)
    spec["velDisp"] = rng.uniform(60, 300, n)[::-1].copy()
    spec.write(folder / "specobj.fits", overwrite=True)

    has_galspec = (k != 0) & (k != 9)
    sid = np.concatenate([specobjid[has_galspec], np.array([np.uint64(2**63 - 1)])])
    m = len(sid)
    lgm = rng.uniform(9, 11.5, m)
    sfr = rng.uniform(-2, 1.5, m)
    oh = rng.uniform(8.3, 9.2, m)
    idx = {int(s): i for i, s in enumerate(sid)}
    lgm[idx[int(specobjid[5])]] = -9999.0
    oh[idx[int(specobjid[6])]] = 11.5
    extra = Table()
    extra["specObjID"] = sid
    extra["lgm_tot_p50"] = lgm
    extra["sfr_tot_p50"] = sfr
    extra["oh_p50"] = oh
    extra["bptclass"] = np.resize(np.array([1, 2, 3, 4, 5, -1], np.int16), m)
    extra.write(folder / "galspecextra.fits", overwrite=True)

    line = Table()
    line["specObjID"] = sid
    ha = rng.uniform(10, 500, m)
    line["h_beta_flux"] = ha / 3.0
    line["nii_6584_flux"] = ha / 2.0
    line["oiii_5007_flux"] = ha / 4.0
    ha[idx[int(specobjid[8])]] = -999.0
    line["h_alpha_flux"] = ha
    line["sigma_balmer"] = rng.uniform(50, 100, m)
    line.write(folder / "galspecline.fits", overwrite=True)

    indx = Table()
    indx["specObjID"] = sid
    indx["d4000_n"] = rng.uniform(1.1, 2.0, m)
    indx["lick_hd_a"] = rng.uniform(-2, 6, m)
    indx.write(folder / "galspecindx.fits", overwrite=True)

    return {"objid": objid, "specobjid": specobjid, "class": cls, "dered": dered, "err": err,
            "n_galaxies": int((cls == "GALAXY").sum()), "n_star": int((cls == "STAR").sum()),
            "n_qso": int((cls == "QSO").sum()), "lgm": dict(zip(sid.tolist(), lgm)),
            "z": dict(zip(spec["SPECOBJID"].tolist(), spec["z"])),
            "veldisp": dict(zip(spec["SPECOBJID"].tolist(), spec["velDisp"])),
            "has_galspec": has_galspec,
            "files": [folder / f for f in ("photoobj.fits", "specobj.fits", "galspecextra.fits",
                                           "galspecline.fits", "galspecindx.fits")]}


# ----------------------------------------------------------------------------------------------
# text catalogs
# ----------------------------------------------------------------------------------------------

def write_skyserver_csv(path: Path, n: int = 30, seed: int = 1) -> dict:
    """SkyServer-like CSV: float objid (lost digits, duplicated), GALAXY/STAR/QSO classes."""
    rng = np.random.default_rng(seed)
    classes = np.array(["GALAXY", "STAR", "QSO"])[rng.integers(0, 3, n)]
    classes[0] = "GALAXY"
    lines = ["objid,ra,dec,u,g,r,i,z,run,rerun,camcol,field,specobjid,class,redshift,plate,"
             "mjd,fiberid"]
    for k in range(n):
        mags = rng.uniform(15, 20, 5)
        if k == 2:
            mags[3] = 29.1   # a non-detection in i
        lines.append(",".join([
            "1.23764870457714E+018", f"{rng.uniform(0, 360):.6f}", f"{rng.uniform(-5, 5):.6f}",
            *(f"{m:.5f}" for m in mags), "752", "301", "4", "267", "3.72236013965159E+018",
            classes[k], f"{rng.uniform(0.01, 0.3):.6f}", str(300 + k), "51600", str(10 + k)]))
    path.write_text("\n".join(lines) + "\n")
    return {"class": classes, "n_galaxies": int((classes == "GALAXY").sum()),
            "n_star": int((classes == "STAR").sum()), "n_qso": int((classes == "QSO").sum())}


def write_annz(path: Path, n: int = 50, seed: int = 2) -> dict:
    """ANNz-like whitespace table (u g r i z err_u..err_z z_spec), with non-detections."""
    rng = np.random.default_rng(seed)
    mags = rng.uniform(14, 21, (n, 5))
    errs = rng.uniform(0.002, 0.1, (n, 5))
    mags[3, 0], errs[3, 0] = 29.5, 4.2     # faint and huge error
    mags[7, 1], errs[7, 1] = 24.0, 1.7     # huge error only
    mags[9, [0, 1, 3]] = 33.0              # three bands gone -> PHOT_BAD
    errs[9, [0, 1, 3]] = 5.0
    z = rng.uniform(0.01, 0.5, n)
    rows = [" ".join(f"{v:.8f}" for v in (*mags[i], *errs[i], z[i])) for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return {"mags": mags, "errs": errs, "z": z}


def write_lines(path: Path, av_path: Path, n: int = 12, seed: int = 3) -> dict:
    """lines_dn4000-like CSV (modelMag, dered, errors, F_* with -999) and its A_V table."""
    rng = np.random.default_rng(seed)
    cols = (["Objid", "plate", "mjd", "fiberid", "ra", "dec"]
            + [f"modelMag_{b}" for b in BANDS] + [f"dered_{b}" for b in BANDS]
            + [f"modelMagErr_{b}" for b in BANDS]
            + ["redshift", "F_Halpha", "F_Hbeta", "F_oiii", "F_nii", "Dn4000(obs)",
               "Dn4000(syn)", "BPT_class", "AGN_class"])
    out = [",".join(cols)]
    av_rows = ["plate,mjd,fiber_id,fuv_flux_obs,fuv_flux_syn,dn4000_synth,extinction"]
    flux = rng.uniform(10, 900, (n, 4))
    flux[2, 0] = -999.0
    flux[5, 3] = -999.0
    av = rng.uniform(0, 1, n)
    av[4] = -0.3                       # STARLIGHT can fit A_V < 0: outside [0, 6]
    for k in range(n):
        m = rng.uniform(15, 19, 5)
        out.append(",".join(map(str, [
            587728948510326821 + k, 267 + k, 51608, 28 + k, 149.0, -0.25, *m, *(m - 0.1),
            *rng.uniform(0.003, 0.03, 5), 0.06, *flux[k], 1.3, 1.35,
            ["SF", "Composite", "AGN"][k % 3], "NAN" if k % 3 else "Seyfert"])))
        if k != n - 1:                 # the last galaxy has no A_V row
            av_rows.append(f"{267 + k},51608,{28 + k},0.3,0.6,1.44,{av[k]:.4f}")
    path.write_text("\n".join(out) + "\n")
    av_path.write_text("\n".join(av_rows) + "\n")
    return {"flux": flux, "av": av, "n": n}


# ----------------------------------------------------------------------------------------------
# cutouts
# ----------------------------------------------------------------------------------------------

def jpeg_bytes(rgb: np.ndarray, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def fits_bytes(arr: np.ndarray, **header) -> bytes:
    from astropy.io import fits

    hdu = fits.PrimaryHDU(arr)
    for k, v in header.items():
        hdu.header[k] = v
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


def rgb(seed: int, size: int = 32) -> np.ndarray:
    """A smooth colour blob (JPEG keeps it within a few levels), different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    cx, cy, w = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * w * w))
    return np.stack([np.clip(255 * blob * a + b, 0, 255) for a, b in
                     zip(rng.uniform(0.5, 1, 3), rng.uniform(0, 40, 3))], -1).astype(np.uint8)


def write_image_set(folder: Path, kinds: list[str], size: int = 32, target: str = "oh_p50"
                    ) -> dict:
    """``catalog.csv`` (objID,<target>) + ``cutouts/<objID>.<ext>``; one row per ``kinds`` entry:
    jpg, png, fits_chw, fits_hwc, fits_2d, missing, corrupt_jpg, truncated_jpg, truncated_fits,
    wrong_shape_jpg, blank_png, nan_fits."""
    cut = folder / "cutouts"
    cut.mkdir(parents=True, exist_ok=True)
    ids = [1237648702973411443 + 7 * k for k in range(len(kinds))]
    vals = np.round(np.linspace(8.3, 9.1, len(kinds)), 4)
    names = {}
    for k, (oid, kind) in enumerate(zip(ids, kinds)):
        img = rgb(k, size)
        if kind == "jpg":
            data, ext = jpeg_bytes(img), "jpg"
        elif kind == "png":
            data, ext = jpeg_bytes(img, "PNG"), "png"
        elif kind == "fits_chw":
            data, ext = fits_bytes(img.transpose(2, 0, 1).astype(np.float32)), "fits"
        elif kind == "fits_hwc":
            data, ext = fits_bytes(img.astype(np.float32)), "fits"
        elif kind == "fits_2d":
            data, ext = fits_bytes(img[..., 0].astype(np.float32)), "fits"
        elif kind == "missing":
            continue
        elif kind == "corrupt_jpg":
            data, ext = b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 3, "jpg"
        elif kind == "truncated_jpg":
            data, ext = jpeg_bytes(img)[:200], "jpg"
        elif kind == "truncated_fits":
            data, ext = fits_bytes(img.transpose(2, 0, 1).astype(np.float32))[:4000], "fits"
        elif kind == "wrong_shape_jpg":
            data, ext = jpeg_bytes(rgb(k, size * 2)), "jpg"
        elif kind == "blank_png":
            data, ext = jpeg_bytes(np.zeros((size, size, 3), np.uint8), "PNG"), "png"
        elif kind == "nan_fits":
            a = img.transpose(2, 0, 1).astype(np.float32)
            a[0, 0, 0] = np.nan
            data, ext = fits_bytes(a), "fits"
        else:
            raise ValueError(kind)
        (cut / f"{oid}.{ext}").write_bytes(data)
        names[oid] = f"{oid}.{ext}"
    (folder / "catalog.csv").write_text(
        f"objID,{target}\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, vals)))
    return {"ids": ids, "values": vals, "kinds": kinds, "names": names}
