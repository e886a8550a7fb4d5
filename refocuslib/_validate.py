"""Input checks shared by the whole library.

Every public function validates what it is given and raises ``ValueError`` naming the parameter and the
accepted range, so that bad input never turns into a silently wrong answer.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

_FLOAT_KINDS = "fiu"  # float, signed int, unsigned int


def as_image_array(x, name: str, ndim: int | Iterable[int] | None = None, finite: bool = True,
                   kinds: str = _FLOAT_KINDS) -> np.ndarray:
    """Return ``x`` as a NumPy array after checking dimensionality, dtype kind and finiteness.

    ``ndim`` is an int or a collection of allowed ints. Raises ``ValueError`` naming ``name``.
    """
    try:
        import torch  # local: keep numpy-only callers light
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(x)
    if arr.dtype.kind not in kinds:
        raise ValueError(f"{name}: unsupported dtype {arr.dtype}; expected a real numeric array "
                         f"(dtype kinds {sorted(kinds)})")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(f"{name}: expected a {' or '.join(f'{d}D' for d in allowed)} array, "
                             f"got shape {arr.shape} ({arr.ndim}D)")
    if arr.size == 0:
        raise ValueError(f"{name}: array is empty (shape {arr.shape})")
    if finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf values")
    return arr


def positive(value, name: str, allow_zero: bool = False) -> float:
    """Check a finite positive scalar (µm, photons, ...) and return it as float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        rng = "[0, inf)" if allow_zero else "(0, inf)"
        raise ValueError(f"{name}: must be finite and in {rng}, got {value!r}")
    return v


def in_range(value, name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> float:
    """Check ``lo <= value <= hi`` (open ends optional) and return float(value)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    bad = (not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{name}: must be in {left}{lo}, {hi}{right}, got {value!r}")
    return v


def positive_int(value, name: str, minimum: int = 1) -> int:
    """Check an integer ``>= minimum`` and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def available_devices() -> list:
    """Torch device names usable on this machine: ``cpu``, then ``cuda:0`` … and ``mps`` where present."""
    import torch
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(device, name: str = "device") -> str:
    """Return ``device`` (a string or ``torch.device``) as a string if it exists here, else raise ``ValueError``
    naming the devices that do (and saying when torch is a CPU-only build)."""
    import torch
    have = available_devices()
    listing = f"available here: {', '.join(have)}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: {device!r} is not a torch device name (e.g. 'cpu', 'cuda', 'cuda:1'); "
                         f"{listing}") from None
    if dev.type == "cpu":
        return str(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"this torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
                   else "torch finds no CUDA GPU (driver or CUDA_VISIBLE_DEVICES?)")
            raise ValueError(f"{name}: {device!r} needs a CUDA GPU, but {why}; {listing}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {device!r} does not exist ({torch.cuda.device_count()} CUDA GPU(s)); "
                             f"{listing}")
        return str(device)
    if dev.type == "mps" and "mps" in have:
        return str(device)
    raise ValueError(f"{name}: {device!r} is not available on this machine; {listing}")
