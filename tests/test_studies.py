"""Design studies (refocuslib.studies) and the DPM conditioning-scale switch they use."""
import numpy as np
import pytest

from refocuslib import dpm, studies


def test_network_scale_switches_and_restores():
    d = np.full((4, 4), 3.0)
    assert np.allclose(dpm.to_network(d), 0.3)
    with dpm.network_scale(1.0):
        assert np.allclose(dpm.to_network(d), 3.0)
    assert np.allclose(dpm.to_network(d), 0.3) and dpm.NETWORK_SCALE_UM == 10.0
    with pytest.raises(ValueError, match="scale_um"):
        dpm.network_scale(0.0)


def test_dpm_scale_study_trains_each_scale_from_the_same_start(tmp_path):
    small = {"params": {"data": {"n_samples": 2, "field_px": 64, "crop_px": 32}, "n_val": 4, "n_val_samples": 1}}
    r = studies.dpm_scale_study("deepz_beads", (10.0, 1.0), steps=4, val_every=2, out_dir=str(tmp_path),
                                overrides=small)
    assert r["val_step"] == [2, 4]
    assert set(r["val_nrmse"]) == {"10", "1"} and all(len(v) == 2 for v in r["val_nrmse"].values())
    assert r["ratio_to_first"]["10"] == [1.0, 1.0]
    assert r["val_nrmse"]["10"] != r["val_nrmse"]["1"]  # the scale reaches the network
    with pytest.raises(ValueError, match="scales_um"):
        studies.dpm_scale_study("deepz_beads", (10.0,), steps=2)
    with pytest.raises(ValueError, match="Deep-Z recipe"):
        studies.dpm_scale_study("rmz_nuclei", (10.0, 1.0), steps=2)
