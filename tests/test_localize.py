"""Tests for refocuslib.localize: Hungarian matching metrics, peak finding, pixel→nm conversion."""
import math

import numpy as np
import pytest

from refocuslib.localize import (MatchResult, efficiency, find_peaks_2d, find_peaks_3d, match_points,
                                 pixels_to_nm)


# ------------------------------------------------------------------------------------------------ matching
def test_known_permutation_with_jitter_recovers_counts_and_rmse():
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(5) * 1000.0, np.arange(4) * 1000.0)
    truth = np.stack([gx.ravel(), gy.ravel(), rng.uniform(-400, 400, gx.size)], axis=1)  # 20 emitters
    keep = np.arange(2, 20)                      # truths 0 and 1 are missed -> fn = 2
    perm = rng.permutation(keep)
    jitter = rng.uniform(-20, 20, size=(len(perm), 3))
    spurious = np.array([[20000.0, 0, 0], [0, 20000.0, 0], [-5000.0, -5000.0, 100.0]])  # fp = 3
    pred = np.concatenate([truth[perm] + jitter, spurious])

    res = match_points(pred, truth, threshold_nm=150.0)
    assert isinstance(res, MatchResult)
    assert (res.tp, res.fp, res.fn) == (18, 3, 2)
    assert res.jaccard == pytest.approx(18 / 23)
    assert res.recall == pytest.approx(18 / 20)
    assert res.precision == pytest.approx(18 / 21)
    # every matched pair is the one we built
    pairs = dict(map(tuple, res.pairs))
    assert pairs == {i: int(perm[i]) for i in range(len(perm))}
    assert res.rmse_lateral_nm == pytest.approx(math.sqrt(np.mean(jitter[:, 0] ** 2 + jitter[:, 1] ** 2)))
    assert res.rmse_axial_nm == pytest.approx(math.sqrt(np.mean(jitter[:, 2] ** 2)))
    assert res.rmse_3d_nm == pytest.approx(math.sqrt(np.mean(np.sum(jitter ** 2, axis=1))))


def _greedy(pred, truth, thr):
    d = np.linalg.norm(pred[:, None] - truth[None], axis=-1)
    used_p, used_t, n = set(), set(), 0
    for i, j in sorted(np.ndindex(*d.shape), key=lambda ij: d[ij]):
        if d[i, j] <= thr and i not in used_p and j not in used_t:
            used_p.add(i); used_t.add(j); n += 1
    return n


def test_hungarian_beats_greedy_and_maximises_match_count():
    # P0 sits on T0 (distance 0) but is also within range of T1; P1 only reaches T0.
    # Greedy (and a min-sum assignment that charges out-of-range pairs only the threshold) takes P0-T0
    # and leaves one match; the optimum is P0-T1 + P1-T0 (99 nm each).
    truth = np.array([[0.0, 0.0], [99.0, 0.0]])
    pred = np.array([[0.0, 0.0], [-99.0, 0.0]])
    assert _greedy(pred, truth, 100.0) == 1
    res = match_points(pred, truth, threshold_nm=100.0)
    assert res.tp == 2 and res.fp == 0 and res.fn == 0
    assert sorted(map(tuple, res.pairs)) == [(0, 1), (1, 0)]
    assert res.rmse_lateral_nm == pytest.approx(99.0)
    assert math.isnan(res.rmse_axial_nm) and math.isnan(res.efficiency_axial)


def test_threshold_respected_and_inclusive():
    truth = np.array([[0.0, 0.0, 0.0], [1000.0, 0.0, 0.0], [2000.0, 0.0, 0.0]])
    pred = truth + np.array([[0.0, 0.0, 149.0], [0.0, 150.0, 0.0], [151.0, 0.0, 0.0]])  # 3D distance counts
    res = match_points(pred, truth, threshold_nm=150.0)
    assert res.tp == 2 and res.fp == 1 and res.fn == 1
    assert sorted(map(tuple, res.pairs)) == [(0, 0), (1, 1)]
    assert match_points(pred, truth, threshold_nm=152.0).tp == 3


def test_efficiency_formula_known_numbers():
    # JI 80 %, RMSE 15 nm: 100 - sqrt(20^2 + 15^2) = 75; axial 30 nm at 0.5 %/nm gives the same.
    assert efficiency(0.8, 15.0) == pytest.approx(75.0)
    assert efficiency(0.8, 30.0, 0.5) == pytest.approx(75.0)
    assert efficiency(1.0, 0.0) == pytest.approx(100.0)
    truth = np.array([[0.0, 0, 0], [1000, 0, 0], [0, 1000, 0], [1000, 1000, 0]])
    pred = np.concatenate([truth + [9.0, 12.0, 30.0], [[5000.0, 5000.0, 0.0]]])  # 4 TP (15 nm lat), 1 FP
    res = match_points(pred, truth)
    assert res.jaccard == pytest.approx(0.8) and res.jaccard_pct == pytest.approx(80.0)
    assert res.rmse_lateral_nm == pytest.approx(15.0) and res.rmse_axial_nm == pytest.approx(30.0)
    assert res.efficiency == pytest.approx(75.0)
    assert res.efficiency_axial == pytest.approx(75.0)


def test_empty_inputs():
    truth = np.zeros((5, 3))
    truth[:, 0] = np.arange(5) * 1000
    r = match_points(np.zeros((0, 3)), truth)
    assert (r.tp, r.fp, r.fn) == (0, 0, 5) and r.jaccard == 0.0 and r.recall == 0.0
    assert math.isnan(r.precision) and math.isnan(r.rmse_lateral_nm) and math.isnan(r.rmse_3d_nm)
    assert r.efficiency == pytest.approx(0.0) and r.pairs.shape == (0, 2)
    r = match_points(truth, [])
    assert (r.tp, r.fp, r.fn) == (0, 5, 0) and r.jaccard == 0.0 and math.isnan(r.recall)
    r = match_points(np.zeros((0, 2)), np.zeros((0, 2)))
    assert (r.tp, r.fp, r.fn) == (0, 0, 0) and r.jaccard == 1.0 and r.efficiency == pytest.approx(100.0)


@pytest.mark.parametrize("pred, truth, name", [
    (np.zeros((3, 4)), np.zeros((3, 3)), "pred_nm"),
    (np.zeros((3, 3)), np.zeros(3) + 1, "truth_nm"),
    (np.zeros((3, 2)), np.zeros((3, 3)), "pred_nm/truth_nm"),
    (np.array([[0.0, np.nan]]), np.zeros((1, 2)), "pred_nm"),
    (np.array([["a", "b"]]), np.zeros((1, 2)), "pred_nm"),
])
def test_match_points_shape_errors(pred, truth, name):
    with pytest.raises(ValueError, match=name):
        match_points(pred, truth)


def test_match_points_bad_threshold():
    with pytest.raises(ValueError, match="threshold_nm"):
        match_points(np.zeros((1, 2)), np.zeros((1, 2)), threshold_nm=-1)


# ------------------------------------------------------------------------------------------- peak finding
def _blobs(shape, centres, sigma, amp=1.0):
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    img = np.zeros(shape)
    for c in centres:
        r2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        img += amp * np.exp(-r2 / (2 * sigma ** 2))
    return img


def _sorted_rows(a):
    return a[np.lexsort(a.T[::-1])]


CENTRES_2D = np.array([[10.3, 12.8], [30.0, 40.45], [45.7, 9.15], [20.55, 30.2]])
CENTRES_3D = np.array([[5.2, 10.3, 12.8], [12.0, 30.0, 40.4], [8.7, 40.6, 9.15]])


@pytest.mark.parametrize("refine, sigma", [(True, 0.5), ("centroid", 0.55), ("gaussian", 1.5)])
def test_find_peaks_2d_subpixel(refine, sigma):
    img = _blobs((56, 52), CENTRES_2D, sigma)
    pos, val = find_peaks_2d(img, threshold=0.2, refine=refine)
    assert pos.shape == (4, 2) and val.shape == (4,)
    assert np.all(np.diff(val) <= 0)  # brightest first
    np.testing.assert_allclose(_sorted_rows(pos), _sorted_rows(CENTRES_2D), atol=0.05)


@pytest.mark.parametrize("refine, sigma", [(True, 0.5), ("gaussian", 1.2)])
def test_find_peaks_3d_subpixel(refine, sigma):
    vol = _blobs((18, 50, 50), CENTRES_3D, sigma)
    pos, val = find_peaks_3d(vol, threshold=0.2, refine=refine)
    assert pos.shape == (3, 3) and val.shape == (3,)
    np.testing.assert_allclose(_sorted_rows(pos), _sorted_rows(CENTRES_3D), atol=0.05)


def test_find_peaks_unrefined_threshold_min_distance_and_empty():
    img = np.zeros((20, 20))
    img[5, 5], img[5, 8], img[15, 15] = 1.0, 0.9, 0.3
    pos, val = find_peaks_2d(img, threshold=0.5, refine=False)
    assert _sorted_rows(pos).tolist() == [[5.0, 5.0], [5.0, 8.0]] and pos.dtype == float
    pos, val = find_peaks_2d(img, threshold=0.5, min_distance_px=4, refine=False)
    assert pos.tolist() == [[5.0, 5.0]] and val.tolist() == [1.0]
    pos, val = find_peaks_2d(img, threshold=2.0)
    assert pos.shape == (0, 2) and val.shape == (0,)
    pos, val = find_peaks_3d(np.zeros((4, 5, 6)), threshold=0.1)
    assert pos.shape == (0, 3) and val.shape == (0,)


def test_find_peaks_validation():
    with pytest.raises(ValueError, match="image"):
        find_peaks_2d(np.zeros((3, 4, 5)), 0.1)
    with pytest.raises(ValueError, match="image"):
        find_peaks_2d(np.full((4, 4), np.nan), 0.1)
    with pytest.raises(ValueError, match="volume"):
        find_peaks_3d(np.zeros((4, 5)), 0.1)
    with pytest.raises(ValueError, match="threshold"):
        find_peaks_2d(np.zeros((4, 4)), float("nan"))
    with pytest.raises(ValueError, match="min_distance_px"):
        find_peaks_2d(np.zeros((4, 4)), 0.1, min_distance_px=0)
    with pytest.raises(ValueError, match="refine"):
        find_peaks_2d(np.zeros((4, 4)), 0.1, refine="spline")


def test_pixels_to_nm_axis_order_and_voxel_centres():
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.5]])  # (z, y, x)
    nm = pixels_to_nm(pos, voxel_nm=(50.0, 100.0, 110.0))
    np.testing.assert_allclose(nm, [[55.0, 50.0, 25.0], [(3.5 + 0.5) * 110, 2.5 * 100, 1.5 * 50]])
    # centred lateral grid, axial range starting at -500 nm
    nm = pixels_to_nm(np.array([[0.0, 4.5, 4.5]]), 100.0, origin_nm=(-500.0, -500.0, -500.0))
    np.testing.assert_allclose(nm, [[0.0, 0.0, -450.0]])
    np.testing.assert_allclose(pixels_to_nm(np.array([[1.0, 2.0]]), 10.0), [[25.0, 15.0]])  # (y,x)->(x,y)
    assert pixels_to_nm(np.zeros((0, 3)), 100.0).shape == (0, 3)
    with pytest.raises(ValueError, match="voxel_nm"):
        pixels_to_nm(pos, -1.0)
    with pytest.raises(ValueError, match="voxel_nm"):
        pixels_to_nm(pos, (1.0, 2.0))
    with pytest.raises(ValueError, match="positions_px"):
        pixels_to_nm(np.zeros((2, 4)), 1.0)
