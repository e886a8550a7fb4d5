"""Recurrent-MZ evaluation protocols and claim predicates (Huang et al., Light Sci. Appl. 10:62, 2021).

Inference of a whole volume (Z, H, W) from M input planes by each method of the paper's comparison:
:func:`recurrent_mz_volume`, :func:`deepz_nearest_volume` (each input refocuses its own non-overlapping
sub-volume, Fig. 2–3), :func:`unet3d_volume` and :func:`interpolation_volume` (linear along z).

Scores (:func:`plane_metrics`) per output plane: PSNR and NRMSE against the scan (peak = the scan volume's
dynamic range), SSIM (skimage, same range) and a foreground-restricted NRMSE (:func:`foreground_mask`: a dark
background does not reward a smooth prediction). :func:`evaluate_methods` scores every test volume;
:func:`per_volume` averages the inferred planes (or the input planes) of each volume, the items every claim
rests on (its ± is the standard error over test volumes).

Beads (Fig. 3): :func:`bead_fwhm_at_truth` fits every bead at its known position — laterally on the plane
nearest its true z, axially on the x–z slice through its true centre — and returns the fit success beside the
FWHM; :func:`fwhm_kl` compares histograms with one extra bin for failed fits, so that a method whose beads
cannot be fitted is not judged on its few survivors.

Every ``*_claim`` returns a :class:`~refocuslib.evaluate.claims.Verdict` with its item count.
"""
from __future__ import annotations

import itertools
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from refocuslib import dpm as _dpm
from refocuslib import metrics
from refocuslib._validate import as_image_array, positive, positive_int
from refocuslib.evaluate.claims import Verdict, verdict

__all__ = ["METHODS", "uniform_dpms", "recurrent_mz_volume", "deepz_nearest_volume", "unet3d_volume",
           "interpolation_volume", "predict", "foreground_mask", "plane_metrics", "evaluate_methods",
           "per_volume", "paired_stats", "bead_fwhm_at_truth", "fwhm_kl", "fwhm_kl_bootstrap", "dof_extension", "permutation_rmse",
           "beats_baselines_claim", "input_planes_claim", "fwhm_kl_claim", "nonuniform_claim",
           "permutation_claim", "dpm_noise_claim", "repetition_claim", "repeated_like_deepz_claim"]

METHODS = ("recurrent_mz", "deepz", "unet3d", "interpolation")


# ----------------------------------------------------------------------------------------------- inference
def _model_device(model: torch.nn.Module):
    return next(model.parameters()).device


def uniform_dpms(z_inputs_um, z_outputs_um, shape_yx) -> np.ndarray:
    """DPMs (Z, M, H, W) in µm: entry [t, i] is the uniform map z_out[t] − z_in[i]."""
    zi = np.asarray(z_inputs_um, dtype=np.float64).ravel()
    zo = np.asarray(z_outputs_um, dtype=np.float64).ravel()
    if zi.size == 0 or zo.size == 0 or not (np.all(np.isfinite(zi)) and np.all(np.isfinite(zo))):
        raise ValueError("z_inputs_um/z_outputs_um: expected non-empty finite axial positions (µm)")
    h, w = shape_yx
    return np.broadcast_to((zo[:, None] - zi[None, :])[:, :, None, None], (zo.size, zi.size, h, w)).copy()


def _images(images) -> np.ndarray:
    return as_image_array(images, "images", ndim=3).astype(np.float32)


def recurrent_mz_volume(model, images, z_inputs_um, z_outputs_um, dpm_noise_um: float = 0.0,
                        noise_mode: str = "plane", rng=None, trained_range_um=None,
                        batch_planes: int = 16) -> np.ndarray:
    """Recurrent-MZ volume (Z, H, W) from ``images`` (M, H, W) acquired at ``z_inputs_um`` (any order, any
    spacing; repeated planes allowed) for output planes ``z_outputs_um``.

    ``dpm_noise_um`` σ adds Gaussian errors to the DPMs (paper Fig. 6): ``noise_mode='plane'`` one error per
    input plane (an unknown axial positioning error of that input), ``'pixel'`` independent per pixel.
    A DPM outside ``trained_range_um`` warns (:func:`refocuslib.dpm.check_trained_range`).
    """
    imgs = _images(images)
    zi = np.asarray(z_inputs_um, dtype=np.float64).ravel()
    if zi.size != imgs.shape[0]:
        raise ValueError(f"z_inputs_um: expected {imgs.shape[0]} positions (one per image), got {zi.size}")
    d = uniform_dpms(zi, z_outputs_um, imgs.shape[1:])
    sigma = positive(dpm_noise_um, "dpm_noise_um", allow_zero=True)
    if sigma > 0:
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        if noise_mode == "plane":
            d = d + rng.normal(0.0, sigma, (1, d.shape[1], 1, 1))
        elif noise_mode == "pixel":
            d = d + rng.normal(0.0, sigma, d.shape)
        else:
            raise ValueError(f"noise_mode: 'plane' or 'pixel', got {noise_mode!r}")
    if trained_range_um is not None:
        _dpm.check_trained_range(d, trained_range_um)
    dev = _model_device(model)
    model.eval()
    out = model.volume(torch.from_numpy(imgs).to(dev),
                       torch.from_numpy(_dpm.to_network(d.reshape(-1, *d.shape[2:])).reshape(d.shape)).to(dev),
                       batch_planes)
    return out.float().cpu().numpy()


@torch.no_grad()
def deepz_nearest_volume(model, images, z_inputs_um, z_outputs_um, trained_range_um=None,
                         batch_planes: int = 16) -> np.ndarray:
    """Deep-Z baseline (Z, H, W): every output plane refocused from the nearest input plane (non-overlapping
    sub-volumes, paper Fig. 2–3), DPM = z_out − z_nearest."""
    imgs = _images(images)
    zi = np.asarray(z_inputs_um, dtype=np.float64).ravel()
    zo = np.asarray(z_outputs_um, dtype=np.float64).ravel()
    if zi.size != imgs.shape[0]:
        raise ValueError(f"z_inputs_um: expected {imgs.shape[0]} positions (one per image), got {zi.size}")
    near = np.argmin(np.abs(zo[:, None] - zi[None, :]), axis=1)
    dz = zo - zi[near]
    if trained_range_um is not None:
        _dpm.check_trained_range(dz[:, None], trained_range_um)
    dev = _model_device(model)
    model.eval()
    out = []
    for s in range(0, zo.size, positive_int(batch_planes, "batch_planes")):
        sl = slice(s, s + batch_planes)
        x = torch.from_numpy(imgs[near[sl]][:, None]).to(dev)
        d = torch.from_numpy((dz[sl] / _dpm.NETWORK_SCALE_UM).astype(np.float32)).to(dev)
        out.append(model(x, d.view(-1, 1, 1, 1).expand_as(x).contiguous())[:, 0])
    return torch.cat(out).float().cpu().numpy()


@torch.no_grad()
def unet3d_volume(model, images) -> np.ndarray:
    """3D U-Net baseline (Z, H, W) from ``images`` (M, H, W) in the channel order given."""
    imgs = _images(images)
    model.eval()
    return model(torch.from_numpy(imgs)[None].to(_model_device(model)))[0].float().cpu().numpy()


def interpolation_volume(images, z_inputs_um, z_outputs_um) -> np.ndarray:
    """Linear interpolation between the input planes along z (constant beyond the outermost inputs);
    inputs may come in any order (``scipy.interpolate.interp1d``); repeated positions are averaged."""
    from scipy.interpolate import interp1d
    imgs = _images(images).astype(np.float64)
    zi = np.asarray(z_inputs_um, dtype=np.float64).ravel()
    zo = np.asarray(z_outputs_um, dtype=np.float64).ravel()
    if zi.size != imgs.shape[0]:
        raise ValueError(f"z_inputs_um: expected {imgs.shape[0]} positions (one per image), got {zi.size}")
    uz, inv = np.unique(zi, return_inverse=True)
    avg = np.stack([imgs[inv == k].mean(0) for k in range(uz.size)])
    if uz.size == 1:
        return np.repeat(avg, zo.size, 0).astype(np.float32)
    f = interp1d(uz, avg, axis=0, bounds_error=False, fill_value=(avg[0], avg[-1]), assume_sorted=True)
    return f(zo).astype(np.float32)


def predict(method: str, models: Mapping, images, z_inputs_um, z_outputs_um, **kw) -> np.ndarray:
    """Volume of ``method`` (one of :data:`METHODS`) from ``images`` at ``z_inputs_um``; ``models`` maps a network
    method to its module (or to a task with ``generator`` and optional ``trained_range_um``)."""
    if method not in METHODS:
        raise ValueError(f"method: one of {METHODS}, got {method!r}")
    if method == "interpolation":
        return interpolation_volume(images, z_inputs_um, z_outputs_um)
    if method not in models:
        raise ValueError(f"models: no {method!r} network given (have {sorted(models)})")
    net = models[method]
    rng_um = getattr(net, "trained_range_um", None)
    net = getattr(net, "generator", net)
    if method == "recurrent_mz":
        return recurrent_mz_volume(net, images, z_inputs_um, z_outputs_um, trained_range_um=rng_um, **kw)
    if method == "deepz":
        return deepz_nearest_volume(net, images, z_inputs_um, z_outputs_um, trained_range_um=rng_um)
    return unet3d_volume(net, images)


# ------------------------------------------------------------------------------------------------- scores
def foreground_mask(target, sigma_px: float = 1.0) -> np.ndarray:
    """Foreground voxels of a scan (Z, H, W): the Gaussian-smoothed volume (σ ``sigma_px``) above its Otsu
    threshold (``skimage.filters.threshold_otsu``)."""
    from scipy.ndimage import gaussian_filter
    from skimage.filters import threshold_otsu
    t = as_image_array(target, "target", ndim=3).astype(np.float64)
    sm = gaussian_filter(t, positive(sigma_px, "sigma_px", allow_zero=True))
    if float(sm.max() - sm.min()) <= 0:
        return np.zeros(t.shape, bool)
    return sm > threshold_otsu(sm)


def plane_metrics(pred, target, foreground: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Per output plane of ``pred`` against the scan ``target`` (Z, H, W): PSNR (dB), RMSE, NRMSE, SSIM and
    ``fg_nrmse`` (NRMSE over the ``foreground`` voxels of that plane, default :func:`foreground_mask`; NaN for a
    plane without foreground). Peak / normaliser / SSIM range: the target volume's dynamic range."""
    p = as_image_array(pred, "pred", ndim=3).astype(np.float64)
    t = as_image_array(target, "target", ndim=3).astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred: shape {p.shape} must equal the target's {t.shape}")
    fg = foreground_mask(t) if foreground is None else np.asarray(foreground, bool)
    if fg.shape != t.shape:
        raise ValueError(f"foreground: shape {fg.shape} must equal the target's {t.shape}")
    rng = float(t.max() - t.min()) or 1.0
    psnr = np.array([metrics.psnr(a, b, data_range=rng) for a, b in zip(p, t)])
    rmse = np.array([metrics.rmse(a, b) for a, b in zip(p, t)])
    ssim = np.array([metrics.ssim(a, b, data_range=rng) for a, b in zip(p, t)])
    fg_err = np.array([np.sqrt(np.mean((a[m] - b[m]) ** 2)) / rng if m.any() else np.nan
                       for a, b, m in zip(p, t, fg)])
    return {"psnr": psnr, "rmse": rmse, "nrmse": rmse / rng, "ssim": ssim, "fg_nrmse": fg_err}


def evaluate_methods(models: Mapping, test, input_indices: Optional[Sequence[int]] = None,
                     methods: Sequence[str] = METHODS, keep_volumes: int = 1) -> dict:
    """Reconstruct every volume of ``test`` (a :class:`~refocuslib.datasets.recurrent_mz.VolumeSet`) from its input
    planes with each method and score every output plane (:func:`plane_metrics`).

    Returns ``{'metrics': {method: {metric: (N, Z)}}, 'volumes': {method: [first keep_volumes]}, 'input_indices',
    'z_um'}``. ``input_indices`` default: the Δz grid; the 3D U-Net (fixed channels) only runs there. Methods
    whose network is not in ``models`` are skipped.
    """
    idx = test.input_indices() if input_indices is None else np.asarray(input_indices, dtype=int)
    z = test.z_um
    res = {"metrics": {}, "volumes": {}, "input_indices": idx, "z_um": z}
    default = len(idx) == len(test.input_indices()) and np.array_equal(idx, test.input_indices())
    masks = [foreground_mask(s) for s in test.stacks]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods: unknown {m!r}; choose from {METHODS}")
        if (m != "interpolation" and m not in models) or (m == "unet3d" and not default):
            continue
        per, vols = {}, []
        for n, stack in enumerate(test.stacks):
            pred = predict(m, models, stack[idx], z[idx], z)
            for k, v in plane_metrics(pred, stack, masks[n]).items():
                per.setdefault(k, []).append(v)
            if n < keep_volumes:
                vols.append(pred)
        res["metrics"][m] = {k: np.stack(v) for k, v in per.items()}
        res["volumes"][m] = vols
    return res


def per_volume(ev: dict, metric: str = "psnr", planes: str = "inferred") -> Dict[str, np.ndarray]:
    """Per test volume (N,), each method's ``metric`` averaged over the ``'inferred'`` planes (no input there),
    the ``'input'`` planes or ``'all'``."""
    nz = len(ev["z_um"])
    inp = np.isin(np.arange(nz), ev["input_indices"])
    sel = {"inferred": ~inp, "input": inp, "all": np.ones(nz, bool)}
    if planes not in sel:
        raise ValueError(f"planes: one of {sorted(sel)}, got {planes!r}")
    return {m: np.nanmean(d[metric][:, sel[planes]], axis=1) for m, d in ev["metrics"].items()}


def paired_stats(a, b) -> tuple:
    """Mean and standard error of the paired difference a − b over items (volumes)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan"), 0
    sem = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("inf")
    return float(d.mean()), sem, int(d.size)


# -------------------------------------------------------------------------------------------------- beads
def bead_fwhm_at_truth(volume, beads_xyz_um, pixel_um: float, z_step_um: float, crop_px: int = 9,
                       max_fwhm_um: Optional[Sequence[float]] = None) -> dict:
    """Lateral and axial FWHM (µm) of every bead of a (Z, H, W) volume, fitted at its known position (Fig. 3).

    Lateral: the ``crop_px`` square around the bead's true (x, y) on the plane nearest its true z; axial: the
    x–z slice through its true row, ``crop_px`` wide, all planes; both with :func:`refocuslib.metrics.fit_gaussian_2d`
    (FWHM = 2√(2 ln 2)σ; lateral = √(FWHM_x·FWHM_y)). A fit succeeds when the fitter converges, the amplitude is
    positive, the fitted centre lies within 2 px (lateral) / 2 planes (axial) of the truth and the FWHM is below
    ``max_fwhm_um`` (default: half the patch). Beads whose patch leaves the field are not counted.
    Returns ``lateral_um``, ``axial_um`` (NaN where failed), ``lateral_ok``, ``axial_ok`` (bool) per bead.
    """
    vol = as_image_array(volume, "volume", ndim=3).astype(np.float64)
    px, dzs = positive(pixel_um, "pixel_um"), positive(z_step_um, "z_step_um")
    crop = positive_int(crop_px, "crop_px", minimum=5) | 1
    half = crop // 2
    nz, h, w = vol.shape
    xyz = np.asarray(beads_xyz_um, float).reshape(-1, 3)
    # points_to_volume: voxel i is centred at i·step (z) and i·pixel (x, y)
    ix, iy, iz = np.rint(xyz[:, 0] / px).astype(int), np.rint(xyz[:, 1] / px).astype(int), \
        np.clip(np.rint(xyz[:, 2] / dzs).astype(int), 0, nz - 1)
    inside = (ix >= half) & (ix < w - half) & (iy >= half) & (iy < h - half)
    ix, iy, iz, xyz = ix[inside], iy[inside], iz[inside], xyz[inside]
    n = len(ix)
    out = {"lateral_um": np.full(n, np.nan), "axial_um": np.full(n, np.nan), "lateral_ok": np.zeros(n, bool),
           "axial_ok": np.zeros(n, bool), "xyz_um": xyz}
    if n == 0:
        return out
    lim_lat, lim_ax = (half * px, nz * dzs / 2) if max_fwhm_um is None else max_fwhm_um
    lat = np.stack([vol[k, y - half:y + half + 1, x - half:x + half + 1] for x, y, k in zip(ix, iy, iz)])
    f = metrics.fit_gaussian_2d(lat, pixel_um=px)
    fw = np.sqrt(np.abs(f.fwhm_x_um * f.fwhm_y_um))
    ok = (f.success & (f.amplitude > 0) & (np.hypot(f.x0 - half, f.y0 - half) <= 2) & np.isfinite(fw)
          & (fw < lim_lat))
    out["lateral_um"][ok], out["lateral_ok"] = fw[ok], ok
    ax = np.stack([vol[:, y, x - half:x + half + 1] for x, y in zip(ix, iy)])
    g = metrics.fit_gaussian_2d(ax, pixel_um=(dzs, px))
    fz = np.abs(g.fwhm_y_um)
    ok = (g.success & (g.amplitude > 0) & (np.abs(g.y0 - iz) <= 2) & (np.abs(g.x0 - half) <= 2)
          & np.isfinite(fz) & (fz < lim_ax))
    out["axial_um"][ok], out["axial_ok"] = fz[ok], ok
    return out


def fwhm_kl(values, ok, ref_values, ref_ok, edges, eps: float = 1e-3) -> float:
    """KL divergence D(P_method ‖ P_scan) (nats, :func:`refocuslib.metrics.kl_divergence`) of FWHM histograms on
    ``edges`` with one more bin holding the failed fits and the values outside the edges."""
    edges = np.asarray(edges, float)

    def hist(v, good):
        v = np.asarray(v, float)[np.asarray(good, bool)]
        counts, _ = np.histogram(v, bins=edges)
        return np.append(counts, len(good) - counts.sum())

    h, r = hist(values, ok), hist(ref_values, ref_ok)
    if h.sum() == 0 or r.sum() == 0:
        return float("nan")
    return metrics.kl_divergence(h, r, eps=eps)


def fwhm_kl_bootstrap(values, ok, ref_values, ref_ok, edges, eps: float = 1e-3, n_boot: int = 200,
                      seed: int = 0) -> np.ndarray:
    """Bootstrap over beads of :func:`fwhm_kl` (the same resampled beads in method and scan, which must list the
    same beads in the same order): ``n_boot`` KL values, for a standard error of the KL or of a paired KL difference
    (call it again with the same ``seed`` for the other method)."""
    v, o, rv, ro = (np.asarray(a) for a in (values, ok, ref_values, ref_ok))
    if not (len(v) == len(o) == len(rv) == len(ro)):
        raise ValueError("values/ok/ref_values/ref_ok: the same beads, in the same order, are needed")
    rng = np.random.default_rng(seed)
    out = np.empty(positive_int(n_boot, "n_boot"))
    for b in range(out.size):
        k = rng.integers(0, len(v), len(v))
        out[b] = fwhm_kl(v[k], o[k], rv[k], ro[k], edges, eps)
    return out


def dof_extension(z_um, psnr_per_plane, psnr_floor_db: float, microscope) -> dict:
    """Depth-of-field extension as in Fig. 2: the axial extent of the contiguous output planes around the
    inputs whose mean PSNR ≥ ``psnr_floor_db``, divided by the objective's DOF λ·n/NA² (0.4 µm for 63×/1.4 at
    0.52 µm; the paper's ≈ 50× is an 18 µm volume from a 0.4 µm DOF). Returns extent, DOF and their ratio."""
    z = np.asarray(z_um, float)
    p = np.asarray(psnr_per_plane, float)
    good = p >= float(psnr_floor_db)
    extent = 0.0
    if good.any():
        # longest run of good planes, its length in µm (one plane = one z step)
        best = run = 0
        for g in good:
            run = run + 1 if g else 0
            best = max(best, run)
        extent = best * float(np.median(np.diff(z))) if len(z) > 1 else 0.0
    dof = microscope.wavelength_um * microscope.n_immersion / microscope.na ** 2
    return {"extent_um": extent, "dof_um": dof, "extension": extent / dof}


# ------------------------------------------------------------------------------------------- permutations
def permutation_rmse(models: Mapping, test, method: str) -> np.ndarray:
    """Volume RMSE (n_permutations, N) of ``method`` for every order of the default inputs (paper Fig. 5)."""
    idx = test.input_indices()
    z = test.z_um
    perms = list(itertools.permutations(range(len(idx))))
    out = np.zeros((len(perms), len(test)))
    for p, perm in enumerate(perms):
        j = idx[list(perm)]
        for n, stack in enumerate(test.stacks):
            out[p, n] = metrics.rmse(predict(method, models, stack[j], z[j], z), stack)
    return out


# ----------------------------------------------------------------------------------------------- claims
def beats_baselines_claim(psnr: Mapping[str, np.ndarray], ssim: Mapping[str, np.ndarray],
                          baselines: Sequence[str] = ("interpolation", "deepz", "unet3d"), min_items: int = 4,
                          n_sigma: float = 1.0) -> Verdict:
    """Fig. 2: Recurrent-MZ beats every baseline in PSNR **and** SSIM (per-volume means over the inferred planes,
    ``psnr[method]`` (N,)). Holds when every paired difference exceeds ``n_sigma`` standard errors above 0.
    Items: test volumes."""
    parts, conds, n = [], [], len(np.asarray(psnr["recurrent_mz"]))
    for b in baselines:
        if b not in psnr:
            return verdict(None, 0, min_items, f"no {b} scores")
        for name, d in (("PSNR", psnr), ("SSIM", ssim)):
            mu, se, k = paired_stats(d["recurrent_mz"], d[b])
            n = min(n, k)
            conds.append(mu - n_sigma * se > 0)
            parts.append(f"{name} vs {b} {mu:+.3g} ± {se:.2g}")
    return verdict(all(conds), n, min_items, "; ".join(parts) + f" (paired, mean ± s.e. over {n} volumes)")


def input_planes_claim(rmz_psnr_inputs, deepz_psnr_inputs, tol_db: float = 1.0, min_items: int = 4) -> Verdict:
    """Recurrent-MZ passes its own inputs through: its PSNR at the input planes (per volume, (N,)) is within
    ``tol_db`` of Deep-Z at dz = 0 (mean over volumes). A volume whose input planes come out exactly (PSNR +∞: the
    target there is the measured plane itself) is the best possible pass-through: it counts as an item that passes,
    and the mean is taken over the other volumes (so one exact volume cannot hide poor ones); NaN volumes do not
    count. Items: test volumes."""
    a, b = np.asarray(rmz_psnr_inputs, float), np.asarray(deepz_psnr_inputs, float)
    n_exact = int(np.sum(np.isposinf(a) & np.isfinite(b)))
    mu, se, n_finite = paired_stats(a, b)                   # over the volumes with a finite difference
    n = n_finite + n_exact
    if n == 0:
        return verdict(None, 0, min_items, "no finite PSNR at the input planes")
    if n_finite == 0:
        mu = float("inf")                                   # every volume reproduced exactly
    return verdict(bool(mu >= -float(tol_db)), n, min_items,
                   f"{np.mean(a):.2f} dB vs {np.mean(b):.2f} dB (Deep-Z, dz = 0): {mu:+.2f} ± {se:.2f} dB"
                   + (f"; {n_exact} of {n} volumes reproduced exactly at their input planes" if n_exact else ""))


def fwhm_kl_claim(kl: Mapping[str, Mapping[str, float]], n_beads: int, min_items: int = 30,
                  method: str = "recurrent_mz", baseline: str = "interpolation",
                  kl_diff_se: Optional[Mapping[str, float]] = None) -> Verdict:
    """Fig. 3: the bead FWHM histograms (``kl[method]['lateral'|'axial']``, :func:`fwhm_kl` to the scan) are closer
    to the scan's for ``method`` than for ``baseline``, laterally and axially — by more than one bootstrap standard
    error of the paired difference when ``kl_diff_se`` (per axis, :func:`fwhm_kl_bootstrap`) is given. Items: beads."""
    a, b = kl[method], kl[baseline]
    se = kl_diff_se or {"lateral": 0.0, "axial": 0.0}
    conds = [a[k] + se[k] < b[k] if np.isfinite(a[k]) and np.isfinite(b[k]) else None for k in ("lateral", "axial")]
    cond = None if any(c is None for c in conds) else all(conds)
    return verdict(cond, n_beads, min_items, f"KL lateral {a['lateral']:.3f} vs {b['lateral']:.3f}, axial "
                   f"{a['axial']:.3f} vs {b['axial']:.3f} ({baseline}), {n_beads} beads"
                   + (f"; bootstrap s.e. of the differences {se['lateral']:.3f} / {se['axial']:.3f}" if kl_diff_se
                      else ""))


def nonuniform_claim(rmz_psnr, interp_psnr, min_items: int = 4, n_sigma: float = 1.0) -> Verdict:
    """Fig. 4: with non-uniformly spaced inputs Recurrent-MZ beats interpolation in PSNR (per volume, paired,
    ``n_sigma`` standard errors). Items: test volumes × layouts."""
    mu, se, n = paired_stats(rmz_psnr, interp_psnr)
    return verdict(bool(mu - n_sigma * se > 0), n, min_items, f"PSNR {mu:+.2f} ± {se:.2f} dB vs interpolation")


def permutation_claim(rmz_rmse, unet_rmse, interp_rmse, tolerance: float = 0.05, min_items: int = 3) -> Verdict:
    """Fig. 5: Recurrent-MZ is order invariant — relative RMSE spread over the input orders (``(P, N)`` arrays,
    std/mean per volume, averaged) below ``tolerance`` and below the 3D U-Net's — while it still reconstructs:
    its mean RMSE is below interpolation's (``interp_rmse`` (N,)), so a constant output does not pass."""
    r, u = np.asarray(rmz_rmse, float), np.asarray(unet_rmse, float)
    spread = lambda v: float(np.mean(v.std(0) / np.maximum(v.mean(0), 1e-12)))   # noqa: E731
    sr, su, li = spread(r), spread(u), float(np.mean(interp_rmse))
    cond = sr < tolerance and sr < su and float(r.mean()) < li
    return verdict(cond, r.shape[1], min_items, f"relative spread over {r.shape[0]} orders {sr:.3f} vs {su:.3f} "
                   f"(3D U-Net); RMSE {r.mean():.4f} vs {li:.4f} (interpolation)")


def dpm_noise_claim(nrmse_by_sigma: Mapping[float, np.ndarray], interp_nrmse, max_rel_increase: float = 0.5,
                    min_items: int = 4) -> Verdict:
    """Fig. 6: DPM errors degrade Recurrent-MZ gracefully: the median NRMSE does not improve with the largest σ,
    grows by at most ``max_rel_increase`` (paper: 5.03 → 5.94 at σ = 1 µm, +18 %), and at σ = 0 it beats
    interpolation (``interp_nrmse``, so a constant output does not pass). Items: volumes × draws at the largest σ."""
    sig = sorted(nrmse_by_sigma)
    n0, n1 = float(np.median(nrmse_by_sigma[sig[0]])), float(np.median(nrmse_by_sigma[sig[-1]]))
    li = float(np.mean(interp_nrmse))
    cond = n1 >= n0 and n1 <= (1 + max_rel_increase) * n0 and n0 < li
    return verdict(cond, len(nrmse_by_sigma[sig[-1]]), min_items,
                   f"median NRMSE {n0:.4f} at σ = {sig[0]:g} µm → {n1:.4f} at σ = {sig[-1]:g} µm "
                   f"({(n1 / n0 - 1) * 100 if n0 else float('nan'):+.0f} %); interpolation {li:.4f}")


def repetition_claim(distinct_rmse, repeated_rmse, min_items: int = 4) -> Verdict:
    """Fig. 7: distinct planes (I1, I2, I3) beat the repeated plane (I1, I1, I1) (per-volume RMSE, paired,
    one standard error). Items: test volumes."""
    mu, se, n = paired_stats(repeated_rmse, distinct_rmse)
    return verdict(bool(mu - se > 0), n, min_items, f"RMSE {np.mean(distinct_rmse):.4f} vs "
                   f"{np.mean(repeated_rmse):.4f} (repeated): difference {mu:.4f} ± {se:.4f}")


def repeated_like_deepz_claim(repeated_rmse, deepz_rmse, distinct_rmse, tolerance: float = 0.05,
                              min_items: int = 4) -> Verdict:
    """Fig. 7: with (I1, I1, I1) Recurrent-MZ is no better than Deep-Z(I1) (RMSE within Deep-Z's trained range,
    per volume): mean repeated ≥ (1 − ``tolerance``)·Deep-Z, while distinct planes beat Deep-Z(I1) (so a constant
    output does not pass). Items: test volumes."""
    r, d, s = (float(np.mean(v)) for v in (repeated_rmse, deepz_rmse, distinct_rmse))
    cond = r >= (1 - tolerance) * d and s < d
    return verdict(cond, len(np.asarray(repeated_rmse)), min_items,
                   f"RMSE {r:.4f} (I1, I1, I1) vs {d:.4f} Deep-Z(I1); distinct {s:.4f}")
