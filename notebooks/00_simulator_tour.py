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
# # 00 · A tour of the microscope simulator
#
# Every later notebook (Deep-Z, W-Net, Recurrent-MZ, DeepSTORM3D) trains and tests on images made by
# `refocuslib`'s physical simulator, so this notebook checks that simulator against textbook optics first.
#
# **Model** (scalar Fourier optics; Goodman, *Introduction to Fourier Optics*, ch. 6): the pupil of an
# objective of numerical aperture NA passes spatial frequencies |f| ≤ NA/λ; an emitter at defocus z adds the
# phase 2π·z·√((n/λ)² − |f|²); a phase mask Φ in a conjugate pupil plane multiplies the pupil by exp(iΦ); the
# intensity PSF is |F⁻¹{P}|². Textbook checks:
#
# * in-focus lateral FWHM of the Airy disk ≈ **0.51 λ/NA** (Born & Wolf, *Principles of Optics*, §8.5);
# * wide-field depth of field ≈ **λ·n/NA²** (wave-optical term; Inoué & Spring, *Video Microscopy*), and the
#   on-axis intensity of a high-NA PSF falls to half at ≈ 0.886·λ/(n − √(n² − NA²)) total width;
# * a confocal PSF with a 1 Airy-unit pinhole, PSF_ex · (PSF_em ⊛ pinhole), is axially narrower than the
#   wide-field PSF (Wilson & Sheppard, *Theory and Practice of Scanning Optical Microscopy*) — the reason W-Net
#   (Wang et al.) uses confocal stacks as targets;
# * engineered PSFs encode depth in shape: the **double helix** (Pavani et al., PNAS 106, 2995 (2009); zone-mask
#   form after Prasad, Opt. Lett. 38, 585 (2013)) rotates with z, the **Tetrapod** (Shechtman et al., PRL 113,
#   133902 (2014); Nano Lett. 15, 4194 (2015)) spreads into lobes over several µm — DeepSTORM3D's PSF (Nehme et
#   al., Nat. Methods 17, 734 (2020)).
#
# Deep-Z (Wu et al., Nat. Methods 16, 1323 (2019)) refocuses with a *digital propagation matrix* (DPM); its
# gallery closes the tour, followed by a simulated bead z-stack, the real DeepSTORM3D Tetrapod mask and an
# interactive PSF explorer.

# %% tags=["parameters"]
# CI-scale defaults; notebooks/params/{ci,full}.yaml override them when run by `refocuslib reproduce`.
profile = "ci"
results_dir = "results/ci/00_simulator_tour"
seed = 0
device = "cpu"
n_pixels = 48  # lateral PSF field (camera pixels) of the 20x panels
n_pixels_oil = 64  # lateral PSF field of the 63x/1.4 panels (0.1 µm pixels)
n_pixels_tetrapod = 64  # lateral PSF field of the Tetrapod panels (0.11 µm pixels)
z_step_um = 0.1  # axial step of the 63x through-focus stacks
z_half_range_um = 1.5  # 63x stacks span ±this
n_montage = 7  # x–y planes per row of the montage
bead_fov_px = 96  # simulated bead stack: field in camera pixels
n_beads = 10
bead_z_step_um = 0.5
bead_z_half_range_um = 5.0
bead_photons = 3000.0
background_photons = 10.0
widget_pixels = 48
data_dir = "data/deepstorm3d"  # the DeepSTORM3D release's masks, shipped with their source and licence
tetrapod_pupil_radius_px = 48.3  # printed mask, in mask pixels (data README: f NA / M / p)
use_shipped_checkpoints = True  # every notebook takes it; this one trains nothing

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from refocuslib import dpm, imaging, metrics, optics, samples, widgets
from refocuslib.notebook import start_notebook
from refocuslib.provenance import repo_root

rng = np.random.default_rng(seed)
params = dict(n_pixels=n_pixels, n_pixels_oil=n_pixels_oil, n_pixels_tetrapod=n_pixels_tetrapod,
              z_step_um=z_step_um, z_half_range_um=z_half_range_um, n_montage=n_montage, bead_fov_px=bead_fov_px,
              n_beads=n_beads, bead_z_step_um=bead_z_step_um, bead_z_half_range_um=bead_z_half_range_um,
              bead_photons=bead_photons, background_photons=background_photons, widget_pixels=widget_pixels,
              data_dir=data_dir, tetrapod_pupil_radius_px=tetrapod_pupil_radius_px)
rec, device = start_notebook(results_dir, profile, seed, device=device,
                             use_shipped_checkpoints=use_shipped_checkpoints, **params)
rec

# %% [markdown]
# ## 1 · PSFs through focus
#
# Five microscopes of the four papers: Deep-Z's 20×/0.75 air objective (0.325 µm camera pixels, coarser than
# Nyquist, so each pixel integrates the intensity), a 63×/1.4 oil objective in wide-field and confocal
# (excitation 0.488 µm, emission 0.52 µm, 1 AU pinhole), the same objective with a double-helix mask, and
# DeepSTORM3D's 100×/1.45 oil objective focusing 1.5 µm into water with a Tetrapod mask (z is then the depth
# above the coverslip, 0–4 µm). Sections are shown as √intensity, each normalised to its own maximum.

# %%
WF20 = optics.DEEPZ_20X
WF63 = optics.OIL_63X
CONF63 = optics.OIL_63X.replace(modality="confocal", excitation_um=0.488, wavelength_um=0.52, pinhole_au=1.0,
                                name="confocal 63x/1.4, 1 AU")
DH63 = optics.OIL_63X.replace(mask=optics.double_helix_mask(), name="double-helix 63x/1.4")
TP100 = optics.STORM_100X.replace(mask=optics.tetrapod_mask(), name="Tetrapod 100x/1.45")

z_oil = np.round(np.arange(-z_half_range_um, z_half_range_um + z_step_um / 2, z_step_um), 6)
z_20x = np.linspace(-4.0, 4.0, 4 * int(round(2 * z_half_range_um / z_step_um)) // 3 + 1)
z_tp = np.linspace(0.0, 4.0, len(z_oil))
panels = {  # label: (microscope, z values, lateral pixels)
    "wide-field 20x/0.75 (Deep-Z)": (WF20, z_20x, n_pixels),
    "wide-field 63x/1.4 oil": (WF63, z_oil, n_pixels_oil),
    "confocal 63x/1.4, 1 AU": (CONF63, z_oil, n_pixels_oil),
    "double-helix 63x/1.4": (DH63, z_oil, n_pixels_oil),
    "Tetrapod 100x/1.45 (DeepSTORM3D)": (TP100, z_tp, n_pixels_tetrapod),
}
stacks = {k: m.psf(z, n, device=device).cpu().numpy().astype(np.float64) for k, (m, z, n) in panels.items()}
{k: s.shape for k, s in stacks.items()}

# %%
fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4.2))
for ax, (label, (m, z, n)) in zip(axes, panels.items()):
    s = stacks[label]
    xz = s[:, n // 2, :]
    half = n * m.pixel_um / 2
    ax.imshow(np.sqrt(xz / xz.max()), cmap="magma", aspect="auto", origin="lower",
              extent=(-half, half, z[0], z[-1]))
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("x (µm)")
axes[0].set_ylabel("z (µm)")
fig.suptitle("x–z sections through the PSF centre (√intensity)")
fig.tight_layout()
rec.figure(fig, "psf_xz_sections", "x–z sections of the five PSFs (√intensity, each normalised to its maximum). "
           "Tetrapod: z is depth above the coverslip, nominal focus 1.5 µm into water.")

# %%
fig, axes = plt.subplots(len(panels), n_montage, figsize=(1.6 * n_montage, 1.75 * len(panels)))
for row, (label, (m, z, n)) in zip(axes, panels.items()):
    s = stacks[label]
    idx = np.linspace(0, len(z) - 1, n_montage).round().astype(int)
    for ax, i in zip(row, idx):
        ax.imshow(np.sqrt(s[i] / s[i].max()), cmap="magma")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"z = {z[i]:+.2f} µm", fontsize=7)
    row[0].set_ylabel(label.split(" (")[0], fontsize=7)
fig.suptitle("x–y planes through focus (√intensity, each plane normalised)")
fig.tight_layout()
rec.figure(fig, "psf_xy_montage", "x–y planes through focus; the double helix rotates, the Tetrapod splits into "
           "lobes whose orientation encodes depth.")

# %% [markdown]
# ## 2 · Resolution: lateral FWHM versus z, wide-field versus confocal
#
# Each plane of the 63×/1.4 stacks is measured with the bead rule of the papers (`metrics.lateral_fwhm_um`,
# Deep-Z Methods Eq. 6–7: threshold, crop, 2D Gaussian fit, FWHM = geometric mean of the two axes); far from
# focus the PSF becomes a ring that no Gaussian describes and the rule reports nothing. The in-focus value is
# compared with 0.51 λ/NA. The axial FWHM comes from
# the x–z Gaussian fit of `metrics.axial_fwhm_um` (Eq. 8–9). The shaded band is the depth of field λ·n/NA².
# A Gaussian fitted to a finely sampled Airy disk reads its width a few per cent below the true half-maximum
# width 0.51 λ/NA (best-fit σ ≈ 0.21 λ/NA, i.e. FWHM ≈ 0.49 λ/NA; Zhang, Zerubia & Olivo-Marin, Appl. Opt. 46,
# 1819 (2007)); pixels comparable to the FWHM widen it again, so the 20×/0.75 check uses the Gaussian-fit value.

# %%
fwhm_z = {}  # the bead rule per plane; NaN where it finds no single compact spot (ring-shaped defocused PSF)
for label in ("wide-field 63x/1.4 oil", "confocal 63x/1.4, 1 AU"):
    per_plane = [metrics.lateral_fwhm_um(plane, WF63.pixel_um) for plane in stacks[label]]
    fwhm_z[label] = np.array([f[0] if len(f) == 1 else np.nan for f in per_plane])
i0 = int(np.argmin(np.abs(z_oil)))
theory_lat = optics.lateral_fwhm_theory_um(WF63.na, WF63.wavelength_um)
dof = optics.depth_of_field_theory_um(WF63.na, WF63.wavelength_um, WF63.n_immersion)
axial_sinc = 0.886 * WF63.wavelength_um / (WF63.n_immersion - np.sqrt(WF63.n_immersion ** 2 - WF63.na ** 2))
lat_wf = float(np.mean(metrics.lateral_fwhm_um(stacks["wide-field 63x/1.4 oil"][i0], WF63.pixel_um)))
lat_conf = float(np.mean(metrics.lateral_fwhm_um(stacks["confocal 63x/1.4, 1 AU"][i0], WF63.pixel_um)))
ax_wf = float(np.mean(metrics.axial_fwhm_um(stacks["wide-field 63x/1.4 oil"], WF63.pixel_um, z_step_um)))
ax_conf = float(np.mean(metrics.axial_fwhm_um(stacks["confocal 63x/1.4, 1 AU"], WF63.pixel_um, z_step_um)))

# 20x/0.75: at its 0.325 µm camera pixels (pixel-integrated) and sampled finely (0.1 µm) for the Airy check
WF20_fine = WF20.replace(pixel_um=0.1, name="20x/0.75 at 0.1 µm sampling")
theory_20 = optics.lateral_fwhm_theory_um(WF20.na, WF20.wavelength_um)
lat_20_cam = float(np.mean(metrics.lateral_fwhm_um(stacks["wide-field 20x/0.75 (Deep-Z)"][len(z_20x) // 2],
                                                   WF20.pixel_um)))
lat_20_fine = float(np.mean(metrics.lateral_fwhm_um(WF20_fine.psf([0.0], 64, device=device)[0].cpu().numpy(),
                                                    WF20_fine.pixel_um)))

fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
for label, fw in fwhm_z.items():
    a1.plot(z_oil, fw, "o-", ms=3, label=label)
a1.axhline(theory_lat, color="k", ls="--", lw=1, label=f"0.51 λ/NA = {theory_lat:.3f} µm")
a1.axvspan(-dof / 2, dof / 2, color="0.85", label=f"depth of field λn/NA² = {dof:.2f} µm")
a1.set_ylim(0, None)
a1.set_xlabel("z (µm)")
a1.set_ylabel("lateral FWHM (µm)")
a1.set_title("lateral FWHM versus defocus (63x/1.4 oil, λ = 0.52 µm)")
a1.legend(fontsize=8)
for label in fwhm_z:
    s = stacks[label]
    a2.plot(z_oil, s[:, n_pixels_oil // 2, n_pixels_oil // 2] / s[i0, n_pixels_oil // 2, n_pixels_oil // 2],
            label=label)
a2.axvspan(-dof / 2, dof / 2, color="0.85", label="λn/NA²")
a2.axhline(0.5, color="k", lw=0.5)
a2.set_xlabel("z (µm)")
a2.set_ylabel("on-axis intensity (normalised)")
a2.set_title(f"axial profile: FWHM wide-field {ax_wf:.2f} µm, confocal {ax_conf:.2f} µm")
a2.legend(fontsize=8)
fig.tight_layout()
rec.figure(fig, "fwhm_vs_z", "Left: lateral FWHM (bead rule, 2D Gaussian fit) versus z for wide-field and 1-AU confocal, "
           "with 0.51 λ/NA and the λn/NA² depth of field. Right: on-axis intensity through focus.")

# %%
rel = lat_wf / theory_lat - 1
rec.number("lateral_fwhm_widefield_63x_um", lat_wf, "µm")
rec.number("lateral_fwhm_theory_63x_um", theory_lat, "µm")
rec.number("lateral_fwhm_confocal_63x_um", lat_conf, "µm")
rec.number("lateral_fwhm_20x_fine_um", lat_20_fine, "µm")
rec.number("lateral_fwhm_20x_camera_pixels_um", lat_20_cam, "µm")
rec.number("lateral_fwhm_theory_20x_um", theory_20, "µm")
rec.number("axial_fwhm_widefield_63x_um", ax_wf, "µm")
rec.number("axial_fwhm_confocal_63x_um", ax_conf, "µm")
rec.number("axial_fwhm_sinc_theory_63x_um", axial_sinc, "µm")
rec.number("depth_of_field_theory_63x_um", dof, "µm")
rec.number("axial_confocal_over_widefield", ax_conf / ax_wf)
rec.claim("in-focus lateral FWHM ≈ 0.51 λ/NA (63×/1.4 oil, wide-field)", "textbook (Born & Wolf §8.5)",
          f"{theory_lat:.3f} µm", f"{lat_wf:.3f} µm ({100 * rel:+.1f} %)", abs(rel) < 0.05, "within 5 %")
gauss_airy_20 = 2 * np.sqrt(2 * np.log(2)) * 0.21 * WF20.wavelength_um / WF20.na
rel20 = lat_20_fine / gauss_airy_20 - 1
rec.number("lateral_fwhm_gaussian_airy_theory_20x_um", gauss_airy_20, "µm")
rec.claim("Gaussian-fit FWHM of the Airy disk ≈ 2.355 · 0.21 λ/NA (20×/0.75 air, Deep-Z objective, "
          "fine sampling)", "Zhang et al., Appl. Opt. 46, 1819 (2007)", f"{gauss_airy_20:.3f} µm",
          f"{lat_20_fine:.3f} µm ({100 * rel20:+.1f} %)", abs(rel20) < 0.05,
          f"within 5 %; 0.51 λ/NA = {theory_20:.3f} µm is the Airy core's true half-maximum width, which a "
          f"Gaussian fitted over core and first ring reads low; the 0.325 µm camera pixels widen it to "
          f"{lat_20_cam:.3f} µm")
rel_ax = ax_wf / axial_sinc - 1
rec.claim("wide-field axial FWHM ≈ 0.886 λ/(n − √(n² − NA²)) (63×/1.4 oil)", "textbook (high-NA depth of field)",
          f"{axial_sinc:.3f} µm (λn/NA² = {dof:.3f} µm)", f"{ax_wf:.3f} µm ({100 * rel_ax:+.1f} %)",
          abs(rel_ax) < 0.10, "within 10 % (Gaussian x–z fit of a sinc²-like profile)")
rec.claim("1-AU confocal PSF is axially narrower than wide-field (why W-Net uses confocal targets)",
          "W-Net; Wilson & Sheppard", "confocal < wide-field", f"{ax_conf:.3f} vs {ax_wf:.3f} µm "
          f"(× {ax_conf / ax_wf:.2f})", ax_conf < ax_wf)
print(f"lateral FWHM 63x wide-field {lat_wf:.3f} µm (0.51λ/NA = {theory_lat:.3f}), confocal {lat_conf:.3f} µm")
print(f"axial FWHM 63x wide-field {ax_wf:.3f} µm (sinc theory {axial_sinc:.3f}, λn/NA² {dof:.3f}), "
      f"confocal {ax_conf:.3f} µm")
print(f"20x/0.75: {lat_20_fine:.3f} µm at 0.1 µm sampling, {lat_20_cam:.3f} µm at 0.325 µm pixels "
      f"(0.51λ/NA = {theory_20:.3f})")

# %% [markdown]
# ## 3 · Digital propagation matrices (Deep-Z)
#
# A DPM holds, per pixel, the axial distance (µm) from the acquired plane to the surface to refocus onto: a
# uniform DPM refocuses to a plane, a tilted or curved one to a 3D surface (Deep-Z Figs. 3–4 and S7). The
# network sees DPM/10.

# %%
shape = (bead_fov_px, bead_fov_px)
px = WF20.pixel_um
gallery = {
    "uniform, +2 µm": dpm.uniform(shape, 2.0),
    "tilted plane, 1.5°": dpm.plane(shape, px, tilt_deg=1.5),
    f"cylinder, Ø {2 * bead_fov_px * px:.0f} µm": dpm.cylinder(shape, px, diameter_um=2 * bead_fov_px * px),
    "sinusoid, period 32 px, ±4 µm": dpm.sinusoid(shape, period_px=32, z_min_um=-4.0, z_max_um=4.0),
}
fig, axes = plt.subplots(1, len(gallery), figsize=(3.6 * len(gallery), 3.4))
half = bead_fov_px * px / 2
for ax, (label, d) in zip(axes, gallery.items()):
    im = ax.imshow(d, cmap="coolwarm", extent=(-half, half, half, -half))
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("x (µm)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="refocus distance (µm)")
fig.tight_layout()
rec.figure(fig, "dpm_gallery", "DPM gallery: uniform, tilted plane (1.5°), cylinder and sinusoid (µm).")

# %% [markdown]
# ## 4 · A simulated bead z-stack
#
# Beads on a coverslip (`samples.beads_on_surface`), imaged through focus with the Deep-Z objective
# (`imaging.render_points`, each bead's exact sub-pixel position entering as a pupil phase ramp), then the
# camera: gain·Poisson(QE·(signal + background)) + read noise + baseline (`imaging.camera`). The same FWHM
# rules as above measure the noisy beads.

# %%
fov_um = (bead_fov_px * px, bead_fov_px * px)
beads = samples.beads_on_surface(rng, n_beads, fov_um, z_um=0.0, photons=bead_photons, min_separation_um=4.0,
                                 margin_um=3.0)
focal = np.round(np.arange(-bead_z_half_range_um, bead_z_half_range_um + bead_z_step_um / 2, bead_z_step_um), 6)
photons = imaging.render_points(beads, WF20, focal, shape, device=device)
counts = imaging.camera(photons, rng=rng, background_photons=background_photons).cpu().numpy().astype(np.float64)
stack = counts - np.median(counts)  # remove baseline + background for display and fits
k0 = int(np.argmin(np.abs(focal)))
bead_lat = metrics.lateral_fwhm_um(stack[k0], px)
bead_ax = metrics.axial_fwhm_um(stack, px, bead_z_step_um)

fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1.3]})
a1.imshow(counts[k0], cmap="gray", extent=(0, fov_um[0], fov_um[1], 0))
a1.plot(beads.xyz_um[:, 0], beads.xyz_um[:, 1], "r+", ms=6, label="true positions")
a1.set_title(f"in focus (z = {focal[k0]:+.1f} µm), camera ADU")
a1.set_xlabel("x (µm)")
a1.set_ylabel("y (µm)")
a1.legend(fontsize=8, loc="lower right")
a2.imshow(np.sqrt(np.clip(stack.max(axis=1), 0, None)), cmap="magma", aspect="auto", origin="lower",
          extent=(0, fov_um[0], focal[0], focal[-1]))
a2.set_title("x–z maximum-intensity projection (√counts)")
a2.set_xlabel("x (µm)")
a2.set_ylabel("focal plane z (µm)")
fig.tight_layout()
rec.figure(fig, "bead_stack", f"Simulated bead z-stack ({n_beads} beads, 20x/0.75, {len(focal)} planes at "
           f"{bead_z_step_um} µm) with camera noise; right: x–z MIP.")
rec.number("bead_lateral_fwhm_um", np.median(bead_lat) if len(bead_lat) else np.nan, "µm")
rec.number("bead_axial_fwhm_um", np.median(bead_ax) if len(bead_ax) else np.nan, "µm")
rec.number("beads_measured_lateral", len(bead_lat))
rec.claim("noisy simulated beads give the PSF's lateral FWHM (20×/0.75, camera pixels)", "Deep-Z Fig. 2 (method)",
          f"PSF {lat_20_cam:.3f} µm", f"{np.median(bead_lat):.3f} µm (median of {len(bead_lat)})",
          bool(len(bead_lat)) and abs(np.median(bead_lat) / lat_20_cam - 1) < 0.10, "within 10 %")
print(f"{len(bead_lat)} beads: lateral FWHM median {np.median(bead_lat):.3f} µm, "
      f"axial FWHM median {np.median(bead_ax):.3f} µm")

# %% [markdown]
# ## 5 · Real data: the printed Tetrapod mask of DeepSTORM3D
#
# DeepSTORM3D's public release ships the phase of the fused-silica Tetrapod mask used for its STORM data
# (`mask_tetrapod_printed.mat`, 203×203 phase in rad, MIT licence; Nehme et al. 2020). In the 4f relay
# (f = 10 cm, 30 µm mask pixels, 100×/1.45) the pupil radius is f·NA/M / p ≈ 48 mask pixels
# (`data/deepstorm3d/README.md`). `optics.ArrayMask` resamples it onto the simulator's pupil; its PSF through depth
# is compared with the released Tetrapod mask model (its exact Zernike expansion, `optics.TETRAPOD_ZERNIKE_RAD`).

# %%
mask_file = (Path(data_dir) if Path(data_dir).is_absolute() else repo_root() / data_dir) / "masks" / \
    "mask_tetrapod_printed.mat"
if not mask_file.is_file():
    print(f"skipped: {mask_file} not found (set data_dir to the folder holding masks/)")
else:
    import scipy.io

    phase = scipy.io.loadmat(str(mask_file))["mask_tetra_reut"]
    printed = TP100.replace(mask=optics.ArrayMask(phase, pupil_radius_px=tetrapod_pupil_radius_px),
                            name="printed Tetrapod")
    z_show = np.linspace(0.0, 4.0, n_montage)
    real = printed.psf(z_show, n_pixels_tetrapod, device=device).cpu().numpy().astype(np.float64)
    model = TP100.psf(z_show, n_pixels_tetrapod, device=device).cpu().numpy().astype(np.float64)
    similarity = [metrics.pearson(a, b) for a, b in zip(real, model)]
    fig, axes = plt.subplots(2, n_montage + 1, figsize=(1.7 * (n_montage + 1), 3.9))
    c, r = phase.shape[0] // 2, int(round(tetrapod_pupil_radius_px))
    axes[0, 0].imshow(phase[c - r:c + r + 1, c - r:c + r + 1], cmap="twilight")
    axes[0, 0].set_title("printed mask (rad)", fontsize=7)
    model_phase = optics.ArrayMask.from_function(optics.tetrapod_mask(), size=2 * r + 1).phase.numpy()
    axes[1, 0].imshow(np.angle(np.exp(1j * model_phase)), cmap="twilight")
    axes[1, 0].set_title("released model (Zernike), wrapped", fontsize=7)
    for j, zz in enumerate(z_show):
        axes[0, j + 1].imshow(np.sqrt(real[j] / real[j].max()), cmap="magma")
        axes[0, j + 1].set_title(f"depth {zz:.2f} µm", fontsize=7)
        axes[1, j + 1].imshow(np.sqrt(model[j] / model[j].max()), cmap="magma")
        axes[1, j + 1].set_title(f"r = {similarity[j]:.2f}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 1].set_ylabel("printed", fontsize=8)
    axes[1, 1].set_ylabel("model", fontsize=8)
    fig.suptitle("DeepSTORM3D Tetrapod: PSF of the printed mask (top) and of the model (bottom); "
                 "r = Pearson correlation", fontsize=9)
    fig.tight_layout()
    rec.figure(fig, "tetrapod_real_mask", "The fabricated DeepSTORM3D Tetrapod mask (real data, Nehme et al. "
               "2020) through 0–4 µm depth versus the released Tetrapod mask model.")
    rec.number("tetrapod_printed_vs_model_pearson_mean", float(np.mean(similarity)))
    print("Pearson r (printed vs model) per depth:", np.round(similarity, 2))

# %% [markdown]
# ## 6 · Explore
#
# Slide z (and choose the optics) to see the PSF plane — `refocuslib.widgets.psf_explorer` calls the pure
# function `widgets.render_psf_plane(microscope, z_um, n_pixels)`. (Interactive only in a live kernel.)

# %%
explorer = widgets.psf_explorer({"wide-field 63x/1.4": WF63, "double-helix 63x/1.4": DH63,
                                 "confocal 63x/1.4": CONF63, "Tetrapod 100x/1.45 (depth)": TP100,
                                 "wide-field 20x/0.75": WF20},
                                z_range_um=(-2.0, 4.0), n_pixels=widget_pixels)
explorer

# %%
rec.save()
print(f"saved {rec.path}: {len(rec.figures)} figures, {len(rec.numbers)} numbers, {len(rec.claims)} claims")
