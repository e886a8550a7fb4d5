"""Building blocks shared by every network in the library (Deep-Z, W-Net, Recurrent-MZ, baselines).

Deep-Z (Wu et al. 2019, Methods, Eq. 1–3):
  residual down block   x_{k+1} = x_k + ReLU(CONV_k2(ReLU(CONV_k1(x_k))))   (x_k zero-padded to the new width)
  up block              y_{k+1} = ReLU(CONV_k4(ReLU(CONV_k3(CAT(x_{k+1}, UP(y_k))))))
  discriminator block   z_k = LReLU(CONV_k2(LReLU(CONV_k1(z_{k−1}))))  with stride 2 in CONV_k2
Tensors are (batch, channel, y, x).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def scaled(channels: int, width: float) -> int:
    """Channel count scaled by ``width`` (for narrow CI copies of the paper models), at least 2."""
    if width <= 0:
        raise ValueError(f"width: must be > 0, got {width}")
    return max(2, int(round(channels * width)))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"activation: 'relu' or 'lrelu', got {kind!r}")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm: 'none' or 'batch', got {kind!r}")


class DoubleConv(nn.Module):
    """CONV → (norm) → act → CONV → (norm) → act, 3×3 'same' convolutions."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, act: str = "relu", norm: str = "none",
                 stride2: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_mid, 3, padding=1), _norm(norm, c_mid), _act(act),
            nn.Conv2d(c_mid, c_out, 3, padding=1, stride=stride2), _norm(norm, c_out), _act(act))

    def forward(self, x):
        return self.body(x)


class ResidualDownBlock(nn.Module):
    """Deep-Z Eq. 1: x + DoubleConv(x), the input zero-padded along channels to the output width."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, act: str = "relu", norm: str = "none"):
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"c_out: a residual down block cannot shrink channels ({c_in} → {c_out})")
        self.conv = DoubleConv(c_in, c_mid, c_out, act, norm)
        self.pad = c_out - c_in

    def forward(self, x):
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) + self.conv(x)


class UpBlock(nn.Module):
    """Deep-Z Eq. 2: transposed-conv ×2 upsampling, concatenation with the skip, DoubleConv."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, act: str = "relu", norm: str = "none",
                 upsample: str = "transpose"):
        super().__init__()
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(c_in, c_in, 2, stride=2)
        elif upsample == "nearest":  # Recurrent-MZ Eq. 3
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
        else:
            raise ValueError(f"upsample: 'transpose' or 'nearest', got {upsample!r}")
        self.conv = DoubleConv(c_in + c_skip, c_out, c_out, act, norm)

    def forward(self, x, skip):
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # odd sizes: pad to the skip's size
            x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
        return self.conv(torch.cat([skip, x], 1))


class ResUNet2D(nn.Module):
    """U-Net with residual down blocks (Deep-Z generator topology; also W-Net's generators).

    ``channels``: per level (c_mid, c_out) of the down blocks, e.g. Deep-Z ((25, 48), (72, 96), (144, 192),
    (288, 384), (576, 768)). Levels are separated by 2×2 max-pooling; the up path mirrors the widths; a final
    1×1 convolution gives ``out_channels``. Inputs whose size is not a multiple of 2^(levels−1) are padded
    by reflection and cropped back.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[Tuple[int, int]],
                 act: str = "relu", norm: str = "none", residual_output: bool = False):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels: need at least 2 levels, got {len(channels)}")
        self.levels = len(channels)
        self.residual_output = residual_output
        self.stem = nn.Conv2d(in_channels, channels[0][0], 3, padding=1)
        downs, c_prev = [], channels[0][0]
        for c_mid, c_out in channels:
            downs.append(ResidualDownBlock(c_prev, c_mid, max(c_out, c_prev), act, norm))
            c_prev = max(c_out, c_prev)
        self.downs = nn.ModuleList(downs)
        widths = [d.pad + d.conv.body[0].in_channels for d in self.downs]  # output width of each level
        ups = []
        c_in = widths[-1]
        for w in reversed(widths[:-1]):
            ups.append(UpBlock(c_in, w, w, act, norm))
            c_in = w
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(c_in, out_channels, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        ph, pw = (-h) % m, (-w) % m
        inp = x
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        x = self.stem(x)
        skips = []
        for k, down in enumerate(self.downs):
            x = down(x)
            if k < self.levels - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up in self.ups:
            x = up(x, skips.pop())
        out = self.head(x)[..., :h, :w]
        if self.residual_output:
            out = out + inp[:, :out.shape[1]]
        return out


class PatchDiscriminator(nn.Module):
    """Deep-Z Eq. 3 discriminator: a stem conv, ``len(channels)`` blocks (second conv stride 2), global average
    pooling, FC(c_last → c_last) → LReLU → FC(c_last → 1) → sigmoid. Deep-Z: six blocks ending at 3072."""

    def __init__(self, in_channels: int, channels: Sequence[int], act: str = "lrelu"):
        super().__init__()
        layers, c_prev = [nn.Conv2d(in_channels, channels[0] // 2, 3, padding=1), _act(act)], channels[0] // 2
        for c in channels:
            layers.append(DoubleConv(c_prev, c, c, act=act, stride2=2))
            c_prev = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c_prev, c_prev), _act(act), nn.Linear(c_prev, 1))

    def forward(self, x):
        z = self.features(x).mean((-2, -1))
        return torch.sigmoid(self.fc(z))
