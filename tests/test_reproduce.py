"""reproduce: the Recorder's JSON, the runner on tiny notebooks (one failing), the CLI exit code."""
import json
import textwrap

import numpy as np
import pytest

from refocuslib import cli, notebook, reproduce

pytest.importorskip("papermill")

HEADER = textwrap.dedent('''\
    # ---
    # jupyter:
    #   kernelspec:
    #     display_name: Python 3
    #     language: python
    #     name: python3
    # ---
    ''')


def test_recorder_writes_numbers_claims_figures_and_provenance(tmp_path):
    import matplotlib.pyplot as plt

    rec = notebook.Recorder(tmp_path / "out", profile="ci", seed=3, params={"n": np.int64(4), "a": np.float32(0.5)})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = rec.figure(fig, "line", caption="a line")
    plt.close(fig)
    assert png.is_file() and png.name == "line.png"
    assert rec.number("fwhm_um", np.float32(0.25), "µm") == pytest.approx(0.25)
    rec.number("count", np.int64(7))
    rec.number("nan", float("nan"))
    rec.claim("A beats B", "Fig. 2b", "0.9", np.float64(0.95), np.bool_(True), note="CI scale")
    rec.claim("undecided", "Fig. 3", None, None, None)
    path = rec.save()
    data = json.loads(path.read_text())
    assert data["numbers"]["fwhm_um"] == {"value": pytest.approx(0.25), "unit": "µm"}
    assert data["numbers"]["count"]["value"] == 7 and data["numbers"]["nan"]["value"] is None
    assert data["claims"][0] == {"claim": "A beats B", "paper_figure": "Fig. 2b", "paper_value": "0.9",
                                 "ours": 0.95, "holds": True, "status": "holds", "note": "CI scale"}
    assert data["claims"][1]["holds"] is None
    assert data["figures"] == [{"file": "line.png", "name": "line", "caption": "a line"}]
    prov = data["provenance"]
    assert prov["seed"] == 3 and prov["profile"] == "ci" and prov["params"] == {"n": 4, "a": 0.5}
    for key in ("library_version", "git_commit", "time", "python", "torch"):
        assert prov[key]


def test_recorder_rejects_bad_figure_names(tmp_path):
    rec = notebook.Recorder(tmp_path)
    with pytest.raises(ValueError):
        rec.figure(None, "../escape")


def test_notebook_parameters_merge_order(tmp_path):
    params = {"defaults": {"seed": 1, "device": "cpu", "n": 1}, "01_x": {"n": 5}}
    p = reproduce.notebook_parameters("ci", "01_x", tmp_path / "r", params)
    assert p == {"seed": 1, "device": "cpu", "n": 5, "profile": "ci", "results_dir": str((tmp_path / "r").resolve())}
    assert reproduce.notebook_parameters("ci", "02_y", tmp_path, {})["seed"] == 0


@pytest.fixture
def tiny_project(tmp_path):
    nb_dir = tmp_path / "notebooks"
    (nb_dir / "params").mkdir(parents=True)
    (nb_dir / "01_good.py").write_text(HEADER + textwrap.dedent('''\
        # %% tags=["parameters"]
        profile = "ci"
        results_dir = "results"
        seed = 0
        value = 1.0

        # %%
        import matplotlib.pyplot as plt
        from refocuslib.notebook import Recorder
        rec = Recorder(results_dir, profile=profile, seed=seed, params={"value": value})
        fig, ax = plt.subplots()
        ax.plot([0, value])
        rec.figure(fig, "plot", "a plot")
        rec.number("value", value)
        rec.claim("value is two", "Fig. 1", 2, value, value == 2)
        rec.save()
        '''))
    (nb_dir / "02_bad.py").write_text(HEADER + textwrap.dedent('''\
        # %% tags=["parameters"]
        profile = "ci"
        results_dir = "results"

        # %%
        raise RuntimeError("deliberate failure " + profile)
        '''))
    (nb_dir / "params" / "ci.yaml").write_text("defaults:\n  seed: 5\n01_good:\n  value: 2.0\n02_bad: {}\n")
    return nb_dir


def test_run_notebooks_reports_failure(tiny_project, tmp_path):
    summary = reproduce.run_notebooks("ci", results_root=tmp_path / "res", notebooks_dir=tiny_project, quiet=True)
    by = {r["name"]: r for r in summary["notebooks"]}
    assert list(by) == ["01_good", "02_bad"]
    assert by["01_good"]["status"] == "ok", by["01_good"]["error"]
    assert by["01_good"]["numbers"]["value"]["value"] == 2.0  # yaml section overrides the default
    assert by["01_good"]["claims"][0]["holds"] is True
    assert by["02_bad"]["status"] == "failed"
    assert "deliberate failure ci" in by["02_bad"]["error"]
    assert summary["ok"] is False and summary["n_failed"] == 1
    out = tmp_path / "res" / "ci"
    saved = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in saved["notebooks"]] == ["ok", "failed"]
    prov = json.loads((out / "01_good" / "results.json").read_text())["provenance"]
    assert prov["seed"] == 5 and prov["params"] == {"value": 2.0}
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 1
    assert "deliberate failure" in report and "✓" in report
    assert (out / "02_bad" / "02_bad.html").is_file()  # the failing notebook is still exported
    html = (out / "01_good" / "01_good.html").read_text()
    assert "Recorder(" not in html  # exported without code
    # filter by prefix
    only = reproduce.run_notebooks("ci", names=["01"], results_root=tmp_path / "res2",
                                   notebooks_dir=tiny_project, quiet=True)
    assert [r["name"] for r in only["notebooks"]] == ["01_good"] and only["ok"]


def test_cli_exit_codes(tiny_project, tmp_path, capsys):
    common = ["--profile", "ci", "--results", str(tmp_path / "cli"), "--notebooks", str(tiny_project)]
    assert cli.main(["reproduce", *common, "--only", "02_bad"]) == 1
    assert cli.main(["reproduce", *common, "--only", "01_good"]) == 0
    assert reproduce.main([*common, "--only", "02"]) == 1
    assert cli.main(["reproduce", *common, "--only", "no_such_notebook"]) == 1


def test_cli_without_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "reproduce" in capsys.readouterr().out


def test_cli_registry_accepts_new_subcommands():
    def setup(sub):
        p = sub.add_parser("hello-test")
        p.add_argument("--n", type=int, default=3)
        p.set_defaults(func=lambda args: args.n)

    cli.register_subcommand(setup)
    try:
        assert cli.main(["hello-test", "--n", "4"]) == 4
    finally:
        cli.SUBCOMMANDS.remove(setup)


def test_unknown_profile_names_the_known_ones(tiny_project, tmp_path):
    with pytest.raises(FileNotFoundError, match="ci"):
        reproduce.run_notebooks("nope", results_root=tmp_path, notebooks_dir=tiny_project, quiet=True)


def test_readme_results_table_is_generated_from_the_committed_summaries():
    """The README's paper-versus-ours table equals what the committed run summaries generate (never typed)."""
    from refocuslib import reproduce
    root = reproduce.repo_root()
    text = (root / "README.md").read_text()
    block = text.split(reproduce.README_START, 1)[1].split(reproduce.README_END, 1)[0].strip("\n")
    ci, full = reproduce.load_committed_summary("ci", root), reproduce.load_committed_summary("full", root)
    retrain = reproduce.load_committed_summary("retrain", root)
    if ci is None and full is None and retrain is None:
        assert block == "No run summary committed yet."
    else:
        assert block == reproduce.claims_markdown(ci, full, retrain).strip("\n")


def test_claim_verdicts_counts_and_report_headline(tmp_path):
    """A Verdict records its item count; below its minimum it is "not enough data", never ✓; the report's header
    says how many claims hold and a notebook with a failing claim is not shown as ok."""
    from refocuslib.evaluate import verdict
    rec = notebook.Recorder(tmp_path / "nb", profile="ci")
    rec.claim("holds", "Fig. 1", "x", "y", verdict(True, 50, 20, "50 beads"))
    rec.claim("too few", "Fig. 1", "x", "y", verdict(True, 5, 20, "5 beads"))
    rec.claim("fails", "Fig. 2", "x", "y", verdict(False, 50, 20))
    c = json.loads(rec.save().read_text())["claims"]
    assert [r["status"] for r in c] == ["holds", "not enough data", "fails"]
    assert c[1]["holds"] is None and c[1]["n_items"] == 5 and c[1]["min_items"] == 20
    summary = {"profile": "ci", "notebooks": [{"name": "01_x", "status": "ok", "seconds": 1.0, "claims": c,
                                               "figures": []}]}
    assert reproduce.claim_counts(summary) == {"n_claims": 3, "n_hold": 1, "n_fail": 1, "n_undecided": 1}
    assert reproduce.notebook_state(summary["notebooks"][0]) == "claims-fail"
    html_text = reproduce.write_report(summary, tmp_path / "report.html").read_text()
    assert "1 of 3 claims hold" in html_text and "claims-fail" in html_text
    table = reproduce.claims_markdown(summary, None, None)
    assert "ours (shipped CPU models)" in table and "– (not enough data)" in table
    assert "ci: 1 of 3 claims hold" in table


def test_retrain_profile_inherits_ci_and_trains_from_scratch():
    ci, retrain = reproduce.load_params("ci"), reproduce.load_params("retrain")
    assert retrain["defaults"]["use_shipped_checkpoints"] is False and ci["defaults"]["use_shipped_checkpoints"]
    assert set(retrain) == set(ci)
    assert "retrain" in reproduce.TRAINING_PROFILES


def test_claims_markdown_and_update_readme(tmp_path):
    from refocuslib import reproduce
    summary = {"profile": "ci", "git_commit": "abc", "started": "now", "machine": "x86_64", "torch": "2",
               "seconds": 1.0, "notebooks": [{"name": "01_x", "claims": [
                   {"claim": "A beats B", "paper_figure": "Fig. 1", "paper_value": 2.0, "ours": 1.5, "holds": True}]}]}
    table = reproduce.claims_markdown(summary, None)
    assert "| `01_x` | A beats B | Fig. 1 | 2 | 1.5 | ✓ | not run | – |" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{reproduce.README_START}\nSTALE-ROW\n{reproduce.README_END}\nrest\n")
    assert reproduce.update_readme(readme, table)
    assert "A beats B" in readme.read_text() and "STALE-ROW" not in readme.read_text()
    assert readme.read_text().endswith("rest\n")
    plain = tmp_path / "plain.md"
    plain.write_text("no markers here\n")
    with pytest.raises(ValueError, match="readme_path"):
        reproduce.update_readme(plain, table)


def test_start_notebook_sets_threads_seed_shipped_switch_and_records_params(tmp_path, capsys):
    import torch
    from refocuslib import train
    threads = torch.get_num_threads()
    try:
        rec, device = notebook.start_notebook(tmp_path / "nb", "ci", 7, device="cuda:0", threads=1,
                                               use_shipped_checkpoints=True, width=0.25)
        if not torch.cuda.is_available():
            assert device == "cpu" and "not available" in capsys.readouterr().out
        assert torch.get_num_threads() == 1 and train._USE_SHIPPED is True
        assert rec.params == {"device": device, "threads": 1, "use_shipped_checkpoints": True, "width": 0.25}
        a = torch.rand(3)
        notebook.start_notebook(tmp_path / "nb", "ci", 7, use_shipped_checkpoints=False)
        assert torch.equal(a, torch.rand(3)) and train._USE_SHIPPED is False  # seeded the same way
        with pytest.raises(ValueError, match="threads"):
            notebook.start_notebook(tmp_path / "nb", threads=0)
    finally:
        torch.set_num_threads(threads)
        train.use_shipped_checkpoints(False)


def test_train_all_recipes_trains_from_scratch_where_the_profile_looks(tmp_path):
    """The retrain profile's first step: each recipe trained (never from a shipped file) into
    <profile root>/checkpoints/<name>-<digest>, the folder its notebooks' train_cached then finds finished."""
    from refocuslib import recipes
    tiny = recipes.recipe("deepz_beads", {"params": {"data": {"field_px": 32, "crop_px": 16, "n_samples": 2,
                                                              "z_half_range_um": 1.0}, "n_val": 2,
                                                     "n_val_samples": 1, "levels": 2},
                                          "train": {"steps": 3, "warmup_steps": 0, "val_every": 3, "ckpt_every": 3}})
    rows = reproduce.train_all_recipes(tmp_path / "retrain", names=[tiny], log=lambda *a, **k: None)
    assert rows[0]["recipe"] == "deepz_beads" and rows[0]["steps"] == 3
    assert (tmp_path / "retrain" / "checkpoints" / recipes.run_name(tiny) / "best.pt").exists()
    _, res = recipes.train_cached(tiny, tmp_path / "retrain" / "01_x", progress=False, use_shipped=False)
    assert res.resumed_from == 3  # the notebook loads the finished run instead of training


def test_retrain_rows_of_changed_recipes_say_so():
    from refocuslib import recipes, reproduce
    digest = recipes.digest(recipes.recipe("deepz_beads"))
    claim = {"claim": "A beats B", "paper_figure": "Fig. 1", "paper_value": 2.0, "ours": 1.5, "holds": True}
    nb = lambda name, params: {"name": name, "parameters": params, "claims": [claim]}  # noqa: E731
    retrain = {"profile": "retrain", "trained": [{"recipe": "deepz_beads", "digest": digest},
                                                {"recipe": "deepz_worm", "digest": "0000000000"}],
               "notebooks": [nb("01_x", {"model_recipe": "deepz_beads"}),
                             nb("40_y", {"model_recipe": "deepz_worm", "other": ["deepz_beads", 3]})]}
    assert reproduce.stale_recipes_by_notebook(retrain) == {"40_y": ["deepz_worm"]}
    ci = {"profile": "ci", "notebooks": [nb("01_x", {}), nb("40_y", {})]}
    table = reproduce.claims_markdown(ci, None, retrain)
    assert "| `01_x` | A beats B | Fig. 1 | 2 | 1.5 | ✓ | 1.5 | ✓ |" in table
    assert "1.5 (run of an older recipe of deepz_worm) | ✓" in table
    assert reproduce.stale_recipes_by_notebook(ci) == {}  # not a training profile's summary


def test_notebook_recipes_reads_parameters_and_quoted_defaults():
    """The recipes a retrain --only must train: those in the notebook's profile parameters and those its
    parameters cell names (notebook 60's shipped_recipe is not in ci.yaml)."""
    params = reproduce.load_params("retrain")
    nb_dir = reproduce.default_notebooks_dir()
    recipes_of = lambda stem: reproduce.notebook_recipes(  # noqa: E731
        nb_dir / f"{stem}.py", reproduce.notebook_parameters("retrain", stem, "/tmp/x", params))
    assert recipes_of("60_your_microscope") == ["deepz_flowdec_beads"]  # deepz_your_microscope is not shipped
    assert recipes_of("11_deepstorm3d_psf_learning") == ["ds3d_learned", "ds3d_tetrapod"]
    assert recipes_of("00_simulator_tour") == []


def test_merge_summaries_replaces_the_rerun_notebooks_and_records_each_part():
    claim = lambda ok: {"claim": "A beats B", "ours": 1.0, "holds": ok}  # noqa: E731
    nb = lambda name, ok: {"name": name, "status": "ok", "claims": [claim(ok)]}  # noqa: E731
    old = {"profile": "retrain", "git_commit": "aaaa", "started": "t0", "machine": "m", "torch": "2", "seconds": 100.0,
           "notebooks": [nb("01_x", True), nb("10_y", False), nb("20_z", False)],
           "trained": [{"recipe": "deepz_beads", "digest": "d1"}, {"recipe": "ds3d_tetrapod", "digest": "old"}]}
    part = {"profile": "retrain", "git_commit": "bbbb", "started": "t1", "machine": "m", "torch": "2", "seconds": 10.0,
            "notebooks": [nb("10_y", True)], "trained": [{"recipe": "ds3d_tetrapod", "digest": "new"}]}
    merged = reproduce.merge_summaries(old, part)
    assert [n["name"] for n in merged["notebooks"]] == ["01_x", "10_y", "20_z"]
    assert merged["notebooks"][1]["claims"][0]["holds"] is True
    assert {t["recipe"]: t["digest"] for t in merged["trained"]} == {"deepz_beads": "d1", "ds3d_tetrapod": "new"}
    assert (merged["n_claims"], merged["n_hold"], merged["n_fail"]) == (3, 2, 1)
    assert [(p["git_commit"], p["notebooks"], p["recipes"]) for p in merged["parts"]] == [
        ("aaaa", ["01_x", "20_z"], ["deepz_beads"]), ("bbbb", ["10_y"], ["ds3d_tetrapod"])]
    assert merged["git_commit"] == "bbbb" and merged["seconds"] == 110.0
    assert old["notebooks"][1]["claims"][0]["holds"] is False  # the committed summary is not changed in place
    note = reproduce.claims_markdown(None, None, merged).splitlines()[-1]
    assert "retrain: 2 of 3 claims hold" in note
    assert "commit `aaaa`, t0, m, torch 2, 100.0 s (notebooks 01, 20)" in note and "(notebooks 10)" in note
    twice = reproduce.merge_summaries(merged, dict(part, git_commit="cccc"))  # a rerun of the same part
    assert [p["git_commit"] for p in twice["parts"]] == ["aaaa", "cccc"]
    assert reproduce.merge_summaries(None, part)["parts"][0]["notebooks"] == ["10_y"]
    with pytest.raises(ValueError, match="profile"):
        reproduce.merge_summaries(old, dict(part, profile="ci"))
