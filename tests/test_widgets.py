"""Widget callbacks are pure functions, tested without a display."""
import numpy as np
import pytest

from refocuslib import optics, widgets

ipywidgets = pytest.importorskip("ipywidgets")


@pytest.mark.parametrize("z", [0.0, 0.7, -1.2])
def test_render_psf_plane_is_the_widefield_plane(z):
    m = optics.OIL_63X
    plane = widgets.render_psf_plane(m, z, 32)
    ref = optics.widefield_psf([z], 32, m.pixel_um, m.na, m.wavelength_um, m.n_immersion)[0].numpy()
    assert plane.shape == (32, 32) and plane.dtype == np.float64
    np.testing.assert_allclose(plane, ref, rtol=1e-6, atol=1e-9)


def test_render_psf_plane_uses_the_mask():
    dh = optics.OIL_63X.replace(mask=optics.double_helix_mask())
    plain = widgets.render_psf_plane(optics.OIL_63X, 0.5, 32)
    assert not np.allclose(widgets.render_psf_plane(dh, 0.5, 32), plain)


def test_psf_explorer_builds_and_updates_headless():
    scopes = {"wf": optics.OIL_63X, "dh": optics.OIL_63X.replace(mask=optics.double_helix_mask())}
    box = widgets.psf_explorer(scopes, z_range_um=(-1.0, 1.0), n_pixels=24)
    assert isinstance(box, ipywidgets.VBox)
    image, z, choose = box.controls["image"], box.controls["z"], box.controls["microscope"]
    first = bytes(image.value)
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    z.value = 0.8  # the observer re-renders
    assert bytes(image.value) != first
    choose.value = "dh"
    np.testing.assert_allclose(box.update(), widgets.render_psf_plane(scopes["dh"], 0.8, 24))


def test_psf_explorer_rejects_bad_input():
    with pytest.raises(ValueError):
        widgets.psf_explorer({}, (-1, 1), 16)
    with pytest.raises(ValueError):
        widgets.psf_explorer({"wf": optics.OIL_63X}, (1, -1), 16)
