"""Deep-Z DPM explorer: the pure callback (headless) and the widget wiring."""
import numpy as np
import pytest
import torch

from refocuslib import dpm
from refocuslib.inference import refocus
from refocuslib.models.deepz import DeepZGenerator
from refocuslib.widgets import dpm_explorer, dpm_refocus_png, render_dpm_refocus

PX = 0.325


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DeepZGenerator(0.125, levels=3).eval()
    m.trained_range_um = (-3.0, 3.0)
    return m


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((40, 48)).astype(np.float32)


def test_callback_builds_the_dpm_and_refocuses(model, image):
    r = render_dpm_refocus(model, image, PX, "uniform", dz_um=1.5)
    assert np.all(r["dpm"] == 1.5) and r["output"].shape == image.shape
    assert np.allclose(r["output"], refocus(model, image, 1.5))
    r = render_dpm_refocus(model, image, PX, "tilt", dz_um=0.5, tilt_deg=2.0, azimuth_deg=30.0)
    assert np.allclose(r["dpm"], dpm.plane(image.shape, PX, 2.0, 30.0, offset_um=0.5))
    assert np.allclose(r["output"], refocus(model, image, r["dpm"]))
    r = render_dpm_refocus(model, image, PX, "cylinder", dz_um=1.0, diameter_um=50.0)
    assert np.allclose(r["dpm"], dpm.cylinder(image.shape, PX, 50.0, offset_um=1.0))
    assert r["dpm"].max() == pytest.approx(1.0, abs=0.05) and r["dpm"].min() < 0.5


def test_callback_warns_outside_the_trained_range_and_checks_input(model, image):
    with pytest.warns(dpm.DPMRangeWarning):
        render_dpm_refocus(model, image, PX, "uniform", dz_um=4.0)
    with pytest.raises(ValueError, match="mode"):
        render_dpm_refocus(model, image, PX, "sphere")
    with pytest.raises(ValueError, match="image"):
        render_dpm_refocus(model, image[None], PX)


def test_png_and_explorer(model, image):
    png = dpm_refocus_png(image, np.zeros_like(image), image, PX, "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    box = dpm_explorer(model, image, PX)
    c = box.controls
    assert c["dz"].min == pytest.approx(-4.5) and c["dz"].max == pytest.approx(4.5)  # trained range ± half
    first = c["image"].value
    c["mode"].value = "tilt"  # observers re-render
    assert c["image"].value != first
    c["dz"].value = 4.4
    assert "trained" in c["info"].value
    res = box.update()
    assert res["dpm"].shape == image.shape
