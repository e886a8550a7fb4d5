"""Claim predicates of the review's reliability lessons (notebook 50; Liao et al. 2022, §4).

A reliability score (ensemble disagreement, physics-consistency error) is useful only if it *rises* when the
network is outside what it was trained for. Each condition is scored on its own held-out items (fields × input
planes, or volumes) and compared with the in-distribution items: the claim holds when the condition's mean score
exceeds the in-distribution mean by more than ``n_se`` standard errors of the difference (Welch: the two sets are
independent samples). A score that is zero everywhere (e.g. an ensemble of identical members) never rises.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from refocuslib.evaluate.claims import Verdict, verdict

__all__ = ["score_rises", "mean_difference"]


def mean_difference(condition: Sequence[float], reference: Sequence[float]):
    """``(mean(condition) − mean(reference), its standard error)`` for independent samples (Welch); the standard
    error is NaN when either side has fewer than 2 finite items."""
    a = np.asarray(condition, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan")
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return diff, float("nan")
    return diff, float(math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))


def score_rises(condition: Sequence[float], reference: Sequence[float], min_items: int = 4, n_se: float = 2.0,
                label: str = "score") -> Verdict:
    """Holds when the mean ``label`` of the ``condition`` items exceeds that of the in-distribution ``reference``
    items by more than ``n_se`` standard errors of the difference (and by more than 0). Item count: the smaller
    of the two sets (finite values only)."""
    if not (isinstance(n_se, (int, float)) and n_se >= 0):
        raise ValueError(f"n_se: a number >= 0, got {n_se!r}")
    a = np.asarray(condition, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    n = int(min(np.isfinite(a).sum(), np.isfinite(b).sum()))
    diff, se = mean_difference(a, b)
    ok = None if math.isnan(diff) or math.isnan(se) else bool(diff > 0 and diff > n_se * se)
    detail = (f"{label} {np.nanmean(a) if a.size else float('nan'):.4g} vs {np.nanmean(b) if b.size else float('nan'):.4g} "
              f"in distribution: difference {diff:+.3g} ± {se:.2g} (s.e., {a.size} vs {b.size} items); "
              f"needs > {n_se:g} s.e.")
    return verdict(ok, n, min_items, detail)
