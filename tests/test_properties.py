"""Property-based tests (hypothesis): invariants that must hold for every input, not just the examples we chose.

Each property runs a few dozen derandomised examples (a fixed sequence: no random CI failures, no example
database written into the repository) with no per-example deadline, so the file stays fast on a busy CPU.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial.distance import cdist

from refocuslib import dpm, imaging, io, localize, metrics
from refocuslib.datasets.deepz import composite

FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
THRESHOLD = 150.0

# integer nm coordinates: distances are then exactly reproducible under translation and permutation
coords = st.integers(min_value=0, max_value=600)
point_sets = st.lists(st.tuples(coords, coords), min_size=0, max_size=7).map(
    lambda pts: np.array(pts, dtype=float).reshape(-1, 2))


def _matched_distance(res, pred, truth):
    if res.tp == 0:
        return 0.0
    return float(np.linalg.norm(pred[res.pairs[:, 0]] - truth[res.pairs[:, 1]], axis=1).sum())


# ------------------------------------------------------------------------------------------ match_points
@FAST
@given(point_sets, point_sets)
def test_match_points_counts_and_optimal_size(pred, truth):
    res = localize.match_points(pred, truth, THRESHOLD)
    assert res.tp + res.fp == len(pred) and res.tp + res.fn == len(truth)
    assert 0.0 <= res.jaccard <= 1.0
    assert len(set(res.pairs[:, 0])) == res.tp == len(set(res.pairs[:, 1]))  # one-to-one
    if len(pred) and len(truth):
        assert np.all(cdist(pred, truth)[res.pairs[:, 0], res.pairs[:, 1]] <= THRESHOLD)
        graph = csr_matrix((cdist(pred, truth) <= THRESHOLD).astype(int))
        best = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
        assert res.tp == best  # as many matches as any one-to-one assignment within the threshold allows


@FAST
@given(point_sets, point_sets)
def test_match_points_symmetric(pred, truth):
    ab = localize.match_points(pred, truth, THRESHOLD)
    ba = localize.match_points(truth, pred, THRESHOLD)
    assert (ab.tp, ab.fp, ab.fn) == (ba.tp, ba.fn, ba.fp) and ab.jaccard == ba.jaccard
    assert _matched_distance(ab, pred, truth) == pytest.approx(_matched_distance(ba, truth, pred), abs=1e-6)


@FAST
@given(point_sets, point_sets, st.integers(-10_000, 10_000), st.integers(-10_000, 10_000), st.randoms())
def test_match_points_invariant_to_translation_and_permutation(pred, truth, dx, dy, rnd):
    ref = localize.match_points(pred, truth, THRESHOLD)
    shift = np.array([dx, dy], dtype=float)
    moved = localize.match_points(pred + shift, truth + shift, THRESHOLD)
    order = list(range(len(pred)))
    rnd.shuffle(order)
    shuffled = localize.match_points(pred[order], truth, THRESHOLD)
    for other, p in ((moved, pred + shift), (shuffled, pred[order])):
        assert (other.tp, other.fp, other.fn) == (ref.tp, ref.fp, ref.fn)
        d_ref = _matched_distance(ref, pred, truth)
        d_other = _matched_distance(other, p, truth + shift if other is moved else truth)
        assert d_other == pytest.approx(d_ref, abs=1e-6)


# --------------------------------------------------------------------------------------- fit_gaussian_2d
gauss_params = st.tuples(st.floats(50, 2000), st.floats(-2, 2), st.floats(-2, 2), st.floats(1.0, 3.0),
                         st.floats(1.0, 3.0), st.floats(0, 200))


def _spot(p, size=15):
    A, dx, dy, sx, sy, B = p
    c = (size - 1) / 2
    true = np.array([[A, c + dx, c + dy, sx, sy, B]])
    return metrics.gaussian_2d_model(true, (size, size))[0], true[0]


@FAST
@given(gauss_params)
def test_fit_gaussian_recovers_and_is_transpose_symmetric(p):
    patch, true = _spot(p)
    fit = metrics.fit_gaussian_2d(np.stack([patch, patch.T]))
    assert fit.success.all()
    est = np.array([fit.amplitude[0], fit.x0[0], fit.y0[0], fit.sigma_x[0], fit.sigma_y[0], fit.offset[0]])
    np.testing.assert_allclose(est, true, rtol=1e-3, atol=1e-3)
    # the transposed patch swaps x and y
    np.testing.assert_allclose([fit.x0[1], fit.y0[1], fit.sigma_x[1], fit.sigma_y[1]],
                               [fit.y0[0], fit.x0[0], fit.sigma_y[0], fit.sigma_x[0]], rtol=1e-4, atol=1e-4)


PARAMS = ("amplitude", "offset", "x0", "y0", "sigma_x", "sigma_y", "sigma_x_um", "sigma_y_um", "fwhm_x_um",
          "fwhm_y_um")


def _finite_or_nan(fit):
    for name in PARAMS:
        v = fit[name]
        assert np.all(np.isfinite(v[fit.success])), name
        assert np.all(np.isnan(v[~fit.success])), name  # a failed fit reports no parameter


@FAST
@given(st.integers(0, 2 ** 31 - 1), st.floats(0.0, 500.0))
def test_fit_gaussian_under_noise_is_finite_or_nan(seed, level):
    rng = np.random.default_rng(seed)
    patches = np.concatenate([rng.poisson(level + 1.0, size=(4, 9, 9)).astype(float), np.zeros((1, 9, 9))])
    fit = metrics.fit_gaussian_2d(patches)
    _finite_or_nan(fit)
    assert not fit.success[-1]  # an all-zero patch is never a spot


@FAST
@given(hnp.arrays(np.float64, st.tuples(st.integers(3, 8), st.integers(3, 8)),
                  elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)))
def test_fit_gaussian_never_raises_on_finite_arrays(patch):
    _finite_or_nan(metrics.fit_gaussian_2d(patch))


# ----------------------------------------------------------------------------------------- DPM builders
shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))
lengths = st.floats(-50, 50)


@FAST
@given(shapes, st.floats(0.05, 2.0), st.floats(-80, 80), st.floats(-360, 360), lengths)
def test_plane_dpm_bounded_by_its_tilt(shape, pixel_um, tilt, azimuth, offset):
    d = dpm.plane(shape, pixel_um, tilt, azimuth, offset)
    h, w = shape
    r = 0.5 * pixel_um * np.hypot(h - 1, w - 1)  # farthest pixel centre from the image centre
    slack = abs(np.tan(np.radians(tilt))) * r
    assert d.shape == shape and np.all(np.abs(d - offset) <= slack + 1e-9 * (1 + abs(offset)))
    assert abs(d.mean() - offset) <= 1e-9 * (1 + slack + abs(offset))  # centred on the offset


@FAST
@given(shapes, st.floats(0.05, 2.0), st.floats(0.1, 100), st.floats(-180, 180), lengths, st.booleans())
def test_cylinder_dpm_between_apex_and_rim(shape, pixel_um, diameter, axis, offset, convex):
    d = dpm.cylinder(shape, pixel_um, diameter, axis, offset, convex)
    lo, hi = (offset - diameter / 2, offset) if convex else (offset, offset + diameter / 2)
    eps = 1e-9 * (1 + abs(offset) + diameter)
    assert np.all(d >= lo - eps) and np.all(d <= hi + eps)


@FAST
@given(shapes, st.floats(1.0, 300.0), lengths, lengths, st.sampled_from(["x", "y"]), st.floats(-10, 10))
def test_sinusoid_and_uniform_dpm_within_range(shape, period, a, b, axis, phase):
    z_min, z_max = min(a, b), max(a, b)
    d = dpm.sinusoid(shape, period, z_min, z_max, axis, phase)
    assert d.shape == shape and np.all(d >= z_min) and np.all(d <= z_max)
    assert np.all(dpm.uniform(shape, a) == a)


# -------------------------------------------------------------------------------------------- composite
@FAST
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.floats(-5, 5), st.floats(0.1, 2.0),
       st.integers(0, 2 ** 31 - 1))
def test_composite_stays_within_the_stack(nz, h, w, z0, step, seed):
    rng = np.random.default_rng(seed)
    stack = rng.normal(size=(nz, h, w))
    zs = z0 + step * np.arange(nz)
    surface = rng.uniform(z0 - 3 * step, zs[-1] + 3 * step, size=(h, w))  # also beyond the stack: clipped
    out = composite(stack, zs, surface).numpy()
    assert out.shape == (h, w)
    assert np.all(out >= stack.min(0) - 1e-12) and np.all(out <= stack.max(0) + 1e-12)
    on_plane = composite(stack, zs, np.full((h, w), zs[-1])).numpy()
    np.testing.assert_allclose(on_plane, stack[-1], atol=1e-12)


# ------------------------------------------------------------------------------------- TIFF round trip
F32_BIG = float(np.float32(1e30))
tiff_arrays = st.sampled_from([np.float32, np.uint8, np.uint16]).flatmap(
    lambda dt: hnp.arrays(dt, st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
                          elements=(st.floats(-F32_BIG, F32_BIG, width=32) if dt == np.float32 else None)))


@FAST
@given(tiff_arrays, st.floats(1e-3, 100.0), st.one_of(st.none(), st.floats(1e-3, 100.0)))
def test_tiff_round_trip(tmp_path, arr, pixel_um, z_step_um):
    p = io.write_tiff(tmp_path / "prop.tif", arr, pixel_um=pixel_um, z_step_um=z_step_um, axes="ZYX",
                      metadata={"n": int(arr.size)})
    back, meta = io.read_tiff(p)
    assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)
    assert meta["pixel_um"] == pixel_um and meta["z_step_um"] == z_step_um and meta["axes"] == "ZYX"
    assert meta["metadata"] == {"n": int(arr.size)}


# ----------------------------------------------------------------------------------------- normalisation
@FAST
@given(st.integers(0, 2 ** 31 - 1), st.floats(0.5, 200.0), st.floats(-1000.0, 1000.0))
def test_deepz_normalisation_invariant_to_gain_and_offset(seed, gain, offset):
    rng = np.random.default_rng(seed)
    img = rng.poisson(20.0, size=(24, 24)).astype(float)
    img[rng.integers(0, 24, 6), rng.integers(0, 24, 6)] += rng.uniform(200, 2000, 6)  # a few beads
    ref = imaging.normalize_deepz(img)
    scaled = imaging.normalize_deepz(gain * img + offset)
    assume(np.isfinite(ref).all())
    np.testing.assert_allclose(scaled, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    np.testing.assert_allclose(imaging.normalize_percentile(gain * img + offset), imaging.normalize_percentile(img),
                               rtol=1e-4, atol=1e-5)
