"""Forward model, camera and phantoms: physics consistency and reproducibility."""
import numpy as np
import pytest
import torch

from refocuslib import dpm, imaging, optics, samples

MIC = optics.DEEPZ_20X


def test_point_and_volume_renderers_agree():
    bead = samples.Points([[20.5 * 0.325, 20.5 * 0.325, 0.0]], [1000.0])
    vol = samples.points_to_volume(bead, (9, 41, 41), (0.5, 0.325), z0_um=-2.0)
    by_volume = imaging.image_volume(vol, MIC, 0.5)
    by_points = imaging.render_points(bead, MIC, np.arange(-2, 2.01, 0.5), (41, 41))
    # different patch sizes sample the pupil differently; the soft aperture edge keeps them within 0.5 %
    assert torch.allclose(by_volume, by_points, atol=5e-3 * float(by_points.max()))


def test_rendered_photons_are_conserved_in_focus_and_bead_lands_on_its_pixel():
    bead = samples.Points([[10.2, 7.9, 0.3]], [5000.0])
    img = imaging.render_points(bead, MIC, [0.3], (64, 64))[0]
    assert float(img.sum()) == pytest.approx(5000.0, rel=0.03)
    i, j = np.unravel_index(int(img.argmax()), img.shape)
    assert (i, j) == (int(7.9 / 0.325), int(10.2 / 0.325))


def test_defocus_spreads_light_symmetrically_without_mismatch():
    bead = samples.Points([[10.0, 10.0, 0.0]], [1000.0])
    img = imaging.render_points(bead, MIC, [-3.0, 0.0, 3.0], (64, 64))
    assert img[1].max() > 5 * img[0].max()
    assert torch.allclose(img[0], img[2], rtol=1e-4, atol=1e-6)


def test_camera_statistics_match_the_noise_model():
    flat = torch.full((400, 400), 50.0)
    adu = imaging.camera(flat, rng=1, qe=0.8, gain=2.0, read_noise_e=3.0, baseline_adu=100.0,
                         background_photons=10.0)
    mean_e = 0.8 * 60.0
    assert float(adu.mean()) == pytest.approx(100 + 2 * mean_e, rel=0.01)
    assert float(adu.var()) == pytest.approx(4 * mean_e + 9.0, rel=0.05)
    again = imaging.camera(flat, rng=1, qe=0.8, gain=2.0, read_noise_e=3.0, baseline_adu=100.0,
                           background_photons=10.0)
    assert torch.equal(adu, again)


def test_camera_rejects_bad_photons():
    with pytest.raises(ValueError, match="photons"):
        imaging.camera(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="photons"):
        imaging.camera(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="qe"):
        imaging.camera(torch.ones(3), qe=1.5)


def test_normalisations():
    rng = np.random.default_rng(0)
    img = rng.normal(100, 2, (64, 64))
    img[20:30, 20:30] += 500
    bg = imaging.triangle_background(img)
    assert bg == pytest.approx(100, abs=2)
    norm = imaging.normalize_deepz(img)
    assert abs(float(np.median(norm))) < 0.05 and norm[25, 25] == pytest.approx(1.0, abs=0.05)
    pct = imaging.normalize_percentile(img, 0, 100)
    assert pct.min() == pytest.approx(0) and pct.max() == pytest.approx(1)
    with pytest.raises(ValueError, match="image"):
        imaging.normalize_deepz(np.full((4, 4, 4, 4), 1.0))
    with pytest.raises(ValueError, match="image"):
        imaging.triangle_background(np.array([[np.nan, 1.0]]))


def test_samples_are_reproducible_and_follow_their_surface():
    tilt = dpm.plane((64, 64), 0.325, 1.5)
    a = samples.beads_on_surface(3, 25, (20.8, 20.8), height_map_um=tilt, pixel_um=0.325)
    b = samples.beads_on_surface(3, 25, (20.8, 20.8), height_map_um=tilt, pixel_um=0.325)
    np.testing.assert_array_equal(a.xyz_um, b.xyz_um)
    # beads lie on the tilted plane: z = tan(1.5°)·(x − centre)
    expected = np.tan(np.radians(1.5)) * (a.xyz_um[:, 0] - 32 * 0.325)
    np.testing.assert_allclose(a.xyz_um[:, 2], expected, atol=0.01)
    d = np.hypot(*(a.xyz_um[:, None, :2] - a.xyz_um[None, :, :2]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(a), 1)].min() >= 2.0


def test_nuclei_and_filament_volumes():
    vol, centres = samples.nuclei_volume(0, (16, 64, 64), (0.5, 0.325), n_nuclei=6, return_centres=True)
    assert vol.shape == (16, 64, 64) and vol.max() == pytest.approx(1.0) and centres.shape == (6, 3)
    assert vol[tuple(np.clip(centres[0].astype(int), 0, [15, 63, 63]))] > 0.1
    fil = samples.filaments_volume(0, (8, 64, 64), (0.2, 0.1), n_filaments=3)
    assert fil.shape == (8, 64, 64) and fil.sum() > 0 and (fil > 0.05 * fil.max()).mean() < 0.2


def test_single_molecules_density_and_photons():
    sm = samples.single_molecules(0, 50, (13.0, 13.0), (0.0, 4.0), photons_mean=30000, photons_std=0)
    assert len(sm) == 50 and np.all(sm.photons == 30000)
    assert sm.xyz_um[:, 2].min() >= 0 and sm.xyz_um[:, 2].max() <= 4
    with pytest.raises(ValueError, match="z_range_um"):
        samples.single_molecules(0, 5, (13.0, 13.0), (4.0, 0.0))


def test_index_mismatch_uses_render_points_not_volume_convolution():
    with pytest.raises(ValueError, match="microscope"):
        imaging.psf_stack_for_volume(optics.STORM_100X, 3, 0.5, 16)


def test_camera_dataclass_forward_expectation_and_inverse():
    import torch
    from refocuslib.imaging import Camera, camera
    cam = Camera(qe=0.7, gain=2.0, read_noise_e=1.0, baseline_adu=100.0, background_photons=5.0)
    ph = torch.full((64, 64), 50.0)
    torch.testing.assert_close(cam.counts(ph, torch.Generator().manual_seed(3)),
                               camera(ph, torch.Generator().manual_seed(3), qe=0.7, gain=2.0, read_noise_e=1.0,
                                      baseline_adu=100.0, background_photons=5.0))
    torch.testing.assert_close(cam.photons(cam.expected(ph)), ph)
    noisy = cam.counts(torch.full((256, 256), 50.0), 0)
    assert float(cam.photons(noisy).mean()) == pytest.approx(50.0, rel=0.01)
    with pytest.raises(ValueError, match="qe"):
        Camera(qe=1.5)
