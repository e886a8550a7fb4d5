"""Benchmarks run and report their numbers (speed itself is measured by `python -m refocuslib.bench`, never
asserted in a unit test)."""
import math

from refocuslib import bench


def test_simulator_bench_reports_both_renderers():
    out = bench.run(["simulator"], n=32)["simulator"]
    for key in ("pairs_per_s_fft_volume", "pairs_per_s_exact_points", "ratio_fft_over_points",
                "psf_planes_per_s_64px"):
        assert math.isfinite(out[key]) and out[key] > 0
