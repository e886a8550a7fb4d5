"""Virtual refocusing with a trained Deep-Z generator (Wu et al., Nat. Methods 16, 1323 (2019)).

* :func:`refocus` — one image and one DPM (a number: a plane at that distance; an (H, W) map: a surface);
* :func:`refocus_stack` — one image to a virtual z-stack at the distances ``z_um`` (uniform DPMs, batched);
* :func:`load_model` — rebuild the generator from a checkpoint written by :class:`refocuslib.tasks.deepz.DeepZTask`.

The image is normalised as in training (:func:`refocuslib.datasets.deepz.normalize`: triangle background
subtracted, divided by the 99.9th percentile) unless ``normalize=False``; outputs are in those normalised units.
Images larger than ``tile_px`` are processed in overlapping tiles blended with linear ramps, so memory stays
bounded. A DPM outside the model's trained range raises :class:`refocuslib.dpm.DPMRangeWarning`.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from refocuslib import dpm as dpm_lib
from refocuslib._validate import as_image_array, positive_int

__all__ = ["refocus", "refocus_stack", "load_model", "trained_range_of"]

MIN_IMAGE_PX = 8


def load_model(checkpoint, device="cpu") -> nn.Module:
    """The Deep-Z generator of a checkpoint (a ``.pt`` file, or a training folder: ``best.pt``, else
    ``last.pt``), in eval mode, with attributes ``trained_range_um`` (lo, hi), ``pixel_um`` and ``model_info``."""
    from refocuslib.io import load_checkpoint, resolve_checkpoint
    from refocuslib.models.deepz import DeepZGenerator

    path = resolve_checkpoint(checkpoint)
    ck = load_checkpoint(path, map_location="cpu")
    info = ck.get("extra") or {}
    model = info.get("model")
    if info.get("kind") != "deepz" or not model or ck.get("generator") is None:
        raise ValueError(f"checkpoint: {path} is not a Deep-Z checkpoint (its extra state has no Deep-Z model "
                         f"config; train it with refocuslib.tasks.deepz.DeepZTask)")
    gen = DeepZGenerator(float(model["width"]), in_channels=int(model.get("in_channels", 2)),
                         levels=int(model["levels"]))
    gen.load_state_dict(ck["generator"])
    gen.trained_range_um = tuple(float(v) for v in info["trained_range_um"])
    gen.pixel_um = info.get("pixel_um")
    gen.model_info = {k: v for k, v in info.items()}
    gen.model_info["checkpoint"] = str(path)
    gen.model_info["step"] = ck.get("step")
    return gen.to(device).eval()


def trained_range_of(model) -> Optional[Tuple[float, float]]:
    """The ``trained_range_um`` a model carries (set by :func:`load_model`), or None."""
    r = getattr(model, "trained_range_um", None)
    return None if r is None else (float(r[0]), float(r[1]))


# ---------------------------------------------------------------------------------------------- checks
def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module (a Deep-Z generator), got {type(model).__name__}")
    return model


def _check_image(image) -> np.ndarray:
    img = as_image_array(image, "image", ndim=2).astype(np.float32)
    if min(img.shape) < MIN_IMAGE_PX:
        raise ValueError(f"image: each side must be >= {MIN_IMAGE_PX} pixels, got shape {img.shape}")
    return img


def _check_tiling(tile_px, overlap_px) -> Tuple[int, int]:
    tile = positive_int(tile_px, "tile_px", minimum=32)
    overlap = positive_int(overlap_px, "overlap_px", minimum=0)
    if overlap > tile // 4:
        raise ValueError(f"overlap_px: must be in [0, tile_px/4 = {tile // 4}], got {overlap_px}")
    return tile, overlap


def _warn_range(dpm_values, model, trained_range_um) -> None:
    rng = trained_range_um if trained_range_um is not None else trained_range_of(model)
    if rng is None:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dpm_lib.check_trained_range(dpm_values, rng)
    for w in caught:  # re-issue at the caller of refocus / refocus_stack
        warnings.warn(w.message, w.category, stacklevel=3)


# ---------------------------------------------------------------------------------------------- core
def _starts(n: int, tile: int, step: int):
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(s))


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1D blending weight of a tile: linear ramps over ``overlap`` pixels at inner edges."""
    w = np.ones(n, dtype=np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if not at_start:
            w[:overlap] = np.minimum(w[:overlap], r)
        if not at_end:
            w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


def _run(model: nn.Module, image: np.ndarray, dpms_um: np.ndarray, batch_size: int, tile: int,
         overlap: int) -> np.ndarray:
    """Outputs (N, H, W) for the normalised ``image`` (H, W) and ``dpms_um`` (N, H, W) (tiled, batched)."""
    h, w = image.shape
    n = dpms_um.shape[0]
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = np.zeros((n, h, w), dtype=np.float32)
    weight = np.zeros((h, w), dtype=np.float32)
    ys, xs = _starts(h, tile, tile - overlap), _starts(w, tile, tile - overlap)
    was_training = model.training
    model.eval()
    # channels_last: oneDNN's fast convolution layout on CPUs (≈ 2× at 1024², `python -m refocuslib.bench deepz`)
    model.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            for y0 in ys:
                for x0 in xs:
                    th, tw = min(tile, h), min(tile, w)
                    img_t = torch.from_numpy(np.ascontiguousarray(image[y0:y0 + th, x0:x0 + tw]))
                    wy = _ramp(th, overlap, y0 == 0, y0 + th >= h)
                    wx = _ramp(tw, overlap, x0 == 0, x0 + tw >= w)
                    wt = wy[:, None] * wx[None, :]
                    for s in range(0, n, batch_size):
                        d = torch.from_numpy(dpm_lib.to_network(
                            np.ascontiguousarray(dpms_um[s:s + batch_size, y0:y0 + th, x0:x0 + tw])))
                        b = d.shape[0]
                        x = img_t[None, None].expand(b, 1, th, tw)
                        y = model(x.to(dev, dtype), d[:, None].to(dev, dtype))
                        out[s:s + b, y0:y0 + th, x0:x0 + tw] += y[:, 0].float().cpu().numpy() * wt
                    weight[y0:y0 + th, x0:x0 + tw] += wt
    finally:
        model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    return out / np.maximum(weight, 1e-12)


def _prepare(model, image, normalize: bool) -> np.ndarray:
    _check_model(model)
    img = _check_image(image)
    if normalize:
        from refocuslib.datasets.deepz import normalize as _norm
        img = _norm(img)
    return img


def refocus(model, image, dpm_um, trained_range_um: Optional[Tuple[float, float]] = None, normalize: bool = True,
            tile_px: int = 1024, overlap_px: int = 64) -> np.ndarray:
    """Refocus one image with one DPM (Deep-Z Fig. 1–4): returns the output (H, W) float32.

    ``image`` (H, W); ``dpm_um``: a number (uniform DPM: a plane ``dpm_um`` µm from the input plane) or an
    (H, W) map (a surface, e.g. :func:`refocuslib.dpm.plane` / ``cylinder``). ``trained_range_um`` (lo, hi)
    defaults to the model's own (:func:`load_model`); DPM entries outside it raise a
    :class:`~refocuslib.dpm.DPMRangeWarning`. ``tile_px``/``overlap_px``: images larger than ``tile_px`` are cut into
    overlapping tiles (one forward pass each, blended with linear ramps over the overlap).
    """
    img = _prepare(model, image, normalize)
    tile, overlap = _check_tiling(tile_px, overlap_px)
    if np.ndim(dpm_um) == 0:
        try:
            v = float(dpm_um)
        except (TypeError, ValueError):
            raise ValueError(f"dpm_um: expected a number or an (H, W) array, got {dpm_um!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"dpm_um: must be finite, got {dpm_um!r}")
        d = np.full(img.shape, v, dtype=np.float64)
    else:
        d = as_image_array(dpm_um, "dpm_um", ndim=2).astype(np.float64)
        if d.shape != img.shape:
            raise ValueError(f"dpm_um: expected shape {img.shape} (the image's), got {d.shape}")
    _warn_range(d, model, trained_range_um)
    return _run(model, img, d[None], 1, tile, overlap)[0]


def refocus_stack(model, image, z_um: Sequence[float], batch_size: int = 8,
                  trained_range_um: Optional[Tuple[float, float]] = None, normalize: bool = True,
                  tile_px: int = 1024, overlap_px: int = 64) -> np.ndarray:
    """A virtual z-stack (len(z_um), H, W) from one image (Deep-Z Fig. 1): uniform DPMs at each ``z_um`` (µm
    from the input plane), ``batch_size`` planes per forward pass, tiled like :func:`refocus`."""
    img = _prepare(model, image, normalize)
    tile, overlap = _check_tiling(tile_px, overlap_px)
    z = as_image_array(z_um, "z_um", ndim=(0, 1)).astype(np.float64).reshape(-1)
    batch_size = positive_int(batch_size, "batch_size")
    _warn_range(z[None, :], model, trained_range_um)  # fraction of planes outside
    dpms = np.broadcast_to(z[:, None, None], (len(z),) + img.shape)
    return _run(model, img, dpms, batch_size, tile, overlap)
