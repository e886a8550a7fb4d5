"""Consistency maps are zero for physically consistent outputs and large otherwise; ensembles disagree."""
import numpy as np
import pytest
import torch

from refocuslib import imaging, optics, reliability, samples

MIC = optics.DEEPZ_20X


def _thin_sample_pair(dz):
    beads = samples.beads_on_surface(0, 12, (64 * 0.325, 64 * 0.325), z_um=0.0, min_separation_um=3.0)
    stack = imaging.render_points(beads, MIC, [0.0, -dz], (64, 64), dtype=torch.float64).numpy()
    return stack[0], stack[1]  # in focus (the ideal refocused output), and the defocused input


def test_the_true_refocused_image_is_consistent():
    target, inp = _thin_sample_pair(3.0)
    good = reliability.consistency_map(target, inp, MIC, dz_um=3.0)
    assert good["nrmse"] < 0.06  # residual: light the renderer truncates at the field's edges
    # an output with a bead removed (lost structure) and one with an invented bead are inconsistent
    lost = target.copy()
    y, x = np.unravel_index(np.argmax(target), target.shape)
    lost[max(0, y - 4):y + 5, max(0, x - 4):x + 5] = np.median(target)
    bad = reliability.consistency_map(lost, inp, MIC, dz_um=3.0)
    assert bad["nrmse"] > 5 * good["nrmse"]
    assert bad["map"][y, x] > 10 * good["map"][y, x]
    # the wrong refocusing distance is inconsistent too (|Δz| matters; PSF(Δz) = PSF(−Δz) without mismatch)
    for wrong_dz in (1.0, 2.0, 5.0):
        assert reliability.consistency_map(target, inp, MIC, dz_um=wrong_dz)["nrmse"] > 10 * good["nrmse"]


def test_consistency_holds_for_an_aberrated_psf_off_focus_and_up_to_gain():
    from refocuslib.datasets.deepz import with_aberration
    mic = with_aberration(MIC, 1.5)  # spherical aberration: PSF(z) != PSF(-z)
    beads = samples.beads_on_surface(1, 12, (64 * 0.325, 64 * 0.325), z_um=0.0, min_separation_um=3.0, margin_um=4.0)
    f_in, dz = -1.0, 2.5  # input at -1 µm, output claimed at +1.5 µm (not in focus)
    inp, out = imaging.render_points(beads, mic, [f_in, f_in + dz], (64, 64), dtype=torch.float64).numpy()
    good = reliability.consistency_map(out, inp, mic, dz, input_plane_um=f_in)
    assert good["nrmse"] < 0.1 and abs(good["gain"] - 1) < 0.05  # residual: defocused light beyond the field
    flipped = reliability.consistency_map(out, inp, mic, dz, input_plane_um=-f_in)  # wrong sign convention
    assert flipped["nrmse"] > 4 * good["nrmse"]
    scaled = reliability.consistency_map(3 * out + 0.2, inp, mic, dz, input_plane_um=f_in)
    assert scaled["nrmse"] == pytest.approx(good["nrmse"], rel=1e-3)  # offset: zero padding at the edges
    assert scaled["gain"] == pytest.approx(good["gain"] / 3, rel=1e-3)
    assert reliability.consistency_map(3 * out + 0.2, inp, mic, dz, input_plane_um=f_in,
                                       fit_gain=False)["nrmse"] > 1.0


def test_ensemble_disagreement_rises_with_spread():
    rng = np.random.default_rng(0)
    base = rng.random((16, 16))
    tight = np.stack([base + 0.01 * rng.standard_normal(base.shape) for _ in range(4)])
    loose = np.stack([base + 0.2 * rng.standard_normal(base.shape) for _ in range(4)])
    assert reliability.ensemble_disagreement(loose)["score"] > 10 * reliability.ensemble_disagreement(tight)["score"]
    models = [torch.nn.Linear(3, 1) for _ in range(3)]
    preds = reliability.ensemble_predictions(models, lambda m: m(torch.ones(1, 3)))
    assert preds.shape == (3, 1, 1)


def test_reliability_bad_inputs():
    with pytest.raises(ValueError, match="input_image"):
        reliability.consistency_map(np.zeros((8, 8)), np.zeros((9, 8)), MIC, 1.0)
    with pytest.raises(ValueError, match="predictions"):
        reliability.ensemble_disagreement(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="models"):
        reliability.ensemble_predictions([torch.nn.Linear(1, 1)], lambda m: m(torch.ones(1, 1)))


def _tiny_deepz(seed):
    from refocuslib.models.deepz import DeepZGenerator
    torch.manual_seed(seed)
    return DeepZGenerator(0.0625, levels=2).eval()


def test_refocus_reliability_scores_an_ensemble_and_flags_out_of_range_dpms():
    rng = np.random.default_rng(0)
    image = 100 + 50 * rng.random((32, 32))
    same = reliability.refocus_reliability([_tiny_deepz(0), _tiny_deepz(0)], image, 1.0, -1.0, MIC,
                                           truth=np.zeros((32, 32)), trained_range_um=(-3, 3))
    assert same["disagreement"] == 0.0 and not same["outside_trained_range"]
    assert same["mean"].shape == same["std"].shape == (32, 32)
    assert np.isfinite(same["error_nrmse"]) and np.isfinite(same["consistency"]["nrmse"])
    diff = reliability.refocus_reliability([_tiny_deepz(0), _tiny_deepz(1)], image, 5.0, -5.0, MIC,
                                           trained_range_um=(-3, 3))
    assert diff["disagreement"] > 0 and diff["outside_trained_range"] and np.isnan(diff["error_nrmse"])
    with pytest.raises(ValueError, match="truth"):
        reliability.refocus_reliability([_tiny_deepz(0), _tiny_deepz(1)], image, 1.0, -1.0, MIC,
                                        truth=np.zeros((8, 8)))
    with pytest.raises(ValueError, match="models"):
        reliability.refocus_reliability([_tiny_deepz(0)], image, 1.0, -1.0, MIC)


def test_consistency_floor_is_the_noise_floor_of_the_true_answer():
    """The floor is the consistency NRMSE of the noise-free truth itself: an output equal to the truth has an
    excess of exactly 1 and a blank output a much larger one; the floor falls as the input's SNR rises."""
    target, inp = _thin_sample_pair(2.0)
    rng = np.random.default_rng(3)

    class Fixed(torch.nn.Module):  # a "network" that returns one fixed image whatever it is given
        def __init__(self, img):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.img = torch.as_tensor(img, dtype=torch.float32)

        def forward(self, x, dpm):
            return self.img.expand(x.shape[0], 1, *self.img.shape) + 0 * self.w

    floors = []
    for photons in (30.0, 3000.0):
        noisy = rng.poisson(inp / inp.max() * photons + 5.0).astype(np.float64)
        truth = target / inp.max()  # any scale: the check fits a gain
        r = reliability.refocus_reliability([Fixed(truth), Fixed(truth)], noisy, 2.0, -2.0, MIC, truth=truth)
        assert r["consistency_excess"] == pytest.approx(1.0, rel=1e-4)
        blank = reliability.refocus_reliability([Fixed(0 * truth), Fixed(0 * truth)], noisy, 2.0, -2.0, MIC,
                                                truth=truth)
        assert blank["consistency_excess"] > 3.0
        floors.append(r["consistency_floor"])
    assert floors[1] < 0.5 * floors[0]
    none = reliability.refocus_reliability([Fixed(target), Fixed(target)], inp, 2.0, -2.0, MIC)
    assert np.isnan(none["consistency_floor"]) and np.isnan(none["consistency_excess"])


def test_volume_reliability_shapes_and_data_consistency():
    from refocuslib.models.recurrent_mz import RecurrentMZ
    members = []
    for s in (0, 1):
        torch.manual_seed(s)
        members.append(RecurrentMZ(0.25, levels=2).eval())
    rng = np.random.default_rng(1)
    truth = rng.random((5, 16, 16)).astype(np.float32)
    z = np.arange(5) * 0.5
    r = reliability.volume_reliability(members, truth[[0, 2, 4]], z[[0, 2, 4]], z, truth=truth)
    assert r["mean"].shape == r["std"].shape == (5, 16, 16) and r["disagreement_per_plane"].shape == (5,)
    assert r["disagreement"] > 0 and np.isfinite(r["data_consistency_nrmse"]) and np.isfinite(r["error_nrmse"])
    with pytest.raises(ValueError, match="truth"):
        reliability.volume_reliability(members, truth[[0, 2]], z[[0, 2]], z, truth=truth[:3])


def test_thin_sample_lies_in_one_plane():
    from refocuslib.datasets.deepz import DeepZDataConfig, thin_sample, z_planes
    cfg = DeepZDataConfig(z_half_range_um=2.0, z_step_um=0.5, field_px=32, crop_px=16)
    zs = z_planes(2.0, 0.5)
    for kind in ("beads", "filaments", "nuclei"):
        vol = thin_sample(0, cfg, kind, z_um=0.9)
        lit = np.flatnonzero(vol.reshape(len(zs), -1).sum(1))
        assert list(lit) == [int(np.argmin(np.abs(zs - 0.9)))], kind
    with pytest.raises(ValueError, match="kind"):
        thin_sample(0, cfg, "beads3d")
    with pytest.raises(ValueError, match="z_um"):
        thin_sample(0, cfg, "beads", z_um=5.0)


# ---- claim predicates of notebook 50 (refocuslib.evaluate.reliability)
def test_score_rises_predicate():
    from refocuslib.evaluate.reliability import mean_difference, score_rises
    rng = np.random.default_rng(0)
    ref = 0.02 + 0.002 * rng.standard_normal(8)
    assert score_rises(0.05 + 0.002 * rng.standard_normal(8), ref).holds is True
    # a zero score (identical ensemble members) never rises; the reference against itself does not either
    assert score_rises(np.zeros(8), ref).holds is False
    assert score_rises(np.zeros(8), np.zeros(8)).holds is False
    assert score_rises(ref, ref).holds is False
    # a rise within the noise (≤ 2 s.e.) is not a rise
    assert score_rises(ref + 0.0005, ref).holds is False
    # too few items: not enough data, never ✓
    assert score_rises([0.5, 0.6], [0.1, 0.1]).holds is None
    assert score_rises([0.5, 0.6, 0.7, 0.8], [0.1, 0.1, 0.1, 0.1]).holds is True
    d, se = mean_difference([1.0, 3.0], [0.0, 0.0])
    assert d == 2.0 and se == pytest.approx(1.0)  # sqrt(var([1,3]) / 2) = sqrt(2 / 2)
    with pytest.raises(ValueError, match="n_se"):
        score_rises(ref, ref, n_se=-1)
