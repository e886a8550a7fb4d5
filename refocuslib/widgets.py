"""ipywidgets explorers over pure functions (the callbacks are plain NumPy and tested headlessly).

* :func:`render_psf_plane` — the PSF plane of a microscope at one defocus (pure).
* :func:`psf_explorer` — a z slider (and a microscope chooser) showing that plane.
* :func:`render_dpm_refocus` — a DPM (uniform, tilt, cylinder) and the Deep-Z refocused image (pure).
* :func:`dpm_explorer` — sliders for dz, tilt angle and cylinder diameter showing both side by side.
"""
from __future__ import annotations

import io
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["render_psf_plane", "plane_png", "psf_explorer", "render_dpm_refocus", "dpm_refocus_png",
           "dpm_explorer"]


def render_psf_plane(microscope, z_um: float, n_pixels: int) -> np.ndarray:
    """PSF plane (n_pixels, n_pixels) of ``microscope`` (an :class:`refocuslib.optics.Microscope`) for an emitter
    at ``z_um``, float64, photons per pixel per emitted photon (same as ``microscope.psf([z_um], n_pixels)[0]``)."""
    return microscope.psf([float(z_um)], int(n_pixels))[0].detach().cpu().numpy().astype(np.float64)


def plane_png(plane: np.ndarray, pixel_um: float, title: str = "", gamma: float = 0.5,
              size_in: float = 4.0) -> bytes:
    """Render a PSF plane to PNG bytes (no pyplot state: works without a display), intensity**gamma."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(size_in, size_in), dpi=90)
    ax = fig.add_subplot(111)
    n = plane.shape[-1]
    half = n * pixel_um / 2
    show = np.clip(plane, 0, None) ** gamma
    ax.imshow(show, cmap="magma", extent=(-half, half, half, -half))
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_title(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def psf_explorer(microscopes: Dict[str, object], z_range_um: Tuple[float, float] = (-3.0, 3.0),
                 n_pixels: int = 64, z_step_um: Optional[float] = None, gamma: float = 0.5):
    """A widget: choose a microscope, slide the emitter's z, see the PSF plane (:func:`render_psf_plane`).

    ``microscopes`` maps labels to :class:`~refocuslib.optics.Microscope`; ``z_range_um`` (lo, hi) bounds the
    slider (a microscope with a nominal focal plane, e.g. ``STORM_100X``, reads z as depth). Returns an
    ``ipywidgets.VBox`` whose ``update()`` re-renders (called on every change) and whose ``controls`` dict
    holds the ``microscope`` dropdown, the ``z`` slider and the ``image``.
    """
    import ipywidgets as w

    if not microscopes:
        raise ValueError("microscopes: give at least one {label: Microscope}")
    lo, hi = float(z_range_um[0]), float(z_range_um[1])
    if not hi > lo:
        raise ValueError(f"z_range_um: need lo < hi, got {z_range_um}")
    step = float(z_step_um) if z_step_um else (hi - lo) / 40
    labels = list(microscopes)
    choose = w.Dropdown(options=labels, value=labels[0], description="optics")
    z = w.FloatSlider(value=min(max(0.0, lo), hi), min=lo, max=hi, step=step, description="z (µm)",
                      continuous_update=False, readout_format=".2f")
    image = w.Image(format="png", width=360)
    info = w.HTML()

    def update(*_):
        m = microscopes[choose.value]
        plane = render_psf_plane(m, z.value, n_pixels)
        image.value = plane_png(plane, m.pixel_um, f"{choose.value}, z = {z.value:+.2f} µm", gamma=gamma)
        info.value = f"<small>peak {plane.max():.3g} photons/pixel, sum {plane.sum():.3f} (per photon)</small>"
        return plane

    choose.observe(update, names="value")
    z.observe(update, names="value")
    box = w.VBox([w.HBox([choose, z]), image, info])
    box.update = update
    box.controls = {"microscope": choose, "z": z, "image": image, "info": info}
    update()
    return box


# ------------------------------------------------------------------------------------- Deep-Z DPM explorer
DPM_MODES = ("uniform", "tilt", "cylinder")


def render_dpm_refocus(model, image, pixel_um: float, mode: str = "uniform", dz_um: float = 0.0,
                       tilt_deg: float = 0.0, diameter_um: float = 100.0, azimuth_deg: float = 0.0,
                       trained_range_um=None, normalize: bool = True) -> Dict[str, np.ndarray]:
    """Pure callback of :func:`dpm_explorer`: the DPM (µm) of ``mode`` and the Deep-Z refocused image.

    ``mode`` 'uniform': every pixel ``dz_um``; 'tilt': :func:`refocuslib.dpm.plane` (``tilt_deg``,
    ``azimuth_deg``, offset ``dz_um``); 'cylinder': :func:`refocuslib.dpm.cylinder` (``diameter_um``, axis
    ``azimuth_deg``, apex at ``dz_um``). Returns ``{'dpm': (H, W), 'output': (H, W)}`` (Deep-Z Figs. 1, 4).
    """
    from refocuslib import dpm as dpm_lib
    from refocuslib.inference import refocus

    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image: expected a 2D (H, W) array, got shape {img.shape}")
    if mode == "uniform":
        d = dpm_lib.uniform(img.shape, dz_um)
    elif mode == "tilt":
        d = dpm_lib.plane(img.shape, pixel_um, tilt_deg, azimuth_deg, offset_um=dz_um)
    elif mode == "cylinder":
        d = dpm_lib.cylinder(img.shape, pixel_um, diameter_um, axis_deg=azimuth_deg, offset_um=dz_um)
    else:
        raise ValueError(f"mode: one of {DPM_MODES}, got {mode!r}")
    out = refocus(model, img, d, trained_range_um=trained_range_um, normalize=normalize)
    return {"dpm": d, "output": out}


def dpm_refocus_png(image, dpm_um, output, pixel_um: float, title: str = "", size_in: float = 3.2) -> bytes:
    """Input, DPM and refocused output side by side as PNG bytes (no pyplot state)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(3 * size_in, size_in), dpi=80)
    h, w = np.shape(image)
    ext = (0, w * pixel_um, h * pixel_um, 0)
    for k, (arr, name, cmap) in enumerate(((image, "input", "magma"), (dpm_um, "DPM (µm)", "coolwarm"),
                                           (output, "Deep-Z output", "magma"))):
        ax = fig.add_subplot(1, 3, k + 1)
        im = ax.imshow(arr, cmap=cmap, extent=ext)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x (µm)", fontsize=8)
        if k == 1:
            fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def dpm_explorer(model, image, pixel_um: float, dz_range_um: Optional[Tuple[float, float]] = None,
                 tilt_range_deg: Tuple[float, float] = (-10.0, 10.0),
                 diameter_range_um: Tuple[float, float] = (20.0, 1000.0), normalize: bool = True):
    """A widget: choose uniform / tilt / cylinder, slide dz, tilt angle or cylinder diameter, see the DPM and
    the refocused image side by side (:func:`render_dpm_refocus`). ``dz_range_um`` defaults to the model's
    trained range (widened by half, so the failure outside it can be seen; a warning names the range).
    Returns an ``ipywidgets.VBox`` with ``update()`` and a ``controls`` dict."""
    import warnings

    import ipywidgets as w

    from refocuslib.inference import trained_range_of

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image: expected a 2D (H, W) array, got shape {img.shape}")
    tr = trained_range_of(model)
    if dz_range_um is None:
        lo, hi = tr if tr is not None else (-10.0, 10.0)
        pad = 0.5 * (hi - lo) / 2
        dz_range_um = (lo - pad, hi + pad)
    lo, hi = float(dz_range_um[0]), float(dz_range_um[1])
    if not hi > lo:
        raise ValueError(f"dz_range_um: need lo < hi, got {dz_range_um}")
    mode = w.ToggleButtons(options=list(DPM_MODES), value="uniform", description="DPM")
    dz = w.FloatSlider(value=min(max(0.0, lo), hi), min=lo, max=hi, step=(hi - lo) / 80, description="dz (µm)",
                       continuous_update=False, readout_format=".2f")
    tilt = w.FloatSlider(value=1.5, min=float(tilt_range_deg[0]), max=float(tilt_range_deg[1]), step=0.1,
                         description="tilt (°)", continuous_update=False)
    diam = w.FloatLogSlider(value=float(np.sqrt(diameter_range_um[0] * diameter_range_um[1])),
                            min=float(np.log10(diameter_range_um[0])), max=float(np.log10(diameter_range_um[1])),
                            step=0.02, description="⌀ (µm)", continuous_update=False)
    picture = w.Image(format="png", width=720)
    info = w.HTML()

    def update(*_):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = render_dpm_refocus(model, img, pixel_um, mode.value, dz.value, tilt.value, diam.value,
                                     normalize=normalize)
        d = res["dpm"]
        picture.value = dpm_refocus_png(img, d, res["output"], pixel_um,
                                        f"{mode.value}: DPM {d.min():+.2f} … {d.max():+.2f} µm")
        msgs = [str(c.message) for c in caught]
        info.value = ("<small style='color:#b00'>" + "<br>".join(msgs) + "</small>") if msgs else ""
        return res

    for ctl in (mode, dz, tilt, diam):
        ctl.observe(update, names="value")
    box = w.VBox([mode, w.HBox([dz, tilt, diam]), picture, info])
    box.update = update
    box.controls = {"mode": mode, "dz": dz, "tilt": tilt, "diameter": diam, "image": picture, "info": info}
    update()
    return box
