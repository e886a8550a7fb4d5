"""W-Net evaluation in the style of the paper's Supporting Information (Yang et al. 2021, Fig. 2, Table 1).

For every input defocus z the network output (refocused onto the bead plane and converted to confocal) is
compared with the confocal ground truth of that plane:

* beads are localised in both images (:func:`refocuslib.localize.find_peaks_2d`, local maxima above a threshold
  relative to the image's background and maximum, sub-pixel centroid) and Hungarian-matched within
  ``threshold_nm`` (:func:`refocuslib.localize.match_points`) → Jaccard index (JI) and lateral RMSE;
* image correlation: Pearson's r of the two images (:func:`refocuslib.metrics.pearson`).

Effective depth of field (Table 1): the axial range over which JI stays at or above the native in-focus JI (the
scanned wide-field image at z = 0) less a tolerance, JI ≥ JI_native·(1 − tol), for tol = 0, 10, 20 %. The paper's
thresholds 0.726 / 0.653 / 0.581 are exactly 0.726·(1, 0.9, 0.8). Its native DOF of 0.3 µm at tol = 0 is a count
of sampled planes, which is the default ``method='samples'`` here: every sampled plane owns the slab half-way to
its neighbours, the DOF is the total slab width of the longest run of planes above the threshold.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from refocuslib import dpm as _dpm
from refocuslib._validate import as_image_array, in_range, positive, positive_int
from refocuslib.localize import find_peaks_2d, match_points, pixels_to_nm
from refocuslib.metrics import pearson

__all__ = ["PAPER_TABLE1", "localize_beads", "evaluate_plane", "evaluate_stack", "effective_dof", "dof_table",
           "refocus_images"]

#: Table 1 of the paper: native (scanned wide-field) DOF and W-Net (DH-PSF input) DOF per JI tolerance.
PAPER_TABLE1 = {
    "native_in_focus_ji": 0.726,
    "ji_thresholds": {0.0: 0.726, 0.1: 0.653, 0.2: 0.581},
    "native_dof_um": {0.0: 0.3},
    "wnet_dh_dof_um": {0.0: 6.6, 0.1: 7.5, 0.2: 8.2},
}


def localize_beads(image, pixel_um: float, threshold_rel: float = 0.3, min_distance_px: int = 2,
                   border_px: int = 0) -> np.ndarray:
    """Bead positions (K, 2) as (x, y) in nm (pixel (i, j) centred at ((j+½)·px, (i+½)·px)).

    Local maxima above ``bg + threshold_rel·(max − bg)``, ``bg`` the image median, at least ``min_distance_px``
    apart, refined by the 3×3 centroid; maxima within ``border_px`` of the edge are dropped.
    """
    img = as_image_array(image, "image", ndim=2).astype(np.float64)
    px = positive(pixel_um, "pixel_um")
    rel = in_range(threshold_rel, "threshold_rel", 0.0, 1.0, lo_open=True, hi_open=True)
    border = positive_int(border_px, "border_px", minimum=0)
    if 2 * border >= min(img.shape):
        raise ValueError(f"border_px: must be < half the image size {img.shape}, got {border}")
    bg, top = float(np.median(img)), float(img.max())
    if top <= bg:
        return np.zeros((0, 2))
    pos, _ = find_peaks_2d(img, bg + rel * (top - bg), min_distance_px=min_distance_px, refine=True)
    if border:
        h, w = img.shape
        keep = ((pos[:, 0] >= border) & (pos[:, 0] <= h - 1 - border) & (pos[:, 1] >= border)
                & (pos[:, 1] <= w - 1 - border))
        pos = pos[keep]
    return pixels_to_nm(pos, px * 1000.0)


def evaluate_plane(output, truth, pixel_um: float, threshold_nm: float = 150.0, threshold_rel: float = 0.3,
                   min_distance_px: int = 2, border_px: int = 4) -> Dict[str, float]:
    """Localisation and image metrics of one output image against its ground truth (both (H, W)).

    Returns jaccard, rmse_lateral_nm (nan without matches), pearson (over the image less ``border_px``),
    tp, fp, fn.
    """
    return _evaluate_plane(output, truth, pixel_um, threshold_nm, threshold_rel, min_distance_px, border_px)[0]


def _evaluate_plane(output, truth, pixel_um, threshold_nm=150.0, threshold_rel=0.3, min_distance_px=2,
                    border_px=4):
    out = as_image_array(output, "output", ndim=2)
    tru = as_image_array(truth, "truth", ndim=2)
    if out.shape != tru.shape:
        raise ValueError(f"output: shape {out.shape} differs from truth {tru.shape}")
    kw = dict(pixel_um=pixel_um, threshold_rel=threshold_rel, min_distance_px=min_distance_px, border_px=border_px)
    pred, true = localize_beads(out, **kw), localize_beads(tru, **kw)
    m = match_points(pred, true, threshold_nm=threshold_nm)
    b = border_px
    inner = (slice(b, out.shape[0] - b), slice(b, out.shape[1] - b))
    try:
        r = pearson(out[inner], tru[inner])
    except ValueError:  # a constant image has no correlation
        r = float("nan")
    sq = (np.sum((pred[m.pairs[:, 0]] - true[m.pairs[:, 1]]) ** 2, axis=1) if m.tp else np.zeros(0))
    return ({"jaccard": m.jaccard, "rmse_lateral_nm": m.rmse_lateral_nm, "pearson": r, "tp": m.tp, "fp": m.fp,
             "fn": m.fn}, sq)


def evaluate_stack(outputs, truth, z_um, pixel_um: float, **kwargs) -> Dict[str, np.ndarray]:
    """Metrics versus input defocus: ``outputs`` (n_z, H, W) or (n_z, F, H, W) for F test fields, ``truth``
    (H, W) or (F, H, W) (the confocal image of the target plane), ``z_um`` (n_z,).

    Counts are pooled over fields: JI = ΣTP/(ΣTP + ΣFP + ΣFN), lateral RMSE over all matched pairs; Pearson's r
    is averaged over fields. Returns arrays z_um, jaccard, rmse_lateral_nm, pearson, tp, fp, fn.
    Keyword arguments go to :func:`evaluate_plane`.
    """
    out = as_image_array(outputs, "outputs", ndim=(3, 4))
    tru = as_image_array(truth, "truth", ndim=(2, 3))
    if out.ndim == 3:
        out = out[:, None]
    if tru.ndim == 2:
        tru = tru[None]
    if out.shape[1:] != tru.shape:
        raise ValueError(f"truth: shape {tru.shape} does not match the outputs' fields {out.shape[1:]}")
    z = np.asarray(z_um, dtype=np.float64).reshape(-1)
    if len(z) != out.shape[0]:
        raise ValueError(f"z_um: {len(z)} planes but outputs hold {out.shape[0]}")
    res = {k: np.zeros(len(z)) for k in ("jaccard", "rmse_lateral_nm", "pearson", "tp", "fp", "fn")}
    for i in range(len(z)):
        tp = fp = fn = 0
        sq, rs = [], []
        for f in range(out.shape[1]):
            e, pair_sq = _evaluate_plane(out[i, f], tru[f], pixel_um, **kwargs)
            tp, fp, fn = tp + e["tp"], fp + e["fp"], fn + e["fn"]
            sq.append(pair_sq)
            rs.append(e["pearson"])
        sq = np.concatenate(sq)
        res["tp"][i], res["fp"][i], res["fn"][i] = tp, fp, fn
        res["jaccard"][i] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
        res["rmse_lateral_nm"][i] = float(np.sqrt(sq.mean())) if len(sq) else np.nan
        res["pearson"][i] = float(np.nanmean(rs)) if np.any(np.isfinite(rs)) else np.nan
    res["z_um"] = z
    return res


def _slabs(z: np.ndarray) -> np.ndarray:
    """Width owned by each sample: half-way to each neighbour (the ends mirror their inner half-step)."""
    if len(z) == 1:
        return np.zeros(1)
    mid = 0.5 * (z[1:] + z[:-1])
    lo = np.concatenate([[z[0] - (mid[0] - z[0])], mid])
    hi = np.concatenate([mid, [z[-1] + (z[-1] - mid[-1])]])
    return hi - lo


def effective_dof(z_um, ji, threshold: float, method: str = "samples") -> Dict[str, float]:
    """Axial extent of the longest contiguous run of planes with JI ≥ ``threshold``.

    ``method='samples'``: every plane owns the slab half-way to its neighbours (the paper's plane counting);
    ``'interpolate'``: the run's edges are the linearly interpolated threshold crossings. Returns dof_um,
    z_low_um, z_high_um and censored (True when the run reaches the end of the sampled range, so the true DOF
    may be larger). No plane above the threshold → dof_um 0 and nan edges.
    """
    z = as_image_array(z_um, "z_um", ndim=1).astype(np.float64)
    j = as_image_array(ji, "ji", ndim=1, finite=False).astype(np.float64)
    if len(z) != len(j):
        raise ValueError(f"ji: {len(j)} values but z_um has {len(z)}")
    if np.any(np.diff(z) <= 0):
        raise ValueError("z_um: must be strictly increasing")
    thr = in_range(threshold, "threshold", -np.inf, np.inf)
    if method not in ("samples", "interpolate"):
        raise ValueError(f"method: 'samples' or 'interpolate', got {method!r}")
    above = np.nan_to_num(j, nan=-np.inf) >= thr
    if not above.any():
        return {"dof_um": 0.0, "z_low_um": float("nan"), "z_high_um": float("nan"), "censored": False}
    slabs = _slabs(z)
    runs, start = [], None
    for i, a in enumerate(np.append(above, False)):
        if a and start is None:
            start = i
        elif not a and start is not None:
            runs.append((start, i - 1))
            start = None
    if method == "samples":
        ext = [slabs[a:b + 1].sum() for a, b in runs]
    else:
        ext = [z[b] - z[a] for a, b in runs]
    a, b = runs[int(np.argmax(ext))]
    if method == "samples":
        lo = z[a] - slabs[a] / 2 if a == 0 else 0.5 * (z[a - 1] + z[a])
        hi = z[b] + slabs[b] / 2 if b == len(z) - 1 else 0.5 * (z[b] + z[b + 1])
    else:
        def cross(i_in, i_out):
            f = (thr - j[i_in]) / (j[i_out] - j[i_in]) if np.isfinite(j[i_out]) and j[i_out] != j[i_in] else 0.0
            return z[i_in] + np.clip(f, 0.0, 1.0) * (z[i_out] - z[i_in])
        lo = z[a] if a == 0 else cross(a, a - 1)
        hi = z[b] if b == len(z) - 1 else cross(b, b + 1)
    return {"dof_um": float(hi - lo), "z_low_um": float(lo), "z_high_um": float(hi),
            "censored": bool(a == 0 or b == len(z) - 1)}


def dof_table(z_um, ji, tolerances: Sequence[float] = (0.0, 0.1, 0.2), reference_ji: Optional[float] = None,
              reference_z_um: float = 0.0, method: str = "samples") -> List[Dict[str, float]]:
    """Table 1: effective DOF for each JI tolerance, threshold = ``reference_ji``·(1 − tolerance).

    ``reference_ji``: the native in-focus JI (scanned wide-field at z = 0); default: this curve's own JI at the
    plane nearest ``reference_z_um`` (the native DOF of a scanned stack). Rows: tolerance, threshold, dof_um,
    z_low_um, z_high_um, censored.
    """
    z = as_image_array(z_um, "z_um", ndim=1).astype(np.float64)
    j = as_image_array(ji, "ji", ndim=1, finite=False).astype(np.float64)
    if len(z) != len(j):
        raise ValueError(f"ji: {len(j)} values but z_um has {len(z)}")
    tols = [in_range(t, "tolerances", 0.0, 1.0, hi_open=True) for t in np.atleast_1d(tolerances)]
    if not tols:
        raise ValueError("tolerances: give at least one tolerance in [0, 1)")
    if reference_ji is None:
        ref = float(j[int(np.argmin(np.abs(z - in_range(reference_z_um, "reference_z_um", -np.inf, np.inf))))])
        if not np.isfinite(ref):
            raise ValueError(f"ji: the reference plane z = {reference_z_um} µm has no finite JI")
    else:
        ref = in_range(reference_ji, "reference_ji", 0.0, 1.0)
    rows = []
    for t in tols:
        thr = ref * (1.0 - t)
        rows.append({"tolerance": t, "threshold": thr, **effective_dof(z, j, thr, method)})
    return rows


def refocus_images(model: torch.nn.Module, images, dpm_um, trained_range_um=None, batch_size: int = 8,
                   device: str = "cpu") -> np.ndarray:
    """Run a W-Net / single U-Net on normalised images (n, H, W) with DPMs in µm (scalar, (n,) or (n, H, W)).

    Returns the model output (n, C, H, W) as float32 NumPy (W-Net: C = 2, refocused and cross-modality).
    ``trained_range_um`` = (lo, hi): warn (:class:`refocuslib.dpm.DPMRangeWarning`) for DPMs outside it.
    """
    x = torch.as_tensor(as_image_array(images, "images", ndim=3), dtype=torch.float32)
    n, h, w = x.shape
    d = np.asarray(dpm_um, dtype=np.float64)
    if d.ndim == 0:
        d = np.full(n, float(d))
    if d.ndim == 1:
        if len(d) != n:
            raise ValueError(f"dpm_um: {len(d)} values but {n} images")
        d = np.broadcast_to(d[:, None, None], (n, h, w))
    if d.shape != (n, h, w):
        raise ValueError(f"dpm_um: expected a scalar, ({n},) or ({n}, {h}, {w}), got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("dpm_um: contains NaN or inf")
    if trained_range_um is not None:
        _dpm.check_trained_range(d, trained_range_um)
    bs = positive_int(batch_size, "batch_size")
    dev = torch.device(device)
    dpm_net = torch.as_tensor(_dpm.to_network(np.ascontiguousarray(d)), dtype=torch.float32)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for s in range(0, n, bs):
                o = model(x[s:s + bs, None].to(dev), dpm_net[s:s + bs, None].to(dev))
                outs.append(o.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs, 0).numpy()


def refocus_scan(task, scan, z_um, device: str = "cpu") -> np.ndarray:
    """Refocus a focal scan (Z, F, H, W) — F fields, each imaged at the input planes ``z_um`` (µm) — back to the
    bead plane (DPM = −z) with the trained model of a :class:`refocuslib.tasks.wnet.WNetTask` or
    ``SingleUNetTask``; inputs go through the task simulator's ``network_input``. Returns (Z, F, C, H, W)."""
    x = np.asarray(scan, dtype=np.float32)
    z = np.asarray(z_um, dtype=np.float64)
    if x.ndim != 4 or len(z) != x.shape[0]:
        raise ValueError(f"scan: expected (Z, F, H, W) with Z = len(z_um) = {len(z)}, got shape {x.shape}")
    nz, nf = x.shape[:2]
    x_net = task.simulator.network_input(torch.from_numpy(x.reshape(nz * nf, *x.shape[2:]))).numpy()
    out = refocus_images(task.generator, x_net, np.repeat(-z, nf), task.trained_dpm_range_um, device=device)
    return out.reshape(nz, nf, out.shape[1], *x.shape[2:])
