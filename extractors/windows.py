"""The published slicing of a recording into fixed-length windows, shared by the audio and the
behaviour extractors (`make_s2s_windows.py` / `make_va_chunks.py` `slice_audio` apply one rule to both)."""

from __future__ import annotations


def window_plan(duration: float, length: float, hop: float, min_last: float) -> list[tuple[float, float]]:
    """(start, end) seconds of the windows of a recording lasting `duration` seconds.

    - duration <= 0: no window.
    - duration <= length: ONE window (0, duration), however short: the published rule has no
      minimum for a single window.
    - otherwise windows start at k * hop; one ending before the end is kept whole; one ending exactly
      at the end is kept and slicing stops; one crossing the end is cut at the end and kept only if
      at least `min_last` long, then slicing stops.
    Starts are k * hop (not a running sum), so long recordings do not accumulate float error; for
    hops a binary fraction represents exactly (the published 2 s) both are the same numbers.
    """
    if duration <= 0:
        return []
    if duration <= length:
        return [(0.0, float(duration))]
    out: list[tuple[float, float]] = []
    k = 0
    while k * hop < duration:
        start = k * hop
        end = start + length
        if end < duration:
            out.append((start, end))
        elif end == duration:
            out.append((start, end))
            break
        else:
            if duration - start >= min_last:
                out.append((start, float(duration)))
            break
        k += 1
    return out
