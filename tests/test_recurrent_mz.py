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
from refocuslib.evaluate import recurrent_mz as ev_rmz
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
    m = ev_rmz.plane_metrics(p, t)
    rng_t = t.max() - t.min()
    assert np.allclose(m["rmse"], [metrics.rmse(a, b) for a, b in zip(p, t)])
    assert np.allclose(m["psnr"], [metrics.psnr(a, b, data_range=rng_t) for a, b in zip(p, t)])
    assert np.allclose(m["nrmse"], m["rmse"] / rng_t)
    assert np.allclose(m["ssim"], [metrics.ssim(a, b, data_range=rng_t) for a, b in zip(p, t)])
    fg = ev_rmz.foreground_mask(t)
    k = int(np.argmax(fg.sum((1, 2))))
    assert np.isclose(m["fg_nrmse"][k], np.sqrt(np.mean((p[k][fg[k]] - t[k][fg[k]]) ** 2)) / rng_t)
    assert np.allclose(ev_rmz.plane_metrics(t, t)["ssim"], 1.0)


# ------------------------------------------------------------------------------------------- training
def _tiny_params(**kw):
    return {"data": dict(TINY), "n_train_volumes": 3, "n_val_volumes": 1, **kw}


def test_norms_are_batch_independent_where_asked():
    torch.manual_seed(0)
    x, d = torch.rand(4, 2, 16, 16), torch.rand(4, 2, 16, 16)
    for norm in ("group", "none"):
        net = RecurrentMZ(width=0.25, levels=2, norm=norm).train()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        assert torch.allclose(net(x, d)[:1], net(x[:1], d[:1]), atol=1e-5)   # sample 0 ignores the others
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in RecurrentMZ(width=0.25, levels=2).modules())
    u = UNet3D(3, 5, width=0.125, levels=2, norm="none")
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in u.modules())
    with pytest.raises(ValueError, match="norm"):
        RecurrentMZ(width=0.25, levels=2, norm="layer")


def test_input_skip_passes_inputs_through_and_stays_order_free():
    net = RecurrentMZ(width=0.25, levels=2, norm="none", input_skip=True).eval()
    with torch.no_grad():
        for p in net.head.parameters():
            p.zero_()   # the network's own correction off: only the DPM-weighted input mean is left
        x = torch.rand(1, 3, 16, 16)
        d = torch.tensor([0.0, 1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
        out = net(x, d)
        assert torch.allclose(out[:, 0], x[:, 0], atol=1e-3)           # DPM 0 → the input itself
        p = [2, 0, 1]
        assert torch.allclose(net(x[:, p], d[:, p]), out, atol=1e-6)


def test_plane_skip_passes_an_input_through_at_its_own_plane_only():
    """input_skip='plane': the output is the measured input at DPM 0 whatever the network says (its own output is
    set to a constant 7 here), the network's own output half a micron away (with its output off: (almost) nothing,
    unlike the softmax 'mean' skip, which carries the nearest input there); repeated inputs at one plane give their
    mean; order-free."""
    from refocuslib.models.recurrent_mz import PLANE_SKIP_TAU_UM, skip_mode
    net = RecurrentMZ(width=0.25, levels=2, norm="none", input_skip="plane").eval()
    mean = RecurrentMZ(width=0.25, levels=2, norm="none", input_skip=True).eval()
    with torch.no_grad():
        for m in (net, mean):
            for p in m.head.parameters():
                p.zero_()
        x = torch.rand(1, 3, 16, 16) + 0.5
        d0 = torch.tensor([0.0, 0.4, -0.4]).view(1, 3, 1, 1).expand(1, 3, 16, 16)   # DPM/10: input 0 at its plane
        assert torch.allclose(net(x, d0)[:, 0], x[:, 0], atol=1e-6)
        d_half = torch.tensor([0.05, 0.35, -0.45]).view(1, 3, 1, 1).expand(1, 3, 16, 16)   # 0.5 µm off input 0
        assert float(net(x, d_half).abs().max()) < 1e-6
        assert float(mean(x, d_half).mean()) > 0.5 * float(x[:, 0].mean())             # 'mean' carries it over
        p = [2, 0, 1]
        assert torch.allclose(net(x[:, p], d0[:, p]), net(x, d0), atol=1e-6)
        rep = torch.zeros(1, 3, 16, 16)                                    # three inputs at the output plane
        assert torch.allclose(net(x, rep)[:, 0], x.mean(1), atol=1e-6)
        net.head.bias.fill_(7.0)                                           # the network's own output: 7
        assert torch.allclose(net(x, d0)[:, 0], x[:, 0], atol=1e-6)
        assert torch.allclose(net(x, d_half), torch.full_like(x[:, :1], 7.0), atol=1e-6)
    assert PLANE_SKIP_TAU_UM <= 0.15   # narrower than the 0.25–0.5 µm output planes of the recipes
    assert (skip_mode(True), skip_mode(False), skip_mode("plane")) == ("mean", "none", "plane")
    with pytest.raises(ValueError, match="input_skip"):
        RecurrentMZ(width=0.25, levels=2, input_skip="nearest")


def test_recipe_tasks_train_validate_and_evaluate(tmp_path):
    """The three TASKS factories train a few steps; validation reports the zero and baseline scores; the
    evaluation layer runs every method on a test volume."""
    from refocuslib.train import TASKS, TrainConfig, fit, resolve_task_factory
    tasks = {"recurrent_mz": _tiny_params(width=0.25, levels=2, norm="none", batch_size=4, crop_px=16,
                                          n_inputs=[2, 3], adv_weight=0.5, disc_channels=[8, 16], n_val=4),
             "deepz_volume": _tiny_params(width=0.125, levels=2, gan=False, batch_size=4, crop_px=16, n_val=4),
             "unet3d": _tiny_params(width=0.125, levels=2, norm="none", batch_size=2, crop_px=16, n_val=2)}
    models = {}
    for name, params in tasks.items():
        assert name in TASKS
        task = resolve_task_factory(name)(**params)
        steps = 40 if name == "recurrent_mz" else 4
        res = fit(task, TrainConfig(steps=steps, out_dir=str(tmp_path / name), lr_g=3e-3, val_every=steps // 2,
                                    progress=False))
        v = res.validation[-1]
        assert {"val_loss", "val_loss_zero"} <= set(v) and math.isfinite(v["val_loss"])
        assert any(k.startswith("val_psnr_") for k in v)
        models[{"deepz_volume": "deepz"}.get(name, name)] = task
        if name == "recurrent_mz":
            assert res.validation[-1]["val_loss"] < res.validation[0]["val_loss"]
    assert (models["recurrent_mz"].discriminator is not None) and models["deepz"].discriminator is None
    test = simulate_volumes(VolumeSpec(**TINY), 1, seed=50)
    ev = ev_rmz.evaluate_methods(models, test)
    assert set(ev["metrics"]) == set(ev_rmz.METHODS)
    for d in ev["metrics"].values():
        assert d["psnr"].shape == d["ssim"].shape == (1, TINY["n_planes"])
    pv = ev_rmz.per_volume(ev, "ssim")
    assert set(pv) == set(ev_rmz.METHODS) and all(v.shape == (1,) for v in pv.values())
    perm = ev_rmz.permutation_rmse(models, test, "recurrent_mz")
    assert perm.shape == (6, 1) and np.all(np.isfinite(perm))
    interp = ev_rmz.permutation_rmse(models, test, "interpolation")
    assert np.allclose(interp, interp[0])  # interpolation ignores order


# ---------------------------------------------------------------------------------------- claim predicates
def _scores(n=6, seed=0):
    """Per-volume PSNR/SSIM of a method that beats three baselines by a clear margin, plus noise."""
    rng = np.random.default_rng(seed)
    base = {"interpolation": 24.0, "deepz": 23.0, "unet3d": 22.0, "recurrent_mz": 26.0}
    psnr = {m: v + 0.2 * rng.standard_normal(n) for m, v in base.items()}
    ssim = {m: v / 40 + 0.005 * rng.standard_normal(n) for m, v in base.items()}
    return psnr, ssim


def test_beats_baselines_claim_holds_fails_and_needs_volumes():
    psnr, ssim = _scores()
    assert ev_rmz.beats_baselines_claim(psnr, ssim).holds is True
    zero = {**psnr, "recurrent_mz": np.full(6, 12.0)}      # an all-dark output: PSNR far below
    assert ev_rmz.beats_baselines_claim(zero, {**ssim, "recurrent_mz": np.zeros(6)}).holds is False
    ident = {**psnr, "recurrent_mz": psnr["interpolation"]}  # the interpolation itself does not beat it
    assert ev_rmz.beats_baselines_claim(ident, {**ssim, "recurrent_mz": ssim["interpolation"]}).holds is False
    only_psnr = {**ssim, "recurrent_mz": ssim["interpolation"] - 0.01}   # PSNR alone is not enough
    assert ev_rmz.beats_baselines_claim(psnr, only_psnr).holds is False
    few = ev_rmz.beats_baselines_claim({m: v[:2] for m, v in psnr.items()}, {m: v[:2] for m, v in ssim.items()})
    assert few.holds is None and few.n_items == 2


def test_input_planes_claim():
    deepz = np.full(5, 32.0)
    assert ev_rmz.input_planes_claim(deepz - 0.5, deepz).holds is True
    assert ev_rmz.input_planes_claim(deepz - 2.0, deepz).holds is False
    assert ev_rmz.input_planes_claim(np.full(5, 12.0), deepz).holds is False   # zero output
    assert ev_rmz.input_planes_claim(deepz[:2], deepz[:2]).holds is None
    exact = ev_rmz.input_planes_claim(np.full(5, np.inf), deepz)   # the measured planes passed through exactly
    assert exact.holds is True and exact.n_items == 5 and "5 of 5 volumes reproduced exactly" in exact.detail
    assert ev_rmz.input_planes_claim(np.array([np.inf, 12, 12, 12, 12.0]), deepz).holds is False  # no hiding
    assert ev_rmz.input_planes_claim(np.array([np.inf, 31.8, 31.8, 31.8, 31.8]), deepz).holds is True
    assert ev_rmz.input_planes_claim(np.full(5, np.nan), deepz).holds is None


def _bead_volume(xyz_um, shape=(17, 48, 48), px=0.1, dz=0.25, sx=0.09, sz=0.3, shift_z=0.0):
    z, y, x = np.meshgrid(np.arange(shape[0]) * dz, np.arange(shape[1]) * px, np.arange(shape[2]) * px,
                          indexing="ij")
    v = np.zeros(shape)
    for bx, by, bz in xyz_um:
        v += np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * sx ** 2) - (z - bz - shift_z) ** 2 / (2 * sz ** 2))
    return v


def test_bead_fwhm_at_truth_recovers_the_widths_and_fails_on_zero():
    rng = np.random.default_rng(1)
    xyz = np.column_stack([rng.uniform(0.8, 4.0, 12), rng.uniform(0.8, 4.0, 12), rng.uniform(1.0, 3.0, 12)])
    xyz = xyz[np.argsort(xyz[:, 0])]
    keep = [0]
    for k in range(1, len(xyz)):   # isolated beads only
        if np.min(np.hypot(*(xyz[keep, :2] - xyz[k, :2]).T)) > 0.6:
            keep.append(k)
    xyz = xyz[keep]
    vol = _bead_volume(xyz)
    r = ev_rmz.bead_fwhm_at_truth(vol, xyz, 0.1, 0.25)
    c = 2 * np.sqrt(2 * np.log(2))
    assert r["lateral_ok"].all() and r["axial_ok"].all()
    assert np.allclose(r["lateral_um"], c * 0.09, rtol=0.05) and np.allclose(r["axial_um"], c * 0.3, rtol=0.1)
    z = ev_rmz.bead_fwhm_at_truth(np.zeros_like(vol), xyz, 0.1, 0.25)
    assert not z["lateral_ok"].any() and not z["axial_ok"].any()
    # a bead displaced 1.5 µm in z is not "found" at its true position
    off = ev_rmz.bead_fwhm_at_truth(_bead_volume(xyz, shift_z=1.5), xyz, 0.1, 0.25)
    assert off["axial_ok"].mean() < 0.5
    edges = np.linspace(0.1, 1.5, 15)
    assert ev_rmz.fwhm_kl(r["lateral_um"], r["lateral_ok"], r["lateral_um"], r["lateral_ok"], edges) < 1e-9
    kl_zero = ev_rmz.fwhm_kl(z["lateral_um"], z["lateral_ok"], r["lateral_um"], r["lateral_ok"], edges)
    assert kl_zero > 1.0   # every failed fit lands in the failure bin
    boot = ev_rmz.fwhm_kl_bootstrap(z["lateral_um"], z["lateral_ok"], r["lateral_um"], r["lateral_ok"], edges,
                                    n_boot=20)
    assert boot.shape == (20,) and np.all(boot > 1.0)


def test_fwhm_kl_claim():
    good = {"lateral": 0.2, "axial": 0.3}
    bad = {"lateral": 1.0, "axial": 2.0}
    assert ev_rmz.fwhm_kl_claim({"recurrent_mz": good, "interpolation": bad}, 40).holds is True
    assert ev_rmz.fwhm_kl_claim({"recurrent_mz": {"lateral": 0.2, "axial": 3.0}, "interpolation": bad},
                                40).holds is False     # both axes must be closer
    assert ev_rmz.fwhm_kl_claim({"recurrent_mz": bad, "interpolation": bad}, 40).holds is False   # identity
    assert ev_rmz.fwhm_kl_claim({"recurrent_mz": good, "interpolation": bad}, 10).holds is None
    assert ev_rmz.fwhm_kl_claim({"recurrent_mz": good, "interpolation": bad}, 40,
                                kl_diff_se={"lateral": 1.0, "axial": 0.1}).holds is False   # within its error
    nan = {"lateral": float("nan"), "axial": 0.1}
    assert ev_rmz.fwhm_kl_claim({"recurrent_mz": nan, "interpolation": bad}, 40).holds is None


def test_nonuniform_and_repetition_claims():
    rng = np.random.default_rng(2)
    a = 25 + 0.1 * rng.standard_normal(8)
    assert ev_rmz.nonuniform_claim(a + 1.0, a).holds is True
    assert ev_rmz.nonuniform_claim(a, a).holds is False
    assert ev_rmz.nonuniform_claim(np.full(8, 12.0), a).holds is False
    r = 0.05 + 0.001 * rng.standard_normal(6)
    assert ev_rmz.repetition_claim(r, r + 0.02).holds is True
    assert ev_rmz.repetition_claim(r, r).holds is False                       # constant/zero output: no gain
    assert ev_rmz.repeated_like_deepz_claim(r + 0.02, r + 0.02, r).holds is True
    zero = np.full(6, 0.3)
    assert ev_rmz.repeated_like_deepz_claim(zero, r + 0.02, zero).holds is False


def test_permutation_and_dpm_noise_claims():
    rng = np.random.default_rng(3)
    rmz_r = 0.05 + 0.0005 * rng.standard_normal((6, 4))
    unet_r = 0.05 + 0.02 * rng.random((6, 4))
    interp = np.full(4, 0.08)
    assert ev_rmz.permutation_claim(rmz_r, unet_r, interp).holds is True
    zero = np.full((6, 4), 0.3)            # an all-dark output is perfectly order invariant — and useless
    assert ev_rmz.permutation_claim(zero, unet_r, interp).holds is False
    assert ev_rmz.permutation_claim(unet_r, unet_r, interp).holds is False
    noise = {0.0: np.full(12, 0.05), 0.5: np.full(12, 0.052), 1.0: np.full(12, 0.058)}
    assert ev_rmz.dpm_noise_claim(noise, interp).holds is True
    assert ev_rmz.dpm_noise_claim({0.0: np.full(12, 0.3), 1.0: np.full(12, 0.3)}, interp).holds is False   # zero
    assert ev_rmz.dpm_noise_claim({0.0: np.full(12, 0.05), 1.0: np.full(12, 0.2)}, interp).holds is False  # collapse
    assert ev_rmz.dpm_noise_claim({0.0: np.full(2, 0.05), 1.0: np.full(2, 0.06)}, interp).holds is None


def test_dof_extension():
    from refocuslib.optics import OIL_63X
    z = np.arange(17) * 0.5
    d = ev_rmz.dof_extension(z, np.full(17, 30.0), 25.0, OIL_63X)
    assert np.isclose(d["dof_um"], 0.52 * 1.518 / 1.96) and np.isclose(d["extent_um"], 8.5)
    assert ev_rmz.dof_extension(z, np.full(17, 10.0), 25.0, OIL_63X)["extension"] == 0


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


# ----------------------------------------------------------------------------- train for your optics (issue 17)
_BEAD = dict(kind="beads", shape_yx=(32, 32), n_planes=5, z_step_um=0.5, input_spacing_um=1.0, n_inputs=2,
             n_objects=1, min_separation_um=1.0)
_FACTORY_KW = dict(n_train_volumes=1, n_val_volumes=1, width=0.125, levels=2)


def _focal_area(spec) -> int:
    """Pixels above half the peak in the brightest plane of one noise-free bead scan (seed 0)."""
    clean = simulate_volumes(spec, 1, seed=0, keep_clean=True).clean[0]
    plane = clean[int(np.argmax(clean.max((1, 2))))]
    return int((plane > 0.5 * plane.max()).sum())


def test_default_microscope_builds_the_same_data_as_before():
    """A recipe without data.microscope: the same VolumeSpec (and cache key) and the same scans as naming the
    preset; every factory builds its data spec this way."""
    from refocuslib.optics import OIL_63X
    spec = rmz.volume_spec(dict(TINY))
    assert spec.microscope is OIL_63X and spec.hash_dict() == VolumeSpec(**TINY).hash_dict()
    assert "mask" not in spec.hash_dict()["microscope"]
    a = rmz.recurrent_mz_task(dict(TINY), **_FACTORY_KW)
    b = rmz.recurrent_mz_task({**TINY, "microscope": "OIL_63X"}, **_FACTORY_KW)
    ref = simulate_volumes(VolumeSpec(**TINY), 1, seed=0)
    assert np.array_equal(a.data.stacks, ref.stacks) and np.array_equal(b.data.stacks, ref.stacks)


def test_psf_json_sets_the_optics_of_every_factory(write_psf_json):
    from refocuslib.calibrate import ZernikePupil
    p_na = write_psf_json(0.8, 0.52, 1.518, 0.1, {11: 0.0}, name="na08.json")
    p_ab = write_psf_json(1.4, 0.52, 1.518, 0.1, {11: 1.5}, name="spherical.json")
    for factory in (rmz.recurrent_mz_task, rmz.unet3d_task, rmz.deepz_volume_task):
        task = factory({**_BEAD, "microscope": str(p_na)}, **_FACTORY_KW)
        assert task.data.spec.microscope.na == 0.8 and task.val_data.spec.microscope.na == 0.8
    preset = VolumeSpec(**_BEAD)
    low_na = rmz.volume_spec({**_BEAD, "microscope": str(p_na)})
    # NA 0.8 instead of 1.4: the in-focus bead covers ≈ (1.4/0.8)² the area
    assert _focal_area(low_na) > 2 * _focal_area(preset)
    # a calibrated aberration is imaged, and enters the cache key (its coefficients)
    ab = rmz.volume_spec({**_BEAD, "microscope": str(p_ab)})
    assert isinstance(ab.microscope.mask, ZernikePupil)
    assert ab.hash_dict()["microscope"]["mask"] == {"11": 1.5}
    c_ab = simulate_volumes(ab, 1, seed=0, keep_clean=True).clean[0]
    c_0 = simulate_volumes(preset, 1, seed=0, keep_clean=True).clean[0]
    assert np.abs(c_ab - c_0).max() > 0.05 * c_0.max()
    # a dict of optics too
    d = rmz.volume_spec({**_BEAD, "microscope": {"na": 0.8, "wavelength_um": 0.52, "n_immersion": 1.518,
                                                  "pixel_um": 0.1}})
    assert d.microscope.na == 0.8 and d.microscope.mask is None


@pytest.mark.parametrize("spec,err,match", [
    ("NOPE", ValueError, "data.microscope.*OIL_63X"),
    ("no/such/psf.json", FileNotFoundError, "data.microscope.*no such file"),
    (1.4, ValueError, "data.microscope.*preset name"),
    ({"na": 1.4, "zoom": 2}, ValueError, "data.microscope.*unknown microscope fields"),
])
def test_bad_microscope_names_the_parameter(spec, err, match):
    with pytest.raises(err, match=match):
        rmz.recurrent_mz_task({**TINY, "microscope": spec}, **_FACTORY_KW)


def test_bad_data_keys_and_microscope_type():
    with pytest.raises(ValueError, match="unknown keys.*zoom"):
        rmz.volume_spec({**TINY, "zoom": 2})
    with pytest.raises(ValueError, match="microscope"):
        VolumeSpec(**TINY, microscope="OIL_63X")


def test_camera_holds_the_spec_numbers():
    from refocuslib.imaging import Camera
    spec = VolumeSpec(**TINY, read_noise_e=2.5, background_photons=3.0)
    assert spec.camera == Camera(qe=0.8, gain=1.0, read_noise_e=2.5, baseline_adu=100.0, background_photons=3.0)
    assert VolumeSpec(**TINY).camera == Camera(read_noise_e=1.5, background_photons=10.0)
