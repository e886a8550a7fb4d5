"""Phantoms: point emitters (beads, single molecules) and density volumes (nuclei, filaments).

Lengths in µm; positions are (x, y, z) with x, y measured from the top-left corner of the field of view and z
the axial position (µm, same convention as :func:`refocuslib.optics.widefield_psf`). Everything is drawn from a
``numpy.random.Generator`` so that a seed reproduces a sample exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from refocuslib._validate import as_image_array, in_range, positive, positive_int


@dataclass
class Points:
    """Point emitters: ``xyz_um`` (N, 3) as (x, y, z) in µm and ``photons`` (N,) emitted photons each."""
    xyz_um: np.ndarray
    photons: np.ndarray

    def __post_init__(self):
        self.xyz_um = np.asarray(self.xyz_um, dtype=np.float64).reshape(-1, 3)
        self.photons = np.broadcast_to(np.asarray(self.photons, dtype=np.float64), (len(self.xyz_um),)).copy()
        if not np.all(np.isfinite(self.xyz_um)) or not np.all(np.isfinite(self.photons)):
            raise ValueError("xyz_um/photons: contain NaN or inf")
        if np.any(self.photons < 0):
            raise ValueError("photons: must be >= 0")

    def __len__(self) -> int:
        return len(self.xyz_um)

    def xyz_nm(self) -> np.ndarray:
        return self.xyz_um * 1000.0


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _lateral_positions(rng, n: int, fov_um: Tuple[float, float], margin_um: float, min_separation_um: float,
                       max_tries: int = 50) -> np.ndarray:
    """``n`` (x, y) positions uniform in the field, at least ``min_separation_um`` apart (rejection)."""
    w, h = fov_um
    if 2 * margin_um >= min(w, h):
        raise ValueError(f"margin_um: {margin_um} leaves no room in a {w}×{h} µm field")
    pts = []
    for _ in range(n):
        for _ in range(max_tries):
            p = np.array([rng.uniform(margin_um, w - margin_um), rng.uniform(margin_um, h - margin_um)])
            if min_separation_um <= 0 or not pts or np.min(np.hypot(*(np.array(pts) - p).T)) >= min_separation_um:
                pts.append(p)
                break
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def beads_on_surface(rng, n_beads: int, fov_um: Tuple[float, float], height_map_um: Optional[np.ndarray] = None,
                     pixel_um: Optional[float] = None, z_um: float = 0.0, photons: float = 2000.0,
                     photons_spread: float = 0.2, min_separation_um: float = 2.0, margin_um: float = 1.0) -> Points:
    """Beads spread over a surface: flat at ``z_um``, or on ``height_map_um`` (H, W) sampled with ``pixel_um``.

    The height map is the same object as a DPM (:mod:`refocuslib.dpm`: ``plane`` for a tilted slide,
    ``cylinder`` for beads on a cylinder) so that samples and refocusing surfaces share one definition.
    Brightness varies by ±``photons_spread`` (uniform) around ``photons``.
    """
    rng = _rng(rng)
    n_beads = positive_int(n_beads, "n_beads", minimum=0)
    fov = (positive(fov_um[0], "fov_um"), positive(fov_um[1], "fov_um"))
    xy = _lateral_positions(rng, n_beads, fov, positive(margin_um, "margin_um", allow_zero=True),
                            positive(min_separation_um, "min_separation_um", allow_zero=True))
    if height_map_um is None:
        z = np.full(len(xy), float(z_um))
    else:
        hm = as_image_array(height_map_um, "height_map_um", ndim=2)
        px = positive(pixel_um, "pixel_um")
        # pixel centres at (i + 0.5)·pixel
        z = ndimage.map_coordinates(hm.astype(np.float64), [xy[:, 1] / px - 0.5, xy[:, 0] / px - 0.5],
                                    order=1, mode="nearest") + float(z_um)
    spread = in_range(photons_spread, "photons_spread", 0.0, 1.0)
    ph = positive(photons, "photons") * rng.uniform(1 - spread, 1 + spread, len(xy))
    return Points(np.column_stack([xy, z]), ph)


def beads_3d(rng, n_beads: int, fov_um: Tuple[float, float], z_range_um: Tuple[float, float],
             photons: float = 2000.0, photons_spread: float = 0.2, min_separation_um: float = 1.0,
             margin_um: float = 1.0) -> Points:
    """Beads uniformly distributed in a volume (x, y in the field, z in ``z_range_um``)."""
    rng = _rng(rng)
    z0, z1 = float(z_range_um[0]), float(z_range_um[1])
    if not z0 <= z1:
        raise ValueError(f"z_range_um: expected (low, high) with low <= high, got {z_range_um}")
    pts = beads_on_surface(rng, n_beads, fov_um, photons=photons, photons_spread=photons_spread,
                           min_separation_um=min_separation_um, margin_um=margin_um)
    pts.xyz_um[:, 2] = rng.uniform(z0, z1, len(pts))
    return pts


def single_molecules(rng, n_emitters: int, fov_um: Tuple[float, float], z_range_um: Tuple[float, float],
                     photons_mean: float = 30000.0, photons_std: float = 0.0, margin_um: float = 0.0) -> Points:
    """Dense single-molecule emitters (DeepSTORM3D): uniform in x, y, z, photons ~ N(mean, std) clipped ≥ 0."""
    rng = _rng(rng)
    n = positive_int(n_emitters, "n_emitters", minimum=0)
    w, h = positive(fov_um[0], "fov_um"), positive(fov_um[1], "fov_um")
    z0, z1 = float(z_range_um[0]), float(z_range_um[1])
    if not z0 <= z1:
        raise ValueError(f"z_range_um: expected (low, high) with low <= high, got {z_range_um}")
    m = positive(margin_um, "margin_um", allow_zero=True)
    xyz = np.column_stack([rng.uniform(m, w - m, n), rng.uniform(m, h - m, n), rng.uniform(z0, z1, n)])
    ph = np.clip(rng.normal(positive(photons_mean, "photons_mean"),
                            positive(photons_std, "photons_std", allow_zero=True), n), 0, None)
    return Points(xyz, ph)


def nuclei_volume(rng, shape_zyx: Sequence[int], voxel_um: Tuple[float, float], n_nuclei: int,
                  radius_um: Tuple[float, float] = (1.5, 3.0), texture: float = 0.3,
                  brightness_spread: float = 0.3, return_centres: bool = False):
    """Density volume (z, y, x) of ellipsoidal, textured cell nuclei (Deep-Z training samples, worm nuclei).

    ``voxel_um`` = (z step, lateral pixel). Each nucleus is a soft-edged ellipsoid with random semi-axes in
    ``radius_um``, brightness 1 ± spread, multiplied by smooth chromatin-like texture of relative depth
    ``texture``. Returns the volume (float32, max ≈ 1) and, with ``return_centres``, the centres (N, 3) in
    voxel units (z, y, x).
    """
    rng = _rng(rng)
    shape = tuple(positive_int(s, "shape_zyx") for s in shape_zyx)
    if len(shape) != 3:
        raise ValueError(f"shape_zyx: expected 3 sizes (z, y, x), got {shape_zyx}")
    dz, dxy = positive(voxel_um[0], "voxel_um"), positive(voxel_um[1], "voxel_um")
    n = positive_int(n_nuclei, "n_nuclei", minimum=0)
    r0, r1 = positive(radius_um[0], "radius_um"), positive(radius_um[1], "radius_um")
    vol = np.zeros(shape, dtype=np.float32)
    centres = np.column_stack([rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n),
                               rng.uniform(0, shape[2], n)]) if n else np.zeros((0, 3))
    zz, yy, xx = [np.arange(s, dtype=np.float32) for s in shape]
    for c in centres:
        semi = rng.uniform(r0, r1, 3)
        rz, ry, rx = semi[0] / dz, semi[1] / dxy, semi[2] / dxy
        sl = tuple(slice(max(0, int(ci - 1.3 * r)), min(s, int(ci + 1.3 * r) + 2))
                   for ci, r, s in zip(c, (rz, ry, rx), shape))
        d2 = (((zz[sl[0]] - c[0]) / rz)[:, None, None] ** 2 + ((yy[sl[1]] - c[1]) / ry)[None, :, None] ** 2
              + ((xx[sl[2]] - c[2]) / rx)[None, None, :] ** 2)
        body = 1.0 / (1.0 + np.exp((np.sqrt(d2) - 1.0) / 0.08))  # soft edge, ~8 % of the radius
        vol[sl] = np.maximum(vol[sl], body * rng.uniform(1 - brightness_spread, 1 + brightness_spread))
    if texture > 0 and n:
        noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                                        sigma=(0.4 / dz, 0.4 / dxy, 0.4 / dxy))
        noise /= noise.std() + 1e-12
        vol *= np.clip(1 + in_range(texture, "texture", 0, 1) * noise, 0, None)
    vol /= max(float(vol.max()), 1e-12)
    return (vol, centres) if return_centres else vol


def filaments_volume(rng, shape_zyx: Sequence[int], voxel_um: Tuple[float, float], n_filaments: int,
                     persistence_um: float = 5.0, width_um: float = 0.025, step_um: float = 0.05) -> np.ndarray:
    """Density volume (z, y, x) of worm-like-chain filaments (microtubules, 25 nm wide by default).

    Each filament starts at a random point with a random direction and takes ``step_um`` steps whose direction
    diffuses with persistence length ``persistence_um``, until it leaves the volume. Points are splatted into
    voxels with trilinear weights (integrated density per voxel, in units of filament length in µm).
    """
    rng = _rng(rng)
    shape = tuple(positive_int(s, "shape_zyx") for s in shape_zyx)
    dz, dxy = positive(voxel_um[0], "voxel_um"), positive(voxel_um[1], "voxel_um")
    extent = np.array([shape[0] * dz, shape[1] * dxy, shape[2] * dxy])
    step = positive(step_um, "step_um")
    lp = positive(persistence_um, "persistence_um")
    vol = np.zeros(shape, dtype=np.float64)
    for _ in range(positive_int(n_filaments, "n_filaments", minimum=0)):
        p = rng.uniform(0, 1, 3) * extent
        d = rng.standard_normal(3)
        d[0] *= 0.3  # mostly lateral, as filaments lying in a cell
        d /= np.linalg.norm(d)
        pts = []
        for _ in range(int(4 * extent.max() / step)):
            pts.append(p.copy())
            d = d + np.sqrt(2 * step / lp) * rng.standard_normal(3) / np.sqrt(3)
            d /= np.linalg.norm(d)
            p = p + step * d
            if np.any(p < 0) or np.any(p >= extent):
                break
        pts = np.array(pts) / np.array([dz, dxy, dxy])  # voxel units (z, y, x)
        splat_points(vol, pts, np.full(len(pts), step))
    if width_um > 0:
        vol = ndimage.gaussian_filter(vol, sigma=(width_um / 2.355 / dz, width_um / 2.355 / dxy,
                                                  width_um / 2.355 / dxy))
    return vol.astype(np.float32)


def splat_points(volume: np.ndarray, positions_vox: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Add point masses at fractional voxel positions (N, ndim) to ``volume`` with multilinear weights."""
    positions_vox = np.asarray(positions_vox, dtype=np.float64)
    if positions_vox.ndim != 2 or positions_vox.shape[1] != volume.ndim:
        raise ValueError(f"positions_vox: expected shape (N, {volume.ndim}), got {positions_vox.shape}")
    base = np.floor(positions_vox).astype(int)
    frac = positions_vox - base
    for corner in np.ndindex(*(2,) * volume.ndim):
        idx = base + np.array(corner)
        w = np.prod(np.where(np.array(corner), frac, 1 - frac), axis=1) * weights
        ok = np.all((idx >= 0) & (idx < np.array(volume.shape)), axis=1)
        np.add.at(volume, tuple(idx[ok].T), w[ok])
    return volume


def points_to_volume(points: Points, shape_zyx: Sequence[int], voxel_um: Tuple[float, float],
                     z0_um: float = 0.0) -> np.ndarray:
    """Photon density volume (z, y, x) from points: voxel (k, i, j) has centre (z0 + k·dz, (i+½)·dxy, (j+½)·dxy)."""
    dz, dxy = positive(voxel_um[0], "voxel_um"), positive(voxel_um[1], "voxel_um")
    vol = np.zeros(tuple(int(s) for s in shape_zyx), dtype=np.float64)
    pos = np.column_stack([(points.xyz_um[:, 2] - z0_um) / dz, points.xyz_um[:, 1] / dxy - 0.5,
                           points.xyz_um[:, 0] / dxy - 0.5])
    return splat_points(vol, pos, points.photons)
