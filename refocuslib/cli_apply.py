"""Command-line subcommands that apply the library to a user's own data (registered in :mod:`refocuslib.cli`):

* ``calibrate`` — a bead z-stack → ``psf.json`` (:func:`refocuslib.calibrate.calibrate`) and a figure;
* ``volume``    — Recurrent-MZ: M images with their z → a volume TIFF;
* ``wnet``      — W-Net: a double-helix (or wide-field) image → confocal-like planes;
* ``localize``  — DeepSTORM3D: camera frames → a localisation CSV.

A model is named by its recipe (``refocuslib/recipes.yaml``; the shipped ``data/checkpoints/<name>-<digest>.pt``)
or given as a checkpoint path whose provenance JSON (same stem) holds the recipe. The glue here is thin: the
task is rebuilt by :func:`refocuslib.recipes.build` (DeepSTORM3D: :func:`refocuslib.tasks.deepstorm3d.load_localizer`),
its weights loaded, and the papers' functions do the work; large images are cut into overlapping tiles blended
with linear ramps (the tiling of :mod:`refocuslib.inference`).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from refocuslib.cli import subcommand

__all__ = ["resolve_model", "load_task", "describe_model", "check_pixel_size", "input_files", "tiled"]

MODEL_NOTE = ("A model fits only the microscope it was trained for (objective, wavelength, pixel size, PSF/mask, "
              "axial range, sample type): check the description it prints when it loads, and train your own "
              "for other optics (calibrate → recipe with data.microscope: psf.json → python -m refocuslib.train).")
TIFF_SUFFIXES = (".tif", ".tiff")
PIXEL_TOLERANCE = 0.05


class CLIError(ValueError):
    """A user error the commands report as one line (exit code 2)."""


# ----------------------------------------------------------------------------------------------- models
def resolve_model(model: str) -> Tuple[Path, Optional[dict], dict]:
    """``model`` (a recipe name or a checkpoint path / training folder) → (checkpoint path, recipe or None,
    ``about`` block or {})."""
    from refocuslib import recipes
    reg = recipes.registry()
    if model in reg:
        rec = recipes.recipe(model)
        path = recipes.shipped_path(rec)
        if not path.exists():
            raise CLIError(f"--model: recipe {model!r} has no shipped checkpoint ({path.name}); train it with: "
                           f"python -m refocuslib.train --recipe {model} --threads 1")
        return path, rec, dict(rec.get("about") or {})
    from refocuslib.io import resolve_checkpoint
    try:
        path = resolve_checkpoint(model)
    except FileNotFoundError:
        raise CLIError(f"--model: no best.pt or last.pt in {model}") from None
    if not path.is_file():
        raise CLIError(f"--model: {model!r} is neither a recipe name ({', '.join(recipes.shipped_names())}) nor "
                       f"a checkpoint file")
    prov = {}
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            prov = json.loads(side.read_text())
        except json.JSONDecodeError as e:
            raise CLIError(f"--model: provenance {side} is not valid JSON ({e})") from None
    rec = prov.get("recipe")
    about = dict(prov.get("about") or (rec or {}).get("about") or {})
    return path, rec, about


def describe_model(name: str, about: dict) -> str:
    """One paragraph: what the model was trained for (its ``about`` block)."""
    keys = [("paper", "paper"), ("objective", "objective"), ("wavelength_um", "λ (µm)"),
            ("pixel_um", "pixel (µm)"), ("mask", "mask"), ("trained_range_um", "trained range (µm)"),
            ("sample", "sample")]
    parts = [f"{label} {about[k]}" for k, label in keys if about.get(k) not in (None, "")]
    return f"model {name}: " + ("; ".join(parts) if parts else "no description (no 'about' block)") + "."


def load_task(model: str, tasks: Sequence[str], device: str = "cpu", quiet: bool = False):
    """The trained task of ``model`` whose recipe task is one of ``tasks``: (task, about, checkpoint path).
    Prints the model's description and :data:`MODEL_NOTE` unless ``quiet``."""
    import torch

    from refocuslib import recipes
    from refocuslib.io import load_checkpoint
    from refocuslib.train import load_generator_weights
    path, rec, about = resolve_model(model)
    if "deepstorm3d" in tasks and (rec is None or rec.get("task") == "deepstorm3d"):
        extra = load_checkpoint(path).get("extra") or {}
        if "config" in extra:
            from refocuslib.tasks.deepstorm3d import load_localizer
            task = load_localizer(path, device=device)
            if not quiet:
                print(describe_model(path.stem, about), MODEL_NOTE, file=sys.stderr)
            return task, about, path
    if rec is None:
        raise CLIError(f"--model: {path} has no recipe (its provenance JSON {path.with_suffix('.json').name} is "
                       f"missing or holds no 'recipe'); pass a recipe name or a shipped checkpoint")
    if rec.get("task") not in tasks:
        raise CLIError(f"--model: {path.name} is a {rec.get('task')!r} model; this command needs one of {list(tasks)}")
    task = recipes.build(rec)
    load_generator_weights(task.generator, path)
    task.generator.to(torch.device(device)).eval()
    if not quiet:
        print(describe_model(rec.get("name", path.stem), about), MODEL_NOTE, file=sys.stderr)
    return task, about, path


def model_pixel_um(task, about: dict) -> Optional[float]:
    for v in (about.get("pixel_um"), getattr(task, "pixel_um", None),
              getattr(getattr(task, "generator", None), "pixel_um", None)):
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None


def check_pixel_size(image_px: Optional[float], model_px: Optional[float], force: bool, what: str) -> None:
    """Refuse (``CLIError``) an image whose pixel differs from the model's by more than 5 % unless ``force``;
    warn when either is unknown."""
    if image_px is None or model_px is None:
        warnings.warn(f"{what}: pixel size unknown ({'image' if image_px is None else 'model'}); assuming the "
                      f"image matches the model's {model_px if model_px else '(unknown)'} µm")
        return
    if abs(image_px / model_px - 1) > PIXEL_TOLERANCE:
        msg = (f"{what}: pixel size {image_px:.4g} µm differs from the model's {model_px:.4g} µm by "
               f"{abs(image_px / model_px - 1):.0%}; the model fits only the pixel it was trained for")
        if not force:
            raise CLIError(msg + " (resample the image, train a model for this pixel, or pass --force)")
        warnings.warn(msg + " (--force: going on)")


# ----------------------------------------------------------------------------------------------- inputs
def input_files(inputs: Sequence[str]) -> List[Path]:
    """TIFF files of ``inputs`` (files, or folders whose ``*.tif``/``*.tiff`` are taken in name order)."""
    out = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in TIFF_SUFFIXES)
            if not found:
                raise CLIError(f"input: folder {p} holds no .tif/.tiff files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise CLIError(f"input: no such file or folder {s}")
    return out


def tiled(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile_px: int, overlap_px: int) -> np.ndarray:
    """``fn`` ((C, h, w) → (K, h, w)) over overlapping tiles of ``image`` (C, H, W), blended with linear ramps
    (:mod:`refocuslib.inference`'s tiling). One call when the image fits a tile."""
    from refocuslib.inference import _check_tiling, _ramp, _starts
    tile, overlap = _check_tiling(tile_px, overlap_px)
    _, h, w = image.shape
    if h <= tile and w <= tile:
        return np.asarray(fn(image), dtype=np.float32)
    out = weight = None
    for y0 in _starts(h, tile, tile - overlap):
        for x0 in _starts(w, tile, tile - overlap):
            th, tw = min(tile, h), min(tile, w)
            res = np.asarray(fn(image[:, y0:y0 + th, x0:x0 + tw]), dtype=np.float32)
            if out is None:
                out = np.zeros((res.shape[0], h, w), np.float32)
                weight = np.zeros((h, w), np.float32)
            wt = _ramp(th, overlap, y0 == 0, y0 + th >= h)[:, None] * _ramp(tw, overlap, x0 == 0, x0 + tw >= w)[None]
            out[:, y0:y0 + th, x0:x0 + tw] += res * wt
            weight[y0:y0 + th, x0:x0 + tw] += wt
    return out / np.maximum(weight, 1e-12)


def _read(path: Path, ndim: Tuple[int, ...], what: str):
    from refocuslib import io as rio
    arr, meta = rio.read_tiff(path)
    arr = np.squeeze(np.asarray(arr, dtype=np.float32))
    if arr.ndim not in ndim:
        raise CLIError(f"{what}: {path} has shape {arr.shape}; expected a {' or '.join(f'{d}D' for d in ndim)} "
                       f"image")
    return arr, meta


def pick_plane(arr: np.ndarray, plane: Optional[int], path: Path, what: str = "input") -> np.ndarray:
    """A 2D image of ``arr``: itself, or plane ``plane`` (0-based, ``--plane``) of a (Z, Y, X) stack."""
    if arr.ndim == 2:
        if plane not in (None, 0):
            raise CLIError(f"--plane: {path} is a single 2D image; --plane must be 0 or omitted, got {plane}")
        return arr
    if arr.ndim != 3:
        raise CLIError(f"{what}: {path} has shape {arr.shape}; expected a 2D image or a (Z, Y, X) stack")
    if plane is None:
        raise CLIError(f"{what}: {path} is a stack of {arr.shape[0]} planes (shape {arr.shape}); pick one with "
                       f"--plane N (0 to {arr.shape[0] - 1})")
    if not 0 <= plane < arr.shape[0]:
        raise CLIError(f"--plane: expected 0 to {arr.shape[0] - 1} for {path} ({arr.shape[0]} planes), got {plane}")
    return arr[plane]


def resample_image(image: np.ndarray, shape: Tuple[int, int], order: int = 1) -> np.ndarray:
    """``image`` (H, W) resampled to ``shape`` (``skimage.transform.resize``, linear, anti-aliased when it
    shrinks): the same field of view on another pixel grid."""
    from skimage.transform import resize
    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    return resize(np.asarray(image, np.float64), shape, order=order, mode="reflect", anti_aliasing=shrink,
                  preserve_range=True).astype(np.float32)


def model_grid(shape: Tuple[int, int], image_px: float, model_px: float) -> Tuple[int, int]:
    """The (H, W) of the field of view of an image of ``shape`` at ``image_px`` µm when sampled at ``model_px``."""
    return tuple(max(1, int(round(n * image_px / model_px))) for n in shape)


def pixel_plan(image_px: Optional[float], model_px: Optional[float], resample: bool, force: bool, what: str,
               src: Path, note: Optional[str] = None) -> Optional[float]:
    """Check the image's pixel against the model's (:func:`check_pixel_size`) and say what to do: the pixel
    size to resample from (``--resample`` and a mismatch), else None. Warns when the image has no pixel size."""
    if image_px is None:
        warnings.warn(f"{what}: {src.name} gives no pixel size ({note or 'none found'}); assuming the model's "
                      f"training pixel {'(unknown)' if model_px is None else f'{model_px:.4g} µm'}")
        return None
    if resample:
        if model_px is None:
            raise CLIError(f"--resample: the model records no training pixel size; pass --force instead")
        return image_px if abs(image_px / model_px - 1) > 1e-6 else None
    check_pixel_size(image_px, model_px, force, what)
    return None


def write_output(dst: Path, out: np.ndarray, pixel_um: Optional[float], z_step_um: Optional[float], axes: str,
                 metadata: dict) -> str:
    """Write ``out`` as a float32 ImageJ TIFF (calibrated), or, for a ``.png`` destination, as a 16-bit PNG of
    one plane scaled so that its maximum is 65535 (the scale is returned in the message); anything else is
    refused."""
    from refocuslib import io as rio
    ext = dst.suffix.lower()
    if ext in TIFF_SUFFIXES:
        rio.write_tiff(dst, np.asarray(out, np.float32), pixel_um=pixel_um, z_step_um=z_step_um, axes=axes,
                       metadata=metadata)
        return f"{dst}"
    if ext == ".png":
        out = np.asarray(out, np.float64)
        if out.ndim != 2:
            raise CLIError(f"-o/--output: a PNG holds one plane, this output has {out.shape[0]} (shape "
                           f"{out.shape}); write a .tif")
        top = float(np.max(out)) if np.isfinite(out).all() and np.max(out) > 0 else 1.0
        from PIL import Image
        Image.fromarray(np.round(np.clip(out, 0, None) / top * 65535).astype(np.uint16)).save(dst)
        return f"{dst} (16-bit PNG, no calibration: 65535 = {top:.4g} output units; negative values clipped)"
    raise CLIError(f"-o/--output: expected a .tif/.tiff or .png file (or a folder for several inputs), got {dst}")


def output_path(src: Path, output: str, batch: bool, suffix: str) -> Path:
    """Where the result of ``src`` goes: ``output`` (a .tif/.tiff/.png file), or in batch mode
    ``output/<stem><suffix>.tif``."""
    out = Path(output)
    if batch:
        if out.suffix.lower() in TIFF_SUFFIXES + (".png",):
            raise CLIError(f"-o/--output: several inputs need an output folder, got the file name {output}")
        out.mkdir(parents=True, exist_ok=True)
        return out / f"{src.stem}{suffix}.tif"
    if out.suffix.lower() not in TIFF_SUFFIXES + (".png",):
        raise CLIError(f"-o/--output: expected a .tif/.tiff or .png file (or a folder for several inputs), "
                       f"got {output}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out

def _progress(it, total: int, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, total=total, desc=desc, file=sys.stderr, mininterval=0.5)


def _one_line(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the command line: ``warning: <message>`` without the source line."""
    return f"warning: {message}\n"


def _run_guarded(name: str, body: Callable[[], int]) -> int:
    """Run a command's ``body``: warnings print as one line, a user error as ``refocuslib NAME: error: ...``
    (exit code 2). Only the format changes, so recorded warnings (``pytest.warns``) still see them."""
    saved, warnings.formatwarning = warnings.formatwarning, _one_line
    try:
        return body()
    except (CLIError, ValueError, FileNotFoundError) as e:
        print(f"refocuslib {name}: error: {e}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = saved


def _model_parser(subparsers, name: str, help: str, description: str, examples, inputs_help: str,
                  output_help: str, example_model: str, func, normalize_help: Optional[str] = None,
                  tile_px: int = 256, overlap_px: int = 32):
    """One apply subcommand's parser: the inputs, ``-o``, optionally ``--no-normalize``, the model options
    (:func:`_common_model_args`) and ``func``; the caller adds its own options to the returned parser."""
    p = subparsers.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=description + " " + MODEL_NOTE,
                              epilog="examples:\n" + "\n".join("  " + e for e in examples))
    p.add_argument("inputs", nargs="+", help=inputs_help)
    p.add_argument("-o", "--output", required=True, help=output_help)
    if normalize_help:
        p.add_argument("--no-normalize", action="store_true", help=normalize_help)
    _common_model_args(p, example_model, tile_px, overlap_px)
    p.set_defaults(func=func)
    return p


def _common_model_args(p, example_model: str, tile_px: int = 256, overlap_px: int = 32) -> None:
    p.add_argument("--model", "--checkpoint", dest="model", required=True, metavar="NAME|PT",
                   help=f"a shipped model's recipe name (refocuslib models; e.g. {example_model}), a checkpoint .pt "
                        f"(its provenance JSON beside it) or a training folder (best.pt, else last.pt). {MODEL_NOTE}")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true",
                      help="apply the model even when the image's pixel size differs from the model's by > 5%%")
    mode.add_argument("--resample", action="store_true",
                      help="resample an image whose pixel differs from the model's to the model's pixel, apply the "
                           "model and resample back (the output keeps the input's calibration)")
    p.add_argument("--pixel-um", type=float, default=None,
                   help="the image's pixel size in µm (default: from the TIFF metadata)")
    p.add_argument("--tile", type=int, default=tile_px,
                   help=f"tile size in pixels for large images (default {tile_px}; lower it on small memory)")
    p.add_argument("--overlap", type=int, default=overlap_px, help=f"tile overlap in pixels (default {overlap_px})")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------------------- refocus
def load_deepz(model: str, device: str = "cpu", quiet: bool = False):
    """The Deep-Z generator of ``model`` (a shipped recipe name, a checkpoint ``.pt`` or a training folder),
    and its ``about`` block (the recipe's, or the provenance JSON beside a checkpoint). Other tasks' models are refused."""
    from refocuslib import recipes
    from refocuslib.inference import load_model
    reg = recipes.registry()
    if model in reg and reg[model].get("task") != "deepz":
        raise CLIError(f"--model: {model} is a {reg[model].get('task')!r} model; refocus needs a Deep-Z model "
                       f"({', '.join(n for n in recipes.shipped_names() if reg[n].get('task') == 'deepz')})")
    path, _, about = resolve_model(model)
    gen = load_model(path, device=device)
    about.update(pixel_um=gen.pixel_um, trained_range_um=list(gen.trained_range_um))  # the checkpoint's own
    if not quiet:
        print(describe_model(model if model in reg else Path(model).name, about), MODEL_NOTE, file=sys.stderr)
    return gen, about


def _run_refocus(args: argparse.Namespace) -> int:
    def body():
        from refocuslib._validate import check_device
        from refocuslib.inference import refocus, refocus_stack
        files = input_files(args.inputs)
        batch = len(files) > 1 or Path(args.inputs[0]).is_dir()
        dsts = [output_path(f, args.output, batch, "_refocus") for f in files]  # refuse a bad -o before any work
        first = _read(files[0], (2, 3), "input")  # a bad input is reported before the model is loaded
        pick_plane(first[0], args.plane, files[0])
        model, about = load_deepz(args.model, device=check_device(args.device, "--device"))
        model_px = model.pixel_um
        dpm_map = None
        if args.dpm is not None:
            dpm_map, _ = _read(Path(args.dpm), (2,), "--dpm")
        common = dict(normalize=not args.no_normalize, tile_px=args.tile, overlap_px=args.overlap)
        for f, dst in _progress(list(zip(files, dsts)), len(files), "images", not args.no_progress and batch):
            arr, meta = first if f == files[0] else _read(f, (2, 3), "input")
            image = pick_plane(arr, args.plane, f)
            image_px = args.pixel_um or meta.get("pixel_um")
            src_px = pixel_plan(image_px, model_px, args.resample, args.force, f"input {f.name}", f,
                                meta.get("pixel_note"))
            shape = image.shape
            if src_px is not None:  # --resample: run on the model's pixel grid, come back to the input's
                image = resample_image(image, model_grid(shape, src_px, model_px))
            info = {"model": args.model, "checkpoint": model.model_info.get("checkpoint"), "input": str(f),
                    "plane": args.plane, "trained_range_um": list(model.trained_range_um),
                    "normalized": not args.no_normalize, "about": about,
                    "resampled_from_um": src_px, "model_pixel_um": model_px,
                    "units": "Deep-Z normalised: the input's triangle background 0, its 99.9th percentile 1"
                             if not args.no_normalize else "the input's units (already normalised)"}
            z_step, axes = None, "YX"
            if dpm_map is not None:
                if dpm_map.shape != shape:
                    raise CLIError(f"--dpm: {args.dpm} has shape {dpm_map.shape}; expected the input's {shape}")
                d = dpm_map if src_px is None else resample_image(dpm_map, image.shape)
                out = refocus(model, image, d.astype(np.float64), **common)
                info.update(dpm=str(args.dpm), dpm_range_um=[float(dpm_map.min()), float(dpm_map.max())])
            elif len(args.dz) == 1:
                out = refocus(model, image, args.dz[0], **common)
                info["dz_um"] = float(args.dz[0])
            else:
                out = refocus_stack(model, image, args.dz, batch_size=args.batch_size, **common)
                info["dz_um"] = [float(v) for v in args.dz]
                steps = np.diff(args.dz)
                z_step = float(abs(steps[0])) if len(steps) and np.allclose(steps, steps[0]) and steps[0] else None
                axes = "ZYX"
            if src_px is not None:
                out = (resample_image(out, shape) if out.ndim == 2 else
                       np.stack([resample_image(o, shape) for o in out]))
            pixel_out = image_px if image_px is not None else model_px
            msg = write_output(dst, out, pixel_out, z_step, axes, {"refocus": info})
            if not batch:
                print(f"wrote {msg} ({'×'.join(map(str, np.shape(out)))}, {axes})")
        if batch:
            print(f"wrote {len(files)} file(s) to {args.output}")
        return 0
    return _run_guarded("refocus", body)


@subcommand
def _setup_refocus(subparsers) -> None:
    p = _model_parser(
        subparsers, "refocus",
        help="Deep-Z: refocus wide-field images to a plane (--dz), a z-stack or a surface (--dpm)",
        description="Virtual refocusing (Deep-Z, Wu et al. 2019): each input image plus a digital propagation matrix "
                    "(DPM) go through the trained generator. One --dz gives one image, several a virtual z-stack; "
                    "--dpm takes an (H, W) TIFF of distances in µm (a tilted or curved surface). Input: camera "
                    "counts or any linear intensity; it is normalised as in training (triangle background 0, "
                    "99.9th percentile 1) unless --no-normalize, and the output is in those normalised units "
                    "(float32 TIFF; with -o x.png a 16-bit PNG of one plane, scaled to its maximum). The output "
                    "keeps the input's pixel calibration and records the model, DPM and trained range.",
        examples=["refocuslib refocus beads.tif --model deepz_beads --dz 1.5 -o refocused.tif",
                  "refocuslib refocus beads.tif --model deepz_beads --dz -2 -1 0 1 2 -o stack.tif",
                  "refocuslib refocus beads.tif --model deepz_beads --dpm tilt_um.tif -o surface.tif",
                  "refocuslib refocus stack.tif --plane 10 --model deepz_beads --dz 1 --resample -o out.png",
                  "refocuslib refocus images_folder/ --model results/run/best.pt --dz 1 -o out_folder/"],
        inputs_help="2D TIFF(s) (a (Z, Y, X) stack with --plane), or a folder of them",
        output_help="output .tif (float32, calibrated) or .png (16-bit, one plane); a folder for several inputs",
        example_model="deepz_beads", func=_run_refocus,
        normalize_help="the input is already normalised (skip the Deep-Z background/percentile normalisation)",
        tile_px=1024, overlap_px=64)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--dz", type=float, nargs="+", metavar="UM", help="uniform DPM(s): distance(s) in µm")
    group.add_argument("--dpm", help="non-uniform DPM: a 2D TIFF of distances in µm, same shape as the input")
    p.add_argument("--plane", type=int, default=None, metavar="N", help="plane N (from 0) of a (Z, Y, X) input stack")
    p.add_argument("--batch-size", type=int, default=8, help="planes per forward pass (several --dz)")


# --------------------------------------------------------------------------------------------- calibrate
def _run_calibrate(args: argparse.Namespace) -> int:
    def body():
        import matplotlib
        matplotlib.use("Agg")
        from refocuslib import calibrate as C
        stack, meta = _read(Path(args.beads), (3,), "BEADS")
        px = args.pixel_um or meta.get("pixel_um")
        dz = args.z_step_um or meta.get("z_step_um")
        if px is None or dz is None:
            raise CLIError(f"BEADS: {args.beads} gives no {'pixel size' if px is None else 'z step'} in its "
                           f"metadata; pass --pixel-um and --z-step-um")
        noll = _parse_noll(args.noll)
        cal = C.calibrate(stack, args.na, args.wavelength_um, args.n_immersion, px, dz, noll=noll,
                          bead_diameter_um=args.bead_diameter_um, bead_shell_um=args.bead_shell_um,
                          crop_planes=args.crop_planes, fit_z_step=args.fit_z_step, steps=args.steps,
                          crop_px=args.crop_px, oversample=args.oversample, name=args.name or Path(args.beads).stem,
                          source=str(args.beads))
        out = C.save_psf_json(cal, args.out)
        fig_path = Path(args.figure) if args.figure else out.with_suffix(".png")
        C.plot_calibration(cal, fig_path)
        coeffs = ", ".join(f"Z{j} {c:+.3f}" for j, c in cal.coefficients_rad.items())
        print(f"wrote {out} and {fig_path}: residual {cal.residual:.4f} "
              f"(unaberrated pupil {cal.residual_unaberrated:.4f}), "
              f"rms wavefront {cal.rms_rad:.3f} rad = {cal.rms_rad / 6.283185307:.4f} λ; {coeffs}"
              + (f"; fitted z step {cal.fitted_z_step_um:.4g} µm" if args.fit_z_step else ""))
        return 0
    return _run_guarded("calibrate", body)


def _parse_noll(text: str) -> List[int]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise CLIError(f"--noll: expected Noll indices such as 5-15 or 5,6,11, got {text!r}")
    return out


@subcommand
def _setup_calibrate(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="fit the pupil (Zernike aberrations) of your microscope to a bead z-stack → psf.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Phase retrieval by gradient descent through the library's differentiable optics: the "
                    "Zernike coefficients (Noll-normalised, rad) of the pupil, the bead's position and (with "
                    "--fit-z-step) the z step are fitted to the measured stack; a bead larger than the "
                    "resolution is modelled as a sphere (--bead-diameter-um). Writes psf.json (optics, "
                    "coefficients, fit residual) and a figure (measured vs model x-y / x-z, residual, "
                    "aberrations). Train for your optics by naming psf.json as a recipe's data.microscope.",
        epilog="examples:\n"
               "  refocuslib calibrate beads.tif --na 1.4 --wavelength-um 0.515 --n-immersion 1.518 --out psf.json\n"
               "  refocuslib calibrate data/beads/bead_25pct.tif --na 1.4 --wavelength-um 0.515 --n-immersion 1.518 \\\n"
               "      --pixel-um 0.258 --z-step-um 0.8 --bead-diameter-um 2.5 --bead-shell-um 0.3 --fit-z-step \\\n"
               "      --noll 5-11 --crop-px 24 --crop-planes 21 --steps 30 --oversample 2 --out psf.json")
    p.add_argument("beads", metavar="BEADS.tif", help="a z-stack (Z, Y, X) of one isolated bead")
    p.add_argument("--na", type=float, required=True, help="numerical aperture")
    p.add_argument("--wavelength-um", type=float, required=True, help="emission wavelength (µm)")
    p.add_argument("--n-immersion", type=float, required=True, help="refractive index of the immersion medium")
    p.add_argument("--pixel-um", type=float, default=None, help="pixel size at the sample (default: TIFF metadata)")
    p.add_argument("--z-step-um", type=float, default=None, help="z step (default: TIFF metadata)")
    p.add_argument("--bead-diameter-um", type=float, default=0.0, help="bead diameter (0: a point, default)")
    p.add_argument("--bead-shell-um", type=float, default=None,
                   help="model the bead as a spherical shell of this thickness (a surface-stained bead)")
    p.add_argument("--fit-z-step", action="store_true", help="also fit the z step (within ×1.3)")
    p.add_argument("--noll", default="5-15", help="Zernike modes to fit, Noll indices (default 5-15)")
    p.add_argument("--steps", type=int, default=60, help="L-BFGS iterations (default 60)")
    p.add_argument("--crop-px", type=int, default=None, help="lateral window around the bead (default ≤ 48)")
    p.add_argument("--crop-planes", type=int, default=None, help="axial window around the bead (default ≤ 49)")
    p.add_argument("--oversample", type=int, default=None, help="field samples per pixel (default: Nyquist)")
    p.add_argument("--name", default=None, help="name stored in psf.json (default: the file's stem)")
    p.add_argument("--out", required=True, help="psf.json to write")
    p.add_argument("--figure", default=None, help="figure to write (default: psf.png beside --out)")
    p.set_defaults(func=_run_calibrate)


# ------------------------------------------------------------------------------------------------ volume
def _run_volume(args: argparse.Namespace) -> int:
    def body():
        import torch

        from refocuslib.evaluate.recurrent_mz import recurrent_mz_volume
        from refocuslib.imaging import normalize_deepz
        files = input_files(args.inputs)
        if len(files) == 1:
            images, meta = _read(files[0], (2, 3), "input")
            images = images[None] if images.ndim == 2 else images
        else:
            planes = [_read(f, (2,), "input") for f in files]
            images, meta = np.stack([a for a, _ in planes]), planes[0][1]
        if len(args.z) != images.shape[0]:
            raise CLIError(f"--z: expected one axial position per input image ({images.shape[0]}), got {len(args.z)}")
        task, about, _ = load_task(args.model, ("recurrent_mz",), device=args.device)
        image_px, model_px = args.pixel_um or meta.get("pixel_um"), model_pixel_um(task, about)
        src_px = pixel_plan(image_px, model_px, args.resample, args.force, "input", files[0], meta.get("pixel_note"))
        shape = images.shape[1:]
        if src_px is not None:  # --resample: fuse on the model's pixel grid, come back to the input's
            grid = model_grid(shape, src_px, model_px)
            images = np.stack([resample_image(im, grid) for im in images])
        z_out = (np.asarray(args.z_out, dtype=np.float64) if args.z_out else
                 np.arange(min(args.z), max(args.z) + 1e-9, args.step))
        spec = getattr(task, "spec", None)
        x = images if args.no_normalize else normalize_deepz(images, p_high=getattr(spec, "norm_percentile", 99.9))
        rng = getattr(task, "trained_range_um", None)
        it = _progress(range(len(z_out)), len(z_out), "planes", not args.no_progress)
        out = np.zeros((len(z_out),) + images.shape[1:], np.float32)
        with torch.inference_mode():
            for k in it:
                out[k] = tiled(lambda t: recurrent_mz_volume(task.generator, t, args.z, z_out[k:k + 1],
                                                             trained_range_um=rng), x, args.tile, args.overlap)[0]
        if src_px is not None:
            out = np.stack([resample_image(o, shape) for o in out])
        dst = output_path(files[0], args.output, False, "_volume")
        step = float(np.diff(z_out)[0]) if len(z_out) > 1 and np.allclose(np.diff(z_out), np.diff(z_out)[0]) else None
        msg = write_output(dst, out, image_px or model_px, step, "ZYX",
                           {"volume": {"model": args.model, "inputs": [str(f) for f in files],
                                       "resampled_from_um": src_px,
                                       "z_inputs_um": list(map(float, args.z)),
                                       "z_outputs_um": z_out.tolist(), "about": about,
                                       "units": "Deep-Z normalised (background 0, 99.9th pct of the inputs 1)"}})
        print(f"wrote {msg} ({len(z_out)} planes × {out.shape[1]}×{out.shape[2]})")
        return 0
    return _run_guarded("volume", body)


@subcommand
def _setup_volume(subparsers) -> None:
    p = _model_parser(
        subparsers, "volume", "Recurrent-MZ: M wide-field images with their z positions → a volume TIFF",
        "Recurrent-MZ (Huang et al. 2021): a few axially spaced wide-field images (any order and spacing) are fused "
        "by the recurrent network into a volume at the output planes. Inputs are normalised as in training (Deep-Z "
        "normalisation of the stack: triangle background 0, 99.9th percentile 1); the output is in those units.",
        ["refocuslib volume planes.tif --z -4 0 4 --model rmz_nuclei -o volume.tif",
         "refocuslib volume a.tif b.tif c.tif --z -4 0 4 --z-out -4 -2 0 2 4 --model rmz_nuclei -o v.tif",
         "refocuslib volume planes_folder/ --z -4 0 4 --step 0.5 --model ck.pt -o volume.tif"],
        "one (M, Y, X) TIFF, or M 2D TIFFs, or a folder of them (name order)", "output volume TIFF", "rmz_nuclei",
        _run_volume, normalize_help="the inputs are already normalised")
    p.add_argument("--z", type=float, nargs="+", required=True, metavar="UM", help="z of each input image (µm)")
    p.add_argument("--z-out", type=float, nargs="+", default=None, metavar="UM", help="output planes (µm)")
    p.add_argument("--step", type=float, default=0.5, help="output plane spacing when --z-out is not given (µm)")


# -------------------------------------------------------------------------------------------------- wnet
def _percentile_normalise(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [50.0, 99.9])
    return ((image - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def _run_wnet(args: argparse.Namespace) -> int:
    def body():
        import torch

        from refocuslib import dpm as dpm_lib
        files = input_files(args.inputs)
        batch = len(files) > 1 or Path(args.inputs[0]).is_dir()
        task, about, _ = load_task(args.model, ("wnet",), device=args.device)
        rng = getattr(task, "trained_dpm_range_um", None)
        if rng is not None:
            dpm_lib.check_trained_range(np.asarray(args.dz, dtype=np.float64)[None], rng)
        final = getattr(task, "final_output", lambda o: o)
        dev = next(task.generator.parameters()).device
        for f in _progress(files, len(files), "images", not args.no_progress):
            arr, meta = _read(f, (2, 3), "input")
            image = pick_plane(arr, args.plane, f)
            image_px, model_px = args.pixel_um or meta.get("pixel_um"), model_pixel_um(task, about)
            src_px = pixel_plan(image_px, model_px, args.resample, args.force, f"input {f.name}", f,
                                meta.get("pixel_note"))
            shape = image.shape
            if src_px is not None:  # --resample: run on the model's pixel grid, come back to the input's
                image = resample_image(image, model_grid(shape, src_px, model_px))
            x = image if args.no_normalize else _percentile_normalise(image)

            def run(t):
                img = torch.from_numpy(np.ascontiguousarray(t[0]))[None, None].to(dev)
                outs = []
                with torch.inference_mode():
                    for dz in args.dz:
                        d = torch.from_numpy(dpm_lib.to_network(np.full(t.shape[1:], float(dz), np.float32)))
                        outs.append(final(task.generator(img, d[None, None].to(dev)))[0, 0].float().cpu().numpy())
                return np.stack(outs)

            out = tiled(run, x[None], args.tile, args.overlap)
            if src_px is not None:
                out = np.stack([resample_image(o, shape) for o in out])
            dst = output_path(f, args.output, batch, "_wnet")
            write_output(dst, out if len(args.dz) > 1 else out[0], image_px or model_px, None,
                         "ZYX" if len(args.dz) > 1 else "YX",
                         {"wnet": {"model": args.model, "input": str(f), "plane": args.plane,
                                   "dz_um": list(map(float, args.dz)), "resampled_from_um": src_px, "about": about,
                                   "units": "in-focus confocal bead peak = 1"}})
        print(f"wrote {len(files)} file(s) to {args.output}")
        return 0
    return _run_guarded("wnet", body)


@subcommand
def _setup_wnet(subparsers) -> None:
    p = _model_parser(
        subparsers, "wnet", "W-Net: a double-helix (or wide-field) image → confocal-like planes",
        "W-Net (Yang et al. 2021): the cascade refocuses the input image to each --dz (µm from the input plane) and "
        "translates it to a confocal-like image. The input is normalised by its median (0) and 99.9th percentile "
        "(1) unless --no-normalize; the output is in units of an in-focus confocal bead's peak (≈ 1).",
        ["refocuslib wnet dh.tif --model wnet_dh -o confocal.tif",
         "refocuslib wnet dh.tif --dz -1 0 1 --model wnet_dh -o planes.tif",
         "refocuslib wnet images_folder/ --model wnet_dh -o out_folder/"],
        "2D TIFF(s) or a folder of them", "output TIFF (one input) or folder (several)", "wnet_dh", _run_wnet,
        normalize_help="the input is already normalised")
    p.add_argument("--dz", type=float, nargs="+", default=[0.0], metavar="UM",
                   help="output planes, µm from the input plane (default 0)")
    p.add_argument("--plane", type=int, default=None, metavar="N", help="plane N (from 0) of a (Z, Y, X) input stack")


# ---------------------------------------------------------------------------------------------- localize
def _localize_frame(task, frame: np.ndarray, tile: int, overlap: int, pixel_nm: float, photons: bool) -> dict:
    """Localisations of one frame (dict of columns); frames larger than ``tile`` are cut into overlapping
    tiles and a localisation is kept by the tile whose core (the tile less half the overlap) holds it."""
    h, w = frame.shape
    if h <= tile and w <= tile:
        t = task.localization_table(frame[None], photons=photons)
        return {k: np.asarray(v) for k, v in t.items()}
    from refocuslib.inference import _check_tiling, _starts
    tile, overlap = _check_tiling(tile, overlap)
    cols = {"x_nm": [], "y_nm": [], "z_nm": [], "confidence": []}
    half = overlap / 2.0
    for y0 in _starts(h, tile, tile - overlap):
        for x0 in _starts(w, tile, tile - overlap):
            pts, conf = task.localize(frame[y0:y0 + tile, x0:x0 + tile], return_confidence=True)
            p, c = np.asarray(pts[0]).reshape(-1, 3), np.asarray(conf[0]).reshape(-1)
            xs, ys = p[:, 0] / pixel_nm, p[:, 1] / pixel_nm
            lo_x, hi_x = (0 if x0 == 0 else half), (tile if x0 + tile >= w else tile - half)
            lo_y, hi_y = (0 if y0 == 0 else half), (tile if y0 + tile >= h else tile - half)
            keep = (xs >= lo_x) & (xs < hi_x) & (ys >= lo_y) & (ys < hi_y)
            cols["x_nm"].append(p[keep, 0] + x0 * pixel_nm)
            cols["y_nm"].append(p[keep, 1] + y0 * pixel_nm)
            cols["z_nm"].append(p[keep, 2])
            cols["confidence"].append(c[keep])
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    out["frame"] = np.ones(len(out["x_nm"]), int)
    out["photons"] = np.full(len(out["x_nm"]), np.nan)
    return out


def _run_localize(args: argparse.Namespace) -> int:
    def body():
        if args.resample:
            raise CLIError("--resample: localize does not resample camera frames (resampling changes the noise and "
                           "the PSF's sampling the CNN was trained on); train a model for your camera pixel instead "
                           "(refocuslib calibrate → recipe data.microscope: psf.json → python -m refocuslib.train)")
        files = input_files(args.inputs)
        task, about, _ = load_task(args.model, ("deepstorm3d",), device=args.device)
        model_px = model_pixel_um(task, about)
        frames, metas = [], []
        for f in files:
            a, m = _read(f, (2, 3), "input")
            frames += list(a[None] if a.ndim == 2 else a)
            metas += [m] * (1 if a.ndim == 2 else a.shape[0])
        check_pixel_size(args.pixel_um or metas[0].get("pixel_um"), model_px, args.force, "input")
        pixel_nm = 1000.0 * (model_px or args.pixel_um or 0.11)
        rows = []
        for i in _progress(range(len(frames)), len(frames), "frames", not args.no_progress):
            t = _localize_frame(task, np.asarray(frames[i], np.float32), args.tile, args.overlap, pixel_nm,
                                photons=not args.no_photons)
            n = len(t["x_nm"])
            for r in range(n):
                rows.append((i + 1, t["x_nm"][r], t["y_nm"][r], t["z_nm"][r], t["photons"][r], t["confidence"][r]))
        out = Path(args.output)
        if out.suffix.lower() != ".csv":
            raise CLIError(f"-o/--output: expected a .csv file, got {args.output}")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as fh:
            fh.write(f"# refocuslib localize --model {args.model}; frames from {', '.join(map(str, files))}; "
                     f"x, y from the top-left corner of the frame, z above the coverslip; about: {json.dumps(about)}\n")
            fh.write("frame,x_nm,y_nm,z_nm,photons,confidence\n")
            for r in rows:
                fh.write(f"{r[0]},{r[1]:.1f},{r[2]:.1f},{r[3]:.1f},{r[4]:.1f},{r[5]:.4f}\n")
        print(f"wrote {out}: {len(rows)} localisations in {len(frames)} frame(s)")
        return 0
    return _run_guarded("localize", body)


@subcommand
def _setup_localize(subparsers) -> None:
    p = _model_parser(
        subparsers, "localize", "DeepSTORM3D: camera frames → a 3D localisation table (CSV)",
        "DeepSTORM3D (Nehme et al. 2020): the CNN turns each frame into a 3D occupancy grid whose peaks are the "
        "emitters. Frames are camera counts (ADU), converted with the model's camera (baseline, e⁻/ADU) as in "
        "training. CSV columns: frame (from 1), x_nm, y_nm, z_nm, photons (least-squares fit through the physics "
        "layer; nan for tiled frames or --no-photons), confidence.",
        ["refocuslib localize frames.tif --model ds3d_tetrapod -o locs.csv",
         "refocuslib localize frames_folder/ --model ds3d_tetrapod --tile 128 -o locs.csv"],
        "TIFF frames ((T, Y, X) stacks or 2D), or folders of them", "output CSV", "ds3d_tetrapod", _run_localize)
    p.add_argument("--no-photons", action="store_true", help="skip the photon-count fit (faster)")


# ------------------------------------------------------------------------------------------------ models
#: validation metric of each task: (key in the provenance's best_validation, label)
_VAL_METRIC = {"deepz": ("val_nrmse", "NRMSE"), "deepz_volume": ("val_psnr", "PSNR dB"),
               "recurrent_mz": ("val_psnr", "PSNR dB"), "unet3d": ("val_psnr", "PSNR dB"),
               "wnet": ("val_ji", "JI"), "deepstorm3d": ("jaccard", "JI")}


def shipped_models_table() -> List[dict]:
    """One row per shipped model (``data/checkpoints/*.json`` of a current recipe): name, paper, optics, pixel
    size, trained range, sample, validation metric and CPU-hours, from its provenance JSON."""
    from refocuslib import recipes
    from refocuslib.provenance import repo_root
    rows = []
    for name in recipes.shipped_names():
        rec = recipes.recipe(name)
        js = Path(repo_root()) / "data" / "checkpoints" / f"{recipes.run_name(rec)}.json"
        prov = json.loads(js.read_text()) if js.is_file() else {}
        about = rec.get("about") or {}
        key, label = _VAL_METRIC.get(rec.get("task"), ("val_loss", "val_loss"))
        val = (prov.get("best_validation") or {}).get(key)
        secs = prov.get("train_seconds")
        rows.append({"name": name, "paper": about.get("paper", ""), "optics": about.get("objective", ""),
                     "pixel_um": about.get("pixel_um"), "trained_range_um": about.get("trained_range_um"),
                     "sample": about.get("sample", ""),
                     "validation": f"{label} {val:.3g}" if isinstance(val, (int, float)) else "–",
                     "cpu_hours": round(secs / 3600.0, 2) if isinstance(secs, (int, float)) else None,
                     "shipped": js.is_file(), "file": js.with_suffix(".pt").name})
    return rows


def _run_models(args: argparse.Namespace) -> int:
    def body():
        rows = shipped_models_table()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        cols = [("name", "name"), ("paper", "paper"), ("optics", "optics"), ("pixel_um", "pixel µm"),
                ("trained_range_um", "range µm"), ("validation", "validation"), ("cpu_hours", "CPU-h"),
                ("sample", "sample")]
        cell = (lambda r, k: "–" if r[k] is None else (("" if r["shipped"] else "(not shipped) ") + r[k]
                                                        if k == "name" else str(r[k])))
        widths = [max(len(h), *(len(cell(r, k)) for r in rows)) for k, h in cols[:-1]]
        print("  ".join(h.ljust(w) for (_, h), w in zip(cols[:-1], widths)) + "  sample")
        for r in rows:
            print("  ".join(cell(r, k).ljust(w) for (k, _), w in zip(cols[:-1], widths)) + "  " + cell(r, "sample"))
        print(f"\n{MODEL_NOTE}")
        return 0
    return _run_guarded("models", body)


@subcommand
def _setup_models(subparsers) -> None:
    p = subparsers.add_parser(
        "models", help="list the shipped models (name, paper, optics, pixel, trained range, validation, CPU-hours)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The trained models shipped in data/checkpoints/, one per recipe of refocuslib/recipes.yaml, from "
                    "their provenance JSON. Every apply command (refocus, volume, wnet, localize) takes --model NAME.",
        epilog="examples:\n  refocuslib models\n  refocuslib models --json > models.json")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=_run_models)
