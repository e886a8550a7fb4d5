"""Tests for refocuslib.metrics (image metrics, batched Gaussian fit, FWHM, KL) and the fwhm benchmark."""
import json
import math

import numpy as np
import pytest
from scipy.optimize import curve_fit
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from refocuslib import metrics as M
from refocuslib.metrics import (FWHM_PER_SIGMA, axial_fwhm_um, fit_gaussian_2d, histogram_kl, kl_divergence,
                                lateral_fwhm_um, ms_ssim, mse, nrmse, pearson, psnr, rmse, ssim)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def smooth_image():
    """A smooth 2D test image with structure at several scales (192×192, values in [0, 1])."""
    r = np.random.default_rng(7)
    from scipy.ndimage import gaussian_filter
    img = gaussian_filter(r.random((192, 192)), 2.0) + 0.5 * gaussian_filter(r.random((192, 192)), 8.0)
    img -= img.min()
    return img / img.max()


def spots(n, size=15, seed=0, noise=True, sigma=(1.0, 3.0), shape=None):
    r = np.random.default_rng(seed)
    h, w = shape if shape is not None else (size, size)
    true = np.stack([r.uniform(200, 600, n), (w - 1) / 2 + r.uniform(-1.5, 1.5, n),
                     (h - 1) / 2 + r.uniform(-1.5, 1.5, n), r.uniform(*sigma, n), r.uniform(*sigma, n),
                     r.uniform(5, 20, n)], axis=1)
    clean = M.gaussian_2d_model(true, (h, w))
    return (r.poisson(clean).astype(float) if noise else clean), true


# ------------------------------------------------------------------ image metrics

def test_known_mse_rmse():
    a = np.zeros((4, 5))
    b = np.full((4, 5), 2.0)
    assert mse(a, b) == pytest.approx(4.0)
    assert rmse(a, b) == pytest.approx(2.0)
    b2 = np.arange(20.0).reshape(4, 5)
    assert mse(b2 + 3.0, b2) == pytest.approx(9.0)


def test_nrmse_is_rmse_over_reference_range(rng):
    b = rng.random((32, 32)) * 5 + 2
    a = b + rng.normal(0, 0.1, b.shape)
    expected = math.sqrt(np.mean((a - b) ** 2)) / (b.max() - b.min())
    assert nrmse(a, b) == pytest.approx(expected, rel=1e-12)
    assert nrmse(a, b) == pytest.approx(normalized_root_mse(b, a, normalization="min-max"), rel=1e-12)
    with pytest.raises(ValueError, match="b"):
        nrmse(a, np.ones_like(b))


def test_psnr(rng):
    b = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    assert psnr(b, b) == math.inf
    assert psnr(b + 0.1, b) == pytest.approx(20.0, abs=1e-9)  # 10 log10(1 / 0.01)
    a = b + rng.normal(0, 0.05, b.shape)
    assert psnr(a, b, data_range=2.0) == pytest.approx(peak_signal_noise_ratio(b, a, data_range=2.0))


def test_ssim_identical_and_matches_skimage(smooth_image, rng):
    b = smooth_image
    assert ssim(b, b) == pytest.approx(1.0)
    a = np.clip(b + rng.normal(0, 0.1, b.shape), 0, 1)
    ref = structural_similarity(a, b, data_range=float(b.max() - b.min()))
    assert ssim(a, b) == pytest.approx(ref, rel=1e-12)
    assert ssim(a, b) < 0.95
    vol = np.stack([b[:32, :32]] * 8)
    assert ssim(vol, vol) == pytest.approx(1.0)
    assert ssim(vol + rng.normal(0, 0.1, vol.shape), vol) < 0.99


def test_ms_ssim(smooth_image, rng):
    b = smooth_image
    assert ms_ssim(b, b) == pytest.approx(1.0, abs=1e-12)
    scores = [ms_ssim(b + rng.normal(0, s, b.shape), b) for s in (0.02, 0.1, 0.3)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0
    # one scale only (image too small for a second one): equals Gaussian-window SSIM of Wang et al.
    small_a, small_b = (b + rng.normal(0, 0.05, b.shape))[:20, :20], b[:20, :20]
    ref = structural_similarity(small_a, small_b, data_range=float(small_b.max() - small_b.min()),
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ms_ssim(small_a, small_b) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="a"):
        ms_ssim(b[:8, :8], b[:8, :8])
    with pytest.raises(ValueError, match="weights"):
        ms_ssim(b, b, weights=(-1.0, 2.0))


def test_pearson(rng):
    a = rng.random((30, 30))
    assert pearson(3.0 * a + 7.0, a) == pytest.approx(1.0, abs=1e-12)
    assert pearson(-2.0 * a + 1.0, a) == pytest.approx(-1.0, abs=1e-12)
    assert abs(pearson(rng.random((30, 30)), a)) < 0.2


def test_metric_input_errors():
    a = np.zeros((8, 8))
    with pytest.raises(ValueError, match="b"):
        mse(a, np.zeros((8, 9)))
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="a"):
        psnr(bad, a)
    with pytest.raises(ValueError, match="b"):
        rmse(a, bad)
    with pytest.raises(ValueError, match="a"):
        ms_ssim(np.zeros((1, 2, 16, 16)), np.zeros((1, 2, 16, 16)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, a + 1, data_range=-1.0)
    with pytest.raises(ValueError, match="a"):
        pearson(np.ones((4, 4)), a + np.arange(4))


def test_metrics_accept_torch_tensors():
    torch = pytest.importorskip("torch")
    a = torch.rand(16, 16, dtype=torch.float64)
    assert mse(a, a) == 0.0
    assert pearson(2 * a, a) == pytest.approx(1.0)


# ------------------------------------------------------------------ batched Gaussian fit

def test_fit_recovers_noise_free_parameters():
    patches, true = spots(300, noise=False)
    fit = fit_gaussian_2d(patches, pixel_um=0.5)
    assert fit.success.all()
    est = np.stack([fit.amplitude, fit.x0, fit.y0, fit.sigma_x, fit.sigma_y, fit.offset], axis=1)
    np.testing.assert_allclose(est, true, rtol=1e-3)
    np.testing.assert_allclose(fit.sigma_x_um, 0.5 * true[:, 3], rtol=1e-3)
    np.testing.assert_allclose(fit.fwhm_y_um, FWHM_PER_SIGMA * 0.5 * true[:, 4], rtol=1e-3)
    assert fit["fwhm_x_um"] is fit.fwhm_x_um and "success" in fit.keys() and len(fit) == 300


def test_fit_non_square_patches_and_anisotropic_pixels():
    patches, true = spots(50, noise=False, shape=(25, 11), sigma=(1.0, 2.5))
    true[:, 4] *= 2.0  # wider along the long (y / z) axis
    patches = M.gaussian_2d_model(true, (25, 11))
    fit = fit_gaussian_2d(patches, pixel_um=(0.4, 0.1))
    assert fit.success.all()
    np.testing.assert_allclose(fit.sigma_y, true[:, 4], rtol=1e-3)
    np.testing.assert_allclose(fit.sigma_x, true[:, 3], rtol=1e-3)
    np.testing.assert_allclose(fit.fwhm_y_um, FWHM_PER_SIGMA * 0.4 * true[:, 4], rtol=1e-3)
    np.testing.assert_allclose(fit.fwhm_x_um, FWHM_PER_SIGMA * 0.1 * true[:, 3], rtol=1e-3)


def test_fit_agrees_with_curve_fit_on_noisy_spots():
    patches, true = spots(200, seed=3)
    fit = fit_gaussian_2d(patches)
    assert fit.success.mean() > 0.98
    h, w = patches.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    xy = np.vstack([xx.ravel(), yy.ravel()]).astype(float)

    def model(xy, A, x0, y0, sx, sy, B):
        return A * np.exp(-((xy[0] - x0) ** 2 / (2 * sx ** 2) + (xy[1] - y0) ** 2 / (2 * sy ** 2))) + B

    compared = 0
    for i in np.flatnonzero(fit.success):
        popt = curve_fit(model, xy, patches[i].ravel(), p0=true[i])[0]  # independent start: the truth
        assert abs(abs(popt[3]) / fit.sigma_x[i] - 1) < 0.01
        assert abs(abs(popt[4]) / fit.sigma_y[i] - 1) < 0.01
        compared += 1
    assert compared >= 196
    # and the noisy fits are unbiased estimates of the true widths
    assert np.median(fit.sigma_x[fit.success] / true[fit.success, 3]) == pytest.approx(1.0, abs=0.01)


def test_fit_flags_spotless_patches(rng):
    patches, _ = spots(20, seed=4)
    noise = rng.poisson(20.0, size=(20, 15, 15)).astype(float)  # pure background
    flat = np.stack([np.zeros((15, 15)), np.full((15, 15), 7.0)])
    fit = fit_gaussian_2d(np.concatenate([patches, noise, flat]))
    assert fit.success[:20].all()
    assert fit.success[20:40].mean() < 0.2
    assert not fit.success[40:].any()
    assert np.all(fit.residual_rms[:20] < 0.2 * fit.amplitude[:20])
    single = fit_gaussian_2d(patches[0])
    assert single.sigma_x.shape == (1,) and single.success[0]


def test_fit_chunking_and_initial_do_not_change_result():
    patches, true = spots(300, seed=6)
    whole = fit_gaussian_2d(patches)
    chunked = fit_gaussian_2d(patches, chunk=64)
    np.testing.assert_allclose(chunked.sigma_x, whole.sigma_x, rtol=1e-9)
    from_truth = fit_gaussian_2d(patches, initial=true)
    ok = whole.success & from_truth.success
    np.testing.assert_allclose(from_truth.sigma_y[ok], whole.sigma_y[ok], rtol=1e-4)


def test_fit_input_errors():
    good = np.ones((2, 9, 9))
    with pytest.raises(ValueError, match="patches"):
        fit_gaussian_2d(np.empty((0, 9, 9)))
    with pytest.raises(ValueError, match="patches"):
        fit_gaussian_2d([])
    with pytest.raises(ValueError, match="patches"):
        fit_gaussian_2d(np.ones((2, 2, 9, 9)))
    bad = good.copy()
    bad[1, 4, 4] = np.nan
    with pytest.raises(ValueError, match="patches"):
        fit_gaussian_2d(bad)
    with pytest.raises(ValueError, match="patches"):
        fit_gaussian_2d(np.ones((3, 2, 9)))
    with pytest.raises(ValueError, match="pixel_um"):
        fit_gaussian_2d(good, pixel_um=-0.1)
    with pytest.raises(ValueError, match="pixel_um"):
        fit_gaussian_2d(good, pixel_um=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="max_iter"):
        fit_gaussian_2d(good, max_iter=0)
    with pytest.raises(ValueError, match="initial"):
        fit_gaussian_2d(good, initial=np.ones((3, 6)))


# ------------------------------------------------------------------ FWHM (Deep-Z Eq. 6–9)

def bead_image(shape=(256, 256), sigma=1.7, n=40, seed=0, background=10.0, min_dist=24):
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    img = np.full(shape, background)
    centres = []
    for _ in range(n):
        c = r.uniform(12, np.array(shape) - 12)
        if any(np.hypot(*(c - d)) < min_dist for d in centres):
            continue
        centres.append(c)
        img += r.uniform(300, 900) * np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * sigma ** 2))
    return img, np.array(centres)


def test_lateral_fwhm_noise_free_and_noisy():
    sigma, pix = 1.7, 0.325
    img, centres = bead_image(sigma=sigma)
    expected = FWHM_PER_SIGMA * sigma * pix
    det = lateral_fwhm_um(img, pix, return_details=True)
    assert len(det["fwhm_um"]) == len(centres) >= 15
    np.testing.assert_allclose(det["fwhm_um"], expected, rtol=0.02)
    # fitted centres match the true ones
    d = np.hypot(*(det["centres_yx"][:, None, :] - centres[None]).transpose(2, 0, 1)).min(axis=1)
    assert d.max() < 0.05
    noisy = np.random.default_rng(5).poisson(img).astype(float)
    fwhm = lateral_fwhm_um(noisy, pix)
    assert len(fwhm) >= 0.9 * len(centres)
    assert np.median(fwhm) == pytest.approx(expected, rel=0.02)


def test_lateral_fwhm_skips_border_and_touching_beads():
    img = np.zeros((64, 64))
    yy, xx = np.mgrid[0:64, 0:64]
    g = lambda cy, cx: 100 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5 ** 2))  # noqa: E731
    img += g(32, 32) + g(2, 40) + g(50, 10) + g(50, 19)  # isolated, at the border, a close pair
    det = lateral_fwhm_um(img, 1.0, return_details=True)
    assert len(det["fwhm_um"]) == 1
    np.testing.assert_allclose(det["centres_yx"][0], [32, 32], atol=1e-3)
    assert lateral_fwhm_um(np.zeros((32, 32)) + 3.0, 1.0).size == 0


def test_axial_fwhm_anisotropic_stack():
    sig_xy, sig_z, pix, dz = 1.5, 3.0, 0.2, 0.5
    nz, ny, nx = 41, 128, 128
    r = np.random.default_rng(2)
    zz = np.arange(nz)[:, None, None]
    yy, xx = np.mgrid[0:ny, 0:nx]
    stack = np.full((nz, ny, nx), 5.0)
    centres = []
    for _ in range(20):
        c = r.uniform(12, 116, 2)
        if any(np.hypot(*(c - d[1:])) < 24 for d in centres):
            continue
        cz = r.uniform(16, 24)
        centres.append((cz, *c))
        lateral = np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * sig_xy ** 2))
        stack += 400 * lateral[None] * np.exp(-(zz - cz) ** 2 / (2 * sig_z ** 2))
    det = axial_fwhm_um(stack, pix, dz, return_details=True)
    assert len(det["fwhm_um"]) == len(centres) >= 4
    np.testing.assert_allclose(det["fwhm_um"], FWHM_PER_SIGMA * sig_z * dz, rtol=0.01)
    np.testing.assert_allclose(det["fwhm_x_um"], FWHM_PER_SIGMA * sig_xy * pix, rtol=0.01)
    zc = np.sort(det["centres_zyx"][:, 0])
    np.testing.assert_allclose(zc, np.sort([c[0] for c in centres]), atol=0.01)
    cropped = axial_fwhm_um(stack, pix, dz, crop_z=25)
    np.testing.assert_allclose(cropped, FWHM_PER_SIGMA * sig_z * dz, rtol=0.01)
    # lateral FWHM of the in-focus plane agrees with the same beads
    plane = stack[20]
    assert np.median(lateral_fwhm_um(plane, pix)) == pytest.approx(FWHM_PER_SIGMA * sig_xy * pix, rel=0.02)


def test_fwhm_input_errors():
    img = np.zeros((32, 32))
    with pytest.raises(ValueError, match="pixel_um"):
        lateral_fwhm_um(img, -0.1)
    with pytest.raises(ValueError, match="image"):
        lateral_fwhm_um(np.zeros((2, 32, 32)), 0.1)
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="image"):
        lateral_fwhm_um(bad, 0.1)
    with pytest.raises(ValueError, match="crop_px"):
        lateral_fwhm_um(img, 0.1, crop_px=2)
    with pytest.raises(ValueError, match="stack"):
        axial_fwhm_um(img, 0.1, 0.2)
    with pytest.raises(ValueError, match="z_step_um"):
        axial_fwhm_um(np.zeros((5, 32, 32)), 0.1, 0.0)
    with pytest.raises(ValueError, match="crop_z"):
        axial_fwhm_um(np.zeros((5, 32, 32)), 0.1, 0.2, crop_z=9)


# ------------------------------------------------------------------ KL divergence

def test_kl_divergence():
    p = np.array([10, 20, 30, 40])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(p, 2 * p) == pytest.approx(0.0, abs=1e-12)  # normalised
    q = np.array([40, 30, 20, 10])
    r = np.array([25, 25, 25, 25])
    assert kl_divergence(p, r) > 0
    assert kl_divergence(p, r) != pytest.approx(kl_divergence(r, p), rel=1e-3)  # asymmetric
    P, Q = p / p.sum(), q / q.sum()
    assert kl_divergence(p, q, eps=0) == pytest.approx(np.sum(P * np.log(P / Q)), rel=1e-12)
    assert np.isfinite(kl_divergence([1, 0, 0], [0, 0, 1]))  # eps keeps empty bins finite
    with pytest.raises(ValueError, match="hist_b"):
        kl_divergence(p, [1, 2, 3])
    with pytest.raises(ValueError, match="hist_a"):
        kl_divergence([-1, 2, 3, 4], p)
    with pytest.raises(ValueError, match="hist_a"):
        kl_divergence([], [])


def test_histogram_kl(rng):
    a = rng.normal(1.0, 0.1, 5000)
    assert histogram_kl(a, a, bins=30) == pytest.approx(0.0, abs=1e-12)
    b = rng.normal(1.2, 0.1, 5000)
    c = rng.normal(1.05, 0.1, 5000)
    assert histogram_kl(a, b, bins=30) > histogram_kl(a, c, bins=30) > 0
    assert histogram_kl(a, b, bins=np.linspace(0.5, 1.7, 31)) > 0
    with pytest.raises(ValueError, match="bins"):
        histogram_kl(a, b, bins=0)
    with pytest.raises(ValueError, match="values_b"):
        histogram_kl(a, [np.nan, 1.0])


# ------------------------------------------------------------------ benchmark CLI

def test_bench_fwhm_runs_small(tmp_path):
    from refocuslib import bench

    assert "fwhm" in bench.BENCHMARKS
    res = bench.bench_fwhm(n=12, repeats=1)
    for key in ("batched_fits_per_s", "curve_fit_fits_per_s", "speed_ratio", "max_rel_sigma_diff",
                "n_compared", "batched_success_rate"):
        assert key in res
    assert res["n"] == 12 and res["n_compared"] >= 10
    assert res["max_rel_sigma_diff"] < 0.01
    out = tmp_path / "b.json"
    assert bench.main(["fwhm", "--n", "8", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"fwhm"} and data["fwhm"]["n"] == 8
    with pytest.raises(ValueError, match="name"):
        bench.run("nope")
