"""The README's two commands are what CI runs; pins and binder stay in sync."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    cmds = [[ln for ln in b.splitlines() if ln.strip() and not ln.lstrip().startswith("#")] for b in blocks[:2]]
    return cmds[0], cmds[1]


def test_ci_runs_the_readme_commands():
    install_and_run, test = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    for part in install_and_run[0].split("&&"):
        part = part.strip()
        assert part in ci, f".ci/run does not run the README's '{part}'"
    assert test == ["python -m pytest"]
    assert "python -m pytest" in ci


def test_requirements_pin_cpu_torch_and_binder_matches():
    req = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert "torch==2.13.0" in req
    assert all("==" in ln for ln in req), "every requirement is pinned"
    binder = [ln for ln in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
              if ln and not ln.startswith("#")]
    assert binder == req
    assert "jupytext --sync" in (ROOT / "binder" / "postBuild").read_text()
    assert "-r requirements.txt" in (ROOT / "environment.yml").read_text()


def test_generated_notebooks_are_ignored():
    assert "notebooks/*.ipynb" in (ROOT / ".gitignore").read_text()
