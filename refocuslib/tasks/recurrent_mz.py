"""Recurrent-MZ training tasks, baselines and evaluation (Huang et al. 2021).

Tasks (subclasses of :class:`refocuslib.train.TrainTask`, trained with :func:`refocuslib.train.fit`):

* :class:`RecurrentMZTask` — :class:`~refocuslib.models.recurrent_mz.RecurrentMZ` with the paper loss
  (Eq. 7–10) 3·BerHu(c = 0.1) + 1·(1 − MS-SSIM) + 0.5·adversarial
  (:func:`refocuslib.losses.recurrent_mz_generator_loss`, LSGAN discriminator
  :class:`~refocuslib.models.blocks.PatchDiscriminator`), random M, positions and order per batch.
  Paper: Adam, lr 1e-5 (``full`` profile); the CI profile trains narrow networks for a few hundred steps with
  lr 2e-3 (``notebooks/params/ci.yaml``) — at 1e-5 nothing would be learnt in a CI budget.
* :class:`UNet3DTask` — the 3D U-Net baseline (M inputs as channels, fixed positions and order), same
  BerHu + MS-SSIM fidelity terms on the whole |Z|-plane output, no discriminator.
* :class:`DeepZVolumeTask` — Deep-Z (:class:`~refocuslib.models.deepz.DeepZGenerator`, LSGAN,
  :func:`refocuslib.losses.deepz_generator_loss`, α = 0.02) trained on plane pairs of the same scans.

Baselines at inference: Deep-Z from the nearest input plane (each input serves its own, non-overlapping
sub-volume, as in the paper), the 3D U-Net, and linear interpolation between the input planes.

:func:`train_models` trains (or, through ``fit``'s resume, reloads) all three networks under
``<checkpoints_dir>/<name>-<hash of the data and training parameters>``, so that notebooks 20 and 21 share them.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from refocuslib import dpm as _dpm
from refocuslib import losses, metrics
from refocuslib._validate import as_image_array, positive, positive_int
from refocuslib.datasets.recurrent_mz import VolumeSet, VolumeSpec, sample_batch, simulate_volumes
from refocuslib.models.blocks import PatchDiscriminator, scaled
from refocuslib.models.deepz import DeepZDiscriminator, DeepZGenerator
from refocuslib.models.recurrent_mz import RecurrentMZ
from refocuslib.models.unet3d import UNet3D
from refocuslib.train import TrainConfig, TrainResult, TrainTask, fit, load_generator_weights, settings_digest

Tensor = torch.Tensor
DataLike = Union[VolumeSet, Callable[[], VolumeSet]]

__all__ = ["RecurrentMZTask", "UNet3DTask", "DeepZVolumeTask", "TrainedModels", "train_models", 
           "uniform_dpms", "recurrent_mz_volume", "deepz_nearest_volume", "unet3d_volume",
           "interpolation_volume", "plane_metrics", "evaluate_methods", "bead_fwhm_um", "permutation_rmse",
           "METHODS"]

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


class RecurrentMZTask(_LazyData, TrainTask):
    """Recurrent-MZ GAN training on simulated scans (see the module docstring).

    ``n_inputs``: the M drawn per batch; ``jitter_planes``: random moves of each input around the Δz grid
    (teaches non-uniform spacing); ``adv_weight`` 0 drops the discriminator.
    """

    def __init__(self, data: DataLike, val_data: DataLike, width: float = 1.0, levels: int = 4,
                 batch_size: int = 4, crop_px: int = 64, n_inputs: Sequence[int] = (2, 3), jitter_planes: int = 1,
                 adv_weight: float = 0.5, disc_channels: Sequence[int] = (64, 128, 256, 512), n_val: int = 8,
                 seed: int = 0):
        self._init_data(data, val_data)
        torch.manual_seed(seed)
        self.generator = RecurrentMZ(width=width, levels=levels)
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
        out = self.generator(b["images"].to(dev), b["dpms"].to(dev))
        return {"val_loss": float(_rmz_fidelity(out, b["target"].to(dev)))}


class UNet3DTask(_LazyData, TrainTask):
    """3D U-Net baseline: the ``spec.n_inputs`` inputs at the default Δz grid, in order → all |Z| planes."""

    def __init__(self, data: DataLike, val_data: DataLike, spec: VolumeSpec, width: float = 1.0, levels: int = 3,
                 batch_size: int = 2, crop_px: int = 64, n_val: int = 4, seed: int = 0):
        self._init_data(data, val_data)
        torch.manual_seed(seed)
        self.spec = spec
        self.generator = UNet3D(spec.n_inputs, spec.n_planes, width=width, levels=levels)
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
        out = self.generator(self._val_batch["images"].to(dev))
        return {"val_loss": float(_rmz_fidelity(out, self._val_batch["target"].to(dev)))}


class DeepZVolumeTask(_LazyData, TrainTask):
    """Deep-Z on the same scans: input plane i, target plane j, uniform DPM z_j − z_i with |z_j − z_i| ≤
    ``max_dz_um`` (default: the whole stack); LSGAN with MAE, Deep-Z Eq. 4–5 (α = 0.02)."""

    def __init__(self, data: DataLike, val_data: DataLike, spec: VolumeSpec, width: float = 1.0, levels: int = 5,
                 disc_blocks: int = 6, batch_size: int = 4, crop_px: int = 64, max_dz_um: Optional[float] = None,
                 alpha: float = 0.02, n_val: int = 8, seed: int = 0):
        self._init_data(data, val_data)
        torch.manual_seed(seed)
        self.spec = spec
        self.generator = DeepZGenerator(width=width, levels=levels)
        self.discriminator = DeepZDiscriminator(width=width, blocks=disc_blocks)
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
        loss = losses.deepz_generator_loss(output, batch["target"], self.discriminator(output), self.alpha)
        return loss, {"mae": float(losses.mae(output.detach(), batch["target"]))}

    def discriminator_loss(self, batch, output):
        return losses.lsgan_discriminator_loss(self.discriminator(batch["target"]), self.discriminator(output)), {}

    def validate(self):
        if self._val_batch is None:
            self._val_batch = self._batch(self.val_data, torch.Generator().manual_seed(self.seed + 7919),
                                          self.n_val, augment=False)
        b = self._val_batch
        dev = next(self.generator.parameters()).device
        out = self.generator(b["image"].to(dev), b["dpm"].to(dev))
        return {"val_loss": float(losses.mae(out, b["target"].to(dev)))}


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


# ----------------------------------------------------------------------------------------------- inference
def _model_device(model: torch.nn.Module):
    return next(model.parameters()).device


def uniform_dpms(z_inputs_um, z_outputs_um, shape_yx) -> np.ndarray:
    """DPMs (Z, M, H, W) in µm: entry [t, i] is the uniform map z_out[t] − z_in[i]."""
    zi = np.asarray(z_inputs_um, dtype=np.float64).ravel()
    zo = np.asarray(z_outputs_um, dtype=np.float64).ravel()
    if zi.size == 0 or zo.size == 0 or not (np.all(np.isfinite(zi)) and np.all(np.isfinite(zo))):
        raise ValueError("z_inputs_um/z_outputs_um: expected non-empty finite axial positions (µm)")
    h, w = shape_yx
    return np.broadcast_to((zo[:, None] - zi[None, :])[:, :, None, None], (zo.size, zi.size, h, w)).copy()


def _images(images) -> np.ndarray:
    return as_image_array(images, "images", ndim=3).astype(np.float32)


def recurrent_mz_volume(model: RecurrentMZ, images, z_inputs_um, z_outputs_um, dpm_noise_um: float = 0.0,
                        noise_mode: str = "plane", rng=None, trained_range_um=None,
                        batch_planes: int = 16) -> np.ndarray:
    """Recurrent-MZ volume (Z, H, W) from ``images`` (M, H, W) acquired at ``z_inputs_um`` (any order, any
    spacing; repeated planes allowed) for output planes ``z_outputs_um``.

    ``dpm_noise_um`` σ adds Gaussian errors to the DPMs (paper Fig. 6): ``noise_mode='plane'`` one error per
    input plane (an unknown axial positioning error of that input), ``'pixel'`` independent per pixel.
    A DPM outside ``trained_range_um`` warns (:func:`refocuslib.dpm.check_trained_range`).
    """
    imgs = _images(images)
    zi = np.asarray(z_inputs_um, dtype=np.float64).ravel()
    if zi.size != imgs.shape[0]:
        raise ValueError(f"z_inputs_um: expected {imgs.shape[0]} positions (one per image), got {zi.size}")
    d = uniform_dpms(zi, z_outputs_um, imgs.shape[1:])
    sigma = positive(dpm_noise_um, "dpm_noise_um", allow_zero=True)
    if sigma > 0:
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        if noise_mode == "plane":
            d = d + rng.normal(0.0, sigma, (1, d.shape[1], 1, 1))
        elif noise_mode == "pixel":
            d = d + rng.normal(0.0, sigma, d.shape)
        else:
            raise ValueError(f"noise_mode: 'plane' or 'pixel', got {noise_mode!r}")
    if trained_range_um is not None:
        _dpm.check_trained_range(d, trained_range_um)
    dev = _model_device(model)
    model.eval()
    out = model.volume(torch.from_numpy(imgs).to(dev),
                       torch.from_numpy(_dpm.to_network(d.reshape(-1, *d.shape[2:])).reshape(d.shape)).to(dev),
                       batch_planes)
    return out.float().cpu().numpy()


@torch.no_grad()
def deepz_nearest_volume(model: DeepZGenerator, images, z_inputs_um, z_outputs_um, trained_range_um=None,
                         batch_planes: int = 16) -> np.ndarray:
    """Deep-Z baseline (Z, H, W): every output plane refocused from the nearest input plane (non-overlapping
    sub-volumes, paper Fig. 2), DPM = z_out − z_nearest."""
    imgs = _images(images)
    zi = np.asarray(z_inputs_um, dtype=np.float64).ravel()
    zo = np.asarray(z_outputs_um, dtype=np.float64).ravel()
    if zi.size != imgs.shape[0]:
        raise ValueError(f"z_inputs_um: expected {imgs.shape[0]} positions (one per image), got {zi.size}")
    near = np.argmin(np.abs(zo[:, None] - zi[None, :]), axis=1)
    dz = zo - zi[near]
    if trained_range_um is not None:
        _dpm.check_trained_range(dz[:, None], trained_range_um)
    dev = _model_device(model)
    model.eval()
    out = []
    for s in range(0, zo.size, positive_int(batch_planes, "batch_planes")):
        sl = slice(s, s + batch_planes)
        x = torch.from_numpy(imgs[near[sl]][:, None]).to(dev)
        d = torch.from_numpy((dz[sl] / _dpm.NETWORK_SCALE_UM).astype(np.float32)).to(dev)
        out.append(model(x, d.view(-1, 1, 1, 1).expand_as(x).contiguous())[:, 0])
    return torch.cat(out).float().cpu().numpy()


@torch.no_grad()
def unet3d_volume(model: UNet3D, images) -> np.ndarray:
    """3D U-Net baseline (Z, H, W) from ``images`` (M, H, W) in the channel order given."""
    imgs = _images(images)
    model.eval()
    return model(torch.from_numpy(imgs)[None].to(_model_device(model)))[0].float().cpu().numpy()


def interpolation_volume(images, z_inputs_um, z_outputs_um) -> np.ndarray:
    """Linear interpolation between the input planes along z (constant beyond the outermost inputs);
    inputs may come in any order (``scipy.interpolate.interp1d``); repeated positions are averaged."""
    from scipy.interpolate import interp1d
    imgs = _images(images).astype(np.float64)
    zi = np.asarray(z_inputs_um, dtype=np.float64).ravel()
    zo = np.asarray(z_outputs_um, dtype=np.float64).ravel()
    if zi.size != imgs.shape[0]:
        raise ValueError(f"z_inputs_um: expected {imgs.shape[0]} positions (one per image), got {zi.size}")
    uz, inv = np.unique(zi, return_inverse=True)
    avg = np.stack([imgs[inv == k].mean(0) for k in range(uz.size)])
    if uz.size == 1:
        return np.repeat(avg, zo.size, 0).astype(np.float32)
    f = interp1d(uz, avg, axis=0, bounds_error=False, fill_value=(avg[0], avg[-1]), assume_sorted=True)
    return f(zo).astype(np.float32)


def plane_metrics(pred, target) -> Dict[str, np.ndarray]:
    """Per output plane: PSNR (dB), RMSE and NRMSE of ``pred`` against the scan ``target`` (Z, H, W). The peak
    and the normaliser are the target volume's dynamic range (max − min), so planes are comparable."""
    p = as_image_array(pred, "pred", ndim=3).astype(np.float64)
    t = as_image_array(target, "target", ndim=3).astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred: shape {p.shape} must equal the target's {t.shape}")
    rng = float(t.max() - t.min()) or 1.0
    psnr = np.array([metrics.psnr(a, b, data_range=rng) for a, b in zip(p, t)])
    rmse = np.array([metrics.rmse(a, b) for a, b in zip(p, t)])
    return {"psnr": psnr, "rmse": rmse, "nrmse": rmse / rng}


def evaluate_methods(trained: TrainedModels, test: VolumeSet, input_indices: Optional[Sequence[int]] = None,
                     methods: Sequence[str] = METHODS, keep_volumes: int = 1) -> dict:
    """Reconstruct every test volume from its input planes with each method and score every output plane.

    Returns ``{'metrics': {method: {'psnr'|'rmse'|'nrmse': (N, Z)}}, 'volumes': {method: [first
    keep_volumes predictions]}, 'input_indices', 'z_um'}``. ``input_indices`` default: the Δz grid. The 3D
    U-Net is only evaluated at the default grid (it cannot take other positions).
    """
    idx = test.input_indices() if input_indices is None else np.asarray(input_indices, dtype=int)
    z = test.z_um
    res = {"metrics": {}, "volumes": {}, "input_indices": idx, "z_um": z}
    default = np.array_equal(idx, test.input_indices())
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods: unknown {m!r}; choose from {METHODS}")
        if m in ("recurrent_mz", "deepz", "unet3d") and m not in trained.models:
            continue
        if m == "unet3d" and not default:
            continue
        per = {"psnr": [], "rmse": [], "nrmse": []}
        vols = []
        for n, stack in enumerate(test.stacks):
            imgs = stack[idx]
            if m == "recurrent_mz":
                pred = recurrent_mz_volume(trained.models[m], imgs, z[idx], z, trained_range_um=
                                           trained.trained_range_um.get(m))
            elif m == "deepz":
                pred = deepz_nearest_volume(trained.models[m], imgs, z[idx], z,
                                            trained_range_um=trained.trained_range_um.get(m))
            elif m == "unet3d":
                pred = unet3d_volume(trained.models[m], imgs)
            else:
                pred = interpolation_volume(imgs, z[idx], z)
            for k, v in plane_metrics(pred, stack).items():
                per[k].append(v)
            if n < keep_volumes:
                vols.append(pred)
        res["metrics"][m] = {k: np.stack(v) for k, v in per.items()}
        res["volumes"][m] = vols
    return res


def bead_fwhm_um(volume, pixel_um: float) -> np.ndarray:
    """Lateral FWHM (µm) of the beads of a (Z, H, W) volume, measured on its maximum-intensity projection
    along z (each bead at its sharpest plane) with :func:`refocuslib.metrics.lateral_fwhm_um` (paper Fig. 3)."""
    vol = as_image_array(volume, "volume", ndim=3)
    return metrics.lateral_fwhm_um(vol.max(0), pixel_um)


def permutation_rmse(trained: TrainedModels, test: VolumeSet, method: str) -> np.ndarray:
    """Volume RMSE (n_permutations, N) of ``method`` for every order of the default inputs (paper Fig. 5)."""
    idx = test.input_indices()
    z = test.z_um
    perms = list(itertools.permutations(range(len(idx))))
    out = np.zeros((len(perms), len(test)))
    for p, perm in enumerate(perms):
        j = idx[list(perm)]
        for n, stack in enumerate(test.stacks):
            if method == "recurrent_mz":
                pred = recurrent_mz_volume(trained.models[method], stack[j], z[j], z)
            elif method == "unet3d":
                pred = unet3d_volume(trained.models[method], stack[j])
            elif method == "interpolation":
                pred = interpolation_volume(stack[j], z[j], z)
            else:
                raise ValueError(f"method: 'recurrent_mz', 'unet3d' or 'interpolation', got {method!r}")
            out[p, n] = metrics.rmse(pred, stack)
    return out

