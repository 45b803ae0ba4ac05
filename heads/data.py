"""What a head sees: one record per video with its label frame grid, one store group and reliability.

Heads never touch media: a `HeadVideo` is built from the index, a feature store and the label
files, once per run, and everything downstream works on in-RAM numpy arrays aligned to the label
grid (frame i <-> t_i, its presentation time: `times`, else i / fps). Helpers here do that alignment so
every head aligns the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pipeline.labels import rows_to_frames


@dataclass
class HeadVideo:
    """One annotated subject as the heads see it.

    `num_frames` is the label grid length F (label lines win over decoded frames). `labels` is a
    `pipeline.labels.FrameLabels` (values va [F,2] / expr [F], valid [F]) or None for test videos.
    `features` is one store group ({"emb", "t0", "t1", "valid", ...}) or {} when the modality has
    no data for this video (e.g. no audio track). `reliability` holds the reliability store group
    (face, mouth_open per video frame with t0/t1; vad with vad_t0/vad_t1) or None.
    """

    video_id: str
    split: str
    fps: float
    num_frames: int
    labels: Any | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    reliability: dict[str, np.ndarray] | None = None
    times: np.ndarray | None = None  # [F] float64 start of each label frame (Video.frame_grid); None: i / fps


def has_features(video: HeadVideo, name: str = "emb") -> bool:
    """True when the video's store group holds at least one row of `name`."""
    x = video.features.get(name) if video.features else None
    return x is not None and len(x) > 0


def frame_features(video: HeadVideo, name: str = "emb") -> tuple[np.ndarray, np.ndarray]:
    """Store rows of `name` aligned to the label grid: (x [F, D] float32, mask [F] bool).

    Frames without a matching valid row are zero and masked (see `rows_to_frames` for the rule).
    """
    f = video.num_frames
    if not has_features(video, name):
        x = np.asarray(video.features[name]) if video.features and name in video.features else np.zeros((0, 0))
        d = x.shape[1] if x.ndim == 2 else 0  # a video without rows may store a 1-D empty array
        return np.zeros((f, d), np.float32), np.zeros(f, bool)
    feats = video.features
    x = np.asarray(feats[name])
    idx, mask = rows_to_frames(feats["t0"], feats["t1"], feats.get("valid"), f, video.fps, video.times)
    out = np.zeros((f, x.shape[1]), np.float32)
    out[mask] = x[idx[mask]]
    return out, mask


def frame_targets(video: HeadVideo, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) on the label grid; zeros and all-invalid when the video has no labels."""
    f = video.num_frames
    lab = video.labels
    if lab is None:
        return (np.zeros((f, 2), np.float32) if task == "va" else np.full(f, -1, np.int64)), np.zeros(f, bool)
    values = np.asarray(lab.values)
    valid = np.asarray(lab.valid, bool)
    if len(values) != f or len(valid) != f:
        raise ValueError(f"{video.video_id}: labels have {len(values)} frames but the head video has "
                         f"num_frames={f}; reconcile labels before building HeadVideo (pipeline.labels.reconcile)")
    if task == "va":
        values = values.astype(np.float32).reshape(f, 2)
        valid = valid & (values > -5 + 1e-6).all(1)
    else:
        values = values.astype(np.int64).reshape(f)
        valid = valid & (values >= 0)
    return values, valid


def reliability_on_grid(video: HeadVideo) -> dict[str, np.ndarray | None]:
    """Reliability signals per label frame: face [F] (coverage 0..1), mouth_open [F] bool, vad [F].

    Sources: `video.reliability` (face, mouth_open on its own per-frame t0/t1; vad on vad_t0/vad_t1)
    and, for vad, the audio store group's `vad` column on its own rows. Missing signals are None,
    so a rule that needs them is not applied (the caller says so).
    """
    f = video.num_frames
    out: dict[str, np.ndarray | None] = {"face": None, "mouth_open": None, "vad": None}
    rel = video.reliability or {}
    if "t0" in rel and len(rel["t0"]) > 0:
        idx, m = rows_to_frames(rel["t0"], rel["t1"], None, f, video.fps, video.times)
        for name in ("face", "mouth_open"):
            if name in rel:
                v = np.zeros(f, np.float32)
                col = np.nan_to_num(np.asarray(rel[name], np.float32))
                v[m] = col[idx[m]]
                out[name] = v if name == "face" else v > 0.5
    if "vad" in rel and "vad_t0" in rel and len(rel["vad"]) > 0:
        out["vad"] = _column_on_grid(rel["vad"], rel["vad_t0"], rel["vad_t1"], f, video.fps, video.times)
    elif video.features and "vad" in video.features and len(video.features["vad"]) > 0:
        out["vad"] = _column_on_grid(video.features["vad"], video.features["t0"], video.features["t1"], f, video.fps,
                                     video.times)
    return out


def _column_on_grid(col, t0, t1, f: int, fps: float, times: np.ndarray | None = None) -> np.ndarray:
    idx, m = rows_to_frames(t0, t1, None, f, fps, times)
    v = np.zeros(f, np.float32)
    v[m] = np.nan_to_num(np.asarray(col, np.float32))[idx[m]]
    return v


def person_group(group: dict | None, person: int) -> dict | None:
    """One person's view of a store group (`pipeline.persons`): a group with a `person` column gives
    that person's rows (None when it does not hold the person); a group without one (audio and
    behaviour describe the whole video; provided crops are one person) serves every person as is."""
    from pipeline.persons import PERSON, person_ids, select_person

    if group is None or PERSON not in group:
        return group
    return select_person(group, person) if person in person_ids(group) else None


def load_head_videos(videos: Sequence, store_url: str | None, task: str = "va",
                     reliability_url: str | None = None, arrays: Sequence[str] | None = None,
                     person: int = 0) -> list[HeadVideo]:
    """Build HeadVideos from index records (`pipeline.records.Video`), a feature store and labels.

    Reads every store group into RAM once (`FeatureStore.read_many`). Labels come from the one
    reader, `pipeline.labels.read_video_labels` (per-frame files: the label grid wins; spans: expanded
    onto the decoded frames). `person`: whose rows of stores that hold several persons
    (`person_group`); training reads person 0, the annotated subject (the only one the dataset stages
    extract).
    """
    from pipeline import labels as plabels  # local import: only needed when building from files
    from pipeline.store import FeatureStore

    groups: dict = {}
    if store_url:
        store = FeatureStore.open(store_url)
        ids = set(store.video_ids())
        groups = store.read_many([v.video_id for v in videos if v.video_id in ids], arrays=arrays)
    rel: dict = {}
    if reliability_url:
        rstore = FeatureStore.open(reliability_url)
        rids = set(rstore.video_ids())
        rel = rstore.read_many([v.video_id for v in videos if v.video_id in rids])
    out = []
    for v in videos:
        lab = None
        if task in v.labels:
            lab = plabels.read_video_labels(v, task)  # on the frame grid, whatever the file's format
            f = len(lab.valid)
        else:
            f = int(v.label_frames.get(task, v.num_frames))
        g = person_group(groups.get(v.video_id), person)
        r = person_group(rel.get(v.video_id), person)
        out.append(HeadVideo(v.video_id, v.split, float(v.fps), f, lab,
                             {k: np.asarray(g[k]) for k in g} if g is not None else {},
                             {k: np.asarray(r[k]) for k in r} if r is not None else None,
                             v.frame_grid(f)[0] if v.frame_segments else None))
    return out


# --------------------------------------------------------------------------------------------
# In-RAM sequence bank: every training window is an index range into ONE concatenated tensor.
# --------------------------------------------------------------------------------------------

import torch  # noqa: E402  (kept next to the code that needs it)


class SequenceBank:
    """All videos' per-step rows concatenated once; a window is (global start, length).

    Why: materialising 400-frame windows with hop 150 would copy the cache ~2.7x; gathering rows by
    index at batch time is a few microseconds and keeps RAM at one copy (stored float16).
    Short windows repeat their last row (the published padding) and are masked.
    """

    def __init__(self, size: int):
        self.size = size
        self._rows: dict[str, list[np.ndarray]] = {}
        self._starts: list[int] = []
        self._lens: list[int] = []
        self._n = 0
        self.tensors: dict[str, torch.Tensor] = {}

    def add_video(self, rows: dict[str, np.ndarray], windows: Sequence[tuple[int, int]]) -> None:
        """Append one video's per-step arrays (same length) and its windows (local [start, end))."""
        n = len(next(iter(rows.values())))
        for k, v in rows.items():
            self._rows.setdefault(k, []).append(np.asarray(v))
        for s, e in windows:
            self._starts.append(self._n + s)
            self._lens.append(e - s)
        self._n += n

    def finalize(self, float_dtype: torch.dtype = torch.float16) -> "SequenceBank":
        """Concatenate once into torch tensors (floats stored as `float_dtype`)."""
        for k, parts in self._rows.items():
            a = np.concatenate(parts)
            t = torch.from_numpy(np.ascontiguousarray(a))
            self.tensors[k] = t.to(float_dtype) if (t.is_floating_point() and k == "x") else t
        self.win_start = torch.tensor(self._starts, dtype=torch.long)
        self.win_len = torch.tensor(self._lens, dtype=torch.long)
        self._rows = {}
        return self

    def __len__(self) -> int:
        return len(self._starts)

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch of windows: every bank tensor as [B, size, ...] plus `pad` [B, size] (True = padding)."""
        ar = torch.arange(self.size)
        lens = self.win_len[idx]
        offs = torch.minimum(ar[None, :], (lens - 1)[:, None])
        rows = self.win_start[idx][:, None] + offs
        out = {k: t[rows] for k, t in self.tensors.items()}
        if "x" in out:
            out["x"] = out["x"].float()
        out["pad"] = ar[None, :] >= lens[:, None]
        return out


@torch.no_grad()
def predict_windows(model: torch.nn.Module, x: np.ndarray, windows: Sequence[tuple[int, int]], size: int,
                    batch_size: int, device: torch.device, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Run a window model over one sequence and overlap-add its (pred, emb) per step.

    `model(x [B,T,D], pad [B,T]) -> (pred [B,T,C], emb [B,T,E])`. Returns per-step arrays
    [num_steps, C], [num_steps, E] (NaN where no window covers a step).
    """
    from heads.windows import overlap_add

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    preds, embs = [], []
    ar = torch.arange(size)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        starts = torch.tensor([s for s, _ in chunk])
        lens = torch.tensor([e - s for s, e in chunk])
        rows = starts[:, None] + torch.minimum(ar[None, :], (lens - 1)[:, None])
        pad = ar[None, :] >= lens[:, None]
        p, e = model(xt[rows].to(device), pad.to(device))
        preds.extend(p.float().cpu().numpy())
        embs.extend(e.float().cpu().numpy())
    return overlap_add(preds, windows, num_steps), overlap_add(embs, windows, num_steps)
