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
# # 10 · DeepSTORM3D: dense 3D localization versus emitter density (Fig. 2)
#
# Nehme et al., "DeepSTORM3D: dense three dimensional localization microscopy and point spread function design
# by deep learning", *Nat. Methods* 17, 734 (2020). A Tetrapod phase mask in the pupil of a 100×/1.45 oil
# objective (focus 1.5 µm into water, λ 0.67 µm, 110 nm pixels) encodes each emitter's depth (0–4 µm) in the
# shape of its PSF. A CNN (dilated-convolution context aggregation, lateral upsampling, refinement into a 3D
# occupancy grid) is trained **on simulation only**, on the fly, with heatmap-matching + overlap losses; its
# grid is post-processed (threshold, 3D local maxima, local centroid) into positions. Fig. 2 compares it with
# **matching pursuit** (MP: greedy fit-and-subtract against a dictionary of PSFs, refined continuously) as
# the density grows from 1 to 75 emitters per 13 × 13 µm (30 000 signal photons, 150 background photons per
# pixel), by the Jaccard index and the lateral/axial RMSE of matches within 150 nm (Hungarian matching).
#
# **Here**: the PSF is the *fabricated* Tetrapod mask of the paper (real data, `data/deepstorm3d`) resampled
# onto the simulator's pupil (`refocuslib.smlm.real_mask`); frames come from `refocuslib.models.deepstorm3d.
# PhysicalLayer` (scalar pupil model with the oil → water mismatch, Poisson + read noise, a ≈ 1 px model-mismatch
# blur as in the paper's release). The CNN is the recipe `ds3d_tetrapod` of `refocuslib/recipes.yaml`, trained on
# a CPU and shipped in `data/checkpoints/` (its provenance JSON says how to retrain it); it sees camera counts
# through a fixed photometric normalisation and outputs a 110 × 110 × 100 nm grid. The evaluation protocol and the
# claim predicates are `refocuslib.evaluate.deepstorm3d`.
# **Differences at CI scale**: a quarter-width CNN with 110 nm lateral voxels (paper ×4 upsampling, 27.5 nm)
# trained for a few thousand steps on 48 × 48-pixel frames (paper ~10⁵ steps); test fields shrink with density
# (same emitters per area as the paper's 13 × 13 µm) so that 24 CNN frames and 8 MP frames per density fit the
# CI time.

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/10_deepstorm3d_density"
seed = 0
device = "cpu"
threads = 2  # torch CPU threads
model_recipe = "ds3d_tetrapod"  # refocuslib/recipes.yaml (shared with notebook 11)
use_shipped_checkpoints = True  # evaluate the shipped model of exactly this recipe (False: train it here)
smoke_steps = 20  # a short training run of the same recipe from scratch (shows the training path works)
densities = [5, 30, 75]  # emitters per 13 x 13 µm (paper Fig. 2: 1 ... 75)
fov_px = {5: 128, 30: 64, 75: 48}  # test field per density (pixels of 110 nm): ≥ 100 emitters at density 5
n_frames = 24  # CNN test frames per density
n_frames_mp = {5: 4, 30: 2, 75: 8}  # MP test frames per density (the first n of the same frames: paired; MP takes seconds per frame)
photons = 30000.0
background = 150.0
match_nm = 150.0
mp_min_photons = 6000.0  # MP stops when the best atom explains fewer photons
mp_z_step_um = 0.1  # MP dictionary spacing in z
example_density = 30

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from refocuslib import recipes
from refocuslib.evaluate import deepstorm3d as ev
from refocuslib.notebook import start_notebook
from refocuslib.tasks.deepstorm3d import simulate_test_frames

t_start = time.time()
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints, model_recipe=model_recipe,
                             smoke_steps=smoke_steps, densities=densities, fov_px=fov_px, n_frames=n_frames,
                             n_frames_mp=n_frames_mp, photons=photons, background=background, match_nm=match_nm,
                             mp_min_photons=mp_min_photons, mp_z_step_um=mp_z_step_um)
fov_px = {int(k): int(v) for k, v in fov_px.items()}
n_frames_mp = {int(k): int(v) for k, v in n_frames_mp.items()}

# %% [markdown]
# ## 1 · The model: the shipped CPU-trained recipe, and a training smoke
#
# Validation during training is the paper's goal: 1 − Jaccard index on fixed frames at densities 5, 30 and 75, at
# the threshold that maximises their mean Jaccard (also the detection threshold used below); the all-zero output
# and the input frame itself as the output score 1.

# %%
t0 = time.time()
task, result = recipes.train_cached(model_recipe, results_dir, device=device, use_shipped=use_shipped_checkpoints)
smoke = recipes.smoke(model_recipe, results_dir, steps=smoke_steps, device=device,
                      overrides={"params": {"n_val": 1}})  # one validation frame per density: a cheap smoke
grid = task.grid
val = result.validation
best = min(val, key=lambda v: v["val_loss"])
print(f"model ready in {time.time() - t0:.1f} s; voxels {grid.lateral_nm:.0f} x {grid.lateral_nm:.0f} x "
      f"{grid.axial_nm:.0f} nm, {grid.n_z} slices; best validation 1 − J {best['val_loss']:.3f} at step "
      f"{best['step']} (zero output {best['val_loss_zero']:.3f}, input as output {best['val_loss_identity']:.3f}); "
      f"threshold {task.threshold:.3g} x max; smoke {smoke_steps} steps in {smoke.extras['smoke_seconds']:.1f} s")
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot([v["step"] for v in val], [v["val_loss"] for v in val], "o-", label="CNN")
ax.axhline(best["val_loss_identity"], color="k", ls="--", label="input as output")
ax.axhline(best["val_loss_zero"], color="0.5", ls=":", label="all-zero output")
ax.set_xlabel("training step")
ax.set_ylabel("validation 1 − Jaccard (150 nm)")
ax.legend()
rec.figure(fig, "training", "Validation 1 − Jaccard index (densities 5, 30, 75) during training of the shipped "
           "Tetrapod CNN, with the all-zero output's and the input-as-output's.")
rec.number("train_steps", result.last_step)
rec.number("best_step", result.best_step)
rec.number("val_jaccard_best", 1 - best["val_loss"])
rec.number("threshold", task.threshold)
rec.number("voxel_lateral_nm", grid.lateral_nm, "nm")
rec.number("voxel_axial_nm", grid.axial_nm, "nm")
rec.number("smoke_seconds", smoke.extras["smoke_seconds"], "s")

# %% [markdown]
# ## 2 · CNN versus matching pursuit over density
#
# Test frames are new simulations at the paper's photon counts; MP sees the first frames of the same set (paired).
# ± is the standard error of the per-frame Jaccard index.

# %%
sweep = ev.density_sweep(task, densities, fov_px, n_frames, n_frames_mp, seed=10_000 + 100 * seed,
                         photons=(photons, photons), background=(background, background),
                         mp_min_photons=mp_min_photons, mp_z_step_um=mp_z_step_um, match_nm=match_nm)
for d, r in sweep.items():
    c, m = r.cnn, r.mp
    print(f"density {d:g} ({r.emitters_per_frame} per {r.fov_px}-px frame): CNN J {c.jaccard:.3f} ± {c.jaccard_se:.3f} "
          f"({c.n_emitters} emitters), RMSE {c.rmse_lateral_nm:.0f}/{c.rmse_axial_nm:.0f} nm, "
          f"{r.cnn_seconds_per_frame:.2f} s/frame | MP J {m.jaccard:.3f} ± {m.jaccard_se:.3f}, RMSE "
          f"{m.rmse_lateral_nm:.0f}/{m.rmse_axial_nm:.0f} nm, {r.mp_seconds_per_frame:.1f} s/frame")

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for key, style, label in (("cnn", "o-", "CNN (DeepSTORM3D)"), ("mp", "s--", "matching pursuit")):
    sc = [getattr(sweep[d], key) for d in densities]
    axes[0].errorbar(densities, [s.jaccard for s in sc], [s.jaccard_se for s in sc], fmt=style, label=label,
                     capsize=3)
    axes[1].plot(densities, [s.rmse_lateral_nm for s in sc], style, label=label)
    axes[2].plot(densities, [s.rmse_axial_nm for s in sc], style, label=label)
for ax, name in zip(axes, ("Jaccard index (150 nm)", "lateral RMSE (nm)", "axial RMSE (nm)")):
    ax.set_xlabel("emitters per 13 x 13 µm")
    ax.set_ylabel(name)
axes[0].set_ylim(0, 1.02)
axes[0].legend()
fig.suptitle(f"Fig. 2 at {profile} scale: {n_frames} CNN / {n_frames_mp[max(densities)]} MP frames per density")
fig.tight_layout()
rec.figure(fig, "density_curves", "Jaccard index (± standard error over frames) and lateral/axial RMSE of matched "
           "emitters versus density, CNN versus matching pursuit (paper Fig. 2b-d).")
for d, r in sweep.items():
    for key in ("cnn", "mp"):
        s = getattr(r, key)
        rec.number(f"{key}_jaccard_density_{d}", s.jaccard)
        rec.number(f"{key}_jaccard_se_density_{d}", s.jaccard_se)
        rec.number(f"{key}_rmse_lateral_nm_density_{d}", s.rmse_lateral_nm, "nm")
        rec.number(f"{key}_rmse_axial_nm_density_{d}", s.rmse_axial_nm, "nm")
    rec.number(f"mp_seconds_per_frame_density_{d}", r.mp_seconds_per_frame, "s")
    rec.number(f"cnn_seconds_per_frame_density_{d}", r.cnn_seconds_per_frame, "s")

# %%
hi, lo = max(densities), min(densities)
v_hi = ev.cnn_beats_mp(sweep[hi], margin=0.1, min_frames=8)
rec.claim("The CNN's Jaccard index exceeds matching pursuit's by ≥ 0.1 at density 75", "Fig. 2b",
          "CNN J ≈ 0.7 vs MP ≈ 0.3 at 75 emitters / 13x13 µm (read off the figure)",
          f"CNN {sweep[hi].cnn.head(sweep[hi].mp.n_frames).jaccard:.2f} vs MP {sweep[hi].mp.jaccard:.2f}",
          holds=v_hi, note=v_hi.detail)
v_lo = ev.cnn_jaccard_at_least(sweep[lo], 0.9, min_emitters=100)
rec.claim("CNN Jaccard index ≥ 0.9 at density 5 (≥ 100 emitters)", "Fig. 2b", "J ≈ 1 at low density",
          f"{sweep[lo].cnn.jaccard:.3f} ± {sweep[lo].cnn.jaccard_se:.3f}", holds=v_lo, note=v_lo.detail)
v_mp = ev.mp_more_precise(sweep[lo])
rec.claim("At low density matching pursuit (a continuous fit) is more precise than the CNN", "Fig. 2c-d",
          "MP's RMSE lowest at low density", f"lateral RMSE MP {sweep[lo].mp.rmse_lateral_nm:.0f} nm vs CNN "
          f"{sweep[lo].cnn.rmse_lateral_nm:.0f} nm", holds=v_mp, note=v_mp.detail)

# %% [markdown]
# ## 3 · An example frame: recovered positions in 3D and the image regenerated from them
#
# The CNN's positions are re-imaged through the physics layer with photon counts (and a flat background) fitted
# by non-negative least squares (`smlm.fit_photons`); the residual shows what the localizations do not explain.

# %%
fpx = fov_px[example_density]
from refocuslib.datasets.deepstorm3d import emitters_for_density

n_ex = emitters_for_density(example_density, (fpx * grid.pixel_um,) * 2)
frames = simulate_test_frames(task, (fpx, fpx), n_ex, 1, seed=20_000 + seed, photons=(photons, photons),
                              background=(background, background))
truth, found = task.truth_nm(frames)[0], task.localize(frames["frame"])[0]
from refocuslib import smlm

phys = task.physics.resized((fpx, fpx))
mp_found = smlm.matching_pursuit(phys.counts_to_photons(frames["frame"][0, 0]), phys, min_photons=mp_min_photons,
                                 z_step_um=mp_z_step_um, z_range_um=grid.z_range_um, max_emitters=3 * n_ex + 10).xyz_nm
regen = ev.regenerated_residual(task.physics, found, frames["frame"][0, 0].numpy())
measured = frames["frame"][0, 0].numpy()
regenerated = regen["model"]
fig = plt.figure(figsize=(14, 3.6))
ax3 = fig.add_subplot(1, 4, 1, projection="3d")
ax3.scatter(*(truth / 1000).T, s=40, facecolors="none", edgecolors="k", label="truth")
ax3.scatter(*(found / 1000).T, c="r", marker="x", label="CNN")
if len(mp_found):
    ax3.scatter(*(mp_found / 1000).T, c="b", marker="+", label="MP")
ax3.set_xlabel("x (µm)")
ax3.set_ylabel("y (µm)")
ax3.set_zlabel("z (µm)")
ax3.legend(fontsize=7)
vmax = float(np.percentile(measured, 99.8))
for i, (img, title) in enumerate(((measured, "measured (simulated) frame"), (regenerated, "regenerated from CNN"),
                                  (measured - regenerated, "residual"))):
    ax = fig.add_subplot(1, 4, i + 2)
    im = ax.imshow(img, cmap="magma" if i < 2 else "coolwarm", vmin=0 if i < 2 else -vmax / 4,
                   vmax=vmax if i < 2 else vmax / 4)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046)
fig.suptitle(f"density {example_density}: {len(truth)} emitters, CNN found {len(found)}, MP {len(mp_found)}")
fig.tight_layout()
rec.figure(fig, "example_frame", "An example frame: true and recovered 3D positions, the image regenerated "
           "through the physics layer from the CNN's positions, and the residual (counts).")
rec.number("example_residual_to_noise_variance", regen["ratio"])
print(f"notebook time {time.time() - t_start:.0f} s")
rec.save()
