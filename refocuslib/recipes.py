"""One registry of trained-model recipes (``refocuslib/recipes.yaml``) and one train-or-load function for all papers.

A recipe is written once, under a name::

    deepz_beads:
      task: deepz                 # a name of refocuslib.train.TASKS (or module:factory)
      params: {...}               # keyword arguments of the task factory (data, model)
      train: {steps: ..., lr_g: ..., schedule: cosine, ...}   # refocuslib.train.TrainConfig fields
      seed: 0
      about: {...}                # what a user needs to know: optics, trained range, sample, CPU-hours
      shipped: false              # (optional) paper-scale recipes of the full profile: never shipped or retrained
      smoke: {params: {...}}      # (optional) overrides for the notebooks' training smoke (a smaller data pool)

Its file name is ``<name>-<digest>`` where the digest hashes (task, params, train, seed): a shipped checkpoint
``data/checkpoints/<name>-<digest>.pt`` is used only for exactly the recipe that produced it. Notebooks and profiles
name a recipe; a profile may swap it for another name or override fields (:func:`recipe`).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional, Tuple, Union

import yaml

from refocuslib.train import (SHIPPED_DIR, TrainConfig, TrainResult, TrainTask, checkpoints_root, fit,
                              install_shipped, resolve_task_factory, settings_digest)

RECIPES_PATH = Path(__file__).with_name("recipes.yaml")
_RECIPE_KEYS = ("task", "params", "train", "seed", "about", "shipped", "smoke")
_REGISTRY: Optional[dict] = None


def registry() -> dict:
    """All named recipes (read once from :data:`RECIPES_PATH`)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = yaml.safe_load(RECIPES_PATH.read_text()) or {}
    return _REGISTRY


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def recipe(name_or_recipe: Union[str, dict], overrides: Optional[dict] = None) -> dict:
    """The recipe named ``name_or_recipe`` (or the dict itself, which must carry a ``name``), with ``overrides``
    deep-merged. Unknown names and keys raise ``ValueError`` listing the accepted ones."""
    if isinstance(name_or_recipe, str):
        reg = registry()
        if name_or_recipe not in reg:
            raise ValueError(f"recipe: unknown name {name_or_recipe!r}; known: {sorted(reg)}")
        rec = {"name": name_or_recipe, **copy.deepcopy(reg[name_or_recipe])}
    elif isinstance(name_or_recipe, dict) and isinstance(name_or_recipe.get("name"), str):
        rec = copy.deepcopy(name_or_recipe)
    else:
        raise ValueError(f"recipe: a recipe name or a dict with a 'name', got {name_or_recipe!r}")
    rec = _merge(rec, overrides or {})
    unknown = set(rec) - set(_RECIPE_KEYS) - {"name"}
    if unknown:
        raise ValueError(f"recipe {rec['name']!r}: unknown keys {sorted(unknown)}; accepted: {list(_RECIPE_KEYS)}")
    for key in ("task", "params", "train"):
        if key not in rec:
            raise ValueError(f"recipe {rec['name']!r}: needs '{key}'")
    bad = set(rec["train"]) - set(TrainConfig.__dataclass_fields__) | ({"out_dir"} & set(rec["train"]))
    if bad:
        raise ValueError(f"recipe {rec['name']!r}: train keys {sorted(bad)} are not TrainConfig fields "
                         f"(accepted: {sorted(set(TrainConfig.__dataclass_fields__) - {'out_dir'})})")
    rec.setdefault("seed", 0)
    return rec


def shipped_names() -> list:
    """Names of the recipes whose trained models ship in ``data/checkpoints`` (all but ``shipped: false``): what the
    retrain profile trains from scratch."""
    return sorted(n for n, r in registry().items() if r.get("shipped", True) is not False)


def _psf_file(spec) -> Optional[Path]:
    """The psf.json file a ``microscope`` value names (:func:`refocuslib.calibrate.psf_json_path`), or None."""
    from refocuslib.calibrate import psf_json_path
    if not isinstance(spec, (str, Path)) or not str(spec).endswith(".json"):
        return None
    return psf_json_path(spec)


def _with_psf_contents(obj):
    """``obj`` with every ``microscope``/``target_microscope`` that names a psf.json file replaced by
    ``{"psf.json": path, "sha256": <file hash>}``: a recalibrated psf.json gives a new digest, never an old model."""
    import hashlib
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            f = _psf_file(v) if k in ("microscope", "target_microscope") else None
            out[k] = ({"psf.json": str(v), "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} if f is not None
                      else _with_psf_contents(v))
        return out
    if isinstance(obj, list):
        return [_with_psf_contents(v) for v in obj]
    return obj


def digest(rec: dict) -> str:
    """Hash of what determines the trained weights: task, params (a psf.json named in them by its contents), train
    and seed (not ``about``)."""
    return settings_digest(_with_psf_contents({k: rec.get(k) for k in ("task", "params", "train", "seed")}))


def run_name(rec: dict) -> str:
    """``<name>-<digest>``: the checkpoint folder and the shipped file's stem."""
    return f"{rec['name']}-{digest(rec)}"


def shipped_path(rec: dict) -> Path:
    return SHIPPED_DIR / f"{run_name(rec)}.pt"


def build(rec: dict) -> TrainTask:
    """The task of ``rec`` (its factory called with ``params``; the weights' initialisation seeded by ``seed``)."""
    import inspect

    import torch
    factory = resolve_task_factory(rec["task"])
    sig = inspect.signature(factory)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = sorted(set(rec["params"]) - set(sig.parameters))
        if unknown:
            raise ValueError(f"recipe {rec.get('name')!r}: params {unknown} are not accepted by task {rec['task']!r}; "
                             f"accepted: {sorted(sig.parameters)}")
    torch.manual_seed(int(rec.get("seed", 0)))
    try:
        return factory(**copy.deepcopy(rec["params"]))
    except TypeError as err:  # a factory passing **params on: name the key instead of a raw TypeError
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"recipe {rec.get('name')!r}: {err}; see the accepted parameters of task {rec['task']!r} "
                         f"({refocuslib_task_doc(rec['task'])})") from None


def refocuslib_task_doc(task: str) -> str:
    """Where a task's accepted parameters are documented: its factory (``module:function``)."""
    from refocuslib.train import TASKS
    return TASKS.get(task, task)


def train_config(rec: dict, out_dir, device: str = "cpu", progress: bool = True, **changes) -> TrainConfig:
    kw = {**rec["train"], **changes}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return TrainConfig(out_dir=str(out_dir), seed=int(rec.get("seed", 0)), device=device, progress=progress, **kw)


def expected_minutes(rec: dict) -> Optional[float]:
    return (rec.get("about") or {}).get("cpu_minutes")


def train_cached(name_or_recipe, results_dir, overrides: Optional[dict] = None, device: str = "cpu",
                 progress: bool = True, use_shipped: bool = True) -> Tuple[TrainTask, TrainResult]:
    """Train-or-load for every paper: the task of the recipe, trained by :func:`refocuslib.train.fit` into
    ``results/<profile>/checkpoints/<name>-<digest>`` — or, when the folder is empty and ``use_shipped``, started
    from the shipped checkpoint of exactly this recipe (no training); or resumed; or, finished, just loaded.
    Says clearly when no shipped file exists and how long training is expected to take. Returns
    ``(task, TrainResult)``; the generator holds the best-validation weights, in eval mode, and the task's
    ``recipe`` attribute the recipe."""
    rec = recipe(name_or_recipe, overrides)
    task = build(rec)
    task.recipe = rec
    out = checkpoints_root(results_dir) / run_name(rec)
    shipped = shipped_path(rec)
    if use_shipped and not (out / "last.pt").exists():
        if install_shipped(out):
            print(f"{rec['name']}: using the shipped model {shipped.name} (no training)", flush=True)
        else:
            mins = expected_minutes(rec)
            print(f"{rec['name']}: no shipped checkpoint for this recipe ({shipped.name}); training it now"
                  + (f", expected ≈ {mins:g} CPU-minutes" if mins else ""), flush=True)
    res = fit(task, train_config(rec, out, device=device, progress=progress, use_shipped=False))
    task.generator.eval()
    post = getattr(task, "after_training", None)
    if callable(post):
        post()
    return task, res


def smoke(name_or_recipe, results_dir, steps: int = 30, device: str = "cpu", overrides: Optional[dict] = None
          ) -> TrainResult:
    """A short training run of the recipe from scratch (``steps`` steps, its own folder ``…-smoke``): shows that
    the training path of a notebook works without paying for its training. The recipe's ``smoke`` block (e.g. a
    smaller simulated data pool) is applied first, then ``overrides``. Returns the result (losses logged)."""
    base = recipe(name_or_recipe)
    rec = recipe(_merge(base, base.get("smoke") or {}), overrides)
    task = build(rec)
    out = checkpoints_root(results_dir) / f"{run_name(rec)}-smoke{int(steps)}"
    cfg = train_config(rec, out, device=device, progress=False, use_shipped=False, steps=int(steps),
                       warmup_steps=0, val_every=int(steps), ckpt_every=int(steps), log_every=max(1, int(steps) // 5))
    t0 = time.time()
    res = fit(task, cfg)
    res.extras["smoke_seconds"] = time.time() - t0
    return res


def retrain_dir(rec: dict, root="results/retrain") -> Path:
    """Where ``python -m refocuslib.train --recipe NAME`` trains by default: ``<root>/checkpoints/<name>-<digest>``."""
    return Path(root) / "checkpoints" / run_name(rec)


def ship(name_or_recipe, run_dir=None, overrides: Optional[dict] = None) -> Path:
    """Ship the trained model of a recipe: its best-validation generator copied from ``run_dir`` (default
    :func:`retrain_dir`) to ``data/checkpoints/<name>-<digest>.pt`` (checksummed), with a provenance JSON that holds
    the command that retrains it, git commit, seed, steps, best step and validation, the training wall time, the
    recipe itself and its ``about`` (optics, pixel size, trained range, sample). Returns the checkpoint path."""
    import json
    from refocuslib.io import load_checkpoint
    from refocuslib.train import ship_checkpoint
    rec = recipe(name_or_recipe, overrides)
    run_dir = Path(run_dir) if run_dir is not None else retrain_dir(rec)
    if run_dir.name != run_name(rec):
        raise ValueError(f"run_dir: {run_dir} is not a run of recipe {rec['name']!r} (expected a folder named "
                         f"{run_name(rec)})")
    last = load_checkpoint(run_dir / "last.pt")
    if int(last["step"]) < int(rec["train"]["steps"]):
        raise ValueError(f"run_dir: {run_dir} stopped at step {last['step']} of {rec['train']['steps']}; "
                         f"resume it with: python -m refocuslib.train --recipe {rec['name']}")
    secs = last.get("train_seconds")
    extra = {"recipe": {k: rec[k] for k in ("name", "task", "params", "train", "seed")},
             "about": rec.get("about", {}), "digest": digest(rec),
             "train_hours": None if secs is None else round(float(secs) / 3600.0, 3)}
    path = ship_checkpoint(run_dir, f"python -m refocuslib.train --recipe {rec['name']} --threads 1",
                           extra_provenance=extra)
    # the JSON was written by ship_checkpoint; check it carries what a user needs
    prov = json.loads(path.with_suffix(".json").read_text())
    missing = [k for k in ("recipe", "about", "command", "git_commit") if not prov.get(k)]
    if missing:
        raise ValueError(f"provenance of {path.name} lacks {missing}")
    return path


def stale_shipped(shipped_dir=None) -> list:
    """Files in ``data/checkpoints`` that belong to no recipe of the registry (another digest: an older recipe);
    they would never be loaded, so they are not kept."""
    d = Path(shipped_dir) if shipped_dir is not None else SHIPPED_DIR
    current = {run_name(recipe(n)) for n in registry()}
    return sorted(p for p in d.glob("*.pt") if p.stem not in current)
