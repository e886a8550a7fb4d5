"""W-Net training tasks for :func:`refocuslib.train.fit` (Yang et al. 2021, Methods).

* :class:`WNetTask` — the two cascaded generators trained jointly, L = L_R + L_C, each term the Deep-Z
  generator loss (Eq. 4: MAE + α·(1 − D(G))², α = 0.02) against its own target: G_R against the input modality
  at the target plane, G_C against the confocal image of that plane. Gradients of L_C flow through G_C into
  G_R (the cascade is trained end to end). Both discriminators are updated with the LSGAN loss (Eq. 5).
* :class:`SingleUNetTask` — the single U-Net comparison model (image + DPM → confocal) with one discriminator.

Batches come from :meth:`refocuslib.datasets.wnet.WNetBeadSimulator.sample_batch`; validation uses a fixed
batch, ``val_loss`` = MAE of the final (confocal-like) output, so both tasks are compared on the same number.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import torch

from refocuslib import losses
from refocuslib._validate import in_range, positive_int
from refocuslib.datasets.wnet import INPUT_MODALITIES, WNetBeadSimulator
from refocuslib.models.wnet import CROSS, REFOCUSED, SingleUNet, WNet, patch_discriminator, wnet_discriminators
from refocuslib.train import TrainConfig, TrainTask, checkpoint_dir, fit, load_generator_weights

__all__ = ["WNetTask", "SingleUNetTask", "train_cached"]

Tensor = torch.Tensor


class _BeadTask(TrainTask):
    def __init__(self, simulator: WNetBeadSimulator, input_modality: str, batch_size: int, alpha: float,
                 n_val: int, val_seed: int):
        if not isinstance(simulator, WNetBeadSimulator):
            raise ValueError(f"simulator: expected a WNetBeadSimulator, got {type(simulator).__name__}")
        if input_modality not in INPUT_MODALITIES:
            raise ValueError(f"input_modality: one of {INPUT_MODALITIES}, got {input_modality!r}")
        self.simulator = simulator
        self.input_modality = input_modality
        self.batch_size = positive_int(batch_size, "batch_size")
        self.alpha = in_range(alpha, "alpha", 0.0, 10.0)
        self.val_batch = simulator.sample_batch(positive_int(n_val, "n_val"),
                                                torch.Generator().manual_seed(int(val_seed)), input_modality)

    @property
    def trained_dpm_range_um(self) -> Tuple[float, float]:
        """DPM range (µm) covered by the training data (for :func:`refocuslib.dpm.check_trained_range`)."""
        return self.simulator.config.dpm_range_um(self.input_modality)

    def make_batch(self, step: int, generator: torch.Generator) -> Dict[str, Tensor]:
        return self.simulator.sample_batch(self.batch_size, generator, self.input_modality)

    def generate(self, batch: Dict[str, Tensor]) -> Tensor:
        return self.generator(batch["input"], batch["dpm"])

    def _val_output(self) -> Tuple[Dict[str, Tensor], Tensor]:
        dev = next(self.generator.parameters()).device
        batch = {k: v.to(dev) for k, v in self.val_batch.items()}
        return batch, self.generator(batch["input"], batch["dpm"])


class WNetTask(_BeadTask):
    """Joint training of W-Net's G_R and G_C with both LSGAN discriminators (L = L_R + L_C).

    ``width``/``levels``: generator size (paper 1.0/5); ``disc_width``/``disc_blocks``: discriminators
    (paper 1.0/6); ``init_seed`` seeds the weight initialisation.
    """

    def __init__(self, simulator: WNetBeadSimulator, input_modality: str = "dh", width: float = 1.0,
                 levels: int = 5, disc_width: Optional[float] = None, disc_blocks: int = 6, batch_size: int = 8,
                 alpha: float = 0.02, n_val: int = 16, val_seed: int = 12345, init_seed: int = 0):
        super().__init__(simulator, input_modality, batch_size, alpha, n_val, val_seed)
        torch.manual_seed(int(init_seed))
        self.generator = WNet(width, levels)
        self.discriminator = wnet_discriminators(width if disc_width is None else disc_width, disc_blocks)

    def generator_loss(self, batch: Dict[str, Tensor], output: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        refocused, cross = WNet.split(output)
        d_r, d_c = self.discriminator(output)
        loss_r = losses.deepz_generator_loss(refocused, batch["target_r"], d_r, self.alpha)
        loss_c = losses.deepz_generator_loss(cross, batch["target_c"], d_c, self.alpha)
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
        batch, out = self._val_output()
        return {"val_loss": float(losses.mae(out[:, CROSS:CROSS + 1], batch["target_c"])),
                "val_mae_r": float(losses.mae(out[:, REFOCUSED:REFOCUSED + 1], batch["target_r"]))}


class SingleUNetTask(_BeadTask):
    """The single U-Net comparison (image + DPM → confocal), Deep-Z loss with one LSGAN discriminator."""

    def __init__(self, simulator: WNetBeadSimulator, input_modality: str = "dh", width: float = 1.0,
                 levels: int = 5, disc_width: Optional[float] = None, disc_blocks: int = 6, batch_size: int = 8,
                 alpha: float = 0.02, n_val: int = 16, val_seed: int = 12345, init_seed: int = 0):
        super().__init__(simulator, input_modality, batch_size, alpha, n_val, val_seed)
        torch.manual_seed(int(init_seed))
        self.generator = SingleUNet(width, levels)
        self.discriminator = patch_discriminator(width if disc_width is None else disc_width, disc_blocks)

    def generator_loss(self, batch: Dict[str, Tensor], output: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        loss = losses.deepz_generator_loss(output, batch["target_c"], self.discriminator(output), self.alpha)
        return loss, {"loss_c": float(loss.detach()), "mae_c": float(losses.mae(output.detach(), batch["target_c"]))}

    def discriminator_loss(self, batch: Dict[str, Tensor], output: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        d = losses.lsgan_discriminator_loss(self.discriminator(batch["target_c"]), self.discriminator(output))
        return d, {"d_loss_c": float(d.detach())}

    def validate(self) -> Dict[str, float]:
        batch, out = self._val_output()
        return {"val_loss": float(losses.mae(out, batch["target_c"]))}


def train_cached(simulator: WNetBeadSimulator, kind: str, input_modality: str, results_dir, steps: int,
                 width: float, levels: int, disc_blocks: int, batch_size: int, alpha: float, lr_g: float,
                 lr_d: float, seed: int = 0, device: str = "cpu", progress: bool = False):
    """Train (or resume, or load when finished) one model of the paper's comparison with the shared loop
    :func:`refocuslib.train.fit` in :func:`refocuslib.train.checkpoint_dir` — ``kind`` 'wnet' (the cascade) or
    'single' (the single U-Net), fed with ``input_modality`` 'dh' or 'wf'. Returns
    ``(task, TrainResult, seconds)`` with the generator (best validation weights) in eval mode on ``device``."""
    if kind not in ("wnet", "single"):
        raise ValueError(f"kind: 'wnet' or 'single', got {kind!r}")
    if input_modality not in INPUT_MODALITIES:
        raise ValueError(f"input_modality: one of {INPUT_MODALITIES}, got {input_modality!r}")
    steps = positive_int(steps, "steps")
    Task = WNetTask if kind == "wnet" else SingleUNetTask
    task = Task(simulator, input_modality, width=width, levels=levels, disc_blocks=disc_blocks,
                batch_size=batch_size, alpha=alpha, init_seed=seed)
    settings = {"data": simulator.config.as_dict(), "kind": kind, "modality": input_modality, "width": width,
                "levels": levels, "disc_blocks": disc_blocks, "batch_size": batch_size, "alpha": alpha,
                "steps": steps, "lr_g": lr_g, "lr_d": lr_d, "seed": seed}
    out = checkpoint_dir(results_dir, f"wnet_{kind}_{input_modality}", settings)
    t0 = time.perf_counter()
    res = fit(task, TrainConfig(steps=steps, out_dir=str(out), lr_g=lr_g, lr_d=lr_d,
                                val_every=max(steps // 5, 1), ckpt_every=max(steps // 5, 1),
                                log_every=max(steps // 25, 1), seed=seed, device=device, progress=progress))
    if (out / "best.pt").exists():  # the best-validation weights, as for every other paper's model
        load_generator_weights(task.generator, out / "best.pt")
    task.generator.to(device).eval()
    return task, res, time.perf_counter() - t0
