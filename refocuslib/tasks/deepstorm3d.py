"""DeepSTORM3D training task for :func:`refocuslib.train.fit` (Nehme et al., Nat. Methods 17, 734 (2020)).

Training is on simulated data only, generated on the fly (the paper's method): each step draws emitters
(:class:`~refocuslib.datasets.deepstorm3d.EmitterSampler`), renders them through the
:class:`~refocuslib.models.deepstorm3d.PhysicalLayer` (inside ``generate`` so that a learnable phase mask
receives gradients: paper Fig. 4, end-to-end PSF design) and compares the CNN's occupancy grid with the true
one by heatmap matching (MSE of 3D-Gaussian-blurred grids) + a Dice overlap term
(:meth:`DeepSTORM3DTask.loss`, from :mod:`refocuslib.losses`' blur and ``dice_loss``). Validation is the paper's
goal: ``val_loss`` = 1 − Jaccard index (Hungarian matching at 150 nm) of the post-processed localizations on
fixed frames at three densities (5, 30, 75 per 13 × 13 µm), at the threshold that maximises their mean Jaccard
on a wide grid (:data:`THRESHOLD_GRID`); the all-zero output and the identity (input frame as the output) are
scored beside it. Users: :func:`load_localizer` rebuilds a trained localizer from its checkpoint alone and
:meth:`DeepSTORM3DTask.localize` / :meth:`DeepSTORM3DTask.localization_table` run it on camera frames.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from refocuslib import losses
from refocuslib._validate import in_range, positive, positive_int
from refocuslib.datasets.deepstorm3d import EmitterSampler
from refocuslib.localize import MatchResult, match_points
from refocuslib.models.deepstorm3d import LocalizationCNN, PhysicalLayer, VoxelGrid, nms_radius_for_kernel
from refocuslib.train import TrainTask, checkpoint_dir

Tensor = torch.Tensor

__all__ = ["DeepSTORM3DNet", "DeepSTORM3DTask", "localize", "match_frames", "gaussian_blur_3d", "THRESHOLD_GRID",
           "VAL_DENSITIES", "TASK_DEFAULTS", "build_mask", "build_task", "load_localizer", "train_cached",
           "simulate_test_frames", "compare_with_mp"]

#: Post-processing thresholds (fractions of the CNN's ``max_value``) searched by validation and calibration:
#: geometric from 0.002 to 0.9 (the old grid stopped at 0.01–0.5, and per-frame normalisation moved the
#: optimum with density).
THRESHOLD_GRID = tuple(float(v) for v in np.round(np.geomspace(0.002, 0.9, 24), 5))
#: Densities (emitters per 13 × 13 µm, paper Fig. 2) of the validation frames; the threshold is chosen for all.
VAL_DENSITIES = (5.0, 30.0, 75.0)


def _band(n: int, sigma: float, dtype, device) -> Tensor:
    """(n, n) matrix of the truncated (±⌈3σ⌉), normalised 1D Gaussian kernel with zero padding."""
    r = max(1, int(math.ceil(3 * sigma)))
    i = torch.arange(n, dtype=dtype, device=device)
    d = i[:, None] - i[None, :]
    t = torch.arange(-r, r + 1, dtype=dtype, device=device)
    return torch.exp(-d ** 2 / (2 * sigma ** 2)) * (d.abs() <= r) / torch.exp(-t ** 2 / (2 * sigma ** 2)).sum()


def gaussian_blur_3d(grid: Tensor, sigma_vox=1.0) -> Tensor:
    """Same result as :func:`refocuslib.losses.gaussian_blur_3d` (separable, truncated at ±⌈3σ⌉, zero padding)
    on (B, D, H, W) grids, computed as three banded matrix products: ~15× faster on a CPU than single-channel
    ``conv3d`` (tests/test_deepstorm3d.py checks the two agree). ``sigma_vox``: one σ or (σ_z, σ_y, σ_x)."""
    sig = np.broadcast_to(np.asarray(sigma_vox, dtype=np.float64).reshape(-1), (3,))
    sz, sy, sx = (positive(v, "sigma_vox") for v in sig)
    b, d, h, w = grid.shape
    v = grid @ _band(w, sx, grid.dtype, grid.device)
    v = _band(h, sy, grid.dtype, grid.device) @ v
    return (_band(d, sz, grid.dtype, grid.device) @ v.reshape(b, d, h * w)).reshape(b, d, h, w)


def F_interp(frames: Tensor, upsampling: int) -> Tensor:
    """(B, 1, H, W) → (B, 1, U·H, U·W) by nearest-neighbour upsampling (the identity baseline's grid)."""
    return torch.nn.functional.interpolate(frames, scale_factor=int(upsampling), mode="nearest") \
        if int(upsampling) > 1 else frames


class DeepSTORM3DNet(nn.Module):
    """Physics layer + localization CNN in one module (so that checkpoints hold a learned mask too)."""

    def __init__(self, physics: PhysicalLayer, cnn: LocalizationCNN):
        super().__init__()
        self.physics = physics
        self.cnn = cnn

    def forward(self, frames: Tensor) -> Tensor:
        return self.cnn(frames)


def match_frames(pred_nm: Sequence[np.ndarray], truth_nm: Sequence[np.ndarray],
                 threshold_nm: float = 150.0) -> MatchResult:
    """Hungarian matching (:func:`refocuslib.localize.match_points`) of many frames at once: TP/FP/FN summed
    over frames, RMSE over all matched pairs (the paper's per-density numbers)."""
    if len(pred_nm) != len(truth_nm):
        raise ValueError(f"pred_nm/truth_nm: need one array per frame, got {len(pred_nm)} and {len(truth_nm)}")
    # frames are placed far apart along x, so no pair can cross frames (threshold ≪ spacing)
    spacing = 1e9
    preds = [np.asarray(p, dtype=np.float64).reshape(-1, 3) + [k * spacing, 0, 0] for k, p in enumerate(pred_nm)]
    truths = [np.asarray(t, dtype=np.float64).reshape(-1, 3) + [k * spacing, 0, 0] for k, t in enumerate(truth_nm)]
    return match_points(np.concatenate(preds or [np.zeros((0, 3))]),
                        np.concatenate(truths or [np.zeros((0, 3))]), threshold_nm)


@torch.no_grad()
def localize(cnn: LocalizationCNN, frames, grid: VoxelGrid, threshold: float, radius_vox: int = 1,
             batch_size: int = 4, device=None, return_grids: bool = False):
    """Run the CNN on frames ((B, 1, H, W), (B, H, W) or (H, W), any size) and post-process every output grid
    (:meth:`VoxelGrid.to_points`). Returns a list of (K, 3) (x, y, z) nm arrays (and the grids on the CPU)."""
    x = torch.as_tensor(np.asarray(frames, dtype=np.float32) if not torch.is_tensor(frames) else frames).float()
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"frames: expected (H, W), (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    device = device or next(cnn.parameters()).device
    g = grid.resized(x.shape[-2:])
    was_training = cnn.training
    cnn.eval()
    points, grids = [], []
    try:
        with torch.inference_mode():  # no autograd graph: faster, and the grids need no gradients
            for s in range(0, x.shape[0], positive_int(batch_size, "batch_size")):
                out = cnn(x[s:s + batch_size].to(device))
                for p, _ in g.to_points(out, threshold, radius_vox):
                    points.append(p)
                if return_grids:
                    grids.append(out.cpu())
    finally:
        cnn.train(was_training)
    return (points, torch.cat(grids)) if return_grids else points


class DeepSTORM3DTask(TrainTask):
    """Train the localization CNN (and, with ``learn_mask``, the phase mask) on simulated frames.

    ``physics`` renders frames of ``sampler.shape_yx``; ``grid`` is the recovery grid of those frames;
    targets are occupancy grids × ``cnn.max_value``; loss = heatmap matching of 3D-Gaussian-blurred grids
    (σ = ``sigma_vox`` voxels) + ``dice_weight`` · Dice overlap (:meth:`loss`). ``learn_mask`` trains the physics layer's learnable
    :class:`~refocuslib.optics.ArrayMask` with learning rate ``lr_mask``. Validation: ``n_val`` fixed frames
    (seed ``val_seed``) → loss, Jaccard, RMSE at ``threshold`` (× ``max_value``); local maxima in a window of
    ``max(radius_vox, ⌈σ⌉)`` voxels per axis of ``sigma_vox`` (``nms_radius_vox``).
    """

    def __init__(self, physics: PhysicalLayer, cnn: LocalizationCNN, grid: VoxelGrid, sampler: EmitterSampler,
                 batch_size: int = 4, learn_mask: bool = False, lr_mask: float = 0.05, sigma_vox: float = 1.0,
                 dice_weight: float = 1.0, n_val: int = 8, val_seed: int = 2024, threshold: float = 0.2,
                 radius_vox: int = 1, match_nm: float = 150.0, overlap: str = "recall",
                 val_densities: Sequence[float] = VAL_DENSITIES, config: Optional[dict] = None):
        if overlap not in ("dice", "recall"):
            raise ValueError(f"overlap: 'dice' or 'recall', got {overlap!r}")
        self.overlap = overlap
        if tuple(grid.shape_yx) != tuple(physics.shape_yx) or tuple(sampler.shape_yx) != tuple(physics.shape_yx):
            raise ValueError(f"grid/sampler: shape_yx must equal the physics layer's {physics.shape_yx}")
        if cnn.n_z != grid.n_z or cnn.upsampling != grid.upsampling:
            raise ValueError(f"cnn: n_z/upsampling ({cnn.n_z}, {cnn.upsampling}) must match the grid's "
                             f"({grid.n_z}, {grid.upsampling})")
        self.generator = DeepSTORM3DNet(physics, cnn)
        self.grid, self.sampler = grid, sampler
        self.batch_size = positive_int(batch_size, "batch_size")
        self.learn_mask = bool(learn_mask)
        mask_params = [] if physics.mask is None else [p for p in physics.mask.parameters() if p.requires_grad]
        if self.learn_mask and not mask_params:
            raise ValueError("learn_mask: the physics layer has no learnable mask (use optics.learnable_mask() "
                             "or ArrayMask(..., learnable=True))")
        if not self.learn_mask:
            for p in mask_params:
                p.requires_grad_(False)
        self.lr_mask = positive(lr_mask, "lr_mask")
        sig = np.asarray(sigma_vox, dtype=np.float64).reshape(-1)
        if sig.size not in (1, 3) or not all(np.isfinite(sig)) or np.any(sig <= 0):
            raise ValueError(f"sigma_vox: expected a positive number or (σ_z, σ_y, σ_x), got {sigma_vox!r}")
        self.sigma_vox = tuple(float(v) for v in np.broadcast_to(sig, (3,)))
        self.dice_weight = positive(dice_weight, "dice_weight", allow_zero=True)
        self.threshold = in_range(threshold, "threshold", 0.0, 1.0, lo_open=True)
        self.radius_vox = positive_int(radius_vox, "radius_vox")
        # post-processing window: at least the loss kernel's σ per axis (models.deepstorm3d.nms_radius_for_kernel)
        self.nms_radius_vox = nms_radius_for_kernel(self.sigma_vox, self.radius_vox)
        self.match_nm = positive(match_nm, "match_nm")
        self.n_val = positive_int(n_val, "n_val")
        self.config = dict(config or {})
        self.val_densities = tuple(positive(d, "val_densities") for d in val_densities)
        self.val_batch = self._val_frames(int(val_seed))

    def _val_frames(self, seed: int) -> Dict[str, Tensor]:
        """``n_val`` frames at each of :attr:`val_densities` (exactly that many emitters per frame; at least
        one), one batch (padded like the sampler's)."""
        from refocuslib.datasets.deepstorm3d import emitters_for_density
        g = torch.Generator().manual_seed(seed)
        parts = []
        for d in self.val_densities:
            n = max(1, emitters_for_density(d, self.sampler.fov_um))
            smp = self.sampler.replace(n_emitters=(n, n))
            b = smp.sample(g, self.n_val)
            b["density"] = torch.full((self.n_val,), float(d))
            parts.append(b)
        n_max = max(p["xyz_um"].shape[1] for p in parts)
        out = {}
        for k in parts[0]:
            vals = []
            for p in parts:
                v = p[k]
                if k in ("xyz_um", "photons") and v.shape[1] < n_max:
                    pad = [0, 0] * (v.ndim - 2) + [0, n_max - v.shape[1]]
                    v = torch.nn.functional.pad(v, pad)
                vals.append(v)
            out[k] = torch.cat(vals)
        out["target"] = self.grid.to_grid(out["xyz_um"], out["photons"]).clamp_max(1.0) * self.cnn.max_value
        out["noise_seed"] = torch.randint(0, 2 ** 62, (1,), generator=g)
        return out

    @property
    def physics(self) -> PhysicalLayer:
        return self.generator.physics

    @property
    def cnn(self) -> LocalizationCNN:
        return self.generator.cnn

    @property
    def abs_threshold(self) -> float:
        """The post-processing threshold in output units (``threshold`` × ``max_value``)."""
        return self.threshold * self.cnn.max_value

    # -- TrainTask -------------------------------------------------------------------------------------------
    def make_batch(self, step: int, generator: torch.Generator, batch_size: Optional[int] = None) -> Dict[str, Tensor]:
        b = self.sampler.sample(generator, batch_size or self.batch_size)
        b["target"] = self.grid.to_grid(b["xyz_um"], b["photons"]).clamp_max(1.0) * self.cnn.max_value
        b["noise_seed"] = torch.randint(0, 2 ** 62, (1,), generator=generator)
        return b

    def render(self, batch: Dict[str, Tensor]) -> Tensor:
        """Camera frames of a batch through the physics layer (noise seeded by the batch)."""
        device = self.physics._device()
        g = torch.Generator(device=device).manual_seed(int(batch["noise_seed"].reshape(-1)[0]))
        with torch.set_grad_enabled(self.learn_mask and torch.is_grad_enabled()):
            return self.physics(batch["xyz_um"], batch["photons"], batch["background"], batch["background_field"],
                                batch["blur_sigma_px"], noise=True, generator=g)

    def generate(self, batch: Dict[str, Tensor]) -> Tensor:
        return self.cnn(self.render(batch))

    def loss(self, output: Tensor, target: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(total, heatmap, overlap) of output and target grids (values in [0, s], s = ``max_value``).

        heatmap = ‖G_σ*(p − q)‖² / ‖G_σ*q‖²: the paper's MSE of 3D-Gaussian-blurred grids, normalised so that
        an empty prediction scores 1 whatever the grid size. overlap (p, q scaled to [0, 1]):
        ``'dice'`` = :func:`refocuslib.losses.dice_loss`, 1 − (2Σpq + 1)/(Σp + Σq + 1); ``'recall'`` = the
        variant of the paper's released training code, 1 − (2Σpq + 1)/(Σpq + Σq² + 1), which does not
        penalise mass away from emitters (the heatmap term does) — with the symmetric Dice, short runs fell
        into the all-empty grid, which scores 1 − 1/(n+1) for n emitters.
        """
        s = self.cnn.max_value
        p, q = output / s, target / s
        blurred_t = gaussian_blur_3d(q, self.sigma_vox)
        blurred_p = gaussian_blur_3d(p, self.sigma_vox)
        heat = ((blurred_p - blurred_t) ** 2).sum() / (blurred_t ** 2).sum().clamp_min(1e-12)
        if self.overlap == "dice":
            over = losses.dice_loss(p, q)
        else:
            inter = (p * q).sum()
            over = 1 - (2 * inter + 1) / (inter + (q * q).sum() + 1)
        return heat + self.dice_weight * over, heat, over

    def generator_loss(self, batch, output) -> Tuple[Tensor, Dict[str, float]]:
        loss, heat, dice = self.loss(output, batch["target"])
        return loss, {"heatmap": float(heat.detach()), "dice": float(dice.detach())}

    def generator_param_groups(self, lr_g: float) -> List[dict]:
        groups = [{"params": [p for p in self.cnn.parameters() if p.requires_grad], "lr": lr_g}]
        if self.learn_mask:
            groups.append({"params": list(self.physics.mask.parameters()), "lr": self.lr_mask})
        return groups

    def truth_nm(self, batch: Dict[str, Tensor]) -> List[np.ndarray]:
        """True positions (x, y, z) nm per frame of a batch."""
        return [(batch["xyz_um"][k][batch["photons"][k] > 0] * 1000.0).numpy() for k in range(len(batch["photons"]))]

    def jaccard_by_threshold(self, out: Tensor, batch: Dict[str, Tensor],
                             thresholds: Sequence[float] = THRESHOLD_GRID) -> Dict[float, Dict[str, float]]:
        """Per threshold (fraction of ``max_value``): the mean over densities of the Jaccard index, and its
        value, lateral and axial RMSE per density, of grids ``out`` against the truth of ``batch``. The local
        maxima do not depend on the threshold, so they are found once at the lowest one and then filtered."""
        truth = self.truth_nm(batch)
        dens = batch.get("density", torch.zeros(len(truth))).numpy()
        lo = min(thresholds) * self.cnn.max_value
        found = self.grid.to_points(out, lo, self.nms_radius_vox)
        if isinstance(found, tuple):
            found = [found]
        table = {}
        # an untrained grid has thousands of maxima at the lowest threshold: keep the brightest (far more than the
        # frame's emitters; the Jaccard index is then ≈ 0 either way) so that the matching stays cheap
        cap = 8 * max([len(t) for t in truth] + [1]) + 20
        found = [(p[:cap], v[:cap]) for p, v in found]
        for t in thresholds:
            t = in_range(t, "thresholds", 0.0, 1.0, lo_open=True)
            pts = [p[v > t * self.cnn.max_value] for p, v in found]
            row = {}
            for d in np.unique(dens):
                sel = np.flatnonzero(dens == d)
                m = match_frames([pts[i] for i in sel], [truth[i] for i in sel], self.match_nm)
                row[float(d)] = {"jaccard": m.jaccard, "rmse_lateral_nm": m.rmse_lateral_nm,
                                 "rmse_axial_nm": m.rmse_axial_nm}
            table[float(t)] = {"mean_jaccard": float(np.mean([r["jaccard"] for r in row.values()])),
                               "per_density": row}
        return table

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """``val_loss`` = 1 − mean Jaccard over the validation densities at the best threshold of
        :data:`THRESHOLD_GRID` (also stored as :attr:`threshold`); ``val_loss_zero`` and ``val_loss_identity``
        score the all-zero output and the input frame itself (normalised, broadcast to every slice) the same way."""
        vb = {k: (v.to(self.physics._device()) if torch.is_tensor(v) and k != "noise_seed" else v)
              for k, v in self.val_batch.items()}
        frames = self.render(self.val_batch)
        out = self.cnn(frames)
        heat = self.loss(out, vb["target"])[0]
        table = self.jaccard_by_threshold(out, self.val_batch)
        best = max(table, key=lambda t: (table[t]["mean_jaccard"], -t))
        self.threshold = best
        zero = self.jaccard_by_threshold(torch.zeros_like(out[:, :1]).expand_as(out), self.val_batch, (0.5,))
        x = self.cnn.normalize(frames).clamp_min(0)
        x = x / x.amax((-2, -1), keepdim=True).clamp_min(1e-12) * self.cnn.max_value
        ident = F_interp(x, self.grid.upsampling).expand_as(out)
        idt = self.jaccard_by_threshold(ident, self.val_batch, (0.1, 0.2, 0.3, 0.5, 0.7))
        res = {"val_loss": 1.0 - table[best]["mean_jaccard"], "jaccard": table[best]["mean_jaccard"],
               "threshold": best, "heatmap_loss": float(heat),
               "val_loss_zero": 1.0 - zero[0.5]["mean_jaccard"],
               "val_loss_identity": 1.0 - max(v["mean_jaccard"] for v in idt.values())}
        for d, r in table[best]["per_density"].items():
            res[f"jaccard_d{d:g}"] = r["jaccard"]
            res[f"rmse_lateral_nm_d{d:g}"] = r["rmse_lateral_nm"]
            res[f"rmse_axial_nm_d{d:g}"] = r["rmse_axial_nm"]
        return res

    def after_training(self) -> Dict[float, float]:
        """Called by :func:`refocuslib.recipes.train_cached` on the best weights: the threshold calibrated across
        the validation densities (:meth:`calibrate_threshold`)."""
        return self.calibrate_threshold()

    def extra_state(self) -> dict:
        """Everything a user needs besides the weights: the build configuration (optics, mask, grid, camera,
        normalisation; :func:`build_task` keys), the threshold and the derived geometry for the record."""
        return {"threshold": self.threshold, "config": self.config, "radius_vox": self.radius_vox,
                "nms_radius_vox": list(self.nms_radius_vox),
                "voxel_nm": list(self.grid.voxel_nm), "z_range_um": list(self.grid.z_range_um),
                "input_offset_adu": float(self.cnn.input_offset), "input_scale_adu": float(self.cnn.input_scale),
                "camera": {"gain_adu_per_e": self.physics.gain, "qe": self.physics.qe,
                           "baseline_adu": self.physics.baseline_adu, "read_noise_e": self.physics.read_noise_e}}

    def load_extra_state(self, state: dict) -> None:
        self.threshold = float(state.get("threshold", self.threshold))

    # -- evaluation helpers ----------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate_threshold(self, candidates: Sequence[float] = THRESHOLD_GRID) -> Dict[float, float]:
        """Pick the post-processing threshold (fraction of ``max_value``) that maximises the mean Jaccard index
        over the validation densities (never test frames); sets ``self.threshold``, returns {threshold: mean J}."""
        was = self.cnn.training
        self.cnn.eval()
        table = self.jaccard_by_threshold(self.cnn(self.render(self.val_batch)), self.val_batch, candidates)
        self.cnn.train(was)
        scores = {t: r["mean_jaccard"] for t, r in table.items()}
        self.threshold = max(scores, key=lambda t: (scores[t], -t))
        return scores

    def to_model_counts(self, frames, baseline_adu: Optional[float] = None, e_per_adu: Optional[float] = None):
        """Camera frames of another camera → the counts of this model's camera: electrons
        (frames − ``baseline_adu``)·``e_per_adu`` re-expressed as gain·e + baseline of the physics layer.
        Both None: the frames are already in the model's counts."""
        x = torch.as_tensor(np.asarray(frames, dtype=np.float32) if not torch.is_tensor(frames) else frames).float()
        if baseline_adu is None and e_per_adu is None:
            return x
        b = 0.0 if baseline_adu is None else in_range(baseline_adu, "baseline_adu", -1e9, 1e9)
        g = 1.0 if e_per_adu is None else positive(e_per_adu, "e_per_adu")
        return (x - b) * g * self.physics.gain + self.physics.baseline_adu

    def localize(self, frames, batch_size: int = 4, return_grids: bool = False, baseline_adu: Optional[float] = None,
                 e_per_adu: Optional[float] = None, return_confidence: bool = False):
        """Localise emitters in camera frames ((H, W), (B, H, W) or (B, 1, H, W), any size): a list of (K, 3)
        (x, y, z) nm arrays per frame, x/y from the frame's top-left corner, z above the coverslip
        (:func:`localize` with this task's CNN, grid, threshold and radius; :meth:`to_model_counts` first).
        ``return_confidence``: also the peak confidences per frame (fractions of ``max_value``)."""
        x = self.to_model_counts(frames, baseline_adu, e_per_adu)
        if not return_confidence:
            return localize(self.cnn, x, self.grid, self.abs_threshold, self.nms_radius_vox, batch_size,
                            return_grids=return_grids)
        pts, grids = localize(self.cnn, x, self.grid, self.abs_threshold, self.nms_radius_vox, batch_size,
                              return_grids=True)
        conf = []
        for g in grids:
            found = self.grid.resized(tuple(x.shape[-2:])).to_points(g, self.abs_threshold, self.nms_radius_vox)
            conf.append(found[1] / self.cnn.max_value)
        return (pts, conf, grids) if return_grids else (pts, conf)

    def localization_table(self, frames, baseline_adu: Optional[float] = None, e_per_adu: Optional[float] = None,
                           photons: bool = True, progress=None) -> Dict[str, np.ndarray]:
        """A localisation table of camera frames (B, H, W): columns ``frame`` (numbered from 1, as ThunderSTORM),
        ``x_nm``, ``y_nm``, ``z_nm``, ``photons`` (non-negative least-squares fit of every frame's emitters
        and a flat background through the physics layer, :func:`refocuslib.smlm.fit_photons`; nan when
        ``photons`` is False) and ``confidence`` (peak of the CNN grid / ``max_value``). ``progress``: a
        callable wrapping the frame iterator (e.g. tqdm)."""
        from refocuslib import smlm
        x = self.to_model_counts(frames, baseline_adu, e_per_adu)
        if x.ndim == 2:
            x = x[None]
        if x.ndim == 4:
            x = x[:, 0]
        if x.ndim != 3:
            raise ValueError(f"frames: expected (H, W), (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
        phys = self.physics.resized(tuple(x.shape[-2:]))
        cols = {k: [] for k in ("frame", "x_nm", "y_nm", "z_nm", "photons", "confidence")}
        it = range(x.shape[0])
        for k in (progress(it) if progress is not None else it):
            pts, conf = self.localize(x[k], return_confidence=True)
            p, c = pts[0], conf[0]
            ph = smlm.fit_photons(phys, p / 1000.0, phys.counts_to_photons(x[k]).numpy())[0] if photons and len(p) \
                else np.full(len(p), np.nan)
            cols["frame"].append(np.full(len(p), k + 1, dtype=np.int64))
            for j, name in enumerate(("x_nm", "y_nm", "z_nm")):
                cols[name].append(p[:, j])
            cols["photons"].append(np.asarray(ph, dtype=np.float64))
            cols["confidence"].append(np.asarray(c, dtype=np.float64))
        return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}


# --------------------------------------------------------------------------------------------------------------
# One configuration dict → task, trained and cached (the notebooks' entry point)
# --------------------------------------------------------------------------------------------------------------
#: Defaults of :func:`build_task` (CI scale: 48-px training frames, 110 nm × 100 nm voxels, a quarter-width CNN).
TASK_DEFAULTS = dict(
    optics="storm",              # 'storm' (λ 0.67 µm, focus 1.5 µm), 'telomere' (λ 0.58 µm, focus 4.5 µm), a psf.json
                                 # path (refocuslib calibrate) or a dict of optics (then give z_range_um)
    z_range_um=None,             # default: the named optics' range (0–4 µm or 2–6 µm)
    mask="tetrapod_printed",     # a smlm.MASKS name, 'tetrapod_analytic', 'none' or 'learnable'
    mask_size=65,                # pixels of a learnable mask (zero phase = standard PSF at start, as in the paper)
    learn_mask=False, lr_mask=0.05,
    train_px=48, upsampling=1, dz_nm=100.0, width=0.25,   # 100 nm axial voxels: finer than the 150 nm match radius
    n_emitters=(2, 12), photons=(6000.0, 40000.0), background=(30.0, 200.0), nonuniform=0.0,
    blur_sigma_px=(0.75, 1.25),  # model-mismatch blur (the release: ≈ 1 px)
    read_noise_e=8.0, gain=1.0, qe=1.0, baseline_adu=0.0,   # camera: counts = gain·Poisson(qe·photons) + read + baseline
    norm_photons=None,           # input scale in photons (fixed normalisation); None: mean photons / 300
    batch_size=4, n_val=8, sigma_vox=1.0, overlap="recall", dice_weight=1.0,
    patch_px=81, fft_px=162,     # 81 px hold ≥ 86 % (mean 92 %) of a Tetrapod / learned PSF's light over z; 41 px: 57–75 %
    val_densities=VAL_DENSITIES,
)


def _optics(spec):
    """(microscope, default z range or None) of a recipe's ``optics``: 'storm' or 'telomere' (the paper's, with
    their z ranges), a psf.json path or a dict of optics (:func:`refocuslib.calibrate.resolve_microscope`; no
    default z range: a calibration holds none)."""
    from refocuslib import smlm
    if isinstance(spec, str) and spec == "storm":
        return smlm.STORM_OPTICS, smlm.STORM_Z_RANGE_UM
    if isinstance(spec, str) and spec == "telomere":
        return smlm.TELOMERE_OPTICS, smlm.TELOMERE_Z_RANGE_UM
    from refocuslib.calibrate import resolve_microscope
    presets = {"storm": smlm.STORM_OPTICS, "telomere": smlm.TELOMERE_OPTICS}
    return resolve_microscope(spec, presets, "optics"), None


def _plain_spec(value, name: str):
    """A JSON-able copy of a recipe value (a psf.json path as a string, a dict of optics as plain types), as
    stored in the checkpoint for :func:`load_localizer`."""
    import json
    from pathlib import Path
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        try:
            return json.loads(json.dumps(value))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: a dict of optics must hold plain numbers and strings ({e})") from None
    return value


def build_mask(name: str, na: float = 1.45, size: int = 65):
    """A mask by name: one of :data:`refocuslib.smlm.MASKS` (real), 'tetrapod_analytic'
    (:func:`refocuslib.optics.tetrapod_mask`), 'none', or 'learnable' (zero phase, trainable)."""
    from refocuslib import optics, smlm
    if name in smlm.MASKS:
        return smlm.real_mask(name, na=na)
    if name == "tetrapod_analytic":
        return optics.tetrapod_mask()
    if name == "none":
        return None
    if name == "learnable":
        return optics.learnable_mask(size)
    raise ValueError(f"mask: expected one of {sorted(smlm.MASKS) + ['tetrapod_analytic', 'none', 'learnable']}, "
                     f"got {name!r}")


def build_task(**config) -> DeepSTORM3DTask:
    """A :class:`DeepSTORM3DTask` from a flat configuration (keys of :data:`TASK_DEFAULTS`; unknown keys raise).

    ``optics``: 'storm' or 'telomere' (the paper's optics and z ranges), a path to a ``psf.json`` written by
    ``refocuslib calibrate`` (relative: to the working folder, else the repository) or a dict of optics (``na``,
    ``wavelength_um``, ``n_immersion``, ``pixel_um``, optionally ``n_sample``, ``nfp_um``, ``zernike_noll_rad``);
    these carry no z range, so ``z_range_um`` is then required. A calibrated aberration is added to the phase of
    ``mask`` (:class:`~refocuslib.optics.PhaseSum`; with ``mask: none`` it is the pupil alone)."""
    unknown = set(config) - set(TASK_DEFAULTS)
    if unknown:
        raise ValueError(f"config: unknown keys {sorted(unknown)}; expected keys of TASK_DEFAULTS")
    c = {**TASK_DEFAULTS, **config}
    mic, z_default = _optics(c["optics"])
    if not c["z_range_um"] and z_default is None:
        raise ValueError(f"z_range_um: optics {c['optics']!r} (a psf.json or a dict of optics) carries no axial "
                         f"range; give z_range_um: [low, high] µm (depth above the coverslip when the optics set "
                         f"n_sample, else the distance from the focal plane)")
    z_range = tuple(c["z_range_um"] or z_default)
    shape = (positive_int(c["train_px"], "train_px", 8),) * 2
    mask = build_mask(c["mask"], mic.na, int(c["mask_size"]))
    if mic.mask is not None:  # a calibrated pupil (psf.json): the objective's aberration, added to the chosen mask
        from refocuslib.optics import PhaseSum
        if not callable(mic.mask):
            raise ValueError("optics: the microscope's mask must be a callable pupil phase (e.g. a psf.json's "
                             "Zernike pupil) to add to the mask")
        mask = mic.mask if mask is None else PhaseSum(mask, mic.mask)
        mic = mic.replace(mask=None)
    physics = PhysicalLayer(mic, shape, mask=mask, patch_px=int(c["patch_px"]), read_noise_e=float(c["read_noise_e"]),
                            fft_px=int(c["fft_px"]), qe=float(c["qe"]), gain=float(c["gain"]),
                            baseline_adu=float(c["baseline_adu"]))
    grid = VoxelGrid.from_voxel(shape, mic.pixel_um, int(c["upsampling"]), z_range, float(c["dz_nm"]))
    sampler = EmitterSampler(shape, mic.pixel_um, z_range, n_emitters=tuple(int(v) for v in c["n_emitters"]),
                             photons=tuple(c["photons"]), background=tuple(c["background"]),
                             nonuniform=float(c["nonuniform"]), blur_sigma_px=tuple(c["blur_sigma_px"]))
    # fixed photometric normalisation (counts of the mean background → 0, norm_photons → 1)
    ph_lo, ph_hi = sampler.photons
    norm_ph = float(c["norm_photons"]) if c["norm_photons"] is not None else max(1.0, 0.5 * (ph_lo + ph_hi) / 300.0)
    adu = physics.gain * physics.qe
    offset = physics.baseline_adu + adu * 0.5 * (sampler.background[0] + sampler.background[1])
    cnn = LocalizationCNN(grid.n_z, width=float(c["width"]), upsampling=grid.upsampling, input_offset=offset,
                          input_scale=adu * positive(norm_ph, "norm_photons"))
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()}
    cfg["optics"] = _plain_spec(cfg["optics"], "optics")
    return DeepSTORM3DTask(physics, cnn, grid, sampler, batch_size=int(c["batch_size"]),
                           learn_mask=bool(c["learn_mask"]), lr_mask=float(c["lr_mask"]), sigma_vox=c["sigma_vox"],
                           dice_weight=float(c["dice_weight"]), n_val=int(c["n_val"]), overlap=c["overlap"],
                           val_densities=tuple(c["val_densities"]), config=cfg)


def load_localizer(checkpoint, device: str = "cpu") -> DeepSTORM3DTask:
    """A trained DeepSTORM3D localizer rebuilt from its checkpoint alone (a shipped ``data/checkpoints/*.pt``
    or a run's ``best.pt``): the build configuration stored with it (optics, mask, grid, camera,
    normalisation) → :func:`build_task`, the weights (a learned mask included) and the calibrated threshold.
    Use ``task.localize(frames)`` or ``task.localization_table(frames)``."""
    from refocuslib.io import load_checkpoint
    ck = load_checkpoint(checkpoint)
    extra = ck.get("extra") or {}
    if "config" not in extra:
        raise ValueError(f"checkpoint: {checkpoint} carries no DeepSTORM3D build configuration (written by an "
                         "older version); retrain it with python -m refocuslib.train --recipe NAME")
    config = dict(extra["config"])
    config["n_val"] = 1  # the validation frames are not needed to localise
    task = build_task(**config)
    task.generator.load_state_dict(ck["generator"])
    task.load_extra_state(extra)
    task.generator.to(device).eval()
    return task


def train_cached(config: dict, steps: int, lr_g: float, results_dir, name: str, seed: int = 0,
                 device: str = "cpu", val_every: Optional[int] = None, progress: bool = False):
    """Build the task of ``config``, train it with :func:`refocuslib.train.fit` in
    :func:`refocuslib.train.checkpoint_dir` (``results/<profile>/checkpoints/<name>-<hash>``; an existing
    finished run is loaded instead of retrained, so notebooks share one model), then calibrate the detection threshold on the
    validation frames. The network holds the best-validation weights. Returns ``(task, TrainResult)``."""
    from refocuslib.train import TrainConfig, fit
    steps = positive_int(steps, "steps")
    key = {**TASK_DEFAULTS, **config, "steps": steps, "lr_g": lr_g, "seed": seed}
    torch.manual_seed(int(seed))  # the CNN's (and a learnable mask's) initial weights belong to the recipe
    task = build_task(**config)
    out = checkpoint_dir(results_dir, name, key)
    ve = val_every or max(1, steps // 4)
    res = fit(task, TrainConfig(steps=steps, out_dir=str(out), lr_g=float(lr_g), val_every=ve, ckpt_every=steps,
                                seed=seed, device=device, progress=progress))
    if (out / "best.pt").exists():  # the best-validation weights, as for every other paper's model
        from refocuslib.train import load_generator_weights
        load_generator_weights(task.generator, out / "best.pt")
    task.calibrate_threshold()
    return task, res


def simulate_test_frames(task: DeepSTORM3DTask, shape_yx, n_emitters: int, n_frames: int, seed: int,
                         photons=None, background=None) -> Dict[str, Tensor]:
    """``n_frames`` test frames of ``shape_yx`` with exactly ``n_emitters`` each, through the task's optics and
    mask (frames ``frame`` (B, 1, H, W) counts; ``xyz_um``, ``photons`` padded as the sampler's).
    ``photons``/``background`` default to the training ranges."""
    from refocuslib.datasets.deepstorm3d import SimulatedFrames
    s = task.sampler
    smp = s.replace(shape_yx=tuple(int(v) for v in shape_yx), n_emitters=(int(n_emitters), int(n_emitters)),
                    photons=s.photons if photons is None else photons,
                    background=s.background if background is None else background)
    phys = task.physics.resized(smp.shape_yx)
    data = SimulatedFrames(phys, task.grid.resized(smp.shape_yx), smp, n_frames, seed=seed)
    return data.batch(torch.Generator().manual_seed(int(seed)), positive_int(n_frames, "n_frames"))


def compare_with_mp(task: DeepSTORM3DTask, frames: Dict[str, Tensor], n_mp: int, min_photons: float,
                    z_step_um: float = 0.1, match_nm: float = 150.0) -> Dict[str, object]:
    """Localize test ``frames`` (from :func:`simulate_test_frames`) with the task's CNN (all frames) and with
    :func:`refocuslib.smlm.matching_pursuit` (the first ``n_mp``), and match both to the truth (Hungarian,
    ``match_nm``). Returns positions (nm) per frame, the matches and MP's seconds per frame."""
    import time
    from refocuslib import smlm
    truth = task.truth_nm(frames)
    cnn_nm = task.localize(frames["frame"])
    shape = tuple(frames["frame"].shape[-2:])
    phys = task.physics.resized(shape)
    mp_nm, t0 = [], time.perf_counter()
    for k in range(min(int(n_mp), len(truth))):
        res = smlm.matching_pursuit(phys.counts_to_photons(frames["frame"][k, 0]), phys, min_photons=min_photons,
                                    z_step_um=z_step_um, z_range_um=task.grid.z_range_um,
                                    max_emitters=3 * len(truth[k]) + 10)
        mp_nm.append(res.xyz_nm)
    mp_s = (time.perf_counter() - t0) / max(1, len(mp_nm))
    n = len(mp_nm)
    return {"truth_nm": truth, "cnn_nm": cnn_nm, "mp_nm": mp_nm, "mp_s_per_frame": mp_s,
            "cnn": match_frames(cnn_nm, truth, match_nm),
            "cnn_on_mp_frames": match_frames(cnn_nm[:n], truth[:n], match_nm) if n else None,
            "mp": match_frames(mp_nm, truth[:n], match_nm) if n else None}
