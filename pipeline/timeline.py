"""One continuous timeline from timestamps that restart or jump, as a player plays them back.

Recorders, camcorders and broadcast captures write MPEG-TS/PS files whose timestamps restart (two
files joined byte-wise: the second half starts again at the first half's times) or jump (a capture
that paused). Read as stored, frame times repeat and the audio of both halves is laid on the same
times. A player (FFmpeg's `ffmpeg`/`ffplay`, for formats that declare discontinuous timestamps,
`AVFMT_TS_DISCONT`) instead re-bases every piece onto the end of the previous one; this module
computes that re-basing from a demux-only pass (no decoding), pure and testable without media.

The rule, per stream, on the decode timestamps (dts, else pts) in container order: a timestamp that
goes back, or lands more than `JUMP_S` beyond the expected next one (previous + its duration), starts
a new piece, shifted so that it starts exactly where the previous piece ends.

Video and audio: the video is the clock. Its pieces come from its own timestamps. Each stream
notices its own discontinuity (muxers interleave, so the audio's first packet of a piece may come
before or after the video's); an audio discontinuity takes the shift of the video discontinuity
nearest in container order whose shift makes the audio continuous (within `JUMP_S`), so a piece's
audio keeps exactly the offset to its video that the piece was recorded with. An audio
discontinuity without a video counterpart: a restart is re-based onto the audio's own end; a jump
forward is a gap in the sound (silence when read), the video clock being continuous.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

JUMP_S = 1.0  # a timestamp more than this beyond the expected next one starts a new piece

__all__ = ["JUMP_S", "Pieces", "StreamPackets", "plan"]


@dataclass(frozen=True)
class StreamPackets:
    """One stream's packets in container order.

    keys: decode timestamp (dts, else pts) in `time_base` ticks, None when the packet has neither;
    durations: ticks (0 = unknown); pos: byte position in the file (-1 = unknown); order: index of the
    packet among all demuxed packets of every stream (container order, to pair discontinuities).
    """

    keys: Sequence[int | None]
    durations: Sequence[int]
    pos: Sequence[int]
    order: Sequence[int]
    time_base: Fraction


@dataclass(frozen=True)
class Pieces:
    """Where one stream's timestamps are re-based.

    Piece k starts at the stream's packet number `first[k]` (byte position `pos[k]`) and `shift[k]`
    seconds are added to the time of each of its packets. One piece (shift 0) = nothing changes.
    """

    first: tuple[int, ...] = (0,)
    pos: tuple[int, ...] = (-1,)
    shift: tuple[Fraction, ...] = (Fraction(0),)

    @property
    def restarts(self) -> int:
        return len(self.first) - 1

    def locatable(self) -> bool:
        """Whether every piece start has a byte position (then a packet's piece follows from its own)."""
        return all(p >= 0 for p in self.pos)

    def index(self, ordinal: int | None = None, pos: int | None = None) -> int:
        """The piece of a packet, from its byte position when known, else from its number in the stream."""
        if pos is not None and pos >= 0 and self.locatable():
            return max(0, bisect.bisect_right(self.pos, pos) - 1)
        return max(0, bisect.bisect_right(self.first, int(ordinal or 0)) - 1)


@dataclass(frozen=True)
class _Break:
    ordinal: int      # the stream's packet that starts the piece
    order: int        # its container order
    key: int          # its own decode timestamp (ticks)
    expected: float   # where the stream was expected to continue (re-based seconds)
    shift: Fraction   # seconds added from here on (cumulative)
    back: bool        # the timestamp went back (a restart), not forward (a jump)


def _step(keys: Sequence[int | None], durations: Sequence[int]) -> int:
    """Typical packet duration in ticks, for packets that carry none: the median positive duration,
    else the median positive step between consecutive timestamps (1 when nothing is known)."""
    d = np.asarray([x for x in durations if x and x > 0], np.int64)
    if d.size:
        return int(np.median(d))
    k = np.asarray([x for x in keys if x is not None], np.int64)
    steps = np.diff(k)
    steps = steps[steps > 0]
    return int(np.median(steps)) if steps.size else 1


def _walk(s: StreamPackets, choose=None) -> list[_Break]:
    """Walk `s` in container order and return its discontinuities (see the module docstring).

    Each break's shift is `choose(break_candidate)` when given (it may return None: keep the
    stream's own re-basing for a restart, no re-basing for a jump), else the own re-basing.
    """
    tb = Fraction(s.time_base)
    tbf = float(tb)
    step = _step(s.keys, s.durations)
    shift = Fraction(0)  # seconds added to the current piece
    shift_f = 0.0
    last = expected = None  # re-based seconds of the previous packet, and where the next should be
    prev: tuple[int, int, Fraction] | None = None  # previous packet's (key, duration or step, shift)
    out: list[_Break] = []
    for i, (key, dur) in enumerate(zip(s.keys, s.durations)):
        if key is None:
            continue
        t = key * tbf + shift_f
        if prev is not None and (t < last or t > expected + JUMP_S):
            exact = (prev[0] + prev[1]) * tb + prev[2]  # where the previous piece ends
            own = exact - key * tb
            cand = _Break(i, int(s.order[i]), int(key), float(exact), own, t < last)
            chosen = choose(cand) if choose is not None else own
            if chosen is None:
                chosen = own if cand.back else shift
            if chosen != shift:
                shift, shift_f = chosen, float(chosen)
                out.append(_Break(i, cand.order, cand.key, cand.expected, shift, cand.back))
            t = key * tbf + shift_f
        d = int(dur) if dur and dur > 0 else step
        last, expected, prev = t, t + d * tbf, (int(key), d, shift)
    return out


def _pieces(s: StreamPackets, breaks: list[_Break]) -> Pieces:
    return Pieces(first=(0,) + tuple(b.ordinal for b in breaks),
                  pos=(int(s.pos[0]) if len(s.pos) else -1,) + tuple(int(s.pos[b.ordinal]) for b in breaks),
                  shift=(Fraction(0),) + tuple(b.shift for b in breaks))


def plan(video: StreamPackets, audio: StreamPackets | None = None) -> tuple[Pieces, Pieces | None]:
    """The pieces of the video and (optionally) the audio stream: see the module docstring."""
    vbreaks = _walk(video)
    vpieces = _pieces(video, vbreaks)
    if audio is None:
        return vpieces, None
    atb = float(audio.time_base)
    used = [-1]  # video breaks are taken in order: the index of the last one taken

    def choose(cand: _Break) -> Fraction | None:
        best = None
        for j in range(used[0] + 1, len(vbreaks)):
            vb = vbreaks[j]
            continuous = abs(cand.key * atb + float(vb.shift) - cand.expected) <= JUMP_S
            if continuous and (best is None or abs(vb.order - cand.order) < abs(vbreaks[best].order - cand.order)):
                best = j
        if best is None:
            return None
        used[0] = best
        return vbreaks[best].shift

    return vpieces, _pieces(audio, _walk(audio, choose))
