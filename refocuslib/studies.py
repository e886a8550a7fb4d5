"""Design studies: short, seeded trainings that answer one question about a recipe, with the numbers to quote.

``python -m refocuslib.studies dpm_scale [--recipe deepz_beads] [--steps 1500] [--scales 10 1] [--json out.json]``

* ``dpm_scale`` (issue "Deep-Z family works"): Deep-Z feeds the DPM to the network as DPM/10 µm (Methods), so at
  ±3 µm the conditioning channel spans only ±0.3 beside an input image normalised to ≈ [0, 1]. Does that slow
  learning? The same recipe is trained from the same initial weights on the same batches (same seeds) with the
  DPM divided by each scale in turn (:class:`refocuslib.dpm.network_scale`), and the validation NRMSE curves are
  compared (ratio to the first scale at every validation step).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from refocuslib._validate import positive, positive_int

__all__ = ["dpm_scale_study"]


def dpm_scale_study(recipe: str = "deepz_beads", scales_um: Sequence[float] = (10.0, 1.0), steps: int = 1500,
                    val_every: int = 250, out_dir: Optional[str] = None, progress: bool = False,
                    overrides: Optional[dict] = None) -> dict:
    """Train ``recipe`` for ``steps`` steps once per DPM scale (µm; the paper's is 10) from the same seed, and
    return ``{'scales_um', 'steps', 'val_step', 'val_nrmse': {scale: [...]}, 'val_nrmse_input', 'ratio_to_first':
    {scale: [...]}, 'seconds': {scale: s}}``; the first scale is the baseline. ``overrides`` are merged into the
    recipe first (e.g. a smaller data pool for a test)."""
    from refocuslib import dpm, recipes
    from refocuslib.train import fit
    steps = positive_int(steps, "steps")
    val_every = positive_int(val_every, "val_every")
    scales = [positive(s, "scales_um") for s in scales_um]
    if len(scales) < 2:
        raise ValueError(f"scales_um: need at least two scales to compare, got {list(scales_um)!r}")
    base_rec = recipes.recipe(recipe, overrides)
    rec = recipes.recipe(base_rec, {"train": {"steps": steps, "val_every": val_every, "ckpt_every": steps,
                                              "warmup_steps": min(int(base_rec["train"].get("warmup_steps", 0)),
                                                                  steps // 10)}})
    if rec["task"] != "deepz":
        raise ValueError(f"recipe: the DPM-scale study needs a Deep-Z recipe (task 'deepz'), got {rec['task']!r}")
    root = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="dpm_scale_"))
    out = {"recipe": recipe, "scales_um": scales, "steps": steps, "val_step": None, "val_nrmse": {},
           "val_nrmse_input": None, "seconds": {}}
    for s in scales:
        with dpm.network_scale(s):
            task = recipes.build(rec)
            t0 = time.perf_counter()
            res = fit(task, recipes.train_config(rec, root / f"scale_{s:g}", progress=progress, use_shipped=False))
            out["seconds"][f"{s:g}"] = round(time.perf_counter() - t0, 1)
        val = [v for v in res.validation if v["step"] > 0]
        out["val_step"] = [int(v["step"]) for v in val]
        out["val_nrmse"][f"{s:g}"] = [float(v["val_loss"]) for v in val]
        out["val_nrmse_input"] = float(val[-1].get("val_nrmse_input", float("nan"))) if val else None
    base = out["val_nrmse"][f"{scales[0]:g}"]
    out["ratio_to_first"] = {k: [a / b for a, b in zip(v, base)] for k, v in out["val_nrmse"].items()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refocuslib.studies", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="study", required=True)
    p = sub.add_parser("dpm_scale", help="validation NRMSE vs training steps for several DPM conditioning scales")
    p.add_argument("--recipe", default="deepz_beads")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--scales", type=float, nargs="+", default=[10.0, 1.0], help="µm; the first is the baseline")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(positive_int(args.threads, "threads"))
    r = dpm_scale_study(args.recipe, args.scales, args.steps, args.val_every)
    print(f"{r['recipe']}: validation NRMSE by step (un-refocused input {r['val_nrmse_input']:.3f})")
    print("  step      " + "  ".join(f"DPM/{k:>5s}" for k in r["val_nrmse"]))
    for i, st in enumerate(r["val_step"]):
        print(f"  {st:6d}  " + "  ".join(f"{v[i]:10.4f}" for v in r["val_nrmse"].values()))
    print("  ratio to DPM/" + f"{r['scales_um'][0]:g} at the last step: "
          + ", ".join(f"DPM/{k}: {v[-1]:.3f}" for k, v in r["ratio_to_first"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
