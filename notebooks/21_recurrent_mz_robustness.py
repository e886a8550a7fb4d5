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
# # 21 · Recurrent-MZ: robustness to spacing, DPM errors, input order and repeated inputs (Figs. 4–7)
#
# Huang et al., Light Sci. Appl. 10, 62 (2021) test how Recurrent-MZ copes with what a real acquisition gets
# wrong: input planes that are **not uniformly spaced** (Fig. 4), **DPMs with errors** — the input planes were
# not where we believe (Fig. 6; noise σ = 0 … 1 µm, NRMSE over repeated draws), **any order of the inputs**
# (Fig. 5; all 3! = 6 permutations of M = 3, against the 3D U-Net whose channels have fixed meanings), and
# **repeated inputs** (I1, I1, I1) — no new information — versus Deep-Z refocusing I1 (Fig. 7).
#
# **Here**: the shipped networks of notebook 20 (`rmz_nuclei`, `deepz_volume_nuclei`, `unet3d_nuclei` in
# `refocuslib/recipes.yaml`) on freshly simulated held-out 63×/1.4 NA nuclei scans (64 × 64 × 17 planes of 0.5 µm,
# inputs Δz = 4 µm apart). Recurrent-MZ was trained with M ∈ {2, 3} inputs, each moved up to ±1 µm around the
# uniform grid, in random order. DPM errors are one Gaussian axial offset per input plane (an unknown positioning
# error of that plane); the paper's exact noise model may differ. Every claim rests on per-volume scores; ± is
# the standard error over test volumes.

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/21_recurrent_mz_robustness"
seed = 0
device = "cpu"
threads = 1
model_recipes = {"recurrent_mz": "rmz_nuclei", "deepz": "deepz_volume_nuclei", "unet3d": "unet3d_nuclei"}
n_test = 8
nonuniform_inputs_um = [[0.0, 2.5, 8.0], [0.0, 5.5, 8.0]]   # the middle plane 1.5 µm off the uniform grid
dpm_sigmas_um = [0.0, 0.5, 1.0]
n_draws = 2
dpm_noise_mode = "plane"
dpm_max_rel_increase = 0.5     # graceful: NRMSE at the largest sigma at most 1.5 x that at 0 (paper 1.18 x)
permutation_tolerance = 0.05
use_shipped_checkpoints = True

# %%
import itertools
import time

import matplotlib.pyplot as plt
import numpy as np

from refocuslib import metrics
from refocuslib.evaluate import recurrent_mz as ev
from refocuslib.notebook import start_notebook
from refocuslib.tasks import recurrent_mz as rmz

t_start, cpu_start = time.perf_counter(), time.process_time()
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints, model_recipes=model_recipes,
                             n_test=n_test, nonuniform_inputs_um=nonuniform_inputs_um, dpm_sigmas_um=dpm_sigmas_um,
                             n_draws=n_draws, dpm_noise_mode=dpm_noise_mode,
                             dpm_max_rel_increase=dpm_max_rel_increase, permutation_tolerance=permutation_tolerance)
models = rmz.load_models(model_recipes, results_dir, device=device)
test = rmz.held_out_volumes(model_recipes["recurrent_mz"], n_test, seed=seed + 1000)  # notebook 20's test volumes
z = test.z_um
grid = test.input_indices()
net = models["recurrent_mz"].generator

# %% [markdown]
# ## Non-uniformly spaced input planes (Fig. 4)
#
# Deep-Z (nearest input) and interpolation get the same planes; the 3D U-Net cannot be told where its inputs are.

# %%
layouts = {"uniform": list(z[grid])} | {f"z = {', '.join(f'{v:g}' for v in p)} µm": p for p in nonuniform_inputs_um}
spacing, nonuni_rmz, nonuni_interp = {}, [], []
for name, zin in layouts.items():
    j = np.array([int(np.argmin(np.abs(z - v))) for v in zin])
    r = ev.evaluate_methods(models, test, input_indices=j, methods=("recurrent_mz", "deepz", "interpolation"))
    spacing[name] = {m: d["psnr"].mean(0) for m, d in r["metrics"].items()}
    pv = ev.per_volume(r, "psnr")
    for m, v in pv.items():
        tag = "uniform" if name == "uniform" else "nonuniform_" + "_".join(f"{x:g}" for x in zin)
        rec.number(f"psnr_{m}_{tag}", float(np.mean(v)), "dB")
    if name != "uniform":
        nonuni_rmz.append(pv["recurrent_mz"])
        nonuni_interp.append(pv["interpolation"])
    print(f"{name:24s}", "  ".join(f"{m} {np.mean(v):.2f} dB" for m, v in pv.items()), "(inferred planes)")

fig, axes = plt.subplots(1, len(layouts), figsize=(4.2 * len(layouts), 3.3), sharey=True)
for ax, (name, d) in zip(np.atleast_1d(axes), spacing.items()):
    for m, v in d.items():
        v = v.copy()
        v[~np.isfinite(v)] = np.nan
        ax.plot(z, v, "o-", ms=3, label=m)
    for v in layouts[name]:
        ax.axvline(v, color="0.8", lw=3, zorder=0)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("output plane z (µm)")
np.atleast_1d(axes)[0].set_ylabel("PSNR (dB)")
np.atleast_1d(axes)[0].legend(fontsize=8)
rec.figure(fig, "nonuniform_spacing", "Per-plane PSNR for uniformly and non-uniformly spaced inputs (grey).")
plt.show()

# %% [markdown]
# ## DPM errors (Fig. 6): every input plane off by N(0, σ²) µm

# %%
rng = np.random.default_rng(seed + 3)
noise = {}
for s in dpm_sigmas_um:
    vals = []
    for stack in test.stacks:
        for _ in range(n_draws if s > 0 else 1):
            pred = ev.recurrent_mz_volume(net, stack[grid], z[grid], z, dpm_noise_um=s, noise_mode=dpm_noise_mode,
                                          rng=rng)
            vals.append(metrics.nrmse(pred, stack))
    noise[s] = np.array(vals)
    rec.number(f"dpm_noise_nrmse_median_sigma_{s:g}um", float(np.median(noise[s])))
    print(f"σ = {s:4.2f} µm: NRMSE median {np.median(noise[s]):.4f} (n = {noise[s].size})")
ref = {m: np.array([metrics.nrmse(ev.predict(m, models, st[grid], z[grid], z), st) for st in test.stacks])
       for m in ("deepz", "interpolation")}
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.boxplot([noise[s] for s in dpm_sigmas_um], tick_labels=[f"{s:g}" for s in dpm_sigmas_um])
for (m, v), c in zip(ref.items(), ("C1", "C2")):
    ax.axhline(float(np.mean(v)), color=c, ls="--", label=f"{m} (no DPM error)")
ax.set_xlabel("DPM error σ (µm)")
ax.set_ylabel("volume NRMSE")
ax.legend(fontsize=8)
rec.figure(fig, "dpm_noise_boxplots", f"Recurrent-MZ volume NRMSE with Gaussian DPM errors ({dpm_noise_mode} "
           f"mode), {n_draws} draws per test volume; dashed: baselines without DPM errors.")
plt.show()

# %% [markdown]
# ## All permutations of the three inputs (Fig. 5)

# %%
perm = {m: ev.permutation_rmse(models, test, m) for m in ("recurrent_mz", "unet3d")}
interp_rmse = np.array([metrics.rmse(ev.interpolation_volume(st[grid], z[grid], z), st) for st in test.stacks])
labels = ["".join(f"I{k + 1}" for k in p) for p in itertools.permutations(range(len(grid)))]
for m, v in perm.items():
    rel = float(np.mean(v.std(0) / v.mean(0)))
    rec.number(f"permutation_rmse_mean_{m}", float(v.mean()))
    rec.number(f"permutation_rmse_relative_std_{m}", rel)
    print(f"{m:13s} RMSE over permutations: mean {v.mean():.4f}, relative spread {rel:.3f}")
fig, ax = plt.subplots(figsize=(7, 3.4))
w = 0.38
for k, (m, v) in enumerate(perm.items()):
    ax.bar(np.arange(len(labels)) + (k - 0.5) * w, v.mean(1), w, yerr=v.std(1), capsize=3, label=m)
ax.axhline(interp_rmse.mean(), color="0.5", ls="--", label="interpolation")
ax.set_xticks(range(len(labels)), labels)
ax.set_ylabel("volume RMSE (mean ± std over test volumes)")
ax.legend(fontsize=8)
rec.figure(fig, "permutations", "RMSE of the inferred volume for every order of the three input planes: "
           "Recurrent-MZ (one network, any order) beside the 3D U-Net (inputs as ordered channels).")
plt.show()

# %% [markdown]
# ## Repeated inputs (I1, I1, I1) versus Deep-Z(I1) (Fig. 7)

# %%
i1 = grid[:1]
rep = np.repeat(i1, len(grid))
lo, hi = models["deepz"].trained_range_um
in_range = (z - z[i1[0]] >= lo) & (z - z[i1[0]] <= hi)  # planes Deep-Z was trained to reach from I1
curves = {k: [] for k in ("Recurrent-MZ (I1, I2, I3)", "Recurrent-MZ (I1, I1, I1)", "Recurrent-MZ (I1)",
                          "Deep-Z (I1)")}
for stack in test.stacks:
    preds = [ev.recurrent_mz_volume(net, stack[grid], z[grid], z),
             ev.recurrent_mz_volume(net, stack[rep], z[rep], z),
             ev.recurrent_mz_volume(net, stack[i1], z[i1], z),
             ev.deepz_nearest_volume(models["deepz"].generator, stack[i1], z[i1], z[in_range])]
    for k, p in zip(curves, preds):
        t = stack if p.shape[0] == len(z) else stack[in_range]
        curves[k].append(ev.plane_metrics(p, t)["rmse"])
curves = {k: np.stack(v) for k, v in curves.items()}     # (N, planes)
within = {k: (v[:, in_range] if v.shape[1] == len(z) else v).mean(1) for k, v in curves.items()}
fig, ax = plt.subplots(figsize=(6, 3.6))
for k, v in curves.items():
    zz = z if v.shape[1] == len(z) else z[in_range]
    ax.plot(zz - z[i1[0]], v.mean(0), "o-", ms=3, label=k)
ax.axvspan(hi, (z - z[i1[0]]).max(), color="0.92", zorder=0, label="beyond Deep-Z's trained range")
ax.set_xlabel("distance from I1 (µm)")
ax.set_ylabel("RMSE")
ax.legend(fontsize=8)
rec.figure(fig, "repeated_inputs", "Per-plane RMSE of Recurrent-MZ fed distinct planes, the same plane three "
           "times, or once, against Deep-Z refocusing I1 (within its trained range).")
plt.show()
for k, v in within.items():
    rec.number(f"repeated_rmse_within_deepz_range_{k}", float(v.mean()))
    print(f"{k:28s} mean RMSE {v.mean():.4f} (|z − z1| within Deep-Z's trained range ±{hi:g} µm)")
distinct_all = curves["Recurrent-MZ (I1, I2, I3)"].mean(1)
repeated_all = curves["Recurrent-MZ (I1, I1, I1)"].mean(1)

# %% [markdown]
# ## Paper versus ours

# %%
v_perm = ev.permutation_claim(perm["recurrent_mz"], perm["unet3d"], interp_rmse, tolerance=permutation_tolerance)
rec.claim("Recurrent-MZ is permutation invariant, the 3D U-Net is not", "Fig. 5, S4",
          "Recurrent-MZ output unchanged by input order; 3D U-Net fails when the order changes",
          f"relative RMSE spread over the 6 orders {np.mean(perm['recurrent_mz'].std(0) / perm['recurrent_mz'].mean(0)):.3f}"
          f" vs {np.mean(perm['unet3d'].std(0) / perm['unet3d'].mean(0)):.3f} (3D U-Net)", v_perm,
          f"invariant: spread below {permutation_tolerance:g} of the mean RMSE, and RMSE below interpolation's")
a, b = np.concatenate(nonuni_rmz), np.concatenate(nonuni_interp)
v_non = ev.nonuniform_claim(a, b)
rec.claim("Recurrent-MZ handles non-uniformly spaced inputs better than interpolation", "Fig. 4",
          "Recurrent-MZ infers the volume from non-uniform inputs (PSNR close to the uniform case)",
          f"PSNR {a.mean():.2f} dB vs {b.mean():.2f} dB (interpolation)", v_non,
          f"{len(nonuniform_inputs_um)} layouts × {n_test} volumes, inferred planes")
v_noise = ev.dpm_noise_claim(noise, ref["interpolation"], max_rel_increase=dpm_max_rel_increase)
n0, n1 = float(np.median(noise[dpm_sigmas_um[0]])), float(np.median(noise[dpm_sigmas_um[-1]]))
rec.claim("DPM errors degrade Recurrent-MZ gracefully", "Fig. 6", "NRMSE 5.03 at σ = 0 → 5.94 at σ = 1 µm (+18 %)",
          f"median NRMSE {n0:.4f} at σ = 0 → {n1:.4f} at σ = {dpm_sigmas_um[-1]:g} µm ({(n1 / n0 - 1) * 100:+.0f} %)",
          v_noise, f"one Gaussian offset per input plane; graceful = at most +{dpm_max_rel_increase:.0%}")
v_rep = ev.repetition_claim(distinct_all, repeated_all)
rec.claim("Recurrent-MZ uses the information of distinct planes: (I1, I2, I3) beats (I1, I1, I1)", "Fig. 7",
          "repeated inputs carry no new information", f"RMSE {distinct_all.mean():.4f} vs {repeated_all.mean():.4f}",
          v_rep, "all planes")
v_dz = ev.repeated_like_deepz_claim(within["Recurrent-MZ (I1, I1, I1)"], within["Deep-Z (I1)"],
                                    within["Recurrent-MZ (I1, I2, I3)"])
rec.claim("With repeated inputs Recurrent-MZ is no better than Deep-Z(I1)", "Fig. 7",
          "(I1, I1, …) performs like single-plane refocusing",
          f"RMSE {within['Recurrent-MZ (I1, I1, I1)'].mean():.4f} vs {within['Deep-Z (I1)'].mean():.4f} (Deep-Z)",
          v_dz, f"planes within Deep-Z's trained range ±{hi:g} µm of I1")
rec.number("notebook_seconds", time.perf_counter() - t_start, "s")
rec.number("notebook_cpu_seconds", time.process_time() - cpu_start, "s")
rec.save()
