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
# # 30 · W-Net: virtual refocusing of double-helix PSF images and cross-modality to confocal
#
# **Paper.** L. Yang, Y. Rivenson, … A. Ozcan, *Deep learning-based virtual refocusing of images using an
# engineered point-spread function*, ACS Photonics (2021), arXiv:2012.11892. W-Net cascades two generator /
# discriminator pairs: **G_R** refocuses an input image onto the plane given by a digital propagation matrix
# (DPM, as in Deep-Z) and **G_C** turns the refocused image into a confocal image (cross-modality). With a
# double-helix (DH) PSF the input keeps compact, depth-encoding lobes over a long axial range, and W-Net extended
# the depth of field (DOF) of a 63×/1.4 NA microscope ~20-fold (Table 1: native 0.3 µm → 6.6 / 7.5 / 8.2 µm at
# 0 / 10 / 20 % Jaccard tolerance).
#
# **What is simulated here.** A layer of 50 nm beads (points: 50 nm ≪ the 0.1 µm pixel) imaged through the 63×/1.4
# oil objective three ways: wide-field with the zone-plate DH phase mask (`optics.double_helix_mask`), the same
# field without the mask, and a 1-Airy-unit confocal stack (ground truth). Training pairs draw a random input
# plane (DH ±8 µm, wide-field ±4 µm, as in the paper) and a random target plane (confocal ±2 µm); the DPM is their
# difference. Three models are trained with `refocuslib.train.fit`: W-Net on DH input, W-Net on wide-field input,
# and the single U-Net (DH input → confocal, about half W-Net's parameters). Evaluation follows the paper's
# Supporting Information: beads are localised in the output and in the confocal truth, Hungarian-matched, and
# the Jaccard index (JI), lateral RMSE and image correlation are plotted against the input plane (Fig. 2);
# the effective DOF is the axial range where JI stays at or above the native in-focus JI less 0 / 10 / 20 %
# (Table 1); Fig. 3 shows example planes.
#
# **How it differs from the paper.** Simulated, not measured, data (noise-free targets); our DH-PSF is the
# textbook zone-plate mask, whose lobes stay compact over ~±2–3 µm at NA 1.4 rather than the ±8 µm of the
# commercial mask used in the paper; and, at the CI profile, the networks are tiny (width ⅛ of the paper's
# channels, few levels) and trained for a few hundred steps on small crops so that the notebook runs in about a
# minute on a CPU. The `full` profile (`notebooks/params/full.yaml`) holds paper-scale settings for a GPU. The
# claims table below states, from the measured numbers, which of the paper's findings hold at the profile run.

# %% tags=["parameters"]
# CI-scale defaults; notebooks/params/{ci,full}.yaml override them when run by `refocuslib reproduce`.
profile = "ci"
results_dir = "results/ci/30_wnet_dhpsf"
seed = 0
device = "cpu"
threads = 2  # CPU threads (the CI machine has 2 cores)
# optics and sample
dh_rings = 4  # zone-plate double-helix mask: equal-area rings
z_step_um = 0.25  # axial sampling of the PSF stacks (training and test planes lie on this grid)
psf_px = 97  # lateral PSF kernel (pixels of 0.1 µm)
dh_range_um = 8.0  # training input planes, DH (paper ±8 µm)
wf_range_um = 4.0  # training input planes, wide-field (paper ±4 µm)
confocal_range_um = 2.0  # training target planes, confocal (paper ±2 µm)
beads_per_um2 = 0.3
photons = 20000.0  # mean photons per bead per frame
background_photons = 10.0
input_normalisation = "photons"  # network input scale: 'photons' (fixed) or 'percentile' (per frame)
# networks and training
width = 0.125  # fraction of the paper's (Deep-Z) channel counts
levels = 3  # U-Net levels (paper 5)
disc_blocks = 3  # discriminator blocks (paper 6)
crop_px = 32  # training patch (pixels)
batch_size = 8
steps = 300  # training steps per model
lr_g = 2e-3
lr_d = 2e-4
alpha = 0.02  # adversarial weight of the generator loss (Deep-Z Eq. 4)
# evaluation
eval_fov_px = 96  # test field (pixels)
n_eval_fields = 2
eval_z_step_um = 0.5
threshold_nm = 150.0  # Hungarian matching distance
threshold_rel = 0.3  # peak threshold, fraction of (max − median) of each image
example_z_um = [-3.0, 1.5, 6.0]  # Fig. 3 planes
use_shipped_checkpoints = True  # start from data/checkpoints when it holds this exact recipe (CI trains)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from refocuslib.datasets.wnet import WNetBeadSimulator, WNetDataConfig
from refocuslib.models.blocks import count_parameters
from refocuslib.models.wnet import CROSS, REFOCUSED
from refocuslib.optics import OIL_63X
from refocuslib.reproduce import start_notebook
from refocuslib.tasks.wnet import train_cached
from refocuslib import wnet_eval

t_start = time.perf_counter()
params = {k: v for k, v in dict(globals()).items()
          if k in ("dh_rings", "z_step_um", "psf_px", "dh_range_um", "wf_range_um", "confocal_range_um",
                   "beads_per_um2", "photons", "background_photons", "input_normalisation", "width", "levels",
                   "disc_blocks", "crop_px", "batch_size", "steps", "lr_g", "lr_d", "alpha", "eval_fov_px", "n_eval_fields",
                   "eval_z_step_um", "threshold_nm", "threshold_rel", "example_z_um")}
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints, **params)

data_cfg = WNetDataConfig(microscope=OIL_63X, dh_rings=dh_rings, dh_range_um=dh_range_um, wf_range_um=wf_range_um,
                          confocal_range_um=confocal_range_um, z_step_um=z_step_um, psf_px=psf_px, crop_px=crop_px,
                          beads_per_um2=beads_per_um2, photons=photons, background_photons=background_photons,
                          input_normalisation=input_normalisation)
sim = WNetBeadSimulator(data_cfg)
px = sim.pixel_um
print(f"PSF stacks ready after {time.perf_counter() - t_start:.1f} s:",
      {k: tuple(v.shape) for k, v in sim.psfs.items()})

# %% [markdown]
# ## The three PSFs
# x–z sections through the bead (√intensity) and the PSF's peak versus focal plane: the DH lobes keep their light
# together over a longer range than the wide-field PSF, which spreads into a wide defocus disc; the confocal
# PSF is confined to ≈ ±0.5 µm (the sectioning that makes it the ground truth).

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.4), gridspec_kw={"width_ratios": [1, 1, 0.5, 1.3]})
c = psf_px // 2
for ax, mod, title in zip(axes[:3], ("dh", "wf", "confocal"), ("double helix", "wide-field", "confocal")):
    stack = sim.psfs[mod].numpy()
    xz = np.sqrt(stack[:, c, c - 20:c + 21] / stack.max())
    z = sim.z_um[mod]
    ax.imshow(xz, aspect="auto", cmap="magma", extent=[-2.05, 2.05, z[-1], z[0]])
    ax.set(title=title, xlabel="x (µm)", ylabel="focal plane z (µm)")
peaks = {}
for mod, col in (("dh", "C0"), ("wf", "C1"), ("confocal", "C2")):
    st = sim.psfs[mod].numpy()
    peaks[mod] = st.max((1, 2)) / st[len(st) // 2].max()
    axes[3].semilogy(sim.z_um[mod], peaks[mod], color=col, label=mod)
axes[3].axhline(0.1, color="gray", ls=":", lw=0.8)
axes[3].set(xlabel="focal plane z (µm)", ylabel="PSF peak / in-focus peak", title="how fast the signal fades")
axes[3].legend()
fig.tight_layout()
rec.figure(fig, "psfs", "x–z sections (√intensity) of the simulated DH, wide-field and 1-AU confocal PSFs at "
           "63×/1.4 oil, and the PSF peak relative to its in-focus peak versus focal plane (dotted: 10 %).")
plt.show()
for mod in ("dh", "wf", "confocal"):
    kept = sim.z_um[mod][peaks[mod] >= 0.1]
    rec.number(f"psf_{mod}_range_peak_above_10pct_um", float(kept.max() - kept.min()), "µm")
    print(f"{mod}: PSF peak stays above 10 % of its in-focus value over {kept.max() - kept.min():.2f} µm")

# %% [markdown]
# ## Training (cached)
# Each model is trained by the shared loop `refocuslib.train.fit`; its checkpoints live under
# `results/<profile>/checkpoints/<name>-<hash of the settings>`, so re-running the notebook (or another notebook
# using the same model) resumes or reuses them instead of training again.

# %%
models = {}
for kind, modality in (("wnet", "dh"), ("wnet", "wf"), ("single", "dh")):
    task, res, seconds = train_cached(sim, kind, modality, results_dir, steps=steps, width=width, levels=levels,
                                      disc_blocks=disc_blocks, batch_size=batch_size, alpha=alpha, lr_g=lr_g,
                                      lr_d=lr_d, seed=seed, device=device)
    models[(kind, modality)] = (task, res, seconds)
    print(f"{kind}/{modality}: {count_parameters(task.generator):,} generator parameters, "
          f"{'resumed' if res.resumed_from else 'trained'} in {seconds:.1f} s, val MAE "
          f"{res.validation[0]['val_loss']:.4f} → {res.validation[-1]['val_loss']:.4f}")
n_wnet = count_parameters(models[("wnet", "dh")][0].generator)
n_single = count_parameters(models[("single", "dh")][0].generator)
rec.number("wnet_generator_parameters", n_wnet)
rec.number("single_unet_parameters", n_single)
rec.number("single_over_wnet_parameters", n_single / n_wnet)
for (kind, modality), (task, res, seconds) in models.items():
    rec.number(f"train_seconds_{kind}_{modality}", seconds, "s")
    rec.number(f"val_mae_start_{kind}_{modality}", res.validation[0]["val_loss"])
    rec.number(f"val_mae_end_{kind}_{modality}", res.validation[-1]["val_loss"])
    rec.number(f"trivial_val_mae_{kind}_{modality}", float(task.val_batch["target_c"].abs().mean()))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for (kind, modality), (task, res, _) in models.items():
    label = f"{'W-Net' if kind == 'wnet' else 'single U-Net'} ({modality.upper()} input)"
    axes[0].plot([h["step"] for h in res.history], [h.get("mae_c") for h in res.history], label=label)
    axes[1].plot([v["step"] for v in res.validation], [v["val_loss"] for v in res.validation], "o-", label=label)
    axes[1].axhline(float(task.val_batch["target_c"].abs().mean()), color="gray", lw=0.8, ls=":")
axes[0].set(xlabel="step", ylabel="training MAE (confocal output)", yscale="log")
axes[1].set(xlabel="step", ylabel="validation MAE (confocal output)", yscale="log",
            title="dotted: MAE of an all-dark output")
axes[0].legend(fontsize=8)
fig.tight_layout()
rec.figure(fig, "training", "Training and validation MAE of the confocal output for the three models; the dotted "
           "lines mark the MAE of an all-dark image (what a network that has learnt nothing would reach).")
plt.show()

# %% [markdown]
# ## Fig. 2 — refocusing performance versus the input plane
# Test fields are new bead layers. For every input plane z the network refocuses to the bead plane (DPM = −z)
# and outputs a confocal-like image, compared with the confocal image of the bead plane. "Scanned wide-field"
# is the wide-field image taken at z itself (no network): its in-focus JI is the native reference of Table 1.

# %%
gen = torch.Generator().manual_seed(10_000 + seed)
fields = [sim.random_field(gen, (eval_fov_px, eval_fov_px)) for _ in range(n_eval_fields)]
z_eval = np.round(np.arange(-dh_range_um, dh_range_um + 1e-9, eval_z_step_um), 6)
z_eval = sim.snap("dh", z_eval)
truth = np.stack([sim.scan(f, "confocal", [0.0])[0].numpy() for f in fields])  # (F, H, W)
inputs = {mod: np.stack([sim.scan(f, mod, z_eval, generator=gen).numpy() for f in fields], 1)  # (Z, F, H, W)
          for mod in ("dh", "wf")}
in_wf_range = np.abs(z_eval) <= wf_range_um + 1e-9


outputs = {"wnet_dh": wnet_eval.refocus_scan(models[("wnet", "dh")][0], inputs["dh"], z_eval, device),
           "wnet_wf": wnet_eval.refocus_scan(models[("wnet", "wf")][0], inputs["wf"][in_wf_range],
                                             z_eval[in_wf_range], device),
           "single_dh": wnet_eval.refocus_scan(models[("single", "dh")][0], inputs["dh"], z_eval, device)}
final = {"wnet_dh": outputs["wnet_dh"][:, :, CROSS], "wnet_wf": outputs["wnet_wf"][:, :, CROSS],
         "single_dh": outputs["single_dh"][:, :, 0], "scanned_wf": inputs["wf"]}
z_of = {"wnet_dh": z_eval, "wnet_wf": z_eval[in_wf_range], "single_dh": z_eval, "scanned_wf": z_eval}
ev_kw = dict(threshold_nm=threshold_nm, threshold_rel=threshold_rel)
curves = {k: wnet_eval.evaluate_stack(final[k], truth, z_of[k], px, **ev_kw) for k in final}
native_ji = float(curves["scanned_wf"]["jaccard"][np.argmin(np.abs(z_eval))])
rec.number("native_in_focus_ji", native_ji)
labels = {"wnet_dh": "W-Net, DH input", "wnet_wf": "W-Net, wide-field input", "scanned_wf": "scanned wide-field",
          "single_dh": "single U-Net, DH input"}
styles = {"wnet_dh": "C0o-", "wnet_wf": "C1s-", "scanned_wf": "C7^-", "single_dh": "C3d-"}

figure_specs = [
    (("wnet_dh", "wnet_wf", "scanned_wf"), "fig2_abc",
     "Fig. 2a–c: correlation, Jaccard index and lateral RMSE (matched beads, 150 nm) of W-Net with DH input, W-Net "
     "with wide-field input (within its ±4 µm training range) and the scanned wide-field image, each against the "
     "confocal image of the bead plane, versus the input plane. Dotted: native in-focus JI."),
    (("wnet_dh", "single_dh"), "fig2_def",
     "Fig. 2d–f: W-Net versus the single U-Net (about half the parameters), both with DH input.")]
for keys, name, caption in figure_specs:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for k in keys:
        for ax, metric in zip(axes, ("pearson", "jaccard", "rmse_lateral_nm")):
            ax.plot(curves[k]["z_um"], curves[k][metric], styles[k], ms=3, lw=1, label=labels[k])
    axes[0].set(xlabel="input plane z (µm)", ylabel="correlation with confocal")
    axes[1].set(xlabel="input plane z (µm)", ylabel="Jaccard index")
    axes[1].axhline(native_ji, color="gray", ls=":", lw=0.8)
    axes[2].set(xlabel="input plane z (µm)", ylabel="lateral RMSE (nm)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    rec.figure(fig, name, caption)
    plt.show()
for k, cv in curves.items():
    rec.number(f"mean_ji_{k}", float(np.nanmean(cv["jaccard"])))
    rec.number(f"mean_pearson_{k}", float(np.nanmean(cv["pearson"])))
    rec.number(f"ji_at_focus_{k}", float(cv["jaccard"][np.argmin(np.abs(cv["z_um"]))]))

# %% [markdown]
# ## Table 1 — effective depth of field
# DOF = the axial extent of the planes whose JI stays at or above the native in-focus JI × (1 − tolerance)
# (`wnet_eval.dof_table`, each sampled plane owning the slab half-way to its neighbours, as the paper's 0.3 µm
# native DOF implies). A DOF marked * reaches the end of the evaluated range and may be larger.

# %%
tols = (0.0, 0.1, 0.2)
tables = {k: wnet_eval.dof_table(curves[k]["z_um"], curves[k]["jaccard"], tols, reference_ji=native_ji)
          for k in curves}
paper = wnet_eval.PAPER_TABLE1
rows = [["", "paper", *(labels[k] for k in ("scanned_wf", "wnet_dh", "wnet_wf", "single_dh"))]]
for i, t in enumerate(tols):
    cells = [f"{100 * t:.0f} % (JI ≥ {native_ji * (1 - t):.3f})",
             (f"{paper['native_dof_um'][t]:.1f} → " if t in paper["native_dof_um"] else "")
             + f"{paper['wnet_dh_dof_um'][t]:.1f} µm"
             f" (JI ≥ {paper['ji_thresholds'][t]:.3f})"]
    for k in ("scanned_wf", "wnet_dh", "wnet_wf", "single_dh"):
        r = tables[k][i]
        cells.append(f"{r['dof_um']:.2f} µm{'*' if r['censored'] else ''}")
        rec.number(f"dof_{k}_tol{int(100 * t)}", r["dof_um"], "µm")
    rows.append(cells)
widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
print("\n".join(" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows))
fig, ax = plt.subplots(figsize=(14, 1.4))
ax.axis("off")
tb = ax.table(cellText=rows[1:], colLabels=rows[0], loc="center", cellLoc="center")
tb.auto_set_font_size(False)
tb.set_fontsize(8)
tb.scale(1, 1.4)
rec.figure(fig, "table1_dof", f"Table 1: effective DOF per JI tolerance, ours ({profile} profile) beside the "
           "paper's (native → W-Net with DH input). * = reaches the end of the evaluated range.")
plt.show()

# %% [markdown]
# ## Fig. 3 — example planes
# Input planes z = −3, +1.5 and +6 µm refocused to the bead plane: the DH input, G_R's refocused DH image, G_C's
# confocal-like output, the wide-field input and its W-Net output (only within its ±4 µm training range), and
# the confocal ground truth (the same for every row).

# %%
crop = (slice(0, min(48, eval_fov_px)), slice(0, min(48, eval_fov_px)))
cols = ["DH input", "G_R: refocused DH", "G_C: confocal-like", "wide-field input", "W-Net (WF) output",
        "confocal truth"]
zs_show = sim.snap("dh", example_z_um)
fig, axes = plt.subplots(len(zs_show), len(cols), figsize=(2.2 * len(cols), 2.3 * len(zs_show)), squeeze=False)
wf_index = {float(z): i for i, z in enumerate(z_eval[in_wf_range])}
for r, z in enumerate(zs_show):
    i = int(np.argmin(np.abs(z_eval - z)))
    panels = [inputs["dh"][i, 0], outputs["wnet_dh"][i, 0, REFOCUSED], outputs["wnet_dh"][i, 0, CROSS],
              inputs["wf"][i, 0],
              outputs["wnet_wf"][wf_index[float(z_eval[i])], 0, CROSS] if float(z_eval[i]) in wf_index else None,
              truth[0]]
    for cidx, (ax, img) in enumerate(zip(axes[r], panels)):
        ax.set_xticks([])
        ax.set_yticks([])
        if img is None:
            ax.text(0.5, 0.5, "outside the\n±4 µm training\nrange", ha="center", va="center", fontsize=8)
        else:
            ax.imshow(img[crop], cmap="gray")
        if r == 0:
            ax.set_title(cols[cidx], fontsize=9)
    axes[r, 0].set_ylabel(f"z = {z:+.2f} µm")
fig.tight_layout()
rec.figure(fig, "fig3_examples", "Fig. 3: example input planes refocused to the bead plane (4.8 µm crops).")
plt.show()

# %% [markdown]
# ## Paper versus ours
# `holds` is computed from the numbers above. Criteria: a DOF "extension" holds when our DOF is larger; the
# ~20-fold claim holds when our W-Net/native DOF ratio at 10 % tolerance is at least 10; a Table 1 value is
# "reproduced" when within 25 % of the paper's.

# %%
d = {k: [r["dof_um"] for r in tables[k]] for k in tables}
ratio = d["wnet_dh"][1] / d["scanned_wf"][1] if d["scanned_wf"][1] > 0 else float("inf")
rec.number("dof_extension_ratio_tol10", ratio)
scale_note = (f"{profile} profile: width {width}, {levels} levels, {steps} steps on {crop_px}-px crops"
              + ("; far below the paper's training, so weak networks are expected" if profile == "ci" else ""))
rec.claim("W-Net with DH input extends the DOF beyond the native (scanned wide-field) DOF, 10 % tolerance",
          "Table 1", "0.3 µm (native, 0 %) → 7.5 µm", f"{d['scanned_wf'][1]:.2f} → {d['wnet_dh'][1]:.2f} µm",
          d["wnet_dh"][1] > d["scanned_wf"][1], scale_note)
rec.claim("DOF extension of about 20-fold (ratio ≥ 10 counts as holding)", "abstract, Table 1", "≈ 22 (6.6 / 0.3)",
          f"{ratio:.1f} (10 % tolerance)", bool(np.isfinite(ratio) and ratio >= 10), scale_note)
rec.claim("A DH-PSF input extends the DOF over a wide-field input (W-Net, 10 % tolerance)", "Fig. 2a–c",
          "DH-PSF W-Net range ≫ wide-field W-Net range", f"{d['wnet_dh'][1]:.2f} vs {d['wnet_wf'][1]:.2f} µm",
          d["wnet_dh"][1] > d["wnet_wf"][1], scale_note + "; our zone-plate DH stays compact over a shorter range "
          "than the paper's mask")
rec.claim("W-Net outperforms a single U-Net with about half the parameters (mean JI over ±8 µm)", "Fig. 2d–f",
          "W-Net higher JI and correlation", f"JI {np.nanmean(curves['wnet_dh']['jaccard']):.3f} vs "
          f"{np.nanmean(curves['single_dh']['jaccard']):.3f}; r {np.nanmean(curves['wnet_dh']['pearson']):.3f} vs "
          f"{np.nanmean(curves['single_dh']['pearson']):.3f}",
          bool(np.nanmean(curves["wnet_dh"]["jaccard"]) > np.nanmean(curves["single_dh"]["jaccard"])),
          f"parameters {n_wnet:,} vs {n_single:,} ({n_single / n_wnet:.2f}×); " + scale_note)
for i, t in enumerate(tols):
    p = paper["wnet_dh_dof_um"][t]
    rec.claim(f"Table 1: W-Net (DH) effective DOF at {100 * t:.0f} % tolerance", "Table 1", f"{p} µm",
              f"{d['wnet_dh'][i]:.2f} µm{' (censored)' if tables['wnet_dh'][i]['censored'] else ''}",
              abs(d["wnet_dh"][i] - p) <= 0.25 * p, f"native in-focus JI {native_ji:.3f} (paper 0.726); " + scale_note)
rec.number("notebook_seconds", time.perf_counter() - t_start, "s")
rec.save()
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
for cl in rec.claims:
    print(f"[{'holds' if cl['holds'] else 'does not hold' if cl['holds'] is not None else 'n/a'}] {cl['claim']}: "
          f"paper {cl['paper_value']}, ours {cl['ours']}")

# %% [markdown]
# ## Reading the results
# The claims table above is computed from this run. At the **CI profile** the networks are tiny and trained for
# a few hundred CPU steps on sparse bead images: compare the validation MAE of the confocal output with the MAE
# of an all-dark image (dotted, training plot). While it has not fallen clearly below that line the networks
# have not yet learnt to place beads: their Jaccard index is then near zero at every plane and W-Net's effective
# DOF is far from the paper's 6.6–8.2 µm (G_R's refocused DH image in Fig. 3 shows that the refocusing half
# learns first).
# This is a statement about the training budget, not about the method: learning to draw sparse beads from
# defocused DH images takes thousands of steps even for small networks. The `full` profile (paper-scale
# networks, 256-px crops, 50 000 steps on a GPU) is what the paper's numbers should be compared with.
# Independently of training, the physics sets a ceiling: the zone-plate DH-PSF simulated here keeps its lobes
# compact only over a few µm at NA 1.4 (PSF panel), so even a perfect network would struggle at |z| ≈ 8 µm,
# where the paper's mask still gave compact lobes.
