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
# # 01 · Deep-Z: virtual refocusing of a single bead image (Fig. 1, Fig. S2)
#
# Wu et al., "Three-dimensional virtual refocusing of fluorescence microscopy images using deep learning",
# *Nat. Methods* 16, 1323 (2019). A generator (residual U-Net, Eq. 1–2) takes one wide-field image plus a
# *digital propagation matrix* (DPM, the distance to refocus to, ÷10) and returns the image that a
# mechanical z-scan would have recorded there; it is trained as an LSGAN (Eq. 4–5, α = 0.02) on pairs of
# planes of bead z-stacks (20×/0.75 NA, 0.325 µm pixels, ±10 µm in 0.5 µm steps).
#
# **Here** every image comes from `refocuslib`'s simulator: beads splatted on the 0.325 µm × 0.5 µm grid,
# imaged by FFT convolution with the 20×/0.75 PSF (with a residual spherical aberration of 1 rad — an ideal
# PSF is symmetric in ±z, which would make refocusing a blurred bead ambiguous), camera noise, and the
# Deep-Z normalisation. The network is trained here through the library's one training loop and cached
# under `results/<profile>/checkpoints/`, shared with notebook 02. **Differences from the paper**: the CI
# profile trains a narrow generator (width 0.25, 4 levels) for about a minute on ±3 µm instead of ±10 µm, and
# tests on simulated held-out beads (the paper used 300 nm beads and measured 461 of them); `full.yaml` holds
# the paper-scale settings for a GPU.
#
# We test: (1) refocusing a defocused bead image back to focus gives lateral FWHMs like the mechanical scan
# (Fig. 1c); (2) a virtual z-stack from one in-focus image has the scan's axial FWHM (Fig. 1d); (3) the error of
# refocusing as a function of the distance, inside and outside the trained range (Fig. S2).

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/01_deepz_refocusing"
seed = 0
device = "cpu"
threads = 2  # torch CPU threads
model_name = "deepz_ci"  # checkpoint folder under results/<profile>/checkpoints/ (shared with notebook 02)
deepz_model = {  # the training recipe (refocuslib.tasks.deepz.build_task); notebook 02 uses the same
    "data": {"microscope": "DEEPZ_20X", "z_half_range_um": 3.0, "z_step_um": 0.5, "field_px": 128,
             "crop_px": 48, "n_samples": 16, "sample": "beads", "nonuniform_fraction": 0.3},
    "width": 0.25, "levels": 4, "disc_blocks": 4, "batch_size": 8, "n_val": 32,
    "steps": 450, "lr_g": 3e-3, "lr_d": 3e-5, "d_every": 2, "val_every": 75, "ckpt_every": 75,
}
eval_fov_px = 128  # held-out test fields (pixels of 0.325 µm)
n_eval_fields = 2
eval_n_beads = 30  # beads per test field
eval_z_half_range_um = 5.0  # the test scan spans ±this (beyond the trained range, Fig. S2)
lateral_inputs_um = [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]  # defocused input planes refocused back to the beads
use_shipped_checkpoints = True  # start from data/checkpoints when it holds this exact recipe (CI trains)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from refocuslib import metrics, samples
from refocuslib.datasets import deepz as dzdata
from refocuslib.inference import refocus, refocus_stack
from refocuslib.reproduce import start_notebook
from refocuslib.tasks.deepz import train_from_spec

t_start = time.time()
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints,
                             model_name=model_name, deepz_model=deepz_model,
                             eval_fov_px=eval_fov_px, n_eval_fields=n_eval_fields, eval_n_beads=eval_n_beads,
                             eval_z_half_range_um=eval_z_half_range_um, lateral_inputs_um=lateral_inputs_um)

# %% [markdown]
# ## 1 · Train (or reuse) the Deep-Z generator
#
# `train_from_spec` trains through `refocuslib.train.fit` into the checkpoint folder; a second call with the
# same recipe finds the finished run and only loads it (notebook 02 does that). Validation: MAE against the
# noise-free target on pairs from held-out samples, beside the MAE of the un-refocused input.

# %%
t0 = time.time()
task, result = train_from_spec(deepz_model, results_dir, model_name, seed=seed, device=device)
model = task.generator.to("cpu").eval()
train_s = time.time() - t0
val = result.validation
best = min((v for v in val if v["step"] > 0), key=lambda v: v["val_mae"])
print(f"{'trained' if result.resumed_from < deepz_model['steps'] else 'reused'} in {train_s:.1f} s; best "
      f"validation MAE {best['val_mae']:.4f} at step {best['step']} (un-refocused input: {best['val_mae_input']:.4f})")
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot([v["step"] for v in val], [v["val_mae"] for v in val], "o-", label="Deep-Z output")
ax.axhline(val[0]["val_mae_input"], color="k", ls="--", label="un-refocused input")
ax.set_xlabel("training step")
ax.set_ylabel("validation MAE (held-out samples)")
ax.set_yscale("log")
ax.legend()
ax.set_title(f"training ({profile} profile, width {deepz_model['width']}, {deepz_model['levels']} levels)")
rec.figure(fig, "training_curve", "Validation MAE against the noise-free target on held-out samples during "
           "training, and the MAE of the un-refocused input.")
rec.number("val_mae_best", best["val_mae"])
rec.number("val_mae_input", best["val_mae_input"])
rec.number("train_steps", deepz_model["steps"])
lo, hi = task.trained_range_um
rec.number("trained_range_um", hi, "µm (±)")

# %% [markdown]
# ## 2 · A held-out bead sample and its mechanical scan
#
# New beads (another seed) on a flat layer at z = 0, scanned from −5 to +5 µm; the first field is shown.

# %%
ecfg = dzdata.eval_config(task.data, z_half_range_um=eval_z_half_range_um, field_px=eval_fov_px)
psfs = dzdata.DeepZPairs(ecfg).psf_stacks()
rng = np.random.default_rng(seed + 101)
px = ecfg.microscope.pixel_um
ph_lo, ph_hi = ecfg.bead_photons
scans = []
for f in range(n_eval_fields):
    beads = samples.beads_on_surface(rng, eval_n_beads, (eval_fov_px * px,) * 2, z_um=0.0,
                                     photons=(ph_lo + ph_hi) / 2, photons_spread=(ph_hi - ph_lo) / (ph_hi + ph_lo),
                                     min_separation_um=3.0, margin_um=2.0)
    scans.append(dzdata.scan(ecfg, dzdata.points_volume(beads, ecfg), seed=seed + 1000 + f, psf_stacks=psfs))
zs = scans[0].z_um
i0 = scans[0].plane(0.0)
sc = scans[0]
show = [-3.0, -1.5, 0.0, 1.5, 3.0]
fig, axes = plt.subplots(2, len(show), figsize=(2.4 * len(show), 5))
for k, z in enumerate(show):
    axes[0, k].imshow(sc.target[sc.plane(z)], cmap="magma", vmin=0, vmax=1)
    axes[0, k].set_title(f"scan z = {z:+.1f} µm", fontsize=9)
    out = refocus(model, sc.input[i0], z)
    axes[1, k].imshow(out, cmap="magma", vmin=0, vmax=1)
    axes[1, k].set_title(f"Deep-Z from z = 0, dz = {z:+.1f}", fontsize=9)
for a in axes.ravel():
    a.set_xticks([])
    a.set_yticks([])
fig.tight_layout()
rec.figure(fig, "virtual_vs_scanned_planes", "Top: mechanical scan of held-out beads; bottom: Deep-Z output from "
           "the single in-focus image (z = 0) with uniform DPMs (Fig. 1b).")

# %% [markdown]
# ## 3 · Lateral FWHM: refocusing defocused images back to the bead plane (Fig. 1c)
#
# Each defocused input plane z_in (within the trained range) is refocused by −z_in; beads are measured with the
# paper's rule (Eq. 6–7, `metrics.lateral_fwhm_um`) and compared with the in-focus plane of the scan.

# %%
fw_scan, fw_out, fw_in = [], [], []
for s in scans:
    fw_scan.append(metrics.lateral_fwhm_um(s.target[s.plane(0.0)], px))
    for z_in in lateral_inputs_um:
        img = s.input[s.plane(z_in)]
        fw_out.append(metrics.lateral_fwhm_um(refocus(model, img, -z_in), px))
        fw_in.append(metrics.lateral_fwhm_um(img, px))
fw_scan, fw_out, fw_in = (np.concatenate(v) for v in (fw_scan, fw_out, fw_in))
med = {k: float(np.median(v)) if len(v) else float("nan")
       for k, v in (("scan", fw_scan), ("deepz", fw_out), ("input", fw_in))}
bins = np.linspace(0, max(2.5, float(np.percentile(np.concatenate([fw_scan, fw_out, fw_in]), 98))), 26)
kl = metrics.histogram_kl(fw_out, fw_scan, bins=bins) if len(fw_out) and len(fw_scan) else float("nan")
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.hist(fw_scan, bins, alpha=0.6, density=True, label=f"mechanical scan (median {med['scan']:.2f} µm)")
ax.hist(fw_out, bins, alpha=0.6, density=True, label=f"Deep-Z (median {med['deepz']:.2f} µm)")
ax.hist(fw_in, bins, histtype="step", color="k", density=True, label=f"defocused input (median {med['input']:.2f})")
ax.set_xlabel("lateral FWHM (µm)")
ax.set_ylabel("density")
ax.legend(fontsize=8)
ax.set_title(f"lateral FWHM, inputs at {lateral_inputs_um} µm")
rec.figure(fig, "lateral_fwhm_hist", "Lateral FWHM of held-out beads: Deep-Z output refocused from defocused "
           "planes versus the in-focus mechanical scan (and the defocused inputs).")
for k, v in med.items():
    rec.number(f"lateral_fwhm_median_{k}_um", v, "µm")
rec.number("lateral_fwhm_n_scan", len(fw_scan))
rec.number("lateral_fwhm_n_deepz", len(fw_out))
rec.number("lateral_fwhm_kl_deepz_vs_scan", kl, "nats")
rec.claim("Refocused beads have the lateral FWHM of the in-focus scan (closer to it than the defocused input)",
          "Fig. 1c", "histograms of Deep-Z and scan overlap", f"median {med['deepz']:.2f} vs scan "
          f"{med['scan']:.2f} µm (input {med['input']:.2f} µm)",
          abs(med["deepz"] - med["scan"]) < abs(med["input"] - med["scan"]),
          "medians of fitted beads; held-out simulated beads")

# %% [markdown]
# ## 4 · Axial FWHM of a virtual z-stack from one in-focus image (Fig. 1d)

# %%
in_range = (zs >= lo - 1e-9) & (zs <= hi + 1e-9)
ax_scan, ax_virt, virtual0 = [], [], None
for s in scans:
    virtual = refocus_stack(model, s.input[i0], zs[in_range], batch_size=8)
    virtual0 = virtual if virtual0 is None else virtual0
    ax_virt.append(metrics.axial_fwhm_um(virtual, px, ecfg.z_step_um))
    ax_scan.append(metrics.axial_fwhm_um(s.target[in_range], px, ecfg.z_step_um))
ax_scan, ax_virt = np.concatenate(ax_scan), np.concatenate(ax_virt)
med_ax = {"scan": float(np.median(ax_scan)) if len(ax_scan) else float("nan"),
          "deepz": float(np.median(ax_virt)) if len(ax_virt) else float("nan")}
fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.2]})
row = int(np.argmax(scans[0].target[i0].max(1)))  # the row through the brightest bead
ext = (0, eval_fov_px * px, zs[in_range][0], zs[in_range][-1])
a1.imshow(scans[0].target[in_range][:, row, :], aspect="auto", origin="lower", cmap="magma", extent=ext, vmin=0,
          vmax=1)
a1.set_title("x–z, mechanical scan")
a2.imshow(virtual0[:, row, :], aspect="auto", origin="lower", cmap="magma", extent=ext, vmin=0, vmax=1)
a2.set_title("x–z, Deep-Z virtual stack")
for a in (a1, a2):
    a.set_xlabel("x (µm)")
    a.set_ylabel("z (µm)")
b = np.linspace(0, max(4.0, float(np.percentile(np.concatenate([ax_scan, ax_virt]), 98))), 21)
a3.hist(ax_scan, b, alpha=0.6, density=True, label=f"scan (median {med_ax['scan']:.2f} µm)")
a3.hist(ax_virt, b, alpha=0.6, density=True, label=f"Deep-Z (median {med_ax['deepz']:.2f} µm)")
a3.set_xlabel("axial FWHM (µm)")
a3.legend(fontsize=8)
fig.tight_layout()
rec.figure(fig, "axial_fwhm", "x–z sections and axial FWHM of held-out beads: mechanical scan versus the Deep-Z "
           "virtual stack generated from the single in-focus image (within the trained range).")
rec.number("axial_fwhm_median_scan_um", med_ax["scan"], "µm")
rec.number("axial_fwhm_median_deepz_um", med_ax["deepz"], "µm")
rec.number("axial_fwhm_n", len(ax_virt))
rec.claim("A virtual z-stack from one image has the scan's axial FWHM", "Fig. 1d",
          "Deep-Z and scan axial FWHM histograms overlap",
          f"median {med_ax['deepz']:.2f} vs scan {med_ax['scan']:.2f} µm",
          abs(med_ax["deepz"] - med_ax["scan"]) <= ecfg.z_step_um,
          f"holds = medians within one scan step ({ecfg.z_step_um} µm)")

# %% [markdown]
# ## 5 · Refocusing error versus distance, inside and outside the trained range (Fig. S2)
#
# (a) from the in-focus image to the plane dz; (b) from the plane −dz back to focus. The error is the RMSE
# against the noise-free scan plane (normalised images); the dashed lines are the un-refocused input's.
# `refocus` warns when dz leaves the trained range (`DPMRangeWarning`).

# %%
import warnings

curves = {k: np.zeros((len(scans), len(zs))) for k in ("a_out", "a_in", "b_out", "b_in", "a_ssim", "a_ssim_in",
                                                        "a_r", "a_r_in")}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the out-of-range planes warn by design
    for n, s in enumerate(scans):
        virtual = refocus_stack(model, s.input[i0], zs, batch_size=8)
        for k, z in enumerate(zs):
            gt = s.target_clean[k]
            curves["a_out"][n, k] = metrics.rmse(virtual[k], gt)
            curves["a_in"][n, k] = metrics.rmse(s.input[i0], gt)
            curves["a_ssim"][n, k] = metrics.ssim(virtual[k], gt, data_range=1.0)
            curves["a_ssim_in"][n, k] = metrics.ssim(s.input[i0], gt, data_range=1.0)
            curves["a_r"][n, k] = metrics.pearson(virtual[k], gt)
            curves["a_r_in"][n, k] = metrics.pearson(s.input[i0], gt)
            src = s.plane(-z)
            curves["b_out"][n, k] = metrics.rmse(refocus(model, s.input[src], z), s.target_clean[i0])
            curves["b_in"][n, k] = metrics.rmse(s.input[src], s.target_clean[i0])
mean = {k: v.mean(0) for k, v in curves.items()}
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
for a in (a1, a2):
    a.axvspan(lo, hi, color="0.9", label="trained range")
a1.plot(zs, mean["a_out"], "o-", label="(a) Deep-Z, in focus → dz")
a1.plot(zs, mean["a_in"], "--", label="(a) input, un-refocused")
a1.plot(zs, mean["b_out"], "s-", label="(b) Deep-Z, −dz → focus")
a1.plot(zs, mean["b_in"], ":", label="(b) input, un-refocused")
a1.set_xlabel("dz (µm)")
a1.set_ylabel("RMSE vs scan (normalised)")
a1.legend(fontsize=7)
a2.plot(zs, mean["a_ssim"], "o-", label="SSIM, Deep-Z (a)")
a2.plot(zs, mean["a_ssim_in"], "--", label="SSIM, input (a)")
a2.plot(zs, mean["a_r"], "^-", label="Pearson r, Deep-Z (a)")
a2.plot(zs, mean["a_r_in"], ":", label="Pearson r, input (a)")
a2.set_xlabel("dz (µm)")
a2.legend(fontsize=7)
fig.tight_layout()
rec.figure(fig, "error_vs_dz", "Refocusing error versus distance on held-out beads: (a) in-focus image → plane "
           "dz, (b) plane −dz → focus; the grey band is the trained range (Fig. S2).")
inside = in_range & (np.abs(zs) >= 1.0)
outside = ~in_range
for key in ("a_out", "a_in", "b_out", "b_in"):
    rec.number(f"rmse_{key}_inside_mean", float(mean[key][inside].mean()))
    rec.number(f"rmse_{key}_outside_mean", float(mean[key][outside].mean()) if outside.any() else float("nan"))
for k, z in enumerate(zs):
    rec.number(f"rmse_a_out_dz_{z:+.1f}", float(mean["a_out"][k]))
rel_in = float(np.mean(mean["a_out"][inside] / mean["a_in"][inside]))
rel_out = float(np.mean(mean["a_out"][outside] / mean["a_in"][outside])) if outside.any() else float("nan")
rec.claim("Refocused output is closer to the scanned plane than the un-refocused input (|dz| ≥ 1 µm, in range)",
          "Fig. 1, S2", "Deep-Z matches the scan within the trained range",
          f"RMSE ratio output/input {rel_in:.2f} (a), "
          f"{float(np.mean(mean['b_out'][inside] / mean['b_in'][inside])):.2f} (b)",
          bool(rel_in < 1 and np.mean(mean["b_out"][inside]) < np.mean(mean["b_in"][inside])))
rec.claim("Refocusing degrades outside the trained range", "Fig. S2", "output blurs/hallucinates beyond ±10 µm",
          f"RMSE ratio output/input {rel_in:.2f} inside, {rel_out:.2f} outside ±{hi:g} µm",
          bool(rel_out > rel_in) if outside.any() else None,
          "ratio of Deep-Z RMSE to the un-refocused input's RMSE, direction (a)")
rec.number("notebook_seconds", time.time() - t_start, "s")
rec.save()
print(f"notebook ran in {time.time() - t_start:.1f} s")
rec
