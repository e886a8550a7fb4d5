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
# Deep-Z normalisation. The network is the recipe `deepz_beads` of `refocuslib/recipes.yaml`, trained on a CPU
# (about an hour, 1 thread) and shipped in `data/checkpoints/` with its provenance; this notebook loads it and runs a
# short training *smoke* of the same recipe to show the path works. **Differences from the paper**: a narrow
# generator (width 0.25, 4 levels), MAE loss only (the LSGAN term is left to the full profile), ±3 µm instead of
# ±10 µm, and simulated held-out beads (the paper measured 461 beads of 300 nm); `full.yaml` holds the paper scale.
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
model_recipe = "deepz_beads"  # refocuslib/recipes.yaml (shared with notebooks 02 and 50)
use_shipped_checkpoints = True  # evaluate the shipped model of exactly this recipe (False: train it here)
smoke_steps = 30  # a short training run of the same recipe from scratch (shows the training path works)
eval_fov_px = 128  # held-out test fields (pixels of 0.325 µm)
n_eval_fields = 4
eval_n_beads = 20  # beads per test field, ≥ 5 µm apart (one bead per fit crop)
eval_z_half_range_um = 5.0  # the test scan spans ±this (beyond the trained range, Fig. S2)
lateral_inputs_um = [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]  # defocused input planes refocused back to the beads
min_beads = 40  # claims resting on fewer fitted beads are "not enough data"

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from refocuslib import recipes
from refocuslib.evaluate import deepz as ev
from refocuslib.inference import refocus
from refocuslib.notebook import start_notebook

t_start = time.time()
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints, model_recipe=model_recipe,
                             smoke_steps=smoke_steps, eval_fov_px=eval_fov_px, n_eval_fields=n_eval_fields,
                             eval_n_beads=eval_n_beads, eval_z_half_range_um=eval_z_half_range_um,
                             lateral_inputs_um=lateral_inputs_um, min_beads=min_beads)

# %% [markdown]
# ## 1 · The model: the shipped CPU-trained recipe, and a training smoke
#
# `recipes.train_cached` loads the shipped checkpoint of exactly this recipe (or trains it when there is none, and
# says so). Validation during training: NRMSE against the noise-free target on pairs from held-out samples
# (an all-zero output scores 1), beside the un-refocused input's. The smoke trains the same recipe from scratch for
# a few steps.

# %%
t0 = time.time()
task, result = recipes.train_cached(model_recipe, results_dir, device=device, use_shipped=use_shipped_checkpoints)
model = task.generator.to("cpu").eval()
smoke = recipes.smoke(model_recipe, results_dir, steps=smoke_steps, device=device)
val = result.validation
best = min((v for v in val if v["step"] > 0), key=lambda v: v["val_loss"])
print(f"model ready in {time.time() - t0:.1f} s; best validation NRMSE {best['val_loss']:.3f} at step "
      f"{best['step']} (input {best['val_nrmse_input']:.3f}, zero image {best.get('val_nrmse_zero', 1.0):.3f}); "
      f"smoke: {smoke_steps} steps in {smoke.extras['smoke_seconds']:.1f} s, loss "
      f"{smoke.history[0]['g_loss']:.3g} → {smoke.history[-1]['g_loss']:.3g}")
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot([v["step"] for v in val], [v["val_loss"] for v in val], "o-", label="Deep-Z output")
ax.axhline(val[-1]["val_nrmse_input"], color="k", ls="--", label="un-refocused input")
ax.axhline(1.0, color="0.5", ls=":", label="all-zero image")
ax.set_xlabel("training step")
ax.set_ylabel("validation NRMSE (held-out samples)")
ax.set_yscale("log")
ax.legend()
ax.set_title(f"{model_recipe}: width {task.width}, {task.levels} levels")
rec.figure(fig, "training_curve", "Validation NRMSE against the noise-free target on held-out samples during "
           "training of the shipped model, with the un-refocused input's and the all-zero image's.")
rec.number("val_nrmse_best", best["val_loss"])
rec.number("val_nrmse_input", best["val_nrmse_input"])
rec.number("train_steps", result.last_step)
rec.number("best_step", result.best_step)
rec.number("smoke_seconds", smoke.extras["smoke_seconds"], "s")
lo, hi = task.trained_range_um
rec.number("trained_range_um", hi, "µm (±)")

# %% [markdown]
# ## 2 · Held-out bead samples and their mechanical scans
#
# New beads (another seed) on a flat layer at z = 0, scanned from −5 to +5 µm; the first field is shown.

# %%
from refocuslib.datasets import deepz as dzdata

ecfg = dzdata.eval_config(task.data, z_half_range_um=eval_z_half_range_um, field_px=eval_fov_px)
scans, bead_yx = ev.held_out_bead_scans(ecfg, n_eval_fields, eval_n_beads, seed=seed + 101)
px = ecfg.microscope.pixel_um
zs = scans[0].z_um
sc = scans[0]
i0 = sc.plane(0.0)
show = [-3.0, -1.5, 0.0, 1.5, 3.0]
fig, axes = plt.subplots(2, len(show), figsize=(2.4 * len(show), 5))
truth0 = sc.truth_for(i0)
for k, z in enumerate(show):
    axes[0, k].imshow(truth0[sc.plane(z)], cmap="magma", vmin=0, vmax=1)
    axes[0, k].set_title(f"scan z = {z:+.1f} µm", fontsize=9)
    axes[1, k].imshow(refocus(model, sc.input[i0], z), cmap="magma", vmin=0, vmax=1)
    axes[1, k].set_title(f"Deep-Z from z = 0, dz = {z:+.1f}", fontsize=9)
for a in axes.ravel():
    a.set_xticks([])
    a.set_yticks([])
fig.tight_layout()
rec.figure(fig, "virtual_vs_scanned_planes", "Top: mechanical scan of held-out beads (noise-free, in the input's "
           "units); bottom: Deep-Z output from the single in-focus image (z = 0) with uniform DPMs (Fig. 1b).")

# %% [markdown]
# ## 3 · Lateral FWHM: refocusing defocused images back to the bead plane (Fig. 1c)
#
# Each defocused input plane z_in (within the trained range) is refocused by −z_in. Every bead is fitted at its
# known position in a fixed crop (`evaluate.deepz.lateral_fwhm_at`) in the output, the defocused input and the
# in-focus scan, so the medians compare the same beads; the table gives per-plane medians and fit success rates.

# %%
paired = ev.paired_refocus_fwhm(model, scans, bead_yx, lateral_inputs_um, px)
per_plane = paired.per_plane()
for z, row in per_plane.items():
    print(f"z_in {z:+.1f} µm: n {row['n']}, median FWHM scan {row['median_scan']:.2f} / input "
          f"{row['median_input']:.2f} / Deep-Z {row['median_output']:.2f} µm; fitted scan "
          f"{row['fit_rate_scan']:.0%}, input {row['fit_rate_input']:.0%}, Deep-Z {row['fit_rate_output']:.0%}")
    rec.number(f"lateral_fwhm_median_output_zin_{z:+.1f}_um", row["median_output"], "µm")
    rec.number(f"lateral_fit_rate_output_zin_{z:+.1f}", row["fit_rate_output"])
sharp = ev.sharpening_verdict(paired, min_beads=min_beads)
med = {k: float(np.nanmedian(getattr(paired, k))) for k in ("scan", "input", "output")}
finite = np.concatenate([v[np.isfinite(v)] for v in (paired.scan, paired.output, paired.input)])
bins = np.linspace(0, max(2.5, float(np.percentile(finite, 98))), 26)
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.hist(paired.scan[np.isfinite(paired.scan)], bins, alpha=0.6, density=True,
        label=f"mechanical scan (median {med['scan']:.2f} µm)")
ax.hist(paired.output[np.isfinite(paired.output)], bins, alpha=0.6, density=True,
        label=f"Deep-Z (median {med['output']:.2f} µm)")
ax.hist(paired.input[np.isfinite(paired.input)], bins, histtype="step", color="k", density=True,
        label=f"defocused input (median {med['input']:.2f} µm)")
ax.set_xlabel("lateral FWHM (µm)")
ax.set_ylabel("density")
ax.legend(fontsize=8)
ax.set_title(f"the same {paired.n} bead × plane pairs, inputs at {lateral_inputs_um} µm")
rec.figure(fig, "lateral_fwhm_hist", "Lateral FWHM of the same held-out beads (fitted at their known positions): "
           "Deep-Z output refocused from defocused planes, the in-focus mechanical scan and the defocused inputs.")
for k, v in med.items():
    rec.number(f"lateral_fwhm_median_{k}_um", v, "µm")
for k in ("scan", "input", "output"):
    rec.number(f"lateral_fit_rate_{k}", paired.success_rate(k))
rec.claim("Refocusing defocused beads (|dz| 1–3 µm) to focus sharpens ≥ 90 % of paired beads and brings the median "
          "lateral FWHM within 25 % of the scan's", "Fig. 1c", "histograms of Deep-Z and scan overlap",
          f"median {med['output']:.2f} vs scan {med['scan']:.2f} µm (input {med['input']:.2f} µm); {sharp.detail}",
          sharp, "same beads in output, input and scan; fixed crops at known positions")

# %% [markdown]
# ## 4 · Axial FWHM of a virtual z-stack from one in-focus image (Fig. 1d)
#
# The virtual stack (in-focus image refocused to every plane of the trained range) and the scan, both normalised
# once with the in-focus input's scale; each bead's profile along z through its known centre is fitted with a
# Gaussian. The textbook wide-field value at 20×/0.75 is 0.886 λ / (1 − √(1 − NA²)) = 1.36 µm.

# %%
in_range = (zs >= lo - 1e-9) & (zs <= hi + 1e-9)
axial = ev.virtual_stack_axial_fwhm(model, scans, bead_yx, zs[in_range])
ax_verdict = ev.relative_median_verdict(axial["virtual"], axial["scan"], 0.30, min_beads // 2, "beads")
textbook = ev.textbook_axial_fwhm_um(ecfg.microscope.na, ecfg.microscope.wavelength_um)
med_ax = {k: float(np.nanmedian(axial[k])) for k in ("scan", "virtual")}
fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.2]})
row = int(np.rint(bead_yx[0][0, 0]))  # the row through the first bead
ext = (0, eval_fov_px * px, zs[in_range][0], zs[in_range][-1])
a1.imshow(axial["scan_stack0"][:, row, :], aspect="auto", origin="lower", cmap="magma", extent=ext, vmin=0, vmax=1)
a1.set_title("x–z, mechanical scan")
a2.imshow(axial["virtual_stack0"][:, row, :], aspect="auto", origin="lower", cmap="magma", extent=ext, vmin=0,
          vmax=1)
a2.set_title("x–z, Deep-Z virtual stack")
for a in (a1, a2):
    a.set_xlabel("x (µm)")
    a.set_ylabel("z (µm)")
b = np.linspace(0, 4.0, 21)
a3.hist(axial["scan"][np.isfinite(axial["scan"])], b, alpha=0.6, density=True,
        label=f"scan (median {med_ax['scan']:.2f} µm)")
a3.hist(axial["virtual"][np.isfinite(axial["virtual"])], b, alpha=0.6, density=True,
        label=f"Deep-Z (median {med_ax['virtual']:.2f} µm)")
a3.axvline(textbook, color="k", ls="--", label=f"textbook {textbook:.2f} µm")
a3.set_xlabel("axial FWHM (µm)")
a3.legend(fontsize=8)
fig.tight_layout()
rec.figure(fig, "axial_fwhm", "x–z sections and axial FWHM of the same held-out beads: mechanical scan versus the "
           "Deep-Z virtual stack generated from the single in-focus image (within the trained range).")
rec.number("axial_fwhm_median_scan_um", med_ax["scan"], "µm")
rec.number("axial_fwhm_median_deepz_um", med_ax["virtual"], "µm")
rec.number("axial_fwhm_textbook_um", textbook, "µm")
rec.number("axial_fit_rate_scan", float(np.isfinite(axial["scan"]).mean()))
rec.number("axial_fit_rate_deepz", float(np.isfinite(axial["virtual"]).mean()))
rec.claim("A virtual z-stack from one image has the scan's axial FWHM (within 30 %, ≥ 20 fitted beads)", "Fig. 1d",
          "Deep-Z and scan axial FWHM histograms overlap",
          f"median {med_ax['virtual']:.2f} vs scan {med_ax['scan']:.2f} µm (textbook {textbook:.2f} µm)", ax_verdict)

# %% [markdown]
# ## 5 · Refocusing error versus distance, inside and outside the trained range (Fig. S2)
#
# (a) from the in-focus image to the plane dz; (b) from the plane −dz back to focus. The error is the RMSE against
# the noise-free scan plane in the network's input units, beside the un-refocused input's and the all-zero
# image's (a zero output must not pass).

# %%
cur = ev.refocus_error_curves(model, scans)
mean = {k: v.mean(0) for k, v in cur.items() if k != "z_um"}
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
for a in (a1, a2):
    a.axvspan(lo, hi, color="0.9", label="trained range")
a1.plot(zs, mean["a_out"], "o-", label="(a) Deep-Z, in focus → dz")
a1.plot(zs, mean["a_in"], "--", label="(a) input, un-refocused")
a1.plot(zs, mean["b_out"], "s-", label="(b) Deep-Z, −dz → focus")
a1.plot(zs, mean["b_in"], ":", label="(b) input, un-refocused")
a1.plot(zs, mean["a_zero"], color="0.5", lw=1, label="(a) all-zero image")
a1.set_xlabel("dz (µm)")
a1.set_ylabel("RMSE vs scan (input units)")
a1.legend(fontsize=7)
a2.plot(zs, mean["a_ssim"], "o-", label="SSIM, Deep-Z (a)")
a2.plot(zs, mean["a_ssim_in"], "--", label="SSIM, input (a)")
a2.set_xlabel("dz (µm)")
a2.legend(fontsize=7)
fig.tight_layout()
rec.figure(fig, "error_vs_dz", "Refocusing error versus distance on held-out beads: (a) in-focus image → plane "
           "dz, (b) plane −dz → focus; grey: the trained range (Fig. S2).")
inside = (np.abs(zs) >= 1.0 - 1e-9) & in_range
outside = ~in_range
v_a = ev.below_baselines_verdict(mean["a_out"][inside], mean["a_in"][inside], mean["a_zero"][inside])
v_b = ev.below_baselines_verdict(mean["b_out"][inside], mean["b_in"][inside], mean["b_zero"][inside])
both = ev.verdict(v_a.holds and v_b.holds, min(v_a.n_items, v_b.n_items), v_a.min_items,
                  f"(a) {v_a.detail}; (b) {v_b.detail}")
for key in ("a_out", "a_in", "a_zero", "b_out", "b_in", "b_zero"):
    rec.number(f"rmse_{key}_inside_mean", float(mean[key][inside].mean()))
for k, z in enumerate(zs):
    rec.number(f"rmse_a_out_dz_{z:+.1f}", float(mean["a_out"][k]))
ratio = mean["a_out"] / mean["a_in"]
rec.claim("Refocused output is closer to the scanned plane than both the un-refocused input and the all-zero image at "
          "every in-range |dz| ≥ 1 µm", "Fig. 1, S2", "Deep-Z matches the scan within the trained range",
          f"RMSE ratio output/input {ratio[inside].mean():.2f} (a), "
          f"{float(np.mean(mean['b_out'][inside] / mean['b_in'][inside])):.2f} (b)", both)
rec.claim("Refocusing degrades outside the trained range", "Fig. S2", "output blurs/hallucinates beyond ±10 µm",
          f"RMSE ratio output/input {ratio[inside].mean():.2f} inside, {ratio[outside].mean():.2f} outside ±{hi:g} µm",
          ev.degrades_outside_verdict(ratio[inside], ratio[outside]),
          "ratio of Deep-Z RMSE to the un-refocused input's RMSE, direction (a)")
rec.number("notebook_seconds", time.time() - t_start, "s")
rec.save()
print(f"notebook ran in {time.time() - t_start:.1f} s")
rec
