"""Reliability maps for network outputs (the review's section 4): physics consistency and ensemble disagreement.

* Consistency (ANNA-PALM-style, Ouyang et al. 2018): re-image the network's output through the known optics and
  compare with what was measured. For a refocused image the output at the target plane is O ⊛ PSF(0) and the
  input is O ⊛ PSF(Δz) (Δz = target − input plane), so for a thin sample
  output ⊛ PSF(Δz) = input ⊛ PSF(0) exactly; the map |output ⊛ PSF(Δz) − input ⊛ PSF(0)| is zero for a
  physically consistent answer and large where the network invented or lost structure.
* Ensemble disagreement (CARE-style, Weigert et al. 2018): the pixel-wise spread of independently seeded models;
  it rises where the input is out of the training distribution.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import torch

from refocuslib._validate import as_image_array
from refocuslib.optics import Microscope


def _conv_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve
    return fftconvolve(image, kernel, mode="same")


def _affine_residual(estimate: np.ndarray, reference: np.ndarray, fit_gain: bool = True):
    """Fit gain·estimate + offset ≈ reference by least squares (normalised images are defined up to gain and
    offset; ``fit_gain=False`` keeps 1 and 0). Returns (gain, offset, |residual| map,
    ‖residual‖₂ / ‖reference − mean‖₂)."""
    gain, offset = 1.0, 0.0
    if fit_gain:
        design = np.stack([estimate.ravel(), np.ones(estimate.size)], 1)
        (gain, offset), *_ = np.linalg.lstsq(design, reference.ravel(), rcond=None)
    err = np.abs(gain * estimate + offset - reference)
    denom = np.linalg.norm(reference - reference.mean()) + 1e-12
    return float(gain), float(offset), err, float(np.linalg.norm(err) / denom)


def _error_nrmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """RMSE against ``truth`` over truth's dynamic range (the range taken as 1 for a constant truth, where
    :func:`refocuslib.metrics.nrmse` would refuse)."""
    from refocuslib import metrics
    return metrics.rmse(prediction, truth) / (float(truth.max() - truth.min()) or 1.0)


def consistency_map(output, input_image, microscope: Microscope, dz_um: float, input_plane_um: float | None = None,
                    fit_gain: bool = True, psf_pixels: int | None = None) -> Dict[str, np.ndarray | float]:
    """Physics consistency of a refocused ``output`` with its ``input_image`` (both (H, W)).

    A thin sample at z = 0 seen at focal plane f gives I_f = O ⊛ PSF(−f) (PSF argument: emitter depth minus
    focal plane, as in :func:`refocuslib.imaging.render_points`). The input was taken at ``input_plane_um`` = f_in
    and the output claims to be the plane f_in + ``dz_um`` (the uniform DPM), so for a correct output
    output ⊛ PSF(−f_in) = input ⊛ PSF(−f_in − dz) — exact whatever the PSF's symmetry (aberrations included).
    ``input_plane_um`` defaults to −dz (the output is the in-focus plane: output ⊛ PSF(dz) = input ⊛ PSF(0)).
    ``fit_gain``: normalised images are defined up to gain and offset, so a least-squares a·reimaged + b is
    fitted to the reference first. Returns ``{'map': |a·reimaged + b − reference|, 'reimaged', 'reference',
    'gain', 'offset', 'nrmse': ‖map‖₂ / ‖reference − mean‖₂}`` (0 for a perfectly consistent output).
    """
    out = as_image_array(output, "output", ndim=2).astype(np.float64)
    inp = as_image_array(input_image, "input_image", ndim=2).astype(np.float64)
    if out.shape != inp.shape:
        raise ValueError(f"input_image: shape {inp.shape} must match output's {out.shape}")
    dz = float(dz_um)
    f_in = -dz if input_plane_um is None else float(input_plane_um)
    if not (np.isfinite(dz) and np.isfinite(f_in)):
        raise ValueError(f"dz_um/input_plane_um: must be finite, got {dz_um!r}, {input_plane_um!r}")
    n = psf_pixels or (2 * (min(out.shape) // 2) + 1)
    psf = microscope.replace(nfp_um=0.0).psf([-f_in, -(f_in + dz)], n, dtype=torch.float64).numpy()
    reimaged = _conv_same(out, psf[0])
    reference = _conv_same(inp, psf[1])
    gain, offset, err, nrmse = _affine_residual(reimaged, reference, fit_gain)
    return {"map": err, "reimaged": reimaged, "reference": reference, "gain": gain, "offset": offset,
            "nrmse": nrmse}


def ensemble_predictions(models: Sequence[torch.nn.Module], predict: Callable[[torch.nn.Module], torch.Tensor]
                         ) -> np.ndarray:
    """Stack ``predict(model)`` for every model (evaluation mode, no gradients) → (K, ...) NumPy array."""
    if len(models) < 2:
        raise ValueError(f"models: an ensemble needs at least 2 models, got {len(models)}")
    outs = []
    for m in models:
        was_training = m.training
        m.eval()
        with torch.no_grad():
            outs.append(predict(m).detach().cpu().numpy())
        m.train(was_training)
    return np.stack(outs)


def ensemble_disagreement(predictions) -> Dict[str, np.ndarray | float]:
    """Pixel-wise spread of an ensemble's predictions (K, ...): ``{'mean', 'std', 'range', 'score'}`` with
    ``range`` the mean prediction's dynamic range (99.9th − 0.1th percentile) and ``score`` the mean std divided
    by it (comparable across inputs)."""
    p = as_image_array(predictions, "predictions", ndim=(2, 3, 4, 5)).astype(np.float64)
    if p.shape[0] < 2:
        raise ValueError(f"predictions: need at least 2 ensemble members along axis 0, got {p.shape[0]}")
    mean, std = p.mean(0), p.std(0, ddof=1)
    rng = float(np.percentile(mean, 99.9) - np.percentile(mean, 0.1)) or 1.0
    return {"mean": mean, "std": std, "range": rng, "score": float(std.mean() / rng)}


def refocus_reliability(models: Sequence[torch.nn.Module], image, dz_um: float, input_plane_um: float,
                        microscope: Microscope, truth=None, trained_range_um=None) -> Dict[str, object]:
    """Refocus one image with every member of a Deep-Z ensemble and score the answer three ways.

    ``image`` (H, W) raw or normalised camera image taken at focal plane ``input_plane_um`` (relative to the
    thin sample) through ``microscope``; ``dz_um`` the uniform DPM. Returns ``{'mean', 'std'`` (pixel-wise over
    members), ``'disagreement'`` (:func:`ensemble_disagreement` score), ``'consistency'`` (the
    :func:`consistency_map` dict of the ensemble mean), ``'consistency_floor'`` (the same check applied to the
    noise-free ``truth``: what the input's camera noise alone leaves, which depends on the sample's brightness
    and sparsity), ``'consistency_excess'`` (consistency NRMSE / floor: 1 for an output as consistent as the
    truth; NaN without truth), ``'error_nrmse'`` (RMSE of the mean against ``truth`` / truth's range, NaN without
    truth), ``'outside_trained_range'}``. A DPM outside ``trained_range_um`` is
    flagged here (the warning is recorded, not raised): out-of-range inputs are what this function is for.
    """
    import warnings
    from refocuslib.datasets.deepz import normalize
    from refocuslib.inference import refocus
    img = normalize(as_image_array(image, "image", ndim=2))
    if len(models) < 2:
        raise ValueError(f"models: an ensemble needs at least 2 models, got {len(models)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preds = np.stack([refocus(m, img, dz_um, trained_range_um=trained_range_um, normalize=False)
                          for m in models])
    dis = ensemble_disagreement(preds)
    cons = consistency_map(dis["mean"], img, microscope, dz_um, input_plane_um=input_plane_um)
    err = floor = float("nan")
    if truth is not None:
        t = as_image_array(truth, "truth", ndim=2).astype(np.float64)
        if t.shape != img.shape:
            raise ValueError(f"truth: shape {t.shape} must match the image's {img.shape}")
        err = _error_nrmse(dis["mean"], t)
        floor = consistency_map(t, img, microscope, dz_um, input_plane_um=input_plane_um)["nrmse"]
    from refocuslib.dpm import DPMRangeWarning
    out_of_range = any(issubclass(w.category, DPMRangeWarning) for w in caught)
    return {"mean": dis["mean"], "std": dis["std"], "disagreement": dis["score"], "consistency": cons,
            "consistency_floor": float(floor), "consistency_excess": float(cons["nrmse"] / floor),
            "error_nrmse": float(err), "outside_trained_range": bool(out_of_range)}


def volume_reliability(models: Sequence[torch.nn.Module], images, z_inputs_um, z_outputs_um,
                       truth=None) -> Dict[str, object]:
    """Recurrent-MZ ensemble: reconstruct the volume (Z, H, W) at ``z_outputs_um`` from ``images`` (M, H, W) at
    ``z_inputs_um`` with every member and score it.

    A thick sample has no exact thin-sample re-imaging identity, so the physics check here is data consistency:
    the output planes at the measured positions must reproduce the measured images (NRMSE after a gain/offset
    fit, ``'data_consistency_nrmse'``). Returns ``{'mean', 'std'`` (Z, H, W), ``'disagreement'`` (score over the
    volume), ``'disagreement_per_plane'`` (Z,), ``'data_consistency_nrmse'``, ``'error_nrmse'`` (RMSE of the
    mean against ``truth`` (Z, H, W) / truth's range; NaN without truth)}``.
    """
    from refocuslib.tasks.recurrent_mz import recurrent_mz_volume
    if len(models) < 2:
        raise ValueError(f"models: an ensemble needs at least 2 models, got {len(models)}")
    imgs = as_image_array(images, "images", ndim=3).astype(np.float32)
    zi = np.asarray(z_inputs_um, dtype=np.float64).ravel()
    zo = np.asarray(z_outputs_um, dtype=np.float64).ravel()
    preds = np.stack([recurrent_mz_volume(m, imgs, zi, zo) for m in models])
    dis = ensemble_disagreement(preds)
    mean = dis["mean"]
    per_plane = dis["std"].mean(axis=(1, 2)) / dis["range"]
    errs = []
    for img, z in zip(imgs, zi):
        k = int(np.argmin(np.abs(zo - z)))
        if abs(zo[k] - z) > 1e-6:
            continue  # this input plane is not among the outputs
        errs.append(_affine_residual(mean[k], img)[3])
    err = float("nan")
    if truth is not None:
        t = as_image_array(truth, "truth", ndim=3).astype(np.float64)
        if t.shape != mean.shape:
            raise ValueError(f"truth: shape {t.shape} must match the output volume's {mean.shape}")
        err = _error_nrmse(mean, t)
    return {"mean": mean, "std": dis["std"], "disagreement": dis["score"], "disagreement_per_plane": per_plane,
            "data_consistency_nrmse": float(np.mean(errs)) if errs else float("nan"), "error_nrmse": float(err)}
