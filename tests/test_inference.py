"""Inference API (refocus, refocus_stack, tiling, trained-range warning, bad input) and the refocus CLI."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from refocuslib import dpm as dpm_lib
from refocuslib import io as rio
from refocuslib.datasets.deepz import DeepZDataConfig, normalize
from refocuslib.inference import load_model, refocus, refocus_stack
from refocuslib.models.deepz import DeepZGenerator
from refocuslib.tasks.deepz import DeepZTask
from refocuslib.train import TrainConfig, fit


class PointwiseNet(nn.Module):
    """A 1×1-conv 'generator' (image, DPM/10) → image: local, so tiling must reproduce it exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 1, 1)

    def forward(self, image, dpm_network):
        return self.conv(torch.cat([image, dpm_network], 1))


def _model(trained=(-5.0, 5.0)):
    torch.manual_seed(0)
    m = DeepZGenerator(0.125, levels=3).eval()
    m.trained_range_um = trained
    return m


@pytest.fixture
def image():
    return np.random.default_rng(0).random((40, 52)).astype(np.float32) * 100 + 50


def test_refocus_shapes_and_uniform_equivalence(image):
    m = _model()
    out = refocus(m, image, 2.0)
    assert out.shape == image.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.allclose(out, refocus(m, image, dpm_lib.uniform(image.shape, 2.0)))
    # the normalised image is what the network sees: normalize=False on the normalised image is the same
    assert np.allclose(out, refocus(m, normalize(image), 2.0, normalize=False))


def test_refocus_stack_is_the_batched_refocus(image):
    m = _model()
    z = [-2.0, -0.5, 0.0, 1.5, 3.0]
    stack = refocus_stack(m, image, z, batch_size=2)
    assert stack.shape == (5,) + image.shape
    for k, dz in enumerate(z):
        assert np.allclose(stack[k], refocus(m, image, dz), atol=1e-5)


def test_tiling_blends_back_exactly_for_a_local_model():
    img = np.random.default_rng(1).random((150, 170)).astype(np.float32)
    d = dpm_lib.plane(img.shape, 0.325, 5.0, 30.0)
    m = PointwiseNet()
    whole = refocus(m, img, d, tile_px=512)
    tiled = refocus(m, img, d, tile_px=64, overlap_px=16)
    assert np.allclose(whole, tiled, atol=1e-5)
    st = refocus_stack(m, img, [0.0, 1.0], tile_px=48, overlap_px=8)
    assert np.allclose(st[1], refocus(m, img, 1.0), atol=1e-5)


def test_tiled_deepz_output_is_close_to_untiled_away_from_seams():
    img = np.random.default_rng(2).random((96, 96)).astype(np.float32)
    m = _model()
    whole = refocus(m, img, 1.0)
    tiled = refocus(m, img, 1.0, tile_px=64, overlap_px=16)
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    assert np.abs(tiled - whole).mean() < 0.2 * np.abs(whole).mean()


def test_trained_range_warning(image):
    m = _model((-5.0, 5.0))
    with pytest.warns(dpm_lib.DPMRangeWarning, match=r"\[-5, 5\]"):
        refocus(m, image, 7.0)
    with pytest.warns(dpm_lib.DPMRangeWarning):
        refocus_stack(m, image, [0.0, -6.0])
    with pytest.warns(dpm_lib.DPMRangeWarning, match=r"\[-1, 1\]"):
        refocus(m, image, 2.0, trained_range_um=(-1.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refocus(m, image, 4.9)
        refocus_stack(m, image, [-5.0, 5.0])


@pytest.mark.parametrize("call,name", [
    (lambda m, im: refocus(m, im[None], 1.0), "image"),
    (lambda m, im: refocus(m, np.full((4, 4), 1.0), 1.0), "image"),
    (lambda m, im: refocus(m, np.where(im > 60, np.nan, im), 1.0), "image"),
    (lambda m, im: refocus(m, im, np.zeros((3, 3))), "dpm_um"),
    (lambda m, im: refocus(m, im, float("nan")), "dpm_um"),
    (lambda m, im: refocus(m, im, "far"), "dpm_um"),
    (lambda m, im: refocus("model", im, 1.0), "model"),
    (lambda m, im: refocus(m, im, 1.0, tile_px=8), "tile_px"),
    (lambda m, im: refocus(m, im, 1.0, tile_px=64, overlap_px=40), "overlap_px"),
    (lambda m, im: refocus_stack(m, im, []), "z_um"),
    (lambda m, im: refocus_stack(m, im, [0.0, np.inf]), "z_um"),
    (lambda m, im: refocus_stack(m, im, [0.0], batch_size=0), "batch_size"),
])
def test_bad_input_names_the_parameter(image, call, name):
    with pytest.raises(ValueError, match=name):
        call(_model(), image)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    data = DeepZDataConfig(z_half_range_um=1.0, z_step_um=0.5, field_px=32, crop_px=32, n_samples=2,
                           n_beads=(3, 5))
    task = DeepZTask(data, width=0.125, levels=3, disc_blocks=2, batch_size=2, n_val_samples=1, n_val=2)
    out = tmp_path_factory.mktemp("ck")
    fit(task, TrainConfig(steps=1, out_dir=str(out), progress=False))
    return out / "last.pt"


def test_load_model_rejects_other_checkpoints(tmp_path):
    from refocuslib.io import save_checkpoint
    save_checkpoint(tmp_path / "x.pt", {"generator": {}, "extra": {}})
    with pytest.raises(ValueError, match="Deep-Z"):
        load_model(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "empty")


def test_cli_refocus_round_trip(tmp_path, checkpoint, image):
    from refocuslib.cli import main
    src = rio.write_tiff(tmp_path / "in.tif", image, pixel_um=0.325)
    model = load_model(checkpoint)

    assert main(["refocus", str(src), "--checkpoint", str(checkpoint), "--dz", "0.5", "-o",
                 str(tmp_path / "out.tif")]) == 0
    out, meta = rio.read_tiff(tmp_path / "out.tif")
    assert out.shape == image.shape and meta["pixel_um"] == pytest.approx(0.325)
    assert meta["metadata"]["refocus"]["dz_um"] == 0.5
    assert meta["metadata"]["refocus"]["trained_range_um"] == [-1.0, 1.0]
    assert np.allclose(out, refocus(model, image, 0.5), atol=1e-6)

    assert main(["refocus", str(src), "--checkpoint", str(checkpoint), "--dz", "-0.5", "0", "0.5", "-o",
                 str(tmp_path / "stack.tif")]) == 0
    st, meta = rio.read_tiff(tmp_path / "stack.tif")
    assert st.shape == (3,) + image.shape and meta["z_step_um"] == pytest.approx(0.5)
    assert np.allclose(st[2], out, atol=1e-5)

    d = dpm_lib.plane(image.shape, 0.325, 2.0, 0.0)
    rio.write_tiff(tmp_path / "dpm.tif", d.astype(np.float32))
    assert main(["refocus", str(src), "--checkpoint", str(checkpoint), "--dpm", str(tmp_path / "dpm.tif"),
                 "-o", str(tmp_path / "surf.tif")]) == 0
    surf, meta = rio.read_tiff(tmp_path / "surf.tif")
    assert np.allclose(surf, refocus(model, image, d.astype(np.float32)), atol=1e-5)
    assert "dpm_range_um" in meta["metadata"]["refocus"]


def test_cli_refocus_reports_bad_input(tmp_path, checkpoint, capsys):
    from refocuslib.cli import main
    rio.write_tiff(tmp_path / "vol.tif", np.zeros((3, 16, 16), np.float32))
    code = main(["refocus", str(tmp_path / "vol.tif"), "--checkpoint", str(checkpoint), "--dz", "1", "-o",
                 str(tmp_path / "o.tif")])
    assert code == 2 and "input" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --dz and --dpm are exclusive, one is required
        main(["refocus", str(tmp_path / "vol.tif"), "--checkpoint", str(checkpoint), "-o", "x.tif"])
