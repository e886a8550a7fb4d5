"""What a notebook calls: :func:`start_notebook` (its first code cell) and the :class:`Recorder` that keeps its
figures, numbers and "paper versus ours" claims with provenance in ``<results_dir>/results.json``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from refocuslib.provenance import _jsonable, _now, provenance

__all__ = ["Recorder", "start_notebook", "FIGURE_DPI"]

FIGURE_DPI = 110


class Recorder:
    """Collects a notebook's figures, numbers and claims into ``<results_dir>/results.json``.

    ``rec = Recorder(results_dir, profile='ci', seed=0, params={...})``, then

    * ``rec.figure(fig, name, caption='')`` saves ``<name>.png`` (dpi 110) and remembers the caption (the
      figure stays open so the notebook still shows it),
    * ``rec.number(key, value, unit='')`` records a measured number,
    * ``rec.claim(claim, paper_figure, paper_value, ours, holds, note='')`` records one row of the "paper versus
      ours" table (``holds``: True/False, or None when not decidable at this profile),
    * ``rec.save()`` writes ``results.json`` (also written after every record, so a failing notebook keeps
      what it had).

    Numpy scalars are converted to float for JSON.
    """

    def __init__(self, results_dir, profile: str = "ci", seed: Optional[int] = None,
                 params: Optional[Dict[str, Any]] = None, autosave: bool = True):
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.profile = str(profile)
        self.seed = seed
        self.params = dict(params or {})
        self.autosave = autosave
        self.numbers: Dict[str, Dict[str, Any]] = {}
        self.claims: List[Dict[str, Any]] = []
        self.figures: List[Dict[str, str]] = []
        self._started = _now()
        self._provenance = provenance()

    @property
    def path(self) -> Path:
        """``<results_dir>/results.json``."""
        return self.results_dir / "results.json"

    def figure(self, fig, name: str, caption: str = "") -> Path:
        """Save a matplotlib figure as ``<name>.png`` (dpi 110) and remember its caption; returns the path."""
        name = str(name)
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"name: use letters, digits, '_', '-', '.', got {name!r}")
        stem = name[:-4] if name.lower().endswith(".png") else name
        path = self.results_dir / f"{stem}.png"
        fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
        self.figures = [f for f in self.figures if f["file"] != path.name]
        self.figures.append({"file": path.name, "name": stem, "caption": str(caption)})
        self._autosave()
        return path

    def number(self, key: str, value, unit: str = "") -> float:
        """Record a number (converted to a plain float/int/bool) under ``key``; returns the converted value."""
        v = _jsonable(value)
        if isinstance(v, list) and len(v) == 1:
            v = v[0]
        self.numbers[str(key)] = {"value": v, "unit": str(unit)}
        self._autosave()
        return v

    def claim(self, claim: str, paper_figure: str, paper_value, ours, holds, note: str = ""):
        """Record one "paper versus ours" row: what the paper shows, where, its value, ours, and whether the
        claim holds in our reproduction. ``holds``: a :class:`refocuslib.evaluate.Verdict` from a tested
        predicate (its item count and minimum are recorded; below the minimum it is "not enough data"), or
        True/False/None (None: not decidable at this profile)."""
        from refocuslib.evaluate.claims import Verdict
        row = {"claim": str(claim), "paper_figure": str(paper_figure), "paper_value": _jsonable(paper_value),
               "ours": _jsonable(ours), "note": str(note)}
        if isinstance(holds, Verdict):
            row.update(holds=holds.holds, n_items=holds.n_items, min_items=holds.min_items, status=holds.status,
                       detail=holds.detail)
        else:
            row.update(holds=None if holds is None else bool(holds),
                       status={True: "holds", False: "fails", None: "not decided"}[None if holds is None
                                                                                   else bool(holds)])
        self.claims.append(row)
        self._autosave()
        return self.claims[-1]

    def as_dict(self) -> Dict[str, Any]:
        prov = dict(self._provenance)
        prov.update({"seed": _jsonable(self.seed), "profile": self.profile, "params": _jsonable(self.params),
                     "started": self._started, "time": _now()})
        return {"numbers": self.numbers, "claims": self.claims, "figures": self.figures, "provenance": prov}

    def save(self) -> Path:
        """Write ``results.json`` (atomically) and return its path."""
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2, ensure_ascii=False))
        os.replace(tmp, self.path)
        return self.path

    def _autosave(self):
        if self.autosave:
            self.save()

    def __repr__(self):
        return (f"Recorder({str(self.results_dir)!r}, profile={self.profile!r}, {len(self.figures)} figures, "
                f"{len(self.numbers)} numbers, {len(self.claims)} claims)")


def start_notebook(results_dir, profile: str = "ci", seed: int = 0, device: str = "cpu",
                   threads: Optional[int] = None, use_shipped_checkpoints: bool = False,
                   **params: Any) -> "tuple[Recorder, str]":
    """The first code cell of every notebook: ``torch`` CPU threads (``threads``), seeds ``torch`` with ``seed``,
    falls back to the CPU (and says so) when ``device`` is CUDA but none is available, switches shipped
    checkpoints on or off (:func:`refocuslib.train.use_shipped_checkpoints`) and opens the :class:`Recorder`
    with the notebook's parameters (``device``, ``threads`` and ``**params``) as provenance.
    Returns ``(recorder, device)``."""
    import torch
    from refocuslib.train import use_shipped_checkpoints as _use_shipped
    if threads is not None:
        if isinstance(threads, bool) or int(threads) != threads or threads < 1:
            raise ValueError(f"threads: expected an integer >= 1, got {threads!r}")
        torch.set_num_threads(int(threads))
    if not isinstance(device, str) or not device:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"device {device!r} is not available here; using the CPU")
        device = "cpu"
    _use_shipped(bool(use_shipped_checkpoints))
    torch.manual_seed(int(seed))
    rec = Recorder(results_dir, profile=profile, seed=seed,
                   params={"device": device, "threads": threads, "use_shipped_checkpoints": bool(use_shipped_checkpoints),
                           **params})
    return rec, device


