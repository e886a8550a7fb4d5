"""File I/O: ImageJ-compatible TIFF with physical metadata, and checksummed atomic checkpoints.

TIFF: written as ImageJ hyperstacks (``tifffile.imwrite(..., imagej=True)``) so Fiji shows the right
calibration: lateral resolution in pixels per µm (unit ``'um'``), the z step as ImageJ ``spacing``,
the axes as ImageJ's ``TZCYX`` subset. Extra metadata is stored as JSON in the ImageJ ``Info`` property
so it round-trips through :func:`read_tiff`.

Checkpoints: ``torch.save`` to a temporary file in the destination folder, ``fsync``, ``os.replace``
(atomic on POSIX and Windows). The SHA-256 is stored twice: in the file's own zip comment and in a
``sha256sum``-style sidecar ``<path>.sha256``; both are verified on load, and a file with neither is refused
unless the caller trusts it explicitly.
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


#: TIFF ResolutionUnit (tag 296) → µm per unit; INCH is left out on purpose (dots per inch are a print
#: resolution, e.g. the 72 dpi default of many programs, not a microscope's pixel size)
_RESUNIT_TO_UM = {3: 1e4, 4: 1e3, 5: 1.0}  # CENTIMETER, MILLIMETER, MICROMETER
# tifffile log messages that mean the file is damaged (it logs them and goes on with whatever it could read)
_TIFF_DAMAGE = ("invalid", "corrupt", "truncat", "failed to read", "offset", "not enough")


class _LogCapture:
    """Collect the ``tifffile`` logger's records instead of printing them (restored on exit)."""

    def __enter__(self):
        import logging

        class _Handler(logging.Handler):
            def __init__(self):
                super().__init__(logging.WARNING)
                self.records = []

            def emit(self, record):
                self.records.append(record.getMessage())

        self.logger = logging.getLogger("tifffile")
        self.handler = _Handler()
        self.propagate = self.logger.propagate
        self.logger.addHandler(self.handler)
        self.logger.propagate = False
        return self.handler.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.propagate = self.propagate
        return False


def _ome_calibration(xml: str):
    """(pixel_um, z_step_um, note) from the first image's ``Pixels`` element of OME-XML."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        return None, None, f"OME-XML metadata cannot be parsed ({e})"
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None, None, "OME-XML metadata has no Pixels element"

    def size(axis):
        v = pixels.get(f"PhysicalSize{axis}")
        if v is None:
            return None, None
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm").strip().lower()  # OME default unit: µm
        scale = _UNIT_TO_UM.get(unit)
        if scale is None:
            return None, f"OME PhysicalSize{axis}Unit {unit!r} is not a length unit this reader knows"
        try:
            val = float(v) * scale
        except ValueError:
            return None, f"OME PhysicalSize{axis} {v!r} is not a number"
        return (val, None) if math.isfinite(val) and val > 0 else (None, f"OME PhysicalSize{axis} {v!r} <= 0")

    (x, nx), (y, ny), (z, _) = size("X"), size("Y"), size("Z")
    note = nx or ny
    if x is not None and y is not None and not _close(x, y, 1e-3):
        return None, z, f"OME pixels are not square (PhysicalSizeX {x} µm, PhysicalSizeY {y} µm)"
    if x is None and note is None:
        note = "OME-XML metadata has no PhysicalSizeX"
    return x, z, note


def _tiff_calibration(tif):
    """(pixel_um, z_step_um, axes, source, note, imagej metadata or None) of an open ``TiffFile``."""
    page = tif.pages[0]
    tags = page.tags
    ij = tif.imagej_metadata if tif.is_imagej else None
    if ij is not None:
        unit = str(ij.get("unit", "")).strip().replace("\\u00B5", "\u00b5").lower()
        scale = _UNIT_TO_UM.get(unit)
        px = dz = None
        if scale is not None and "XResolution" in tags:
            num, den = tags["XResolution"].value
            if num > 0 and den > 0:
                px = scale * den / num
        if scale is not None and ij.get("spacing") is not None:
            dz = scale * float(ij["spacing"])
        note = None if px is not None else (f"ImageJ unit {unit or '(none)'!r} is not a length unit"
                                            if scale is None else "no XResolution tag")
        return px, dz, tif.series[0].axes, "imagej", note, ij
    if tif.is_ome and tif.ome_metadata:
        px, dz, note = _ome_calibration(tif.ome_metadata)
        return px, dz, tif.series[0].axes, "ome", note, None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
    if "XResolution" not in tags:
        return None, None, None, None, "no resolution tags", None
    num, den = tags["XResolution"].value
    if unit in _RESUNIT_TO_UM and num > 0 and den > 0:
        return _RESUNIT_TO_UM[unit] * den / num, None, None, "tiff-resolution", None, None
    why = {1: "has no unit", 2: "is in dots per inch (a print resolution, not a pixel size)"}.get(
        unit, f"has the unknown unit code {unit}")
    return None, None, None, None, f"the TIFF resolution tag {why}", None


def read_tiff(path):
    """Read a TIFF; return ``(array, meta)``.

    ``meta`` has ``pixel_um``, ``z_step_um``, ``axes``, ``metadata`` (the dict given to :func:`write_tiff`,
    ``{}`` if none) and ``pixel_source``: where the pixel size came from — ``'imagej'`` (ImageJ resolution,
    unit and spacing; the exact floats stored by :func:`write_tiff` are used when they agree with the rounded
    TIFF rationals), ``'ome'`` (OME-XML ``PhysicalSizeX/Y/Z`` with their units), ``'tiff-resolution'`` (a
    plain TIFF's resolution in cm, mm or µm) — or ``None`` when the file gives none; ``meta['pixel_note']``
    then says why (e.g. dots per inch, no tags), so a caller can tell the user instead of guessing.
    ``meta['info']`` holds a foreign ImageJ ``Info`` string, if any. A truncated or corrupt file raises
    ``ValueError`` naming it (tifffile's own log messages are folded into that error, not printed).
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TIFF not found: {path}")
    size = path.stat().st_size
    with _LogCapture() as logged:
        try:
            with tifffile.TiffFile(path) as tif:
                arr = tif.asarray()
                px, dz, axes, source, note, ij = _tiff_calibration(tif)
                ends = [o + c for pg in tif.pages if hasattr(pg, "dataoffsets")
                        for o, c in zip(pg.dataoffsets, pg.databytecounts)]
        except Exception as e:  # tifffile raises many types (TiffFileError, ValueError, struct.error, ...)
            raise ValueError(f"{path}: cannot be read as a TIFF; it is truncated, corrupt or not a TIFF "
                             f"({type(e).__name__}: {e})") from None
    stored = _parse_info(ij.get("Info")) if ij is not None else None
    shape = (stored or {}).get("shape")
    if shape is not None and math.prod(shape) == arr.size and not (ends and max(ends) > size):
        # tifffile writes images one pixel wide as a page of another shape and then doubts its own ImageJ
        # series; the pixels are all there and our stored shape restores them (below)
        logged[:] = [m for m in logged if "imagej series metadata" not in m.lower() and "reshape" not in m.lower()]
    damage = [m for m in logged if any(k in m.lower() for k in _TIFF_DAMAGE)]
    if damage or (ends and max(ends) > size):
        why = damage[0] if damage else f"image data ends at byte {max(ends)}, the file has {size}"
        raise ValueError(f"{path}: truncated or corrupt TIFF ({why})")
    for m in logged:
        warnings.warn(f"{path}: {m}", stacklevel=2)
    meta = {"pixel_um": px, "z_step_um": dz, "axes": axes, "metadata": {}, "pixel_source": source}
    if px is None:
        meta["pixel_note"] = note or "no pixel size in the file"
    if ij is not None:
        if stored is None and ij.get("Info") is not None:
            meta["info"] = ij.get("Info")
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
    if meta["pixel_um"] is None:
        meta["pixel_source"] = None
        meta.setdefault("pixel_note", "written without a pixel size" if stored is not None else
                        "no pixel size in the file")
    return arr, meta


# ------------------------------------------------------------------------------------------- checkpoints
class CorruptCheckpointError(ValueError):
    """A checkpoint whose SHA-256 does not match (its sidecar or the one stored in it), that cannot be read
    (empty, truncated), or a file that is no checkpoint at all (e.g. a TIFF image)."""


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


#: zip-comment marker of the SHA-256 that :func:`save_checkpoint` embeds in the checkpoint file itself
_EMBED_MARK = b"refocuslib-sha256:"
_EOCD_SIG = b"PK\x05\x06"  # zip end-of-central-directory record (22 bytes + comment)
_ZIP_MAGIC = b"PK\x03\x04"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _embed_digest(data: bytes) -> bytes:
    """``data`` (a ``torch.save`` zip archive without comment) with ``refocuslib-sha256:<hex of data>`` as its
    zip comment: the checksum travels inside the file, and ``torch.load``/``zipfile`` still read it."""
    eocd = len(data) - 22
    if eocd < 0 or data[eocd:eocd + 4] != _EOCD_SIG or data[-2:] != b"\x00\x00":
        raise RuntimeError("torch.save did not write a plain zip archive; cannot embed the checksum")
    comment = _EMBED_MARK + hashlib.sha256(data).hexdigest().encode("ascii")
    return data[:-2] + len(comment).to_bytes(2, "little") + comment


def _embedded_digest(data: bytes):
    """(expected, actual) SHA-256 of a file written by :func:`save_checkpoint`, or None when it carries none."""
    n = len(_EMBED_MARK) + 64
    eocd = len(data) - n - 22
    if eocd < 0 or data[eocd:eocd + 4] != _EOCD_SIG or data[-n:-64] != _EMBED_MARK:
        return None
    if int.from_bytes(data[eocd + 20:eocd + 22], "little") != n:
        return None
    expected = data[-64:].decode("ascii", "replace").lower()
    actual = hashlib.sha256(data[:eocd + 20] + b"\x00\x00").hexdigest()
    return expected, actual


def _not_a_checkpoint(path: str, head: bytes):
    """A message when ``head`` (the first bytes of the file) is not a PyTorch checkpoint, else None."""
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":  # torch zip archive / legacy pickle format
        return None
    if not head:
        return f"{path}: is empty (0 bytes), not a checkpoint; it was truncated or never written"
    if head[:4] in _TIFF_MAGICS:
        return (f"{path}: is a TIFF image, not a checkpoint (a .pt file written by refocuslib's training); "
                f"read images with refocuslib.io.read_tiff")
    return (f"{path}: is not a PyTorch checkpoint (it starts with bytes {head[:8]!r}, not a zip archive); "
            f"expected a .pt file written by refocuslib's training")


def save_checkpoint(path, obj) -> Path:
    """Atomically ``torch.save`` ``obj`` to ``path``, with its SHA-256 inside the file and in ``path + '.sha256'``.

    The checksum of the ``torch.save`` archive is stored as the archive's zip comment
    (``refocuslib-sha256:<hex>``; ``torch.load`` reads the file unchanged), so the file verifies even without
    its sidecar. The data goes to a temporary file in the same folder, is ``fsync``-ed and moved into place
    with ``os.replace``, so a crash never leaves a half-written ``path``; the sidecar (``"<hex>  <name>"`` of
    the whole file, ``sha256sum -c`` compatible) is then replaced the same way. Returns the path.
    """
    import io as _io

    import torch

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"path: {path!r} is a directory; expected a checkpoint file name")
    buf = _io.BytesIO()
    torch.save(obj, buf)
    data = _embed_digest(buf.getvalue())
    _atomic_write(path, lambda f: f.write(data))
    line = f"{hashlib.sha256(data).hexdigest()}  {os.path.basename(path)}\n".encode()
    _atomic_write(path + ".sha256", lambda f: f.write(line))
    return Path(path)


def load_checkpoint(path, map_location="cpu", trust_unverified: bool = False):
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its SHA-256 before unpickling it.

    Two checksums are checked when present: the one embedded in the file (its zip comment) and the
    ``path + '.sha256'`` sidecar; any mismatch raises :class:`CorruptCheckpointError` naming the file. A file
    with neither (e.g. a foreign ``torch.save`` file, or an old checkpoint whose sidecar was deleted) cannot
    be verified and is refused with ``ValueError`` unless ``trust_unverified=True``. The verified file is
    unpickled with ``torch.load(..., weights_only=False)`` (full pickle, needed for configs and optimiser
    state: the checksum guards integrity, not authenticity, so load only files you trust). Empty, truncated
    or unreadable files raise :class:`CorruptCheckpointError`, and so do files that are no checkpoint at all
    (a TIFF image, say), with a message saying what the file is.
    """
    import io as _io

    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    what = _not_a_checkpoint(path, data[:8])
    if what is not None:
        raise CorruptCheckpointError(what)
    if data.startswith(_ZIP_MAGIC) and data.rfind(_EOCD_SIG, max(0, len(data) - 65_557)) < 0:
        raise CorruptCheckpointError(f"{path}: truncated checkpoint (its zip archive has no end record; "
                                     f"{len(data)} bytes)")
    sidecar = path + ".sha256"
    verified = False
    if os.path.exists(sidecar):
        try:
            with open(sidecar, "r", encoding="ascii") as f:
                expected = f.read().split()[0].lower()
        except (OSError, UnicodeDecodeError, IndexError):
            raise CorruptCheckpointError(f"{path}: checksum sidecar {sidecar} is unreadable or empty") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise CorruptCheckpointError(f"{path}: SHA-256 mismatch (file {actual[:16]}..., sidecar "
                                         f"{expected[:16]}...); the checkpoint is corrupt or truncated")
        verified = True
    embedded = _embedded_digest(data)
    if embedded is not None:
        expected, actual = embedded
        if actual != expected:
            raise CorruptCheckpointError(f"{path}: SHA-256 mismatch (contents {actual[:16]}..., checksum stored "
                                         f"in the file {expected[:16]}...); the checkpoint is corrupt")
        verified = True
    if not (verified or trust_unverified):
        raise ValueError(f"{path}: has no checksum (no {os.path.basename(sidecar)} sidecar and none stored in the "
                         f"file), so its integrity cannot be verified; pass trust_unverified=True to load it "
                         f"anyway if you trust its origin")
    try:
        return torch.load(_io.BytesIO(data), map_location=map_location, weights_only=False)
    except pickle.UnpicklingError as e:
        raise CorruptCheckpointError(f"{path}: cannot be unpickled ({e})") from e
    except (EOFError, zipfile.BadZipFile) as e:
        raise CorruptCheckpointError(f"{path}: unreadable or truncated checkpoint ({type(e).__name__}: "
                                     f"{e})") from e
    except RuntimeError as e:  # torch reports broken zip archives as RuntimeError; other causes propagate
        msg = str(e).lower()
        if any(k in msg for k in ("pytorchstreamreader", "zip archive", "central directory", "eof", "corrupt")):
            raise CorruptCheckpointError(f"{path}: unreadable or truncated checkpoint ({e})") from e
        raise


def resolve_checkpoint(path) -> Path:
    """A checkpoint file from ``path``: the file itself, or in a training folder its ``best.pt``, else ``last.pt``
    (``FileNotFoundError`` naming the folder when it holds neither)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).exists():
                return p / name
        raise FileNotFoundError(f"checkpoint: no best.pt or last.pt in {path}")
    return p
