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
    assert meta == {"pixel_um": None, "z_step_um": None, "axes": None, "metadata": {}, "pixel_source": None,
                    "pixel_note": "the TIFF resolution tag has no unit"}


def test_ome_tiff_pixel_size_with_units(tmp_path):
    a = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    tifffile.imwrite(tmp_path / "um.ome.tif", a, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325, "PhysicalSizeZ": 0.5})
    b, meta = read_tiff(tmp_path / "um.ome.tif")
    assert np.array_equal(a, b) and meta["axes"] == "ZYX" and meta["pixel_source"] == "ome"
    assert meta["pixel_um"] == pytest.approx(0.325) and meta["z_step_um"] == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "nm.ome.tif", a, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 325, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 325,
                               "PhysicalSizeYUnit": "nm"})
    assert read_tiff(tmp_path / "nm.ome.tif")[1]["pixel_um"] == pytest.approx(0.325)
    tifffile.imwrite(tmp_path / "none.ome.tif", a, ome=True)  # OME without a physical size: the caller is told
    meta = read_tiff(tmp_path / "none.ome.tif")[1]
    assert meta["pixel_um"] is None and "PhysicalSizeX" in meta["pixel_note"]


@pytest.mark.parametrize("unit, res, expected", [("CENTIMETER", 1 / 0.325e-4, 0.325),
                                                 ("MILLIMETER", 1 / 0.325e-3, 0.325), ("MICROMETER", 1 / 0.325, 0.325),
                                                 ("INCH", 300.0, None), ("NONE", 3.0, None)])
def test_plain_tiff_resolution_units(tmp_path, unit, res, expected):
    tifffile.imwrite(tmp_path / "r.tif", np.ones((8, 8), np.uint8), resolution=(res, res), resolutionunit=unit)
    meta = read_tiff(tmp_path / "r.tif")[1]
    if expected is None:  # dots per inch or no unit: no pixel size, and why
        assert meta["pixel_um"] is None and meta["pixel_source"] is None and "resolution" in meta["pixel_note"]
    else:
        assert meta["pixel_um"] == pytest.approx(expected, rel=1e-6) and meta["pixel_source"] == "tiff-resolution"


@pytest.mark.parametrize("kind", ["imagej", "ome", "plain"])
@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.9])
def test_truncated_tiff_names_the_file_and_logs_nothing(tmp_path, kind, fraction, caplog, capfd):
    a = np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32) + 1
    full = tmp_path / "full.tif"
    kwargs = {"imagej": True} if kind == "imagej" else {"ome": True} if kind == "ome" else {"photometric": "minisblack"}
    tifffile.imwrite(full, a, **kwargs)
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="cut.tif.*(truncated|corrupt)"):
        read_tiff(cut)
    out, err = capfd.readouterr()
    assert "tifffile" not in err and "invalid" not in err and not caplog.records


def test_checkpoint_passed_as_tiff_and_missing_tiff(tmp_path):
    save_checkpoint(tmp_path / "ck.pt", {"w": torch.ones(2)})
    with pytest.raises(ValueError, match="ck.pt.*not a TIFF"):
        read_tiff(tmp_path / "ck.pt")
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_tiff(tmp_path / "nope.tif")


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
    with pytest.raises(CorruptCheckpointError, match="ckpt.pt.*truncated"):
        load_checkpoint(p)
    os.remove(str(p) + ".sha256")
    for trust in (False, True):
        with pytest.raises(CorruptCheckpointError, match="ckpt.pt.*truncated"):
            load_checkpoint(p, trust_unverified=trust)
    p.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="empty"):
        load_checkpoint(p, trust_unverified=True)


def _flip_byte_in_tensor_data(path):
    """Flip one byte inside the stored tensor data (so a weights-only load would still succeed)."""
    data = bytearray(path.read_bytes())
    marker = np.arange(64, dtype=np.float32).tobytes()
    i = bytes(data).find(marker)
    assert i > 0
    data[i + 4 * 17] ^= 0x40
    path.write_bytes(bytes(data))


def test_checksum_is_embedded_and_a_deleted_sidecar_still_verifies(tmp_path):
    p = tmp_path / "ckpt.pt"
    save_checkpoint(p, {"w": torch.arange(64, dtype=torch.float32)})
    assert torch.equal(torch.load(p, weights_only=True)["w"], torch.arange(64.0))  # still a plain torch file
    os.remove(str(p) + ".sha256")
    assert torch.equal(load_checkpoint(p)["w"], torch.arange(64.0))  # verified by the embedded checksum
    _flip_byte_in_tensor_data(p)
    for trust in (False, True):  # a checksum that is present is always checked
        with pytest.raises(CorruptCheckpointError, match="ckpt.pt.*stored in the file"):
            load_checkpoint(p, trust_unverified=trust)


def test_unverifiable_checkpoint_is_refused_unless_trusted(tmp_path):
    p = tmp_path / "foreign.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, p)  # no sidecar, no embedded checksum
    with pytest.raises(ValueError, match="foreign.pt.*no checksum.*trust_unverified=True"):
        load_checkpoint(p)
    assert torch.equal(load_checkpoint(p, trust_unverified=True)["w"], torch.arange(64.0))
    torch.save({"arr": np.arange(3)}, p)
    assert np.array_equal(load_checkpoint(p, trust_unverified=True)["arr"], np.arange(3))
    # the case of the issue: an old-style file whose sidecar was deleted, with a flipped byte, is not loaded
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, p)
    _flip_byte_in_tensor_data(p)
    with pytest.raises(ValueError, match="no checksum"):
        load_checkpoint(p)


def test_tiff_or_other_file_passed_as_checkpoint_says_what_it_is(tmp_path):
    write_tiff(tmp_path / "img.tif", np.ones((8, 8), np.float32))
    for trust in (False, True):
        with pytest.raises(CorruptCheckpointError, match="img.tif: is a TIFF image, not a checkpoint"):
            load_checkpoint(tmp_path / "img.tif", trust_unverified=trust)
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(CorruptCheckpointError, match="notes.pt: is not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "notes.pt")


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
