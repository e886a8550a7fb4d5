"""DeepSTORM3D (Nehme et al., Nat. Methods 17, 734 (2020)): evaluation protocols and claim predicates.

Protocols
* :func:`density_sweep` — paper Fig. 2b: simulated frames at each density (emitters per 13 × 13 µm), the CNN on
  every frame and matching pursuit (MP, the paper's baseline) on the first frames of the same set (paired), both
  matched to the truth (Hungarian, 150 nm); per density the pooled Jaccard index (JI), its mean ± standard error
  over frames, and the lateral/axial RMSE of the matches. The field shrinks at high density (``fov_px``) so that
  the frame counts stay high at CI cost; the density per area is the paper's.
* :func:`regenerated_residual` — paper Fig. 3b, 5e: the image regenerated from the localisations (non-negative
  least-squares photons through the physics layer, :func:`refocuslib.smlm.fit_photons`) and the ratio of its
  residual variance to the frame's noise variance: that of its dark background tiles
  (:func:`refocuslib.smlm.noise_variance`), and the camera's own shot + read noise at the regenerated image (the
  noise a perfect model leaves on bright frames); :func:`ideal_residual_floor` gives what a perfect model scores.

Claim predicates (each returns a :class:`~refocuslib.evaluate.claims.Verdict` with the items it rests on;
tests/test_deepstorm3d.py checks that each fails for an all-zero output):
:func:`cnn_beats_mp`, :func:`cnn_jaccard_at_least`, :func:`mp_more_precise`, :func:`psf_beats`,
:func:`residual_explained`, :func:`telomere_count`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np

from refocuslib._validate import positive, positive_int
from refocuslib.evaluate.claims import Verdict, verdict
from refocuslib.localize import match_points

__all__ = ["FrameScores", "DensityResult", "frame_scores", "density_sweep", "regenerated_residual", "ideal_residual",
           "cnn_beats_mp", "cnn_jaccard_at_least", "mp_more_precise", "psf_beats", "residual_explained",
           "telomere_count", "PAPER"]

#: The paper's numbers beside which ours are reported (read off Fig. 2b, 3b, 4d, 5e and the text).
PAPER = {
    "fig2b_jaccard_cnn_d75": 0.7, "fig2b_jaccard_mp_d75": 0.3,     # approx., read off Fig. 2b
    "fig2b_jaccard_cnn_d5": 0.95,
    "fig5e_telomeres_found": 57, "fig5e_telomeres_total": 62,
}


@dataclass
class FrameScores:
    """Per-frame matching of one method: ``tp``, ``fp``, ``fn`` per frame and the matched errors (nm)."""
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    err_lateral_nm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    err_axial_nm: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_frames(self) -> int:
        return len(self.tp)

    @property
    def n_emitters(self) -> int:
        return int(np.sum(self.tp + self.fn))

    @property
    def jaccard_per_frame(self) -> np.ndarray:
        den = self.tp + self.fp + self.fn
        return np.where(den > 0, self.tp / np.maximum(den, 1), 1.0)

    @property
    def jaccard(self) -> float:
        """Pooled JI (sums over frames, as the paper's per-density numbers)."""
        den = float(np.sum(self.tp + self.fp + self.fn))
        return float(np.sum(self.tp)) / den if den else 1.0

    @property
    def jaccard_se(self) -> float:
        """Standard error of the per-frame JI."""
        j = self.jaccard_per_frame
        return float(j.std(ddof=1) / np.sqrt(len(j))) if len(j) > 1 else float("nan")

    @property
    def rmse_lateral_nm(self) -> float:
        e = self.err_lateral_nm
        return float(np.sqrt(np.mean(e ** 2))) if len(e) else float("nan")

    @property
    def rmse_axial_nm(self) -> float:
        e = self.err_axial_nm
        return float(np.sqrt(np.mean(e ** 2))) if len(e) else float("nan")

    def head(self, n: int) -> "FrameScores":
        """The scores of the first ``n`` frames (errors kept whole: use for JI only)."""
        return FrameScores(self.tp[:n], self.fp[:n], self.fn[:n], self.err_lateral_nm, self.err_axial_nm)

    def summary(self) -> dict:
        return {"jaccard": self.jaccard, "jaccard_mean": float(self.jaccard_per_frame.mean()) if self.n_frames else
                float("nan"), "jaccard_se": self.jaccard_se, "rmse_lateral_nm": self.rmse_lateral_nm,
                "rmse_axial_nm": self.rmse_axial_nm, "n_frames": self.n_frames, "n_emitters": self.n_emitters,
                "n_matched": int(np.sum(self.tp))}


def frame_scores(pred_nm: Sequence[np.ndarray], truth_nm: Sequence[np.ndarray], match_nm: float = 150.0) -> FrameScores:
    """Hungarian matching (:func:`refocuslib.localize.match_points`, 3D within ``match_nm``) frame by frame."""
    if len(pred_nm) != len(truth_nm):
        raise ValueError(f"pred_nm/truth_nm: need one array per frame, got {len(pred_nm)} and {len(truth_nm)}")
    tp, fp, fn, el, ea = [], [], [], [], []
    for p, t in zip(pred_nm, truth_nm):
        p = np.asarray(p, dtype=np.float64).reshape(-1, 3)
        t = np.asarray(t, dtype=np.float64).reshape(-1, 3)
        m = match_points(p, t, match_nm)
        tp.append(m.tp), fp.append(m.fp), fn.append(m.fn)
        if m.tp:
            d = p[m.pairs[:, 0]] - t[m.pairs[:, 1]]
            el.append(np.hypot(d[:, 0], d[:, 1]))
            ea.append(d[:, 2])
    cat = (lambda v: np.concatenate(v) if v else np.zeros(0))
    return FrameScores(np.array(tp, float), np.array(fp, float), np.array(fn, float), cat(el), cat(ea))


@dataclass
class DensityResult:
    """One density of :func:`density_sweep`: the CNN on all frames, MP on the first ``mp.n_frames`` (paired)."""
    density: float
    fov_px: int
    emitters_per_frame: int
    cnn: FrameScores
    mp: Optional[FrameScores]
    mp_seconds_per_frame: float = float("nan")
    cnn_seconds_per_frame: float = float("nan")

    def summary(self) -> dict:
        out = {"density": self.density, "fov_px": self.fov_px, "emitters_per_frame": self.emitters_per_frame,
               "cnn": self.cnn.summary(), "cnn_s_per_frame": self.cnn_seconds_per_frame,
               "mp_s_per_frame": self.mp_seconds_per_frame}
        if self.mp is not None:
            out["mp"] = self.mp.summary()
            out["cnn_on_mp_frames"] = self.cnn.head(self.mp.n_frames).summary()
        return out


def density_sweep(task, densities: Sequence[float], fov_px: Dict[float, int], n_frames: int, n_frames_mp: Dict[float, int],
                  seed: int, photons=None, background=None, mp_min_photons: float = 6000.0, mp_z_step_um: float = 0.1,
                  match_nm: float = 150.0, localizer=None) -> Dict[float, DensityResult]:
    """Paper Fig. 2b. For each density: ``n_frames`` frames of ``fov_px[d]``² pixels with exactly the emitters of
    that density (``emitters_for_density``), simulated through ``task``'s optics and mask at ``photons`` and
    ``background`` (defaults: the training ranges), seeds ``seed + 1000·k``; the CNN localises all
    (``localizer(frames) -> list of (K, 3) nm``, default ``task.localize``), MP the first ``n_frames_mp[d]``."""
    import time
    from refocuslib import smlm
    from refocuslib.datasets.deepstorm3d import emitters_for_density
    from refocuslib.tasks.deepstorm3d import simulate_test_frames
    n_frames = positive_int(n_frames, "n_frames")
    loc = localizer or task.localize
    out = {}
    for k, d in enumerate(densities):
        px = positive_int(fov_px[d], "fov_px", minimum=8)
        n = max(1, emitters_for_density(d, (px * task.grid.pixel_um,) * 2))
        frames = simulate_test_frames(task, (px, px), n, n_frames, seed=int(seed) + 1000 * k, photons=photons,
                                      background=background)
        truth = task.truth_nm(frames)
        t0 = time.perf_counter()
        cnn_nm = loc(frames["frame"])
        t_cnn = (time.perf_counter() - t0) / n_frames
        n_mp = min(int(n_frames_mp.get(d, 0)), n_frames)
        mp, t_mp = None, float("nan")
        if n_mp:
            phys = task.physics.resized((px, px))
            mp_nm, t0 = [], time.perf_counter()
            for i in range(n_mp):
                r = smlm.matching_pursuit(phys.counts_to_photons(frames["frame"][i, 0]), phys,
                                          min_photons=mp_min_photons, z_step_um=mp_z_step_um,
                                          z_range_um=task.grid.z_range_um, max_emitters=3 * n + 10)
                mp_nm.append(r.xyz_nm)
            t_mp = (time.perf_counter() - t0) / n_mp
            mp = frame_scores(mp_nm, truth[:n_mp], match_nm)
        out[d] = DensityResult(float(d), px, n, frame_scores(cnn_nm, truth, match_nm), mp, t_mp, t_cnn)
    return out


def regenerated_residual(physics, points_nm, frame_counts, background=None, blur_sigma_px: float = 0.0) -> dict:
    """Paper Fig. 3b / 5e: regenerate a real frame from its localisations (``points_nm`` (K, 3)) through
    ``physics`` (resized to the frame) by non-negative least squares (:func:`refocuslib.smlm.fit_photons`,
    flat background fitted, or ``background`` map; each PSF blurred by ``blur_sigma_px``), and compare the
    residual variance with two noise variances (counts²):

    * ``noise_var``: that of the frame's dark tiles (:func:`refocuslib.smlm.noise_variance`, background only);
      ``ratio`` = residual variance / it;
    * ``camera_noise_var``: the camera's own noise at the regenerated image, averaged over the frame —
      per pixel gain·(model − offset) (Poisson-equivalent shot noise of signal and background) + read² —
      the noise a perfect model leaves, bright spots included; ``ratio_camera`` = residual variance / it,
      and ``chi2`` = the mean over pixels of residual² / that per-pixel variance (reduced χ²).

    Returns those, ``model`` (counts), ``residual_var`` and the fitted ``photons``."""
    from refocuslib import smlm
    frame = np.asarray(frame_counts, dtype=np.float64)
    phys = physics.resized(frame.shape)
    img = phys.counts_to_photons(frame).numpy()
    bg = None if background is None else np.asarray(phys.counts_to_photons(background).numpy())
    ph, _, model_ph = smlm.fit_photons(phys, np.asarray(points_nm, dtype=np.float64).reshape(-1, 3) / 1000.0, img,
                                       background=bg, blur_sigma_px=blur_sigma_px)
    model = model_ph * phys.gain * phys.qe + phys.baseline_adu
    res = frame - model
    res_var = float(np.var(res, ddof=1))
    noise = smlm.noise_variance(frame)
    pixel_var = phys.gain * np.clip(model - phys.baseline_adu, 0.0, None) + phys.read_noise_e ** 2
    camera_var = float(pixel_var.mean())
    return {"model": model, "residual_var": res_var, "noise_var": noise, "ratio": res_var / noise,
            "camera_noise_var": camera_var, "ratio_camera": res_var / camera_var,
            "chi2": float(np.mean(res ** 2 / pixel_var)), "photons": ph}


def ideal_residual(physics, points_nm, regenerated: dict, seed: int = 0, background=None,
                   blur_sigma_px: float = 0.0) -> dict:
    """What a perfect model would score in :func:`regenerated_residual` (its whole result: ``ratio``,
    ``ratio_camera``, ``chi2``, ...): the regenerated image (``regenerated``, its result for ``points_nm``) taken
    as the truth, drawn again through ``physics``' camera (shot + read noise), and refitted with the same
    localisations. Close to 1 when a criterion is reachable; well above 1 when the frame's own shot noise
    (bright emitters) exceeds the noise the criterion divides by (``ratio`` on bright frames)."""
    model = np.asarray(regenerated["model"], dtype=np.float64)
    phys = physics.resized(model.shape)
    photons = phys.counts_to_photons(model).clamp_min(0.0)
    sim = phys.camera.counts(photons, rng=int(seed)).numpy().astype(np.float64)
    return regenerated_residual(physics, points_nm, sim, background=background, blur_sigma_px=blur_sigma_px)


def ideal_residual_floor(physics, points_nm, regenerated: dict, seed: int = 0, background=None,
                         blur_sigma_px: float = 0.0, key: str = "ratio") -> float:
    """:func:`ideal_residual`'s ``key`` (``ratio``, ``ratio_camera`` or ``chi2``): a perfect model's score."""
    if key not in ("ratio", "ratio_camera", "chi2"):
        raise ValueError(f"key: expected 'ratio', 'ratio_camera' or 'chi2', got {key!r}")
    return float(ideal_residual(physics, points_nm, regenerated, seed, background, blur_sigma_px)[key])


# ----------------------------------------------------------------------------------------------------- predicates
def cnn_beats_mp(result: DensityResult, margin: float = 0.1, min_frames: int = 8) -> Verdict:
    """Fig. 2b: at this (high) density the CNN's JI exceeds MP's by ≥ ``margin`` on the same (paired) frames:
    the mean over frames of JI_CNN − JI_MP ≥ margin. Rests on the paired frames."""
    if result.mp is None:
        return Verdict(None, 0, min_frames, "no MP frames")
    n = result.mp.n_frames
    diff = result.cnn.jaccard_per_frame[:n] - result.mp.jaccard_per_frame
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return verdict(bool(diff.mean() >= margin), n, min_frames,
                   f"density {result.density:g}: JI CNN − MP = {diff.mean():.3f} ± {se:.3f} over {n} paired frames "
                   f"(CNN {result.cnn.head(n).jaccard:.3f}, MP {result.mp.jaccard:.3f}); needs ≥ {margin:g}")


def cnn_jaccard_at_least(result: DensityResult, min_jaccard: float = 0.9, min_emitters: int = 100) -> Verdict:
    """Fig. 2b: the CNN's pooled JI at this (low) density is ≥ ``min_jaccard``, on ≥ ``min_emitters`` emitters."""
    c = result.cnn
    return verdict(bool(c.jaccard >= min_jaccard), c.n_emitters, min_emitters,
                   f"density {result.density:g}: CNN JI {c.jaccard:.3f} ± {c.jaccard_se:.3f} on {c.n_emitters} "
                   f"emitters ({c.n_frames} frames); needs ≥ {min_jaccard:g}")


def mp_more_precise(result: DensityResult, min_matched: int = 20) -> Verdict:
    """Fig. 2b: at low density MP localises more precisely than the CNN (lateral RMSE of matches lower). Rests on
    the fewer of the two methods' matched emitters (an all-zero CNN matches none: not enough data)."""
    if result.mp is None:
        return Verdict(None, 0, min_matched, "no MP frames")
    n = int(min(np.sum(result.cnn.tp), np.sum(result.mp.tp)))
    a, b = result.mp.rmse_lateral_nm, result.cnn.rmse_lateral_nm
    cond = None if (np.isnan(a) or np.isnan(b)) else bool(a < b)
    return verdict(cond, n, min_matched,
                   f"density {result.density:g}: lateral RMSE MP {a:.1f} nm vs CNN {b:.1f} nm (axial MP "
                   f"{result.mp.rmse_axial_nm:.1f}, CNN {result.cnn.rmse_axial_nm:.1f} nm)")


def psf_beats(better: FrameScores, worse: FrameScores, min_frames: int = 8, label: str = "") -> Verdict:
    """Fig. 4d: one PSF's CNN beats another's on paired frames (same emitters): mean JI difference > 0 by more
    than two standard errors."""
    n = min(better.n_frames, worse.n_frames)
    if n == 0:
        return Verdict(None, 0, min_frames, "no frames")
    diff = better.jaccard_per_frame[:n] - worse.jaccard_per_frame[:n]
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    cond = bool(diff.mean() > 0 and diff.mean() > 2 * se)
    return verdict(cond, n, min_frames, f"{label}JI difference {diff.mean():.3f} ± {se:.3f} over {n} paired frames "
                                        f"({better.jaccard:.3f} vs {worse.jaccard:.3f}); needs > 2 SE above 0")


def residual_explained(ratios: Sequence[float], max_ratio: float = 1.5, min_frames: int = 1, label: str = "") -> Verdict:
    """Fig. 3b / 5e: the regenerated image explains the frames — the mean over frames of residual variance /
    noise variance is ≤ ``max_ratio``. (No localisations leave the signal in the residual: it fails.)"""
    r = np.asarray(ratios, dtype=np.float64).reshape(-1)
    positive(max_ratio, "max_ratio")
    if not len(r):
        return Verdict(None, 0, min_frames, "no frames")
    return verdict(bool(np.mean(r) <= max_ratio), len(r), min_frames,
                   f"{label}residual / noise variance {np.mean(r):.2f} (median {np.median(r):.2f}, max {np.max(r):.2f}) "
                   f"over {len(r)} frames; needs ≤ {max_ratio:g}")


def telomere_count(counts: Sequence[int], low: int = 45, high: int = 75, min_snapshots: int = 2) -> Verdict:
    """Fig. 5e: each snapshot gives ``low``–``high`` detections (the paper: 57 of ≈ 62 telomeres)."""
    c = [int(v) for v in counts]
    return verdict(bool(c) and all(low <= v <= high for v in c), len(c), min_snapshots,
                   f"detections per snapshot {c}; needs {low}–{high} (paper 57 of ≈ 62)")


def footprint_px(stack, frac: float = 0.5) -> np.ndarray:
    """Per plane of a PSF stack (nz, H, W): the number of pixels holding the brightest ``frac`` of its light (the
    PSF's footprint; DeepSTORM3D Fig. 4 compares the learned PSF's with the Tetrapod's)."""
    from refocuslib._validate import in_range as _in_range
    st = np.asarray(stack, dtype=np.float64)
    if st.ndim != 3:
        raise ValueError(f"stack: expected (nz, H, W), got shape {st.shape}")
    frac = _in_range(frac, "frac", 0.0, 1.0, lo_open=True)
    out = []
    for p in st:
        v = np.sort(p.ravel())[::-1]
        total = v.sum()
        if not total > 0:
            raise ValueError("stack: every plane must hold some light (sum > 0)")
        out.append(int(np.searchsorted(np.cumsum(v) / total, frac)) + 1)
    return np.array(out)
