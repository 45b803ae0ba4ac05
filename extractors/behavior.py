"""Behavior features: a video LLM (Qwen3-VL) reads short segments with an affect-analysis prompt.

Why it looks like this (the published behaviour branch; README, "The paper profile"):
- **Segments:** 4 s windows every 2 s; `segments()` reproduces the published slicing rule exactly,
  edge cases included, so segment indices and frame ranges line up with the published pipeline.
- **Frames:** up to 16 frames at 4 fps per segment, sampled like qwen-vl-utils samples a cut clip
  (an even count, at least 4 when the clip has them, spread evenly over the segment's frames), decoded
  once per batch with `pipeline.media.frames_at` (memory stays bounded: a `BackgroundStream` hands
  batches to the model while the next batch decodes).
- **Frame resolution:** by default frames reach the processor at the video's own resolution and the
  processor's per-frame pixel budget decides how many visual tokens they cost (the published run
  hands the clip to Qwen's video processing unchanged). `min_pixels`/`max_pixels` set that budget
  per frame explicitly; `frame_long_side` pre-resizes on decode (the demo's cap: fewer tokens on CPU).
- **Timestamps:** Qwen3-VL writes `<t seconds>` tokens before each frame pair. The frames are
  pre-sampled, so `video_metadata` (source fps + the frames' indices *relative to the segment start*)
  is passed to the processor; without it the processor would assume 24 fps. Relative times match
  the published setup, where each segment was a separate clip file.
- **Features from ONE prefill pass** (no generation): the last layer's state of the last token
  (`emb`, the published default) and the masked mean over the sequence (`emb_mean`). Segments are
  batched with *left* padding, so the last position is every sequence's last real token; Qwen3-VL's
  M-RoPE positions skip padding via the attention mask, so batched == one-at-a-time (tested).
- **Left/right ids share one pass:** the VLM sees the whole frame (as in the published pipeline,
  which maps `_left`/`_right` to the same clip), so results are memoised per media file
  (`cache_size`), like the audio extractor's.
- **Text is optional:** `max_new_tokens > 0` (or `generate`) runs greedy generation and stores the
  descriptions; otherwise `text` holds empty strings (the published features never use the text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from extractors.base import BackgroundStream, ExtractorError, MediaCache, hf_load_error, inference
from extractors.base import register, torch_device, weights_fingerprint
from extractors.precision import CPU_COMPUTE, compute_dtype, upcast_per_layer
from extractors.windows import window_plan
from pipeline.progress import inner_bar
from pipeline.records import Video

SCHEMA = 1

# Our own wording of the published prompt's intent (expert affect analyst, valence + arousal, visible
# cues and their evolution, uncertainty allowed, one paragraph <= 100 tokens ending with a period).
DEFAULT_PROMPT = (
    "You are an expert in multimodal affect analysis. Watch the clip and describe the person's valence "
    "(pleasant to unpleasant) and arousal (calm to excited). Cite the visible cues that support your "
    "estimate: face, posture, gestures, head movement and the scene, and say how they change during the "
    "clip. You may note uncertainty or mixed affect. Do not guess beyond what is visible. Answer in one "
    "paragraph of at most 100 tokens that ends with a period."
)


@dataclass
class BehaviorConfig:
    """Behavior extraction parameters (published defaults: Qwen3-VL-4B, 4 s / 2 s, 4 fps, 16 frames)."""

    model: str = "Qwen/Qwen3-VL-4B-Instruct"
    revision: str | None = None
    segment_seconds: float = 4.0
    hop_seconds: float = 2.0
    min_last_seconds: float = 1.0
    sample_fps: float = 4.0
    max_frames: int = 16
    min_frames: int = 4  # qwen-vl-utils' floor (when the segment has that many frames)
    frame_long_side: int | None = None  # pre-resize on decode (a cap); None: native frames (published)
    min_pixels: int | None = None  # per-frame pixel floor of the processor; None: the processor's own
    max_pixels: int | None = None  # per-frame pixel budget of the processor; None: the processor's own
    prompt: str = DEFAULT_PROMPT
    generate: bool = False
    max_new_tokens: int = 0  # > 0 (or generate=True) -> greedy descriptions stored in `text`
    batch_size: int = 4  # segments per forward pass
    device: str = "auto"
    bf16: bool = True  # bf16 weights on every device (published); false: fp32 weights (4B: 16.5 GiB)
    cpu_compute: str = "auto"  # CPU arithmetic over bf16 weights: auto | bf16 | fp32 (`extractors.precision`)
    attn_implementation: str = "sdpa"
    cap_pixels_per_frame: bool = True  # qwen-vl-utils' per-frame pixel cap (transformers' explicit choice)
    cache_size: int = 2  # media files whose results are memoised (left/right ids share one file)


# ------------------------------------------------------------------------------------ segments
def segments(duration: float, cfg: BehaviorConfig | None = None) -> list[tuple[float, float]]:
    """Segment (t0, t1) list in seconds: the published rule (`make_va_chunks.py: slice_audio`,
    `extractors.windows.window_plan`) with `segment_seconds`, `hop_seconds` and `min_last_seconds`.

    With the defaults (4 s / 2 s) a clipped last segment is always 2-4 s long, so the minimum only
    bites for hops longer than segment - min (e.g. 3.5 s); a recording no longer than one segment is
    one segment however short (a sub-second clip still has frames a VLM can describe).
    """
    cfg = cfg or BehaviorConfig()
    return window_plan(duration, cfg.segment_seconds, cfg.hop_seconds, cfg.min_last_seconds)


def segment_frames(t0: float, t1: float, fps: float, bounds: np.ndarray | None = None) -> tuple[int, int]:
    """(frame_start, frame_end) = round(t * fps), as in the published segment names.

    With `bounds` (the frames' real start times plus the end of the last, `frame_bounds`), the
    index of the boundary nearest to t: the same numbers at a constant rate, the right frames when
    the rate varies.
    """
    if bounds is None:
        return int(np.round(t0 * fps)), int(np.round(t1 * fps))
    return _nearest(bounds, t0), _nearest(bounds, t1)


def _nearest(bounds: np.ndarray, t: float) -> int:
    j = int(np.searchsorted(bounds, t))
    if j <= 0:
        return 0
    if j >= len(bounds):
        return len(bounds) - 1
    return j - 1 if t - bounds[j - 1] < bounds[j] - t else j


def frame_bounds(video: Video) -> np.ndarray:
    """Real start time of every frame plus the end of the last ([N + 1] s, `Video.frame_grid`)."""
    t0, t1 = video.frame_grid(max(int(video.num_frames), 1))
    return np.concatenate([t0, t1[-1:]])


def sample_indices(frame_start: int, frame_end: int, fps: float, cfg: BehaviorConfig) -> np.ndarray:
    """Segment-relative indices of the frames given to the VLM (qwen-vl-utils' rule for a clip).

    n = duration * sample_fps, clamped to [min_frames, max_frames] and to the clip's frame count,
    rounded down to an even number (Qwen3-VL merges frame pairs); frames spread evenly over the
    clip. A 1-frame clip yields [0, 0] (the vision tower needs 2 frames per temporal patch).
    """
    total = max(1, frame_end - frame_start)
    n = int(round(total / fps * cfg.sample_fps))
    n = min(max(n, cfg.min_frames), cfg.max_frames, total)
    n = max(2, n - n % 2) if total >= 2 else 1
    idx = np.linspace(0, total - 1, n).round().astype(np.int64)
    return idx if n >= 2 else np.repeat(idx, 2)


def resized_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(width, height) with the long side scaled to `long_side` (never upscaled), even numbers."""
    scale = min(1.0, long_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


@dataclass
class SegmentBatch:
    """A batch of segments ready for the processor (what prepare()'s stream yields)."""

    index: list[int]  # segment numbers
    frames: list[np.ndarray]  # [n, H, W, 3] uint8 per segment
    rel_indices: list[np.ndarray]  # segment-relative frame indices (timestamps = idx / fps)


@dataclass
class _Prepared:
    """prepare() output: the segment table plus a stream of decoded batches."""

    t0: np.ndarray
    t1: np.ndarray
    frame_start: np.ndarray
    frame_end: np.ndarray
    fps: float
    batches: Any  # BackgroundStream | list[SegmentBatch]
    bounds: np.ndarray | None = None  # frame start times + end of the last (`frame_bounds`)

    def close(self) -> None:
        if isinstance(self.batches, BackgroundStream):
            self.batches.close()


# ------------------------------------------------------------------------------------ extractor
@register("qwen3vl", modality="behavior", default=True, weights=True)
class QwenVLBehaviorExtractor:
    """Qwen3-VL prefill features (+ optional descriptions) per behavior segment."""

    def __init__(self, cfg: BehaviorConfig):
        self.cfg = cfg
        self._check_config()
        self.model: Any = None
        self.processor: Any = None
        self.device = torch.device("cpu")
        self.compute_dtype = torch.float32
        self._text: str | None = None
        self._cache = MediaCache(self.cfg.cache_size)

    def _check_config(self) -> None:
        c = self.cfg
        if c.segment_seconds <= 0 or c.hop_seconds <= 0 or c.sample_fps <= 0:
            raise ExtractorError(f"behavior: segment_seconds, hop_seconds and sample_fps must be > 0 ({c})")
        long_side_ok = c.frame_long_side is None or c.frame_long_side >= 32
        if c.max_frames < 2 or c.batch_size < 1 or not long_side_ok or c.max_new_tokens < 0:
            raise ExtractorError(
                "behavior: need max_frames >= 2, batch_size >= 1, frame_long_side >= 32 (or null), "
                f"max_new_tokens >= 0; got {c.max_frames}, {c.batch_size}, {c.frame_long_side}, {c.max_new_tokens}"
            )
        low, high = c.min_pixels, c.max_pixels
        if (low is not None and low < 1) or (high is not None and high < 1) or (low and high and low > high):
            raise ExtractorError(f"behavior: need 0 < min_pixels <= max_pixels per frame, got {low} and {high}")
        if not c.prompt.strip():
            raise ExtractorError("behavior: prompt is empty; set behavior.prompt or leave the default")
        if c.cpu_compute not in CPU_COMPUTE:
            raise ExtractorError(f"behavior: cpu_compute {c.cpu_compute!r}: use one of {list(CPU_COMPUTE)}")

    @property
    def new_tokens(self) -> int:
        """Generation length: 0 = prefill only. `generate=True` without a length means 128."""
        if self.cfg.max_new_tokens > 0:
            return self.cfg.max_new_tokens
        return 128 if self.cfg.generate else 0

    # -------------------------------------------------------------------------------- protocol
    def fingerprint(self) -> dict:
        """Everything that changes the stored numbers; execution settings (device, bf16, cpu_compute,
        batch size, cache) do not belong here, so a store written on a GPU is reused on a CPU. The
        precision settings change the numbers at bf16 precision only (`extractors.precision`)."""
        c = self.cfg
        return {
            "extractor": self.name,
            "schema": SCHEMA,
            "model": c.model,
            "revision": c.revision,
            "weights": weights_fingerprint(c.model),
            "segment_seconds": c.segment_seconds,
            "hop_seconds": c.hop_seconds,
            "min_last_seconds": c.min_last_seconds,
            "sample_fps": c.sample_fps,
            "max_frames": c.max_frames,
            "min_frames": c.min_frames,
            "frame_long_side": c.frame_long_side,
            "cap_pixels_per_frame": c.cap_pixels_per_frame,
            "prompt": c.prompt,
            "new_tokens": self.new_tokens,
            # keys only when set, so stores of configurations without them keep their identity
            **({"min_pixels": c.min_pixels} if c.min_pixels is not None else {}),
            **({"max_pixels": c.max_pixels} if c.max_pixels is not None else {}),
        }

    def load(self) -> None:
        """Load processor + model; offline failures become an ExtractorError naming the id and fix."""
        if self.model is not None:
            return
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = torch_device(self.cfg.device)
        dtype = torch.bfloat16 if self.cfg.bf16 else torch.float32  # the weights, on every device
        try:
            processor = AutoProcessor.from_pretrained(self.cfg.model, revision=self.cfg.revision)
            model = AutoModelForImageTextToText.from_pretrained(
                self.cfg.model,
                revision=self.cfg.revision,
                dtype=dtype,
                attn_implementation=self.cfg.attn_implementation,
            )
        except Exception as e:  # noqa: BLE001 - OSError offline, ValueError bad folder / attention impl
            hint = "model and processor together, e.g. the demo's data/models/demo/qwen3vl"
            raise ExtractorError(hf_load_error("behavior", self.cfg.model, self.cfg.revision, e, hint)) from e
        if getattr(processor, "video_processor", None) is None:
            raise ExtractorError(f"behavior: {self.cfg.model!r} has no video processor; use a Qwen3-VL checkpoint")
        processor.tokenizer.padding_side = "left"  # last position = last real token for every row
        self.processor = processor
        self.compute_dtype = compute_dtype(self.device, self.cfg.bf16, self.cfg.cpu_compute)
        if self.compute_dtype != dtype:
            upcast_per_layer(model)  # fp32 arithmetic from the bf16 weights, no fp32 copy of the model
        self.model = model.to(self.device).eval()
        self._text = self.chat_text()

    def chat_text(self) -> str:
        """The prompt through the checkpoint's chat template (video item + text, assistant turn open)."""
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": self.cfg.prompt}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def source(self, video: Video) -> str:
        return video.media_path

    def prepare(self, video: Video) -> _Prepared:
        """Segment table now; frames decoded batch by batch in the background (bounded memory)."""
        fps = float(video.fps)
        bounds = frame_bounds(video)
        segs = segments(_duration(video, bounds), self.cfg)
        t0 = np.array([s[0] for s in segs], np.float32)
        t1 = np.array([s[1] for s in segs], np.float32)
        fr = [segment_frames(a, b, fps, bounds) for a, b in segs]
        fs = np.array([f[0] for f in fr], np.int64)
        fe = np.array([f[1] for f in fr], np.int64)
        prepared = _Prepared(t0, t1, fs, fe, fps, [], bounds)
        if segs and video.media_key not in self._cache:  # a memoised pair partner needs no frames
            prepared.batches = BackgroundStream(lambda: self.iter_batches(video.media_path, fs, fe, fps, bounds),
                                                maxsize=2)
        return prepared

    def iter_batches(self, path: str, fs: np.ndarray, fe: np.ndarray, fps: float,
                     bounds: np.ndarray | None = None) -> Iterator[SegmentBatch]:
        """Decode the sampled frames of `batch_size` segments at a time (one frames_at pass each).

        Each sampled frame is fetched at the middle of its real display span (`bounds`), else at
        (i + 0.5) / fps: robust to pts rounding ("last frame with pts <= t")."""
        from pipeline.media import frames_at

        size = None
        if self.cfg.frame_long_side is not None:
            first = frames_at(path, [0.0])  # native size, to keep the aspect ratio when resizing
            height, width = first.images.shape[1:3]
            size = resized_size(width, height, self.cfg.frame_long_side)
        for b in range(0, len(fs), self.cfg.batch_size):
            idx = list(range(b, min(b + self.cfg.batch_size, len(fs))))
            rel = [sample_indices(int(fs[s]), int(fe[s]), fps, self.cfg) for s in idx]
            frames = np.concatenate([fs[s] + r for s, r in zip(idx, rel)])
            if bounds is None:
                times = (frames + 0.5) / fps
            else:
                k = np.clip(frames, 0, len(bounds) - 2)
                times = (bounds[k] + bounds[k + 1]) / 2
            batch = frames_at(path, times, size=size)
            splits = np.cumsum([len(r) for r in rel])[:-1]
            yield SegmentBatch(idx, np.split(batch.images, splits), rel)

    def compute(self, video: Video, prepared: _Prepared) -> dict[str, np.ndarray]:
        """One prefill per batch of segments (+ optional generation) -> store arrays."""
        if self.model is None:
            self.load()
        hit = self._cache.get(video.media_key)
        if hit is not None and len(hit["t0"]) == len(prepared.t0):
            return hit
        if len(prepared.t0) and not isinstance(prepared.batches, BackgroundStream):  # evicted meanwhile
            prepared.batches = list(self.iter_batches(video.media_path, prepared.frame_start,
                                                      prepared.frame_end, prepared.fps, prepared.bounds))
        n = len(prepared.t0)
        hidden = int(self.model.config.text_config.hidden_size)
        emb = np.zeros((n, hidden), np.float32)
        emb_mean = np.zeros((n, hidden), np.float32)
        text = [""] * n
        with inner_bar(n, "segment") as bar:
            for batch in prepared.batches:
                out = self.encode(batch.frames, batch.rel_indices, prepared.fps)
                emb[batch.index] = out["emb"]
                emb_mean[batch.index] = out["emb_mean"]
                for i, s in enumerate(batch.index):
                    text[s] = out["text"][i]
                bar.update(len(batch.index))
        arrays = {
            "emb": emb,
            "emb_mean": emb_mean,
            "t0": prepared.t0,
            "t1": prepared.t1,
            "valid": np.ones(n, bool),
            "frame_start": prepared.frame_start,
            "frame_end": prepared.frame_end,
            "text": np.array(text, dtype=str),
        }
        self._cache.put(video.media_key, arrays)
        return arrays

    # -------------------------------------------------------------------------------- model
    def inputs(self, frames: list[np.ndarray], rel_indices: list[np.ndarray], fps: float) -> Any:
        """Processor call for a batch: one chat text per segment, pre-sampled frames + their metadata."""
        metadata = [
            {"fps": fps, "frames_indices": [int(i) for i in r], "total_num_frames": int(r[-1]) + 1}
            for r in rel_indices
        ]
        inputs = self.processor(
            text=[self._text] * len(frames),
            videos=list(frames),
            video_metadata=metadata,
            do_sample_frames=False,
            **{"cap_pixels_per_frame": self.cfg.cap_pixels_per_frame,
               **self.pixel_budget(max(len(r) for r in rel_indices))},
            padding=True,
            return_tensors="pt",
        )
        return inputs.to(self.device)

    def pixel_budget(self, num_frames: int) -> dict[str, Any]:
        """Processor kwargs for explicit per-frame pixel bounds ({} keeps the processor's own budget).

        Qwen3-VL's video processor budgets a whole clip (`size` bounds the clip's pixel total) and,
        under `cap_pixels_per_frame`, derives a per-frame cap from it. Explicit per-frame bounds are
        the budget themselves: `size` becomes the bounds times the clip's (2-frame padded) frame
        count, without the derived cap. A bound left unset takes the processor's per-frame value
        (`shortest_edge`; `max_video_tokens` merged patches).
        """
        c = self.cfg
        if c.min_pixels is None and c.max_pixels is None:
            return {}
        vp = self.processor.video_processor
        factor = int(vp.patch_size) * int(vp.merge_size)
        low = c.min_pixels if c.min_pixels is not None else int(vp.size["shortest_edge"])
        high = c.max_pixels if c.max_pixels is not None else int(vp.max_video_tokens) * factor * factor
        frames = num_frames + num_frames % 2  # the 2-frame temporal patch pads odd counts
        return {"size": {"shortest_edge": int(low) * frames, "longest_edge": int(max(low, high)) * frames},
                "cap_pixels_per_frame": False}

    def encode(self, frames: list[np.ndarray], rel_indices: list[np.ndarray], fps: float) -> dict[str, Any]:
        """ONE prefill forward: last-layer state of the last token + masked mean (+ text if asked).

        The forward runs the base model (vision tower + language model, no output head) and keeps its
        last (normed) layer only: asking the full model for `hidden_states` would hold all 37 layers'
        states, 0.9 GB per segment at the published pixel budget (4776 tokens x 2560 x bf16)."""
        inputs = self.inputs(frames, rel_indices, fps)
        with inference(self.device, False):  # no autocast: the weights carry the precision
            last = self.model.model(**inputs, use_cache=False).last_hidden_state.float()
            mask = inputs["attention_mask"].to(last.dtype).unsqueeze(-1)
            emb = last[:, -1]
            emb_mean = (last * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            texts = self._generate(inputs) if self.new_tokens else [""] * len(frames)
        return {"emb": emb.cpu().numpy(), "emb_mean": emb_mean.cpu().numpy(), "text": texts}

    def _generate(self, inputs: Any) -> list[str]:
        """Greedy descriptions, normalised like the published script (one line, ends with a period)."""
        seq = self.model.generate(**inputs, max_new_tokens=self.new_tokens, do_sample=False)
        new = seq[:, inputs["input_ids"].shape[1] :]
        raw = self.processor.batch_decode(new, skip_special_tokens=True)
        return [_one_paragraph(t) for t in raw]


def _one_paragraph(text: str) -> str:
    t = " ".join(text.replace("\n", " ").split()).strip()
    return t + "." if t and not t.endswith(".") else t


def _duration(video: Video, bounds: np.ndarray | None = None) -> float:
    """End of the last frame when known (the label grid's; frame count / fps at a constant rate, the
    published duration), else the container's."""
    if video.num_frames > 0 and bounds is not None and len(bounds) > 1:
        return float(bounds[-1])
    if video.num_frames > 0 and video.fps > 0:
        return video.num_frames / video.fps
    return float(video.duration)
