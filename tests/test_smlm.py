"""Matching-pursuit baseline, photon fit / regenerated image, and the DeepSTORM3D real-data helpers."""
import numpy as np
import pytest
import torch

from refocuslib import smlm
from refocuslib.models.deepstorm3d import PhysicalLayer


@pytest.fixture(scope="module")
def tetrapod_physics():
    return PhysicalLayer(smlm.STORM_OPTICS, (48, 48), mask=smlm.real_mask("tetrapod_printed"))


def test_pupil_radius_of_the_4f_relay():
    # data README: f·NA/M / p
    assert smlm.pupil_radius_px(100.0, 30.0) == pytest.approx(100e3 * 1.45 / 100 / 30)
    assert smlm.pupil_radius_px(150.0, 24.0) == pytest.approx(90.625)
    with pytest.raises(ValueError, match="mask_pixel_um"):
        smlm.pupil_radius_px(100.0, 0.0)


def test_load_phase_mask_finds_the_key_and_names_bad_ones(tmp_path):
    from scipy.io import savemat
    savemat(tmp_path / "m.mat", {"only": np.eye(5)})
    np.testing.assert_array_equal(smlm.load_phase_mask(tmp_path / "m.mat"), np.eye(5))
    with pytest.raises(ValueError, match="key"):
        smlm.load_phase_mask(tmp_path / "m.mat", key="other")
    with pytest.raises(ValueError, match="name"):
        smlm.real_mask("spiral")


def test_real_frames_load():
    frames = smlm.load_storm_frames(3)
    assert frames.shape == (3, 297, 391) and frames.dtype == np.float32
    assert [p.name for p in smlm.storm_frame_paths(3)] == ["1.tif", "2.tif", "3.tif"]
    tel = smlm.load_telomeres()
    assert tel.shape == (2, 253, 197)


def test_matching_pursuit_recovers_isolated_emitters_without_noise(tetrapod_physics):
    phys = tetrapod_physics
    truth = np.array([[1.013, 1.171, 0.83], [4.1, 1.5, 2.93], [2.0, 4.2, 3.61]])
    photons = np.array([20000.0, 30000.0, 25000.0])
    image = phys.expected(torch.tensor(truth)[None], torch.tensor(photons)[None])[0, 0] + 150.0
    res = smlm.matching_pursuit(image, phys, min_photons=3000, z_range_um=smlm.STORM_Z_RANGE_UM)
    assert len(res.xyz_um) == 3
    order = np.argsort(res.xyz_um[:, 0])
    err_nm = np.abs(res.xyz_um[order] - truth[np.argsort(truth[:, 0])]) * 1000
    assert err_nm[:, :2].max() < 3.0 and err_nm[:, 2].max() < 5.0
    np.testing.assert_allclose(res.photons[order], photons[np.argsort(truth[:, 0])], rtol=0.01)
    assert res.background == pytest.approx(150.0, abs=0.5)
    np.testing.assert_allclose(res.model, image.numpy(), atol=0.05 * float(image.max() - 150))


def test_matching_pursuit_on_background_only_finds_nothing(tetrapod_physics):
    res = smlm.matching_pursuit(np.full((48, 48), 100.0), tetrapod_physics, min_photons=3000,
                                z_range_um=(0.0, 4.0))
    assert len(res.xyz_um) == 0 and res.n_picks == 0
    with pytest.raises(ValueError, match="z_range_um"):
        smlm.matching_pursuit(np.zeros((48, 48)), tetrapod_physics, min_photons=3000)
    with pytest.raises(ValueError, match="image"):
        smlm.matching_pursuit(np.zeros((40, 48)), tetrapod_physics, min_photons=3000, z_range_um=(0, 4))


def test_fit_photons_regenerates_the_image(tetrapod_physics):
    phys = tetrapod_physics
    xyz = np.array([[1.5, 2.5, 1.0], [3.3, 3.0, 3.0]])
    ph = np.array([12000.0, 30000.0])
    image = phys.expected(torch.tensor(xyz)[None], torch.tensor(ph)[None])[0, 0].numpy() + 80.0
    photons, bg, model = smlm.fit_photons(phys, xyz, image)
    np.testing.assert_allclose(photons, ph, rtol=1e-3)
    assert bg == pytest.approx(80.0, abs=0.05)
    np.testing.assert_allclose(model, image, atol=1e-2 * image.max())
    photons, bg, model = smlm.fit_photons(phys, np.zeros((0, 3)), image, background=80.0)
    assert photons.shape == (0,) and np.all(model == 80.0)


def test_fit_photons_with_the_model_mismatch_blur(tetrapod_physics):
    """An image whose PSFs are blurred by σ = 1 px (PhysicalLayer.blur) is regenerated exactly with
    blur_sigma_px=1 and worse without; a negative σ is refused by name."""
    phys = tetrapod_physics
    xyz = np.array([[1.5, 2.5, 1.0], [3.3, 3.0, 3.0]])
    ph = np.array([12000.0, 30000.0])
    sharp = phys.expected(torch.tensor(xyz)[None], torch.tensor(ph)[None])
    image = phys.blur(sharp, 1.0)[0, 0].numpy() + 80.0
    photons, bg, model = smlm.fit_photons(phys, xyz, image, blur_sigma_px=1.0)
    np.testing.assert_allclose(photons, ph, rtol=2e-2)
    err_blur = np.abs(model - image).max()
    err_sharp = np.abs(smlm.fit_photons(phys, xyz, image)[2] - image).max()
    assert err_blur < 2e-2 * (image.max() - 80.0) < err_sharp
    with pytest.raises(ValueError, match="blur_sigma_px"):
        smlm.fit_photons(phys, xyz, image, blur_sigma_px=-1.0)


def test_fit_photons_with_a_known_background_map(tetrapod_physics):
    phys = tetrapod_physics
    xyz = np.array([[2.0, 2.6, 2.0]])
    yy, xx = np.mgrid[:48, :48]
    bg_map = 50.0 + 0.8 * xx + 20 * np.exp(-((yy - 10) ** 2 + (xx - 30) ** 2) / 200.0)
    image = phys.expected(torch.tensor(xyz)[None], torch.tensor([[25000.0]]))[0, 0].numpy() + bg_map - 7.0
    photons, level, model = smlm.fit_photons(phys, xyz, image, background=bg_map)
    assert photons[0] == pytest.approx(25000.0, rel=1e-3)
    assert level == pytest.approx(bg_map.mean() - 7.0, abs=0.05)
    np.testing.assert_allclose(model, image, atol=1e-2 * image.max())
    with pytest.raises(ValueError, match="background"):
        smlm.fit_photons(phys, xyz, image, background=np.zeros((3, 3)))
    smooth = smlm.smooth_background(image, 21)
    assert smooth.shape == image.shape and np.all(smooth <= image.max())


def test_to_model_frames_maps_the_measured_background_onto_the_models():
    """The real STORM stack converted for the shipped Tetrapod model: its median background lands on the model's
    training background (in model counts), and rescale=False leaves the frames as they are."""
    import numpy as np
    from refocuslib import recipes, smlm
    assert recipes.shipped_path(recipes.recipe("ds3d_tetrapod")).is_file(), "ship ds3d_tetrapod first (never train here)"
    task, _ = recipes.train_cached("ds3d_tetrapod", "results/test_smlm", progress=False, use_shipped=True)
    frames = smlm.load_storm_frames(8)
    x, ptc, e_per_adu = smlm.to_model_frames(task, frames)
    bg_model = float(np.mean(task.sampler.background)) * task.physics.gain * task.physics.qe + task.physics.baseline_adu
    assert x.shape == frames.shape and e_per_adu > 0
    at_bg = task.to_model_counts(np.full((2, 2), ptc["background_adu"], np.float32), baseline_adu=ptc["offset_adu"],
                                 e_per_adu=e_per_adu)  # the frames' background level → the model's
    assert np.allclose(at_bg.numpy(), bg_model, rtol=1e-4)
    same, _, none = smlm.to_model_frames(task, frames, rescale=False)
    assert none is None and np.array_equal(same.numpy(), frames)
