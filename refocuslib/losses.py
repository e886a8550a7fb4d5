"""Training losses of the four papers (torch, differentiable, (B, C, H, W) or (B, C, D, H, W) tensors).

* Deep-Z / W-Net: LSGAN (Mao et al. 2017) with MAE fidelity — Deep-Z Eq. 4–5.
* Recurrent-MZ: BerHu (reverse Huber, c = 0.1), MS-SSIM, adversarial — Eq. 7–10.
* DeepSTORM3D: heatmap matching of Gaussian-blurred occupancy grids + a Dice overlap term.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _same_shape(output: Tensor, target: Tensor) -> None:
    if tuple(output.shape) != tuple(target.shape):  # broadcasting (B,1,H,W) against (B,H,W) would be silently wrong
        raise ValueError(f"target: expected the output's shape {tuple(output.shape)}, got {tuple(target.shape)}")


def mae(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error (``output`` and ``target`` of one shape)."""
    _same_shape(output, target)
    return (output - target).abs().mean()


def lsgan_generator_loss(d_fake: Tensor) -> Tensor:
    """LSGAN generator term (1 − D(G(x)))², Deep-Z Eq. 4."""
    return ((1.0 - d_fake) ** 2).mean()


def lsgan_discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """LSGAN discriminator loss D(G(x))² + (1 − D(z))², Deep-Z Eq. 5."""
    return (d_fake ** 2).mean() + ((1.0 - d_real) ** 2).mean()


def deepz_generator_loss(output: Tensor, target: Tensor, d_fake: Tensor, alpha: float = 0.02) -> Tensor:
    """Deep-Z Eq. 4: MAE(output, target) + α·(1 − D(output))², α = 0.02."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha: the adversarial weight must be a finite number >= 0, got {alpha!r}")
    return mae(output, target) + alpha * lsgan_generator_loss(d_fake)


def berhu(output: Tensor, target: Tensor, c: float = 0.1) -> Tensor:
    """Reverse Huber (BerHu), Recurrent-MZ Eq. 8: |e| for |e| ≤ c, (e² + c²)/(2c) beyond (continuous at c)."""
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"c: the BerHu threshold must be a finite number > 0, got {c!r}")
    _same_shape(output, target)
    e = (output - target).abs()
    return torch.where(e <= c, e, (e ** 2 + c ** 2) / (2 * c)).mean()


def _gaussian_window(size: int, sigma: float, channels: int, dtype, device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def _ssim_terms(x: Tensor, y: Tensor, data_range: float, win: Tensor):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ch = x.shape[1]
    mu_x = F.conv2d(x, win, groups=ch)
    mu_y = F.conv2d(y, win, groups=ch)
    sxx = F.conv2d(x * x, win, groups=ch) - mu_x ** 2
    syy = F.conv2d(y * y, win, groups=ch) - mu_y ** 2
    sxy = F.conv2d(x * y, win, groups=ch) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    return lum * cs, cs


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM (Wang et al. 2004) with an 11×11 Gaussian window (σ 1.5), valid region, per batch mean."""
    win = _gaussian_window(win_size, sigma, x.shape[1], x.dtype, x.device)
    s, _ = _ssim_terms(x, y, data_range, win)
    return s.mean()


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 1.0, weights: Sequence[float] = MS_SSIM_WEIGHTS,
            win_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Multi-scale SSIM (Wang et al. 2003): Π_j cs_j^{w_j} · l_M^{w_M} over 2× average-pooled scales.

    Scales that would make the image smaller than the window are dropped and the weights renormalised.
    Contrast terms are clamped at a small positive value so that the product stays differentiable.
    """
    w = torch.tensor(weights, dtype=x.dtype, device=x.device)
    n_scales = len(weights)
    while n_scales > 1 and min(x.shape[-2:]) / 2 ** (n_scales - 1) < win_size:
        n_scales -= 1
    w = w[:n_scales] / w[:n_scales].sum()
    win = _gaussian_window(min(win_size, min(x.shape[-2:])), sigma, x.shape[1], x.dtype, x.device)
    vals = []
    for j in range(n_scales):
        s, cs = _ssim_terms(x, y, data_range, win)
        vals.append((s if j == n_scales - 1 else cs).mean().clamp_min(1e-6))
        if j < n_scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return torch.prod(torch.stack(vals) ** w)


def recurrent_mz_generator_loss(output: Tensor, target: Tensor, d_fake: Tensor | None = None,
                                berhu_weight: float = 3.0, ssim_weight: float = 1.0, adv_weight: float = 0.5,
                                data_range: float = 1.0) -> Tensor:
    """Recurrent-MZ Eq. 7: 3·BerHu + 1·(1 − MS-SSIM) + 0.5·(1 − D(G))² (the adversarial term if ``d_fake``).

    Volumes (B, D, H, W) are treated as D-channel images for MS-SSIM.
    """
    loss = berhu_weight * berhu(output, target) + ssim_weight * (1 - ms_ssim(output, target, data_range))
    if d_fake is not None:
        loss = loss + adv_weight * lsgan_generator_loss(d_fake)
    return loss


def gaussian_blur_3d(grid: Tensor, sigma_vox: float = 1.0) -> Tensor:
    """Separable 3D Gaussian blur of (B, D, H, W) occupancy grids (DeepSTORM3D heatmaps)."""
    r = max(1, int(math.ceil(3 * sigma_vox)))
    x = torch.arange(-r, r + 1, dtype=grid.dtype, device=grid.device)
    k = torch.exp(-x ** 2 / (2 * sigma_vox ** 2))
    k = k / k.sum()
    v = grid[:, None]
    v = F.conv3d(v, k.view(1, 1, -1, 1, 1), padding=(r, 0, 0))
    v = F.conv3d(v, k.view(1, 1, 1, -1, 1), padding=(0, r, 0))
    v = F.conv3d(v, k.view(1, 1, 1, 1, -1), padding=(0, 0, r))
    return v[:, 0]


def dice_loss(pred: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 − Dice overlap, 1 − (2·Σpq + ε)/(Σp + Σq + ε), per sample then averaged (DeepSTORM3D overlap term)."""
    dims = tuple(range(1, pred.ndim))
    inter = (pred * target).sum(dims)
    return (1 - (2 * inter + eps) / (pred.sum(dims) + target.sum(dims) + eps)).mean()
