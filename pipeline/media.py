"""Video and audio decoding with PyAV, and nothing else.

Why PyAV only: it links FFmpeg in-process (no `ffmpeg` CLI on PATH, no subprocess per video), it
releases the GIL while decoding (so a thread pool overlaps decode with model inference), and it
resamples audio in C (torchaudio wheels are bound to one torch build and break; see feasibility.md).

Conventions every caller relies on:
- Times are presentation times in seconds from the stream's first timestamp
  (`pts * time_base - stream.start_time`). Variable-frame-rate files are handled by pts, never by
  counting frames, so a frame's time is what a player would show.
  `frame_times(path)` gives every frame's [start, end) from a demux-only pass, so callers that
  need the time of frame i (feature rows, the label grid, the predict CSV) never use `i / fps`.
- Audio is placed on the video's clock: sample 0 of `read_audio` is at the video stream's start,
  so a track that starts late is padded with silence and one that starts early is trimmed.
- Frame indices are 0-based in presentation (= decoder output) order.
- Frames come out upright: a display matrix (phone videos store frames sideways and a rotation)
  is applied on decode, and `MediaInfo.width/height` are the display size.
- `size` is `(width, height)` of the upright frame, as in PIL/OpenCV; resizing runs inside
  FFmpeg's swscale.
- Every call opens its own container, so all functions are thread-safe.
- Every failure raises `MediaError` whose message names the file, the problem and a fix.
"""

from __future__ import annotations

import bisect
import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

__all__ = ["MediaError", "MediaInfo", "FrameBatch", "probe", "frame_times", "frame_segments", "iter_frames", "frames_at", "read_audio"]

_REENCODE_FIX = "re-download or re-export the file (a remux such as `ffmpeg -i in -c copy out.mp4` repairs many)"


class MediaError(Exception):
    """A media file cannot be read. `str(e)` names the file, the problem and a fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = _REENCODE_FIX):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; fix: {fix}")


@dataclass(frozen=True)
class MediaInfo:
    """What the container says about a file (never what its name says)."""

    path: str
    fps: float
    num_frames: int
    duration: float
    width: int
    height: int
    has_audio: bool
    audio_rate: int | None
    rotation: int = 0  # degrees counter-clockwise applied on decode (0, 90, 180, 270)
    frame_segments: tuple[tuple[int, int, float, float], ...] = ()  # see `frame_segments`


@dataclass
class FrameBatch:
    """A batch of decoded frames: images [B,H,W,3] uint8 RGB, times [B] float64 s, indices [B] int64."""

    images: np.ndarray
    times: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.times)


# --------------------------------------------------------------------------- opening


def _open(path: str | Path, need_video: bool = True) -> av.container.InputContainer:
    """Open `path` for reading, turning every way this can fail into a MediaError.

    Cheap checks (exists, is a file, non-empty) come first because FFmpeg's own messages for
    them ("Invalid data found when processing input") do not say what is actually wrong.
    """
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "file not found", "check the path (dataset root, file name, extension)")
    if not p.is_file():
        raise MediaError(p, "not a regular file (a directory?)", "point to the media file itself")
    if not os.access(p, os.R_OK):
        raise MediaError(p, "permission denied", "make the file readable (chmod/ownership)")
    if p.stat().st_size == 0:
        raise MediaError(p, "file is empty (0 bytes), probably an interrupted copy or download", _REENCODE_FIX)
    try:
        container = av.open(str(p), mode="r")
    except av.error.FFmpegError as e:
        raise MediaError(
            p,
            f"not a readable media container ({e.strerror or e}); the file is truncated (e.g. MP4 'moov' "
            "atom missing), corrupt, or not a video at all",
            _REENCODE_FIX,
        ) from e
    except (OSError, ValueError) as e:  # permissions, odd file types
        raise MediaError(p, f"cannot open ({e})", "check permissions and that it is a media file") from e
    if need_video and not container.streams.video:
        container.close()
        raise MediaError(
            p, "no video stream in the container (audio-only or data file?)", "use a file that contains video"
        )
    return container


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads: several times faster for H.264 on 2+ cores
    return stream


def _start_pts(stream) -> int:
    return stream.start_time if stream.start_time is not None else 0


def _decode_error(path: str | Path, e: Exception) -> MediaError:
    return MediaError(path, f"decoding failed mid-stream ({e}); the file is truncated or corrupt", _REENCODE_FIX)


# --------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class _PacketTable:
    """Sorted video packet pts plus what turns them into seconds (see `_packet_table`)."""

    pts: tuple[int, ...]
    time_base: Fraction
    start: int  # the stream's start pts (time 0)
    last_duration: int  # duration of the last frame in time_base units (0 when unknown)
    nominal_rate: float  # average/guessed rate (0 when unknown)


def _packet_pts(path: str | Path) -> tuple[int, ...]:
    """Sorted packet pts, cached per (file, size, mtime): callers such as the behaviour extractor
    call `frames_at` many times on one long file, and each call needs this table after its seek."""
    return _packet_table(path).pts


def _packet_table(path: str | Path) -> _PacketTable:
    st = Path(path).stat()
    return _packet_table_cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _packet_table_cached(path: str, size: int, mtime_ns: int) -> _PacketTable:
    """Presentation timestamps of all video packets, sorted: a demux-only pass (no decoding).

    Demuxing reads headers only, so this is cheap even for long files; it gives the frame count
    when the container does not store one (Matroska/WebM), maps a timestamp to a frame index after
    a seek (the index of a frame = how many frames are presented before it), and gives every
    frame's presentation time (`frame_times`).
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        pts: list[int] = []
        last_pts, last_duration = None, 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # flush packet at the end
                    continue
                p = packet.pts if packet.pts is not None else (packet.dts or 0)
                pts.append(p)
                if last_pts is None or p >= last_pts:
                    last_pts, last_duration = p, int(packet.duration or 0)
        except av.error.FFmpegError as e:
            raise _decode_error(path, e) from e
        rate = stream.average_rate or stream.guessed_rate
        return _PacketTable(tuple(sorted(pts)), Fraction(stream.time_base), _start_pts(stream), last_duration,
                            float(rate) if rate else 0.0)


def frame_times(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(t0, t1) float64 [N] of every frame: frame i is on screen during [t0[i], t1[i]).

    t0 is the presentation time relative to the stream's start (the times `iter_frames` yields),
    t1 the next frame's t0; the last frame lasts its packet duration, else the median step, else
    the nominal 1/fps. Why from packets: a demux-only pass (no decoding, cached per file) is the one
    cheap source that is right for variable-frame-rate files, where `i / fps` drifts by seconds.
    """
    table = _packet_table(path)
    if not table.pts:
        raise MediaError(path, "the video stream holds no frames", _REENCODE_FIX)
    tb = float(table.time_base)
    t0 = (np.asarray(table.pts, dtype=np.float64) - table.start) * tb
    step = table.last_duration * tb
    if step <= 0:
        diffs = np.diff(t0)
        diffs = diffs[diffs > 0]
        step = float(np.median(diffs)) if diffs.size else (1.0 / table.nominal_rate if table.nominal_rate > 0 else 0.04)
    t1 = np.empty_like(t0)
    t1[:-1] = t0[1:]
    t1[-1] = t0[-1] + step
    return t0, t1


def frame_segments(t0: np.ndarray, t1: np.ndarray, tol: float = 1e-4) -> tuple[tuple[int, int, float, float], ...]:
    """Frame boundaries (t0 of every frame, then t1 of the last) as straight pieces: a few numbers
    per rate change instead of one per frame, so an index record can carry a file's real times.

    Piece (first, count, time, step): boundary k (first <= k < first + count) is at
    time + (k - first) * step, within `tol` seconds of the true one. A constant-rate file is one
    piece; a file that drops from 30 to 10 fps is two or three. Greedy widest-cone fit, O(N).
    `pipeline.records.Video.frame_grid` expands them again.
    """
    b = np.concatenate([np.asarray(t0, np.float64), np.asarray(t1, np.float64)[-1:]]) if len(t0) else np.zeros(0)
    n = len(b)
    if n == 0:
        return ()
    d = np.diff(b)
    if n == 1 or np.all(np.abs(d - d[0]) <= 1e-12):  # constant rate: the common case, no loop
        return ((0, n, float(b[0]), float(d[0]) if n > 1 else 0.0),)
    pieces: list[tuple[int, int, float, float]] = []
    i = 0
    while i < n:
        lo, hi, j = -np.inf, np.inf, i + 1
        while j < n:
            k = j - i
            nlo, nhi = max(lo, (b[j] - tol - b[i]) / k), min(hi, (b[j] + tol - b[i]) / k)
            if nlo > nhi:
                break
            lo, hi, j = nlo, nhi, j + 1
        step = 0.0 if j == i + 1 else float(lo + hi) / 2
        pieces.append((i, j - i, float(b[i]), step))
        i = j
    return tuple(pieces)


def _fps(stream, pts: Sequence[int] | None) -> float:
    """Nominal frame rate: average_rate, else guessed_rate, else from timestamps (median step)."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and rate > 0:
            return float(rate)
    if pts and len(pts) > 1:
        step = float(np.median(np.diff(pts))) * float(stream.time_base)
        if step > 0:
            return 1.0 / step
    return 0.0


def probe(path: str | Path) -> MediaInfo:
    """Read fps, frame count, duration, size and audio presence from the container.

    fps comes from the stream (average_rate, then guessed_rate, then timestamps) because Aff-Wild2
    file names lie (65 of 150 disagree). The frame count comes from the container when it stores one;
    otherwise from a demux-only packet count (cheap, no decoding).
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        num_frames = int(stream.frames or 0)
        audio = container.streams.audio[0] if container.streams.audio else None
        width, height = stream.codec_context.width, stream.codec_context.height
        time_base = stream.time_base
        stream_duration = stream.duration
        container_duration = container.duration
        pts = None
        if num_frames == 0 or not (stream.average_rate or stream.guessed_rate):
            pts = _packet_pts(path)
            num_frames = num_frames or len(pts)
        fps = _fps(stream, pts)
        rotation = _first_frame_rotation(path, container, stream)
    t0, t1 = frame_times(path)
    segments = frame_segments(t0, t1, tol=max(1e-4, float(time_base) / 2) if time_base else 1e-4)
    if num_frames == 0:
        raise MediaError(path, "the video stream holds no frames", _REENCODE_FIX)
    if stream_duration is not None and time_base is not None:
        duration = float(stream_duration * time_base)
    elif container_duration is not None:
        duration = container_duration / av.time_base
    else:
        duration = num_frames / fps if fps > 0 else 0.0
    if fps <= 0 and duration > 0:
        fps = num_frames / duration
    if rotation in (90, 270):
        width, height = height, width
    return MediaInfo(
        path=str(path),
        fps=fps,
        num_frames=num_frames,
        duration=duration,
        width=int(width),
        height=int(height),
        has_audio=audio is not None,
        audio_rate=int(audio.rate) if audio is not None and audio.rate else None,
        rotation=rotation,
        frame_segments=segments,
    )


def _first_frame_rotation(path, container, stream) -> int:
    """The display rotation of the first frame (PyAV exposes the display matrix per frame only)."""
    try:
        for frame in container.decode(stream):
            return _rotation(frame)
    except av.error.FFmpegError as e:
        raise _decode_error(path, e) from e
    return 0


def _rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise degrees (0/90/180/270) that turn the stored frame upright.

    From the frame's display-matrix side data (`VideoFrame.rotation`, FFmpeg's
    `av_display_rotation_get`); angles that are not a multiple of 90 are rounded to the nearest one
    (phones only write multiples of 90). Flips in the matrix are not applied.
    """
    try:
        r = frame.rotation
    except (AttributeError, ValueError):
        return 0
    if not r or not np.isfinite(r):
        return 0
    return int(round(float(r) / 90.0)) % 4 * 90


# --------------------------------------------------------------------------- frames


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    """Upright RGB of `frame`; `size` is the upright (display) size."""
    k = _rotation(frame) // 90
    if size is None:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        width, height = size if k % 2 == 0 else size[::-1]  # scale the stored frame, then rotate
        rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    return rgb if k == 0 else np.ascontiguousarray(np.rot90(rgb, k))


def _seek(container, stream, t: float) -> None:
    """Seek to the keyframe at or before `t` seconds (decoding forward from there is exact)."""
    target = int(Fraction(t).limit_denominator(10**6) / stream.time_base) + _start_pts(stream)
    container.seek(max(target, _start_pts(stream)), stream=stream, backward=True, any_frame=False)


def _decoded(path, container, stream, start: float | None) -> Iterator[tuple[av.VideoFrame, float, int]]:
    """Yield (frame, time_s, index) in presentation order, starting near `start` (seeking if > 0).

    Without a seek the index is a running count. After a seek the decoder's position is unknown, so
    the index comes from the sorted packet timestamps (demux-only pass): index = frames before pts.
    """
    table: Sequence[int] | None = None
    if start is not None and start > 0:
        table = _packet_pts(path)
        _seek(container, stream, start)
    base = _start_pts(stream)
    tb = float(stream.time_base)
    count = 0
    last_t = -np.inf
    try:
        for frame in container.decode(stream):
            if frame.pts is not None:
                t = (frame.pts - base) * tb
            else:  # rare: no timestamp; assume the nominal step
                rate = float(stream.average_rate or stream.guessed_rate or 25)
                t = last_t + 1.0 / rate if np.isfinite(last_t) else 0.0
            index = bisect.bisect_left(table, frame.pts) if table is not None and frame.pts is not None else count
            count += 1
            last_t = t
            yield frame, t, index
    except av.error.FFmpegError as e:
        raise _decode_error(path, e) from e


def _batch(images: list[np.ndarray], times: list[float], indices: list[int]) -> FrameBatch:
    return FrameBatch(np.stack(images), np.asarray(times, dtype=np.float64), np.asarray(indices, dtype=np.int64))


def iter_frames(
    path: str | Path,
    batch_size: int = 32,
    start: float | None = None,
    end: float | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[FrameBatch]:
    """Decode frames with presentation time in [start, end) as RGB batches.

    Seeks to the keyframe before `start` and decodes forward, dropping earlier frames, so a window
    in the middle of a long file costs one GOP of extra decoding, not the whole prefix.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    eps = 1e-9
    with _open(path) as container:
        stream = _video_stream(container)
        images: list[np.ndarray] = []
        times: list[float] = []
        indices: list[int] = []
        for frame, t, index in _decoded(path, container, stream, start):
            if start is not None and t < start - eps:
                continue
            if end is not None and t >= end - eps:
                break
            images.append(_to_rgb(frame, size))
            times.append(t)
            indices.append(index)
            if len(images) == batch_size:
                yield _batch(images, times, indices)
                images, times, indices = [], [], []
        if images:
            yield _batch(images, times, indices)


def frames_at(path: str | Path, times: Sequence[float], size: tuple[int, int] | None = None) -> FrameBatch:
    """Return the frame on screen at each requested time (last frame with pts <= t), in request order.

    One seek to the earliest time, then one forward decoding pass; a frame is converted to RGB only
    when some requested time selects it. Times before the first frame get the first frame; times
    after the last frame get the last frame. `FrameBatch.times` holds the selected frames' times.
    """
    req = np.asarray(times, dtype=np.float64).reshape(-1)
    if req.size == 0:
        raise ValueError(f"{path}: frames_at needs at least one time")
    if not np.all(np.isfinite(req)):
        raise ValueError(f"{path}: frames_at times must be finite, got {req[~np.isfinite(req)][:3]}")
    order = np.argsort(req, kind="stable")
    eps = 1e-9
    out_img: list[np.ndarray | None] = [None] * req.size
    out_t = np.zeros(req.size)
    out_i = np.zeros(req.size, dtype=np.int64)
    k = 0  # next request (in sorted order) to serve
    with _open(path) as container:
        stream = _video_stream(container)
        prev: tuple[av.VideoFrame, float, int] | None = None
        for frame, t, index in _decoded(path, container, stream, float(req[order[0]])):
            # every request strictly before this frame is served by the previous frame (or this one if none)
            while k < req.size and req[order[k]] < t - eps:
                k = _serve(prev or (frame, t, index), order, k, req, t - eps, out_img, out_t, out_i, size)
            prev = (frame, t, index)
            if k >= req.size:
                break
        if k < req.size:
            if prev is None:
                raise MediaError(path, "no frame could be decoded", _REENCODE_FIX)
            _serve(prev, order, k, req, np.inf, out_img, out_t, out_i, size)
    return FrameBatch(np.stack(out_img), out_t, out_i)  # type: ignore[arg-type]


def _serve(chosen, order, k, req, limit, out_img, out_t, out_i, size) -> int:
    """Assign `chosen` (frame, time, index) to all sorted requests below `limit`; return next k."""
    frame, t, index = chosen
    rgb = _to_rgb(frame, size)
    while k < req.size and req[order[k]] < limit:
        j = order[k]
        out_img[j], out_t[j], out_i[j] = rgb, t, index
        k += 1
    return k


# --------------------------------------------------------------------------- audio


def read_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray | None:
    """Decode the first audio stream and resample it to mono float32 at `sample_rate` Hz, on the
    video's clock: sample 0 is at the video stream's start (time 0 of `iter_frames`).

    Returns None when the file has no audio stream (a valid case: the modality is then missing,
    not broken). Placement follows the decoded frames' pts: a track that starts after the video is
    preceded by silence, one that starts before it is trimmed (what a player shows with the first
    frame), and a gap inside the track (a jump in pts beyond 1 ms) is filled with silence. Without a
    video stream, sample 0 is the audio's own first sample.
    Resampling runs in FFmpeg's swresample via `av.AudioResampler` (planar float, input channel
    layout kept) on sample counts, one resampler per gap-free run (pts are only used for placement,
    so rounded or jumping pts never make swresample stretch or drop samples); the down-mix is then
    the plain mean of the channels. Why not let swresample down-mix (`layout="mono"`): its default
    matrix adds the channels at -3 dB each, so identical L/R come out 1.41x louder and full-scale
    stereo would clip.
    """
    with _open(path, need_video=False) as container:
        if not container.streams.audio:
            return None
        origin = _video_origin(container)
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        placer = _AudioPlacer(sample_rate, stream.time_base)
        try:
            for frame in container.decode(stream):
                placer.add(frame)
            placer.flush()
        except av.error.FFmpegError as e:
            raise _decode_error(path, e) from e
    audio = placer.samples(origin)
    return np.clip(audio, -1.0, 1.0, out=audio)


def _video_origin(container) -> float | None:
    """Time 0 of the video stream in seconds (None when the file has no video)."""
    if not container.streams.video:
        return None
    stream = container.streams.video[0]
    return float(_start_pts(stream) * stream.time_base) if stream.time_base else 0.0


class _AudioPlacer:
    """Resamples decoded audio frames run by run and lays the runs out at their pts (see `read_audio`)."""

    GAP_S = 1e-3

    def __init__(self, rate: int, time_base):
        self.rate = rate
        self.time_base = Fraction(time_base) if time_base else None
        self.chunks: list[np.ndarray] = []
        self.emitted = 0  # output samples so far
        self.first: float | None = None  # time of the first decoded sample
        self.run_start = 0.0  # time of the current run's first input sample
        self.run_in = 0  # input samples in the current run
        self.in_rate = 0
        self.resampler: av.AudioResampler | None = None

    def add(self, frame: av.AudioFrame) -> None:
        t = float(frame.pts * self.time_base) if frame.pts is not None and self.time_base else None
        if self.first is None:
            self.first = t if t is not None else 0.0
            self._new_run(self.first, frame.sample_rate)
        elif t is not None:
            expected = self.run_start + self.run_in / self.in_rate
            if t - expected > self.GAP_S or frame.sample_rate != self.in_rate:
                self.flush()
                pad = int(round((t - self.first) * self.rate)) - self.emitted
                if pad > 0:
                    self._emit(np.zeros(pad, np.float32))
                self._new_run(t, frame.sample_rate)
        self.run_in += frame.samples
        frame.pts = None  # resample on sample counts: pts only place the runs
        for out in self.resampler.resample(frame):
            self._emit(_mono(out))

    def flush(self) -> None:
        if self.resampler is not None:
            for out in self.resampler.resample(None):
                self._emit(_mono(out))
            self.resampler = None

    def samples(self, origin: float | None) -> np.ndarray:
        audio = np.concatenate(self.chunks).astype(np.float32, copy=False) if self.chunks else np.zeros(0, np.float32)
        if origin is None or self.first is None:
            return audio
        lead = int(round((self.first - origin) * self.rate))
        if lead > 0:
            return np.concatenate([np.zeros(lead, np.float32), audio])
        return audio[-lead:] if lead < 0 else audio

    def _new_run(self, t: float, in_rate: int) -> None:
        self.run_start, self.run_in, self.in_rate = t, 0, int(in_rate) or self.rate
        self.resampler = av.AudioResampler(format="fltp", layout=None, rate=self.rate)

    def _emit(self, x: np.ndarray) -> None:
        self.chunks.append(x)
        self.emitted += len(x)


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """[channels, samples] planar float -> [samples] mean over channels."""
    data = frame.to_ndarray()
    return data.mean(axis=0, dtype=np.float32) if data.shape[0] > 1 else data.reshape(-1)
