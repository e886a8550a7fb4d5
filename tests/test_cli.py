"""The apply commands end to end through the entry point (refocuslib.cli.main) on simulated TIFFs, each with a tiny
randomly initialised model saved as a checkpoint + provenance JSON (so renames in the tasks surface here)."""
import json

import numpy as np
import pytest
import torch

from refocuslib import cli, cli_apply, recipes
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
    for cmd in ("refocus", "calibrate", "volume", "wnet", "localize", "models"):
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and f"refocuslib {cmd}" in out
        if cmd not in ("calibrate", "models"):
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
    # --resample: fused on the model's 0.1 µm grid (20 × 20 → 40 × 40) and brought back to the 0.2 µm input grid
    small = np.stack([cli_apply.resample_image(im, (20, 20)) for im in imgs])
    src3 = rio.write_tiff(tmp_path / "planes3.tif", small, pixel_um=0.2, axes="ZYX")
    assert cli.main(["volume", str(src3), "--z", "-4", "0", "4", "--step", "2", "--model", str(ck), "-o", str(out),
                     "--resample", "--tile", "32", "--overlap", "8", "--no-progress"]) == 0
    vol3, meta3 = rio.read_tiff(out)
    assert vol3.shape == (5, 20, 20) and meta3["pixel_um"] == pytest.approx(0.2)
    assert meta3["metadata"]["volume"]["resampled_from_um"] == pytest.approx(0.2)
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
    # --plane of a stack, --resample from a 0.05 µm grid, and a one-plane PNG
    planes = np.stack([rio.read_tiff(folder / f"im{i}.tif")[0] for i in range(2)])
    rio.write_tiff(tmp_path / "stack.tif", planes, pixel_um=0.1, z_step_um=1.0, axes="ZYX")
    assert cli.main(["wnet", str(tmp_path / "stack.tif"), "--plane", "1", "--model", str(ck), "-o",
                     str(tmp_path / "p1.tif"), "--tile", "32", "--overlap", "8", "--no-progress"]) == 0
    assert np.allclose(rio.read_tiff(tmp_path / "p1.tif")[0], rio.read_tiff(out / "im1_wnet.tif")[0][1], atol=1e-5)
    rio.write_tiff(tmp_path / "fine.tif", cli_apply.resample_image(planes[0], (96, 96)), pixel_um=0.05)
    assert cli.main(["wnet", str(tmp_path / "fine.tif"), "--model", str(ck), "-o", str(tmp_path / "f.tif")]) == 2
    assert cli.main(["wnet", str(tmp_path / "fine.tif"), "--model", str(ck), "--resample", "-o",
                     str(tmp_path / "f.png"), "--no-progress"]) == 0
    from PIL import Image
    assert np.asarray(Image.open(tmp_path / "f.png")).shape == (96, 96)


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


def test_localize_refuses_resample(tmp_path, capsys):
    src = rio.write_tiff(tmp_path / "frames.tif", np.ones((2, 40, 40), np.float32), pixel_um=0.05, axes="ZYX")
    assert cli.main(["localize", str(src), "--model", "ds3d_tetrapod", "--resample", "-o",
                     str(tmp_path / "l.csv")]) == 2
    err = capsys.readouterr().err
    assert "--resample: localize does not resample camera frames" in err and len(err.strip().splitlines()) == 1


def test_unknown_model_is_one_line_error(tmp_path, capsys):
    src = rio.write_tiff(tmp_path / "im.tif", np.zeros((16, 16), np.float32), pixel_um=0.1)
    assert cli.main(["wnet", str(src), "--model", "no_such_model", "-o", str(tmp_path / "o.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a recipe name" in err[0]


def test_models_command_lists_the_shipped_models(capsys):
    import json as _json
    from refocuslib import cli, cli_apply, recipes
    assert cli.main(["models", "--json"]) == 0
    rows = _json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == recipes.shipped_names()
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deepz_beads" in out and "CPU-h" in out and "fits only the microscope" in out


# ------------------------------------------------------------------------------------------------ refocus
@pytest.fixture(scope="module")
def deepz_pt(tmp_path_factory):
    """A tiny Deep-Z checkpoint (0.325 µm pixel, trained range ±1 µm) with its provenance JSON, as shipped."""
    rec = recipes.recipe("deepz_beads", {"params": {"data": {"z_half_range_um": 1.0, "field_px": 32, "crop_px": 32,
                                                             "n_samples": 1}, "width": 0.0625, "levels": 2,
                                                    "n_val": 1, "n_val_samples": 1}})
    task = recipes.build(rec)
    path = tmp_path_factory.mktemp("deepz") / "deepz-tiny.pt"
    save_checkpoint(path, {"generator": task.generator.state_dict(), "extra": task.extra_state(), "step": 0})
    path.with_suffix(".json").write_text(json.dumps({"recipe": rec, "about": rec.get("about", {})}))
    return path


def _blobs(shape, pixel_um, seed=0):
    """Smooth test scene: Gaussian blobs (σ 0.6 µm) at fixed positions in µm, sampled at ``pixel_um``."""
    rng = np.random.default_rng(seed)
    centres_um = rng.uniform(2.0, 0.325 * 64 - 2.0, (12, 2))
    yy, xx = (np.indices(shape) + 0.5) * pixel_um
    img = sum(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.6 ** 2)) for cy, cx in centres_um)
    return (100.0 + 1000.0 * img).astype(np.float32)


def test_refocus_help_lists_units_and_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["refocus", "--help"])
    out = capsys.readouterr().out
    assert "refocuslib refocus" in out and "examples:" in out and "normalised units" in out
    assert "fits only the microscope it was trained for" in out and "--resample" in out and "--plane" in out


def test_refocus_batch_folder_and_plane(tmp_path, deepz_pt):
    from refocuslib.inference import load_model, refocus
    folder = tmp_path / "in"
    folder.mkdir()
    imgs = [_blobs((64, 64), 0.325, seed=s) for s in range(3)]
    for k, im in enumerate(imgs):
        rio.write_tiff(folder / f"im{k}.tif", im, pixel_um=0.325)
    assert cli.main(["refocus", str(folder), "--model", str(deepz_pt), "--dz", "0.5", "-o", str(tmp_path / "out"),
                     "--no-progress"]) == 0
    model = load_model(deepz_pt)
    for k, im in enumerate(imgs):
        out, meta = rio.read_tiff(tmp_path / "out" / f"im{k}_refocus.tif")
        assert meta["pixel_um"] == pytest.approx(0.325) and meta["metadata"]["refocus"]["dz_um"] == 0.5
        assert np.allclose(out, refocus(model, im, 0.5), atol=1e-5)
    # a (Z, Y, X) stack: --plane picks one, no --plane is refused naming it, out of range names the range
    rio.write_tiff(tmp_path / "stack.tif", np.stack(imgs), pixel_um=0.325, z_step_um=1.0, axes="ZYX")
    assert cli.main(["refocus", str(tmp_path / "stack.tif"), "--plane", "2", "--model", str(deepz_pt), "--dz", "0.5",
                     "-o", str(tmp_path / "p2.tif")]) == 0
    assert np.allclose(rio.read_tiff(tmp_path / "p2.tif")[0], refocus(model, imgs[2], 0.5), atol=1e-5)
    for extra, msg in ([[], "--plane N (0 to 2)"], [["--plane", "3"], "--plane: expected 0 to 2"]):
        with _stderr_has(msg) as check:
            check.code = cli.main(["refocus", str(tmp_path / "stack.tif"), *extra, "--model", str(deepz_pt),
                                   "--dz", "0.5", "-o", str(tmp_path / "x.tif")])


class _stderr_has:
    """Context: the command inside returns exit code 2 and prints ``msg`` on stderr."""

    def __init__(self, msg):
        self.msg, self.code = msg, None

    def __enter__(self):
        import contextlib
        import io as _io
        self._buf = _io.StringIO()
        self._redirect = contextlib.redirect_stderr(self._buf)
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)
        assert self.code == 2, self._buf.getvalue()
        assert self.msg in self._buf.getvalue(), self._buf.getvalue()


def test_refocus_resample_matches_the_correctly_sampled_image(tmp_path, deepz_pt):
    """The same scene on a 2× finer grid (0.1625 µm), refocused with --resample, equals the refocused
    model-pixel image brought to the fine grid: relative RMS < 0.06. Without --resample or --force it is refused."""
    from refocuslib.cli_apply import resample_image
    from refocuslib.inference import load_model, refocus
    coarse, fine = _blobs((64, 64), 0.325), _blobs((128, 128), 0.1625)
    rio.write_tiff(tmp_path / "fine.tif", fine, pixel_um=0.1625)
    with _stderr_has("differs from the model's 0.325 µm") as check:
        check.code = cli.main(["refocus", str(tmp_path / "fine.tif"), "--model", str(deepz_pt), "--dz", "0.5",
                               "-o", str(tmp_path / "o.tif")])
    assert cli.main(["refocus", str(tmp_path / "fine.tif"), "--model", str(deepz_pt), "--dz", "0.5", "--resample",
                     "-o", str(tmp_path / "o.tif")]) == 0
    out, meta = rio.read_tiff(tmp_path / "o.tif")
    assert out.shape == fine.shape and meta["pixel_um"] == pytest.approx(0.1625)  # keeps the true calibration
    assert meta["metadata"]["refocus"]["resampled_from_um"] == pytest.approx(0.1625)
    ref = resample_image(refocus(load_model(deepz_pt), coarse, 0.5), fine.shape)
    rel = np.sqrt(np.mean((out - ref) ** 2)) / np.sqrt(np.mean(ref ** 2))
    assert rel < 0.06, rel
    # --force applies it anyway, on the fine grid, and differs from the resampled result
    assert cli.main(["refocus", str(tmp_path / "fine.tif"), "--model", str(deepz_pt), "--dz", "0.5", "--force",
                     "-o", str(tmp_path / "f.tif")]) == 0


def test_refocus_png_round_trip_and_refusals(tmp_path, deepz_pt):
    from PIL import Image

    from refocuslib.inference import load_model, refocus
    im = _blobs((64, 64), 0.325)
    rio.write_tiff(tmp_path / "in.tif", im, pixel_um=0.325)
    assert cli.main(["refocus", str(tmp_path / "in.tif"), "--model", str(deepz_pt), "--dz", "0.5",
                     "-o", str(tmp_path / "o.png")]) == 0
    png = np.asarray(Image.open(tmp_path / "o.png"))
    ref = refocus(load_model(deepz_pt), im, 0.5)
    top = ref.max() if ref.max() > 0 else 1.0  # an untrained model: its output may be all negative
    assert png.dtype == np.uint16 and png.shape == im.shape
    assert np.abs(png.astype(float) - np.clip(ref, 0, None) / top * 65535).max() <= 1.0
    ramp = np.linspace(-0.5, 2.0, 64 * 48).reshape(48, 64)  # the writer itself: max → 65535, negatives → 0
    cli_apply.write_output(tmp_path / "ramp.png", ramp, 0.1, None, "YX", {})
    back = np.asarray(Image.open(tmp_path / "ramp.png")).astype(float)
    assert back.max() == 65535 and back.min() == 0
    assert np.abs(back - np.clip(ramp, 0, None) / 2.0 * 65535).max() <= 0.5
    with _stderr_has("a PNG holds one plane") as check:  # a z-stack is not squeezed into a PNG
        check.code = cli.main(["refocus", str(tmp_path / "in.tif"), "--model", str(deepz_pt), "--dz", "0", "0.5",
                               "-o", str(tmp_path / "s.png")])
    with _stderr_has("expected a .tif/.tiff or .png") as check:  # nor written as a TIFF under another name
        check.code = cli.main(["refocus", str(tmp_path / "in.tif"), "--model", str(deepz_pt), "--dz", "0.5",
                               "-o", str(tmp_path / "o.jpg")])
    assert not (tmp_path / "o.jpg").exists() and not (tmp_path / "s.png").exists()


def test_refocus_refuses_a_model_of_another_task(tmp_path):
    rio.write_tiff(tmp_path / "in.tif", _blobs((64, 64), 0.325), pixel_um=0.325)
    with _stderr_has("is a 'wnet' model; refocus needs a Deep-Z model") as check:
        check.code = cli.main(["refocus", str(tmp_path / "in.tif"), "--model", "wnet_dh", "--dz", "0.5",
                               "-o", str(tmp_path / "o.tif")])


def test_refocus_warnings_print_as_one_line(tmp_path, deepz_pt):
    """Run as a user would (a subprocess): the no-pixel-size warning is one ``warning:`` line, no source line."""
    import subprocess
    import sys

    import tifffile
    tifffile.imwrite(tmp_path / "plain.tif", _blobs((64, 64), 0.325))
    r = subprocess.run([sys.executable, "-m", "refocuslib", "refocus", str(tmp_path / "plain.tif"), "--model",
                        str(deepz_pt), "--dz", "0.5", "-o", str(tmp_path / "o.tif")], capture_output=True, text=True,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "gives no pixel size" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: input plain.tif"), r.stderr
    assert "warnings.warn" not in r.stderr and ".py:" not in r.stderr
