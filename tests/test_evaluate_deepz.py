"""Deep-Z claim predicates (refocuslib.evaluate.deepz) on synthetic beads: each fails for an all-zero output and for
the identity (input as output), and holds for a faithful output."""
import numpy as np
import pytest

from refocuslib.evaluate import deepz as ev


def _beads(sigma_px, n=25, size=160, seed=0, noise=0.01):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    g = np.arange(n)
    yx = np.stack([20 + 28 * (g // 5), 20 + 28 * (g % 5)], 1).astype(float) + rng.uniform(-0.4, 0.4, (n, 2))
    img = np.zeros((size, size))
    for y, x in yx:
        img += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma_px ** 2))
    return img + noise * rng.standard_normal(img.shape), yx


def test_lateral_fwhm_at_known_positions_matches_sigma():
    img, yx = _beads(1.5)
    fw = ev.lateral_fwhm_at(img, yx, pixel_um=0.325)
    assert np.isfinite(fw).all()
    np.testing.assert_allclose(np.median(fw), 2.3548 * 1.5 * 0.325, rtol=0.03)
    assert np.isnan(ev.lateral_fwhm_at(np.zeros_like(img), yx, 0.325)).all()  # zero image: every fit fails


def _paired(out_sigma, in_sigma=4.0, scan_sigma=1.5, zero=False):
    sc, yx = _beads(scan_sigma, seed=1)
    inp, _ = _beads(in_sigma, seed=2)
    out = np.zeros_like(sc) if zero else _beads(out_sigma, seed=3)[0]
    f = lambda im: ev.lateral_fwhm_at(im, yx, 0.325)  # noqa: E731
    return ev.PairedFWHM(f(sc), f(inp), f(out), np.zeros(len(yx)))


def test_sharpening_verdict_holds_fails_for_zero_and_identity():
    assert ev.sharpening_verdict(_paired(1.6), min_beads=20).holds is True
    zero = ev.sharpening_verdict(_paired(1.6, zero=True), min_beads=20)
    assert zero.holds is False
    ident = ev.sharpening_verdict(_paired(4.0), min_beads=20)  # output = a copy of the input blur
    assert ident.holds is False
    assert ev.sharpening_verdict(_paired(1.6), min_beads=100).holds is None  # 25 beads < 100: not enough data


def test_relative_median_verdict():
    ref = np.full(30, 1.4)
    assert ev.relative_median_verdict(np.full(30, 1.5), ref, 0.3, 20, "beads").holds is True
    assert ev.relative_median_verdict(np.full(30, np.nan), ref, 0.3, 20, "beads").holds is False  # zero output
    assert ev.relative_median_verdict(np.full(30, 5.0), ref, 0.3, 20, "beads").holds is False
    few = np.full(30, np.nan)
    few[:5] = 1.4
    assert ev.relative_median_verdict(few, ref, 0.3, 20, "beads").holds is False  # 17 % fitted: survivors only
    assert ev.relative_median_verdict(np.full(5, 1.4), np.full(5, 1.4), 0.3, 20, "beads").holds is None


def test_axial_fwhm_at_recovers_gaussian_and_fails_flat():
    zs = np.arange(-3, 3.01, 0.5)
    yx = np.array([[10.0, 10.0], [20.0, 30.0]])
    st = np.zeros((len(zs), 40, 40))
    for y, x in yx.astype(int):
        st[:, y, x] = np.exp(-0.5 * (zs / (1.36 / 2.3548)) ** 2)
    fw = ev.axial_fwhm_at(st, yx, zs, avg_px=0)
    np.testing.assert_allclose(fw, 1.36, rtol=0.02)
    flat = np.repeat(st[len(zs) // 2][None], len(zs), 0)  # identity: the in-focus image repeated along z
    assert np.isnan(ev.axial_fwhm_at(flat, yx, zs, avg_px=0)).all()
    assert np.isnan(ev.axial_fwhm_at(np.zeros_like(st), yx, zs)).all()


def test_textbook_axial_fwhm():
    assert ev.textbook_axial_fwhm_um(0.75, 0.52) == pytest.approx(1.36, abs=0.01)


def test_below_baselines_verdict_zero_and_identity_fail():
    truth_err_zero = np.array([1.0, 1.0, 1.0, 1.0])
    inp = np.array([1.3, 1.2, 1.2, 1.3])
    assert ev.below_baselines_verdict([0.5, 0.4, 0.4, 0.5], inp, truth_err_zero).holds is True
    assert ev.below_baselines_verdict(truth_err_zero, inp, truth_err_zero).holds is False  # zero output ties
    assert ev.below_baselines_verdict(inp, inp, truth_err_zero).holds is False  # identity ties the input
    assert ev.below_baselines_verdict([0.5, 0.4, 0.4, 1.1], inp, truth_err_zero).holds is False  # beaten by zero


def test_degrades_outside_and_beats_on_all_and_period():
    assert ev.degrades_outside_verdict([0.4, 0.5], [0.9, 1.0]).holds is True
    assert ev.degrades_outside_verdict([1.0, 1.0], [1.0, 1.0]).holds is False  # identity: ratio 1 everywhere
    hib = {"ssim": True, "rmse": False}
    assert ev.beats_on_all_verdict({"ssim": 0.8, "rmse": 0.05}, {"ssim": 0.7, "rmse": 0.07}, hib, 3).holds is True
    assert ev.beats_on_all_verdict({"ssim": 0.8, "rmse": 0.08}, {"ssim": 0.7, "rmse": 0.07}, hib, 3).holds is False
    periods = [2, 4, 8, 16, 32, 64]
    assert ev.error_falls_with_period_verdict(periods, [0.9, 0.8, 0.6, 0.5, 0.4, 0.35]).holds is True
    assert ev.error_falls_with_period_verdict(periods, [0.5] * 6).holds is False  # constant (e.g. zero output)


def test_worm_predicates_fail_for_no_detections():
    assert ev.more_detections_verdict(44, 31, 150).holds is True
    assert ev.more_detections_verdict(0, 31, 150).holds is False  # an all-zero refocused video finds nothing
    assert ev.more_detections_verdict(31, 31, 150).holds is False  # identity: the 2D input itself
    assert ev.more_detections_verdict(44, 31, 5).holds is None
    assert ev.higher_recall_verdict(0.4, 0.2, 150).holds is True
    assert ev.higher_recall_verdict(float("nan"), 0.2, 150).holds is False
    assert ev.eigengap_verdict(3, 3, 40).holds is True
    assert ev.eigengap_verdict(2, 3, 40).holds is False
    assert ev.eigengap_verdict(None, 3, 40).holds is False
    assert ev.ari_verdict(0.8, 0.2, 40).holds is True
    assert ev.ari_verdict(0.5, 0.2, 40).holds is False
    assert ev.ari_verdict(float("nan"), 0.2, 40).holds is False


def _blob_stack(truth_xyz_um, planes_um, pixel_um, shape_yx, mirror_weight):
    """Gaussian blobs at each truth centre on the plane nearest its depth, and ``mirror_weight`` × that blob on
    the plane nearest the mirrored depth −z."""
    st = np.zeros((len(planes_um),) + shape_yx)
    yy, xx = np.mgrid[:shape_yx[0], :shape_yx[1]]
    for x, y, z in truth_xyz_um:
        blob = np.exp(-((xx + 0.5 - x / pixel_um) ** 2 + (yy + 0.5 - y / pixel_um) ** 2) / 4.0)
        st[np.argmin(np.abs(planes_um - z))] += blob
        st[np.argmin(np.abs(planes_um + z))] += mirror_weight * blob
    return st


def test_depth_sign_fraction_is_one_for_the_truth_and_half_for_a_mirror_symmetric_stack():
    rng = np.random.default_rng(3)
    planes = np.arange(-10.0, 10.1, 2.0)
    px = 0.5
    truth = np.column_stack([rng.uniform(2, 30, 40), rng.uniform(2, 30, 40),
                             rng.choice([-8.0, -6.0, -4.0, 4.0, 6.0, 8.0, 0.0], 40)])
    right = ev.depth_sign_fraction(_blob_stack(truth, planes, px, (64, 64), 0.0), planes, truth, px)
    assert right["n"] == int(np.sum(np.abs(truth[:, 2]) >= 4.0)) and right["fraction"] == 1.0
    wrong = ev.depth_sign_fraction(_blob_stack(truth, planes, px, (64, 64), 2.0), planes, truth, px)
    assert wrong["fraction"] == 0.0
    # a symmetric stack (the same at ±z, as from an aberration-free defocused input) carries no sign: ties count
    # as failures, so the fraction is 0, not 1
    sym = ev.depth_sign_fraction(_blob_stack(truth, planes, px, (64, 64), 1.0), planes, truth, px)
    assert sym["fraction"] == 0.0
    zero = ev.depth_sign_fraction(np.zeros((len(planes), 64, 64)), planes, truth, px)
    assert zero["fraction"] == 0.0
    with pytest.raises(ValueError, match="planes_um"):
        ev.depth_sign_fraction(np.zeros((3, 8, 8)), planes, truth, px)
