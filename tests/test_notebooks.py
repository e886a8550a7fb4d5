"""Notebooks: structure lint (fast) and a CI-scale run of every notebook through the reproduce runner (slow)."""
import ast
import json
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
yaml = pytest.importorskip("yaml")

from refocuslib import reproduce  # noqa: E402

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = reproduce.find_notebooks(NOTEBOOKS_DIR)


def _params(profile):
    return yaml.safe_load((NOTEBOOKS_DIR / "params" / f"{profile}.yaml").read_text()) or {}


def test_notebooks_exist():
    assert NOTEBOOKS, f"no NN_*.py notebooks in {NOTEBOOKS_DIR}"
    assert (NOTEBOOKS_DIR / "jupytext.toml").is_file()


@pytest.mark.parametrize("profile", ["ci", "full"])
def test_params_yaml_schema(profile):
    params = _params(profile)
    assert isinstance(params.get("defaults"), dict), f"{profile}.yaml: needs a 'defaults:' mapping"
    assert "seed" in params["defaults"] and "device" in params["defaults"]
    stems = {p.stem for p in NOTEBOOKS}
    for key, section in params.items():
        assert key == "defaults" or key in stems, f"{profile}.yaml: section {key!r} names no notebook"
        assert isinstance(section, dict), f"{profile}.yaml: section {key!r} must be a mapping"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_lint(path):
    nb = jupytext.read(str(path))
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", \
        f"{path.name}: set kernelspec name python3 in the jupytext YAML header"
    param_cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(param_cells) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
    cell = param_cells[0]
    assert cell.cell_type == "code"
    tree = ast.parse(cell.source)
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert {"profile", "results_dir"} <= assigned, f"{path.name}: parameters cell must define profile, results_dir"
    assert all(isinstance(n, ast.Assign) for n in tree.body), \
        f"{path.name}: the parameters cell holds plain assignments only"
    # papermill must read every parameter (it skips lines it cannot parse, e.g. '=' inside a comment)
    from papermill.translators import PythonTranslator
    inspected = {p.name for p in PythonTranslator.inspect(cell)}
    assert inspected == assigned, f"{path.name}: papermill cannot parse {sorted(assigned - inspected)}"
    # notebooks hold no logic: no function or class definitions
    for c in nb.cells:
        if c.cell_type == "code":
            src = "\n".join(l for l in c.source.splitlines() if not l.lstrip().startswith(("%", "!")))
            for node in ast.walk(ast.parse(src)):
                assert not isinstance(node, (ast.FunctionDef, ast.ClassDef)), \
                    f"{path.name}: define {node.name} in the library, not the notebook"
    for profile in ("ci", "full"):
        assert path.stem in _params(profile), f"params/{profile}.yaml: add a '{path.stem}:' section"


# ------------------------------------------------------------------------------------------ the CI run
MAIN_JOB_RESULTS = Path(__file__).resolve().parent.parent / "results" / "ci"


def reusable_main_job_run(out_dir=MAIN_JOB_RESULTS):
    """The README's main job (``refocuslib reproduce --profile ci``) writes results/ci/; when its summary ran every
    notebook of exactly this source tree (same :func:`refocuslib.reproduce.source_digest`), the tests check that run
    instead of executing every notebook a second time."""
    path = Path(out_dir) / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    complete = {r["name"] for r in summary.get("notebooks", [])} == {p.stem for p in NOTEBOOKS}
    if summary.get("source_digest") == reproduce.source_digest() and complete and not summary.get("requested"):
        return summary
    return None


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    summary = reusable_main_job_run()
    if summary is not None:
        return MAIN_JOB_RESULTS, summary
    root = tmp_path_factory.mktemp("results")
    summary = reproduce.run_notebooks("ci", results_root=root, quiet=True)
    return root / "ci", summary


def test_main_job_reuse_requires_same_source(tmp_path):
    """A summary of another source tree (digest differs) or of a partial run is never reused."""
    names = [{"name": p.stem} for p in NOTEBOOKS]
    (tmp_path / "summary.json").write_text(json.dumps({"source_digest": "0" * 16, "notebooks": names}))
    assert reusable_main_job_run(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({"source_digest": reproduce.source_digest(),
                                                       "notebooks": names[:1]}))
    assert reusable_main_job_run(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({"source_digest": reproduce.source_digest(),
                                                       "notebooks": names}))
    assert reusable_main_job_run(tmp_path) is not None


@pytest.mark.notebooks
@pytest.mark.slow
def test_all_notebooks_run_at_ci_scale(ci_run):
    out, summary = ci_run
    failed = {r["name"]: r["error"] for r in summary["notebooks"] if r["status"] != "ok"}
    assert not failed, "notebooks failed:\n" + "\n\n".join(f"{k}:\n{v}" for k, v in failed.items())
    assert summary["ok"]


@pytest.mark.notebooks
@pytest.mark.slow
def test_summary_and_report(ci_run):
    out, summary = ci_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["profile"] == "ci"
    assert {r["name"] for r in on_disk["notebooks"]} == {p.stem for p in NOTEBOOKS}
    for key in ("library_version", "git_commit", "python", "torch", "platform", "started"):
        assert on_disk[key]
    report = (out / "report.html").read_text()
    assert "Paper versus ours" in report
    for r in on_disk["notebooks"]:
        nb_dir = out / r["name"]
        assert (nb_dir / f"{r['name']}.ipynb").is_file()
        html = (nb_dir / f"{r['name']}.html").read_text()
        assert "from refocuslib" not in html, f"{r['name']}.html should not show code"
        assert (nb_dir / "results.json").is_file(), f"{r['name']}: no results.json (use refocuslib.notebook.Recorder)"
        assert r["figures"], f"{r['name']}: recorded no figure"
        section = report.split(f"id='{r['name']}'", 1)[1].split("<section", 1)[0]
        assert "data:image/png;base64," in section, f"report embeds no image for {r['name']}"
        prov = json.loads((nb_dir / "results.json").read_text())["provenance"]
        assert prov["profile"] == "ci" and prov["seed"] == 0 and prov["git_commit"]
