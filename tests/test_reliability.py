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
