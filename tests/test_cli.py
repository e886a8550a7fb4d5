"""The apply commands end to end through the entry point (refocuslib.cli.main) on simulated TIFFs, each with a tiny
randomly initialised model saved as a checkpoint + provenance JSON (so renames in the tasks surface here)."""
import json

import numpy as np
import pytest
import torch

from refocuslib import cli, recipes
from refocuslib import io as rio
from refocuslib.io import save_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _save_model(tmp_path, name, overrides):
    rec = recipes.recipe(name, overrides)
    task = recipes.build(rec)
    path = tmp_path / f"{name}-tiny.pt"
    save_checkpoint(path, {"generator": task.generator.state_dict(), "extra": task.extra_state(), "step": 0})
    path.with_suffix(".json").write_text(json.dumps({"recipe": rec, "about": rec.get("about", {})}))
    return path, task


def test_help_lists_commands_with_examples(capsys):
    for cmd in ("calibrate", "volume", "wnet", "localize"):
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and f"refocuslib {cmd}" in out
        if cmd != "calibrate":
            assert "fits only the microscope it was trained for" in out


def test_calibrate_command(tmp_path):
    from refocuslib.calibrate import ZernikePupil
    from refocuslib.optics import widefield_psf
    z = (np.arange(11) - 5) * 0.2
    psf = widefield_psf(z, 24, 0.1, 1.2, 0.6, 1.33, mask=ZernikePupil({11: 0.5}), dtype=torch.float64).numpy()
    stack = np.random.default_rng(1).poisson(psf * 2e5 + 20).astype(np.float32)
    src = rio.write_tiff(tmp_path / "beads.tif", stack, pixel_um=0.1, z_step_um=0.2, axes="ZYX")
    out = tmp_path / "psf.json"
    code = cli.main(["calibrate", str(src), "--na", "1.2", "--wavelength-um", "0.6", "--n-immersion", "1.33",
                     "--noll", "5-11", "--steps", "25", "--out", str(out)])
    assert code == 0
    d = json.loads(out.read_text())
    assert d["microscope"]["pixel_um"] == pytest.approx(0.1) and d["microscope"]["z_step_um"] == pytest.approx(0.2)
    assert d["pupil"]["coefficients_rad"]["11"] == pytest.approx(0.5, abs=0.1)
    assert out.with_suffix(".png").exists()
    # no pixel size anywhere: a one-line error
    bare = tmp_path / "bare.tif"
    import tifffile
    tifffile.imwrite(bare, stack)
    assert cli.main(["calibrate", str(bare), "--na", "1.2", "--wavelength-um", "0.6", "--n-immersion", "1.33",
                     "--out", str(out)]) == 2


def test_deepz_task_accepts_psf_json(tmp_path):
    from refocuslib.calibrate import ZernikePupil
    from refocuslib.tasks.deepz import build_task
    p = tmp_path / "psf.json"
    p.write_text(json.dumps({"format": "refocuslib.psf/1",
                             "microscope": {"na": 0.8, "wavelength_um": 0.52, "n_immersion": 1.0, "pixel_um": 0.3},
                             "pupil": {"coefficients_rad": {"11": 0.3}}}))
    task = build_task({"data": {"microscope": str(p), "z_half_range_um": 1.0, "field_px": 32, "crop_px": 16,
                                "n_samples": 1}, "width": 0.125, "levels": 2, "gan": False, "n_val": 1,
                       "n_val_samples": 1})
    mic = task.data.microscope
    assert mic.na == 0.8 and isinstance(mic.mask, ZernikePupil)
    assert task.data.input_optics().mask is mic.mask  # the calibrated pupil replaces the default aberration
    with pytest.raises(ValueError, match="data.microscope"):
        build_task({"data": {"microscope": "NOPE"}})


def test_volume_command(tmp_path, capsys):
    over = {"params": {"width": 0.125, "levels": 2, "n_train_volumes": 1, "n_val_volumes": 1, "n_val": 1,
                       "data": {"shape_yx": [32, 32]}}}
    ck, task = _save_model(tmp_path, "rmz_nuclei", over)
    imgs = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    src = rio.write_tiff(tmp_path / "planes.tif", imgs, pixel_um=0.1, axes="ZYX")
    out = tmp_path / "vol.tif"
    code = cli.main(["volume", str(src), "--z", "-4", "0", "4", "--step", "2", "--model", str(ck), "-o", str(out),
                     "--tile", "32", "--overlap", "8", "--no-progress"])
    assert code == 0
    vol, meta = rio.read_tiff(out)
    assert vol.shape == (5, 40, 40) and meta["z_step_um"] == pytest.approx(2.0)
    err = capsys.readouterr().err
    assert "pixel (µm) 0.1" in err and "fits only the microscope" in err
    # the image's pixel differs from the model's: refused unless --force
    src2 = rio.write_tiff(tmp_path / "planes2.tif", imgs, pixel_um=0.2, axes="ZYX")
    args = ["volume", str(src2), "--z", "-4", "0", "4", "--model", str(ck), "-o", str(out), "--no-progress"]
    assert cli.main(args) == 2
    assert "differs from the model" in capsys.readouterr().err
    assert cli.main(args + ["--force"]) == 0
    assert cli.main(["volume", str(src), "--z", "0", "4", "--model", str(ck), "-o", str(out)]) == 2  # one z each


def test_wnet_command_batch(tmp_path):
    over = {"params": {"width": 0.0625, "levels": 2, "n_val": 1, "val_range_um": 0.5,
                       "data": {"psf_px": 33, "crop_px": 32, "dh_range_um": 1.0, "wf_range_um": 1.0,
                                "z_step_um": 0.25}}}
    ck, _ = _save_model(tmp_path, "wnet_dh", over)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        rio.write_tiff(folder / f"im{i}.tif", np.random.default_rng(i).random((48, 48)).astype(np.float32),
                       pixel_um=0.1)
    out = tmp_path / "out"
    code = cli.main(["wnet", str(folder), "--dz", "-0.5", "0", "--model", str(ck), "-o", str(out), "--tile", "32",
                     "--overlap", "8", "--no-progress"])
    assert code == 0
    for i in range(2):
        arr, meta = rio.read_tiff(out / f"im{i}_wnet.tif")
        assert arr.shape == (2, 48, 48) and meta["pixel_um"] == pytest.approx(0.1)
    # a model of another paper is refused by name
    assert cli.main(["wnet", str(folder), "--model", "deepz_beads", "-o", str(out)]) == 2


def test_localize_command(tmp_path):
    over = {"params": {"width": 0.0625, "train_px": 16, "n_val": 1, "patch_px": 33, "fft_px": 68, "dz_nm": 400.0}}
    ck, task = _save_model(tmp_path, "ds3d_tetrapod", over)
    frames = np.random.default_rng(0).poisson(300.0, (2, 40, 40)).astype(np.float32)
    src = rio.write_tiff(tmp_path / "frames.tif", frames, pixel_um=0.11, axes="ZYX")
    out = tmp_path / "locs.csv"
    code = cli.main(["localize", str(src), "--model", str(ck), "-o", str(out), "--tile", "32", "--overlap", "8",
                     "--no-progress", "--no-photons"])
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# refocuslib localize") and lines[1] == "frame,x_nm,y_nm,z_nm,photons,confidence"
    assert cli.main(["localize", str(src), "--model", str(ck), "-o", str(tmp_path / "locs.txt")]) == 2


def test_unknown_model_is_one_line_error(tmp_path, capsys):
    src = rio.write_tiff(tmp_path / "im.tif", np.zeros((16, 16), np.float32), pixel_um=0.1)
    assert cli.main(["wnet", str(src), "--model", "no_such_model", "-o", str(tmp_path / "o.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a recipe name" in err[0]


def test_models_command_lists_the_shipped_models(capsys):
    import json as _json
    from refocuslib import cli, recipes
    assert cli.main(["models", "--json"]) == 0
    rows = _json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == recipes.shipped_names()
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deepz_beads" in out and "CPU-h" in out and "fits only the microscope" in out
