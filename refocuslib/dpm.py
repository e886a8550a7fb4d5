"""Digital propagation matrices (DPMs), Deep-Z (Wu et al., Nat. Methods 16, 1323-1331, 2019).

A DPM is an ``(H, W)`` map appended to the input image as a second channel; each entry is the axial
distance in µm from the input (acquisition) plane to the target surface at that pixel. A uniform DPM
refocuses to a plane, a non-uniform one to a tilted or curved surface (Deep-Z Figs. 3-4, S7).

Lateral coordinates: ``x`` runs along columns, ``y`` along rows (downwards), both in µm measured from
the image centre ``((W-1)/2, (H-1)/2)`` pixels. Builders return float64 arrays in µm; the network
receives ``DPM/10`` (:func:`to_network`).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ._validate import as_image_array, in_range, positive, positive_int

__all__ = ["uniform", "plane", "cylinder", "sinusoid", "from_height_map", "to_network", "from_network",
           "check_trained_range", "DPMRangeWarning", "NETWORK_SCALE_UM", "network_scale"]

#: Deep-Z feeds the DPM to the network divided by this value (µm).
NETWORK_SCALE_UM = 10.0


class network_scale:
    """Context manager: within it :func:`to_network` divides by ``scale_um`` instead of
    :data:`NETWORK_SCALE_UM` (10 µm, Deep-Z Methods) — for studies of the DPM conditioning scale only; a model
    trained inside it must be applied inside it too."""

    def __init__(self, scale_um: float):
        self.scale_um = positive(scale_um, "scale_um")

    def __enter__(self):
        global NETWORK_SCALE_UM
        self._saved, NETWORK_SCALE_UM = NETWORK_SCALE_UM, float(self.scale_um)
        return self

    def __exit__(self, *exc):
        global NETWORK_SCALE_UM
        NETWORK_SCALE_UM = self._saved
        return False


class DPMRangeWarning(UserWarning):
    """A DPM asks for refocusing distances outside the range the network was trained on."""


def _shape(shape) -> tuple[int, int]:
    try:
        ok = len(shape) == 2
    except TypeError:
        ok = False
    if ok:
        try:
            return (positive_int(shape[0], "shape[0]"), positive_int(shape[1], "shape[1]"))
        except ValueError:
            pass
    raise ValueError(f"shape: expected a 2-tuple of positive ints (H, W) with H, W >= 1, got {shape!r}")


def _real(value, name: str) -> float:
    return in_range(value, name, -math.inf, math.inf)


def _centred_xy(shape, pixel_um):
    """x (columns) and y (rows) coordinates in µm from the image centre, each shaped (H, W)."""
    h, w = shape
    y = (np.arange(h) - (h - 1) / 2.0) * pixel_um
    x = (np.arange(w) - (w - 1) / 2.0) * pixel_um
    return np.meshgrid(x, y, indexing="xy")


def uniform(shape, dz_um: float) -> np.ndarray:
    """Uniform DPM: every pixel refocused by ``dz_um`` µm (Deep-Z refocusing to a plane)."""
    shape = _shape(shape)
    return np.full(shape, _real(dz_um, "dz_um"), dtype=np.float64)


def plane(shape, pixel_um: float, tilt_deg: float, azimuth_deg: float = 0.0, offset_um: float = 0.0) -> np.ndarray:
    """Tilted-plane DPM (Deep-Z Fig. 4): ``z = offset + tan(tilt) * (x cos(phi) + y sin(phi))``.

    ``x, y`` in µm from the image centre; ``azimuth_deg`` (phi) is the in-plane direction of steepest
    ascent measured from +x towards +y (rows). ``tilt_deg`` must lie in (-90, 90). Along the azimuth the
    DPM changes by ``tan(tilt) * pixel_um`` per pixel.
    """
    shape = _shape(shape)
    pixel_um = positive(pixel_um, "pixel_um")
    tilt = in_range(tilt_deg, "tilt_deg", -90.0, 90.0, lo_open=True, hi_open=True)
    phi = math.radians(_real(azimuth_deg, "azimuth_deg"))
    offset = _real(offset_um, "offset_um")
    x, y = _centred_xy(shape, pixel_um)
    return offset + math.tan(math.radians(tilt)) * (x * math.cos(phi) + y * math.sin(phi))


def cylinder(shape, pixel_um: float, diameter_um: float, axis_deg: float = 0.0, offset_um: float = 0.0,
             convex: bool = True) -> np.ndarray:
    """DPM of a cylindrical surface of diameter ``diameter_um`` (Deep-Z, refocusing onto curved surfaces).

    The cylinder axis lies in the image plane through the image centre at ``axis_deg`` from +x (towards
    +y). With ``d`` the in-plane distance of a pixel from the axis and ``R = diameter/2``, the surface is
    ``z = offset + s * (sqrt(R**2 - d**2) - R)``, ``s = +1`` for ``convex=True`` (apex at ``offset_um`` on
    the axis, the surface falling to ``offset - R`` at the rim) and ``s = -1`` for a concave trough
    (rising to ``offset + R``). Outside the footprint (``d > R``) the height is clipped to the rim height
    ``offset -/+ R``. The peak-to-valley depth over the image is ``R - sqrt(R**2 - min(d_max, R)**2)``.
    """
    shape = _shape(shape)
    pixel_um = positive(pixel_um, "pixel_um")
    r = positive(diameter_um, "diameter_um") / 2.0
    theta = math.radians(_real(axis_deg, "axis_deg"))
    offset = _real(offset_um, "offset_um")
    if not isinstance(convex, (bool, np.bool_)):
        raise ValueError(f"convex: expected True or False, got {convex!r}")
    x, y = _centred_xy(shape, pixel_um)
    d = np.abs(-x * math.sin(theta) + y * math.cos(theta))
    sag = np.sqrt(np.clip(r * r - d * d, 0.0, None)) - r  # 0 on the axis, -R at and beyond the rim
    return offset + (sag if convex else -sag)


def sinusoid(shape, period_px: float, z_min_um: float, z_max_um: float, axis: str = "x",
             phase: float = 0.0) -> np.ndarray:
    """Sinusoidal DPM (Deep-Z Fig. S7: periods swept 1…256 px over an 8 µm span).

    ``z = (z_min + z_max)/2 + (z_max - z_min)/2 * cos(2*pi*k/period_px + phase)`` with ``k`` the pixel
    index along ``axis`` (``'x'`` = columns, ``'y'`` = rows); ``phase`` in radians, 0 puts a maximum at
    ``k = 0``. Cosine (rather than sine) keeps the full range at the Nyquist period of 2 px; a 1 px
    period is constant (``z_max`` for phase 0), as any pattern sampled at its own period.
    """
    h, w = _shape(shape)
    period = in_range(period_px, "period_px", 1.0, math.inf)
    z_min = _real(z_min_um, "z_min_um")
    z_max = _real(z_max_um, "z_max_um")
    if z_min > z_max:
        raise ValueError(f"z_min_um/z_max_um: need z_min_um <= z_max_um, got {z_min} > {z_max}")
    if axis not in ("x", "y"):
        raise ValueError(f"axis: expected 'x' (columns) or 'y' (rows), got {axis!r}")
    phase = _real(phase, "phase")
    n = w if axis == "x" else h
    profile = (z_min + z_max) / 2.0 + (z_max - z_min) / 2.0 * np.cos(2 * np.pi * np.arange(n) / period + phase)
    profile = np.clip(profile, z_min, z_max)
    if axis == "x":
        return np.broadcast_to(profile[None, :], (h, w)).copy()
    return np.broadcast_to(profile[:, None], (h, w)).copy()


def from_height_map(height_um, reference_um: float = 0.0) -> np.ndarray:
    """DPM from a 2D surface height map in µm: ``height_um - reference_um`` (the input plane height)."""
    h = as_image_array(height_um, "height_um", ndim=2)
    return h.astype(np.float64) - _real(reference_um, "reference_um")


# ---------------------------------------------------------------------------------------- network scaling
def _check_tensor_or_array(x, name: str):
    """Return (is_torch, value) after checking 2–4D, real and finite."""
    try:
        import torch
        if isinstance(x, torch.Tensor):
            if x.is_complex() or x.dtype == torch.bool:
                raise ValueError(f"{name}: unsupported dtype {x.dtype}; expected a real numeric tensor")
            if x.ndim not in (2, 3, 4) or x.numel() == 0:
                raise ValueError(f"{name}: expected a non-empty 2D (H, W), 3D or 4D (N, 1, H, W) tensor, "
                                 f"got shape {tuple(x.shape)}")
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name}: contains NaN or inf values")
            return True, x
    except ImportError:  # pragma: no cover
        pass
    return False, as_image_array(x, name, ndim=(2, 3, 4))


def to_network(dpm_um):
    """Scale a DPM in µm to the network input, ``DPM / 10`` as float32 (Deep-Z, Methods).

    Accepts NumPy arrays (returns float32 NumPy) or torch tensors (returns a float32 tensor on the same
    device); 2D ``(H, W)`` or batched 3D/4D.
    """
    is_torch, x = _check_tensor_or_array(dpm_um, "dpm_um")
    if is_torch:
        import torch
        return x.to(torch.float32) / NETWORK_SCALE_UM
    return (x.astype(np.float64) / NETWORK_SCALE_UM).astype(np.float32)


def from_network(x):
    """Inverse of :func:`to_network`: ``x * 10`` µm (float64 NumPy, or a tensor of the input dtype)."""
    is_torch, v = _check_tensor_or_array(x, "x")
    if is_torch:
        return v * NETWORK_SCALE_UM
    return v.astype(np.float64) * NETWORK_SCALE_UM


def check_trained_range(dpm_um, trained_range_um) -> float:
    """Warn with :class:`DPMRangeWarning` if any DPM entry lies outside ``trained_range_um = (lo, hi)``.

    Deep-Z (Wu et al. 2019) reports that refocusing beyond the axial range covered in training fails
    (blurred or hallucinated output), so such DPMs should not be trusted. Returns the fraction of
    entries outside ``[lo, hi]`` (0.0 if none). Accepts NumPy arrays and torch tensors.
    """
    try:
        lo, hi = trained_range_um
    except (TypeError, ValueError):
        raise ValueError(f"trained_range_um: expected a (lo, hi) tuple in µm, got {trained_range_um!r}") from None
    lo = _real(lo, "trained_range_um[0]")
    hi = _real(hi, "trained_range_um[1]")
    if lo > hi:
        raise ValueError(f"trained_range_um: need lo <= hi, got ({lo}, {hi})")
    is_torch, d = _check_tensor_or_array(dpm_um, "dpm_um")
    if is_torch:
        d = d.detach().cpu().double().numpy()
    outside = (d < lo) | (d > hi)
    frac = float(np.mean(outside))
    if frac > 0:
        warnings.warn(
            f"DPM spans [{float(d.min()):.4g}, {float(d.max()):.4g}] µm but the network was trained on "
            f"[{lo:.4g}, {hi:.4g}] µm ({frac:.1%} of pixels outside); Deep-Z-type networks are known to "
            f"fail (blur or hallucinate) when refocusing beyond their trained axial range",
            DPMRangeWarning, stacklevel=2)
    return frac
