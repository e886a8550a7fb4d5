"""W-Net training tasks for :func:`refocuslib.train.fit` (Yang et al. 2021, Methods).

* :class:`WNetTask` — the two cascaded generators trained jointly, L = L_R + L_C, each term the Deep-Z
  generator loss (Eq. 4: L1 + α·(1 − D(G))²) against its own target: G_R against the input modality at the
  target plane, G_C against the confocal image of that plane. Gradients of L_C flow through G_C into G_R (the
  cascade is trained end to end). With ``gan=True`` both discriminators are updated with the LSGAN loss (Eq. 5).
* :class:`SingleUNetTask` — the single U-Net comparison model (image + DPM → confocal).

**Loss.** The L1 term is foreground-weighted, :func:`foreground_l1`: w = 1 + λ·clip(target, 0, 1) (targets in
units of an in-focus bead's peak), Σw|G − T| / Σw. Why: the paper's loss is MAE plus an adversarial term on
dense, background-subtracted 256-px bead fields; the discriminator is what rejects an empty image there. Our
CPU-scale training drops the GAN (α = 0, as for the Deep-Z CPU recipe) and our 64-px crops hold a few beads,
≈ 1 % of the pixels: a plain L1 is then minimised by an all-dark image (its MAE is below the input noise).
The weight restores the beads' share of the loss that the paper's dense fields and discriminator gave them.

**Validation.** A fixed set of fields with input planes near focus (±``val_range_um``) refocused to the bead
plane (target z = 0): ``val_loss`` = 1 − JI of the final (confocal-like) output against the confocal truth
(:func:`refocuslib.evaluate.wnet.pooled_jaccard`), so the best checkpoint is the one that localises beads
best, not the darkest; the zero output's and the identity's (input as output) JI are recorded beside it.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from refocuslib import losses
from refocuslib._validate import in_range, positive_int
from refocuslib.datasets.wnet import INPUT_MODALITIES, WNetBeadSimulator, WNetDataConfig
from refocuslib.evaluate.wnet import pooled_jaccard
from refocuslib.models.wnet import CROSS, REFOCUSED, SingleUNet, WNet, patch_discriminator, wnet_discriminators
from refocuslib.optics import OIL_63X
from refocuslib.train import TrainTask

__all__ = ["foreground_l1", "WNetTask", "SingleUNetTask", "task_from_params", "simulator_from_params",
           "MICROSCOPES"]

Tensor = torch.Tensor


def foreground_l1(output: Tensor, target: Tensor, weight: float = 20.0) -> Tensor:
    """Foreground-weighted L1: Σ w·|output − target| / Σ w with w = 1 + ``weight``·clip(target, 0, 1)
    (``weight`` = 0: the plain MAE of Deep-Z Eq. 4)."""
    w = 1.0 + float(weight) * target.detach().clamp(0.0, 1.0)
    return (w * (output - target).abs()).sum() / w.sum()


class _BeadTask(TrainTask):
    """Shared by :class:`WNetTask` and :class:`SingleUNetTask`: the simulator, loss weights, the validation batch
    and the networks — ``make_generator(width, levels)`` and ``make_discriminator(width, blocks)`` of the subclass.
    ``init_seed`` seeds the weights (after the validation batch is drawn from its own generator)."""
    make_generator: Callable
    make_discriminator: Callable

    def __init__(self, simulator: WNetBeadSimulator, input_modality: str = "dh", width: float = 1.0,
                 levels: int = 5, gan: bool = True, disc_width: Optional[float] = None, disc_blocks: int = 6,
                 batch_size: int = 8, alpha: float = 0.02, fg_weight: float = 20.0, n_val: int = 16,
                 val_seed: int = 12345, val_range_um: float = 2.0, threshold: float = 0.3,
                 init_seed: Optional[int] = None):
        if not isinstance(simulator, WNetBeadSimulator):
            raise ValueError(f"simulator: expected a WNetBeadSimulator, got {type(simulator).__name__}")
        if input_modality not in INPUT_MODALITIES:
            raise ValueError(f"input_modality: one of {INPUT_MODALITIES}, got {input_modality!r}")
        self.simulator = simulator
        self.input_modality = input_modality
        self.batch_size = positive_int(batch_size, "batch_size")
        self.alpha = in_range(alpha, "alpha", 0.0, 10.0)
        self.fg_weight = in_range(fg_weight, "fg_weight", 0.0, 1e4)
        self.threshold = in_range(threshold, "threshold", 0.0, 10.0, lo_open=True)
        self.val_batch = simulator.sample_batch(
            positive_int(n_val, "n_val"), torch.Generator().manual_seed(int(val_seed)), input_modality,
            input_range_um=in_range(val_range_um, "val_range_um", 0.0, simulator.config.input_range_um(input_modality)),
            target_range_um=0.0)
        self._baselines = None
        if init_seed is not None:
            torch.manual_seed(int(init_seed))
        self.generator = type(self).make_generator(width, levels)
        self.discriminator = (type(self).make_discriminator(width if disc_width is None else disc_width, disc_blocks)
                              if gan else None)

    @property
    def trained_dpm_range_um(self) -> Tuple[float, float]:
        """DPM range (µm) covered by the training data (for :func:`refocuslib.dpm.check_trained_range`)."""
        return self.simulator.config.dpm_range_um(self.input_modality)

    def make_batch(self, step: int, generator: torch.Generator) -> Dict[str, Tensor]:
        return self.simulator.sample_batch(self.batch_size, generator, self.input_modality)

    def generate(self, batch: Dict[str, Tensor]) -> Tensor:
        return self.generator(batch["input"], batch["dpm"])

    def _term(self, output: Tensor, target: Tensor, d_fake: Optional[Tensor]) -> Tensor:
        loss = foreground_l1(output, target, self.fg_weight)
        if d_fake is not None and self.alpha > 0:
            loss = loss + self.alpha * losses.lsgan_generator_loss(d_fake)
        return loss

    def final_output(self, output: Tensor) -> Tensor:
        """The confocal-like channel of the generator's output (B, 1, H, W)."""
        return output

    def _ji(self, images: Tensor) -> Dict[str, float]:
        truth = self.val_batch["target_c"][:, 0].numpy()
        return pooled_jaccard(np.asarray(images, dtype=np.float32), truth, self.simulator.pixel_um,
                              threshold=self.threshold)

    def validate(self) -> Dict[str, float]:
        """``val_loss`` = 1 − JI (final output vs confocal truth, inputs within ±``val_range_um``, DPM = −z),
        with the JI of the all-zero output and of the identity (the input image as output)."""
        dev = next(self.generator.parameters()).device
        batch = {k: v.to(dev) for k, v in self.val_batch.items()}
        out = self.final_output(self.generator(batch["input"], batch["dpm"])).detach().float().cpu()
        ev = self._ji(out[:, 0].numpy())
        if self._baselines is None:
            inp = self.val_batch["input"][:, 0].numpy()
            self._baselines = {"val_ji_zero": self._ji(np.zeros_like(inp))["jaccard"],
                               "val_ji_identity": self._ji(inp)["jaccard"]}
        return {"val_loss": 1.0 - ev["jaccard"], "val_ji": ev["jaccard"], "val_beads": float(ev["n_true"]),
                "val_mae": float(losses.mae(out, self.val_batch["target_c"])), **self._baselines}


class WNetTask(_BeadTask):
    """Joint training of W-Net's G_R and G_C (L = L_R + L_C; with ``gan`` both LSGAN discriminators).

    ``width``/``levels``: generator size (paper 1.0/5); ``disc_width``/``disc_blocks``: discriminators
    (paper 1.0/6); ``fg_weight``: λ of :func:`foreground_l1`; ``alpha``: adversarial weight (paper 0.02).
    """

    make_generator = WNet
    make_discriminator = staticmethod(wnet_discriminators)

    def final_output(self, output: Tensor) -> Tensor:
        return output[:, CROSS:CROSS + 1]

    def generator_loss(self, batch: Dict[str, Tensor], output: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        refocused, cross = WNet.split(output)
        d_r, d_c = self.discriminator(output) if self.discriminator is not None else (None, None)
        loss_r = self._term(refocused, batch["target_r"], d_r)
        loss_c = self._term(cross, batch["target_c"], d_c)
        logs = {"loss_r": float(loss_r.detach()), "loss_c": float(loss_c.detach()),
                "mae_r": float(losses.mae(refocused.detach(), batch["target_r"])),
                "mae_c": float(losses.mae(cross.detach(), batch["target_c"]))}
        return loss_r + loss_c, logs

    def discriminator_loss(self, batch: Dict[str, Tensor], output: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        real = torch.cat([batch["target_r"], batch["target_c"]], 1)
        real_r, real_c = self.discriminator(real)
        fake_r, fake_c = self.discriminator(output)
        d_r = losses.lsgan_discriminator_loss(real_r, fake_r)
        d_c = losses.lsgan_discriminator_loss(real_c, fake_c)
        return d_r + d_c, {"d_loss_r": float(d_r.detach()), "d_loss_c": float(d_c.detach())}

    def validate(self) -> Dict[str, float]:
        val = super().validate()
        dev = next(self.generator.parameters()).device
        with torch.no_grad():
            out = self.generator(self.val_batch["input"].to(dev), self.val_batch["dpm"].to(dev)).cpu()
        val["val_mae_r"] = float(losses.mae(out[:, REFOCUSED:REFOCUSED + 1], self.val_batch["target_r"]))
        return val


class SingleUNetTask(_BeadTask):
    """The single U-Net comparison (image + DPM → confocal), the same loss with one discriminator if ``gan``."""

    make_generator = SingleUNet
    make_discriminator = staticmethod(patch_discriminator)

    def generator_loss(self, batch: Dict[str, Tensor], output: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        d = self.discriminator(output) if self.discriminator is not None else None
        loss = self._term(output, batch["target_c"], d)
        return loss, {"loss_c": float(loss.detach()), "mae_c": float(losses.mae(output.detach(), batch["target_c"]))}

    def discriminator_loss(self, batch: Dict[str, Tensor], output: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        d = losses.lsgan_discriminator_loss(self.discriminator(batch["target_c"]), self.discriminator(output))
        return d, {"d_loss_c": float(d.detach())}


_SIMULATORS: Dict[tuple, WNetBeadSimulator] = {}

#: microscopes a W-Net recipe's ``data.microscope`` may name (else a psf.json path or a dict of optics).
MICROSCOPES = {"OIL_63X": OIL_63X}


def _microscope_key(m) -> Optional[tuple]:
    """A cache key of a microscope's optics and pupil (None: a mask that cannot be keyed, do not cache)."""
    import dataclasses
    from refocuslib.calibrate import ZernikePupil
    fields = tuple((f.name, getattr(m, f.name)) for f in dataclasses.fields(m) if f.name != "mask")
    if m.mask is None:
        return fields + (("mask", None),)
    if isinstance(m.mask, ZernikePupil):  # a psf.json or a dict of optics
        return fields + (("mask", tuple(sorted(m.mask.coefficients_rad.items()))),)
    return None


def simulator_from_params(data: Optional[dict] = None) -> WNetBeadSimulator:
    """A :class:`WNetBeadSimulator` of ``data`` (:class:`WNetDataConfig` fields), cached per settings (its PSF
    stacks take seconds). ``data.microscope``: a name of :data:`MICROSCOPES` (default ``'OIL_63X'``, the
    paper's 63×/1.4 oil), a path to a ``psf.json`` written by ``refocuslib calibrate`` (relative: to the working
    folder, else the repository) or a dict of optics (``na``, ``wavelength_um``, ``n_immersion``, ``pixel_um``,
    optionally ``zernike_noll_rad``); a calibrated aberration is added to the DH mask (see
    :class:`~refocuslib.datasets.wnet.WNetDataConfig`)."""
    import json
    from refocuslib.calibrate import resolve_microscope
    data = dict(data or {})
    spec = data.pop("microscope", None)
    bad = set(data) - set(WNetDataConfig.__dataclass_fields__)
    if bad:
        raise ValueError(f"data: unknown keys {sorted(bad)}; accepted: {sorted(WNetDataConfig.__dataclass_fields__)}")
    microscope = OIL_63X if spec is None else resolve_microscope(spec, MICROSCOPES, "data.microscope")
    mkey = _microscope_key(microscope)
    if mkey is None:
        return WNetBeadSimulator(WNetDataConfig(microscope=microscope, **data))
    key = (json.dumps(data, sort_keys=True), mkey)
    if key not in _SIMULATORS:
        _SIMULATORS[key] = WNetBeadSimulator(WNetDataConfig(microscope=microscope, **data))
    return _SIMULATORS[key]


def task_from_params(kind: str = "wnet", input_modality: str = "dh", data: Optional[dict] = None,
                     **kwargs) -> _BeadTask:
    """The recipe factory (``train.TASKS['wnet']``): ``kind`` 'wnet' (the cascade) or 'single' (the single
    U-Net), fed with ``input_modality`` 'dh' or 'wf'; ``data``: :class:`WNetDataConfig` fields (``microscope``: see
    :func:`simulator_from_params`); other keyword
    arguments go to :class:`WNetTask` / :class:`SingleUNetTask`."""
    if kind not in ("wnet", "single"):
        raise ValueError(f"kind: 'wnet' or 'single', got {kind!r}")
    Task = WNetTask if kind == "wnet" else SingleUNetTask
    return Task(simulator_from_params(data), input_modality, **kwargs)
