"""Recurrent-MZ: model interface (any M, any order), losses against references, data, training, baselines."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from refocuslib import losses, metrics
from refocuslib.datasets.recurrent_mz import VolumeSpec, sample_batch, simulate_volumes
from refocuslib.dpm import DPMRangeWarning
from refocuslib.models.blocks import count_parameters
from refocuslib.models.recurrent_mz import ConvGRUCell, RecurrentMZ, encoder_channels
from refocuslib.models.unet3d import UNet3D
from refocuslib.tasks import recurrent_mz as rmz

TINY = dict(kind="nuclei", shape_yx=(32, 32), n_planes=7, z_step_um=0.5, input_spacing_um=1.0, n_inputs=3,
            n_objects=4, radius_um=(0.5, 0.9))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions: one thread is as fast, and immune to oversubscription on a busy CI machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_set():
    return simulate_volumes(VolumeSpec(**TINY), 3, seed=0)


# ------------------------------------------------------------------------------------------------ model
def test_encoder_channels_follow_eq1():
    assert encoder_channels(4, 1.0) == [(10, 20), (20, 40), (40, 80), (80, 160)]
    assert encoder_channels(3, 0.5) == [(5, 10), (10, 20), (20, 40)]


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_any_number_and_order_of_inputs_run(m):
    torch.manual_seed(0)
    net = RecurrentMZ(width=0.25, levels=3).eval()
    n_params = count_parameters(net)
    x, d = torch.rand(2, m, 30, 26), torch.randn(2, m, 30, 26) * 0.3  # odd sizes are padded and cropped back
    out = net(x, d)
    assert out.shape == (2, 1, 30, 26) and torch.isfinite(out).all()
    for perm in list(itertools.permutations(range(m)))[:6]:
        p = list(perm)
        assert net(x[:, p], d[:, p]).shape == out.shape
    assert count_parameters(net) == n_params  # nothing is created for a new M


def test_parameter_count_does_not_depend_on_m():
    torch.manual_seed(0)
    net = RecurrentMZ(width=0.25, levels=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    counts = []
    for m in (1, 2, 4, 7):
        net(torch.rand(1, m, 16, 16), torch.zeros(1, m, 16, 16))
        counts.append(count_parameters(net))
    assert len(set(counts)) == 1
    assert set(net.state_dict()) == set(before)  # no M-dependent parameters or buffers appear
    # the GRU of each scale has the width of that scale's encoder output, independent of M
    assert [g.hidden for g in net.gru] == [c for _, c in net.channels]


def test_volume_batches_planes_and_matches_single_calls():
    torch.manual_seed(0)
    net = RecurrentMZ(width=0.25, levels=2).eval()
    imgs = torch.rand(3, 16, 16)
    dpms = torch.randn(5, 3, 16, 16) * 0.2
    vol = net.volume(imgs, dpms, batch_planes=2)
    with torch.no_grad():
        one = net(imgs[None], dpms[3:4])[0, 0]
    assert vol.shape == (5, 16, 16)
    assert torch.allclose(vol[3], one, atol=1e-5)


def test_convgru_follows_eq4_to_6():
    torch.manual_seed(0)
    cell = ConvGRUCell(2)
    x, h = torch.rand(1, 2, 5, 5), torch.rand(1, 2, 5, 5)
    z, r = torch.sigmoid(cell.gates(torch.cat([x, h], 1))).chunk(2, 1)
    h_tilde = torch.tanh(cell.candidate(torch.cat([x, r * h], 1)))
    assert torch.allclose(cell(x, h), (1 - z) * h + z * h_tilde)
    # h0 = 0: the first step is z ⊙ h̃
    seq = torch.rand(1, 3, 2, 5, 5)
    h1 = cell(seq[:, 0])
    assert torch.allclose(cell.run(seq), cell(seq[:, 2], cell(seq[:, 1], h1)))


def test_unet3d_shapes_and_fixed_inputs():
    net = UNet3D(3, 7, width=0.125, levels=2).eval()
    assert net(torch.rand(2, 3, 18, 20)).shape == (2, 7, 18, 20)
    with pytest.raises(ValueError, match="images"):
        net(torch.rand(2, 2, 18, 20))  # the 3D U-Net only takes the M it was built for


@pytest.mark.parametrize("images,dpms,match", [
    (torch.rand(1, 16, 16), torch.rand(1, 16, 16), "images"),
    (torch.rand(1, 2, 16, 16), torch.rand(1, 3, 16, 16), "dpms"),
    (torch.rand(1, 0, 16, 16), torch.rand(1, 0, 16, 16), "images"),
])
def test_bad_model_input_names_the_parameter(images, dpms, match):
    with pytest.raises(ValueError, match=match):
        RecurrentMZ(width=0.25, levels=2)(images, dpms)


def test_bad_arguments_name_the_parameter(tiny_set):
    with pytest.raises(ValueError, match="levels"):
        RecurrentMZ(levels=1)
    with pytest.raises(ValueError, match="input_spacing_um"):
        VolumeSpec(**{**TINY, "input_spacing_um": 5.0})
    with pytest.raises(ValueError, match="kind"):
        VolumeSpec(**{**TINY, "kind": "cells"})
    with pytest.raises(ValueError, match="shape_yx"):
        VolumeSpec(**{**TINY, "shape_yx": (8, 8)})
    with pytest.raises(ValueError, match="crop_px"):
        sample_batch(tiny_set, torch.Generator().manual_seed(0), 2, 64)
    net = RecurrentMZ(width=0.25, levels=2)
    with pytest.raises(ValueError, match="z_inputs_um"):
        rmz.recurrent_mz_volume(net, np.zeros((3, 16, 16)), [0.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="dpm_noise_um"):
        rmz.recurrent_mz_volume(net, np.zeros((1, 16, 16)), [0.0], [0.0], dpm_noise_um=-1)
    with pytest.raises(ValueError, match="methods"):
        rmz.train_models(VolumeSpec(**TINY), {}, "/nonexistent", methods=("wnet",))
    with pytest.raises(ValueError, match="steps"):
        rmz.train_models(VolumeSpec(**TINY), {"deepz": {}}, "/nonexistent", methods=("deepz",))


def test_dpm_beyond_trained_range_warns():
    net = RecurrentMZ(width=0.25, levels=2)
    with pytest.warns(DPMRangeWarning, match="trained"):
        rmz.recurrent_mz_volume(net, np.zeros((2, 16, 16)), [0.0, 1.0], [5.0], trained_range_um=(-2.0, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rmz.recurrent_mz_volume(net, np.zeros((2, 16, 16)), [0.0, 1.0], [1.5], trained_range_um=(-2.0, 2.0))


# ----------------------------------------------------------------------------------------------- losses
def test_berhu_matches_hand_computation():
    out = torch.tensor([0.05, 0.1, 0.3, -0.2])
    # |e| ≤ c: |e|;  beyond: (e² + c²)/(2c) with c = 0.1 → 0.3: 0.5, 0.2: 0.25
    assert float(losses.berhu(out, torch.zeros(4), c=0.1)) == pytest.approx((0.05 + 0.1 + 0.5 + 0.25) / 4)


def test_ms_ssim_reference_values():
    rng = np.random.default_rng(0)
    a = rng.random((64, 64))
    from scipy import ndimage
    b = np.clip(ndimage.gaussian_filter(a, 1.0) + 0.05 * rng.standard_normal(a.shape), 0, 1)
    ta, tb = (torch.tensor(v, dtype=torch.float64)[None, None] for v in (a, b))
    assert float(losses.ms_ssim(ta, ta)) == pytest.approx(1.0, abs=1e-9)
    # torch MS-SSIM (the training loss) against the numpy reference implementation of the metrics module
    ref = metrics.ms_ssim(a, b, data_range=1.0)
    assert 0.1 < ref < 0.95
    assert float(losses.ms_ssim(ta, tb, data_range=1.0)) == pytest.approx(ref, rel=1e-6)
    # single scale against scikit-image's Gaussian-window SSIM
    from skimage.metrics import structural_similarity
    sk = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False)
    assert float(losses.ssim(ta, tb, data_range=1.0)) == pytest.approx(sk, rel=1e-3)


def test_recurrent_mz_loss_is_eq7():
    torch.manual_seed(0)
    out, tgt = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    d_fake = torch.full((2, 1), 0.3)
    expected = 3 * losses.berhu(out, tgt) + (1 - losses.ms_ssim(out, tgt)) + 0.5 * (1 - 0.3) ** 2
    assert float(losses.recurrent_mz_generator_loss(out, tgt, d_fake)) == pytest.approx(float(expected))


# ------------------------------------------------------------------------------------------------- data
def test_batches_pair_inputs_dpms_and_targets(tiny_set):
    b1 = sample_batch(tiny_set, torch.Generator().manual_seed(5), 4, 16, (2, 3), jitter_planes=1)
    b2 = sample_batch(tiny_set, torch.Generator().manual_seed(5), 4, 16, (2, 3), jitter_planes=1)
    for k in b1:
        assert torch.equal(b1[k], b2[k])  # drawn only from the generator
    m = b1["images"].shape[1]
    assert b1["dpms"].shape == b1["images"].shape and b1["target"].shape == (4, 1, 16, 16) and m in (2, 3)
    expect = (b1["z_output_um"][:, None] - b1["z_inputs_um"]) / 10.0  # DPM/10, Deep-Z convention
    assert torch.allclose(b1["dpms"][:, :, 0, 0], expect)
    assert torch.all(b1["dpms"] == b1["dpms"][:, :, :1, :1])  # uniform DPMs
    # without augmentation the target is the scan plane at z_out and the inputs the scan planes at z_in
    b = sample_batch(tiny_set, torch.Generator().manual_seed(1), 3, 32, (3,), augment=False)
    z = tiny_set.z_um
    for i in range(3):
        t = int(np.argmin(np.abs(z - float(b["z_output_um"][i]))))
        v = [n for n in range(len(tiny_set)) if np.array_equal(tiny_set.stacks[n, t], b["target"][i, 0].numpy())]
        assert v, "target is a plane of a scan"
        for j, zi in enumerate(b["z_inputs_um"][i]):
            k = int(np.argmin(np.abs(z - float(zi))))
            assert np.array_equal(tiny_set.stacks[v[0], k], b["images"][i, j].numpy())


def test_simulated_scans_are_normalised_and_reproducible():
    spec = VolumeSpec(**TINY)
    a, b = simulate_volumes(spec, 2, seed=3), simulate_volumes(spec, 2, seed=3)
    assert np.array_equal(a.stacks, b.stacks) and a.stacks.shape == (2, 7, 32, 32)
    assert abs(float(np.median(a.stacks))) < 0.1 and 0.9 < float(a.stacks.max()) < 3
    assert list(spec.input_indices()) == [1, 3, 5]
    beads = simulate_volumes(VolumeSpec(**{**TINY, "kind": "beads", "n_objects": 3, "min_separation_um": 0.2}), 1,
                             seed=0)
    assert len(beads.beads_xyz_um[0]) == 3


# -------------------------------------------------------------------------------------------- baselines
def test_interpolation_is_exact_at_inputs_linear_between_and_order_free():
    imgs = np.stack([np.full((4, 4), v, np.float32) for v in (0.0, 1.0, 3.0)])
    zi, zo = np.array([0.0, 1.0, 2.0]), np.array([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    out = rmz.interpolation_volume(imgs, zi, zo)
    assert np.allclose(out[:, 0, 0], [0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 3.0])
    p = [2, 0, 1]
    assert np.allclose(rmz.interpolation_volume(imgs[p], zi[p], zo), out)


def test_plane_metrics_against_the_metrics_module():
    rng = np.random.default_rng(0)
    t = rng.random((3, 16, 16))
    p = t + 0.05 * rng.standard_normal(t.shape)
    m = rmz.plane_metrics(p, t)
    rng_t = t.max() - t.min()
    assert np.allclose(m["rmse"], [metrics.rmse(a, b) for a, b in zip(p, t)])
    assert np.allclose(m["psnr"], [metrics.psnr(a, b, data_range=rng_t) for a, b in zip(p, t)])
    assert np.allclose(m["nrmse"], m["rmse"] / rng_t)


# ------------------------------------------------------------------------------------------- training
def test_short_cpu_training_lowers_the_loss_and_is_cached(tmp_path):
    spec = VolumeSpec(**TINY)
    train = {"recurrent_mz": dict(width=0.25, levels=2, batch_size=4, crop_px=16, n_inputs=[2, 3],
                                  jitter_planes=1, adv_weight=0.5, disc_channels=[8, 16], steps=40, lr_g=3e-3,
                                  lr_d=1e-3, val_every=20),
             "deepz": dict(width=0.125, levels=2, disc_blocks=2, batch_size=4, crop_px=16, steps=4, val_every=2),
             "unet3d": dict(width=0.125, levels=2, batch_size=2, crop_px=16, steps=4, val_every=2)}
    nets = rmz.train_models(spec, train, tmp_path, n_train=3, n_val=1)
    vals = [v["val_loss"] for v in nets.results["recurrent_mz"].validation]
    assert vals[-1] < 0.7 * vals[0]
    assert {"recurrent_mz", "deepz", "unet3d"} == set(nets.models)
    # a second call with the same settings loads the finished runs instead of training
    again = rmz.train_models(spec, train, tmp_path, n_train=3, n_val=1)
    for m in nets.models:
        assert again.results[m].resumed_from == again.results[m].last_step == train[m]["steps"]
        for a, b in zip(nets.models[m].state_dict().values(), again.models[m].state_dict().values()):
            assert torch.equal(a, b)
    # other settings → another cache entry
    other = rmz.train_models(spec, {"deepz": {**train["deepz"], "steps": 2}}, tmp_path, methods=("deepz",),
                             n_train=3, n_val=1)
    assert other.dirs["deepz"] != nets.dirs["deepz"] and other.results["deepz"].resumed_from == 0

    test = simulate_volumes(spec, 1, seed=50)
    ev = rmz.evaluate_methods(nets, test)
    assert set(ev["metrics"]) == set(rmz.METHODS)
    for d in ev["metrics"].values():
        assert d["psnr"].shape == (1, spec.n_planes)
    perm = rmz.permutation_rmse(nets, test, "recurrent_mz")
    assert perm.shape == (6, 1) and np.all(np.isfinite(perm))
    assert np.allclose(rmz.permutation_rmse(nets, test, "interpolation"),
                       rmz.permutation_rmse(nets, test, "interpolation")[0])  # interpolation ignores order


def test_bench_runs_small():
    from refocuslib.bench import bench_recurrent_mz
    res = bench_recurrent_mz(n=3, size=32, rmz=(0.25, 2), deepz=(0.125, 2))
    assert res["output_shape_ok"] and res["recurrent_mz_s"] > 0 and res["deepz_nearest_s"] > 0
    assert math.isfinite(res["ratio_rmz_over_deepz"])


def test_map_style_dataset_is_reproducible(tiny_set):
    from refocuslib.datasets.recurrent_mz import RecurrentMZDataset
    ds = RecurrentMZDataset(tiny_set, length=5, crop_px=16, n_inputs=(3,), seed=2)
    a, b = ds[3], ds[3]
    assert len(ds) == 5 and a["images"].shape == (3, 16, 16) and a["target"].shape == (1, 16, 16)
    assert all(torch.equal(a[k], b[k]) for k in a)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["dpms"].shape == (5, 3, 16, 16)
    with pytest.raises(IndexError):
        ds[5]
