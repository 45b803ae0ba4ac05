"""Reliability signals: per-frame face presence and mouth opening, per-audio-row voice activity.

They feed the published cross-modal audio filter (seed-systems B3: an audio window is used when the
mouth is open >= 25 % of it and face coverage >= 0.8) and reliability-aware fusion.

Stored per video (DESIGN.md feature store): t0, t1, valid [N] on the frame grid (frame i: [i/fps, (i+1)/fps));
face [N] (1 = crop/detection present), mouth [N] openness (NaN without a face), mouth_open [N] bool
(smoothed rule below), extra mouth_raw [N]; and for audio rows: vad [M], vad_t0, vad_t1 [M]
(20 ms hop, 25 ms window, the WavLM frame grid; M = 0 without audio).

Mouth openness. The published system (ABAW_2024 `open_mouth_features_extraction.py`) uses the MediaPipe
FaceMesh lip-ring area; mediapipe ships no model files offline, so this module uses an image statistic
on *aligned* crops instead, where the mouth sits in a known region (`mouth_box`, lower-middle of the
crop). Default "dark-extent": inside the box, pixels darker than the box's Otsu threshold (capped at
`dark_ratio` x 255) are "mouth"; the score is the median, over the box's central third of columns, of
the longest vertical run of such pixels, divided by the box height - the height of the dark opening,
the image analogue of the lip-ring area. ("dark-fraction", the plain share of dark pixels, is kept as
an alternative.) Limits: it is not a landmark measurement. Lips vs cavity are separated only by
brightness, so beards, dark lipstick, shadows, teeth (bright: they split the run), head pose and a
poorly aligned or detected crop (Haar boxes are looser than Aff-Wild2's alignment) bias it, and on the
synthetic demo faces, whose lips and opening share one colour, mouth shape driven by valence moves it
as much as speech does. It says nothing about *who* speaks. It is only used *relative to the same
video* (the rule compares with the video mean; `mouth` is scaled per video), which cancels much of the
per-person bias. The method is pluggable (`MOUTH_METHODS`): a landmark-based one can replace it.

Smoothing rule (published): on the sequence of face frames, a frame is open when the trailing
rolling-30 mean of the openness exceeds the video mean (pandas `rolling(30)`: the first 29 face frames
are closed, as in the released code); then, on the frame grid, closed gaps <= 0.15 s between open runs
are filled and open blips <= 0.20 s are dropped. Frames without a face are closed.

VAD: `voice_activity` (energy + spectral flatness with hysteresis, documented there) is always
available; silero-vad's shipped TorchScript model is used when the package is installed
(`vad_backend="auto"`). The fingerprint records the backend actually used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from extractors.base import ExtractorError, VideoError, register
from pipeline.records import Video

log = logging.getLogger(__name__)

SCHEMA = 1


@dataclass
class ReliabilityConfig:
    """Reliability parameters; defaults are the published filter settings (seed-systems B3).

    source: "auto" (crops when the video has crops_dir, else detect) | "crops" | "detect".
    mouth_method: "dark-extent" (default) | "dark-fraction"; see the module docstring.
    mouth_box: (x0, y0, x1, y1) as fractions of the aligned crop: where the mouth is.
    dark_ratio: dark-extent: cap of the Otsu threshold (x 255); dark-fraction: a pixel is dark below
        dark_ratio x the crop's median grey level.
    thumb: crops are reduced to thumb x thumb grey images first (speed; the statistic is coarse).
    rolling / rolling_min_periods: the published trailing rolling mean (None = window, as pandas).
    gap_fill_s / blip_s: fill closed gaps <= 0.15 s, then drop open blips <= 0.20 s.
    vad_*: audio rows at 20 ms hop / 25 ms window (the WavLM grid); backend "auto" | "energy" | "silero".
    detector params: as FaceConfig (used only for videos without crops).
    """

    source: str = "auto"
    mouth_method: str = "dark-extent"
    mouth_box: tuple[float, float, float, float] = (0.3, 0.65, 0.7, 0.92)
    dark_ratio: float = 0.55
    thumb: int = 64
    rolling: int = 30
    rolling_min_periods: int | None = None
    gap_fill_s: float = 0.15
    blip_s: float = 0.20
    audio_rate: int = 16000
    vad_hop: float = 0.02
    vad_win: float = 0.025
    vad_backend: str = "auto"
    detector: str = "opencv-haar"
    detect_every_n: int = 5
    smooth: float = 0.6
    margin: float = 0.2
    detect_size: int = 960
    min_face: float = 0.04
    max_frames: int | None = None

    def validate(self) -> None:
        if self.source not in ("auto", "crops", "detect"):
            raise ExtractorError(f"reliability source {self.source!r}: use 'auto', 'crops' or 'detect'")
        if self.mouth_method not in MOUTH_METHODS:
            raise ExtractorError(f"reliability mouth_method {self.mouth_method!r}: use one of {sorted(MOUTH_METHODS)}")
        if self.vad_backend not in ("auto", "energy", "silero"):
            raise ExtractorError(f"reliability vad_backend {self.vad_backend!r}: use 'auto', 'energy' or 'silero'")
        if self.vad_backend == "silero" and not silero_available():
            raise ExtractorError("reliability vad_backend 'silero' but the silero-vad package is not installed; "
                                 "`pip install --no-deps silero-vad` or use vad_backend 'energy'")
        x0, y0, x1, y1 = self.mouth_box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ExtractorError(f"reliability mouth_box {self.mouth_box}: need 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
        if self.rolling < 1 or self.vad_hop <= 0 or self.vad_win <= 0:
            raise ExtractorError("reliability rolling must be >= 1 and vad_hop/vad_win > 0")


# ----------------------------------------------------------------------------------- mouth opening
def mouth_dark_fraction(gray: np.ndarray, box: tuple[float, float, float, float], dark_ratio: float) -> float:
    """Fraction of dark pixels in the mouth box of an aligned grey crop (see module docstring)."""
    h, w = gray.shape
    x0, y0, x1, y1 = box
    region = gray[int(y0 * h):max(int(y1 * h), int(y0 * h) + 1), int(x0 * w):max(int(x1 * w), int(x0 * w) + 1)]
    ref = float(np.median(gray))
    if ref <= 0:
        return 0.0
    return float((region < dark_ratio * ref).mean())


def _longest_run(col: np.ndarray) -> int:
    best = run = 0
    for v in col:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


def mouth_dark_extent(gray: np.ndarray, box: tuple[float, float, float, float], dark_ratio: float) -> float:
    """Vertical extent of the dark opening: in the central third of the mouth box's columns, the
    longest vertical run of dark pixels, as a fraction of the box height (median over those columns).

    Why not the plain dark fraction: lips, a moustache or the mouth's width change how many pixels are
    dark, but the opening's *height* is what separates open from closed (as the lip-ring area does for
    landmarks); teeth are bright, so a smile with closed jaws scores low.
    """
    h, w = gray.shape
    x0, y0, x1, y1 = box
    region = gray[int(y0 * h):max(int(y1 * h), int(y0 * h) + 1), int(x0 * w):max(int(x1 * w), int(x0 * w) + 1)]
    if region.size == 0 or int(region.max()) == int(region.min()):
        return 0.0
    import cv2

    otsu, _ = cv2.threshold(np.ascontiguousarray(region, np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = region <= min(otsu, dark_ratio * 255)
    cw = dark.shape[1]
    cols = dark[:, cw // 3: max(cw - cw // 3, cw // 3 + 1)]
    return float(np.median([_longest_run(c) for c in cols.T]) / dark.shape[0])


MOUTH_METHODS: dict[str, Callable[[np.ndarray, ReliabilityConfig], float]] = {
    "dark-extent": lambda gray, cfg: mouth_dark_extent(gray, cfg.mouth_box, cfg.dark_ratio),
    "dark-fraction": lambda gray, cfg: mouth_dark_fraction(gray, cfg.mouth_box, cfg.dark_ratio),
}


def normalise_per_video(raw: np.ndarray) -> np.ndarray:
    """Scale openness to ~[0, 1] by the video's 5th/95th percentiles (NaN stays NaN): comparable
    across videos without pretending the image statistic has an absolute unit."""
    out = np.full(raw.shape, np.nan, np.float32)
    ok = np.isfinite(raw)
    if not ok.any():
        return out
    lo, hi = np.percentile(raw[ok], [5, 95])
    out[ok] = np.clip((raw[ok] - lo) / (hi - lo), 0, 1) if hi > lo else 0.0
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Run-length encode a bool array: (start, end_exclusive, value)."""
    if mask.size == 0:
        return []
    change = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, mask.size]
    return [(int(s), int(e), bool(mask[s])) for s, e in zip(starts, ends)]


def fill_gaps(open_: np.ndarray, fps: float, max_gap_s: float) -> np.ndarray:
    """Close-gap filling: closed runs strictly between two open runs lasting <= max_gap_s become open."""
    out = open_.copy()
    runs = _runs(open_)
    for k, (s, e, v) in enumerate(runs):
        if not v and 0 < k < len(runs) - 1 and (e - s) / fps <= max_gap_s + 1e-9:
            out[s:e] = True
    return out


def drop_blips(open_: np.ndarray, fps: float, max_blip_s: float) -> np.ndarray:
    """Open runs lasting <= max_blip_s become closed (anywhere, edges included)."""
    out = open_.copy()
    for s, e, v in _runs(open_):
        if v and (e - s) / fps <= max_blip_s + 1e-9:
            out[s:e] = False
    return out


def mouth_open_rule(openness: np.ndarray, face: np.ndarray, fps: float, cfg: ReliabilityConfig) -> np.ndarray:
    """The published rule: rolling mean over face frames > video mean, then gap fill and blip drop."""
    n = openness.shape[0]
    raw_open = np.zeros(n, bool)
    idx = np.flatnonzero(face & np.isfinite(openness))
    if idx.size:
        seq = openness[idx].astype(np.float64)
        w = cfg.rolling
        minp = cfg.rolling_min_periods or w
        csum = np.r_[0.0, np.cumsum(seq)]
        k = np.arange(seq.size)
        lo = np.maximum(0, k - w + 1)
        counts = k - lo + 1
        roll = (csum[k + 1] - csum[lo]) / counts
        raw_open[idx] = (counts >= minp) & (roll > seq.mean())
    return drop_blips(fill_gaps(raw_open, fps, cfg.gap_fill_s), fps, cfg.blip_s)


# ---------------------------------------------------------------------------------- voice activity
def _num_rows(n_samples: int, sr: int, hop: float, win: float) -> tuple[int, int, int]:
    hop_n, win_n = max(1, round(hop * sr)), max(1, round(win * sr))
    m = 0 if n_samples < win_n else 1 + (n_samples - win_n) // hop_n
    return m, hop_n, win_n


def vad_times(m: int, hop: float = 0.02, win: float = 0.025) -> tuple[np.ndarray, np.ndarray]:
    t0 = np.arange(m, dtype=np.float64) * hop
    return t0.astype(np.float32), (t0 + win).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def energy_flatness_vad(wave: np.ndarray, sr: int, hop: float = 0.02, win: float = 0.025,
                        high: float = 0.6, low: float = 0.4, hangover: float = 0.1) -> np.ndarray:
    """Speech probability per row from frame energy and spectral flatness, with hysteresis.

    - energy: log power in dBFS of a Hann-windowed frame; threshold = noise floor (10th percentile of
      the clip) + 10 dB, clipped to [-50, -30] dBFS, so a clip that is all speech (no floor) still passes
      and a near-silent clip never does; soft score = sigmoid((E - thr) / 3 dB).
    - spectral flatness (geometric / arithmetic mean power, 100-4000 Hz): voiced speech is harmonic
      (flatness << 0.3), broadband noise is flat (~0.5): score = sigmoid((0.35 - F) / 0.08).
    - p = e_score x (0.4 + 0.6 f_score): loud noise alone stays below 0.5.
    - hysteresis: speech starts when p > high, ends when p < low for longer than `hangover` seconds
      (word tails and unvoiced consonants are kept); the output is p pushed to the side of 0.5 given by
      that state, so `prob > 0.5` is the hysteresis decision and the value keeps its gradation.
    """
    m, hop_n, win_n = _num_rows(int(wave.shape[0]), sr, hop, win)
    if m == 0:
        return np.zeros(0, np.float32)
    x = np.asarray(wave, dtype=np.float32)
    frames = np.lib.stride_tricks.as_strided(x, shape=(m, win_n), strides=(x.strides[0] * hop_n, x.strides[0]))
    frames = frames * np.hanning(win_n).astype(np.float32)
    energy_db = 10 * np.log10(np.mean(frames ** 2, axis=1) / 0.375 + 1e-12)  # /0.375: Hann power loss
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(win_n, 1.0 / sr)
    band = spec[:, (freqs >= 100) & (freqs <= 4000)] + 1e-12
    flatness = np.exp(np.mean(np.log(band), axis=1)) / np.mean(band, axis=1)
    thr = float(np.clip(np.percentile(energy_db, 10) + 10.0, -50.0, -30.0))
    p = _sigmoid((energy_db - thr) / 3.0) * (0.4 + 0.6 * _sigmoid((0.35 - flatness) / 0.08))
    return _hysteresis(p, high, low, max(0, round(hangover / hop))).astype(np.float32)


def _hysteresis(p: np.ndarray, high: float, low: float, hang: int) -> np.ndarray:
    state, quiet = False, 0
    on = np.zeros(p.shape[0], bool)
    for i, v in enumerate(p):
        if not state and v > high:
            state, quiet = True, 0
        elif state:
            quiet = quiet + 1 if v < low else 0
            if quiet > hang:
                state = False
        on[i] = state
    eps = 1e-3
    return np.where(on, np.maximum(p, 0.5 + eps), np.minimum(p, 0.5 - eps))


def silero_available() -> bool:
    return importlib.util.find_spec("silero_vad") is not None


# silero's TorchScript model is one stateful object (reset_states/audio_forward): concurrent calls on
# one instance corrupt its state and can crash the process. Each thread (the engine's prepare workers)
# therefore gets its own instance (~2 MB, loaded in ~0.1 s), so videos' VAD runs in parallel; it is the
# largest part of audio preparation (~0.5 s per minute of audio on one core).
_SILERO = threading.local()


def _silero_model() -> Any:
    """This thread's silero-vad model, loaded from the package's shipped TorchScript file directly:
    importing the package would call torch.set_num_threads(1) for the whole process as a side effect."""
    model = getattr(_SILERO, "model", None)
    if model is None:
        model = _SILERO.model = _load_silero()
    return model


def _load_silero() -> Any:
    import torch

    spec = importlib.util.find_spec("silero_vad")
    path = os.path.join(os.path.dirname(spec.origin), "data", "silero_vad.jit")
    if not os.path.isfile(path):
        raise ExtractorError(f"{path}: silero-vad installed without its model file; reinstall silero-vad")
    with warnings.catch_warnings():  # torch >= 2.10 flags jit.load as deprecated; the file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(path, map_location="cpu").eval()


def silero_vad_probs(wave: np.ndarray, sr: int, hop: float = 0.02, win: float = 0.025) -> np.ndarray:
    """silero-vad probabilities (32 ms chunks at 16 kHz) resampled to our rows by row centre."""
    import torch

    m, _, _ = _num_rows(int(wave.shape[0]), sr, hop, win)
    if m == 0:
        return np.zeros(0, np.float32)
    if sr != 16000:
        raise ValueError(f"silero-vad needs 16 kHz audio, got {sr}")
    model = _silero_model()
    with torch.inference_mode():
        model.reset_states()
        probs = model.audio_forward(torch.from_numpy(np.ascontiguousarray(wave, np.float32))[None], sr)[0].numpy()
    centre = np.arange(m) * hop + win / 2
    chunk = np.minimum((centre * sr / 512).astype(np.int64), probs.shape[0] - 1)
    return probs[chunk].astype(np.float32)


def voice_activity(wave: np.ndarray, sr: int, hop: float = 0.02, win: float = 0.025, backend: str = "energy") -> np.ndarray:
    """Speech probability per audio row: row m covers [m*hop, m*hop + win) s; M = 1 + (L - win)//hop.

    Stable signature, shared with the audio extractor's `vad` array. backend "energy" (default, always
    available), "silero" (needs the silero-vad package) or "auto" (silero when installed).
    """
    chosen = resolve_vad_backend(backend)
    if chosen == "silero":
        return silero_vad_probs(wave, sr, hop, win)
    return energy_flatness_vad(wave, sr, hop, win)


def resolve_vad_backend(backend: str) -> str:
    if backend == "auto":
        return "silero" if silero_available() else "energy"
    return backend


# --------------------------------------------------------------------------------------- extractor
@dataclass
class ReliabilityPrepared:
    num_rows: int
    face: np.ndarray  # [N] bool
    mouth_raw: np.ndarray  # [N] float, NaN without a face
    vad: np.ndarray  # [M]


@register("reliability")
class ReliabilityExtractor:
    """Face coverage, mouth opening and voice activity per video (see module docstring)."""

    name = "reliability"
    modality = "reliability"

    def __init__(self, cfg: ReliabilityConfig):
        self.cfg = cfg
        self.cfg.validate()
        self.vad_backend = resolve_vad_backend(self.cfg.vad_backend)

    def fingerprint(self) -> dict:
        from dataclasses import asdict

        fp = {k: v for k, v in asdict(self.cfg).items() if k != "vad_backend"}
        fp.update(extractor=self.name, schema=SCHEMA, vad_backend=self.vad_backend)
        if self.vad_backend == "silero":
            from importlib.metadata import version

            fp["silero_version"] = version("silero-vad")
        return fp

    def load(self) -> None:
        if self.vad_backend == "silero":
            _silero_model()
        if self.cfg.source == "detect":  # "auto" needs it only for videos without crops
            from extractors.face import DETECTORS

            DETECTORS[self.cfg.detector](self._face_cfg())  # fail now if the detector cannot load

    def source(self, video: Video) -> str:
        """The crops folder when crops are used (its file list keys the cache), else the media file."""
        return video.crops_dir if self._use_crops(video) and video.crops_dir else video.media_path

    def _use_crops(self, video: Video) -> bool:
        return self.cfg.source == "crops" or (self.cfg.source == "auto" and bool(video.crops_dir))

    def _face_cfg(self) -> Any:
        from extractors.face import FaceConfig

        c = self.cfg
        return FaceConfig(source="detect", detector=c.detector, detect_every_n=c.detect_every_n, smooth=c.smooth,
                          margin=c.margin, detect_size=c.detect_size, min_face=c.min_face)

    def prepare(self, video: Video) -> ReliabilityPrepared:
        if video.fps <= 0:
            raise VideoError(f"{video.media_path}: fps {video.fps} is not positive; re-index the dataset")
        face, mouth = self._crops_signals(video) if self._use_crops(video) else self._detect_signals(video)
        return ReliabilityPrepared(face.shape[0], face, mouth, self._vad(video))

    def _score(self, gray: np.ndarray) -> float:
        import cv2

        t = self.cfg.thumb
        small = cv2.resize(gray, (t, t), interpolation=cv2.INTER_AREA)
        return MOUTH_METHODS[self.cfg.mouth_method](small, self.cfg)

    def _crops_signals(self, video: Video) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        from extractors.face import CROP_NAME

        if not video.crops_dir or not Path(video.crops_dir).is_dir():
            raise VideoError(f"{video.crops_dir}: crops folder of video {video.video_id} not found; restore it, "
                             "or drop crops_dir from the index to use face detection")
        files = {int(m.group(1)) - 1: p for p in Path(video.crops_dir).iterdir()
                 if (m := CROP_NAME.match(p.name)) and int(m.group(1)) >= 1}
        n = max([int(video.num_frames)] + [i + 1 for i in files])
        if self.cfg.max_frames:
            n = min(n, self.cfg.max_frames)
        face, mouth = np.zeros(n, bool), np.full(n, np.nan)
        for i, p in files.items():
            if i >= n:
                continue
            gray = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                raise VideoError(f"{p}: unreadable crop; re-extract it, or delete it to mark 'no face'")
            face[i], mouth[i] = True, self._score(gray)
        return face, mouth

    def _detect_signals(self, video: Video) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        from extractors.face import DETECTORS, BoxTracker, square_crop
        from pipeline.media import iter_frames

        fc = self._face_cfg()
        track = BoxTracker(DETECTORS[fc.detector](fc), fc.detect_every_n, fc.smooth)
        limit = self.cfg.max_frames
        n = int(video.num_frames) if not limit else min(int(video.num_frames), limit)
        face, mouth = np.zeros(n, bool), np.full(n, np.nan)
        for fb in iter_frames(video.media_path, batch_size=32):
            for img, i in zip(fb.images, fb.indices):
                i = int(i)
                if limit is not None and i >= limit:
                    break
                if i >= face.shape[0]:  # more frames than the index says: extend
                    face = np.r_[face, np.zeros(i + 1 - face.shape[0], bool)]
                    mouth = np.r_[mouth, np.full(i + 1 - mouth.shape[0], np.nan)]
                box = track(i, img)
                if box is not None:
                    face[i] = True
                    mouth[i] = self._score(cv2.cvtColor(square_crop(img, box, fc.margin), cv2.COLOR_RGB2GRAY))
            if limit is not None and len(fb.indices) and int(fb.indices[-1]) + 1 >= limit:
                break
        return face, mouth

    def _vad(self, video: Video) -> np.ndarray:
        if not video.has_audio:
            return np.zeros(0, np.float32)
        from pipeline.media import read_audio

        wave = read_audio(video.media_path, self.cfg.audio_rate)
        if wave is None:
            return np.zeros(0, np.float32)
        if self.cfg.max_frames:
            wave = wave[: int(self.cfg.max_frames / video.fps * self.cfg.audio_rate)]
        return voice_activity(wave, self.cfg.audio_rate, self.cfg.vad_hop, self.cfg.vad_win, self.vad_backend)

    def compute(self, video: Video, prepared: ReliabilityPrepared) -> dict[str, np.ndarray]:
        n, fps = prepared.num_rows, video.fps
        i = np.arange(n, dtype=np.float64)
        m = prepared.vad.shape[0]
        vad_t0, vad_t1 = vad_times(m, self.cfg.vad_hop, self.cfg.vad_win)
        return {
            "t0": (i / fps).astype(np.float32),
            "t1": ((i + 1) / fps).astype(np.float32),
            "valid": np.ones(n, bool),
            "face": prepared.face.astype(np.float32),
            "mouth": normalise_per_video(prepared.mouth_raw),
            "mouth_raw": prepared.mouth_raw.astype(np.float32),
            "mouth_open": mouth_open_rule(prepared.mouth_raw, prepared.face, fps, self.cfg),
            "vad": prepared.vad.astype(np.float32),
            "vad_t0": vad_t0,
            "vad_t1": vad_t1,
        }
