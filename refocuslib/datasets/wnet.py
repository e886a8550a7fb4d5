"""W-Net training and test data: 50 nm beads through a 63×/1.4 NA oil objective (Yang et al. 2021, Fig. 1–2).

One bead layer (the sample plane, z = 0) is imaged three ways, as in the paper:

* ``'dh'`` — wide-field with the double-helix phase mask :func:`refocuslib.optics.double_helix_mask` in the pupil
  (the W-Net input; training input planes within ±``dh_range_um``, paper ±8 µm, default ±4 µm);
* ``'wf'`` — the same field without the mask (wide-field input of the comparison W-Net, ±``wf_range_um`` = ±4 µm;
  also the "scanned wide-field" reference of Fig. 2);
* ``'confocal'`` — a 1-Airy-unit point-scanning confocal stack, the ground truth (targets within
  ±``confocal_range_um``, paper ±2 µm, default ±0.3 µm where the confocal image has signal).

An image focused at plane ``z`` (µm, the focal plane relative to the bead layer) is the bead map convolved with
the PSF of defocus −z, so one PSF stack per modality, computed once, renders every image exactly by FFT
convolution (beads are points: 50 nm ≪ the 0.1 µm pixel; bead positions are splatted bilinearly onto the pixel
grid, the same map for all three modalities). PSFs are truncated to ``psf_px``² pixels; the photons beyond
(far defocus haze) are dropped and reported in :attr:`WNetBeadSimulator.kernel_energy`.

Images are in units of the in-focus peak of an average bead of that modality: noisy inputs are camera counts
with the baseline and the known mean background removed, ``(ADU − baseline)/(gain·QE) − background``, divided by
``photons · max PSF(0)``; confocal targets are noise-free expected images on that scale (the paper's targets are
measured confocal images), so an out-of-focus confocal target is dim (optical sectioning). The network sees
the noisy frame on this fixed scale (``input_normalisation='photons'``, default) or rescaled on its own
(``'percentile'``, :meth:`WNetBeadSimulator.network_input`; G_R's target is then rescaled the same way). Each
training pair draws a random input plane and a random target plane; the DPM is
their difference ``z_target − z_input`` (uniform), given to the network as DPM/10 (Deep-Z convention).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from refocuslib import dpm as _dpm
from refocuslib._validate import in_range, positive, positive_int
from refocuslib.imaging import Camera
from refocuslib.optics import OIL_63X, Microscope, PhaseSum, confocal_psf, double_helix_mask, widefield_psf
from refocuslib.samples import splat_points

__all__ = ["MODALITIES", "WNetDataConfig", "BeadField", "WNetBeadSimulator", "WNetBeadDataset"]

#: Imaging modalities of the simulator.
MODALITIES = ("dh", "wf", "confocal")
INPUT_MODALITIES = ("dh", "wf")


@dataclass(frozen=True)
class WNetDataConfig:
    """Parameters of the simulated W-Net bead experiment (lengths in µm, intensities in photons).

    Paper (Yang et al. 2021): 63×/1.4 NA oil, DH input range ±8 µm, wide-field ±4 µm, confocal targets ±2 µm.
    Defaults here: an 8-ring DH mask (its peak stays ≥ 10 % of the in-focus peak over ±4 µm; the 4-ring mask's
    only over ±2 µm) trained over ±4 µm, the range it carries; confocal targets within ±0.3 µm, where a 1-AU
    confocal image of a bead has signal (beyond, the targets are black and teach the network darkness);
    64-px crops (the DH light of a bead 3 µm out of focus spreads over ±3 µm).
    ``z_step_um``: axial sampling of the PSF stacks; training planes are drawn on this grid.
    ``psf_px`` (odd): lateral size of the PSF kernels; ``crop_px``: training patch size.
    ``beads_per_um2``: bead density (Poisson, uniform positions: close pairs occur as on a real slide).
    ``microscope``: the input optics (NA, wavelength, immersion, pixel); its ``mask``, e.g. the calibrated pupil
    of a ``psf.json`` (:class:`refocuslib.calibrate.ZernikePupil`), is the objective's aberration: it is added
    to the DH mask's phase and is the wide-field pupil; the confocal targets use the same NA, wavelength and
    pixel, unaberrated (the confocal reference is another instrument).
    ``photons``: mean photons per bead per frame (±``photons_spread``, uniform); camera: :attr:`camera`
    (:class:`refocuslib.imaging.Camera` of ``qe``, ``gain``, ``read_noise_e``, ``baseline_adu``,
    ``background_photons``). ``input_normalisation``: how a camera frame becomes the network input,
    'photons' (the fixed photon scale of the targets, default) or 'percentile' (per image: (x − median)/(P99.9 −
    median), Deep-Z-style pre-processing that removes the haze level and rescales dim, far-defocused frames;
    G_R's target is then rescaled the same way).
    """
    microscope: Microscope = OIL_63X
    dh_rings: int = 8
    excitation_um: float = 0.488
    pinhole_au: float = 1.0
    dh_range_um: float = 4.0
    wf_range_um: float = 4.0
    confocal_range_um: float = 0.3
    z_step_um: float = 0.1
    psf_px: int = 97
    crop_px: int = 64
    beads_per_um2: float = 0.3
    photons: float = 2.0e4
    photons_spread: float = 0.3
    background_photons: float = 10.0
    qe: float = 0.8
    gain: float = 1.0
    read_noise_e: float = 1.5
    baseline_adu: float = 100.0
    input_normalisation: str = "photons"

    def __post_init__(self):
        if not isinstance(self.microscope, Microscope):
            raise ValueError(f"microscope: expected a refocuslib.optics.Microscope, got {type(self.microscope)}")
        positive_int(self.dh_rings, "dh_rings")
        in_range(self.excitation_um, "excitation_um", 0.2, 2.0)
        in_range(self.pinhole_au, "pinhole_au", 0.0, 20.0, lo_open=True)
        for name in ("dh_range_um", "wf_range_um", "confocal_range_um"):
            in_range(getattr(self, name), name, 0.0, 50.0, lo_open=True)
        in_range(self.z_step_um, "z_step_um", 0.0, 2.0, lo_open=True)
        p = positive_int(self.psf_px, "psf_px", minimum=3)
        if p % 2 == 0:
            raise ValueError(f"psf_px: must be odd (PSF centred on a pixel), got {p}")
        positive_int(self.crop_px, "crop_px", minimum=8)
        positive(self.beads_per_um2, "beads_per_um2", allow_zero=True)
        positive(self.photons, "photons")
        in_range(self.photons_spread, "photons_spread", 0.0, 1.0, hi_open=True)
        positive(self.background_photons, "background_photons", allow_zero=True)
        in_range(self.qe, "qe", 0.0, 1.0, lo_open=True)
        positive(self.gain, "gain")
        positive(self.read_noise_e, "read_noise_e", allow_zero=True)
        in_range(self.baseline_adu, "baseline_adu", -1e9, 1e9)
        if self.input_normalisation not in ("percentile", "photons"):
            raise ValueError(f"input_normalisation: 'percentile' or 'photons', got {self.input_normalisation!r}")

    @property
    def camera(self) -> Camera:
        """The camera of the input frames."""
        return Camera(self.qe, self.gain, self.read_noise_e, self.baseline_adu, self.background_photons)

    def input_range_um(self, modality: str) -> float:
        """Training range (±µm) of the input planes of ``modality`` ('dh' or 'wf')."""
        _check_modality(modality, INPUT_MODALITIES, "input_modality")
        return self.dh_range_um if modality == "dh" else self.wf_range_um

    def dpm_range_um(self, modality: str) -> Tuple[float, float]:
        """DPM values seen in training with ``modality`` input: ±(input range + confocal range)."""
        r = self.input_range_um(modality) + self.confocal_range_um
        return (-r, r)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["microscope"] = {k: v for k, v in asdict(self.microscope).items() if k != "mask"}
        mask = self.microscope.mask
        if mask is not None:  # a calibrated pupil (ZernikePupil): its coefficients in full; else its repr
            coeffs = getattr(mask, "coefficients_rad", None)
            d["microscope"]["mask"] = ({str(j): float(c) for j, c in coeffs.items()} if isinstance(coeffs, dict)
                                       else repr(mask))
        return d


def _check_modality(modality, allowed, name="modality") -> str:
    if modality not in allowed:
        raise ValueError(f"{name}: one of {allowed}, got {modality!r}")
    return modality


def _grid(half_range: float, step: float) -> np.ndarray:
    n = int(math.ceil(half_range / step - 1e-9))
    return np.round(np.arange(-n, n + 1) * step, 9)


@dataclass
class BeadField:
    """One bead layer: ``xy_um`` (N, 2) as (x, y) in µm in the image frame (pixel (i, j) centred at
    ((j+½)·px, (i+½)·px); beads outside the image still shed light into it), ``photons`` (N,), the image
    ``shape_yx``, the splatted photon map ``bead_map`` (H + P − 1, W + P − 1) with its margin of P//2, and the
    camera ``pixel_um``."""
    xy_um: np.ndarray
    photons: np.ndarray
    shape_yx: Tuple[int, int]
    bead_map: torch.Tensor = field(repr=False)
    pixel_um: float = 0.1

    def inside(self, margin_um: float = 0.0) -> np.ndarray:
        """Boolean mask of the beads at least ``margin_um`` inside the image."""
        h, w = self.shape_yx
        px = self.pixel_um
        x, y = self.xy_um[:, 0], self.xy_um[:, 1]
        return (x >= margin_um) & (y >= margin_um) & (x <= w * px - margin_um) & (y <= h * px - margin_um)


class WNetBeadSimulator:
    """Renders the W-Net bead data (see the module docstring). PSF stacks are computed once at construction.

    ``modality`` arguments are 'dh', 'wf' or 'confocal'; ``focal_um`` is the focal plane relative to the bead
    layer (µm), snapped to the ``z_step_um`` grid.
    """

    def __init__(self, config: Optional[WNetDataConfig] = None, **overrides):
        cfg = config or WNetDataConfig()
        if overrides:
            cfg = WNetDataConfig(**{**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, **overrides})
        self.config = cfg
        m = cfg.microscope.replace(nfp_um=0.0, mask=None, modality="widefield")
        aberration = cfg.microscope.mask  # the objective's pupil phase (e.g. a psf.json calibration) or None
        if aberration is not None and not callable(aberration):
            raise ValueError("microscope: its mask must be a callable pupil phase mask(rho, phi) (e.g. a "
                             "calibrate.ZernikePupil), to add to the DH mask; a phase array is tied to one grid")
        dh_mask = double_helix_mask(cfg.dh_rings)
        if aberration is not None:
            dh_mask = PhaseSum(dh_mask, aberration)
        if m.n_sample is not None and m.n_sample != m.n_immersion:
            raise ValueError("microscope: the bead-layer simulator needs a shift-invariant PSF (no index mismatch)")
        self.pixel_um = m.pixel_um
        wide = max(cfg.dh_range_um, cfg.wf_range_um)
        self.z_um: Dict[str, np.ndarray] = {"dh": _grid(wide, cfg.z_step_um), "wf": _grid(wide, cfg.z_step_um),
                                            "confocal": _grid(cfg.confocal_range_um, cfg.z_step_um)}
        args = (cfg.psf_px, m.pixel_um, m.na, m.wavelength_um, m.n_immersion)
        # the stack is indexed by the focal plane z; the bead sits at defocus −z from it
        self.psfs: Dict[str, torch.Tensor] = {
            "dh": widefield_psf(-self.z_um["dh"], *args, mask=dh_mask),
            "wf": widefield_psf(-self.z_um["wf"], *args, mask=aberration),
            "confocal": confocal_psf(-self.z_um["confocal"], *args, excitation_um=cfg.excitation_um,
                                     pinhole_au=cfg.pinhole_au),
        }
        self.psfs = {k: v.float().contiguous() for k, v in self.psfs.items()}
        #: photons per image of one in-focus average bead's peak (the unit of every normalised image)
        self.scale = {k: float(cfg.photons * self.psf(k, 0.0).max()) for k in MODALITIES}
        #: fraction of a bead's photons that the truncated kernel keeps, per focal plane
        self.kernel_energy = {k: v.sum((1, 2)).numpy() for k, v in self.psfs.items()}

    # ------------------------------------------------------------------------------------------ lookup
    def plane_index(self, modality: str, focal_um) -> np.ndarray:
        """Indices of the stack planes nearest to ``focal_um`` (ValueError beyond the stack's range)."""
        _check_modality(modality, MODALITIES)
        z = np.atleast_1d(np.asarray(focal_um, dtype=np.float64))
        grid = self.z_um[modality]
        lim = grid[-1] + 0.5 * self.config.z_step_um
        if not np.all(np.isfinite(z)) or np.any(np.abs(z) > lim):
            raise ValueError(f"focal_um: {modality} planes must lie in [{-grid[-1]:g}, {grid[-1]:g}] µm, "
                             f"got {z.min():g} … {z.max():g}")
        return np.clip(np.round((z - grid[0]) / self.config.z_step_um).astype(int), 0, len(grid) - 1)

    def snap(self, modality: str, focal_um) -> np.ndarray:
        """The grid planes actually rendered for ``focal_um``."""
        return self.z_um[modality][self.plane_index(modality, focal_um)]

    def psf(self, modality: str, focal_um: float) -> torch.Tensor:
        """(P, P) PSF of a bead seen from focal plane ``focal_um`` (photons per pixel per emitted photon)."""
        idx = int(self.plane_index(modality, focal_um)[0])  # validates modality and plane first
        return self.psfs[modality][idx]

    # ------------------------------------------------------------------------------------------- sample
    def _map_shape(self, shape_yx) -> Tuple[int, int]:
        h, w = (positive_int(s, "shape_yx", minimum=4) for s in shape_yx)
        p = self.config.psf_px
        return h + p - 1, w + p - 1

    def _bead_map(self, xy_um: np.ndarray, photons: np.ndarray, shape_yx) -> torch.Tensor:
        mh, mw = self._map_shape(shape_yx)
        c = self.config.psf_px // 2
        vol = np.zeros((mh, mw), dtype=np.float64)
        if len(xy_um):
            pos = np.column_stack([xy_um[:, 1] / self.pixel_um - 0.5 + c, xy_um[:, 0] / self.pixel_um - 0.5 + c])
            splat_points(vol, pos, photons)
        return torch.from_numpy(vol.astype(np.float32))

    def field_from_points(self, xy_um, photons, shape_yx) -> BeadField:
        """A :class:`BeadField` from given bead positions (x, y) µm in the image frame and photons."""
        xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
        ph = np.broadcast_to(np.asarray(photons, dtype=np.float64), (len(xy),)).copy()
        if not (np.all(np.isfinite(xy)) and np.all(np.isfinite(ph)) and np.all(ph >= 0)):
            raise ValueError("xy_um/photons: must be finite, photons >= 0")
        shape = tuple(int(s) for s in shape_yx)
        return BeadField(xy, ph, shape, self._bead_map(xy, ph, shape), self.pixel_um)

    def random_field(self, generator: torch.Generator, shape_yx, beads_per_um2: Optional[float] = None) -> BeadField:
        """Poisson bead layer over the image and its margin (beads just outside still shed light in), drawn
        only from ``generator`` (a ``torch.Generator``)."""
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        dens = self.config.beads_per_um2 if beads_per_um2 is None else positive(beads_per_um2, "beads_per_um2",
                                                                               allow_zero=True)
        mh, mw = self._map_shape(shape_yx)
        c_um = (self.config.psf_px // 2) * self.pixel_um
        area = mh * mw * self.pixel_um ** 2
        n = int(torch.poisson(torch.tensor([dens * area], dtype=torch.float64), generator=generator).item())
        u = torch.rand(n, 3, generator=generator, dtype=torch.float64).numpy()
        xy = np.column_stack([u[:, 0] * mw, u[:, 1] * mh]) * self.pixel_um - c_um
        ph = self.config.photons * (1.0 + self.config.photons_spread * (2.0 * u[:, 2] - 1.0))
        return self.field_from_points(xy, ph, shape_yx)

    # ------------------------------------------------------------------------------------------- render
    def render(self, bead_maps: torch.Tensor, modality: str, focal_um, shape_yx=None) -> torch.Tensor:
        """Expected photons (B, H, W) of bead maps (B, H+P−1, W+P−1) seen at focal planes ``focal_um`` (B,)."""
        maps = bead_maps if bead_maps.ndim == 3 else bead_maps[None]
        idx = self.plane_index(modality, focal_um)
        if len(idx) not in (1, maps.shape[0]):
            raise ValueError(f"focal_um: expected 1 or {maps.shape[0]} planes, got {len(idx)}")
        p = self.config.psf_px
        mh, mw = maps.shape[-2:]
        h, w = mh - p + 1, mw - p + 1
        if h < 1 or w < 1:
            raise ValueError(f"bead_maps: must be larger than the PSF ({p} px), got {tuple(maps.shape)}")
        kern = self.psfs[modality][torch.as_tensor(idx)]
        spec = torch.fft.rfft2(maps.float(), s=(mh, mw)) * torch.fft.rfft2(kern, s=(mh, mw))
        out = torch.fft.irfft2(spec, s=(mh, mw))[..., p - 1:p - 1 + h, p - 1:p - 1 + w]
        return out.clamp_min(0.0)

    def normalise(self, photons: torch.Tensor, modality: str) -> torch.Tensor:
        """Expected photons → units of the in-focus peak of an average bead of ``modality``."""
        return photons / self.scale[_check_modality(modality, MODALITIES)]

    def acquire(self, photons: torch.Tensor, modality: str, generator: torch.Generator) -> torch.Tensor:
        """Camera frame of expected ``photons`` (adds the background), back to normalised units:
        ((ADU − baseline)/(gain·QE) − background) / scale."""
        cam = self.config.camera
        return self.normalise(cam.photons(cam.counts(photons, generator)), modality)

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """Camera frames (…, H, W) in normalised photon units → network input per ``input_normalisation``."""
        x = torch.as_tensor(images, dtype=torch.float32)
        if self.config.input_normalisation == "photons":
            return x
        flat = x.reshape(-1, x.shape[-2] * x.shape[-1])
        q = torch.quantile(flat, torch.tensor([0.5, 0.999], dtype=flat.dtype), dim=1)  # (2, N)
        scale = (q[1] - q[0]).clamp_min(1e-6)
        return ((flat - q[0][:, None]) / scale[:, None]).reshape(x.shape)

    def scan(self, field: BeadField, modality: str, focal_um: Sequence[float],
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Normalised images (n, H, W) of ``field`` at each focal plane; noisy camera frames when a
        ``generator`` is given, expected (noise-free) images otherwise."""
        z = np.atleast_1d(np.asarray(focal_um, dtype=np.float64))
        maps = field.bead_map[None].expand(len(z), *field.bead_map.shape)
        photons = self.render(maps, modality, z)
        if generator is None:
            return self.normalise(photons, modality)
        return self.acquire(photons, modality, generator)

    def sample_batch(self, batch_size: int, generator: torch.Generator, input_modality: str = "dh",
                     crop_px: Optional[int] = None, input_range_um: Optional[float] = None,
                     target_range_um: Optional[float] = None) -> Dict[str, torch.Tensor]:
        """One training batch drawn only from ``generator``.

        Keys: ``input`` (B, 1, H, W) noisy ``input_modality`` image at a random plane within the input range
        (after :meth:`network_input`);
        ``dpm`` (B, 1, H, W) = (z_target − z_input)/10 (network scale); ``target_r`` the same modality,
        noise-free, at the target plane, normalised like the input (G_R's target); ``target_c`` the confocal
        image at the target plane in units of an in-focus bead's peak (G_C's target); ``z_input_um``,
        ``z_target_um`` (B,). ``input_range_um``/``target_range_um`` override the configured ranges (e.g. the
        validation set: inputs near focus, target the bead plane, ``target_range_um=0``).
        """
        b = positive_int(batch_size, "batch_size")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        _check_modality(input_modality, INPUT_MODALITIES, "input_modality")
        n = positive_int(crop_px or self.config.crop_px, "crop_px", minimum=4)
        step = self.config.z_step_um
        r_in = self.config.input_range_um(input_modality) if input_range_um is None else in_range(
            input_range_um, "input_range_um", 0.0, self.config.input_range_um(input_modality))
        r_t = self.config.confocal_range_um if target_range_um is None else in_range(
            target_range_um, "target_range_um", 0.0, self.config.confocal_range_um)
        u = torch.rand(b, 2, generator=generator, dtype=torch.float64).numpy()
        z_in = np.round(((2 * u[:, 0] - 1) * r_in) / step) * step
        z_t = np.round(((2 * u[:, 1] - 1) * r_t) / step) * step
        z_in, z_t = np.clip(z_in, -r_in, r_in), np.clip(z_t, -r_t, r_t)
        maps = torch.stack([self.random_field(generator, (n, n)).bead_map for _ in range(b)])
        inp = self.network_input(self.acquire(self.render(maps, input_modality, z_in), input_modality, generator))
        t_r = self.network_input(self.normalise(self.render(maps, input_modality, z_t), input_modality))
        t_c = self.normalise(self.render(maps, "confocal", z_t), "confocal")
        dpm_um = torch.as_tensor(z_t - z_in, dtype=torch.float32)[:, None, None, None].expand(b, 1, n, n)
        return {"input": inp[:, None].contiguous(), "dpm": _dpm.to_network(dpm_um).contiguous(),
                "target_r": t_r[:, None].contiguous(), "target_c": t_c[:, None].contiguous(),
                "z_input_um": torch.as_tensor(z_in, dtype=torch.float32),
                "z_target_um": torch.as_tensor(z_t, dtype=torch.float32)}


class WNetBeadDataset(torch.utils.data.Dataset):
    """A fixed-length torch ``Dataset`` of W-Net pairs: item ``i`` is the batch of one drawn from
    ``torch.Generator().manual_seed(seed + i)``, so the set is reproducible; values are (1, H, W) tensors."""

    def __init__(self, simulator: WNetBeadSimulator, length: int, seed: int = 0, input_modality: str = "dh"):
        self.simulator = simulator
        self.length = positive_int(length, "length")
        self.seed = int(seed)
        self.input_modality = _check_modality(input_modality, INPUT_MODALITIES, "input_modality")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for a dataset of {self.length}")
        g = torch.Generator().manual_seed(self.seed + (i % self.length))
        batch = self.simulator.sample_batch(1, g, self.input_modality)
        return {k: v[0] for k, v in batch.items()}
