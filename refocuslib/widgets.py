"""ipywidgets explorers over pure functions (the callbacks are plain NumPy and tested headlessly).

* :func:`render_psf_plane` — the PSF plane of a microscope at one defocus (pure).
* :func:`psf_explorer` — a z slider (and a microscope chooser) showing that plane.
"""
from __future__ import annotations

import io
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["render_psf_plane", "plane_png", "psf_explorer"]


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
