"""The recipe registry, the one train-or-load function and the learning-rate schedule of the training loop."""
import math

import pytest
import torch

from refocuslib import recipes
from refocuslib.train import SHIPPED_DIR, TrainConfig, fit, lr_factor
from tests.test_train import BlurTask


def test_every_recipe_is_valid_and_names_a_registered_task():
    from refocuslib.train import TASKS
    reg = recipes.registry()
    assert "deepz_beads" in reg
    for name in reg:
        rec = recipes.recipe(name)
        assert rec["task"] in TASKS, f"{name}: task {rec['task']!r} is not in refocuslib.train.TASKS"
        TrainConfig(out_dir="x", **rec["train"])  # every train block is a valid TrainConfig
        assert recipes.run_name(rec) == f"{name}-{recipes.digest(rec)}"


def test_digest_depends_on_what_determines_the_weights_only():
    rec = recipes.recipe("deepz_beads")
    assert recipes.digest(recipes.recipe("deepz_beads", {"about": {"cpu_minutes": 1}})) == recipes.digest(rec)
    assert recipes.digest(recipes.recipe("deepz_beads", {"seed": 1})) != recipes.digest(rec)
    assert recipes.digest(recipes.recipe("deepz_beads", {"train": {"steps": 10}})) != recipes.digest(rec)


def test_digest_hashes_a_named_psf_json_by_its_contents(tmp_path):
    psf = tmp_path / "psf.json"
    psf.write_text('{"microscope": {"na": 1.4}}')
    rec = recipes.recipe("deepz_your_microscope", {"params": {"data": {"microscope": str(psf)}}})
    d0 = recipes.digest(rec)
    assert recipes.digest(rec) == d0  # stable
    psf.write_text('{"microscope": {"na": 1.3}}')  # a recalibration in place: never the old model
    assert recipes.digest(rec) != d0
    # a preset name or a dict is hashed as written
    assert recipes.digest(recipes.recipe("deepz_beads")) == recipes.digest(recipes.recipe("deepz_beads"))


def test_unknown_names_and_keys_are_refused_with_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown name 'nope'.*deepz_beads"):
        recipes.recipe("nope")
    with pytest.raises(ValueError, match="unknown keys"):
        recipes.recipe("deepz_beads", {"optimizer": "sgd"})
    with pytest.raises(ValueError, match="not TrainConfig fields"):
        recipes.recipe("deepz_beads", {"train": {"learning_rate": 1.0}})


def test_every_shipped_recipe_has_its_checkpoint_and_provenance():
    """A shipped file is <name>-<digest>.pt for exactly the recipe that produced it, with provenance that names the
    command retraining it and the optics it fits (the retrain profile proves they come from this code)."""
    import json
    for name in recipes.shipped_names():
        rec = recipes.recipe(name)
        path = recipes.shipped_path(rec)
        if not path.exists():
            pytest.skip(f"{path.name} not shipped yet")
        prov = json.loads(path.with_suffix(".json").read_text())
        assert prov["command"].startswith(f"python -m refocuslib.train --recipe {name}")
        assert prov["recipe"]["params"] == rec["params"] and prov["recipe"]["train"] == rec["train"]
        assert prov["about"] and prov["steps"] == rec["train"]["steps"]


def test_lr_schedule_warmup_cosine_step():
    cfg = TrainConfig(steps=100, out_dir="x", schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.01)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    step = TrainConfig(steps=100, out_dir="x", schedule="step")
    assert [lr_factor(s, step) for s in (0, 49, 50, 74, 75, 99)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(steps=10, out_dir="x", schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=10, out_dir="x", warmup_steps=10)


def test_resume_applies_the_recipes_lr_not_the_saved_optimiser_lr(tmp_path):
    """Saved at lr 3e-3, resumed with a recipe of lr 1e-4: the resumed steps run at 1e-4 (the optimiser state's
    stored lr is overwritten every step by the schedule)."""
    fit(BlurTask(), TrainConfig(steps=10, out_dir=str(tmp_path), lr_g=3e-3, val_every=10, progress=False))
    res = fit(BlurTask(), TrainConfig(steps=20, out_dir=str(tmp_path), lr_g=1e-4, val_every=10, log_every=1,
                                      progress=False))
    assert res.resumed_from == 10
    lrs = [h["lr_g"] for h in res.history if h["step"] > 10]
    assert lrs and all(v == pytest.approx(1e-4) for v in lrs)


def test_fit_restores_best_weights(tmp_path):
    task = BlurTask()
    res = fit(task, TrainConfig(steps=40, out_dir=str(tmp_path), lr_g=3e-3, val_every=10, progress=False))
    task.generator.eval()
    with torch.no_grad():
        assert task.validate()["val_loss"] == pytest.approx(res.best_val_loss, rel=1e-5)


def test_train_cached_trains_when_nothing_is_shipped_and_says_so(tmp_path, capsys):
    rec = recipes.recipe("deepz_beads", {"params": {"data": {"field_px": 32, "crop_px": 16, "n_samples": 2,
                                                                 "z_half_range_um": 1.0}, "n_val": 4,
                                                        "n_val_samples": 1, "levels": 2},
                                          "train": {"steps": 4, "warmup_steps": 0, "val_every": 2, "ckpt_every": 2}})
    results_dir = tmp_path / "ci" / "nb"
    task, res = recipes.train_cached(rec, results_dir, progress=False)
    out = capsys.readouterr().out
    assert "no shipped checkpoint for this recipe" in out and not recipes.shipped_path(rec).exists()
    assert res.last_step == 4 and not task.generator.training
    assert (tmp_path / "ci" / "checkpoints" / recipes.run_name(rec) / "best.pt").exists()
    # a second call loads the finished run instead of training
    _, res2 = recipes.train_cached(rec, results_dir, progress=False)
    assert res2.resumed_from == 4
    smoke = recipes.smoke(rec, results_dir, steps=3)
    assert smoke.last_step == 3 and smoke.history


def test_shipped_dir_is_inside_the_repository():
    assert SHIPPED_DIR.parts[-2:] == ("data", "checkpoints")


def test_prefetch_gives_exactly_the_batches_of_a_plain_run(tmp_path):
    """fit's background-thread prefetch builds the same batches (they depend only on seed and step), so the
    trained weights are identical with and without it."""
    from refocuslib.train import weights_digest
    rec = recipes.recipe("deepz_beads", {"params": {"data": {"field_px": 32, "crop_px": 16, "n_samples": 2,
                                                             "z_half_range_um": 1.0}, "n_val": 2,
                                                    "n_val_samples": 1, "levels": 2}})
    digests = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # prefetch runs only when torch leaves a core free
    for prefetch in (False, True):
        task = recipes.build(rec)
        cfg = recipes.train_config(rec, tmp_path / str(prefetch), progress=False, use_shipped=False, steps=5,
                                   warmup_steps=0, val_every=5, ckpt_every=5, restore_best=False, prefetch=prefetch)
        fit(task, cfg)
        digests.append(weights_digest(task.generator))
    torch.set_num_threads(threads)
    assert digests[0] == digests[1]


def test_unknown_task_params_name_the_key():
    """An unknown key in a recipe's params is a ValueError naming it, for every task (not a raw TypeError)."""
    for task in ("deepstorm3d", "deepz"):
        name = next((n for n in recipes.registry() if recipes.recipe(n)["task"] == task), None)
        if name is None:
            continue
        with pytest.raises(ValueError, match="no_such_key"):
            recipes.build(recipes.recipe(name, {"params": {"no_such_key": 1}}))


def test_no_stale_shipped_checkpoints():
    """Every file in data/checkpoints belongs to a current recipe (an older digest would never be loaded)."""
    assert recipes.stale_shipped() == []


def test_every_about_block_has_plain_keys():
    """A comma inside an unquoted YAML flow value silently splits it into extra keys (it did: 'sample: … z = 0, 4,
    8 µm' became keys 4 and '8 µm)'); every ``about`` key must be a plain identifier."""
    import re
    from refocuslib import recipes
    for name, rec in recipes.registry().items():
        for key in (rec.get("about") or {}):
            assert isinstance(key, str) and re.fullmatch(r"[a-z_][a-z0-9_]*", key), (name, key)


def test_models_table_lists_every_shipped_recipe():
    from refocuslib import recipes
    from refocuslib.cli_apply import shipped_models_table
    rows = shipped_models_table()
    assert [r["name"] for r in rows] == recipes.shipped_names()
    for r in rows:
        assert r["paper"] and r["optics"] and r["pixel_um"] and r["sample"]
