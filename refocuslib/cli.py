"""The ``refocuslib`` command line (also ``python -m refocuslib``).

Subcommands live in a registry so that each concern adds its own without touching :func:`main`::

    @subcommand
    def _setup_mycommand(subparsers):
        p = subparsers.add_parser("mycommand", help="...")
        p.add_argument(...)
        p.set_defaults(func=_run_mycommand)      # func(args) -> exit code (int)

A setup function receives the ``argparse`` subparsers object, adds one parser and sets ``func``. Register it
with the :func:`subcommand` decorator in this module (or call ``register_subcommand`` from another module that
this one imports). ``refocus`` (``refocuslib refocus in.tif --checkpoint ck.pt --dz 2.5 | --dpm dpm.tif -o out.tif``)
is added here the same way as ``reproduce``.
"""
from __future__ import annotations

import argparse
from typing import Callable, List, Optional, Sequence

from refocuslib import __version__

__all__ = ["SUBCOMMANDS", "subcommand", "register_subcommand", "build_parser", "main"]

SetupFn = Callable[["argparse._SubParsersAction"], None]

#: Setup functions of the subcommands, in the order they appear in ``--help``.
SUBCOMMANDS: List[SetupFn] = []


def register_subcommand(setup: SetupFn) -> SetupFn:
    """Add a subcommand setup function to :data:`SUBCOMMANDS` (idempotent); returns it unchanged."""
    if setup not in SUBCOMMANDS:
        SUBCOMMANDS.append(setup)
    return setup


subcommand = register_subcommand  # decorator spelling


# ------------------------------------------------------------------------------------------- reproduce
def _run_reproduce(args: argparse.Namespace) -> int:
    from refocuslib import reproduce  # imported lazily: papermill/nbconvert are slow to import
    return reproduce.run_from_args(args)


@subcommand
def _setup_reproduce(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce", help="run the notebooks of a profile and write results/<profile>/report.html",
        description="Execute notebooks/NN_*.py with papermill using notebooks/params/<profile>.yaml; write the "
                    "executed notebooks, code-free HTML, summary.json and report.html under results/<profile>/. "
                    "Exit code 1 if any notebook failed.")
    from refocuslib.reproduce import add_arguments
    add_arguments(p)
    p.set_defaults(func=_run_reproduce)


# Hook for further subcommands (e.g. ``refocus``): define ``_setup_<name>(subparsers)`` decorated with
# ``@subcommand`` below this line, setting ``func`` with ``p.set_defaults(func=...)``.


# --------------------------------------------------------------------------------------------- refocus
def _run_refocus(args: argparse.Namespace) -> int:
    import sys
    import warnings

    import numpy as np

    from refocuslib import io as rio
    from refocuslib.inference import load_model, refocus, refocus_stack

    try:
        image, meta = rio.read_tiff(args.input)
        image = np.squeeze(np.asarray(image))
        if image.ndim != 2:
            raise ValueError(f"input: expected a single 2D image, got shape {image.shape}")
        from refocuslib._validate import check_device
        model = load_model(args.checkpoint, device=check_device(args.device, "--device"))
        pixel_um = meta.get("pixel_um") or getattr(model, "pixel_um", None)
        if meta.get("pixel_um") is None:
            warnings.warn(f"input: {args.input} gives no pixel size ({meta.get('pixel_note', 'none found')}); "
                          f"assuming the model's training pixel "
                          f"{'(unknown)' if pixel_um is None else f'{pixel_um:.4g} µm'}")
        trained_px = getattr(model, "pixel_um", None)
        if meta.get("pixel_um") and trained_px and abs(meta["pixel_um"] / trained_px - 1) > 0.05:
            warnings.warn(f"input: pixel size {meta['pixel_um']:.4g} µm differs from the model's training pixel "
                          f"{trained_px:.4g} µm; refocusing distances will not scale correctly")
        common = dict(normalize=not args.no_normalize, tile_px=args.tile, overlap_px=args.overlap)
        info = {"checkpoint": str(args.checkpoint), "input": str(args.input),
                "trained_range_um": list(getattr(model, "trained_range_um", []) or []),
                "normalized": not args.no_normalize, "model": getattr(model, "model_info", {}).get("model")}
        z_step = None
        if args.dpm is not None:
            dpm_um, _ = rio.read_tiff(args.dpm)
            dpm_um = np.squeeze(np.asarray(dpm_um, dtype=np.float64))
            out = refocus(model, image, dpm_um, **common)
            info["dpm"] = str(args.dpm)
            info["dpm_range_um"] = [float(dpm_um.min()), float(dpm_um.max())]
            axes = "YX"
        elif len(args.dz) == 1:
            out = refocus(model, image, args.dz[0], **common)
            info["dz_um"] = float(args.dz[0])
            axes = "YX"
        else:
            out = refocus_stack(model, image, args.dz, batch_size=args.batch_size, **common)
            info["dz_um"] = [float(v) for v in args.dz]
            steps = np.diff(args.dz)
            z_step = float(abs(steps[0])) if len(steps) and np.allclose(steps, steps[0]) and steps[0] != 0 else None
            axes = "ZYX"
        rio.write_tiff(args.output, np.asarray(out, dtype=np.float32), pixel_um=pixel_um, z_step_um=z_step,
                       axes=axes, metadata={"refocus": info})
    except (ValueError, FileNotFoundError) as e:
        print(f"refocuslib refocus: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({'×'.join(map(str, np.shape(out)))}, {axes})")
    return 0


@subcommand
def _setup_refocus(subparsers) -> None:
    p = subparsers.add_parser(
        "refocus", help="refocus a 2D TIFF with a trained Deep-Z checkpoint (uniform --dz or a --dpm map)",
        description="Virtual refocusing (Deep-Z, Wu et al. 2019): the input image plus a digital propagation "
                    "matrix go through the generator stored in --checkpoint. One --dz gives one image, several "
                    "give a virtual z-stack; --dpm takes an (H, W) TIFF of distances in µm. Writes a float32 "
                    "ImageJ TIFF whose metadata records the checkpoint, the DPM and the trained range.")
    p.add_argument("input", help="input image (2D TIFF)")
    p.add_argument("--checkpoint", required=True, help="Deep-Z checkpoint (.pt) or training folder")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--dz", type=float, nargs="+", metavar="UM", help="uniform DPM(s): distance(s) in µm")
    group.add_argument("--dpm", help="non-uniform DPM: a 2D TIFF of distances in µm, same shape as the input")
    p.add_argument("-o", "--output", required=True, help="output TIFF")
    p.add_argument("--batch-size", type=int, default=8, help="planes per forward pass (several --dz)")
    p.add_argument("--tile", type=int, default=1024, help="tile size in pixels for large images (lower it for paper-width models on small memory)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-normalize", action="store_true",
                   help="the input is already normalised (skip the Deep-Z background/percentile normalisation)")
    p.set_defaults(func=_run_refocus)


def _run_ship(args: argparse.Namespace) -> int:
    from pathlib import Path
    from refocuslib.train import SHIPPED_DIR, ship_checkpoint
    root = Path(args.checkpoints)
    runs = sorted(d for d in root.iterdir() if (d / "last.pt").exists()) if root.is_dir() else []
    if args.only:
        runs = [d for d in runs if any(d.name.startswith(n) for n in args.only)]
    if not runs:
        print(f"checkpoints: no fit() run folders (with last.pt) under {root}"
              + (f" matching {args.only}" if args.only else ""))
        return 2
    for d in runs:
        path = ship_checkpoint(d, args.made_by, dest_dir=args.dest or SHIPPED_DIR)
        print(f"shipped {d.name} → {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


@subcommand
def _setup_ship(subparsers) -> None:
    p = subparsers.add_parser(
        "ship-checkpoints", help="copy trained generators of a results folder to data/checkpoints with provenance",
        description="For every training folder under CHECKPOINTS (results/<profile>/checkpoints) write "
                    "data/checkpoints/<folder>.pt (best-validation generator weights, SHA-256 sidecar) and "
                    "<folder>.json (command, commit, seed, steps, validation metrics). Notebooks with "
                    "use_shipped_checkpoints=True then load them instead of training the same recipe.")
    p.add_argument("checkpoints", help="results/<profile>/checkpoints")
    p.add_argument("--only", nargs="+", metavar="PREFIX", help="only folders whose name starts with one of these")
    p.add_argument("--made-by", required=True, metavar="COMMAND",
                   help="the command that trained them (recorded in the provenance JSON)")
    p.add_argument("--dest", default=None, help="destination folder (default: the repository's data/checkpoints)")
    p.set_defaults(func=_run_ship)


# calibrate, volume (Recurrent-MZ), wnet (W-Net), localize (DeepSTORM3D): registered by their own module
from refocuslib import cli_apply as _cli_apply  # noqa: E402,F401


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="refocuslib",
                                     description="Deep-Z, W-Net, Recurrent-MZ and DeepSTORM3D on a physical "
                                                 "microscope simulator.")
    parser.add_argument("--version", action="version", version=f"refocuslib {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for setup in SUBCOMMANDS:
        setup(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code = func(args)
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
