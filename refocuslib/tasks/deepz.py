"""Deep-Z and Deep-Z+ training on the shared loop (Wu et al., Nat. Methods 16, 1323 (2019), Methods Eq. 4–5).

Generator loss (Eq. 4): MAE(G(x), target) + α·(1 − D(G(x)))², α = 0.02; discriminator loss (Eq. 5, LSGAN):
D(G(x))² + (1 − D(target))²; Adam 1e-4 (G) / 3e-5 (D) (the :class:`~refocuslib.train.TrainConfig` defaults).
Validation (``val_loss`` = ``val_mae``): MAE of the refocused output against the noise-free target on pairs drawn
from *held-out* samples (another sample pool); beside it the MAE of the un-refocused input (the baseline) and the
MAE against the noisy target (what the paper can measure).

The same task serves Deep-Z (20×/0.75 beads/nuclei), Deep-Z+ (wide-field → confocal, :func:`deepz_plus_config`)
and other microscopes/samples (e.g. ``DeepZDataConfig(microscope=WORM_20X, sample='nuclei')``). The checkpoint
carries what :func:`refocuslib.inference.load_model` needs to rebuild the generator (``extra_state``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from refocuslib import losses
from refocuslib._validate import in_range, positive, positive_int
from refocuslib.datasets.deepz import CONFOCAL_63X, DeepZDataConfig, DeepZPairs, deepz_plus_config
from refocuslib.optics import DEEPZ_20X, OIL_63X, WORM_20X
from refocuslib.models.deepz import DeepZDiscriminator, DeepZGenerator
from refocuslib.train import TrainConfig, TrainResult, TrainTask, checkpoint_dir, fit

Tensor = torch.Tensor

__all__ = ["DeepZTask", "train_deepz", "build_task", "task_from_params", "train_from_spec", "MICROSCOPES", "deepz_plus_config",
           "DeepZDataConfig", "MODEL_KIND"]

#: ``extra_state()['kind']`` of Deep-Z checkpoints.
MODEL_KIND = "deepz"

#: microscopes a training recipe (:func:`build_task`) may name.
MICROSCOPES = {"DEEPZ_20X": DEEPZ_20X, "WORM_20X": WORM_20X, "OIL_63X": OIL_63X, "CONFOCAL_63X": CONFOCAL_63X}

_TASK_KEYS = ("width", "levels", "disc_width", "disc_blocks", "gan", "alpha", "batch_size", "train_seed", "val_seed",
              "n_val_samples", "n_val", "init_seed")
_TRAIN_KEYS = ("steps", "lr_g", "lr_d", "d_every", "val_every", "ckpt_every", "log_every", "grad_clip", "schedule",
               "warmup_steps", "min_lr_ratio")


class DeepZTask(TrainTask):
    """Deep-Z / Deep-Z+ as a :class:`~refocuslib.train.TrainTask`.

    ``data``: what to simulate (:class:`~refocuslib.datasets.deepz.DeepZDataConfig`). ``width``/``levels``: the
    generator (1.0 / 5 = paper); ``disc_width``/``disc_blocks``: the discriminator (default ``width`` / 6);
    ``gan=False`` trains with the MAE term only. ``train_seed`` fixes the training sample pool,
    ``val_seed`` a disjoint held-out pool of ``n_val_samples`` samples from which ``n_val`` validation pairs are
    drawn. ``init_seed`` seeds the weights.
    """
    prefetch_safe = True  # batches come from the simulator alone

    def __init__(self, data: Optional[DeepZDataConfig] = None, width: float = 1.0, levels: int = 5,
                 disc_width: Optional[float] = None, disc_blocks: int = 6, gan: bool = True, alpha: float = 0.02,
                 batch_size: int = 8, train_seed: int = 0, val_seed: int = 1_000_003, n_val_samples: int = 4,
                 n_val: int = 16, init_seed: int = 0):
        self.data = data if data is not None else DeepZDataConfig()
        if not isinstance(self.data, DeepZDataConfig):
            raise ValueError(f"data: expected a DeepZDataConfig, got {type(data).__name__}")
        self.width = positive(width, "width")
        self.levels = positive_int(levels, "levels", minimum=2)
        self.alpha = in_range(alpha, "alpha", 0.0, 1.0)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.n_val = positive_int(n_val, "n_val")
        if int(train_seed) == int(val_seed):
            raise ValueError(f"val_seed: must differ from train_seed ({train_seed}) so validation is held out")
        torch.manual_seed(int(init_seed))
        self.generator = DeepZGenerator(self.width, levels=self.levels)
        self.discriminator = (DeepZDiscriminator(positive(disc_width or width, "disc_width"), blocks=disc_blocks)
                              if gan else None)
        # inference reads these (refocuslib.inference.refocus warns outside the trained range)
        self.generator.trained_range_um = self.data.trained_range_um
        self.generator.pixel_um = self.data.microscope.pixel_um
        self.spec: Optional[dict] = None  # set by build_task: the plain-type recipe, checked on reuse
        self.train_data = DeepZPairs(self.data, seed=train_seed)
        self.val_data = DeepZPairs(self.data, seed=val_seed, n_samples=n_val_samples)
        self.val_seed = int(val_seed)
        self._val_batch: Optional[Dict[str, Tensor]] = None

    @property
    def trained_range_um(self) -> Tuple[float, float]:
        return self.data.trained_range_um

    # ------------------------------------------------------------------------------------ TrainTask
    def make_batch(self, step: int, generator: torch.Generator) -> Dict[str, Tensor]:
        return self.train_data.batch(generator, self.batch_size)

    def generate(self, batch: Dict[str, Tensor]) -> Tensor:
        return self.generator(batch["input"], batch["dpm"])

    def generator_loss(self, batch, output):
        mae = losses.mae(output, batch["target"])
        if self.discriminator is None:
            return mae, {"mae": float(mae.detach())}
        loss = losses.deepz_generator_loss(output, batch["target"], self.discriminator(output), self.alpha)
        return loss, {"mae": float(mae.detach())}

    def discriminator_loss(self, batch, output):
        loss = losses.lsgan_discriminator_loss(self.discriminator(batch["target"]), self.discriminator(output))
        return loss, {}

    def validation_batch(self) -> Dict[str, Tensor]:
        """The fixed held-out validation pairs (built once)."""
        if self._val_batch is None:
            self._val_batch = self.val_data.fixed_batch(self.n_val, seed=self.val_seed, with_clean=True)
        return self._val_batch

    def validate(self) -> Dict[str, float]:
        """``val_loss``: the mean over held-out pairs of the NRMSE ‖out − clean‖ / ‖clean‖ against the noise-free
        target (an all-zero output scores exactly 1, so darkness cannot win), beside the same for the zero image
        (``val_nrmse_zero``) and the identity, input as output (``val_nrmse_input``), and the raw MAEs."""
        b = self.validation_batch()
        dev = next(self.generator.parameters()).device
        out = torch.cat([self.generator(b["input"][i:i + 8].to(dev), b["dpm"][i:i + 8].to(dev)).cpu()
                         for i in range(0, len(b["input"]), 8)])
        clean = b["target_clean"]

        def nrmse(x):
            num = ((x - clean) ** 2).flatten(1).sum(1).sqrt()
            return float((num / clean.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())

        nr = nrmse(out)
        return {"val_loss": nr, "val_nrmse": nr, "val_nrmse_input": nrmse(b["input"]),
                "val_nrmse_zero": nrmse(torch.zeros_like(clean)), "val_mae": float(losses.mae(out, clean)),
                "val_mae_input": float(losses.mae(b["input"], clean)),
                "val_mae_noisy_target": float(losses.mae(out, b["target"]))}

    # -------------------------------------------------------------------------------- checkpoints
    def model_info(self) -> dict:
        """What :func:`refocuslib.inference.load_model` needs to rebuild the generator (plain types)."""
        lo, hi = self.trained_range_um
        return {"kind": MODEL_KIND, "model": {"width": self.width, "levels": self.levels, "in_channels": 2},
                "trained_range_um": [lo, hi], "pixel_um": self.data.microscope.pixel_um,
                "normalization": "deepz", "deepz_plus": self.data.target_microscope is not None,
                "data": self.data.as_dict()}

    def extra_state(self) -> dict:
        info = self.model_info()
        if self.spec is not None:
            info["spec"] = self.spec
        return info

    def load_extra_state(self, state: dict) -> None:
        model = (state or {}).get("model")
        if model and (abs(float(model["width"]) - self.width) > 1e-12 or int(model["levels"]) != self.levels):
            raise ValueError(f"checkpoint: holds a generator of width {model['width']}, levels {model['levels']}; "
                             f"this task has width {self.width}, levels {self.levels}")
        old = (state or {}).get("spec")
        keys = set(old or {}) | set(self.spec or {})
        diff = sorted(k for k in keys - set(_TRAIN_KEYS) if (old or {}).get(k) != (self.spec or {}).get(k))
        if self.spec is not None and old is not None and diff:  # more steps or another lr: a continuation
            raise ValueError(f"checkpoint: was trained with another recipe (differs in {diff}); use another "
                             f"checkpoint folder (name) or delete the old one")


def train_deepz(task: DeepZTask, out_dir, steps: int, **train_kwargs) -> TrainResult:
    """``fit(task, TrainConfig(steps, out_dir, **train_kwargs))``: trains, or resumes, or (already at
    ``steps``) does nothing — the cache that lets several notebooks share one model. Returns the result; the
    generator then holds the *best* validation weights (``best.pt``) when one exists."""
    res = fit(task, TrainConfig(steps=steps, out_dir=str(out_dir), **train_kwargs))
    from pathlib import Path
    from refocuslib.train import load_generator_weights
    best = Path(out_dir) / "best.pt"
    if best.exists():
        load_generator_weights(task.generator, best)
    task.generator.eval()
    return res


def build_task(spec: dict) -> DeepZTask:
    """A :class:`DeepZTask` from a plain recipe (what notebooks keep in ``notebooks/params/*.yaml``)::

        {"plus": False,                       # True: Deep-Z+ (deepz_plus_config defaults: 63x wide-field → confocal)
         "data": {"microscope": "DEEPZ_20X",  # a name of MICROSCOPES, a psf.json path (refocuslib calibrate)
                                              # or a dict of optics; also "target_microscope"
                  "z_half_range_um": 3.0, "sample": "beads", ...},   # any DeepZDataConfig field
         "width": 0.25, "levels": 4, ...,     # DeepZTask arguments
         "steps": 450, "lr_g": 3e-3, ...}     # TrainConfig arguments (used by train_from_spec)

    Unknown keys raise ``ValueError``. The recipe is stored in the checkpoint and checked when it is reused.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"spec: expected a dict recipe, got {type(spec).__name__}")
    unknown = set(spec) - set(_TASK_KEYS) - set(_TRAIN_KEYS) - {"data", "plus"}
    if unknown:
        raise ValueError(f"spec: unknown keys {sorted(unknown)}; allowed: data, plus, {', '.join(_TASK_KEYS)}, "
                         f"{', '.join(_TRAIN_KEYS)}")
    if not isinstance(spec.get("data") or {}, dict):
        raise ValueError(f"spec: data must be a mapping of DeepZDataConfig fields, got {spec['data']!r}")
    data = dict(spec.get("data") or {})
    import dataclasses
    accepted = [f.name for f in dataclasses.fields(DeepZDataConfig)]
    unknown_data = sorted(map(str, set(data) - set(accepted)))
    if unknown_data:
        hint = (" (YAML reads {field_px:64} as the key 'field_px:64': put a space after the colon)"
                if any(":" in k for k in unknown_data) else "")
        raise ValueError(f"spec: unknown data keys {unknown_data}{hint}; accepted: {', '.join(accepted)}")
    for key in ("microscope", "target_microscope"):
        if isinstance(data.get(key), (str, dict)):  # a preset name, a psf.json path or a dict of optics
            from refocuslib.calibrate import resolve_microscope
            data[key] = resolve_microscope(data[key], MICROSCOPES, f"spec: data.{key}")
    if isinstance(data.get("sample"), str) and "." in data["sample"]:  # a sample callable by dotted path
        data["sample"] = _import_callable(data["sample"], "data.sample")
    for key in ("n_beads", "bead_photons", "n_nuclei", "nuclei_radius_um", "n_filaments", "nonuniform_kinds"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    cfg = deepz_plus_config(**data) if spec.get("plus") else DeepZDataConfig(**data)
    task = DeepZTask(cfg, **{k: spec[k] for k in _TASK_KEYS if k in spec})
    task.spec = _plain(spec)
    return task


def _import_callable(path: str, name: str):
    """``package.module.function`` → the function (a recipe names a sample generator this way)."""
    import importlib
    module, _, func = path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{name}: {path!r} is not an importable function 'package.module.function' ({err})") from None
    if not callable(fn):
        raise ValueError(f"{name}: {path!r} is not callable")
    return fn


def task_from_params(**spec) -> DeepZTask:
    """:func:`build_task` with the recipe as keyword arguments (the ``python -m refocuslib.train --task deepz``
    factory: ``--param data='{z_half_range_um: 3.0}' --param width=0.25``)."""
    return build_task(spec)


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    return float(x)


def train_from_spec(spec: dict, results_dir, name: str, seed: int = 0, device: str = "cpu", progress: bool = True):
    """Build the task of ``spec`` (:func:`build_task`) and train it into
    :func:`refocuslib.train.checkpoint_dir` ``(results_dir, name, spec + seed)`` — or resume, or, when that run is
    finished, just load it (the cache several notebooks share). Returns (task, TrainResult); the generator holds
    the best validation weights and is in eval mode."""
    if "steps" not in spec:
        raise ValueError("spec: needs 'steps' (training steps)")
    task = build_task(spec)
    kw = {k: spec[k] for k in _TRAIN_KEYS if k in spec and k != "steps"}
    out_dir = checkpoint_dir(results_dir, name, {"spec": _plain(spec), "seed": int(seed)})
    res = train_deepz(task, out_dir, int(spec["steps"]), seed=seed, device=device, progress=progress, **kw)
    return task, res
