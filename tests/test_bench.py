"""Benchmarks run and report their numbers (speed itself is measured by `python -m refocuslib.bench`, never
asserted in a unit test)."""
import math

from refocuslib import bench


def test_simulator_bench_reports_both_renderers():
    out = bench.run(["simulator"], n=32)["simulator"]
    for key in ("pairs_per_s_fft_volume", "pairs_per_s_exact_points", "ratio_fft_over_points",
                "psf_planes_per_s_64px"):
        assert math.isfinite(out[key]) and out[key] > 0


def test_every_paper_benchmark_runs_on_cpu_at_a_small_size():
    """`python -m refocuslib.bench all` runs every registered benchmark; here each at a small size in its own unit
    (fits, pixels, planes, tile) so the suite stays fast. Speed is reported, not asserted."""
    assert set(bench.BENCHMARKS) == {"fwhm", "simulator", "deepz", "wnet", "recurrent_mz", "deepstorm3d",
                                     "deepstorm3d_real", "train"}
    out = {"fwhm": bench.bench_fwhm(n=64), "deepz": bench.bench_deepz(n=32, repeats=1),
           "wnet": bench.bench_wnet(n=32, repeats=1, ci=None), "recurrent_mz": bench.bench_recurrent_mz(n=2, size=64)}
    # simulator: test above; deepstorm3d: tests/test_deepstorm3d.py
    for name, res in out.items():
        numbers = {k: v for k, v in res.items() if isinstance(v, float)}
        assert numbers, name
        for k, v in numbers.items():
            assert math.isfinite(v) and v >= 0, (name, k, v)
    assert out["deepz"]["w1_l5_32_max_abs_diff"] < 1e-3  # the fast path computes the same output
    assert out["recurrent_mz"]["output_shape_ok"] is True


def test_train_bench_reports_steps_per_s_data_share_and_prefetch_ratio():
    from refocuslib import recipes
    tiny = recipes.recipe("deepz_beads", {"params": {"data": {"field_px": 32, "crop_px": 16, "n_samples": 2,
                                                              "z_half_range_um": 1.0}, "n_val": 2,
                                                     "n_val_samples": 1, "levels": 2}})
    out = bench.bench_train(n=3, recipes_=(tiny,))
    for key in ("steps_per_s", "steps_per_s_prefetch", "prefetch_speedup", "data_share"):
        v = out[f"deepz_beads_{key}"]
        assert math.isfinite(v) and v > 0
    assert out["deepz_beads_prefetch_used"] is True
    assert 0.0 <= out["deepz_beads_data_share_exposed"] <= 1.0


def test_deepstorm3d_real_frame_bench_times_every_stage_of_the_shipped_model():
    """The shipped Tetrapod model on a whole real 297 × 391 STORM frame: each stage timed, detections made (the
    frame is converted to the model's counts as in notebook 12), and the stages add up to about the total."""
    out = bench.bench_deepstorm3d_real(repeats=1, mp=False)
    assert out["frame_px"] == "297x391" and out["localizations"] > 0
    stages = [out[k] for k in ("counts_s", "cnn_forward_s", "post_processing_s")]
    assert all(math.isfinite(v) and v >= 0 for v in stages + [out["localize_total_s_per_frame"]])
    assert "mp_s_per_frame" not in out


def test_bench_threads_option_is_checked_against_the_machine(capsys):
    import os

    import pytest
    with pytest.raises(SystemExit) as e:
        bench.main(["train", "--threads", str((os.cpu_count() or 1) + 1)])
    assert e.value.code == 2 and "--threads: expected 1 to" in capsys.readouterr().err
