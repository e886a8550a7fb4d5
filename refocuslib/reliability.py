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


def consistency_map(output, input_image, microscope: Microscope, dz_um: float,
                    psf_pixels: int | None = None) -> Dict[str, np.ndarray | float]:
    """Physics consistency of a refocused ``output`` with its ``input_image`` (both (H, W), same units).

    ``dz_um`` is the refocusing distance (target plane − input plane, the uniform DPM value). Returns
    ``{'map': |out ⊛ PSF(Δz) − in ⊛ PSF(0)|, 'reimaged': out ⊛ PSF(Δz), 'reference': in ⊛ PSF(0),
    'nrmse': ‖map‖₂ / ‖reference − mean‖₂}`` (0 for a perfectly consistent output).
    """
    out = as_image_array(output, "output", ndim=2).astype(np.float64)
    inp = as_image_array(input_image, "input_image", ndim=2).astype(np.float64)
    if out.shape != inp.shape:
        raise ValueError(f"input_image: shape {inp.shape} must match output's {out.shape}")
    n = psf_pixels or (2 * (min(out.shape) // 2) + 1)
    psf = microscope.replace(nfp_um=0.0).psf([float(dz_um), 0.0], n, dtype=torch.float64).numpy()
    reimaged = _conv_same(out, psf[0])
    reference = _conv_same(inp, psf[1])
    err = np.abs(reimaged - reference)
    denom = np.linalg.norm(reference - reference.mean()) + 1e-12
    return {"map": err, "reimaged": reimaged, "reference": reference,
            "nrmse": float(np.linalg.norm(reimaged - reference) / denom)}


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
    """Pixel-wise spread of an ensemble's predictions (K, ...): ``{'mean', 'std', 'score'}`` with ``score`` the
    mean std normalised by the mean prediction's dynamic range (comparable across inputs)."""
    p = as_image_array(predictions, "predictions", ndim=(2, 3, 4, 5)).astype(np.float64)
    if p.shape[0] < 2:
        raise ValueError(f"predictions: need at least 2 ensemble members along axis 0, got {p.shape[0]}")
    mean, std = p.mean(0), p.std(0, ddof=1)
    rng = float(np.percentile(mean, 99.9) - np.percentile(mean, 0.1)) or 1.0
    return {"mean": mean, "std": std, "score": float(std.mean() / rng)}
