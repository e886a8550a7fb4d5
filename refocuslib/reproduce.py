"""Run the notebooks by profile and assemble the reproduction report.

Two halves (docs/DESIGN.md "Profiles and the data flow of one experiment"):

* :class:`refocuslib.notebook.Recorder` — used *inside* a notebook so the notebook holds no logic: it saves
  figures (PNG), numbers and "paper versus ours" claims with provenance (seed, profile, parameters, library
  version, git commit) as ``<results_dir>/results.json``.
* :func:`run_notebooks` — executes every ``notebooks/NN_*.py`` (py:percent, read with jupytext) through the
  papermill Python API with the parameters of ``notebooks/params/<profile>.yaml``, writes the executed
  notebook and a code-free HTML export to ``results/<profile>/<stem>/``, then ``summary.json`` and a
  self-contained ``report.html`` under ``results/<profile>/``.

Parameters YAML schema (``notebooks/params/<profile>.yaml``)::

    defaults:              # merged into every notebook's parameters first
      seed: 0
      device: cpu
    00_simulator_tour:     # one section per notebook, keyed by the notebook's file stem
      n_pixels: 64
      ...

``profile``, ``results_dir`` (absolute ``results/<profile>/<stem>``) and ``seed`` are always injected.

Command line: ``python -m refocuslib.reproduce --profile ci [--only 00_simulator_tour]`` or
``refocuslib reproduce --profile ci``; the exit code is 1 if any notebook failed.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

__all__ = ["run_notebooks", "find_notebooks", "load_params", "notebook_parameters", "write_report",
           "train_all_recipes", "notebook_recipes", "merge_summaries", "source_digest", "claims_markdown", "main"]

NOTEBOOK_PATTERN = re.compile(r"^\d\d_.+\.py$")


from refocuslib.provenance import _jsonable, _now, provenance, repo_root


# ------------------------------------------------------------------------------------------------- recorder
def default_notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def find_notebooks(notebooks_dir=None, names: Optional[Iterable[str]] = None) -> List[Path]:
    """``notebooks/NN_*.py`` sorted; ``names`` keeps those whose stem equals or starts with one of them."""
    nb_dir = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    paths = sorted(p for p in nb_dir.glob("*.py") if NOTEBOOK_PATTERN.match(p.name))
    if names:
        names = [Path(str(n)).stem if str(n).endswith((".py", ".ipynb")) else str(n) for n in names]
        paths = [p for p in paths if any(p.stem == n or p.stem.startswith(n) for n in names)]
    return paths


def load_params(profile: str, params_dir=None) -> Dict[str, Any]:
    """Parse ``<params_dir>/<profile>.yaml`` (empty dict if the file is empty)."""
    import yaml
    pdir = Path(params_dir) if params_dir is not None else default_notebooks_dir() / "params"
    path = pdir / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in pdir.glob("*.yaml")) if pdir.is_dir() else []
        raise FileNotFoundError(f"profile {profile!r}: no {path} (profiles: {', '.join(known) or 'none'})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'defaults:' and one section per notebook")
    parent = data.pop("inherit", None)
    if parent is not None:  # e.g. retrain.yaml: the ci sizes, but every model trained from scratch
        if parent == profile:
            raise ValueError(f"{path}: 'inherit' names the profile itself")
        base = load_params(parent, pdir)
        for key, section in data.items():
            base[key] = {**(base.get(key) or {}), **(section or {})}
        data = base
    return data


#: profiles whose notebooks evaluate models trained from scratch in this run: every recipe of
#: refocuslib/recipes.yaml is trained first (hours on a CPU), exactly as shipped.
TRAINING_PROFILES = ("retrain",)


def train_all_recipes(profile_root, names: Optional[Sequence[str]] = None, device: str = "cpu",
                      log=print) -> List[Dict[str, Any]]:
    """Train every recipe of the registry (or ``names``) from scratch into ``<profile_root>/checkpoints/`` —
    where the profile's notebooks then find them — resuming any that stopped. Returns one record per recipe
    (name, digest, steps, best validation, seconds)."""
    from refocuslib import recipes
    rows = []
    for name in (names or recipes.shipped_names()):
        rec = recipes.recipe(name)
        out = Path(profile_root) / "checkpoints" / recipes.run_name(rec)
        mins = recipes.expected_minutes(rec)
        log(f"[retrain] {rec['name']}: training from scratch into {out}"
            + (f" (≈ {mins:g} CPU-minutes)" if mins else ""), flush=True)
        t0 = time.perf_counter()
        # the notebooks' own train-or-load, never from a shipped file: results_dir under profile_root puts the run in
        # <profile_root>/checkpoints/<name>-<digest>, where the profile's notebooks look
        _, res = recipes.train_cached(rec, Path(profile_root) / "_retrain", device=device, use_shipped=False)
        rows.append({"recipe": rec["name"], "digest": recipes.digest(rec), "steps": res.last_step,
                     "best_step": res.best_step, "best_val_loss": res.best_val_loss,
                     "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def notebook_recipes(path, nb_params: Dict[str, Any]) -> List[str]:
    """The shipped recipes a notebook evaluates: registry names among its profile parameters ``nb_params`` or
    quoted in its source (a parameters-cell default such as ``shipped_recipe = "deepz_flowdec_beads"``)."""
    from refocuslib import recipes
    shipped = set(recipes.shipped_names())
    quoted = set(re.findall(r"""["']([A-Za-z0-9_]+)["']""", Path(path).read_text(encoding="utf-8")))
    return sorted((_names_in(nb_params, shipped) | quoted) & shipped)


def source_digest(root=None) -> str:
    """SHA-256 over the library, notebooks, parameter profiles, recipes and shipped-model provenance: two runs
    with the same digest ran the same code on the same shipped models (the test suite reuses the main job's
    run when it matches instead of running every notebook again)."""
    import hashlib
    root = Path(root) if root else repo_root()
    h = hashlib.sha256()
    files = sorted([*root.glob("refocuslib/**/*.py"), *root.glob("refocuslib/*.yaml"), *root.glob("notebooks/*.py"),
                    *root.glob("notebooks/params/*.yaml"), *root.glob("data/checkpoints/*.sha256")])
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def notebook_parameters(profile: str, stem: str, results_dir, params: Dict[str, Any]) -> Dict[str, Any]:
    """``defaults`` then the notebook's own section, plus ``profile``, ``results_dir`` (absolute) and ``seed``."""
    merged: Dict[str, Any] = {}
    merged.update(params.get("defaults") or {})
    merged.update(params.get(stem) or {})
    merged["profile"] = profile
    merged["results_dir"] = str(Path(results_dir).resolve())
    merged["seed"] = int(merged.get("seed", 0))
    return merged


def _error_message(exc: BaseException, n_lines: int = 12) -> str:
    """Last lines of a (papermill) traceback, ANSI colour codes removed."""
    tb = getattr(exc, "traceback", None)
    if tb:
        text = "\n".join(tb) if isinstance(tb, (list, tuple)) else str(tb)
    else:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    lines = [l for l in text.strip().splitlines() if l.strip()]
    head = f"{getattr(exc, 'ename', type(exc).__name__)}: {getattr(exc, 'evalue', exc)}"
    tail = "\n".join(lines[-n_lines:])
    return tail if head.split(":")[0] in tail else head + "\n" + tail


def _export_html(executed: Path, out_html: Path) -> None:
    """Code-free HTML export of an executed notebook (nbconvert, ``exclude_input=True``)."""
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(str(executed), as_version=4)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    out_html.write_text(body, encoding="utf-8")


def _run_one(path: Path, profile: str, params: Dict[str, Any], results_root: Path, kernel: str,
             timeout_s: Optional[float], cwd: Path, log=print) -> Dict[str, Any]:
    import jupytext
    import nbformat
    import papermill as pm

    stem = path.stem
    out_dir = (results_root / profile / stem).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    results_json = out_dir / "results.json"
    if results_json.exists():
        results_json.unlink()  # never report numbers of an earlier run
    executed = out_dir / f"{stem}.ipynb"
    nb_params = notebook_parameters(profile, stem, out_dir, params)
    record: Dict[str, Any] = {"name": stem, "source": str(path), "status": "failed", "seconds": 0.0,
                              "error": None, "parameters": _jsonable(nb_params),
                              "notebook": f"{stem}/{executed.name}", "html": None,
                              "numbers": {}, "claims": [], "figures": []}
    log(f"[{profile}] {stem} ...", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refocuslib-nb-") as tmp:
        try:
            nb = jupytext.read(str(path))
            src = Path(tmp) / f"{stem}.ipynb"
            nbformat.write(nb, str(src))
            pm.execute_notebook(str(src), str(executed), parameters=nb_params, kernel_name=kernel,
                                cwd=str(cwd), progress_bar=False, execution_timeout=timeout_s)
            record["status"] = "ok"
        except Exception as exc:  # papermill raises PapermillExecutionError; anything else is ours too
            record["error"] = _error_message(exc)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    if executed.exists():
        try:
            _export_html(executed, out_dir / f"{stem}.html")
            record["html"] = f"{stem}/{stem}.html"
        except Exception as exc:
            record["html_error"] = _error_message(exc, 4)
    if results_json.exists():
        try:
            res = json.loads(results_json.read_text())
            record["numbers"] = res.get("numbers", {})
            record["claims"] = res.get("claims", [])
            record["figures"] = res.get("figures", [])
            record["provenance"] = res.get("provenance", {})
        except (OSError, ValueError) as exc:
            record["results_error"] = f"results.json unreadable: {exc}"
    if not record["figures"]:  # notebook without a Recorder: still show its PNGs
        record["figures"] = [{"file": p.name, "name": p.stem, "caption": ""} for p in sorted(out_dir.glob("*.png"))]
    msg = f"[{profile}] {stem}: {record['status']} in {record['seconds']:.1f} s"
    if record["error"]:
        msg += "\n" + record["error"]
    log(msg, flush=True)
    return record


def run_notebooks(profile: str = "ci", names: Optional[Sequence[str]] = None, results_root="results",
                  notebooks_dir=None, params_dir=None, kernel: str = "python3",
                  timeout_s: Optional[float] = None, quiet: bool = False) -> Dict[str, Any]:
    """Execute the notebooks of a profile and write ``summary.json`` and ``report.html``.

    ``names`` filters notebooks by stem or stem prefix (``['00']``, ``['00_simulator_tour']``);
    ``results_root`` is relative to the current directory unless absolute; ``timeout_s`` limits each cell.
    Returns the summary dict; ``summary['ok']`` is False if any notebook failed (or none matched).
    """
    nb_dir = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    pdir = Path(params_dir) if params_dir is not None else nb_dir / "params"
    results_root = Path(results_root).resolve()
    log = (lambda *a, **k: None) if quiet else print
    params = load_params(profile, pdir)
    paths = find_notebooks(nb_dir, names)
    prov = provenance()
    summary: Dict[str, Any] = {
        "profile": profile, "library_version": prov["library_version"], "git_commit": prov["git_commit"],
        "python": prov["python"], "torch": prov["torch"], "numpy": prov["numpy"], "platform": prov["platform"],
        "machine": prov["machine"], "started": prov["time"], "notebooks_dir": str(nb_dir),
        "params_file": str(pdir / f"{profile}.yaml"), "requested": list(names) if names else None,
        "notebooks": [],
    }
    summary["source_digest"] = source_digest()
    out_root = results_root / profile
    out_root.mkdir(parents=True, exist_ok=True)
    if profile in TRAINING_PROFILES:
        # --only: train just the recipes the chosen notebooks evaluate (a retrain done paper by paper, merged into
        # the committed summary by --update-readme: merge_summaries)
        wanted = (sorted(set().union(*(notebook_recipes(p, notebook_parameters(profile, p.stem, out_root, params))
                                       for p in paths))) if names else None)
        summary["trained"] = train_all_recipes(out_root, names=wanted, log=log) if wanted != [] else []
    # papermill's kernel must find the package and the repository exactly as a user's Jupyter would
    cwd = repo_root() if notebooks_dir is None else nb_dir.resolve().parent
    t0 = time.perf_counter()
    for path in paths:
        summary["notebooks"].append(_run_one(path, profile, params, results_root, kernel, timeout_s, cwd, log))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["finished"] = _now()
    summary["n_failed"] = sum(r["status"] != "ok" for r in summary["notebooks"])
    summary.update(claim_counts(summary))
    summary["ok"] = bool(paths) and summary["n_failed"] == 0
    if not paths:
        summary["error"] = f"no notebook matched {list(names) if names else 'NN_*.py'} in {nb_dir}"
        log(summary["error"])
    (out_root / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2, ensure_ascii=False))
    write_report(summary, out_root / "report.html")
    log(f"report: {out_root / 'report.html'}")
    return summary


# --------------------------------------------------------------------------------------------------- report
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.4}
h1{margin-bottom:.2em} .meta{color:#555;font-size:.9em}
table{border-collapse:collapse;margin:1em 0;width:100%;font-size:.92em}
th,td{border:1px solid #ccc;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2} .ok{color:#1a7f37;font-weight:bold} .failed{color:#cf222e;font-weight:bold} .claims-fail{color:#9a6700;font-weight:bold}
.yes{color:#1a7f37;font-weight:bold;text-align:center} .no{color:#cf222e;font-weight:bold;text-align:center}
.na{color:#888;text-align:center}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#444;font-size:.9em}
pre.err{background:#fff0f0;border:1px solid #f5c2c2;padding:.6em;overflow-x:auto;font-size:.85em}
section.nb{border-top:2px solid #ddd;margin-top:2em}
"""


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and "value" in value:
        return f"{_fmt(value['value'])} {value.get('unit', '')}".strip()
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def claim_counts(summary: Dict[str, Any]) -> Dict[str, int]:
    """``n_claims``, ``n_hold``, ``n_fail``, ``n_undecided`` (not enough data / not decidable) over all notebooks."""
    claims = [c for r in summary.get("notebooks", []) for c in r.get("claims", [])]
    return {"n_claims": len(claims), "n_hold": sum(c.get("holds") is True for c in claims),
            "n_fail": sum(c.get("holds") is False for c in claims),
            "n_undecided": sum(c.get("holds") is None for c in claims)}


def notebook_state(record: Dict[str, Any]) -> str:
    """'ok' (ran, every claim holds), 'claims-fail' (ran, some claim fails or lacks data), or the run status."""
    if record.get("status") != "ok":
        return str(record.get("status"))
    return "ok" if all(c.get("holds") is True for c in record.get("claims", [])) else "claims-fail"


def write_report(summary: Dict[str, Any], path) -> Path:
    """One self-contained HTML page: header, the "paper versus ours" table, then per notebook its status,
    time, numbers, figures (PNG embedded as base64) and a link to its code-free HTML export."""
    path = Path(path)
    root = path.parent
    e = html.escape
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
           f"<title>refocuslib reproduction — {e(summary['profile'])}</title><style>{_CSS}</style></head><body>",
           f"<h1>refocuslib reproduction report — profile <code>{e(summary['profile'])}</code></h1>",
           "<p class='meta'>"
           f"refocuslib {e(str(summary.get('library_version')))} · commit <code>{e(str(summary.get('git_commit')))}</code>"
           f" · started {e(str(summary.get('started')))} · {e(str(summary.get('seconds', '?')))} s<br>"
           f"machine {e(str(summary.get('machine')))} · {e(str(summary.get('platform')))} · Python "
           f"{e(str(summary.get('python')))} · torch {e(str(summary.get('torch')))}</p>"]
    nbs = summary.get("notebooks", [])
    n_ok = sum(r["status"] == "ok" for r in nbs)
    cc = claim_counts(summary)
    out.append(f"<p class='headline'><b>{cc['n_hold']} of {cc['n_claims']} claims hold</b> ({cc['n_fail']} fail, "
               f"{cc['n_undecided']} without enough data or undecided) · {n_ok} of {len(nbs)} notebooks ran.</p>")
    if summary.get("error"):
        out.append(f"<pre class='err'>{e(summary['error'])}</pre>")

    out.append("<h2>Paper versus ours</h2><table><tr><th>notebook</th><th>claim</th><th>paper figure</th>"
               "<th>paper value</th><th>ours</th><th>direction holds</th></tr>")
    n_claims = 0
    for r in nbs:
        for c in r.get("claims", []):
            n_claims += 1
            holds = c.get("holds")
            status = c.get("status") or ("not decided" if holds is None else ("holds" if holds else "fails"))
            items = (f"<br><small>{c['n_items']} items (min {c['min_items']})</small>"
                     if c.get("n_items") is not None else "")
            cell = (("<td class='yes'>✓" if holds else "<td class='no'>✗") if holds is not None
                    else f"<td class='na'>– {e(status)}") + items + "</td>"
            note = f"<br><small>{e(c['note'])}</small>" if c.get("note") else ""
            out.append(f"<tr><td><a href='#{e(r['name'])}'>{e(r['name'])}</a></td><td>{e(str(c.get('claim')))}"
                       f"{note}</td><td>{e(str(c.get('paper_figure')))}</td><td>{e(_fmt(c.get('paper_value')))}</td>"
                       f"<td>{e(_fmt(c.get('ours')))}</td>{cell}</tr>")
    if not n_claims:
        out.append("<tr><td colspan='6'>no claims recorded</td></tr>")
    out.append("</table>")

    out.append("<h2>Notebooks</h2><table><tr><th>notebook</th><th>status</th><th>time (s)</th>"
               "<th>figures</th><th>claims holding</th></tr>")
    for r in nbs:
        cl = r.get("claims", [])
        held = sum(c.get("holds") is True for c in cl)
        decided = sum(c.get("holds") is not None for c in cl)
        state = notebook_state(r)
        out.append(f"<tr><td><a href='#{e(r['name'])}'>{e(r['name'])}</a></td><td class='{e(state)}'>"
                   f"{e(state)}</td><td>{r['seconds']:.1f}</td><td>{len(r.get('figures', []))}</td>"
                   f"<td>{held} of {len(cl)} ({decided} decided)</td></tr>")
    out.append("</table>")

    for r in nbs:
        nb_dir = root / r["name"]
        out.append(f"<section class='nb' id='{e(r['name'])}'><h2>{e(r['name'])}</h2>")
        links = []
        if r.get("html"):
            links.append(f"<a href='{e(r['html'])}'>notebook without code (HTML)</a>")
        if r.get("notebook") and (root / r["notebook"]).exists():
            links.append(f"<a href='{e(r['notebook'])}'>executed notebook (.ipynb)</a>")
        out.append(f"<p>status <span class='{e(r['status'])}'>{e(r['status'])}</span> · {r['seconds']:.1f} s"
                   + (" · " + " · ".join(links) if links else "") + "</p>")
        if r.get("error"):
            out.append(f"<pre class='err'>{e(r['error'])}</pre>")
        if r.get("numbers"):
            out.append("<table><tr><th>number</th><th>value</th></tr>")
            for k, v in r["numbers"].items():
                out.append(f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>")
            out.append("</table>")
        for f in r.get("figures", []):
            png = nb_dir / f["file"]
            if not png.is_file():
                continue
            cap = f"<figcaption><b>{e(f.get('name', ''))}</b> {e(f.get('caption', ''))}</figcaption>"
            out.append(f"<figure>{_img_tag(png, f.get('name', ''))}{cap}</figure>")
        out.append("</section>")
    out.append("</body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
    return path



# ------------------------------------------------------------------------------- README results table
README_START = "<!-- results-table:start (generated by `refocuslib reproduce --update-readme`; do not edit) -->"
README_END = "<!-- results-table:end -->"
#: committed copies of run summaries (results/ is not committed): data/results/<profile>/summary.json
COMMITTED_RESULTS = Path("data") / "results"


def _claim_rows(summary: Optional[Dict[str, Any]]) -> Dict[tuple, Dict[str, Any]]:
    rows: Dict[tuple, Dict[str, Any]] = {}
    for nb in (summary or {}).get("notebooks", []):
        for c in nb.get("claims") or []:
            rows[(nb["name"], c.get("claim"))] = dict(c, notebook=nb["name"])
    return rows


def _holds(value) -> str:
    return {True: "✓", False: "✗"}.get(value, "–")


def _names_in(value, names) -> set:
    """Registry names among the (nested) parameter values of a notebook."""
    if isinstance(value, str):
        return {value} if value in names else set()
    if isinstance(value, dict):
        return set().union(*(_names_in(v, names) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_names_in(v, names) for v in value)) if value else set()
    return set()


def stale_recipes_by_notebook(summary: Optional[Dict[str, Any]]) -> Dict[str, List[str]]:
    """For a training profile's summary (its ``trained`` list of recipe digests): per notebook, the recipes it names
    in its parameters whose current registry digest differs from the one that run trained (or that run did not
    train at all). Those rows of the README show a run of an older recipe, and say so."""
    from refocuslib import recipes
    if not summary or "trained" not in summary:
        return {}
    ran = {t["recipe"]: t["digest"] for t in summary.get("trained") or []}
    shipped = set(recipes.shipped_names())
    changed = {n for n in shipped if ran.get(n) != recipes.digest(recipes.recipe(n))}  # once, not per notebook
    names = set(recipes.registry())
    out = {}
    for nb in summary.get("notebooks", []):
        used = _names_in((nb.get("provenance") or {}).get("params") or nb.get("parameters") or {}, names)
        stale = sorted(used & changed)
        if stale:
            out[nb["name"]] = stale
    return out


#: README columns: (profile, heading). ci = the shipped CPU-trained models; retrain = the same recipes trained
#: from scratch by ``refocuslib reproduce --profile retrain``; full = paper scale on a GPU.
README_PROFILES = (("ci", "ours (shipped CPU models)"), ("retrain", "ours (retrained from scratch)"),
                   ("full", "ours (full, GPU)"))


def claims_markdown(ci: Optional[Dict[str, Any]], full: Optional[Dict[str, Any]] = None,
                    retrain: Optional[Dict[str, Any]] = None) -> str:
    """Markdown table of every notebook claim: the paper's value beside ours with the shipped models (ci), retrained
    from scratch (retrain) and at paper scale (full), and whether the claim holds in each run (values come from run
    summaries, never typed). The note under it gives each run's commit and "N of M claims hold"."""
    runs = {"ci": ci, "retrain": retrain, "full": full}
    rows = {p: _claim_rows(sm) for p, sm in runs.items()}
    stale = {p: stale_recipes_by_notebook(runs[p]) for p in TRAINING_PROFILES}
    keys = list(dict.fromkeys(k for p, _ in README_PROFILES for k in rows[p]))
    head = "| notebook | claim | paper figure | paper | " + " | ".join(f"{h} | holds" for _, h in README_PROFILES) + " |"
    lines = [head, "|---|---|---|---|" + "---|---|" * len(README_PROFILES)]
    cell = lambda v: _fmt(v).replace("|", "/").replace("\n", " ")  # noqa: E731
    for key in keys:
        ref = next(rows[p][key] for p, _ in README_PROFILES if key in rows[p])
        parts = [f"`{key[0]}`", cell(ref.get("claim")), cell(ref.get("paper_figure")), cell(ref.get("paper_value"))]
        for p, _ in README_PROFILES:
            c = rows[p].get(key)
            if c is None:
                parts += ["not run" if runs[p] is None else "–", "–"]
            else:
                status = c.get("status")
                mark = _holds(c.get("holds")) if c.get("holds") is not None else f"– ({status or 'undecided'})"
                old = stale.get(p, {}).get(key[0])
                parts += [cell(c.get("ours")) + (f" (run of an older recipe of {', '.join(old)})" if old else ""),
                          mark]
        lines.append("| " + " | ".join(parts) + " |")
    meta = []
    for p, heading in README_PROFILES:
        sm = runs[p]
        if sm:
            cc = claim_counts(sm)
            runs_of = sm.get("parts") or [_part(sm)]
            where = "; ".join(
                f"commit `{str(r.get('git_commit', '?'))[:10]}`, {r.get('started', '?')}, {r.get('machine', '?')}, "
                f"torch {r.get('torch', '?')}, {r.get('seconds', '?')} s"
                + (f" (notebooks {', '.join(n.split('_')[0] for n in r['notebooks'])})" if len(runs_of) > 1 else "")
                for r in runs_of)
            meta.append(f"{p}: {cc['n_hold']} of {cc['n_claims']} claims hold; {where}")
    note = ("Generated from " + "; ".join(meta) + ".") if meta else "No run summary committed yet."
    return "\n".join(lines) + "\n\n" + note + "\n"


def update_readme(readme_path, table_markdown: str) -> bool:
    """Replace the block between the README's results-table markers; returns True if the file changed."""
    path = Path(readme_path)
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"readme_path: {path} has no results-table markers ({README_START!r} … {README_END!r})")
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    new = before + README_START + "\n" + table_markdown + README_END + after
    if new != text:
        path.write_text(new)
    return new != text


def load_committed_summary(profile: str, root=None) -> Optional[Dict[str, Any]]:
    path = (Path(root) if root else repo_root()) / COMMITTED_RESULTS / profile / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _part(summary: Dict[str, Any]) -> Dict[str, Any]:
    return {"git_commit": summary.get("git_commit"), "started": summary.get("started"),
            "machine": summary.get("machine"), "torch": summary.get("torch"), "seconds": summary.get("seconds"),
            "notebooks": [nb["name"] for nb in summary.get("notebooks", [])],
            "recipes": [t["recipe"] for t in summary.get("trained") or []]}


def merge_summaries(committed: Optional[Dict[str, Any]], part: Dict[str, Any]) -> Dict[str, Any]:
    """A training profile's committed summary with the notebooks (and trained recipes) of a later partial run
    (``--only``) put in place of the same ones: a from-scratch retrain takes more CPU-hours than one session, so it
    is run paper by paper. ``parts`` lists each run (commit, start, notebooks, recipes) that the merged summary
    rests on; the counts are recomputed over the merged notebooks."""
    if not committed:
        out = dict(part)
        out["parts"] = [_part(part)]
        return out
    if committed.get("profile") != part.get("profile"):
        raise ValueError(f"part: profile {part.get('profile')!r} cannot merge into a {committed.get('profile')!r} "
                         f"summary")
    new = {nb["name"]: nb for nb in part.get("notebooks", [])}
    kept = [nb for nb in committed.get("notebooks", []) if nb["name"] not in new]
    out = dict(committed)
    out["notebooks"] = sorted(kept + list(new.values()), key=lambda nb: nb["name"])
    trained = {t["recipe"]: t for t in committed.get("trained") or []}
    trained.update({t["recipe"]: t for t in part.get("trained") or []})
    out["trained"] = [trained[k] for k in sorted(trained)]
    rerun = {t["recipe"] for t in part.get("trained") or []}
    parts = [dict(p) for p in committed.get("parts") or [_part(committed)]]
    for p in parts:  # what an earlier part still contributes
        p["notebooks"] = [n for n in p["notebooks"] if n not in new]
        p["recipes"] = [r for r in p["recipes"] if r not in rerun]
    out["parts"] = [p for p in parts if p["notebooks"] or p["recipes"]] + [_part(part)]
    for key in ("git_commit", "started", "finished", "library_version", "python", "torch", "numpy", "platform",
                "machine", "source_digest"):
        if key in part:
            out[key] = part[key]
    out["seconds"] = round(sum(float(p.get("seconds") or 0) for p in out["parts"]), 2)
    out["requested"] = None
    out["n_failed"] = sum(r.get("status") != "ok" for r in out["notebooks"])
    out.update(claim_counts(out))
    out["ok"] = bool(out["notebooks"]) and out["n_failed"] == 0
    return out


def publish_summary(summary: Dict[str, Any], root=None) -> Path:
    """Copy a run's summary (numbers, claims, provenance) to ``data/results/<profile>/summary.json`` and
    regenerate the README table from the committed CI and full summaries."""
    root = Path(root) if root else repo_root()
    out = root / COMMITTED_RESULTS / summary["profile"] / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(summary), indent=2, ensure_ascii=False))
    update_readme(root / "README.md", claims_markdown(load_committed_summary("ci", root),
                                                      load_committed_summary("full", root),
                                                      load_committed_summary("retrain", root)))
    return out

# ------------------------------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``reproduce`` options, shared by ``python -m refocuslib.reproduce`` and ``refocuslib reproduce``."""
    parser.add_argument("--profile", default="ci", help="parameter profile: notebooks/params/<profile>.yaml "
                                                        "(ci: small, CPU, minutes; full: paper scale, GPU)")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help="run only notebooks whose stem equals or starts with NAME (e.g. 00 or 00_simulator_tour)")
    parser.add_argument("--results", default="results", help="results root (default: ./results)")
    parser.add_argument("--notebooks", default=None, help="notebooks folder (default: the repository's notebooks/)")
    parser.add_argument("--params", default=None, help="parameters folder (default: <notebooks>/params)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    parser.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    parser.add_argument("--update-readme", action="store_true",
                        help="after a successful run of every notebook, copy summary.json to data/results/<profile>/ "
                             "and regenerate the README's paper-versus-ours table from it")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run what the parsed ``reproduce`` options ask for; 0 if every notebook ran, else 1."""
    summary = run_notebooks(profile=args.profile, names=args.only, results_root=args.results,
                            notebooks_dir=args.notebooks, params_dir=args.params, kernel=args.kernel,
                            timeout_s=args.timeout)
    if args.update_readme:
        if summary["ok"] and not args.only:
            print(f"published {publish_summary(summary)}; README table regenerated")
        elif summary["ok"] and args.profile in TRAINING_PROFILES:
            merged = merge_summaries(load_committed_summary(args.profile), summary)
            print(f"published {publish_summary(merged)} (notebooks {', '.join(_part(summary)['notebooks'])} replaced); "
                  f"README table regenerated")
        else:
            print("--update-readme: skipped (needs a successful run of every notebook, without --only; a training "
                  "profile such as retrain also merges a successful --only run)")
    return 0 if summary["ok"] else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m refocuslib.reproduce", description="Run the notebooks by profile and write the report."))
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
