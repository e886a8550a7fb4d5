"""3D U-Net baseline of Recurrent-MZ (Huang et al. 2021, Figs. 2 and 5): M input planes stacked as channels.

Input ``images`` (B, M, H, W), output the volume (B, Z, H, W) at the Z planes it was trained for. Each input
plane is broadcast along the output depth and, with a normalised depth coordinate channel, forms an
(M + 1)-channel volume (B, M + 1, Z, H, W); 3D convolutions (3×3×3, BN, ReLU), 1×2×2 max-pooling and
nearest upsampling with skip concatenations map it to one channel. The network knows the inputs only by
their channel index, so it needs the same M, the same axial positions and the same order as in training
(the permutation failure of paper Fig. 5) — unlike :class:`~refocuslib.models.recurrent_mz.RecurrentMZ`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refocuslib._validate import positive_int
from refocuslib.models.blocks import scaled

Tensor = torch.Tensor

__all__ = ["UNet3D"]


class _DoubleConv3d(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv3d(c_in, c_out, 3, padding=1), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
                         nn.Conv3d(c_out, c_out, 3, padding=1), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


class UNet3D(nn.Module):
    """3D U-Net: ``n_inputs`` planes as channels → ``n_outputs`` planes.

    ``width`` scales the channels ``base_channels``·2^k of the ``levels`` levels (width 1: 32, 64, 128, ...);
    ``norm`` 'batch' (default), 'group' or 'none' (:func:`refocuslib.models.recurrent_mz.swap_norm`).
    """

    def __init__(self, n_inputs: int, n_outputs: int, width: float = 1.0, levels: int = 3,
                 base_channels: int = 32, norm: str = "batch"):
        super().__init__()
        self.n_inputs = positive_int(n_inputs, "n_inputs")
        self.n_outputs = positive_int(n_outputs, "n_outputs")
        self.levels = positive_int(levels, "levels", minimum=2)
        chans = [scaled(base_channels * 2 ** k, width) for k in range(self.levels)]
        self.channels = chans
        downs, c_prev = [], self.n_inputs + 1
        for c in chans:
            downs.append(_DoubleConv3d(c_prev, c))
            c_prev = c
        self.downs = nn.ModuleList(downs)
        self.ups = nn.ModuleList(_DoubleConv3d(chans[k + 1] + chans[k], chans[k])
                                 for k in range(self.levels - 2, -1, -1))
        self.head = nn.Conv3d(chans[0], 1, 1)
        from refocuslib.models.recurrent_mz import swap_norm
        self.norm = norm
        swap_norm(self, norm)
        self.register_buffer("depth", torch.linspace(-1.0, 1.0, self.n_outputs), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != self.n_inputs:
            raise ValueError(f"images: expected a (B, {self.n_inputs}, H, W) tensor (the {self.n_inputs} input "
                             f"planes this 3D U-Net was built for), got shape "
                             f"{tuple(getattr(images, 'shape', ()))}")
        b, m, h, w = images.shape
        mult = 2 ** (self.levels - 1)
        ph, pw = (-h) % mult, (-w) % mult
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        hp, wp = images.shape[-2:]
        z = self.n_outputs
        vol = images[:, :, None].expand(b, m, z, hp, wp)
        coord = self.depth.to(images.dtype).view(1, 1, z, 1, 1).expand(b, 1, z, hp, wp)
        x = torch.cat([vol, coord], 1)
        skips = []
        for k, down in enumerate(self.downs):
            x = down(x)
            if k < self.levels - 1:
                skips.append(x)
                x = F.max_pool3d(x, (1, 2, 2))
        for up in self.ups:
            skip = skips.pop()
            x = up(torch.cat([skip, F.interpolate(x, size=skip.shape[-3:], mode="nearest")], 1))
        return self.head(x)[:, 0, :, :h, :w]
