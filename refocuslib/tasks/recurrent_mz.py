"""Recurrent-MZ training tasks and their recipes (Huang et al. 2021); the evaluation is in
:mod:`refocuslib.evaluate.recurrent_mz` (its inference functions are re-exported here).

Tasks (subclasses of :class:`refocuslib.train.TrainTask`, trained with :func:`refocuslib.train.fit`), registered
in ``refocuslib.train.TASKS`` through their factories :func:`recurrent_mz_task`, :func:`deepz_volume_task` and
:func:`unet3d_task` (recipes ``rmz_nuclei``, ``rmz_beads``, ``deepz_volume_nuclei``, ``unet3d_nuclei`` in
``refocuslib/recipes.yaml``):

* :class:`RecurrentMZTask` — :class:`~refocuslib.models.recurrent_mz.RecurrentMZ` with the paper loss
  (Eq. 7–10) 3·BerHu(c = 0.1) + 1·(1 − MS-SSIM) + 0.5·adversarial
  (:func:`refocuslib.losses.recurrent_mz_generator_loss`, LSGAN discriminator
  :class:`~refocuslib.models.blocks.PatchDiscriminator`; ``adv_weight`` 0 drops it, as the CPU recipes do),
  random M, positions and order per batch. Paper: Adam, lr 1e-5 (the ``*_paper`` recipes); the CPU recipes train
  narrow networks for a few thousand steps at lr 1e-3 (cosine).
* :class:`UNet3DTask` — the 3D U-Net baseline (M inputs as channels, fixed positions and order), same
  BerHu + MS-SSIM fidelity terms on the whole |Z|-plane output, no discriminator.
* :class:`DeepZVolumeTask` — Deep-Z (:class:`~refocuslib.models.deepz.DeepZGenerator`; LSGAN with
  :func:`refocuslib.losses.deepz_generator_loss`, α = 0.02, or MAE only with ``gan=False``) on plane pairs of
  the same scans.

Validation (every task): 3·BerHu + (1 − MS-SSIM) on a fixed set of validation crops (lower is better), with the
same loss and the PSNR of the all-zero output and of the interpolation (Deep-Z: the unrefocused input) beside it.

:func:`load_models` / :func:`ensemble` give the shipped models through :func:`refocuslib.recipes.train_cached`;
:func:`train_models` is the older per-notebook cache (kept for notebook 50 until it names recipes).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from refocuslib import dpm as _dpm
from refocuslib import losses
from refocuslib._validate import positive, positive_int
from refocuslib.datasets.recurrent_mz import VolumeSet, VolumeSpec, sample_batch, simulate_volumes
from refocuslib.models.blocks import PatchDiscriminator, scaled
from refocuslib.models.deepz import DeepZDiscriminator, DeepZGenerator
from refocuslib.models.recurrent_mz import RecurrentMZ
from refocuslib.models.unet3d import UNet3D
from refocuslib.optics import OIL_63X
from refocuslib.train import TrainConfig, TrainResult, TrainTask, fit, load_generator_weights, settings_digest

Tensor = torch.Tensor
DataLike = Union[VolumeSet, Callable[[], VolumeSet]]

__all__ = ["RecurrentMZTask", "UNet3DTask", "DeepZVolumeTask", "TrainedModels", "train_models",
           "recurrent_mz_task", "unet3d_task", "deepz_volume_task", "RECIPES", "ENSEMBLE_RECIPES", "load_models",
           "ensemble", "recipe_spec", "held_out_volumes", "volume_spec", "MICROSCOPES",
           "uniform_dpms", "recurrent_mz_volume", "deepz_nearest_volume", "unet3d_volume",
           "interpolation_volume", "METHODS"]

METHODS = ("recurrent_mz", "deepz", "unet3d", "interpolation")


class _LazyData:
    """Training/validation volumes simulated on first use (a cached ``fit`` never needs them)."""

    def _init_data(self, data: DataLike, val_data: DataLike):
        self._data_src, self._val_src = data, val_data
        self._data = self._val = None

    @property
    def data(self) -> VolumeSet:
        if self._data is None:
            self._data = self._data_src() if callable(self._data_src) else self._data_src
        return self._data

    @property
    def val_data(self) -> VolumeSet:
        if self._val is None:
            self._val = self._val_src() if callable(self._val_src) else self._val_src
        return self._val


def _rmz_fidelity(out: Tensor, target: Tensor) -> Tensor:
    """3·BerHu + 1·(1 − MS-SSIM), the non-adversarial part of Eq. 7."""
    return losses.recurrent_mz_generator_loss(out, target, None)


def _psnr_t(out: Tensor, target: Tensor) -> float:
    """PSNR (dB) of a batch against its target, peak = the target's dynamic range (as :func:`plane_metrics`)."""
    rng = float(target.max() - target.min()) or 1.0
    mse = float(((out - target) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(rng * rng / mse)


def _interp_batch(b: dict) -> Tensor:
    """Linear interpolation along z between the inputs of a :func:`sample_batch` batch (B, 1, H, W)."""
    out = []
    for imgs, zi, zo in zip(b["images"].numpy(), b["z_inputs_um"].numpy(), b["z_output_um"].numpy()):
        out.append(interpolation_volume(imgs, zi, [zo]))
    return torch.from_numpy(np.stack(out))


@torch.no_grad()
def _val_metrics(out: Tensor, target: Tensor, baseline: Tensor, baseline_name: str = "interpolation") -> dict:
    """Validation: ``val_loss`` = 3·BerHu + (1 − MS-SSIM) (Eq. 7 without the adversarial term; an all-dark output
    scores ≈ 1 + 3·BerHu(target), not 0), with the same loss and the PSNR for the zero output and for
    ``baseline`` (linear interpolation, i.e. the inputs themselves at the input planes)."""
    out, target, baseline = out.float(), target.float(), baseline.float()
    zero = torch.zeros_like(target)
    return {"val_loss": float(_rmz_fidelity(out, target)), "val_psnr": _psnr_t(out, target),
            "val_loss_zero": float(_rmz_fidelity(zero, target)), "val_psnr_zero": _psnr_t(zero, target),
            f"val_loss_{baseline_name}": float(_rmz_fidelity(baseline, target)),
            f"val_psnr_{baseline_name}": _psnr_t(baseline, target)}


class RecurrentMZTask(_LazyData, TrainTask):
    """Recurrent-MZ GAN training on simulated scans (see the module docstring).

    ``n_inputs``: the M drawn per batch; ``jitter_planes``: random moves of each input around the Δz grid
    (teaches non-uniform spacing); ``adv_weight`` 0 drops the discriminator.
    """

    def __init__(self, data: DataLike, val_data: DataLike, width: float = 1.0, levels: int = 4,
                 batch_size: int = 4, crop_px: int = 64, n_inputs: Sequence[int] = (2, 3), jitter_planes: int = 1,
                 adv_weight: float = 0.5, disc_channels: Sequence[int] = (64, 128, 256, 512), n_val: int = 8,
                 seed: int = 0, norm: str = "batch", input_skip=False):
        self._init_data(data, val_data)
        torch.manual_seed(seed)
        self.generator = RecurrentMZ(width=width, levels=levels, norm=norm, input_skip=input_skip)
        self.adv_weight = positive(adv_weight, "adv_weight", allow_zero=True)
        self.discriminator = (PatchDiscriminator(1, [scaled(c, width) for c in disc_channels])
                              if self.adv_weight > 0 else None)
        self.batch_size, self.crop = positive_int(batch_size, "batch_size"), positive_int(crop_px, "crop_px", 8)
        self.n_inputs, self.jitter = tuple(n_inputs), int(jitter_planes)
        self.n_val, self.seed = positive_int(n_val, "n_val"), int(seed)
        self._val_batch = None

    def make_batch(self, step, generator):
        return sample_batch(self.data, generator, self.batch_size, self.crop, self.n_inputs, self.jitter)

    def generate(self, batch):
        return self.generator(batch["images"], batch["dpms"])

    def generator_loss(self, batch, output):
        d_fake = self.discriminator(output) if self.discriminator is not None else None
        loss = losses.recurrent_mz_generator_loss(output, batch["target"], d_fake, adv_weight=self.adv_weight)
        return loss, {"berhu": float(losses.berhu(output.detach(), batch["target"]))}

    def discriminator_loss(self, batch, output):
        return losses.lsgan_discriminator_loss(self.discriminator(batch["target"]), self.discriminator(output)), {}

    def validate(self):
        if self._val_batch is None:  # fixed: M = all inputs on the Δz grid, in order
            g = torch.Generator().manual_seed(self.seed + 7919)
            self._val_batch = sample_batch(self.val_data, g, self.n_val, self.crop,
                                           (self.val_data.spec.n_inputs,), 0, permute=False, augment=False)
        b = self._val_batch
        dev = next(self.generator.parameters()).device
        out = self.generator(b["images"].to(dev), b["dpms"].to(dev)).cpu()
        return _val_metrics(out, b["target"], _interp_batch(b))


class UNet3DTask(_LazyData, TrainTask):
    """3D U-Net baseline: the ``spec.n_inputs`` inputs at the default Δz grid, in order → all |Z| planes."""

    def __init__(self, data: DataLike, val_data: DataLike, spec: VolumeSpec, width: float = 1.0, levels: int = 3,
                 batch_size: int = 2, crop_px: int = 64, n_val: int = 4, seed: int = 0, norm: str = "batch"):
        self._init_data(data, val_data)
        torch.manual_seed(seed)
        self.spec = spec
        self.generator = UNet3D(spec.n_inputs, spec.n_planes, width=width, levels=levels, norm=norm)
        self.discriminator = None
        self.batch_size, self.crop = positive_int(batch_size, "batch_size"), positive_int(crop_px, "crop_px", 8)
        self.n_val, self.seed = positive_int(n_val, "n_val"), int(seed)
        self._val_batch = None

    def _batch(self, vset: VolumeSet, g: torch.Generator, n: int, augment: bool = True):
        idx = vset.input_indices()
        h, w = vset.spec.shape_yx
        stacks = torch.from_numpy(vset.stacks)
        xs, ys = [], []
        for _ in range(n):
            v = int(torch.randint(0, len(vset), (1,), generator=g))
            y0 = int(torch.randint(0, h - self.crop + 1, (1,), generator=g))
            x0 = int(torch.randint(0, w - self.crop + 1, (1,), generator=g))
            k = int(torch.randint(0, 8, (1,), generator=g)) if augment else 0
            vol = stacks[v, :, y0:y0 + self.crop, x0:x0 + self.crop]
            vol = (vol.flip(-1) if k >= 4 else vol).rot90(k % 4, (-2, -1))
            xs.append(vol[idx])
            ys.append(vol)
        return {"images": torch.stack(xs), "target": torch.stack(ys)}

    def make_batch(self, step, generator):
        return self._batch(self.data, generator, self.batch_size)

    def generate(self, batch):
        return self.generator(batch["images"])

    def generator_loss(self, batch, output):
        loss = _rmz_fidelity(output, batch["target"])
        return loss, {}

    def validate(self):
        if self._val_batch is None:
            self._val_batch = self._batch(self.val_data, torch.Generator().manual_seed(self.seed + 7919),
                                          self.n_val, augment=False)
        dev = next(self.generator.parameters()).device
        b = self._val_batch
        out = self.generator(b["images"].to(dev)).cpu()
        z = self.val_data.z_um
        idx = self.val_data.input_indices()
        interp = torch.from_numpy(np.stack([interpolation_volume(x, z[idx], z) for x in b["images"].numpy()]))
        return _val_metrics(out, b["target"], interp)


class DeepZVolumeTask(_LazyData, TrainTask):
    """Deep-Z on the same scans: input plane i, target plane j, uniform DPM z_j − z_i with |z_j − z_i| ≤
    ``max_dz_um`` (default: the whole stack); LSGAN with MAE, Deep-Z Eq. 4–5 (α = 0.02)."""

    def __init__(self, data: DataLike, val_data: DataLike, spec: VolumeSpec, width: float = 1.0, levels: int = 5,
                 disc_blocks: int = 6, batch_size: int = 4, crop_px: int = 64, max_dz_um: Optional[float] = None,
                 alpha: float = 0.02, n_val: int = 8, seed: int = 0, gan: bool = True):
        self._init_data(data, val_data)
        torch.manual_seed(seed)
        self.spec = spec
        self.generator = DeepZGenerator(width=width, levels=levels)
        self.gan = bool(gan)
        self.discriminator = DeepZDiscriminator(width=width, blocks=disc_blocks) if self.gan else None
        self.batch_size, self.crop = positive_int(batch_size, "batch_size"), positive_int(crop_px, "crop_px", 8)
        span = (spec.n_planes - 1) * spec.z_step_um
        self.max_dz = span if max_dz_um is None else positive(max_dz_um, "max_dz_um")
        self.alpha = float(alpha)
        self.n_val, self.seed = positive_int(n_val, "n_val"), int(seed)
        self._val_batch = None

    @property
    def trained_range_um(self) -> Tuple[float, float]:
        return (-self.max_dz, self.max_dz)

    def _batch(self, vset: VolumeSet, g: torch.Generator, n: int, augment: bool = True):
        h, w = vset.spec.shape_yx
        z = vset.z_um
        nz = len(z)
        kmax = int(np.floor(self.max_dz / vset.spec.z_step_um + 1e-9))
        stacks = torch.from_numpy(vset.stacks)
        xs, ds, ys = [], [], []
        for _ in range(n):
            v = int(torch.randint(0, len(vset), (1,), generator=g))
            i = int(torch.randint(0, nz, (1,), generator=g))
            j = int(torch.randint(max(0, i - kmax), min(nz - 1, i + kmax) + 1, (1,), generator=g))
            y0 = int(torch.randint(0, h - self.crop + 1, (1,), generator=g))
            x0 = int(torch.randint(0, w - self.crop + 1, (1,), generator=g))
            k = int(torch.randint(0, 8, (1,), generator=g)) if augment else 0
            vol = stacks[v, :, y0:y0 + self.crop, x0:x0 + self.crop]
            vol = (vol.flip(-1) if k >= 4 else vol).rot90(k % 4, (-2, -1))
            xs.append(vol[i:i + 1])
            ys.append(vol[j:j + 1])
            ds.append(torch.full((1, self.crop, self.crop), float(z[j] - z[i]) / _dpm.NETWORK_SCALE_UM))
        return {"image": torch.stack(xs), "dpm": torch.stack(ds), "target": torch.stack(ys)}

    def make_batch(self, step, generator):
        return self._batch(self.data, generator, self.batch_size)

    def generate(self, batch):
        return self.generator(batch["image"], batch["dpm"])

    def generator_loss(self, batch, output):
        mae = losses.mae(output, batch["target"])
        if self.discriminator is None:  # CPU recipes: MAE only
            return mae, {"mae": float(mae.detach())}
        loss = losses.deepz_generator_loss(output, batch["target"], self.discriminator(output), self.alpha)
        return loss, {"mae": float(mae.detach())}

    def discriminator_loss(self, batch, output):
        return losses.lsgan_discriminator_loss(self.discriminator(batch["target"]), self.discriminator(output)), {}

    def validate(self):
        if self._val_batch is None:
            self._val_batch = self._batch(self.val_data, torch.Generator().manual_seed(self.seed + 7919),
                                          self.n_val, augment=False)
        b = self._val_batch
        dev = next(self.generator.parameters()).device
        out = self.generator(b["image"].to(dev), b["dpm"].to(dev)).cpu()
        return {**_val_metrics(out, b["target"], b["image"], "identity"), "val_mae": float(losses.mae(out, b["target"]))}


# --------------------------------------------------------------------------------- recipe factories (TASKS)
#: microscopes a recipe's ``data.microscope`` may name (else a psf.json path or a dict of optics).
MICROSCOPES = {"OIL_63X": OIL_63X}


def volume_spec(data: dict) -> VolumeSpec:
    """``VolumeSpec(**data)`` from a recipe's ``data``: ``microscope`` may be a name of :data:`MICROSCOPES`
    (default: the paper's 63×/1.4 oil), a path to a ``psf.json`` written by ``refocuslib calibrate`` (relative:
    to the working folder, else the repository; its calibrated pupil is applied) or a dict of optics (``na``,
    ``wavelength_um``, ``n_immersion``, ``pixel_um``, optionally ``zernike_noll_rad``)."""
    if not isinstance(data, dict):
        raise ValueError(f"data: expected a mapping of VolumeSpec fields, got {type(data).__name__} {data!r}")
    data = dict(data)
    if data.get("microscope") is not None:
        from refocuslib.calibrate import resolve_microscope
        data["microscope"] = resolve_microscope(data["microscope"], MICROSCOPES, "data.microscope")
    else:
        data.pop("microscope", None)
    import dataclasses
    accepted = [f.name for f in dataclasses.fields(VolumeSpec)]
    unknown = sorted(map(str, set(data) - set(accepted)))
    if unknown:
        raise ValueError(f"data: unknown keys {unknown}; accepted: {', '.join(accepted)}")
    return VolumeSpec(**data)


def _volumes(data: dict, n_train: int, n_val: int, data_seed: int):
    spec = volume_spec(data)
    n_train, n_val = positive_int(n_train, "n_train_volumes"), positive_int(n_val, "n_val_volumes")
    seed = int(data_seed)
    return (spec, lambda: simulate_volumes(spec, n_train, seed=seed),          # noqa: E731
            lambda: simulate_volumes(spec, n_val, seed=seed + 1))             # noqa: E731


def recurrent_mz_task(data: dict, n_train_volumes: int = 16, n_val_volumes: int = 2, data_seed: int = 0, **kw) -> RecurrentMZTask:
    """``train.TASKS['recurrent_mz']``: :class:`RecurrentMZTask` on ``n_train_volumes`` simulated scans of
    :func:`volume_spec` ``(data)`` (seed ``data_seed``; ``n_val_volumes`` validation scans, seed ``data_seed + 1``; test
    volumes use other seeds).
    ``kw``: the task's options (width, levels, norm, batch_size, crop_px, n_inputs, jitter_planes, adv_weight, ...)."""
    spec, tr, va = _volumes(data, n_train_volumes, n_val_volumes, data_seed)
    task = RecurrentMZTask(tr, va, **{"seed": int(data_seed), **kw})
    task.spec = spec
    span = float(spec.z_um[-1] - spec.z_um[0])
    task.trained_range_um = (-span, span)
    return task


def unet3d_task(data: dict, n_train_volumes: int = 16, n_val_volumes: int = 2, data_seed: int = 0, **kw) -> UNet3DTask:
    """``train.TASKS['unet3d']``: :class:`UNet3DTask` on the scans of :func:`recurrent_mz_task`."""
    spec, tr, va = _volumes(data, n_train_volumes, n_val_volumes, data_seed)
    task = UNet3DTask(tr, va, spec, **{"seed": int(data_seed), **kw})
    task.trained_range_um = None
    return task


def deepz_volume_task(data: dict, n_train_volumes: int = 16, n_val_volumes: int = 2, data_seed: int = 0, **kw) -> DeepZVolumeTask:
    """``train.TASKS['deepz_volume']``: :class:`DeepZVolumeTask` (Deep-Z baseline) on the same scans."""
    spec, tr, va = _volumes(data, n_train_volumes, n_val_volumes, data_seed)
    return DeepZVolumeTask(tr, va, spec, **{"seed": int(data_seed), **kw})


# ------------------------------------------------------------------------------------------ training cache
@dataclass
class TrainedModels:
    """Networks of one sample kind, in eval mode, with their training results and provenance."""
    spec: VolumeSpec
    models: Dict[str, torch.nn.Module]
    results: Dict[str, TrainResult]
    dirs: Dict[str, str]
    trained_range_um: Dict[str, Tuple[float, float]]
    seconds: Dict[str, float]


_TASK_KEYS = {
    "recurrent_mz": ("width", "levels", "batch_size", "crop_px", "n_inputs", "jitter_planes", "adv_weight",
                     "disc_channels", "n_val"),
    "unet3d": ("width", "levels", "batch_size", "crop_px", "n_val"),
    "deepz": ("width", "levels", "disc_blocks", "batch_size", "crop_px", "max_dz_um", "alpha", "n_val"),
}
_FIT_KEYS = ("steps", "lr_g", "lr_d", "d_every", "val_every", "ckpt_every", "grad_clip")


def train_models(spec: VolumeSpec, train: dict, checkpoints_dir, seed: int = 0, device: str = "cpu",
                 methods: Sequence[str] = ("recurrent_mz", "deepz", "unet3d"), n_train: int = 16, n_val: int = 2,
                 progress: bool = False, name: Optional[str] = None, use_best: bool = True) -> TrainedModels:
    """Train (or reload from the cache) the networks of ``methods`` on simulated scans of ``spec``.

    ``train`` maps a method to its options: task keyword arguments (``width``, ``levels``, ``batch_size``,
    ``crop_px``, …) and ``fit`` settings (``steps``, ``lr_g``, ``lr_d``, ``d_every``, ``val_every``). The
    checkpoint folder is ``<checkpoints_dir>/<name or 'rmz_'+kind>_<method>-<hash>`` where the hash covers the
    data spec, ``n_train``, ``n_val``, ``seed`` and the method's options: a second call with the same settings
    (e.g. from another notebook) resumes a finished run, i.e. loads it without training. ``use_best`` loads the
    weights of the lowest validation loss (``best.pt``) rather than the last step.
    Training volumes use seeds ``seed`` (train) and ``seed + 1`` (validation); test volumes should use others.
    """
    unknown = [m for m in methods if m not in _TASK_KEYS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; choose from {sorted(_TASK_KEYS)}")
    n_train, n_val = positive_int(n_train, "n_train"), positive_int(n_val, "n_val")
    data = lambda: simulate_volumes(spec, n_train, seed=seed)          # noqa: E731
    val = lambda: simulate_volumes(spec, n_val, seed=seed + 1)         # noqa: E731
    cache = {}

    def shared(fn, key):  # simulate once for all methods trained in this call
        def get():
            if key not in cache:
                cache[key] = fn()
            return cache[key]
        return get

    data_f, val_f = shared(data, "train"), shared(val, "val")
    out = TrainedModels(spec, {}, {}, {}, {}, {})
    base = name or f"rmz_{spec.kind}"
    for method in methods:
        opts = dict(train.get(method, {}))
        bad = set(opts) - set(_TASK_KEYS[method]) - set(_FIT_KEYS)
        if bad:
            raise ValueError(f"train[{method!r}]: unknown options {sorted(bad)}; accepted "
                             f"{sorted(set(_TASK_KEYS[method]) | set(_FIT_KEYS))}")
        task_kw = {k: opts[k] for k in _TASK_KEYS[method] if k in opts}
        fit_kw = {k: opts[k] for k in _FIT_KEYS if k in opts}
        if "steps" not in fit_kw:
            raise ValueError(f"train[{method!r}]: 'steps' is required")
        if method == "recurrent_mz":
            task = RecurrentMZTask(data_f, val_f, seed=seed, **task_kw)
            z = spec.z_um
            span = float(z[-1] - z[0])
            trained = (-span, span)
        elif method == "unet3d":
            task = UNet3DTask(data_f, val_f, spec, seed=seed, **task_kw)
            trained = None
        else:
            task = DeepZVolumeTask(data_f, val_f, spec, seed=seed, **task_kw)
            trained = task.trained_range_um
        key = {"spec": spec.hash_dict(), "n_train": n_train, "n_val": n_val, "seed": seed, "method": method,
               "task": task_kw, "fit": {k: v for k, v in fit_kw.items() if k != "ckpt_every"}}
        out_dir = Path(checkpoints_dir) / f"{base}_{method}-{settings_digest(key)}"
        fit_kw.setdefault("ckpt_every", fit_kw.get("val_every", 50))  # an interrupted run resumes from here
        cfg = TrainConfig(out_dir=str(out_dir), seed=seed, device=device, progress=progress, **fit_kw)
        res = fit(task, cfg)
        if use_best and (out_dir / "best.pt").exists():
            load_generator_weights(task.generator, out_dir / "best.pt")
        task.generator.eval()
        out.models[method] = task.generator
        out.results[method] = res
        out.dirs[method] = str(out_dir)
        out.trained_range_um[method] = trained
        out.seconds[method] = res.seconds
    return out


# ------------------------------------------------------------------------------ evaluation (moved, re-exported)
from refocuslib.evaluate.recurrent_mz import (METHODS, deepz_nearest_volume, interpolation_volume,  # noqa: E402
                                              recurrent_mz_volume, uniform_dpms, unet3d_volume)


# ------------------------------------------------------------------------------------ shipped models (recipes)
#: the recipes of the shipped CPU models: method → recipe name (refocuslib/recipes.yaml)
RECIPES = {"recurrent_mz": "rmz_nuclei", "deepz": "deepz_volume_nuclei", "unet3d": "unet3d_nuclei"}
#: Recurrent-MZ ensemble of notebook 50: the same recipe with seeds 0, 1, 2 (weights and training volumes)
ENSEMBLE_RECIPES = ("rmz_nuclei", "rmz_nuclei_s1", "rmz_nuclei_s2")


def load_models(recipes_by_method: Optional[Dict[str, str]] = None, results_dir="results/ci", device: str = "cpu",
                progress: bool = False) -> Dict[str, TrainTask]:
    """Method → trained task (``generator`` in eval mode, ``trained_range_um``) of each recipe, through
    :func:`refocuslib.recipes.train_cached` (the shipped checkpoint when it exists, else trained and said so)."""
    from refocuslib import recipes
    out = {}
    for method, name in (recipes_by_method or RECIPES).items():
        task, _ = recipes.train_cached(name, results_dir, device=device, progress=progress)
        out[method] = task
    return out


def ensemble(results_dir="results/ci", names: Sequence[str] = ENSEMBLE_RECIPES, device: str = "cpu") -> list:
    """The Recurrent-MZ generators of ``names`` (default :data:`ENSEMBLE_RECIPES`), each via ``train_cached``."""
    from refocuslib import recipes
    return [recipes.train_cached(n, results_dir, device=device, progress=False)[0].generator for n in names]


def recipe_spec(name: str) -> VolumeSpec:
    """The scan geometry a recipe was trained on (its ``params.data``)."""
    from refocuslib import recipes
    return volume_spec(recipes.recipe(name)["params"]["data"])


def held_out_volumes(name: str, n: int, seed: int) -> VolumeSet:
    """``n`` held-out scans of the geometry of recipe ``name`` (pick ``seed`` away from the recipe's
    ``data_seed`` and ``data_seed + 1``, e.g. ≥ 1000)."""
    return simulate_volumes(recipe_spec(name), n, seed=seed)
