"""The ``refocuslib`` command line (also ``python -m refocuslib``).

Subcommands live in a registry so that each concern adds its own without touching :func:`main`::

    @subcommand
    def _setup_mycommand(subparsers):
        p = subparsers.add_parser("mycommand", help="...")
        p.add_argument(...)
        p.set_defaults(func=_run_mycommand)      # func(args) -> exit code (int)

A setup function receives the ``argparse`` subparsers object, adds one parser and sets ``func``. Register it
with the :func:`subcommand` decorator in this module (or call ``register_subcommand`` from another module that
this one imports). Planned: ``refocus`` (``refocuslib refocus in.tif --model … --dpm …``), to be added here the
same way as ``reproduce``.
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
