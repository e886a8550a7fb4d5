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
# pupil with the 4f-relay pupil radius r = f·NA/M / p (`smlm.real_mask`); a CNN per acquisition is trained on
# simulations with that mask and those optics (`tasks.deepstorm3d.train_cached`), then run on the real frames.
# **Differences**: at CI scale the Tetrapod CNN is notebook 10's model (trained at the paper's simulated photon
# counts, not at the lower signal of these frames), both CNNs are small and briefly trained, voxels are 110 nm ×
# 200 nm, and only 8 of the 50 STORM frames are used. Without ground truth the real-data numbers are counts and
# residuals, not accuracies.

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/12_deepstorm3d_experimental"
seed = 0
device = "cpu"
threads = 2
storm_model = {"optics": "storm", "mask": "tetrapod_printed", "train_px": 48, "upsampling": 1, "dz_nm": 200.0, "width": 0.25, "n_emitters": [1, 12], "photons": [30000.0, 30000.0], "background": [150.0, 150.0], "blur_sigma_px": [0.0, 0.0], "read_noise_e": 1.0, "batch_size": 4, "n_val": 8, "patch_px": 41, "fft_px": 128}
storm_steps = 500
storm_lr = 0.003
telomere_model = {"optics": "telomere", "mask": "learned", "train_px": 48, "upsampling": 1, "dz_nm": 200.0, "width": 0.25, "n_emitters": [1, 8], "photons": [10000.0, 60000.0], "background": [50.0, 200.0], "nonuniform": 0.5, "blur_sigma_px": [0.5, 1.5], "read_noise_e": 5.0, "batch_size": 4, "n_val": 8, "patch_px": 33, "fft_px": 96}
telomere_steps = 500
telomere_lr = 0.003
n_storm_frames = 8  # the project ships 8; more are read from ../shared/data when present
data_path = None  # None: data/deepstorm3d, else ../shared/data/deepstorm3d
hist_nm = 55.0  # pixel of the super-resolved histogram
hist_blur = 1.5  # each localization is drawn as a Gaussian of this σ (histogram bins)
psf_planes = 7
paper_telomeres_found = 57
paper_telomeres_total = 62
paper_false_positives = 2
use_shipped_checkpoints = True  # start from data/checkpoints when it holds this exact recipe (CI trains)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import cm, colors
from scipy import ndimage

from refocuslib import smlm
from refocuslib.optics import mask_phase_on_grid
from refocuslib.reproduce import start_notebook
from refocuslib.tasks.deepstorm3d import train_cached

params = dict(storm_model=storm_model, storm_steps=storm_steps, storm_lr=storm_lr, telomere_model=telomere_model,
              telomere_steps=telomere_steps, telomere_lr=telomere_lr, n_storm_frames=n_storm_frames,
              hist_nm=hist_nm, hist_blur=hist_blur)
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints, **params)

# %% [markdown]
# ## 1 · The measured masks on the simulator's pupil, and their PSFs through z

# %%
storm, storm_result = train_cached(storm_model, storm_steps, storm_lr, results_dir, "deepstorm3d_tetrapod",
                                   seed=seed, device=device)
telo, telo_result = train_cached(telomere_model, telomere_steps, telomere_lr, results_dir,
                                 "deepstorm3d_telomeres", seed=seed, device=device)
for name, res in (("STORM (Tetrapod)", storm_result), ("telomeres (learned PSF)", telo_result)):
    print(f"{name}: {res.last_step} steps ({res.seconds:.0f} s this call), validation Jaccard on simulations "
          f"{res.validation[-1]['jaccard']:.2f}")
rec.number("storm_cnn_validation_jaccard", storm_result.validation[-1]["jaccard"])
rec.number("telomere_cnn_validation_jaccard", telo_result.validation[-1]["jaccard"])

fig, axes = plt.subplots(2, psf_planes + 2, figsize=(2.0 * (psf_planes + 2), 4.6))
for row, (task, name, key) in enumerate(((storm, "printed Tetrapod", "tetrapod_printed"),
                                         (telo, "learned", "learned"))):
    raw = smlm.load_phase_mask(smlm.data_dir(data_path) / smlm.MASKS[key][0])
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
# ## 2 · Tetrapod STORM frames (Fig. 3): localizations, 3D histogram, regenerated image

# %%
frames = smlm.load_storm_frames(n_storm_frames, data_path)
print(f"{len(frames)} STORM frames of {frames.shape[1]} x {frames.shape[2]} px from "
      f"{smlm.storm_frame_paths(n_storm_frames, data_path)[0].parent}")
locs = storm.localize(frames)
allp = np.concatenate([p for p in locs]) if locs else np.zeros((0, 3))
print(f"{len(allp)} localizations ({len(allp) / len(frames):.0f} per frame); z range "
      f"{allp[:, 2].min() if len(allp) else float('nan'):.0f}–{allp[:, 2].max() if len(allp) else float('nan'):.0f} nm")
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
for a in axes[:1]:
    a.axis("off")
fig.tight_layout()
rec.figure(fig, "storm_histogram", "Real Tetrapod STORM frames (mitochondria, COS7): the 3D super-resolved "
           "histogram of the CNN's localizations coloured by depth, and their depth distribution (paper Fig. 3).")

# %%
k = 0
measured = frames[k].astype(np.float64)
phys = storm.physics.resized(frames.shape[1:])
ph_fit, bg_fit, regenerated = smlm.fit_photons(phys, locs[k] / 1000.0, measured)
residual = measured - regenerated
noise_var = smlm.noise_variance(measured)
explained = 1 - residual.var() / measured.var()
print(f"frame {k + 1}: {len(locs[k])} emitters, fitted background {bg_fit:.1f} counts; residual variance "
      f"{residual.var():.1f} vs noise variance {noise_var:.1f} (dark-region estimate); explained variance "
      f"{explained:.2f}")
scale = np.percentile(measured, 99.5)
overlay = np.zeros(measured.shape + (3,))
overlay[..., 1] = np.clip((measured - bg_fit) / (scale - bg_fit), 0, 1)
overlay[..., 0] = overlay[..., 2] = np.clip((regenerated - bg_fit) / (scale - bg_fit), 0, 1)
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
axes[0].imshow(measured, cmap="gray", vmax=scale)
axes[0].set_title(f"measured frame {k + 1}", fontsize=9)
axes[1].imshow(overlay)
axes[1].set_title("overlay: measured (green) / regenerated (magenta)", fontsize=9)
im = axes[2].imshow(residual, cmap="coolwarm", vmin=-4 * np.sqrt(noise_var), vmax=4 * np.sqrt(noise_var))
axes[2].set_title("residual (counts)", fontsize=9)
fig.colorbar(im, ax=axes[2], fraction=0.035)
for a in axes:
    a.axis("off")
fig.tight_layout()
rec.figure(fig, "storm_regenerated", "A real STORM frame, its overlay with the image regenerated through the "
           "physics layer from the CNN's localizations (photons fitted by NNLS), and the residual (paper Fig. 3b).")
rec.number("storm_residual_variance", residual.var(), "counts²")
rec.number("storm_noise_variance", noise_var, "counts²")
rec.number("storm_explained_variance", explained)
rec.claim("The image regenerated from the localizations matches the measured STORM frame", "Fig. 3b",
          "regenerated and measured frames overlay closely",
          f"residual variance {residual.var():.0f} vs noise variance {noise_var:.0f} counts²",
          bool(residual.var() < 1.5 * noise_var),
          "holds if the residual variance is below 1.5x the noise variance estimated in the frame's darkest blocks"
          + ("; CI: Tetrapod CNN trained at the simulated photon counts of notebook 10" if profile == "ci" else ""))

# %% [markdown]
# ## 3 · Telomeres with the learned PSF (Fig. 5e): how many are found in one snapshot

# %%
tel = smlm.load_telomeres(data_path)
tlocs = telo.localize(tel)
phys_t = telo.physics.resized(tel.shape[1:])
fig, axes = plt.subplots(2, 3, figsize=(12, 9))
counts_found = []
for row in range(2):
    img = tel[row].astype(np.float64)
    p = tlocs[row]
    counts_found.append(len(p))
    bg_map = smlm.smooth_background(img, 25)  # the nucleus' non-uniform background
    _, bg_t, regen = smlm.fit_photons(phys_t, p / 1000.0, img, background=bg_map)
    vmin, vmax = np.percentile(img, [0.5, 99.7])
    axes[row, 0].imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
    sc = axes[row, 0].scatter(p[:, 0] / px_nm - 0.5, p[:, 1] / px_nm - 0.5, c=p[:, 2] / 1000, cmap="turbo",
                              vmin=telo.grid.z_range_um[0], vmax=telo.grid.z_range_um[1], s=14, marker="+")
    axes[row, 0].set_title(f"telomeres{row + 1}.tif: {len(p)} found", fontsize=9)
    axes[row, 1].imshow(regen, cmap="gray", vmin=vmin, vmax=vmax)
    axes[row, 1].set_title("regenerated (learned PSF + smooth background)", fontsize=9)
    res_t = img - regen
    lim = 4 * np.sqrt(smlm.noise_variance(img))
    axes[row, 2].imshow(res_t, cmap="coolwarm", vmin=-lim, vmax=lim)
    axes[row, 2].set_title("residual (counts)", fontsize=9)
    rec.number(f"telomeres{row + 1}_found", len(p))
    rec.number(f"telomeres{row + 1}_residual_rms", float(np.sqrt(np.mean(res_t ** 2))), "counts")
fig.colorbar(sc, ax=axes[:, 0], fraction=0.03, location="left", label="z (µm)")
for a in axes.ravel():
    a.axis("off")
rec.figure(fig, "telomeres", "Real telomere snapshots with the learned PSF: CNN localizations coloured by depth, "
           "the image regenerated from them and the residual (paper Fig. 5e).")
detections = paper_telomeres_found + paper_false_positives
print(f"found {counts_found} telomeres; paper: {paper_telomeres_found} of ≈{paper_telomeres_total} "
      f"(+{paper_false_positives} false positives = {detections} detections) in one frame")
rec.claim("One snapshot with the learned PSF recovers most telomeres of the nucleus", "Fig. 5e",
          f"{paper_telomeres_found} of ≈{paper_telomeres_total} found, {paper_false_positives} false positives",
          f"{counts_found} detections in the two snapshots",
          bool(abs(counts_found[0] - detections) <= 0.15 * detections),
          f"no ground truth here: holds if the detections in the first snapshot are within 15 % of the paper's "
          f"{detections}")
rec.save()
