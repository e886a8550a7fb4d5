"""Single-molecule localisation: peak finding and Hungarian-matched detection metrics.

Used for DeepSTORM3D-style evaluation (Nehme et al., Nat. Methods 2020): the network outputs a 3D
confidence volume, emitters are recovered as thresholded local maxima refined to sub-voxel precision
(:func:`find_peaks_3d`), converted to nm (:func:`pixels_to_nm`) and matched one-to-one to the ground
truth within a distance threshold (:func:`match_points`), which gives the Jaccard index, RMSE and the
SMLM-challenge efficiency (Sage et al., Nat. Methods 16, 387-395, 2019).

Axis conventions: arrays and pixel positions are in array order ``(z, y, x)`` / ``(y, x)``; physical
positions in nm are in coordinate order ``(x, y[, z])``, as in SMLM localisation tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from skimage.feature import peak_local_max

from ._validate import as_image_array, in_range, positive, positive_int

__all__ = ["MatchResult", "match_points", "efficiency", "find_peaks_2d", "find_peaks_3d", "pixels_to_nm",
           "ALPHA_LATERAL_PCT_PER_NM", "ALPHA_AXIAL_PCT_PER_NM"]

#: Efficiency weights of the 2016 SMLM challenge (Sage et al. 2019): 1 %/nm lateral, 0.5 %/nm axial.
ALPHA_LATERAL_PCT_PER_NM = 1.0
ALPHA_AXIAL_PCT_PER_NM = 0.5


# ----------------------------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class MatchResult:
    """Outcome of :func:`match_points`.

    ``pairs`` is an ``(tp, 2)`` int array of ``(pred_index, truth_index)``; RMSEs are over matched pairs
    (nan when ``tp == 0``; axial values nan for 2D points). ``efficiency`` is the lateral SMLM-challenge
    efficiency and ``efficiency_axial`` the axial one, both in % (see :func:`efficiency`).
    """

    tp: int
    fp: int
    fn: int
    jaccard: float
    recall: float
    precision: float
    rmse_lateral_nm: float
    rmse_axial_nm: float
    rmse_3d_nm: float
    efficiency: float
    efficiency_axial: float
    pairs: np.ndarray = field(repr=False)
    threshold_nm: float = 150.0

    @property
    def jaccard_pct(self) -> float:
        """Jaccard index in percent, the unit used by the SMLM challenge."""
        return 100.0 * self.jaccard


def efficiency(jaccard: float, rmse_nm: float, alpha_pct_per_nm: float = ALPHA_LATERAL_PCT_PER_NM) -> float:
    """SMLM-challenge 2016 efficiency, in % (Sage et al., Nat. Methods 2019, "Online Methods").

    ``E = 100 - sqrt((100 - JI[%])**2 + alpha**2 * RMSE[nm]**2)`` with ``alpha = 1 %/nm`` (lateral) or
    ``0.5 %/nm`` (axial). ``jaccard`` is a fraction in [0, 1]. E is 100 for a perfect result and may be
    negative. A nan RMSE (no matched pair) contributes no RMSE term; a nan JI gives nan.
    """
    ji = float(jaccard)
    if np.isnan(ji):
        return float("nan")
    ji = in_range(ji, "jaccard", 0.0, 1.0)
    a = positive(alpha_pct_per_nm, "alpha_pct_per_nm", allow_zero=True)
    r = float(rmse_nm)
    rterm = 0.0 if np.isnan(r) else (a * positive(r, "rmse_nm", allow_zero=True)) ** 2
    return 100.0 - float(np.sqrt((100.0 - 100.0 * ji) ** 2 + rterm))


def _points(x, name: str) -> np.ndarray:
    """Validate an (N, 2) or (N, 3) point array; N may be 0 (``[]`` also accepted as empty)."""
    try:
        import torch
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(x)
    if arr.size == 0 and arr.ndim <= 1:
        return np.zeros((0, 0), dtype=float)  # dimension taken from the other argument
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name}: unsupported dtype {arr.dtype}; expected real numeric positions in nm")
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"{name}: expected an (N, 2) or (N, 3) array of (x, y[, z]) positions in nm, "
                         f"got shape {arr.shape}")
    arr = arr.astype(float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf values")
    return arr


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den > 0 else float("nan")


def match_points(pred_nm, truth_nm, threshold_nm: float = 150.0) -> MatchResult:
    """Optimal one-to-one matching of predicted to true emitters within ``threshold_nm``.

    Procedure (as in DeepSTORM3D and the SMLM challenge): Euclidean distance matrix (3D when z is given),
    Hungarian assignment (``scipy.optimize.linear_sum_assignment``) in which pairs farther than the
    threshold cost more than any set of valid pairs, so the assignment first maximises the number of
    matches within the threshold and then minimises their total distance; out-of-threshold pairs are then
    dropped. A pair at exactly ``threshold_nm`` counts as a match.

    ``pred_nm``/``truth_nm``: ``(N, 2)`` or ``(N, 3)`` arrays of ``(x, y[, z])`` in nm (same width);
    either may be empty (``(0, d)`` or ``[]``).

    Conventions for empty input: ``jaccard = TP / (TP + FP + FN)`` and is defined as 1.0 when both sets
    are empty (nothing to find, nothing falsely found); ``recall`` is nan when ``truth`` is empty and
    ``precision`` nan when ``pred`` is empty (0/0); RMSEs are nan without matches.
    """
    threshold_nm = positive(threshold_nm, "threshold_nm")
    pred = _points(pred_nm, "pred_nm")
    truth = _points(truth_nm, "truth_nm")
    if pred.shape[1] and truth.shape[1] and pred.shape[1] != truth.shape[1]:
        raise ValueError(f"pred_nm/truth_nm: both must be 2D (x, y) or both 3D (x, y, z); got pred_nm "
                         f"shape {pred.shape} and truth_nm shape {truth.shape}")
    dim = pred.shape[1] or truth.shape[1] or 2
    pred = pred.reshape(-1, dim)
    truth = truth.reshape(-1, dim)
    n_pred, n_truth = len(pred), len(truth)

    pairs = np.zeros((0, 2), dtype=int)
    if n_pred and n_truth:
        dist = cdist(pred, truth)
        valid = dist <= threshold_nm
        # Any assignment with k+1 valid pairs is cheaper than one with k valid pairs when
        # big > (number of assigned pairs) * threshold, since each valid cost is <= threshold.
        big = (min(n_pred, n_truth) + 1) * threshold_nm + 1.0
        cost = np.where(valid, dist, big)
        rows, cols = linear_sum_assignment(cost)
        keep = valid[rows, cols]
        pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(int)

    tp = len(pairs)
    fp, fn = n_pred - tp, n_truth - tp
    jaccard = 1.0 if (tp + fp + fn) == 0 else tp / (tp + fp + fn)

    if tp:
        diff = pred[pairs[:, 0]] - truth[pairs[:, 1]]
        lat2 = np.sum(diff[:, :2] ** 2, axis=1)
        rmse_lat = float(np.sqrt(np.mean(lat2)))
        if dim == 3:
            rmse_ax = float(np.sqrt(np.mean(diff[:, 2] ** 2)))
            rmse_3d = float(np.sqrt(np.mean(lat2 + diff[:, 2] ** 2)))
        else:
            rmse_ax, rmse_3d = float("nan"), rmse_lat
    else:
        rmse_lat = rmse_3d = float("nan")
        rmse_ax = float("nan")

    eff_lat = efficiency(jaccard, rmse_lat, ALPHA_LATERAL_PCT_PER_NM)
    eff_ax = efficiency(jaccard, rmse_ax, ALPHA_AXIAL_PCT_PER_NM) if dim == 3 else float("nan")
    return MatchResult(tp=tp, fp=fp, fn=fn, jaccard=float(jaccard), recall=_ratio(tp, n_truth),
                       precision=_ratio(tp, n_pred), rmse_lateral_nm=rmse_lat, rmse_axial_nm=rmse_ax,
                       rmse_3d_nm=rmse_3d, efficiency=eff_lat, efficiency_axial=eff_ax, pairs=pairs,
                       threshold_nm=threshold_nm)


# ------------------------------------------------------------------------------------------- peak finding
_REFINE_METHODS = ("centroid", "gaussian")


def _refine_method(refine) -> str | None:
    if refine is True:
        return "centroid"
    if refine is False or refine is None:
        return None
    if isinstance(refine, str) and refine in _REFINE_METHODS:
        return refine
    raise ValueError(f"refine: expected True, False, 'centroid' or 'gaussian', got {refine!r}")


def _refine(arr: np.ndarray, coords: np.ndarray, method: str | None) -> np.ndarray:
    """Sub-pixel refinement of integer peak ``coords`` in a 3×3(×3) neighbourhood."""
    pos = coords.astype(float)
    if method is None or len(coords) == 0:
        return pos
    shape = np.array(arr.shape)
    for k, c in enumerate(coords):
        if method == "gaussian":
            # Separable three-point Gaussian fit through the peak (log-parabola): exact for Gaussian blobs.
            v0 = float(arr[tuple(c)])
            for ax in range(arr.ndim):
                if c[ax] == 0 or c[ax] == shape[ax] - 1:
                    continue
                lo, hi = c.copy(), c.copy()
                lo[ax] -= 1
                hi[ax] += 1
                vm, vp = float(arr[tuple(lo)]), float(arr[tuple(hi)])
                if v0 > 0 and vm > 0 and vp > 0:
                    lm, l0, lp = np.log(vm), np.log(v0), np.log(vp)
                    den = 2.0 * (2.0 * l0 - lm - lp)
                    if den > 0:
                        pos[k, ax] += float(np.clip((lp - lm) / den, -0.5, 0.5))
                        continue
                w = np.clip([vm, v0, vp], 0, None)  # fall back to a 1D centroid
                if w.sum() > 0:
                    pos[k, ax] += (w[2] - w[0]) / w.sum()
        else:
            lo = np.maximum(c - 1, 0)
            hi = np.minimum(c + 2, shape)
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            w = np.clip(arr[sl].astype(float), 0, None)
            total = w.sum()
            if total > 0:
                grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
                pos[k] = [float((g * w).sum() / total) for g in grids]
    return pos


def _find_peaks(arr: np.ndarray, threshold, min_distance_px, refine):
    threshold = in_range(threshold, "threshold", -np.inf, np.inf)
    min_distance_px = positive_int(min_distance_px, "min_distance_px", minimum=1)
    method = _refine_method(refine)
    arr = arr.astype(np.float64, copy=False)
    coords = peak_local_max(arr, min_distance=min_distance_px, threshold_abs=threshold, threshold_rel=None,
                            exclude_border=False)
    coords = np.asarray(coords, dtype=int).reshape(-1, arr.ndim)
    values = arr[tuple(coords.T)] if len(coords) else np.zeros(0)
    return _refine(arr, coords, method), np.asarray(values, dtype=float)


def find_peaks_2d(image, threshold: float, min_distance_px: int = 1, refine=True):
    """Local maxima of a 2D image strictly above ``threshold``, with sub-pixel refinement.

    Maxima are found with ``skimage.feature.peak_local_max`` (a maximum filter of size
    ``2*min_distance_px + 1``; peaks closer than ``min_distance_px`` are suppressed, keeping the brighter).
    ``refine``: ``True``/``'centroid'`` = intensity-weighted centroid of the 3×3 neighbourhood (negative
    values clipped to 0, the DeepSTORM3D post-processing), accurate for compact peaks (σ ≲ 0.6 px; it is
    biased towards the pixel centre for wider blobs); ``'gaussian'`` = separable three-point Gaussian
    fit, unbiased for Gaussian-shaped peaks; ``False`` = integer pixel positions.

    Returns ``(positions, values)``: float ``(K, 2)`` positions in pixel units ordered ``(y, x)`` (pixel
    centres at integers) and the ``(K,)`` peak pixel values, brightest first. No peak → shapes
    ``(0, 2)`` and ``(0,)``.
    """
    arr = as_image_array(image, "image", ndim=2)
    return _find_peaks(arr, threshold, min_distance_px, refine)


def find_peaks_3d(volume, threshold: float, min_distance_px: int = 1, refine=True):
    """Local maxima of a ``(z, y, x)`` volume strictly above ``threshold``, refined in 3×3×3.

    Same procedure and ``refine`` options as :func:`find_peaks_2d`, in 3D (DeepSTORM3D recovers emitters
    as thresholded local maxima of its confidence volume followed by a local weighted centroid).
    Returns ``(positions, values)`` with ``(K, 3)`` float positions ordered ``(z, y, x)`` in voxel units;
    no peak → shapes ``(0, 3)`` and ``(0,)``.
    """
    arr = as_image_array(volume, "volume", ndim=3)
    return _find_peaks(arr, threshold, min_distance_px, refine)


def pixels_to_nm(positions_px, voxel_nm, origin_nm=0.0) -> np.ndarray:
    """Convert pixel positions in array order to physical nm positions in coordinate order.

    ``positions_px``: ``(K, 3)`` ``(z, y, x)`` or ``(K, 2)`` ``(y, x)`` voxel positions as returned by
    :func:`find_peaks_3d`/:func:`find_peaks_2d` (integer = voxel centre). ``voxel_nm``: voxel size,
    scalar or per axis **in the same array order** ``(dz, dy, dx)``/``(dy, dx)``. ``origin_nm``: physical
    coordinate of the outer corner of voxel 0 (edge of the grid), scalar or in array order, default 0.

    Voxel-centre convention (the DeepSTORM3D recovery grid): voxel ``i`` covers
    ``[origin + i*v, origin + (i+1)*v]``, so position ``p`` maps to ``origin + (p + 0.5) * v``.
    E.g. a centred lateral grid of ``W`` pixels uses ``origin = -W * dx / 2``; an axial range starting at
    ``z_min`` uses ``origin = z_min``.

    Returns a float ``(K, 3)`` array ordered ``(x, y, z)`` (``(K, 2)`` ``(x, y)`` for 2D input), the order
    expected by :func:`match_points`.
    """
    raw = np.asarray(positions_px)
    if raw.ndim != 2 or raw.shape[1] not in (2, 3):
        raise ValueError(f"positions_px: expected a (K, 3) (z, y, x) or (K, 2) (y, x) array, got shape "
                         f"{raw.shape}")
    if raw.shape[0] == 0:
        pos = np.zeros(raw.shape)
    else:
        pos = as_image_array(raw, "positions_px", ndim=2).astype(float)
    d = pos.shape[1]

    def per_axis(v, name, check_positive):
        a = np.atleast_1d(np.asarray(v, dtype=float)) if np.asarray(v).dtype.kind in "fiu" else None
        if a is None or a.ndim != 1 or a.size not in (1, d):
            raise ValueError(f"{name}: expected a scalar or {d} values in array order "
                             f"{'(z, y, x)' if d == 3 else '(y, x)'}, got {v!r}")
        for i, x in enumerate(a):
            if check_positive:
                positive(x, f"{name}[{i}]" if a.size > 1 else name)
            else:
                in_range(x, f"{name}[{i}]" if a.size > 1 else name, -np.inf, np.inf)
        return np.broadcast_to(a, (d,))

    vox = per_axis(voxel_nm, "voxel_nm", True)
    org = per_axis(origin_nm, "origin_nm", False)
    nm = org + (pos + 0.5) * vox
    return np.ascontiguousarray(nm[:, ::-1])
