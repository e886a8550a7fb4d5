"""Neuron activity pipeline (Deep-Z Fig. 3): simulated worm, segmentation, traces, spectral clustering."""
import numpy as np
import pytest
import torch
from scipy import linalg, ndimage
from sklearn.metrics import adjusted_rand_score

from refocuslib import activity as A
from refocuslib import imaging
from refocuslib import worm as W
from refocuslib.optics import WORM_20X


# ------------------------------------------------------------------------------------ synthetic traces
def planted_traces(k_true, n_per=15, T=120, noise=0.3, seed=0, anti=False):
    """k_true groups of waveforms: smooth random signals made mutually uncorrelated (QR), each neuron its
    group's waveform times a random amplitude plus white noise and a baseline. ``anti``: group 1 is the
    negative of group 0 (an anti-correlated pair)."""
    rng = np.random.default_rng(seed)
    raw = ndimage.gaussian_filter1d(rng.standard_normal((T, k_true)), 3, axis=0)
    raw -= raw.mean(0)
    q, _ = np.linalg.qr(raw)
    shapes = q.T * np.sqrt(T)  # unit-variance, zero-mean, mutually uncorrelated
    if anti:
        shapes[1] = -shapes[0]
    X, y = [], []
    for g in range(k_true):
        for _ in range(n_per):
            X.append(rng.uniform(0.5, 2.0) * shapes[g] + noise * rng.standard_normal(T) + rng.uniform(50, 200))
            y.append(g)
    return np.array(X), np.array(y)


@pytest.mark.parametrize("k_true", [2, 3, 4, 5])
def test_spectral_clustering_recovers_planted_clusters_and_k(k_true):
    F, truth = planted_traces(k_true)
    dF, F0 = A.delta_f(F)
    S = A.similarity_matrix(dF, sigma=1.5, variant="zscore")
    res = A.spectral_clustering(S, seed=0)
    assert res.k == k_true
    assert A.cluster_ari(res.labels, truth) == pytest.approx(1.0)
    # k eigenvalues below the bulk, then the largest gap
    assert np.argmax(res.gaps[1:10]) + 2 == k_true
    assert res.eigenvalues[k_true] - res.eigenvalues[k_true - 1] > 0.1
    # scikit-learn's SpectralClustering on the same affinity agrees
    sk = A.sklearn_spectral_clustering(S, res.k, seed=0)
    assert adjusted_rand_score(sk, res.labels) == pytest.approx(1.0)


def test_anti_correlated_groups_are_separated_at_given_k():
    """Two anti-correlated groups plus a third one: the embedding separates all three when k = 3 (with the
    dense σ = 1.5 kernel the anti-correlated split dominates the spectrum, so the eigengap alone need not
    find k = 3 — the notebook reports both)."""
    F, truth = planted_traces(3, anti=True)
    dF, _ = A.delta_f(F)
    S = A.similarity_matrix(dF, sigma=1.5, variant="zscore")
    anti = S[np.ix_(truth == 0, truth == 1)].mean()
    unc = S[np.ix_(truth == 0, truth == 2)].mean()
    assert anti == pytest.approx(np.exp(-4 / 1.5 ** 2), rel=0.1) and unc == pytest.approx(np.exp(-2 / 1.5 ** 2),
                                                                                          rel=0.15)
    res = A.spectral_clustering(S, k=3, seed=0)
    assert A.cluster_ari(res.labels, truth) == pytest.approx(1.0)
    assert A.cluster_ari(A.sklearn_spectral_clustering(S, 3), truth) == pytest.approx(1.0)


def test_generalised_eigenproblem_and_similarity():
    F, _ = planted_traces(3, n_per=6)
    dF, _ = A.delta_f(F)
    S = A.similarity_matrix(dF, sigma=1.5, variant="zscore")
    assert np.allclose(np.diag(S), 1) and np.allclose(S, S.T) and S.min() > 0
    # identical shapes → 1, opposite shapes → exp(−4/σ²) (Eq. 14 with unit-variance traces)
    x = np.sin(np.linspace(0, 6, 50))
    S2 = A.similarity_matrix(np.stack([x, 3 * x, -x]), sigma=1.5, variant="zscore")
    assert S2[0, 1] == pytest.approx(1.0) and S2[0, 2] == pytest.approx(np.exp(-4 / 1.5 ** 2))
    res = A.spectral_clustering(S, k=3)
    W_ = S - np.eye(len(S))
    D = np.diag(W_.sum(1))
    L = D - W_
    v = res.eigenvectors
    assert res.eigenvalues[0] == pytest.approx(0, abs=1e-10)
    assert np.allclose(L @ v, D @ v * res.eigenvalues[None, :], atol=1e-8)
    assert np.allclose(res.eigenvalues, linalg.eigh(L, D, eigvals_only=True))
    # the reorder puts each cluster in one block
    assert np.all(np.diff(res.labels[res.order]) >= 0)


# ----------------------------------------------------------------------------------- segmentation
def blob_volume(centres_um, voxel_um, shape, radius_um=1.0, photons=400.0, noise_seed=0, haze=20.0):
    """Gaussian nuclei on a hazy background with Poisson noise."""
    vol = np.zeros(shape)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for x, y, z in centres_um:
        d2 = ((zz * voxel_um[0] - z) ** 2 + ((yy + 0.5) * voxel_um[1] - y) ** 2
              + ((xx + 0.5) * voxel_um[2] - x) ** 2)
        vol += photons * np.exp(-d2 / (2 * (radius_um / 1.5) ** 2))
    vol += haze + ndimage.gaussian_filter(vol, 6) * 3
    return np.random.default_rng(noise_seed).poisson(vol).astype(float)


def test_watershed_counts_planted_nuclei():
    voxel = (0.5, 0.325, 0.325)
    rng = np.random.default_rng(3)
    shape = (30, 64, 64)
    centres = []
    while len(centres) < 14:
        c = np.array([rng.uniform(2, 19), rng.uniform(2, 19), rng.uniform(2, 13)])
        if all(np.linalg.norm(c - p) >= 3.0 for p in centres):
            centres.append(c)
    centres.append(centres[0] + np.array([2.6, 0, 0]))  # a touching pair the watershed must split
    centres = np.array(centres)
    assert np.min([np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:]]) >= 2.5
    vol = blob_volume(centres, voxel, shape)
    seg = A.segment_neurons(vol, voxel, min_distance_um=2.0)
    assert seg.n == len(centres)
    m = A.detection_recall(seg.centres_um(), centres, threshold_um=1.0)
    assert m.recall == 1.0 and m.precision == 1.0
    assert set(np.unique(seg.labels)) == set(range(seg.n + 1))
    # 2D: the same machinery on the in-focus plane of nuclei laid out in that plane
    flat = []
    while len(flat) < 8:
        c = np.array([rng.uniform(2, 19), rng.uniform(2, 19), 7.0])
        if all(np.linalg.norm(c - p) >= 3.0 for p in flat):
            flat.append(c)
    flat = np.array(flat)
    seg2 = A.segment_neurons(blob_volume(flat, voxel, shape)[14], voxel[1:], min_distance_um=2.0)
    assert seg2.n == 8
    assert A.detection_recall(seg2.centres_um(), flat[:, :2], threshold_um=1.0).recall == 1.0


def test_neuron_traces_mean_of_brightest_voxels():
    labels = np.zeros((4, 6), np.int32)
    labels[:2, :3] = 1
    labels[2:, 3:] = 2
    frames = np.arange(2 * 24, dtype=float).reshape(2, 4, 6)
    F = A.neuron_traces(frames, labels, n_brightest=2)
    for t in range(2):
        v1 = np.sort(frames[t][labels == 1])[-2:].mean()
        v2 = np.sort(frames[t][labels == 2])[-2:].mean()
        assert F[0, t] == pytest.approx(v1) and F[1, t] == pytest.approx(v2)
    # fewer voxels than n_brightest: all of them
    assert A.neuron_traces(frames, labels, 100)[0, 0] == pytest.approx(frames[0][labels == 1].mean())


def test_delta_f_and_activity_selection():
    rng = np.random.default_rng(0)
    T = 200
    active = 100 + 30 * np.sin(np.arange(T) / 9)[None] * rng.uniform(0.8, 1.2, (10, 1))
    quiet = 100 + rng.normal(0, 2, (12, T))
    F = np.vstack([quiet[:6], active, quiet[6:]])
    dF, F0 = A.delta_f(F)
    assert np.allclose(F0, F.mean(1)) and np.allclose(dF.mean(1), 0)
    dFp, F0p = A.delta_f(F, baseline="percentile", percentile=10)
    assert np.allclose(F0p, np.percentile(F, 10, axis=1))
    sel = A.select_active(dF)
    assert sorted(sel) == list(range(6, 16))
    assert list(A.select_active(dF, n_active=3)) == list(np.argsort(-dF.std(1))[:3])


def test_register_frames_recovers_translations():
    rng = np.random.default_rng(1)
    base = np.zeros((64, 64))
    base[tuple(rng.integers(12, 52, (2, 12)))] = 1  # nuclei on a dark background
    base = ndimage.gaussian_filter(base, 1.5) * 100 + 1
    shifts = np.array([[0, 0], [1.5, -2.25], [-3.0, 0.5]])
    frames = np.stack([ndimage.shift(base, s, order=3, mode="nearest") for s in shifts])
    reg = A.register_frames(frames, others=[2 * frames])
    assert np.allclose(reg.shifts_px, -shifts, atol=0.15)
    assert np.abs(reg.frames[1, 8:-8, 8:-8] - base[8:-8, 8:-8]).max() < 0.05 * np.ptp(base)
    assert np.allclose(reg.others[0], 2 * reg.frames, atol=1e-4)


# ------------------------------------------------------------------------------------------- the worm
def test_worm_reproducible_with_documented_nuclei_and_depth():
    a = W.simulate_worm(7)
    b = W.simulate_worm(7)
    c = W.simulate_worm(8)
    assert len(a) == 180 and a.n_frames == 60
    for f in ("centres_um", "semi_axes_um", "groups", "group_signals", "shifts_um", "nuclear_photons"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.centres_um, c.centres_um)
    z = a.centres_um[:, 2]
    assert np.all(np.abs(z) <= 10.0) and z.max() - z.min() > 15.0  # spread over ±10 µm
    d = np.linalg.norm(a.centres_um[:, None] - a.centres_um[None], axis=-1) + 1e3 * np.eye(len(a))
    assert d.min() >= 2.6
    h, w = a.shape_yx
    assert np.all((a.centres_um[:, :2] > 0) & (a.centres_um[:, :2] < [w * a.pixel_um, h * a.pixel_um]))
    counts = np.bincount(a.groups, minlength=4)
    assert counts.sum() == 180 and np.all(counts > 0)
    assert np.all(a.traces[a.groups == 0] == 0) and np.all(a.traces[a.groups > 0].max(1) > 0.5)
    # anti-correlated groups
    assert np.corrcoef(a.group_signals[1], a.group_signals[2])[0, 1] == pytest.approx(-1.0)
    assert np.all(a.shifts_um[0] == 0) and np.abs(np.diff(a.shifts_um, axis=0)).max() < 2.0
    assert len(W.simulate_worm(0, n_nuclei=150)) == 150


def test_worm_psf_mirror_matches_imaging():
    worm = W.simulate_worm(0, n_nuclei=10, shape_yx=(64, 64), half_width_um=5, depth_um=2,
                           nucleus_radius_um=(0.8, 1.0), n_frames=2)
    k = W.psf_stack_for_worm(worm, WORM_20X, 0.5)
    ref = imaging.psf_stack_for_volume(WORM_20X, (k.shape[0] + 1) // 2, 0.5, k.shape[-1])
    assert torch.allclose(k, ref, atol=1e-12)


@pytest.fixture(scope="module")
def small_worm():
    """A CI-scale worm (40 nuclei over ±5 µm, 40 frames), its single-plane video and its scanned z-stacks."""
    worm = W.simulate_worm(3, n_nuclei=40, shape_yx=(96, 96), half_width_um=7.0, depth_um=5.0, n_frames=40,
                           group_fractions=(0.4, 0.2, 0.2, 0.2), motion_um=0.3)
    planes = np.arange(-6.0, 6.01, 2.0)
    psf = W.psf_stack_for_worm(worm, WORM_20X, 0.5, planes)
    video = W.render_video(worm, rng=5, psf_stack=psf)
    stacks = W.render_stacks(worm, planes, psf_stack=psf)
    return worm, planes, psf, video, stacks


def test_render_video_single_plane_reproducible(small_worm):
    worm, _, psf, v1, (nuc, cal) = small_worm
    v2 = W.render_video(worm, rng=5, psf_stack=psf)
    assert v1.nuclear.shape == v1.calcium.shape == (40, 96, 96)
    assert np.array_equal(v1.nuclear, v2.nuclear) and np.array_equal(v1.calcium, v2.calcium)
    assert not np.array_equal(v1.nuclear, W.render_video(worm, rng=6, psf_stack=psf).nuclear)
    # the video is the z = 0 plane of the scanned stacks
    assert np.allclose(v1.nuclear_photons, nuc[:, 3], rtol=1e-4, atol=1e-3)
    assert np.allclose(v1.calcium_photons, cal[:, 3], rtol=1e-4, atol=1e-3)
    # photons are conserved up to the light spilling out of the field
    total = v1.nuclear_photons[0].sum() / worm.nuclear_photons.sum()
    assert 0.8 < total <= 1.0
    # the nuclear label is static (up to motion), the calcium channel follows the activity
    assert v1.nuclear_photons.sum((1, 2)).std() < 0.01 * v1.nuclear_photons.sum((1, 2)).mean()
    assert v1.calcium_photons.sum((1, 2)).std() > 0.02 * v1.calcium_photons.sum((1, 2)).mean()
    # frame t is frame 0 moved by the body translation (registration recovers it)
    reg = A.register_frames(v1.nuclear_photons)
    assert np.allclose(reg.shifts_px[:, ::-1] * worm.pixel_um, -worm.shifts_um, atol=0.05)


def test_end_to_end_scanned_stack_beats_single_plane(small_worm):
    """CI-scale pipeline on the simulated worm: a (mechanically scanned) z-stack video finds more neurons than
    the single-plane video, and its clusters follow the planted activity groups."""
    worm, planes, psf, video, (nuc, cal) = small_worm
    rng = np.random.default_rng(2)
    nuc = rng.poisson(0.8 * nuc + 16).astype(np.float32)
    cal = rng.poisson(0.8 * cal + 16).astype(np.float32)
    reg = A.register_frames(nuc.max(1))
    nuc = np.stack([ndimage.shift(s, (0, *d), order=1, mode="nearest") for s, d in zip(nuc, reg.shifts_px)])
    cal = np.stack([ndimage.shift(s, (0, *d), order=1, mode="nearest") for s, d in zip(cal, reg.shifts_px)])
    r3 = A.analyze_activity(nuc, cal, (2.0, worm.pixel_um, worm.pixel_um), seed=0)
    reg2 = A.register_frames(video.nuclear, others=[video.calcium])
    r2 = A.analyze_activity(reg2.frames, reg2.others[0], (worm.pixel_um, worm.pixel_um), seed=0)
    truth = worm.centres_at(0)
    e3 = A.compare_with_truth(r3, truth, worm.groups, z0_um=planes[0], k_true=3)
    e2 = A.compare_with_truth(r2, truth, worm.groups)
    assert e3.n == r3.segmentation.n and e3.match.tp + e3.match.fn == len(worm)
    assert e3.n > e2.n and e3.recall > e2.recall
    # the comparison is the manual one: matched active neurons, their planted groups
    pairs = dict(e3.match.pairs.tolist())
    keep = [i for i, n in enumerate(r3.active) if n in pairs]
    assert e3.n_scored == len(keep)
    assert np.array_equal(e3.truth_groups, worm.groups[[pairs[r3.active[i]] for i in keep]])
    assert e3.ari == pytest.approx(A.cluster_ari(r3.clustering.labels[keep], e3.truth_groups))
    # far above chance: beats every one of 200 label permutations
    assert e3.ari > np.max(e3.chance_ari(200)) and e3.ari > 0.2
    assert e3.ari_vs_sklearn > 0.5


# ---------------------------------------------------------------------------------------- bad input
def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="n_nuclei"):
        W.simulate_worm(0, n_nuclei=0)
    with pytest.raises(ValueError, match="n_nuclei"):
        W.simulate_worm(0, n_nuclei=2000)
    with pytest.raises(ValueError, match="group_fractions"):
        W.simulate_worm(0, group_fractions=(1, 1))
    with pytest.raises(ValueError, match="depth_um"):
        W.simulate_worm(0, depth_um=-1)
    with pytest.raises(ValueError, match="shape_yx"):
        W.simulate_worm(0, shape_yx=(40, 40))
    worm = W.simulate_worm(0, n_nuclei=5, shape_yx=(80, 80), half_width_um=5, n_frames=2)
    with pytest.raises(ValueError, match="microscope"):
        W.render_video(worm, WORM_20X.replace(pixel_um=0.1))
    with pytest.raises(ValueError, match="frame"):
        worm.centres_at(5)
    with pytest.raises(ValueError, match="image"):
        A.segment_neurons(np.zeros(10), 0.3)
    with pytest.raises(ValueError, match="voxel_um"):
        A.segment_neurons(np.zeros((8, 8, 8)), (0.5, 0.3))
    with pytest.raises(ValueError, match="background_um"):
        A.segment_neurons(np.zeros((8, 8)), 0.3, smooth_um=2, background_um=1)
    with pytest.raises(ValueError, match="sigma"):
        A.similarity_matrix(np.ones((3, 5)), np.ones(3), sigma=0)
    with pytest.raises(ValueError, match="S"):
        A.spectral_clustering(np.ones((3, 4)))
    with pytest.raises(ValueError, match="k"):
        A.spectral_clustering(np.ones((4, 4)), k=9)
    with pytest.raises(ValueError, match="reference"):
        A.register_frames(np.zeros((3, 8, 8)), reference=5)
    with pytest.raises(ValueError, match="frames"):
        A.neuron_traces(np.zeros((3, 8, 8)), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="baseline"):
        A.delta_f(np.ones((2, 5)), baseline="median")
    with pytest.raises(ValueError, match="threshold_um"):
        A.detection_recall(np.zeros((1, 3)), np.zeros((1, 3)), threshold_um=0)
    with pytest.raises(ValueError, match="labels"):
        A.cluster_ari([0, 1], [0])
    with pytest.raises(ValueError, match="truth_um"):
        A.compare_with_truth(None, np.zeros((3, 2)), np.zeros(3))


def test_analyze_activity_on_an_empty_video():
    """No neuron in the field: an empty result, no clustering (and no error)."""
    rng = np.random.default_rng(0)
    frames = rng.poisson(20.0, (6, 32, 32)).astype(float)
    res = A.analyze_activity(np.full_like(frames, 20.0), frames, (0.325, 0.325))
    assert res.segmentation.n == 0 and res.clustering is None and res.F.shape == (0, 6)


class _PassThrough(torch.nn.Module):
    """Stand-in generator that returns its image channel (tests the bookkeeping around the network)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, image, dpm):
        return image * self.w + 0 * dpm


def test_refocus_video_keeps_intensity_changes_between_frames():
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random((40, 40)), 2) * 100 + 10
    frames = np.stack([base, 2 * base - 10, base])  # frame 1: signal above the background doubled
    out = A.refocus_video(_PassThrough(), frames, [-2.0, 0.0, 2.0])
    assert out.shape == (3, 3, 40, 40)
    # one normalisation for the whole video: output = frame − background, in the input's units
    from refocuslib.imaging import triangle_background
    bg = triangle_background(np.median(frames, axis=0))
    assert np.allclose(out[0, 1], base - bg, rtol=1e-4, atol=1e-3)
    assert np.allclose(out[1, 0], 2 * base - 10 - bg, rtol=1e-4, atol=1e-3)


def test_similarity_eq14_as_printed():
    """Eq. 14 as printed: S_ij = exp(−‖ΔF_i/F_i0 − ΔF_j/F_j0‖²/σ²), the norm summed over time, σ = 1.5."""
    dF = np.array([[1.0, -1.0, 0.5], [2.0, -2.0, 1.0], [0.0, 0.0, 0.0]])
    F0 = np.array([10.0, 20.0, 5.0])
    S = A.similarity_matrix(dF, F0, sigma=1.5)
    x = dF / F0[:, None]
    for i in range(3):
        for j in range(3):
            assert S[i, j] == pytest.approx(np.exp(-np.sum((x[i] - x[j]) ** 2) / 1.5 ** 2))
    assert S[0, 1] == pytest.approx(1.0)  # the same relative change
    with pytest.raises(ValueError, match="F0"):
        A.similarity_matrix(dF)
    with pytest.raises(ValueError, match="variant"):
        A.similarity_matrix(dF, F0, variant="other")


def test_planted_groups_with_eq14_as_printed():
    """Relative changes of a few percent to tens of percent (calcium traces) keep the planted groups apart."""
    F, truth = planted_traces(3)
    dF, F0 = A.delta_f(F)
    S = A.similarity_matrix(dF, F0, sigma=1.5)
    assert np.allclose(S, S.T) and np.allclose(np.diag(S), 1)


def test_render_video_camera_holds_the_given_numbers():
    """The video's camera is the imaging.Camera of render_video's numbers, and it drew the frames."""
    from refocuslib.imaging import Camera
    worm = W.simulate_worm(3, n_nuclei=6, shape_yx=(32, 32), half_width_um=3.0, depth_um=2.0, n_frames=2)
    v = W.render_video(worm, qe=0.7, gain=2.0, read_noise_e=3.0, baseline_adu=50.0, background_photons=5.0,
                       rng=np.random.default_rng(9))
    cam = Camera(qe=0.7, gain=2.0, read_noise_e=3.0, baseline_adu=50.0, background_photons=5.0)
    assert v.camera_model == cam and v.camera == {"qe": 0.7, "gain": 2.0, "read_noise_e": 3.0,
                                                  "baseline_adu": 50.0, "background_photons": 5.0}
    gen = np.random.default_rng(9)
    assert np.array_equal(v.nuclear, cam.counts(v.nuclear_photons, gen).numpy().astype(np.float32))
    assert np.array_equal(v.calcium, cam.counts(v.calcium_photons, gen).numpy().astype(np.float32))
