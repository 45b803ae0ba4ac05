"""Deterministic synthetic demo data: a small Aff-Wild2-shaped tree with a known, learnable signal.

Why it exists: the demo (and the DVC tests) must run the *real* pipeline end to end — the real
`affwild2` adapter, PyAV decoding, every extractor, every head and fusion — on 2 CPU cores in a few
minutes and without any licensed data. So this module writes exactly what Aff-Wild2 looks like on disk:

```
<root>/videos/<media>.mp4                           H.264 (libx264, else mpeg4) yuv420p + AAC mono
<root>/cropped_aligned/<video_id>/%05d.jpg          1-based; a missing file = no face in that frame
<root>/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video_id>.txt     "valence,arousal", -5 invalid
<root>/EXPR_Recognition_Challenge/{Train_Set,Validation_Set}/<video_id>.txt  8-class header, -1 invalid
<root>/synthetic_manifest.json                      what was generated (ids, splits, fps, spans...)
```

The content is driven by hidden smooth valence/arousal trajectories (which are also the labels):

* **face** (crops) carries mostly *valence*: mouth curvature, teeth shown when smiling, pressed thick
  lips when negative, brow slant; eye opening and brow height carry some arousal. The mouth also
  opens with the speech envelope (so mouth-opening reliability cues line up with the audio).
* **audio** carries mostly *arousal*: voiced syllables whose pitch (about 100-300 Hz, harmonics),
  loudness and syllable rate rise with arousal; valence only tilts the spectrum (brighter when
  positive). About 18 % of each track is silence (low noise).
* **body/whole frame** carries both weakly: head/body oscillation amplitude ~ arousal, posture
  (upright vs slumped, body lean) and a warm/cool background tint ~ valence.

So face wins on valence, audio on arousal, and only fusion is good at both: fusion can beat every
single modality on validation by construction.

Quirks of the real data are reproduced on purpose so the adapter and the heads meet them in the demo:
one left/right pair (two faces, one media file `<n>-<fps>-<WxH>.mp4`, ids `..._left`/`..._right`;
the audio is the *left* person's voice, the right person listens with a closed mouth), one video
without an audio track, one name whose fps token lies (the container must be trusted), a
29.97/2 = 15000/1001 fps video, faceless spans (head turned away or face covered: no crop files),
silent spans, -5 invalid label spans (one at the very start), and label files whose line count
differs from the decoded frame count (+3 and -2 lines).

`labels_from=<VA_Estimation_Challenge dir>` drives ids, splits, lengths, trajectories and invalid
spans from real Aff-Wild2 label files instead (fps from the sibling `videos_fps.csv` when present,
else `cfg.labels_fps` or 30). Rendering 3M frames is far too slow, so `DemoConfig(render_video=False)`
writes only the label files and the manifest (per-id fps, frames, simulated faceless/silent spans):
benchmarks build synthetic feature stores from that. `max_videos` limits how many ids are used.

Determinism: every random draw comes from `numpy.random.default_rng([seed, media_index, ...])`, the
encoders run single-threaded (x264 on its CPU-independent C path) and nothing time-dependent is written, so the same arguments give
byte-identical label files, manifest, crops and (on the same PyAV/FFmpeg build) videos.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import cv2
import numpy as np
from pipeline.progress import progress_bar

from pipeline.labels import EXPR_CLASSES, read_va, write_expr, write_va

__all__ = ["DemoConfig", "generate", "MANIFEST_NAME", "expr_from_va"]

MANIFEST_NAME = "synthetic_manifest.json"
VA_DIR = "VA_Estimation_Challenge"
EXPR_DIR = "EXPR_Recognition_Challenge"
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set"}
_OWNED = ("videos", "cropped_aligned", VA_DIR, EXPR_DIR, MANIFEST_NAME)

# BGR palettes (cv2 draws in BGR; PyAV takes bgr24 directly).
_SKINS = ((140, 170, 225), (110, 150, 205), (80, 115, 170), (60, 85, 130), (150, 185, 235))
_HAIRS = ((30, 30, 35), (25, 45, 80), (60, 80, 110), (20, 20, 20))
_CLOTHES = ((150, 80, 40), (60, 120, 60), (70, 70, 150), (120, 120, 120), (40, 90, 140))


# --------------------------------------------------------------------------- configuration


@dataclass
class DemoConfig:
    """What to generate. Plain types only, so params.yaml overrides map onto it 1:1.

    `num_videos` counts media files; the left/right pair adds one annotation id (so there are
    `num_videos + 1` ids). `fps_choices` are strings so exact NTSC-style rates such as "15000/1001"
    survive YAML; media i gets `fps_choices[i % len]`.
    """

    num_videos: int = 16
    seconds: tuple[float, float] = (20.0, 40.0)
    fps_choices: tuple[str, ...] = ("15", "15", "10", "15000/1001")
    frame_size: tuple[int, int] = (160, 120)  # (width, height); even, for yuv420p
    crop_size: int = 64
    audio_rate: int = 16000
    validation_fraction: float = 0.3
    seed: int = 0
    silent_fraction: float = 0.18  # share of each audio track that is silence
    faceless_seconds: tuple[float, float] = (1.0, 3.0)  # one span per faceless video
    label_extra_lines: tuple[int, ...] = (3, -2)  # label lines minus frames, media 3, 4, ...
    lying_name_fps: int = 30  # fps token written into media 2's name
    codec: str = "auto"  # "auto" = libx264 when PyAV has it, else mpeg4
    jpeg_quality: int = 90
    render_video: bool = True  # False: labels + manifest only (full-scale benchmarks)
    max_videos: int | None = None  # limit on annotation ids (labels_from) / media (synthetic)
    labels_fps: float | None = None  # labels_from: force this fps (default: videos_fps.csv, else 30)

    @classmethod
    def default(cls) -> "DemoConfig":
        """The README demo: 16 media (17 ids) x 20-40 s, mostly 15 fps, 160x120, 64x64 crops.

        About 7,000 frames, 8 minutes of 16 kHz audio and ~230 behaviour segments (4 s, 2 s hop) in
        total: enough frames for 400-frame temporal windows and a 5-video validation split with
        stable CCC, yet every tiny-model extraction and head training fits in a few minutes on
        2 cores. Generation itself takes a few seconds.
        """
        return cls()

    @classmethod
    def tiny(cls) -> "DemoConfig":
        """For tests and the DVC test: 6 media (7 ids) x 8-10 s at 10 fps (+ one 14.985 fps)."""
        return cls(num_videos=6, seconds=(8.0, 10.0), fps_choices=("10", "10", "10", "15000/1001"))

    @classmethod
    def from_preset(cls, preset: str, overrides: dict | None = None, where: str = "demo") -> "DemoConfig":
        """A preset (`default` or `tiny`) with `overrides` applied and checked strictly (params
        `demo.preset` and `demo.overrides`); a bad preset or key names `where`."""
        from pipeline.config import ParamsError, build_config

        presets = {"default": cls.default, "tiny": cls.tiny}
        if preset not in presets:
            raise ParamsError(f"{where}: demo.preset must be one of {', '.join(presets)}, got {preset!r}")
        values = {**asdict(presets[preset]()), **(overrides or {})}
        return build_config(cls, values, where=f"{where}: demo.overrides")

    def validate(self, synthetic: bool = True) -> None:
        """Fail before any file is written, naming the option and the fix.

        `synthetic=False` (labels_from mode) skips the checks that only the invented videos need.
        """
        w, h = self.frame_size
        problems = []
        if synthetic and self.num_videos < 6 and self.render_video:
            problems.append(f"num_videos={self.num_videos}: need >= 6 so every quirk (pair, no audio, "
                            "lying name, 14.985 fps, label mismatches) gets its own video")
        if not (0 < self.seconds[0] <= self.seconds[1]):
            problems.append(f"seconds={self.seconds}: need 0 < min <= max")
        if w % 2 or h % 2 or w < 64 or h < 48:
            problems.append(f"frame_size={self.frame_size}: need even width >= 64 and height >= 48")
        if not self.fps_choices:
            problems.append("fps_choices is empty: give e.g. ['15', '15000/1001']")
        for f in self.fps_choices:
            try:
                if Fraction(str(f)) <= 0:
                    raise ValueError
            except (ValueError, ZeroDivisionError):
                problems.append(f"fps_choices: {f!r} is not a positive number or fraction like '15000/1001'")
        if not (0.0 < self.validation_fraction < 1.0):
            problems.append(f"validation_fraction={self.validation_fraction}: need 0 < x < 1")
        if not (0.0 <= self.silent_fraction < 0.8):
            problems.append(f"silent_fraction={self.silent_fraction}: need 0 <= x < 0.8")
        if self.audio_rate not in (16000, 22050, 24000, 32000, 44100, 48000):
            problems.append(f"audio_rate={self.audio_rate}: use 16000 or 48000 (AAC rates)")
        if self.codec not in ("auto", "libx264", "mpeg4"):
            problems.append(f"codec={self.codec!r}: use auto, libx264 or mpeg4")
        if self.max_videos is not None and self.max_videos < 1:
            problems.append(f"max_videos={self.max_videos}: need >= 1 or null")
        if problems:
            raise ValueError("DemoConfig: " + "; ".join(problems))


# --------------------------------------------------------------------------- plan


@dataclass
class _Person:
    """One annotation id: its hidden trajectory (= labels) and where its face is missing."""

    video_id: str
    side: str | None  # "left" / "right" for the pair, else None
    split: str
    valence: np.ndarray  # [L] hidden trajectory, L = max(frames, label lines)
    arousal: np.ndarray
    label_valid: np.ndarray  # [label_lines] bool
    label_lines: int
    faceless: list[tuple[int, int]] = field(default_factory=list)  # [start, end) frames
    faceless_mode: str = "away"  # "away" (head turned) or "cover" (hand over face)
    speaks: bool = True


@dataclass
class _Media:
    """One media file (one or two persons), with its timing and audio plan."""

    index: int
    name: str
    fps: Fraction
    frames: int
    has_audio: bool
    persons: list[_Person]
    silent: list[tuple[float, float]] = field(default_factory=list)  # seconds
    name_fps: int | None = None


def _rng(cfg: DemoConfig, *keys: int) -> np.random.Generator:
    """Independent stream per (media, purpose): adding videos never changes existing ones."""
    return np.random.default_rng([int(cfg.seed), *keys])


def _smooth_trajectory(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """Sum of four slow sinusoids (0.05-0.3 Hz) through tanh, with a per-video offset.

    Unit-variance mixing plus tanh uses most of [-1, 1] without clipping plateaus; the offset gives
    videos different means, as annotators' videos have (CCC cares about means).
    """
    t = np.arange(n) / fps
    k = 4
    freqs = rng.uniform(0.05, 0.3, k)
    phases = rng.uniform(0.0, 2 * np.pi, k)
    amps = rng.uniform(0.5, 1.0, k)
    z = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
    z /= math.sqrt(float((amps**2).sum()) / 2.0)
    return np.tanh(rng.uniform(-0.35, 0.35) + 0.95 * z)


def _spans(rng: np.random.Generator, total: float, count: int, length: tuple[float, float],
           margin: float = 0.0) -> list[tuple[float, float]]:
    """`count` non-overlapping spans: one random span inside each of `count` equal slots."""
    out = []
    slot = (total - 2 * margin) / max(count, 1)
    for i in range(count):
        lo, hi = margin + i * slot, margin + (i + 1) * slot
        ln = min(rng.uniform(*length), 0.8 * slot)
        start = rng.uniform(lo, hi - ln)
        out.append((float(start), float(start + ln)))
    return out


def _silent_spans(rng: np.random.Generator, seconds: float, fraction: float) -> list[tuple[float, float]]:
    """Silence covering about `fraction` of the track, in 1-2.5 s pieces."""
    if fraction <= 0:
        return []
    count = max(1, round(seconds * fraction / 1.75))
    per = seconds * fraction / count
    return _spans(rng, seconds, count, (0.8 * per, 1.2 * per), margin=0.3)


def _faceless(rng: np.random.Generator, frames: int, fps: Fraction, cfg: DemoConfig) -> list[tuple[int, int]]:
    """Faceless frame spans: one `faceless_seconds` span per ~30 s (about 7 % of a long video)."""
    seconds = frames / float(fps)
    return _frame_spans(_spans(rng, seconds, max(1, round(seconds / 30)), cfg.faceless_seconds, 0.5), fps)


def _frame_spans(spans: Iterable[tuple[float, float]], fps: Fraction) -> list[tuple[int, int]]:
    return [(int(round(a * fps)), int(round(b * fps))) for a, b in spans]


def _media_name(i: int, fps: Fraction, cfg: DemoConfig) -> tuple[str, int | None]:
    """Aff-Wild2-style names: `<n>-<fps>-<WxH>`; media 2 lies about fps, media 5 is `video<n>`."""
    w, h = cfg.frame_size
    token = round(float(fps))
    if i == 2:
        token = cfg.lying_name_fps if cfg.lying_name_fps != round(float(fps)) else 2 * round(float(fps))
    if i == 5:
        return f"video{i + 1}", None
    return f"{i + 1}-{token}-{w}x{h}", token


def _plan_synthetic(cfg: DemoConfig) -> list[_Media]:
    """Assign the quirks to fixed media indices so tests know where to look.

    0: the left/right pair (train; the right person turns away once) · 1: no audio track
    (validation; faceless span) · 2: fps token in the name lies · 3, 4, ...: label line count
    differs from the frame count (`label_extra_lines`) · 4: -5 invalid span at the very start ·
    odd indices: a faceless span · index % 3 == 2: an invalid span mid-video · 5: `video<n>` name.
    """
    n_val = max(1, round(cfg.num_videos * cfg.validation_fraction))
    others = np.arange(2, cfg.num_videos)
    chosen = _rng(cfg, 10_000).choice(others, size=min(n_val - 1, len(others)), replace=False)
    validation = {1, *chosen.tolist()}
    count = cfg.num_videos if cfg.max_videos is None else min(cfg.num_videos, cfg.max_videos)
    plan = []
    for i in range(count):
        rng = _rng(cfg, i)
        fps = Fraction(str(cfg.fps_choices[i % len(cfg.fps_choices)]))
        seconds = rng.uniform(*cfg.seconds)
        frames = max(2, int(round(seconds * fps)))
        name, name_fps = _media_name(i, fps, cfg)
        extra = cfg.label_extra_lines[i - 3] if 3 <= i < 3 + len(cfg.label_extra_lines) else 0
        split = "validation" if i in validation else "train"
        sides: list[str | None] = ["left", "right"] if i == 0 else [None]
        persons = []
        for k, side in enumerate(sides):
            prng = _rng(cfg, i, k + 1)
            lines = max(1, frames + extra)
            length = max(frames, lines)
            valid = np.ones(lines, bool)
            if i % 3 == 2 or i == 4:
                for a, b in _frame_spans(_spans(prng, frames / fps, 1, (0.5, 2.0), 0.5), fps):
                    valid[a:min(b, lines)] = False
            if i == 4:
                valid[: max(1, int(round(0.6 * fps)))] = False
            vid = name if side is None else f"{name}_{side}"
            person = _Person(vid, side, split, _smooth_trajectory(prng, length, float(fps)),
                             _smooth_trajectory(prng, length, float(fps)), valid, lines,
                             speaks=side != "right")
            if i % 2 == 1 or side == "right":
                person.faceless = _faceless(prng, frames, fps, cfg)
                person.faceless_mode = "cover" if (i // 2) % 2 else "away"
            persons.append(person)
        silent = _silent_spans(rng, frames / float(fps), cfg.silent_fraction)
        plan.append(_Media(i, name, fps, frames, i != 1, persons, silent, name_fps))
    return plan


def _fill_invalid(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Interpolate over invalid frames so there is something to render there."""
    if valid.all():
        return x.copy()
    if not valid.any():
        return np.zeros_like(x)
    idx = np.arange(len(x))
    return np.interp(idx, idx[valid], x[valid])


def _real_fps_table(labels_dir: Path) -> dict[str, float]:
    """`videos_fps.csv` (video_name,fps) next to the label folder, keyed by media stem."""
    table: dict[str, float] = {}
    csv = labels_dir.parent / "videos_fps.csv"
    if csv.exists():
        for line in csv.read_text().splitlines()[1:]:
            parts = line.strip().split(",")
            if len(parts) == 2 and parts[1]:
                table[Path(parts[0]).stem] = float(parts[1])
    return table


def _as_fraction(fps: float) -> Fraction:
    """ffprobe's rounded 29.97/23.976/59.94 are really n*1000/1001; other rates as measured."""
    for n in (24, 30, 60):
        if abs(fps - n * 1000 / 1001) < 0.005:
            return Fraction(n * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def _split_pair_id(video_id: str) -> tuple[str, str | None]:
    for side in ("left", "right"):
        if video_id.endswith("_" + side):
            return video_id[: -len(side) - 1], side
    return video_id, None


def _plan_from_labels(cfg: DemoConfig, labels_dir: Path) -> list[_Media]:
    """One media per real media name; ids, splits, lengths and -5 spans copied from the files."""
    labels_dir = Path(labels_dir)
    files = []
    for split, sub in SPLIT_DIRS.items():
        files += [(split, p) for p in sorted((labels_dir / sub).glob("*.txt"))]
    if not files:
        raise FileNotFoundError(f"{labels_dir}: no Train_Set/*.txt or Validation_Set/*.txt found; "
                                "pass the VA_Estimation_Challenge folder of an Aff-Wild2 label release")
    groups: dict[str, list[tuple[str, Path]]] = {}
    for split, p in files:
        groups.setdefault(_split_pair_id(p.stem)[0], []).append((split, p))
    names = sorted(groups)
    if cfg.max_videos is not None:  # a seeded sample of media, pairs kept whole, ids <= max_videos
        order = _rng(cfg, 20_000).permutation(len(names))
        keep, ids = [], 0
        for j in order:
            if ids + len(groups[names[j]]) > cfg.max_videos:
                continue
            keep.append(names[j])
            ids += len(groups[names[j]])
            if ids >= cfg.max_videos:
                break
        names = sorted(keep)
    fps_table = _real_fps_table(labels_dir)
    plan = []
    for i, name in enumerate(names):
        fps = _as_fraction(cfg.labels_fps if cfg.labels_fps else fps_table.get(name, 30.0))
        members = sorted(groups[name], key=lambda sp: (_split_pair_id(sp[1].stem)[1] or "left") != "left")
        persons = []
        for k, (split, path) in enumerate(members):
            real = read_va(path, dtype=np.float64)  # float64: the values are re-written as read
            if not len(real):
                raise ValueError(f"{path}: no `valence,arousal` lines; point labels_from at a VA_Estimation_Challenge folder")
            values, valid = real.values, real.valid
            side = _split_pair_id(path.stem)[1]
            if len(members) > 1 and side is None:
                side = "left"  # Aff-Wild2 sometimes leaves the left person unsuffixed
            persons.append(_Person(path.stem, side, split, _fill_invalid(values[:, 0], valid),
                                   _fill_invalid(values[:, 1], valid), valid, len(valid),
                                   speaks=k == 0))
        frames = max(p.label_lines for p in persons)
        rng = _rng(cfg, i)
        for k, person in enumerate(persons):
            _pad_person(person, frames)
            if i % 2 == 1 or k == 1:
                person.faceless = _faceless(_rng(cfg, i, k + 1), frames, fps, cfg)
        silent = _silent_spans(rng, frames / float(fps), cfg.silent_fraction)
        plan.append(_Media(i, name, fps, frames, True, persons, silent, None))
    return plan


def _pad_person(person: _Person, frames: int) -> None:
    """A pair member with fewer label lines than the media still needs a pose for every frame."""
    short = frames - len(person.valence)
    if short > 0:
        person.valence = np.pad(person.valence, (0, short), mode="edge")
        person.arousal = np.pad(person.arousal, (0, short), mode="edge")


# --------------------------------------------------------------------------- labels


def expr_from_va(valence: np.ndarray, arousal: np.ndarray) -> np.ndarray:
    """Expression class from the circumplex angle of (valence, arousal); near the origin: Neutral.

    Only a plausible, deterministic mapping so the EXPR task has learnable labels.
    """
    v, a = np.asarray(valence, float), np.asarray(arousal, float)
    angle = np.degrees(np.arctan2(a, v))  # (-180, 180]
    radius = np.hypot(v, a)
    cls = np.full(v.shape, EXPR_CLASSES.index("Neutral"), np.int64)
    bands = (  # (low, high, class)
        (-30, 60, "Happiness"), (60, 100, "Surprise"), (100, 125, "Fear"), (125, 160, "Anger"),
        (160, 181, "Disgust"), (-181, -160, "Disgust"), (-160, -100, "Sadness"), (-100, -60, "Other"),
    )
    for lo, hi, name in bands:
        cls[(angle >= lo) & (angle < hi)] = EXPR_CLASSES.index(name)
    cls[radius < 0.3] = EXPR_CLASSES.index("Neutral")
    return cls


def _write_labels(root: Path, person: _Person) -> dict[str, str]:
    """Write the VA and EXPR files of one id; EXPR is -1 exactly where VA is -5."""
    n = person.label_lines
    v, a, valid = person.valence[:n], person.arousal[:n], person.label_valid
    sub = SPLIT_DIRS[person.split]
    va_path = root / VA_DIR / sub / f"{person.video_id}.txt"
    expr_path = root / EXPR_DIR / sub / f"{person.video_id}.txt"
    write_va(va_path, np.stack([v, a], axis=1), valid, decimals=3)
    write_expr(expr_path, expr_from_va(np.round(v, 3), np.round(a, 3)), valid)
    return {"va": str(va_path.relative_to(root)), "expr": str(expr_path.relative_to(root))}


# --------------------------------------------------------------------------- audio


def _speech(rng: np.random.Generator, media: _Media, speaker: _Person, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like mono track and its voicing gate (both per sample).

    Words of 2-5 syllables separated by pauses; syllable rate 3-6/s, pitch ~100-300 Hz, loudness
    all rise with arousal; valence only changes the harmonic roll-off (brighter when positive).
    Silent spans get only the noise floor. The gate later opens the speaker's mouth.
    """
    seconds = media.frames / float(media.fps)
    n = int(round(seconds * sr))
    t_frames = np.arange(media.frames) / float(media.fps)
    ts = np.arange(n) / sr
    a01 = (np.interp(ts, t_frames, speaker.arousal[: media.frames]) + 1) / 2
    val = np.interp(ts, t_frames, speaker.valence[: media.frames])
    gate = np.zeros(n)
    onsets = []

    def silent_overlap(t0: float, t1: float) -> bool:
        return any(t0 < b and t1 > a for a, b in media.silent)

    t = 0.2
    while t < seconds - 0.15:
        if silent_overlap(t, t + 0.01):
            t = max(b for a, b in media.silent if t < b and t + 0.01 > a) + 0.05
            continue
        level = float(a01[min(int(t * sr), n - 1)])
        for _ in range(int(rng.integers(2, 6))):
            level = float(a01[min(int(t * sr), n - 1)])
            dur = rng.uniform(0.85, 1.15) / (3.0 + 3.0 * level)
            if t + dur > seconds - 0.05 or silent_overlap(t, t + dur):
                break
            s0, s1 = int(t * sr), int((t + 0.7 * dur) * sr)
            x = np.linspace(0.0, 1.0, s1 - s0, endpoint=False)
            gate[s0:s1] = np.sin(np.pi * x) ** 0.6
            onsets.append(s0)
            t += dur
        t += rng.uniform(0.08, 0.35) * (1.4 - level)

    f0_lo = rng.uniform(95, 125)
    f0 = (f0_lo + 190 * a01) * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * ts + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tilt = 1.6 - 0.6 * val
    voice = np.zeros(n)
    norm = np.zeros(n)
    for k in range(1, 13):
        amp = np.where(k * f0 < 0.45 * sr, k ** (-tilt), 0.0)
        voice += amp * np.sin(k * phase)
        norm += amp**2
    voice *= gate * (0.05 + 0.25 * a01) / np.sqrt(norm)
    burst = int(0.012 * sr)
    for s0 in onsets:  # consonant-like noise at syllable onsets
        seg = slice(s0, min(s0 + burst, n))
        voice[seg] += rng.normal(0, 1, seg.stop - seg.start) * 0.3 * (0.05 + 0.25 * a01[s0])
    voice += rng.normal(0, 0.002, n)
    return np.clip(voice, -0.95, 0.95).astype(np.float32), gate


def _per_frame(x: np.ndarray, frames: int, fps: Fraction, sr: int) -> np.ndarray:
    """Mean of a per-sample signal over each frame period."""
    edges = np.round(np.arange(frames + 1) / float(fps) * sr).astype(int).clip(0, len(x))
    csum = np.concatenate([[0.0], np.cumsum(x)])
    width = np.maximum(edges[1:] - edges[:-1], 1)
    return (csum[edges[1:]] - csum[edges[:-1]]) / width


# --------------------------------------------------------------------------- rendering


@dataclass
class _Look:
    """Per-person constants: appearance and motion parameters drawn once."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    cloth: tuple[int, int, int]
    base_x: float
    base_y: float
    ry: float
    amp_scale: float
    osc_hz: float
    osc_phase: float
    drift_hz: float
    drift_phase: float


def _look(rng: np.random.Generator, cfg: DemoConfig, side: str | None) -> _Look:
    w, h = cfg.frame_size
    base_x = {None: 0.5, "left": 0.27, "right": 0.73}[side] * w
    ry = (0.30 if side is None else 0.24) * h
    return _Look(
        _SKINS[rng.integers(len(_SKINS))], _HAIRS[rng.integers(len(_HAIRS))],
        _CLOTHES[rng.integers(len(_CLOTHES))], base_x, 0.45 * h, ry,
        1.0 if side is None else 0.5, rng.uniform(0.8, 1.4), rng.uniform(0, 6.3),
        rng.uniform(0.03, 0.08), rng.uniform(0, 6.3),
    )


def _background(rng: np.random.Generator, cfg: DemoConfig) -> np.ndarray:
    """A static room: base colour plus a few low-contrast rectangles (float32 BGR)."""
    w, h = cfg.frame_size
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = rng.uniform(90, 150, 3)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        bg[y0:y1, x0:x1] += rng.uniform(-25, 25, 3)
    return bg


_WARM = np.array([-20.0, 5.0, 25.0], np.float32)  # BGR shift per unit valence (warm when positive)


def _pose(look: _Look, cfg: DemoConfig, t: float, v: float, a: float) -> tuple[float, float, float]:
    """Face centre and body lean: sway amplitude ~ arousal, posture height and lean ~ valence."""
    w, h = cfg.frame_size
    a01 = (a + 1) / 2
    amp = look.amp_scale * w * (0.01 + 0.09 * a01)
    sway = amp * math.sin(2 * math.pi * look.osc_hz * t + look.osc_phase)
    bob = 0.3 * amp * math.sin(4 * math.pi * look.osc_hz * t + look.osc_phase)
    drift = look.amp_scale * 0.05 * w * math.sin(2 * math.pi * look.drift_hz * t + look.drift_phase)
    cx = look.base_x + drift + sway
    cy = look.base_y - 0.05 * h * v + bob
    lean = 0.08 * w * v * look.amp_scale
    return cx, cy, lean


_SHIFT = 4  # cv2 sub-pixel bits
_S = 1 << _SHIFT


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _S)), int(round(y * _S))


def _ellipse(img: np.ndarray, cx: float, cy: float, ax: float, ay: float, color, thickness: int = -1) -> None:
    cv2.ellipse(img, _pt(cx, cy), _pt(ax, ay), 0, 0, 360, color, thickness, cv2.LINE_AA, _SHIFT)


def _draw_person(img: np.ndarray, look: _Look, cx: float, cy: float, lean: float,
                 v: float, a: float, mouth_open: float, face_mode: str | None) -> None:
    """Body, head and face features; `face_mode` None = face visible, else "away"/"cover"."""
    ry = look.ry
    rx = 0.75 * ry
    a01 = (a + 1) / 2
    _ellipse(img, cx + lean, cy + 2.1 * ry, 1.7 * rx, 1.05 * ry, look.cloth)  # torso
    _ellipse(img, cx, cy - 0.12 * ry, 1.08 * rx, 1.04 * ry, look.hair)  # hair
    if face_mode == "away":
        return  # back of the head only: no face to crop
    _ellipse(img, cx, cy, rx, ry, look.skin)
    # eyes: opening mostly arousal, a little valence
    openness = float(np.clip(0.5 + 0.35 * a + 0.15 * v, 0.05, 1.0))
    ey = cy - 0.12 * ry
    for s in (-1, 1):
        ex = cx + s * 0.4 * rx
        _ellipse(img, ex, ey, 0.2 * rx, ry * (0.03 + 0.11 * openness), (245, 245, 245))
        _ellipse(img, ex, ey, 0.07 * ry, min(0.07, 0.03 + 0.11 * openness) * ry, (40, 30, 20))
        # brows: inner end drops with negative valence, whole brow rises with arousal
        base = ey - ry * (0.17 + 0.09 * a01)
        outer, inner = (ex + s * 0.26 * rx, base), (ex - s * 0.22 * rx, base - 0.12 * ry * v)
        cv2.line(img, _pt(*outer), _pt(*inner), look.hair, max(1, round(0.07 * ry)), cv2.LINE_AA, _SHIFT)
    cv2.line(img, _pt(cx, cy - 0.02 * ry), _pt(cx, cy + 0.2 * ry), tuple(int(c * 0.8) for c in look.skin),
             max(1, round(0.04 * ry)), cv2.LINE_AA, _SHIFT)
    _draw_mouth(img, cx, cy + 0.48 * ry, rx, ry, v, a01, mouth_open)
    if face_mode == "cover":  # a hand in front of the face
        x0, y0 = cx - 1.0 * rx, cy - 0.5 * ry
        cv2.rectangle(img, _pt(x0, y0), _pt(x0 + 2.0 * rx, y0 + 1.45 * ry),
                      tuple(int(c * 0.9) for c in look.skin), -1, cv2.LINE_AA, _SHIFT)


def _draw_mouth(img: np.ndarray, mx: float, my: float, rx: float, ry: float,
                v: float, a01: float, mouth_open: float) -> None:
    """The valence carrier: curved lips (corners up = smile), teeth when positive, thick pressed
    lips when negative; opens with the speech envelope (opening wider at high arousal)."""
    xs = np.linspace(-1.0, 1.0, 15)
    pos, neg = max(v, 0.0), max(-v, 0.0)
    half_w = rx * (0.45 + 0.12 * v)
    upper = my - 0.22 * ry * v * xs**2 + 0.1 * ry * v
    teeth = 0.3 * ry * pos
    gap = ry * (0.02 + (0.05 + 0.06 * a01) * mouth_open)
    lower = upper + (teeth + gap) * (1 - xs**2)
    x = mx + half_w * xs
    up_pts = np.stack([x, upper], 1)
    low_pts = np.stack([x, lower], 1)
    poly = (np.concatenate([up_pts, low_pts[::-1]]) * _S).round().astype(np.int32)
    cv2.fillPoly(img, [poly], (40, 25, 70), cv2.LINE_AA, _SHIFT)
    if teeth > 0.5:
        tooth_low = np.stack([x, upper + teeth * (1 - xs**2)], 1)
        tpoly = (np.concatenate([up_pts, tooth_low[::-1]]) * _S).round().astype(np.int32)
        cv2.fillPoly(img, [tpoly], (235, 240, 240), cv2.LINE_AA, _SHIFT)
    lip = max(1, round(ry * (0.05 + 0.12 * neg)))
    lip_color = (int(70 - 30 * neg), int(60 - 30 * neg), int(160 - 60 * neg))  # pressed lips darken
    for pts in (up_pts, low_pts):
        cv2.polylines(img, [(pts * _S).round().astype(np.int32)], False, lip_color, lip, cv2.LINE_AA, _SHIFT)


def _crop(img: np.ndarray, cx: float, cy: float, ry: float, size: int) -> np.ndarray:
    """Aligned crop: the face centred, square side 2.4 * ry, resized to `size`."""
    side = 2.4 * ry
    s = size / side
    m = np.array([[s, 0, -s * (cx - side / 2)], [0, s, -s * (cy - side / 2)]], np.float64)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


# x264's SIMD kernels gave different bytes for identical frames from one run to the next on an
# AMD EPYC (AVX-512) machine; its portable C path (`asm=0`) is byte-stable and does not depend on
# the CPU's features. It costs ~1.5 ms per 160x120 frame, about 10 s for the whole demo. DVC hashes
# the demo tree, so its bytes must not change between generations.
_ENCODER_OPTIONS = {
    "libx264": {"preset": "veryfast", "crf": "20", "x264-params": "asm=0"},
    "mpeg4": {"qscale": "3"},
}


def _video_codec(cfg: DemoConfig) -> str:
    if cfg.codec != "auto":
        return cfg.codec
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - PyAV raises different types across versions
        return "mpeg4"


def _render_media(root: Path, media: _Media, cfg: DemoConfig) -> None:
    """Render frames, write crops and encode video+audio in one pass (audio interleaved per frame)."""
    w, h = cfg.frame_size
    sr = cfg.audio_rate
    rng = _rng(cfg, media.index, 99)
    bg = _background(rng, cfg)
    looks = [_look(rng, cfg, p.side if len(media.persons) > 1 else None) for p in media.persons]
    light = rng.uniform(0.02, 0.06), rng.uniform(0, 6.3)  # slow lighting drift (nuisance, not affect)
    speaker = next((p for p in media.persons if p.speaks), media.persons[0])
    audio, gate = _speech(rng, media, speaker, sr)
    mouth = {p.video_id: (_per_frame(gate, media.frames, media.fps, sr) if p.speaks else np.zeros(media.frames))
             for p in media.persons}
    crop_dirs = {}
    for p in media.persons:
        d = root / "cropped_aligned" / p.video_id
        d.mkdir(parents=True, exist_ok=True)
        crop_dirs[p.video_id] = d
    faceless = {p.video_id: np.zeros(media.frames, bool) for p in media.persons}
    for p in media.persons:
        for a, b in p.faceless:
            faceless[p.video_id][a:b] = True

    path = root / "videos" / f"{media.name}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = _video_codec(cfg)
    container = av.open(str(path), "w")
    try:
        vs = container.add_stream(codec, rate=media.fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.thread_count = 1  # determinism and a fair share of 2 cores
        vs.options = _ENCODER_OPTIONS[codec]
        aus = None
        if media.has_audio:
            aus = container.add_stream("aac", rate=sr, layout="mono")
            aus.bit_rate = 64000
            aus.options = {"aac_coder": "fast"}  # the default two-loop coder dominated generation time
        frame_tb = 1 / media.fps
        cursor = 0
        for i in range(media.frames):
            t = i / float(media.fps)
            img = bg * (1.0 + light[0] * math.sin(2 * math.pi * 0.05 * t + light[1]))
            mean_v = float(np.mean([p.valence[i] for p in media.persons]))
            img = np.clip(img + _WARM * mean_v, 0, 255).astype(np.uint8)
            poses = []
            for p, look in zip(media.persons, looks):
                v, a = float(p.valence[i]), float(p.arousal[i])
                cx, cy, lean = _pose(look, cfg, t, v, a)
                mode = p.faceless_mode if faceless[p.video_id][i] else None
                _draw_person(img, look, cx, cy, lean, v, a, float(mouth[p.video_id][i]), mode)
                poses.append((cx, cy, look.ry, mode))
            for p, (cx, cy, ry, mode) in zip(media.persons, poses):
                if mode is None:
                    cv2.imwrite(str(crop_dirs[p.video_id] / f"{i + 1:05d}.jpg"), _crop(img, cx, cy, ry, cfg.crop_size),
                                [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts, frame.time_base = i, frame_tb
            for packet in vs.encode(frame):
                container.mux(packet)
            if aus is not None:
                target = len(audio) if i == media.frames - 1 else int(round((i + 1) * frame_tb * sr))
                cursor = _encode_audio(container, aus, audio, cursor, target, sr)
        for packet in vs.encode():
            container.mux(packet)
        if aus is not None:
            for packet in aus.encode():
                container.mux(packet)
    finally:
        container.close()


def _encode_audio(container, stream, audio: np.ndarray, cursor: int, target: int, sr: int, size: int = 1024) -> int:
    """Encode whole 1024-sample AAC frames up to `target` (the remainder at the very end)."""
    while cursor < target and (target - cursor >= size or target == len(audio)):
        chunk = audio[cursor: min(cursor + size, target)]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sr, cursor, Fraction(1, sr)
        for packet in stream.encode(frame):
            container.mux(packet)
        cursor += len(chunk)
    return cursor


# --------------------------------------------------------------------------- entry point


def _prepare_root(root: Path) -> None:
    """Refuse to write into a folder that holds anything but a previous synthetic tree."""
    if root.exists() and any(root.iterdir()):
        if not (root / MANIFEST_NAME).exists():
            raise FileExistsError(f"{root}: folder is not empty and holds no {MANIFEST_NAME}; "
                                  "choose an empty or new folder for the synthetic tree")
        for name in _OWNED:
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _manifest_entry(root: Path, media: _Media, person: _Person, labels: dict[str, str], cfg: DemoConfig) -> dict:
    crops = None
    if cfg.render_video:
        crops = str((root / "cropped_aligned" / person.video_id).relative_to(root))
    invalid = np.flatnonzero(np.diff(np.concatenate([[0], (~person.label_valid).astype(np.int8), [0]])))
    return {
        "video_id": person.video_id,
        "media": media.name,
        "media_path": f"videos/{media.name}.mp4" if cfg.render_video else None,
        "crops_dir": crops,
        "split": person.split,
        "fps": float(media.fps),
        "fps_fraction": f"{media.fps.numerator}/{media.fps.denominator}",
        "name_fps": media.name_fps,
        "frames": media.frames,
        "label_frames": person.label_lines,
        "duration": media.frames / float(media.fps),
        "has_audio": media.has_audio,
        "side": person.side,
        "speaks": person.speaks,
        "faceless_spans": [list(s) for s in person.faceless],
        "faceless_mode": person.faceless_mode if person.faceless else None,
        "silent_spans": [[round(a, 4), round(b, 4)] for a, b in media.silent] if media.has_audio else [],
        "invalid_spans": invalid.reshape(-1, 2).tolist(),
        "labels": labels,
    }


def generate(root: Path, cfg: DemoConfig, labels_from: Path | None = None, progress: bool = True) -> dict:
    """Write the tree under `root` and return (and save as `synthetic_manifest.json`) its manifest.

    Manifest keys: `videos` (one entry per annotation id: split, fps, frames, label_frames,
    has_audio, side, faceless/silent/invalid spans, relative paths), `splits`, `no_audio`, `pair`,
    `fps_name_mismatch`, `label_mismatch` ({id: label lines - frames}), `config`, `source`.
    Spans: faceless and invalid are [start, end) frame indices (0-based), silent are seconds.
    """
    cfg.validate(synthetic=labels_from is None)
    root = Path(root)
    _prepare_root(root)
    plan = _plan_from_labels(cfg, Path(labels_from)) if labels_from else _plan_synthetic(cfg)
    entries = []
    bar = progress_bar(enabled=progress, total=sum(len(m.persons) for m in plan), desc="synthetic demo", unit="id",
                       leave=False)
    with bar:
        for media in plan:
            if cfg.render_video:
                _render_media(root, media, cfg)
            for person in media.persons:
                entries.append(_manifest_entry(root, media, person, _write_labels(root, person), cfg))
                bar.update(1)
    text = json.dumps(_summarise(entries, cfg, labels_from), indent=1, sort_keys=True) + "\n"
    (root / MANIFEST_NAME).write_text(text)
    return json.loads(text)  # exactly what is on disk (tuples become lists)


def _summarise(entries: list[dict], cfg: DemoConfig, labels_from: Path | None) -> dict:
    entries = sorted(entries, key=lambda e: e["video_id"])
    by_media: dict[str, list[dict]] = {}
    for e in entries:
        by_media.setdefault(e["media"], []).append(e)
    pairs = [{"media": m, "left": next(e["video_id"] for e in es if e["side"] == "left"),
              "right": next(e["video_id"] for e in es if e["side"] == "right")}
             for m, es in sorted(by_media.items()) if len(es) == 2]
    return {
        "generator": "pipeline.datasets.synthetic",
        "version": 1,
        "source": "labels_from" if labels_from else "synthetic",
        "config": asdict(cfg),
        "videos": entries,
        "splits": {s: [e["video_id"] for e in entries if e["split"] == s] for s in SPLIT_DIRS},
        "no_audio": [e["video_id"] for e in entries if not e["has_audio"]],
        "pair": pairs[0] if len(pairs) == 1 else None,
        "pairs": pairs,
        "fps_name_mismatch": sorted({e["media"] for e in entries
                                     if e["name_fps"] is not None and e["name_fps"] != round(e["fps"])}),
        "label_mismatch": {e["video_id"]: e["label_frames"] - e["frames"] for e in entries
                           if e["label_frames"] != e["frames"]},
    }
