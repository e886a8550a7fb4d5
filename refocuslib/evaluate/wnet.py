"""W-Net evaluation protocols and claim predicates (Yang et al. 2021, Fig. 2, Fig. 3, Table 1, Supporting Information).

For every input defocus z the network output (refocused onto the bead plane and converted to confocal) is
compared with the confocal ground truth of that plane:

* beads are localised in both images (:func:`localize_beads`: the border is cropped first, then local maxima
  above an absolute threshold in units of an in-focus bead's peak, :func:`refocuslib.localize.find_peaks_2d`,
  sub-pixel centroid) and Hungarian-matched within ``threshold_nm`` (:func:`refocuslib.localize.match_points`)
  → Jaccard index (JI) and lateral RMSE (:func:`evaluate_stack`);
* image correlation: Pearson's r of the two images (:func:`refocuslib.metrics.pearson`).

Effective depth of field (Table 1): the axial extent of the longest run of planes with JI ≥ a threshold. The
paper's thresholds 0.726 / 0.653 / 0.581 are its native in-focus JI 0.726 less 0 / 10 / 20 %;
:func:`dof_table` takes the tolerances relative to *our* native in-focus JI, :func:`dof_at_thresholds` the
paper's absolute thresholds. Every sampled plane owns the slab half-way to its neighbours (the paper's 0.3 µm
native DOF at 0.1 µm steps is such a plane count), so the native DOF must be measured at 0.1 µm steps.

Claim predicates (``*_verdict``) return a :class:`~refocuslib.evaluate.claims.Verdict` resting on the number of
truth beads of the test fields.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from refocuslib import dpm as _dpm
from refocuslib._validate import as_image_array, in_range, positive, positive_int
from refocuslib.localize import find_peaks_2d, match_points, pixels_to_nm
from refocuslib.evaluate.claims import Verdict, verdict
from refocuslib.metrics import pearson

__all__ = ["PAPER_TABLE1", "localize_beads", "evaluate_plane", "pooled_jaccard", "evaluate_stack", "effective_dof",
           "dof_table", "dof_at_thresholds", "refocus_images", "refocus_scan", "dof_ratio_verdict",
           "dof_greater_verdict", "beats_verdict", "ordering_verdict", "table1_row_verdict", "dh_lobes",
           "carried_range_um"]

#: Table 1 of the paper: native (scanned wide-field) DOF and W-Net (DH-PSF input) DOF per JI tolerance.
PAPER_TABLE1 = {
    "native_in_focus_ji": 0.726,
    "ji_thresholds": {0.0: 0.726, 0.1: 0.653, 0.2: 0.581},
    "native_dof_um": {0.0: 0.3},
    "wnet_dh_dof_um": {0.0: 6.6, 0.1: 7.5, 0.2: 8.2},
}


def localize_beads(image, pixel_um: float, threshold: float = 0.3, min_distance_px: int = 2,
                   border_px: int = 4) -> np.ndarray:
    """Bead positions (K, 2) as (x, y) in nm (pixel (i, j) centred at ((j+½)·px, (i+½)·px)).

    The image is first cropped by ``border_px`` on every side (edge artefacts of a network output never set the
    threshold), then local maxima above the absolute ``threshold`` — in units of the in-focus peak of an average
    bead, the scale every image of :mod:`refocuslib.datasets.wnet` is on — at least ``min_distance_px`` apart,
    refined by the 3×3 centroid, are returned in the frame of the full image.
    """
    img = as_image_array(image, "image", ndim=2).astype(np.float64)
    px = positive(pixel_um, "pixel_um")
    thr = in_range(threshold, "threshold", 0.0, np.inf, lo_open=True)
    border = positive_int(border_px, "border_px", minimum=0)
    if 2 * border >= min(img.shape) - 2:
        raise ValueError(f"border_px: must be < half the image size {img.shape} less 1, got {border}")
    inner = img[border:img.shape[0] - border, border:img.shape[1] - border]
    pos, _ = find_peaks_2d(inner, thr, min_distance_px=min_distance_px, refine=True)
    return pixels_to_nm(pos + border, px * 1000.0)


def evaluate_plane(output, truth, pixel_um: float, threshold_nm: float = 150.0, threshold: float = 0.3,
                   min_distance_px: int = 2, border_px: int = 4) -> Dict[str, float]:
    """Localisation and image metrics of one output image against its ground truth (both (H, W), both in units
    of an in-focus bead's peak). Returns jaccard, rmse_lateral_nm (nan without matches), pearson (over the image
    less ``border_px``), tp, fp, fn."""
    return _evaluate_plane(output, truth, pixel_um, threshold_nm, threshold, min_distance_px, border_px)[0]


def _evaluate_plane(output, truth, pixel_um, threshold_nm=150.0, threshold=0.3, min_distance_px=2,
                    border_px=4):
    out = as_image_array(output, "output", ndim=2)
    tru = as_image_array(truth, "truth", ndim=2)
    if out.shape != tru.shape:
        raise ValueError(f"output: shape {out.shape} differs from truth {tru.shape}")
    kw = dict(pixel_um=pixel_um, threshold=threshold, min_distance_px=min_distance_px, border_px=border_px)
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


def pooled_jaccard(outputs, truths, pixel_um: float, **kwargs) -> Dict[str, float]:
    """JI pooled over image pairs ``outputs``/``truths`` (N, H, W): ΣTP/(ΣTP + ΣFP + ΣFN) (the validation
    metric of the W-Net tasks). Returns jaccard, tp, fp, fn, n_true (beads in the truths)."""
    out = as_image_array(outputs, "outputs", ndim=3, finite=False)
    tru = as_image_array(truths, "truths", ndim=3)
    if out.shape != tru.shape:
        raise ValueError(f"outputs: shape {out.shape} differs from truths {tru.shape}")
    tp = fp = fn = 0
    for o, t in zip(np.nan_to_num(out), tru):
        e = evaluate_plane(o, t, pixel_um, **kwargs)
        tp, fp, fn = tp + e["tp"], fp + e["fp"], fn + e["fn"]
    tot = tp + fp + fn
    return {"jaccard": tp / tot if tot else 1.0, "tp": tp, "fp": fp, "fn": fn, "n_true": tp + fn}


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


# ------------------------------------------------------------------------------------------------ DOF at fixed JI
def dof_at_thresholds(z_um, ji, thresholds: Sequence[float], method: str = "samples") -> List[Dict[str, float]]:
    """Effective DOF (:func:`effective_dof`) at absolute JI ``thresholds`` (e.g. the paper's 0.726 / 0.653 /
    0.581, :data:`PAPER_TABLE1`). Rows: threshold, dof_um, z_low_um, z_high_um, censored."""
    ths = [in_range(t, "thresholds", 0.0, 1.0) for t in np.atleast_1d(thresholds)]
    if not ths:
        raise ValueError("thresholds: give at least one JI threshold in [0, 1]")
    return [{"threshold": t, **effective_dof(z_um, ji, t, method)} for t in ths]


def _beads(curve: Dict[str, np.ndarray]) -> int:
    """Truth beads a curve rests on: the smallest TP + FN over its planes (every plane has the same truth)."""
    n = np.asarray(curve["tp"]) + np.asarray(curve["fn"])
    return int(n.min()) if len(n) else 0


def _ji_at(curve: Dict[str, np.ndarray], z_um: float) -> float:
    z = np.asarray(curve["z_um"], dtype=np.float64)
    i = int(np.argmin(np.abs(z - z_um)))
    return float(curve["jaccard"][i]) if abs(z[i] - z_um) <= 0.051 else float("nan")


# ------------------------------------------------------------------------------------------------ claim predicates
def dof_ratio_verdict(curve_model: Dict[str, np.ndarray], curve_native: Dict[str, np.ndarray],
                      threshold: float = PAPER_TABLE1["ji_thresholds"][0.0], min_ratio: float = 10.0,
                      min_beads: int = 30) -> Verdict:
    """Abstract / Table 1: the model's effective DOF at the absolute JI ``threshold`` is at least ``min_ratio``
    times the native DOF (the scanned wide-field curve at the same threshold; paper 6.6 / 0.3 ≈ 22). A native
    curve that never reaches the threshold has no native DOF: the claim fails (the ratio is undefined)."""
    thr = in_range(threshold, "threshold", 0.0, 1.0, lo_open=True)
    dm = effective_dof(curve_model["z_um"], curve_model["jaccard"], thr)
    dn = effective_dof(curve_native["z_um"], curve_native["jaccard"], thr)
    ratio = dm["dof_um"] / dn["dof_um"] if dn["dof_um"] > 0 else float("nan")
    n = min(_beads(curve_model), _beads(curve_native))
    cond = bool(dn["dof_um"] > 0 and ratio >= min_ratio)
    return verdict(cond, n, min_beads, f"DOF at JI ≥ {thr:.3f}: model {dm['dof_um']:.2f} µm"
                   f"{'*' if dm['censored'] else ''} / native {dn['dof_um']:.2f} µm = {ratio:.1f} "
                   f"(need ≥ {min_ratio:g}); {n} beads")


def dof_greater_verdict(curve_a: Dict[str, np.ndarray], curve_b: Dict[str, np.ndarray],
                        threshold: float = PAPER_TABLE1["ji_thresholds"][0.1], min_beads: int = 30) -> Verdict:
    """Fig. 2a–c: curve ``a`` (W-Net, DH input) has a larger effective DOF at JI ≥ ``threshold`` than ``b``
    (W-Net, wide-field input). Both zero → fails."""
    thr = in_range(threshold, "threshold", 0.0, 1.0, lo_open=True)
    da = effective_dof(curve_a["z_um"], curve_a["jaccard"], thr)["dof_um"]
    db = effective_dof(curve_b["z_um"], curve_b["jaccard"], thr)["dof_um"]
    n = min(_beads(curve_a), _beads(curve_b))
    return verdict(bool(da > db), n, min_beads, f"DOF at JI ≥ {thr:.3f}: {da:.2f} vs {db:.2f} µm; {n} beads")


def beats_verdict(curve_a: Dict[str, np.ndarray], curve_b: Dict[str, np.ndarray], min_beads: int = 30) -> Verdict:
    """Fig. 2d–f: curve ``a`` (W-Net) has a higher mean JI *and* a higher mean image correlation than ``b``
    (single U-Net) over the evaluated planes (planes without a correlation, e.g. a constant output, count as
    r = 0)."""
    ja, jb = float(np.mean(curve_a["jaccard"])), float(np.mean(curve_b["jaccard"]))
    ra = float(np.mean(np.nan_to_num(np.asarray(curve_a["pearson"], dtype=float), nan=0.0)))
    rb = float(np.mean(np.nan_to_num(np.asarray(curve_b["pearson"], dtype=float), nan=0.0)))
    n = min(_beads(curve_a), _beads(curve_b))
    return verdict(bool(ja > jb and ra > rb), n, min_beads,
                   f"mean JI {ja:.3f} vs {jb:.3f}; mean r {ra:.3f} vs {rb:.3f}; {n} beads")


def ordering_verdict(curves: Sequence[Dict[str, np.ndarray]], z_um: float = -3.0, min_beads: int = 30) -> Verdict:
    """Fig. 3: at input plane ``z_um`` the JIs of ``curves`` are strictly decreasing (paper at −3 µm: W-Net DH
    0.77 > W-Net wide-field 0.17 > scanned wide-field 0). A plane not sampled (within 0.05 µm) → not enough data."""
    if len(curves) < 2:
        raise ValueError(f"curves: give at least two curves, got {len(curves)}")
    ji = [_ji_at(c, float(z_um)) for c in curves]
    n = min(_beads(c) for c in curves)
    if not np.all(np.isfinite(ji)):
        return verdict(None, n, min_beads, f"z = {z_um:g} µm not sampled")
    cond = all(a > b for a, b in zip(ji[:-1], ji[1:]))
    return verdict(bool(cond), n, min_beads, f"JI at z = {z_um:g} µm: " + " > ".join(f"{j:.3f}" for j in ji)
                   + f"; {n} beads")


def table1_row_verdict(curve: Dict[str, np.ndarray], threshold: float, paper_dof_um: float,
                       rel_tol: float = 0.25, min_beads: int = 30) -> Verdict:
    """A Table 1 row: the effective DOF at JI ≥ ``threshold`` is within ``rel_tol`` of the paper's
    ``paper_dof_um``. A DOF that is censored by the evaluated range below the paper's value fails too (the
    evaluated range cannot show it)."""
    thr = in_range(threshold, "threshold", 0.0, 1.0, lo_open=True)
    p = positive(paper_dof_um, "paper_dof_um")
    tol = in_range(rel_tol, "rel_tol", 0.0, 1.0)
    d = effective_dof(curve["z_um"], curve["jaccard"], thr)
    n = _beads(curve)
    return verdict(bool(abs(d["dof_um"] - p) <= tol * p), n, min_beads,
                   f"DOF at JI ≥ {thr:.3f}: {d['dof_um']:.2f} µm{' (censored by the evaluated range)' if d['censored'] else ''}"
                   f" vs paper {p:g} µm (±{100 * tol:.0f} %); {n} beads")


# ------------------------------------------------------------------------------------------------ DH mask range
def dh_lobes(psf_stack, pixel_um: float, smooth_px: float = 1.0) -> Dict[str, np.ndarray]:
    """Lobe geometry of a double-helix PSF stack (Z, P, P): per plane the angle (degrees in [0, 180)) of the line
    through the two brightest local maxima (after a Gaussian blur of ``smooth_px``), their separation (µm) and
    the stack's peak relative to the plane of the largest peak (the in-focus plane). Planes without two
    maxima above 20 % of the plane's maximum get NaN angle and separation."""
    from scipy.ndimage import gaussian_filter, maximum_filter
    st = as_image_array(psf_stack, "psf_stack", ndim=3).astype(np.float64)
    px = positive(pixel_um, "pixel_um")
    angle, sep = np.full(len(st), np.nan), np.full(len(st), np.nan)
    for i, im in enumerate(st):
        g = gaussian_filter(im, positive(smooth_px, "smooth_px", allow_zero=True))
        peaks = np.argwhere((g == maximum_filter(g, 5)) & (g > 0.2 * g.max()))
        if len(peaks) < 2:
            continue
        order = np.argsort(-g[tuple(peaks.T)])[:2]
        d = peaks[order[1]] - peaks[order[0]]
        angle[i] = np.degrees(np.arctan2(d[0], d[1])) % 180.0
        sep[i] = float(np.hypot(*d)) * px
    peak = st.max(axis=(1, 2))
    return {"angle_deg": angle, "separation_um": sep, "peak_rel": peak / peak.max()}


def carried_range_um(z_um, peak_rel, level: float = 0.1) -> float:
    """Half-width (µm) of the contiguous range around focus over which ``peak_rel`` (the PSF peak relative to its
    in-focus peak) stays ≥ ``level``: the input range a mask can carry above the noise."""
    z = as_image_array(z_um, "z_um", ndim=1).astype(np.float64)
    p = as_image_array(peak_rel, "peak_rel", ndim=1).astype(np.float64)
    if len(z) != len(p):
        raise ValueError(f"peak_rel: {len(p)} values but z_um has {len(z)}")
    lev = in_range(level, "level", 0.0, 1.0, lo_open=True)
    d = effective_dof(z, p, lev, method="interpolate")
    return float(min(abs(d["z_low_um"]), abs(d["z_high_um"]))) if d["dof_um"] > 0 else 0.0
