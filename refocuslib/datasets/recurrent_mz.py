"""Recurrent-MZ data (Huang et al. 2021): simulated 63×/1.4 NA wide-field scans of worm-like nuclei and beads.

One *volume* is a mechanical wide-field z-scan (|Z| planes, ``z_step_um`` apart) of a 3D sample: the density
volume (nuclei: :func:`refocuslib.samples.nuclei_volume`; 50 nm beads: points splatted on the voxel grid —
50 nm is far below the 0.19 µm lateral resolution, so a bead is a point) convolved with the wide-field PSF
(:func:`refocuslib.imaging.image_volume`, the PSF stack computed once per geometry), camera noise
(:attr:`VolumeSpec.camera`, a :class:`refocuslib.imaging.Camera`), then the Deep-Z normalisation of the whole
stack (triangle background removed, divided by a high percentile). Inputs and targets are planes of that same noisy scan, as in the paper
(its targets are the measured scan): the M inputs sit ``input_spacing_um`` (Δz) apart, centred in the stack;
every plane of the stack is a target.

Paper scale (``full`` profile): nuclei |Z| = 91 at 0.2 µm with Δz = 6 µm; beads |Z| = 101 at 0.1 µm with
Δz = 3 µm (:data:`NUCLEI_PAPER`, :data:`BEADS_PAPER`). The CI profile shrinks field, |Z| and Δz.

Training batches (:func:`sample_batch`) draw everything from a ``torch.Generator``: volume, crop, 8-fold
rotation/flip, output plane, number of inputs M, their positions (the default Δz grid, each moved by up to
``jitter_planes``), their order (random permutation) — the DPM of input i is z_out − z_i (µm, uniform).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from refocuslib import dpm as _dpm
from refocuslib._validate import in_range, positive, positive_int
from refocuslib.imaging import Camera, image_volume, normalize_deepz, psf_stack_for_volume
from refocuslib.optics import OIL_63X, Microscope
from refocuslib.samples import Points, nuclei_volume, points_to_volume

__all__ = ["VolumeSpec", "VolumeSet", "NUCLEI_PAPER", "BEADS_PAPER", "simulate_volumes", "sample_batch",
           "RecurrentMZDataset", "KINDS"]

KINDS = ("nuclei", "beads")


@dataclass(frozen=True)
class VolumeSpec:
    """Geometry and sample of one simulated scan (lengths µm, intensities photons).

    ``kind``: 'nuclei' (worm-like nuclei, ``n_objects`` per volume, semi-axes in ``radius_um``) or 'beads'
    (``n_objects`` 50 nm beads at random 3D positions, at least ``min_separation_um`` apart laterally).
    Defaults: the CI nuclei geometry (64², |Z| = 13 at 0.5 µm, three inputs Δz = 3 µm apart).
    ``peak_photons``: expected photons at the brightest voxel of the clean scan; ``background_photons`` per
    pixel; camera: :attr:`camera` (QE 0.8, gain 1, baseline 100 ADU, ``read_noise_e``). ``norm_percentile``:
    the percentile that becomes 1 after background removal. ``microscope``: the wide-field optics (its ``mask``,
    e.g. the calibrated pupil of a psf.json, is applied); recipes may name it (``data.microscope``, see
    :func:`refocuslib.tasks.recurrent_mz.volume_spec`).
    """
    kind: str = "nuclei"
    shape_yx: Tuple[int, int] = (64, 64)
    n_planes: int = 13
    z_step_um: float = 0.5
    input_spacing_um: float = 3.0
    n_inputs: int = 3
    n_objects: int = 10
    radius_um: Tuple[float, float] = (0.7, 1.2)
    texture: float = 0.3
    min_separation_um: float = 1.0
    peak_photons: float = 1000.0
    background_photons: float = 10.0
    read_noise_e: float = 1.5
    norm_percentile: float = 99.9
    microscope: Microscope = field(default=OIL_63X, compare=False)

    def __post_init__(self):
        if not isinstance(self.microscope, Microscope):
            raise ValueError(f"microscope: expected a refocuslib.optics.Microscope, got "
                             f"{type(self.microscope).__name__} {self.microscope!r} (a recipe names one by "
                             f"data.microscope: refocuslib.tasks.recurrent_mz.volume_spec)")
        for name, conv in (("shape_yx", int), ("radius_um", float)):
            try:
                object.__setattr__(self, name, tuple(conv(v) for v in getattr(self, name)))
            except (TypeError, ValueError):
                raise ValueError(f"{name}: expected a pair of numbers, got {getattr(self, name)!r}") from None
        if self.kind not in KINDS:
            raise ValueError(f"kind: one of {KINDS}, got {self.kind!r}")
        if len(self.shape_yx) != 2:
            raise ValueError(f"shape_yx: expected (H, W), got {self.shape_yx!r}")
        for s in self.shape_yx:
            positive_int(s, "shape_yx", minimum=16)
        positive_int(self.n_planes, "n_planes", minimum=2)
        positive(self.z_step_um, "z_step_um")
        positive(self.input_spacing_um, "input_spacing_um")
        positive_int(self.n_inputs, "n_inputs")
        positive_int(self.n_objects, "n_objects", minimum=0)
        positive(self.peak_photons, "peak_photons")
        positive(self.background_photons, "background_photons", allow_zero=True)
        in_range(self.norm_percentile, "norm_percentile", 50.0, 100.0)
        self.input_indices()  # validates that the inputs fit in the stack

    @property
    def z_um(self) -> np.ndarray:
        """Axial positions of the scan planes (µm), 0 … (|Z| − 1)·step."""
        return np.arange(self.n_planes) * self.z_step_um

    @property
    def camera(self) -> Camera:
        """The camera of the scans (:class:`refocuslib.imaging.Camera`: QE 0.8, gain 1, baseline 100 ADU,
        ``read_noise_e``, ``background_photons``)."""
        return Camera(read_noise_e=self.read_noise_e, background_photons=self.background_photons)

    def input_indices(self, spacing_um: Optional[float] = None, n_inputs: Optional[int] = None) -> np.ndarray:
        """Plane indices of ``n_inputs`` inputs ``spacing_um`` (Δz) apart, centred in the stack."""
        dz = self.input_spacing_um if spacing_um is None else positive(spacing_um, "spacing_um")
        m = self.n_inputs if n_inputs is None else positive_int(n_inputs, "n_inputs")
        c = (self.n_planes - 1) / 2
        idx = np.rint(c + (np.arange(m) - (m - 1) / 2) * dz / self.z_step_um).astype(int)
        if idx.min() < 0 or idx.max() > self.n_planes - 1:
            span = (self.n_planes - 1) * self.z_step_um
            raise ValueError(f"input_spacing_um: {m} inputs {dz} µm apart span {(m - 1) * dz} µm, more than the "
                             f"{span} µm stack (n_planes·z_step_um); accepted range (0, {span / max(m - 1, 1)}]")
        return idx

    def hash_dict(self) -> dict:
        """Plain dict of the parameters (for cache keys and provenance)."""
        d = asdict(self)
        d["microscope"] = {k: v for k, v in asdict(self.microscope).items() if k != "mask"}
        mask = self.microscope.mask
        if mask is not None:  # a calibrated pupil (ZernikePupil): its coefficients in full; else its repr
            coeffs = getattr(mask, "coefficients_rad", None)
            d["microscope"]["mask"] = ({str(j): float(c) for j, c in coeffs.items()} if isinstance(coeffs, dict)
                                       else repr(mask))
        return d


#: Paper-scale geometries (Huang et al. 2021): nuclei |Z| = 91 at 0.2 µm, Δz = 6 µm; beads |Z| = 101 at 0.1 µm,
#: Δz = 3 µm; 63×/1.4 NA oil, 0.1 µm pixels, 256 × 256 fields.
NUCLEI_PAPER = VolumeSpec(kind="nuclei", shape_yx=(256, 256), n_planes=91, z_step_um=0.2, input_spacing_um=6.0,
                          n_objects=60)
BEADS_PAPER = VolumeSpec(kind="beads", shape_yx=(256, 256), n_planes=101, z_step_um=0.1, input_spacing_um=3.0,
                         n_objects=60, norm_percentile=99.99)


@dataclass
class VolumeSet:
    """Normalised noisy scans ``stacks`` (N, Z, H, W) float32 of ``spec``; ``clean`` the noise-free expected
    photons (N, Z, H, W) (kept for reference); ``beads_xyz_um`` the bead positions (x, y, z) per volume."""
    stacks: np.ndarray
    spec: VolumeSpec
    clean: Optional[np.ndarray] = None
    beads_xyz_um: Optional[list] = None

    def __len__(self) -> int:
        return len(self.stacks)

    @property
    def z_um(self) -> np.ndarray:
        return self.spec.z_um

    def input_indices(self, **kw) -> np.ndarray:
        return self.spec.input_indices(**kw)


_PSF_CACHE: Dict[tuple, torch.Tensor] = {}


def _psf_stack(spec: VolumeSpec) -> torch.Tensor:
    """PSF stack of the scan geometry, computed once per (microscope, |Z|, step, field)."""
    n_psf = 2 * max(spec.shape_yx) + 1
    import json
    # the optics as in hash_dict (a calibrated pupil by its full coefficients: its repr rounds them)
    key = (json.dumps(spec.hash_dict()["microscope"], sort_keys=True, default=str), spec.n_planes, spec.z_step_um,
           n_psf)
    if key not in _PSF_CACHE:
        if len(_PSF_CACHE) > 8:
            _PSF_CACHE.clear()
        _PSF_CACHE[key] = psf_stack_for_volume(spec.microscope, spec.n_planes, spec.z_step_um, n_psf)
    return _PSF_CACHE[key]


def _density(spec: VolumeSpec, rng: np.random.Generator):
    h, w = spec.shape_yx
    px = spec.microscope.pixel_um
    if spec.kind == "nuclei":
        vol = nuclei_volume(rng, (spec.n_planes, h, w), (spec.z_step_um, px), spec.n_objects,
                            radius_um=spec.radius_um, texture=spec.texture)
        return vol.astype(np.float64), None
    from refocuslib.samples import beads_3d
    zmax = (spec.n_planes - 1) * spec.z_step_um
    pts: Points = beads_3d(rng, spec.n_objects, (w * px, h * px), (0.0, zmax), photons=1.0,
                           min_separation_um=spec.min_separation_um, margin_um=1.0)
    return points_to_volume(pts, (spec.n_planes, h, w), (spec.z_step_um, px)), pts.xyz_um.copy()


def simulate_volumes(spec: VolumeSpec, n_volumes: int, seed: int = 0, keep_clean: bool = False) -> VolumeSet:
    """``n_volumes`` noisy, normalised wide-field scans of independent samples of ``spec`` (seeded)."""
    n_volumes = positive_int(n_volumes, "n_volumes")
    rng = np.random.default_rng(int(seed))
    psf = _psf_stack(spec)
    stacks, cleans, beads = [], [], []
    for _ in range(n_volumes):
        dens, xyz = _density(spec, rng)
        clean = image_volume(dens, spec.microscope, spec.z_step_um, psf_stack=psf).numpy()
        clean *= spec.peak_photons / max(float(clean.max()), 1e-12)
        counts = spec.camera.counts(clean, rng).numpy()
        stacks.append(normalize_deepz(counts, p_high=spec.norm_percentile))
        if keep_clean:
            cleans.append(clean.astype(np.float32))
        beads.append(xyz)
    return VolumeSet(np.stack(stacks).astype(np.float32), spec, np.stack(cleans) if keep_clean else None,
                     beads if spec.kind == "beads" else None)


def _augment(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 rotations/flips (k in 0…7) of the last two axes."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, (-2, -1))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi] drawn from ``g``."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def sample_batch(vset: VolumeSet, generator: torch.Generator, batch_size: int, crop_px: int,
                 n_inputs: Sequence[int] = (2, 3), jitter_planes: int = 0, permute: bool = True,
                 augment: bool = True) -> Dict[str, torch.Tensor]:
    """A Recurrent-MZ training batch drawn only from ``generator``.

    Returns ``images`` and ``dpms`` (B, M, crop, crop) — DPM in network units (µm/10) — ``target``
    (B, 1, crop, crop), ``z_inputs_um`` (B, M) and ``z_output_um`` (B,). M is drawn once per batch from
    ``n_inputs``; M inputs are a random subset of the default Δz grid (``spec.n_inputs`` positions), each moved
    by up to ±``jitter_planes`` planes, in random order if ``permute``.
    """
    batch_size = positive_int(batch_size, "batch_size")
    crop = positive_int(crop_px, "crop_px", minimum=8)
    h, w = vset.spec.shape_yx
    if crop > min(h, w):
        raise ValueError(f"crop_px: must be <= the field {min(h, w)} px, got {crop}")
    choices = [positive_int(m, "n_inputs") for m in np.atleast_1d(n_inputs)]
    grid = vset.input_indices()
    z = vset.z_um
    nz = len(z)
    m = choices[_randint(generator, 0, len(choices) - 1)]
    if m > len(grid):
        raise ValueError(f"n_inputs: at most spec.n_inputs = {len(grid)} inputs per sample, got {m}")
    stacks = torch.from_numpy(vset.stacks)
    imgs, dpms, tgts, zin, zout = [], [], [], [], []
    for _ in range(batch_size):
        v = _randint(generator, 0, len(vset) - 1)
        y0, x0 = _randint(generator, 0, h - crop), _randint(generator, 0, w - crop)
        t = _randint(generator, 0, nz - 1)
        pick = torch.randperm(len(grid), generator=generator)[:m]
        if not permute:
            pick = pick.sort().values
        idx = []
        for p in pick.tolist():
            j = int(grid[p]) + (_randint(generator, -jitter_planes, jitter_planes) if jitter_planes else 0)
            idx.append(min(max(j, 0), nz - 1))
        k = _randint(generator, 0, 7) if augment else 0
        vol = stacks[v, :, y0:y0 + crop, x0:x0 + crop]
        inp = _augment(vol[idx], k)
        imgs.append(inp)
        d_um = torch.tensor([z[t] - z[j] for j in idx], dtype=torch.float32)
        dpms.append(_dpm.to_network(d_um[:, None, None].expand(m, crop, crop).contiguous()))
        tgts.append(_augment(vol[t:t + 1], k))
        zin.append(torch.tensor([z[j] for j in idx], dtype=torch.float32))
        zout.append(float(z[t]))
    return {"images": torch.stack(imgs), "dpms": torch.stack(dpms), "target": torch.stack(tgts),
            "z_inputs_um": torch.stack(zin), "z_output_um": torch.tensor(zout, dtype=torch.float32)}


class RecurrentMZDataset(torch.utils.data.Dataset):
    """Map-style view of :func:`sample_batch`: item ``i`` is one sample drawn from a generator seeded with
    (``seed``, i), so the dataset is reproducible and can be shuffled by a DataLoader."""

    def __init__(self, vset: VolumeSet, length: int, crop_px: int, n_inputs: Sequence[int] = (3,),
                 jitter_planes: int = 0, seed: int = 0):
        self.vset, self.length, self.crop, self.n_inputs = vset, positive_int(length, "length"), crop_px, n_inputs
        self.jitter, self.seed = jitter_planes, int(seed)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        b = sample_batch(self.vset, g, 1, self.crop, self.n_inputs, self.jitter)
        return {k: v[0] for k, v in b.items()}
