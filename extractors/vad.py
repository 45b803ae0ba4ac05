"""Voice activity per audio row: one implementation for the audio extractor's `vad` array, the
reliability signals and the cross-modal audio filter, so they never disagree about when someone speaks.

Rows follow one grid: row m covers [m*hop, m*hop + win) s, M = 1 + (L - win) // hop. Two backends:
"energy" (energy + spectral flatness with hysteresis, numpy only, always available) and "silero"
(silero-vad's shipped TorchScript model, when the package is installed); "auto" picks silero when
it is there. Extractors record the backend actually used in their fingerprint.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from typing import Any

import numpy as np

from extractors.base import ExtractorError

VAD_BACKENDS = ("auto", "energy", "silero")


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


def silero_model() -> Any:
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
    model = silero_model()
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
    """The backend "auto" stands for on this machine (silero when installed, else energy)."""
    if backend == "auto":
        return "silero" if silero_available() else "energy"
    return backend


def resample_to_rows(values: np.ndarray, times: np.ndarray, row_times: np.ndarray) -> np.ndarray:
    """Linear interpolation of a per-time signal onto row centres (edges held)."""
    if values.size == 0 or row_times.size == 0:
        return np.zeros(row_times.shape, dtype=np.float32)
    return np.interp(row_times, times, values).astype(np.float32)


def voice_activity_rows(audio: np.ndarray, sample_rate: int, hop: int, receptive: int, rows: int,
                        backend: str) -> np.ndarray:
    """Voice-activity probability per row of a conv front end's grid (hop/receptive in samples).

    `voice_activity` is asked for rows on that grid (hop/window in seconds). Its row count follows
    1 + (L - win) // hop while a conv stack floors per layer, so the two can differ by a row at the
    end: then the probabilities are interpolated onto the model's row centres.
    """
    prob = voice_activity(audio, sample_rate, hop=hop / sample_rate, win=receptive / sample_rate, backend=backend)
    prob = np.asarray(prob, dtype=np.float32).reshape(-1)
    if len(prob) == rows:
        return np.clip(prob, 0.0, 1.0)
    centres = (np.arange(rows) * hop + receptive / 2) / sample_rate
    src = (np.arange(len(prob)) * hop + receptive / 2) / sample_rate
    return np.clip(resample_to_rows(prob, src, centres), 0.0, 1.0)
