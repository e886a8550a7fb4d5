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
# are the planes of the same noisy scan (as the paper's mechanical scan). All four methods see the same test
# volumes. Differences from the paper: simulated rather than measured samples; at CI scale the field is 64 × 64
# pixels, the scan has a few planes, Δz is smaller and the networks are narrow and trained for a few hundred
# steps with a larger learning rate (the `full` profile sets paper scale). Networks are cached under
# `results/<profile>/checkpoints/`; notebook 21 reuses them.

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/20_recurrent_mz_volume"
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
beads = {
    "spec": {"kind": "beads", "shape_yx": [64, 64], "n_planes": 17, "z_step_um": 0.25, "input_spacing_um": 1.5,
             "n_inputs": 3, "n_objects": 20, "peak_photons": 1000.0, "norm_percentile": 99.99},
    "n_train": 12, "n_val": 2,
    "train": {"recurrent_mz": {"width": 0.5, "levels": 3, "batch_size": 6, "crop_px": 32, "n_inputs": [3],
                               "jitter_planes": 1, "adv_weight": 0.5, "disc_channels": [16, 32, 64], "steps": 100,
                               "lr_g": 2e-3, "lr_d": 1e-3, "val_every": 50}},
}
n_test = 3
fwhm_bins_um = [0.1, 0.8, 14]   # histogram range (µm) and number of bins
fwhm_kl_eps = 1e-3               # probability added to every bin before the KL divergence (empty bins)
use_shipped_checkpoints = True  # start from data/checkpoints when it holds this exact recipe (CI trains)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from refocuslib import metrics
from refocuslib.datasets.recurrent_mz import VolumeSpec, simulate_volumes
from refocuslib.models.blocks import count_parameters
from refocuslib.reproduce import start_notebook
from refocuslib.tasks import recurrent_mz as rmz
from refocuslib.train import checkpoints_root

t_start, cpu_start = time.perf_counter(), time.process_time()
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints,
                             setup=setup, beads=beads, n_test=n_test, fwhm_bins_um=fwhm_bins_um,
                             fwhm_kl_eps=fwhm_kl_eps)
checkpoints = checkpoints_root(results_dir)
LABEL = {"recurrent_mz": "Recurrent-MZ", "deepz": "Deep-Z (nearest input)", "unet3d": "3D U-Net",
         "interpolation": "linear interpolation"}

# %% [markdown]
# ## Train (or load) the networks on simulated nuclei scans

# %%
spec = VolumeSpec(**setup["nuclei"])
t0 = time.perf_counter()
nets = rmz.train_models(spec, setup["train"], checkpoints, seed=seed, device=device,
                        n_train=setup["n_train"], n_val=setup["n_val"])
for m, net in nets.models.items():
    r = nets.results[m]
    print(f"{LABEL[m]:24s} {count_parameters(net):8d} parameters, steps {r.last_step} "
          f"({'loaded from cache' if r.resumed_from == r.last_step else f'trained in {r.seconds:.1f} s'}), "
          f"best val loss {r.best_val_loss:.4f} at step {r.best_step}")
    rec.number(f"params_{m}", count_parameters(net))
rec.number("train_seconds_nuclei", time.perf_counter() - t0, "s")
print("input planes:", spec.input_indices(), "at z =", spec.z_um[spec.input_indices()], "µm")

# %% [markdown]
# ## Reconstruct unseen test volumes with every method (Fig. 2)

# %%
test = simulate_volumes(spec, n_test, seed=seed + 1000)
ev = rmz.evaluate_methods(nets, test)
z = test.z_um
idx = ev["input_indices"]
inferred = np.ones(len(z), bool)
inferred[idx] = False  # planes that no input covers: the ones a method must infer
summary = {}
for m, d in ev["metrics"].items():
    summary[m] = {k: float(np.mean(v[:, inferred])) for k, v in d.items()}
    rec.number(f"psnr_{m}", summary[m]["psnr"], "dB")
    rec.number(f"nrmse_{m}", summary[m]["nrmse"])
    rec.number(f"psnr_per_plane_{m}", d["psnr"].mean(0), "dB")
    rec.number(f"nrmse_per_plane_{m}", d["nrmse"].mean(0))
    print(f"{LABEL[m]:24s} PSNR {summary[m]['psnr']:6.2f} dB   NRMSE {summary[m]['nrmse']:.4f}   (mean over "
          f"{n_test} volumes × {inferred.sum()} inferred planes)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for m, d in ev["metrics"].items():
    for ax, key in zip(axes, ("psnr", "nrmse")):
        v = d[key].mean(0).copy()
        v[~np.isfinite(v)] = np.nan  # interpolation is exact at its own input planes
        ax.plot(z, v, "o-", ms=3, label=LABEL[m])
for ax, lab in zip(axes, ("PSNR (dB)", "NRMSE")):
    for zi in z[idx]:
        ax.axvline(zi, color="0.8", lw=3, zorder=0)
    ax.set_xlabel("output plane z (µm)")
    ax.set_ylabel(lab)
axes[0].legend(fontsize=8)
fig.suptitle("Per-plane error against the scan (grey: input planes)")
rec.figure(fig, "per_plane_metrics", "PSNR and NRMSE of every output plane (mean over test volumes) for "
           "Recurrent-MZ, Deep-Z from the nearest input plane, the 3D U-Net and linear interpolation.")
plt.show()

# %%
vol = {"scan": test.stacks[0], **{m: v[0] for m, v in ev["volumes"].items()}}
row = int(np.argmax(test.stacks[0].max(0).sum(1)))  # the brightest row for the x–z section
show = [k for k in ("scan", "recurrent_mz", "deepz", "unet3d", "interpolation") if k in vol]
planes = [int(i) for i in np.linspace(0, len(z) - 1, 5).round()]
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
rec.figure(fig, "volume_vs_scan", "One test volume: x–y planes and an x–z section of the scan and of each "
           "method's reconstruction from the three input planes.")
plt.show()

# %% [markdown]
# ## Paper versus ours — nuclei

# %%
r, dz, u3, li = (summary.get(m, {}).get("psnr", np.nan) for m in ("recurrent_mz", "deepz", "unet3d",
                                                                     "interpolation"))
rec.claim("Recurrent-MZ beats Deep-Z in PSNR", "Fig. 2", "Recurrent-MZ above Deep-Z on every inferred plane",
          f"{r:.2f} dB vs {dz:.2f} dB", bool(r > dz), "mean over inferred (non-input) planes of the test volumes")
rec.claim("Recurrent-MZ beats the 3D U-Net in PSNR", "Fig. 2", "Recurrent-MZ above 3D U-Net",
          f"{r:.2f} dB vs {u3:.2f} dB", bool(r > u3), "same inputs, same test volumes")
rec.claim("Recurrent-MZ beats linear interpolation between the input planes", "Fig. 2",
          "interpolation worst of all methods", f"{r:.2f} dB vs {li:.2f} dB", bool(r > li),
          f"CI: Δz = {spec.input_spacing_um} µm, narrow networks trained {setup['train']['recurrent_mz']['steps']} "
          "steps" if profile == "ci" else "")

# %% [markdown]
# ## Beads: lateral FWHM distributions against the scan (Fig. 3)
#
# Every bead's lateral FWHM is measured on the maximum-intensity projection along z of the volume (the bead at
# its sharpest plane; Gaussian fit, `metrics.lateral_fwhm_um`), for the scan and for the volumes inferred from
# the three input planes; the histograms are compared with the scan's by the Kullback–Leibler divergence.

# %%
bspec = VolumeSpec(**beads["spec"])
t0 = time.perf_counter()
bnets = rmz.train_models(bspec, beads["train"], checkpoints, seed=seed, device=device,
                         methods=tuple(beads["train"]), n_train=beads["n_train"], n_val=beads["n_val"])
rec.number("train_seconds_beads", time.perf_counter() - t0, "s")
btest = simulate_volumes(bspec, n_test, seed=seed + 2000)
bev = rmz.evaluate_methods(bnets, btest, keep_volumes=n_test)
px = bspec.microscope.pixel_um
fwhm = {"scan": np.concatenate([rmz.bead_fwhm_um(s, px) for s in btest.stacks])}
for m, vols in bev["volumes"].items():
    fwhm[m] = np.concatenate([rmz.bead_fwhm_um(v, px) for v in vols])
edges = np.linspace(*fwhm_bins_um[:2], int(fwhm_bins_um[2]) + 1)
kl = {}
for m, v in fwhm.items():
    rec.number(f"bead_fwhm_median_{m}", float(np.median(v)) if v.size else np.nan, "µm")
    rec.number(f"bead_count_{m}", int(v.size))
    if m != "scan" and v.size:
        kl[m] = metrics.histogram_kl(v, fwhm["scan"], bins=edges, eps=fwhm_kl_eps)
        rec.number(f"bead_fwhm_kl_{m}", kl[m], "nats")
    print(f"{LABEL.get(m, m):24s} {v.size:3d} beads, median FWHM {np.median(v) if v.size else np.nan:.3f} µm"
          + (f", KL to scan {kl[m]:.3f}" if m in kl else ""))
for m, d in bev["metrics"].items():
    rec.number(f"bead_psnr_{m}", float(np.mean(d["psnr"][:, np.isin(np.arange(len(btest.z_um)),
                                                                      bev["input_indices"], invert=True)])), "dB")

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
for m, v in fwhm.items():
    ax.hist(v, bins=edges, histtype="step", lw=2, label=f"{LABEL.get(m, m)} (n={v.size})"
            + (f", KL {kl[m]:.2f}" if m in kl else ""))
ax.set_xlabel("lateral FWHM (µm)")
ax.set_ylabel("beads")
ax.legend(fontsize=8)
rec.figure(fig, "bead_fwhm_histograms", "Lateral FWHM of 50 nm beads in the scan and in the volumes inferred "
           "from three input planes; KL divergence of each histogram to the scan's.")
plt.show()

# %%
if "recurrent_mz" in kl:
    rec.claim("Recurrent-MZ bead FWHM distribution matches the scan better than interpolation", "Fig. 3",
              "Recurrent-MZ histogram close to the scan's (small KL divergence)",
              f"KL {kl['recurrent_mz']:.3f} vs {kl.get('interpolation', np.nan):.3f} (interpolation)",
              bool(kl["recurrent_mz"] < kl.get("interpolation", np.inf)),
              f"median FWHM scan {np.median(fwhm['scan']):.3f} µm, Recurrent-MZ {np.median(fwhm['recurrent_mz']):.3f} µm")
else:  # not a single bead of the Recurrent-MZ volumes passed the isolated-spot Gaussian fit
    rec.claim("Recurrent-MZ bead FWHM distribution matches the scan better than interpolation", "Fig. 3",
              "Recurrent-MZ histogram close to the scan's (small KL divergence)", "no bead could be fitted", False,
              f"the Recurrent-MZ bead volumes hold blurred spots only (network trained "
              f"{beads['train']['recurrent_mz']['steps']} steps at this profile)")
rec.number("notebook_seconds", time.perf_counter() - t_start, "s")
rec.number("notebook_cpu_seconds", time.process_time() - cpu_start, "s")
rec.save()
