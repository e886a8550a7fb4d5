"""Forward model: sample ⊛ PSF → photons at the camera → noisy counts → the papers' normalisations.

Two renderers share :mod:`refocuslib.optics`:

* :func:`render_points` — point emitters (beads, molecules) at continuous 3D positions; each emitter's PSF is
  computed with its exact sub-pixel offset (pupil phase ramp) and added to the image. Differentiable (torch),
  so a learnable phase mask receives gradients (DeepSTORM3D's physics layer).
* :func:`image_volume` — an extended density volume (nuclei, filaments) imaged plane by plane, the 3D
  convolution I(z_f) = Σ_z V(z) ⊛ PSF(z − z_f) computed with FFTs.

Camera (docs/DESIGN.md): ADU = gain·Poisson(QE·(signal + background)) + N(0, read_noise) + baseline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from refocuslib._validate import as_image_array, in_range, positive, positive_int
from refocuslib.optics import Microscope
from refocuslib.samples import Points

Tensor = torch.Tensor


def auto_patch_px(microscope: Microscope, max_defocus_um: float, extra_airy: float = 10.0) -> int:
    """Odd patch size (camera pixels) that holds a PSF defocused by ``max_defocus_um``: the geometric blur
    radius |z|·tan(θ_max) plus ``extra_airy`` Airy radii (10 keeps ≈ 98 % of an in-focus PSF's photons: the
    Airy tail beyond radius v, in optical units, holds ≈ 2/(π·v))."""
    if not isinstance(microscope, Microscope):
        raise ValueError(f"microscope: expected a refocuslib.optics.Microscope, got {type(microscope).__name__}")
    max_defocus_um = in_range(max_defocus_um, "max_defocus_um", -math.inf, math.inf)  # its magnitude counts
    extra_airy = positive(extra_airy, "extra_airy", allow_zero=True)
    n = microscope.n_sample or microscope.n_immersion
    sin_t = min(microscope.na / n, 0.999)
    radius = abs(max_defocus_um) * sin_t / math.sqrt(1 - sin_t ** 2)
    radius += extra_airy * 0.61 * microscope.wavelength_um / microscope.na
    return 2 * int(math.ceil(radius / microscope.pixel_um)) + 1


def render_points(points: Points, microscope: Microscope, focal_planes_um: Sequence[float],
                  shape_yx: Tuple[int, int], patch_px: Optional[int] = None, pad: float = 2.0,
                  dtype: torch.dtype = torch.float32, device=None, chunk: int = 256) -> Tensor:
    """Expected photons per camera pixel (n_planes, H, W) of point emitters seen at each focal plane.

    Emitter positions are (x, y, z) µm with pixel (i, j) centred at ((j + ½)·pixel, (i + ½)·pixel). For each
    focal plane z_f the PSF is evaluated for emitter depth z with nominal focal plane z_f (for a matched
    sample this is defocus z − z_f). Emitters whose patch falls outside the image contribute what overlaps.
    """
    h, w = (positive_int(s, "shape_yx") for s in shape_yx)
    planes = np.atleast_1d(np.asarray(focal_planes_um, dtype=np.float64))
    if planes.ndim != 1 or not np.all(np.isfinite(planes)):
        raise ValueError(f"focal_planes_um: expected a finite 1D list of planes, got {focal_planes_um!r}")
    image = torch.zeros(len(planes), h, w, dtype=dtype, device=device)
    if len(points) == 0:
        return image
    xyz = torch.as_tensor(points.xyz_um, dtype=torch.float64)
    photons = torch.as_tensor(points.photons, dtype=dtype, device=device)
    if patch_px is None:
        max_dz = float(np.max(np.abs(points.xyz_um[:, 2][None] - planes[:, None])))
        patch_px = min(auto_patch_px(microscope, max_dz), 2 * max(h, w) + 1)
    p = positive_int(patch_px, "patch_px", minimum=3)
    half = p // 2
    px = microscope.pixel_um
    col, row = xyz[:, 0] / px - 0.5, xyz[:, 1] / px - 0.5
    j0, i0 = torch.round(col), torch.round(row)
    offsets_um = torch.stack([(col - j0) * px, (row - i0) * px], 1)
    # flat indices of every patch pixel in a padded canvas (so patches never fall off the edge)
    canvas_w = w + 2 * p
    ii = (i0.long() + p - half)[:, None, None] + torch.arange(p)[None, :, None]
    jj = (j0.long() + p - half)[:, None, None] + torch.arange(p)[None, None, :]
    inside = (ii >= 0) & (ii < h + 2 * p) & (jj >= 0) & (jj < canvas_w)
    keep = inside.reshape(len(points), -1).all(1)  # emitters far outside the canvas are dropped
    flat = (ii * canvas_w + jj).reshape(len(points), -1).to(device)
    out = []
    for k, zf in enumerate(planes):
        mic = microscope.replace(nfp_um=float(zf))
        canvas = torch.zeros((h + 2 * p) * canvas_w, dtype=dtype, device=device)
        for s in range(0, len(points), chunk):
            sel = torch.arange(s, min(s + chunk, len(points)))
            sel = sel[keep[sel]]
            if len(sel) == 0:
                continue
            psf = mic.psf(xyz[sel, 2], p, xy_um=offsets_um[sel], pad=pad, dtype=dtype, device=device)
            vals = psf.reshape(len(sel), -1) * photons[sel.to(photons.device), None]
            canvas = canvas.index_add(0, flat[sel.to(flat.device)].reshape(-1), vals.reshape(-1))
        out.append(canvas.reshape(h + 2 * p, canvas_w)[p:p + h, p:p + w])
    return torch.stack(out, 0)


def psf_stack_for_volume(microscope: Microscope, n_planes: int, z_step_um: float, n_pixels: int,
                         dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """PSFs at defocus k·z_step for k = −(n_planes−1) … (n_planes−1): the kernel of :func:`image_volume`."""
    if microscope.n_sample is not None and microscope.n_sample != microscope.n_immersion:
        raise ValueError("microscope: volume imaging by convolution needs a shift-invariant PSF "
                         "(n_sample None or equal to n_immersion); use render_points for index mismatch")
    n_planes = positive_int(n_planes, "n_planes")
    dz = (np.arange(2 * n_planes - 1) - (n_planes - 1)) * positive(z_step_um, "z_step_um")
    return microscope.replace(nfp_um=0.0).psf(dz, n_pixels, dtype=dtype, device=device)


def image_volume(volume, microscope: Microscope, z_step_um: float, psf_pixels: Optional[int] = None,
                 focal_indices: Optional[Sequence[int]] = None, psf_stack: Optional[Tensor] = None) -> Tensor:
    """Wide-field (or confocal) z-stack of a density volume (z, y, x) sampled at the camera pixel and z step.

    Returns photons (n_focal, H, W) for focal planes at the volume's own planes ``focal_indices`` (default all):
    I(z_f) = Σ_z V(z) ⊛ PSF(z − z_f) (linear convolution, zero outside the volume).
    """
    vol = as_image_array(volume, "volume", ndim=3)
    vol_t = torch.as_tensor(vol, dtype=torch.float64)
    nz, h, w = vol_t.shape
    if psf_stack is None:
        n_psf = psf_pixels or (2 * min(max(h, w), 2 * auto_patch_px(microscope, nz * z_step_um) // 2) + 1)
        psf_stack = psf_stack_for_volume(microscope, nz, z_step_um, n_psf)
    k = torch.as_tensor(psf_stack, dtype=torch.float64)
    if k.ndim != 3 or k.shape[0] != 2 * nz - 1:
        raise ValueError(f"psf_stack: expected shape (2·{nz}−1, n, n), got {tuple(k.shape)}")
    focal = np.arange(nz) if focal_indices is None else np.asarray(focal_indices, dtype=int)
    if focal.size == 0 or focal.min() < 0 or focal.max() >= nz:
        raise ValueError(f"focal_indices: must lie in [0, {nz - 1}], got {focal_indices!r}")
    kh, kw = k.shape[1:]
    fh, fw = h + kh - 1, w + kw - 1
    vol_ft = torch.fft.rfft2(vol_t, s=(fh, fw))
    out = torch.zeros(len(focal), h, w, dtype=torch.float64)
    for n, f in enumerate(focal):
        # kernel index for defocus z − z_f = (z_idx − f)·dz is (z_idx − f) + nz − 1
        kern = k[(torch.arange(nz) - int(f)) + nz - 1]
        conv = torch.fft.irfft2((vol_ft * torch.fft.rfft2(kern, s=(fh, fw))).sum(0), s=(fh, fw))
        out[n] = conv[kh // 2:kh // 2 + h, kw // 2:kw // 2 + w]
    return out.clamp_min(0).to(torch.float32)


def camera(photons, rng=None, qe: float = 0.8, gain: float = 1.0, read_noise_e: float = 1.5,
           baseline_adu: float = 100.0, background_photons: float = 0.0) -> Tensor:
    """Camera counts (ADU): gain·Poisson(QE·(signal + background)) + N(0, read_noise) + baseline.

    ``photons``: expected photons per pixel (array or tensor, any shape, ≥ 0). ``rng``: int seed,
    ``numpy.random.Generator`` (a seed is drawn from it) or ``torch.Generator``. Runs on the tensor's device.
    """
    x = torch.as_tensor(photons) if not torch.is_tensor(photons) else photons
    if torch.is_complex(x):
        raise ValueError(f"photons: expected real photon counts, got a complex array ({x.dtype}); "
                         f"pass |field|**2 (intensity), not the field")
    if x.dtype == torch.bool:
        raise ValueError("photons: expected real photon counts, got a boolean array")
    if not torch.is_floating_point(x):
        x = x.float()
    if not torch.all(torch.isfinite(x)):
        raise ValueError("photons: contains NaN or inf")
    if torch.any(x < 0):
        raise ValueError("photons: must be >= 0 (expected photon counts)")
    qe = in_range(qe, "qe", 0.0, 1.0, lo_open=True)
    gain = positive(gain, "gain")
    read = positive(read_noise_e, "read_noise_e", allow_zero=True)
    bg = positive(background_photons, "background_photons", allow_zero=True)
    if isinstance(rng, torch.Generator):
        gen = rng
    else:
        seed = int(rng.integers(2 ** 62)) if isinstance(rng, np.random.Generator) else (0 if rng is None else int(rng))
        gen = torch.Generator(device=x.device).manual_seed(seed)
    electrons = torch.poisson(qe * (x + bg), generator=gen)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * read
    return gain * electrons + noise + baseline_adu


def triangle_background(image) -> float:
    """Background level of an image: mean of the pixels below the triangle threshold (Zack 1977, scikit-image),
    the background estimate of Deep-Z's pre-processing."""
    from skimage.filters import threshold_triangle
    img = as_image_array(image, "image", ndim=(2, 3))
    t = threshold_triangle(img.astype(np.float64))
    below = img[img <= t]
    return float(below.mean()) if below.size else float(img.min())


def normalize_percentile(image, p_low: float = 0.0, p_high: float = 99.9, clip: bool = False) -> np.ndarray:
    """(x − P_low)/(P_high − P_low) with percentiles of the image itself (float32)."""
    img = as_image_array(image, "image").astype(np.float64)
    p_low = in_range(p_low, "p_low", 0.0, 100.0)
    p_high = in_range(p_high, "p_high", 0.0, 100.0)
    if p_high <= p_low:
        raise ValueError(f"p_high: must be > p_low ({p_low}), got {p_high}")
    lo, hi = np.percentile(img, [p_low, p_high])
    out = (img - lo) / max(hi - lo, 1e-12)
    return (np.clip(out, 0, 1) if clip else out).astype(np.float32)


def deepz_scale(image, p_high: float = 99.9) -> Tuple[float, float]:
    """(background, scale) of the Deep-Z normalisation of ``image``: its triangle-threshold background and the
    ``p_high`` percentile of what remains above it."""
    img = as_image_array(image, "image", ndim=(2, 3)).astype(np.float64)
    bg = float(triangle_background(img))
    scale = float(np.percentile(img - bg, in_range(p_high, "p_high", 50.0, 100.0)))
    return bg, max(scale, 1e-12)


def normalize_deepz(image, p_high: float = 99.9, reference=None) -> np.ndarray:
    """Deep-Z style normalisation: subtract the triangle-threshold background, then divide by the
    ``p_high`` percentile of what remains (float32; background ≈ 0, bright features ≈ 1).

    ``reference``: take background and scale from this image instead (e.g. a training target normalised with
    its *input's* scale, so the target/input gain is a function of the defocus alone and can be learned; a
    user's image at inference is normalised by itself, which is the same thing)."""
    img = as_image_array(image, "image", ndim=(2, 3)).astype(np.float64)
    bg, scale = deepz_scale(img if reference is None else reference, p_high)
    return apply_deepz_scale(img, bg, scale)


def apply_deepz_scale(image, background: float, scale: float) -> np.ndarray:
    """(image − background) / scale as float32: :func:`normalize_deepz` with the ``(background, scale)`` of
    :func:`deepz_scale` given (e.g. computed once from an input and applied to its crops and its target)."""
    return ((np.asarray(image, dtype=np.float64) - background) / scale).astype(np.float32)


@dataclass(frozen=True)
class Camera:
    """One camera model (docs/DESIGN.md): forward ``counts`` = gain·Poisson(QE·(photons + background)) +
    N(0, read_noise) + baseline (ADU), its expectation ``expected``, and the inverse ``photons`` (ADU → expected
    photons per pixel, background removed). The papers' configs hold these five numbers."""
    qe: float = 0.8
    gain: float = 1.0
    read_noise_e: float = 1.5
    baseline_adu: float = 100.0
    background_photons: float = 0.0

    def __post_init__(self):
        in_range(self.qe, "qe", 0.0, 1.0, lo_open=True)
        positive(self.gain, "gain")
        positive(self.read_noise_e, "read_noise_e", allow_zero=True)
        positive(self.background_photons, "background_photons", allow_zero=True)

    def counts(self, photons, rng=None) -> Tensor:
        """Noisy camera counts (ADU) of ``photons`` (:func:`camera`)."""
        return camera(photons, rng, qe=self.qe, gain=self.gain, read_noise_e=self.read_noise_e,
                      baseline_adu=self.baseline_adu, background_photons=self.background_photons)

    def expected(self, photons) -> Tensor:
        """Noise-free counts (ADU): the expectation of :meth:`counts`."""
        x = torch.as_tensor(photons) if not torch.is_tensor(photons) else photons
        return (x + self.background_photons) * self.qe * self.gain + self.baseline_adu

    def photons(self, counts) -> Tensor:
        """The inverse of :meth:`expected`: photons per pixel from counts (ADU), background removed."""
        c = torch.as_tensor(counts) if not torch.is_tensor(counts) else counts
        return (c - self.baseline_adu) / (self.qe * self.gain) - self.background_photons
