"""Scalar Fourier optics: pupil → point-spread function (PSF), in torch (batched, differentiable, CPU/CUDA).

Units: lengths in µm, spatial frequencies in cycles/µm, phases in rad.

Model (docs/DESIGN.md "Physics you need"). On a lateral grid of N samples of size dx the pupil is

    P(f) = A(f) · exp(i·Φ_mask(ρ, φ)) · exp(i·2π·(z·k_s(f) − z_nfp·k_i(f))) · exp(+2πi·(f_x·x0 + f_y·y0))

with A the aperture |f| ≤ NA/λ (and |f| < n_s/λ: rays beyond the critical angle do not leave the sample),
k_m(f) = sqrt((n_m/λ)² − |f|²) the axial wave number in medium m (s: sample, i: immersion), z the emitter's
axial position and z_nfp the nominal focal plane (for n_s = n_i this is plain defocus by z − z_nfp).
The PSF is |F(P)|² with F the *forward* DFT (``fft2``, norm 'forward'), as in the DeepSTORM3D release; the
inverse DFT would rotate an asymmetric mask's PSF by 180°, which the real telomere snapshots reject
(tests/test_deepstorm3d.py pins it on them). Hence the ramp's + sign above (a point at +x0). The PSF is
normalised so that one photon passes the aperture: the computed (padded, un-cropped)
field of every plane holds the same energy (Parseval), just under one photon (the far tails beyond the grid),
and cropping to the field of view loses what falls outside it.

The camera pixel may be coarser than the Nyquist rate λ/(4·NA) (Deep-Z: 0.325 µm at 0.75 NA). The field is
then computed on a grid ``oversample`` times finer and the intensity is integrated over each camera pixel.

Checks (tests/test_optics.py): in-focus lateral FWHM ≈ 0.51·λ/NA, wide-field depth of field ≈ λ·n/NA²,
confocal axially narrower than wide-field, double-helix lobes rotate monotonically, agreement with pyotf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refocuslib._validate import in_range, positive, positive_int

Tensor = torch.Tensor
MaskLike = Union[None, Callable[[Tensor, Tensor], Tensor], Tensor, np.ndarray]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# ----------------------------------------------------------------------------------------------------------
# Pupil grid
# ----------------------------------------------------------------------------------------------------------
@dataclass
class PupilGrid:
    """Sampling of one PSF computation (all tensors (N, N) on the fine grid).

    ``fx, fy`` spatial frequencies (cycles/µm); ``rho`` = |f|/(NA/λ) (1 at the aperture edge); ``phi`` azimuth;
    ``aperture`` 0/1 transmission; ``kz_sample``/``kz_immersion`` axial wave numbers (cycles/µm, 0 outside).
    ``n_pixels`` camera pixels of the returned PSF, ``n_padded`` camera pixels computed (so that defocused PSFs
    do not wrap), ``oversample`` fine samples per camera pixel, ``dx_um`` fine sample size.
    """
    fx: Tensor
    fy: Tensor
    rho: Tensor
    phi: Tensor
    aperture: Tensor
    kz_sample: Tensor
    kz_immersion: Tensor
    n_pixels: int
    n_padded: int
    oversample: int
    pixel_um: float
    dx_um: float
    na: float
    wavelength_um: float
    n_immersion: float
    n_sample: float

    @property
    def n_fine(self) -> int:
        return self.n_padded * self.oversample


def nyquist_pixel_um(na: float, wavelength_um: float) -> float:
    """Largest pixel that samples the intensity PSF without aliasing: λ / (4·NA)."""
    return wavelength_um / (4.0 * na)


def _check_optics(na, wavelength_um, n_immersion, n_sample, pixel_um):
    pixel_um = positive(pixel_um, "pixel_um")
    wavelength_um = in_range(wavelength_um, "wavelength_um", 0.2, 2.0)
    n_immersion = in_range(n_immersion, "n_immersion", 1.0, 2.0)
    n_sample = n_immersion if n_sample is None else in_range(n_sample, "n_sample", 1.0, 2.0)
    na = in_range(na, "na", 0.0, n_immersion, lo_open=True)
    return na, wavelength_um, n_immersion, n_sample, pixel_um


class SamplingWarning(UserWarning):
    """A PSF requested on a grid that cannot represent it: camera pixels coarser than λ/(2·NA) (the image
    aliases) or a defocus whose blur is wider than the computed field (it wraps around)."""


#: share of an emitter's light that may fall beyond the computed field before :class:`SamplingWarning`
WRAP_TOLERANCE = 0.2


def _check_sampling(pixel_um: float, na: float, wavelength_um: float, oversample) -> None:
    """Raise when an explicit ``oversample`` leaves the field sample coarser than λ/(2·NA) (the pupil does not
    fit the frequency grid: the PSF aliases); warn when the camera pixel itself is coarser than λ/(2·NA)."""
    field_limit = wavelength_um / (2.0 * na)
    if oversample is not None and not isinstance(oversample, bool) and isinstance(oversample, (int, np.integer)) \
            and oversample >= 1 and pixel_um / oversample > field_limit * (1 + 1e-9):
        need = math.ceil(pixel_um / nyquist_pixel_um(na, wavelength_um) - 1e-9)
        raise ValueError(f"oversample: pixel_um/oversample = {pixel_um / oversample:.4g} µm is coarser than the "
                         f"field's sampling limit λ/(2·NA) = {field_limit:.4g} µm, so the pupil does not fit the "
                         f"frequency grid and the PSF aliases; use oversample >= {need} (λ/(4·NA) = "
                         f"{nyquist_pixel_um(na, wavelength_um):.4g} µm) or None (automatic)")
    if pixel_um > field_limit * (1 + 1e-6):
        import warnings
        warnings.warn(f"pixel_um: {pixel_um:.4g} µm is coarser than λ/(2·NA) = {field_limit:.4g} µm (NA {na:g}, "
                      f"λ {wavelength_um:g} µm): the PSF is integrated correctly over each pixel, but images "
                      f"sampled this coarsely alias (Nyquist pixel λ/(4·NA) = "
                      f"{nyquist_pixel_um(na, wavelength_um):.4g} µm)", SamplingWarning, stacklevel=3)


def wrap_fraction(grid: "PupilGrid", z_um, nfp_um: float = 0.0) -> np.ndarray:
    """Share of each emitter's light (B,) that the computed field cannot hold: the pupil area whose ray
    displacement |z·f/k_s(f) − z_nfp·f/k_i(f)| (the gradient of the defocus phase over 2π: the geometric blur
    radius) exceeds L − n·p/2, the distance at which the periodic field of width L = ``n_padded``·p folds light
    back onto the returned n·p crop."""
    z = np.asarray(torch.as_tensor(z_um).detach().cpu().double(), dtype=np.float64).reshape(-1, 1)
    f_max = min(grid.na, grid.n_sample) / grid.wavelength_um
    f = (np.arange(512) + 0.5) / 512 * f_max  # radial samples of the open pupil; area weight ∝ f
    ks = np.sqrt(np.maximum((grid.n_sample / grid.wavelength_um) ** 2 - f ** 2, 1e-30))
    ki = np.sqrt(np.maximum((grid.n_immersion / grid.wavelength_um) ** 2 - f ** 2, 1e-30))
    shift = np.abs(z * f / ks - float(nfp_um) * f / ki)
    limit = (grid.n_padded - grid.n_pixels / 2.0) * grid.pixel_um
    return (f * (shift > limit)).sum(axis=1) / f.sum()


def _warn_if_wrapped(grid: "PupilGrid", z: Tensor, nfp_um: float) -> None:
    with torch.no_grad():
        frac = wrap_fraction(grid, z, nfp_um)
    worst = int(np.argmax(frac))
    if frac[worst] > WRAP_TOLERANCE:
        import warnings
        limit = (grid.n_padded - grid.n_pixels / 2.0) * grid.pixel_um
        f_in = math.sqrt(1 - WRAP_TOLERANCE) * min(grid.na, grid.n_sample) / grid.wavelength_um
        tan = f_in / math.sqrt((grid.n_sample / grid.wavelength_um) ** 2 - f_in ** 2)  # ray angle enclosing 1 - tol
        warnings.warn(f"z_um: a defocus of {float(z.reshape(-1)[worst]):.4g} µm spreads {frac[worst]:.0%} of the "
                      f"light beyond the computed field ({grid.n_padded * grid.pixel_um:.4g} µm, periodic), so it "
                      f"wraps around onto the PSF; this field holds blur radii up to {limit:.4g} µm, i.e. "
                      f"|z - z_nfp| <~ {limit / tan:.4g} µm; enlarge n_pixels or pad", SamplingWarning, stacklevel=3)


def make_pupil_grid(n_pixels: int, pixel_um: float, na: float, wavelength_um: float, n_immersion: float,
                    n_sample: Optional[float] = None, pad: float = 2.0, oversample: Optional[int] = None,
                    dtype: torch.dtype = torch.float32, device=None,
                    min_pupil_radius_samples: int = 32, soft_edge: bool = True) -> PupilGrid:
    """Build the pupil sampling for a PSF of ``n_pixels``² camera pixels of ``pixel_um``.

    ``pad`` enlarges the computed field (≈ 2 keeps defocused PSFs from wrapping); ``oversample`` defaults to
    the smallest integer that brings the fine sample to the Nyquist pixel λ/(4·NA). The field is enlarged
    further until the aperture radius NA/λ spans at least ``min_pupil_radius_samples`` frequency samples, so
    that small patches still sample the pupil (and its defocus phase) finely. ``soft_edge`` weights the
    samples that the aperture circle cuts by the fraction of the sample inside it (anti-aliased edge), which
    removes the ±0.5 % staircase noise of a binary aperture; ``False`` gives the binary aperture of pyotf.
    """
    n_pixels = positive_int(n_pixels, "n_pixels")
    na, wavelength_um, n_immersion, n_sample, pixel_um = _check_optics(na, wavelength_um, n_immersion,
                                                                       n_sample, pixel_um)
    pad = in_range(pad, "pad", 1.0, 16.0)
    _check_sampling(pixel_um, na, wavelength_um, oversample)
    if oversample is None:
        oversample = max(1, math.ceil(pixel_um / nyquist_pixel_um(na, wavelength_um) - 1e-9))
    oversample = positive_int(oversample, "oversample")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    dx = pixel_um / oversample
    n_min_fine = min_pupil_radius_samples * wavelength_um / (na * dx)  # NA/λ · N·dx ≥ radius samples
    n_padded = int(math.ceil(max(pad * n_pixels, n_min_fine / oversample) / 2.0)) * 2
    n_fine = n_padded * oversample
    f = torch.fft.fftfreq(n_fine, d=dx, dtype=torch.float64, device=device)
    fy, fx = torch.meshgrid(f, f, indexing="ij")
    fr2 = fx ** 2 + fy ** 2
    f_cut = na / wavelength_um
    df = 1.0 / (n_fine * dx)
    if soft_edge:
        aperture = torch.clamp((f_cut - torch.sqrt(fr2)) / df + 0.5, 0.0, 1.0)
    else:
        aperture = (fr2 <= f_cut ** 2).double()
    aperture = aperture * (fr2 < (n_sample / wavelength_um) ** 2)
    kz_s = torch.sqrt(torch.clamp((n_sample / wavelength_um) ** 2 - fr2, min=0.0))
    kz_i = torch.sqrt(torch.clamp((n_immersion / wavelength_um) ** 2 - fr2, min=0.0))
    rho = torch.sqrt(fr2) / f_cut
    phi = torch.atan2(fy, fx)
    to = dict(dtype=dtype)
    return PupilGrid(fx=fx.to(**to), fy=fy.to(**to), rho=rho.to(**to), phi=phi.to(**to),
                     aperture=aperture.to(**to), kz_sample=kz_s.to(**to), kz_immersion=kz_i.to(**to),
                     n_pixels=n_pixels, n_padded=n_padded, oversample=oversample, pixel_um=pixel_um, dx_um=dx,
                     na=na, wavelength_um=wavelength_um, n_immersion=n_immersion, n_sample=n_sample)


def mask_phase_on_grid(mask: MaskLike, grid: PupilGrid) -> Optional[Tensor]:
    """Evaluate a phase mask on the grid: callable ``mask(rho, phi)`` or an (N, N) array already on the grid."""
    if mask is None:
        return None
    if callable(mask):
        phase = mask(grid.rho, grid.phi)
    else:
        phase = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
        phase = phase.to(device=grid.rho.device, dtype=grid.rho.dtype)
    if phase.shape != grid.rho.shape:
        raise ValueError(f"mask: phase on the pupil grid must have shape {tuple(grid.rho.shape)}, "
                         f"got {tuple(phase.shape)}")
    if not torch.all(torch.isfinite(phase)):
        raise ValueError("mask: phase contains NaN or inf")
    return phase


def _as_batch(values, name: str, grid: PupilGrid, width: int = 1) -> Tensor:
    if torch.is_tensor(values) and values.is_complex() or not torch.is_tensor(values) and np.iscomplexobj(values):
        raise ValueError(f"{name}: must be real positions in µm, got complex values")
    t = torch.as_tensor(values, dtype=grid.rho.dtype, device=grid.rho.device)
    if width == 1:
        t = t.reshape(-1)
    elif t.ndim == 1 and t.shape[0] == width:
        t = t.reshape(1, width)
    if (width == 1 and t.ndim != 1) or (width > 1 and (t.ndim != 2 or t.shape[1] != width)):
        raise ValueError(f"{name}: expected shape (B,) or (B, {width}), got {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: is empty")
    if not torch.all(torch.isfinite(t)):
        raise ValueError(f"{name}: contains NaN or inf")
    return t


def pupil_field(grid: PupilGrid, z_um, xy_um=None, nfp_um: float = 0.0, mask: MaskLike = None) -> Tensor:
    """Complex pupil functions (B, N, N) for emitters at axial positions ``z_um`` (B,), lateral offsets
    ``xy_um`` (B, 2) as (x, y) in µm from the PSF centre, nominal focal plane ``nfp_um``."""
    z = _as_batch(z_um, "z_um", grid)
    _warn_if_wrapped(grid, z, nfp_um)
    phase = 2 * math.pi * (z[:, None, None] * grid.kz_sample - float(nfp_um) * grid.kz_immersion)
    # put the point at the centre of the central camera pixel (see module docstring)
    centre_shift_um = 0.5 * (grid.oversample - 1) * grid.dx_um
    x0 = torch.full_like(z, centre_shift_um)
    y0 = torch.full_like(z, centre_shift_um)
    if xy_um is not None:
        xy = _as_batch(xy_um, "xy_um", grid, width=2)
        if xy.shape[0] not in (1, z.shape[0]):
            raise ValueError(f"xy_um: has {xy.shape[0]} rows but z_um has {z.shape[0]}")
        x0 = x0 + xy[:, 0]
        y0 = y0 + xy[:, 1]
    # +: the forward FFT of _intensity_fine maps exp(+2πi f·x0) to a point at +x0
    phase = phase + 2 * math.pi * (grid.fx * x0[:, None, None] + grid.fy * y0[:, None, None])
    mphase = mask_phase_on_grid(mask, grid)
    if mphase is not None:
        phase = phase + mphase
    return grid.aperture * torch.exp(1j * phase)


def _bin_and_crop(intensity_fine: Tensor, grid: PupilGrid) -> Tensor:
    """(B, Nf, Nf) fine, fftshifted intensity → (B, n, n) camera pixels (integrated over each pixel)."""
    if grid.oversample > 1:
        intensity = F.avg_pool2d(intensity_fine[:, None], grid.oversample)[:, 0] * grid.oversample ** 2
    else:
        intensity = intensity_fine
    c, h = grid.n_padded // 2, grid.n_pixels // 2
    return intensity[:, c - h:c - h + grid.n_pixels, c - h:c - h + grid.n_pixels]


def _intensity_fine(grid: PupilGrid, pupil: Tensor) -> Tensor:
    """|fft2(P)/N²|² (forward DFT: image orientation of the DeepSTORM3D release and the real data) on the fine
    padded grid, centred (fftshift), normalised to one photon per plane."""
    field = torch.fft.fftshift(torch.fft.fft2(pupil, norm="forward"), dim=(-2, -1))
    intensity = field.real ** 2 + field.imag ** 2
    # One photon through the aperture: its energy is the aperture's area, Σ A over the samples (an edge sample
    # is open over the fraction A of its area). Parseval gives Σ|fft2(P)/N²|² = Σ A² / N² ≤ Σ A / N²: the
    # sliver Σ(A − A²) is what the sub-sample edge diffracts beyond the grid's band, i.e. far tails.
    energy = grid.aperture.sum() / grid.n_fine ** 2
    return intensity / energy


def psf_from_grid(grid: PupilGrid, z_um, xy_um=None, nfp_um: float = 0.0, mask: MaskLike = None,
                  chunk: int = 64) -> Tensor:
    """Wide-field intensity PSFs (B, n, n) in photons per camera pixel for one emitted photon."""
    z = _as_batch(z_um, "z_um", grid)
    xy = None if xy_um is None else _as_batch(xy_um, "xy_um", grid, width=2)
    out = []
    mask_phase = mask_phase_on_grid(mask, grid)  # evaluate once (a learnable mask keeps its graph)
    for s in range(0, z.shape[0], chunk):
        xs = None if xy is None else (xy if xy.shape[0] == 1 else xy[s:s + chunk])
        pupil = pupil_field(grid, z[s:s + chunk], xs, nfp_um, mask_phase)
        out.append(_bin_and_crop(_intensity_fine(grid, pupil), grid))
    return torch.cat(out, 0)


def widefield_psf(z_um, n_pixels: int, pixel_um: float, na: float, wavelength_um: float, n_immersion: float,
                  n_sample: Optional[float] = None, mask: MaskLike = None, xy_um=None, nfp_um: float = 0.0,
                  pad: float = 2.0, oversample: Optional[int] = None, dtype: torch.dtype = torch.float32,
                  device=None, min_pupil_radius_samples: int = 32, soft_edge: bool = True) -> Tensor:
    """Wide-field PSF stack (z, y, x) of a point emitter, photons per camera pixel per emitted photon.

    ``z_um``: emitter axial positions (µm). Without index mismatch (``n_sample`` None) this is the distance
    from the focal plane (positive: away from the objective). With ``n_sample`` it is the depth above the
    coverslip, and ``nfp_um`` the nominal focal plane (objective focus moved into the sample).
    ``mask``: phase mask, callable ``mask(rho, phi)`` (``rho`` = 1 at the aperture edge) or an (N, N) array.
    ``xy_um``: (B, 2) sub-pixel lateral offsets (x, y) in µm applied as a pupil phase ramp.
    The emitter sits at pixel (n//2, n//2).
    """
    grid = make_pupil_grid(n_pixels, pixel_um, na, wavelength_um, n_immersion, n_sample, pad, oversample,
                           dtype, device, min_pupil_radius_samples, soft_edge)
    return psf_from_grid(grid, z_um, xy_um, nfp_um, mask)


def _disk_kernel_fine(grid: PupilGrid, radius_um: float) -> Tensor:
    """Uniform disk (pinhole back-projected to the sample) on the fine centred grid, sum 1."""
    n = grid.n_fine
    coords = (torch.arange(n, dtype=torch.float64, device=grid.rho.device) - n // 2) * grid.dx_um
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    # 4×4 supersampling of the disk edge keeps small pinholes smooth
    sub = (torch.arange(4, dtype=torch.float64, device=grid.rho.device) + 0.5) / 4 - 0.5
    disk = torch.zeros_like(xx)
    for sy in sub:
        for sx in sub:
            disk += (((xx + sx * grid.dx_um) ** 2 + (yy + sy * grid.dx_um) ** 2) <= radius_um ** 2).double()
    if disk.sum() == 0:  # pinhole smaller than a sample: a delta
        disk[n // 2, n // 2] = 1.0
    return (disk / disk.sum()).to(grid.rho.dtype)


def confocal_psf(z_um, n_pixels: int, pixel_um: float, na: float, wavelength_um: float, n_immersion: float,
                 excitation_um: float, pinhole_au: float = 1.0, n_sample: Optional[float] = None,
                 nfp_um: float = 0.0, xy_um=None, pad: float = 2.0, oversample: Optional[int] = None,
                 dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Point-scanning confocal PSF stack (z, y, x): PSF_ex(λ_ex) · (PSF_em(λ_em) ⊛ pinhole disk).

    The pinhole radius is ``pinhole_au`` Airy units, 1 AU = 0.61·λ_em/NA at the sample. Normalised so the
    plane of an emitter at the nominal focus sums to one (off-focus planes then sum to less: sectioning).
    ``wavelength_um`` is the emission wavelength; ``xy_um`` (B, 2) shifts the emitter laterally (the scanned
    spot and the pinhole image move together in the sample frame).
    """
    excitation_um = in_range(excitation_um, "excitation_um", 0.2, 2.0)
    pinhole_au = in_range(pinhole_au, "pinhole_au", 0.0, 20.0)
    grid_em = make_pupil_grid(n_pixels, pixel_um, na, wavelength_um, n_immersion, n_sample, pad, oversample,
                              dtype, device)
    # the excitation PSF on exactly the emission grid (same field and samples)
    grid_ex = make_pupil_grid(n_pixels, pixel_um, na, excitation_um, n_immersion, n_sample,
                              (grid_em.n_padded - 0.5) / n_pixels, grid_em.oversample, dtype, device,
                              min_pupil_radius_samples=0)
    z = _as_batch(z_um, "z_um", grid_em)
    z_all = torch.cat([z, torch.tensor([float(nfp_um) if n_sample is not None else 0.0], dtype=z.dtype,
                                       device=z.device)])
    xy_all = None
    if xy_um is not None:
        xy = _as_batch(xy_um, "xy_um", grid_em, width=2).expand(z.shape[0], 2)
        xy_all = torch.cat([xy, torch.zeros(1, 2, dtype=xy.dtype, device=xy.device)])
    disk = _disk_kernel_fine(grid_em, pinhole_au * 0.61 * wavelength_um / na)
    disk_ft = torch.fft.fft2(torch.fft.ifftshift(disk))
    planes = []
    for s in range(0, z_all.shape[0], 32):
        zs = z_all[s:s + 32]
        xs = None if xy_all is None else xy_all[s:s + 32]
        em = _intensity_fine(grid_em, pupil_field(grid_em, zs, xs, nfp_um))
        ex = _intensity_fine(grid_ex, pupil_field(grid_ex, zs, xs, nfp_um))
        em_pinhole = torch.fft.ifft2(torch.fft.fft2(em) * disk_ft).real.clamp_min(0)
        planes.append(_bin_and_crop(ex * em_pinhole, grid_em))
    stack = torch.cat(planes, 0)
    return stack[:-1] / stack[-1].sum()


# ----------------------------------------------------------------------------------------------------------
# Phase masks (functions of the normalised pupil coordinates rho ∈ [0, 1], phi)
# ----------------------------------------------------------------------------------------------------------
def zernike(n: int, m: int, rho: Tensor, phi: Tensor) -> Tensor:
    """Zernike polynomial Z_n^m(ρ, φ) (unit-amplitude convention: R_n^|m|(1) = 1), zero for ρ > 1.

    m ≥ 0 gives R·cos(mφ), m < 0 gives R·sin(|m|φ). Requires n ≥ |m| and n − |m| even.
    """
    n = positive_int(n, "n", minimum=0)
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or abs(m) > n or (n - abs(m)) % 2:
        raise ValueError(f"m: must be an integer with |m| <= n and n - |m| even (n={n}), got {m!r}")
    ma = abs(int(m))
    radial = torch.zeros_like(rho)
    for k in range((n - ma) // 2 + 1):
        c = (-1) ** k * math.factorial(n - k) / (
            math.factorial(k) * math.factorial((n + ma) // 2 - k) * math.factorial((n - ma) // 2 - k))
        radial = radial + c * rho ** (n - 2 * k)
    angular = torch.cos(ma * phi) if m >= 0 else torch.sin(ma * phi)
    return torch.where(rho <= 1.0, radial * angular, torch.zeros_like(rho))


def astigmatic_mask(amplitude_rad: float = 1.0, angle_deg: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    """Astigmatic (cylindrical-lens) mask Φ = a·Z_2^2(ρ, φ − θ)."""
    a = float(amplitude_rad)
    t = math.radians(angle_deg)
    return lambda rho, phi: a * zernike(2, 2, rho, phi - t)


#: Zernike coefficients (rad; (n, m) → c, unit-amplitude convention, ρ = 1 at the NA edge) of the Tetrapod
#: phase-mask model released with DeepSTORM3D (``masks/mask_tetrapod.mat``, 329 px, pupil radius
#: f·NA/(M·p) = 90.6 px). The model is exactly a Zernike polynomial of order ≤ 6: the least-squares fit of the
#: unwrapped mask over its support leaves a residual below 1e-13 rad (tests/test_optics.py re-derives it).
TETRAPOD_ZERNIKE_RAD = {
    (2, -2): 1.3912, (2, 0): 4.7691, (2, 2): -1.9127, (4, -4): -0.4022, (4, -2): 6.0329, (4, 0): 1.9440,
    (4, 2): -8.6748, (4, 4): 0.0647, (6, -6): -1.0763, (6, -4): 0.2683, (6, -2): 0.6446, (6, 0): 0.3163,
    (6, 2): -0.8725, (6, 4): -0.1721, (6, 6): -0.2421,
}


def zernike_mask(coefficients_rad: dict, scale: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """Phase mask Φ = scale · Σ c_nm · Z_n^m(ρ, φ) from ``{(n, m): c_rad}``."""
    if not coefficients_rad:
        raise ValueError("coefficients_rad: needs at least one (n, m): value entry")
    items = [((int(n), int(m)), float(c)) for (n, m), c in coefficients_rad.items()]
    for (n, m), _ in items:
        if abs(m) > n or (n - abs(m)) % 2:
            raise ValueError(f"coefficients_rad: invalid Zernike index (n={n}, m={m})")
    k = float(scale)
    return lambda rho, phi: k * sum(c * zernike(n, m, rho, phi) for (n, m), c in items)


def tetrapod_mask(scale: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """Tetrapod phase mask of the DeepSTORM3D paper (Shechtman et al. 2015 design; Nehme et al. 2020):
    its released mask model as Zernike coefficients (:data:`TETRAPOD_ZERNIKE_RAD`), optionally scaled.

    Designed for 100×/1.45 NA, λ 0.67 µm, a 4 µm axial range in water; the measured, printed mask is in
    ``data/deepstorm3d/masks`` (use :class:`ArrayMask`).
    """
    return zernike_mask(TETRAPOD_ZERNIKE_RAD, scale)


def double_helix_mask(n_rings: int = 4, orientation_deg: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    """Double-helix zone mask: ``n_rings`` equal-area rings, ring l = 1…L carries the spiral phase (2l−1)·φ.

    Equal-area ring edges are at ρ = sqrt(l/L). The two-lobed PSF rotates monotonically with defocus
    (Prasad 2013 rotating-PSF zone plate; docs/DESIGN.md).
    """
    n_rings = positive_int(n_rings, "n_rings")
    t = math.radians(orientation_deg)

    def phase(rho: Tensor, phi: Tensor) -> Tensor:
        ring = torch.clamp(torch.ceil(rho ** 2 * n_rings), 1, n_rings)
        return torch.where(rho <= 1.0, (2 * ring - 1) * (phi - t), torch.zeros_like(rho))

    return phase


class ArrayMask(nn.Module):
    """A phase mask sampled on a square array over the normalised pupil, resampled bilinearly to any grid.

    ``phase_rad`` (M, M): the mask; ``pupil_radius_px``: the aperture radius (NA/λ) in mask pixels, around the
    array centre (for a measured mask in a 4f relay: r = f·NA/M / p, see data/deepstorm3d/README).
    With ``learnable=True`` the phase is an ``nn.Parameter`` (DeepSTORM3D end-to-end PSF design).
    """

    def __init__(self, phase_rad, pupil_radius_px: Optional[float] = None, learnable: bool = False):
        super().__init__()
        phase = torch.as_tensor(np.asarray(phase_rad, dtype=np.float32) if not torch.is_tensor(phase_rad)
                                else phase_rad, dtype=torch.float32)
        if phase.ndim != 2 or phase.shape[0] != phase.shape[1] or phase.shape[0] < 2:
            raise ValueError(f"phase_rad: expected a square 2D array, got shape {tuple(phase.shape)}")
        if not torch.all(torch.isfinite(phase)):
            raise ValueError("phase_rad: contains NaN or inf")
        m = phase.shape[0]
        radius = (m - 1) / 2.0 if pupil_radius_px is None else positive(pupil_radius_px, "pupil_radius_px")
        if radius > m / 2.0 + 1:
            raise ValueError(f"pupil_radius_px: must be <= {m / 2.0 + 1} (half the {m}-pixel mask), got {radius}")
        self.pupil_radius_px = float(radius)
        self.size = m
        if learnable:
            self.phase = nn.Parameter(phase.clone())
        else:
            self.register_buffer("phase", phase.clone())

    def forward(self, rho: Tensor, phi: Tensor) -> Tensor:
        # normalised pupil coordinates → mask pixel coordinates → grid_sample's [-1, 1] (align_corners=True)
        scale = self.pupil_radius_px / ((self.size - 1) / 2.0)
        gx = (rho * torch.cos(phi) * scale).to(self.phase.dtype)
        gy = (rho * torch.sin(phi) * scale).to(self.phase.dtype)
        inside = (rho <= 1.0)
        g = torch.stack([gx.clamp(-1, 1), gy.clamp(-1, 1)], -1)[None]
        # interpolate the phasor (cos Φ, sin Φ), not Φ: measured masks are wrapped to (−π, π], and bilinear
        # interpolation of a wrapped phase would be wrong along every 2π jump
        phasor = torch.stack([torch.cos(self.phase), torch.sin(self.phase)])[None].to(g.device)
        c, s_ = F.grid_sample(phasor, g, mode="bilinear", align_corners=True)[0]
        vals = torch.atan2(s_, c)
        return torch.where(inside, vals.to(rho.dtype), torch.zeros_like(rho))

    @classmethod
    def from_function(cls, fn: Callable[[Tensor, Tensor], Tensor], size: int = 65, learnable: bool = False):
        """Sample a functional mask (e.g. :func:`tetrapod_mask`) on ``size``² pixels spanning the pupil."""
        c = torch.linspace(-1, 1, size, dtype=torch.float64)
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        rho, phi = torch.sqrt(xx ** 2 + yy ** 2), torch.atan2(yy, xx)
        return cls(fn(rho, phi).float(), pupil_radius_px=(size - 1) / 2.0, learnable=learnable)


class PhaseSum(nn.Module):
    """The sum of phase masks, Φ(ρ, φ) = Σ_k Φ_k(ρ, φ): e.g. a designed mask (double helix, Tetrapod, a learnable
    :class:`ArrayMask`) in the pupil of an objective with a calibrated aberration
    (:class:`refocuslib.calibrate.ZernikePupil`). Masks that are modules are registered (a learnable mask's
    phase stays a parameter); every part must be a callable ``mask(rho, phi)`` (an array is tied to one grid)."""

    def __init__(self, *masks):
        super().__init__()
        parts = [m for m in masks if m is not None]
        if not parts:
            raise ValueError("masks: PhaseSum needs at least one mask")
        for m in parts:
            if not callable(m):
                raise ValueError(f"masks: each part must be a callable mask(rho, phi) (an ArrayMask, a Zernike "
                                 f"pupil, ...), got {type(m).__name__}; a phase array is tied to one pupil grid")
        self.submasks = nn.ModuleList([m for m in parts if isinstance(m, nn.Module)])
        self._parts = parts

    def forward(self, rho: Tensor, phi: Tensor) -> Tensor:
        phase = self._parts[0](rho, phi)
        for m in self._parts[1:]:
            phase = phase + m(rho, phi)
        return phase

    def extra_repr(self) -> str:
        return " + ".join(type(m).__name__ if isinstance(m, nn.Module) else repr(m) for m in self._parts)


def learnable_mask(size: int = 65, init: Optional[Callable[[Tensor, Tensor], Tensor]] = None) -> ArrayMask:
    """A learnable pixel-wise phase mask over the pupil, zero or ``init`` at start (DeepSTORM3D Fig. 4)."""
    size = positive_int(size, "size", minimum=3)
    if init is None:
        return ArrayMask(torch.zeros(size, size), pupil_radius_px=(size - 1) / 2.0, learnable=True)
    return ArrayMask.from_function(init, size=size, learnable=True)


# ----------------------------------------------------------------------------------------------------------
# Textbook values
# ----------------------------------------------------------------------------------------------------------
def lateral_fwhm_theory_um(na: float, wavelength_um: float) -> float:
    """In-focus wide-field lateral FWHM of the Airy disk ≈ 0.51·λ/NA."""
    return 0.51 * wavelength_um / na


def depth_of_field_theory_um(na: float, wavelength_um: float, n_immersion: float) -> float:
    """Wide-field depth of field ≈ λ·n/NA² (wave-optical term)."""
    return wavelength_um * n_immersion / na ** 2


def numpy_psf(*args, **kwargs) -> np.ndarray:
    """:func:`widefield_psf` as a float64 NumPy array (convenience for notebooks and metrics)."""
    kwargs.setdefault("dtype", torch.float64)
    return widefield_psf(*args, **kwargs).cpu().numpy()


__all__ = [
    "PupilGrid", "make_pupil_grid", "pupil_field", "psf_from_grid", "widefield_psf", "confocal_psf", "zernike",
    "astigmatic_mask", "tetrapod_mask", "zernike_mask", "TETRAPOD_ZERNIKE_RAD", "double_helix_mask", "ArrayMask",
    "PhaseSum", "learnable_mask", "nyquist_pixel_um",
    "lateral_fwhm_theory_um", "depth_of_field_theory_um", "numpy_psf", "FWHM_PER_SIGMA", "SamplingWarning",
    "wrap_fraction",
]


# ----------------------------------------------------------------------------------------------------------
# A microscope = one set of optical parameters; presets for the papers
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Microscope:
    """Optical parameters of one acquisition (lengths in µm).

    ``modality`` is 'widefield' or 'confocal' (then ``excitation_um`` and ``pinhole_au`` apply). ``n_sample``
    None means no refractive-index mismatch; ``nfp_um`` is the nominal focal plane (see :func:`widefield_psf`).
    ``mask`` is a phase mask (callable or :class:`ArrayMask`) or None.
    """
    na: float
    wavelength_um: float
    n_immersion: float
    pixel_um: float
    n_sample: Optional[float] = None
    nfp_um: float = 0.0
    modality: str = "widefield"
    excitation_um: Optional[float] = None
    pinhole_au: float = 1.0
    mask: object = None
    name: str = ""

    def __post_init__(self):
        for key in ("na", "wavelength_um", "n_immersion", "pixel_um", "n_sample", "nfp_um", "excitation_um",
                    "pinhole_au"):
            v = getattr(self, key)
            if v is None and key in ("n_sample", "excitation_um"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(v):
                raise ValueError(f"{key}: expected a finite real number, got {type(v).__name__} {v!r}")
        if not isinstance(self.modality, str) or not isinstance(self.name, str):
            bad = "modality" if not isinstance(self.modality, str) else "name"
            raise ValueError(f"{bad}: expected a string, got {getattr(self, bad)!r}")
        if self.mask is not None and not (callable(self.mask) or isinstance(self.mask, (np.ndarray, torch.Tensor))):
            raise ValueError(f"mask: expected None, a callable mask(rho, phi), an ArrayMask or a phase array, got "
                             f"{type(self.mask).__name__}")
        _check_optics(self.na, self.wavelength_um, self.n_immersion, self.n_sample, self.pixel_um)
        if self.excitation_um is not None:
            in_range(self.excitation_um, "excitation_um", 0.2, 2.0)
        in_range(self.pinhole_au, "pinhole_au", 0.0, 20.0)
        if self.modality not in ("widefield", "confocal"):
            raise ValueError(f"modality: must be 'widefield' or 'confocal', got {self.modality!r}")
        if self.modality == "confocal" and self.excitation_um is None:
            raise ValueError("excitation_um: required for a confocal microscope")

    def replace(self, **changes) -> "Microscope":
        """A copy with some parameters changed (e.g. ``modality='confocal'``)."""
        import dataclasses
        return dataclasses.replace(self, **changes)

    def psf(self, z_um, n_pixels: int, xy_um=None, pad: float = 2.0, dtype: torch.dtype = torch.float32,
            device=None) -> Tensor:
        """PSF stack (B, n, n) of this microscope for emitters at ``z_um`` (and offsets ``xy_um``)."""
        if self.modality == "confocal":
            return confocal_psf(z_um, n_pixels, self.pixel_um, self.na, self.wavelength_um, self.n_immersion,
                                excitation_um=self.excitation_um, pinhole_au=self.pinhole_au,
                                n_sample=self.n_sample, nfp_um=self.nfp_um, xy_um=xy_um, pad=pad,
                                dtype=dtype, device=device)
        return widefield_psf(z_um, n_pixels, self.pixel_um, self.na, self.wavelength_um, self.n_immersion,
                             n_sample=self.n_sample, mask=self.mask, xy_um=xy_um, nfp_um=self.nfp_um, pad=pad,
                             dtype=dtype, device=device)

    @property
    def lateral_fwhm_um(self) -> float:
        return lateral_fwhm_theory_um(self.na, self.wavelength_um)

    @property
    def depth_of_field_um(self) -> float:
        return depth_of_field_theory_um(self.na, self.wavelength_um, self.n_immersion)


#: Deep-Z (Wu et al. 2019): 20×/0.75 NA air objective, 0.325 µm pixels, green emission.
DEEPZ_20X = Microscope(na=0.75, wavelength_um=0.52, n_immersion=1.0, pixel_um=0.325, name="Deep-Z 20x/0.75")
#: Deep-Z worm imaging (Fig. 3): 20×/0.8 NA.
WORM_20X = Microscope(na=0.8, wavelength_um=0.52, n_immersion=1.0, pixel_um=0.325, name="worm 20x/0.8")
#: Deep-Z+ / W-Net / Recurrent-MZ: 63×/1.4 NA oil, 0.1 µm pixels (6.5 µm camera pixel at 63× ≈ 0.103 µm).
OIL_63X = Microscope(na=1.4, wavelength_um=0.52, n_immersion=1.518, pixel_um=0.1, name="63x/1.4 oil")
#: DeepSTORM3D (Nehme et al. 2020): 100×/1.45 oil into water, λ 0.67 µm, 110 nm pixels, focus 1.5 µm deep.
STORM_100X = Microscope(na=1.45, wavelength_um=0.67, n_immersion=1.518, pixel_um=0.11, n_sample=1.33,
                        nfp_um=1.5, name="DeepSTORM3D 100x/1.45")

__all__ += ["Microscope", "DEEPZ_20X", "WORM_20X", "OIL_63X", "STORM_100X"]
