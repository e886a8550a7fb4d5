"""Single-molecule localisation with engineered PSFs: the DeepSTORM3D real data and the matching-pursuit baseline.

* Real data of Nehme et al., Nat. Methods 17, 734 (2020) (MIT licence; ``data/deepstorm3d/README.md``): the
  measured/learned phase masks (:func:`real_mask`, resampled onto the simulator's pupil with the pupil radius
  of the 4f relay, r = f·NA/M / p mask pixels), the Tetrapod STORM frames and the telomere snapshots, and the
  optics of each acquisition (:data:`STORM_OPTICS`, :data:`TELOMERE_OPTICS`).
* :func:`matching_pursuit` — the paper's baseline (Fig. 2): greedy fit-and-subtract against a dictionary of
  PSFs through z, each pick refined continuously in (x, y, z, photons), then all emitters refined jointly.
* :func:`fit_photons` — non-negative least-squares photon counts (and background) of emitters at given
  positions: regenerates an image from localisations (paper Fig. 3, 5e "regenerated image").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from refocuslib._validate import as_image_array, in_range, positive, positive_int
from refocuslib.models.deepstorm3d import PhysicalLayer
from refocuslib.optics import STORM_100X, ArrayMask, Microscope

Tensor = torch.Tensor

__all__ = ["MASKS", "STORM_OPTICS", "STORM_Z_RANGE_UM", "TELOMERE_OPTICS", "TELOMERE_Z_RANGE_UM", "data_dir",
           "pupil_radius_px", "load_phase_mask", "real_mask", "storm_frame_paths", "load_storm_frames",
           "load_telomeres", "noise_variance", "smooth_background", "fit_photons", "MPResult", "matching_pursuit",
           "bright_spots", "fit_blur_sigma", "photon_transfer"]

#: name → (file under deepstorm3d/, .mat key, mask pixel µm, 4f lens focal length mm) (data README).
MASKS = {
    "tetrapod_printed": ("masks/mask_tetrapod_printed.mat", "mask_tetra_reut", 30.0, 100.0),
    "tetrapod_model": ("masks/mask_tetrapod.mat", "mask_tetra_model", 24.0, 150.0),
    "learned": ("masks/mask_learned.mat", "mask_circ_model", 24.0, 150.0),
}
#: Tetrapod STORM frames (Fig. 3): 100×/1.45 oil into water, λ 0.67 µm, 110 nm pixels, focus 1.5 µm deep.
STORM_OPTICS: Microscope = STORM_100X.replace(name="DeepSTORM3D STORM (Tetrapod), λ 0.67 µm")
STORM_Z_RANGE_UM = (0.0, 4.0)
#: Telomere snapshots (Fig. 5e): same objective and pixels, λ 0.58 µm, nominal focal plane 4.5 µm.
TELOMERE_OPTICS: Microscope = STORM_100X.replace(wavelength_um=0.58, nfp_um=4.5,
                                                 name="DeepSTORM3D telomeres (learned PSF), λ 0.58 µm")
TELOMERE_Z_RANGE_UM = (2.0, 6.0)


# ----------------------------------------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------------------------------------
def _candidate_dirs(path=None) -> List[Path]:
    if path is not None:
        p = Path(path)
        return [p / "deepstorm3d" if (p / "deepstorm3d").is_dir() else p]
    return [Path(__file__).resolve().parent.parent / "data" / "deepstorm3d"]


def data_dir(path=None, need: str = "masks") -> Path:
    """The folder holding the DeepSTORM3D files (``masks/``, ``tetrapod_storm_frames/``, ...): ``path`` (or
    its ``deepstorm3d/`` child), else the project's ``data/deepstorm3d``. ``need`` names a sub-folder that must
    exist."""
    for d in _candidate_dirs(path):
        if (d / need).is_dir():
            return d
    raise FileNotFoundError(f"path: no DeepSTORM3D data with a '{need}' folder in "
                            f"{[str(d) for d in _candidate_dirs(path)]}")


def pupil_radius_px(focal_length_mm: float, mask_pixel_um: float, na: float = 1.45,
                    magnification: float = 100.0) -> float:
    """Back-focal-plane radius in mask pixels for a mask in the Fourier plane of a 4f relay of lenses f:
    r = f·NA/M / p (data README; the exact f·NA/√(M² − NA²) differs by 1e-4 at M = 100)."""
    f = positive(focal_length_mm, "focal_length_mm") * 1000.0
    return f * in_range(na, "na", 0.0, 2.0, lo_open=True) / positive(magnification, "magnification") / \
        positive(mask_pixel_um, "mask_pixel_um")


def load_phase_mask(path, key: Optional[str] = None) -> np.ndarray:
    """A phase mask (rad, float64, square) from a MATLAB .mat file (``scipy.io.loadmat``); ``key`` defaults
    to the file's only variable."""
    from scipy.io import loadmat
    data = loadmat(str(path))
    names = [k for k in data if not k.startswith("__")]
    if key is None:
        if len(names) != 1:
            raise ValueError(f"key: {path} holds {names}; name one")
        key = names[0]
    if key not in data:
        raise ValueError(f"key: {key!r} not in {path} (holds {names})")
    return as_image_array(data[key], key, ndim=2).astype(np.float64)


def _unwrap_and_extend(phase: np.ndarray) -> np.ndarray:
    """Unwrap the phase inside the mask's support (exact modulo 2π, so optically identical) and extend it to
    the corners with the nearest support value: bilinear resampling then never averages across a 2π jump."""
    from scipy import ndimage
    from skimage.restoration import unwrap_phase
    support = phase != 0
    if support.sum() < 4:
        return phase
    unwrapped = np.asarray(unwrap_phase(np.ma.array(phase, mask=~support)).filled(0.0))
    _, (iy, ix) = ndimage.distance_transform_edt(~support, return_indices=True)
    return unwrapped[iy, ix]


def real_mask(name: str, na: float = 1.45, magnification: float = 100.0, path=None, unwrap: bool = True,
              learnable: bool = False) -> ArrayMask:
    """One of the paper's masks (:data:`MASKS`: 'tetrapod_printed', 'tetrapod_model', 'learned') as an
    :class:`~refocuslib.optics.ArrayMask` with the 4f pupil radius (:func:`pupil_radius_px`). The masks are
    zero beyond ≈ n_water/NA of that radius: the supercritical rays the water sample does not emit."""
    if name not in MASKS:
        raise ValueError(f"name: expected one of {sorted(MASKS)}, got {name!r}")
    rel, key, pixel_um, f_mm = MASKS[name]
    phase = load_phase_mask(data_dir(path) / rel, key)
    if unwrap:
        phase = _unwrap_and_extend(phase)
    return ArrayMask(phase, pupil_radius_px=pupil_radius_px(f_mm, pixel_um, na, magnification), learnable=learnable)


def _frame_number(p: Path) -> int:
    m = re.fullmatch(r"(\d+)\.tif{1,2}", p.name)
    return int(m.group(1)) if m else -1


def storm_frame_paths(n: Optional[int] = None, path=None) -> List[Path]:
    """Paths of the real Tetrapod STORM frames 1, 2, … (``n`` first; all 50 when None) from :func:`data_dir`."""
    best: List[Path] = []
    for d in _candidate_dirs(path):
        folder = d / "tetrapod_storm_frames"
        files = sorted((p for p in folder.glob("*.tif") if _frame_number(p) > 0), key=_frame_number) \
            if folder.is_dir() else []
        if n is not None and len(files) >= n:
            return files[:n]
        if len(files) > len(best):
            best = files
    if not best:
        raise FileNotFoundError(f"path: no tetrapod_storm_frames/*.tif in {[str(d) for d in _candidate_dirs(path)]}")
    return best if n is None else best[:n]


def load_storm_frames(n: Optional[int] = None, path=None) -> np.ndarray:
    """(n, 297, 391) float32 camera counts of the real Tetrapod STORM frames (paper Fig. 3)."""
    import tifffile
    return np.stack([tifffile.imread(str(p)).astype(np.float32) for p in storm_frame_paths(n, path)])


def load_telomeres(path=None) -> np.ndarray:
    """(2, 253, 197) float32 counts of the two telomere snapshots taken with the learned PSF (paper Fig. 5e)."""
    import tifffile
    d = data_dir(path, need="telomeres_learned_psf") / "telomeres_learned_psf"
    return np.stack([tifffile.imread(str(d / f"telomeres{k}.tif")).astype(np.float32) for k in (1, 2)])


def noise_variance(image, block: int = 8, quantile: float = 0.2) -> float:
    """Noise variance of a camera frame without ground truth: the median variance of the ``block``² tiles
    whose mean lies in the darkest ``quantile`` (background tiles; for a regenerated-image residual test)."""
    img = as_image_array(image, "image", ndim=2).astype(np.float64)
    b = positive_int(block, "block", minimum=2)
    q = in_range(quantile, "quantile", 0.0, 1.0, lo_open=True)
    h, w = (img.shape[0] // b) * b, (img.shape[1] // b) * b
    if h == 0 or w == 0:
        raise ValueError(f"block: {b} is larger than the image {img.shape}")
    tiles = img[:h, :w].reshape(h // b, b, w // b, b).transpose(0, 2, 1, 3).reshape(-1, b * b)
    means = tiles.mean(1)
    dark = tiles[means <= np.quantile(means, q)]
    return float(np.median(dark.var(1, ddof=1)))


# ----------------------------------------------------------------------------------------------------------
# Photon fit / regenerated image
# ----------------------------------------------------------------------------------------------------------
def _image_tensor(image, physics: PhysicalLayer) -> Tensor:
    img = as_image_array(image, "image", ndim=2)
    if tuple(img.shape) != tuple(physics.shape_yx):
        raise ValueError(f"image: shape {img.shape} differs from the physics layer's {physics.shape_yx}")
    return torch.as_tensor(img, dtype=torch.float32)


def smooth_background(image, size_px: int = 21) -> np.ndarray:
    """A smooth, non-uniform background under the emitters: grey-scale opening with a ``size_px`` square (wider
    than a PSF, so spots are removed; a rolling-ball-like lower envelope) smoothed by a Gaussian of σ = size/4."""
    from scipy import ndimage
    img = as_image_array(image, "image", ndim=2).astype(np.float64)
    size = positive_int(size_px, "size_px", minimum=3)
    return ndimage.gaussian_filter(ndimage.grey_opening(img, size=(size, size)), size / 4.0)


def fit_photons(physics: PhysicalLayer, xyz_um, image, background=None, blur_sigma_px: float = 0.0):
    """Non-negative least-squares photons of emitters at ``xyz_um`` (K, 3) µm explaining ``image`` (H, W) in
    photons (``physics.counts_to_photons``) or counts.

    ``blur_sigma_px``: each emitter's PSF blurred by a Gaussian of this σ (pixels, ≥ 0; scipy.ndimage) — the
    model-mismatch blur a recipe trains with (``blur_sigma_px`` of its sampler), so that the regenerated image
    is the image model the CNN learnt.

    ``background``: None — a flat background is fitted too; a number — a known flat background; an (H, W) map
    (e.g. :func:`smooth_background`) — a known shape to which a fitted flat offset is added.
    Returns ``(photons (K,), background (the fitted flat level), model (H, W))`` — the model is the regenerated
    image (paper Fig. 3b, 5e): emitters re-imaged through the physics layer at their recovered positions.
    """
    from scipy import ndimage
    from scipy.linalg import cholesky, solve_triangular
    from scipy.optimize import nnls
    from scipy.sparse import csc_matrix, hstack
    sigma = float(positive(blur_sigma_px, "blur_sigma_px", allow_zero=True))
    img = _image_tensor(image, physics).numpy().astype(np.float64)
    h, w = img.shape
    xyz = np.asarray(xyz_um, dtype=np.float64).reshape(-1, 3)
    bg_map = np.zeros((h, w))
    fit_flat = True
    if background is not None:
        arr = np.asarray(background, dtype=np.float64)
        if arr.ndim == 0:
            bg_map[:] = positive(float(arr), "background", allow_zero=True)
            fit_flat = False
        elif arr.shape == (h, w) and np.all(np.isfinite(arr)):
            bg_map = arr.copy()
        else:
            raise ValueError(f"background: expected None, a number or a finite ({h}, {w}) map, got shape {arr.shape}")
    cols = []
    if len(xyz):
        with torch.no_grad():
            psf, rr, cc = physics.footprints(xyz)
        psf, rr, cc = psf.cpu().numpy().astype(np.float64), rr.cpu().numpy(), cc.cpu().numpy()
        if sigma > 0:  # per patch (zero beyond it: the patch holds the PSF's light)
            psf = ndimage.gaussian_filter(psf, (0.0, sigma, sigma), mode="constant", truncate=3.0)
        k = np.broadcast_to(np.arange(len(xyz))[:, None, None], psf.shape)
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        cols.append(csc_matrix((psf[ok], (rr[ok] * w + cc[ok], k[ok])), shape=(h * w, len(xyz))))
    b = (img - bg_map).reshape(-1)
    shift = 0.0
    if fit_flat:
        cols.append(csc_matrix(np.ones((h * w, 1))))
        if background is not None:  # the offset around a known map may be negative: fit offset + shift ≥ 0
            shift = 1.0 + float(np.abs(b).max())
            b = b + shift
    if not cols:
        return np.zeros(0), float(bg_map.mean()), bg_map
    a = hstack(cols).tocsc()
    # exact NNLS through the normal equations: with G = AᵀA = LLᵀ, ‖Ax − b‖² = ‖Lᵀx − L⁻¹Aᵀb‖² + const
    gram = (a.T @ a).toarray()
    gram += 1e-9 * np.trace(gram) / len(gram) * np.eye(len(gram))
    low = cholesky(gram, lower=True)
    x, _ = nnls(low.T, solve_triangular(low, a.T @ b, lower=True), maxiter=50 * len(gram))
    ph = x[:len(xyz)]
    flat = float(x[len(xyz)]) - shift if fit_flat else 0.0
    model = (a @ x).reshape(h, w) - shift + bg_map
    level = flat if background is None else float(bg_map.mean() + flat)
    return ph, level, model


# ----------------------------------------------------------------------------------------------------------
# Matching pursuit
# ----------------------------------------------------------------------------------------------------------
@dataclass
class MPResult:
    """Outcome of :func:`matching_pursuit`: positions ``xyz_um`` (K, 3), ``photons`` (K,), the fitted flat
    ``background`` (photons/pixel), the model image (H, W) and the number of greedy picks."""
    xyz_um: np.ndarray
    photons: np.ndarray
    background: float
    model: np.ndarray
    n_picks: int

    @property
    def xyz_nm(self) -> np.ndarray:
        return self.xyz_um * 1000.0


def _correlate(residual: Tensor, atoms_ft: Tensor, shape_pad: Tuple[int, int], half: int) -> Tensor:
    """Cross-correlation (D, H, W) of the residual with every dictionary atom, centred on the atom's centre."""
    h, w = residual.shape
    r_ft = torch.fft.rfft2(residual, s=shape_pad)
    c = torch.fft.irfft2(r_ft[None] * atoms_ft.conj(), s=shape_pad)
    return torch.roll(c, shifts=(half, half), dims=(-2, -1))[:, :h, :w]


def _refine(physics: PhysicalLayer, target: Tensor, weight: Tensor, xyz: Tensor, photons: Tensor,
            background: Optional[Tensor], iters: int, z_range: Tuple[float, float]):
    """Weighted least squares of ``target`` ≈ Σ photons·PSF(xyz) (+ background) by L-BFGS in scaled
    coordinates (pixels, 100 nm, log photons); returns the refined (xyz, photons, background)."""
    px = physics.pixel_um
    theta = torch.cat([xyz[:, :2] / px, xyz[:, 2:] / 0.1, torch.log(photons.clamp_min(1.0))[:, None]], 1)
    theta = theta.detach().clone().requires_grad_(True)
    params = [theta]
    bg = None
    if background is not None:
        bg = background.detach().clone().reshape(1).requires_grad_(True)
        params.append(bg)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=positive_int(iters, "iters"), line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)
    norm = float(weight.sum())

    def unpack():
        z = (theta[:, 2] * 0.1).clamp(z_range[0], z_range[1])
        pos = torch.stack([theta[:, 0] * px, theta[:, 1] * px, z], 1)
        return pos, torch.exp(theta[:, 3].clamp(max=30.0))

    def closure():
        opt.zero_grad()
        pos, ph = unpack()
        model = physics.expected(pos[None], ph[None])[0, 0]
        if bg is not None:
            model = model + bg
        loss = (weight * (target - model) ** 2).sum() / norm
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pos, ph = unpack()
    return pos.detach(), ph.detach(), (None if bg is None else bg.detach())


def matching_pursuit(image, physics: PhysicalLayer, min_photons: float, z_step_um: float = 0.1,
                     z_range_um: Optional[Tuple[float, float]] = None, max_emitters: int = 200,
                     background: Optional[float] = None, refine_iters: int = 15, joint_iters: int = 40) -> MPResult:
    """Matching pursuit with continuous refinement (the paper's baseline, Fig. 2; after Mallat & Zhang 1993).

    ``image`` (H, W) in photons (``physics.counts_to_photons``). Dictionary: the physics layer's PSF at
    z = z0 + (k+½)·``z_step_um`` over ``z_range_um`` (default the grid of the frame's z range must be given).
    Repeat: correlate the residual with every atom, pick the best normalised match; stop when its photon
    estimate ⟨r, a⟩/⟨a, a⟩ < ``min_photons`` or after ``max_emitters``; refine the pick in continuous
    (x, y, z, photons) by weighted least squares against the residual (L-BFGS, ``refine_iters``), subtract it.
    Finally all emitters and a flat background are refined jointly (``joint_iters``) and emitters whose
    photons fell below ``min_photons``/2 are dropped. Weights are 1/max(image, 1) (Neyman χ², Poisson-like).
    ``background``: known flat background, else the 20th percentile of the image to start with (then fitted).
    """
    img = _image_tensor(image, physics).to(physics._device())
    h, w = img.shape
    min_photons = positive(min_photons, "min_photons")
    if z_range_um is None:
        raise ValueError("z_range_um: give the axial range (low, high) µm the dictionary spans")
    z0, z1 = float(z_range_um[0]), float(z_range_um[1])
    if not z1 > z0:
        raise ValueError(f"z_range_um: expected (low, high) with low < high, got {z_range_um!r}")
    dz = in_range(z_step_um, "z_step_um", 1e-3, z1 - z0)
    max_emitters = positive_int(max_emitters, "max_emitters", minimum=0)
    z_grid = np.arange(z0 + dz / 2, z1, dz)
    p, half = physics.patch_px, physics.patch_px // 2
    with torch.no_grad():
        atoms = physics.psfs(z_grid).float()  # (D, p, p)
    shape_pad = (h + p, w + p)
    atoms_ft = torch.fft.rfft2(atoms, s=shape_pad)
    norms2 = (atoms ** 2).sum((-2, -1))  # (D,)
    fixed_bg = background is not None
    bg0 = float(background) if fixed_bg else float(torch.quantile(img.reshape(-1), 0.2))
    weight = 1.0 / img.clamp_min(1.0)
    residual = img - bg0
    xyz_list, ph_list = [], []
    picks = 0
    for _ in range(max_emitters):
        with torch.no_grad():
            corr = _correlate(residual, atoms_ft, shape_pad, half)  # (D, H, W)
            score = corr / norms2.sqrt()[:, None, None]
            k = int(torch.argmax(score))
            kz, i, j = np.unravel_index(k, score.shape)
            n_est = float(corr[kz, i, j] / norms2[kz])
        if n_est < min_photons:
            break
        picks += 1
        start = torch.tensor([[(j + 0.5) * physics.pixel_um, (i + 0.5) * physics.pixel_um, z_grid[kz]]],
                             dtype=torch.float32, device=img.device)
        pos, ph, _ = _refine(physics, residual, weight, start, torch.tensor([n_est], device=img.device), None,
                             refine_iters, (z0, z1))
        with torch.no_grad():
            residual = residual - physics.expected(pos[None], ph[None])[0, 0]
        xyz_list.append(pos[0])
        ph_list.append(ph[0])
    if not xyz_list:
        return MPResult(np.zeros((0, 3)), np.zeros(0), bg0, np.full((h, w), bg0), picks)
    xyz = torch.stack(xyz_list)
    ph = torch.stack(ph_list)
    if joint_iters:
        bg_t = None if fixed_bg else torch.tensor([bg0], device=img.device)
        target = img - bg0 if fixed_bg else img
        xyz, ph, bg_fit = _refine(physics, target, weight, xyz, ph, bg_t, joint_iters, (z0, z1))
        if not fixed_bg:
            bg0 = float(bg_fit)
    keep = ph >= 0.5 * min_photons
    xyz, ph = xyz[keep], ph[keep]
    with torch.no_grad():
        model = physics.expected(xyz[None], ph[None])[0, 0] + bg0
    return MPResult(xyz.cpu().numpy().astype(np.float64), ph.cpu().numpy().astype(np.float64), bg0,
                    model.cpu().numpy(), picks)


# ----------------------------------------------------------------------------------------------------------
# Real-data domain: isolated spots, model blur, camera photometry
# ----------------------------------------------------------------------------------------------------------
def bright_spots(image, n: int, window_px: int = 41, min_separation_px: int = 25, smooth_px: float = 2.0,
                 background_px: int = 31) -> List[Tuple[int, int]]:
    """Centres (row, col) of the ``n`` brightest spots of a frame, at least ``min_separation_px`` apart and a
    half window from the border: maxima of the background-subtracted (:func:`smooth_background`) frame smoothed
    by a Gaussian of ``smooth_px`` (scipy.ndimage)."""
    from scipy import ndimage
    img = as_image_array(image, "image", ndim=2).astype(np.float64)
    n = positive_int(n, "n")
    w = positive_int(window_px, "window_px", minimum=3)
    s = ndimage.gaussian_filter(img - smooth_background(img, background_px), positive(smooth_px, "smooth_px"))
    peaks = np.argwhere(s == ndimage.maximum_filter(s, positive_int(min_separation_px, "min_separation_px")))
    h = w // 2
    peaks = [tuple(map(int, p)) for p in peaks if h <= p[0] < img.shape[0] - h and h <= p[1] < img.shape[1] - h]
    peaks.sort(key=lambda p: -s[p])
    return peaks[:n]


def fit_blur_sigma(windows, physics: PhysicalLayer, z_range_um: Tuple[float, float], min_photons: float,
                   sigmas=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0), max_emitters: int = 2) -> dict:
    """The model-mismatch blur σ (pixels) of real spots: in each window (counts; ``physics`` of the window's size
    and camera) :func:`matching_pursuit` finds up to ``max_emitters`` emitters with the unblurred model; then
    for each σ the emitters' images blurred by σ (:meth:`PhysicalLayer.blur`) and a flat background are refitted
    (non-negative least squares of the photons, positions kept) and the residual sum of squares is summed over
    windows. Returns ``{"sigma_px": best σ, "sigmas": [...], "residual": [...] (relative to σ = first)}``.
    (The positions come from the unblurred fit, so the estimate is conservative: biased towards small σ.)"""
    from scipy.optimize import nnls
    sig = [float(positive(s, "sigmas", allow_zero=True)) for s in sigmas]
    total = np.zeros(len(sig))
    for win in windows:
        img = physics.counts_to_photons(win)
        r = matching_pursuit(img, physics, min_photons=min_photons, z_step_um=0.1, z_range_um=z_range_um,
                             max_emitters=max_emitters)
        b = img.numpy().astype(np.float64).reshape(-1)
        with torch.no_grad():
            cols = [physics.expected(torch.as_tensor(p[None, None]), torch.ones(1, 1)) for p in r.xyz_um]
        for k, s in enumerate(sig):
            a = [physics.blur(c, s)[0, 0].numpy().reshape(-1).astype(np.float64) for c in cols] if s > 0 else \
                [c[0, 0].numpy().reshape(-1).astype(np.float64) for c in cols]
            a = np.stack(a + [np.ones_like(b)], 1)
            x, rn = nnls(a, b)
            total[k] += rn ** 2
    best = sig[int(np.argmin(total))]
    return {"sigma_px": best, "sigmas": sig, "residual": list(total / total[0])}


def to_model_frames(task, frames, rescale: bool = True):
    """Measured frames (T, H, W) of one camera → the counts of ``task``'s model camera (a DeepSTORM3D task):
    the photon transfer of the stack (:func:`photon_transfer`) gives the offset, and ``rescale`` maps the
    frames' background onto the model's training background (photons per ADU = model background /
    (background − offset)). Returns ``(model_frames tensor, photon_transfer dict, e_per_adu or None)``."""
    ptc = photon_transfer(frames)
    e_per_adu = (float(np.mean(task.sampler.background)) / (ptc["background_adu"] - ptc["offset_adu"])
                 if rescale else None)
    x = (task.to_model_counts(frames, baseline_adu=ptc["offset_adu"], e_per_adu=e_per_adu) if rescale
         else torch.as_tensor(np.asarray(frames, dtype=np.float32)))
    return x, ptc, e_per_adu


def photon_transfer(frames, quantile: float = 0.3, n_bins: int = 8) -> dict:
    """Camera gain and offset from a stack of frames of the same field (photon-transfer curve): per pixel the
    temporal median and robust (MAD) variance; on the darkest ``quantile`` of pixels (background only, so the
    blinking emitters do not inflate the variance) a straight line variance = g·(median − offset) fitted
    over ``n_bins`` median bins. ``g`` is the effective gain in ADU per Poisson-equivalent photon (for an EMCCD it
    includes the excess-noise factor 2); returns ``{"gain_adu": g, "offset_adu": offset, "background_adu": median
    background, "background_photons": (median − offset)/g}``."""
    f = np.asarray(frames, dtype=np.float64)
    if f.ndim != 3 or f.shape[0] < 5:
        raise ValueError(f"frames: expected (T >= 5, H, W), got shape {f.shape}")
    q = in_range(quantile, "quantile", 0.0, 1.0, lo_open=True)
    med = np.median(f, 0)
    var = (1.4826 * np.median(np.abs(f - med), 0)) ** 2
    dark = med <= np.quantile(med, q)
    edges = np.quantile(med[dark], np.linspace(0, 1, positive_int(n_bins, "n_bins", minimum=2) + 1))
    mx, vy = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        s = dark & (med >= a) & (med <= b)
        if s.sum() > 10:
            mx.append(med[s].mean())
            vy.append(var[s].mean())
    g, c = np.polyfit(mx, vy, 1)
    offset = -c / g
    bg = float(np.median(med[dark]))
    return {"gain_adu": float(g), "offset_adu": float(offset), "background_adu": bg,
            "background_photons": (bg - offset) / g}
