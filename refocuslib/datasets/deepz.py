"""Paired Deep-Z / Deep-Z+ training data, simulated on the fly (Wu et al., Nat. Methods 16, 1323 (2019), Methods).

A pool of sample volumes (beads on a plane, beads in 3D, nuclei, filaments, or any callable) is imaged once
through the input microscope — and, for Deep-Z+, also through the target microscope (confocal 63×/1.4) — at
every plane of a z-stack (paper: ±10 µm in 0.5 µm steps, 20×/0.75 NA, 0.325 µm pixels), by the convolution of
:func:`refocuslib.imaging.image_volume` with a PSF stack computed once per dataset (:class:`StackImager` does it
as one 3D FFT per sample). The objective carries a small residual spherical aberration
(:class:`SphericalAberration`) that breaks the ±z symmetry of defocus. Each pair is then drawn
from the ``torch.Generator`` the training loop passes: a sample, an input plane, a DPM (uniform — the paper's
training — or, for robustness, a tilted plane, cylinder or sinusoid), the target (the stack plane at the DPM's
distance, or for a non-uniform DPM the stack composited pixel by pixel along z, :func:`composite`), camera
noise, the Deep-Z normalisation (triangle background, 99.9th percentile), a crop, flips and 90° rotations.

Batches are dicts of (B, 1, h, w) float32 tensors: ``input`` (normalised image), ``dpm`` (DPM/10, the network
scaling of :func:`refocuslib.dpm.to_network`) and ``target`` (normalised image).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from refocuslib import dpm as dpm_lib
from refocuslib import imaging, samples
from refocuslib._validate import as_image_array, in_range, positive, positive_int
from refocuslib.optics import DEEPZ_20X, OIL_63X, Microscope, zernike

Tensor = torch.Tensor

__all__ = ["DeepZDataConfig", "DeepZPairs", "deepz_plus_config", "z_planes", "simulate_sample", "image_stacks",
           "StackImager", "Scan", "scan", "points_volume", "eval_config", "composite", "acquire", "normalize",
           "random_dpm", "SphericalAberration", "with_aberration", "CONFOCAL_63X", "SAMPLE_KINDS",
           "NONUNIFORM_KINDS"]

#: built-in sample generators (see :func:`simulate_sample`).
SAMPLE_KINDS = ("beads", "beads3d", "nuclei", "filaments")
#: non-uniform DPM families drawn for training robustness (:func:`random_dpm`).
NONUNIFORM_KINDS = ("plane", "cylinder", "sinusoid")

#: the confocal target optics of Deep-Z+ (63×/1.4 oil, 1 Airy-unit pinhole, 488 nm excitation).
CONFOCAL_63X = OIL_63X.replace(modality="confocal", excitation_um=0.488, pinhole_au=1.0,
                               name="63x/1.4 oil confocal")


class SphericalAberration:
    """Residual primary spherical aberration: pupil phase a·Z₄⁰(ρ) (rad; unit-amplitude Zernike, rms 0.447·a).

    An ideal defocused wide-field PSF is symmetric in ±z, so a blurred bead 2 µm above focus looks exactly like
    one 2 µm below and refocusing it would be ambiguous; real objectives (and the index mismatch of focusing
    into a sample) are not ideal, and this asymmetry is what lets Deep-Z know which way to refocus. The default
    1 rad (0.071 λ rms, Strehl ≈ 0.82) sits at the Maréchal limit of a diffraction-limited objective.
    """

    def __init__(self, amplitude_rad: float):
        self.amplitude_rad = in_range(amplitude_rad, "spherical_aberration_rad", -20.0, 20.0)

    def __call__(self, rho, phi):
        return self.amplitude_rad * zernike(4, 0, rho, phi)

    def __repr__(self):
        return f"SphericalAberration({self.amplitude_rad:g})"


def with_aberration(microscope: Microscope, amplitude_rad: float) -> Microscope:
    """``microscope`` with :class:`SphericalAberration` (unless it already has a mask or the amplitude is 0;
    confocal PSFs ignore pupil masks)."""
    if not amplitude_rad or microscope.mask is not None:
        return microscope
    return microscope.replace(mask=SphericalAberration(amplitude_rad))


@dataclass
class DeepZDataConfig:
    """What to simulate. Lengths in µm, photons before the camera.

    ``sample``: a kind of :data:`SAMPLE_KINDS`, a dict {kind: weight} (a mix), or a callable
    ``f(rng: numpy Generator, shape_zyx, voxel_um=(z_step, pixel)) -> density volume (photons per voxel)``.
    ``target_microscope`` None means Deep-Z (same optics for input and target); a confocal microscope makes it
    Deep-Z+. ``max_dz_um`` (default ``z_half_range_um``) bounds |DPM|: the trained range is ±max_dz.
    ``nonuniform_fraction`` of the pairs get a non-uniform DPM (kinds ``nonuniform_kinds``).
    ``spherical_aberration_rad``: residual aberration of the objective (:class:`SphericalAberration`), which
    breaks the ±z symmetry of defocus; :meth:`input_optics` / :meth:`target_optics` apply it.
    """
    microscope: Microscope = DEEPZ_20X
    target_microscope: Optional[Microscope] = None
    sample: Union[str, Dict[str, float], Callable] = "beads"
    z_half_range_um: float = 10.0
    z_step_um: float = 0.5
    max_dz_um: Optional[float] = None
    field_px: int = 128
    crop_px: int = 64
    n_samples: int = 16
    n_beads: Tuple[int, int] = (8, 30)
    bead_photons: Tuple[float, float] = (1.5e4, 4e4)
    bead_z_spread_um: Optional[float] = None
    n_nuclei: Tuple[int, int] = (8, 25)
    nuclei_radius_um: Tuple[float, float] = (1.5, 3.0)
    nuclei_photons: float = 60.0
    n_filaments: Tuple[int, int] = (8, 20)
    filament_photons_per_um: float = 3000.0
    sample_thickness_um: Optional[float] = None
    nonuniform_fraction: float = 0.0
    nonuniform_kinds: Tuple[str, ...] = NONUNIFORM_KINDS
    flips: bool = True
    target_noise: bool = True
    qe: float = 0.8
    gain: float = 1.0
    read_noise_e: float = 1.5
    baseline_adu: float = 100.0
    background_photons: float = 10.0
    psf_px: Optional[int] = None
    spherical_aberration_rad: float = 1.0

    def __post_init__(self):
        in_range(self.spherical_aberration_rad, "spherical_aberration_rad", -20.0, 20.0)
        positive(self.z_half_range_um, "z_half_range_um")
        positive(self.z_step_um, "z_step_um")
        n_half = self.z_half_range_um / self.z_step_um
        if abs(n_half - round(n_half)) > 1e-6:
            raise ValueError(f"z_half_range_um: must be a multiple of z_step_um ({self.z_step_um}), "
                             f"got {self.z_half_range_um}")
        if self.max_dz_um is None:
            self.max_dz_um = float(self.z_half_range_um)
        in_range(self.max_dz_um, "max_dz_um", 0.0, 2 * self.z_half_range_um, lo_open=True)
        positive_int(self.crop_px, "crop_px", minimum=8)
        positive_int(self.field_px, "field_px", minimum=8)
        if self.crop_px > self.field_px:
            raise ValueError(f"crop_px: must be in [8, field_px={self.field_px}], got {self.crop_px}")
        positive_int(self.n_samples, "n_samples")
        in_range(self.nonuniform_fraction, "nonuniform_fraction", 0.0, 1.0)
        bad = [k for k in self.nonuniform_kinds if k not in NONUNIFORM_KINDS]
        if bad or not self.nonuniform_kinds:
            raise ValueError(f"nonuniform_kinds: choose from {NONUNIFORM_KINDS}, got {self.nonuniform_kinds!r}")
        self.sample_weights()  # validates ``sample``
        if self.target_microscope is not None and abs(self.target_microscope.pixel_um
                                                      - self.microscope.pixel_um) > 1e-9:
            raise ValueError(f"target_microscope: pixel_um must equal the input microscope's "
                             f"({self.microscope.pixel_um}), got {self.target_microscope.pixel_um}")

    @property
    def trained_range_um(self) -> Tuple[float, float]:
        return (-float(self.max_dz_um), float(self.max_dz_um))

    @property
    def camera(self) -> imaging.Camera:
        """The camera of both input and target images."""
        return imaging.Camera(self.qe, self.gain, self.read_noise_e, self.baseline_adu, self.background_photons)

    def input_optics(self) -> Microscope:
        """The input microscope with the objective's residual aberration (what the camera sees)."""
        return with_aberration(self.microscope, self.spherical_aberration_rad)

    def target_optics(self) -> Microscope:
        """The target microscope (Deep-Z: the input optics; Deep-Z+: e.g. confocal) with the aberration."""
        if self.target_microscope is None:
            return self.input_optics()
        return with_aberration(self.target_microscope, self.spherical_aberration_rad)

    def sample_weights(self) -> Dict[str, float]:
        """{kind or 'custom': probability}."""
        if callable(self.sample):
            return {"custom": 1.0}
        w = {self.sample: 1.0} if isinstance(self.sample, str) else dict(self.sample)
        bad = [k for k in w if k not in SAMPLE_KINDS]
        if bad or not w or any(not (float(v) >= 0) for v in w.values()) or sum(w.values()) <= 0:
            raise ValueError(f"sample: a kind of {SAMPLE_KINDS}, a dict of non-negative weights over them, or a "
                             f"callable; got {self.sample!r}")
        s = float(sum(w.values()))
        return {k: float(v) / s for k, v in w.items()}

    def as_dict(self) -> dict:
        """Plain-type description (microscopes as their parameters) for checkpoints and provenance."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Microscope):
                v = {k: val for k, val in asdict(v).items() if k != "mask"}
            elif callable(v):
                v = getattr(v, "__name__", repr(v))
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


def deepz_plus_config(**overrides) -> DeepZDataConfig:
    """Deep-Z+ (Fig. 5): wide-field 63×/1.4 input, confocal 63×/1.4 target, filament (microtubule) samples."""
    base = dict(microscope=OIL_63X, target_microscope=CONFOCAL_63X, sample="filaments", z_half_range_um=1.0,
                z_step_um=0.2, sample_thickness_um=1.0)
    base.update(overrides)
    return DeepZDataConfig(**base)


def z_planes(z_half_range_um: float, z_step_um: float) -> np.ndarray:
    """Focal planes −Z … +Z in steps of ``z_step_um`` (µm)."""
    n = int(round(positive(z_half_range_um, "z_half_range_um") / positive(z_step_um, "z_step_um")))
    return np.arange(-n, n + 1) * float(z_step_um)


# ----------------------------------------------------------------------------------------------- samples
def _irange(rng, lo_hi) -> int:
    lo, hi = int(lo_hi[0]), int(lo_hi[1])
    return int(rng.integers(lo, hi + 1)) if hi > lo else lo


def simulate_sample(rng, cfg: DeepZDataConfig, kind: str, field_px: Optional[int] = None) -> np.ndarray:
    """Density volume (nz, H, W) in photons per voxel on the focal-plane grid of ``cfg`` (voxel = z step ×
    pixel) for one sample of ``kind`` ('beads': a bead layer at a random depth within ±``bead_z_spread_um``
    (default half the stack); 'beads3d': beads anywhere in the stack; 'nuclei'; 'filaments'; 'custom')."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = int(field_px or cfg.field_px)
    zs = z_planes(cfg.z_half_range_um, cfg.z_step_um)
    nz, dz, px = len(zs), cfg.z_step_um, cfg.microscope.pixel_um
    fov = (n * px, n * px)
    if kind in ("beads", "beads3d"):
        nb = _irange(rng, cfg.n_beads)
        if kind == "beads":
            spread = cfg.z_half_range_um / 2 if cfg.bead_z_spread_um is None else cfg.bead_z_spread_um
            pts = samples.beads_on_surface(rng, nb, fov, z_um=float(rng.uniform(-spread, spread)), photons=1.0,
                                           photons_spread=0.0, min_separation_um=1.5, margin_um=px)
        else:
            pts = samples.beads_3d(rng, nb, fov, (zs[0], zs[-1]), photons=1.0, photons_spread=0.0,
                                   min_separation_um=1.5, margin_um=px)
        pts.photons[:] = rng.uniform(*cfg.bead_photons, len(pts))
        return samples.points_to_volume(pts, (nz, n, n), (dz, px), z0_um=zs[0]).astype(np.float32)
    if kind == "custom":
        vol = np.asarray(cfg.sample(rng, (nz, n, n), (dz, px)), dtype=np.float32)
        if vol.shape != (nz, n, n):
            raise ValueError(f"sample: the callable must return shape {(nz, n, n)}, got {vol.shape}")
        return vol
    # extended samples, optionally confined to a slab of sample_thickness_um at a random depth
    thick = cfg.sample_thickness_um
    nzs = nz if thick is None else max(1, min(nz, int(round(thick / dz)) + 1))
    if kind == "nuclei":
        sub = samples.nuclei_volume(rng, (nzs, n, n), (dz, px), _irange(rng, cfg.n_nuclei),
                                    radius_um=cfg.nuclei_radius_um) * cfg.nuclei_photons
    elif kind == "filaments":
        sub = samples.filaments_volume(rng, (nzs, n, n), (dz, px), _irange(rng, cfg.n_filaments)) \
            * cfg.filament_photons_per_um
    else:
        raise ValueError(f"kind: one of {SAMPLE_KINDS + ('custom',)}, got {kind!r}")
    vol = np.zeros((nz, n, n), dtype=np.float32)
    z0 = int(rng.integers(0, nz - nzs + 1))
    vol[z0:z0 + nzs] = sub
    return vol


def thin_sample(rng, cfg: DeepZDataConfig, kind: str, z_um: float = 0.0, field_px: Optional[int] = None
                ) -> np.ndarray:
    """A sample of ``kind`` (:data:`SAMPLE_KINDS` but 'beads3d') confined to the focal-plane grid's plane nearest
    ``z_um``: density volume (nz, H, W) in photons per voxel, for tests that need a thin sample at a known depth
    (refocusing back to it; the re-imaging consistency of :mod:`refocuslib.reliability`)."""
    if kind not in ("beads", "nuclei", "filaments"):
        raise ValueError(f"kind: one of ('beads', 'nuclei', 'filaments'), got {kind!r}")
    zs = z_planes(cfg.z_half_range_um, cfg.z_step_um)
    z = float(z_um)
    if not (np.isfinite(z) and zs[0] <= z <= zs[-1]):
        raise ValueError(f"z_um: must lie in the focal-plane grid [{zs[0]:g}, {zs[-1]:g}] µm, got {z_um!r}")
    vol = simulate_sample(rng, cfg, kind, field_px)
    out = np.zeros_like(vol)
    out[int(np.argmin(np.abs(zs - z)))] = vol.sum(0)
    return out


def _psf_px(cfg: DeepZDataConfig, microscope: Microscope, nz: int) -> int:
    if cfg.psf_px is not None:
        return positive_int(cfg.psf_px, "psf_px", minimum=3) | 1
    # a sample plane can be (nz − 1)·dz from a focal plane; cap at twice the field (linear convolution)
    from scipy.fft import next_fast_len
    n = min(imaging.auto_patch_px(microscope, (nz - 1) * cfg.z_step_um, extra_airy=6.0), 2 * cfg.field_px + 1)
    # the FFT size of image_volume is field + n − 1: make it 5-smooth (a prime size is ~10× slower)
    return next_fast_len(cfg.field_px + n - 1, real=True) - cfg.field_px + 1


class StackImager:
    """Every focal plane of many (nz, H, W) volumes through one PSF stack: the convolution of
    :func:`refocuslib.imaging.image_volume`, I(z_f) = Σ_z V(z) ⊛ PSF(z − z_f) (linear, zero outside the
    volume), done as one 3D FFT convolution (the z sum is a convolution with the z-reversed PSF stack) whose
    kernel spectrum is computed once and reused for every volume — O(N log N) per volume instead of
    image_volume's nz² 2D FFTs; float32. ``psf_stack`` is (2nz−1, n, n) from
    :func:`refocuslib.imaging.psf_stack_for_volume`."""

    def __init__(self, psf_stack: Tensor, shape_yx: Tuple[int, int]):
        from scipy.fft import next_fast_len
        k = torch.as_tensor(psf_stack, dtype=torch.float32)
        if k.ndim != 3 or k.shape[0] % 2 != 1:
            raise ValueError(f"psf_stack: expected shape (2·nz−1, n, n), got {tuple(k.shape)}")
        self.nz = (k.shape[0] + 1) // 2
        self.h, self.w = (positive_int(s, "shape_yx") for s in shape_yx)
        self.kh, self.kw = k.shape[1:]
        self.fft_shape = (next_fast_len(3 * self.nz - 2), self.h + self.kh - 1, self.w + self.kw - 1)
        self.kernel_ft = torch.fft.rfftn(torch.flip(k, (0,)), s=self.fft_shape)

    def __call__(self, volume) -> Tensor:
        """Photons (nz, H, W) at each of the volume's own planes."""
        v = torch.as_tensor(as_image_array(volume, "volume", ndim=3), dtype=torch.float32)
        if tuple(v.shape) != (self.nz, self.h, self.w):
            raise ValueError(f"volume: expected shape {(self.nz, self.h, self.w)}, got {tuple(v.shape)}")
        full = torch.fft.irfftn(torch.fft.rfftn(v, s=self.fft_shape) * self.kernel_ft, s=self.fft_shape)
        c = self.nz - 1  # focal plane f sits at index f + nz − 1 of the full z convolution
        return full[c:c + self.nz, self.kh // 2:self.kh // 2 + self.h, self.kw // 2:self.kw // 2 + self.w
                    ].clamp_min(0).contiguous()


def image_stacks(volumes: Sequence[np.ndarray], psf_stack: Tensor) -> Tensor:
    """Photons (K, nz, H, W) of each volume at every one of its own planes (one PSF stack for all)."""
    imager = StackImager(psf_stack, np.shape(volumes[0])[1:])
    return torch.stack([imager(v) for v in volumes])


# ----------------------------------------------------------------------------------------------- pairs
def composite(stack, z_planes_um, surface_um) -> Tensor:
    """The image of a surface from a z-stack: pixel (y, x) takes the stack linearly interpolated along z at
    ``surface_um[y, x]`` (clipped to the stack) — the ground truth of a non-uniform DPM (Deep-Z Figs. 4, S7).

    ``stack`` (nz, H, W), ``z_planes_um`` (nz,) evenly spaced, ``surface_um`` (H, W) absolute z (µm).
    """
    st = torch.as_tensor(as_image_array(stack, "stack", ndim=3) if not torch.is_tensor(stack) else stack)
    zs = np.asarray(z_planes_um, dtype=np.float64)
    if zs.ndim != 1 or len(zs) != st.shape[0]:
        raise ValueError(f"z_planes_um: expected {st.shape[0]} planes to match stack, got shape {zs.shape}")
    surf = torch.as_tensor(as_image_array(surface_um, "surface_um", ndim=2), dtype=torch.float64)
    if tuple(surf.shape) != tuple(st.shape[1:]):
        raise ValueError(f"surface_um: expected shape {tuple(st.shape[1:])}, got {tuple(surf.shape)}")
    if len(zs) == 1:
        return st[0].clone()
    step = (zs[-1] - zs[0]) / (len(zs) - 1)
    idx = ((surf - zs[0]) / step).clamp(0, len(zs) - 1)
    lo = idx.floor().long().clamp(max=len(zs) - 2)
    frac = (idx - lo).to(st.dtype)
    a = st.gather(0, lo[None].to(st.device))[0]
    b = st.gather(0, (lo + 1)[None].to(st.device))[0]
    return a * (1 - frac) + b * frac


def acquire(photons: Tensor, generator: Optional[torch.Generator], cfg: DeepZDataConfig) -> Tensor:
    """Camera counts (ADU) of ``photons`` with the camera of ``cfg`` (noise drawn from ``generator``)."""
    return cfg.camera.counts(photons, generator if generator is not None else 0)


def normalize(image, reference=None) -> np.ndarray:
    """Deep-Z normalisation of one image (:func:`refocuslib.imaging.normalize_deepz`: triangle background
    subtracted, divided by the 99.9th percentile); the same function :func:`refocuslib.inference.refocus`
    applies to a user's image. Training targets pass their input as ``reference``: they share the input's
    background and scale, so the output/input gain depends only on the DPM (one scale per pair, taken from
    what the network sees; per-image scales vary with beads outside the crop, CV 0.18–0.26)."""
    return imaging.normalize_deepz(image, reference=reference)


def clean_counts(photons: Tensor, cfg: DeepZDataConfig) -> Tensor:
    """Noise-free camera counts (ADU) of ``photons``: the expectation of :func:`acquire`."""
    return cfg.camera.expected(photons)


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=generator, dtype=torch.float64))


def random_dpm(generator: torch.Generator, shape: Tuple[int, int], pixel_um: float, max_dz_um: float,
               kinds: Sequence[str] = NONUNIFORM_KINDS) -> Tuple[np.ndarray, str]:
    """A random non-uniform DPM (µm) within ±``max_dz_um``: a tilted plane, a cylinder (convex or concave) or a
    sinusoid, with a random offset; returns (dpm (H, W), kind). Drawn only from ``generator``."""
    h, w = shape
    kind = kinds[int(torch.randint(len(kinds), (), generator=generator))]
    half_diag_um = 0.5 * math.hypot(h, w) * pixel_um
    amp = _uniform(generator, 0.2, 1.0) * max_dz_um  # peak-to-valley / 2 of the shape
    offset = _uniform(generator, -max_dz_um, max_dz_um)
    if kind == "plane":
        tilt = math.degrees(math.atan(amp / half_diag_um))
        d = dpm_lib.plane(shape, pixel_um, tilt, _uniform(generator, 0, 360), offset)
    elif kind == "cylinder":
        # sag of 2·amp at the half diagonal: R − sqrt(R² − d²) = 2 amp  →  R = (d² + 4 amp²) / (4 amp)
        r = (half_diag_um ** 2 + 4 * amp * amp) / (4 * amp)
        convex = bool(torch.rand((), generator=generator) < 0.5)
        d = dpm_lib.cylinder(shape, pixel_um, 2 * r, _uniform(generator, 0, 180), offset + (amp if convex else -amp),
                             convex=convex)
    else:
        period = math.exp(_uniform(generator, math.log(8.0), math.log(max(9.0, float(max(h, w))))))
        axis = "x" if torch.rand((), generator=generator) < 0.5 else "y"
        d = dpm_lib.sinusoid(shape, period, offset - amp, offset + amp, axis=axis,
                             phase=_uniform(generator, 0, 2 * math.pi))
    return np.clip(d, -max_dz_um, max_dz_um), kind


class DeepZPairs:
    """Paired (input, DPM, target) Deep-Z / Deep-Z+ data from a pool of simulated samples.

    ``seed`` fixes the pool (the samples and their stacks); held-out data is another ``DeepZPairs`` with another
    seed. The pool is built lazily on first use (so a task whose training is already finished costs nothing).
    """

    def __init__(self, cfg: DeepZDataConfig, seed: int = 0, n_samples: Optional[int] = None):
        self.cfg = cfg
        self.seed = int(seed)
        self.n_samples = positive_int(n_samples if n_samples is not None else cfg.n_samples, "n_samples")
        self.z_planes_um = z_planes(cfg.z_half_range_um, cfg.z_step_um)
        self._input: Optional[Tensor] = None
        self._target: Optional[Tensor] = None
        self.kinds: list = []

    @property
    def trained_range_um(self) -> Tuple[float, float]:
        return self.cfg.trained_range_um

    # ------------------------------------------------------------------------------------------ pool
    def psf_stacks(self) -> Tuple[Tensor, Optional[Tensor]]:
        """PSF stacks (2nz−1, n, n) of the input and (Deep-Z+) target optics, computed once."""
        nz = len(self.z_planes_um)
        cfg = self.cfg
        psf_in = imaging.psf_stack_for_volume(cfg.input_optics(), nz, cfg.z_step_um,
                                              _psf_px(cfg, cfg.microscope, nz))
        psf_t = None
        if cfg.target_microscope is not None:
            psf_t = imaging.psf_stack_for_volume(cfg.target_optics(), nz, cfg.z_step_um,
                                                 _psf_px(cfg, cfg.target_microscope, nz))
        return psf_in, psf_t

    def build(self) -> "DeepZPairs":
        """Simulate the pool: (K, nz, H, W) photon stacks of the input (and target) optics."""
        if self._input is not None:
            return self
        cfg = self.cfg
        rng = np.random.default_rng(self.seed)
        weights = cfg.sample_weights()
        names, probs = list(weights), np.array(list(weights.values()))
        psf_in, psf_t = self.psf_stacks()
        vols = []
        for _ in range(self.n_samples):
            kind = names[int(rng.choice(len(names), p=probs))]
            self.kinds.append(kind)
            vols.append(simulate_sample(rng, cfg, kind))
        self._input = image_stacks(vols, psf_in)
        if psf_t is not None:
            self._target = image_stacks(vols, psf_t)
        return self

    @property
    def input_stacks(self) -> Tensor:
        """Photons (K, nz, H, W) through the input optics."""
        return self.build()._input

    @property
    def target_stacks(self) -> Tensor:
        """Photons (K, nz, H, W) through the target optics (the input stacks for Deep-Z)."""
        self.build()
        return self._input if self._target is None else self._target

    # ----------------------------------------------------------------------------------------- pairs
    def pair(self, generator: torch.Generator, uniform: Optional[bool] = None, with_clean: bool = False
             ) -> Dict[str, Tensor]:
        """One pair (each (1, crop, crop) float32) drawn from ``generator``; also ``dz_um`` (mean DPM) and
        ``uniform`` (1.0 or 0.0) as 0-d tensors for bookkeeping. ``with_clean`` adds ``target_clean``: the
        noise-free target (expected counts) under the same normalisation — the ground truth for evaluation."""
        cfg = self.cfg
        st_in, st_t = self.input_stacks, self.target_stacks
        k = int(torch.randint(st_in.shape[0], (), generator=generator))
        nz = len(self.z_planes_um)
        m = int(math.floor(cfg.max_dz_um / cfg.z_step_um + 1e-9))
        if uniform is None:
            uniform = bool(torch.rand((), generator=generator) >= cfg.nonuniform_fraction)
        n = st_in.shape[-1]
        if uniform:
            # dz uniform over the allowed plane offsets, then the input plane among those that fit
            off = int(torch.randint(-m, m + 1, (), generator=generator))
            lo, hi = max(0, -off), min(nz - 1, nz - 1 - off)
            if hi < lo:  # (cannot happen for m ≤ nz − 1) keep the input plane
                off, lo, hi = 0, 0, nz - 1
            i = int(torch.randint(lo, hi + 1, (), generator=generator))
            dpm_um = np.full((n, n), off * cfg.z_step_um)
        else:
            i = int(torch.randint(nz, (), generator=generator))
            d, _ = random_dpm(generator, (n, n), cfg.microscope.pixel_um, cfg.max_dz_um, cfg.nonuniform_kinds)
            zi = self.z_planes_um[i]
            dpm_um = np.clip(d, self.z_planes_um[0] - zi, self.z_planes_um[-1] - zi)
        # The input's noise is drawn over the whole field: its background and scale (normalize) are the whole
        # image's, as at inference. The target shares them (reference = the input), so its noise and surface
        # are only needed inside the crop: drawn there (the same distribution as drawing over the field and
        # cropping, at a quarter of the Poisson draws for a 64-of-128 px crop).
        inp_counts = acquire(st_in[k, i], generator, cfg).numpy()
        bg, scale = imaging.deepz_scale(inp_counts)
        c = cfg.crop_px
        y0 = int(torch.randint(n - c + 1, (), generator=generator))
        x0 = int(torch.randint(n - c + 1, (), generator=generator))
        win = (slice(y0, y0 + c), slice(x0, x0 + c))
        dpm_crop = dpm_um[win]
        if uniform:
            target_ph = st_t[k, i + off][win]
        else:
            target_ph = composite(st_t[k][(slice(None),) + win], self.z_planes_um,
                                  self.z_planes_um[i] + dpm_crop).to(torch.float32)
        tgt_counts = acquire(target_ph, generator, cfg) if cfg.target_noise else clean_counts(target_ph, cfg)
        planes = [imaging.apply_deepz_scale(inp_counts[win], bg, scale), dpm_lib.to_network(dpm_crop),
                  imaging.apply_deepz_scale(tgt_counts.numpy(), bg, scale)]
        if with_clean:
            planes.append(imaging.apply_deepz_scale(clean_counts(target_ph, cfg).numpy(), bg, scale))
        arrs = [torch.from_numpy(np.ascontiguousarray(a)).float()[None] for a in planes]
        if cfg.flips:
            rot = int(torch.randint(4, (), generator=generator))
            flip = bool(torch.rand((), generator=generator) < 0.5)
            arrs = [torch.rot90(a, rot, (-2, -1)) for a in arrs]
            if flip:
                arrs = [torch.flip(a, (-1,)) for a in arrs]
        out = {"input": arrs[0].contiguous(), "dpm": arrs[1].contiguous(), "target": arrs[2].contiguous(),
               "dz_um": torch.tensor(float(np.mean(dpm_um)), dtype=torch.float32),
               "uniform": torch.tensor(1.0 if uniform else 0.0)}
        if with_clean:
            out["target_clean"] = arrs[3].contiguous()
        return out

    def batch(self, generator: torch.Generator, batch_size: int, uniform: Optional[bool] = None,
              with_clean: bool = False) -> Dict[str, Tensor]:
        """``batch_size`` pairs stacked to (B, 1, crop, crop) (``dz_um``, ``uniform``: (B,))."""
        items = [self.pair(generator, uniform, with_clean) for _ in range(positive_int(batch_size, "batch_size"))]
        return {key: torch.stack([it[key] for it in items]) for key in items[0]}

    def fixed_batch(self, n: int, seed: int = 0, uniform: Optional[bool] = None, with_clean: bool = False
                    ) -> Dict[str, Tensor]:
        """A reproducible batch (validation): :meth:`batch` from a generator seeded with ``seed``."""
        return self.batch(torch.Generator().manual_seed(int(seed)), n, uniform, with_clean)


# ------------------------------------------------------------------------------------------- evaluation
@dataclass
class Scan:
    """A mechanical z-scan of one sample (what the notebooks compare Deep-Z against).

    ``z_um`` (nz,) focal planes; ``*_photons`` (nz, H, W) expected photons through the input / target optics;
    ``input``, ``target``: noisy camera images, each plane normalised like the training data
    (:func:`normalize`); ``target_clean``: the noise-free target planes under the same normalisation.
    """
    z_um: np.ndarray
    input_photons: Tensor
    target_photons: Tensor
    input: np.ndarray
    target: np.ndarray
    target_clean: np.ndarray
    input_counts: Optional[np.ndarray] = None
    target_clean_counts: Optional[np.ndarray] = None

    def plane(self, z_um: float) -> int:
        """Index of the focal plane nearest ``z_um``."""
        return int(np.argmin(np.abs(self.z_um - float(z_um))))

    def truth_for(self, input_index: int, planes=None) -> np.ndarray:
        """Noise-free target planes (all, or the indices ``planes``) normalised with the background and scale of
        the noisy input plane ``input_index``: the units a network output refocused from that plane is in (the
        training pairs' normalisation)."""
        if self.input_counts is None or self.target_clean_counts is None:
            raise ValueError("scan: built without counts (use refocuslib.datasets.deepz.scan)")
        idx = slice(None) if planes is None else planes
        return normalize(self.target_clean_counts[idx], reference=self.input_counts[int(input_index)])


def points_volume(points: samples.Points, cfg: DeepZDataConfig, field_px: Optional[int] = None) -> np.ndarray:
    """Photon density (nz, H, W) of point emitters on the focal-plane grid of ``cfg`` (trilinear splat)."""
    n = int(field_px or cfg.field_px)
    zs = z_planes(cfg.z_half_range_um, cfg.z_step_um)
    return samples.points_to_volume(points, (len(zs), n, n), (cfg.z_step_um, cfg.microscope.pixel_um),
                                    z0_um=zs[0]).astype(np.float32)


def scan(cfg: DeepZDataConfig, volume, seed: int = 0, psf_stacks: Optional[Tuple[Tensor, Optional[Tensor]]] = None
         ) -> Scan:
    """Image ``volume`` (nz, H, W photons per voxel on ``cfg``'s grid) at every focal plane through the input and
    target optics of ``cfg``, add camera noise (seeded) and normalise each plane. ``psf_stacks`` (input, target)
    from :meth:`DeepZPairs.psf_stacks` may be passed to reuse them."""
    vol = as_image_array(volume, "volume", ndim=3)
    zs = z_planes(cfg.z_half_range_um, cfg.z_step_um)
    if vol.shape[0] != len(zs) or vol.shape[1] != vol.shape[2]:
        raise ValueError(f"volume: expected shape ({len(zs)}, n, n) for {len(zs)} focal planes, got {vol.shape}")
    cfg_f = cfg if vol.shape[1] == cfg.field_px else _replace(cfg, field_px=vol.shape[1],
                                                               crop_px=min(cfg.crop_px, vol.shape[1]))
    psf_in, psf_t = psf_stacks if psf_stacks is not None else DeepZPairs(cfg_f).psf_stacks()
    inp = image_stacks([vol], psf_in)[0]
    tgt = inp if psf_t is None and cfg.target_microscope is None else image_stacks([vol], psf_t)[0]
    g = torch.Generator().manual_seed(int(seed))
    counts_in = np.stack([acquire(p, g, cfg).numpy() for p in inp])
    noisy_in = np.stack([normalize(c) for c in counts_in])
    noisy_t = noisy_in if tgt is inp else np.stack([normalize(acquire(p, g, cfg).numpy()) for p in tgt])
    counts_clean = np.stack([clean_counts(p, cfg).numpy() for p in tgt])
    clean_t = np.stack([normalize(c) for c in counts_clean])
    return Scan(zs, inp, tgt, noisy_in, noisy_t, clean_t, counts_in, counts_clean)


def _replace(cfg: DeepZDataConfig, **changes) -> DeepZDataConfig:
    import dataclasses
    return dataclasses.replace(cfg, **changes)


def eval_config(cfg: DeepZDataConfig, z_half_range_um: Optional[float] = None, field_px: Optional[int] = None
                ) -> DeepZDataConfig:
    """``cfg`` with another scan range and field (for test scans wider than training), same optics, camera and
    trained range."""
    changes = {}
    if z_half_range_um is not None:
        changes["z_half_range_um"] = float(z_half_range_um)
    if field_px is not None:
        changes["field_px"] = int(field_px)
        changes["crop_px"] = min(cfg.crop_px, int(field_px))
    changes["max_dz_um"] = min(float(cfg.max_dz_um), 2 * float(changes.get("z_half_range_um", cfg.z_half_range_um)))
    return _replace(cfg, **changes)
