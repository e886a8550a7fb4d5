"""W-Net (Yang et al. 2021): cascade shapes, joint-loss gradients, data, evaluation, DOF table, training."""
import numpy as np
import pytest
import torch

from refocuslib import dpm
from refocuslib.datasets.wnet import WNetBeadDataset, WNetBeadSimulator, WNetDataConfig
from refocuslib.models.blocks import count_parameters
from refocuslib.models.wnet import CROSS, SingleUNet, WNet, single_unet, wnet, wnet_discriminators
from refocuslib.evaluate.wnet import (PAPER_TABLE1, beats_verdict, dof_at_thresholds, dof_greater_verdict,
                                     dof_ratio_verdict, dof_table, effective_dof, evaluate_plane, evaluate_stack,
                                     localize_beads, ordering_verdict, pooled_jaccard, refocus_images, refocus_scan,
                                     table1_row_verdict)
from refocuslib.tasks.wnet import SingleUNetTask, WNetTask, foreground_l1, task_from_params
from refocuslib.train import TrainConfig, fit


@pytest.fixture(scope="module")
def sim():
    """A small but physical simulator: 63x/1.4 oil, DH mask, short ranges and small kernels for speed."""
    return WNetBeadSimulator(dh_range_um=2.0, wf_range_um=1.0, confocal_range_um=1.0, z_step_um=0.5, psf_px=33,
                             crop_px=16, beads_per_um2=1.0)


# ---------------------------------------------------------------------------------------------------- models
def test_cascade_shapes_and_split():
    torch.manual_seed(0)
    net = wnet(width=0.0625, levels=3)
    for h, w in [(24, 24), (23, 30)]:
        out = net(torch.rand(2, 1, h, w), torch.zeros(2, 1, h, w))
        assert out.shape == (2, 2, h, w)
        r, c = WNet.split(out)
        assert r.shape == c.shape == (2, 1, h, w)
        # the second channel is G_C applied to the first
        assert torch.allclose(c, net.cross(r), atol=1e-6)
    stacked = net(torch.rand(1, 2, 16, 16))
    assert stacked.shape == (1, 2, 16, 16)
    d_r, d_c = wnet_discriminators(width=0.0625, blocks=2)(out)
    assert d_r.shape == d_c.shape == (2, 1)


def test_single_unet_has_about_half_the_parameters():
    for width, levels in [(0.125, 4), (1.0, 5)]:
        ratio = count_parameters(single_unet(width, levels)) / count_parameters(wnet(width, levels))
        assert 0.45 < ratio < 0.55, ratio
    assert single_unet(0.125, 3)(torch.rand(1, 1, 20, 20), torch.zeros(1, 1, 20, 20)).shape == (1, 1, 20, 20)


def test_joint_loss_gradients_reach_both_generators_and_discriminators(sim):
    task = WNetTask(sim, "dh", width=0.0625, levels=2, disc_blocks=2, batch_size=2)
    batch = task.make_batch(0, torch.Generator().manual_seed(1))
    out = task.generate(batch)
    loss, logs = task.generator_loss(batch, out)
    assert loss.item() == pytest.approx(logs["loss_r"] + logs["loss_c"], rel=1e-5)
    loss.backward()
    for name in ("refocus", "cross"):
        grads = [p.grad for p in getattr(task.generator, name).parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
    # the cross-modality term alone trains G_R too: the cascade is end to end
    task.generator.zero_grad()
    out = task.generate(batch)
    _, d_c = task.discriminator(out)
    from refocuslib.losses import deepz_generator_loss
    deepz_generator_loss(out[:, CROSS:], batch["target_c"], d_c).backward()
    assert sum(float(p.grad.abs().sum()) for p in task.generator.refocus.parameters()) > 0
    # both discriminators get gradients from the LSGAN loss
    task.discriminator.zero_grad()
    d_loss, _ = task.discriminator_loss(batch, out.detach())
    d_loss.backward()
    for name in ("refocus", "cross"):
        assert sum(float(p.grad.abs().sum()) for p in getattr(task.discriminator, name).parameters()) > 0


# ------------------------------------------------------------------------------------------------------ data
def test_batch_pairs_planes_and_dpm(sim):
    b = sim.sample_batch(4, torch.Generator().manual_seed(3), "dh")
    for k in ("input", "dpm", "target_r", "target_c"):
        assert b[k].shape == (4, 1, 16, 16) and torch.isfinite(b[k]).all(), k
    assert (b["z_input_um"].abs() <= 2.0).all() and (b["z_target_um"].abs() <= 1.0).all()
    expected = dpm.to_network((b["z_target_um"] - b["z_input_um"])[:, None, None, None].expand(4, 1, 16, 16))
    assert torch.allclose(b["dpm"], expected)
    again = sim.sample_batch(4, torch.Generator().manual_seed(3), "dh")
    assert all(torch.equal(b[k], again[k]) for k in b)
    ds = WNetBeadDataset(sim, length=3, seed=5, input_modality="wf")
    assert len(ds) == 3 and torch.equal(ds[1]["input"], ds[1]["input"]) and ds[0]["input"].shape == (1, 16, 16)
    assert (ds[2]["z_input_um"].abs() <= 1.0).all()


def test_normalisation_puts_an_in_focus_bead_peak_at_one(sim):
    px = sim.pixel_um
    field = sim.field_from_points([[20.5 * px, 19.5 * px]], sim.config.photons, (40, 40))  # a pixel centre
    for modality in ("dh", "wf", "confocal"):
        img = sim.scan(field, modality, [0.0])[0]
        assert float(img.max()) == pytest.approx(1.0, rel=1e-4), modality
    conf = sim.scan(field, "confocal", [0.0, 1.0])
    assert float(conf[1].sum()) < 0.5 * float(conf[0].sum())  # optical sectioning
    # photons are conserved up to what leaves the truncated kernel
    photons = sim.render(field.bead_map[None], "wf", [0.0])
    assert float(photons.sum()) == pytest.approx(sim.config.photons * sim.kernel_energy["wf"][len(sim.z_um["wf"]) // 2],
                                                 rel=1e-3)


def test_percentile_input_normalisation_rescales_each_frame(sim):
    pct = WNetBeadSimulator(sim.config, input_normalisation="percentile")
    b = pct.sample_batch(3, torch.Generator().manual_seed(4), "dh")
    for k in ("input", "target_r"):
        flat = b[k].reshape(3, -1)
        assert torch.allclose(flat.median(1).values, torch.zeros(3), atol=1e-2), k
        assert torch.allclose(torch.quantile(flat, 0.999, dim=1), torch.ones(3), atol=1e-2), k
    ref = sim.sample_batch(3, torch.Generator().manual_seed(4), "dh")  # 'photons': same confocal targets
    assert torch.allclose(b["target_c"], ref["target_c"])


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluate_plane_identity_and_a_shifted_bead(sim):
    px = sim.pixel_um
    field = sim.field_from_points([[1.05, 1.05], [2.25, 1.55], [1.5, 2.65]], sim.config.photons, (36, 36))
    truth = sim.scan(field, "confocal", [0.0])[0].numpy()
    same = evaluate_plane(truth, truth, px)
    assert same["jaccard"] == 1.0 and same["rmse_lateral_nm"] == pytest.approx(0.0, abs=1e-9)
    assert same["pearson"] == pytest.approx(1.0) and same["tp"] == 3
    moved = sim.field_from_points([[1.05, 1.05], [2.25, 1.55], [1.5 + 5 * px, 2.65]], sim.config.photons, (36, 36))
    other = sim.scan(moved, "confocal", [0.0])[0].numpy()
    e = evaluate_plane(other, truth, px, threshold_nm=150.0)
    assert e["tp"] == 2 and e["fp"] == 1 and e["fn"] == 1 and e["jaccard"] == pytest.approx(2 / 4)
    st = evaluate_stack(np.stack([truth, other]), truth, [0.0, 1.0], px)
    assert np.allclose(st["jaccard"], [1.0, 0.5]) and st["z_um"].tolist() == [0.0, 1.0]
    assert localize_beads(truth, px).shape == (3, 2)


def test_localisation_threshold_ignores_bright_border_artefacts(sim):
    px = sim.pixel_um
    field = sim.field_from_points([[1.55, 1.55], [2.25, 1.05]], sim.config.photons, (36, 36))
    truth = sim.scan(field, "confocal", [0.0])[0].numpy()
    out = 0.01 * truth                               # a dim network output: no bead at 1 % of a bead's peak
    out[0, 0] = out[-1, 5] = 5.0                     # bright corner / edge pixels
    assert len(localize_beads(out, px)) == 0
    bright = truth.copy()
    bright[0, 0] = bright[1, 35] = 50.0              # edge artefacts do not hide the interior beads
    assert len(localize_beads(bright, px)) == 2
    pj = pooled_jaccard(np.stack([bright, np.zeros_like(truth)]), np.stack([truth, truth]), px)
    assert pj["tp"] == 2 and pj["fn"] == 2 and pj["jaccard"] == pytest.approx(0.5) and pj["n_true"] == 4


def test_batch_targets_near_focus_and_range_overrides(sim):
    b = sim.sample_batch(6, torch.Generator().manual_seed(7), "dh", input_range_um=0.5, target_range_um=0.0)
    assert (b["z_target_um"] == 0).all() and (b["z_input_um"].abs() <= 0.5).all()
    with pytest.raises(ValueError, match="input_range_um"):
        sim.sample_batch(2, torch.Generator(), "dh", input_range_um=9.0)
    assert WNetDataConfig().crop_px >= 64 and WNetDataConfig().confocal_range_um <= 0.5


def _curve(ji, z=None, pearson=None, beads=50):
    ji = np.asarray(ji, dtype=float)
    z = np.round(np.linspace(-0.1 * (len(ji) // 2), 0.1 * (len(ji) // 2), len(ji)), 6) if z is None else z
    tp = np.round(ji * beads)
    return {"z_um": z, "jaccard": ji, "pearson": np.full(len(ji), 0.5) if pearson is None else pearson,
            "tp": tp, "fp": np.zeros(len(ji)), "fn": beads - tp}


def test_claim_predicates_hold_for_a_good_model_and_fail_for_zero_and_identity():
    z = np.round(np.arange(-4, 4.001, 0.1), 6)
    native = np.where(np.abs(z) <= 0.15, 0.9, 0.1)           # DOF 0.3 µm at JI >= 0.726
    good = np.where(np.abs(z) <= 3.45, 0.85, 0.2)            # DOF 6.9 µm (69 planes)
    wf = np.where(np.abs(z) <= 1.45, 0.85, 0.0)
    c = {k: _curve(v, z) for k, v in (("native", native), ("good", good), ("wf", wf))}
    zero = _curve(np.zeros_like(z), z, pearson=np.full(len(z), np.nan))
    identity = c["native"]                                   # the input as output: no better than scanning
    assert dof_ratio_verdict(c["good"], c["native"]).holds is True
    assert dof_ratio_verdict(zero, c["native"]).holds is False
    assert dof_ratio_verdict(identity, c["native"]).holds is False
    assert dof_ratio_verdict(c["good"], _curve(np.zeros_like(z), z)).holds is False   # no native DOF
    assert dof_greater_verdict(c["good"], c["wf"]).holds is True
    assert dof_greater_verdict(zero, zero).holds is False and dof_greater_verdict(zero, c["wf"]).holds is False
    single = _curve(np.where(np.abs(z) <= 2, 0.6, 0.1), z, pearson=np.full(len(z), 0.4))
    assert beats_verdict(c["good"], single).holds is True
    assert beats_verdict(zero, single).holds is False
    assert beats_verdict(c["good"], _curve(good, z, pearson=np.full(len(z), 0.9))).holds is False  # r must win too
    at3 = _curve(np.where(np.isclose(z, -3.0), 0.2, 0.5), z)
    assert ordering_verdict([c["good"], at3, zero], -3.0).holds is True
    assert ordering_verdict([zero, at3, c["native"]], -3.0).holds is False
    assert ordering_verdict([c["good"], zero, zero], -3.0).holds is False
    assert ordering_verdict([c["good"], at3], -9.0).holds is None                       # not sampled
    assert table1_row_verdict(c["good"], 0.726, 6.6).holds is True
    assert table1_row_verdict(zero, 0.726, 6.6).holds is False
    assert table1_row_verdict(identity, 0.726, 6.6).holds is False
    few = _curve(good, z, beads=5)
    for v in (dof_ratio_verdict(few, c["native"]), beats_verdict(few, single), table1_row_verdict(few, 0.7, 6.6)):
        assert v.holds is None and v.n_items == 5
    rows = dof_at_thresholds(z, good, [0.726, 0.653, 0.581])
    assert [r["dof_um"] for r in rows] == pytest.approx([6.9, 6.9, 6.9])


def test_dh_lobe_angle_and_carried_range_on_a_synthetic_stack():
    from refocuslib.evaluate.wnet import carried_range_um, dh_lobes
    z = np.round(np.arange(-3, 3.001, 0.5), 6)
    yy, xx = np.mgrid[:41, :41] - 20.0
    stack = []
    for zi in z:
        a = np.radians(90.0 + 30.0 * zi)
        dx, dy = 6 * np.cos(a), 6 * np.sin(a)
        lobes = np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / 4) + np.exp(-((xx + dx) ** 2 + (yy + dy) ** 2) / 4)
        stack.append(lobes * np.exp(-zi ** 2))
    lb = dh_lobes(np.array(stack), 0.1)
    expect = (90.0 + 30.0 * z) % 180.0
    assert np.allclose(lb["angle_deg"], expect, atol=6.0) and np.allclose(lb["separation_um"], 1.2, atol=0.15)
    assert lb["peak_rel"].max() == pytest.approx(1.0)
    half = np.sqrt(np.log(10.0))                     # exp(-z²) = 0.1
    assert carried_range_um(z, lb["peak_rel"], 0.1) == pytest.approx(half, abs=0.1)
    assert carried_range_um(z, np.zeros_like(z) + 0.01, 0.1) == 0.0


def test_zero_output_fails_on_simulated_images(sim):
    gen = torch.Generator().manual_seed(2)
    fields = [sim.random_field(gen, (48, 48), beads_per_um2=1.0) for _ in range(2)]
    truth = np.stack([sim.scan(f, "confocal", [0.0])[0].numpy() for f in fields])
    z = sim.z_um["wf"]
    scanned = np.stack([sim.scan(f, "wf", z).numpy() for f in fields], 1)
    native = evaluate_stack(scanned, truth, z, sim.pixel_um)
    zero = evaluate_stack(np.zeros_like(scanned), truth, z, sim.pixel_um)
    assert native["jaccard"][len(z) // 2] > 0.8 and np.all(zero["jaccard"] == 0)
    assert dof_ratio_verdict(zero, native, min_beads=5).holds is False
    assert table1_row_verdict(zero, 0.726, 6.6, min_beads=5).holds is False


def test_dof_table_on_a_synthetic_ji_curve():
    z = np.round(np.arange(-10, 10.01, 0.1), 6)
    ji = 0.9 * np.exp(-(z / 5.0) ** 4)
    rows = dof_table(z, ji, tolerances=(0, 0.1, 0.2), reference_ji=0.726)
    for row, tol in zip(rows, (0, 0.1, 0.2)):
        thr = 0.726 * (1 - tol)
        half = 5.0 * (-np.log(thr / 0.9)) ** 0.25  # JI >= thr exactly for |z| <= half
        n_planes = np.sum(np.abs(z) <= half + 1e-12)
        assert row["threshold"] == pytest.approx(thr)
        assert row["dof_um"] == pytest.approx(n_planes * 0.1)
        interp = effective_dof(z, ji, thr, method="interpolate")
        assert interp["dof_um"] == pytest.approx(2 * half, abs=2e-3)
        assert not row["censored"]
    # the paper's granularity: a native curve flat over 3 planes at its in-focus JI has a DOF of 0.3 µm
    native = np.where(np.abs(z) <= 0.1 + 1e-9, 0.726, 0.5)
    assert dof_table(z, native, tolerances=(0,))[0]["dof_um"] == pytest.approx(0.3)
    # DOFs grow with tolerance, the longest run is chosen, a run reaching the edge is censored
    assert rows[0]["dof_um"] < rows[1]["dof_um"] < rows[2]["dof_um"]
    two = np.where((z > -9) & (z < -8), 1.0, np.where(np.abs(z) < 3, 0.9, 0.1))
    assert effective_dof(z, two, 0.8)["z_low_um"] == pytest.approx(-3.0, abs=0.051)
    edge = effective_dof(z, np.ones_like(z), 0.5)
    assert edge["censored"] and edge["dof_um"] == pytest.approx(20.1)
    assert effective_dof(z, np.zeros_like(z), 0.5)["dof_um"] == 0.0
    assert PAPER_TABLE1["ji_thresholds"][0.1] == pytest.approx(0.726 * 0.9, abs=1e-3)


# -------------------------------------------------------------------------------------------------- training
@pytest.fixture
def one_thread():
    """pytest-xdist runs two workers on two cores: one torch thread each avoids oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_short_cpu_training_lowers_the_losses_and_validates_by_jaccard(sim, tmp_path, one_thread):
    task = WNetTask(sim, "dh", width=0.125, levels=2, gan=True, disc_blocks=2, batch_size=4, n_val=8,
                    val_range_um=1.0)
    res = fit(task, TrainConfig(steps=40, out_dir=str(tmp_path / "w"), lr_g=3e-3, lr_d=3e-4, val_every=20,
                                log_every=10, progress=False))
    v = res.validation[-1]
    assert v["val_loss"] == pytest.approx(1.0 - v["val_ji"]) and 0.0 <= v["val_ji"] <= 1.0
    assert v["val_ji_zero"] == 0.0 and 0.0 <= v["val_ji_identity"] < 1.0 and v["val_beads"] > 0
    assert res.validation[-1]["val_mae_r"] < 0.7 * res.validation[0]["val_mae_r"]
    first, last = res.history[0], res.history[-1]
    assert last["loss_r"] < first["loss_r"] and last["loss_c"] < first["loss_c"]
    # validation: inputs near focus refocused to the bead plane
    assert (task.val_batch["z_target_um"] == 0).all() and (task.val_batch["z_input_um"].abs() <= 1.0).all()
    single = SingleUNetTask(sim, "dh", width=0.125, levels=2, gan=False, batch_size=4, n_val=8, val_range_um=1.0)
    assert single.discriminator is None
    res1 = fit(single, TrainConfig(steps=40, out_dir=str(tmp_path / "s"), lr_g=3e-3, val_every=20,
                                   log_every=10, progress=False))
    assert res1.validation[-1]["val_mae"] < res1.validation[0]["val_mae"]
    # refocusing a plane with the trained model; a DPM beyond the trained range warns
    imgs = sim.scan(sim.random_field(torch.Generator().manual_seed(0), (20, 20)), "dh", [1.0, -1.0]).numpy()
    out = refocus_images(task.generator, imgs, [-1.0, 1.0], task.trained_dpm_range_um)
    assert out.shape == (2, 2, 20, 20) and np.isfinite(out).all()
    with pytest.warns(dpm.DPMRangeWarning):
        refocus_images(task.generator, imgs, 9.0, task.trained_dpm_range_um)
    scan = np.stack([imgs, imgs], 1)             # (Z=2, F=2, H, W)
    assert refocus_scan(single, scan, [1.0, -1.0]).shape == (2, 2, 1, 20, 20)


def test_foreground_l1_does_not_reward_an_all_dark_output():
    target = torch.zeros(1, 1, 32, 32)
    target[0, 0, 10, 10] = target[0, 0, 20, 5] = 1.0
    dark, blurred = torch.zeros_like(target), torch.full_like(target, 0.0)
    blurred[0, 0, 9:12, 9:12] = blurred[0, 0, 19:22, 4:7] = 0.5
    from refocuslib.losses import mae
    assert mae(dark, target) < mae(blurred, target)                       # plain L1 prefers darkness
    assert foreground_l1(dark, target, 20.0) > foreground_l1(blurred, target, 20.0)
    assert foreground_l1(dark, target, 0.0) == pytest.approx(float(mae(dark, target)))


def test_recipes_build_the_three_models():
    from refocuslib import recipes
    tasks = {n: recipes.recipe(n) for n in ("wnet_dh", "wnet_wf", "wnet_single_dh")}
    assert {r["params"]["input_modality"] for r in tasks.values()} == {"dh", "wf"}
    assert all(r["params"]["data"]["crop_px"] >= 64 for r in tasks.values())
    t = task_from_params(kind="single", input_modality="wf", data={"dh_range_um": 1.0, "wf_range_um": 1.0,
                         "confocal_range_um": 0.3, "z_step_um": 0.5, "psf_px": 33, "crop_px": 16},
                         width=0.0625, levels=2, gan=False, n_val=2, val_range_um=1.0)
    assert isinstance(t, SingleUNetTask) and t.input_modality == "wf"
    with pytest.raises(ValueError, match="kind"):
        task_from_params(kind="triple")
    with pytest.raises(ValueError, match="data"):
        task_from_params(data={"pixels": 3})


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,name", [
    (lambda: WNet(width=0), "width"),
    (lambda: WNet(levels=7), "levels"),
    (lambda: SingleUNet(width=-1.0), "width"),
    (lambda: wnet_discriminators(blocks=9), "blocks"),
    (lambda: WNet(0.0625, 2)(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), "image"),
    (lambda: WNet(0.0625, 2)(torch.rand(1, 1, 8, 8), torch.zeros(1, 1, 8, 9)), "dpm_network"),
    (lambda: WNetDataConfig(psf_px=32), "psf_px"),
    (lambda: WNetDataConfig(dh_range_um=-1.0), "dh_range_um"),
    (lambda: WNetDataConfig(photons_spread=1.0), "photons_spread"),
    (lambda: WNetDataConfig(input_normalisation="zscore"), "input_normalisation"),
    (lambda: dof_table([0, 1, 2], [1, 1, 1], tolerances=(1.5,)), "tolerances"),
    (lambda: dof_table([0, 1, 2], [1, 1], tolerances=(0.1,)), "ji"),
    (lambda: effective_dof([0, 2, 1], [1, 1, 1], 0.5), "z_um"),
    (lambda: effective_dof([0, 1, 2], [1, 1, 1], 0.5, method="cubic"), "method"),
    (lambda: evaluate_plane(np.zeros((8, 8)), np.zeros((8, 9)), 0.1), "output"),
    (lambda: localize_beads(np.random.rand(8, 8), 0.1, threshold=-1.0), "threshold"),
    (lambda: localize_beads(np.random.rand(8, 8), 0.1, border_px=4), "border_px"),
    (lambda: dof_at_thresholds([0, 1, 2], [1, 1, 1], ()), "thresholds"),
    (lambda: ordering_verdict([_curve(np.ones(3))]), "curves"),
    (lambda: table1_row_verdict(_curve(np.ones(3)), 0.7, -1.0), "paper_dof_um"),
    (lambda: refocus_images(WNet(0.0625, 2), np.zeros((2, 8, 8)), [1.0, 2.0, 3.0]), "dpm_um"),
    (lambda: refocus_scan(None, np.zeros((2, 8, 8)), [0.0, 1.0]), "scan"),
])
def test_bad_input_names_the_parameter(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_bad_simulator_calls_name_the_parameter(sim):
    with pytest.raises(ValueError, match="input_modality"):
        sim.sample_batch(2, torch.Generator(), "confocal")
    with pytest.raises(ValueError, match="focal_um"):
        sim.psf("confocal", 5.0)
    with pytest.raises(ValueError, match="modality"):
        sim.psf("sted", 0.0)
    with pytest.raises(ValueError, match="generator"):
        sim.sample_batch(2, np.random.default_rng(0), "dh")
    with pytest.raises(ValueError, match="simulator"):
        WNetTask(object())


# ----------------------------------------------------------------------------- train for your optics (issue 17)
_TINY_DATA = dict(dh_range_um=0.5, wf_range_um=0.5, confocal_range_um=0.5, z_step_um=0.5, psf_px=21, crop_px=16)


def test_default_microscope_builds_the_same_simulator_as_before():
    """A recipe without data.microscope builds today's simulator: the 63x/1.4 oil PSFs of the DH mask alone
    (the formula before calibrated optics existed), the same as naming the preset, and the same batches."""
    from refocuslib.optics import OIL_63X, double_helix_mask, widefield_psf
    from refocuslib.tasks.wnet import simulator_from_params
    default = simulator_from_params(dict(_TINY_DATA))
    named = WNetBeadSimulator(WNetDataConfig(microscope=OIL_63X, **_TINY_DATA))
    assert default.config.microscope is OIL_63X and default is simulator_from_params(
        {**_TINY_DATA, "microscope": "OIL_63X"})
    z = default.z_um["dh"]
    args = (21, 0.1, 1.4, 0.52, 1.518)
    assert torch.equal(default.psfs["dh"], widefield_psf(-z, *args, mask=double_helix_mask(8)).float())
    assert torch.equal(default.psfs["wf"], widefield_psf(-z, *args).float())
    for k in ("dh", "wf", "confocal"):
        assert torch.equal(default.psfs[k], named.psfs[k])
    a = default.sample_batch(2, torch.Generator().manual_seed(3), "dh")
    b = named.sample_batch(2, torch.Generator().manual_seed(3), "dh")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_psf_json_sets_the_optics_and_adds_the_calibrated_aberration(write_psf_json):
    from refocuslib.calibrate import ZernikePupil
    from refocuslib.optics import PhaseSum, double_helix_mask, widefield_psf
    from refocuslib.tasks.wnet import simulator_from_params, task_from_params
    preset = simulator_from_params(dict(_TINY_DATA))
    # the preset's optics with 1 rad of primary spherical aberration (Noll 11)
    p = write_psf_json(1.4, 0.52, 1.518, 0.1, {11: 1.0})
    sim = task_from_params("wnet", "dh", data={**_TINY_DATA, "microscope": str(p)}, width=0.0625, levels=2,
                           gan=False, n_val=1, val_range_um=0.5).simulator
    ab = sim.config.microscope.mask
    assert isinstance(ab, ZernikePupil) and ab.coefficients_rad == {11: 1.0}
    z, args = sim.z_um["wf"], (21, 0.1, 1.4, 0.52, 1.518)
    torch.testing.assert_close(sim.psfs["wf"], widefield_psf(-z, *args, mask=ab).float())
    # the DH mask and the aberration compose (phases add), neither is dropped
    dh_ab = widefield_psf(-z, *args, mask=PhaseSum(double_helix_mask(8), ab)).float()
    torch.testing.assert_close(sim.psfs["dh"], dh_ab)
    for k in ("dh", "wf"):
        assert float((sim.psfs[k] - preset.psfs[k]).abs().max()) > 0.05 * float(preset.psfs[k].max())
    # the confocal targets keep the calibrated NA, wavelength and pixel, unaberrated: here the preset's
    assert torch.equal(sim.psfs["confocal"], preset.psfs["confocal"])
    # another NA: a wider in-focus PSF (input and confocal target alike)
    low = simulator_from_params({**_TINY_DATA, "microscope": str(write_psf_json(0.9, 0.52, 1.518, 0.1, {11: 0.0},
                                                                                name="na09.json"))})
    assert low.config.microscope.na == 0.9
    for k in ("wf", "confocal"):
        assert float(low.psf(k, 0.0).max()) < 0.6 * float(preset.psf(k, 0.0).max())


def test_real_calibration_is_accepted_by_relative_path():
    import warnings
    from refocuslib.tasks.wnet import simulator_from_params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its 0.258 µm pixel is coarser than Nyquist (a SamplingWarning)
        sim = simulator_from_params({**_TINY_DATA, "microscope": "data/beads/psf.json"})
    m = sim.config.microscope
    assert m.pixel_um == sim.pixel_um == 0.258 and m.wavelength_um == 0.515 and 11 in m.mask.coefficients_rad
    assert "mask" in sim.config.as_dict()["microscope"]


@pytest.mark.parametrize("spec,err,match", [
    ("NOPE", ValueError, "data.microscope.*OIL_63X"),
    ("no/such/psf.json", FileNotFoundError, "data.microscope.*no such file"),
    (3, ValueError, "data.microscope.*preset name"),
    ({"na": 1.4}, ValueError, "data.microscope.*needs"),
])
def test_bad_microscope_names_the_parameter(spec, err, match):
    from refocuslib.tasks.wnet import simulator_from_params
    with pytest.raises(err, match=match):
        simulator_from_params({**_TINY_DATA, "microscope": spec})


def test_camera_holds_the_config_numbers(sim):
    from refocuslib.imaging import Camera
    cfg = WNetDataConfig(qe=0.7, gain=2.0, read_noise_e=3.0, baseline_adu=50.0, background_photons=4.0)
    assert cfg.camera == Camera(qe=0.7, gain=2.0, read_noise_e=3.0, baseline_adu=50.0, background_photons=4.0)
    assert WNetDataConfig().camera == Camera(0.8, 1.0, 1.5, 100.0, 10.0)
    photons = torch.rand(2, 16, 16) * 50
    cam = sim.config.camera
    expected = cam.photons(cam.counts(photons, torch.Generator().manual_seed(5))) / sim.scale["dh"]
    assert torch.equal(sim.acquire(photons, "dh", torch.Generator().manual_seed(5)), expected)
