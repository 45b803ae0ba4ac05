"""Video and audio decoding with PyAV, and nothing else.

Why PyAV only: it links FFmpeg in-process (no `ffmpeg` CLI on PATH, no subprocess per video), it
releases the GIL while decoding (so a thread pool overlaps decode with model inference), and it
resamples audio in C (torchaudio wheels are bound to one torch build and break).

Conventions every caller relies on:
- Times are presentation times in seconds from the stream's first timestamp
  (`pts * time_base - stream.start_time`). Variable-frame-rate files are handled by pts, never by
  counting frames, so a frame's time is what a player would show.
  `frame_times(path)` gives every frame's [start, end) from a demux-only pass, so callers that
  need the time of frame i (feature rows, the label grid, the predict CSV) never use `i / fps`.
- Audio is placed on the video's clock: sample 0 of `read_audio` is at the video stream's start,
  so a track that starts late is padded with silence and one that starts early is trimmed.
- Frame indices are 0-based in presentation (= decoder output) order.
- One continuous timeline, as a player shows it: in formats whose timestamps may restart or jump
  (MPEG-TS/PS: recorder files joined byte-wise), each piece is re-based onto the end of the previous
  one, video and audio alike (`pipeline.timeline`); `probe` warns, naming the file.
- Frames come out as displayed, at one size: a display matrix (phone videos store frames sideways
  and a rotation) is applied on decode, so is the sample aspect ratio (anamorphic 1440x1080 with SAR
  4:3 comes out 1920x1080), and every frame is brought to the first frame's display size (a stream
  that changes resolution mid-way is scaled, letterboxed if its shape changed, as a player window
  shows it). `MediaInfo.width/height` are that display size; pixel coordinates (face boxes) are
  pixels of it.
- `size` is `(width, height)` of the upright displayed frame, as in PIL/OpenCV; resizing runs inside
  FFmpeg's swscale.
- Every call opens its own container, so all functions are thread-safe.
- Every failure raises `MediaError` whose message names the file, the problem and a fix.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from pipeline import timeline
from pipeline.timeline import Pieces, StreamPackets

log = logging.getLogger(__name__)

__all__ = ["AUDIO_GRID_FPS", "MediaError", "MediaInfo", "FrameBatch", "probe", "frame_times", "frame_segments", "iter_frames", "frames_at", "read_audio"]

# The frame grid of an audio-only file (no video stream): frame i spans [i / 25, (i + 1) / 25) s of the
# audio, so labels and features of audio-only media live on a 25 Hz grid (Aff-Wild2's most common rate).
AUDIO_GRID_FPS = 25

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
    sample_aspect_ratio: float = 1.0  # stored pixel width / height; applied on decode (width, height are displayed)
    restarts: tuple[float, ...] = ()  # times (s) where a re-based piece of the timeline starts (see `timeline`)
    has_video: bool = True  # False: an audio-only file, its frames the fixed AUDIO_GRID_FPS grid


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
    """Sorted video packet pts on the continuous timeline, plus what turns them into seconds (see
    `_packet_table`) and, for a timeline in pieces, what re-bases decoded frames and audio."""

    pts: tuple[int, ...]  # re-based (`video` pieces applied), sorted
    time_base: Fraction
    start: int  # the stream's start pts (time 0)
    last_duration: int  # duration of the last frame in time_base units (0 when unknown)
    nominal_rate: float  # average/guessed rate (0 when unknown)
    video: Pieces = Pieces()
    audio: Pieces = Pieces()
    keyframes: tuple[tuple[int, int], ...] = ()  # (re-based pts, byte position) of keyframes: byte seeks (TS)
    restarts: tuple[float, ...] = ()  # where each re-based piece after the first starts (s from time 0)


def _packet_pts(path: str | Path) -> tuple[int, ...]:
    """Sorted packet pts, cached per (file, size, mtime): callers such as the behaviour extractor
    call `frames_at` many times on one long file, and each call needs this table after its seek."""
    return _packet_table(path).pts


def _packet_table(path: str | Path) -> _PacketTable:
    return _packet_table_cached(*_file_key(path))


def _file_key(path: str | Path) -> tuple[str, int, int]:
    """(path, size, mtime) keying the per-file caches; a file that cannot be opened raises the
    MediaError that names the problem (missing, a directory, empty, ...)."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        _open(p).close()
    st = p.stat()
    return str(path), st.st_size, st.st_mtime_ns


_TS_DISCONT = av.format.Flags.ts_discont.value


def _discontinuous(container) -> bool:
    """Whether the format's timestamps may restart or jump (FFmpeg's AVFMT_TS_DISCONT: MPEG-TS/PS, ...).

    Only there are pieces looked for, as FFmpeg's own tools do: elsewhere (MP4, MKV) a pause in a
    variable-frame-rate recording is real time and is kept."""
    return bool(container.format.flags & _TS_DISCONT)


def _byte_seekable(container) -> bool:
    """MPEG-TS: each video frame is one PES packet whose byte position the demuxer reports, so a
    byte seek to a keyframe's packet lands exactly on it. (In MPEG-PS a frame starts anywhere in a
    2 KiB pack: the parser then gives the frames after a byte seek shifted timestamps.)"""
    return container.format.name in ("mpegts", "mpegtsraw")


@functools.lru_cache(maxsize=16)
def _packet_table_cached(path: str, size: int, mtime_ns: int) -> _PacketTable:
    """Presentation timestamps of all video packets, sorted: a demux-only pass (no decoding).

    Demuxing reads headers only, so this is cheap even for long files; it gives the frame count
    when the container does not store one (Matroska/WebM), maps a timestamp to a frame index after
    a seek (the index of a frame = how many frames are presented before it), and gives every
    frame's presentation time (`frame_times`). In a format with discontinuous timestamps the same
    pass also reads the audio packets and plans the pieces of the timeline (`pipeline.timeline`).
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio and _discontinuous(container) else None
        rec = {s.index: ([], [], [], [], [], []) for s in (stream, audio) if s is not None}  # key, pts, dur, pos, order, kf
        order = 0
        try:
            for packet in container.demux(*(s for s in (stream, audio) if s is not None)):
                if packet.size == 0:  # flush packet at the end
                    continue
                keys, pts, durs, pos, orders, kfs = rec[packet.stream.index]
                p = packet.pts if packet.pts is not None else (packet.dts or 0)
                keys.append(packet.dts if packet.dts is not None else packet.pts)
                pts.append(p)
                durs.append(int(packet.duration or 0))
                pos.append(int(packet.pos) if packet.pos is not None else -1)
                orders.append(order)
                kfs.append(bool(packet.is_keyframe))
                order += 1
        except av.error.FFmpegError as e:
            raise _decode_error(path, e) from e
        rate = stream.average_rate or stream.guessed_rate
        tb = Fraction(stream.time_base)
        keys, pts, durs, pos, orders, kfs = rec[stream.index]
        vpieces, apieces = Pieces(), Pieces()
        if audio is not None:
            vs = StreamPackets(keys, durs, pos, orders, tb)
            a = rec[audio.index]
            as_ = StreamPackets(a[0], a[2], a[3], a[4], Fraction(audio.time_base)) if a[0] else None
            vpieces, ap = timeline.plan(vs, as_)
            apieces = ap or Pieces()
        elif _discontinuous(container):
            vpieces, _ = timeline.plan(StreamPackets(keys, durs, pos, orders, tb))
        final = _rebased(pts, vpieces, tb)
        last_i = int(np.argmax(final)) if final else None
        restarts = tuple(float((min(final[a:b]) - _start_pts(stream)) * tb)
                         for a, b in zip(vpieces.first[1:], vpieces.first[2:] + (len(final),)))
        keyframes = tuple((f, q) for f, q, k in zip(final, pos, kfs) if k and q >= 0) if _byte_seekable(container) else ()
        return _PacketTable(tuple(sorted(final)), tb, _start_pts(stream), int(durs[last_i]) if last_i is not None else 0,
                            float(rate) if rate else 0.0, vpieces, apieces, keyframes, restarts)


def _rebased(pts: Sequence[int], pieces: Pieces, time_base: Fraction) -> list[int]:
    """Packet pts with each piece's shift added (in time_base ticks)."""
    if not pieces.restarts:
        return list(pts)
    out: list[int] = []
    k = 0
    for i, p in enumerate(pts):
        while k + 1 < len(pieces.first) and i >= pieces.first[k + 1]:
            k += 1
        out.append(p + int(round(pieces.shift[k] / time_base)))
    return out


def frame_times(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(t0, t1) float64 [N] of every frame: frame i is on screen during [t0[i], t1[i]).

    t0 is the presentation time relative to the stream's start (the times `iter_frames` yields; on
    a timeline in pieces, the re-based times),
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
    otherwise from a demux-only packet count (cheap, no decoding). The size is the first frame's
    display size (rotation and sample aspect ratio applied). A timeline in pieces (timestamps that
    restart or jump) is logged as a warning naming the file; its duration is that of the played-back
    timeline. A file with an audio stream and no video stream (a cover picture does not count) is
    audio-only: `has_video` False, frames on the fixed `AUDIO_GRID_FPS` grid (`_probe_audio_only`).
    """
    with _open(path, need_video=False) as container:
        if not _has_video(container):
            if not container.streams.audio:
                raise MediaError(path, "no video or audio stream in the container (a data file?)",
                                 "use a file that contains video or audio")
            return _probe_audio_only(path, container)
        stream = container.streams.video[0]
        num_frames = int(stream.frames or 0)
        audio = container.streams.audio[0] if container.streams.audio else None
        time_base = stream.time_base
        stream_duration = stream.duration
        container_duration = container.duration
        pts = None
        if num_frames == 0 or not (stream.average_rate or stream.guessed_rate):
            pts = _packet_pts(path)
            num_frames = num_frames or len(pts)
        fps = _fps(stream, pts)
    picture = _picture(path)
    table = _packet_table(path)
    t0, t1 = frame_times(path)
    segments = frame_segments(t0, t1, tol=max(1e-4, float(time_base) / 2) if time_base else 1e-4)
    if num_frames == 0:
        raise MediaError(path, "the video stream holds no frames", _REENCODE_FIX)
    if table.restarts:
        duration = float(t1[-1])
        log.warning("%s: the timestamps restart or jump %d time(s) (pieces joined, e.g. recorder files concatenated); "
                    "played back as one continuous %.2f s timeline, each piece re-based onto the end of the previous "
                    "one, video and audio alike; pieces start at %s s", path, len(table.restarts), duration,
                    ", ".join(f"{t:.2f}" for t in table.restarts))
    elif stream_duration is not None and time_base is not None:
        duration = float(stream_duration * time_base)
    elif container_duration is not None:
        duration = container_duration / av.time_base
    else:
        duration = num_frames / fps if fps > 0 else 0.0
    if fps <= 0 and duration > 0:
        fps = num_frames / duration
    return MediaInfo(
        path=str(path),
        fps=fps,
        num_frames=num_frames,
        duration=duration,
        width=picture.size[0],
        height=picture.size[1],
        has_audio=audio is not None,
        audio_rate=int(audio.rate) if audio is not None and audio.rate else None,
        rotation=picture.rotation,
        frame_segments=segments,
        sample_aspect_ratio=float(picture.sar),
        restarts=table.restarts,
    )


def _has_video(container) -> bool:
    """Whether the container has a video stream that is not just a cover picture (mp3/m4a art)."""
    art = av.stream.Disposition.attached_pic
    return any(not (s.disposition & art) for s in container.streams.video)


def _probe_audio_only(path: str | Path, container) -> MediaInfo:
    """The MediaInfo of an audio-only file: duration from the audio stream (else the container, else
    the decoded samples), and ceil(duration * AUDIO_GRID_FPS) frames at i / AUDIO_GRID_FPS from the
    first audio sample (`read_audio`'s time 0 for a file without video)."""
    audio = container.streams.audio[0]
    if audio.duration is not None and audio.time_base is not None:
        duration = float(audio.duration * audio.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    if duration <= 0:
        samples = read_audio(path, 16000)
        duration = 0.0 if samples is None else len(samples) / 16000
    if duration <= 0:
        raise MediaError(path, "the audio stream holds no samples", _REENCODE_FIX)
    num_frames = max(1, int(np.ceil(duration * AUDIO_GRID_FPS - 1e-6)))
    return MediaInfo(path=str(path), fps=float(AUDIO_GRID_FPS), num_frames=num_frames, duration=duration,
                     width=0, height=0, has_audio=True, audio_rate=int(audio.rate) if audio.rate else None,
                     has_video=False)


@dataclass(frozen=True)
class _Picture:
    """How the first frame is displayed: every decoded frame is brought to `size` (see `_to_rgb`)."""

    rotation: int  # counter-clockwise degrees of the first frame's display matrix
    sar: Fraction  # sample (pixel) aspect ratio of the stream
    size: tuple[int, int]  # upright display (width, height)


def _picture(path: str | Path) -> _Picture:
    return _picture_cached(*_file_key(path))


@functools.lru_cache(maxsize=16)
def _picture_cached(path: str, size: int, mtime_ns: int) -> _Picture:
    """Decode the first frame: its rotation and stored size, and the stream's sample aspect ratio
    (PyAV exposes the display matrix per frame only; the sample aspect ratio per stream only, the
    container's when it sets one, else the codec's, as FFmpeg's `av_guess_sample_aspect_ratio`)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        sar = _sar(stream)
        try:
            frame = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as e:
            raise _decode_error(path, e) from e
        if frame is None:
            width, height, rotation = stream.codec_context.width, stream.codec_context.height, 0
        else:
            width, height, rotation = frame.width, frame.height, _rotation(frame)
    width, height = _display_wh(width, height, sar)
    if rotation in (90, 270):
        width, height = height, width
    return _Picture(rotation, sar, (int(width), int(height)))


def _sar(stream) -> Fraction:
    """Sample aspect ratio (stored pixel width / height); 1 when unset or nonsensical."""
    for holder in (stream, stream.codec_context):
        try:
            r = holder.sample_aspect_ratio
        except (AttributeError, ValueError):
            continue
        if r is not None and r.numerator > 0 and r.denominator > 0:
            return Fraction(r.numerator, r.denominator)
    return Fraction(1)


def _display_wh(width: int, height: int, sar: Fraction) -> tuple[int, int]:
    """The displayed size of a stored `width` x `height` picture: the width stretched by the sample
    aspect ratio, the height kept (FFmpeg's convention, `scale=iw*sar:ih`)."""
    return max(1, int(round(width * sar))), max(1, int(height))


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


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int], sar: Fraction = Fraction(1)) -> np.ndarray:
    """Upright RGB of `frame` as displayed, at `size` (upright display width, height).

    The stored frame is scaled (swscale) to its display shape (`sar`) fitted into `size`: exactly
    `size` when the shapes agree (the usual case, also for anamorphic frames), else the largest fit
    centred on black bars (a stream whose resolution changed to another shape, as a player window
    shows it); then the display matrix is applied. Unscaled frames are only converted to RGB.
    """
    k = _rotation(frame) // 90
    width, height = size if k % 2 == 0 else size[::-1]  # scale the stored frame, then rotate
    fw, fh = _fit(_display_wh(frame.width, frame.height, sar), (width, height))
    if (fw, fh) == (frame.width, frame.height):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.reformat(width=fw, height=fh, format="rgb24").to_ndarray()
    if (fw, fh) != (width, height):
        canvas = np.zeros((height, width, 3), np.uint8)
        y, x = (height - fh) // 2, (width - fw) // 2
        canvas[y:y + fh, x:x + fw] = rgb
        rgb = canvas
    return rgb if k == 0 else np.ascontiguousarray(np.rot90(rgb, k))


def _fit(shape: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest (width, height) of aspect `shape` inside `box`; `box` itself when the two
    differ by at most a pixel's rounding (no one-pixel bars)."""
    (w, h), (bw, bh) = shape, box
    s = min(bw / w, bh / h)
    fw, fh = min(bw, max(1, round(w * s))), min(bh, max(1, round(h * s)))
    return (bw, bh) if bw - fw <= 1 and bh - fh <= 1 else (fw, fh)


def _seek(container, stream, t: float, table: _PacketTable) -> None:
    """Seek to the keyframe at or before `t` seconds (decoding forward from there is exact).

    MPEG-TS has no index: FFmpeg's timestamp seek there lands on any packet, and the decoder then
    skips to the next keyframe, past `t` (seconds past it with long GOPs); on a timeline in pieces
    timestamps are also ambiguous (two pieces share them). So in MPEG-TS the seek goes by byte
    position to the keyframe the demux-only pass found on the (re-based) timeline; elsewhere by
    timestamp, except on a timeline in pieces without byte positions (no seek: decode from the
    start). `_decoded` checks where it landed either way.
    """
    if table.keyframes and (not table.video.restarts or table.video.locatable()):
        target = Fraction(t).limit_denominator(10**6) / table.time_base + table.start
        pos = None
        for kpts, kpos in table.keyframes:
            if kpts > target:
                break
            pos = kpos
        if pos is not None and _seek_byte(container, pos):
            return
        if table.video.restarts:
            _rewind(container, stream)
            return
    elif table.video.restarts:
        return  # ambiguous timestamps, no keyframe positions: decode from the start
    target = int(Fraction(t).limit_denominator(10**6) / stream.time_base) + _start_pts(stream)
    container.seek(max(target, _start_pts(stream)), stream=stream, backward=True, any_frame=False)


def _seek_byte(container, pos: int) -> bool:
    """Seek to byte `pos` (PyAV's `unsupported_byte_offset`, FFmpeg's AVSEEK_FLAG_BYTE); False where
    the format or this PyAV cannot (then the position is unchanged or the start)."""
    try:
        container.seek(pos, unsupported_byte_offset=True)
        return True
    except (TypeError, av.error.FFmpegError):
        return False


def _rewind(container, stream) -> None:
    """Back to the first frame: byte 0 where the format allows, else the stream's first timestamp."""
    if not _seek_byte(container, 0):
        container.seek(_start_pts(stream), stream=stream, backward=True, any_frame=False)


class _Rebaser:
    """Maps one stream's decoded frames to their piece's shift on the continuous timeline.

    A packet's piece: from its byte position when the pieces' starts have positions (a packet without
    one, as most MPEG-PS packets, is in the previous packet's piece: every piece start has one), else
    from its number counted from the start of the stream (no seeks are made then). Decoders keep a
    frame's own (ambiguous) pts and may hold frames back, so each packet sent is remembered by its pts
    with its piece's shift, and a frame takes the shift of the oldest pending packet with its pts.
    Entries older than `DEPTH` packets are forgotten (frames a decoder dropped).
    """

    DEPTH = 256

    def __init__(self, pieces: Pieces):
        self.pieces = pieces
        self.by_pos = pieces.locatable()
        self.piece = 0
        self.sent: dict[int, deque] = {}
        self.n = 0
        self.current = 0.0

    def feed(self, packet: av.Packet) -> None:
        if packet.size == 0:
            return
        if not self.by_pos:
            self.piece = self.pieces.index(ordinal=self.n)
        elif packet.pos is not None and packet.pos >= 0:
            self.piece = self.pieces.index(pos=packet.pos)
        self.current = float(self.pieces.shift[self.piece])
        if packet.pts is not None:
            self.sent.setdefault(packet.pts, deque()).append((self.n, self.current))
        self.n += 1
        if self.n % (4 * self.DEPTH) == 0:
            self.sent = {p: q for p, q in self.sent.items() if q[-1][0] >= self.n - self.DEPTH}

    def shift(self, pts: int | None) -> float:
        q = self.sent.get(pts) if pts is not None else None
        while q and q[0][0] < self.n - self.DEPTH:
            q.popleft()
        if not q:
            return self.current
        s = q.popleft()[1]
        if not q:
            del self.sent[pts]
        return s


def _frames(container, stream, pieces: Pieces | None) -> Iterator[tuple[av.VideoFrame, float]]:
    """Decoded frames with the shift (s) of their piece of the timeline (0 without pieces)."""
    if pieces is None:
        for frame in container.decode(stream):
            yield frame, 0.0
        return
    rebaser = _Rebaser(pieces)
    for packet in container.demux(stream):
        rebaser.feed(packet)
        for frame in packet.decode():
            yield frame, rebaser.shift(frame.pts)


def _decoded(path, container, stream, start: float | None) -> Iterator[tuple[av.VideoFrame, float, int]]:
    """Yield (frame, time_s, index) in presentation order, starting near `start` (seeking if > 0).

    Without a seek the index is a running count. After a seek the decoder's position is unknown, so
    the index comes from the sorted packet timestamps (demux-only pass): index = frames before pts.
    A seek that landed past the frame on screen at `start` (a demuxer without a keyframe index), or
    whose first frame has a timestamp the demux-only pass did not see (a parser that restarted
    mid-frame gives shifted ones), starts over from the first frame: slower, never wrong. Times are
    on the continuous timeline (pieces re-based, see `timeline`).
    """
    seeking = start is not None and start > 0
    table = _packet_table(path) if seeking or _discontinuous(container) else None
    pieces = table.video if table is not None and table.video.restarts else None
    wanted = 0
    if seeking:
        _seek(container, stream, start, table)
        target = Fraction(start).limit_denominator(10**6) / table.time_base + table.start
        wanted = max(0, bisect.bisect_right(table.pts, target) - 1)  # the frame on screen at `start`
    base = _start_pts(stream)
    tb = float(stream.time_base)
    count = 0
    last_t = -np.inf
    try:
        for attempt in (0, 1):
            for frame, shift in _frames(container, stream, pieces):
                if frame.pts is not None:
                    t = (frame.pts - base) * tb + shift
                else:  # rare: no timestamp; assume the nominal step
                    rate = float(stream.average_rate or stream.guessed_rate or 25)
                    t = last_t + 1.0 / rate if np.isfinite(last_t) else 0.0
                if seeking and frame.pts is not None:
                    index = bisect.bisect_left(table.pts, frame.pts + int(round(shift / tb)))
                else:
                    index = count
                if seeking and attempt == 0 and count == 0 and frame.pts is not None and (
                        index > wanted or index >= len(table.pts)
                        or table.pts[index] != frame.pts + int(round(shift / tb))):
                    _rewind(container, stream)
                    break
                count += 1
                last_t = t
                yield frame, t, index
            else:
                return
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
    in the middle of a long file costs one GOP of extra decoding, not the whole prefix. Every frame
    comes out at `size`, by default the first frame's display size (see the module docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    eps = 1e-9
    picture = _picture(path)
    size = size or picture.size
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
            images.append(_to_rgb(frame, size, picture.sar))
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
    Frames come out at `size`, by default the first frame's display size.
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
    picture = _picture(path)
    shape = (size or picture.size, picture.sar)
    with _open(path) as container:
        stream = _video_stream(container)
        prev: tuple[av.VideoFrame, float, int] | None = None
        for frame, t, index in _decoded(path, container, stream, float(req[order[0]])):
            # every request strictly before this frame is served by the previous frame (or this one if none)
            while k < req.size and req[order[k]] < t - eps:
                k = _serve(prev or (frame, t, index), order, k, req, t - eps, out_img, out_t, out_i, shape)
            prev = (frame, t, index)
            if k >= req.size:
                break
        if k < req.size:
            if prev is None:
                raise MediaError(path, "no frame could be decoded", _REENCODE_FIX)
            _serve(prev, order, k, req, np.inf, out_img, out_t, out_i, shape)
    return FrameBatch(np.stack(out_img), out_t, out_i)  # type: ignore[arg-type]


def _serve(chosen, order, k, req, limit, out_img, out_t, out_i, shape) -> int:
    """Assign `chosen` (frame, time, index) to all sorted requests below `limit`; return next k.
    `shape`: (size, sample aspect ratio) for `_to_rgb`."""
    frame, t, index = chosen
    rgb = _to_rgb(frame, *shape)
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
    frame), and a gap inside the track (a jump in pts beyond 1 ms) is filled with silence. On a
    timeline in pieces (`pipeline.timeline`) each piece of audio is placed at its re-based time, the
    same shift as its piece of video; where two pieces overlap (a piece's audio outlasting its video
    by a few ms), the earlier piece's sound is kept. Without a video stream, sample 0 is the audio's
    own first sample.
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
        pieces = _packet_table(path).audio if origin is not None and _discontinuous(container) else Pieces()
        try:
            if not pieces.restarts:
                for frame in container.decode(stream):
                    placer.add(frame)
            else:
                rebaser = _Rebaser(pieces)
                for packet in container.demux(stream):
                    rebaser.feed(packet)
                    for frame in packet.decode():
                        placer.add(frame, rebaser.shift(frame.pts))
            placer.flush()
        except av.error.FFmpegError as e:
            raise _decode_error(path, e) from e
    audio = placer.samples(origin)
    return np.clip(audio, -1.0, 1.0, out=audio)


def _video_origin(container) -> float | None:
    """Time 0 of the video stream in seconds (None when the file has no video; a cover picture of an
    audio file is no video: its sound starts at its own first sample)."""
    if not _has_video(container):
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
        self.shift = 0.0  # the current piece's shift (s, see `timeline`)
        self.skip = 0  # output samples still to drop (a piece that starts before the previous one ended)

    def add(self, frame: av.AudioFrame, shift: float = 0.0) -> None:
        """Place `frame` at its pts plus `shift` (its piece's re-basing, seconds)."""
        t = float(frame.pts * self.time_base) + shift if frame.pts is not None and self.time_base else None
        if self.first is None:
            self.first = t if t is not None else 0.0
            self.shift = shift
            self._new_run(self.first, frame.sample_rate)
        elif t is not None:
            expected = self.run_start + self.run_in / self.in_rate
            piece = shift != self.shift
            if piece or t - expected > self.GAP_S or frame.sample_rate != self.in_rate:
                self.flush()
                pad = int(round((t - self.first) * self.rate)) - self.emitted
                if pad > 0:
                    self._emit(np.zeros(pad, np.float32))
                elif pad < 0 and piece:
                    self.skip = -pad
                self.shift = shift
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
        if self.skip:
            drop = min(self.skip, len(x))
            x, self.skip = x[drop:], self.skip - drop
        self.chunks.append(x)
        self.emitted += len(x)


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """[channels, samples] planar float -> [samples] mean over channels."""
    data = frame.to_ndarray()
    return data.mean(axis=0, dtype=np.float32) if data.shape[0] > 1 else data.reshape(-1)
