"""Benchmarks: ``python -m refocuslib.bench NAME [--n N] [--seed S] [--json out.json]``.

``BENCHMARKS`` maps a name to a callable ``f(n=None, seed=0) -> dict[str, float]`` (``n=None`` means the
benchmark's own default size). Add one with the :func:`register` decorator; ``all`` runs every registered
benchmark. Each result is printed and, with ``--json``, written as ``{name: result}``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Callable

import numpy as np

BENCHMARKS: dict[str, Callable[..., dict]] = {}


def register(name: str):
    """Decorator adding ``f(n=None, seed=0) -> dict`` to :data:`BENCHMARKS` under ``name``."""
    def deco(f):
        if name == "all":
            raise ValueError("name: 'all' is reserved (runs every benchmark)")
        BENCHMARKS[name] = f
        return f
    return deco


def _best_time(f, repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls of ``f()`` (seconds)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def _gauss_flat(xy, A, x0, y0, sx, sy, B):
    """Same model as :func:`refocuslib.metrics.fit_gaussian_2d`, flattened for ``curve_fit``."""
    return A * np.exp(-((xy[0] - x0) ** 2 / (2 * sx * sx) + (xy[1] - y0) ** 2 / (2 * sy * sy))) + B


def _gauss_flat_jac(xy, A, x0, y0, sx, sy, B):
    """Analytic Jacobian (h·w, 6) of :func:`_gauss_flat`."""
    dx, dy = xy[0] - x0, xy[1] - y0
    g = np.exp(-(dx * dx / (2 * sx * sx) + dy * dy / (2 * sy * sy)))
    Ag = A * g
    return np.stack([g, Ag * dx / sx ** 2, Ag * dy / sy ** 2, Ag * dx * dx / sx ** 3, Ag * dy * dy / sy ** 3,
                     np.ones_like(g)], axis=1)


def _curve_fit_all(patches: np.ndarray, p0: np.ndarray, analytic_jac: bool = False) -> np.ndarray:
    """Fit each patch with ``scipy.optimize.curve_fit`` (default 'lm', finite-difference Jacobian unless
    ``analytic_jac``); (N, 6) params, NaN on failure."""
    from scipy.optimize import curve_fit

    n, h, w = patches.shape
    yy, xx = np.mgrid[0:h, 0:w]
    xy = np.vstack([xx.ravel(), yy.ravel()]).astype(np.float64)
    jac = _gauss_flat_jac if analytic_jac else None
    out = np.full((n, 6), np.nan)
    for i in range(n):
        try:
            out[i] = curve_fit(_gauss_flat, xy, patches[i].ravel(), p0=p0[i], jac=jac)[0]
        except (RuntimeError, ValueError):
            pass
    return out


def make_spots(n: int, size: int = 15, seed: int = 0, photons=(200.0, 500.0), offset: float = 10.0,
               sigma_px=(1.0, 3.0)):
    """``n`` noisy 2D Gaussian spots (n, size, size) and their true params (n, 6) = (A, x0, y0, σx, σy, B).

    Peak ``A`` uniform in ``photons``, σx, σy uniform in ``sigma_px``, centre within ±1.5 px of the patch
    centre, background ``offset``; Poisson noise on the whole image.
    """
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    true = np.stack([rng.uniform(*photons, n), c + rng.uniform(-1.5, 1.5, n), c + rng.uniform(-1.5, 1.5, n),
                     rng.uniform(*sigma_px, n), rng.uniform(*sigma_px, n), np.full(n, float(offset))], axis=1)
    from refocuslib.metrics import gaussian_2d_model

    clean = gaussian_2d_model(true, (size, size))
    return rng.poisson(clean).astype(np.float64), true


@register("fwhm")
def bench_fwhm(n: int | None = None, seed: int = 0, repeats: int = 3) -> dict:
    """Batched LM Gaussian fit (:func:`refocuslib.metrics.fit_gaussian_2d`) vs ``curve_fit`` one by one.

    Same spots, same start values (moments), same least-squares objective, one process. Reports fits/s
    of both (best of ``repeats`` runs), their ratio (``speed_ratio`` = batched / curve_fit fits per
    second, curve_fit with its default finite-difference Jacobian), the ratio against curve_fit given the
    analytic Jacobian (``speed_ratio_vs_analytic_jac``, a stronger baseline), and the largest relative σ
    difference on spots both fitted successfully.
    """
    from refocuslib.metrics import _initial_guess, fit_gaussian_2d

    n = 2000 if n is None else int(n)
    size = 15
    patches, true = make_spots(n, size=size, seed=seed)
    fit_gaussian_2d(patches[:4])            # warm-up (lazy imports)
    _curve_fit_all(patches[:4], _initial_guess(patches[:4]))

    t_batched = _best_time(lambda: fit_gaussian_2d(patches), repeats)
    fit = fit_gaussian_2d(patches)
    res = {}
    t_cf = _best_time(lambda: res.__setitem__("p", _curve_fit_all(patches, _initial_guess(patches))), repeats)
    cf = res["p"]
    t_cfj = _best_time(lambda: _curve_fit_all(patches, _initial_guess(patches), analytic_jac=True), repeats)

    sx_c, sy_c = np.abs(cf[:, 3]), np.abs(cf[:, 4])
    with np.errstate(invalid="ignore"):
        ok_c = (np.all(np.isfinite(cf), axis=1) & (cf[:, 0] > 0) & (sx_c > 0) & (sx_c < size) & (sy_c > 0)
                & (sy_c < size) & (np.abs(cf[:, 1] - (size - 1) / 2) <= size / 2)
                & (np.abs(cf[:, 2] - (size - 1) / 2) <= size / 2))
    both = ok_c & fit.success
    if both.any():
        rel = np.concatenate([np.abs(fit.sigma_x[both] - sx_c[both]) / sx_c[both],
                              np.abs(fit.sigma_y[both] - sy_c[both]) / sy_c[both]])
        max_rel = float(rel.max())
    else:
        max_rel = math.nan
    ok = fit.success
    err_true = np.concatenate([np.abs(fit.sigma_x[ok] / true[ok, 3] - 1),
                               np.abs(fit.sigma_y[ok] / true[ok, 4] - 1)])
    return {
        "n": n,
        "batched_s": t_batched,
        "curve_fit_s": t_cf,
        "batched_fits_per_s": n / t_batched,
        "curve_fit_fits_per_s": n / t_cf,
        "speed_ratio": t_cf / t_batched,
        "curve_fit_analytic_jac_fits_per_s": n / t_cfj,
        "speed_ratio_vs_analytic_jac": t_cfj / t_batched,
        "max_rel_sigma_diff": max_rel,
        "n_compared": int(both.sum()),
        "batched_success_rate": float(fit.success.mean()),
        "curve_fit_success_rate": float(ok_c.mean()),
        "batched_mean_iterations": float(fit.n_iter.mean()),
        "median_rel_sigma_error_vs_truth": float(np.median(err_true)) if err_true.size else math.nan,
    }


@register("simulator")
def bench_simulator(n: int | None = None, seed: int = 0, repeats: int = 2) -> dict:
    """Simulator throughput at Deep-Z optics (20×/0.75, 0.325 µm): paired training planes per second by FFT
    volume imaging (``imaging.image_volume``, the path the datasets use), against the exact per-emitter point
    renderer (``imaging.render_points``) on the same beads in the same process; and PSF planes per second."""
    import torch

    from refocuslib import imaging, optics, samples

    size = int(n or 128)
    mic = optics.DEEPZ_20X
    nz, dz = 21, 0.5
    fov = size * mic.pixel_um
    beads = samples.beads_3d(seed, 40, (fov, fov), (-5.0, 5.0), min_separation_um=1.0)
    volume = samples.points_to_volume(beads, (nz, size, size), (dz, mic.pixel_um), z0_um=-5.0)
    psf_stack = imaging.psf_stack_for_volume(mic, nz, dz, 2 * size + 1)
    pair = [nz // 2 - 4, nz // 2]  # one input plane and one target plane
    t_fft = _best_time(lambda: imaging.image_volume(volume, mic, dz, focal_indices=pair, psf_stack=psf_stack),
                       repeats)
    planes_um = [-2.0, 0.0]
    t_points = _best_time(lambda: imaging.render_points(beads, mic, planes_um, (size, size)), 1)
    t_psf = _best_time(lambda: optics.widefield_psf(np.linspace(-5, 5, 64), 64, mic.pixel_um, mic.na,
                                                    mic.wavelength_um, mic.n_immersion), repeats)
    return {"image_px": size, "beads": len(beads), "pairs_per_s_fft_volume": 1.0 / t_fft,
            "pairs_per_s_exact_points": 1.0 / t_points, "ratio_fft_over_points": t_points / t_fft,
            "psf_planes_per_s_64px": 64 / t_psf, "torch_threads": torch.get_num_threads()}


@register("deepz")
def bench_deepz(n: int | None = None, seed: int = 0, repeats: int = 2, batch: int = 2,
                models=((1.0, 5), (0.25, 4))) -> dict:
    """Deep-Z generator inference time per image (Wu et al. 2019) at 512² and 1024² (``n``: one size instead),
    for the paper-width generator (width 1, 5 levels) and the CI-width one (0.25, 4 levels).

    Baseline, in the same process: float32 eager, batch 1, autograd on (a plain ``model(x)``). Fast path (what
    :func:`refocuslib.inference.refocus_stack` does, plus channels_last): ``torch.inference_mode``,
    channels_last memory format, ``batch`` images (here DPM planes) per forward. Reports seconds per image
    (best of ``repeats``), their ratio and the largest difference between the two outputs; also oneDNN bf16
    autocast, and :func:`refocuslib.inference.refocus` itself (the path users run, default tiling).
    """
    import torch

    from refocuslib.models.deepz import DeepZGenerator

    sizes = (512, 1024) if n is None else (int(n),)
    out: dict = {"threads": torch.get_num_threads(), "batch": batch}
    for width, levels in models:
        torch.manual_seed(seed)
        model = DeepZGenerator(width, levels=levels).eval()
        tag = f"w{width:g}_l{levels}"
        with torch.inference_mode():  # warm-up (lazy initialisation, allocator)
            model(torch.zeros(1, 2, 64, 64))
        for size in sizes:
            g = torch.Generator().manual_seed(seed)
            x = torch.rand(batch, 2, size, size, generator=g)
            reps = 1 if (width >= 1.0 and size >= 1024) else repeats
            res = {}

            def baseline():
                res["base"] = model(x[:1])

            def fast():
                with torch.inference_mode():
                    res["fast"] = model(x.contiguous(memory_format=torch.channels_last))

            t_base = _best_time(baseline, reps)
            res.pop("base")
            fast_model = model.to(memory_format=torch.channels_last)
            t_fast = _best_time(fast, reps) / batch
            model = fast_model.to(memory_format=torch.contiguous_format)
            with torch.no_grad():
                ref = model(x[:1])
            out[f"{tag}_{size}_baseline_s_per_image"] = t_base
            out[f"{tag}_{size}_fast_s_per_image"] = t_fast
            out[f"{tag}_{size}_speedup"] = t_base / t_fast
            out[f"{tag}_{size}_max_abs_diff"] = float((res["fast"][:1].float() - ref).abs().max())
            # oneDNN bfloat16 autocast (CPUs with AVX-512 BF16 / AMX run it natively; others emulate it slowly)
            def bf16():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    res["bf16"] = model(x[:1])
            try:
                t_bf16 = _best_time(bf16, reps)
                out[f"{tag}_{size}_bf16_speedup"] = t_base / t_bf16
                out[f"{tag}_{size}_bf16_max_abs_diff"] = float((res["bf16"].float() - ref).abs().max())
            except RuntimeError as err:  # no bf16 kernels on this CPU: say so, keep float32
                out[f"{tag}_{size}_bf16_error"] = str(err)[:120]
            # the library's own path (what `refocuslib refocus` runs): normalised image in, default tiling
            from refocuslib.inference import refocus
            img = x[0, 0].numpy()
            t_lib = _best_time(lambda: refocus(model, img, 1.0, normalize=False), reps)
            out[f"{tag}_{size}_library_refocus_s_per_image"] = t_lib
            out[f"{tag}_{size}_library_refocus_speedup"] = t_base / t_lib
        out[f"{tag}_parameters"] = sum(p.numel() for p in model.parameters())
    out["cpu_has_bf16"] = _cpu_flag("avx512_bf16") or _cpu_flag("amx_bf16")
    return out


def _cpu_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists ``flag`` (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return any(flag in line.split() for line in fh if line.startswith("flags"))
    except OSError:
        return False


@register("recurrent_mz")
def bench_recurrent_mz(n: int | None = None, seed: int = 0, size: int = 256, n_inputs: int = 3,
                       batch_planes: int = 4, rmz=(1.0, 4), deepz=(1.0, 5)) -> dict:
    """Volume reconstruction time of Recurrent-MZ (Huang et al. 2021) for ``n`` (default 101) output planes of
    ``size``² from ``n_inputs`` planes, against Deep-Z refocusing the nearest input plane to every output plane,
    in the same process. Paper-width networks by default (``rmz``/``deepz`` = (width, levels)), untrained
    weights (timing does not depend on them), ``torch.no_grad``, ``batch_planes`` output planes per forward.
    """
    import torch

    from refocuslib.models.deepz import DeepZGenerator
    from refocuslib.models.recurrent_mz import RecurrentMZ
    from refocuslib.tasks.recurrent_mz import deepz_nearest_volume, recurrent_mz_volume

    nz = 101 if n is None else int(n)
    torch.manual_seed(seed)
    rmz_net = RecurrentMZ(width=rmz[0], levels=rmz[1]).eval()
    dz_net = DeepZGenerator(width=deepz[0], levels=deepz[1]).eval()
    rng = np.random.default_rng(seed)
    images = rng.random((n_inputs, size, size), dtype=np.float32)
    z_out = np.arange(nz) * 0.1
    z_in = np.linspace(z_out[0], z_out[-1], n_inputs + 2)[1:-1]
    recurrent_mz_volume(rmz_net, images, z_in, z_out[:1], batch_planes=1)  # warm-up
    deepz_nearest_volume(dz_net, images, z_in, z_out[:1], batch_planes=1)
    res = {}
    t_rmz = _best_time(lambda: res.__setitem__("rmz", recurrent_mz_volume(rmz_net, images, z_in, z_out,
                                                                           batch_planes=batch_planes)), 1)
    t_dz = _best_time(lambda: res.__setitem__("dz", deepz_nearest_volume(dz_net, images, z_in, z_out,
                                                                         batch_planes=batch_planes)), 1)
    return {"volume": f"{nz}x{size}x{size}", "n_inputs": n_inputs, "threads": torch.get_num_threads(),
            "recurrent_mz_s": t_rmz, "deepz_nearest_s": t_dz, "recurrent_mz_planes_per_s": nz / t_rmz,
            "deepz_planes_per_s": nz / t_dz, "ratio_rmz_over_deepz": t_rmz / t_dz,
            "recurrent_mz_parameters": sum(p.numel() for p in rmz_net.parameters()),
            "deepz_parameters": sum(p.numel() for p in dz_net.parameters()),
            "output_shape_ok": bool(res["rmz"].shape == res["dz"].shape == (nz, size, size))}


@register("deepstorm3d")
def bench_deepstorm3d(n: int | None = None, seed: int = 0, density: float = 45.0, frame_yx=(750, 1250),
                      models=((1.0, 4, 121), (0.25, 1, 20)), repeats: int = 2) -> dict:
    """DeepSTORM3D (Nehme et al. 2020) inference rate on 1250×750-pixel frames: CNN + post-processing (threshold,
    3D local maxima, centroid) against matching pursuit (the paper's baseline) in the same process.

    ``models``: (width, lateral upsampling, axial slices) — the paper's network (64 channels, ×4, 121 slices:
    a 121 × 3000 × 5000 grid per frame) and the CI one. On a CPU such a grid (7 GB) does not fit, so an
    ``n`` × ``n`` tile (default 64 px on a CPU, the whole frame on a GPU) of a simulated Tetrapod frame at
    ``density`` emitters per 13 × 13 µm is timed and the rate scaled linearly by area (both methods work locally,
    per pixel / per emitter). Untrained CNN weights: the time does not depend on them (post-processing included).
    """
    import time

    import torch

    from refocuslib import smlm
    from refocuslib.datasets.deepstorm3d import EmitterSampler, SimulatedFrames, emitters_for_density
    from refocuslib.models.deepstorm3d import LocalizationCNN, PhysicalLayer, VoxelGrid
    from refocuslib.tasks.deepstorm3d import localize

    device = "cuda" if torch.cuda.is_available() else "cpu"
    fh, fw = (int(v) for v in frame_yx)
    tile = (fh, fw) if (n is None and device == "cuda") else ((int(n or 64),) * 2)
    mic = smlm.STORM_OPTICS
    phys = PhysicalLayer(mic, tile, mask=smlm.real_mask("tetrapod_printed")).to(device)
    n_em = max(1, emitters_for_density(density, (tile[1] * mic.pixel_um, tile[0] * mic.pixel_um)))
    smp = EmitterSampler(tile, mic.pixel_um, smlm.STORM_Z_RANGE_UM, n_emitters=(n_em, n_em))
    frame = SimulatedFrames(phys, VoxelGrid(tile, mic.pixel_um, 1, smlm.STORM_Z_RANGE_UM, 4), smp, 1,
                            seed=seed)[0]["frame"][None]
    scale = (fh * fw) / (tile[0] * tile[1])
    out: dict = {"device": device, "threads": torch.get_num_threads(), "tile_px": f"{tile[0]}x{tile[1]}",
                 "area_scale": scale, "emitters_per_tile": n_em}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for width, up, n_z in models:
        torch.manual_seed(seed)
        cnn = LocalizationCNN(n_z, width=width, upsampling=up).to(device).eval()
        grid = VoxelGrid(tile, mic.pixel_um, up, smlm.STORM_Z_RANGE_UM, n_z)
        x = frame.to(device)
        localize(cnn, x, grid, threshold=0.2 * cnn.max_value)  # warm-up
        sync()
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            localize(cnn, x, grid, threshold=0.2 * cnn.max_value)
            sync()
            best = min(best, time.perf_counter() - t0)
        tag = f"cnn_w{width:g}_x{up}_z{n_z}"
        out[f"{tag}_s_per_tile"] = best
        out[f"{tag}_frames_per_s_1250x750"] = 1.0 / (best * scale)
        out[f"{tag}_voxels_per_frame"] = n_z * fh * up * fw * up
    t0 = time.perf_counter()
    res = smlm.matching_pursuit(phys.counts_to_photons(frame[0, 0]), phys, min_photons=6000.0,
                                z_range_um=smlm.STORM_Z_RANGE_UM, max_emitters=3 * n_em + 10)
    t_mp = time.perf_counter() - t0
    out["mp_s_per_tile"] = t_mp
    out["mp_frames_per_s_1250x750"] = 1.0 / (t_mp * scale)
    out["mp_emitters_found"] = len(res.xyz_um)
    for width, up, n_z in models:
        tag = f"cnn_w{width:g}_x{up}_z{n_z}"
        out[f"{tag}_speedup_over_mp"] = t_mp / out[f"{tag}_s_per_tile"]
    return out


@register("deepstorm3d_real")
def bench_deepstorm3d_real(n: int | None = None, seed: int = 0, repeats: int = 3, recipe: str = "ds3d_tetrapod",
                           mp: bool = True) -> dict:
    """The shipped DeepSTORM3D model on one whole real Tetrapod STORM frame (297 × 391 px, paper Fig. 3;
    ``n``: the frame index, default 0), post-processing included, on this machine's CPU. Times each stage (best
    of ``repeats``): camera counts → model counts (the conversion of :func:`refocuslib.smlm.to_model_frames`),
    CNN forward (inference mode), post-processing (threshold, 3D
    local maxima, centroids: ``VoxelGrid.to_points``), and the whole ``task.localize``; the baseline in the same
    process is matching pursuit (the paper's) on the same frame (one run; ``mp=False`` skips it)."""
    import time

    import torch

    from refocuslib import recipes, smlm

    if not recipes.shipped_path(recipes.recipe(recipe)).is_file():  # a benchmark never trains
        raise ValueError(f"recipe: {recipe!r} has no shipped model in data/checkpoints; benchmark a shipped one")
    task, _ = recipes.train_cached(recipe, "results/bench", progress=False, use_shipped=True)
    k = int(n or 0)
    frames = smlm.load_storm_frames()
    frame = frames[k]
    model_frames, ptc, e_per_adu = smlm.to_model_frames(task, frames)  # as notebook 12 converts them
    x = model_frames[k][None, None]
    out: dict = {"threads": torch.get_num_threads(), "frame_px": f"{frame.shape[0]}x{frame.shape[1]}",
                 "recipe": recipe}
    cnn, grid = task.cnn.eval(), task.grid.resized(frame.shape)
    reps = max(1, int(repeats))
    t_counts = _best_time(lambda: task.to_model_counts(frame, baseline_adu=ptc["offset_adu"], e_per_adu=e_per_adu),
                          reps)
    with torch.inference_mode():
        grid_out = cnn(x)  # warm-up, and the grid the post-processing is timed on
        t_cnn = _best_time(lambda: cnn(x), reps)
        t_post = _best_time(lambda: grid.to_points(grid_out, task.abs_threshold, task.nms_radius_vox), reps)
    pts = task.localize(x[0, 0])
    t_all = _best_time(lambda: task.localize(x[0, 0]), reps)
    out.update({"counts_s": t_counts, "cnn_forward_s": t_cnn, "post_processing_s": t_post,
                "localize_total_s_per_frame": t_all, "localizations": int(len(pts[0]))})
    if mp:
        phys = task.physics.resized(frame.shape)
        t0 = time.perf_counter()
        res = smlm.matching_pursuit(phys.counts_to_photons(x[0, 0]), phys, min_photons=6000.0,
                                    z_range_um=task.grid.z_range_um, max_emitters=60)
        t_mp = time.perf_counter() - t0
        out.update({"mp_s_per_frame": t_mp, "mp_localizations": int(len(res.xyz_um)),
                    "cnn_speedup_over_mp": t_mp / t_all})
    return out


@register("wnet")
def bench_wnet(n: int | None = None, seed: int = 0, repeats: int = 2, ci=(0.125, 3, 32, 8)) -> dict:
    """W-Net (Yang et al. 2021): inference seconds per ``n``² image (default 512) of the paper-width W-Net (two
    cascaded generators, width 1, 5 levels) against the single U-Net (about half the parameters), and seconds
    per joint training step (data simulation, both discriminators, both generators) at the CI configuration
    ``ci`` = (width, levels, crop_px, batch_size) of notebooks/params/ci.yaml (``None``: skip the training timing,
    whose simulator set-up takes most of the time).
    """
    import torch

    from refocuslib.datasets.wnet import WNetBeadSimulator
    from refocuslib.models.wnet import single_unet, wnet
    from refocuslib.tasks.wnet import WNetTask

    size = 512 if n is None else int(n)
    torch.manual_seed(seed)
    out: dict = {"threads": torch.get_num_threads(), "image_px": size}
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    d = torch.zeros_like(x)
    for name, model in (("wnet", wnet(1.0, 5)), ("single_unet", single_unet(1.0, 5))):
        model.eval()
        with torch.inference_mode():
            model(x, d)  # warm-up
            out[f"{name}_s_per_image"] = _best_time(lambda: model(x, d), repeats)
        out[f"{name}_parameters"] = sum(p.numel() for p in model.parameters())
    out["wnet_over_single_time"] = out["wnet_s_per_image"] / out["single_unet_s_per_image"]
    if ci is None:
        return out
    width, levels, crop, batch = ci
    sim = WNetBeadSimulator(z_step_um=0.25, crop_px=crop)
    task = WNetTask(sim, "dh", width=width, levels=levels, disc_blocks=3, batch_size=batch, n_val=2)
    opt_g = torch.optim.Adam(task.generator.parameters(), 1e-3)
    opt_d = torch.optim.Adam(task.discriminator.parameters(), 1e-4)
    gen = torch.Generator().manual_seed(seed)

    def step():
        batch_ = task.make_batch(0, gen)
        output = task.generate(batch_)
        d_loss, _ = task.discriminator_loss(batch_, output.detach())
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss, _ = task.generator_loss(batch_, output)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()

    step()  # warm-up
    t = _best_time(lambda: [step() for _ in range(5)], repeats) / 5
    out["ci_train_s_per_step"] = t
    out["ci_train_steps_per_30s"] = 30.0 / t
    return out


#: one CPU training recipe per paper (refocuslib/recipes.yaml) for ``bench train``.
TRAIN_RECIPES = ("deepz_beads", "wnet_dh", "rmz_nuclei", "ds3d_tetrapod")


@register("train")
def bench_train(n: int | None = None, seed: int = 0, recipes_=TRAIN_RECIPES) -> dict:
    """Training throughput of each paper's shipped CPU recipe on this machine: steps/s of :func:`refocuslib.train.fit`
    and the share of a step spent simulating its batch (``make_batch`` timed alone against a whole step), for ``n``
    (default 20) steps after the data pool is built. Ratio, in the same process: fit with the background-thread
    prefetch (the default for tasks whose batches do not depend on trained weights, when torch leaves a core free)
    over fit without it; each pair follows an untimed warm-up run. ``data_share_exposed``: the share of a
    prefetched step still spent waiting for data, 1 − (t_step − t_data)/t_step_prefetch (0 when the background
    thread hides the simulation completely; clipped to [0, 1])."""
    import tempfile

    import torch

    from refocuslib import recipes
    from refocuslib.train import fit, step_seed

    steps = int(n or 20)
    out: dict = {"threads": torch.get_num_threads(), "steps": steps}
    for entry in recipes_:  # a recipe name, or a recipe dict (tests: a tiny one)
        rec = recipes.recipe(entry)
        name = rec["name"]
        task = recipes.build(rec)
        task.make_batch(0, torch.Generator().manual_seed(0))  # builds the sample pool / PSF caches once
        t_data = _best_time(lambda: [task.make_batch(k, torch.Generator().manual_seed(step_seed(seed, k)))
                                     for k in range(3)], 1) / 3
        rates = {}
        for prefetch in (None, False, True):  # None: an untimed warm-up run (allocator, kernels), then the pair
            with tempfile.TemporaryDirectory() as tmp:
                cfg = recipes.train_config(rec, tmp, progress=False, use_shipped=False, steps=steps + 1,
                                           warmup_steps=0, val_every=10 ** 9, ckpt_every=10 ** 9,
                                           restore_best=False, prefetch=bool(prefetch))
                t0 = time.perf_counter()
                fit(task, cfg)
                rates[prefetch] = steps / (time.perf_counter() - t0)
        t_step = 1.0 / rates[False]
        out[f"{name}_steps_per_s"] = rates[False]
        out[f"{name}_steps_per_s_prefetch"] = rates[True]
        out[f"{name}_prefetch_speedup"] = rates[True] / rates[False]
        out[f"{name}_data_share"] = min(1.0, t_data / t_step)
        out[f"{name}_data_share_exposed"] = float(np.clip(1.0 - (t_step - t_data) * rates[True], 0.0, 1.0))
        out[f"{name}_prefetch_used"] = bool(getattr(task, "prefetch_safe", False))
    return out


def run(names, n: int | None = None, seed: int = 0) -> dict[str, dict]:
    """Run the named benchmarks (``"all"`` expands to every registered one); returns ``{name: result}``."""
    if isinstance(names, str):
        names = [names]
    todo = []
    for name in names:
        if name == "all":
            todo.extend(BENCHMARKS)
        elif name in BENCHMARKS:
            todo.append(name)
        else:
            raise ValueError(f"name: unknown benchmark {name!r}; choose from {sorted(BENCHMARKS) + ['all']}")
    if n is not None and (isinstance(n, bool) or int(n) != n or n < 1):
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    return {name: BENCHMARKS[name](n=n, seed=seed) for name in dict.fromkeys(todo)}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refocuslib.bench", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(BENCHMARKS) + ["all"], help="benchmark to run")
    parser.add_argument("--n", type=int, default=None, help="problem size (benchmark default if omitted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write {name: result} to this JSON file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; the shipped trainings ran with 1, which "
                             "leaves a core for train.fit's batch prefetch)")
    args = parser.parse_args(argv)
    if args.n is not None and args.n < 1:
        parser.error("--n: expected an integer >= 1")
    if args.threads is not None:
        import os

        import torch
        if not 1 <= args.threads <= (os.cpu_count() or 1):
            parser.error(f"--threads: expected 1 to {os.cpu_count() or 1} (this machine's CPUs), got {args.threads}")
        torch.set_num_threads(args.threads)
    results = {}
    for name in (sorted(BENCHMARKS) if args.name == "all" else [args.name]):
        t0 = time.perf_counter()
        results[name] = BENCHMARKS[name](n=args.n, seed=args.seed)
        print(f"[{name}] ({time.perf_counter() - t0:.1f} s)")
        for k, v in results[name].items():
            print(f"  {k:34s} {_fmt(v)}")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
