"""Your own microscope (notebook 60): training samples like a calibration bead, and the test of a Deep-Z trained on
a calibrated PSF against a *measured* bead z-stack.

Protocol (Deep-Z, Wu et al. 2019, Fig. 1: a defocused image of beads refocused by the network is compared with the
mechanically scanned plane): a plane ``center + k`` of the measured stack is the input, it is refocused by the DPM
+k·Δz to the bead's central plane, and the output is compared with the measured central plane. The target is
normalised with the input's background and scale (the training pairs' convention,
:func:`refocuslib.datasets.deepz.normalize` with ``reference``); the error is the NRMSE ‖out − target‖/‖target‖
over the bead's crop, beside the same for the un-refocused input (the identity) and the all-zero image (= 1).

The DPM's sign follows from two conventions of the library. :func:`refocuslib.calibrate.calibrate` models plane k of
a measured stack as the bead at defocus z_k = (k − k₀)·Δz (the bead's distance from the focal plane grows with k),
while the simulator that trains Deep-Z indexes focal planes (:func:`refocuslib.imaging.image_volume`,
I(z_f) = Σ V(z) ⊛ PSF(z − z_f): the defocus *falls* as z_f grows), and a DPM is z_target − z_input in focal-plane
coordinates. Plane ``center + k`` therefore has its focal plane at −k·Δz from the bead, and reaching the bead's
plane takes DPM = +k·Δz (``tests/test_calibrate.py`` pins both conventions).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from refocuslib._validate import as_image_array, in_range, positive, positive_int
from refocuslib.evaluate.claims import Verdict, verdict

__all__ = ["shell_beads", "refocus_measured_stack", "refocus_beats_input"]


def shell_beads(rng, shape_zyx: Sequence[int], voxel_um: Tuple[float, float], n_beads: Tuple[int, int] = (1, 4),
                diameter_um: float = 2.5, shell_um: float = 0.3, photons: Tuple[float, float] = (2e5, 4e5)
                ) -> np.ndarray:
    """Photon density (nz, H, W) of ``n_beads`` surface-stained beads (spherical shells of ``diameter_um`` and
    ``shell_um`` thickness, :func:`refocuslib.calibrate._sphere_kernel`) at random positions, ``photons`` each,
    in the middle half of the stack: a ``DeepZDataConfig(sample=...)`` callable (``voxel_um`` = (dz, pixel))."""
    from refocuslib.calibrate import _sphere_kernel
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    nz, h, w = (positive_int(s, "shape_zyx") for s in shape_zyx)
    dz, px = positive(voxel_um[0], "voxel_um"), positive(voxel_um[1], "voxel_um")
    k = _sphere_kernel(positive(diameter_um, "diameter_um"), dz, px,
                       shell_um=in_range(shell_um, "shell_um", 0.0, diameter_um / 2, lo_open=True))
    kz, ky, kx = (s // 2 for s in k.shape)
    vol = np.zeros((nz + 2 * kz, h + 2 * ky, w + 2 * kx), np.float32)
    lo, hi = int(n_beads[0]), int(n_beads[1])
    for _ in range(int(rng.integers(lo, max(lo, hi) + 1))):
        z = int(rng.integers(nz // 4, max(nz // 4 + 1, 3 * nz // 4 + 1)))
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        vol[z:z + k.shape[0], y:y + k.shape[1], x:x + k.shape[2]] += float(rng.uniform(*photons)) * k
    return vol[kz:kz + nz, ky:ky + h, kx:kx + w]


def refocus_measured_stack(model, stack, z_step_um: float, center: int, offsets: Sequence[int],
                           crop: Tuple[slice, slice] = (slice(None), slice(None))) -> Dict[str, list]:
    """Refocus planes ``center + k`` (``k`` in ``offsets``) of a measured ``stack`` (nz, H, W) to plane
    ``center`` with ``model`` (DPM +k·``z_step_um``, the stack ordered as :func:`refocuslib.calibrate.calibrate`
    models it) and score each against the measured plane (module docstring).
    Returns lists per offset: ``dz_um``, ``nrmse_out``, ``nrmse_input``, ``nrmse_zero`` and the images
    ``input``, ``output``, ``target`` (normalised, cropped to ``crop``)."""
    from refocuslib.datasets.deepz import normalize
    from refocuslib.inference import refocus
    st = as_image_array(stack, "stack", ndim=3).astype(np.float32)
    nz = st.shape[0]
    center = int(center)
    out = {k: [] for k in ("offset", "dz_um", "nrmse_out", "nrmse_input", "nrmse_zero", "input", "output", "target")}
    for k in offsets:
        i = center + int(k)
        if not (0 <= i < nz and 0 <= center < nz) or int(k) == 0:
            raise ValueError(f"offsets: plane {center} + {k} must be a non-central plane of the {nz}-plane stack")
        inp = normalize(st[i])
        tgt = normalize(st[center], reference=st[i])
        dz = int(k) * float(z_step_um)  # focal plane of plane center+k: −k·Δz from the bead (module docstring)
        res = refocus(model, st[i], dz)  # normalises the input itself, as a user's image
        a, b, t = (x[crop] for x in (inp, res, tgt))

        def nr(x):
            return float(np.linalg.norm(x - t) / max(np.linalg.norm(t), 1e-12))

        for key, v in (("offset", int(k)), ("dz_um", dz), ("nrmse_out", nr(b)), ("nrmse_input", nr(a)),
                       ("nrmse_zero", nr(np.zeros_like(t))), ("input", a), ("output", b), ("target", t)):
            out[key].append(v)
    return out


def refocus_beats_input(nrmse_out: Sequence[float], nrmse_input: Sequence[float], min_items: int = 2) -> Verdict:
    """Holds when the refocused output is closer to the measured in-focus plane than the un-refocused input for
    every tested plane (NRMSE_out < NRMSE_input, and < 1, the all-zero image's). Item count: tested planes."""
    o = np.asarray(nrmse_out, dtype=np.float64).ravel()
    i = np.asarray(nrmse_input, dtype=np.float64).ravel()
    if o.shape != i.shape:
        raise ValueError(f"nrmse_input: expected {o.size} values (one per nrmse_out), got {i.size}")
    ok = bool(o.size and np.all(o < i) and np.all(o < 1.0))
    return verdict(ok, int(o.size), min_items,
                   f"NRMSE out {np.round(o, 3).tolist()} vs input {np.round(i, 3).tolist()} (zero image 1)")
