"""Provenance of every result: library version, git commit, Python/torch/numpy versions, machine, time; and the
JSON conversion of numbers. Imported by :mod:`refocuslib.train` (shipped checkpoints), :mod:`refocuslib.notebook`
(the Recorder) and :mod:`refocuslib.reproduce` (the report) — it imports none of them.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["repo_root", "git_commit", "provenance", "jsonable"]


# ----------------------------------------------------------------------------------------------- provenance
def repo_root() -> Path:
    """The repository holding this package (the parent of the ``refocuslib`` folder)."""
    return Path(__file__).resolve().parent.parent


def git_commit(cwd: Optional[os.PathLike] = None) -> str:
    """``git rev-parse HEAD`` of the repository, or ``'unknown'`` (no git, not a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(cwd or repo_root()), capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def _library_version() -> str:
    try:
        from refocuslib import __version__
        return str(__version__)
    except Exception:  # pragma: no cover - partially installed package
        return "unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def provenance() -> Dict[str, Any]:
    """Library version, git commit, Python/torch/numpy versions, platform and the current time."""
    info: Dict[str, Any] = {
        "library_version": _library_version(),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.node(),
        "time": _now(),
    }
    for mod in ("torch", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = "not installed"
    return info


def _jsonable(value: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths, tuples and sets to plain JSON types (NaN → None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        value = value.detach().cpu().numpy()
    try:
        import numpy as np
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.floating):
            return _jsonable(float(value))
        if isinstance(value, np.ndarray):
            return _jsonable(value.tolist())
    except ImportError:  # pragma: no cover
        pass
    return str(value)



jsonable = _jsonable
