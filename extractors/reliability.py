"""Reliability signals: per-frame face presence and mouth opening, per-audio-row voice activity.

They feed the published cross-modal audio filter (the published rule: an audio window is used when the
mouth is open >= 25 % of it and face coverage >= 0.8) and reliability-aware fusion.

Several persons (videos without crops, `detector.max_faces`): every person followed gets its own N
rows of the row arrays below, stacked person by person with a `person` column (`pipeline.persons`), so
the audio filter and RAAV read the mouth and face coverage of the person they predict for; the voice
activity rows are the video's, once.

Stored per video (one feature-store group): t0, t1, valid [N] on the frame grid (frame i: [its presentation
time, the next frame's), from the packet timestamps in the index record, so variable frame rates keep real times);
face [N] (1 = crop/detection present), mouth [N] openness (NaN without a face), mouth_open [N] bool
(smoothed rule below), extra mouth_raw [N]; and for audio rows: vad [M], vad_t0, vad_t1 [M]
(20 ms hop, 25 ms window, the WavLM frame grid; M = 0 without audio).

Mouth openness (`mouth_method`). The published system (ABAW_2024 `open_mouth_features_extraction.py`)
uses the MediaPipe FaceMesh lip-ring area and ships those areas per frame as CSV files; mediapipe
ships no model files offline. Four methods, all giving one raw value per face frame:
- "csv": the published per-frame signals read from `<mouth_csv_dir>/<video_id>.csv`
  (`extractors.mouth.read_mouth_csv_columns`; frames absent from the file have no value). Each file's
  content is part of its video's cache key (`source()`), so editing one CSV re-extracts that video
  only. The published filter (`make_audio_windows.py`) reads two more things from the file, which
  `mouth_csv_open_column: mouth_open` and `face_from_csv: true` select: the file's own open flag
  (the rolling rule below, as its authors computed it) instead of recomputing it from the areas, and
  a frame's presence in the file as the face coverage instead of crops or detection.
- "landmarks": dlib's 68-point shape predictor (the `mouth` extra) and the inner-lip aspect ratio
  (`extractors.mouth.inner_lip_ratio`: mean inner-lip vertical gap / inner mouth width; its limits are
  in that module's docstring). The rectangle handed to dlib: on aligned crops, the whole crop shrunk
  by `landmark_inset` per side (aligned crops frame the face with a border; dlib was trained on
  tight detector boxes); on the detect path, the face tracker's own landmarks, fitted in the tracked
  detector box on the full frame (`extractors.face_detection.track_faces`).
- "auto": "landmarks" when dlib and its model are installed, else "dark-extent". The fingerprint
  records the method actually used (and for landmarks dlib's version and the model's digest), so a
  store never silently depends on what is installed.
- "dark-extent" (the default) / "dark-fraction": an image statistic on *aligned* crops, where the
  mouth sits in a known region (`mouth_box`, lower-middle of the crop). "dark-extent": inside the box, pixels darker than the box's Otsu threshold (capped at
`dark_ratio` x 255) are "mouth"; the score is the median, over the box's central third of columns, of
the longest vertical run of such pixels, divided by the box height - the height of the dark opening,
the image analogue of the lip-ring area. ("dark-fraction", the plain share of dark pixels, is kept as
an alternative.) Limits: it is not a landmark measurement. Lips vs cavity are separated only by
brightness, so beards, dark lipstick, shadows, teeth (bright: they split the run), head pose and a
poorly aligned crop (detected faces are aligned like Aff-Wild2's; `align: none` box crops are looser)
bias it, and on the synthetic demo faces, whose lips and opening share one colour, mouth shape driven
by valence moves it as much as speech does. By itself it says nothing about *who* speaks (several
persons: each has its own signal, see above). It is only used *relative to the same video* (the rule
compares with the video mean; `mouth` is scaled per video), which cancels much of the per-person bias. (The image statistics are pluggable: `MOUTH_METHODS`.)

Smoothing rule (published): on the sequence of face frames, a frame is open when the trailing
rolling-30 mean of the openness exceeds the video mean (pandas `rolling(30)`: the first 29 face frames
are closed, as in the released code); then, on the frame grid, closed gaps <= 0.15 s between open runs
are filled and open blips <= 0.20 s are dropped. Frames without a face are closed. How a duration
becomes frames (`smoothing_frames`): "floor" counts a run of n frames as <= s seconds when
n / fps <= s; "round" (the published `smooth_open_flags`) when n <= max(1, round(s * fps)), Python's
round (half to even). They differ at some rates (25 fps: a 4-frame gap is 0.16 s > 0.15 s, but
round(3.75) = 4).

VAD: `extractors.vad.voice_activity` (energy + spectral flatness with hysteresis, or silero-vad's
shipped TorchScript model when the package is installed, `vad_backend="auto"`). The fingerprint
records the backend actually used.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from extractors.base import ExtractorError, VideoError, register
from extractors.face_detection import FaceDetectorConfig, crop_files, iter_face_crops, persons_of
from extractors.mouth import LandmarkMouth, landmarks_available, landmarks_identity, landmarks_problem, read_mouth_csv_columns
from extractors.vad import VAD_BACKENDS, resolve_vad_backend, silero_available, silero_model, vad_times, voice_activity
from pipeline.records import Video

log = logging.getLogger(__name__)

SCHEMA = 1


@dataclass
class ReliabilityConfig:
    """Reliability parameters; defaults are the published filter settings.

    source: "auto" (crops when the video has crops_dir, else detect) | "crops" | "detect".
    mouth_method: "dark-extent" (default) | "dark-fraction" | "landmarks" | "auto" | "csv"; see the
        module docstring.
    landmark_inset: landmarks on aligned crops: the dlib rectangle is the crop shrunk by this fraction
        of its side on every side (0 = the whole crop).
    mouth_csv_dir: "csv": the folder of `<video_id>.csv` files (null otherwise); mouth_csv_frame_column
        / mouth_csv_value_column: the frame-number and value columns; mouth_csv_frame_base: the number
        of the first frame (1 in the published files). A relative mouth_csv_dir is read under the
        dataset root (the extract stage resolves it from params `dataset.root`).
    mouth_csv_open_column: "csv": the column holding the file's own 0/1 open flag (published:
        `mouth_open`), used instead of the rolling rule (gap fill and blip drop still apply); null:
        recompute the rule from the value column.
    face_from_csv: "csv": face coverage is a frame's presence in the file (published), not crops or
        detection (which then are not read at all).
    smoothing_frames: "floor" | "round" (published): how gap_fill_s / blip_s become frame counts.
    mouth_box: (x0, y0, x1, y1) as fractions of the aligned crop: where the mouth is.
    dark_ratio: dark-extent: cap of the Otsu threshold (x 255); dark-fraction: a pixel is dark below
        dark_ratio x the crop's median grey level.
    thumb: crops are reduced to thumb x thumb grey images first (speed; the statistic is coarse).
    rolling / rolling_min_periods: the published trailing rolling mean (None = window, as pandas).
    gap_fill_s / blip_s: fill closed gaps <= 0.15 s, then drop open blips <= 0.20 s.
    vad_*: audio rows at 20 ms hop / 25 ms window (the WavLM grid); backend "auto" | "energy" | "silero".
    detector: face detection and tracking (`FaceDetectorConfig`), used only for videos without crops.
    """

    source: str = "auto"
    mouth_method: str = "dark-extent"
    landmark_inset: float = 0.0
    mouth_csv_dir: str | None = None
    mouth_csv_frame_column: str = "frame"
    mouth_csv_value_column: str = "surface_area_mouth"
    mouth_csv_frame_base: int = 1
    mouth_csv_open_column: str | None = None
    face_from_csv: bool = False
    smoothing_frames: str = "floor"
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
    detector: FaceDetectorConfig = field(default_factory=FaceDetectorConfig)
    max_frames: int | None = None

    DATASET_RELATIVE: ClassVar[tuple[str, ...]] = ("mouth_csv_dir",)  # relative values: under dataset.root

    def validate(self) -> None:
        if self.source not in ("auto", "crops", "detect"):
            raise ExtractorError(f"reliability source {self.source!r}: use 'auto', 'crops' or 'detect'")
        if self.mouth_method not in MOUTH_METHOD_NAMES:
            raise ExtractorError(f"reliability mouth_method {self.mouth_method!r}: use one of {', '.join(MOUTH_METHOD_NAMES)}")
        if self.mouth_method == "landmarks" and not landmarks_available():
            raise ExtractorError(f"reliability mouth_method 'landmarks': {landmarks_problem()}; "
                                 "or use mouth_method 'auto' (falls back to 'dark-extent')")
        if self.mouth_method == "csv" and not self.mouth_csv_dir:
            raise ExtractorError("reliability mouth_method 'csv' needs mouth_csv_dir (the folder of <video_id>.csv files)")
        if self.mouth_csv_dir and self.mouth_method != "csv":
            raise ExtractorError(f"reliability mouth_csv_dir is set but mouth_method is {self.mouth_method!r}: "
                                 "set mouth_method 'csv' to use the files, or mouth_csv_dir null")
        if (self.mouth_csv_open_column or self.face_from_csv) and self.mouth_method != "csv":
            raise ExtractorError("reliability mouth_csv_open_column / face_from_csv read the mouth CSVs: they need "
                                 f"mouth_method 'csv' (it is {self.mouth_method!r})")
        if self.smoothing_frames not in SMOOTHING_FRAMES:
            raise ExtractorError(f"reliability smoothing_frames {self.smoothing_frames!r}: use one of {', '.join(SMOOTHING_FRAMES)}")
        if not 0 <= self.landmark_inset < 0.5:
            raise ExtractorError(f"reliability landmark_inset must be in [0, 0.5), got {self.landmark_inset}")
        if self.vad_backend not in VAD_BACKENDS:
            raise ExtractorError(f"reliability vad_backend {self.vad_backend!r}: use one of {', '.join(VAD_BACKENDS)}")
        if self.vad_backend == "silero" and not silero_available():
            raise ExtractorError("reliability vad_backend 'silero' but the silero-vad package is not installed; "
                                 "`pip install --no-deps silero-vad` or use vad_backend 'energy'")
        x0, y0, x1, y1 = self.mouth_box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ExtractorError(f"reliability mouth_box {self.mouth_box}: need 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
        if self.rolling < 1 or self.vad_hop <= 0 or self.vad_win <= 0:
            raise ExtractorError("reliability rolling must be >= 1 and vad_hop/vad_win > 0")
        self.detector.validate("reliability")


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
# the image statistics above, plus the methods the extractor runs itself (see the module docstring)
MOUTH_METHOD_NAMES = (*MOUTH_METHODS, "landmarks", "auto", "csv")
IMAGE_STATISTIC_KEYS = ("mouth_box", "dark_ratio", "thumb")  # settings only the image statistics read
CSV_KEYS = ("mouth_csv_dir", "mouth_csv_frame_column", "mouth_csv_value_column", "mouth_csv_frame_base")
# settings added later: in the fingerprint only when not at their default, so older stores keep their key
LATER_KEYS = {"mouth_csv_open_column": None, "face_from_csv": False, "smoothing_frames": "floor"}
SMOOTHING_FRAMES = ("floor", "round")


def resolve_mouth_method(method: str) -> str:
    """The method "auto" stands for here: "landmarks" when dlib and its model are installed."""
    if method == "auto":
        return "landmarks" if landmarks_available() else "dark-extent"
    return method


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


def _max_frames(seconds: float, fps: float, rounding: str) -> float:
    """Longest run, in frames, that counts as lasting <= `seconds` (see `smoothing_frames`)."""
    if rounding == "round":
        return max(1, round(seconds * fps))
    return seconds * fps + 1e-9 * fps


def fill_gaps(open_: np.ndarray, fps: float, max_gap_s: float, rounding: str = "floor") -> np.ndarray:
    """Close-gap filling: closed runs strictly between two open runs lasting <= max_gap_s become open."""
    out = open_.copy()
    runs = _runs(open_)
    limit = _max_frames(max_gap_s, fps, rounding)
    for k, (s, e, v) in enumerate(runs):
        if not v and 0 < k < len(runs) - 1 and (e - s) <= limit:
            out[s:e] = True
    return out


def drop_blips(open_: np.ndarray, fps: float, max_blip_s: float, rounding: str = "floor") -> np.ndarray:
    """Open runs lasting <= max_blip_s become closed (anywhere, edges included)."""
    out = open_.copy()
    limit = _max_frames(max_blip_s, fps, rounding)
    for s, e, v in _runs(open_):
        if v and (e - s) <= limit:
            out[s:e] = False
    return out


def smooth_open(raw_open: np.ndarray, fps: float, cfg: ReliabilityConfig) -> np.ndarray:
    """The published smoothing of a per-frame open flag: gap fill, then blip drop."""
    return drop_blips(fill_gaps(raw_open, fps, cfg.gap_fill_s, cfg.smoothing_frames), fps, cfg.blip_s,
                      cfg.smoothing_frames)


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
    return smooth_open(raw_open, fps, cfg)


# --------------------------------------------------------------------------------------- extractor
@dataclass
class ReliabilityPrepared:
    num_rows: int
    face: np.ndarray  # [P, N] bool (P persons; provided crops: one)
    mouth_raw: np.ndarray  # [P, N] float, NaN without a face
    vad: np.ndarray  # [M]
    open_raw: np.ndarray | None = None  # [P, N] bool: an open flag read from the CSV (before smoothing)
    persons: bool = False  # detect path: store the rows person by person with a `person` column


@register("reliability", modality="reliability", default=True, crops=True)
class ReliabilityExtractor:
    """Face coverage, mouth opening and voice activity per video (see module docstring)."""

    def __init__(self, cfg: ReliabilityConfig):
        self.cfg = cfg
        self.cfg.validate()
        self.vad_backend = resolve_vad_backend(self.cfg.vad_backend)
        self.mouth_method = resolve_mouth_method(self.cfg.mouth_method)
        self._landmarks: LandmarkMouth | None = None

    def fingerprint(self) -> dict:
        """The config with the VAD backend and mouth method actually used; settings a method does not
        read are left out (a store of the image statistics keeps the key it had before the other
        methods existed). The CSV folder's path is left out too: each file's content keys its video."""
        method = self.mouth_method
        drop = {"vad_backend", "landmark_inset", *CSV_KEYS, *LATER_KEYS}
        if method not in MOUTH_METHODS:
            drop |= set(IMAGE_STATISTIC_KEYS)
        fp = {k: v for k, v in asdict(self.cfg).items() if k not in drop}
        fp.update(extractor=self.name, schema=SCHEMA, vad_backend=self.vad_backend, mouth_method=method)
        if method == "landmarks":
            fp.update(landmark_inset=self.cfg.landmark_inset, landmarks=landmarks_identity())
        if method == "csv":
            fp.update({k: getattr(self.cfg, k) for k in CSV_KEYS if k != "mouth_csv_dir"})
        fp.update({k: getattr(self.cfg, k) for k, default in LATER_KEYS.items() if getattr(self.cfg, k) != default})
        if self.cfg.source != "crops":  # which detector, landmark model and alignment template ran
            fp["detector_identity"] = self.cfg.detector.identity(landmarks=method == "landmarks")
        if self.vad_backend == "silero":
            from importlib.metadata import version

            fp["silero_version"] = version("silero-vad")
        return fp

    def load(self) -> None:
        if self.vad_backend == "silero":
            silero_model()
        if self.mouth_method == "landmarks":
            self._landmarks = LandmarkMouth.shared()
        if self.cfg.source == "detect":  # "auto" needs it only for videos without crops
            self.cfg.detector.check_available("reliability", landmarks=self.mouth_method == "landmarks")

    def source(self, video: Video) -> str | tuple[str, str]:
        """The crops folder when crops are used (its content, as the index checked it, keys the cache:
        `Video.crops_source`), else the media file; with mouth_method "csv", also the video's CSV, so
        its content keys the video's cache entry (with `face_from_csv` the CSV replaces the crops: the
        media file is then read for VAD only)."""
        if self.cfg.face_from_csv:
            return video.media_path, str(self.csv_path(video))
        faces = video.crops_source() if self._use_crops(video) and video.crops_dir else video.media_path
        return (faces, str(self.csv_path(video))) if self.mouth_method == "csv" else faces

    def csv_path(self, video: Video) -> Path:
        return Path(str(self.cfg.mouth_csv_dir)) / f"{video.video_id}.csv"

    def _use_crops(self, video: Video) -> bool:
        return self.cfg.source == "crops" or (self.cfg.source == "auto" and bool(video.crops_dir))

    def prepare(self, video: Video) -> ReliabilityPrepared:
        if video.fps <= 0:
            raise VideoError(f"{video.media_path}: fps {video.fps} is not positive; re-index the dataset")
        crops = self._use_crops(video)
        if self.cfg.face_from_csv:  # no image is read: the CSV gives face and mouth
            n = int(video.num_frames) if not self.cfg.max_frames else min(int(video.num_frames), self.cfg.max_frames)
            face, mouth = np.zeros((1, n), bool), np.full((1, n), np.nan)
        else:
            face, mouth = self._crops_signals(video) if crops else self._detect_signals(video)
        open_raw = None
        if self.mouth_method == "csv":  # the annotated subject's file: person 0; NaN without a face
            columns, present = self._csv_columns(video, face.shape[1])
            if self.cfg.face_from_csv:
                face[0] = present
            mouth = np.full(face.shape, np.nan)
            mouth[0] = np.where(face[0], columns[self.cfg.mouth_csv_value_column], np.nan)
            if self.cfg.mouth_csv_open_column:  # other persons have no flag: closed
                open_raw = np.zeros(face.shape, bool)
                open_raw[0] = face[0] & (np.nan_to_num(columns[self.cfg.mouth_csv_open_column]) > 0.5)
        persons = not (crops or self.cfg.face_from_csv)
        return ReliabilityPrepared(face.shape[1], face, mouth, self._vad(video), open_raw, persons)

    def _csv_columns(self, video: Video, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The CSV's columns (and which frames it lists) on the first `n` frames. Frame numbers are
        checked against the whole video (a `max_frames` cut is not an out-of-range frame)."""
        total = max(int(video.num_frames), n) if self.cfg.max_frames else n
        c = self.cfg
        columns = tuple(dict.fromkeys(x for x in (c.mouth_csv_value_column, c.mouth_csv_open_column) if x))
        values, present = read_mouth_csv_columns(self.csv_path(video), total, columns, c.mouth_csv_frame_column,
                                                 c.mouth_csv_frame_base)
        return {k: v[:n] for k, v in values.items()}, present[:n]

    def _landmark_model(self) -> LandmarkMouth:
        if self._landmarks is None:  # load() was not called (a caller driving prepare directly)
            self._landmarks = LandmarkMouth.shared()
        return self._landmarks

    def _score(self, gray: np.ndarray, box: tuple[float, float, float, float] | None = None) -> float:
        """Raw openness of one grey face image; `box`: the face in its pixels (landmarks only; None =
        the whole image less `landmark_inset`)."""
        if self.mouth_method == "landmarks":
            if box is None:
                h, w = gray.shape
                i = self.cfg.landmark_inset
                box = (i * w, i * h, (1 - i) * w - 1, (1 - i) * h - 1)
            return self._landmark_model()(gray, box)
        import cv2

        t = self.cfg.thumb
        small = cv2.resize(gray, (t, t), interpolation=cv2.INTER_AREA)
        return MOUTH_METHODS[self.mouth_method](small, self.cfg)

    def _crops_signals(self, video: Video) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        files = crop_files(video)
        n = max([int(video.num_frames)] + [i + 1 for i in files])
        if self.cfg.max_frames:
            n = min(n, self.cfg.max_frames)
        face, mouth = np.zeros(n, bool), np.full(n, np.nan)
        for i, p in files.items():
            if i >= n:
                continue
            if self.mouth_method == "csv":  # the crop's presence is all that is needed
                face[i] = True
                continue
            gray = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                raise VideoError(f"{p}: unreadable crop; re-extract it, or delete it to mark 'no face'")
            face[i], mouth[i] = True, self._score(gray)
        return face[None], mouth[None]

    def _detect_signals(self, video: Video) -> tuple[np.ndarray, np.ndarray]:
        """[P, N] face and raw mouth of every followed person. Landmarks: the inner-lip ratio of the
        68 points the tracker fitted on the frame; image statistics: on the aligned crops."""
        import cv2

        limit = self.cfg.max_frames
        det = self.cfg.detector
        tracks = persons_of(video.media_path, det, limit, video.side, landmarks=self.mouth_method == "landmarks")
        n = max(int(video.num_frames) if not limit else min(int(video.num_frames), limit), tracks.decoded)
        p = max(1, tracks.persons)
        face, mouth = np.zeros((p, n), bool), np.full((p, n), np.nan)
        face[tracks.person, tracks.frame] = True
        if self.mouth_method == "landmarks":
            mouth[tracks.person, tracks.frame] = tracks.lip
        elif self.mouth_method in MOUTH_METHODS:
            for batch in iter_face_crops(video.media_path, det, batch_size=32, limit=limit, tracks=tracks):
                for i, person, crop in zip(batch.indices, batch.persons_of, batch.crops):
                    mouth[person, i] = self._score(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY))
        return face, mouth

    def _vad(self, video: Video) -> np.ndarray:
        if not video.has_audio:
            return np.zeros(0, np.float32)
        from pipeline.media import read_audio

        wave = read_audio(video.media_path, self.cfg.audio_rate)
        if wave is None:
            return np.zeros(0, np.float32)
        if self.cfg.max_frames:
            end = video.frame_grid(self.cfg.max_frames)[1][-1]
            wave = wave[: int(end * self.cfg.audio_rate)]
        return voice_activity(wave, self.cfg.audio_rate, self.cfg.vad_hop, self.cfg.vad_win, self.vad_backend)

    def compute(self, video: Video, prepared: ReliabilityPrepared) -> dict[str, np.ndarray]:
        """Per person (rows stacked person by person, `pipeline.persons`, on the detect path): face,
        mouth normalised on that person's own frames and the open/closed rule on that person's own
        sequence; the voice activity rows once, for the whole video."""
        n, fps = prepared.num_rows, video.fps
        t0, t1 = video.frame_grid(n)  # real frame times (VFR-safe), not i / fps
        m = prepared.vad.shape[0]
        vad_t0, vad_t1 = vad_times(m, self.cfg.vad_hop, self.cfg.vad_win)
        face, raw = prepared.face, prepared.mouth_raw
        rows = {
            "t0": np.tile(t0.astype(np.float32), len(face)),
            "t1": np.tile(t1.astype(np.float32), len(face)),
            "valid": np.ones(face.size, bool),
            "face": face.astype(np.float32).ravel(),
            "mouth": np.concatenate([normalise_per_video(r) for r in raw]),
            "mouth_raw": raw.astype(np.float32).ravel(),
            "mouth_open": np.concatenate([
                mouth_open_rule(r, f, fps, self.cfg) if prepared.open_raw is None else smooth_open(prepared.open_raw[i], fps, self.cfg)
                for i, (r, f) in enumerate(zip(raw, face))]),
        }
        if prepared.persons:
            rows["person"] = np.repeat(np.arange(len(face), dtype=np.int32), n)
        return {**rows, "vad": prepared.vad.astype(np.float32), "vad_t0": vad_t0, "vad_t1": vad_t1}
