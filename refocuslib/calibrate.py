"""PSF calibration from a measured bead z-stack: gradient-based phase retrieval of the pupil.

The model is the scalar pupil of :mod:`refocuslib.optics` with a phase Φ(ρ, φ) = Σ_j c_j·Z_j(ρ, φ) over
Noll-indexed, Noll-normalised Zernike modes (Noll 1976: rms 1 over the unit pupil, so the rms wavefront
error is sqrt(Σ c_j²) rad). Plane k of the stack images the bead at z_k = s·(k − k₀)·Δz + z₀ from focus
(the convention of :func:`refocuslib.optics.widefield_psf`: z > 0 away from the objective; a stack
recorded the other way round flips the sign of the even modes, e.g. spherical: pass ``stack[::-1]``).
A bead of finite diameter is modelled as a uniform sphere (or a spherical shell: a surface-stained bead),
model = a·(PSF ⊛ bead) + b.

Fitted: the Zernike coefficients ``noll`` (default 5–15: piston, tilts and defocus are the bead's
position), the bead's position (x₀, y₀, z₀) and, optionally, the z-step scale s (``fit_z_step``); the
amplitude a and background b are solved in closed form (linear least squares) at every step. The loss is
the squared error over the cropped stack, minimised with L-BFGS through the differentiable optics.
The residual is reported as ‖model − data‖ / ‖data − b‖ (relative rms), beside the same for the
unaberrated pupil fitted the same way (position only), so the gain of the aberrations is visible.

Outputs: :class:`Calibration` (``.microscope()`` gives a :class:`~refocuslib.optics.Microscope` whose
``mask`` is the fitted pupil), :func:`save_psf_json` / :func:`load_psf_json` (``psf.json``), and
:func:`plot_calibration` (measured vs model x–y and x–z with the residual, and the fitted aberrations).
:func:`microscope_from_spec` turns a preset, a psf.json path or a dict of optics into a Microscope.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from refocuslib._validate import as_image_array, in_range, positive, positive_int
from refocuslib.optics import Microscope, make_pupil_grid, psf_from_grid, zernike

__all__ = ["noll_to_nm", "noll_zernike", "NOLL_NAMES", "ZernikePupil", "Calibration", "calibrate",
           "save_psf_json", "load_psf_json", "microscope_from_spec", "resolve_microscope", "plot_calibration",
           "PSF_FORMAT"]

PSF_FORMAT = "refocuslib.psf/1"
#: ``fit_z_step`` bounds the z-step scale to [1/Z_SCALE_MAX, Z_SCALE_MAX].
Z_SCALE_MAX = 1.3
#: the largest field padding :func:`calibrate` uses (cost grows as pad²); the axial window shrinks to fit.
MAX_PAD = 3.0

#: names of the first Noll modes.
NOLL_NAMES = {1: "piston", 2: "tilt x", 3: "tilt y", 4: "defocus", 5: "oblique astigmatism",
              6: "vertical astigmatism", 7: "vertical coma", 8: "horizontal coma", 9: "vertical trefoil",
              10: "oblique trefoil", 11: "primary spherical", 12: "vertical secondary astigmatism",
              13: "oblique secondary astigmatism", 14: "vertical quadrafoil", 15: "oblique quadrafoil",
              22: "secondary spherical"}


def noll_to_nm(j: int) -> Tuple[int, int]:
    """Noll index j ≥ 1 → (n, m) (Noll 1976): even j carry cos(|m|φ) (m > 0), odd j sin(|m|φ) (m < 0)."""
    j = positive_int(j, "j")
    n = int((math.sqrt(8 * j - 7) - 1) // 2)
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    while n * (n + 1) // 2 >= j:
        n -= 1
    k = j - n * (n + 1) // 2  # 1 … n+1: position within the radial order n
    # |m| takes the values of parity n in increasing order, each twice except m = 0
    ms = sorted({abs(m) for m in range(-n, n + 1, 2)})
    seq = []
    for a in ms:
        seq += [a] if a == 0 else [a, a]
    ma = seq[k - 1]
    if ma == 0:
        return n, 0
    return n, (ma if j % 2 == 0 else -ma)


def noll_zernike(j: int, rho, phi):
    """Noll-normalised Zernike mode Z_j(ρ, φ) (rms 1 over the unit disk), zero for ρ > 1."""
    n, m = noll_to_nm(j)
    norm = math.sqrt(n + 1) if m == 0 else math.sqrt(2 * (n + 1))
    return norm * zernike(n, m, rho, phi)


class ZernikePupil:
    """Pupil phase Φ(ρ, φ) = Σ_j c_j·Z_j (Noll index j → coefficient c_j in rad, Noll-normalised): a
    callable ``mask(rho, phi)`` for :class:`~refocuslib.optics.Microscope` (plain data, picklable)."""

    def __init__(self, coefficients_rad: Dict[int, float]):
        if not isinstance(coefficients_rad, dict) or not coefficients_rad:
            raise ValueError("coefficients_rad: expected a non-empty dict {noll index: rad}")
        out = {}
        for j, c in coefficients_rad.items():
            jj = positive_int(int(j) if isinstance(j, str) and j.isdigit() else j, "coefficients_rad key")
            v = float(c)
            if not math.isfinite(v):
                raise ValueError(f"coefficients_rad: coefficient of Noll {jj} must be finite, got {c!r}")
            out[jj] = v
        self.coefficients_rad = dict(sorted(out.items()))

    def __call__(self, rho, phi):
        phase = torch.zeros_like(rho)
        for j, c in self.coefficients_rad.items():
            if c:
                phase = phase + c * noll_zernike(j, rho, phi)
        return phase

    @property
    def rms_rad(self) -> float:
        """rms wavefront error over the pupil (rad), piston excluded."""
        return float(math.sqrt(sum(c * c for j, c in self.coefficients_rad.items() if j > 1)))

    def __repr__(self):
        return "ZernikePupil({" + ", ".join(f"{j}: {c:.3g}" for j, c in self.coefficients_rad.items()) + "})"


# -------------------------------------------------------------------------------------------- fitting
def _sphere_kernel(diameter_um: float, z_step_um: float, pixel_um: float, sub: int = 4,
                   shell_um: Optional[float] = None) -> np.ndarray:
    """Uniform sphere (or, with ``shell_um``, a spherical shell of that thickness: a surface-stained bead)
    sampled on the (z, y, x) voxel grid (volume fraction per voxel, sum 1)."""
    r = diameter_um / 2.0
    rz, rx = int(math.ceil(r / z_step_um)), int(math.ceil(r / pixel_um))
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    z = (np.arange(-rz, rz + 1)[:, None] + offs[None]).reshape(-1) * z_step_um
    x = (np.arange(-rx, rx + 1)[:, None] + offs[None]).reshape(-1) * pixel_um
    zz, yy, xx = np.meshgrid(z, x, x, indexing="ij")
    r2 = zz ** 2 + yy ** 2 + xx ** 2
    inside = (r2 <= r * r)
    if shell_um:
        inside &= r2 >= max(r - shell_um, 0.0) ** 2
    inside = inside.astype(np.float64)
    k = inside.reshape(2 * rz + 1, sub, 2 * rx + 1, sub, 2 * rx + 1, sub).mean(axis=(1, 3, 5))
    if k.sum() == 0:
        k = np.zeros((1, 1, 1))
        k[0, 0, 0] = 1.0
    return k / k.sum()


def _locate(stack: np.ndarray) -> Tuple[int, int, int]:
    """The bead's voxel: the centroid of the connected region above half maximum (over the median
    background) that holds the brightest voxel of the smoothed stack (a bead's centre, not its brightest rim)."""
    from scipy import ndimage
    sm = ndimage.gaussian_filter(stack.astype(np.float64), 1.0)
    peak = np.unravel_index(np.argmax(sm), sm.shape)
    bg = float(np.median(sm))
    labels, _ = ndimage.label(sm > bg + 0.5 * (sm[peak] - bg))
    com = ndimage.center_of_mass(sm - bg, labels, labels[peak])
    return tuple(int(round(v)) for v in com)


@dataclass
class Calibration:
    """Result of :func:`calibrate` (lengths in µm, phases in rad)."""
    na: float
    wavelength_um: float
    n_immersion: float
    pixel_um: float
    z_step_um: float
    coefficients_rad: Dict[int, float]
    residual: float
    residual_unaberrated: float
    z0_um: float
    xy_um: Tuple[float, float]
    z_scale: float
    amplitude: float
    background: float
    bead_diameter_um: float
    iterations: int
    crop: Dict[str, list]
    measured: np.ndarray = field(repr=False)
    model: np.ndarray = field(repr=False)
    model_unaberrated: np.ndarray = field(repr=False)
    bead_shell_um: Optional[float] = None
    name: str = "calibrated"
    source: str = ""

    @property
    def rms_rad(self) -> float:
        return ZernikePupil(self.coefficients_rad).rms_rad

    @property
    def fitted_z_step_um(self) -> float:
        return self.z_step_um * self.z_scale

    def microscope(self) -> Microscope:
        """The calibrated wide-field microscope (its ``mask`` the fitted pupil)."""
        return Microscope(na=self.na, wavelength_um=self.wavelength_um, n_immersion=self.n_immersion,
                          pixel_um=self.pixel_um, mask=ZernikePupil(self.coefficients_rad), name=self.name)

    def microscope_dict(self) -> dict:
        """The calibrated microscope as plain types (a recipe's ``data.microscope``: unlike a psf.json path, its
        content enters the recipe's digest, so a new calibration never reuses a model trained on an old one)."""
        return {"name": self.name, "na": self.na, "wavelength_um": self.wavelength_um, "n_immersion": self.n_immersion,
                "pixel_um": self.pixel_um,
                "zernike_noll_rad": {str(j): round(float(c), 6) for j, c in self.coefficients_rad.items()}}

    def as_dict(self) -> dict:
        """The psf.json content (plain types)."""
        return {
            "format": PSF_FORMAT,
            "microscope": {"name": self.name, "modality": "widefield", "na": self.na,
                           "wavelength_um": self.wavelength_um, "n_immersion": self.n_immersion,
                           "pixel_um": self.pixel_um, "z_step_um": self.fitted_z_step_um},
            "pupil": {"basis": "zernike_noll", "normalization": "Noll 1976 (rms 1 over the unit pupil)",
                      "units": "rad", "coefficients_rad": {str(j): round(float(c), 6)
                                                           for j, c in self.coefficients_rad.items()},
                      "names": {str(j): NOLL_NAMES.get(j, f"Noll {j}") for j in self.coefficients_rad},
                      "rms_rad": round(self.rms_rad, 6),
                      "rms_waves": round(self.rms_rad / (2 * math.pi), 6)},
            "fit": {"residual_rel_rms": round(self.residual, 6),
                    "residual_rel_rms_unaberrated": round(self.residual_unaberrated, 6),
                    "definition": "||model - data|| / ||data - background|| over the cropped stack",
                    "bead_diameter_um": self.bead_diameter_um, "bead_shell_um": self.bead_shell_um,
                    "z0_um": round(self.z0_um, 5),
                    "xy_um": [round(float(v), 5) for v in self.xy_um], "z_scale": round(self.z_scale, 5),
                    "z_step_um_given": self.z_step_um, "amplitude": float(self.amplitude),
                    "background": float(self.background), "iterations": int(self.iterations),
                    "crop": self.crop, "source": self.source},
        }


def _fit(data: torch.Tensor, grid, basis: torch.Tensor, kernel: Optional[torch.Tensor], k_rel: np.ndarray,
         z_step_um: float, z0_init: float, fit_coeffs: bool, fit_z_scale: bool, steps: int, n_model: int,
         pad_xy: int, pad_z: int, init: Optional[dict] = None):
    """One L-BFGS fit; returns (params dict, model tensor, loss)."""
    dt = data.dtype
    nj = basis.shape[0]
    coeffs = torch.zeros(nj, dtype=dt, requires_grad=fit_coeffs)
    z0 = torch.tensor(z0_init, dtype=dt, requires_grad=True)
    xy = torch.zeros(2, dtype=dt, requires_grad=True)
    u_s = torch.zeros((), dtype=dt, requires_grad=fit_z_scale)  # z scale s = Z_SCALE_MAX ** tanh(u)
    if init is not None:
        with torch.no_grad():
            z0.copy_(torch.tensor(init["z0"], dtype=dt))
            xy.copy_(torch.tensor(init["xy"], dtype=dt))
    if init is not None and fit_z_scale:
        with torch.no_grad():
            u_s.copy_(torch.tensor(math.atanh(max(-0.999, min(0.999, math.log(init["z_scale"])
                                                              / math.log(Z_SCALE_MAX)))), dtype=dt))
    params = [z0, xy] + ([coeffs] if fit_coeffs else []) + ([u_s] if fit_z_scale else [])

    def z_scale():
        return Z_SCALE_MAX ** torch.tanh(u_s)
    # planes computed: the stack's, extended by the sphere's half height (the convolution is "valid")
    k_ext = np.arange(k_rel[0] - pad_z, k_rel[-1] + pad_z + 1, dtype=np.float64)
    k_ext_t = torch.as_tensor(k_ext, dtype=dt)
    d = data.reshape(-1)
    n_el = d.numel()

    def forward():
        z = z_scale() * k_ext_t * z_step_um + z0
        phase = torch.tensordot(coeffs, basis, dims=1) if nj else None
        xy_b = xy[None].expand(len(k_ext), 2)
        psf = psf_from_grid(grid, z, xy_b, mask=phase)  # (nz_ext, n_model, n_model)
        if kernel is not None:
            psf = torch.nn.functional.conv3d(psf[None, None], kernel[None, None])[0, 0]
        m = psf.reshape(-1)
        # closed-form amplitude and background (linear least squares)
        mm, md = m.mean(), d.mean()
        var = ((m - mm) ** 2).mean().clamp_min(1e-30)
        a = ((m - mm) * (d - md)).mean() / var
        b = md - a * mm
        return a * psf + b, a, b

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)
    scale = float((d - d.mean()).pow(2).sum()) or 1.0

    def closure():
        opt.zero_grad()
        model, _, _ = forward()
        loss = ((model.reshape(-1) - d) ** 2).sum() / scale
        loss.backward()
        return loss

    import warnings
    with warnings.catch_warnings():  # the window was sized to the field; line searches may overshoot it
        warnings.filterwarnings("ignore", message="z_um: a defocus")
        opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", steps))
    with torch.no_grad():
        model, a, b = forward()
    out = {"coeffs": coeffs.detach().numpy().astype(float), "z0": float(z0.detach()),
           "xy": xy.detach().numpy().astype(float),
           "z_scale": float(z_scale().detach()), "a": float(a), "b": float(b), "n_iter": n_iter}
    return out, model.detach(), n_el


def calibrate(stack, na: float, wavelength_um: float, n_immersion: float, pixel_um: float, z_step_um: float,
              noll: Sequence[int] = tuple(range(5, 16)), bead_diameter_um: float = 0.0,
              bead_shell_um: Optional[float] = None, crop_px: Optional[int] = None,
              crop_planes: Optional[int] = None, steps: int = 60,
              fit_z_step: bool = False, oversample: Optional[int] = None, name: str = "calibrated",
              source: str = "", dtype: torch.dtype = torch.float32) -> Calibration:
    """Fit the pupil phase (Zernike ``noll`` modes) to a measured bead z-stack (nz, ny, nx).

    ``na``, ``wavelength_um`` (emission), ``n_immersion``, ``pixel_um`` (at the sample), ``z_step_um``:
    the acquisition. ``bead_diameter_um``: the bead's diameter (0: a point; a bead ≳ λ/(2·NA) should be
    given, else its size is fitted as aberration); ``bead_shell_um``: model it as a spherical shell of that
    thickness (a surface-stained bead, whose x–z image is dimmer in the middle) instead of a uniform sphere; the
    bead is sampled at the given z step. ``crop_px``/``crop_planes``: the lateral / axial window around the bead's
    centre (default: the largest that fits, at most 48 px / 49 planes).
    ``steps``: L-BFGS iterations. ``fit_z_step``: also fit a scale on the z step (when the stage step is
    uncertain; bounded to ×[1/1.3, 1.3]). ``oversample``: field samples per camera pixel (default: the
    Nyquist rate λ/(4·NA); 2 is enough when pixel/2 < λ/(2·NA), and faster). The computed field is padded
    so that the defocused planes do not wrap around (at most :data:`MAX_PAD`; planes beyond what that field
    holds are left out of the default window). Returns a :class:`Calibration`.
    """
    st = as_image_array(stack, "stack", ndim=3).astype(np.float64)
    nz, ny, nx = st.shape
    if nz < 3 or min(ny, nx) < 8:
        raise ValueError(f"stack: expected (nz >= 3, ny >= 8, nx >= 8), got shape {st.shape}")
    na = float(na)
    n_immersion = in_range(n_immersion, "n_immersion", 1.0, 2.0)
    na = in_range(na, "na", 0.0, n_immersion, lo_open=True)
    wavelength_um = in_range(wavelength_um, "wavelength_um", 0.2, 2.0)
    pixel_um = positive(pixel_um, "pixel_um")
    z_step_um = positive(z_step_um, "z_step_um")
    bead_diameter_um = in_range(bead_diameter_um, "bead_diameter_um", 0.0, 50.0)
    steps = positive_int(steps, "steps")
    noll = [positive_int(j, "noll") for j in noll]
    if any(j < 2 for j in noll) or len(set(noll)) != len(noll):
        raise ValueError(f"noll: distinct Noll indices >= 2 (piston is not observable), got {list(noll)}")
    # ---- crop around the bead
    kz, ky, kx = _locate(st)
    half_xy_max = min(ky, ny - 1 - ky, kx, nx - 1 - kx)
    if crop_px is None:
        half = min(half_xy_max, 24)
    else:
        half = positive_int(crop_px, "crop_px", minimum=8) // 2
        if half > half_xy_max:
            raise ValueError(f"crop_px: the bead at (y={ky}, x={kx}) allows at most {2 * half_xy_max} px, "
                             f"got {crop_px}")
    if half < 4:
        raise ValueError(f"stack: the bead (brightest voxel at y={ky}, x={kx}) is too close to the edge "
                         f"(needs 4 px on each side)")
    n = 2 * half
    if bead_shell_um is not None:
        bead_shell_um = in_range(bead_shell_um, "bead_shell_um", 0.0, bead_diameter_um / 2, lo_open=True)
    kernel_np = (_sphere_kernel(bead_diameter_um, z_step_um, pixel_um, shell_um=bead_shell_um)
                 if bead_diameter_um > 0
                 else np.ones((1, 1, 1)))
    pad_z, pad_xy = kernel_np.shape[0] // 2, kernel_np.shape[1] // 2
    n_model = n + 2 * pad_xy
    # geometric blur radius per µm of defocus for 80 % of the pupil's light (optics.wrap_fraction's rule)
    f80 = math.sqrt(0.8) * na / n_immersion
    tan80 = f80 / math.sqrt(1 - f80 ** 2)
    s_max = Z_SCALE_MAX if fit_z_step else 1.0
    z_fit = ((MAX_PAD * n_model - n_model / 2.0) * pixel_um) / (tan80 * s_max)  # |z| the largest field holds
    if crop_planes is not None:
        hz = positive_int(crop_planes, "crop_planes", minimum=3) // 2
    else:
        hz = min(24, int(z_fit / z_step_um) - pad_z)
        if hz < 1:
            raise ValueError(f"z_step_um: {z_step_um} µm is too coarse for a {n}-px crop (the field holds "
                             f"|z| <~ {z_fit:.3g} µm); use a larger crop_px")
    zlo, zhi = max(0, kz - hz), min(nz, kz + hz + 1)
    z_need = (max(kz - zlo, zhi - 1 - kz) + pad_z) * z_step_um * s_max
    pad = max(2.0, (z_need * tan80 / pixel_um + n_model / 2.0) / n_model)
    data_np = st[zlo:zhi, ky - half:ky + half, kx - half:kx + half]
    k_rel = np.arange(zlo, zhi, dtype=np.float64) - kz
    kernel = None if kernel_np.size == 1 else torch.as_tensor(kernel_np[::-1, ::-1, ::-1].copy(), dtype=dtype)
    grid = make_pupil_grid(n_model, pixel_um, na, wavelength_um, n_immersion, pad=pad, oversample=oversample,
                           dtype=dtype)
    basis = (torch.stack([noll_zernike(j, grid.rho, grid.phi) for j in noll]) if noll
             else torch.zeros((0,) + tuple(grid.rho.shape), dtype=dtype))
    # emitter sits at pixel n_model//2 of the model = pixel half of the crop: bead at (ky, kx)
    data = torch.as_tensor(data_np, dtype=dtype)
    common = dict(data=data, grid=grid, basis=basis, kernel=kernel, k_rel=k_rel, z_step_um=z_step_um,
                  z0_init=0.0, n_model=n_model, pad_xy=pad_xy, pad_z=pad_z)
    # 1) position (and z scale) with the unaberrated pupil; 2) the aberrations from there
    p0, model0, _ = _fit(fit_coeffs=False, fit_z_scale=fit_z_step, steps=max(10, steps // 3), **common)
    p1, model1, _ = _fit(fit_coeffs=True, fit_z_scale=fit_z_step, steps=steps, init=p0, **common)
    def rel(model, b):
        return float(np.sqrt(((model.numpy() - data_np) ** 2).sum()) / max(np.sqrt(((data_np - b) ** 2).sum()),
                                                                             1e-30))

    return Calibration(
        na=na, wavelength_um=wavelength_um, n_immersion=n_immersion, pixel_um=pixel_um, z_step_um=z_step_um,
        coefficients_rad={int(j): float(c) for j, c in zip(noll, p1["coeffs"])},
        residual=rel(model1, p1["b"]), residual_unaberrated=rel(model0, p0["b"]), z0_um=p1["z0"],
        xy_um=(float(p1["xy"][0]), float(p1["xy"][1])), z_scale=p1["z_scale"], amplitude=p1["a"],
        background=p1["b"], bead_diameter_um=bead_diameter_um, bead_shell_um=bead_shell_um,
        iterations=p0["n_iter"] + p1["n_iter"],
        crop={"z": [int(zlo), int(zhi)], "y": [int(ky - half), int(ky + half)],
              "x": [int(kx - half), int(kx + half)], "bead_voxel_zyx": [int(kz), int(ky), int(kx)]},
        measured=data_np.astype(np.float32), model=model1.numpy().astype(np.float32),
        model_unaberrated=model0.numpy().astype(np.float32), name=str(name), source=str(source))


# ---------------------------------------------------------------------------------------------- psf.json
def save_psf_json(calibration: Calibration, path) -> Path:
    """Write ``psf.json`` (optics, Zernike coefficients, fit residual)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration.as_dict(), indent=2) + "\n")
    return path


def coefficient_difference_rad(psf_a: dict, psf_b: dict) -> float:
    """Largest |c_j(a) − c_j(b)| (rad) over the Noll modes of two psf.json contents (a mode missing in one counts
    as 0 there); ``inf`` when their optics (NA, λ, immersion, pixel) differ, since then the pupils do not compare."""
    def parts(d, name):
        if not isinstance(d, dict) or "microscope" not in d:
            raise ValueError(f"{name}: expected the content of a psf.json (a dict with 'microscope' and 'pupil')")
        pupil = d.get("pupil") or {}
        return d["microscope"], {int(j): float(c) for j, c in (pupil.get("coefficients_rad") or {}).items()}
    (ma, ca), (mb, cb) = parts(psf_a, "psf_a"), parts(psf_b, "psf_b")
    for key in ("na", "wavelength_um", "n_immersion", "pixel_um"):
        if not np.isclose(float(ma[key]), float(mb[key]), rtol=1e-6):
            return float("inf")
    modes = set(ca) | set(cb)
    return float(max((abs(ca.get(j, 0.0) - cb.get(j, 0.0)) for j in modes), default=0.0))


def _microscope_from_dict(d: dict, where: str) -> Microscope:
    optics = dict(d.get("microscope", d))
    pupil = d.get("pupil") or {}
    coeffs = pupil.get("coefficients_rad") if isinstance(pupil, dict) else None
    if coeffs is None and "zernike_noll_rad" in optics:
        coeffs = optics.pop("zernike_noll_rad")
    optics.pop("zernike_noll_rad", None)
    allowed = {"na", "wavelength_um", "n_immersion", "pixel_um", "n_sample", "nfp_um", "modality",
               "excitation_um", "pinhole_au", "name"}
    extra = {"z_step_um"}
    unknown = set(optics) - allowed - extra
    if unknown:
        raise ValueError(f"{where}: unknown microscope fields {sorted(unknown)}; allowed: {sorted(allowed)} "
                         f"(+ zernike_noll_rad)")
    missing = {"na", "wavelength_um", "n_immersion", "pixel_um"} - set(optics)
    if missing:
        raise ValueError(f"{where}: microscope needs {sorted(missing)}")
    kw = {k: v for k, v in optics.items() if k in allowed and v is not None}
    if coeffs:
        kw["mask"] = ZernikePupil({int(j): float(c) for j, c in coeffs.items()})
    return Microscope(**kw)


def load_psf_json(path) -> Microscope:
    """The :class:`~refocuslib.optics.Microscope` of a ``psf.json`` written by :func:`save_psf_json` (its
    ``mask`` a :class:`ZernikePupil`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"psf.json: no such file {p}")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"psf.json: {p} is not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != PSF_FORMAT:
        raise ValueError(f"psf.json: {p} is not a refocuslib PSF file (format {PSF_FORMAT!r})")
    return _microscope_from_dict(d, "psf.json")


def psf_json_path(spec) -> Optional[Path]:
    """The file a path names: as given (absolute, or relative to the working folder), else relative to the
    repository; None when neither exists."""
    p = Path(spec)
    if p.is_file():
        return p
    if not p.is_absolute() and (Path(__file__).resolve().parent.parent / p).is_file():
        return Path(__file__).resolve().parent.parent / p
    return None


def microscope_from_spec(spec, presets: Optional[dict] = None) -> Microscope:
    """A Microscope from a Microscope, a preset name (in ``presets``), a path to ``psf.json`` (relative: to the
    working folder, else to the repository), or a dict of
    optics (``na``, ``wavelength_um``, ``n_immersion``, ``pixel_um``, … and optionally
    ``zernike_noll_rad: {j: rad}``)."""
    if isinstance(spec, Microscope):
        return spec
    if isinstance(spec, (str, Path)):
        s = str(spec)
        if presets and s in presets:
            return presets[s]
        if s.endswith(".json") or Path(s).is_file():
            return load_psf_json(psf_json_path(s) or Path(s))  # a missing file: load_psf_json names it
        raise ValueError(f"microscope: expected a preset name ({sorted(presets or {})}) or a path to psf.json, "
                         f"got {s!r}")
    if isinstance(spec, dict):
        return _microscope_from_dict(spec, "microscope")
    raise ValueError(f"microscope: expected a name, a psf.json path or a dict, got {type(spec).__name__}")


def resolve_microscope(spec, presets: Optional[dict], param: str) -> Microscope:
    """:func:`microscope_from_spec` for a recipe key: errors name ``param`` (e.g. ``'data.microscope'``) and list
    what it accepts (a preset name of ``presets``, a psf.json path, a dict of optics or a Microscope).
    FileNotFoundError for a psf.json path that does not exist, ValueError otherwise."""
    names = ", ".join(repr(k) for k in sorted(presets or {}))
    accepted = (f"a preset name ({names}), " if names else "") + (
        "a path to a psf.json written by `refocuslib calibrate`, or a dict of optics "
        "(na, wavelength_um, n_immersion, pixel_um, optionally zernike_noll_rad: {noll index: rad})")
    if isinstance(spec, bool) or not isinstance(spec, (str, Path, dict, Microscope)):
        raise ValueError(f"{param}: expected {accepted}; got {type(spec).__name__} {spec!r}")
    if isinstance(spec, (str, Path)) and str(spec) not in (presets or {}) and not str(spec).endswith(".json") \
            and psf_json_path(spec) is None:
        raise ValueError(f"{param}: {str(spec)!r} is neither a preset name nor a psf.json file; expected {accepted}")
    try:
        return microscope_from_spec(spec, presets)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{param}: {e}; expected {accepted}") from None
    except (ValueError, TypeError, AttributeError) as e:
        msg = str(e)
        msg = msg[len("microscope: "):] if msg.startswith("microscope: ") else msg
        raise ValueError(f"{param}: {msg}; expected {accepted}") from None


# ---------------------------------------------------------------------------------------------- figure
def plot_calibration(cal: Calibration, path=None):
    """Measured vs model PSF (x–y at the bead's plane, x–z through it) with the residual, and the fitted
    aberrations (bar chart). Returns the matplotlib figure (saved to ``path`` when given)."""
    import matplotlib.pyplot as plt
    m, f = cal.measured - cal.background, cal.model - cal.background
    kz = int(np.argmax(m.reshape(m.shape[0], -1).max(1)))
    cy = m.shape[1] // 2
    vmax = float(max(m.max(), f.max()))
    res = cal.measured - cal.model
    rmax = float(np.abs(res).max()) or 1.0
    fig = plt.figure(figsize=(12, 6.5), layout="constrained")
    sub = fig.subfigures(1, 2, width_ratios=[3, 1.3])
    axes = sub[0].subplots(2, 3)
    ext_xy = [0, m.shape[2] * cal.pixel_um, m.shape[1] * cal.pixel_um, 0]
    ext_xz = [0, m.shape[2] * cal.pixel_um, m.shape[0] * cal.fitted_z_step_um, 0]
    for row, (cut, ext, lab) in enumerate([(lambda a: a[kz], ext_xy, "y (µm)"),
                                           (lambda a: a[:, cy], ext_xz, "z (µm)")]):
        for col, (img, title, kw) in enumerate([
                (cut(m), "measured", dict(vmin=0, vmax=vmax, cmap="magma")),
                (cut(f), "model", dict(vmin=0, vmax=vmax, cmap="magma")),
                (cut(res), "measured − model", dict(vmin=-rmax, vmax=rmax, cmap="RdBu_r"))]):
            ax = axes[row, col]
            im = ax.imshow(img, extent=ext, aspect="auto", interpolation="nearest", **kw)
            ax.set_title(f"{title} ({'x–y' if row == 0 else 'x–z'})", fontsize=9)
            ax.set_xlabel("x (µm)")
            ax.set_ylabel(lab)
            if col == 2:
                fig.colorbar(im, ax=ax, fraction=0.046)
    axb = sub[1].subplots()
    js = list(cal.coefficients_rad)
    vals = [cal.coefficients_rad[j] for j in js]
    axb.barh(range(len(js)), vals, color=["C3" if v < 0 else "C0" for v in vals])
    axb.set_yticks(range(len(js)))
    axb.set_yticklabels([f"{j} {NOLL_NAMES.get(j, '')}" for j in js], fontsize=8)
    axb.invert_yaxis()
    axb.axvline(0, color="k", lw=0.5)
    axb.set_xlabel("Zernike coefficient (rad rms)")
    axb.set_title(f"rms {cal.rms_rad:.2f} rad = {cal.rms_rad / (2 * math.pi):.3f} λ\n"
                  f"residual {cal.residual:.3f}\n(unaberrated pupil: {cal.residual_unaberrated:.3f})", fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
