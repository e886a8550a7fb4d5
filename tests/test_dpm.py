"""Tests for refocuslib.dpm: digital propagation matrix builders, network scaling, range warning."""
import math
import warnings

import numpy as np
import pytest
import torch

from refocuslib import dpm
from refocuslib.dpm import DPMRangeWarning


def test_uniform():
    d = dpm.uniform((4, 6), -2.5)
    assert d.shape == (4, 6) and np.all(d == -2.5)


@pytest.mark.parametrize("tilt, pixel", [(10.0, 0.325), (-30.0, 0.65), (45.0, 1.0)])
def test_plane_slope_per_pixel(tilt, pixel):
    d = dpm.plane((9, 11), pixel, tilt, offset_um=1.5)
    slope = math.tan(math.radians(tilt)) * pixel
    np.testing.assert_allclose(np.diff(d, axis=1), slope)
    np.testing.assert_allclose(np.diff(d, axis=0), 0.0, atol=1e-12)
    assert d[4, 5] == pytest.approx(1.5)  # offset at the centre pixel
    dy = dpm.plane((9, 11), pixel, tilt, azimuth_deg=90.0)  # ascends along rows
    np.testing.assert_allclose(np.diff(dy, axis=0), slope)
    np.testing.assert_allclose(np.diff(dy, axis=1), 0.0, atol=1e-12)
    d45 = dpm.plane((9, 11), pixel, tilt, azimuth_deg=45.0)
    np.testing.assert_allclose(np.diff(d45, axis=1), slope / math.sqrt(2))


def test_cylinder_depth_axis_and_clipping():
    pixel, diameter = 0.5, 40.0
    d = dpm.cylinder((21, 31), pixel, diameter, offset_um=2.0)  # axis along x through the centre row
    r, dmax = diameter / 2, 10 * pixel
    assert d.max() == pytest.approx(2.0) and np.all(d[10] == pytest.approx(2.0))
    assert d.max() - d.min() == pytest.approx(r - math.sqrt(r ** 2 - dmax ** 2))
    np.testing.assert_allclose(d, d[::-1])  # symmetric about the axis, constant along it
    np.testing.assert_allclose(np.diff(d, axis=1), 0.0, atol=1e-12)
    concave = dpm.cylinder((21, 31), pixel, diameter, offset_um=2.0, convex=False)
    np.testing.assert_allclose(concave - 2.0, -(d - 2.0))
    # narrow cylinder: outside the footprint the surface is clipped to the rim height (depth = R)
    small = dpm.cylinder((21, 31), pixel, 4.0, axis_deg=90.0)  # axis along y: varies along x
    assert small.max() - small.min() == pytest.approx(2.0)
    assert small[:, 0].tolist() == [-2.0] * 21 and small[5, 15] == pytest.approx(0.0)
    np.testing.assert_allclose(np.diff(small, axis=0), 0.0, atol=1e-6)  # cos(90°) rounding near the rim


@pytest.mark.parametrize("period", [2, 4, 8, 16, 32, 64])
def test_sinusoid_range_and_period(period):
    w = 256
    d = dpm.sinusoid((8, w), period, -4.0, 4.0)  # 8 µm span as in Deep-Z Fig. S7
    assert d.min() == pytest.approx(-4.0) and d.max() == pytest.approx(4.0)
    np.testing.assert_allclose(d, d[:1].repeat(8, axis=0))
    spec = np.abs(np.fft.rfft(d[0] - d[0].mean()))
    assert int(np.argmax(spec)) == w // period
    dy = dpm.sinusoid((w, 5), period, 0.0, 8.0, axis="y", phase=0.3)
    assert int(np.argmax(np.abs(np.fft.rfft(dy[:, 0] - dy[:, 0].mean())))) == w // period
    assert dy.min() >= 0.0 and dy.max() <= 8.0


def test_sinusoid_period_one_is_constant():
    assert np.allclose(dpm.sinusoid((4, 16), 1, -4.0, 4.0), 4.0)


def test_from_height_map():
    h = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(dpm.from_height_map(h, reference_um=5.0), h - 5.0)
    with pytest.raises(ValueError, match="height_um"):
        dpm.from_height_map(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="height_um"):
        dpm.from_height_map(np.zeros((2, 3, 4)))


def test_network_scaling_round_trip():
    d = dpm.plane((16, 16), 0.3, 20.0, offset_um=-3.0)
    x = dpm.to_network(d)
    assert x.dtype == np.float32 and np.allclose(x, d / 10)
    np.testing.assert_allclose(dpm.from_network(x), d, atol=1e-5)
    t = dpm.to_network(torch.from_numpy(d))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(dpm.from_network(t).numpy(), d, atol=1e-5)
    batch = dpm.to_network(torch.zeros(2, 1, 8, 8))
    assert batch.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="dpm_um"):
        dpm.to_network(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="dpm_um"):
        dpm.to_network(np.zeros(5))


def test_check_trained_range_warns_outside_only():
    d = dpm.plane((10, 10), 1.0, 45.0)  # spans [-4.5, 4.5] µm
    with pytest.warns(DPMRangeWarning, match=r"-4\.5.*4\.5.*\[-2, 2\].*fail"):
        frac = dpm.check_trained_range(d, (-2.0, 2.0))
    assert frac == pytest.approx(0.6)  # columns at |x| > 2 µm: 6 of 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dpm.check_trained_range(d, (-5.0, 5.0)) == 0.0
        assert dpm.check_trained_range(torch.from_numpy(d), (-4.5, 4.5)) == 0.0
    with pytest.warns(DPMRangeWarning):
        assert dpm.check_trained_range(torch.full((4, 4), 12.0), (-10, 10)) == 1.0
    assert issubclass(DPMRangeWarning, UserWarning)
    with pytest.raises(ValueError, match="trained_range_um"):
        dpm.check_trained_range(d, (3.0, -3.0))
    with pytest.raises(ValueError, match="trained_range_um"):
        dpm.check_trained_range(d, 5.0)


@pytest.mark.parametrize("call, name", [
    (lambda: dpm.uniform((0, 5), 1.0), "shape"),
    (lambda: dpm.uniform((5,), 1.0), "shape"),
    (lambda: dpm.uniform((5, 5, 5), 1.0), "shape"),
    (lambda: dpm.uniform((5.5, 5), 1.0), "shape"),
    (lambda: dpm.uniform((5, 5), float("nan")), "dz_um"),
    (lambda: dpm.plane((5, 5), -0.1, 10.0), "pixel_um"),
    (lambda: dpm.plane((5, 5), 0.1, 90.0), "tilt_deg"),
    (lambda: dpm.cylinder((5, 5), 0.1, 0.0), "diameter_um"),
    (lambda: dpm.cylinder((5, 5), 0.1, 10.0, convex="yes"), "convex"),
    (lambda: dpm.sinusoid((5, 5), 0.5, -1.0, 1.0), "period_px"),
    (lambda: dpm.sinusoid((5, 5), 4, 1.0, -1.0), "z_min_um"),
    (lambda: dpm.sinusoid((5, 5), 4, -1.0, 1.0, axis="z"), "axis"),
])
def test_validation_errors(call, name):
    with pytest.raises(ValueError, match=name):
        call()
