"""The library's contract for bad input: a ``ValueError`` naming the parameter (and the accepted range), never a
silently wrong answer; legitimately empty point sets give defined results.

:data:`CASES` is one table over the public entry points (API and command line). Each row is
``(id, call, expected, pattern)``: ``call(tmp)`` gets a scratch folder; ``expected`` is the exception class (or,
for inputs that are legal but cannot be computed faithfully, the warning class) and ``pattern`` a regex the
message must match — the parameter's name. :func:`outcome` classifies one row (``clear``, ``unclear message``,
``other error``, ``silent``) so the same table also counts how a version of the library behaves.
"""
import contextlib
import io as _stdio
import re
import warnings

import numpy as np
import pytest
import torch

from refocuslib import cli, dpm, imaging, inference, io, localize, losses, metrics, optics, samples
try:
    from refocuslib._validate import check_device
except ImportError:  # (a library version without it: the table then counts those rows as failures)
    check_device = None
from refocuslib.datasets import deepz as dz_data
from refocuslib.dpm import DPMRangeWarning
from refocuslib.io import CorruptCheckpointError
from refocuslib.optics import DEEPZ_20X, Microscope

NAN_IMAGE = np.full((16, 16), np.nan)
FOUR_D = np.zeros((2, 2, 16, 16))
IMG = np.random.default_rng(0).poisson(10.0, (16, 16)).astype(np.float64)
VOL = np.random.default_rng(1).poisson(10.0, (5, 16, 16)).astype(np.float64)
PTS = np.array([[0.0, 0.0, 0.0], [500.0, 0.0, 100.0]])
MIC = dict(na=0.75, wavelength_um=0.52, n_immersion=1.0, pixel_um=0.325)
PSF = (16, 0.1, 1.4, 0.6, 1.515)  # n_pixels, pixel_um, na, wavelength_um, n_immersion
SamplingWarning = getattr(optics, "SamplingWarning", UserWarning)


def _warnings_as_errors(fn):
    """Run ``fn`` with warnings raised as exceptions (a warning case counts as 'clear' when it is raised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def _cli(argv):
    """Run the command line; a non-zero exit becomes ValueError(stderr) so it is judged like an API error."""
    err = _stdio.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code
    if rc not in (0, None):
        raise ValueError(err.getvalue())
    return rc


def _tiny_generator():
    from refocuslib.models.deepz import DeepZGenerator
    torch.manual_seed(0)
    g = DeepZGenerator(0.0625, levels=2).eval()
    g.trained_range_um, g.pixel_um = (-2.0, 2.0), 0.325
    return g


def _tiff(tmp, name="in.tif", arr=None, **kw):
    return str(io.write_tiff(tmp / name, np.ones((32, 32), np.float32) if arr is None else arr, **kw))


def _truncated_tiff(tmp):
    p = tmp / "cut.tif"
    io.write_tiff(p, np.ones((3, 32, 32), np.float32), pixel_um=0.1)
    p.write_bytes(p.read_bytes()[:3000])
    return p


def _checkpoint(tmp, obj=None, sidecar=True, embedded=True):
    p = tmp / "ck.pt"
    obj = {"w": torch.arange(64, dtype=torch.float32)} if obj is None else obj
    if embedded:
        io.save_checkpoint(p, obj)
    else:
        torch.save(obj, p)
    if not sidecar and (tmp / "ck.pt.sha256").exists():
        (tmp / "ck.pt.sha256").unlink()
    return p


def _flip_weight_byte(p):
    data = bytearray(p.read_bytes())
    i = bytes(data).find(np.arange(64, dtype=np.float32).tobytes())
    data[i + 70] ^= 0x40
    p.write_bytes(bytes(data))
    return p


def _old_checkpoint_without_sidecar_flipped(tmp):
    """The issue's case: a (pre-embedding) checkpoint whose sidecar was deleted, with one flipped byte."""
    p = _checkpoint(tmp, embedded=False, sidecar=False)
    return io.load_checkpoint(_flip_weight_byte(p))


def _embedded_checkpoint_flipped(tmp):
    p = _checkpoint(tmp, sidecar=False)
    return io.load_checkpoint(_flip_weight_byte(p))


def _gauss_fail_params():
    """A failed fit (all-zero patch) must report NaN parameters; a finite one is 'silent'."""
    fit = metrics.fit_gaussian_2d(np.zeros((1, 9, 9)))
    if np.isfinite([fit.fwhm_x_um[0], fit.x0[0], fit.amplitude[0]]).any():
        return fit  # no error and finite parameters: silently wrong
    raise ValueError("fit_gaussian_2d: failed fit reported NaN parameters")


def _resume_other_width(tmp):
    from refocuslib.tasks.deepz import build_task
    from refocuslib.train import TrainConfig, fit
    spec = {"data": {"z_half_range_um": 1.0, "field_px": 32, "crop_px": 16, "n_samples": 1}, "levels": 2,
            "disc_blocks": 2, "n_val": 1, "n_val_samples": 1, "batch_size": 1, "gan": False}
    old = build_task({**spec, "width": 0.0625})  # a run folder of the narrower model (what fit saves)
    (tmp / "run").mkdir()
    io.save_checkpoint(tmp / "run" / "last.pt", {"generator": old.generator.state_dict(), "step": 1,
                                                 "extra": old.extra_state(), "task": "DeepZTask"})
    fit(build_task({**spec, "width": 0.125}), TrainConfig(steps=2, out_dir=str(tmp / "run"), progress=False))


def _build_deepz(spec):
    from refocuslib.tasks.deepz import build_task
    return build_task(spec)


def _train_config(**kw):
    from refocuslib.train import TrainConfig
    return TrainConfig(**{"steps": 2, "out_dir": "unused", **kw})


G = None  # the tiny generator, built on first use


def _g():
    global G
    if G is None:
        G = _tiny_generator()
    return G


E, W = ValueError, "warn"
CASES = [
    # ---------------------------------------------------------------------------------------- metrics
    ("lateral_fwhm nan", lambda t: metrics.lateral_fwhm_um(NAN_IMAGE, 0.1), E, "image"),
    ("lateral_fwhm 4d", lambda t: metrics.lateral_fwhm_um(FOUR_D, 0.1), E, "image"),
    ("lateral_fwhm pixel<0", lambda t: metrics.lateral_fwhm_um(IMG, -0.1), E, "pixel_um"),
    ("lateral_fwhm pixel str", lambda t: metrics.lateral_fwhm_um(IMG, "a"), E, "pixel_um"),
    ("lateral_fwhm crop 2", lambda t: metrics.lateral_fwhm_um(IMG, 0.1, crop_px=2), E, "crop_px"),
    ("lateral_fwhm min_area 0", lambda t: metrics.lateral_fwhm_um(IMG, 0.1, min_area_px=0), E, "min_area_px"),
    ("lateral_fwhm threshold nan", lambda t: metrics.lateral_fwhm_um(IMG, 0.1, threshold=np.nan), E, "threshold"),
    ("axial_fwhm 2 planes", lambda t: metrics.axial_fwhm_um(VOL[:2], 0.1, 0.2), E, "stack"),
    ("axial_fwhm z_step 0", lambda t: metrics.axial_fwhm_um(VOL, 0.1, 0.0), E, "z_step_um"),
    ("axial_fwhm crop_z > nz", lambda t: metrics.axial_fwhm_um(VOL, 0.1, 0.2, crop_z=9), E, "crop_z"),
    ("axial_fwhm 2d", lambda t: metrics.axial_fwhm_um(IMG, 0.1, 0.2), E, "stack"),
    ("fit_gaussian empty", lambda t: metrics.fit_gaussian_2d(np.zeros((0, 7, 7))), E, "patches"),
    ("fit_gaussian 2x2", lambda t: metrics.fit_gaussian_2d(np.zeros((1, 2, 2))), E, "patches"),
    ("fit_gaussian 4d", lambda t: metrics.fit_gaussian_2d(np.zeros((1, 1, 7, 7))), E, "patches"),
    ("fit_gaussian nan", lambda t: metrics.fit_gaussian_2d(np.full((7, 7), np.nan)), E, "patches"),
    ("fit_gaussian pixel 3", lambda t: metrics.fit_gaussian_2d(IMG, pixel_um=(1, 2, 3)), E, "pixel_um"),
    ("fit_gaussian max_iter 0", lambda t: metrics.fit_gaussian_2d(IMG, max_iter=0), E, "max_iter"),
    ("fit_gaussian ftol 2", lambda t: metrics.fit_gaussian_2d(IMG, ftol=2.0), E, "ftol"),
    ("fit_gaussian initial shape", lambda t: metrics.fit_gaussian_2d(IMG, initial=np.ones((2, 6))), E, "initial"),
    ("fit_gaussian chunk 0", lambda t: metrics.fit_gaussian_2d(IMG, chunk=0), E, "chunk"),
    ("fit_gaussian failed fit -> NaN", lambda t: _gauss_fail_params(), E, "NaN"),
    ("psnr shapes", lambda t: metrics.psnr(np.zeros((4, 4)), np.zeros((5, 4))), E, "b"),
    ("psnr nan", lambda t: metrics.psnr(NAN_IMAGE, IMG), E, "a"),
    ("mse shapes", lambda t: metrics.mse(np.zeros((4, 4)), np.zeros((4, 5))), E, "b"),
    ("rmse complex", lambda t: metrics.rmse(np.ones((4, 4), complex), np.ones((4, 4))), E, "a"),
    ("nrmse nan", lambda t: metrics.nrmse(IMG, NAN_IMAGE), E, "b"),
    ("ssim shapes", lambda t: metrics.ssim(np.zeros((16, 16)), np.zeros((16, 15))), E, "b"),
    ("ms_ssim shapes", lambda t: metrics.ms_ssim(np.zeros((64, 64)), np.zeros((64, 63))), E, "b"),
    ("pearson shapes", lambda t: metrics.pearson(np.zeros(4), np.zeros(5)), E, "b"),
    ("kl_divergence lengths", lambda t: metrics.kl_divergence([1, 2], [1, 2, 3]), E, "hist"),
    ("kl_divergence negative", lambda t: metrics.kl_divergence([1, -2], [1, 2]), E, "hist_a"),
    ("histogram_kl empty", lambda t: metrics.histogram_kl([], [1.0, 2.0]), E, "values_a"),
    ("histogram_kl nan", lambda t: metrics.histogram_kl([1.0, np.nan], [1.0, 2.0]), E, "values_a"),
    ("gaussian_2d_model params", lambda t: metrics.gaussian_2d_model(np.ones((2, 5)), (5, 5)), E, "params"),
    # ---------------------------------------------------------------------------------------- localize
    ("find_peaks_2d nan", lambda t: localize.find_peaks_2d(NAN_IMAGE, 0.5), E, "image"),
    ("find_peaks_2d 4d", lambda t: localize.find_peaks_2d(FOUR_D, 0.5), E, "image"),
    ("find_peaks_2d threshold nan", lambda t: localize.find_peaks_2d(IMG, np.nan), E, "threshold"),
    ("find_peaks_2d min_distance 0", lambda t: localize.find_peaks_2d(IMG, 1.0, min_distance_px=0), E,
     "min_distance_px"),
    ("find_peaks_2d refine", lambda t: localize.find_peaks_2d(IMG, 1.0, refine="spline"), E, "refine"),
    ("find_peaks_3d 2d", lambda t: localize.find_peaks_3d(IMG, 0.5), E, "volume"),
    ("match_points 1d", lambda t: localize.match_points([1.0, 2.0], np.zeros((1, 2))), E, "pred_nm"),
    ("match_points widths", lambda t: localize.match_points(np.zeros((1, 2)), np.zeros((1, 3))), E, "truth_nm"),
    ("match_points nan", lambda t: localize.match_points(np.full((1, 3), np.nan), PTS), E, "pred_nm"),
    ("match_points threshold 0", lambda t: localize.match_points(PTS, PTS, 0.0), E, "threshold_nm"),
    ("match_points strings", lambda t: localize.match_points(np.array([["a", "b"]]), PTS[:, :2]), E, "pred_nm"),
    ("efficiency jaccard 2", lambda t: localize.efficiency(2.0, 10.0), E, "jaccard"),
    ("efficiency rmse<0", lambda t: localize.efficiency(0.5, -1.0), E, "rmse_nm"),
    ("pixels_to_nm voxel 0", lambda t: localize.pixels_to_nm(np.zeros((2, 3)), 0.0), E, "voxel_nm"),
    # ---------------------------------------------------------------------------------------- imaging
    ("normalize_deepz nan", lambda t: imaging.normalize_deepz(NAN_IMAGE), E, "image"),
    ("normalize_deepz 4d", lambda t: imaging.normalize_deepz(FOUR_D), E, "image"),
    ("normalize_deepz p_high 10", lambda t: imaging.normalize_deepz(IMG, p_high=10.0), E, "p_high"),
    ("normalize_percentile p", lambda t: imaging.normalize_percentile(IMG, 50.0, 40.0), E, "p_"),
    ("triangle_background 1d", lambda t: imaging.triangle_background(np.ones(5)), E, "image"),
    ("camera complex", lambda t: imaging.camera(np.ones((4, 4), complex)), E, "photons"),
    ("camera negative", lambda t: imaging.camera(-np.ones((4, 4))), E, "photons"),
    ("camera nan", lambda t: imaging.camera(NAN_IMAGE), E, "photons"),
    ("camera qe 0", lambda t: imaging.camera(IMG, qe=0.0), E, "qe"),
    ("camera qe 2", lambda t: imaging.camera(IMG, qe=2.0), E, "qe"),
    ("camera gain 0", lambda t: imaging.camera(IMG, gain=0.0), E, "gain"),
    ("camera read noise<0", lambda t: imaging.camera(IMG, read_noise_e=-1.0), E, "read_noise_e"),
    ("camera background<0", lambda t: imaging.camera(IMG, background_photons=-1.0), E, "background_photons"),
    ("camera bool", lambda t: imaging.camera(np.ones((4, 4), bool)), E, "photons"),
    ("auto_patch_px defocus nan", lambda t: imaging.auto_patch_px(DEEPZ_20X, np.nan), E, "max_defocus_um"),
    ("auto_patch_px microscope", lambda t: imaging.auto_patch_px("20x", 1.0), E, "microscope"),
    ("auto_patch_px extra_airy<0", lambda t: imaging.auto_patch_px(DEEPZ_20X, 1.0, extra_airy=-1), E,
     "extra_airy"),
    ("psf_stack_for_volume planes 0", lambda t: imaging.psf_stack_for_volume(DEEPZ_20X, 0, 0.5, 16), E,
     "n_planes"),
    ("psf_stack_for_volume step 0", lambda t: imaging.psf_stack_for_volume(DEEPZ_20X, 3, 0.0, 16), E,
     "z_step_um"),
    ("image_volume 2d", lambda t: imaging.image_volume(IMG, DEEPZ_20X, 0.5), E, "volume"),
    ("image_volume step<0", lambda t: imaging.image_volume(VOL, DEEPZ_20X, -0.5), E, "z_step_um"),
    # ---------------------------------------------------------------------------------------- io
    ("write_tiff nan", lambda t: io.write_tiff(t / "u.tif", NAN_IMAGE.astype(np.float32)), E, "array"),
    ("write_tiff int32", lambda t: io.write_tiff(t / "u.tif", np.ones((4, 4), np.int32)), E, "array"),
    ("write_tiff complex", lambda t: io.write_tiff(t / "u.tif", np.ones((4, 4), np.complex64)), E, "array"),
    ("write_tiff 1d", lambda t: io.write_tiff(t / "u.tif", np.ones(4, np.float32)), E, "array"),
    ("write_tiff 6d", lambda t: io.write_tiff(t / "u.tif", np.ones((2,) * 6, np.float32)), E, "array"),
    ("write_tiff pixel<0", lambda t: io.write_tiff(t / "u.tif", IMG, pixel_um=-0.1), E, "pixel_um"),
    ("write_tiff pixel str", lambda t: io.write_tiff(t / "u.tif", IMG, pixel_um="x"), E, "pixel_um"),
    ("write_tiff z_step 0", lambda t: io.write_tiff(t / "u.tif", IMG, z_step_um=0), E, "z_step_um"),
    ("write_tiff axes order", lambda t: io.write_tiff(t / "u.tif", VOL, axes="YXZ"), E, "axes"),
    ("write_tiff axes count", lambda t: io.write_tiff(t / "u.tif", VOL, axes="YX"), E, "axes"),
    ("write_tiff metadata list", lambda t: io.write_tiff(t / "u.tif", IMG, metadata=[1]), E, "metadata"),
    ("write_tiff metadata object", lambda t: io.write_tiff(t / "u.tif", IMG, metadata={"f": object()}), E,
     "metadata"),
    ("read_tiff missing", lambda t: io.read_tiff(t / "missing.tif"), FileNotFoundError, "missing.tif"),
    ("read_tiff truncated", lambda t: io.read_tiff(_truncated_tiff(t)), E, r"cut\.tif.*(truncated|corrupt)"),
    ("read_tiff a checkpoint", lambda t: io.read_tiff(_checkpoint(t)), E, r"ck\.pt.*not a TIFF"),
    ("save_checkpoint to a folder", lambda t: io.save_checkpoint(t, {"a": 1}), E, "path"),
    ("load_checkpoint missing", lambda t: io.load_checkpoint(t / "nope.pt"), FileNotFoundError, "nope.pt"),
    ("load_checkpoint a TIFF", lambda t: io.load_checkpoint(_tiff(t)), CorruptCheckpointError,
     "is a TIFF image, not a checkpoint"),
    ("load_checkpoint text file", lambda t: (t / "x.pt").write_text("hi") and io.load_checkpoint(t / "x.pt"),
     CorruptCheckpointError, "not a PyTorch checkpoint"),
    ("load_checkpoint empty", lambda t: (t / "x.pt").write_bytes(b"") or io.load_checkpoint(t / "x.pt"),
     CorruptCheckpointError, "empty"),
    ("load_checkpoint no sidecar, flipped byte", _old_checkpoint_without_sidecar_flipped, E,
     "no checksum.*trust_unverified"),
    ("load_checkpoint embedded checksum, flipped byte", _embedded_checkpoint_flipped, CorruptCheckpointError,
     "SHA-256 mismatch"),
    ("load_checkpoint flipped with sidecar", lambda t: io.load_checkpoint(_flip_weight_byte(_checkpoint(t))),
     CorruptCheckpointError, "SHA-256"),
    ("load_checkpoint truncated", lambda t: io.load_checkpoint(
        _checkpoint(t).write_bytes(_checkpoint(t).read_bytes()[:300]) and t / "ck.pt", trust_unverified=True),
     CorruptCheckpointError, "truncated"),
    # ---------------------------------------------------------------------------------------- dpm
    ("dpm.plane pixel<0", lambda t: dpm.plane((16, 16), -0.325, 1.5), E, "pixel_um"),
    ("dpm.plane tilt 90", lambda t: dpm.plane((16, 16), 0.325, 90.0), E, "tilt_deg"),
    ("dpm.plane shape", lambda t: dpm.plane((16,), 0.325, 1.0), E, "shape"),
    ("dpm.plane shape 0", lambda t: dpm.plane((0, 16), 0.325, 1.0), E, "shape"),
    ("dpm.plane offset nan", lambda t: dpm.plane((4, 4), 0.325, 1.0, offset_um=np.nan), E, "offset_um"),
    ("dpm.uniform dz inf", lambda t: dpm.uniform((4, 4), np.inf), E, "dz_um"),
    ("dpm.uniform dz str", lambda t: dpm.uniform((4, 4), "a"), E, "dz_um"),
    ("dpm.uniform shape float", lambda t: dpm.uniform((4.5, 4), 1.0), E, "shape"),
    ("dpm.cylinder diameter 0", lambda t: dpm.cylinder((8, 8), 0.3, 0.0), E, "diameter_um"),
    ("dpm.cylinder convex str", lambda t: dpm.cylinder((8, 8), 0.3, 5.0, convex="yes"), E, "convex"),
    ("dpm.sinusoid period 0.5", lambda t: dpm.sinusoid((8, 8), 0.5, -1, 1), E, "period_px"),
    ("dpm.sinusoid z_min>z_max", lambda t: dpm.sinusoid((8, 8), 4, 2, 1), E, "z_min_um"),
    ("dpm.sinusoid axis", lambda t: dpm.sinusoid((8, 8), 4, -1, 1, axis="z"), E, "axis"),
    ("dpm.from_height_map nan", lambda t: dpm.from_height_map(NAN_IMAGE), E, "height_um"),
    ("dpm.from_height_map 3d", lambda t: dpm.from_height_map(VOL), E, "height_um"),
    ("dpm.to_network nan", lambda t: dpm.to_network(NAN_IMAGE), E, "dpm_um"),
    ("dpm.from_network str", lambda t: dpm.from_network(np.array(["a"])), E, "x"),
    ("dpm.check_trained_range bad", lambda t: dpm.check_trained_range(IMG, 3.0), E, "trained_range_um"),
    ("dpm.check_trained_range lo>hi", lambda t: dpm.check_trained_range(IMG, (2.0, 1.0)), E, "trained_range_um"),
    ("dpm.check_trained_range outside", lambda t: _warnings_as_errors(
        lambda: dpm.check_trained_range(np.full((4, 4), 9.0), (-1.0, 1.0))), DPMRangeWarning, "trained on"),
    # ---------------------------------------------------------------------------------------- optics
    ("widefield pixel<0", lambda t: optics.widefield_psf([0.0], 16, -0.1, 1.4, 0.6, 1.515), E, "pixel_um"),
    ("widefield z empty", lambda t: optics.widefield_psf([], *PSF), E, "z_um"),
    ("widefield z nan", lambda t: optics.widefield_psf([np.nan], *PSF), E, "z_um"),
    ("widefield z complex", lambda t: optics.widefield_psf([1 + 2j], *PSF), E, "z_um"),
    ("widefield z complex array", lambda t: optics.widefield_psf(np.array([0.5j]), *PSF), E, "z_um"),
    ("widefield z complex tensor", lambda t: optics.widefield_psf(torch.tensor([0.5j]), *PSF), E, "z_um"),
    ("widefield na > n", lambda t: optics.widefield_psf([0.0], 16, 0.1, 1.6, 0.6, 1.515), E, "na"),
    ("widefield na 0", lambda t: optics.widefield_psf([0.0], 16, 0.1, 0.0, 0.6, 1.515), E, "na"),
    ("widefield wavelength 5", lambda t: optics.widefield_psf([0.0], 16, 0.1, 1.4, 5.0, 1.515), E,
     "wavelength_um"),
    ("widefield n_immersion 3", lambda t: optics.widefield_psf([0.0], 16, 0.1, 1.4, 0.6, 3.0), E, "n_immersion"),
    ("widefield n_sample 0.5", lambda t: optics.widefield_psf([0.0], *PSF, n_sample=0.5), E, "n_sample"),
    ("widefield n_pixels 0", lambda t: optics.widefield_psf([0.0], 0, 0.1, 1.4, 0.6, 1.515), E, "n_pixels"),
    ("widefield pad 0.5", lambda t: optics.widefield_psf([0.0], *PSF, pad=0.5), E, "pad"),
    ("widefield oversample 0", lambda t: optics.widefield_psf([0.0], *PSF, oversample=0), E, "oversample"),
    ("widefield dtype", lambda t: optics.widefield_psf([0.0], *PSF, dtype=torch.int32), E, "dtype"),
    ("widefield xy shape", lambda t: optics.widefield_psf([0.0], *PSF, xy_um=[1.0, 2.0, 3.0]), E, "xy_um"),
    ("widefield xy rows", lambda t: optics.widefield_psf([0.0, 1.0, 2.0], *PSF, xy_um=np.zeros((2, 2))), E,
     "xy_um"),
    ("widefield mask shape", lambda t: optics.widefield_psf([0.0], *PSF, mask=np.zeros((3, 3))), E, "mask"),
    ("widefield explicit oversample aliases", lambda t: optics.widefield_psf(
        [0.0], 16, 0.5, 0.75, 0.52, 1.0, oversample=1), E, r"oversample.*λ/\(2·NA\)"),
    ("widefield coarse camera pixel", lambda t: _warnings_as_errors(
        lambda: optics.widefield_psf([0.0], 8, 0.5, 0.75, 0.52, 1.0)), SamplingWarning, r"pixel_um.*λ/\(2·NA\)"),
    ("widefield defocus wraps", lambda t: _warnings_as_errors(
        lambda: optics.widefield_psf([1e6], 16, 0.2, 0.75, 0.52, 1.0)), SamplingWarning,
     "z_um.*wraps"),
    ("confocal excitation 0", lambda t: optics.confocal_psf([0.0], *PSF, excitation_um=0.0), E, "excitation_um"),
    ("confocal pinhole<0", lambda t: optics.confocal_psf([0.0], *PSF, excitation_um=0.5, pinhole_au=-1), E,
     "pinhole_au"),
    ("zernike m", lambda t: optics.zernike(2, 1, torch.zeros(2), torch.zeros(2)), E, "m"),
    ("zernike n<0", lambda t: optics.zernike(-1, 0, torch.zeros(2), torch.zeros(2)), E, "n"),
    ("zernike_mask empty", lambda t: optics.zernike_mask({}), E, "coefficients_rad"),
    ("zernike_mask index", lambda t: optics.zernike_mask({(2, 1): 1.0}), E, "coefficients_rad"),
    ("double_helix rings 0", lambda t: optics.double_helix_mask(0), E, "n_rings"),
    ("learnable_mask size 2", lambda t: optics.learnable_mask(2), E, "size"),
    ("ArrayMask not square", lambda t: optics.ArrayMask(np.zeros((3, 4))), E, "phase_rad"),
    ("ArrayMask nan", lambda t: optics.ArrayMask(np.full((3, 3), np.nan)), E, "phase_rad"),
    ("ArrayMask radius", lambda t: optics.ArrayMask(np.zeros((5, 5)), pupil_radius_px=10.0), E, "pupil_radius_px"),
    ("Microscope na str", lambda t: Microscope(**{**MIC, "na": "0.75"}), E, "na"),
    ("Microscope pixel str", lambda t: Microscope(**{**MIC, "pixel_um": "0.3"}), E, "pixel_um"),
    ("Microscope wavelength None", lambda t: Microscope(**{**MIC, "wavelength_um": None}), E, "wavelength_um"),
    ("Microscope na bool", lambda t: Microscope(**{**MIC, "na": True}), E, "na"),
    ("Microscope n_sample str", lambda t: Microscope(**MIC, n_sample="1.33"), E, "n_sample"),
    ("Microscope nfp nan", lambda t: Microscope(**MIC, nfp_um=float("nan")), E, "nfp_um"),
    ("Microscope nfp str", lambda t: Microscope(**MIC, nfp_um="1"), E, "nfp_um"),
    ("Microscope modality", lambda t: Microscope(**MIC, modality="lightsheet"), E, "modality"),
    ("Microscope confocal no excitation", lambda t: Microscope(**MIC, modality="confocal"), E, "excitation_um"),
    ("Microscope pinhole<0", lambda t: Microscope(**MIC, pinhole_au=-1.0), E, "pinhole_au"),
    ("Microscope mask int", lambda t: Microscope(**MIC, mask=3), E, "mask"),
    ("Microscope na > n", lambda t: Microscope(**{**MIC, "na": 1.2}), E, "na"),
    ("Microscope.psf complex z", lambda t: DEEPZ_20X.psf([1j], 16), E, "z_um"),
    ("Microscope.replace na str", lambda t: DEEPZ_20X.replace(na="0.8"), E, "na"),
    # ---------------------------------------------------------------------------------------- samples
    ("beads_3d n<0", lambda t: samples.beads_3d(np.random.default_rng(0), -1, (10, 10), (-1, 1)), E, "n_beads"),
    ("beads_3d fov", lambda t: samples.beads_3d(np.random.default_rng(0), 3, (-10, 10), (-1, 1)), E, "fov_um"),
    ("beads_3d z range", lambda t: samples.beads_3d(np.random.default_rng(0), 3, (10, 10), (1, -1)), E,
     "z_range_um"),
    ("single_molecules photons<0", lambda t: samples.single_molecules(
        np.random.default_rng(0), 3, (5, 5), (-1, 1), photons_mean=-1.0), E, "photons_mean"),
    # ---------------------------------------------------------------------------------------- losses
    ("mae shapes", lambda t: losses.mae(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5)), E, "target"),
    ("mae broadcasts silently", lambda t: losses.mae(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4)), E, "target"),
    ("berhu c 0", lambda t: losses.berhu(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), c=0.0), E, "c"),
    ("deepz loss alpha", lambda t: losses.deepz_generator_loss(
        torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1), alpha=-1.0), E, "alpha"),
    # ---------------------------------------------------------------------------------------- inference
    ("refocus model", lambda t: inference.refocus("model", IMG, 1.0), E, "model"),
    ("refocus image nan", lambda t: inference.refocus(_g(), np.full((32, 32), np.nan), 1.0), E, "image"),
    ("refocus image small", lambda t: inference.refocus(_g(), np.ones((4, 4)), 1.0), E, "image"),
    ("refocus dpm shape", lambda t: inference.refocus(_g(), np.ones((32, 32)), np.zeros((16, 16))), E, "dpm"),
    ("refocus tile", lambda t: inference.refocus(_g(), np.ones((32, 32)), 1.0, tile_px=8), E, "tile_px"),
    ("refocus overlap", lambda t: inference.refocus(_g(), np.ones((32, 32)), 1.0, tile_px=64, overlap_px=40), E,
     "overlap_px"),
    ("refocus outside range", lambda t: _warnings_as_errors(
        lambda: inference.refocus(_g(), np.ones((32, 32)), 9.0)), DPMRangeWarning, "trained on"),
    ("refocus_stack empty z", lambda t: inference.refocus_stack(_g(), np.ones((32, 32)), []), E, "z_um"),
    ("refocus_stack batch 0", lambda t: inference.refocus_stack(_g(), np.ones((32, 32)), [0.0], batch_size=0), E,
     "batch_size"),
    ("load_model missing folder", lambda t: inference.load_model(t), FileNotFoundError, "checkpoint"),
    ("load_model a TIFF", lambda t: inference.load_model(_tiff(t)), CorruptCheckpointError, "not a checkpoint"),
    ("load_model not Deep-Z", lambda t: inference.load_model(_checkpoint(t)), E, "checkpoint"),
    # ---------------------------------------------------------------------------------------- datasets / tasks
    ("DeepZDataConfig z_step 0", lambda t: dz_data.DeepZDataConfig(z_step_um=0.0), E, "z_step_um"),
    ("DeepZDataConfig half range", lambda t: dz_data.DeepZDataConfig(z_half_range_um=1.3, z_step_um=0.5), E,
     "z_half_range_um"),
    ("DeepZDataConfig crop > field", lambda t: dz_data.DeepZDataConfig(field_px=32, crop_px=64), E, "crop_px"),
    ("DeepZDataConfig fraction 2", lambda t: dz_data.DeepZDataConfig(nonuniform_fraction=2.0), E,
     "nonuniform_fraction"),
    ("DeepZDataConfig kinds", lambda t: dz_data.DeepZDataConfig(nonuniform_kinds=("wave",)), E, "nonuniform_kinds"),
    ("DeepZDataConfig aberration", lambda t: dz_data.DeepZDataConfig(spherical_aberration_rad=99.0), E,
     "spherical_aberration_rad"),
    ("composite planes", lambda t: dz_data.composite(VOL, [0.0, 1.0], np.zeros((16, 16))), E, "z_planes_um"),
    ("composite surface shape", lambda t: dz_data.composite(VOL, np.arange(5.0), np.zeros((8, 8))), E,
     "surface_um"),
    ("composite surface nan", lambda t: dz_data.composite(VOL, np.arange(5.0), NAN_IMAGE), E, "surface_um"),
    ("z_planes step 0", lambda t: dz_data.z_planes(1.0, 0.0), E, "z_step_um"),
    ("build_task unknown key", lambda t: _build_deepz({"widht": 0.5}), E, "widht.*allowed"),
    ("build_task data={field_px:64}", lambda t: _build_deepz({"data": {"field_px:64": None}}), E,
     r"field_px:64.*space after the colon.*accepted: .*field_px"),
    ("build_task unknown data key", lambda t: _build_deepz({"data": {"fieldpx": 64}}), E, "fieldpx.*accepted"),
    ("build_task data not a dict", lambda t: _build_deepz({"data": "abc"}), E, "data"),
    ("build_task microscope name", lambda t: _build_deepz({"data": {"microscope": "X"}}), E, "microscope"),
    ("build_task spec list", lambda t: _build_deepz([1]), E, "spec"),
    ("build_task same seeds", lambda t: _build_deepz({"train_seed": 1, "val_seed": 1}), E, "val_seed"),
    ("resume into another width", _resume_other_width, E, r"belongs to another recipe.*width"),
    ("TrainConfig steps 0", lambda t: _train_config(steps=0), E, "steps"),
    ("TrainConfig lr_g<0", lambda t: _train_config(lr_g=-1.0), E, "lr_g"),
    ("TrainConfig lr_d str", lambda t: _train_config(lr_d="1e-4"), E, "lr_d"),
    ("TrainConfig val_every 0", lambda t: _train_config(val_every=0), E, "val_every"),
    ("TrainConfig schedule", lambda t: _train_config(schedule="linear"), E, "schedule"),
    ("TrainConfig warmup", lambda t: _train_config(warmup_steps=5), E, "warmup_steps"),
    ("TrainConfig min_lr_ratio", lambda t: _train_config(min_lr_ratio=2.0), E, "min_lr_ratio"),
    ("resolve_task_factory", lambda t: __import__("refocuslib.train", fromlist=["x"]).resolve_task_factory("zz"), E,
     "task"),
    ("checkpoint_dir name", lambda t: __import__("refocuslib.train", fromlist=["x"]).checkpoint_dir(t, "a/b", {}),
     E, "name"),
    ("use_shipped_checkpoints str", lambda t: __import__(
        "refocuslib.train", fromlist=["x"]).use_shipped_checkpoints("yes"), E, "enabled"),
    # ---------------------------------------------------------------------------------------- devices
    ("check_device misspelt", lambda t: check_device("cdua"), E, r"device.*available here: cpu"),
    ("check_device cuda:99", lambda t: check_device("cuda:99"), E, r"device.*available here"),
    ("check_device int", lambda t: check_device(None), E, "device"),
    # ---------------------------------------------------------------------------------------- command line
    ("cli unknown command", lambda t: _cli(["frobnicate"]), E, "invalid choice"),
    ("cli refocus no checkpoint", lambda t: _cli(["refocus", _tiff(t), "--dz", "1", "-o", str(t / "o.tif")]), E,
     "--checkpoint"),
    ("cli refocus dz and dpm", lambda t: _cli(["refocus", _tiff(t), "--checkpoint", "x.pt", "--dz", "1", "--dpm",
                                               "d.tif", "-o", str(t / "o.tif")]), E, "--dpm"),
    ("cli refocus dz text", lambda t: _cli(["refocus", _tiff(t), "--checkpoint", "x.pt", "--dz", "one", "-o",
                                            str(t / "o.tif")]), E, "--dz"),
    ("cli refocus missing input", lambda t: _cli(["refocus", str(t / "none.tif"), "--checkpoint", "x.pt", "--dz",
                                                  "1", "-o", str(t / "o.tif")]), E, "none.tif"),
    ("cli refocus missing checkpoint", lambda t: _cli(["refocus", _tiff(t), "--checkpoint", str(t / "x.pt"),
                                                       "--dz", "1", "-o", str(t / "o.tif")]), E, "x.pt"),
    ("cli refocus device cuda", lambda t: _cli(["refocus", _tiff(t), "--checkpoint", "x.pt", "--dz", "1", "-o",
                                                str(t / "o.tif"), "--device", "cuda:7"]), E,
     r"--device.*available here"),
    ("cli refocus device misspelt", lambda t: _cli(["refocus", _tiff(t), "--checkpoint", "x.pt", "--dz", "1",
                                                    "-o", str(t / "o.tif"), "--device", "gpu"]), E,
     r"--device.*available here"),
    ("cli refocus a TIFF as checkpoint", lambda t: _cli(["refocus", _tiff(t), "--checkpoint", _tiff(t, "c.tif"),
                                                         "--dz", "1", "-o", str(t / "o.tif")]), E,
     "c.tif: is a TIFF image, not a checkpoint"),
    ("cli refocus truncated input", lambda t: _cli(["refocus", str(_truncated_tiff(t)), "--checkpoint", "x.pt",
                                                    "--dz", "1", "-o", str(t / "o.tif")]), E, r"cut\.tif.*truncated"),
    ("cli refocus 3d input", lambda t: _cli(["refocus", _tiff(t, arr=np.ones((3, 32, 32), np.float32)),
                                             "--checkpoint", "x.pt", "--dz", "1", "-o", str(t / "o.tif")]), E,
     "input"),
    ("cli refocus tile text", lambda t: _cli(["refocus", _tiff(t), "--checkpoint", "x.pt", "--dz", "1", "-o",
                                              str(t / "o.tif"), "--tile", "big"]), E, "--tile"),
    ("cli ship-checkpoints no made-by", lambda t: _cli(["ship-checkpoints", str(t)]), E, "--made-by"),
    ("cli ship-checkpoints empty folder", lambda t: _cli(["ship-checkpoints", str(t), "--made-by", "x"]), E,
     "checkpoints"),
    ("cli reproduce unknown profile", lambda t: _cli(["reproduce", "--profile", "nonexistent-profile"]),
     FileNotFoundError, "profile 'nonexistent-profile'"),
]


def outcome(case, tmp):
    """'clear' (the expected error or warning, message matching), 'unclear message', 'other error' or 'silent'."""
    _, call, expected, pattern = case
    try:
        call(tmp)
    except Exception as e:  # noqa: BLE001 - classifying is the point
        if isinstance(e, expected):
            return "clear" if re.search(pattern, str(e), flags=re.S) else "unclear message"
        return "other error"
    return "silent"


#: rows whose entry point does not check its input yet (a known gap, reported; strict: fixing it flags the row)
OPEN: dict = {}


def _param(case):
    marks = [pytest.mark.xfail(reason=OPEN[case[0]], strict=True)] if case[0] in OPEN else []
    return pytest.param(case, id=case[0], marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_gives_a_clear_error(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, call, expected, pattern = case
    with pytest.raises(expected, match=re.compile(pattern, re.S)):
        call(tmp_path)


def test_the_table_covers_enough_cases():
    assert len(CASES) >= 150 and len({c[0] for c in CASES}) == len(CASES)


def test_empty_point_sets_give_defined_matching_results():
    truth = np.array([[0.0, 0.0, 0.0], [500.0, 0.0, 100.0]])
    none_found = localize.match_points(np.zeros((0, 3)), truth)
    assert (none_found.tp, none_found.fp, none_found.fn, none_found.jaccard) == (0, 0, 2, 0.0)
    assert np.isnan(none_found.rmse_lateral_nm)
    nothing_there = localize.match_points(np.array([[0.0, 0.0, 0.0]]), np.zeros((0, 3)))
    assert (nothing_there.tp, nothing_there.fp, nothing_there.jaccard) == (0, 1, 0.0)


def test_legal_optics_near_the_limits_do_not_warn():
    """No false alarms: the papers' microscopes over their axial ranges, and a pixel exactly at λ/(2·NA)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingWarning)
        DEEPZ_20X.psf([-10.0, 0.0, 10.0], 64)
        optics.STORM_100X.psf([0.0, 2.0, 4.0], 32)
        optics.WORM_20X.psf([0.0], 16)  # 0.325 µm = 0.52 / (2 · 0.8)
        optics.widefield_psf([0.0], 16, 0.1, 1.4, 0.6, 1.515, oversample=1)  # explicit, fine enough


def test_cli_refocus_says_when_the_input_has_no_pixel_size(tmp_path):
    from refocuslib.tasks.deepz import build_task
    spec = {"data": {"z_half_range_um": 1.0, "field_px": 32, "crop_px": 16, "n_samples": 1}, "width": 0.0625,
            "levels": 2, "n_val": 1, "n_val_samples": 1, "batch_size": 1, "gan": False}
    task = build_task(spec)  # an untrained Deep-Z checkpoint is enough to reach the pixel-size check
    (tmp_path / "run").mkdir()
    io.save_checkpoint(tmp_path / "run" / "best.pt", {"generator": task.generator.state_dict(), "step": 0,
                                                      "extra": task.extra_state()})
    import tifffile
    tifffile.imwrite(tmp_path / "plain.tif", np.ones((32, 32), np.float32))  # no calibration at all
    args = ["refocus", str(tmp_path / "plain.tif"), "--checkpoint", str(tmp_path / "run"), "--dz", "0.5",
            "-o", str(tmp_path / "o.tif")]
    with pytest.warns(UserWarning, match=r"plain\.tif gives no pixel size \(the TIFF resolution tag has no unit\); "
                                         r"assuming the model's training pixel 0\.325 µm"):
        assert cli.main(args) == 0
    tifffile.imwrite(tmp_path / "cm.tif", np.ones((32, 32), np.float32), resolution=(1 / 0.325e-4, 1 / 0.325e-4),
                     resolutionunit="CENTIMETER")  # a cm-unit TIFF is calibrated: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(args[:1] + [str(tmp_path / "cm.tif")] + args[2:]) == 0
    assert io.read_tiff(tmp_path / "o.tif")[1]["pixel_um"] == pytest.approx(0.325)
