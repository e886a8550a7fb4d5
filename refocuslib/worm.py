"""A simulated *C. elegans* head imaged at ONE focal plane: the sample of Deep-Z Fig. 3 (Wu et al., Nat. Methods
16, 1323 (2019)), where a video of a worm expressing nuclear-localised GCaMP (calcium) and tagRFP (static
nuclear label) was recorded at a single focal plane and refocused by Deep-Z to −10 … +10 µm.

Sample (:func:`simulate_worm`): a curved tube (the head, 2·``depth_um`` thick) holding ``n_nuclei`` soft
ellipsoidal neuron nuclei (radius ≈ 1 µm) drawn uniformly inside it with a minimum centre separation, so that
their centres span ±``depth_um`` about the focal plane (z = 0). Calcium activity ΔF/F0 of each nucleus is its
amplitude times the signal of its ground-truth group (:data:`GROUP_NAMES`): *inactive* (0), *oscillating*
(a slow random waveform in [0, 1]), *anti-correlated* (1 − the oscillating waveform) or *spiking* (periodic
short transients with a GCaMP-like exponential decay). The body translates slightly from frame to frame
(a lateral random walk, frame 0 at rest).

Imaging (:func:`render_video`): wide-field 20×/0.8 (:data:`refocuslib.optics.WORM_20X`) through
:func:`refocuslib.imaging.image_volume` with one PSF stack computed once, then camera noise
(:class:`refocuslib.imaging.Camera`). Imaging is linear and shift-invariant, so instead of re-imaging the whole
volume every frame the video is assembled exactly from a few images: the nuclear label, the calcium
baseline and one image per active group (each nucleus weighted by its amplitude), combined with the group
signals of each frame and moved by that frame's body translation. Differences from the paper: both channels
use the same emission wavelength, nuclei have no texture, there is no bleaching or body deformation, and
neurons of one group share one waveform (they differ in amplitude and in the camera noise only).

Coordinates: (x, y, z) µm, x and y from the top-left corner of the field (pixel (i, j) centred at
((j + ½)·pixel, (i + ½)·pixel)), z the depth relative to the focal plane of the video.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from refocuslib import imaging
from refocuslib._validate import in_range, positive, positive_int
from refocuslib.optics import WORM_20X, Microscope

__all__ = ["GROUP_NAMES", "Worm", "WormVideo", "simulate_worm", "render_video", "render_stacks",
           "psf_stack_for_worm", "simulate_worm_video", "worm_density", "worm_sample"]

#: Ground-truth activity groups; ``Worm.groups`` holds indices into this tuple.
GROUP_NAMES = ("inactive", "oscillating", "anti-correlated", "spiking")


@dataclass
class Worm:
    """Ground truth of one simulated worm (see the module docstring for units and coordinates).

    ``centres_um`` (N, 3) nucleus centres (x, y, z) at frame 0; ``semi_axes_um`` (N, 3) ellipsoid semi-axes
    (x, y, z); ``nuclear_photons`` / ``calcium_photons`` (N,) photons per frame emitted by each nucleus in the
    static-label channel and (baseline F0) in the calcium channel; ``amplitude`` (N,) peak ΔF/F0;
    ``groups`` (N,) indices into :data:`GROUP_NAMES`; ``group_signals`` (4, T) the waveform of each group
    (row 0, inactive, is zero); ``traces`` (N, T) true ΔF/F0 = amplitude · group signal; ``shifts_um`` (T, 2)
    lateral body translation (dx, dy) of each frame; ``centreline_um`` (M, 2) the body axis (x, y).
    """
    centres_um: np.ndarray
    semi_axes_um: np.ndarray
    nuclear_photons: np.ndarray
    calcium_photons: np.ndarray
    amplitude: np.ndarray
    groups: np.ndarray
    group_signals: np.ndarray
    shifts_um: np.ndarray
    centreline_um: np.ndarray
    shape_yx: Tuple[int, int]
    pixel_um: float
    frame_interval_s: float
    depth_um: float

    def __len__(self) -> int:
        return len(self.centres_um)

    @property
    def n_frames(self) -> int:
        return self.group_signals.shape[1]

    @property
    def traces(self) -> np.ndarray:
        """True ΔF/F0 (N, T) of every nucleus."""
        return self.amplitude[:, None] * self.group_signals[self.groups]

    @property
    def time_s(self) -> np.ndarray:
        return np.arange(self.n_frames) * self.frame_interval_s

    def centres_at(self, frame: int) -> np.ndarray:
        """Nucleus centres (N, 3) µm at ``frame`` (frame 0 plus that frame's body translation)."""
        f = int(frame)
        if not 0 <= f < self.n_frames:
            raise ValueError(f"frame: must be in [0, {self.n_frames - 1}], got {frame!r}")
        out = self.centres_um.copy()
        out[:, :2] += self.shifts_um[f]
        return out


@dataclass
class WormVideo:
    """Single-focal-plane video of a :class:`Worm`: ``nuclear`` and ``calcium`` (T, H, W) camera counts (ADU,
    float32) at focal plane ``focal_plane_um``; ``nuclear_photons``/``calcium_photons`` the noise-free
    expected photons (T, H, W); ``microscope`` and ``z_step_um`` of the rendering volume; ``camera`` its five
    numbers (a dict, :attr:`camera_model` the :class:`refocuslib.imaging.Camera`)."""
    nuclear: np.ndarray
    calcium: np.ndarray
    nuclear_photons: np.ndarray
    calcium_photons: np.ndarray
    worm: Worm
    microscope: Microscope
    z_step_um: float
    focal_plane_um: float = 0.0
    camera: dict = field(default_factory=dict)

    @property
    def camera_model(self) -> imaging.Camera:
        """The :class:`refocuslib.imaging.Camera` that drew the frames."""
        return imaging.Camera(**self.camera)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# ----------------------------------------------------------------------------------------------------- body
def _centreline(rng, width_um: float, height_um: float, half_width_um: float, curvature: float,
                n: int = 400) -> np.ndarray:
    """A gently curved body axis (x, y) µm: the nose near the left edge, the body leaving the field on the
    right (a sine arc of relative sag ``curvature`` plus a small random tilt)."""
    x = np.linspace(1.0, width_um + half_width_um, n)
    u = (x - x[0]) / (x[-1] - x[0])
    room = height_um - 2 * (half_width_um + 1.0)
    sag = curvature * room * (np.sin(np.pi * u) - 0.5) * rng.choice([-1.0, 1.0])
    tilt = rng.uniform(-0.5, 0.5) * max(room - curvature * room, 0.0) * (u - 0.5)
    return np.column_stack([x, height_um / 2 + sag + tilt])


def _place_nuclei(rng, centreline: np.ndarray, n: int, half_width_um: float, depth_um: float,
                  radius_um: float, min_sep_um: float, field_um: Tuple[float, float],
                  max_tries: int = 400) -> np.ndarray:
    """``n`` centres uniform inside the tube around ``centreline`` (elliptical cross-section: half-width
    ``half_width_um`` − ``radius_um`` laterally, centres within ±``depth_um`` axially), at least
    ``min_sep_um`` apart (random sequential addition), inside the field ``field_um`` = (width, height)."""
    seg = np.diff(centreline, axis=0)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*seg.T))])
    tangent = np.gradient(centreline, arc, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.column_stack([-tangent[:, 1], tangent[:, 0]])
    a, b = half_width_um - radius_um, depth_um
    pts = np.zeros((0, 3))
    for _ in range(n):
        for _ in range(max_tries):
            s = rng.uniform(0, arc[-1])
            k = min(int(np.searchsorted(arc, s)), len(arc) - 1)
            taper = min(1.0, 0.3 + 0.7 * s / (0.3 * arc[-1]))  # narrower nose on the left
            r, phi = np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            xy = centreline[k] + normal[k] * r * np.cos(phi) * a * taper
            p = np.array([xy[0], xy[1], r * np.sin(phi) * b])
            if not (radius_um <= p[0] <= field_um[0] - radius_um and radius_um <= p[1] <= field_um[1] - radius_um):
                continue
            if len(pts) == 0 or np.min(np.linalg.norm(pts - p, axis=1)) >= min_sep_um:
                pts = np.vstack([pts, p])
                break
        else:
            raise ValueError(f"n_nuclei: could not place {n} nuclei {min_sep_um} µm apart in the body "
                             f"(placed {len(pts)}); lower n_nuclei or min_separation_um, or enlarge shape_yx")
    return pts


# ---------------------------------------------------------------------------------------------- activity
def _group_signals(rng, n_frames: int, dt: float, oscillation_s: float, spike_period_s: float,
                   spike_decay_s: float) -> np.ndarray:
    """Waveforms (4, T) of :data:`GROUP_NAMES`, each in [0, 1]."""
    t = np.arange(n_frames) * dt
    # slow random waveform: smoothed white noise plus one slow sinusoid, scaled to [0, 1]
    slow = ndimage.gaussian_filter1d(rng.standard_normal(n_frames + 64), oscillation_s / (4 * dt),
                                     mode="reflect")[32:32 + n_frames]
    slow = slow / (slow.std() + 1e-12) + np.sin(2 * np.pi * t / oscillation_s + rng.uniform(0, 2 * np.pi))
    slow = (slow - slow.min()) / max(np.ptp(slow), 1e-12)
    phase = rng.uniform(0, spike_period_s)
    since = np.mod(t - phase, spike_period_s)
    spikes = np.where(t >= phase, np.exp(-since / spike_decay_s), np.exp(-(t + spike_period_s - phase)
                                                                        / spike_decay_s))
    spikes = (spikes - spikes.min()) / max(np.ptp(spikes), 1e-12)
    return np.stack([np.zeros(n_frames), slow, 1.0 - slow, spikes])


def simulate_worm(rng=0, n_nuclei: int = 180, shape_yx: Tuple[int, int] = (160, 160),
                  pixel_um: float = WORM_20X.pixel_um, n_frames: int = 60, frame_interval_s: float = 0.3,
                  depth_um: float = 10.0, half_width_um: float = 10.0,
                  nucleus_radius_um: Tuple[float, float] = (0.9, 1.25), min_separation_um: float = 2.6,
                  group_fractions: Sequence[float] = (0.45, 0.2, 0.2, 0.15),
                  amplitude: Tuple[float, float] = (0.6, 1.2), nuclear_photons: float = 20000.0,
                  calcium_photons: float = 12000.0, brightness_spread: float = 0.25,
                  oscillation_s: float = 8.0, spike_period_s: float = 3.0, spike_decay_s: float = 0.5,
                  motion_um: float = 0.3, curvature: float = 0.25) -> Worm:
    """Draw a worm head (Deep-Z Fig. 3 sample): nuclei in a curved tube, activity groups and body motion.

    ``n_nuclei`` nuclei (default 180, the range of the ~155 neurons Deep-Z found) with centres spread over
    ±``depth_um`` (default 10 µm) about the focal plane, semi-axes uniform in ``nucleus_radius_um``, at least
    ``min_separation_um`` apart. ``group_fractions`` gives the share of each :data:`GROUP_NAMES` group;
    ``amplitude`` the range of peak ΔF/F0 of active cells. ``motion_um`` is the rms frame-to-frame step of
    the lateral random walk of the body (frame 0 at rest). Photons are per nucleus per frame, before the
    camera. ``rng``: seed or ``numpy.random.Generator`` — a seed reproduces the worm exactly.
    """
    rng = _rng(rng)
    n = positive_int(n_nuclei, "n_nuclei")
    h, w = (positive_int(s, "shape_yx", minimum=16) for s in shape_yx)
    px = positive(pixel_um, "pixel_um")
    t_n = positive_int(n_frames, "n_frames", minimum=2)
    dt = positive(frame_interval_s, "frame_interval_s")
    depth = in_range(depth_um, "depth_um", 1.0, 50.0)
    half_w = in_range(half_width_um, "half_width_um", 1.0, 100.0)
    r0 = positive(nucleus_radius_um[0], "nucleus_radius_um")
    r1 = positive(nucleus_radius_um[1], "nucleus_radius_um")
    if r1 < r0 or r1 >= min(depth, half_w):
        raise ValueError(f"nucleus_radius_um: expected (min, max) with min <= max < min(depth_um, half_width_um), "
                         f"got {nucleus_radius_um!r}")
    sep = positive(min_separation_um, "min_separation_um")
    frac = np.asarray(group_fractions, dtype=float)
    if frac.shape != (len(GROUP_NAMES),) or np.any(frac < 0) or not np.isfinite(frac).all() or frac.sum() <= 0:
        raise ValueError(f"group_fractions: expected {len(GROUP_NAMES)} non-negative shares for {GROUP_NAMES}, "
                         f"got {group_fractions!r}")
    a0, a1 = positive(amplitude[0], "amplitude"), positive(amplitude[1], "amplitude")
    if a1 < a0:
        raise ValueError(f"amplitude: expected (min, max) with min <= max, got {amplitude!r}")
    motion = positive(motion_um, "motion_um", allow_zero=True)
    curvature = in_range(curvature, "curvature", 0.0, 0.5)
    spread = in_range(brightness_spread, "brightness_spread", 0.0, 0.9)

    width_um, height_um = w * px, h * px
    if 2 * (half_w + 1.0) >= height_um or width_um < 2 * half_w:
        raise ValueError(f"shape_yx: a {h}×{w}-pixel field ({height_um:.1f}×{width_um:.1f} µm) cannot hold a "
                         f"body {2 * half_w:.0f} µm wide; enlarge shape_yx or lower half_width_um")
    line = _centreline(rng, width_um, height_um, half_w, curvature)
    centres = _place_nuclei(rng, line, n, half_w, depth, r1, sep, (width_um, height_um))
    semi = rng.uniform(r0, r1, (n, 3))
    counts = np.floor(frac / frac.sum() * n).astype(int)
    counts[0] += n - counts.sum()
    groups = rng.permutation(np.repeat(np.arange(len(GROUP_NAMES)), counts))
    amp = np.where(groups > 0, rng.uniform(a0, a1, n), 0.0)
    signals = _group_signals(rng, t_n, dt, positive(oscillation_s, "oscillation_s"),
                             positive(spike_period_s, "spike_period_s"), positive(spike_decay_s, "spike_decay_s"))
    bright = rng.uniform(1 - spread, 1 + spread, (2, n))
    steps = rng.normal(0.0, motion / np.sqrt(2), (t_n, 2))
    steps[0] = 0.0
    shifts = np.cumsum(steps, axis=0)
    return Worm(centres_um=centres, semi_axes_um=semi,
                nuclear_photons=positive(nuclear_photons, "nuclear_photons") * bright[0],
                calcium_photons=positive(calcium_photons, "calcium_photons") * bright[1], amplitude=amp,
                groups=groups, group_signals=signals, shifts_um=shifts, centreline_um=line, shape_yx=(h, w),
                pixel_um=px, frame_interval_s=dt, depth_um=depth)


# ---------------------------------------------------------------------------------------------- imaging
def _z_planes(worm: Worm, z_step_um: float) -> np.ndarray:
    """Depths of the rendering volume's planes: a grid of step ``z_step_um`` through 0 covering the body."""
    top = float(np.max(np.abs(worm.centres_um[:, 2]) + worm.semi_axes_um[:, 2])) + z_step_um
    k = int(np.ceil(top / z_step_um))
    return np.arange(-k, k + 1) * z_step_um


def worm_density(worm: Worm, weights, z_step_um: float, pad_px: int = 0,
                 z_planes_um: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Photon density volume (z, y, x) of the nuclei at frame 0, nucleus i carrying ``weights[i]`` photons.

    Voxels are the camera pixel laterally (field padded by ``pad_px`` on every side) and ``z_step_um``
    axially, on the planes ``z_planes_um`` (evenly spaced by ``z_step_um``; default: a grid through 0 that
    covers the body); returns (volume, plane depths µm). Each nucleus is a soft-edged ellipsoid normalised to
    its weight (the part outside the planes is lost).
    """
    weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), (len(worm),))
    dz = positive(z_step_um, "z_step_um")
    pad = positive_int(pad_px, "pad_px", minimum=0)
    if z_planes_um is None:
        zs = _z_planes(worm, dz)
    else:
        zs = np.asarray(z_planes_um, dtype=float)
        if zs.ndim != 1 or len(zs) < 1 or (len(zs) > 1 and not np.allclose(np.diff(zs), dz)):
            raise ValueError(f"z_planes_um: expected planes evenly spaced by z_step_um={dz}, got {z_planes_um!r}")
    h, w = worm.shape_yx
    px = worm.pixel_um
    vol = np.zeros((len(zs), h + 2 * pad, w + 2 * pad), dtype=np.float64)
    # voxel-unit centres (z, y, x) and semi-axes
    cz = (worm.centres_um[:, 2] - zs[0]) / dz
    cy = worm.centres_um[:, 1] / px - 0.5 + pad
    cx = worm.centres_um[:, 0] / px - 0.5 + pad
    for i in range(len(worm)):
        if weights[i] == 0:
            continue
        rx, ry, rz = worm.semi_axes_um[i, 0] / px, worm.semi_axes_um[i, 1] / px, worm.semi_axes_um[i, 2] / dz
        box = ((cz[i], rz), (cy[i], ry), (cx[i], rx))
        lo = [int(np.floor(c - 1.4 * r)) for c, r in box]
        hi = [int(np.ceil(c + 1.4 * r)) + 1 for c, r in box]
        zz = (np.arange(lo[0], hi[0]) - cz[i]) / rz
        yy = (np.arange(lo[1], hi[1]) - cy[i]) / ry
        xx = (np.arange(lo[2], hi[2]) - cx[i]) / rx
        d = np.sqrt(zz[:, None, None] ** 2 + yy[None, :, None] ** 2 + xx[None, None, :] ** 2)
        body = 1.0 / (1.0 + np.exp((d - 1.0) / 0.1))
        body *= weights[i] / body.sum()  # normalised over the whole nucleus: the part outside the volume is lost
        a = [max(0, v) for v in lo]
        b = [min(n, h_) for n, h_ in zip(vol.shape, hi)]
        if all(x < y for x, y in zip(a, b)):
            vol[a[0]:b[0], a[1]:b[1], a[2]:b[2]] += body[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1],
                                                         a[2] - lo[2]:b[2] - lo[2]]
    return vol, zs


def worm_sample(rng, shape_zyx: Sequence[int], voxel_um: Tuple[float, float],
                n_nuclei: Tuple[int, int] = (70, 140), photons: float = 20000.0, **worm_kwargs) -> np.ndarray:
    """Nuclear-label photon density (nz, H, W) of a random worm segment on the planes
    (k − (nz − 1)/2)·dz, k = 0 … nz − 1, with ``voxel_um`` = (dz, pixel): the training samples of a worm Deep-Z
    (the paper trained its worm network on C. elegans nuclei stacks). ``n_nuclei`` is drawn in the given
    range scaled by the field width / 128 pixels; other arguments go to :func:`simulate_worm` (the body depth
    defaults to ±10 µm, capped to the stack). Signature of a ``DeepZDataConfig(sample=...)`` callable."""
    rng = _rng(rng)
    nz, h, w = (positive_int(s, "shape_zyx") for s in shape_zyx)
    dz, px = positive(voxel_um[0], "voxel_um"), positive(voxel_um[1], "voxel_um")
    lo, hi = (positive_int(v, "n_nuclei") for v in n_nuclei)
    n = max(1, int(round(rng.integers(lo, max(lo, hi) + 1) * w / 128)))
    zs = (np.arange(nz) - (nz - 1) / 2) * dz
    kw = dict(depth_um=min(10.0, max(1.0, zs[-1] - 1.0)), n_frames=2, nuclear_photons=photons)
    kw.update(worm_kwargs)
    worm = simulate_worm(rng, n_nuclei=n, shape_yx=(h, w), pixel_um=px, **kw)
    vol, _ = worm_density(worm, worm.nuclear_photons, dz, 0, zs)
    return vol.astype(np.float32)


def _psf_pixels(microscope: Microscope, max_defocus_um: float, field_px: int) -> int:
    return int(min(imaging.auto_patch_px(microscope, max_defocus_um), 2 * field_px + 1))


def _focal_indices(zs: np.ndarray, focal_um: Sequence[float], dz: float) -> np.ndarray:
    focal = np.asarray(focal_um, dtype=float)
    idx = np.round((focal - zs[0]) / dz).astype(int)
    if np.any(idx < 0) or np.any(idx >= len(zs)) or np.any(np.abs(zs[np.clip(idx, 0, len(zs) - 1)] - focal)
                                                           > 1e-6 * dz + 1e-9):
        raise ValueError(f"focal_planes_um: must be multiples of z_step_um={dz} within [{zs[0]}, {zs[-1]}] µm, "
                         f"got {list(focal)}")
    return idx


class _Imager:
    """I(z_f) = Σ_z V(z) ⊛ PSF(z − z_f) at the planes ``idx`` of volumes (nz, H, W) through ``psf_stack``
    (2·nz − 1, k, k). One plane: :func:`refocuslib.imaging.image_volume`. Several planes: the same sum written
    as one 3D linear convolution with the z-reversed PSF stack (output plane f at index f + nz − 1), by
    ``scipy.fft`` with the kernel spectrum computed once for all volumes."""

    def __init__(self, psf_stack, shape_zyx, idx: np.ndarray, microscope: Microscope, dz: float):
        self.k = torch.as_tensor(psf_stack, dtype=torch.float64)
        self.nz, self.h, self.w = shape_zyx
        if self.k.ndim != 3 or self.k.shape[0] != 2 * self.nz - 1:
            raise ValueError(f"psf_stack: expected shape (2·{self.nz}−1, n, n), got {tuple(self.k.shape)}")
        self.idx, self.microscope, self.dz = idx, microscope, dz
        self.kernel_ft = None
        if len(idx) > 1:
            from scipy import fft as sfft
            kh, kw = self.k.shape[1:]
            self.shape = tuple(sfft.next_fast_len(n, real=True)
                               for n in (3 * self.nz - 2, self.h + kh - 1, self.w + kw - 1))
            self.kernel_ft = sfft.rfftn(self.k.numpy()[::-1].astype(np.float32), s=self.shape)

    def __call__(self, vol: np.ndarray) -> np.ndarray:
        if self.kernel_ft is None:
            return imaging.image_volume(vol, self.microscope, self.dz, focal_indices=self.idx,
                                        psf_stack=self.k).numpy()
        from scipy import fft as sfft
        full = sfft.irfftn(sfft.rfftn(vol.astype(np.float32), s=self.shape) * self.kernel_ft, s=self.shape)
        kh, kw = self.k.shape[1:]
        out = full[self.idx + self.nz - 1, kh // 2:kh // 2 + self.h, kw // 2:kw // 2 + self.w]
        return np.clip(out, 0, None).astype(np.float32)


def _shift_crop(coeffs: np.ndarray, shift_yx_px, pad: int) -> np.ndarray:
    """Move every plane of ``coeffs`` ((..., H, W) cubic-spline coefficients of padded images, from
    :func:`_spline`) by ``shift_yx_px`` = (dy, dx) pixels and crop the padding (photons ≥ 0)."""
    lead = coeffs.shape[:-2]
    flat = coeffs.reshape(-1, *coeffs.shape[-2:])
    out = np.stack([ndimage.shift(c, shift_yx_px, order=3, mode="nearest", prefilter=False) for c in flat])
    out = out.reshape(*lead, *coeffs.shape[-2:])
    return np.clip(out[..., pad:coeffs.shape[-2] - pad, pad:coeffs.shape[-1] - pad], 0, None)


def _spline(img: np.ndarray) -> np.ndarray:
    """Cubic-spline coefficients of each (H, W) plane (linear in the image, so coefficients of a weighted sum
    of images are the weighted sum of their coefficients)."""
    flat = img.reshape(-1, *img.shape[-2:])
    return np.stack([ndimage.spline_filter(p, order=3, mode="nearest") for p in flat]).reshape(img.shape)


def _setup(worm: Worm, microscope: Microscope, z_step_um: float, planes_um, psf_stack):
    if not np.isclose(worm.pixel_um, microscope.pixel_um):
        raise ValueError(f"microscope: pixel_um {microscope.pixel_um} differs from the worm's {worm.pixel_um}")
    dz = positive(z_step_um, "z_step_um")
    planes = np.atleast_1d(np.asarray(planes_um, dtype=float))
    if planes.ndim != 1 or not np.all(np.isfinite(planes)):
        raise ValueError(f"focal_planes_um: expected a finite 1D list of depths (µm), got {planes_um!r}")
    pad = int(np.ceil(np.max(np.abs(worm.shifts_um), initial=0.0) / worm.pixel_um)) + 4
    zs = _z_planes(worm, dz)
    if psf_stack is None:
        psf_stack = psf_stack_for_worm(worm, microscope, z_step_um, planes)
    return dz, planes, pad, zs, psf_stack


def psf_stack_for_worm(worm: Worm, microscope: Microscope = WORM_20X, z_step_um: float = 0.5,
                       focal_planes_um: Sequence[float] = (0.0,)) -> torch.Tensor:
    """The PSF stack (:func:`refocuslib.imaging.psf_stack_for_volume`) that :func:`render_video` and
    :func:`render_stacks` need for this worm: the volume's planes, wide enough laterally for the largest
    defocus between a nucleus and any of ``focal_planes_um``. Compute it once and pass it on."""
    dz = positive(z_step_um, "z_step_um")
    zs = _z_planes(worm, dz)
    planes = np.atleast_1d(np.asarray(focal_planes_um, dtype=float))
    pad = int(np.ceil(np.max(np.abs(worm.shifts_um), initial=0.0) / worm.pixel_um)) + 4
    max_dz = float(np.max(np.abs(zs[:, None] - planes[None, :])))
    n_psf = _psf_pixels(microscope, max_dz, max(worm.shape_yx) + 2 * pad)
    symmetric = (microscope.mask is None and microscope.modality == "widefield"
                 and (microscope.n_sample is None or microscope.n_sample == microscope.n_immersion))
    if not symmetric:
        return imaging.psf_stack_for_volume(microscope, len(zs), dz, n_psf)
    # aberration-free, index-matched wide-field PSF: I(x, −z) = I(−x, z) = I(x, z) (real, radially symmetric
    # pupil), so only defocus ≥ 0 is computed and mirrored — the stack of psf_stack_for_volume at half the cost
    half = microscope.replace(nfp_um=0.0).psf(np.arange(len(zs)) * dz, n_psf, dtype=torch.float64)
    return torch.cat([half.flip(0)[:-1], half])


def _render(worm: Worm, microscope: Microscope, z_step_um: float, planes_um, psf_stack, frames=None):
    """Expected photons (T, P, H, W) of both channels at focal planes ``planes_um`` for ``frames``.

    Linear, shift-invariant imaging: the images of the nuclear label, the calcium baseline and each active
    group (nuclei weighted by calcium photons × amplitude) are computed once (:class:`_Imager`: one PSF stack,
    :func:`refocuslib.imaging.image_volume` for one plane); frame t is Σ_g signal_g(t)·image_g, moved by the body
    translation of frame t (cubic-spline shift of the padded field, spline coefficients computed once)."""
    dz, planes, pad, zs, psf_stack = _setup(worm, microscope, z_step_um, planes_um, psf_stack)
    frames = np.arange(worm.n_frames) if frames is None else np.atleast_1d(np.asarray(frames, dtype=int))
    if frames.size == 0 or frames.min() < 0 or frames.max() >= worm.n_frames:
        raise ValueError(f"frames: must lie in [0, {worm.n_frames - 1}], got {frames!r}")

    h, w = worm.shape_yx
    imager = _Imager(psf_stack, (len(zs), h + 2 * pad, w + 2 * pad), _focal_indices(zs, planes, dz), microscope,
                     dz)

    def image(weights):
        vol, _ = worm_density(worm, weights, dz, pad)
        return imager(vol)

    nuc = _spline(image(worm.nuclear_photons))
    base = _spline(image(worm.calcium_photons))
    group_imgs = {g: _spline(image(np.where(worm.groups == g, worm.calcium_photons * worm.amplitude, 0.0)))
                  for g in range(1, len(GROUP_NAMES)) if np.any(worm.groups == g)}
    nuc_t = np.empty((len(frames), len(planes), h, w), np.float32)
    cal_t = np.empty_like(nuc_t)
    for n, t in enumerate(frames):
        cal = base.copy()
        for g, img in group_imgs.items():
            cal += worm.group_signals[g, t] * img
        shift = worm.shifts_um[t, ::-1] / worm.pixel_um  # (dy, dx) in pixels
        nuc_t[n] = _shift_crop(nuc, shift, pad)
        cal_t[n] = _shift_crop(cal, shift, pad)
    return nuc_t, cal_t


def render_video(worm: Worm, microscope: Microscope = WORM_20X, z_step_um: float = 0.5,
                 focal_plane_um: float = 0.0, rng=0, qe: float = 0.8, gain: float = 1.0,
                 read_noise_e: float = 1.5, baseline_adu: float = 100.0, background_photons: float = 20.0,
                 psf_stack=None) -> WormVideo:
    """Image ``worm`` at one focal plane over all its frames, both channels (Deep-Z Fig. 3 input video).

    The density volume is sampled at the camera pixel and ``z_step_um``; one PSF stack (computed here, or
    passed from :func:`psf_stack_for_worm`) serves every image. The worm's pixel size must equal the
    microscope's. Noise: :meth:`refocuslib.imaging.Camera.counts` of the camera with the given parameters,
    drawn from ``rng`` (seed or Generator).
    """
    fp = in_range(focal_plane_um, "focal_plane_um", -worm.depth_um, worm.depth_um)
    gen = _rng(rng)
    nuc_t, cal_t = _render(worm, microscope, z_step_um, [fp], psf_stack)
    nuc_t, cal_t = nuc_t[:, 0], cal_t[:, 0]
    cam = imaging.Camera(qe=qe, gain=gain, read_noise_e=read_noise_e, baseline_adu=baseline_adu,
                         background_photons=background_photons)
    nuc_adu = cam.counts(nuc_t, gen).numpy().astype(np.float32)
    cal_adu = cam.counts(cal_t, gen).numpy().astype(np.float32)
    return WormVideo(nuclear=nuc_adu, calcium=cal_adu, nuclear_photons=nuc_t, calcium_photons=cal_t, worm=worm,
                     microscope=microscope, z_step_um=float(z_step_um), focal_plane_um=fp,
                     camera=dataclasses.asdict(cam))


def render_stacks(worm: Worm, focal_planes_um: Sequence[float], frames=None, microscope: Microscope = WORM_20X,
                  z_step_um: float = 0.5, psf_stack=None) -> Tuple[np.ndarray, np.ndarray]:
    """Noise-free mechanically scanned z-stacks (T, P, H, W) photons of both channels (nuclear, calcium) at
    ``focal_planes_um`` for ``frames`` (default all): the ground truth a Deep-Z refocused video is compared
    with. Focal planes must lie on the ``z_step_um`` grid of the rendering volume."""
    return _render(worm, microscope, z_step_um, focal_planes_um, psf_stack, frames)


def simulate_worm_video(seed: int = 0, microscope: Microscope = WORM_20X, z_step_um: float = 0.5,
                        background_photons: float = 20.0, psf_stack=None, **worm_kwargs) -> WormVideo:
    """:func:`simulate_worm` then :func:`render_video` from one seed (sample and noise reproducible)."""
    rng = np.random.default_rng(seed)
    worm = simulate_worm(rng, pixel_um=microscope.pixel_um, **worm_kwargs)
    return render_video(worm, microscope, z_step_um=z_step_um, rng=rng, background_photons=background_photons,
                        psf_stack=psf_stack)
