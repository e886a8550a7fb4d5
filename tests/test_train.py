"""The shared training loop: learning, validation/best checkpoint, exact resume, GAN updates, bad input."""
import json

import pytest
import torch
from torch import nn

from refocuslib import losses
from refocuslib.io import CorruptCheckpointError
from refocuslib.models.blocks import PatchDiscriminator, ResUNet2D
from refocuslib.train import TrainConfig, TrainTask, checkpoint_dir, fit, load_generator_weights, settings_digest


class BlurTask(TrainTask):
    """Toy paired task: undo a fixed 3×3 box blur of random sparse spots (a miniature refocusing problem)."""

    def __init__(self, gan: bool = False):
        torch.manual_seed(0)
        self.generator = ResUNet2D(1, 1, [(4, 4), (8, 8)])
        self.discriminator = PatchDiscriminator(1, [4, 8]) if gan else None
        g = torch.Generator().manual_seed(123)
        self.val = self._pairs(8, g)

    @staticmethod
    def _pairs(n, g):
        target = (torch.rand(n, 1, 16, 16, generator=g) > 0.9).float()
        blurred = nn.functional.avg_pool2d(target, 3, stride=1, padding=1)
        return blurred, target

    def make_batch(self, step, generator):
        x, y = self._pairs(4, generator)
        return {"input": x, "target": y}

    def generate(self, batch):
        return self.generator(batch["input"])

    def generator_loss(self, batch, output):
        loss = losses.mae(output, batch["target"])
        if self.discriminator is not None:
            loss = losses.deepz_generator_loss(output, batch["target"], self.discriminator(output))
        return loss, {"mae": losses.mae(output.detach(), batch["target"]).item()}

    def discriminator_loss(self, batch, output):
        return losses.lsgan_discriminator_loss(self.discriminator(batch["target"]),
                                               self.discriminator(output)), {}

    def validate(self):
        x, y = self.val
        return {"val_loss": float(losses.mae(self.generator(x), y))}


def test_training_lowers_validation_loss_and_keeps_best(tmp_path):
    task = BlurTask()
    res = fit(task, TrainConfig(steps=60, out_dir=str(tmp_path), lr_g=3e-3, val_every=20, progress=False))
    vals = [v["val_loss"] for v in res.validation]
    assert vals[0] == pytest.approx(res.validation[0]["val_loss"]) and res.validation[0]["step"] == 0
    assert vals[-1] < 0.7 * vals[0]
    assert res.best_val_loss == min(vals)
    ck = load_generator_weights(ResUNet2D(1, 1, [(4, 4), (8, 8)]), tmp_path / "best.pt")
    assert ck["best_step"] == res.best_step
    assert json.loads((tmp_path / "history.json").read_text())["history"][-1]["step"] == 60


def test_resume_after_interrupt_gives_identical_weights(tmp_path):
    full = BlurTask(gan=True)
    fit(full, TrainConfig(steps=12, out_dir=str(tmp_path / "full"), lr_g=1e-3, ckpt_every=4, val_every=6,
                          progress=False))
    part = BlurTask(gan=True)
    fit(part, TrainConfig(steps=8, out_dir=str(tmp_path / "part"), lr_g=1e-3, ckpt_every=4, val_every=6,
                          progress=False))
    resumed = BlurTask(gan=True)  # fresh process state: weights come back from last.pt
    res = fit(resumed, TrainConfig(steps=12, out_dir=str(tmp_path / "part"), lr_g=1e-3, ckpt_every=4,
                                   val_every=6, progress=False))
    assert res.resumed_from == 8
    for a, b in zip(full.generator.state_dict().values(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.discriminator.state_dict().values(), resumed.discriminator.state_dict().values()):
        assert torch.equal(a, b)


def test_gan_updates_both_networks(tmp_path):
    task = BlurTask(gan=True)
    d0 = [p.detach().clone() for p in task.discriminator.parameters()]
    res = fit(task, TrainConfig(steps=4, out_dir=str(tmp_path), d_every=2, progress=False))
    assert any(not torch.equal(a, b) for a, b in zip(d0, task.discriminator.parameters()))
    assert sum("d_loss" in h for h in res.history) >= 1


def test_corrupt_last_checkpoint_without_a_previous_one_is_refused(tmp_path, capsys):
    fit(BlurTask(), TrainConfig(steps=2, out_dir=str(tmp_path), progress=False))
    data = bytearray((tmp_path / "last.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "last.pt").write_bytes(bytes(data))
    capsys.readouterr()
    with pytest.raises(CorruptCheckpointError, match="no good checkpoint to resume from"):
        fit(BlurTask(), TrainConfig(steps=4, out_dir=str(tmp_path), progress=False))
    out = capsys.readouterr().out
    assert "skipping the corrupt checkpoint last.pt" in out and "SHA-256 mismatch" in out


def _weights(task):
    return [v.clone() for v in task.generator.state_dict().values()]


def test_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    cfg = dict(lr_g=1e-3, ckpt_every=4, val_every=4, progress=False, restore_best=False)
    full = BlurTask()
    fit(full, TrainConfig(steps=12, out_dir=str(tmp_path / "full"), **cfg))
    part = tmp_path / "part"
    fit(BlurTask(), TrainConfig(steps=8, out_dir=str(part), **cfg))
    assert (part / "previous.pt").exists() and (part / "previous.pt.sha256").exists()  # the last two are kept
    last = part / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # e.g. a full disk
    capsys.readouterr()
    resumed = BlurTask()
    res = fit(resumed, TrainConfig(steps=12, out_dir=str(part), **cfg))
    out = capsys.readouterr().out
    assert "skipping the corrupt checkpoint last.pt" in out and "truncated" in out
    assert "resuming from step 4 of 12 (previous.pt)" in out
    assert res.resumed_from == 4
    for a, b in zip(_weights(full), _weights(resumed)):  # the exact continuation from the step-4 checkpoint
        assert torch.equal(a, b)


def test_resume_prints_one_line_with_progress_off(tmp_path, capsys):
    fit(BlurTask(), TrainConfig(steps=4, out_dir=str(tmp_path), progress=False))
    capsys.readouterr()
    fit(BlurTask(), TrainConfig(steps=6, out_dir=str(tmp_path), progress=False))
    captured = capsys.readouterr()
    lines = [ln for ln in (captured.out + captured.err).splitlines() if "resuming" in ln]
    assert lines == [f"{tmp_path.name}: resuming from step 4 of 6 (last.pt)"]
    capsys.readouterr()
    fit(BlurTask(), TrainConfig(steps=6, out_dir=str(tmp_path), progress=False))  # finished: nothing to resume
    assert "resuming" not in capsys.readouterr().out


class WideBlurTask(BlurTask):
    """BlurTask with a wider generator, recording its width in the checkpoint's extra state."""

    def __init__(self, width=2):
        super().__init__()
        torch.manual_seed(0)
        self.width = width
        self.generator = ResUNet2D(1, 1, [(4 * width, 4 * width), (8 * width, 8 * width)])

    def extra_state(self):
        return {"model": {"width": self.width}}


def test_resume_into_a_folder_of_another_recipe_names_the_differing_fields(tmp_path):
    fit(WideBlurTask(1), TrainConfig(steps=2, out_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match=r"belongs to another recipe.*model\.width: 1 in the folder, 2 now") as info:
        fit(WideBlurTask(2), TrainConfig(steps=4, out_dir=str(tmp_path), progress=False))
    assert "differ in shape" in str(info.value) and "size mismatch" not in str(info.value)
    with pytest.raises(ValueError, match="task: WideBlurTask in the folder, BlurTask now"):
        fit(BlurTask(), TrainConfig(steps=4, out_dir=str(tmp_path), progress=False))


def test_deepz_resume_with_another_width_names_the_recipe_fields(tmp_path):
    from refocuslib.tasks.deepz import build_task
    spec = {"data": {"z_half_range_um": 1.0, "field_px": 32, "crop_px": 16, "n_samples": 1}, "levels": 2,
            "disc_blocks": 2, "n_val": 1, "n_val_samples": 1, "batch_size": 1, "gan": False}
    fit(build_task({**spec, "width": 0.0625}), TrainConfig(steps=1, out_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match=r"belongs to another recipe.*model\.width: 0\.0625 in the folder, 0\.125 now"):
        fit(build_task({**spec, "width": 0.125}), TrainConfig(steps=2, out_dir=str(tmp_path), progress=False))


@pytest.mark.parametrize("kwargs,name", [(dict(steps=0), "steps"), (dict(lr_g=-1.0), "lr_g"),
                                         (dict(val_every=0), "val_every")])
def test_bad_config_names_the_parameter(tmp_path, kwargs, name):
    args = dict(steps=2, out_dir=str(tmp_path))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        TrainConfig(**args)


def test_checkpoint_dir_is_shared_per_profile_and_tracks_the_settings(tmp_path):
    a = checkpoint_dir(tmp_path / "ci" / "30_wnet_dhpsf", "wnet_dh", {"steps": 10, "lr": 1e-3})
    assert a.parent == (tmp_path / "ci" / "checkpoints").resolve() and a.name.startswith("wnet_dh-")
    assert a == checkpoint_dir(tmp_path / "ci" / "other_notebook", "wnet_dh", {"lr": 1e-3, "steps": 10})
    assert a != checkpoint_dir(tmp_path / "ci" / "30_wnet_dhpsf", "wnet_dh", {"steps": 11, "lr": 1e-3})
    assert settings_digest({"a": 1, "b": 2}) == settings_digest({"b": 2, "a": 1})
    with pytest.raises(ValueError, match="name"):
        checkpoint_dir(tmp_path, "a/b", {})


def test_shipped_checkpoint_replaces_training_of_the_same_recipe(tmp_path, monkeypatch):
    from refocuslib import train
    run = tmp_path / "results" / "checkpoints" / "blur-0123456789"
    trained = BlurTask()
    res = fit(trained, TrainConfig(steps=20, out_dir=str(run), lr_g=3e-3, val_every=10, progress=False))
    shipped = tmp_path / "data" / "checkpoints"
    path = train.ship_checkpoint(run, "pytest toy run", dest_dir=shipped)
    prov = json.loads((shipped / "blur-0123456789.json").read_text())
    assert prov["command"] == "pytest toy run" and prov["steps"] == 20 and prov["best_step"] == res.best_step
    assert prov["sha256"] == (shipped / "blur-0123456789.pt.sha256").read_text().split()[0]
    assert path.stat().st_size < (run / "last.pt").stat().st_size  # no optimiser state
    monkeypatch.setattr(train, "SHIPPED_DIR", shipped)
    fresh_dir = tmp_path / "elsewhere" / "blur-0123456789"
    reader = BlurTask()
    out = fit(reader, TrainConfig(steps=20, out_dir=str(fresh_dir), progress=False, use_shipped=True))
    assert out.resumed_from == 20 and len(out.validation) == len(res.validation)  # loaded, not trained
    best = BlurTask()
    load_generator_weights(best.generator, run / "best.pt")
    for a, b in zip(best.generator.state_dict().values(), reader.generator.state_dict().values()):
        assert torch.equal(a, b)
    # off by default: a fresh folder trains
    again = fit(BlurTask(), TrainConfig(steps=2, out_dir=str(tmp_path / "x" / "blur-0123456789"), progress=False))
    assert again.resumed_from == 0
    # a damaged shipped file is refused, naming it
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="blur-0123456789.pt"):
        fit(BlurTask(), TrainConfig(steps=20, out_dir=str(tmp_path / "y" / "blur-0123456789"), progress=False,
                                    use_shipped=True))
    with pytest.raises(ValueError, match="run_dir"):
        train.ship_checkpoint(tmp_path, "x", dest_dir=shipped)
    with pytest.raises(ValueError, match="enabled"):
        train.use_shipped_checkpoints("yes")


def test_named_tasks_resolve_to_factories():
    from refocuslib.train import TASKS, resolve_task_factory
    task = resolve_task_factory("deepz")(data={"z_half_range_um": 1.0, "field_px": 32, "crop_px": 16,
                                               "n_samples": 2}, width=0.0625, levels=2, disc_blocks=2, n_val=2,
                                         n_val_samples=1)
    assert isinstance(task, TrainTask)
    assert {"deepz", "deepstorm3d"} <= set(TASKS)
    assert callable(resolve_task_factory("deepstorm3d"))
    with pytest.raises(ValueError, match="task"):
        resolve_task_factory("nonexistent")


def test_every_shipped_checkpoint_verifies_and_has_provenance():
    """data/checkpoints: each .pt passes its SHA-256 check, holds generator weights and no optimiser state, and its
    JSON names the command, commit, seed, steps and validation metrics (the README's promise to readers)."""
    from refocuslib import train
    from refocuslib.io import load_checkpoint
    shipped = sorted(train.SHIPPED_DIR.glob("*.pt"))
    if not shipped:
        pytest.skip("no shipped checkpoints in data/checkpoints")
    for path in shipped:
        ck = load_checkpoint(path)
        assert ck["generator"] and ck["opt_g"] is None and ck["shipped"] is True, path.name
        prov = json.loads(path.with_suffix(".json").read_text())
        for key in ("command", "git_commit", "seed", "steps", "best_validation", "sha256"):
            assert prov.get(key) not in (None, ""), (path.name, key)
        assert prov["sha256"] == path.with_name(path.name + ".sha256").read_text().split()[0]
        assert prov["steps"] == ck["step"]
