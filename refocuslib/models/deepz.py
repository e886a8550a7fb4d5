"""Deep-Z generator and discriminator (Wu et al., Nat. Methods 2019, Methods Eq. 1–5).

Generator input: 2 channels, the normalised image and DPM/10 (see :func:`refocuslib.dpm.to_network`);
output: the refocused image. ``width`` scales every channel count (1.0 = paper; CI uses ~0.125).
"""
from __future__ import annotations

import torch

from refocuslib.models.blocks import PatchDiscriminator, ResUNet2D, scaled

#: (c_mid, c_out) of the five residual down blocks, Deep-Z Methods.
DEEPZ_CHANNELS = ((25, 48), (72, 96), (144, 192), (288, 384), (576, 768))
#: discriminator block widths ending at 3072 (FC 3072 → 3072 → 1).
DEEPZ_DISC_CHANNELS = (96, 192, 384, 768, 1536, 3072)


class DeepZGenerator(ResUNet2D):
    """Deep-Z generator: five residual down blocks, four up blocks, 1×1 output conv (Eq. 1–2)."""

    def __init__(self, width: float = 1.0, in_channels: int = 2, out_channels: int = 1,
                 levels: int = 5):
        if not 2 <= levels <= 5:
            raise ValueError(f"levels: must be in [2, 5], got {levels}")
        self.width = width
        chans = [(scaled(a, width), scaled(b, width)) for a, b in DEEPZ_CHANNELS[:levels]]
        super().__init__(in_channels, out_channels, chans, act="relu")

    def forward(self, image: torch.Tensor, dpm_network: torch.Tensor | None = None) -> torch.Tensor:
        """``image`` (B, 1, H, W) and ``dpm_network`` (B, 1, H, W) = DPM/10; or a pre-stacked (B, 2, H, W)."""
        x = image if dpm_network is None else torch.cat([image, dpm_network], 1)
        return super().forward(x)


class DeepZDiscriminator(PatchDiscriminator):
    """Deep-Z LSGAN discriminator (Eq. 3): six blocks with stride-2 second convolutions, average pooling,
    FC → FC → sigmoid. Input: the (target or generated) image, 1 channel."""

    def __init__(self, width: float = 1.0, in_channels: int = 1, blocks: int = 6):
        if not 1 <= blocks <= 6:
            raise ValueError(f"blocks: must be in [1, 6], got {blocks}")
        super().__init__(in_channels, [scaled(c, width) for c in DEEPZ_DISC_CHANNELS[:blocks]])
