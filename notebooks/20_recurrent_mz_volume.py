# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 20 · Recurrent-MZ: a volume from three wide-field planes (Figs. 2–3)
#
# Huang, Chen, Luo, Rivenson & Ozcan, *Recurrent neural network-based volumetric fluorescence microscopy*,
# Light Sci. Appl. 10, 62 (2021). Recurrent-MZ takes M sparse wide-field planes, each with a digital propagation
# matrix (DPM) saying how far it lies from the wanted output plane, merges them with a convolutional GRU at every
# scale of an encoder–decoder, and infers every plane of the volume. The paper compares it with Deep-Z (one
# plane refocused, each input covering its own sub-volume), a 3D U-Net (the M planes as channels) and linear
# interpolation, on *C. elegans* nuclei (|Z| = 91 at 0.2 µm, Δz = 6 µm) and 50 nm beads (|Z| = 101 at 0.1 µm,
# Δz = 3 µm), 63×/1.4 NA oil objective.
#
# **Here** the scans are simulated (`refocuslib.datasets.recurrent_mz`): worm-like nuclei and 50 nm beads convolved
# with the scalar wide-field PSF of a 63×/1.4 NA objective, Poisson + read noise, Deep-Z normalisation. Targets
# are the planes of the same noisy scan (as the paper's mechanical scan). All four methods see the same held-out
# volumes. The networks are the shipped CPU models of `refocuslib/recipes.yaml` (`rmz_nuclei`,
# `deepz_volume_nuclei`, `unet3d_nuclei`, `rmz_beads`): narrow (Recurrent-MZ width ½, the paper's 4 levels),
# GroupNorm instead of batch normalisation (batches of 16 sparse crops), each input passed through at its own plane
# only (a gate on |DPM| < 0.1 µm, not in the paper: every other plane is the network's own inference), no
# adversarial term, a few thousand steps on one CPU thread each. The
# nuclei scans are 64 × 64 × 17 planes (0.5 µm); the three inputs lie Δz = 4 µm apart, about two nucleus
# radii, so a nucleus between two inputs is out of focus in both (the paper: Δz = 6 µm for nuclei of ≈ 3 µm).
#
# Scores per output plane: PSNR and SSIM against the scan, and an NRMSE restricted to the foreground (a dark
# background rewards smooth guesses). Every claim rests on per-volume means over the inferred (non-input)
# planes; ± is the standard error over test volumes.

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/20_recurrent_mz_volume"
seed = 0
device = "cpu"
threads = 1
model_recipes = {"recurrent_mz": "rmz_nuclei", "deepz": "deepz_volume_nuclei", "unet3d": "unet3d_nuclei"}
bead_recipe = "rmz_beads"
n_test = 16                # held-out nuclei volumes (seeds from 1000)
n_test_beads = 5           # held-out bead volumes (20 beads each)
smoke_steps = 20           # the training-path demonstration (from scratch, own folder)
fwhm_edges_um = {"lateral": [0.1, 0.6, 20], "axial": [0.2, 2.2, 20]}   # histogram range and bins
fwhm_kl_eps = 1e-3         # probability added to every bin before the KL divergence
dof_psnr_floor_db = 20.0   # planes at least this good count towards the reconstructed depth (DOF extension)
use_shipped_checkpoints = True

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from refocuslib import recipes
from refocuslib.evaluate import recurrent_mz as ev
from refocuslib.models.blocks import count_parameters
from refocuslib.notebook import start_notebook
from refocuslib.tasks import recurrent_mz as rmz

t_start, cpu_start = time.perf_counter(), time.process_time()
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints, model_recipes=model_recipes,
                             bead_recipe=bead_recipe, n_test=n_test, n_test_beads=n_test_beads,
                             smoke_steps=smoke_steps, fwhm_edges_um=fwhm_edges_um, fwhm_kl_eps=fwhm_kl_eps,
                             dof_psnr_floor_db=dof_psnr_floor_db)
LABEL = {"recurrent_mz": "Recurrent-MZ", "deepz": "Deep-Z (nearest input)", "unet3d": "3D U-Net",
         "interpolation": "linear interpolation", "scan": "scan"}

# %% [markdown]
# ## The shipped networks, and a short training run to show the path works

# %%
models = rmz.load_models(model_recipes, results_dir, device=device)
for m, task in models.items():
    rec.number(f"params_{m}", count_parameters(task.generator))
    print(f"{LABEL[m]:24s} {count_parameters(task.generator):7d} parameters ({model_recipes[m]})")
smoke = recipes.smoke(model_recipes["recurrent_mz"], results_dir, steps=smoke_steps, device=device)
rec.number("smoke_seconds", smoke.extras["smoke_seconds"], "s")
print(f"smoke: {smoke_steps} steps from scratch in {smoke.extras['smoke_seconds']:.1f} s, "
      f"loss {smoke.history[0]['g_loss']:.3f} → {smoke.history[-1]['g_loss']:.3f}")

# %% [markdown]
# ## Reconstruct held-out volumes with every method (Fig. 2)

# %%
test = rmz.held_out_volumes(model_recipes["recurrent_mz"], n_test, seed=seed + 1000)
spec = test.spec
res = ev.evaluate_methods(models, test)
z, idx = test.z_um, res["input_indices"]
print("inputs at z =", z[idx], "µm; |Z| =", len(z), f"planes of {spec.z_step_um} µm")
scores = {k: ev.per_volume(res, k) for k in ("psnr", "ssim", "fg_nrmse")}
at_inputs = ev.per_volume(res, "psnr", planes="input")
for m in res["metrics"]:
    for k, v in scores.items():
        rec.number(f"{k}_{m}", float(np.mean(v[m])))
        rec.number(f"{k}_sem_{m}", float(np.std(v[m], ddof=1) / np.sqrt(len(v[m]))))
    rec.number(f"psnr_per_plane_{m}", res["metrics"][m]["psnr"].mean(0), "dB")
    print(f"{LABEL[m]:24s} PSNR {np.mean(scores['psnr'][m]):6.2f} ± {np.std(scores['psnr'][m], ddof=1) / np.sqrt(n_test):.2f} dB"
          f"   SSIM {np.mean(scores['ssim'][m]):.3f}   foreground NRMSE {np.mean(scores['fg_nrmse'][m]):.4f}"
          f"   (inferred planes; PSNR at the inputs {np.mean(at_inputs[m]):.2f} dB)")

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
for m, d in res["metrics"].items():
    for ax, key in zip(axes, ("psnr", "ssim", "fg_nrmse")):
        v = d[key].mean(0).copy()
        v[~np.isfinite(v)] = np.nan  # interpolation is exact at its own input planes
        ax.plot(z, v, "o-", ms=3, label=LABEL[m])
for ax, lab in zip(axes, ("PSNR (dB)", "SSIM", "foreground NRMSE")):
    for zi in z[idx]:
        ax.axvline(zi, color="0.8", lw=3, zorder=0)
    ax.set_xlabel("output plane z (µm)")
    ax.set_ylabel(lab)
axes[0].legend(fontsize=8)
fig.suptitle(f"Per-plane scores against the scan, mean of {n_test} held-out volumes (grey: input planes)")
rec.figure(fig, "per_plane_metrics", "PSNR, SSIM and foreground NRMSE of every output plane for Recurrent-MZ, "
           "Deep-Z from the nearest input plane, the 3D U-Net and linear interpolation.")
plt.show()

# %%
vol = {"scan": test.stacks[0], **{m: v[0] for m, v in res["volumes"].items()}}
row = int(np.argmax(test.stacks[0].max(0).sum(1)))  # the brightest row for the x–z section
show = [k for k in ("scan", "recurrent_mz", "deepz", "unet3d", "interpolation") if k in vol]
mid = [int(i) for i in ((idx[:-1] + idx[1:]) // 2)]
planes = sorted(set([int(idx[0])] + mid + [int(idx[-1])]))
fig, axes = plt.subplots(len(show), len(planes) + 1, figsize=(2.0 * (len(planes) + 1) + 2, 2.0 * len(show)),
                         gridspec_kw={"width_ratios": [1] * len(planes) + [2]})
vmax = float(np.percentile(vol["scan"], 99.9))
for r, k in enumerate(show):
    for c, p in enumerate(planes):
        axes[r, c].imshow(vol[k][p], cmap="magma", vmin=0, vmax=vmax)
        axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        if r == 0:
            axes[r, c].set_title(f"z = {z[p]:.1f} µm" + (" (input)" if p in idx else ""), fontsize=8)
    axes[r, 0].set_ylabel(LABEL.get(k, k), fontsize=8)
    axes[r, -1].imshow(vol[k][:, row, :], cmap="magma", vmin=0, vmax=vmax, aspect=spec.z_step_um / 0.1)
    axes[r, -1].set_xticks([]), axes[r, -1].set_yticks([])
axes[0, -1].set_title(f"x–z section (row {row})", fontsize=8)
fig.tight_layout()
rec.figure(fig, "volume_vs_scan", "One held-out volume: the input planes, the planes half-way between them and "
           "an x–z section, for the scan and each method's reconstruction from the three inputs.")
plt.show()

# %% [markdown]
# ## Depth of field (Fig. 2)
#
# The paper: three planes from a 63×/1.4 objective (DOF ≈ 0.4 µm) give an 18 µm volume, ≈ 50× the DOF, with 30×
# fewer scans (91 → 3). Here: the axial extent over which Recurrent-MZ keeps a mean PSNR ≥ the floor, over the
# objective's DOF λn/NA².

# %%
dof = ev.dof_extension(z, res["metrics"]["recurrent_mz"]["psnr"].mean(0), dof_psnr_floor_db, spec.microscope)
rec.number("dof_extent_um", dof["extent_um"], "µm")
rec.number("dof_um", dof["dof_um"], "µm")
rec.number("dof_extension", dof["extension"])
rec.number("scan_reduction", len(z) / len(idx))
print(f"reconstructed depth {dof['extent_um']:.1f} µm = {dof['extension']:.0f}× the {dof['dof_um']:.2f} µm DOF, "
      f"from {len(idx)} of {len(z)} planes ({len(z) / len(idx):.1f}× fewer scans)")

# %% [markdown]
# ## Beads: lateral and axial FWHM at the known bead positions (Fig. 3)
#
# Each bead is fitted where it truly is: laterally on the scan plane nearest its z, axially on the x–z slice
# through its centre (`evaluate.recurrent_mz.bead_fwhm_at_truth`). A bead whose fit fails (no spot there, or a spot
# elsewhere) goes to an extra "failed" bin of the histogram, so the KL divergence to the scan's histogram counts
# it instead of dropping it.

# %%
bmodels = rmz.load_models({"recurrent_mz": bead_recipe}, results_dir, device=device)
btest = rmz.held_out_volumes(bead_recipe, n_test_beads, seed=seed + 2000)
bspec = btest.spec
bres = ev.evaluate_methods(bmodels, btest, keep_volumes=n_test_beads)
px, dzs = bspec.microscope.pixel_um, bspec.z_step_um
fits = {"scan": [ev.bead_fwhm_at_truth(s, xyz, px, dzs) for s, xyz in zip(btest.stacks, btest.beads_xyz_um)]}
for m, vols in bres["volumes"].items():
    fits[m] = [ev.bead_fwhm_at_truth(v, xyz, px, dzs) for v, xyz in zip(vols, btest.beads_xyz_um)]
fw = {m: {k: np.concatenate([f[k] for f in fl]) for k in ("lateral_um", "axial_um", "lateral_ok", "axial_ok")}
      for m, fl in fits.items()}
n_beads = len(fw["scan"]["lateral_ok"])
edges = {k: np.linspace(*v[:2], int(v[2]) + 1) for k, v in fwhm_edges_um.items()}
kl = {}
for m, d in fw.items():
    for ax in ("lateral", "axial"):
        ok = d[f"{ax}_ok"]
        rec.number(f"bead_{ax}_fit_success_{m}", float(ok.mean()))
        rec.number(f"bead_{ax}_fwhm_mean_{m}", float(np.nanmean(d[f"{ax}_um"])) if ok.any() else np.nan, "µm")
        if m != "scan":
            kl.setdefault(m, {})[ax] = ev.fwhm_kl(d[f"{ax}_um"], ok, fw["scan"][f"{ax}_um"], fw["scan"][f"{ax}_ok"],
                                                 edges[ax], eps=fwhm_kl_eps)
            rec.number(f"bead_{ax}_fwhm_kl_{m}", kl[m][ax], "nats")
    print(f"{LABEL.get(m, m):22s} lateral FWHM {np.nanmean(d['lateral_um']):.3f} µm (fit {d['lateral_ok'].mean():.0%}), "
          f"axial {np.nanmean(d['axial_um']):.3f} µm (fit {d['axial_ok'].mean():.0%})"
          + (f"; KL to scan {kl[m]['lateral']:.3f} / {kl[m]['axial']:.3f}" if m in kl else ""))
rec.number("bead_count", n_beads)
bead_psnr = ev.per_volume(bres, "psnr")
for m, v in bead_psnr.items():
    rec.number(f"bead_psnr_{m}", float(np.mean(v)), "dB")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, k in zip(axes, ("lateral", "axial")):
    for m, d in fw.items():
        ok = d[f"{k}_ok"]
        ax.hist(d[f"{k}_um"][ok], bins=edges[k], histtype="step", lw=2,
                label=f"{LABEL.get(m, m)} (fit {ok.sum()}/{ok.size})" + (f", KL {kl[m][k]:.2f}" if m in kl else ""))
    ax.set_xlabel(f"{k} FWHM (µm)")
    ax.set_ylabel("beads")
    ax.legend(fontsize=8)
rec.figure(fig, "bead_fwhm_histograms", "Lateral and axial FWHM of 50 nm beads fitted at their true positions in "
           "the scan and in the volumes inferred from three input planes; fit successes and KL divergence to the "
           "scan's histogram (failed fits in an extra bin).")
plt.show()

# %% [markdown]
# ## Paper versus ours

# %%
v_beat = ev.beats_baselines_claim(scores["psnr"], scores["ssim"], baselines=("interpolation", "deepz", "unet3d"))
mean = {m: float(np.mean(v)) for m, v in scores["psnr"].items()}
mss = {m: float(np.mean(v)) for m, v in scores["ssim"].items()}
rec.claim("Recurrent-MZ beats interpolation, Deep-Z and the 3D U-Net in PSNR and SSIM", "Fig. 2, S2",
          "Recurrent-MZ 33.96 dB vs Deep-Z 32.08 dB (nuclei); interpolation and 3D U-Net worse",
          ", ".join(f"{LABEL[m]} {mean[m]:.2f} dB / {mss[m]:.3f}" for m in mean), v_beat,
          f"mean over the inferred planes of {n_test} held-out volumes; Δz = {spec.input_spacing_um:g} µm")
v_inp = ev.input_planes_claim(at_inputs["recurrent_mz"], at_inputs["deepz"], tol_db=1.0)
rec.claim("At its input planes Recurrent-MZ is within 1 dB of Deep-Z at dz = 0", "Fig. 2",
          "Recurrent-MZ 36.47 dB next to an input plane", f"{np.mean(at_inputs['recurrent_mz']):.2f} dB vs "
          f"{np.mean(at_inputs['deepz']):.2f} dB (Deep-Z)", v_inp,
          "targets are the noisy scan itself there, which the shipped model's gate passes through by construction "
          "(PSNR ∞); the paper's network had to learn it")
kl_se = {}   # bootstrap over beads of the paired KL difference (Recurrent-MZ − interpolation)
for ax in ("lateral", "axial"):
    ref = (fw["scan"][f"{ax}_um"], fw["scan"][f"{ax}_ok"], edges[ax])
    boot = {m: ev.fwhm_kl_bootstrap(fw[m][f"{ax}_um"], fw[m][f"{ax}_ok"], *ref[:2], ref[2], eps=fwhm_kl_eps, seed=seed)
            for m in ("recurrent_mz", "interpolation")}
    kl_se[ax] = float(np.std(boot["recurrent_mz"] - boot["interpolation"]))
    rec.number(f"bead_{ax}_fwhm_kl_diff_se", kl_se[ax], "nats")
v_kl = ev.fwhm_kl_claim(kl, n_beads, min_items=30, kl_diff_se=kl_se)
rec.claim("Bead FWHM histograms (lateral and axial) match the scan better than interpolation", "Fig. 3",
          "KL 1.34 (Recurrent-MZ) vs 2.33 (Deep-Z); mean FWHM 0.440 vs 0.443 µm (scan)",
          f"KL lateral {kl['recurrent_mz']['lateral']:.3f} vs {kl['interpolation']['lateral']:.3f}, axial "
          f"{kl['recurrent_mz']['axial']:.3f} vs {kl['interpolation']['axial']:.3f} (interpolation)", v_kl,
          f"{n_beads} beads fitted at their true positions; fit success Recurrent-MZ "
          f"{fw['recurrent_mz']['lateral_ok'].mean():.0%} / {fw['recurrent_mz']['axial_ok'].mean():.0%}, "
          f"interpolation {fw['interpolation']['lateral_ok'].mean():.0%} / {fw['interpolation']['axial_ok'].mean():.0%}")
rec.number("notebook_seconds", time.perf_counter() - t_start, "s")
rec.number("notebook_cpu_seconds", time.process_time() - cpu_start, "s")
rec.save()
