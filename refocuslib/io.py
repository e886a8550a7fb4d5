"""File I/O: ImageJ-compatible TIFF with physical metadata, and checksummed atomic checkpoints.

TIFF: written as ImageJ hyperstacks (``tifffile.imwrite(..., imagej=True)``) so Fiji shows the right
calibration: lateral resolution in pixels per µm (unit ``'um'``), the z step as ImageJ ``spacing``,
the axes as ImageJ's ``TZCYX`` subset. Extra metadata is stored as JSON in the ImageJ ``Info`` property
so it round-trips through :func:`read_tiff`.

Checkpoints: ``torch.save`` to a temporary file in the destination folder, ``fsync``, ``os.replace``
(atomic on POSIX and Windows), plus a ``sha256sum``-style sidecar ``<path>.sha256`` verified on load.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tifffile

from ._validate import as_image_array, positive

__all__ = ["write_tiff", "read_tiff", "save_checkpoint", "load_checkpoint", "CorruptCheckpointError",
           "SUPPORTED_TIFF_DTYPES"]

#: dtypes ImageJ can open; float64 is converted to float32 on write.
SUPPORTED_TIFF_DTYPES = ("float32", "uint8", "uint16")
_IMAGEJ_ORDER = "TZCYX"
_DEFAULT_AXES = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}
_INFO_KEY = "refocuslib"
# ImageJ unit string -> µm per unit
_UNIT_TO_UM = {"um": 1.0, "µm": 1.0, "\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
               "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "m": 1e6}


# ------------------------------------------------------------------------------------------------- TIFF
def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serialisable")


def _check_axes(axes, ndim: int) -> str:
    if axes is None:
        return _DEFAULT_AXES[ndim]
    if not isinstance(axes, str):
        raise ValueError(f"axes: expected a string such as 'YX', 'ZYX', 'TZYX', got {axes!r}")
    ax = axes.upper()
    it = iter(_IMAGEJ_ORDER)
    in_order = all(c in it for c in ax)  # subsequence test
    if len(ax) != ndim or not ax.endswith("YX") or not in_order:
        raise ValueError(f"axes: expected {ndim} letters, a subsequence of ImageJ's order 'TZCYX' ending in "
                         f"'YX' (e.g. {_DEFAULT_AXES[ndim]!r}), got {axes!r}")
    return ax


def write_tiff(path, array, pixel_um: float | None = None, z_step_um: float | None = None,
               axes: str | None = None, metadata: dict | None = None) -> Path:
    """Write ``array`` as an ImageJ-compatible TIFF with physical calibration and extra metadata.

    ``array``: 2–5D NumPy array or torch tensor, finite, dtype float32, uint8 or uint16 (float64 is cast
    to float32; anything else raises ``ValueError``). ``pixel_um``: lateral pixel size in µm, stored as
    resolution ``1/pixel_um`` px per µm with unit ``'um'``. ``z_step_um``: stored as ImageJ ``spacing``.
    ``axes``: ImageJ axis letters in ``TZCYX`` order, default ``'YX'``, ``'ZYX'``, ``'TZYX'``, ``'TZCYX'``
    by dimensionality. ``metadata``: JSON-serialisable dict (NumPy scalars/arrays become numbers/lists),
    stored as JSON in the ImageJ ``Info`` property. Returns the path written.
    """
    arr = as_image_array(array, "array", ndim=(2, 3, 4, 5), kinds="biufcmMOSUV")
    if arr.dtype == np.float64:
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError("array: float64 values exceed the float32 range (|x| > 3.4e38); ImageJ stores "
                             "float32")
    if arr.dtype.name not in SUPPORTED_TIFF_DTYPES:
        raise ValueError(f"array: unsupported dtype {arr.dtype}; supported dtypes are "
                         f"{', '.join(SUPPORTED_TIFF_DTYPES)} (float64 is converted to float32)")
    ax = _check_axes(axes, arr.ndim)
    px = None if pixel_um is None else positive(pixel_um, "pixel_um")
    dz = None if z_step_um is None else positive(z_step_um, "z_step_um")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata: expected a dict, got {type(metadata).__name__}")
    info = {_INFO_KEY: {"format": 1, "pixel_um": px, "z_step_um": dz, "axes": ax, "shape": list(arr.shape),
                        "metadata": dict(metadata or {})}}
    try:
        info_json = json.dumps(info, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata: must be JSON-serialisable ({e})") from None

    ij_meta = {"axes": ax, "unit": "um", "Info": info_json}
    if dz is not None:
        ij_meta["spacing"] = dz
    kwargs = {}
    if px is not None:
        kwargs["resolution"] = (1.0 / px, 1.0 / px)
    path = Path(path)
    tifffile.imwrite(path, np.ascontiguousarray(arr), imagej=True, metadata=ij_meta, **kwargs)
    return path


def _parse_info(info) -> dict | None:
    if not isinstance(info, str):
        return None
    try:
        d = json.loads(info)
    except ValueError:
        return None
    if isinstance(d, dict) and isinstance(d.get(_INFO_KEY), dict):
        return d[_INFO_KEY]
    return None


def _close(a: float, b: float, rtol: float = 1e-6) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def read_tiff(path):
    """Read a TIFF; return ``(array, meta)``.

    ``meta`` has ``pixel_um``, ``z_step_um``, ``axes`` and ``metadata`` (the dict given to
    :func:`write_tiff`, ``{}`` if none). Calibration comes from the ImageJ tags (resolution, unit,
    spacing), converted to µm; the exact float values stored by :func:`write_tiff` are used when they
    agree with the tags (the TIFF rational resolution is rounded). For plain (non-ImageJ) TIFFs the
    calibration and axes are ``None``. ``meta['info']`` holds a foreign ImageJ ``Info`` string, if any.
    """
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        arr = tif.asarray()
        meta = {"pixel_um": None, "z_step_um": None, "axes": None, "metadata": {}}
        ij = tif.imagej_metadata if tif.is_imagej else None
        if ij is None:
            return arr, meta
        stored = _parse_info(ij.get("Info"))
        if stored is None and ij.get("Info") is not None:
            meta["info"] = ij.get("Info")
        unit = str(ij.get("unit", "")).strip().replace("\\u00B5", "\u00b5").lower()
        scale = _UNIT_TO_UM.get(unit)
        page = tif.pages[0]
        tags = page.tags
        if scale is not None and "XResolution" in tags:
            num, den = tags["XResolution"].value
            if num > 0 and den > 0:
                meta["pixel_um"] = scale * den / num
        if scale is not None and ij.get("spacing") is not None:
            meta["z_step_um"] = scale * float(ij["spacing"])
        meta["axes"] = tif.series[0].axes
    if stored is not None:
        for key in ("pixel_um", "z_step_um"):
            v = stored.get(key)
            if v is None:
                meta[key] = None  # written uncalibrated (the TIFF default resolution is 1)
            elif meta[key] is not None and _close(float(v), meta[key]):
                meta[key] = float(v)
        shape = stored.get("shape")
        if shape is not None and math.prod(shape) == arr.size and tuple(shape) != arr.shape:
            arr = arr.reshape(shape)  # ImageJ drops singleton axes
        if stored.get("axes") and len(stored["axes"]) == arr.ndim:
            meta["axes"] = stored["axes"]
        meta["metadata"] = stored.get("metadata") or {}
    if meta["axes"] is not None and len(meta["axes"]) != arr.ndim:
        meta["axes"] = None
    return arr, meta


# ------------------------------------------------------------------------------------------- checkpoints
class CorruptCheckpointError(ValueError):
    """A checkpoint whose SHA-256 does not match its sidecar, or that cannot be read (e.g. truncated)."""


def _sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def save_checkpoint(path, obj) -> Path:
    """Atomically ``torch.save`` ``obj`` to ``path`` and write its SHA-256 to ``path + '.sha256'``.

    The data goes to a temporary file in the same folder, is ``fsync``-ed and moved into place with
    ``os.replace``, so a crash never leaves a half-written ``path``; the sidecar (``"<hex>  <name>"``,
    ``sha256sum -c`` compatible) is then replaced the same way. Returns the path.
    """
    import torch

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"path: {path!r} is a directory; expected a checkpoint file name")
    h = hashlib.sha256()

    class _HashingWriter:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            h.update(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    _atomic_write(path, lambda f: torch.save(obj, _HashingWriter(f)))
    digest = h.hexdigest()
    line = f"{digest}  {os.path.basename(path)}\n".encode()
    _atomic_write(path + ".sha256", lambda f: f.write(line))
    return Path(path)


def load_checkpoint(path, map_location="cpu", trust_unverified: bool = False):
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its SHA-256 sidecar.

    If ``path + '.sha256'`` exists the file's digest must match it, otherwise
    :class:`CorruptCheckpointError` is raised naming the file; only then is the file unpickled with
    ``torch.load(..., weights_only=False)`` (full pickle, needed for configs and optimiser state: the
    checksum guards integrity, not authenticity, so load only files you trust). Without a sidecar the
    file is loaded with ``weights_only=True`` (tensors, dicts, lists, numbers only) unless
    ``trust_unverified=True``. Unreadable or truncated files raise :class:`CorruptCheckpointError`.
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    sidecar = path + ".sha256"
    verified = False
    if os.path.exists(sidecar):
        try:
            with open(sidecar, "r", encoding="ascii") as f:
                expected = f.read().split()[0].lower()
        except (OSError, UnicodeDecodeError, IndexError):
            raise CorruptCheckpointError(f"{path}: checksum sidecar {sidecar} is unreadable or empty") from None
        actual = _sha256_file(path)
        if actual != expected:
            raise CorruptCheckpointError(f"{path}: SHA-256 mismatch (file {actual[:16]}..., sidecar "
                                         f"{expected[:16]}...); the checkpoint is corrupt or truncated")
        verified = True
    weights_only = not (verified or trust_unverified)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if weights_only and "weights only" in str(e).lower() and "unsupported" in str(e).lower():
            raise ValueError(f"{path}: has no .sha256 sidecar and holds objects beyond tensors/containers; "
                             f"pass trust_unverified=True to unpickle it if you trust its origin") from e
        raise CorruptCheckpointError(f"{path}: cannot be unpickled ({e})") from e
    except (EOFError, zipfile.BadZipFile) as e:
        raise CorruptCheckpointError(f"{path}: unreadable or truncated checkpoint ({type(e).__name__}: "
                                     f"{e})") from e
    except RuntimeError as e:  # torch reports broken zip archives as RuntimeError; other causes propagate
        msg = str(e).lower()
        if any(k in msg for k in ("pytorchstreamreader", "zip archive", "central directory", "eof", "corrupt")):
            raise CorruptCheckpointError(f"{path}: unreadable or truncated checkpoint ({e})") from e
        raise
