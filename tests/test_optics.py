"""Physics checks of refocuslib.optics against textbook values and an independent oracle (pyotf)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from refocuslib import optics


def _width_at(profile: np.ndarray, step: float, level: float) -> float:
    """Full width of a single-peaked 1D profile at ``level`` × peak, linear interpolation at both edges."""
    p = profile / profile.max()
    i = int(p.argmax())
    left = i
    while p[left] >= level:
        left -= 1
    right = i
    while p[right] >= level:
        right += 1
    x_left = left + (level - p[left]) / (p[left + 1] - p[left])
    x_right = right - (level - p[right]) / (p[right - 1] - p[right])
    return (x_right - x_left) * step


@pytest.mark.parametrize("na,wavelength,n_imm", [(1.4, 0.52, 1.515), (0.75, 0.52, 1.0), (1.2, 0.67, 1.33)])
def test_in_focus_lateral_fwhm_is_051_lambda_over_na(na, wavelength, n_imm):
    pixel = optics.nyquist_pixel_um(na, wavelength) / 4  # finely sampled so the measurement is not the limit
    psf = optics.widefield_psf([0.0], 129, pixel, na, wavelength, n_imm, dtype=torch.float64)[0].numpy()
    assert np.unravel_index(psf.argmax(), psf.shape) == (64, 64)
    fwhm = _width_at(psf[64], pixel, 0.5)
    assert fwhm == pytest.approx(optics.lateral_fwhm_theory_um(na, wavelength), rel=0.05)


def test_depth_of_field_matches_lambda_n_over_na2_at_moderate_na():
    """λn/NA² is the paraxial full axial width where the on-axis intensity stays above 8/π² ≈ 0.81 of its
    peak (quarter-wave defocus error). At NA 0.75 in air it must hold within 20 %."""
    na, lam, n = 0.75, 0.52, 1.0
    step = 0.01
    z = np.arange(-3, 3 + step / 2, step)
    psf = optics.widefield_psf(z, 33, 0.1, na, lam, n, dtype=torch.float64).numpy()
    dof = _width_at(psf[:, 16, 16], step, 8 / math.pi ** 2)
    assert dof == pytest.approx(optics.depth_of_field_theory_um(na, lam, n), rel=0.20)


def test_axial_profile_matches_nonparaxial_quadrature_at_high_na():
    """On axis, d²f = 2π·k_z·dk_z turns the pupil integral into E(z) = ∫ k_z·exp(2πi·z·k_z) dk_z over
    k_z ∈ [sqrt(n² − NA²)/λ, n/λ] — an independent 1D quadrature of the non-paraxial scalar model."""
    na, lam, n = 1.4, 0.52, 1.515
    step = 0.005
    z = np.arange(-1.5, 1.5 + step / 2, step)
    psf = optics.widefield_psf(z, 256, 0.05, na, lam, n, dtype=torch.float64).numpy()
    kz = np.linspace(math.sqrt(n ** 2 - na ** 2) / lam, n / lam, 20001)
    field = np.trapezoid(kz[None] * np.exp(2j * np.pi * z[:, None] * kz[None]), kz, axis=1)
    oracle = np.abs(field) ** 2
    ours = psf[:, 128, 128]
    for level in (0.5, 8 / math.pi ** 2):
        assert _width_at(ours, step, level) == pytest.approx(_width_at(oracle, step, level), rel=0.02)
    np.testing.assert_allclose(ours / ours.max(), oracle / oracle.max(), atol=0.02)


def test_energy_is_conserved_through_focus():
    z = np.linspace(-2, 2, 9)
    grid = optics.make_pupil_grid(64, 0.1, 1.2, 0.6, 1.33, pad=2, dtype=torch.float64)
    pupil = optics.pupil_field(grid, z)
    field = torch.fft.ifft2(pupil)
    total = (field.abs() ** 2).sum((-2, -1)) / (grid.aperture.sum() / grid.n_fine ** 2)
    # Parseval: every plane carries Σ A² / Σ A of a photon (just under one: the soft edge's far tails)
    expected = float((grid.aperture ** 2).sum() / grid.aperture.sum())
    np.testing.assert_allclose(total.numpy(), expected, rtol=1e-10)
    assert 0.98 < expected <= 1.0
    psf = optics.psf_from_grid(grid, z).numpy()
    sums = psf.sum((1, 2))
    assert np.all(sums <= 1 + 1e-9)
    assert sums[4] > 0.97  # in focus almost all photons land in the 6.4 µm field of view
    assert np.all(np.diff(sums[:5]) > 0) and np.allclose(sums, sums[::-1], rtol=1e-6)  # symmetric defocus


def test_agrees_with_pyotf_pupil_fft_oracle():
    pyotf_otf = pytest.importorskip("pyotf.otf")
    z = np.array([-1.0, 0.0, 0.35, 1.2])
    ref = pyotf_otf.HanserPSF(0.52, 1.2, 1.33, 0.05, 128, zrange=z, condition="none", vec_corr="none").PSFi
    ours = optics.widefield_psf(z, 128, 0.05, 1.2, 0.52, 1.33, pad=1, oversample=1, dtype=torch.float64,
                                 min_pupil_radius_samples=0, soft_edge=False).numpy()
    for a, b in zip(ref, ours):
        np.testing.assert_allclose(b / b.sum(), a / a.sum(), atol=1e-10 * (a / a.sum()).max())


def test_oversampled_camera_pixels_integrate_the_fine_psf():
    """At a camera pixel coarser than Nyquist the PSF is the fine PSF binned over each pixel."""
    dx = 0.325 / 3
    # the coarse PSF centres the emitter on camera pixel 11 = fine pixels 33..35, i.e. one fine pixel right
    fine = optics.widefield_psf([0.7], 66, dx, 0.75, 0.52, 1.0, oversample=1, pad=2, xy_um=[[dx, dx]],
                                dtype=torch.float64, min_pupil_radius_samples=0)[0].numpy()
    coarse = optics.widefield_psf([0.7], 22, 0.325, 0.75, 0.52, 1.0, oversample=3, pad=2,
                                  dtype=torch.float64, min_pupil_radius_samples=0)[0].numpy()
    binned = fine.reshape(22, 3, 22, 3).sum((1, 3))
    np.testing.assert_allclose(coarse, binned, atol=1e-9)
    assert np.unravel_index(coarse.argmax(), coarse.shape) == (11, 11)


def test_subpixel_shift_moves_the_centroid():
    shifts = np.array([[0.0, 0.0], [0.037, -0.021], [0.25, 0.11]])
    psf = optics.widefield_psf(np.zeros(3), 65, 0.1, 1.4, 0.6, 1.515, xy_um=shifts, dtype=torch.float64).numpy()
    yy, xx = np.mgrid[:65, :65]
    for p, (sx, sy) in zip(psf, shifts):
        w = p / p.sum()
        assert (w * xx).sum() - 32 == pytest.approx(sx / 0.1, abs=0.02)
        assert (w * yy).sum() - 32 == pytest.approx(sy / 0.1, abs=0.02)


def test_confocal_is_axially_and_laterally_narrower_than_widefield():
    z = np.arange(-2, 2.001, 0.02)
    kw = dict(n_pixels=65, pixel_um=0.03, na=1.4, wavelength_um=0.6, n_immersion=1.515, dtype=torch.float64)
    conf = optics.confocal_psf(z, excitation_um=0.5, pinhole_au=1.0, **kw).numpy()
    wf = optics.widefield_psf(z, **kw).numpy()
    c = len(z) // 2
    assert _width_at(conf[:, 32, 32], 0.02, 0.5) < 0.9 * _width_at(wf[:, 32, 32], 0.02, 0.5)
    assert _width_at(conf[c, 32], 0.03, 0.5) < _width_at(wf[c, 32], 0.03, 0.5)
    # optical sectioning: the confocal plane integral falls with defocus, the wide-field one does not
    assert conf[0].sum() < 0.05 * conf[c].sum()
    assert conf[c].sum() == pytest.approx(1.0, rel=1e-6)


def test_double_helix_lobes_rotate_monotonically():
    from skimage.feature import peak_local_max
    z = np.linspace(-1.5, 1.5, 13)
    psf = optics.widefield_psf(z, 64, 0.1, 1.4, 0.6, 1.515, mask=optics.double_helix_mask(4),
                               dtype=torch.float64).numpy()
    angles = []
    for plane in psf:
        a, b = peak_local_max(plane, min_distance=3, num_peaks=2)
        assert plane[tuple(b)] > 0.5 * plane[tuple(a)]  # two lobes of similar brightness
        d = a - b
        angles.append(math.atan2(d[0], d[1]) % math.pi)
    unwrapped = np.unwrap(np.array(angles) * 2) / 2  # lobe axis is defined modulo 180°
    steps = np.diff(unwrapped)
    assert np.all(steps > 0) or np.all(steps < 0)
    assert abs(unwrapped[-1] - unwrapped[0]) > math.radians(90)


def test_zernike_values_and_mask_shapes():
    rho = torch.tensor([0.0, 0.5, 1.0, 1.2], dtype=torch.float64)
    phi = torch.zeros(4, dtype=torch.float64)
    np.testing.assert_allclose(optics.zernike(2, 0, rho, phi).numpy(), [-1, -0.5, 1, 0])  # 2ρ²−1
    np.testing.assert_allclose(optics.zernike(4, 0, rho, phi).numpy(), [1, -0.125, 1, 0])  # 6ρ⁴−6ρ²+1
    np.testing.assert_allclose(optics.zernike(2, -2, rho, phi + math.pi / 4).numpy(), [0, 0.25, 1, 0])
    with pytest.raises(ValueError, match="m"):
        optics.zernike(3, 2, rho, phi)


def _ellipticity(psf_stack: np.ndarray) -> list:
    yy, xx = np.mgrid[:psf_stack.shape[1], :psf_stack.shape[2]]
    out = []
    for p in psf_stack:
        w = p / p.sum()
        cx, cy = (w * xx).sum(), (w * yy).sum()
        out.append((w * (xx - cx) ** 2).sum() - (w * (yy - cy) ** 2).sum())
    return out


def test_astigmatic_and_tetrapod_psfs_change_shape_with_z():
    astig = optics.widefield_psf([-1.0, 0.0, 1.0], 64, 0.11, 1.45, 0.67, 1.518, mask=optics.astigmatic_mask(1.5),
                                 dtype=torch.float64).numpy()
    e = _ellipticity(astig)
    assert e[0] * e[2] < 0 and abs(e[1]) < 0.05 * abs(e[0])  # elongation flips x ↔ y, round in focus
    # DeepSTORM3D optics: oil objective into water, nominal focal plane 1.5 µm, emitters 0–4 µm deep
    tetra = optics.widefield_psf([0.0, 2.0, 4.0], 64, 0.11, 1.45, 0.67, 1.518, n_sample=1.33, nfp_um=1.5,
                                 mask=optics.tetrapod_mask(), dtype=torch.float64).numpy()
    e = _ellipticity(tetra)
    assert e[0] * e[2] < 0


def test_array_mask_reproduces_functional_mask_and_learns():
    fn = optics.double_helix_mask(3)
    grid = optics.make_pupil_grid(48, 0.1, 1.4, 0.6, 1.515, dtype=torch.float64)
    sampled = optics.ArrayMask.from_function(optics.astigmatic_mask(2.0), size=129)
    ref = optics.astigmatic_mask(2.0)(grid.rho, grid.phi)
    got = sampled(grid.rho, grid.phi)
    inside = grid.rho <= 0.98
    np.testing.assert_allclose(got[inside].numpy(), ref[inside].numpy(), atol=2e-3)
    mask = optics.learnable_mask(33, init=fn)
    psf = optics.psf_from_grid(grid, torch.tensor([0.3, -0.4]), mask=mask)
    psf[:, 24, 24].sum().backward()
    assert mask.phase.grad is not None and torch.count_nonzero(mask.phase.grad) > 10


def test_psf_is_differentiable_in_position_and_runs_in_float32():
    z = torch.tensor([0.2, -0.3], requires_grad=True)
    xy = torch.tensor([[0.01, 0.02], [0.0, -0.03]], requires_grad=True)
    psf = optics.widefield_psf(z, 32, 0.1, 1.4, 0.6, 1.515, xy_um=xy)
    assert psf.dtype == torch.float32 and psf.shape == (2, 32, 32)
    (psf[:, 16, 17].sum() + psf[:, 15, 16].sum()).backward()
    assert torch.all(z.grad != 0) and torch.all(xy.grad.abs().sum(1) > 0)


@pytest.mark.parametrize("kwargs,name", [
    (dict(pixel_um=-0.1), "pixel_um"), (dict(na=1.6), "na"), (dict(wavelength_um=float("nan")), "wavelength_um"),
    (dict(n_pixels=0), "n_pixels"), (dict(z_um=[0.0, float("nan")]), "z_um"),
])
def test_bad_optical_parameters_raise_naming_the_parameter(kwargs, name):
    args = dict(z_um=[0.0], n_pixels=16, pixel_um=0.1, na=1.4, wavelength_um=0.6, n_immersion=1.515)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        optics.widefield_psf(**args)


def test_mask_array_on_wrong_grid_is_rejected():
    with pytest.raises(ValueError, match="mask"):
        optics.widefield_psf([0.0], 16, 0.1, 1.4, 0.6, 1.515, mask=np.zeros((5, 5)))


SHARED_MASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "deepstorm3d" / "masks"


@pytest.mark.skipif(not (SHARED_MASKS / "mask_tetrapod.mat").exists(), reason="shared DeepSTORM3D data absent")
def test_tetrapod_coefficients_reproduce_the_released_mask_model():
    import scipy.io
    mask = scipy.io.loadmat(SHARED_MASKS / "mask_tetrapod.mat")["mask_tetra_model"]
    n = mask.shape[0]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    radius_px = 0.15e6 * 1.45 / 100 / 24  # f·NA/(M·p) in mask pixels (data README)
    rho, phi = torch.tensor(np.hypot(xx, yy) / radius_px), torch.tensor(np.arctan2(yy, xx))
    inside = np.hypot(xx, yy) <= 82  # the mask's support ends at n_water/NA of the pupil
    ours = optics.tetrapod_mask()(rho, phi).numpy()
    diff = np.angle(np.exp(1j * (ours - mask)))[inside]
    diff -= np.angle(np.exp(1j * diff).mean())  # a constant piston is irrelevant
    assert np.abs(diff).max() < 5e-3
    # the ArrayMask built from the released file gives the same PSFs as the Zernike form
    arr = optics.ArrayMask(mask, pupil_radius_px=radius_px)
    kw = dict(n_pixels=48, pixel_um=0.11, na=1.45, wavelength_um=0.67, n_immersion=1.518, n_sample=1.33,
              nfp_um=1.5, dtype=torch.float64)
    a = optics.widefield_psf([0.5, 2.0, 3.5], mask=arr, **kw).numpy()
    b = optics.widefield_psf([0.5, 2.0, 3.5], mask=optics.tetrapod_mask(), **kw).numpy()
    for pa, pb in zip(a, b):
        assert np.corrcoef(pa.ravel(), pb.ravel())[0, 1] > 0.98


def test_array_mask_interpolates_wrapped_phase_correctly():
    """A linear phase ramp stored wrapped to (−π, π] must come back as the same ramp (mod 2π)."""
    c = torch.linspace(-1, 1, 65, dtype=torch.float64)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    ramp = 9.0 * xx
    wrapped = torch.angle(torch.exp(1j * ramp))
    grid = optics.make_pupil_grid(40, 0.1, 1.4, 0.6, 1.515, dtype=torch.float64)
    got = optics.ArrayMask(wrapped, pupil_radius_px=32)(grid.rho, grid.phi)
    expect = 9.0 * grid.rho * torch.cos(grid.phi)
    inside = grid.rho <= 1.0
    err = torch.angle(torch.exp(1j * (got - expect)))[inside]
    assert float(err.abs().max()) < 0.05


def test_phase_sum_adds_phases_and_keeps_a_learnable_mask_trainable():
    from refocuslib.calibrate import ZernikePupil
    from refocuslib.optics import PhaseSum, learnable_mask
    rho = torch.linspace(0, 1, 11)[:, None].expand(11, 11)
    phi = torch.linspace(-3, 3, 11)[None].expand(11, 11)
    dh, ab = optics.double_helix_mask(4), ZernikePupil({11: 0.7})
    torch.testing.assert_close(PhaseSum(dh, None, ab)(rho, phi), dh(rho, phi) + ab(rho, phi))
    learn = learnable_mask(9)
    s = PhaseSum(learn, ab)
    assert [p is learn.phase for p in s.parameters()] == [True]
    with pytest.raises(ValueError, match="masks"):
        PhaseSum(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="masks"):
        PhaseSum()
