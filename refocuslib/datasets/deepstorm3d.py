"""DeepSTORM3D training data, simulated on the fly (Nehme et al. 2020, Methods "Training set design").

Each frame holds a random number of emitters uniform in the field, in z over the axial range and in brightness
over a photon range; per frame a background level, optionally a smooth non-uniform background (the telomere
data) and a Gaussian blur width (model mismatch) are drawn too. Everything is drawn from one
``torch.Generator`` so a (seed, step) pair reproduces a batch exactly (:func:`refocuslib.train.fit`).
The target of a frame is its occupancy grid on a :class:`~refocuslib.models.deepstorm3d.VoxelGrid`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch.utils.data import Dataset

from refocuslib._validate import in_range, positive, positive_int
from refocuslib.models.deepstorm3d import PhysicalLayer, VoxelGrid, _pair

Tensor = torch.Tensor

__all__ = ["EmitterSampler", "SimulatedFrames", "emitters_for_density", "PAPER_FIELD_UM"]

#: The paper's simulated field of view (Fig. 2): 13 × 13 µm; densities are emitters per such field.
PAPER_FIELD_UM = 13.0


def emitters_for_density(density: float, fov_um: Tuple[float, float]) -> int:
    """Emitters in a field of ``fov_um`` (x, y) at the density of ``density`` emitters per 13 × 13 µm (Fig. 2)."""
    d = positive(density, "density", allow_zero=True)
    area = positive(fov_um[0], "fov_um") * positive(fov_um[1], "fov_um")
    return max(0, int(round(d * area / PAPER_FIELD_UM ** 2)))


@dataclass(frozen=True)
class EmitterSampler:
    """Random frames' content. ``shape_yx`` camera pixels of ``pixel_um``; ``n_emitters`` (low, high)
    inclusive; ``z_range_um``; ``photons`` (low, high) uniform signal photons per emitter (the paper's Fig. 2
    test: 30 000); ``background`` (low, high) photons per pixel (Fig. 2: 150); ``nonuniform`` the largest
    relative amplitude of a smooth background variation (a tilt plus a broad bump; 0 = flat);
    ``blur_sigma_px`` (low, high) Gaussian blur of the signal; ``margin_um`` keeps emitters off the edges."""
    shape_yx: Tuple[int, int]
    pixel_um: float
    z_range_um: Tuple[float, float]
    n_emitters: Tuple[int, int] = (1, 20)
    photons: Tuple[float, float] = (30000.0, 30000.0)
    background: Tuple[float, float] = (150.0, 150.0)
    nonuniform: float = 0.0
    blur_sigma_px: Tuple[float, float] = (0.0, 0.0)
    margin_um: float = 0.0

    def __post_init__(self):
        positive_int(self.shape_yx[0], "shape_yx")
        positive_int(self.shape_yx[1], "shape_yx")
        positive(self.pixel_um, "pixel_um")
        if not float(self.z_range_um[1]) >= float(self.z_range_um[0]):
            raise ValueError(f"z_range_um: expected (low, high) with low <= high, got {self.z_range_um!r}")
        lo, hi = self.n_emitters
        if positive_int(lo, "n_emitters", minimum=0) > positive_int(hi, "n_emitters", minimum=0):
            raise ValueError(f"n_emitters: expected (low, high) with low <= high, got {self.n_emitters!r}")
        _pair(self.photons, "photons", allow_zero=False)
        _pair(self.background, "background")
        _pair(self.blur_sigma_px, "blur_sigma_px")
        in_range(self.nonuniform, "nonuniform", 0.0, 1.0)
        m = positive(self.margin_um, "margin_um", allow_zero=True)
        if 2 * m >= min(self.fov_um):
            raise ValueError(f"margin_um: {m} leaves no room in a {self.fov_um} µm field")

    @property
    def fov_um(self) -> Tuple[float, float]:
        """(width, height) µm."""
        return (self.shape_yx[1] * self.pixel_um, self.shape_yx[0] * self.pixel_um)

    def replace(self, **changes) -> "EmitterSampler":
        import dataclasses
        return dataclasses.replace(self, **changes)

    def _uniform(self, g: torch.Generator, shape, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)

    def sample(self, generator: torch.Generator, batch_size: int) -> Dict[str, Tensor]:
        """A batch: ``xyz_um`` (B, N, 3) float64, ``photons`` (B, N) (0 pads frames with fewer emitters),
        ``background`` (B,), ``background_field`` (B, 1, H, W) (mean 1), ``blur_sigma_px`` (B,)."""
        g = generator
        b = positive_int(batch_size, "batch_size")
        lo, hi = int(self.n_emitters[0]), int(self.n_emitters[1])
        counts = torch.randint(lo, hi + 1, (b,), generator=g)
        n = max(1, int(counts.max()))
        (w, h), m = self.fov_um, float(self.margin_um)
        z0, z1 = float(self.z_range_um[0]), float(self.z_range_um[1])
        xyz = torch.stack([self._uniform(g, (b, n), m, w - m), self._uniform(g, (b, n), m, h - m),
                           self._uniform(g, (b, n), z0, z1)], -1)
        ph = self._uniform(g, (b, n), *_pair(self.photons, "photons"))
        ph = torch.where(torch.arange(n)[None] < counts[:, None], ph, torch.zeros_like(ph))
        bg = self._uniform(g, (b,), *_pair(self.background, "background")).float()
        blur = self._uniform(g, (b,), *_pair(self.blur_sigma_px, "blur_sigma_px")).float()
        field = self._background_field(g, b)
        return {"xyz_um": xyz, "photons": ph, "background": bg, "background_field": field, "blur_sigma_px": blur}

    def _background_field(self, g: torch.Generator, b: int) -> Tensor:
        """Smooth multiplicative background (mean ≈ 1): a random tilt plus one broad Gaussian bump."""
        hh, ww = self.shape_yx
        amp = self._uniform(g, (b, 1, 1), 0.0, float(self.nonuniform)).float()
        yy = torch.linspace(-1, 1, hh)[None, :, None]
        xx = torch.linspace(-1, 1, ww)[None, None, :]
        ang = self._uniform(g, (b, 1, 1), 0.0, 2 * math.pi).float()
        tilt = torch.cos(ang) * xx + torch.sin(ang) * yy
        cy, cx = (self._uniform(g, (2, b, 1, 1), -1.0, 1.0).float())
        sig = self._uniform(g, (b, 1, 1), 0.4, 1.0).float()
        bump = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig ** 2))
        shape = 0.5 * tilt + bump - bump.mean((-2, -1), keepdim=True)
        shape = shape / shape.abs().amax((-2, -1), keepdim=True).clamp_min(1e-6)
        return (1.0 + amp * shape).clamp_min(0.05)[:, None]


class SimulatedFrames(Dataset):
    """A fixed-length, on-the-fly dataset: item ``i`` is drawn from a generator seeded by (``seed``, i).

    Returns ``{"frame": (1, H, W) camera counts, "target": (D, U·H, U·W) occupancy grid, "xyz_um": (N, 3),
    "photons": (N,)}`` (N varies: use ``batch_size=1`` or :meth:`batch`).
    """

    def __init__(self, physics: PhysicalLayer, grid: VoxelGrid, sampler: EmitterSampler, n_frames: int,
                 seed: int = 0, noise: bool = True):
        if tuple(grid.shape_yx) != tuple(physics.shape_yx) or tuple(sampler.shape_yx) != tuple(physics.shape_yx):
            raise ValueError(f"grid/sampler: shape_yx must equal the physics layer's {physics.shape_yx}, got "
                             f"{grid.shape_yx} and {sampler.shape_yx}")
        self.physics, self.grid, self.sampler = physics, grid, sampler
        self.n_frames = positive_int(n_frames, "n_frames")
        self.seed = int(seed)
        self.noise = bool(noise)

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        if not 0 <= int(i) < self.n_frames:
            raise IndexError(f"i: must be in [0, {self.n_frames - 1}], got {i}")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        b = self.batch(g, 1)
        keep = b["photons"][0] > 0
        return {"frame": b["frame"][0], "target": b["target"][0], "xyz_um": b["xyz_um"][0][keep],
                "photons": b["photons"][0][keep]}

    @torch.no_grad()
    def batch(self, generator: torch.Generator, batch_size: int) -> Dict[str, Tensor]:
        """Sample ``batch_size`` frames: the sampler's draws plus ``frame`` (B, 1, H, W) and ``target``."""
        b = self.sampler.sample(generator, batch_size)
        b["frame"] = self.physics(b["xyz_um"], b["photons"], b["background"], b["background_field"],
                                  b["blur_sigma_px"], noise=self.noise, generator=generator).cpu()
        b["target"] = self.grid.to_grid(b["xyz_um"], b["photons"])
        return b
