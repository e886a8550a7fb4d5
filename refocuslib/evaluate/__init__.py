"""Evaluation layer: one module per paper holding its evaluation protocols and every claim's "holds" predicate.

Each predicate returns a :class:`~refocuslib.evaluate.claims.Verdict` (holds / fails / not enough data, with the
number of items it rests on); notebooks pass it to :meth:`refocuslib.notebook.Recorder.claim`.
"""
from refocuslib.evaluate.claims import Verdict, enough, verdict

__all__ = ["Verdict", "enough", "verdict"]
