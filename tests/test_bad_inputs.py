"""The library's contract for bad input: ValueError naming the parameter (and the accepted range), never a
silently wrong answer; legitimately empty point sets give defined results."""
import numpy as np
import pytest

from refocuslib import dpm, imaging, io, localize, metrics, optics

NAN_IMAGE = np.full((16, 16), np.nan)
FOUR_D = np.zeros((2, 2, 16, 16))


@pytest.mark.parametrize("call,name", [
    (lambda: metrics.lateral_fwhm_um(NAN_IMAGE, 0.1), "image"),
    (lambda: metrics.lateral_fwhm_um(FOUR_D, 0.1), "image"),
    (lambda: metrics.lateral_fwhm_um(np.zeros((16, 16)), -0.1), "pixel_um"),
    (lambda: localize.find_peaks_2d(NAN_IMAGE, 0.5), "image"),
    (lambda: localize.find_peaks_2d(FOUR_D, 0.5), "image"),
    (lambda: imaging.normalize_deepz(NAN_IMAGE), "image"),
    (lambda: imaging.normalize_deepz(FOUR_D), "image"),
    (lambda: io.write_tiff("unused.tif", NAN_IMAGE.astype(np.float32)), "array"),
    (lambda: dpm.plane((16, 16), -0.325, 1.5), "pixel_um"),
    (lambda: dpm.from_height_map(NAN_IMAGE), "height_um"),
    (lambda: optics.widefield_psf([0.0], 16, -0.1, 1.4, 0.6, 1.515), "pixel_um"),
    (lambda: optics.widefield_psf([], 16, 0.1, 1.4, 0.6, 1.515), "z_um"),
    (lambda: metrics.histogram_kl([], [1.0, 2.0]), "values_a"),
    (lambda: metrics.fit_gaussian_2d(np.zeros((0, 7, 7))), "patches"),
    (lambda: localize.match_points([1.0, 2.0], np.zeros((1, 2))), "pred_nm"),
    (lambda: metrics.psnr(np.zeros((4, 4)), np.zeros((5, 4))), "b"),
])
def test_bad_input_raises_value_error_naming_the_parameter(call, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=name):
        call()


def test_empty_point_sets_give_defined_matching_results():
    truth = np.array([[0.0, 0.0, 0.0], [500.0, 0.0, 100.0]])
    none_found = localize.match_points(np.zeros((0, 3)), truth)
    assert (none_found.tp, none_found.fp, none_found.fn, none_found.jaccard) == (0, 0, 2, 0.0)
    assert np.isnan(none_found.rmse_lateral_nm)
    nothing_there = localize.match_points(np.array([[0.0, 0.0, 0.0]]), np.zeros((0, 3)))
    assert (nothing_there.tp, nothing_there.fp, nothing_there.jaccard) == (0, 1, 0.0)
