"""The verdict of a claim predicate: whether it holds, on how many items, against which minimum.

A claim resting on fewer items than its stated minimum is "not enough data" (``holds is None``), never ✓. Every
predicate in :mod:`refocuslib.evaluate` returns a :class:`Verdict` and is unit-tested to fail for an all-zero
output and, where that makes sense, for the identity (input as output).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class Verdict:
    """``holds``: True / False, or None when the claim rests on fewer than ``min_items`` items (``n_items``,
    e.g. fitted beads, frames, emitters, volumes). ``detail``: the comparison in words, with numbers."""
    holds: Optional[bool]
    n_items: int
    min_items: int
    detail: str = ""

    @property
    def status(self) -> str:
        return {True: "holds", False: "fails", None: "not enough data"}[self.holds]

    def __bool__(self) -> bool:
        return self.holds is True

    def as_dict(self) -> dict:
        return {**asdict(self), "status": self.status}


def enough(n_items: int, min_items: int) -> bool:
    return int(n_items) >= int(min_items)


def verdict(condition, n_items: int, min_items: int, detail: str = "") -> Verdict:
    """:class:`Verdict` of ``condition`` (a bool, or a NaN-able comparison result) unless ``n_items`` is below
    ``min_items``; a NaN or None condition (e.g. a metric of failed fits) is "not enough data"."""
    if not isinstance(min_items, int) or min_items < 1:
        raise ValueError(f"min_items: an integer >= 1, got {min_items!r}")
    n = int(n_items)
    if n < min_items or condition is None or (isinstance(condition, float) and math.isnan(condition)):
        return Verdict(None, n, min_items, detail)
    return Verdict(bool(condition), n, min_items, detail)
