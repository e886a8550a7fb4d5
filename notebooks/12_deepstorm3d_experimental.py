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
# # 12 · DeepSTORM3D on the paper's real data (Fig. 3 and Fig. 5e)
#
# Nehme et al., *Nat. Methods* 17, 734 (2020), public release (MIT licence; `data/deepstorm3d/README.md`):
#
# * **Fig. 3** — STORM of labelled mitochondria in COS7 cells with the fabricated **Tetrapod** mask
#   (λ 0.67 µm, z 0–4 µm, nominal focal plane 1.5 µm); a CNN trained on simulations with that mask localizes
#   the dense frames; the 3D super-resolved histogram is coloured by depth and the image regenerated from the
#   localizations overlays the measurement.
# * **Fig. 5e** — single snapshots of telomeres in a fixed U2OS nucleus taken with the **learned** PSF
#   (λ 0.58 µm, z 2–6 µm, nominal focal plane 4.5 µm): the paper recovers 57 of ≈ 62 telomeres (2 false
#   positives) in one frame.
#
# **Here**: both measured masks are loaded from the .mat files, unwrapped and resampled onto the simulator's
# pupil with the 4f-relay pupil radius r = f·NA/M / p (`smlm.real_mask`); the image is the forward Fourier
# transform of the pupil (the orientation the telomere spots select, `data/deepstorm3d/README.md`). The STORM
# frames are localised by notebook 10's Tetrapod CNN (recipe `ds3d_tetrapod`), after mapping their counts to that
# model's photometry: the camera gain and offset come from the frames' own photon-transfer curve
# (`smlm.photon_transfer`), and the frames are rescaled so that their background matches the model's 150
# photons/px. The telomeres are localised by the CNN of recipe `ds3d_telomere`, trained on simulations of the
# learned PSF at the snapshots' photometry (gain, offset, background and blur estimated from them; see the data
# README). **Differences**: the Tetrapod CNN was trained at the paper's simulated photon counts, not at these
# frames' much lower signal (the rescaled frames are noisier than its training frames); both CNNs are small and
# briefly trained; voxels are 110 × 110 × 100 nm. Without ground truth the real-data numbers are counts and
# residuals, not accuracies.

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/12_deepstorm3d_experimental"
seed = 0
device = "cpu"
threads = 2
storm_recipe = "ds3d_tetrapod"  # refocuslib/recipes.yaml (notebook 10's model)
telomere_recipe = "ds3d_telomere"
use_shipped_checkpoints = True
smoke_steps = 10
n_storm_frames = 50  # all 50 frames of the release (data/deepstorm3d)
storm_rescale = True  # map the frames' photometry onto the model's training background (a model trained at
#                       the paper's simulated photon counts); False: the model was trained at these frames' camera
hist_nm = 55.0  # pixel of the super-resolved histogram
hist_blur = 1.5  # each localization is drawn as a Gaussian of this σ (histogram bins)
psf_planes = 7
paper_telomeres_found = 57
paper_telomeres_total = 62
paper_false_positives = 2

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import cm, colors
from scipy import ndimage

from refocuslib import recipes, smlm
from refocuslib.evaluate import deepstorm3d as ev
from refocuslib.notebook import start_notebook
from refocuslib.optics import mask_phase_on_grid

t_start = time.time()
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints, storm_recipe=storm_recipe,
                             telomere_recipe=telomere_recipe, smoke_steps=smoke_steps, n_storm_frames=n_storm_frames,
                             storm_rescale=storm_rescale,
                             hist_nm=hist_nm, hist_blur=hist_blur)

# %% [markdown]
# ## 1 · The shipped CNNs; the measured masks on the simulator's pupil, and their PSFs through z

# %%
storm, storm_result = recipes.train_cached(storm_recipe, results_dir, device=device,
                                           use_shipped=use_shipped_checkpoints)
telo, telo_result = recipes.train_cached(telomere_recipe, results_dir, device=device,
                                         use_shipped=use_shipped_checkpoints)
smoke = recipes.smoke(telomere_recipe, results_dir, steps=smoke_steps, device=device,
                      overrides={"params": {"n_val": 1}})
for name, res in (("STORM (Tetrapod)", storm_result), ("telomeres (learned PSF)", telo_result)):
    best = min(res.validation, key=lambda v: v["val_loss"])
    print(f"{name}: {res.last_step} steps, best validation Jaccard on simulations {1 - best['val_loss']:.2f}")
    rec.number(f"{'storm' if 'STORM' in name else 'telomere'}_cnn_validation_jaccard", 1 - best["val_loss"])
print(f"telomere training smoke: {smoke_steps} steps in {smoke.extras['smoke_seconds']:.1f} s")

fig, axes = plt.subplots(2, psf_planes + 2, figsize=(2.0 * (psf_planes + 2), 4.6))
for row, (task, name, key) in enumerate(((storm, "printed Tetrapod", "tetrapod_printed"),
                                         (telo, "learned", "learned"))):
    raw = smlm.load_phase_mask(smlm.data_dir() / smlm.MASKS[key][0])
    axes[row, 0].imshow(np.where(raw != 0, raw, np.nan), cmap="twilight")
    axes[row, 0].set_title(f"{name}: .mat phase", fontsize=8)
    grid = task.physics.pupil_grid()
    on_pupil = mask_phase_on_grid(task.physics.mask_fn, grid).detach().numpy() * (grid.aperture.numpy() > 0)
    on_pupil = np.fft.fftshift(np.where(grid.aperture.numpy() > 0, on_pupil, np.nan))
    c = on_pupil.shape[0] // 2
    r = int(np.ceil(grid.na / grid.wavelength_um * grid.n_fine * grid.dx_um)) + 2
    axes[row, 1].imshow(on_pupil[c - r:c + r, c - r:c + r], cmap="viridis")
    axes[row, 1].set_title("on the pupil (unwrapped)", fontsize=8)
    z = np.linspace(*task.grid.z_range_um, psf_planes)
    with torch.no_grad():
        psf = task.physics.psfs(z).cpu().numpy()
    for j in range(psf_planes):
        axes[row, j + 2].imshow(np.sqrt(psf[j] / psf[j].max()), cmap="magma")
        axes[row, j + 2].set_title(f"z = {z[j]:.2f} µm", fontsize=7)
for a in axes.ravel():
    a.set_xticks([])
    a.set_yticks([])
fig.tight_layout()
rec.figure(fig, "real_masks", "The paper's fabricated Tetrapod (top, λ 0.67 µm, focus 1.5 µm) and learned mask "
           "(bottom, λ 0.58 µm, focus 4.5 µm): the .mat phase, the unwrapped phase resampled on the simulator's "
           "pupil (r = f·NA/M / p), and the resulting PSFs through the axial range (√ scale).")

# %% [markdown]
# ## 2 · Tetrapod STORM frames (Fig. 3): localizations, 3D histogram, regenerated images

# %%
frames = smlm.load_storm_frames(n_storm_frames)
model_frames, ptc, e_per_adu = smlm.to_model_frames(storm, frames, rescale=storm_rescale)
model_frames = model_frames.numpy()
model_bg = float(np.mean(storm.sampler.background))  # photons/px of the model's training frames
print(f"{len(frames)} STORM frames of {frames.shape[1]} x {frames.shape[2]} px; photon transfer: gain "
      f"{ptc['gain_adu']:.2f} ADU/photon, offset {ptc['offset_adu']:.1f} ADU, background "
      f"{ptc['background_photons']:.1f} photons/px; " + (f"rescaled by {e_per_adu:.2f} model photons per ADU "
      f"(background → {model_bg:.0f} photons/px)" if storm_rescale else "used as they are"))
rec.number("storm_gain_adu_per_photon", ptc["gain_adu"])
rec.number("storm_offset_adu", ptc["offset_adu"])
rec.number("storm_background_photons", ptc["background_photons"])
locs = storm.localize(model_frames)
allp = np.concatenate([p for p in locs]) if locs else np.zeros((0, 3))
print(f"{len(allp)} localizations ({len(allp) / len(frames):.0f} per frame)")
rec.number("storm_frames", len(frames))
rec.number("storm_localizations_per_frame", len(allp) / len(frames))

h, w = frames.shape[1:]
px_nm = storm.physics.pixel_um * 1000
edges_x = np.arange(0, w * px_nm + hist_nm, hist_nm)
edges_y = np.arange(0, h * px_nm + hist_nm, hist_nm)
counts, _, _ = np.histogram2d(allp[:, 1], allp[:, 0], bins=(edges_y, edges_x))
zsum, _, _ = np.histogram2d(allp[:, 1], allp[:, 0], bins=(edges_y, edges_x), weights=allp[:, 2])
# each localization drawn as a Gaussian of σ = hist_blur bins (the usual SMLM rendering), coloured by mean z
counts = ndimage.gaussian_filter(counts, hist_blur)
zsum = ndimage.gaussian_filter(zsum, hist_blur)
zmean = np.divide(zsum, counts, out=np.zeros_like(zsum), where=counts > 1e-6)
z0, z1 = (1000 * v for v in storm.grid.z_range_um)
rgb = cm.turbo(colors.Normalize(z0, z1)(zmean))[..., :3]
top = np.percentile(counts[counts > 1e-6], 99) if np.any(counts > 1e-6) else 1.0
bright = np.clip(counts / top, 0, 1) ** 0.5
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1, 0.6]})
axes[0].imshow(frames.mean(0), cmap="gray")
axes[0].set_title(f"mean of {len(frames)} measured frames", fontsize=9)
axes[1].imshow(rgb * bright[..., None], extent=(0, w * px_nm / 1000, h * px_nm / 1000, 0))
axes[1].set_title(f"3D histogram ({hist_nm:.0f} nm bins), colour = z", fontsize=9)
axes[1].set_xlabel("x (µm)")
fig.colorbar(cm.ScalarMappable(colors.Normalize(z0 / 1000, z1 / 1000), cmap="turbo"), ax=axes[1],
             fraction=0.035, label="z (µm)")
axes[2].hist(allp[:, 2] / 1000, bins=storm.grid.n_z, range=storm.grid.z_range_um, color="0.4")
axes[2].set_xlabel("z (µm)")
axes[2].set_ylabel("localizations")
axes[0].axis("off")
fig.tight_layout()
rec.figure(fig, "storm_histogram", "Real Tetrapod STORM frames (mitochondria, COS7): the 3D super-resolved "
           "histogram of the CNN's localizations coloured by depth, and their depth distribution (paper Fig. 3).")

# %%
# the cells' background is not flat: a smooth lower envelope (as for the telomeres below) is fitted with the emitters;
# the flat-background fit is kept as a number. The ideal floor is what a perfect model would score on each frame
# (its own regenerated image redrawn through the camera, refitted): ≈ 1 means the criterion is reachable.
# Each PSF is blurred by the model-mismatch σ the CNN was trained with (the centre of its recipe's
# `blur_sigma_px`), so that the regenerated image is the image model the CNN learnt; the unblurred value is kept.
storm_blur = float(np.mean(storm.sampler.blur_sigma_px))
regens_flat = [ev.regenerated_residual(storm.physics, p, f, blur_sigma_px=storm_blur) for p, f in zip(locs, model_frames)]
regens = [ev.regenerated_residual(storm.physics, p, f, background=smlm.smooth_background(f, 25),
                                  blur_sigma_px=storm_blur) for p, f in zip(locs, model_frames)]
regens_sharp = [ev.regenerated_residual(storm.physics, p, f, background=smlm.smooth_background(f, 25))
                for p, f in zip(locs, model_frames)]
ratios = [r["ratio"] for r in regens]
floors = [ev.ideal_residual_floor(storm.physics, p, r, seed=seed + i, blur_sigma_px=storm_blur)
          for i, (p, r) in enumerate(zip(locs, regens_flat))]
rec.number("storm_residual_to_noise_variance_flat_background_mean", float(np.mean([r["ratio"] for r in regens_flat])))
rec.number("storm_residual_to_noise_variance_unblurred_mean", float(np.mean([r["ratio"] for r in regens_sharp])))
rec.number("storm_ideal_model_floor_mean", float(np.mean(floors)))
print(f"model blur σ {storm_blur:.2f} px; flat background: mean {np.mean([r['ratio'] for r in regens_flat]):.2f}; "
      f"unblurred PSFs: {np.mean([r['ratio'] for r in regens_sharp]):.2f}; ideal-model floor {np.mean(floors):.2f}")
k = 0
measured, regenerated = model_frames[k], regens[k]["model"]
residual = measured - regenerated
noise_var = regens[k]["noise_var"]
print(f"residual / noise variance over {len(ratios)} frames: mean {np.mean(ratios):.2f}, median "
      f"{np.median(ratios):.2f}, max {np.max(ratios):.2f}")
scale = np.percentile(measured, 99.5)
bg_fit = np.percentile(regenerated, 5)
overlay = np.zeros(measured.shape + (3,))
overlay[..., 1] = np.clip((measured - bg_fit) / (scale - bg_fit), 0, 1)
overlay[..., 0] = overlay[..., 2] = np.clip((regenerated - bg_fit) / (scale - bg_fit), 0, 1)
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
axes[0].imshow(measured, cmap="gray", vmax=scale)
axes[0].set_title(f"measured frame {k + 1} (model photons)", fontsize=9)
axes[1].imshow(overlay)
axes[1].set_title("overlay: measured (green) / regenerated (magenta)", fontsize=9)
im = axes[2].imshow(residual, cmap="coolwarm", vmin=-4 * np.sqrt(noise_var), vmax=4 * np.sqrt(noise_var))
axes[2].set_title("residual", fontsize=9)
fig.colorbar(im, ax=axes[2], fraction=0.035)
for a in axes:
    a.axis("off")
fig.tight_layout()
rec.figure(fig, "storm_regenerated", "A real STORM frame, its overlay with the image regenerated through the "
           "physics layer from the CNN's localizations (photons fitted by NNLS), and the residual (paper Fig. 3b).")
rec.number("storm_residual_to_noise_variance_mean", float(np.mean(ratios)))
rec.number("storm_residual_to_noise_variance_max", float(np.max(ratios)))
v3 = ev.residual_explained(ratios, 1.5, min_frames=50, label="STORM: ")
rec.claim("Over all 50 real STORM frames the image regenerated from the CNN's localizations leaves a residual "
          "variance ≤ 1.5× the noise variance", "Fig. 3b", "regenerated and measured frames overlay closely",
          f"residual / noise variance {np.mean(ratios):.2f} (mean of {len(ratios)} frames)", holds=v3,
          note=v3.detail + f"; noise variance from the frame's darkest 8x8 tiles; smooth background fitted (flat: "
          f"{np.mean([r['ratio'] for r in regens_flat]):.2f}); PSFs blurred by the trained σ {storm_blur:.2f} px "
          f"(unblurred: {np.mean([r['ratio'] for r in regens_sharp]):.2f}); a perfect model scores {np.mean(floors):.2f}")

# %% [markdown]
# ## 3 · Telomeres with the learned PSF (Fig. 5e): detections in one snapshot, in 3D

# %%
tel = smlm.load_telomeres()
tlocs = telo.localize(tel)
fig = plt.figure(figsize=(15, 9))
# The snapshots' bright spots (≈ 900 photons/px at the peak) carry far more shot noise than the background, so
# the residual is compared with the camera's own noise at the regenerated image (per pixel gain·signal + read²,
# `ratio_camera`; what a perfect model leaves, floor ≈ 1); the dark-tile ratio of the STORM criterion is kept.
telo_blur = float(np.mean(telo.sampler.blur_sigma_px))
counts_found, tratios, tfloors, tratios_tiles, tfloors_tiles, tchi2 = [], [], [], [], [], []
for row in range(2):
    img = tel[row].astype(np.float64)
    p = tlocs[row]
    counts_found.append(len(p))
    bg_map = smlm.smooth_background(img, 25)  # the nucleus' non-uniform background (counts)
    r = ev.regenerated_residual(telo.physics, p, img, background=bg_map, blur_sigma_px=telo_blur)
    tratios.append(r["ratio_camera"])
    tratios_tiles.append(r["ratio"])
    tchi2.append(r["chi2"])
    ideal = ev.ideal_residual(telo.physics, p, r, seed=seed + row, background=bg_map, blur_sigma_px=telo_blur)
    tfloors.append(ideal["ratio_camera"])
    tfloors_tiles.append(ideal["ratio"])
    vmin, vmax = np.percentile(img, [0.5, 99.7])
    a0 = fig.add_subplot(2, 4, 4 * row + 1)
    a0.imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
    sc = a0.scatter(p[:, 0] / px_nm - 0.5, p[:, 1] / px_nm - 0.5, c=p[:, 2] / 1000, cmap="turbo",
                    vmin=telo.grid.z_range_um[0], vmax=telo.grid.z_range_um[1], s=14, marker="+")
    a0.set_title(f"telomeres{row + 1}.tif: {len(p)} found", fontsize=9)
    a1 = fig.add_subplot(2, 4, 4 * row + 2)
    a1.imshow(r["model"], cmap="gray", vmin=vmin, vmax=vmax)
    a1.set_title("regenerated (learned PSF + smooth background)", fontsize=9)
    lim = 4 * np.sqrt(r["noise_var"])
    a2 = fig.add_subplot(2, 4, 4 * row + 3)
    a2.imshow(img - r["model"], cmap="coolwarm", vmin=-lim, vmax=lim)
    a2.set_title(f"residual: {r['ratio_camera']:.1f}x the camera noise variance", fontsize=9)
    a3 = fig.add_subplot(2, 4, 4 * row + 4, projection="3d")
    a3.scatter(p[:, 0] / 1000, p[:, 1] / 1000, p[:, 2] / 1000, c=p[:, 2] / 1000, cmap="turbo",
               vmin=telo.grid.z_range_um[0], vmax=telo.grid.z_range_um[1], s=10)
    a3.set_xlabel("x (µm)")
    a3.set_ylabel("y (µm)")
    a3.set_zlabel("z (µm)")
    a3.set_title("detections in 3D", fontsize=9)
    for a in (a0, a1, a2):
        a.axis("off")
    rec.number(f"telomeres{row + 1}_found", len(p))
    rec.number(f"telomeres{row + 1}_residual_to_camera_noise_variance", r["ratio_camera"])
    rec.number(f"telomeres{row + 1}_residual_to_dark_tile_noise_variance", r["ratio"])
    rec.number(f"telomeres{row + 1}_reduced_chi2", r["chi2"])
    rec.number(f"telomeres{row + 1}_ideal_model_floor", tfloors[-1])
    rec.number(f"telomeres{row + 1}_ideal_model_floor_dark_tiles", tfloors_tiles[-1])
fig.tight_layout()
rec.figure(fig, "telomeres", "Real telomere snapshots with the learned PSF: CNN localizations coloured by depth, "
           "the image regenerated from them, the residual, and the detections in 3D (paper Fig. 5e).")
print(f"found {counts_found} telomeres; paper: {paper_telomeres_found} of ≈{paper_telomeres_total} "
      f"(+{paper_false_positives} false positives) in one frame; residual / camera noise {np.round(tratios, 2)} "
      f"(floor {np.round(tfloors, 2)}), / dark-tile noise {np.round(tratios_tiles, 2)} (floor "
      f"{np.round(tfloors_tiles, 2)}), reduced χ² {np.round(tchi2, 2)}; model blur σ {telo_blur:.2f} px")
vc = ev.telomere_count(counts_found, 45, 75)
rec.claim("Each telomere snapshot with the learned PSF gives 45–75 detections", "Fig. 5e",
          f"{paper_telomeres_found} of ≈{paper_telomeres_total} found, {paper_false_positives} false positives",
          f"{counts_found} detections", holds=vc, note=vc.detail + "; no ground truth here: a count, not a Jaccard")
vr = ev.residual_explained(tratios, 1.5, min_frames=2, label="telomeres: ")
rec.claim("The regenerated telomere snapshot leaves a residual ≤ 1.5× the noise variance", "Fig. 5e",
          "the regenerated image matches the snapshot", f"{np.round(tratios, 2).tolist()}", holds=vr,
          note=vr.detail + f"; noise = the camera's shot + read noise at the regenerated image; a perfect model "
          f"scores {np.round(tfloors, 2).tolist()}; against the dark tiles' noise (STORM criterion) "
          f"{np.round(tratios_tiles, 2).tolist()}, perfect model {np.round(tfloors_tiles, 2).tolist()}; PSFs blurred "
          f"by the trained σ {telo_blur:.2f} px")
print(f"notebook time {time.time() - t_start:.0f} s")
rec.save()

# %% [markdown]
# ## Reading the residuals
#
# Two noise references. The STORM criterion divides the residual variance by the noise variance of the frame's
# darkest tiles (as the issue asks); there the camera model of the rescaled frames is not theirs
# (`storm_rescale` maps ≈ 12 background photons/px onto the model's 150), so the frames' own dark tiles are the
# honest reference. The *ideal floor* (`evaluate.deepstorm3d.ideal_residual_floor`: the regenerated image redrawn
# through the camera and refitted) is ≈ 1.07 on these sparse frames, so the criterion is fair. Fitting the cells'
# smooth, non-uniform background takes the ratio from ≈ 2.0 (flat background) to ≈ 1.6; blurring each PSF by the
# σ the CNN trained with (0.75 px) moves it only from 1.60 to 1.58; lowering the detection threshold to a quarter
# (more than four times the localisations) lowered it only to ≈ 1.6 in a check on four frames, and matching
# pursuit on the residual finds no emitter ≥ 1500 photons. What is left is the shape of the PSF around found
# emitters (model mismatch), not missed emitters.
#
# The telomere snapshots are bright (≈ 900 photons/px at a spot's peak): their shot noise far exceeds the
# background's, so against the dark tiles even a perfect model scores ≈ 2.6–3.4. Their criterion therefore
# divides by the camera's own noise at the regenerated image (per pixel gain·signal + read², the sCMOS gain and
# offset measured from the snapshots), where a perfect model scores 1.00. Ours is ≈ 12–13×: a PSF mismatch of the
# learned mask's model against the measured spots — the residual shows a bright core and model rings around every
# spot, so the real spots are more compact than the model's. Matching pursuit on the 12 brightest windows of
# `telomeres1.tif` (up to 3 emitters each) leaves an unexplained variance of 0.225 with the nominal model, barely changed
# with the mask's phase scaled by 0.8–1.1 (0.253–0.226), the pupil radius by 0.95 or 1.05 (0.237, 0.253) or the
# wavelength moved to 0.60 or 0.62 µm with the SLM phase scaled by 0.58/λ (0.217, 0.223); a 1 px blur removes
# ≈ 29 % of it. A calibrated pupil (phase retrieval from a bead z-stack, which the release does not include) is
# what the remaining mismatch needs.
