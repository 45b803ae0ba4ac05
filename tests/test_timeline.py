"""pipeline.timeline on packet lists written here: where pieces start and how video and audio agree."""

from __future__ import annotations

from fractions import Fraction

from pipeline.timeline import Pieces, StreamPackets, plan

TB = Fraction(1, 90000)
V, A = 3600, 1920  # 25 fps video frames and 1024-sample audio frames at 48 kHz, in 90 kHz ticks


def _stream(keys: list[int], dur: int, order: list[int] | None = None) -> StreamPackets:
    order = list(range(len(keys))) if order is None else order
    return StreamPackets(keys, [dur] * len(keys), [1000 + 188 * o for o in order], order, TB)


def _interleave(video: list[int], audio: list[int]) -> tuple[list[int], list[int]]:
    """Container order by time within each piece, pieces one after the other (a byte-wise join)."""
    def piece_of(keys):
        p, out = 0, []
        for i, k in enumerate(keys):
            p += i > 0 and k < keys[i - 1]
            out.append(p)
        return out

    items = sorted([(p, k * 1.0, "v", i) for i, (k, p) in enumerate(zip(video, piece_of(video)))]
                   + [(p, k * 1.0, "a", i) for i, (k, p) in enumerate(zip(audio, piece_of(audio)))])
    vo, ao = [0] * len(video), [0] * len(audio)
    for o, (_, _, s, i) in enumerate(items):
        (vo if s == "v" else ao)[i] = o
    return vo, ao


def test_a_restart_is_rebased_onto_the_end_of_the_previous_piece() -> None:
    keys = [i * V for i in range(50)] + [i * V for i in range(30)]
    video, _ = plan(_stream(keys, V))
    assert video.first == (0, 50) and video.shift == (0, Fraction(50 * V) * TB)
    assert video.restarts == 1


def test_a_jump_beyond_one_second_is_closed_a_smaller_gap_is_kept() -> None:
    jump = [i * V for i in range(25)] + [25 * V + 90000 * 5 + i * V for i in range(25)]  # 5 s ahead
    video, _ = plan(_stream(jump, V))
    assert video.first == (0, 25) and video.shift[1] == -5
    gap = [i * V for i in range(25)] + [25 * V + 45000 + i * V for i in range(25)]  # 0.5 s: real time
    assert plan(_stream(gap, V))[0] == Pieces(pos=(1000,))


def test_audio_takes_the_video_shift_whichever_stream_restarts_first() -> None:
    """Each piece's audio keeps its offset to its video; the audio outlasts the video by 80 ms, so
    its own re-basing would differ. Both container orders (audio of the new piece muxed before or
    after its first video packet) give the same shift."""
    vkeys = [i * V for i in range(50)] + [i * V for i in range(50)]
    akeys = [-A + i * A for i in range(96)] + [-A + i * A for i in range(96)]  # audio from -21 ms to 2.027 s
    vo, ao = _interleave(vkeys, akeys)
    for video_first in (True, False):
        if not video_first:  # move the second piece's first video packet after its first audio packets
            vo = vo[:50] + [vo[50] + 3] + vo[51:]
        video, audio = plan(_stream(vkeys, V, vo), _stream(akeys, A, ao))
        assert video.shift == (0, 2) and audio.first == (0, 96) and audio.shift == (0, 2), video_first


def test_audio_without_a_video_counterpart() -> None:
    """A restart in the audio alone is re-based onto the audio's own end; a jump forward in the audio
    alone is a gap in the sound (the video clock runs on)."""
    vkeys = [i * V for i in range(100)]
    restart = [i * A for i in range(50)] + [i * A for i in range(50)]
    _, audio = plan(_stream(vkeys, V), _stream(restart, A, list(range(100, 200))))
    assert audio.first == (0, 50) and audio.shift[1] == Fraction(50 * A) * TB
    jump = [i * A for i in range(50)] + [50 * A + 3 * 90000 + i * A for i in range(50)]
    _, audio = plan(_stream(vkeys, V), _stream(jump, A, list(range(100, 200))))
    assert audio.restarts == 0


def test_piece_of_a_packet_by_byte_position_or_number() -> None:
    pieces = Pieces(first=(0, 50, 80), pos=(100, 5000, 9000), shift=(Fraction(0), Fraction(2), Fraction(3)))
    assert [pieces.index(pos=p) for p in (100, 4999, 5000, 12000)] == [0, 0, 1, 2]
    assert [pieces.index(ordinal=o) for o in (0, 49, 50, 79, 80)] == [0, 0, 1, 1, 2]
    unknown = Pieces(first=(0, 50), pos=(100, -1), shift=(Fraction(0), Fraction(2)))
    assert unknown.index(ordinal=60, pos=7000) == 1 and not unknown.locatable()
