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
# **Here**: the same simulated 63×/1.4 NA nuclei scans and the same networks as notebook 20 (loaded from
# `results/<profile>/checkpoints/`, trained here only if notebook 20 has not run). DPM errors are drawn as one
# Gaussian axial offset per input plane (an unknown positioning error of that plane); the paper's exact noise
# model may differ. CI scale: 64 × 64 fields, 13 planes, narrow networks trained for a few hundred steps.

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/21_recurrent_mz_robustness"
seed = 0
device = "cpu"
threads = 1
setup = {
    "n_train": 12, "n_val": 2,
    "nuclei": {"kind": "nuclei", "shape_yx": [64, 64], "n_planes": 13, "z_step_um": 0.5, "input_spacing_um": 3.0,
               "n_inputs": 3, "n_objects": 10, "radius_um": [0.7, 1.2], "peak_photons": 1000.0},
    "train": {
        "recurrent_mz": {"width": 0.5, "levels": 3, "batch_size": 8, "crop_px": 32, "n_inputs": [3],
                         "jitter_planes": 1, "adv_weight": 0.5, "disc_channels": [16, 32, 64], "steps": 200,
                         "lr_g": 2e-3, "lr_d": 1e-3, "val_every": 50},
        "deepz": {"width": 0.125, "levels": 3, "disc_blocks": 3, "batch_size": 8, "crop_px": 32, "steps": 300,
                  "lr_g": 2e-3, "lr_d": 1e-3, "val_every": 50, "max_dz_um": 2.0},
        "unet3d": {"width": 0.125, "levels": 3, "batch_size": 2, "crop_px": 32, "steps": 120, "lr_g": 2e-3,
                   "val_every": 50},
    },
}
n_test = 3
nonuniform_inputs_um = [[0.0, 1.5, 6.0], [0.0, 4.5, 6.0]]
dpm_sigmas_um = [0.0, 0.25, 0.5, 0.75, 1.0]
n_draws = 4
dpm_noise_mode = "plane"
permutation_tolerance = 0.05
use_shipped_checkpoints = True  # start from data/checkpoints when it holds this exact recipe (CI trains)

# %%
import itertools
import time

import matplotlib.pyplot as plt
import numpy as np

from refocuslib import metrics
from refocuslib.datasets.recurrent_mz import VolumeSpec, simulate_volumes
from refocuslib.reproduce import start_notebook
from refocuslib.tasks import recurrent_mz as rmz
from refocuslib.train import checkpoints_root

t_start, cpu_start = time.perf_counter(), time.process_time()
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints,
                             setup=setup, n_test=n_test, nonuniform_inputs_um=nonuniform_inputs_um,
                             dpm_sigmas_um=dpm_sigmas_um, n_draws=n_draws, dpm_noise_mode=dpm_noise_mode,
                             permutation_tolerance=permutation_tolerance)
checkpoints = checkpoints_root(results_dir)
spec = VolumeSpec(**setup["nuclei"])
nets = rmz.train_models(spec, setup["train"], checkpoints, seed=seed, device=device,
                        n_train=setup["n_train"], n_val=setup["n_val"])
for m, r in nets.results.items():
    print(f"{m:13s} {'loaded from cache' if r.resumed_from == r.last_step else f'trained in {r.seconds:.1f} s'}")
test = simulate_volumes(spec, n_test, seed=seed + 1000)  # the test volumes of notebook 20
z = test.z_um
grid = test.input_indices()
net = nets.models["recurrent_mz"]


# %% [markdown]
# ## Non-uniformly spaced input planes (Fig. 4)
#
# The network was trained on inputs near the uniform Δz grid; here the middle plane moves. Deep-Z (nearest
# input) and interpolation get the same planes; the 3D U-Net cannot be told where its inputs are.

# %%
layouts = {"uniform": list(z[grid])} | {f"z = {', '.join(f'{v:g}' for v in p)} µm": p for p in nonuniform_inputs_um}
spacing = {}
for name, zin in layouts.items():
    j = np.array([int(np.argmin(np.abs(z - v))) for v in zin])
    res = {m: [] for m in ("recurrent_mz", "deepz", "interpolation")}
    for stack in test.stacks:
        pred = {"recurrent_mz": rmz.recurrent_mz_volume(net, stack[j], z[j], z),
                "deepz": rmz.deepz_nearest_volume(nets.models["deepz"], stack[j], z[j], z),
                "interpolation": rmz.interpolation_volume(stack[j], z[j], z)}
        for m, p in pred.items():
            res[m].append(rmz.plane_metrics(p, stack)["nrmse"])
    spacing[name] = {m: np.mean(v, 0) for m, v in res.items()}
    for m, v in spacing[name].items():
        rec.number(f"nrmse_{m}_{'uniform' if name == 'uniform' else 'nonuniform_' + '_'.join(f'{x:g}' for x in zin)}",
                   float(np.mean(v)))
    print(f"{name:22s}", "  ".join(f"{m} {np.mean(v):.4f}" for m, v in spacing[name].items()))

fig, axes = plt.subplots(1, len(layouts), figsize=(4.2 * len(layouts), 3.3), sharey=True)
for ax, (name, d) in zip(np.atleast_1d(axes), spacing.items()):
    for m, v in d.items():
        ax.plot(z, v, "o-", ms=3, label=m)
    for v in layouts[name]:
        ax.axvline(v, color="0.8", lw=3, zorder=0)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("output plane z (µm)")
np.atleast_1d(axes)[0].set_ylabel("NRMSE")
np.atleast_1d(axes)[0].legend(fontsize=8)
rec.figure(fig, "nonuniform_spacing", "Per-plane NRMSE for uniformly and non-uniformly spaced inputs (grey).")
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
            pred = rmz.recurrent_mz_volume(net, stack[grid], z[grid], z, dpm_noise_um=s, noise_mode=dpm_noise_mode,
                                           rng=rng)
            vals.append(metrics.nrmse(pred, stack))
    noise[s] = np.array(vals)
    rec.number(f"dpm_noise_nrmse_median_sigma_{s:g}um", float(np.median(noise[s])))
    print(f"σ = {s:4.2f} µm: NRMSE median {np.median(noise[s]):.4f} (n = {noise[s].size})")
ref = {m: np.mean([metrics.nrmse(f(stack), stack) for stack in test.stacks]) for m, f in {
    "deepz": lambda st: rmz.deepz_nearest_volume(nets.models["deepz"], st[grid], z[grid], z),
    "interpolation": lambda st: rmz.interpolation_volume(st[grid], z[grid], z)}.items()}
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.boxplot([noise[s] for s in dpm_sigmas_um], tick_labels=[f"{s:g}" for s in dpm_sigmas_um])
for (m, v), c in zip(ref.items(), ("C1", "C2")):
    ax.axhline(v, color=c, ls="--", label=f"{m} (no DPM error)")
ax.set_xlabel("DPM error σ (µm)")
ax.set_ylabel("volume NRMSE")
ax.legend(fontsize=8)
rec.figure(fig, "dpm_noise_boxplots", f"Recurrent-MZ volume NRMSE with Gaussian DPM errors ({dpm_noise_mode} "
           f"mode), {n_draws} draws per test volume; dashed: baselines without DPM errors.")
plt.show()

# %% [markdown]
# ## All permutations of the three inputs (Fig. 5)

# %%
perm = {m: rmz.permutation_rmse(nets, test, m) for m in ("recurrent_mz", "unet3d")}
labels = ["".join(f"I{k + 1}" for k in p) for p in itertools.permutations(range(len(grid)))]
spread = {}
for m, v in perm.items():
    per_vol_rel = v.std(0) / v.mean(0)  # spread over permutations, relative, per test volume
    spread[m] = float(per_vol_rel.mean())
    rec.number(f"permutation_rmse_mean_{m}", float(v.mean()))
    rec.number(f"permutation_rmse_std_{m}", float(v.std(0).mean()))
    rec.number(f"permutation_rmse_relative_std_{m}", spread[m])
    print(f"{m:13s} RMSE over permutations: mean {v.mean():.4f} ± {v.std(0).mean():.4f} (relative {spread[m]:.3f})")
fig, ax = plt.subplots(figsize=(7, 3.4))
w = 0.38
for k, (m, v) in enumerate(perm.items()):
    ax.bar(np.arange(len(labels)) + (k - 0.5) * w, v.mean(1), w, yerr=v.std(1), capsize=3, label=m)
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
curves = {k: [] for k in ("Recurrent-MZ (I1, I2, I3)", "Recurrent-MZ (I1, I1, I1)", "Recurrent-MZ (I1)",
                          "Deep-Z (I1)")}
for stack in test.stacks:
    rep = np.repeat(i1, len(grid))
    preds = [rmz.recurrent_mz_volume(net, stack[grid], z[grid], z),
             rmz.recurrent_mz_volume(net, stack[rep], z[rep], z),
             rmz.recurrent_mz_volume(net, stack[i1], z[i1], z),
             rmz.deepz_nearest_volume(nets.models["deepz"], stack[i1], z[i1], z,
                                      trained_range_um=nets.trained_range_um["deepz"])]
    for k, p in zip(curves, preds):
        curves[k].append(rmz.plane_metrics(p, stack)["rmse"])
curves = {k: np.mean(v, 0) for k, v in curves.items()}
lo, hi = nets.trained_range_um["deepz"]
in_range = (z - z[i1[0]] >= lo) & (z - z[i1[0]] <= hi)  # planes Deep-Z was trained to reach from I1
fig, ax = plt.subplots(figsize=(6, 3.6))
for k, v in curves.items():
    ax.plot(z - z[i1[0]], v, "o-", ms=3, label=k)
ax.axvspan(max(hi, 0), (z - z[i1[0]]).max(), color="0.92", zorder=0, label="beyond Deep-Z's trained range")
ax.set_xlabel("distance from I1 (µm)")
ax.set_ylabel("RMSE")
ax.legend(fontsize=8)
rec.figure(fig, "repeated_inputs", "Per-plane RMSE of Recurrent-MZ fed distinct planes, the same plane three "
           "times, or once, against Deep-Z refocusing I1.")
plt.show()
for k, v in curves.items():
    rec.number(f"repeated_rmse_{k}", float(v.mean()))
    rec.number(f"repeated_rmse_within_deepz_range_{k}", float(v[in_range].mean()))
    print(f"{k:28s} mean RMSE {v.mean():.4f} (all planes), {v[in_range].mean():.4f} (|z − z1| within "
          f"Deep-Z's trained range)")

# %% [markdown]
# ## Paper versus ours

# %%
r_u, u_u = spread["recurrent_mz"], spread["unet3d"]
rec.claim("Recurrent-MZ is permutation invariant, 3D U-Net is not", "Fig. 5",
          "Recurrent-MZ output unchanged by input order; 3D U-Net fails when the order changes",
          f"relative RMSE spread over the 6 orders: {r_u:.3f} vs {u_u:.3f} (3D U-Net)",
          bool(r_u < u_u and r_u < permutation_tolerance),
          f"invariant means a spread below {permutation_tolerance:g} of the mean RMSE")
key = list(layouts)[1]
rn, ln = float(np.mean(spacing[key]["recurrent_mz"])), float(np.mean(spacing[key]["interpolation"]))
rec.claim("Recurrent-MZ handles non-uniformly spaced inputs better than interpolation", "Fig. 4",
          "Recurrent-MZ infers the volume from non-uniform inputs", f"NRMSE {rn:.4f} vs {ln:.4f} ({key})",
          bool(rn < ln))
n0, n1 = float(np.median(noise[dpm_sigmas_um[0]])), float(np.median(noise[dpm_sigmas_um[-1]]))
rec.claim("DPM errors degrade Recurrent-MZ gracefully", "Fig. 6", "NRMSE grows with the DPM noise σ",
          f"median NRMSE {n0:.4f} at σ = {dpm_sigmas_um[0]:g} µm, {n1:.4f} at σ = {dpm_sigmas_um[-1]:g} µm",
          bool(n1 >= n0), "holds = NRMSE does not improve when the DPMs are wrong")
a, b = float(curves["Recurrent-MZ (I1, I2, I3)"].mean()), float(curves["Recurrent-MZ (I1, I1, I1)"].mean())
rec.claim("Recurrent-MZ uses the information of distinct planes: (I1, I2, I3) beats (I1, I1, I1)", "Fig. 7",
          "repeated inputs carry no new information", f"RMSE {a:.4f} vs {b:.4f} (all planes)", bool(a < b))
b_in, d_in = (float(curves[k][in_range].mean()) for k in ("Recurrent-MZ (I1, I1, I1)", "Deep-Z (I1)"))
rec.claim("With repeated inputs Recurrent-MZ is no better than Deep-Z(I1)", "Fig. 7",
          "(I1, I1, …) performs like single-plane refocusing", f"RMSE {b_in:.4f} vs {d_in:.4f} (Deep-Z)",
          bool(b_in >= d_in), f"planes within Deep-Z's trained range ±{hi:g} µm of I1")
rec.number("notebook_seconds", time.perf_counter() - t_start, "s")
rec.number("notebook_cpu_seconds", time.process_time() - cpu_start, "s")
rec.save()
