"""W-Net (Yang et al., "Deep learning-based virtual refocusing of images using an engineered point-spread
function", 2021, Fig. 1): two cascaded generator/discriminator pairs.

* G_R (refocusing): input image (DH-PSF or wide-field) + DPM/10 → the same modality refocused onto the DPM's
  surface;
* G_C (cross-modality): G_R's output → the confocal image of that surface (better lateral resolution).

Both generators are Deep-Z residual U-Nets (:class:`refocuslib.models.blocks.ResUNet2D`, channels of
:data:`refocuslib.models.deepz.DEEPZ_CHANNELS` scaled by ``width``); each has its own LSGAN
:class:`~refocuslib.models.blocks.PatchDiscriminator`. Trained jointly with L = L_R + L_C
(:mod:`refocuslib.tasks.wnet`). The comparison model of the paper (Fig. 2d–f) is a single U-Net from image + DPM
straight to confocal, one generator, i.e. about half W-Net's parameters (:func:`single_unet`).

:class:`WNet` returns one tensor (B, 2, H, W): channel :data:`REFOCUSED` = G_R's output, channel :data:`CROSS`
= G_C's output (one tensor so that the shared training loop can detach it for the discriminators).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from refocuslib._validate import positive_int
from refocuslib.models.blocks import PatchDiscriminator, ResUNet2D, count_parameters, scaled
from refocuslib.models.deepz import DEEPZ_CHANNELS, DEEPZ_DISC_CHANNELS

__all__ = ["REFOCUSED", "CROSS", "WNet", "SingleUNet", "WNetDiscriminators", "wnet", "single_unet",
           "patch_discriminator", "wnet_discriminators", "count_parameters"]

#: channel of :class:`WNet`'s output holding G_R's refocused image
REFOCUSED = 0
#: channel of :class:`WNet`'s output holding G_C's cross-modality (confocal-like) image
CROSS = 1


def _channels(width: float, levels: int):
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width: must be a number > 0, got {width!r}")
    levels = positive_int(levels, "levels")
    if not 2 <= levels <= len(DEEPZ_CHANNELS):
        raise ValueError(f"levels: must be in [2, {len(DEEPZ_CHANNELS)}], got {levels}")
    return [(scaled(a, width), scaled(b, width)) for a, b in DEEPZ_CHANNELS[:levels]]


def _check_pair(image: torch.Tensor, dpm_network: Optional[torch.Tensor]) -> torch.Tensor:
    if not torch.is_tensor(image) or image.ndim != 4:
        raise ValueError(f"image: expected a (B, 1, H, W) tensor (or (B, 2, H, W) with the DPM stacked), got "
                         f"{tuple(image.shape) if torch.is_tensor(image) else type(image).__name__}")
    if dpm_network is None:
        if image.shape[1] != 2:
            raise ValueError(f"image: without dpm_network the input must stack image and DPM/10 as 2 channels, "
                             f"got {image.shape[1]}")
        return image
    if image.shape[1] != 1:
        raise ValueError(f"image: expected 1 channel, got {image.shape[1]}")
    if not torch.is_tensor(dpm_network) or dpm_network.shape != image.shape:
        raise ValueError(f"dpm_network: expected shape {tuple(image.shape)} (DPM/10), got "
                         f"{tuple(dpm_network.shape) if torch.is_tensor(dpm_network) else type(dpm_network).__name__}")
    return torch.cat([image, dpm_network.to(image.dtype)], 1)


class WNet(nn.Module):
    """Two cascaded residual U-Nets: ``refocus`` (G_R, 2 → 1 channels) then ``cross`` (G_C, 1 → 1).

    ``width`` scales the Deep-Z channel counts (1.0 = paper), ``levels`` the number of resolution levels (≤ 5).
    """

    def __init__(self, width: float = 1.0, levels: int = 5):
        super().__init__()
        chans = _channels(width, levels)
        self.width, self.levels = float(width), int(levels)
        self.refocus = ResUNet2D(2, 1, chans, act="relu")
        self.cross = ResUNet2D(1, 1, chans, act="relu")

    def forward(self, image: torch.Tensor, dpm_network: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``image`` (B, 1, H, W) and ``dpm_network`` = DPM/10 (B, 1, H, W) → (B, 2, H, W):
        [:, REFOCUSED] = G_R(image, DPM), [:, CROSS] = G_C(G_R(image, DPM))."""
        refocused = self.refocus(_check_pair(image, dpm_network))
        return torch.cat([refocused, self.cross(refocused)], 1)

    @staticmethod
    def split(output: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, H, W) → (refocused, cross), each (B, 1, H, W)."""
        return output[:, REFOCUSED:REFOCUSED + 1], output[:, CROSS:CROSS + 1]


class SingleUNet(ResUNet2D):
    """The paper's comparison model: one residual U-Net from image + DPM/10 straight to confocal."""

    def __init__(self, width: float = 1.0, levels: int = 5):
        super().__init__(2, 1, _channels(width, levels), act="relu")
        self.width, self.levels = float(width), int(levels)

    def forward(self, image: torch.Tensor, dpm_network: Optional[torch.Tensor] = None) -> torch.Tensor:
        return super().forward(_check_pair(image, dpm_network))


def patch_discriminator(width: float = 1.0, blocks: int = 6) -> PatchDiscriminator:
    """Deep-Z LSGAN discriminator (Eq. 3) with ``blocks`` stride-2 blocks of scaled widths, 1 input channel."""
    blocks = positive_int(blocks, "blocks")
    if blocks > len(DEEPZ_DISC_CHANNELS):
        raise ValueError(f"blocks: must be in [1, {len(DEEPZ_DISC_CHANNELS)}], got {blocks}")
    _channels(width, 2)  # validates width
    return PatchDiscriminator(1, [scaled(c, width) for c in DEEPZ_DISC_CHANNELS[:blocks]])


class WNetDiscriminators(nn.Module):
    """The two discriminators of W-Net: ``refocus`` judges G_R's output (against the target-plane image of
    the input modality), ``cross`` judges G_C's output (against confocal). ``forward`` takes W-Net's
    (B, 2, H, W) output (or targets stacked the same way) and returns (D_R, D_C) probabilities (B, 1) each."""

    def __init__(self, width: float = 1.0, blocks: int = 6):
        super().__init__()
        self.refocus = patch_discriminator(width, blocks)
        self.cross = patch_discriminator(width, blocks)

    def forward(self, stacked: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if stacked.ndim != 4 or stacked.shape[1] != 2:
            raise ValueError(f"stacked: expected (B, 2, H, W) [refocused, cross], got {tuple(stacked.shape)}")
        return self.refocus(stacked[:, REFOCUSED:REFOCUSED + 1]), self.cross(stacked[:, CROSS:CROSS + 1])


def wnet(width: float = 1.0, levels: int = 5) -> WNet:
    """W-Net generator pair (paper: ``width=1, levels=5``)."""
    return WNet(width, levels)


def single_unet(width: float = 1.0, levels: int = 5) -> SingleUNet:
    """Single U-Net comparison model with the generator widths of W-Net: about half its parameters."""
    return SingleUNet(width, levels)


def wnet_discriminators(width: float = 1.0, blocks: int = 6) -> WNetDiscriminators:
    """Both W-Net discriminators (paper: ``width=1, blocks=6``)."""
    return WNetDiscriminators(width, blocks)
