"""DeepSTORM3D training task for :func:`refocuslib.train.fit` (Nehme et al., Nat. Methods 17, 734 (2020)).

Training is on simulated data only, generated on the fly (the paper's method): each step draws emitters
(:class:`~refocuslib.datasets.deepstorm3d.EmitterSampler`), renders them through the
:class:`~refocuslib.models.deepstorm3d.PhysicalLayer` (inside ``generate`` so that a learnable phase mask
receives gradients: paper Fig. 4, end-to-end PSF design) and compares the CNN's occupancy grid with the true
one by heatmap matching (MSE of 3D-Gaussian-blurred grids) + a Dice overlap term
(:meth:`DeepSTORM3DTask.loss`, from :mod:`refocuslib.losses`' blur and ``dice_loss``). Validation reports the loss, the Jaccard index and the
lateral/axial RMSE of the post-processed localizations (Hungarian matching at 150 nm).
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
from refocuslib.models.deepstorm3d import LocalizationCNN, PhysicalLayer, VoxelGrid
from refocuslib.train import TrainTask, checkpoint_dir

Tensor = torch.Tensor

__all__ = ["DeepSTORM3DNet", "DeepSTORM3DTask", "localize", "match_frames", "gaussian_blur_3d",
           "TASK_DEFAULTS", "build_mask", "build_task", "train_cached", "simulate_test_frames", "compare_with_mp"]


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
    for s in range(0, x.shape[0], positive_int(batch_size, "batch_size")):
        out = cnn(x[s:s + batch_size].to(device))
        for p, _ in g.to_points(out, threshold, radius_vox):
            points.append(p)
        if return_grids:
            grids.append(out.cpu())
    cnn.train(was_training)
    return (points, torch.cat(grids)) if return_grids else points


class DeepSTORM3DTask(TrainTask):
    """Train the localization CNN (and, with ``learn_mask``, the phase mask) on simulated frames.

    ``physics`` renders frames of ``sampler.shape_yx``; ``grid`` is the recovery grid of those frames;
    targets are occupancy grids × ``cnn.max_value``; loss = heatmap matching of 3D-Gaussian-blurred grids
    (σ = ``sigma_vox`` voxels) + ``dice_weight`` · Dice overlap (:meth:`loss`). ``learn_mask`` trains the physics layer's learnable
    :class:`~refocuslib.optics.ArrayMask` with learning rate ``lr_mask``. Validation: ``n_val`` fixed frames
    (seed ``val_seed``) → loss, Jaccard, RMSE at ``threshold`` (× ``max_value``) and ``radius_vox``.
    """

    def __init__(self, physics: PhysicalLayer, cnn: LocalizationCNN, grid: VoxelGrid, sampler: EmitterSampler,
                 batch_size: int = 4, learn_mask: bool = False, lr_mask: float = 0.05, sigma_vox: float = 1.0,
                 dice_weight: float = 1.0, n_val: int = 8, val_seed: int = 2024, threshold: float = 0.2,
                 radius_vox: int = 1, match_nm: float = 150.0, overlap: str = "recall"):
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
        self.match_nm = positive(match_nm, "match_nm")
        self.n_val = positive_int(n_val, "n_val")
        self.val_batch = self.make_batch(0, torch.Generator().manual_seed(int(val_seed)), self.n_val)

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

    def validate(self) -> Dict[str, float]:
        vb = {k: (v.to(self.physics._device()) if torch.is_tensor(v) and k != "noise_seed" else v)
              for k, v in self.val_batch.items()}
        frames = self.render(self.val_batch)
        out = self.cnn(frames)
        loss = self.loss(out, vb["target"])[0]
        pts = [p for p, _ in self.grid.to_points(out, self.abs_threshold, self.radius_vox)]
        m = match_frames(pts, self.truth_nm(self.val_batch), self.match_nm)
        return {"val_loss": float(loss), "jaccard": m.jaccard, "rmse_lateral_nm": m.rmse_lateral_nm,
                "rmse_axial_nm": m.rmse_axial_nm}

    def extra_state(self) -> dict:
        return {"threshold": self.threshold}

    def load_extra_state(self, state: dict) -> None:
        self.threshold = float(state.get("threshold", self.threshold))

    # -- evaluation helpers ----------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate_threshold(self, candidates: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)) -> Dict[float, float]:
        """Pick the post-processing threshold (fraction of ``max_value``) that maximises the Jaccard index on the
        validation frames (never on test frames); sets ``self.threshold`` and returns {threshold: Jaccard}."""
        self.cnn.eval()
        out = self.cnn(self.render(self.val_batch))
        truth = self.truth_nm(self.val_batch)
        scores = {}
        for t in candidates:
            t = in_range(t, "candidates", 0.0, 1.0, lo_open=True)
            pts = [p for p, _ in self.grid.to_points(out, t * self.cnn.max_value, self.radius_vox)]
            scores[t] = match_frames(pts, truth, self.match_nm).jaccard
        self.threshold = max(scores, key=lambda t: (scores[t], -t))
        return scores

    def localize(self, frames, batch_size: int = 4, return_grids: bool = False):
        """:func:`localize` with this task's CNN, grid, threshold and radius."""
        return localize(self.cnn, frames, self.grid, self.abs_threshold, self.radius_vox, batch_size,
                        return_grids=return_grids)


# --------------------------------------------------------------------------------------------------------------
# One configuration dict → task, trained and cached (the notebooks' entry point)
# --------------------------------------------------------------------------------------------------------------
#: Defaults of :func:`build_task` (CI scale: 48-px training frames, 110 nm × 200 nm voxels, a quarter-width CNN).
TASK_DEFAULTS = dict(
    optics="storm",              # 'storm' (λ 0.67 µm, focus 1.5 µm) or 'telomere' (λ 0.58 µm, focus 4.5 µm)
    z_range_um=None,             # default: the optics' range (0–4 µm or 2–6 µm)
    mask="tetrapod_printed",     # a smlm.MASKS name, 'tetrapod_analytic', 'none' or 'learnable'
    mask_size=65,                # pixels of a learnable mask (zero phase = standard PSF at start, as in the paper)
    learn_mask=False, lr_mask=0.05,
    train_px=48, upsampling=1, dz_nm=200.0, width=0.25,
    n_emitters=(2, 12), photons=(6000.0, 40000.0), background=(30.0, 200.0), nonuniform=0.0,
    blur_sigma_px=(0.5, 1.0), read_noise_e=8.0,
    batch_size=4, n_val=8, sigma_vox=1.0, overlap="recall", dice_weight=1.0,
    patch_px=41, fft_px=128,
)


def _optics(name: str):
    from refocuslib import smlm
    if name == "storm":
        return smlm.STORM_OPTICS, smlm.STORM_Z_RANGE_UM
    if name == "telomere":
        return smlm.TELOMERE_OPTICS, smlm.TELOMERE_Z_RANGE_UM
    raise ValueError(f"optics: 'storm' or 'telomere', got {name!r}")


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
    """A :class:`DeepSTORM3DTask` from a flat configuration (keys of :data:`TASK_DEFAULTS`; unknown keys raise)."""
    unknown = set(config) - set(TASK_DEFAULTS)
    if unknown:
        raise ValueError(f"config: unknown keys {sorted(unknown)}; expected keys of TASK_DEFAULTS")
    c = {**TASK_DEFAULTS, **config}
    mic, z_default = _optics(c["optics"])
    z_range = tuple(c["z_range_um"] or z_default)
    shape = (positive_int(c["train_px"], "train_px", 8),) * 2
    mask = build_mask(c["mask"], mic.na, int(c["mask_size"]))
    physics = PhysicalLayer(mic, shape, mask=mask, patch_px=int(c["patch_px"]), read_noise_e=float(c["read_noise_e"]),
                            fft_px=int(c["fft_px"]))
    grid = VoxelGrid.from_voxel(shape, mic.pixel_um, int(c["upsampling"]), z_range, float(c["dz_nm"]))
    sampler = EmitterSampler(shape, mic.pixel_um, z_range, n_emitters=tuple(int(v) for v in c["n_emitters"]),
                             photons=tuple(c["photons"]), background=tuple(c["background"]),
                             nonuniform=float(c["nonuniform"]), blur_sigma_px=tuple(c["blur_sigma_px"]))
    cnn = LocalizationCNN(grid.n_z, width=float(c["width"]), upsampling=grid.upsampling)
    return DeepSTORM3DTask(physics, cnn, grid, sampler, batch_size=int(c["batch_size"]),
                           learn_mask=bool(c["learn_mask"]), lr_mask=float(c["lr_mask"]), sigma_vox=c["sigma_vox"],
                           dice_weight=float(c["dice_weight"]), n_val=int(c["n_val"]), overlap=c["overlap"])


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
