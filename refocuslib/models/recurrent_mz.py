"""Recurrent-MZ (Huang et al., Light Sci. Appl. 10:62, 2021): a volume from a few sparse wide-field planes.

Interface — ONE output plane per call, batched over planes and samples::

    out = model(images, dpms)      # images, dpms: (B, M, H, W)  →  out: (B, 1, H, W)

``images[:, i]`` is the i-th normalised input plane, ``dpms[:, i]`` its digital propagation matrix in network
units (DPM/10, :func:`refocuslib.dpm.to_network`): the axial distance (µm/10) from input plane i to the
wanted output plane. A whole volume is |Z| such calls, batched by :meth:`RecurrentMZ.volume` (the same M
images, |Z| DPM sets). Any M ≥ 1 inputs in any order use the same parameters.

Architecture (paper Methods, Eq. 1–6; widths scaled by ``width``, 1.0 = paper):

* encoder block k (Eq. 1), shared by the M inputs: x_k = MaxPool(ReLU(BN(Conv(ReLU(BN(Conv(x_{k−1}))))))) with
  20·2^(k−2) / 20·2^(k−1) channels (:class:`~refocuslib.models.blocks.DoubleConv`); the features before
  pooling, f_k^(1…M), feed the recurrent block of scale k. ``norm`` (:func:`swap_norm`): 'batch' (the paper's
  BN), 'group' (GroupNorm, per sample) or 'none' — the CPU recipes use 'none': at batch 8 of 32² crops, mostly
  dark, BN's batch statistics are noisy and differ between training and inference;
* recurrent block k (Eq. 2): a ConvGRU (Eq. 4–6, :class:`ConvGRUCell`) reads f_k^(1), …, f_k^(M) in the
  given order; our reading of Eq. 2 is a residual block s_k = mean_i f_k^(i) + Conv(h_M), so that the
  parameter count does not depend on M;
* decoder (Eq. 3): y_k = ReLU(BN(Conv(ReLU(BN(Conv(CAT(s_k, UP(y_{k+1})))))))) with nearest-neighbour UP
  (:class:`~refocuslib.models.blocks.UpBlock`, ``upsample='nearest'``), then a 1×1 convolution.

Order invariance is not built in: it is learnt by training on randomly permuted inputs (paper Fig. 5).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refocuslib._validate import positive_int
from refocuslib.models.blocks import DoubleConv, UpBlock, scaled

Tensor = torch.Tensor

__all__ = ["ConvGRUCell", "RecurrentMZ", "encoder_channels", "swap_norm", "skip_mode", "NORMS", "SKIP_MODES",
           "PLANE_SKIP_TAU_UM"]

NORMS = ("batch", "group", "none")
SKIP_MODES = ("none", "mean", "plane")
PLANE_SKIP_TAU_UM = 0.1   # 'plane' pass-through width (µm): weight exp(−(DPM/0.1 µm)²), e^−25 at 0.5 µm


def skip_mode(input_skip) -> str:
    """The ``input_skip`` setting as one of :data:`SKIP_MODES` (``True`` → 'mean', ``False`` → 'none')."""
    if input_skip is True or input_skip is False:
        return "mean" if input_skip else "none"
    if input_skip not in SKIP_MODES:
        raise ValueError(f"input_skip: True, False or one of {SKIP_MODES}, got {input_skip!r}")
    return input_skip


def swap_norm(module: nn.Module, norm: str) -> nn.Module:
    """Replace every ``BatchNorm2d/3d`` of ``module`` in place: 'batch' keeps them, 'group' puts a GroupNorm
    (≤ 4 groups, statistics of each sample alone) in their place, 'none' an identity. Returns ``module``."""
    if norm not in NORMS:
        raise ValueError(f"norm: one of {NORMS}, got {norm!r}")
    if norm == "batch":
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm2d, nn.BatchNorm3d)):
            c = child.num_features
            g = next(k for k in (4, 2, 1) if c % k == 0)
            setattr(module, name, nn.GroupNorm(g, c) if norm == "group" else nn.Identity())
        else:
            swap_norm(child, norm)
    return module


def encoder_channels(levels: int = 4, width: float = 1.0) -> list:
    """(c_mid, c_out) of encoder blocks k = 1 … levels: (20·2^(k−2), 20·2^(k−1)) scaled by ``width``."""
    levels = positive_int(levels, "levels", minimum=2)
    return [(scaled(int(20 * 2 ** (k - 2)), width), scaled(20 * 2 ** (k - 1), width)) for k in range(1, levels + 1)]


class ConvGRUCell(nn.Module):
    """Convolutional GRU (Eq. 4–6), 3×3 convolutions on CAT(x_t, h_{t−1}):

    z_t = σ(W_z∗x_t + U_z∗h_{t−1} + b_z),  r_t = σ(W_r∗x_t + U_r∗h_{t−1} + b_r),
    h̃_t = tanh(W∗x_t + U∗(r_t ⊙ h_{t−1}) + b),  h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t,  h_0 = 0.
    """

    def __init__(self, channels: int, hidden: Optional[int] = None, kernel: int = 3):
        super().__init__()
        self.hidden = hidden or channels
        self.gates = nn.Conv2d(channels + self.hidden, 2 * self.hidden, kernel, padding=kernel // 2)
        self.candidate = nn.Conv2d(channels + self.hidden, self.hidden, kernel, padding=kernel // 2)

    def forward(self, x: Tensor, h: Optional[Tensor] = None) -> Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden, *x.shape[-2:])
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        h_tilde = torch.tanh(self.candidate(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * h_tilde

    def run(self, seq: Tensor) -> Tensor:
        """Final hidden state after reading ``seq`` (B, M, C, H, W) along M."""
        h = None
        for t in range(seq.shape[1]):
            h = self.forward(seq[:, t], h)
        return h


class RecurrentMZ(nn.Module):
    """Recurrent-MZ generator (see the module docstring for the interface and equations).

    ``width`` scales every channel count (1.0: encoder 10/20, 20/40, 40/80, 80/160 for ``levels=4``);
    ``levels`` encoder blocks (2 … 6); ``norm`` 'batch' | 'group' | 'none' (:func:`swap_norm`).
    ``input_skip`` (not in the paper; CPU recipes) mixes the input images into the network's output (order-free,
    any M):

    * ``True`` / ``'mean'``: adds Σ_i w_i·image_i, w_i = softmax_i(−|DPM_i|/τ) with a learnt τ — the network learns a correction to a
      DPM-weighted mean of its inputs, which carries the nearest input (and its noise) into the planes around it;
    * ``'plane'``: a gate, out = (1 − g)·net + g·Σ_i w_i·image_i / Σ_i w_i with w_i = exp(−(DPM_i/τ_p)²),
      g = max_i w_i and τ_p = :data:`PLANE_SKIP_TAU_UM` / 10 fixed — at an input's own plane (DPM 0) the measured
      plane passes through, half a micron away g < 10⁻¹⁰ and the plane is the network's own inference (which
      therefore never has to output a jump at DPM 0);
    * ``False`` / ``'none'``: no pass-through (the paper's architecture).

    Inputs whose size is not a multiple of 2^(levels−1) are padded by reflection and cropped back.
    """

    def __init__(self, width: float = 1.0, levels: int = 4, out_channels: int = 1, norm: str = "batch",
                 input_skip=False):
        super().__init__()
        levels = positive_int(levels, "levels", minimum=2)
        if levels > 6:
            raise ValueError(f"levels: must be in [2, 6], got {levels}")
        self.width, self.levels = float(width), levels
        chans = encoder_channels(levels, width)
        self.channels = chans
        enc, c_prev = [], 2  # (image, DPM) pair
        for c_mid, c_out in chans:
            enc.append(DoubleConv(c_prev, c_mid, c_out, act="relu", norm="batch"))
            c_prev = c_out
        self.encoder = nn.ModuleList(enc)
        self.gru = nn.ModuleList(ConvGRUCell(c) for _, c in chans)
        self.mix = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _, c in chans)
        ups = []
        for k in range(levels - 2, -1, -1):
            ups.append(UpBlock(chans[k + 1][1], chans[k][1], chans[k][1], act="relu", norm="batch",
                               upsample="nearest"))
        self.decoder = nn.ModuleList(ups)
        self.head = nn.Conv2d(chans[0][1], out_channels, 1)
        self.norm = norm
        swap_norm(self, norm)
        self.input_skip = skip_mode(input_skip)
        if self.input_skip == "mean":  # log temperature of the DPM-weighted mean of the inputs (network units, DPM/10)
            self.skip_log_tau = nn.Parameter(torch.tensor(float(np.log(0.1))))

    @staticmethod
    def _check(images: Tensor, dpms: Tensor):
        for t, name in ((images, "images"), (dpms, "dpms")):
            if not torch.is_tensor(t) or t.ndim != 4:
                raise ValueError(f"{name}: expected a (B, M, H, W) tensor with M >= 1 (input planes), got "
                                 f"{type(t).__name__} of shape {tuple(getattr(t, 'shape', ()))}")
        if images.shape != dpms.shape:
            raise ValueError(f"dpms: shape {tuple(dpms.shape)} must equal the images' shape {tuple(images.shape)} "
                             "(one DPM per input plane)")
        if images.shape[1] < 1 or images.numel() == 0:
            raise ValueError(f"images: need M >= 1 input planes and non-empty images, got {tuple(images.shape)}")

    def forward(self, images: Tensor, dpms: Tensor) -> Tensor:
        """One output plane per sample: ``images``, ``dpms`` (B, M, H, W), DPM/10 → (B, 1, H, W)."""
        self._check(images, dpms)
        b, m, h, w = images.shape
        mult = 2 ** (self.levels - 1)
        ph, pw = (-h) % mult, (-w) % mult
        x = torch.stack([images, dpms.to(images.dtype)], 2).reshape(b * m, 2, h, w)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        skips = []
        for k, block in enumerate(self.encoder):
            f = block(x)                                     # Eq. 1 (features before pooling)
            seq = f.reshape(b, m, *f.shape[1:])
            h_m = self.gru[k].run(seq)                       # Eq. 4–6 along the M inputs
            skips.append(seq.mean(1) + self.mix[k](h_m))     # Eq. 2 (residual recurrent block)
            if k < self.levels - 1:
                x = F.max_pool2d(f, 2)
        y = skips.pop()
        for up in self.decoder:                              # Eq. 3
            y = up(y, skips.pop())
        out = self.head(y)[..., :h, :w]
        if self.input_skip == "mean":
            # w_i ∝ exp(−|DPM_i|/τ): a permutation-invariant, any-M pass-through of the nearest inputs
            wgt = torch.softmax(-dpms.abs().to(images.dtype) / self.skip_log_tau.exp(), dim=1)
            out = out + (wgt * images).sum(1, keepdim=True)
        elif self.input_skip == "plane":
            # gate g = max_i exp(−(DPM_i/τ_p)²): an input replaces the network's output at its own plane only
            tau = PLANE_SKIP_TAU_UM / 10.0
            wgt = torch.exp(-(dpms.to(images.dtype) / tau) ** 2)
            gate = wgt.amax(1, keepdim=True)
            measured = (wgt * images).sum(1, keepdim=True) / wgt.sum(1, keepdim=True).clamp_min(1e-30)
            out = (1 - gate) * out + gate * measured
        return out

    @torch.no_grad()
    def volume(self, images: Tensor, dpms: Tensor, batch_planes: int = 16) -> Tensor:
        """All output planes of one sample: ``images`` (M, H, W) and ``dpms`` (Z, M, H, W) (DPM/10, one set
        per output plane) → (Z, H, W), ``batch_planes`` planes per forward pass."""
        if not torch.is_tensor(images) or images.ndim != 3:
            raise ValueError(f"images: expected an (M, H, W) tensor, got shape {tuple(getattr(images, 'shape', ()))}")
        if not torch.is_tensor(dpms) or dpms.ndim != 4 or dpms.shape[1:] != images.shape:
            raise ValueError(f"dpms: expected (Z, {', '.join(map(str, images.shape))}) = one DPM per input and "
                             f"output plane, got {tuple(getattr(dpms, 'shape', ()))}")
        batch_planes = positive_int(batch_planes, "batch_planes")
        out = []
        for s in range(0, dpms.shape[0], batch_planes):
            d = dpms[s:s + batch_planes]
            out.append(self.forward(images.unsqueeze(0).expand(d.shape[0], -1, -1, -1), d)[:, 0])
        return torch.cat(out, 0)
