"""Test-session set-up shared by every test file."""
import os
import tempfile

# hypothesis keeps a cache (example database, source constants) under ./.hypothesis by default: keep it out of
# the repository (tests/test_properties.py is derandomised and needs no database)
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "refocuslib-hypothesis"))

import pytest  # noqa: E402


@pytest.fixture
def write_psf_json(tmp_path):
    """``write_psf_json(na=..., wavelength_um=..., n_immersion=..., pixel_um=..., coefficients_rad={j: rad})`` →
    the path of a psf.json written by :func:`refocuslib.calibrate.save_psf_json` from a
    :class:`~refocuslib.calibrate.Calibration` of those optics (as ``refocuslib calibrate`` writes it)."""
    import numpy as np
    from refocuslib import calibrate as C

    def write(na, wavelength_um, n_immersion, pixel_um, coefficients_rad, name="psf.json"):
        z = np.zeros((1, 1, 1), np.float32)
        cal = C.Calibration(na=na, wavelength_um=wavelength_um, n_immersion=n_immersion, pixel_um=pixel_um,
                            z_step_um=0.2, coefficients_rad=dict(coefficients_rad), residual=0.1,
                            residual_unaberrated=0.2, z0_um=0.0, xy_um=(0.0, 0.0), z_scale=1.0, amplitude=1.0,
                            background=0.0, bead_diameter_um=0.0, iterations=1, crop={}, measured=z, model=z,
                            model_unaberrated=z, name="test calibration")
        return C.save_psf_json(cal, tmp_path / name)

    return write
