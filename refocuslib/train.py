"""One training loop for every paper (GAN or not): seeded on-the-fly batches, tqdm progress, validation with
best-checkpoint keeping, atomic checkpoints, exact resume, optional DistributedDataParallel.

A paper plugs in by subclassing :class:`TrainTask`:

* ``make_batch(step, generator)`` builds the batch of one step from a ``torch.Generator`` seeded by
  (seed, step, rank) — so a resumed run sees exactly the batches an uninterrupted run would have seen;
* ``generate(batch)`` runs the generator; ``generator_loss(batch, output)`` and (GANs)
  ``discriminator_loss(batch, output.detach())`` return (loss, logs);
* ``validate()`` returns a dict with ``val_loss`` (lower is better) on a fixed validation set.

Optimiser: Adam for the generator (``lr_g``; extra parameter groups via ``generator_param_groups``, e.g. a
learnable phase mask) and for the discriminator (``lr_d``). Each step updates the discriminator (every
``d_every``-th step) before the generator.
"""
from __future__ import annotations

import abc
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from refocuslib import __version__
from refocuslib.io import load_checkpoint, save_checkpoint

Tensor = torch.Tensor


@dataclass
class TrainConfig:
    """Hyper-parameters of one run. ``out_dir`` holds last.pt, best.pt (+ .sha256) and history.json."""
    steps: int
    out_dir: str
    lr_g: float = 1e-4
    lr_d: float = 3e-5
    betas: Tuple[float, float] = (0.9, 0.999)
    d_every: int = 1
    val_every: int = 50
    ckpt_every: int = 50
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    grad_clip: Optional[float] = None
    resume: bool = True
    progress: bool = True
    amp_bf16: bool = False
    use_shipped: Optional[bool] = None  # None: the module default set by use_shipped_checkpoints()
    schedule: str = "constant"          # learning-rate schedule: "constant", "cosine" or "step" (lr_at)
    warmup_steps: int = 0               # linear warm-up from lr/100 over this many steps
    min_lr_ratio: float = 0.02          # cosine: final lr = ratio × lr; step: lr × 0.1 at 50 % and 75 %
    restore_best: bool = True           # at the end, load the best-validation weights into the generator
    prefetch: bool = True               # build the next batch in a thread while the network trains, for tasks
                                        # whose batches do not depend on trained parameters (TrainTask.prefetch_safe),
                                        # when torch uses fewer threads than there are cores (bench train: ×1.29 at
                                        # 1 thread on 2 cores, ×0.84 at 2 threads)

    def __post_init__(self):
        if int(self.steps) < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        for name in ("lr_g", "lr_d"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {v!r}")
        for name in ("d_every", "val_every", "ckpt_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: one of {SCHEDULES}, got {self.schedule!r}")
        if not (0 <= int(self.warmup_steps) < int(self.steps)):
            raise ValueError(f"warmup_steps: must be in [0, steps={self.steps}), got {self.warmup_steps!r}")
        if not (0.0 <= float(self.min_lr_ratio) <= 1.0):
            raise ValueError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio!r}")


#: learning-rate schedules of :func:`lr_factor`.
SCHEDULES = ("constant", "cosine", "step")


def lr_factor(step: int, cfg: "TrainConfig") -> float:
    """Multiplier of the recipe's learning rates at ``step`` (0-based): linear warm-up from 1 % over
    ``warmup_steps``, then constant, cosine decay to ``min_lr_ratio`` at ``steps``, or ×0.1 at 50 % and 75 %.
    :func:`fit` sets every parameter group's lr from it at every step, so a resumed run follows the recipe's
    schedule, not the learning rate stored with the optimiser state."""
    step, total, warm = int(step), int(cfg.steps), int(cfg.warmup_steps)
    if warm and step < warm:
        return 0.01 + 0.99 * step / warm
    if cfg.schedule == "constant":
        return 1.0
    t = min(1.0, (step - warm) / max(1, total - warm))
    if cfg.schedule == "cosine":
        lo = float(cfg.min_lr_ratio)
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)


class TrainTask(abc.ABC):
    """Interface a paper implements to use :func:`fit` (see the module docstring)."""
    generator: nn.Module
    discriminator: Optional[nn.Module] = None
    #: True when ``make_batch`` reads no trained parameter (a simulator, not a learnable mask), so :func:`fit` may
    #: build the next batch in a background thread while the current step trains.
    prefetch_safe: bool = False

    @abc.abstractmethod
    def make_batch(self, step: int, generator: torch.Generator) -> Dict[str, Tensor]:
        """The batch of ``step``, drawn only from ``generator`` (CPU tensors; the loop moves them)."""

    @abc.abstractmethod
    def generate(self, batch: Dict[str, Tensor]) -> Tensor:
        """Generator forward pass."""

    @abc.abstractmethod
    def generator_loss(self, batch: Dict[str, Tensor], output: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        """Generator loss (and scalar logs)."""

    @abc.abstractmethod
    def validate(self) -> Dict[str, float]:
        """Metrics on a fixed validation set; must contain ``val_loss`` (lower is better)."""

    def discriminator_loss(self, batch: Dict[str, Tensor], output: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        raise TypeError(f"{type(self).__name__} has a discriminator but does not define discriminator_loss")

    def generator_param_groups(self, lr_g: float) -> List[dict]:
        return [{"params": [p for p in self.generator.parameters() if p.requires_grad], "lr": lr_g}]

    def extra_state(self) -> dict:
        """Non-module state to checkpoint (e.g. a learnable mask held outside the generator)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


@dataclass
class TrainResult:
    history: List[dict]
    validation: List[dict]
    best_val_loss: float
    best_step: int
    last_step: int
    out_dir: str
    seconds: float
    resumed_from: int = 0
    extras: dict = field(default_factory=dict)


def settings_digest(settings: dict) -> str:
    """Short stable hash (10 hex digits) of a JSON-able settings dict: the cache key of a trained model."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def checkpoints_root(results_dir) -> Path:
    """``results/<profile>/checkpoints`` for a notebook whose ``results_dir`` is ``results/<profile>/<notebook>``."""
    return Path(results_dir).resolve().parent / "checkpoints"


def checkpoint_dir(results_dir, name: str, settings: dict) -> Path:
    """``results/<profile>/checkpoints/<name>-<settings_digest>`` for a notebook whose ``results_dir`` is
    ``results/<profile>/<notebook>``: the folder :func:`fit` trains into, resumes from, or (finished) just loads —
    so every notebook of a profile that asks for the same model with the same settings shares one training run;
    changed settings give a new folder."""
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise ValueError(f"name: a non-empty folder name without '/', '\\\\' or spaces, got {name!r}")
    return checkpoints_root(results_dir) / f"{name}-{settings_digest(settings)}"


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the batch of ``step`` on ``rank``: independent of how the run was interrupted."""
    return (int(seed) * 1_000_003 + int(step) * 7919 + int(rank) * 104_729) % (2 ** 63 - 1)


def _unwrap(m: Optional[nn.Module]) -> Optional[nn.Module]:
    return getattr(m, "module", m)


def _to_device(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _dist_info() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _state(task: TrainTask, opt_g, opt_d, step: int, best: float, best_step: int, history, validation, cfg,
           train_seconds: float = 0.0):
    return {
        "step": step, "generator": _unwrap(task.generator).state_dict(),
        "discriminator": None if task.discriminator is None else _unwrap(task.discriminator).state_dict(),
        "opt_g": opt_g.state_dict(), "opt_d": None if opt_d is None else opt_d.state_dict(),
        "best_val_loss": best, "best_step": best_step, "history": history, "validation": validation,
        "extra": task.extra_state(), "config": asdict(cfg), "library_version": __version__,
        "task": type(task).__name__, "train_seconds": float(train_seconds),
    }


def fit(task: TrainTask, cfg: TrainConfig) -> TrainResult:
    """Train ``task`` for ``cfg.steps`` steps (resuming from ``out_dir/last.pt`` when present)."""
    rank, world = _dist_info()
    device = torch.device(cfg.device)
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(step_seed(cfg.seed, -1))
    task.generator.to(device)
    if task.discriminator is not None:
        task.discriminator.to(device)
    opt_g = torch.optim.Adam(task.generator_param_groups(cfg.lr_g), betas=cfg.betas)
    opt_d = (torch.optim.Adam(task.discriminator.parameters(), lr=cfg.lr_d, betas=cfg.betas)
             if task.discriminator is not None else None)
    base_lrs = [[g["lr"] for g in opt.param_groups] if opt is not None else [] for opt in (opt_g, opt_d)]

    start, best, best_step, history, validation = 0, math.inf, -1, [], []
    prior_seconds, t0 = 0.0, time.time()  # wall seconds of training so far (carried across resumes)
    use_shipped = _USE_SHIPPED if cfg.use_shipped is None else cfg.use_shipped
    if use_shipped and cfg.resume and rank == 0 and install_shipped(out):
        print(f"{out.name}: using the shipped checkpoint {SHIPPED_DIR / (out.name + '.pt')} (no training)")
    ck = _load_resume_checkpoint(out) if cfg.resume else None
    if ck is not None:
        _check_same_recipe(task, ck, out)
        _unwrap(task.generator).load_state_dict(ck["generator"])
        if task.discriminator is not None and ck.get("discriminator") is not None:
            _unwrap(task.discriminator).load_state_dict(ck["discriminator"])
        if ck.get("opt_g") is not None:  # shipped checkpoints carry no optimiser state
            opt_g.load_state_dict(ck["opt_g"])
        if opt_d is not None and ck.get("opt_d") is not None:
            opt_d.load_state_dict(ck["opt_d"])
        task.load_extra_state(ck.get("extra", {}))
        start, best, best_step = ck["step"], ck["best_val_loss"], ck["best_step"]
        history, validation = ck["history"], ck["validation"]
        prior_seconds = float(ck.get("train_seconds", 0.0))
        if rank == 0 and start < cfg.steps:
            print(f"{out.name}: resuming from step {start} of {cfg.steps} ({ck.get('_path', 'last.pt')})", flush=True)
    resumed_from = start

    if world > 1:  # DistributedDataParallel: gradients averaged across ranks, identical weights everywhere
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device.type == "cuda" else None
        task.generator = DDP(task.generator, device_ids=ids)
        if task.discriminator is not None:
            task.discriminator = DDP(task.discriminator, device_ids=ids)

    def save(step: int, name: str = "last.pt"):
        if rank != 0:
            return
        if name == "last.pt" and (out / "last.pt").exists():  # keep the previous good checkpoint as a fallback
            for suffix in ("", ".sha256"):
                src = out / f"last.pt{suffix}"
                if src.exists():
                    os.replace(src, out / f"previous.pt{suffix}")
        save_checkpoint(out / name, _state(task, opt_g, opt_d, step, best, best_step, history, validation, cfg,
                                           prior_seconds + time.time() - t0))

    def run_validation(step: int):
        nonlocal best, best_step
        if rank != 0:
            return
        # validate on the bare modules: a DDP forward on rank 0 alone would wait for the other ranks
        wrapped = task.generator, task.discriminator
        task.generator, task.discriminator = _unwrap(task.generator), _unwrap(task.discriminator)
        task.generator.eval()
        try:
            with torch.no_grad():
                val = {k: float(v) for k, v in task.validate().items()}
        finally:
            task.generator.train()
            task.generator, task.discriminator = wrapped
        if "val_loss" not in val or not math.isfinite(val["val_loss"]):
            raise ValueError(f"validate(): must return a finite 'val_loss', got {val}")
        val["step"] = step
        validation.append(val)
        if val["val_loss"] < best:
            best, best_step = val["val_loss"], step
            save(step, "best.pt")

    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=type(task).__name__, mininterval=1.0)
    t0 = time.time()
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.amp_bf16
                else torch.autocast(device_type=device.type, enabled=False))
    window: Dict[str, List[float]] = {}  # logs averaged over each log_every window
    task.generator.train()
    if start == 0 and rank == 0 and not validation:
        run_validation(0)
    def make_batch(step: int):
        return task.make_batch(step, torch.Generator().manual_seed(step_seed(cfg.seed, step, rank)))

    # the batch of step k depends only on (seed, k, rank): building it one step ahead in a thread while the network
    # trains gives exactly the same batches (data simulation releases the GIL in numpy/torch kernels)
    pool = None
    spare_core = torch.get_num_threads() < (os.cpu_count() or 1)
    if cfg.prefetch and getattr(task, "prefetch_safe", False) and spare_core and start < cfg.steps:
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refocuslib-prefetch")
        pending = pool.submit(make_batch, start)
    for step in range(start, cfg.steps):
        factor = lr_factor(step, cfg)
        for opt, lrs in zip((opt_g, opt_d), base_lrs):
            if opt is not None:
                for group, lr0 in zip(opt.param_groups, lrs):
                    group["lr"] = lr0 * factor
        if pool is not None:
            cpu_batch = pending.result()
            if step + 1 < cfg.steps:
                pending = pool.submit(make_batch, step + 1)
        else:
            cpu_batch = make_batch(step)
        batch = _to_device(cpu_batch, device)
        logs: Dict[str, float] = {}
        with autocast:
            output = task.generate(batch)
        if task.discriminator is not None and step % cfg.d_every == 0:
            with autocast:
                d_loss, d_logs = task.discriminator_loss(batch, output.detach())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            logs.update(d_logs)
            logs["d_loss"] = d_loss.item()
        with autocast:
            g_loss, g_logs = task.generator_loss(batch, output)
        if not torch.isfinite(g_loss):
            raise FloatingPointError(f"generator loss became {float(g_loss)} at step {step}; lower lr_g "
                                     f"(now {cfg.lr_g}) or check the data")
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt_g.param_groups for p in g["params"]], cfg.grad_clip)
        opt_g.step()
        logs.update(g_logs)
        logs["g_loss"] = g_loss.item()
        logs["lr_g"] = opt_g.param_groups[0]["lr"]
        done = step + 1
        for k, v in logs.items():
            window.setdefault(k, []).append(float(v))
        if done % cfg.log_every == 0 or done == cfg.steps:
            history.append({"step": done, **{k: sum(v) / len(v) for k, v in window.items()}})
            window = {}
        if done % cfg.val_every == 0 or done == cfg.steps:
            run_validation(done)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save(done)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("g_loss", "d_loss")}, refresh=False)
    if pool is not None:
        pool.shutdown(wait=True)
    if bar is not None:
        bar.close()
    if rank == 0:
        (out / "history.json").write_text(json.dumps({"history": history, "validation": validation,
                                                      "config": asdict(cfg)}, indent=1))
    task.generator = _unwrap(task.generator)
    task.discriminator = _unwrap(task.discriminator)
    if world > 1:  # rank 0 may still be writing the final best.pt: every rank must load the same file
        dist.barrier()
    if cfg.restore_best and (out / "best.pt").exists():
        load_generator_weights(task.generator, out / "best.pt")
    return TrainResult(history, validation, best, best_step, cfg.steps, str(out), time.time() - t0, resumed_from)


def _plain_items(d, prefix: str = "") -> Dict[str, object]:
    """``{dotted.key: value}`` of the JSON-like leaves of nested dicts (tensors and other objects left out)."""
    items: Dict[str, object] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            items.update(_plain_items(v, key + "."))
        elif v is None or isinstance(v, (str, bool, int, float)) or (
                isinstance(v, (list, tuple)) and all(isinstance(x, (str, bool, int, float)) for x in v)):
            items[key] = list(v) if isinstance(v, tuple) else v
    return items


def _check_same_recipe(task: TrainTask, ck: dict, out: Path) -> None:
    """Refuse to resume ``task`` from a checkpoint made by another task or with other network shapes (another
    width, depth, recipe), naming the fields that differ, instead of failing inside ``load_state_dict``."""
    problems = []
    for which in ("generator", "discriminator"):
        module, saved = getattr(task, which), ck.get(which)
        if module is None or saved is None:
            continue
        mine = _unwrap(module).state_dict()
        missing, extra = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
        shapes = [k for k in mine if k in saved and tuple(mine[k].shape) != tuple(saved[k].shape)]
        if missing or extra:
            problems.append(f"{which}: {len(missing)} tensors missing from the checkpoint, {len(extra)} unexpected")
        if shapes:
            k = shapes[0]
            problems.append(f"{which}: {len(shapes)} tensors differ in shape (e.g. {k}: checkpoint "
                            f"{tuple(saved[k].shape)}, this task {tuple(mine[k].shape)})")
    old_task, new_task = ck.get("task"), type(task).__name__
    if not problems and (old_task is None or old_task == new_task):
        return
    old, new = _plain_items(ck.get("extra")), _plain_items(task.extra_state())
    fields = [f"{k}: {old.get(k, '(absent)')!r} in the folder, {new.get(k, '(absent)')!r} now"
              for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if old_task is not None and old_task != new_task:
        fields.insert(0, f"task: {old_task} in the folder, {new_task} now")
    raise ValueError(f"out_dir: {out} belongs to another recipe (its {ck.get('_path', 'last.pt')} was trained with "
                     f"other settings), so this run cannot resume from it. Differing fields: "
                     f"{'; '.join(fields) if fields else '(none recorded)'}. Network: {'; '.join(problems) or 'same'}. "
                     f"Train into another folder or delete this one.")


def _load_resume_checkpoint(out: Path) -> Optional[dict]:
    """The newest good checkpoint of a run folder: ``last.pt``, or — when it is corrupt or truncated —
    ``previous.pt`` (the one before it), saying what was skipped. None when the folder holds neither; a
    :class:`~refocuslib.io.CorruptCheckpointError` when checkpoints exist but none is good (a damaged run is never
    silently restarted from step 0: delete the folder to start again)."""
    from refocuslib.io import CorruptCheckpointError
    errors = []
    for name in ("last.pt", "previous.pt"):
        path = out / name
        if not path.exists():
            continue
        try:
            ck = load_checkpoint(path, map_location="cpu")
        except CorruptCheckpointError as err:
            print(f"{out.name}: skipping the corrupt checkpoint {name} ({err})", flush=True)
            errors.append(f"{name}: {err}")
            continue
        ck["_path"] = name
        return ck
    if errors:
        raise CorruptCheckpointError(f"{out}: no good checkpoint to resume from ({'; '.join(errors)}); delete the "
                                     f"folder to train from scratch")
    return None


def load_generator_weights(module: nn.Module, checkpoint_path, which: str = "generator") -> dict:
    """Load the generator (or discriminator) weights of a checkpoint written by :func:`fit` into ``module``;
    returns the checkpoint dict (its ``history``/``validation`` are provenance)."""
    ck = load_checkpoint(checkpoint_path)
    if which not in ck or ck[which] is None:
        raise ValueError(f"checkpoint_path: {checkpoint_path} holds no '{which}' weights")
    module.load_state_dict(ck[which])
    return ck


# ----------------------------------------------------------------------------------------------------------
# Shipped checkpoints: small trained models committed under data/checkpoints/ so a reader sees trained results
# on a CPU without training. A shipped file is named after the cache folder it stands for
# (<name>-<settings digest>.pt, see checkpoint_dir), so it is only used for exactly the recipe it was trained with.
# ----------------------------------------------------------------------------------------------------------
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
_USE_SHIPPED = False


def use_shipped_checkpoints(enabled: bool) -> None:
    """Let :func:`fit` start from a shipped checkpoint when its cache folder is empty (notebooks turn this on for
    interactive reading; ``reproduce --profile ci`` leaves it off so CI trains every model)."""
    global _USE_SHIPPED
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled: expected True or False, got {enabled!r}")
    _USE_SHIPPED = enabled


def ship_checkpoint(run_dir, command: str, dest_dir=None, extra_provenance: Optional[dict] = None) -> Path:
    """Copy the trained generator of a :func:`fit` run folder to ``dest_dir`` (default :data:`SHIPPED_DIR`) as
    ``<folder name>.pt`` (best-validation weights, no discriminator or optimiser state; checksummed) with a
    provenance JSON beside it: ``command`` that produced the run, git commit, seed, steps, best step and
    validation metrics. Returns the checkpoint path."""
    from refocuslib.io import _sha256_file
    from refocuslib.provenance import git_commit
    run_dir = Path(run_dir)
    last_path = run_dir / "last.pt"
    if not last_path.exists():
        raise ValueError(f"run_dir: {run_dir} holds no last.pt (not a refocuslib.train.fit run folder)")
    last = load_checkpoint(last_path)
    best = load_checkpoint(run_dir / "best.pt") if (run_dir / "best.pt").exists() else last
    slim = {**last, "generator": best["generator"], "discriminator": None, "opt_g": None, "opt_d": None,
            "extra": best.get("extra", last.get("extra", {})), "shipped": True}
    dest = Path(dest_dir) if dest_dir is not None else SHIPPED_DIR
    dest.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(dest / f"{run_dir.name}.pt", slim)
    val = last.get("validation") or []
    best_val = next((v for v in val if v.get("step") == last.get("best_step")), val[-1] if val else {})
    prov = {"name": run_dir.name, "task": last.get("task"), "command": command, "git_commit": git_commit(),
            "library_version": last.get("library_version"), "seed": last.get("config", {}).get("seed"),
            "steps": last.get("step"), "weights": "best validation" if best is not last else "last",
            "best_step": last.get("best_step"), "best_validation": best_val, "final_validation": val[-1] if val else {},
            "sha256": _sha256_file(path), "bytes": path.stat().st_size, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "train_seconds": last.get("train_seconds")}
    prov.update(extra_provenance or {})
    tmp = dest / f".{run_dir.name}.json.tmp"
    tmp.write_text(json.dumps(prov, indent=2, default=str))
    os.replace(tmp, dest / f"{run_dir.name}.json")
    return path


def install_shipped(out_dir, shipped_dir=None) -> bool:
    """If ``out_dir`` has no ``last.pt`` and ``<shipped_dir>/<out_dir name>.pt`` exists, verify its checksum
    (:class:`refocuslib.io.CorruptCheckpointError` otherwise) and install it as the folder's last.pt and best.pt.
    Returns whether it did."""
    out_dir = Path(out_dir)
    src = (Path(shipped_dir) if shipped_dir is not None else SHIPPED_DIR) / f"{out_dir.name}.pt"
    if (out_dir / "last.pt").exists() or not src.exists():
        return False
    ck = load_checkpoint(src)  # raises CorruptCheckpointError on a checksum mismatch
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "best.pt", ck)
    save_checkpoint(out_dir / "last.pt", ck)
    return True


# ----------------------------------------------------------------------------------------------------------
# Command line / torchrun entry point
# ----------------------------------------------------------------------------------------------------------
#: named tasks: name → "module:factory"; the factory takes keyword parameters and returns a TrainTask.
TASKS: Dict[str, str] = {
    "deepz": "refocuslib.tasks.deepz:task_from_params",          # --param data='{...}' width=0.25 ...
    "deepstorm3d": "refocuslib.tasks.deepstorm3d:build_task",    # --param learn_mask=true width=0.25 ...
    "wnet": "refocuslib.tasks.wnet:task_from_params",            # --param kind=wnet input_modality=dh ...
    "recurrent_mz": "refocuslib.tasks.recurrent_mz:recurrent_mz_task",    # --param data='{kind: nuclei}' ...
    "unet3d": "refocuslib.tasks.recurrent_mz:unet3d_task",                 # Recurrent-MZ's 3D U-Net baseline
    "deepz_volume": "refocuslib.tasks.recurrent_mz:deepz_volume_task",     # Recurrent-MZ's Deep-Z baseline
}


def resolve_task_factory(spec: str):
    """``name`` from :data:`TASKS` or an explicit ``module:function``."""
    import importlib
    target = TASKS.get(spec, spec)
    if ":" not in target:
        raise ValueError(f"task: unknown task {spec!r}; known: {sorted(TASKS)} (or give module:function)")
    module, func = target.split(":", 1)
    return getattr(importlib.import_module(module), func)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (to check that DDP ranks hold identical weights)."""
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(_unwrap(module).state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _parse_value(text: str):
    import yaml
    return yaml.safe_load(text)


def main(argv=None) -> int:
    """``python -m refocuslib.train --task NAME --steps N --out DIR [--param k=v ...]``; under
    ``torchrun --nproc_per_node=N`` every rank trains with DistributedDataParallel (nccl on GPU, gloo on CPU)
    and ``--verify-sync`` checks that all ranks end with identical weights."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m refocuslib.train", description=main.__doc__)
    ap.add_argument("--task", help="task name or module:function (or give --recipe)")
    ap.add_argument("--recipe", help="a recipe name of refocuslib/recipes.yaml: task, params and training schedule "
                                     "exactly as shipped (--steps overrides the length, e.g. for a test)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="keyword argument for the task factory (YAML value)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--out", help="checkpoint folder (with --recipe default results/retrain/checkpoints/<name>-<digest>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lr-g", type=float, default=1e-4)
    ap.add_argument("--lr-d", type=float, default=3e-5)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--verify-sync", action="store_true", help="all-gather weight digests and compare ranks")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    params = {}
    for item in args.param:
        if "=" not in item:
            raise SystemExit(f"--param: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        params[k] = _parse_value(v)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device.startswith("cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if args.recipe is None and (args.task is None or args.steps is None or args.out is None):
        raise SystemExit("give --recipe NAME, or --task, --steps and --out")
    try:
        if args.recipe is not None:
            from refocuslib import recipes
            rec = recipes.recipe(args.recipe, {"params": params} if params else None)
            task = recipes.build(rec)
            out = args.out or str(Path("results") / "retrain" / "checkpoints" / recipes.run_name(rec))
            extra = {}
            if args.steps:  # a shorter run (a test): the same schedule shape over fewer steps
                warm = int(rec["train"].get("warmup_steps", 0))
                extra = {"steps": args.steps, "warmup_steps": min(warm, args.steps // 10)}
            cfg = recipes.train_config(rec, out, device=device, progress=not args.no_progress, use_shipped=False,
                                       **extra)
            print(f"recipe {args.recipe}: training into {out}", flush=True)
        else:
            task = resolve_task_factory(args.task)(**params)
            cfg = TrainConfig(steps=args.steps, out_dir=args.out, lr_g=args.lr_g, lr_d=args.lr_d, seed=args.seed,
                              device=device, val_every=args.val_every, ckpt_every=args.ckpt_every,
                              progress=not args.no_progress)
        result = fit(task, cfg)
        rank, world = _dist_info()
        digest = weights_digest(task.generator)
        if task.discriminator is not None:
            digest = weights_digest(task.generator) + "+" + weights_digest(task.discriminator)
        if args.verify_sync and world > 1:
            digests = [None] * world
            dist.all_gather_object(digests, digest)
            if len(set(digests)) != 1:
                print(f"rank {rank}: weights differ across ranks: {digests}", flush=True)
                return 1
            if rank == 0:
                print(f"ranks agree: {world} ranks, weights sha256 {digest}", flush=True)
        if rank == 0:
            print(json.dumps({"best_val_loss": result.best_val_loss, "best_step": result.best_step,
                              "steps": result.last_step, "seconds": round(result.seconds, 2),
                              "world_size": world, "weights_sha256": digest}), flush=True)
        return 0
    finally:
        if dist.is_available() and dist.is_initialized():
            try:  # every rank leaves its last collective before any tears gloo down (a teardown race aborted a rank)
                dist.barrier()
            finally:
                dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
