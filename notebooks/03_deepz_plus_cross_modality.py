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
# # 03 · Deep-Z+: wide-field in, confocal out (Fig. 5)
#
# Wu et al., *Nat. Methods* 16, 1323 (2019), Fig. 5. Deep-Z+ is the Deep-Z generator trained with wide-field
# input images and **confocal** target images (63×/1.4 NA oil): from one wide-field image it produces
# confocal-like optical sections at other planes — refocusing and cross-modality transformation at once. The
# paper compares the output with the confocal scan through |GT − output| maps and SSIM/RMSE, against plain
# Deep-Z (wide-field targets) and the wide-field scan itself.
#
# **Here**: microtubule-like filaments (worm-like chains, 25 nm wide, in a 1 µm slab) are imaged through the
# simulated 63×/1.4 oil objective in wide-field and in point-scanning confocal (1 Airy-unit pinhole, 488 nm
# excitation, 520 nm emission); both networks are trained here (cached under `results/<profile>/checkpoints/`).
# **Differences from the paper**: CI trains two narrow generators for about half a minute each on ±1 µm in
# 0.2 µm steps (the paper used BPAEC cell samples and a full-size network); the test sample is simulated and
# held out (another seed).

# %% tags=["parameters"]
profile = "ci"
results_dir = "results/ci/03_deepz_plus_cross_modality"
seed = 0
device = "cpu"
threads = 2
plus_recipe = "deepzplus_filaments"  # refocuslib/recipes.yaml: wide-field 63x/1.4 → confocal 63x/1.4
plain_recipe = "deepz63_filaments"  # plain Deep-Z on the same samples: wide-field → wide-field
use_shipped_checkpoints = True  # evaluate the shipped models of exactly these recipes (False: train them here)
smoke_steps = 20  # a short training of the Deep-Z+ recipe from scratch (shows the training path works)
n_eval_samples = 3  # held-out filament samples
eval_fov_px = 128
show_planes_um = [-0.6, 0.0, 0.6]

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from refocuslib import metrics, recipes
from refocuslib.datasets import deepz as dzdata
from refocuslib.evaluate import deepz as ev
from refocuslib.inference import refocus_stack
from refocuslib.notebook import start_notebook

t_start = time.time()
rec, device = start_notebook(results_dir, profile, seed, device=device, threads=threads,
                             use_shipped_checkpoints=use_shipped_checkpoints,
                             plus_recipe=plus_recipe, plain_recipe=plain_recipe, smoke_steps=smoke_steps,
                             n_eval_samples=n_eval_samples, eval_fov_px=eval_fov_px, show_planes_um=show_planes_um)

# %% [markdown]
# ## 1 · The shipped Deep-Z+ and plain Deep-Z models, and a training smoke

# %%
plus_task, plus_res = recipes.train_cached(plus_recipe, results_dir, device=device, use_shipped=use_shipped_checkpoints)
plain_task, plain_res = recipes.train_cached(plain_recipe, results_dir, device=device,
                                             use_shipped=use_shipped_checkpoints)
smoke = recipes.smoke(plus_recipe, results_dir, steps=smoke_steps, device=device)
print(f"smoke: {smoke_steps} steps of {plus_recipe} in {smoke.extras['smoke_seconds']:.1f} s")
plus, plain = plus_task.generator.to("cpu").eval(), plain_task.generator.to("cpu").eval()
fig, ax = plt.subplots(figsize=(5.5, 3.4))
for name, r in (("Deep-Z+ (confocal targets)", plus_res), ("Deep-Z (wide-field targets)", plain_res)):
    ax.plot([v["step"] for v in r.validation], [v["val_loss"] for v in r.validation], "o-", label=name)
    ax.axhline(r.validation[-1]["val_nrmse_input"], ls="--", lw=1, color=ax.lines[-1].get_color())
ax.axhline(1.0, color="0.5", ls=":", label="all-zero image")
ax.set_xlabel("training step")
ax.set_ylabel("validation NRMSE (held-out)")
ax.set_yscale("log")
ax.legend(fontsize=8)
rec.figure(fig, "training_curves", "Validation NRMSE of the shipped models on held-out filament samples (dashed: "
           "the un-refocused wide-field input against each target; dotted: the all-zero image).")
for name, r in (("plus", plus_res), ("plain", plain_res)):
    b = min((v for v in r.validation if v["step"] > 0), key=lambda v: v["val_loss"])
    rec.number(f"{name}_val_nrmse_best", b["val_loss"])
    rec.number(f"{name}_val_nrmse_input", b["val_nrmse_input"])
print(f"models ready after {time.time() - t_start:.1f} s")

# %% [markdown]
# ## 2 · A held-out sample: wide-field and confocal scans, and the virtual stacks from one wide-field image

# %%
ecfg = dzdata.eval_config(plus_task.data, field_px=eval_fov_px)
wcfg = dzdata.eval_config(plain_task.data, field_px=eval_fov_px)
table = {name: {"ssim": [], "rmse": []} for name in ("Deep-Z+", "Deep-Z", "wide-field scan")}
for n in range(n_eval_samples):
    vol = dzdata.simulate_sample(np.random.default_rng(seed + 303 + n), ecfg, "filaments")
    sc_n = dzdata.scan(ecfg, vol, seed=seed + 3030 + n)  # input: wide-field, target: confocal
    wf_n = dzdata.scan(wcfg, vol, seed=seed + 3030 + n)  # the same wide-field input, wide-field planes
    i0 = sc_n.plane(0.0)
    gt_n = sc_n.truth_for(i0)  # confocal planes in the units of the wide-field input (what the networks output)
    cands = {"Deep-Z+": refocus_stack(plus, sc_n.input[i0], sc_n.z_um),
             "Deep-Z": refocus_stack(plain, sc_n.input[i0], sc_n.z_um), "wide-field scan": wf_n.truth_for(i0)}
    for name, st in cands.items():
        rng_k = [float(max(gt_n[k].max(), 1e-6)) for k in range(len(gt_n))]
        table[name]["ssim"].append([metrics.ssim(st[k], gt_n[k], data_range=rng_k[k]) for k in range(len(gt_n))])
        table[name]["rmse"].append([metrics.rmse(st[k], gt_n[k]) for k in range(len(gt_n))])
    if n == 0:
        sc, gt, v_plus, v_plain, wf_stack = sc_n, gt_n, cands["Deep-Z+"], cands["Deep-Z"], cands["wide-field scan"]
table = {name: {k: np.asarray(v).mean(0) for k, v in t.items()} for name, t in table.items()}
zs = sc.z_um
i0 = sc.plane(0.0)

fig, axes = plt.subplots(len(show_planes_um), 6, figsize=(17, 3 * len(show_planes_um)))
for r, z in enumerate(show_planes_um):
    k = sc.plane(z)
    panels = [("confocal scan (GT)", gt[k], "magma"), ("Deep-Z+", v_plus[k], "magma"),
              ("|GT − Deep-Z+|", np.abs(gt[k] - v_plus[k]), "viridis"), ("Deep-Z", v_plain[k], "magma"),
              ("|GT − Deep-Z|", np.abs(gt[k] - v_plain[k]), "viridis"),
              ("|GT − wide-field|", np.abs(gt[k] - wf_stack[k]), "viridis")]
    for a, (title, img, cmap) in zip(axes[r], panels):
        a.imshow(img, cmap=cmap, vmin=0, vmax=1)
        a.set_title(f"{title}, z = {zs[k]:+.1f} µm", fontsize=8)
        a.set_xticks([])
        a.set_yticks([])
fig.tight_layout()
rec.figure(fig, "planes_and_error_maps", "Held-out filaments: the confocal scan, Deep-Z+ and Deep-Z outputs from "
           "the single wide-field image at z = 0, and |GT − output| maps (Fig. 5).")

# %%
row = int(np.argmax(gt[i0].sum(1)))
col = int(np.argmax(gt[i0].sum(0)))
px = ecfg.microscope.pixel_um
fig, axes = plt.subplots(2, 4, figsize=(15, 4.6))
stacks = [("wide-field scan", wf_stack), ("confocal scan (GT)", gt), ("Deep-Z+", v_plus), ("Deep-Z", v_plain)]
for c, (title, s) in enumerate(stacks):
    for r, (sec, lab) in enumerate(((s[:, row, :], "x"), (s[:, :, col], "y"))):
        axes[r, c].imshow(sec, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1,
                          extent=(0, eval_fov_px * px, zs[0], zs[-1]))
        axes[r, c].set_title(f"{title}: {lab}–z", fontsize=9)
        axes[r, c].set_xlabel(f"{lab} (µm)")
        axes[r, c].set_ylabel("z (µm)")
fig.tight_layout()
rec.figure(fig, "xz_yz_sections", "x–z and y–z sections: wide-field scan, confocal scan, and the Deep-Z+ / Deep-Z "
           "virtual stacks generated from one wide-field image (Fig. 5).")

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
for name, t in table.items():
    a1.plot(zs, t["ssim"], "o-", label=name)
    a2.plot(zs, t["rmse"], "o-", label=name)
a1.set_ylabel("SSIM vs confocal scan")
a2.set_ylabel("RMSE vs confocal scan")
for a in (a1, a2):
    a.set_xlabel("z (µm)")
    a.legend(fontsize=8)
fig.tight_layout()
rec.figure(fig, "ssim_rmse_vs_z", f"SSIM and RMSE against the confocal scan per plane, mean over {n_eval_samples} "
           "held-out samples (all in the units of the wide-field input).")
for name, t in table.items():
    key = name.replace(" ", "_").replace("+", "plus").replace("-", "").lower()
    rec.number(f"ssim_mean_{key}", float(t["ssim"].mean()))
    rec.number(f"rmse_mean_{key}", float(t["rmse"].mean()))
s_plus, s_plain, s_wf = (float(table[n]["ssim"].mean()) for n in ("Deep-Z+", "Deep-Z", "wide-field scan"))
r_plus, r_plain, r_wf = (float(table[n]["rmse"].mean()) for n in ("Deep-Z+", "Deep-Z", "wide-field scan"))
hib = {"SSIM": True, "RMSE": False}
plus_m, plain_m, wf_m = ({"SSIM": sv, "RMSE": rv} for sv, rv in ((s_plus, r_plus), (s_plain, r_plain), (s_wf, r_wf)))
n_items = n_eval_samples * len(zs)
rec.claim("Deep-Z+ output is closer to the confocal scan than the wide-field scan is, on both SSIM and RMSE",
          "Fig. 5", "Deep-Z+ matches confocal sections (higher SSIM, lower RMSE)",
          f"SSIM {s_plus:.3f} vs {s_wf:.3f}; RMSE {r_plus:.3f} vs {r_wf:.3f}",
          ev.beats_on_all_verdict(plus_m, wf_m, hib, n_items, min_items=2 * len(zs)),
          f"mean over the planes of {n_eval_samples} held-out samples")
rec.claim("Deep-Z+ is closer to the confocal scan than plain Deep-Z, on both SSIM and RMSE", "Fig. 5",
          "plain Deep-Z reproduces wide-field blur, Deep-Z+ confocal sections",
          f"SSIM {s_plus:.3f} vs {s_plain:.3f}; RMSE {r_plus:.3f} vs {r_plain:.3f}",
          ev.beats_on_all_verdict(plus_m, plain_m, hib, n_items, min_items=2 * len(zs)))
rec.number("notebook_seconds", time.time() - t_start, "s")
rec.save()
print(f"notebook ran in {time.time() - t_start:.1f} s")
rec
