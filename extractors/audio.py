"""Speech self-supervised features (WavLM-Large by default) for every video with audio.

Why it looks like this:
- **Any HF speech SSL checkpoint.** `AutoModel.from_pretrained(model, revision)` loads WavLM, wav2vec2,
  HuBERT... A checkpoint saved with a task head (e.g. audeering's PDEM
  `audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim`, a Wav2Vec2 with a custom regression head)
  loads as its base model: the head's weights are ignored, which is what a feature cache wants.
- **Long audio in overlapping chunks, stitched seamlessly.** A 10-minute track does not fit a
  Transformer's attention in one pass, so the waveform is cut into `chunk_seconds` chunks that
  overlap by `overlap_seconds`; chunk starts sit on the model's frame grid, and each output row is
  taken from the chunk in which it lies most centrally (the overlap is split in the middle). For a
  model whose context does not reach past half the overlap the result equals whole-sequence
  inference (tested); for a global-attention model it is the usual, good approximation.
  All chunks of a video have the same length (the last one is aligned to the end of the track), so
  they batch without padding and padding can never leak into the features.
- **Rows on the model's own time grid.** Row k covers samples [k*hop, k*hop + receptive) where hop and
  receptive field are computed from the conv front end (WavLM/wav2vec2: 320 and 400 samples = 20 ms /
  25 ms at 16 kHz). Heads align rows to label frames via `t0`/`t1`; no modality assumes another's rate.
- **Top-k fine-tuning from cache.** With `keep_lower_layers=k` the extractor also stores
  `hidden_states[-(k+1)]`, the input of the top k layers, as `lower`; a head can then train those k
  layers (the published system fine-tunes WavLM's last 4) without ever running the lower 20 again.
- **Left/right share one extraction.** Aff-Wild2's `_left`/`_right` annotation ids share one media
  file, hence one audio track. The computed arrays are memoised by `video.media_key` in a small LRU
  (`cache_size` files), so the second id of a pair costs a dictionary lookup and no model pass (the
  engine processes ids in sorted order, so a pair is adjacent). When both ids are prefetched before
  the first is computed, the track is decoded twice but still encoded once.
- **Emotion-fine-tuned WavLM (the published audio branch).** The Odyssey 2024 SER baseline
  (`3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes`) is a custom model class whose `model.safetensors`
  holds the WavLM encoder as `ssl_model.*` tensors next to its pooling and regression head;
  `AutoModel` cannot build it. `ssl_weights` names such a checkpoint (hub id, folder or
  .safetensors file): the encoder is built from `model` (microsoft/wavlm-large) and the `ssl_model.*`
  tensors replace its weights, as the published code does. Any other tensor in the file is ignored.
- **Per-clip mode.** `mode: per_clip` embeds every chunk on its own with its own z-normalisation
  (with `chunk_seconds: 4, overlap_seconds: 2` the chunks are 4 s / 2 s clips). Each row still comes
  from the clip in which it is most central, so one head window draws on the rows of up to three
  clips (the cost of one row grid instead of two overlapping copies). `long` (default) z-normalises
  the whole track once and uses long chunks for context.
- **Window mode (the published one).** `mode: windows` keeps every clip's rows as its own: each
  window of the video (`chunk_seconds` long, every `chunk_seconds - overlap_seconds`, over the
  video's duration, num_frames / fps) is cut from the track, zero-padded to `chunk_seconds`,
  z-normalised over its real samples and embedded with an attention mask over them, as the
  published audio model does with its 4-s WAV clips (`wavlm_s2s_model.py`, `abaw_va_dataset.py`).
  The last window is shorter and padded, as published (`make_s2s_windows.py` `slice_audio`): it
  starts at the next multiple of the shift and ends with the video; one shorter than
  `window_min_seconds` is dropped. Rows overlap in time (every second lies in two windows), so the
  store adds `clip` [M] (the window of each row) and `clip_t0`/`clip_t1` [J] (each window's span);
  rows beyond a window's real samples are stored with valid = False, and the audio head takes
  each window as one sample (heads.audio_pooling).
- **Voice activity** (`vad`, one probability per row) comes from `extractors.vad` on this model's
  grid. It runs in prepare() (worker threads) so it overlaps the model; each thread has its own
  silero-vad model, because that TorchScript model is stateful.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from extractors.base import ExtractorError, MediaCache, hf_load_error, inference
from extractors.base import register, torch_device, weights_fingerprint
from extractors.vad import VAD_BACKENDS, resolve_vad_backend, voice_activity_rows
from extractors.windows import window_plan
from pipeline.progress import inner_bar
from pipeline.records import Video

SCHEMA = 1
MODES = ("long", "per_clip", "windows")
SSL_PREFIX = "ssl_model."


@dataclass
class AudioConfig:
    """Audio extraction parameters (published defaults: WavLM-Large, masked per-clip z-norm)."""

    model: str = "microsoft/wavlm-large"
    revision: str | None = None
    sample_rate: int = 16000
    chunk_seconds: float = 20.0
    overlap_seconds: float = 2.0
    batch_size: int = 4  # chunks per forward
    normalize: bool = True  # per-clip z-normalisation of the waveform (over the real samples)
    keep_lower_layers: int = 0  # k > 0: also store hidden_states[-(k+1)] (input of the top k layers) as `lower`
    device: str = "auto"
    bf16: bool = True  # autocast on CUDA only; execution only, not in the fingerprint
    cache_size: int = 2  # media files whose results are memoised (left/right pairs are adjacent)
    vad_backend: str = "auto"  # extractors.vad.voice_activity backend: auto | energy | silero
    mode: str = "long"  # "long": whole-track z-norm, long chunks | "per_clip": each chunk embedded and normalised alone
    #                     | "windows": each window its own clip, rows kept per window (published; see module docstring)
    window_min_seconds: float = 1.0  # windows: a last window shorter than this is dropped (published win_min_length)
    ssl_weights: str | None = None  # checkpoint whose `ssl_model.*` tensors replace `model`'s weights (Odyssey SER)


# ------------------------------------------------------------------------------------ frame grid
def conv_frame_geometry(conv_kernel: tuple[int, ...], conv_stride: tuple[int, ...]) -> tuple[int, int]:
    """(hop, receptive field) in samples of a stack of 1-D convolutions (no padding).

    WavLM/wav2vec2: kernels (10,3,3,3,3,2,2), strides (5,2,2,2,2,2,2) -> hop 320, receptive 400.
    """
    hop, receptive = 1, 1
    for k, s in zip(conv_kernel, conv_stride):
        receptive += (k - 1) * hop
        hop *= s
    return hop, receptive


def num_frames(num_samples: int, conv_kernel: tuple[int, ...], conv_stride: tuple[int, ...]) -> int:
    """Output rows of the conv front end for `num_samples` input samples (0 if too short)."""
    n = num_samples
    for k, s in zip(conv_kernel, conv_stride):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


def chunk_plan(num_samples: int, chunk: int, overlap: int, hop: int) -> list[int]:
    """Start samples of equal-length chunks covering `num_samples`; starts are multiples of `hop`.

    One chunk when the signal fits; otherwise a step of `chunk - overlap` (rounded down to the hop)
    and a last chunk aligned to the end of the signal (also on the hop grid), so every chunk has
    the same length and the batch needs no padding.
    """
    if num_samples <= chunk:
        return [0]
    step = max(hop, (chunk - overlap) // hop * hop)
    starts = list(range(0, num_samples - chunk, step))
    last = (num_samples - chunk) // hop * hop
    if last > starts[-1]:
        starts.append(last)
    return starts


def masked_zscore(batch: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The published masked per-clip normalisation: mean and std over the real samples only
    (std = sqrt(var + 1e-6), at least 1e-6), padding left at 0."""
    m = mask.astype(np.float64)
    n = np.maximum(m.sum(1, keepdims=True), 1.0)
    mean = (batch * m).sum(1, keepdims=True) / n
    var = (((batch - mean) ** 2) * m).sum(1, keepdims=True) / n
    std = np.maximum(np.sqrt(var + 1e-6), 1e-6)
    return (((batch - mean) / std) * m).astype(np.float32)


def stitch_bounds(first_rows: list[int], counts: list[int], total: int) -> list[tuple[int, int]]:
    """For each chunk, the global row range [lo, hi) it contributes: overlaps are cut in the middle.

    `first_rows[j]` is chunk j's first global row, `counts[j]` its row count. Every global row in
    [0, total) is taken from exactly one chunk, the one in which it is most central.
    """
    bounds = []
    lo = 0
    for j, (a, n) in enumerate(zip(first_rows, counts)):
        if j + 1 < len(first_rows):
            hi = (first_rows[j + 1] + a + n) // 2  # middle of the overlap with the next chunk
        else:
            hi = total
        hi = min(hi, a + n, total)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def zscore(audio: np.ndarray) -> np.ndarray:
    """Per-clip z-normalisation (the published preprocessing). Only real samples exist here
    (chunks are never padded), so the mask is all-true and the statistics are the clip's own."""
    mean = float(audio.mean()) if audio.size else 0.0
    std = float(audio.std()) if audio.size else 1.0
    return ((audio - mean) / np.sqrt(std * std + 1e-7)).astype(np.float32)


# ------------------------------------------------------------------------------------ SER checkpoint
def ssl_weights_file(ref: str, revision: str | None = None) -> str:
    """The safetensors file of `ssl_weights`: a file, `<folder>/model.safetensors`, or a hub id's
    `model.safetensors` (from the local Hugging Face cache when offline)."""
    from pathlib import Path

    path = Path(ref)
    if path.is_file():
        return str(path)
    if path.is_dir():
        found = path / "model.safetensors"
        if not found.is_file():
            raise ExtractorError(f"audio ssl_weights {ref!r}: folder has no model.safetensors")
        return str(found)
    if ref.startswith((".", "/")) or ref.endswith(".safetensors"):
        raise ExtractorError(f"audio ssl_weights {ref!r}: file or folder not found")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=ref, filename="model.safetensors", revision=revision)
    except Exception as e:  # offline and not cached, unknown id, ...
        raise ExtractorError(
            f"audio ssl_weights {ref!r}: cannot get its model.safetensors ({type(e).__name__}: {e}); "
            "download it once with internet access (it lands in the Hugging Face cache) or point "
            "ssl_weights at the file"
        ) from e


def load_ssl_weights(model: torch.nn.Module, path: str) -> int:
    """Copy the `ssl_model.*` tensors of the checkpoint at `path` into `model`; returns how many.

    Every `ssl_model.*` tensor must match a parameter of `model` by name and shape (a different
    architecture is an error, not a silent partial load); parameters the checkpoint lacks keep
    `model`'s weights, as the published `strict=False` load does (WavLM's pre-training-only
    `masked_spec_embed` is such a parameter).
    """
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except Exception as e:
        raise ExtractorError(f"audio ssl_weights {path}: not a readable safetensors file ({e})") from e
    ssl = {k[len(SSL_PREFIX):]: v for k, v in tensors.items() if k.startswith(SSL_PREFIX)}
    if not ssl:
        raise ExtractorError(f"audio ssl_weights {path}: no `{SSL_PREFIX}*` tensors (not the Odyssey SER layout)")
    own = model.state_dict()
    unknown = sorted(k for k in ssl if k not in own)
    wrong = sorted(k for k in ssl if k in own and tuple(own[k].shape) != tuple(ssl[k].shape))
    if unknown or wrong:
        raise ExtractorError(
            f"audio ssl_weights {path}: its encoder does not fit {type(model).__name__} "
            f"(unknown tensors {unknown[:3]}, shape mismatches {wrong[:3]}); set `model` to the architecture "
            "the checkpoint was trained from (microsoft/wavlm-large for the Odyssey SER baseline)"
        )
    model.load_state_dict(ssl, strict=False)
    return len(ssl)


# ------------------------------------------------------------------------------------ extractor
@dataclass
class _Prepared:
    """What prepare() hands to compute(): the waveform, or a marker that the result is memoised."""

    audio: np.ndarray | None
    cached: bool = False
    vad: np.ndarray | None = None


@register("speech_ssl", modality="audio", default=True, weights=True, video=False)
class SpeechSSLExtractor:
    """HF speech SSL encoder -> per-row last-layer states (+ optional lower states) and voice activity."""

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self._check_config()
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")
        self.hop = 320
        self.receptive = 400
        self._kernel: tuple[int, ...] = ()
        self._stride: tuple[int, ...] = ()
        self._cache = MediaCache(self.cfg.cache_size)
        self.vad_backend = resolve_vad_backend(self.cfg.vad_backend)  # the one used goes in the fingerprint

    def _check_config(self) -> None:
        c = self.cfg
        if c.chunk_seconds <= 0 or c.overlap_seconds < 0 or c.overlap_seconds >= c.chunk_seconds:
            raise ExtractorError(
                f"audio: need chunk_seconds > overlap_seconds >= 0, got chunk_seconds={c.chunk_seconds}, "
                f"overlap_seconds={c.overlap_seconds}; fix the audio params"
            )
        if c.vad_backend not in VAD_BACKENDS:
            raise ExtractorError(f"audio vad_backend {c.vad_backend!r}: use one of {', '.join(VAD_BACKENDS)}")
        if c.mode not in MODES:
            raise ExtractorError(f"audio mode {c.mode!r}: use one of {', '.join(MODES)}")
        if c.window_min_seconds < 0:
            raise ExtractorError(f"audio window_min_seconds must be >= 0, got {c.window_min_seconds}")
        if c.batch_size < 1 or c.keep_lower_layers < 0:
            raise ExtractorError(f"audio: batch_size must be >= 1 and keep_lower_layers >= 0, got {c}")

    # -------------------------------------------------------------------------------- protocol
    def fingerprint(self) -> dict:
        """Everything that changes the stored numbers; execution settings (device, bf16, batch size,
        cache) do not belong here, so a store written on a GPU is reused on a CPU."""
        c = self.cfg
        fp = {
            "extractor": self.name,
            "schema": SCHEMA,
            "model": c.model,
            "revision": c.revision,
            "weights": weights_fingerprint(c.model),
            "sample_rate": c.sample_rate,
            "chunk_seconds": c.chunk_seconds,
            "overlap_seconds": c.overlap_seconds,
            "normalize": c.normalize,
            "keep_lower_layers": c.keep_lower_layers,
            "vad_backend": self.vad_backend,
        }
        if c.mode != "long":  # keys only when set, so stores of the default setup keep their identity
            fp["mode"] = c.mode
        if c.mode == "windows":
            fp["window_min_seconds"] = c.window_min_seconds
        if c.ssl_weights:
            fp["ssl_weights"] = c.ssl_weights
            fp["ssl_weights_file"] = weights_fingerprint(c.ssl_weights)
        return fp

    def load(self) -> None:
        """Load the model offline-safely; any failure is an ExtractorError naming the id and the fix."""
        if self.model is not None:
            return
        from transformers import AutoModel

        self.device = torch_device(self.cfg.device)
        try:
            # fp32 weights whatever the file holds: checkpoints are often saved in bf16 or fp16, CPU
            # inference runs in fp32, and bf16 on CUDA comes from autocast (`inference`)
            model = AutoModel.from_pretrained(self.cfg.model, revision=self.cfg.revision, dtype=torch.float32)
        except Exception as e:  # OSError (offline / unknown id), ValueError (not a model folder)...
            hint = "e.g. the demo's data/models/demo/wavlm"
            raise ExtractorError(hf_load_error("audio", self.cfg.model, self.cfg.revision, e, hint)) from e
        if self.cfg.ssl_weights:
            load_ssl_weights(model, ssl_weights_file(self.cfg.ssl_weights))
        cfg = model.config
        if not hasattr(cfg, "conv_kernel") or not hasattr(cfg, "conv_stride"):
            raise ExtractorError(
                f"audio model {self.cfg.model!r} ({type(model).__name__}) has no conv front end "
                "(conv_kernel/conv_stride); use a speech SSL checkpoint such as microsoft/wavlm-large"
            )
        layers = int(getattr(cfg, "num_hidden_layers", 0))
        if self.cfg.keep_lower_layers > layers:
            raise ExtractorError(
                f"audio: keep_lower_layers={self.cfg.keep_lower_layers} but {self.cfg.model!r} has only "
                f"{layers} layers; choose 0..{layers}"
            )
        self._check_sample_rate()
        self._kernel, self._stride = tuple(cfg.conv_kernel), tuple(cfg.conv_stride)
        self.hop, self.receptive = conv_frame_geometry(self._kernel, self._stride)
        self.model = model.to(self.device).eval()

    def _check_sample_rate(self) -> None:
        """The checkpoint's feature extractor (optional) states the rate it was trained on."""
        try:
            from transformers import AutoFeatureExtractor

            fe = AutoFeatureExtractor.from_pretrained(self.cfg.model, revision=self.cfg.revision)
        except Exception:  # noqa: BLE001 - optional file
            return
        rate = getattr(fe, "sampling_rate", None)
        if rate and int(rate) != int(self.cfg.sample_rate):
            raise ExtractorError(
                f"audio: {self.cfg.model!r} expects {rate} Hz audio but sample_rate={self.cfg.sample_rate}; "
                f"set sample_rate: {rate}"
            )

    def source(self, video: Video) -> str:
        return video.media_path

    def prepare(self, video: Video) -> _Prepared:
        """Worker thread: decode + resample the track and compute its voice activity (VAD runs here,
        not in compute(), so it overlaps the model); skipped when the pair partner is memoised."""
        if video.media_key in self._cache:
            return _Prepared(None, cached=True)
        audio = self._read(video)
        return _Prepared(audio, vad=self.vad(audio))

    def compute(self, video: Video, prepared: _Prepared) -> dict[str, np.ndarray]:
        """Rows for the whole track (memoised per media file)."""
        hit = self._cache.get(video.media_key)
        if hit is not None:
            return hit
        if prepared.cached:  # partner's result was evicted between prepare and compute: decode now
            prepared = _Prepared(self._read(video))
        duration = video.num_frames / video.fps if video.fps > 0 else None
        arrays = self.encode(prepared.audio, prepared.vad, duration)
        self._cache.put(video.media_key, arrays)
        return arrays

    def _read(self, video: Video) -> np.ndarray | None:
        from pipeline.media import read_audio

        return read_audio(video.media_path, self.cfg.sample_rate)

    # -------------------------------------------------------------------------------- compute
    def rows(self, audio: np.ndarray | None) -> int:
        """Output rows for a waveform (0 without audio or when shorter than the receptive field)."""
        return 0 if audio is None else num_frames(len(audio), self._kernel, self._stride)

    def vad(self, audio: np.ndarray | None) -> np.ndarray:
        """Voice activity on this model's rows (empty without audio)."""
        rows = self.rows(audio)
        if rows == 0:
            return np.zeros(0, np.float32)
        return voice_activity_rows(audio, self.cfg.sample_rate, self.hop, self.receptive, rows, self.vad_backend)

    def encode(self, audio: np.ndarray | None, vad: np.ndarray | None = None,
               duration: float | None = None) -> dict[str, np.ndarray]:
        """Waveform -> store arrays. No audio (None) or too short -> zero rows (a missing modality).

        `duration`: the video's length in seconds, which the windows of `mode: windows` cover
        (default: the track's)."""
        if self.model is None:
            self.load()
        rows = self.rows(audio)
        if rows == 0:
            return self._empty()
        if self.cfg.mode == "windows":
            vad = vad if vad is not None else self.vad(audio)
            return self._windows(audio, vad, len(audio) / self.cfg.sample_rate if duration is None else duration)
        whole_track = self.cfg.normalize and self.cfg.mode == "long"
        wav = zscore(audio) if whole_track else audio.astype(np.float32)
        last, lower = self._chunked_states(wav, rows)
        t0 = (np.arange(rows) * self.hop / self.cfg.sample_rate).astype(np.float32)
        t1 = (t0 + self.receptive / self.cfg.sample_rate).astype(np.float32)
        out = {"emb": last, "t0": t0, "t1": t1, "valid": np.ones(rows, dtype=bool)}
        out["vad"] = vad if vad is not None else self.vad(audio)
        if lower is not None:
            out["lower"] = lower
        return out

    def _empty(self) -> dict[str, np.ndarray]:
        dim = int(self.model.config.hidden_size)
        out = {
            "emb": np.zeros((0, dim), np.float32),
            "t0": np.zeros(0, np.float32),
            "t1": np.zeros(0, np.float32),
            "valid": np.zeros(0, bool),
            "vad": np.zeros(0, np.float32),
        }
        if self.cfg.keep_lower_layers:
            out["lower"] = np.zeros((0, dim), np.float32)
        if self.cfg.mode == "windows":
            out.update(clip=np.zeros(0, np.int32), clip_t0=np.zeros(0, np.float32), clip_t1=np.zeros(0, np.float32))
        return out

    def _windows(self, wav: np.ndarray, vad: np.ndarray, duration: float) -> dict[str, np.ndarray]:
        """`mode: windows`: every published window embedded alone, padded to `chunk_seconds`.

        Windows whose real samples yield no row (past the end of a short track) are left out.
        """
        sr, c = self.cfg.sample_rate, self.cfg
        length = max(self.receptive, int(round(c.chunk_seconds * sr)))
        per = num_frames(length, self._kernel, self._stride)
        plan = []
        for s, e in window_plan(duration, c.chunk_seconds, c.chunk_seconds - c.overlap_seconds, c.window_min_seconds):
            a = int(round(s * sr))
            n = max(0, min(int(round(e * sr)), len(wav)) - a)
            real = num_frames(min(n, length), self._kernel, self._stride)
            if real > 0:
                plan.append((s, e, a, min(n, length), real))
        if not plan:
            return self._empty()
        dim = int(self.model.config.hidden_size)
        last = np.zeros((len(plan), per, dim), np.float32)
        lower = np.zeros((len(plan), per, dim), np.float32) if c.keep_lower_layers else None
        with inner_bar(len(plan), "window") as bar:
            for b in range(0, len(plan), c.batch_size):
                idx = range(b, min(b + c.batch_size, len(plan)))
                batch = np.zeros((len(idx), length), np.float32)
                mask = np.zeros((len(idx), length), bool)
                for i, j in enumerate(idx):
                    _, _, a, n, _ = plan[j]
                    batch[i, :n], mask[i, :n] = wav[a:a + n], True
                if c.normalize:
                    batch = masked_zscore(batch, mask)
                top, low = self.forward(batch, mask)
                last[b:b + len(idx)] = top
                if lower is not None:
                    lower[b:b + len(idx)] = low
                bar.update(len(idx))
        k = np.arange(per)
        starts = np.array([p[0] for p in plan])
        t0 = (starts[:, None] + k[None, :] * self.hop / sr).astype(np.float32)
        valid = k[None, :] < np.array([p[4] for p in plan])[:, None]
        g = np.minimum(np.round(t0 * sr / self.hop).astype(np.int64), max(len(vad) - 1, 0))  # the track grid's row
        out = {
            "emb": last.reshape(-1, dim),
            "t0": t0.reshape(-1),
            "t1": (t0 + self.receptive / sr).astype(np.float32).reshape(-1),
            "valid": valid.reshape(-1),
            "vad": (vad[g] if len(vad) else np.zeros(g.shape, np.float32)).astype(np.float32).reshape(-1),
            "clip": np.repeat(np.arange(len(plan), dtype=np.int32), per),
            "clip_t0": starts.astype(np.float32),
            "clip_t1": np.array([p[1] for p in plan], np.float32),
        }
        if lower is not None:
            out["lower"] = lower.reshape(-1, dim)
        return out

    def _chunked_states(self, wav: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Run equal-length chunks in batches and stitch their central parts onto the global grid."""
        sr = self.cfg.sample_rate
        chunk = max(self.receptive, int(round(self.cfg.chunk_seconds * sr)))
        overlap = int(round(self.cfg.overlap_seconds * sr))
        starts = chunk_plan(len(wav), chunk, overlap, self.hop)
        length = min(chunk, len(wav))
        per_chunk = num_frames(length, self._kernel, self._stride)
        first = [s // self.hop for s in starts]
        bounds = stitch_bounds(first, [per_chunk] * len(starts), rows)
        dim = int(self.model.config.hidden_size)
        last = np.zeros((rows, dim), np.float32)
        lower = np.zeros((rows, dim), np.float32) if self.cfg.keep_lower_layers else None
        with inner_bar(len(starts), "chunk") as bar:
            for b in range(0, len(starts), self.cfg.batch_size):
                idx = range(b, min(b + self.cfg.batch_size, len(starts)))
                batch = np.stack([self._clip(wav[starts[j] : starts[j] + length]) for j in idx])
                top, low = self.forward(batch)
                for i, j in enumerate(idx):
                    lo, hi = bounds[j]
                    last[lo:hi] = top[i, lo - first[j] : hi - first[j]]
                    if lower is not None:
                        lower[lo:hi] = low[i, lo - first[j] : hi - first[j]]
                bar.update(len(idx))
        return last, lower

    def _clip(self, clip: np.ndarray) -> np.ndarray:
        """One chunk as the model sees it: z-normalised on its own samples in `per_clip` mode."""
        return zscore(clip) if self.cfg.normalize and self.cfg.mode == "per_clip" else clip

    def forward(self, batch: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """One model call on [B, samples] -> (last layer [B,T,D], states below the top k or None);
        `mask` [B, samples] marks the real samples of zero-padded clips (the model's attention mask)."""
        k = self.cfg.keep_lower_layers
        x = torch.from_numpy(batch).to(self.device)
        extra = {} if mask is None else {"attention_mask": torch.from_numpy(mask.astype(np.int64)).to(self.device)}
        with inference(self.device, self.cfg.bf16):
            out = self.model(x, output_hidden_states=bool(k), **extra)
        top = out.last_hidden_state.float().cpu().numpy()
        low = out.hidden_states[-(k + 1)].float().cpu().numpy() if k else None
        return top, low
