"""The `sun_audio` store: PDEM hidden states for the SUN team's audio model (profile `sun2024`).

PDEM is `audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim` (README, "The sun2024 profile"): a
wav2vec 2.0 encoder fine-tuned for dimensional emotion, loaded through the speech extractor's own
`from_pretrained` path (`extractors.audio.SpeechSSLExtractor`: same chunking, z-normalisation,
voice activity and `keep_lower_layers` for fine-tuning its last blocks from the cache). It is a
store of its own because its encoder is not the `audio` store's (WavLM), so its features differ; a
profile whose `sun_audio` config equalled `audio`'s would still extract twice, which is why the
demo points this store at a tiny wav2vec 2.0 of its own (stage demo_models).
"""

from __future__ import annotations

from dataclasses import dataclass

from extractors.audio import AudioConfig, SpeechSSLExtractor
from extractors.base import register


@dataclass
class PDEMConfig(AudioConfig):
    """AudioConfig with PDEM as the model (published: `src/audio/default_config.py`); the released
    code feeds 4-s windows, which `mode: windows` with `chunk_seconds: 4` reproduces."""

    model: str = "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim"


@register("pdem", modality="sun_audio", default=True, weights=True, video=False)
class PDEMExtractor(SpeechSSLExtractor):
    """PDEM states per audio row (the speech extractor's store layout)."""

    def __init__(self, cfg: PDEMConfig):
        super().__init__(cfg)
