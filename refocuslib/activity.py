"""Neuron activity from a (refocused) worm video: registration, segmentation, ΔF traces and spectral clustering
(Deep-Z, Wu et al., Nat. Methods 16, 1323 (2019), Fig. 3 and its Methods "neuron activity analysis").

Pipeline (:func:`analyze_activity` runs it end to end):

1. :func:`register_frames` — rigid translation of every frame onto a reference
   (``skimage.registration.phase_cross_correlation``, applied with ``scipy.ndimage.shift``);
2. :func:`refocus_video` — every frame of both channels to a virtual z-stack with a trained Deep-Z (one
   normalisation for the whole video, so calcium changes survive); :func:`median_projection` over time of
   the nuclear (static-label) channel;
3. :func:`segment_neurons` — local maxima of the smoothed, background-subtracted projection as markers and a
   3D (or 2D) watershed (``skimage.segmentation.watershed``) of the foreground;
4. :func:`neuron_traces` — F_i(t) = mean of the ``n_brightest`` (100) brightest voxels of neuron i in frame t
   of the calcium channel; :func:`delta_f` — ΔF_i(t) = F_i(t) − F0_i with F0_i the time average of F_i (our
   reading of Deep-Z's Methods; ``baseline='percentile'`` gives the low-percentile F0 common elsewhere);
5. :func:`select_active` — the neurons with the largest standard deviation of ΔF;
6. :func:`similarity_matrix` (Eq. 14, σ = 1.5) and :func:`spectral_clustering`: W = S with a zero diagonal,
   D = diag(Σ_j W_ij), L = D − W, the generalised eigenproblem L v = λ D v (``scipy.linalg.eigh(L, D)``),
   k at the largest eigengap, k-means (scikit-learn) on the first k eigenvectors;
   :func:`sklearn_spectral_clustering` runs ``sklearn.cluster.SpectralClustering(affinity='precomputed')`` on
   the same affinity for comparison.

Evaluation against a simulated truth: :func:`detection_recall` (Hungarian matching with
:func:`refocuslib.localize.match_points`, µm → nm), :func:`cluster_ari` (adjusted Rand index) and both at once
for a pipeline result, :func:`compare_with_truth`.

Eq. 14 is implemented as printed: the relative changes ΔF_i/F_i0 are compared, d_ij² = ‖ΔF_i/F_i0 − ΔF_j/F_j0‖²
summed over time, S = exp(−d²/σ²) with σ = 1.5. A shape-only variant (each ΔF z-scored, d² divided by T) is
kept as an option (``similarity='zscore'``), never as the default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import linalg, ndimage

from refocuslib._validate import as_image_array, in_range, positive, positive_int
from refocuslib.localize import MatchResult, match_points

__all__ = ["RegistrationResult", "register_frames", "refocus_video", "median_projection", "Segmentation",
           "segment_neurons", "neuron_traces", "delta_f", "select_active", "similarity_matrix", "SpectralResult",
           "spectral_clustering", "sklearn_spectral_clustering", "cluster_order", "detection_recall",
           "cluster_ari", "ActivityResult", "analyze_activity", "result_centres_um", "TruthComparison",
           "compare_with_truth"]


# ----------------------------------------------------------------------------------------------- registration
@dataclass
class RegistrationResult:
    """``frames`` registered (T, ...); ``shifts_px`` (T, ndim) the shift applied to each frame (array order);
    ``others`` the other channels moved by the same shifts."""
    frames: np.ndarray
    shifts_px: np.ndarray
    others: Tuple[np.ndarray, ...] = ()


def register_frames(frames, reference=0, upsample_factor: int = 10, others: Sequence = (),
                    order: int = 3) -> RegistrationResult:
    """Register every frame of ``frames`` (T, H, W) (or (T, Z, H, W)) to a reference by a rigid translation.

    ``reference``: a frame index or an image of one frame's shape. The shift of each frame is found with
    ``skimage.registration.phase_cross_correlation`` (sub-pixel, ``upsample_factor``) and applied with
    ``scipy.ndimage.shift`` (spline ``order``, edges repeated) to the frame and to every array in ``others``
    (other channels of the same video, same shape).
    """
    from skimage.registration import phase_cross_correlation
    x = as_image_array(frames, "frames", ndim=(3, 4)).astype(np.float32)
    up = positive_int(upsample_factor, "upsample_factor")
    order = int(in_range(order, "order", 0, 5))
    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        if not 0 <= reference < len(x):
            raise ValueError(f"reference: frame index must be in [0, {len(x) - 1}], got {reference}")
        ref = x[int(reference)]
    else:
        ref = as_image_array(reference, "reference", ndim=x.ndim - 1).astype(np.float32)
        if ref.shape != x.shape[1:]:
            raise ValueError(f"reference: expected the shape of one frame {x.shape[1:]}, got {ref.shape}")
    extra = []
    for k, o in enumerate(others):
        arr = as_image_array(o, f"others[{k}]", ndim=x.ndim).astype(np.float32)
        if arr.shape != x.shape:
            raise ValueError(f"others[{k}]: expected shape {x.shape} like frames, got {arr.shape}")
        extra.append(arr)
    shifts = np.zeros((len(x), x.ndim - 1))
    out = np.empty_like(x)
    moved = [np.empty_like(e) for e in extra]
    for t in range(len(x)):
        shifts[t] = phase_cross_correlation(ref, x[t], upsample_factor=up, normalization=None)[0]
        out[t] = ndimage.shift(x[t], shifts[t], order=order, mode="nearest")
        for e, m in zip(extra, moved):
            m[t] = ndimage.shift(e[t], shifts[t], order=order, mode="nearest")
    return RegistrationResult(out, shifts, tuple(moved))


def median_projection(frames) -> np.ndarray:
    """Median over time (axis 0) of a video (T, ...): the static nuclear map used for segmentation."""
    return np.median(as_image_array(frames, "frames", ndim=(3, 4)), axis=0).astype(np.float32)


def refocus_video(model, frames, z_um: Sequence[float], batch_size: int = 8,
                  trained_range_um: Optional[Tuple[float, float]] = None, **refocus_kwargs) -> np.ndarray:
    """Refocus every frame of a single-plane video (T, H, W) to the planes ``z_um`` with a Deep-Z ``model``
    (:func:`refocuslib.inference.refocus_stack`): returns (T, len(z_um), H, W).

    All frames share ONE normalisation — the Deep-Z one (triangle background, 99.9th percentile) of the
    video's median frame — instead of one per frame, so that intensity changes between frames (calcium
    activity) survive refocusing; the output is scaled back to the input's units (background-subtracted
    counts)."""
    from refocuslib.imaging import triangle_background
    from refocuslib.inference import refocus_stack
    x = as_image_array(frames, "frames", ndim=3).astype(np.float32)
    ref = np.median(x, axis=0)
    bg = triangle_background(ref)
    scale = float(np.percentile(ref - bg, 99.9))
    if not scale > 0:
        raise ValueError("frames: the median frame has no signal above its background")
    out = np.empty((len(x), len(np.atleast_1d(z_um))) + x.shape[1:], np.float32)
    for t in range(len(x)):
        out[t] = refocus_stack(model, (x[t] - bg) / scale, z_um, batch_size=batch_size,
                               trained_range_um=trained_range_um, normalize=False, **refocus_kwargs)
    return out * scale


# ----------------------------------------------------------------------------------------------- segmentation
@dataclass
class Segmentation:
    """Neurons found by :func:`segment_neurons`: ``labels`` (same shape as the image, 0 = background, neuron
    i has label i + 1), ``centres_px`` (N, ndim) intensity centroids in array order (z, y, x) or (y, x),
    ``peaks_px`` the watershed markers, ``voxel_um`` the voxel size per axis."""
    labels: np.ndarray
    centres_px: np.ndarray
    peaks_px: np.ndarray
    voxel_um: Tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.centres_px)

    def __len__(self) -> int:
        return self.n

    def centres_um(self, z0_um: float = 0.0) -> np.ndarray:
        """Centres (N, 3) as (x, y, z) µm — or (N, 2) (x, y) for a 2D segmentation — with pixel (i, j) centred
        at ((j + ½)·px, (i + ½)·px) and plane k at depth z0 + k·dz."""
        c = self.centres_px
        if c.shape[1] == 2:
            return np.column_stack([(c[:, 1] + 0.5) * self.voxel_um[1], (c[:, 0] + 0.5) * self.voxel_um[0]])
        return np.column_stack([(c[:, 2] + 0.5) * self.voxel_um[2], (c[:, 1] + 0.5) * self.voxel_um[1],
                                z0_um + c[:, 0] * self.voxel_um[0]])


def _voxel(voxel_um, ndim: int) -> np.ndarray:
    v = np.atleast_1d(np.asarray(voxel_um, dtype=float))
    if v.size == 1:
        v = np.repeat(v, ndim)
    if v.shape != (ndim,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"voxel_um: expected {ndim} positive sizes (µm per axis, array order), got {voxel_um!r}")
    return v


def _ellipsoid_footprint(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(radius_vox, 1.0)
    axes = [np.arange(-int(np.floor(ri)), int(np.floor(ri)) + 1) / ri for ri in r]
    grids = np.meshgrid(*axes, indexing="ij")
    return sum(g ** 2 for g in grids) <= 1.0 + 1e-9


def segment_neurons(image, voxel_um, min_distance_um: float = 2.0, smooth_um: float = 0.4,
                    background_um: float = 3.0, threshold: Optional[float] = None,
                    mask_fraction: float = 0.5) -> Segmentation:
    """Local maxima + watershed segmentation of a (median-projected) nuclear image, 3D (z, y, x) or 2D (y, x).

    The image is smoothed by a Gaussian of ``smooth_um`` and a broad Gaussian of ``background_um`` (the
    out-of-focus haze) is subtracted (difference of Gaussians, σ in µm per axis with ``voxel_um``). Markers are
    the local maxima of that image within an ellipsoid of radius ``min_distance_um`` that exceed
    ``threshold`` (default: Otsu's threshold of its positive part); the watershed of the negated image from
    those markers fills the foreground, where the image exceeds ``mask_fraction`` × the threshold.
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed
    img = as_image_array(image, "image", ndim=(2, 3)).astype(np.float64)
    vox = _voxel(voxel_um, img.ndim)
    md = positive(min_distance_um, "min_distance_um")
    s1 = positive(smooth_um, "smooth_um", allow_zero=True)
    s2 = positive(background_um, "background_um")
    if s2 <= s1:
        raise ValueError(f"background_um: must exceed smooth_um ({s1}), got {background_um}")
    frac = in_range(mask_fraction, "mask_fraction", 0.0, 1.0, lo_open=True)
    enh = ndimage.gaussian_filter(img, s1 / vox) - ndimage.gaussian_filter(img, s2 / vox)
    pos = enh[enh > 0]
    if threshold is None:
        thr = float(threshold_otsu(pos)) if pos.size > 1 and np.ptp(pos) > 0 else np.inf
    else:
        thr = float(threshold)
        if not np.isfinite(thr):
            raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
    mask = enh > frac * thr
    empty = np.zeros((0, img.ndim))
    if not np.any(enh > thr):
        return Segmentation(np.zeros(img.shape, np.int32), empty, empty, tuple(vox))
    peaks = peak_local_max(enh, footprint=_ellipsoid_footprint(md / vox), threshold_abs=thr,
                           exclude_border=False, min_distance=1)
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-enh, markers, mask=mask).astype(np.int32)
    weight = np.clip(enh - frac * thr, 0, None)
    idx = np.arange(1, len(peaks) + 1)
    centres = np.array(ndimage.center_of_mass(weight, labels, idx), dtype=float).reshape(-1, img.ndim)
    bad = ~np.all(np.isfinite(centres), axis=1)
    centres[bad] = peaks[bad]
    return Segmentation(labels, centres, peaks.astype(float), tuple(vox))


# ----------------------------------------------------------------------------------------------------- traces
def neuron_traces(frames, labels, n_brightest: int = 100) -> np.ndarray:
    """F (N, T): for each label 1…N of ``labels`` and each frame of ``frames`` (T, *labels.shape) the mean of
    the ``n_brightest`` brightest voxels of that neuron (all its voxels when it has fewer) — Deep-Z Methods."""
    x = as_image_array(frames, "frames", ndim=(3, 4))
    lab = as_image_array(labels, "labels", ndim=(2, 3), kinds="iu")
    if x.shape[1:] != lab.shape:
        raise ValueError(f"frames: expected (T, {', '.join(map(str, lab.shape))}) to match labels, got {x.shape}")
    k = positive_int(n_brightest, "n_brightest")
    n = int(lab.max())
    flat = x.reshape(len(x), -1)
    lab_flat = lab.ravel()
    order = np.argsort(lab_flat, kind="stable")
    bounds = np.searchsorted(lab_flat[order], np.arange(1, n + 2))
    F = np.full((n, len(x)), np.nan)
    for i in range(n):
        vox = order[bounds[i]:bounds[i + 1]]
        if vox.size == 0:
            continue
        vals = flat[:, vox]
        m = min(k, vals.shape[1])
        F[i] = np.partition(vals, vals.shape[1] - m, axis=1)[:, vals.shape[1] - m:].mean(axis=1)
    return F


def delta_f(F, baseline: str = "mean", percentile: float = 10.0) -> Tuple[np.ndarray, np.ndarray]:
    """ΔF = F − F0 per neuron (rows of ``F`` (N, T)); returns (ΔF, F0).

    ``baseline='mean'``: F0 = time average of F (Deep-Z Methods, as we read them); ``'percentile'``: F0 = the
    ``percentile``-th percentile of F over time (a resting level, common in calcium imaging)."""
    F = as_image_array(F, "F", ndim=2)
    if baseline == "mean":
        F0 = F.mean(axis=1)
    elif baseline == "percentile":
        F0 = np.percentile(F, in_range(percentile, "percentile", 0.0, 100.0), axis=1)
    else:
        raise ValueError(f"baseline: must be 'mean' or 'percentile', got {baseline!r}")
    return F - F0[:, None], F0


def select_active(dF, n_active: Optional[int] = None, threshold: Optional[float] = None) -> np.ndarray:
    """Indices of the active neurons, by the standard deviation of ΔF over time (Deep-Z Methods), most active
    first: the ``n_active`` largest; or those above ``threshold``; or (both None) those above Otsu's threshold
    of the log standard deviations (active and inactive cells form two populations)."""
    from skimage.filters import threshold_otsu
    dF = as_image_array(dF, "dF", ndim=2)
    sd = dF.std(axis=1)
    order = np.argsort(-sd, kind="stable")
    if n_active is not None and threshold is not None:
        raise ValueError("n_active/threshold: give at most one of them")
    if n_active is not None:
        return order[:min(positive_int(n_active, "n_active"), len(sd))]
    if threshold is None:
        log_sd = np.log(np.maximum(sd, 1e-12))
        if len(sd) < 2 or np.ptp(log_sd) == 0:
            return order
        threshold = float(np.exp(threshold_otsu(log_sd)))
    thr = positive(threshold, "threshold", allow_zero=True)
    return order[sd[order] > thr]


# ----------------------------------------------------------------------------------------- spectral clustering
#: variants of :func:`similarity_matrix`: the paper's Eq. 14 as printed, and a shape-only option.
SIMILARITY_VARIANTS = ("printed", "zscore")


def similarity_matrix(dF, F0=None, sigma: float = 1.5, variant: str = "printed") -> np.ndarray:
    """Deep-Z Eq. 14 as printed: S_ij = exp(−‖ΔF_i/F_i0 − ΔF_j/F_j0‖² / σ²), σ = 1.5, the norm taken over time
    (``F0`` (N,) the time averages of :func:`delta_f`). Diagonal 1.

    ``variant='zscore'`` (an option beside the printed formula, not the paper's): each ΔF_i normalised to zero mean
    and unit standard deviation and d_ij² = ‖ΔF_i − ΔF_j‖²/T = 2·(1 − Pearson r_ij), which compares trace shapes
    only (S = exp(−2/σ²) for uncorrelated, exp(−4/σ²) for anti-correlated traces)."""
    from scipy.spatial.distance import cdist
    x = as_image_array(dF, "dF", ndim=2).astype(np.float64)
    sig = positive(sigma, "sigma")
    if variant == "printed":
        if F0 is None:
            raise ValueError("F0: Eq. 14 divides each ΔF_i by its baseline F_i0; pass the F0 of delta_f")
        f0 = np.asarray(F0, dtype=np.float64).reshape(-1)
        if f0.shape != (x.shape[0],) or not np.all(np.isfinite(f0)) or np.any(f0 <= 0):
            raise ValueError(f"F0: expected {x.shape[0]} finite baselines > 0 (one per trace), got shape {f0.shape}")
        x = x / f0[:, None]
        d2 = cdist(x, x, "sqeuclidean")
    elif variant == "zscore":
        x = x - x.mean(axis=1, keepdims=True)
        sd = x.std(axis=1, keepdims=True)
        x = np.divide(x, sd, out=np.zeros_like(x), where=sd > 0)
        d2 = cdist(x, x, "sqeuclidean") / x.shape[1]
    else:
        raise ValueError(f"variant: one of {SIMILARITY_VARIANTS}, got {variant!r}")
    return np.exp(-d2 / sig ** 2)


@dataclass
class SpectralResult:
    """Outcome of :func:`spectral_clustering`: ``labels`` (N,) in 0…k−1 (cluster 0 the largest), ``k``,
    ``eigenvalues`` (ascending, λ₁ = 0) and ``eigenvectors`` (N, N) of L v = λ D v, ``gaps`` λ_{j+1} − λ_j
    for j = 1…len (``gaps[j-1]``), ``order`` the neurons sorted by cluster (for the reordered matrix)."""
    labels: np.ndarray
    k: int
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    gaps: np.ndarray
    order: np.ndarray = field(repr=False, default=None)


def _check_affinity(S) -> np.ndarray:
    S = as_image_array(S, "S", ndim=2).astype(np.float64)
    if S.shape[0] != S.shape[1] or S.shape[0] < 2:
        raise ValueError(f"S: expected a square (N, N) affinity with N >= 2, got shape {S.shape}")
    if np.any(S < 0) or not np.allclose(S, S.T, atol=1e-10):
        raise ValueError("S: the affinity must be symmetric and non-negative")
    return S


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    uniq, counts = np.unique(labels, return_counts=True)
    rank = {u: r for r, u in enumerate(uniq[np.argsort(-counts, kind="stable")])}
    return np.array([rank[v] for v in labels], dtype=int)


def spectral_clustering(S, k: Optional[int] = None, k_max: int = 10, k_min: int = 2,
                        seed: int = 0) -> SpectralResult:
    """Spectral clustering of Deep-Z Methods (Shi–Malik normalised cut): W = S with zero diagonal,
    D = diag(Σ_j W_ij), L = D − W; solve L v = λ D v (``scipy.linalg.eigh(L, D)``); unless ``k`` is given,
    k = argmax_{k_min ≤ j ≤ k_max} (λ_{j+1} − λ_j) (eigengap; ``k_min`` = 2 because with a dense Gaussian
    affinity the first gap λ₂ − λ₁ only says the graph is connected); k-means (scikit-learn, 10 restarts,
    ``seed``) on the rows of the first k eigenvectors."""
    from sklearn.cluster import KMeans
    S = _check_affinity(S)
    n = len(S)
    W = S.copy()
    np.fill_diagonal(W, 0.0)
    deg = W.sum(axis=1)
    if np.any(deg <= 0):
        raise ValueError("S: every neuron needs a non-zero similarity to some other neuron")
    lam, vec = linalg.eigh(np.diag(deg) - W, np.diag(deg))
    gaps = np.diff(lam)
    k_max = min(positive_int(k_max, "k_max"), n - 1)
    k_min = positive_int(k_min, "k_min")
    if k is None:
        if k_min > k_max:
            raise ValueError(f"k_min: must be <= k_max ({k_max}) for {n} neurons, got {k_min}")
        k = k_min + int(np.argmax(gaps[k_min - 1:k_max]))
    else:
        k = positive_int(k, "k")
        if k > n:
            raise ValueError(f"k: must be in [1, {n}] for {n} neurons, got {k}")
    if k == 1:
        labels = np.zeros(n, dtype=int)
    else:
        km = KMeans(n_clusters=k, n_init=10, random_state=int(seed)).fit(vec[:, :k])
        labels = _relabel_by_size(km.labels_)
    return SpectralResult(labels, int(k), lam, vec, gaps, cluster_order(labels, vec[:, 1] if n > 1 else None))


def sklearn_spectral_clustering(S, k: int, seed: int = 0) -> np.ndarray:
    """``sklearn.cluster.SpectralClustering(affinity='precomputed')`` on the same affinity (labels (N,),
    cluster 0 the largest) — the reference implementation :func:`spectral_clustering` is compared with."""
    from sklearn.cluster import SpectralClustering
    S = _check_affinity(S)
    k = positive_int(k, "k")
    if k > len(S):
        raise ValueError(f"k: must be in [1, {len(S)}], got {k}")
    sc = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=int(seed), assign_labels="kmeans")
    return _relabel_by_size(sc.fit_predict(S))


def cluster_order(labels, key=None) -> np.ndarray:
    """Permutation that sorts neurons by cluster label and, within a cluster, by ``key`` (e.g. the Fiedler
    vector): the row/column order of the reordered similarity matrix (Deep-Z Fig. 3)."""
    labels = np.asarray(labels)
    key = np.zeros(len(labels)) if key is None else np.asarray(key, dtype=float)
    if key.shape != labels.shape:
        raise ValueError(f"key: expected shape {labels.shape} like labels, got {key.shape}")
    return np.lexsort((key, labels))


# -------------------------------------------------------------------------------------------------- evaluation
def detection_recall(centres_um, truth_um, threshold_um: float = 2.0) -> MatchResult:
    """Hungarian one-to-one matching of detected to true neuron centres (x, y[, z]) µm within ``threshold_um``
    (:func:`refocuslib.localize.match_points` after µm → nm); ``.recall`` = matched / true neurons. Default
    2 µm ≈ one nucleus diameter: a detection closer than that to a nucleus centre lies inside it."""
    thr = positive(threshold_um, "threshold_um")
    pred = np.asarray(centres_um, dtype=float)
    truth = np.asarray(truth_um, dtype=float)
    return match_points(pred * 1000.0 if pred.size else pred, truth * 1000.0 if truth.size else truth,
                        threshold_nm=thr * 1000.0)


def cluster_ari(labels, truth_groups) -> float:
    """Adjusted Rand index (``sklearn.metrics.adjusted_rand_score``) of cluster labels against ground-truth
    groups of the same neurons (1 = identical partitions, ≈ 0 = chance)."""
    from sklearn.metrics import adjusted_rand_score
    a, b = np.asarray(labels).ravel(), np.asarray(truth_groups).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"labels/truth_groups: expected two non-empty label lists of equal length, got "
                         f"{a.size} and {b.size}")
    return float(adjusted_rand_score(b, a))


# ------------------------------------------------------------------------------------------------- pipeline
@dataclass
class ActivityResult:
    """Everything :func:`analyze_activity` found: the segmentation, F and ΔF (N, T), F0, the indices of the
    active neurons (most active first), their similarity matrix and spectral clustering."""
    segmentation: Segmentation
    F: np.ndarray
    dF: np.ndarray
    F0: np.ndarray
    active: np.ndarray
    similarity: np.ndarray
    clustering: Optional[SpectralResult]


def result_centres_um(result: ActivityResult, z0_um: float = 0.0) -> np.ndarray:
    """Centres of the neurons of ``result``: (N, 3) (x, y, z) µm for a stack whose first plane lies at depth
    ``z0_um``, (N, 2) (x, y) for a single-plane analysis."""
    seg = result.segmentation
    return seg.centres_um(z0_um=z0_um) if seg.labels.ndim == 3 else seg.centres_um()


@dataclass
class TruthComparison:
    """:func:`compare_with_truth`: detection (``n`` found, ``match`` with recall/precision) and, when clusters
    exist, the ARI of the clusters of the active neurons that match a true nucleus (``n_scored`` of them)
    against that nucleus's group, ``ari_k_true`` the same embedding clustered at ``k_true`` clusters, and
    ``ari_vs_sklearn`` the agreement of :func:`spectral_clustering` with :func:`sklearn_spectral_clustering`
    at the same k."""
    n: int
    n_active: int
    match: MatchResult
    k: Optional[int] = None
    ari: float = float("nan")
    ari_k_true: float = float("nan")
    ari_vs_sklearn: float = float("nan")
    n_scored: int = 0
    found_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)
    truth_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)

    @property
    def recall(self) -> float:
        return self.match.recall

    @property
    def precision(self) -> float:
        return self.match.precision

    def chance_ari(self, n_perm: int = 200, seed: int = 0) -> np.ndarray:
        """ARIs of the clusters against randomly permuted truth groups (the chance level of ``ari``)."""
        rng = np.random.default_rng(seed)
        if self.n_scored == 0:
            return np.full(positive_int(n_perm, "n_perm"), np.nan)
        return np.array([cluster_ari(self.found_labels, rng.permutation(self.truth_groups))
                         for _ in range(positive_int(n_perm, "n_perm"))])


def compare_with_truth(result: ActivityResult, truth_um, truth_groups, z0_um: float = 0.0,
                       threshold_um: float = 2.0, k_true: Optional[int] = None, seed: int = 0) -> TruthComparison:
    """Score ``result`` against a simulated truth: ``truth_um`` (M, 3) nucleus centres (x, y, z) — only x, y are
    used for a single-plane analysis — and ``truth_groups`` (M,) their activity groups. Detection:
    :func:`detection_recall` within ``threshold_um``; clusters: :func:`cluster_ari` over the active neurons
    matched to a true nucleus."""
    truth = np.asarray(truth_um, dtype=float)
    groups = np.asarray(truth_groups)
    if truth.ndim != 2 or truth.shape[1] != 3 or groups.shape != (len(truth),):
        raise ValueError(f"truth_um/truth_groups: expected (M, 3) centres and (M,) groups, got {truth.shape} and "
                         f"{groups.shape}")
    c = result_centres_um(result, z0_um)
    m = detection_recall(c, truth[:, :c.shape[1]], threshold_um)
    out = TruthComparison(n=result.segmentation.n, n_active=len(result.active), match=m)
    if result.clustering is None:
        return out
    pairs = dict(m.pairs.tolist())
    keep = [i for i, n in enumerate(result.active) if n in pairs]
    out.k = result.clustering.k
    out.n_scored = len(keep)
    out.found_labels = result.clustering.labels[keep]
    out.truth_groups = groups[[pairs[result.active[i]] for i in keep]].astype(int)
    if keep:
        out.ari = cluster_ari(out.found_labels, out.truth_groups)
        if k_true is not None and k_true <= len(result.similarity):
            at_k = spectral_clustering(result.similarity, k=k_true, seed=seed)
            out.ari_k_true = cluster_ari(at_k.labels[keep], out.truth_groups)
    sk = sklearn_spectral_clustering(result.similarity, result.clustering.k, seed=seed)
    out.ari_vs_sklearn = cluster_ari(sk, result.clustering.labels)
    return out


def analyze_activity(nuclear, calcium, voxel_um, n_brightest: int = 100, n_active: Optional[int] = None,
                     sigma: float = 1.5, k: Optional[int] = None, k_max: int = 10, seed: int = 0,
                     baseline: str = "mean", similarity: str = "printed", **segment_kwargs) -> ActivityResult:
    """Deep-Z Fig. 3 analysis of registered videos ``nuclear`` and ``calcium`` ((T, Z, H, W) refocused stacks
    or (T, H, W) single planes): median projection of the nuclear channel → :func:`segment_neurons` →
    :func:`neuron_traces` of the calcium channel → :func:`delta_f` → :func:`select_active` →
    :func:`similarity_matrix` → :func:`spectral_clustering` (skipped when fewer than 3 neurons are active)."""
    nuc = as_image_array(nuclear, "nuclear", ndim=(3, 4))
    cal = as_image_array(calcium, "calcium", ndim=(3, 4))
    if nuc.shape != cal.shape:
        raise ValueError(f"calcium: expected the shape of nuclear {nuc.shape}, got {cal.shape}")
    seg = segment_neurons(median_projection(nuc), voxel_um, **segment_kwargs)
    if seg.n == 0:
        empty = np.zeros((0, len(cal)))
        return ActivityResult(seg, empty, empty, np.zeros(0), np.zeros(0, int), np.zeros((0, 0)), None)
    F = neuron_traces(cal, seg.labels, n_brightest)
    dF, F0 = delta_f(F, baseline)
    active = select_active(dF, n_active=n_active) if len(dF) else np.zeros(0, int)
    S = similarity_matrix(dF[active], F0[active], sigma, variant=similarity) if len(active) else np.zeros((0, 0))
    clus = spectral_clustering(S, k=k, k_max=k_max, seed=seed) if len(active) >= 3 else None
    return ActivityResult(seg, F, dF, F0, active, S, clus)
