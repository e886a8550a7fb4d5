"""Tests for refocuslib.io: ImageJ TIFF round trips and checksummed atomic checkpoints."""
import hashlib
import os

import numpy as np
import pytest
import tifffile
import torch

from refocuslib.io import (CorruptCheckpointError, load_checkpoint, read_tiff, save_checkpoint,
                           write_tiff)


# ------------------------------------------------------------------------------------------------- TIFF
def test_tiff_round_trip_float32_zyx_with_metadata(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 24, 32)).astype(np.float32)
    extra = {"wavelength_nm": 520, "na": np.float32(0.75), "planes": np.arange(3), "note": "Deep-Z µm"}
    p = write_tiff(tmp_path / "stack.tif", a, pixel_um=0.325, z_step_um=0.5, metadata=extra)
    b, meta = read_tiff(p)
    assert b.dtype == np.float32 and np.array_equal(a, b)
    assert meta["pixel_um"] == 0.325 and meta["z_step_um"] == 0.5 and meta["axes"] == "ZYX"
    assert meta["metadata"] == {"wavelength_nm": 520, "na": 0.75, "planes": [0, 1, 2], "note": "Deep-Z µm"}
    # the file is a genuine ImageJ hyperstack that Fiji calibrates in µm
    with tifffile.TiffFile(p) as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.5)
        num, den = tif.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(1 / 0.325)


@pytest.mark.parametrize("dtype, shape, axes", [(np.uint8, (16, 20), None), (np.uint16, (3, 2, 8, 9), "TZYX"),
                                                (np.float32, (2, 3, 2, 8, 9), "TZCYX"),
                                                (np.uint16, (1, 8, 9), "ZYX"), (np.float32, (2, 8, 9), "CYX")])
def test_tiff_round_trip_dtypes_and_axes(tmp_path, dtype, shape, axes):
    a = (np.arange(np.prod(shape)) % 200).astype(dtype).reshape(shape)
    write_tiff(tmp_path / "x.tif", a, pixel_um=0.1, z_step_um=0.2, axes=axes)
    b, meta = read_tiff(tmp_path / "x.tif")
    assert b.dtype == dtype and b.shape == shape and np.array_equal(a, b)  # singleton Z kept
    assert meta["axes"] == (axes or "YX") and meta["pixel_um"] == 0.1 and meta["metadata"] == {}


def test_tiff_float64_cast_torch_input_and_uncalibrated(tmp_path):
    a = np.linspace(0, 1, 64).reshape(8, 8)
    write_tiff(tmp_path / "f.tif", a)
    b, meta = read_tiff(tmp_path / "f.tif")
    assert b.dtype == np.float32 and np.allclose(a, b)
    assert meta["pixel_um"] is None and meta["z_step_um"] is None
    write_tiff(tmp_path / "t.tif", torch.ones(2, 4, 4))
    assert read_tiff(tmp_path / "t.tif")[0].shape == (2, 4, 4)


def test_read_plain_tiff(tmp_path):
    a = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    tifffile.imwrite(tmp_path / "plain.tif", a, photometric="minisblack")
    b, meta = read_tiff(tmp_path / "plain.tif")
    assert np.array_equal(a, b)
    assert meta == {"pixel_um": None, "z_step_um": None, "axes": None, "metadata": {}}


@pytest.mark.parametrize("array, kwargs, match", [
    (np.array([[1.0, np.nan]], np.float32), {}, "array"),
    (np.array([[1.0, np.inf]]), {}, "array"),
    (np.ones((4, 4), np.int32), {}, "float32, uint8, uint16"),
    (np.ones((4, 4), np.complex64), {}, "float32, uint8, uint16"),
    (np.ones((4, 4), bool), {}, "float32, uint8, uint16"),
    (np.ones((2, 2, 2, 2, 2, 2), np.float32), {}, "array"),
    (np.ones(4, np.float32), {}, "array"),
    (np.ones((4, 4), np.float32), {"pixel_um": -0.1}, "pixel_um"),
    (np.ones((4, 4), np.float32), {"z_step_um": 0}, "z_step_um"),
    (np.ones((3, 4, 4), np.float32), {"axes": "YXZ"}, "axes"),
    (np.ones((3, 4, 4), np.float32), {"axes": "YX"}, "axes"),
    (np.ones((4, 4), np.float32), {"metadata": {"f": object()}}, "metadata"),
])
def test_write_tiff_rejects_bad_input(tmp_path, array, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_tiff(tmp_path / "bad.tif", array, **kwargs)
    assert not (tmp_path / "bad.tif").exists()


# ------------------------------------------------------------------------------------------- checkpoints
def _obj():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    return {"model": net.state_dict(), "config": {"lr": 1e-4, "name": "deepz"}, "epoch": 7,
            "losses": np.array([1.0, 0.5])}


def test_checkpoint_round_trip_and_sidecar(tmp_path):
    p = tmp_path / "ckpt.pt"
    obj = _obj()
    save_checkpoint(p, obj)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    assert (tmp_path / "ckpt.pt.sha256").read_text() == f"{digest}  ckpt.pt\n"
    back = load_checkpoint(p)
    assert back["epoch"] == 7 and back["config"] == obj["config"]
    assert np.array_equal(back["losses"], obj["losses"])
    for k, v in obj["model"].items():
        assert torch.equal(back["model"][k], v)
    save_checkpoint(p, {"epoch": 8})  # overwrite in place
    assert load_checkpoint(p) == {"epoch": 8}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "ckpt.pt.sha256"]  # no temp files left behind


def test_flipped_byte_raises_corrupt(tmp_path):
    p = tmp_path / "ckpt.pt"
    save_checkpoint(p, _obj())
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="ckpt.pt"):
        load_checkpoint(p)
    assert issubclass(CorruptCheckpointError, ValueError)


def test_truncated_file_raises_corrupt_with_and_without_sidecar(tmp_path):
    p = tmp_path / "ckpt.pt"
    save_checkpoint(p, _obj())
    p.write_bytes(p.read_bytes()[: os.path.getsize(p) // 2])
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        load_checkpoint(p)
    os.remove(str(p) + ".sha256")
    with pytest.raises(CorruptCheckpointError, match="ckpt.pt"):
        load_checkpoint(p, trust_unverified=True)
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(p)


def test_unverified_checkpoint_uses_weights_only(tmp_path):
    p = tmp_path / "foreign.pt"
    torch.save({"w": torch.arange(3)}, p)  # tensors only: safe loader suffices
    assert torch.equal(load_checkpoint(p)["w"], torch.arange(3))
    torch.save({"arr": np.arange(3)}, p)  # arbitrary pickle without checksum is refused by default
    with pytest.raises(ValueError, match="trust_unverified"):
        load_checkpoint(p)
    assert np.array_equal(load_checkpoint(p, trust_unverified=True)["arr"], np.arange(3))


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    p = tmp_path / "ckpt.pt"
    save_checkpoint(p, {"epoch": 1})
    with pytest.raises(Exception):
        save_checkpoint(p, {"fn": lambda x: x})  # lambdas cannot be pickled
    assert load_checkpoint(p) == {"epoch": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "ckpt.pt.sha256"]
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_errors_are_not_reported_as_corruption(tmp_path):
    p = tmp_path / "ckpt.pt"
    save_checkpoint(p, {"w": torch.ones(2)})
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(p, map_location="cuda")
    assert not isinstance(info.value, CorruptCheckpointError)
