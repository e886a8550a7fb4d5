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
# PhysicalLayer` (scalar pupil model with the oil → water mismatch, Poisson + read noise).
# **Differences at CI scale** (see `notebooks/params/ci.yaml`): a quarter-width CNN trained for a few hundred
# steps on 48 × 48-pixel frames with 110 nm × 200 nm voxels (no lateral upsampling) instead of 27.5 × 27.5 × 33 nm
# and ~10⁵ steps; test frames of 64 × 64 pixels (7 µm) with the same density per area; a few frames per density.
# The CNN is therefore far from converged, and the paper's claims are not expected to hold at this scale —
# the `full` profile gives the paper's scale (GPU). The trained model is cached in `results/<profile>/
# checkpoints/` and reused by notebooks 11 and 12.

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/10_deepstorm3d_density"
seed = 0
device = "cpu"
threads = 2  # torch CPU threads
tetrapod_model = {"optics": "storm", "mask": "tetrapod_printed", "train_px": 48, "upsampling": 1, "dz_nm": 200.0, "width": 0.25, "n_emitters": [1, 12], "photons": [30000.0, 30000.0], "background": [150.0, 150.0], "blur_sigma_px": [0.0, 0.0], "read_noise_e": 1.0, "batch_size": 4, "n_val": 8, "patch_px": 41, "fft_px": 128}
train_steps = 500
lr = 0.003
fov_px = 64  # test frames (pixels of 110 nm)
densities = [5, 30, 75]  # emitters per 13 x 13 µm (paper Fig. 2: 1 ... 75)
n_frames = 4  # CNN test frames per density
n_frames_mp = 2  # MP test frames per density (the first n of the same frames)
n_single = 3  # frames with one emitter each (MP/MLE versus the grid-bounded CNN)
photons = 30000.0
background = 150.0
match_nm = 150.0
mp_min_photons = 6000.0  # MP stops when the best atom explains fewer photons
mp_z_step_um = 0.1  # MP dictionary spacing in z
example_density = 30
use_shipped_checkpoints = True  # start from data/checkpoints when it holds this exact recipe (CI trains)

# %%
import matplotlib.pyplot as plt
import numpy as np

from refocuslib import smlm
from refocuslib.datasets.deepstorm3d import emitters_for_density
from refocuslib.reproduce import start_notebook
from refocuslib.tasks.deepstorm3d import compare_with_mp, simulate_test_frames, train_cached

params = dict(tetrapod_model=tetrapod_model, train_steps=train_steps, lr=lr, fov_px=fov_px, densities=densities,
              n_frames=n_frames, n_frames_mp=n_frames_mp, n_single=n_single, photons=photons, background=background,
              match_nm=match_nm, mp_min_photons=mp_min_photons, mp_z_step_um=mp_z_step_um)
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints, **params)

# %% [markdown]
# ## 1 · Train the localization CNN on simulated Tetrapod frames (cached)

# %%
task, result = train_cached(tetrapod_model, train_steps, lr, results_dir, "deepstorm3d_tetrapod", seed=seed,
                            device=device)
grid = task.grid
print(f"grid voxels {grid.lateral_nm:.1f} x {grid.lateral_nm:.1f} x {grid.axial_nm:.1f} nm, {grid.n_z} slices; "
      f"trained {result.last_step} steps ({result.seconds:.0f} s this call, resumed from {result.resumed_from}); "
      f"detection threshold {task.threshold:.2f} x max (chosen on validation frames)")
hist = result.history
val = result.validation
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
ax[0].plot([h["step"] for h in hist], [h["g_loss"] for h in hist], label="training loss")
ax[0].plot([v["step"] for v in val], [v["val_loss"] for v in val], "o-", label="validation loss")
ax[0].set_xlabel("step")
ax[0].legend()
ax[1].plot([v["step"] for v in val], [v["jaccard"] for v in val], "o-")
ax[1].set_xlabel("step")
ax[1].set_ylabel("validation Jaccard (150 nm)")
fig.tight_layout()
rec.figure(fig, "training", "Training of the Tetrapod localization CNN (heatmap matching + overlap loss) and the "
           "validation Jaccard index.")
rec.number("train_steps", result.last_step)
rec.number("voxel_lateral_nm", grid.lateral_nm, "nm")
rec.number("voxel_axial_nm", grid.axial_nm, "nm")

# %% [markdown]
# ## 2 · CNN versus matching pursuit over density
#
# Test frames are new simulations (`seed`-dependent) at the paper's photon counts; MP and the CNN see the same
# frames (MP only the first `n_frames_mp` of them: it takes seconds per frame).

# %%
mic = task.physics.microscope
fov_um = (fov_px * mic.pixel_um, fov_px * mic.pixel_um)
evals = {}
for d in densities:
    n = max(1, emitters_for_density(d, fov_um))
    frames = simulate_test_frames(task, (fov_px, fov_px), n, n_frames, seed=10_000 + 100 * seed + int(d),
                                  photons=(photons, photons), background=(background, background))
    evals[d] = (frames, compare_with_mp(task, frames, n_frames_mp, mp_min_photons, mp_z_step_um, match_nm))
    ev = evals[d][1]
    print(f"density {d:3d}/13x13 µm ({n:2d} in the frame): CNN J {ev['cnn'].jaccard:.2f} "
          f"(on MP's frames {ev['cnn_on_mp_frames'].jaccard:.2f}), lateral/axial RMSE "
          f"{ev['cnn'].rmse_lateral_nm:.0f}/{ev['cnn'].rmse_axial_nm:.0f} nm | MP J {ev['mp'].jaccard:.2f}, "
          f"{ev['mp'].rmse_lateral_nm:.0f}/{ev['mp'].rmse_axial_nm:.0f} nm, {ev['mp_s_per_frame']:.1f} s/frame")
single_frames = simulate_test_frames(task, (fov_px, fov_px), 1, n_single, seed=20_000 + seed,
                                     photons=(photons, photons), background=(background, background))
single = compare_with_mp(task, single_frames, n_single, mp_min_photons, mp_z_step_um, match_nm)
print(f"single emitters: CNN J {single['cnn'].jaccard:.2f}, RMSE 3D {single['cnn'].rmse_3d_nm:.1f} nm | "
      f"MP J {single['mp'].jaccard:.2f}, RMSE 3D {single['mp'].rmse_3d_nm:.1f} nm")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for key, style, label in (("cnn", "o-", "CNN (DeepSTORM3D)"), ("mp", "s--", "matching pursuit")):
    axes[0].plot(densities, [evals[d][1][key].jaccard for d in densities], style, label=label)
    axes[1].plot(densities, [evals[d][1][key].rmse_lateral_nm for d in densities], style, label=label)
    axes[2].plot(densities, [evals[d][1][key].rmse_axial_nm for d in densities], style, label=label)
for ax, name in zip(axes, ("Jaccard index (150 nm)", "lateral RMSE (nm)", "axial RMSE (nm)")):
    ax.set_xlabel("emitters per 13 x 13 µm")
    ax.set_ylabel(name)
axes[0].set_ylim(0, 1.02)
axes[0].legend()
fig.suptitle(f"Fig. 2 at {profile} scale: {n_frames} CNN / {n_frames_mp} MP frames of {fov_px}x{fov_px} px per density")
fig.tight_layout()
rec.figure(fig, "density_curves", "Jaccard index and lateral/axial RMSE of matched emitters versus density, CNN "
           "versus matching pursuit (paper Fig. 2b-d). Missing points: no matches.")
for d in densities:
    ev = evals[d][1]
    for key in ("cnn", "mp"):
        rec.number(f"{key}_jaccard_density_{d}", ev[key].jaccard)
        rec.number(f"{key}_rmse_lateral_nm_density_{d}", ev[key].rmse_lateral_nm, "nm")
        rec.number(f"{key}_rmse_axial_nm_density_{d}", ev[key].rmse_axial_nm, "nm")
    rec.number(f"mp_seconds_per_frame_density_{d}", ev["mp_s_per_frame"], "s")
rec.number("cnn_rmse_3d_nm_single", single["cnn"].rmse_3d_nm, "nm")
rec.number("mp_rmse_3d_nm_single", single["mp"].rmse_3d_nm, "nm")

# %%
hi = max(densities)
cnn_hi, mp_hi = evals[hi][1]["cnn_on_mp_frames"].jaccard, evals[hi][1]["mp"].jaccard
rec.claim("The CNN beats matching pursuit at high density", "Fig. 2b",
          "CNN Jaccard stays high up to 75 emitters / 13x13 µm while MP's collapses",
          f"density {hi}: CNN J {cnn_hi:.2f} vs MP J {mp_hi:.2f} (same {n_frames_mp} frames)", cnn_hi > mp_hi,
          "" if profile != "ci" else "CI scale: a few hundred training steps of a quarter-width CNN on 110 x 200 nm "
          "voxels and two MP frames per density; not conclusive at this scale")
rec.claim("Isolated emitters: MP (continuous fit) is more precise than the grid-bounded CNN", "Fig. 2c-d (low density)",
          "MP's precision is not limited by the voxel", f"3D RMSE CNN {single['cnn'].rmse_3d_nm:.1f} nm vs MP "
          f"{single['mp'].rmse_3d_nm:.1f} nm ({n_single} frames)",
          bool(single["mp"].rmse_3d_nm < single["cnn"].rmse_3d_nm) if single["cnn"].tp and single["mp"].tp else None,
          f"CNN voxel {grid.lateral_nm:.0f} x {grid.lateral_nm:.0f} x {grid.axial_nm:.0f} nm")

# %% [markdown]
# ## 3 · An example frame: recovered positions in 3D and the image regenerated from them
#
# The CNN's positions are re-imaged through the physics layer with photon counts (and a flat background) fitted
# by non-negative least squares (`smlm.fit_photons`); the residual shows what the localizations do not explain.

# %%
frames, ev = evals[example_density]
k = 0
truth, found, mp_found = ev["truth_nm"][k], ev["cnn_nm"][k], ev["mp_nm"][k]
phys = task.physics.resized((fov_px, fov_px))
measured = phys.counts_to_photons(frames["frame"][k, 0]).numpy()
ph_fit, bg_fit, regenerated = smlm.fit_photons(phys, found / 1000.0, measured)
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
           "through the physics layer from the CNN's positions, and the residual (photons).")
rec.number("example_residual_rms_photons", float(np.sqrt(np.mean((measured - regenerated) ** 2))), "photons")
rec.number("example_noise_rms_photons", float(np.sqrt(np.mean(np.maximum(regenerated, 0) + 1.0))), "photons")
rec.save()
