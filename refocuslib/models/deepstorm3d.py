"""DeepSTORM3D (Nehme et al., Nat. Methods 17, 734 (2020)): physics layer, localization CNN, recovery grid.

* :class:`PhysicalLayer` — emitters (x, y, z, photons) → camera frame through :mod:`refocuslib.optics`
  (scalar pupil model, oil → water index mismatch, a phase mask in the pupil). The mask is fixed (Tetrapod,
  double helix, a measured mask, none) or a learnable :class:`refocuslib.optics.ArrayMask`; the rendered image
  is differentiable with respect to it (paper Fig. 4: end-to-end PSF design). Poisson shot noise + Gaussian
  read noise as in :func:`refocuslib.imaging.camera`, passed through with a straight-through gradient.
  This is the one model that knows optics (docs/DESIGN.md).
* :class:`LocalizationCNN` — the paper's network (Methods, Supplementary Fig. 2): a fixed photometric input
  normalisation (camera counts → photons, minus a reference background, over a fixed photon scale), a
  multi-scale context-aggregation module of dilated 3×3 convolutions (dilations 1, 2, 4, 8, 16, 1; the input
  frame is concatenated to every layer), ×U lateral upsampling (U = 4 in the paper: 110 nm → 27.5 nm) and a
  refinement module that turns channels into axial slices: a 3D occupancy grid (B, D, U·H, U·W).
* :class:`VoxelGrid` — geometry of that grid (voxel sizes, z range): emitters → target grids, and the paper's
  post-processing (threshold + 3D local maxima + local weighted centroid) → positions in nm.

Positions: (x, y, z) µm with x, y from the top-left corner of the frame (pixel (i, j) centred at
((j+½)·p, (i+½)·p), as :func:`refocuslib.imaging.render_points`) and z the depth above the coverslip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refocuslib._validate import in_range, positive, positive_int
from refocuslib.imaging import Camera
from refocuslib.models.blocks import scaled
from refocuslib.optics import Microscope, PupilGrid, make_pupil_grid, psf_from_grid

Tensor = torch.Tensor

__all__ = ["PhysicalLayer", "LocalizationCNN", "VoxelGrid", "local_maxima_3d"]


def _pair(value, name: str, lo: float = 0.0, allow_zero: bool = True) -> Tuple[float, float]:
    """A scalar or (low, high) range → (low, high) with lo <= low <= high."""
    v = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if v.size == 1:
        v = np.array([v[0], v[0]])
    if v.size != 2 or not np.all(np.isfinite(v)) or v[0] > v[1] or v[0] < lo or (not allow_zero and v[0] == lo):
        raise ValueError(f"{name}: expected a number or a (low, high) range with {lo} <= low <= high, "
                         f"got {value!r}")
    return float(v[0]), float(v[1])


# ----------------------------------------------------------------------------------------------------------
# Physics layer
# ----------------------------------------------------------------------------------------------------------
class PhysicalLayer(nn.Module):
    """Emitters → camera frames (B, 1, H, W) of ``microscope`` with phase mask ``mask`` (paper Fig. 1a, 4a).

    ``mask``: None (use ``microscope.mask``), a callable ``mask(rho, phi)`` (fixed), or an
    :class:`~refocuslib.optics.ArrayMask` (fixed, or learnable with ``learnable=True``: its phase is then a
    parameter of this module). Each emitter's PSF is computed on one precomputed pupil grid
    (:func:`~refocuslib.optics.make_pupil_grid`, :func:`~refocuslib.optics.psf_from_grid`) with its exact
    sub-pixel offset as a pupil phase ramp, on a ``patch_px``² patch added into the frame — the same model as
    :func:`refocuslib.imaging.render_points`, batched and with the grid reused.

    Camera (:attr:`camera`, a :class:`refocuslib.imaging.Camera`): counts = gain·Poisson(qe·(signal +
    background)) + N(0, read) + baseline (the background is per frame, added to the signal before the camera).
    The noisy frame carries the gradient of its mean (straight-through), so a learnable mask is trained through
    the noise.
    """

    def __init__(self, microscope: Microscope, shape_yx: Tuple[int, int], mask=None, patch_px: int = 41,
                 qe: float = 1.0, gain: float = 1.0, read_noise_e: float = 1.0, baseline_adu: float = 0.0,
                 fft_px: int = 128, chunk: int = 512):
        super().__init__()
        if not isinstance(microscope, Microscope):
            raise ValueError(f"microscope: expected a refocuslib.optics.Microscope, got {type(microscope).__name__}")
        if microscope.modality != "widefield":
            raise ValueError(f"microscope: DeepSTORM3D images wide-field, got modality {microscope.modality!r}")
        if len(shape_yx) != 2:
            raise ValueError(f"shape_yx: expected (H, W), got {shape_yx!r}")
        self.shape_yx = (positive_int(shape_yx[0], "shape_yx"), positive_int(shape_yx[1], "shape_yx"))
        self.patch_px = positive_int(patch_px, "patch_px", minimum=3)
        if self.patch_px % 2 == 0:
            raise ValueError(f"patch_px: must be odd (the emitter sits on the centre pixel), got {patch_px}")
        mask = microscope.mask if mask is None else mask
        self.microscope = microscope.replace(mask=None)
        self._fixed_mask = None
        if isinstance(mask, nn.Module):
            self.mask = mask  # registered: a learnable ArrayMask's phase becomes a parameter of this layer
        else:
            self.mask = None
            self._fixed_mask = mask
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(device)
        self.qe = in_range(qe, "qe", 0.0, 1.0, lo_open=True)
        self.gain = positive(gain, "gain")
        self.read_noise_e = positive(read_noise_e, "read_noise_e", allow_zero=True)
        self.baseline_adu = in_range(baseline_adu, "baseline_adu", -1e9, 1e9)
        self.fft_px = positive_int(fft_px, "fft_px")
        if self.fft_px < 2 * self.patch_px - 1 or self.fft_px % 2:
            raise ValueError(f"fft_px: must be even and >= 2·patch_px − 1 = {2 * self.patch_px - 1} (no wrap-around), "
                             f"got {fft_px}")
        self.chunk = positive_int(chunk, "chunk")
        self._grids = {}
        r = self.pupil_grid().na / self.pupil_grid().wavelength_um * self.fft_px * self.pixel_um
        if r < 16:
            raise ValueError(f"fft_px: the pupil spans only {r:.1f} frequency samples; use fft_px >= "
                             f"{int(np.ceil(16 / r * self.fft_px / 2)) * 2}")

    def resized(self, shape_yx) -> "PhysicalLayer":
        """The same optics, camera and mask (shared: a learnable mask stays one parameter) for frames of
        another size."""
        return PhysicalLayer(self.microscope, shape_yx, mask=self.mask if self.mask is not None else self._fixed_mask,
                             patch_px=self.patch_px, qe=self.qe, gain=self.gain, read_noise_e=self.read_noise_e,
                             baseline_adu=self.baseline_adu, fft_px=self.fft_px, chunk=self.chunk).to(self._device())

    @property
    def camera(self) -> Camera:
        """The camera (its background 0: :meth:`forward` adds each frame's background to the signal)."""
        return Camera(self.qe, self.gain, self.read_noise_e, self.baseline_adu, 0.0)

    # -- optics ------------------------------------------------------------------------------------------
    @property
    def pixel_um(self) -> float:
        return self.microscope.pixel_um

    @property
    def mask_fn(self):
        """The phase mask as used on the pupil (callable or None)."""
        return self.mask if self.mask is not None else self._fixed_mask

    def pupil_grid(self, device=None, dtype=torch.float32) -> PupilGrid:
        """The pupil sampling of one ``patch_px`` PSF computed on ``fft_px``² samples (a smooth FFT size; the
        camera pixel is finer than Nyquist λ/4NA for the paper's optics, else the grid oversamples), cached
        per device and dtype."""
        key = (str(torch.device(device or "cpu")), dtype)
        if key not in self._grids:
            m = self.microscope
            self._grids[key] = make_pupil_grid(self.patch_px, m.pixel_um, m.na, m.wavelength_um, m.n_immersion,
                                               m.n_sample, pad=self.pad, dtype=dtype, device=device,
                                               min_pupil_radius_samples=0)
        return self._grids[key]

    @property
    def pad(self) -> float:
        """The ``pad`` of :func:`~refocuslib.optics.make_pupil_grid` that gives ``fft_px`` camera pixels."""
        return (self.fft_px - 0.5) / self.patch_px

    def _device(self):
        return self._anchor.device

    def psfs(self, z_um, xy_um=None, device=None) -> Tensor:
        """PSFs (M, p, p), photons per pixel per emitted photon, emitters at the patch centre pixel shifted
        by ``xy_um`` (M, 2) (x, y) µm, at depths ``z_um`` (M,) with the microscope's nominal focal plane."""
        device = device or self._device()
        grid = self.pupil_grid(device)
        z = torch.as_tensor(z_um, dtype=torch.float32, device=device).reshape(-1)
        xy = None if xy_um is None else torch.as_tensor(xy_um, dtype=torch.float32, device=device).reshape(-1, 2)
        return psf_from_grid(grid, z, xy, self.microscope.nfp_um, self.mask_fn, chunk=self.chunk)

    # -- rendering ---------------------------------------------------------------------------------------
    def _check_emitters(self, xyz_um, photons):
        xyz = torch.as_tensor(xyz_um)
        ph = torch.as_tensor(photons)
        if xyz.ndim == 2:
            xyz, ph = xyz[None], ph.reshape(1, -1)
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"xyz_um: expected (B, N, 3) or (N, 3) positions (x, y, z) in µm, got {tuple(xyz.shape)}")
        if ph.shape != xyz.shape[:2]:
            raise ValueError(f"photons: expected shape {tuple(xyz.shape[:2])} matching xyz_um, got {tuple(ph.shape)}")
        if not torch.all(torch.isfinite(xyz)) or not torch.all(torch.isfinite(ph)):
            raise ValueError("xyz_um/photons: contain NaN or inf")
        if torch.any(ph < 0):
            raise ValueError("photons: must be >= 0 (0 marks padding)")
        return xyz, ph

    def footprints(self, xyz_um):
        """Each emitter's PSF patch and where it lands: ``psf`` (K, p, p) per emitted photon (differentiable
        w.r.t. positions and mask) and the frame ``rows``/``cols`` (K, p, p) of its pixels (may fall outside
        the frame). ``xyz_um`` (K, 3) (x, y, z) µm; pixel (i, j) is centred at ((j+½)·p, (i+½)·p)."""
        device = self._device()
        e = torch.as_tensor(xyz_um).to(device=device, dtype=torch.float32).reshape(-1, 3)
        p, half, px = self.patch_px, self.patch_px // 2, self.pixel_um
        col, row = e[:, 0] / px - 0.5, e[:, 1] / px - 0.5
        j0, i0 = torch.round(col).detach(), torch.round(row).detach()
        offsets = torch.stack([(col - j0) * px, (row - i0) * px], 1)
        ar = torch.arange(p, device=device)
        rows = (i0.long() - half)[:, None, None] + ar[None, :, None] + 0 * ar[None, None, :]
        cols = (j0.long() - half)[:, None, None] + 0 * ar[None, :, None] + ar[None, None, :]
        psf = self.psfs(e[:, 2], offsets, device=device) if len(e) else torch.zeros(0, p, p, device=device)
        return psf, rows, cols

    def expected(self, xyz_um, photons) -> Tensor:
        """Noise-free signal photons per pixel (B, 1, H, W) of emitters ``xyz_um`` (B, N, 3) with ``photons``
        (B, N) each (0 = padding, skipped). Differentiable w.r.t. the mask, positions and photons."""
        xyz, ph = self._check_emitters(xyz_um, photons)
        device = self._device()
        xyz = xyz.to(device=device, dtype=torch.float32)
        ph = ph.to(device=device, dtype=torch.float32)
        b, n = ph.shape
        h, w = self.shape_yx
        p = self.patch_px
        canvas_h, canvas_w = h + 2 * p, w + 2 * p  # a margin of one patch: PSFs never fall off the canvas
        out = torch.zeros(b * canvas_h * canvas_w, device=device, dtype=torch.float32)
        bi, ni = torch.nonzero(ph > 0, as_tuple=True)
        if len(bi):
            e = xyz[bi, ni]
            col, row = e[:, 0] / self.pixel_um, e[:, 1] / self.pixel_um
            half = p // 2  # emitters farther than half a patch outside cannot reach the frame
            near = (col > -half) & (col < w + half) & (row > -half) & (row < h + half)
            k = torch.nonzero(near, as_tuple=True)[0]
            if len(k):
                psf, rows, cols = self.footprints(e[k])
                vals = (psf * ph[bi[k], ni[k], None, None]).reshape(-1)
                flat = (bi[k, None, None] * (canvas_h * canvas_w) + (rows + p) * canvas_w + cols + p).reshape(-1)
                out = out.index_add(0, flat, vals)
        return out.reshape(b, 1, canvas_h, canvas_w)[:, :, p:p + h, p:p + w]

    @staticmethod
    def blur(image: Tensor, sigma_px) -> Tensor:
        """Gaussian blur with a per-frame σ (pixels; 0 = none) — the paper's model-mismatch augmentation."""
        sig = torch.as_tensor(sigma_px, dtype=image.dtype, device=image.device).reshape(-1)
        if sig.numel() == 1:
            sig = sig.expand(image.shape[0])
        if torch.all(sig <= 0):
            return image
        r = max(1, int(math.ceil(3 * float(sig.max()))))
        x = torch.arange(-r, r + 1, dtype=image.dtype, device=image.device)
        k = torch.exp(-x[None] ** 2 / (2 * sig.clamp_min(1e-3)[:, None] ** 2))
        k = torch.where(sig[:, None] > 0, k, (x[None] == 0).to(image.dtype))
        k = k / k.sum(1, keepdim=True)
        b = image.shape[0]
        y = F.conv2d(F.pad(image.reshape(1, b, *image.shape[-2:]), (r, r, 0, 0), mode="replicate"),
                     k[:, None, None, :], groups=b)
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=b)
        return y.reshape(image.shape)

    def forward(self, xyz_um, photons, background_photons=0.0, background_field: Optional[Tensor] = None,
                blur_sigma_px=None, noise: bool = True, generator: Optional[torch.Generator] = None) -> Tensor:
        """Camera frames (B, 1, H, W) in ADU: expected signal (optionally blurred by ``blur_sigma_px`` (B,))
        + background (``background_photons`` per pixel, scalar or (B,), times ``background_field``
        (B, 1, H, W) when given), then the camera noise drawn from ``generator`` (``noise=False``: the mean)."""
        signal = self.expected(xyz_um, photons)
        if blur_sigma_px is not None:
            signal = self.blur(signal, blur_sigma_px)
        bg = torch.as_tensor(background_photons, dtype=signal.dtype, device=signal.device).reshape(-1, 1, 1, 1)
        if torch.any(bg < 0) or not torch.all(torch.isfinite(bg)):
            raise ValueError(f"background_photons: must be finite and >= 0, got {background_photons!r}")
        if background_field is not None:
            bg = bg * background_field.to(signal.device, signal.dtype)
        mean_photons = signal + bg
        mean_adu = self.gain * self.qe * mean_photons + self.baseline_adu
        if not noise:
            return mean_adu
        noisy = self.camera.counts(mean_photons.detach().clamp_min(0), generator)
        return noisy + (mean_adu - mean_adu.detach())  # straight-through: the gradient of the mean

    def counts_to_photons(self, counts) -> Tensor:
        """Invert the camera's mean: (counts − baseline)/(gain·qe) — photons per pixel (for fitting)."""
        return self.camera.photons(torch.as_tensor(counts, dtype=torch.float32))


# ----------------------------------------------------------------------------------------------------------
# Recovery grid
# ----------------------------------------------------------------------------------------------------------
def local_maxima_3d(volume: Tensor, threshold: float, radius_vox=1, refine: bool = True):
    """Thresholded 3D local maxima of (D, H, W) (or (B, D, H, W)) volumes on any device (max-pooling with a
    (2r+1)³ window, or (2r_z+1, 2r_y+1, 2r_x+1) for ``radius_vox`` = (r_z, r_y, r_x)), refined by the weighted
    centroid of the 3×3×3 neighbourhood (DeepSTORM3D post-processing).

    A plateau (voxels of equal value inside one window, e.g. an output saturated at the CNN's ``max_value``) passes
    the ``v == maxpool(v)`` test at every voxel; :func:`suppress_plateau_ties` keeps one peak per window, so one
    saturated emitter is not reported two or three times a few nm apart.

    Returns, per volume, ``(positions (K, 3) float64 voxel units (z, y, x), values (K,))``, brightest first;
    a list for batched input.
    """
    v = torch.as_tensor(volume)
    single = v.ndim == 3
    if single:
        v = v[None]
    if v.ndim != 4:
        raise ValueError(f"volume: expected (D, H, W) or (B, D, H, W), got shape {tuple(v.shape)}")
    threshold = in_range(threshold, "threshold", -np.inf, np.inf)
    r = nms_radius(radius_vox)
    v = v.detach().float()
    pooled = F.max_pool3d(v[:, None], tuple(2 * k + 1 for k in r), stride=1, padding=r)[:, 0]
    peaks = (v == pooled) & (v > threshold)
    padded = F.pad(v, (1, 1, 1, 1, 1, 1)).clamp_min(0)
    offs = torch.stack(torch.meshgrid(*[torch.arange(-1, 2, device=v.device)] * 3, indexing="ij"), -1).reshape(-1, 3)
    results = []
    for b in range(v.shape[0]):
        idx = torch.nonzero(peaks[b])  # (K, 3)
        vals = v[b][tuple(idx.T)] if len(idx) else torch.zeros(0, device=v.device)
        if len(idx) > 1:
            keep = suppress_plateau_ties(idx.cpu().numpy(), vals.cpu().numpy(), r)
            keep_t = torch.as_tensor(keep, device=v.device)
            idx, vals = idx[keep_t], vals[keep_t]
        pos = idx.double()
        if refine and len(idx):
            nb = idx[:, None, :] + 1 + offs[None]  # neighbourhood in the padded volume
            w = padded[b][nb[..., 0], nb[..., 1], nb[..., 2]].double()  # (K, 27)
            tot = w.sum(1, keepdim=True).clamp_min(1e-12)
            pos = pos + (w[..., None] * offs[None].double()).sum(1) / tot
        order = torch.argsort(vals, descending=True)
        results.append((pos[order].cpu().numpy(), vals[order].double().cpu().numpy()))
    return results[0] if single else results


def suppress_plateau_ties(idx_vox: np.ndarray, values: np.ndarray, radius_vox) -> np.ndarray:
    """Indices (ascending) of the peaks to keep: greedily, brightest first (ties in voxel order), a peak is dropped
    when an already kept one lies inside its (2r_z+1, 2r_y+1, 2r_x+1) window. Two max-pool peaks can share a
    window only when their values are equal (each is the maximum of a window holding the other), so this removes
    exactly the duplicate peaks of plateaus. Pairs come from :class:`scipy.spatial.cKDTree` (Chebyshev distance
    on axes scaled by 1/r)."""
    from scipy.spatial import cKDTree
    idx = np.asarray(idx_vox, dtype=np.float64).reshape(-1, 3)
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(idx) != len(vals):
        raise ValueError(f"idx_vox/values: need one value per peak, got {len(idx)} and {len(vals)}")
    r = np.asarray(nms_radius(radius_vox), dtype=np.float64)
    if len(idx) < 2:
        return np.arange(len(idx))
    pairs = cKDTree(idx / r).query_pairs(1.0 + 1e-9, p=np.inf, output_type="ndarray")
    if not len(pairs):
        return np.arange(len(idx))
    order = np.lexsort((np.arange(len(vals)), -vals))  # brightest first, then voxel order
    rank = np.empty(len(vals), dtype=np.int64)
    rank[order] = np.arange(len(vals))
    neighbours = [[] for _ in range(len(vals))]
    for a, b in pairs:
        neighbours[a].append(b)
        neighbours[b].append(a)
    dropped = np.zeros(len(vals), dtype=bool)
    for i in order:
        if dropped[i]:
            continue
        for j in neighbours[i]:
            if rank[j] > rank[i]:
                dropped[j] = True
    return np.flatnonzero(~dropped)


def nms_radius(radius_vox) -> Tuple[int, int, int]:
    """(r_z, r_y, r_x) voxels of a local-maximum window from an int (all axes) or a 3-sequence; each ≥ 1."""
    r = np.asarray(radius_vox).reshape(-1)
    if r.size not in (1, 3):
        raise ValueError(f"radius_vox: expected an integer >= 1 or (r_z, r_y, r_x), got {radius_vox!r}")
    return tuple(positive_int(int(v), "radius_vox", minimum=1) if float(v) == int(v) else
                 positive_int(v, "radius_vox", minimum=1) for v in np.broadcast_to(r, (3,)))


def nms_radius_for_kernel(sigma_vox, radius_vox=1) -> Tuple[int, int, int]:
    """The local-maximum window that matches a heatmap loss kernel of ``sigma_vox`` (σ_z, σ_y, σ_x) voxels:
    r = max(``radius_vox``, ⌈σ⌉) per axis. The loss compares Gaussian-blurred grids, so it cannot tell one emitter
    from its weight split over voxels within σ of each other; a narrower window reports such a split (typically
    along z, where σ_z spans 2 slices) as two emitters."""
    sig = np.broadcast_to(np.asarray(sigma_vox, dtype=np.float64).reshape(-1), (3,))
    base = nms_radius(radius_vox)
    return tuple(max(b, int(math.ceil(s - 1e-9))) for b, s in zip(base, sig))


@dataclass(frozen=True)
class VoxelGrid:
    """The DeepSTORM3D recovery grid: frames of ``shape_yx`` camera pixels of ``pixel_um``, ``upsampling``×
    finer laterally, ``n_z`` slices over ``z_range_um``. Voxel (k, i, j) covers
    x ∈ [j·v, (j+1)·v], y ∈ [i·v, (i+1)·v] with v = pixel/U and z ∈ [z0 + k·dz, z0 + (k+1)·dz].
    Paper scale: 110/4 = 27.5 nm lateral, 4 µm / 121 ≈ 33 nm axial."""
    shape_yx: Tuple[int, int]
    pixel_um: float
    upsampling: int
    z_range_um: Tuple[float, float]
    n_z: int

    def __post_init__(self):
        positive_int(self.shape_yx[0], "shape_yx")
        positive_int(self.shape_yx[1], "shape_yx")
        positive(self.pixel_um, "pixel_um")
        if self.upsampling not in (1, 2, 4, 8):
            raise ValueError(f"upsampling: must be 1, 2, 4 or 8, got {self.upsampling!r}")
        z0, z1 = float(self.z_range_um[0]), float(self.z_range_um[1])
        if not z1 > z0:
            raise ValueError(f"z_range_um: expected (low, high) with low < high, got {self.z_range_um!r}")
        positive_int(self.n_z, "n_z")

    @classmethod
    def from_voxel(cls, shape_yx, pixel_um: float, upsampling: int, z_range_um, dz_nm: float) -> "VoxelGrid":
        """Grid whose axial voxel is as close as possible to ``dz_nm``."""
        span_nm = 1000.0 * (float(z_range_um[1]) - float(z_range_um[0]))
        n_z = max(1, int(round(span_nm / positive(dz_nm, "dz_nm"))))
        return cls(tuple(int(s) for s in shape_yx), float(pixel_um), int(upsampling),
                   (float(z_range_um[0]), float(z_range_um[1])), n_z)

    def resized(self, shape_yx) -> "VoxelGrid":
        """The same voxels for frames of another size (the CNN is fully convolutional)."""
        return VoxelGrid(tuple(int(s) for s in shape_yx), self.pixel_um, self.upsampling, self.z_range_um, self.n_z)

    @property
    def lateral_nm(self) -> float:
        return 1000.0 * self.pixel_um / self.upsampling

    @property
    def axial_nm(self) -> float:
        return 1000.0 * (self.z_range_um[1] - self.z_range_um[0]) / self.n_z

    @property
    def voxel_nm(self) -> Tuple[float, float, float]:
        """(dz, dy, dx) in nm, array order."""
        return (self.axial_nm, self.lateral_nm, self.lateral_nm)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(D, U·H, U·W)."""
        return (self.n_z, self.shape_yx[0] * self.upsampling, self.shape_yx[1] * self.upsampling)

    def to_grid(self, xyz_um, photons=None) -> Tensor:
        """Occupancy grids (B, D, U·H, U·W): count of emitters per voxel (``photons`` > 0 selects real emitters
        of padded (B, N, 3) batches; emitters outside the grid are dropped)."""
        xyz = torch.as_tensor(xyz_um, dtype=torch.float64)
        if xyz.ndim == 2:
            xyz = xyz[None]
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"xyz_um: expected (B, N, 3) or (N, 3), got {tuple(xyz.shape)}")
        valid = torch.ones(xyz.shape[:2], dtype=torch.bool) if photons is None else \
            torch.as_tensor(photons).reshape(xyz.shape[:2]).cpu() > 0
        d, hh, ww = self.shape
        grid = torch.zeros(xyz.shape[0], d, hh, ww, dtype=torch.float32)
        v = self.pixel_um / self.upsampling
        dz = (self.z_range_um[1] - self.z_range_um[0]) / self.n_z
        j = torch.floor(xyz[..., 0] / v).long()
        i = torch.floor(xyz[..., 1] / v).long()
        k = torch.floor((xyz[..., 2] - self.z_range_um[0]) / dz).long()
        ok = valid & (i >= 0) & (i < hh) & (j >= 0) & (j < ww) & (k >= 0) & (k < d)
        b = torch.arange(xyz.shape[0])[:, None].expand_as(i)
        grid.index_put_((b[ok], k[ok], i[ok], j[ok]), torch.ones(int(ok.sum())), accumulate=True)
        return grid

    def voxels_to_nm(self, positions_vox) -> np.ndarray:
        """(K, 3) (z, y, x) voxel positions (integer = voxel centre) → (K, 3) (x, y, z) nm."""
        from refocuslib.localize import pixels_to_nm
        return pixels_to_nm(np.asarray(positions_vox, dtype=np.float64).reshape(-1, 3), self.voxel_nm,
                            origin_nm=(1000.0 * self.z_range_um[0], 0.0, 0.0))

    def to_points(self, grid, threshold: float, radius_vox=1, refine: bool = True):
        """Post-processing (paper Methods): threshold + 3D local maxima (window 2r+1) + local weighted centroid →
        (K, 3) (x, y, z) nm per frame and the peak confidences; a list for batched grids."""
        found = local_maxima_3d(grid, threshold, radius_vox, refine)
        if isinstance(found, tuple):
            return self.voxels_to_nm(found[0]), found[1]
        return [(self.voxels_to_nm(p), v) for p, v in found]


# ----------------------------------------------------------------------------------------------------------
# Localization CNN
# ----------------------------------------------------------------------------------------------------------
class _ConvBN(nn.Sequential):
    """3×3 (dilated) convolution → LeakyReLU → BatchNorm (the paper's Conv2DLeakyReLUBN)."""

    def __init__(self, c_in: int, c_out: int, dilation: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation),
                         nn.LeakyReLU(0.2, inplace=True), nn.BatchNorm2d(c_out))


class _SubPixelUp(nn.Sequential):
    """×2 upsampling by sub-pixel convolution (3×3 conv to 4·C channels → PixelShuffle; Shi et al. 2016)
    → LeakyReLU → BatchNorm: each of the four sub-pixels gets its own filters."""

    def __init__(self, c: int):
        super().__init__(nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(0.2, inplace=True),
                         nn.BatchNorm2d(c))


class LocalizationCNN(nn.Module):
    """DeepSTORM3D localization network (paper Methods, Supplementary Fig. 2).

    frame (B, 1, H, W) counts → fixed photometric normalisation (:meth:`normalize`: (counts − ``input_offset``) /
    ``input_scale``, both in ADU and stored with the weights; per-frame standardisation made the output scale —
    and so the best threshold — depend on the emitter density) → context aggregation: 3×3
    convolutions with dilations ``dilations`` (paper 1, 1, 2, 4, 8, 16, 1), each seeing the previous features
    concatenated with the input frame → ``log2(upsampling)`` × sub-pixel ×2 upsampling → refinement: conv to
    ``n_z`` channels, a residual conv, 1×1 conv, HardTanh(0, ``max_value``) (in training with a 1 % gradient below 0:
    with a fixed input scale, short CPU runs otherwise pushed every voxel below 0 and stopped learning) → occupancy confidences
    (B, n_z, U·H, U·W). ``width`` scales the 64 feature channels of the paper (``models.blocks.scaled``).
    The 1×1 head starts with zero bias and weights scaled by 0.01 (an almost empty grid); the ×2 steps are
    sub-pixel convolutions (Shi et al. 2016): with interpolation + conv short CPU runs could not learn which
    sub-voxel holds an emitter.
    """

    def __init__(self, n_z: int, width: float = 1.0, upsampling: int = 4,
                 dilations: Sequence[int] = (1, 1, 2, 4, 8, 16, 1), max_value: float = 100.0,
                 input_offset: float = 0.0, input_scale: float = 1.0):
        super().__init__()
        self.register_buffer("input_offset", torch.tensor(in_range(input_offset, "input_offset", -1e9, 1e9)))
        self.register_buffer("input_scale", torch.tensor(positive(input_scale, "input_scale")))
        self.n_z = positive_int(n_z, "n_z")
        if upsampling not in (1, 2, 4, 8):
            raise ValueError(f"upsampling: must be 1, 2, 4 or 8, got {upsampling!r}")
        if len(dilations) < 1 or any(int(d) < 1 for d in dilations):
            raise ValueError(f"dilations: expected positive integers, got {dilations!r}")
        self.upsampling = int(upsampling)
        self.max_value = positive(max_value, "max_value")
        c = scaled(64, width)
        layers, c_in = [], 1
        for k, d in enumerate(dilations):
            layers.append(_ConvBN(c_in + (1 if k else 0), c, int(d)))
            c_in = c
        self.context = nn.ModuleList(layers)
        self.up = nn.ModuleList([_SubPixelUp(c) for _ in range(int(round(math.log2(upsampling))))])
        self.to_slices = _ConvBN(c, self.n_z)
        self.refine = _ConvBN(self.n_z, self.n_z)
        self.head = nn.Conv2d(self.n_z, self.n_z, 1)
        nn.init.zeros_(self.head.bias)  # start from an almost empty grid (outputs ≈ 0, not saturated)
        with torch.no_grad():
            self.head.weight.mul_(0.01)

    def normalize(self, frames: Tensor) -> Tensor:
        """Fixed photometric normalisation (counts − offset) / scale: the same map for every frame, so that the
        output's mass per emitter does not depend on how many emitters a frame holds."""
        return (frames - self.input_offset) / self.input_scale

    def forward(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4 or frames.shape[1] != 1:
            raise ValueError(f"frames: expected (B, 1, H, W), got {tuple(frames.shape)}")
        x0 = self.normalize(frames)
        x = x0
        for k, layer in enumerate(self.context):
            x = layer(x if k == 0 else torch.cat([x, x0], 1))
        for layer in self.up:
            x = layer(x)
        x = self.to_slices(x)
        x = self.refine(x) + x
        z = self.max_value * self.head(x)
        y = F.hardtanh(z, 0.0, self.max_value)
        if self.training:  # same values; below 0 a 1 % gradient, so that voxels pushed to 0 early can come back
            y = y + 0.01 * (z - z.detach()) * (z < 0)
        return y
