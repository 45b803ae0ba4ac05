"""Silero VAD (the default VAD backend) separates generated voiced speech from silence and low noise.

The backend is reached through `voice_activity(..., backend="silero")`, imported by `_vad()` from
`extractors.vad` when that module exists (the planned move) and from `extractors.reliability` today.
"""

from __future__ import annotations

import importlib

import numpy as np

from tiny_models import speechlike

SR = 16000
BACKEND = "silero"
VAD_MODULES = ("extractors.vad", "extractors.reliability")  # new home first, then today's


def _vad():
    for name in VAD_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        if hasattr(module, "voice_activity"):
            return module.voice_activity, module.vad_times
    raise AssertionError(f"no voice_activity in any of {VAD_MODULES}")


def voiced_syllables(seconds: float, seed: int) -> np.ndarray:
    """`speechlike` (harmonics, gliding pitch) cut into 4 Hz syllables (silero ignores steady tones)."""
    x = speechlike(seconds, SR, seed=seed)
    t = np.arange(x.size) / SR
    return (x * np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5).astype(np.float32)


def test_silero_scores_voiced_bursts_above_silence_and_noise() -> None:
    voice_activity, vad_times = _vad()
    rng = np.random.default_rng(0)
    seconds = 8.0
    wave = (0.003 * rng.standard_normal(int(seconds * SR))).astype(np.float32)  # low noise floor
    speech = [(1.0, 2.5), (4.0, 5.5)]
    for k, (a, b) in enumerate(speech):
        burst = voiced_syllables(b - a, seed=k)
        wave[int(a * SR): int(a * SR) + burst.size] += burst
    wave[int(6.5 * SR):] = 0.0  # digital silence at the end
    p = voice_activity(wave, SR, backend=BACKEND)
    t0, t1 = vad_times(p.size)
    inside = np.zeros(p.size, bool)
    for a, b in speech:
        inside |= (t0 > a + 0.3) & (t1 < b - 0.1)
    outside = np.ones(p.size, bool)
    for a, b in speech:
        outside &= (t1 < a - 0.3) | (t0 > b + 0.6)
    assert inside.sum() > 50 and outside.sum() > 50
    assert p[inside].mean() > 0.6, p[inside].mean()
    assert p[outside].mean() < 0.1, p[outside].mean()
    assert p[inside].mean() > p[outside].mean() + 0.4
    assert (p[t0 > 7.0] < 0.5).all()  # digital silence
