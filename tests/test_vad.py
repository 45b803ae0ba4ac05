"""Voice activity: the energy/flatness backend on silence, a voiced tone and noise; silero (the default
backend) separates generated voiced speech from silence and low noise; silero's row grid."""

from __future__ import annotations

import numpy as np
import pytest

from extractors.vad import energy_flatness_vad, silero_available, vad_times, voice_activity, voice_activity_rows
from tiny_models import speechlike, voiced


def test_vad_silence_vs_voice() -> None:
    sr = 16000
    rng = np.random.default_rng(0)
    silence = (rng.standard_normal(sr * 2) * 1e-4).astype(np.float32)
    wave = np.r_[silence, voiced(sr, 2.0), silence]
    p = energy_flatness_vad(wave, sr)
    m = 1 + (wave.size - 400) // 320
    assert p.shape == (m,) and p.dtype == np.float32
    t0, t1 = vad_times(m)
    assert t0[1] == pytest.approx(0.02) and t1[0] == pytest.approx(0.025)
    assert (p[(t0 > 2.1) & (t1 < 3.9)] > 0.5).mean() > 0.95
    assert (p[t1 < 1.9] > 0.5).mean() < 0.02 and (p[t0 > 4.3] > 0.5).mean() < 0.02
    assert (energy_flatness_vad(np.zeros(sr, np.float32), sr) < 0.5).all()
    noise = (rng.standard_normal(sr * 2) * 0.1).astype(np.float32)  # loud broadband noise is not speech
    assert (energy_flatness_vad(noise, sr) > 0.5).mean() < 0.1
    assert voice_activity(np.zeros(100, np.float32), sr).shape == (0,)


@pytest.mark.skipif(not silero_available(), reason="silero-vad not installed (optional)")
def test_silero_backend_shape() -> None:
    sr = 16000
    wave = np.r_[np.zeros(sr, np.float32), voiced(sr, 1.0)]
    p = voice_activity(wave, sr, backend="silero")
    assert p.shape == (1 + (wave.size - 400) // 320,) and np.all((p >= 0) & (p <= 1))


def test_rows_on_a_conv_grid_are_resampled_to_its_row_count() -> None:
    sr = 16000
    wave = np.r_[np.zeros(sr, np.float32), voiced(sr, 1.0)]
    direct = voice_activity(wave, sr, backend="energy")
    assert np.array_equal(voice_activity_rows(wave, sr, 320, 400, direct.shape[0], "energy"), direct)
    fewer = voice_activity_rows(wave, sr, 320, 400, direct.shape[0] - 1, "energy")
    assert fewer.shape == (direct.shape[0] - 1,) and np.all((fewer >= 0) & (fewer <= 1))


SR = 16000


def voiced_syllables(seconds: float, seed: int) -> np.ndarray:
    """`speechlike` (harmonics, gliding pitch) cut into 4 Hz syllables (silero ignores steady tones)."""
    x = speechlike(seconds, SR, seed=seed)
    t = np.arange(x.size) / SR
    return (x * np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5).astype(np.float32)


def test_silero_scores_voiced_bursts_above_silence_and_noise() -> None:
    rng = np.random.default_rng(0)
    seconds = 8.0
    wave = (0.003 * rng.standard_normal(int(seconds * SR))).astype(np.float32)  # low noise floor
    speech = [(1.0, 2.5), (4.0, 5.5)]
    for k, (a, b) in enumerate(speech):
        burst = voiced_syllables(b - a, seed=k)
        wave[int(a * SR): int(a * SR) + burst.size] += burst
    wave[int(6.5 * SR):] = 0.0  # digital silence at the end
    p = voice_activity(wave, SR, backend="silero")
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
