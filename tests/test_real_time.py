"""Real inputs keep their time: variable frame rate, audio that starts late (or early, or has a gap),
rotated phone videos, and the predict CSV's per-frame face/voice columns.

Every clip is generated here with PyAV, with timestamps set explicitly on a fine time base, so the
true presentation times are known exactly.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline import media
from pipeline.records import Video

TB = Fraction(1, 90000)
W, H = 64, 48


def _encode(path: Path, images: list[np.ndarray], times: list[float], rotation: int = 0,
            audio: tuple[np.ndarray, int, float] | None = None, audio_gap: tuple[float, float] | None = None) -> Path:
    """H.264 mp4 with frame i at `times[i]` s; optional mono AAC `audio` = (wave, rate, start_s) whose
    first sample is at start_s (pts offset), with samples inside `audio_gap` left out of the stream."""
    h, w = images[0].shape[:2]
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.time_base = vs.codec_context.time_base = TB
        if rotation:
            vs.set_display_rotation(rotation)
        aus = c.add_stream("aac", rate=audio[1], layout="mono") if audio is not None else None
        for img, t in zip(images, times):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts, f.time_base = int(round(t / TB)), TB
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if audio is not None:
            wave, sr, start = audio
            atb = Fraction(1, sr)
            for k in range(0, len(wave), 1024):
                t = start + k / sr
                if audio_gap and audio_gap[0] <= t < audio_gap[1]:
                    continue
                af = av.AudioFrame.from_ndarray(wave[None, k:k + 1024].astype(np.float32), format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = sr, int(round(start * sr)) + k, atb
                for p in aus.encode(af):
                    c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return path


def _gradient(i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([(xx * 4 + i * 9) % 256, (yy * 5) % 256, np.full_like(xx, (i * 17) % 256)], -1).astype(np.uint8)


def _record(path: Path, video_id: str = "v", **kw) -> Video:
    """The index record the adapters write (`video_record` from a probe)."""
    from pipeline.datasets.common import video_record

    return video_record(video_id, media.probe(path), "test", path.parent, {}, {})


# ------------------------------------------------------------------------------------------ VFR

VFR_TIMES = [i / 30 for i in range(60)] + [2.0 + i / 10 for i in range(20)]  # 30 fps for 2 s, then 10 fps


@pytest.fixture(scope="module")
def vfr(tmp_path_factory) -> Path:
    return _encode(tmp_path_factory.mktemp("vfr") / "vfr.mp4", [_gradient(i) for i in range(len(VFR_TIMES))],
                   VFR_TIMES)


def test_vfr_rows_sit_at_the_true_pts(vfr: Path, tmp_path: Path) -> None:
    """Face rows, reliability rows, the label grid, behaviour segments and the predict `time` column
    all carry the frames' real times (30 -> 10 fps), within 1 ms; `i / fps` would be 0.85 s off."""
    from extractors.behavior import frame_bounds, segment_frames
    from extractors.face import GradaFaceExtractor, FaceConfig, GradaEmbedder
    from extractors.reliability import ReliabilityConfig, ReliabilityExtractor
    from heads.data import frame_features, load_head_videos
    from pipeline.labels import rows_to_frames
    from affcache.predicting import frame_columns

    import torch

    truth = np.asarray(VFR_TIMES)
    t0, t1 = media.frame_times(vfr)
    assert np.abs(t0 - truth).max() < 1e-6 and np.abs(t1[:-1] - truth[1:]).max() < 1e-6
    decoded = np.concatenate([b.times for b in media.iter_frames(vfr)])
    np.testing.assert_allclose(decoded, t0, atol=1e-9)  # decode and demux agree

    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(1, len(truth) + 1, 3):
        cv2.imwrite(str(crops / f"{i:05d}.jpg"), np.full((32, 32, 3), 128, np.uint8))
    video = Video(**{**_record(vfr).to_dict(), "crops_dir": str(crops)})
    assert video.num_frames == len(truth) and len(video.frame_segments) <= 4  # a few pieces, not 80 times
    nominal_error = np.abs(np.arange(len(truth)) / video.fps - truth).max()
    assert nominal_error > 0.5, nominal_error  # i / fps really is wrong here (0.85 s at the rate change)

    weights = tmp_path / "grada.pth"
    torch.manual_seed(0)
    torch.save(GradaEmbedder("b1").state_dict(), weights)
    face = GradaFaceExtractor(FaceConfig(weights=str(weights), image_size=32, batch_size=8, device="cpu"))
    face.load()
    face_rows = face.compute(video, face.prepare(video))
    rel = ReliabilityExtractor(ReliabilityConfig(vad_backend="energy"))
    rel.load()
    rel_rows = rel.compute(video, rel.prepare(video))
    csv_time = frame_columns(video, {})["time"]
    grid = load_head_videos([video], None)[0].times

    errors = {
        "face t0": np.abs(face_rows["t0"] - truth).max(),
        "face t1": np.abs(face_rows["t1"][:-1] - truth[1:]).max(),
        "reliability t0": np.abs(rel_rows["t0"] - truth).max(),
        "predict time": np.abs(csv_time - truth).max(),
        "label grid": np.abs(grid - truth).max(),
    }
    print("largest VFR time error (s):", {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-3, errors
    assert face_rows["valid"][::3].all() and not face_rows["valid"][1::3].any()

    # each label frame finds its own face row (not a row up to 0.85 s away)
    idx, ok = rows_to_frames(face_rows["t0"], face_rows["t1"], None, len(truth), video.fps, grid)
    assert ok.all() and idx.tolist() == list(range(len(truth)))
    hv = load_head_videos([video], None)[0]
    hv.features = face_rows
    _, mask = frame_features(hv)
    assert mask[face_rows["valid"]].all()

    # a behaviour segment [2 s, 3 s) holds the frames shown then: 60..69, not round(t * 21 fps)
    assert segment_frames(2.0, 3.0, video.fps, frame_bounds(video)) == (60, 70)


def test_frame_segments_round_trip_and_old_index_records() -> None:
    """Pieces reproduce jittery millisecond timestamps within half a tick; a record without pieces
    (an index written before times were recorded) keeps the i / fps grid, and loads."""
    truth = np.round(np.arange(301) / 29.97, 3)  # 29.97 fps on a 1/1000 time base: steps 33/34 ms
    segs = media.frame_segments(truth[:-1], truth[1:], tol=5e-4)
    v = Video("x", "x.mp4", 29.97, 300, 10.0, False, "test", frame_segments=[list(s) for s in segs])
    t0, t1 = v.frame_grid()
    assert len(segs) < 10 and np.abs(t0 - truth[:-1]).max() <= 5e-4 + 1e-12
    assert np.abs(v.frame_grid(305)[0][300:] - (truth[-1] + np.arange(5) / 29.97)).max() < 2e-3  # past the end

    old = {"video_id": "o", "media_path": "o.mp4", "fps": 10.0, "num_frames": 3, "duration": 0.3,
           "has_audio": False, "split": "test"}
    rec = Video.from_dict(old)
    assert rec.rotation == 0 and rec.frame_segments == []
    np.testing.assert_allclose(rec.frame_grid()[0], [0.0, 0.1, 0.2])


def test_constant_rate_times_equal_the_nominal_grid(tmp_path: Path) -> None:
    from tiny_models import make_video

    path = make_video(tmp_path / "cfr.mp4", seconds=3.0, fps=10, audio=False)
    rec = _record(path)
    assert len(rec.frame_segments) == 1
    np.testing.assert_allclose(rec.frame_grid()[0], np.arange(rec.num_frames) / 10.0, atol=1e-12)


# ------------------------------------------------------------------------------------- audio time


def _click_track(sr: int, seconds: float, clicks_s: list[float]) -> np.ndarray:
    """Silence with a short click (17-sample Hann, peak on its centre sample) centred at each time."""
    wave = np.zeros(int(seconds * sr), np.float32)
    for c in clicks_s:
        k = int(round(c * sr))
        wave[k - 8:k + 9] = np.hanning(17) * 0.9
    return wave


def _onsets(x: np.ndarray, sr: int) -> list[float]:
    """Times of the clicks: centres of the runs above half the peak."""
    hot = np.abs(x) > 0.5 * np.abs(x).max()
    edges = np.flatnonzero(np.diff(np.r_[0, hot.astype(np.int8), 0]))
    return [(a + b - 1) / 2 / sr for a, b in zip(edges[::2], edges[1::2])]


@pytest.mark.parametrize("sr_in", [16000, 48000])
def test_late_audio_is_placed_at_its_real_time(tmp_path: Path, sr_in: int) -> None:
    """Audio whose first sample is at 0.94 s: silence before it, a click at 1.5 s stays at 1.5 s
    (it was at 0.56 s before); a gap inside the stream stays a gap."""
    start, clicks = 0.94, [1.5, 2.6]
    wave = _click_track(sr_in, 2.2, [c - start for c in clicks])
    path = _encode(tmp_path / "late.mp4", [_gradient(i) for i in range(40)], [i / 10 for i in range(40)],
                   audio=(wave, sr_in, start), audio_gap=(1.9, 2.2))
    x = media.read_audio(path, 16000)
    found = _onsets(x, 16000)
    errors = [abs(a - b) for a, b in zip(found, clicks)]
    print(f"late audio ({sr_in} Hz): clicks at {found} s, offset error {max(errors) * 1e3:.3f} ms")
    assert len(found) == 2 and max(errors) < 1e-3
    assert np.abs(x[: int(0.9 * 16000)]).max() < 1e-3  # silence before the track starts
    gap = x[int(1.94 * 16000):int(2.2 * 16000)]
    assert np.abs(gap).max() < 1e-2  # skipped stretch of the stream is silence, not shifted audio


def test_audio_that_starts_before_the_video_is_trimmed(tmp_path: Path) -> None:
    """Video starts at 0.5 s, audio at 0: sample 0 is the video's start, so a click at 1.0 s of the
    file is at 0.5 s of the video clock (where the frame shown then is)."""
    wave = _click_track(16000, 3.0, [1.0])
    path = _encode(tmp_path / "early.mp4", [_gradient(i) for i in range(20)], [0.5 + i / 10 for i in range(20)],
                   audio=(wave, 16000, 0.0))
    assert media.frame_times(path)[0][0] == 0.0
    found = _onsets(media.read_audio(path, 16000), 16000)
    assert len(found) == 1 and abs(found[0] - 0.5) < 1e-3, found


# ------------------------------------------------------------------------------------- rotation


def _marker_image() -> np.ndarray:
    """Upright 64x48 frame: grey, with a white block in the top-left corner."""
    img = np.full((H, W, 3), 60, np.uint8)
    img[:12, :16] = 255
    return img


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_applied_on_decode(tmp_path: Path, rotation: int) -> None:
    """Frames stored turned (as phones store them) come out upright in every decode path, probe
    reports the display size and the rotation, and the index record keeps it."""
    upright = _marker_image()
    stored = np.rot90(upright, -rotation // 90)  # turned clockwise; the display matrix turns it back
    path = _encode(tmp_path / f"rot{rotation}.mp4", [stored] * 5, [i / 10 for i in range(5)], rotation=rotation)
    info = media.probe(path)
    assert info.rotation == rotation and (info.width, info.height) == (W, H)
    frames = next(media.iter_frames(path)).images
    assert frames.shape[1:] == (H, W, 3)
    assert frames[0][:12, :16].mean() > 200 and frames[0][-12:, -16:].mean() < 120  # marker top-left
    small = media.frames_at(path, [0.25], size=(32, 24)).images[0]
    assert small.shape == (24, 32, 3) and small[:6, :8].mean() > 200
    rec = _record(path)
    assert rec.rotation == rotation and Video.from_dict(rec.to_dict()).rotation == rotation




def test_real_clip_stored_sideways_finds_faces_like_upright(realdata: Path, tmp_path: Path) -> None:
    """The real face clip re-stored sideways with a display matrix and the pixels turned (as a phone
    writes it): the default detector finds a face in at least 59 of its 60 frames (its faces are
    ~75 px: a detector view below ~1600 px misses some), and the boxes are in upright pixels."""
    clip = realdata / "facenet-examples" / "video.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} absent")
    n = 60
    images, times = [], []
    for batch in media.iter_frames(clip, batch_size=16):
        images += list(batch.images)
        times += list(batch.times)
        if len(images) >= n:
            break
    images, times = images[:n], times[:n]
    sideways = _encode(tmp_path / "sideways.mp4", [np.rot90(im, -1) for im in images], times, rotation=90)
    assert media.probe(sideways).rotation == 90
    from extractors.face_detection import FaceDetectorConfig, track_faces

    tracks = track_faces(str(sideways), FaceDetectorConfig(), limit=n)
    found = len(set(tracks.frame.tolist()))
    print(f"frames with a face on the real clip stored sideways + display matrix: {found} of {n}")
    assert tracks.decoded == n and tracks.frame_size == (1080, 1920) and found >= 59
    assert tracks.box[:, 2].max() > 1080 and tracks.box[:, 3].max() <= 1080  # upright (landscape) pixels


# ------------------------------------------------------------------------------------- predict CSV


def test_predict_frame_columns_face_box_and_vad(tmp_path: Path) -> None:
    """`face_found` and the box come from the face store's rows, `vad` from the reliability store's
    audio rows interpolated onto the frames' real times; no source -> empty cells (NaN)."""
    from affcache.predicting import frame_columns
    from pipeline.store import FeatureStore

    video = Video("v", str(tmp_path / "v.mp4"), 10.0, 6, 0.6, True, "test",
                  frame_segments=[[0, 7, 0.0, 0.1]])
    t0 = np.arange(6) / 10
    valid = np.array([1, 1, 0, 0, 1, 1], bool)
    box = np.where(valid[:, None], np.array([[1.0, 2.0, 11.0, 14.0]]), np.nan).astype(np.float32)
    face = FeatureStore.create(str(tmp_path / "face.zarr"), extractor="grada", fingerprint={"t": 1})
    face.write_video("v", {"emb": np.zeros((6, 4), np.float32), "t0": t0.astype(np.float32),
                           "t1": (t0 + 0.1).astype(np.float32), "valid": valid, "box": box})
    face.consolidate()
    vt0 = np.arange(0, 0.5, 0.02)  # audio stops at 0.5 s (frame 5 has no voice activity value)
    rel = FeatureStore.create(str(tmp_path / "rel.zarr"), extractor="reliability", fingerprint={"t": 1})
    rel.write_video("v", {"t0": t0.astype(np.float32), "t1": (t0 + 0.1).astype(np.float32),
                          "valid": np.ones(6, bool), "face": valid.astype(np.float32),
                          "vad": (vt0 >= 0.2).astype(np.float32), "vad_t0": vt0.astype(np.float32),
                          "vad_t1": (vt0 + 0.02).astype(np.float32)})
    rel.consolidate()
    cols = frame_columns(video, {"face": str(tmp_path / "face.zarr"), "reliability": str(tmp_path / "rel.zarr")})
    assert list(cols) == ["time", "face_found", "face_x0", "face_y0", "face_x1", "face_y1", "mouth_open", "vad"]
    assert np.isnan(cols["mouth_open"]).all()  # the reliability store here has no mouth signal
    assert cols["face_found"].tolist() == [1, 1, 0, 0, 1, 1]
    assert cols["face_x0"][0] == 1.0 and cols["face_y1"][4] == 14.0 and np.isnan(cols["face_x0"][2])
    assert cols["vad"][:2].tolist() == [0.0, 0.0] and cols["vad"][3] == 1.0 and np.isnan(cols["vad"][5])
    assert 0.0 < cols["vad"][2] <= 1.0  # 0.2 s: between the last silent and the first voiced row centre

    empty = frame_columns(video, {})
    assert np.isnan(empty["face_found"]).all() and np.isnan(empty["vad"]).all()


def test_predict_frame_columns_per_person(tmp_path: Path) -> None:
    """Stores of two persons (rows stacked person by person, `person` column): each person's face,
    box and mouth; the voice activity is the video's, the same for both."""
    from pipeline.persons import stack_persons
    from affcache.predicting import frame_columns, video_persons
    from pipeline.store import FeatureStore

    video = Video("v", str(tmp_path / "v.mp4"), 10.0, 4, 0.4, True, "test", frame_segments=[[0, 5, 0.0, 0.1]])
    t0 = (np.arange(4) / 10).astype(np.float32)
    base = {"emb": np.zeros((4, 2), np.float32), "t0": t0, "t1": t0 + 0.1, "valid": np.zeros(4, bool),
            "box": np.full((4, 4), np.nan, np.float32)}
    face_rows = stack_persons(base, 2)
    face_rows["valid"][[0, 1, 5, 6, 7]] = True  # person 0 in frames 0-1, person 1 in frames 1-3
    face_rows["box"][[0, 1]] = [10, 10, 20, 20]
    face_rows["box"][[5, 6, 7]] = [50, 10, 60, 20]
    face = FeatureStore.create(str(tmp_path / "face.zarr"), extractor="grada", fingerprint={"t": 1})
    face.write_video("v", face_rows)
    rel_rows = stack_persons({"t0": t0, "t1": t0 + 0.1, "valid": np.ones(4, bool),
                              "face": np.zeros(4, np.float32), "mouth_open": np.zeros(4, bool)}, 2)
    rel_rows["face"][[0, 1, 5, 6, 7]] = 1.0
    rel_rows["mouth_open"][[5, 6]] = True  # person 1 speaks
    vt0 = np.arange(0, 0.4, 0.02).astype(np.float32)
    rel = FeatureStore.create(str(tmp_path / "rel.zarr"), extractor="reliability", fingerprint={"t": 1})
    rel.write_video("v", {**rel_rows, "vad": np.ones(len(vt0), np.float32), "vad_t0": vt0, "vad_t1": vt0 + 0.02})
    urls = {"face": str(tmp_path / "face.zarr"), "reliability": str(tmp_path / "rel.zarr")}
    assert video_persons(video, urls) == [0, 1]
    p0, p1 = (frame_columns(video, urls, person=p) for p in (0, 1))
    assert p0["face_found"].tolist() == [1, 1, 0, 0] and p1["face_found"].tolist() == [0, 1, 1, 1]
    assert p0["face_x0"][0] == 10 and p1["face_x0"][1] == 50 and np.isnan(p1["face_x0"][0])
    assert np.isnan(p0["mouth_open"][2]) and p0["mouth_open"][:2].tolist() == [0, 0]  # no face: no value
    assert np.isnan(p1["mouth_open"][0]) and p1["mouth_open"][1:].tolist() == [1, 1, 0]
    assert np.array_equal(p0["vad"], p1["vad"]) and np.array_equal(p0["time"], p1["time"])
