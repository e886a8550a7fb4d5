"""PSF calibration (refocuslib.calibrate): known aberrations are recovered from a noisy simulated bead stack,
pyotf's phase retrieval (Hanser et al. 2003) agrees on the same stack, psf.json round-trips into a Microscope."""
import json
import math

import numpy as np
import pytest
import torch

from refocuslib import calibrate as C
from refocuslib.optics import Microscope, widefield_psf

# a small high-NA stack: 15 planes of 24² px, Poisson noise at ~1e4 photons in the peak pixel
NA, LAM, N_IMM, PX, DZ = 1.2, 0.6, 1.33, 0.1, 0.2
TRUTH = {5: 0.4, 6: -0.3, 7: 0.3, 11: 0.5}
#: stated tolerance of the recovery (rad, Noll rms-normalised): 0.05 rad = λ/125 rms
TOL_RAD = 0.05


@pytest.fixture(scope="module")
def stack():
    torch.set_num_threads(1)
    z = (np.arange(15) - 7) * DZ + 0.05
    psf = widefield_psf(z, 24, PX, NA, LAM, N_IMM, mask=C.ZernikePupil(TRUTH), xy_um=[[0.02, -0.03]],
                        dtype=torch.float64).numpy()
    return np.random.default_rng(0).poisson(psf * 2e5 + 20).astype(np.float32)


@pytest.fixture(scope="module")
def cal(stack):
    return C.calibrate(stack, NA, LAM, N_IMM, PX, DZ, noll=range(5, 16), steps=40)


def test_noll_indices_match_pyotf():
    zern = pytest.importorskip("pyotf.zernike")
    for j in range(1, 37):
        n, m = zern.noll2degrees(j)
        assert C.noll_to_nm(j) == (int(n), int(m))


def test_noll_modes_are_rms_normalised():
    c = torch.linspace(-1, 1, 401, dtype=torch.float64)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    rho, phi = torch.sqrt(xx ** 2 + yy ** 2), torch.atan2(yy, xx)
    inside = rho <= 1
    for j in (4, 5, 7, 11, 15):
        z = C.noll_zernike(j, rho, phi)[inside]
        assert float((z ** 2).mean()) == pytest.approx(1.0, rel=0.02)


def test_recovers_known_aberrations(cal):
    for j in range(5, 16):
        assert cal.coefficients_rad[j] == pytest.approx(TRUTH.get(j, 0.0), abs=TOL_RAD), j
    assert cal.residual < 0.05 < cal.residual_unaberrated
    assert cal.rms_rad == pytest.approx(math.sqrt(sum(v * v for v in TRUTH.values())), abs=0.05)


def test_agrees_with_pyotf_phase_retrieval(stack, cal):
    """Oracle: pyotf's Gerchberg–Saxton-type retrieval on the same (noise-free) stack. Its image axes are
    point-reflected relative to ours (it propagates with the opposite FFT sign), so odd modes (coma) change
    sign; even modes must agree."""
    pr = pytest.importorskip("pyotf.phaseretrieval")
    z = (np.arange(15) - 7) * DZ
    psf = widefield_psf(z, 32, PX, NA, LAM, N_IMM, mask=C.ZernikePupil(TRUTH), dtype=torch.float64).numpy()
    params = dict(wl=LAM, na=NA, ni=N_IMM, res=PX, zres=DZ, vec_corr="none", condition="none")
    r = pr.retrieve_phase(psf / psf.max(), params, max_iters=100, pupil_tol=0, mse_tol=0, phase_only=True)
    ref = r.fit_to_zernikes(15).pcoefs
    for j in (5, 6, 11):
        assert cal.coefficients_rad[j] == pytest.approx(ref[j - 1], abs=0.1), j
    assert abs(cal.coefficients_rad[7]) == pytest.approx(abs(ref[6]), abs=0.1)


def test_psf_json_round_trip(cal, tmp_path):
    p = C.save_psf_json(cal, tmp_path / "psf.json")
    d = json.loads(p.read_text())
    assert d["format"] == C.PSF_FORMAT and d["fit"]["residual_rel_rms"] == pytest.approx(cal.residual, abs=1e-5)
    mic = C.load_psf_json(p)
    assert isinstance(mic, Microscope) and mic.na == NA and mic.pixel_um == PX
    assert mic.mask.coefficients_rad[11] == pytest.approx(cal.coefficients_rad[11], abs=1e-5)
    # the loaded microscope reproduces the fitted model's PSF
    a = mic.psf([0.0], 24, dtype=torch.float64)
    b = cal.microscope().psf([0.0], 24, dtype=torch.float64)
    assert torch.allclose(a, b, atol=1e-8)
    assert C.microscope_from_spec(str(p)).mask.coefficients_rad == mic.mask.coefficients_rad
    m2 = C.microscope_from_spec(cal.microscope_dict())
    assert m2.na == NA and m2.mask.coefficients_rad[11] == pytest.approx(cal.coefficients_rad[11], abs=1e-5)


def test_microscope_from_spec_dict_and_preset():
    from refocuslib.optics import DEEPZ_20X
    assert C.microscope_from_spec("DEEPZ_20X", {"DEEPZ_20X": DEEPZ_20X}) is DEEPZ_20X
    m = C.microscope_from_spec({"na": 0.8, "wavelength_um": 0.52, "n_immersion": 1.0, "pixel_um": 0.3,
                                "zernike_noll_rad": {"11": 0.7}})
    assert m.na == 0.8 and m.mask.coefficients_rad == {11: 0.7}
    with pytest.raises(ValueError, match="unknown microscope fields"):
        C.microscope_from_spec({"na": 0.8, "wavelength_um": 0.52, "n_immersion": 1.0, "pixel_um": 0.3, "zoom": 2})
    with pytest.raises(ValueError, match="preset name"):
        C.microscope_from_spec("NOPE")


def test_figure(cal, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    fig = C.plot_calibration(cal, tmp_path / "fit.png")
    assert (tmp_path / "fit.png").stat().st_size > 10_000
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_sphere_kernel():
    k = C._sphere_kernel(2.5, 0.8, 0.258)
    assert k.sum() == pytest.approx(1.0) and k.shape == (5, 11, 11)
    assert C._sphere_kernel(0.01, 0.5, 0.5).shape == (1, 1, 1)  # below a voxel: a point


@pytest.mark.parametrize("kw, match", [
    (dict(na=1.5), "na"), (dict(wavelength_um=5.0), "wavelength_um"), (dict(pixel_um=0), "pixel_um"),
    (dict(noll=[1, 5]), "noll"), (dict(bead_diameter_um=-1), "bead_diameter_um"), (dict(crop_px=200), "crop_px")])
def test_bad_inputs(stack, kw, match):
    args = dict(na=NA, wavelength_um=LAM, n_immersion=N_IMM, pixel_um=PX, z_step_um=DZ)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        C.calibrate(stack, **args)
    with pytest.raises(ValueError, match="stack"):
        C.calibrate(np.zeros((2, 20, 20)), NA, LAM, N_IMM, PX, DZ)


# ------------------------------------------------------------------- notebook 60's protocol (evaluate.calibration)
def test_refocus_beats_input_predicate():
    from refocuslib.evaluate.calibration import refocus_beats_input
    assert refocus_beats_input([0.2, 0.3], [0.5, 0.6]).holds is True
    assert refocus_beats_input([1.0, 1.0], [0.5, 0.6]).holds is False       # the all-zero output scores 1
    assert refocus_beats_input([0.5, 0.6], [0.5, 0.6]).holds is False       # the identity (input as output)
    assert refocus_beats_input([0.2], [0.5]).holds is None                  # not enough planes
    with pytest.raises(ValueError, match="nrmse_input"):
        refocus_beats_input([0.2, 0.3], [0.5])


def test_shell_beads_sample():
    from refocuslib.evaluate.calibration import shell_beads
    v = shell_beads(np.random.default_rng(0), (13, 32, 32), (0.5, 0.25), n_beads=(2, 2), photons=(1e5, 1e5))
    assert v.shape == (13, 32, 32) and 0 < v.sum() <= 2e5 + 1
    with pytest.raises(ValueError, match="shell_um"):
        shell_beads(0, (13, 32, 32), (0.5, 0.25), diameter_um=1.0, shell_um=0.6)


def test_refocus_measured_stack_identity_model():
    from refocuslib.evaluate.calibration import refocus_measured_stack
    from refocuslib.models.deepz import DeepZGenerator
    torch.manual_seed(0)
    model = DeepZGenerator(0.125, levels=2).eval()
    rng = np.random.default_rng(0)
    stack = (rng.random((5, 32, 32)) * 10 + 100).astype(np.float32)
    r = refocus_measured_stack(model, stack, 0.5, 2, [-1, 1])
    assert r["dz_um"] == [-0.5, 0.5] and all(v == pytest.approx(1.0) for v in r["nrmse_zero"])
    with pytest.raises(ValueError, match="offsets"):
        refocus_measured_stack(model, stack, 0.5, 2, [0])


def test_coefficient_difference_rad():
    a = {"microscope": {"na": 1.4, "wavelength_um": 0.515, "n_immersion": 1.518, "pixel_um": 0.258},
         "pupil": {"coefficients_rad": {"5": 0.1, "11": 0.5}}}
    b = json.loads(json.dumps(a))
    assert C.coefficient_difference_rad(a, b) == 0.0
    b["pupil"]["coefficients_rad"] = {"5": 0.15, "7": -0.2}  # 11 missing in b counts as 0
    assert C.coefficient_difference_rad(a, b) == pytest.approx(0.5)
    b["microscope"]["na"] = 1.3
    assert C.coefficient_difference_rad(a, b) == math.inf
    with pytest.raises(ValueError, match="psf_b"):
        C.coefficient_difference_rad(a, {"pupil": {}})


def test_calibration_stack_order_is_the_reverse_of_the_simulators_focal_planes():
    """Pins the two conventions behind refocus_measured_stack's DPM = +k·Δz: calibrate models plane k as the bead at
    defocus (k − k0)·Δz (this file's ``stack`` fixture), while imaging.image_volume's focal plane k0 + j sees a bead
    at plane k0 at defocus −j·Δz. With an aberration that is not symmetric in z (spherical, Noll 11) the two
    orders differ, and the simulator's stack reversed is the calibration's."""
    from refocuslib import imaging
    mic = Microscope(na=NA, wavelength_um=LAM, n_immersion=N_IMM, pixel_um=PX, mask=C.ZernikePupil({11: 0.6}))
    nz, c = 9, 4
    vol = np.zeros((nz, 25, 25))
    vol[c, 12, 12] = 1.0
    sim = imaging.image_volume(vol, mic, DZ, psf_pixels=25).numpy()        # focal planes −4Δz … +4Δz
    z = (np.arange(nz) - c) * DZ                                            # calibration order: defocus grows
    cal_order = widefield_psf(z, 25, PX, NA, LAM, N_IMM, mask=C.ZernikePupil({11: 0.6}), dtype=torch.float64).numpy()
    peak = lambda s: s.reshape(nz, -1).max(1)  # noqa: E731
    assert not np.allclose(peak(cal_order), peak(cal_order)[::-1], rtol=0.02)  # z-asymmetric: the test can tell
    assert np.allclose(peak(sim[::-1]), peak(cal_order), rtol=0.02)
    assert not np.allclose(peak(sim), peak(cal_order), rtol=0.02)
