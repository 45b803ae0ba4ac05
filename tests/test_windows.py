"""Windowing and time alignment (the frame grid is where modalities meet)."""

import numpy as np

from pipeline.labels import fill_nearest, rows_to_frames
from heads.windows import frame_windows, overlap_add, segments_to_frames


def test_frame_windows_tail_aligned_and_short():
    w = frame_windows(1000, 400, 150)
    assert w[0] == (0, 400) and w[-1] == (600, 1000)
    assert all(e - s == 400 for s, e in w)
    assert frame_windows(850, 400, 150)[-1] == (450, 850)
    assert frame_windows(700, 400, 300) == [(0, 400), (300, 700)]  # no duplicate tail
    assert frame_windows(120, 400, 150) == [(0, 120)]               # one padded window
    assert frame_windows(0, 400, 150) == []


def test_overlap_add_reconstructs_known_signal():
    rng = np.random.default_rng(0)
    sig = rng.normal(size=(1234, 3)).astype(np.float32)
    wins = frame_windows(len(sig), 400, 150)
    out = overlap_add([sig[s:e] for s, e in wins], wins, len(sig))
    np.testing.assert_allclose(out, sig, atol=1e-6)
    # a short video: the padded window carries garbage beyond its end, which must be ignored
    short = sig[:50]
    padded = np.concatenate([short, np.full((350, 3), 99.0, np.float32)])
    np.testing.assert_allclose(overlap_add([padded], frame_windows(50, 400, 150), 50), short, atol=1e-6)


def test_overlap_add_is_mean_of_covering_windows():
    out = overlap_add([np.ones((4, 1)), 3 * np.ones((4, 1))], [(0, 4), (2, 6)], 8)
    np.testing.assert_allclose(out[:6, 0], [1, 1, 2, 2, 3, 3])
    assert np.isnan(out[6:]).all()


def test_segments_to_frames_average_and_uncovered():
    vals, cov = segments_to_frames(np.array([[1.0], [3.0]]), np.array([0, 5]), np.array([10, 15]), 20)
    np.testing.assert_allclose(vals[:15, 0], [1] * 5 + [2] * 5 + [3] * 5)
    assert cov[:15].all() and not cov[15:].any() and np.isnan(vals[15:]).all()
    vals, cov = segments_to_frames(np.array([[1.0], [3.0]]), np.array([0, 5]), np.array([10, 15]), 20,
                                   seg_valid=np.array([True, False]))
    np.testing.assert_allclose(vals[:10, 0], 1.0)
    assert not cov[10:].any()


def test_rows_to_frames_50hz_rows_on_30fps_grid():
    m = 500  # 10 s of 20-ms rows
    t0 = (np.arange(m) * 0.02).astype(np.float32)
    t1 = (np.arange(1, m + 1) * 0.02).astype(np.float32)
    f = 300
    idx, mask = rows_to_frames(t0, t1, np.ones(m, bool), f, 30.0)
    assert mask.all()
    np.testing.assert_array_equal(idx, np.floor(np.arange(f) / 30.0 / 0.02 + 1e-9).astype(int))


def test_rows_to_frames_gaps_invalid_rows_and_half_row_rule():
    m = 500
    t0 = np.arange(m) * 0.02
    t1 = t0 + 0.02
    valid = np.ones(m, bool)
    valid[100:150] = False                       # 2.0-3.0 s invalid (e.g. no speech model output)
    keep = (t0 < 5.0) | (t0 >= 6.0)              # 5.0-6.0 s missing rows
    idx, mask = rows_to_frames(t0[keep], t1[keep], valid[keep], 300, 30.0)
    t = np.arange(300) / 30.0
    inside_gap = ((t > 2.0 + 0.011) & (t < 3.0 - 0.011)) | ((t > 5.0 + 0.011) & (t < 6.0 - 0.011))
    assert not mask[inside_gap].any()
    assert mask[~inside_gap & ~((t >= 2.0) & (t < 3.0)) & ~((t >= 5.0) & (t < 6.0))].all()
    assert mask[60] and mask[180]  # t = 2.0 s exactly / 6.0 s: first frame of the gap end rows
    # frames within half a row of a row edge snap to the nearest row; farther ones are masked
    idx2, mask2 = rows_to_frames(np.array([0.0, 1.0]), np.array([0.2, 1.2]), None, 8, 4.0)
    # t = 0 (in), .25 (0.05 after row 0: snap), .5, .75 (masked), 1.0 (in), 1.25 (snap), 1.5, 1.75
    assert mask2.tolist() == [True, True, False, False, True, True, False, False]
    assert idx2[mask2].tolist() == [0, 0, 1, 1] and (idx2[~mask2] == -1).all()


def test_rows_to_frames_float32_frame_rows_map_one_to_one():
    fps = 29.97
    n = 90000  # 50 minutes: float32 rounding of t0 must not shift frame i to row i-1
    i = np.arange(n)
    t0, t1 = (i / fps).astype(np.float32), ((i + 1) / fps).astype(np.float32)
    idx, mask = rows_to_frames(t0, t1, None, n, fps)
    assert mask.all() and (idx == i).all()


def test_fill_nearest():
    x = np.arange(6, dtype=np.float32)[:, None]
    m = np.array([False, True, False, False, True, False])
    np.testing.assert_array_equal(fill_nearest(x, m)[:, 0], [1, 1, 1, 4, 4, 4])
