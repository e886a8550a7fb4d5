"""The ``refocuslib`` command line (also ``python -m refocuslib``).

Subcommands live in a registry so that each concern adds its own without touching :func:`main`::

    @subcommand
    def _setup_mycommand(subparsers):
        p = subparsers.add_parser("mycommand", help="...")
        p.add_argument(...)
        p.set_defaults(func=_run_mycommand)      # func(args) -> exit code (int)

A setup function receives the ``argparse`` subparsers object, adds one parser and sets ``func``. Register it
with the :func:`subcommand` decorator in this module (or call ``register_subcommand`` from another module that
this one imports). The apply commands (``refocus``, ``calibrate``, ``volume``, ``wnet``, ``localize``, ``models``)
are registered by :mod:`refocuslib.cli_apply`.
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


# refocus (Deep-Z), calibrate, volume (Recurrent-MZ), wnet (W-Net), localize (DeepSTORM3D), models: their own module
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
