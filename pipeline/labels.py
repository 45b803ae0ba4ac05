"""Labels: parsing, writing, the frame-grid rule, and the one reader every consumer calls.

The label contract: an index record (`pipeline.records.Video`) names each task's label file in
`labels` and its format in `label_formats`; `read_video_labels(video, task)` is the only way a
head, the evaluation or a bench reads them, and it returns `FrameLabels` on the video's frame grid
whatever the format. A new corpus is then one adapter that writes records; nothing downstream
parses its files. Two formats (README "Extending"):

"frames", one line per video frame (the ABAW protocol; README "Expression"):
- VA:   header `valence,arousal`, then one `v,a` line per video frame, floats in [-1, 1];
        -5 marks an unannotated frame (a row is invalid when either value is -5).
- EXPR: header `Neutral,Anger,...,Other`, then one class index 0-7 per frame; -1 = invalid.

"spans", one line per segment or utterance (`read_spans`), times in seconds of the media:
- VA:   header `start,end,valence,arousal`; EXPR: header `start,end,expression` (class index 0-7).
  Spans must not overlap; a frame takes the value of the span that holds its midpoint, and a frame
  no span covers is invalid. The grid is the media's decoded frames (for audio-only files the
  fixed grid of `pipeline.media.AUDIO_GRID_FPS`).

Real files have up to ~50k lines and there are ~3M in total, so parsing is vectorised with numpy
after the header has been checked; the slow line-by-line scan only runs to name the offending
line once the fast path has found that something is wrong.

The frame-grid rule (`reconcile`): the label grid wins. Label line i belongs to decoded frame i,
at that frame's presentation time (`pipeline.records.Video.frame_grid`, from the packet timestamps;
i / fps only for index records that carry no times), and there are F = (number of label lines) frames. Label lines past the decoded frame count are
masked invalid; decoded frames past the labels are ignored. Every mismatch produces a message the
caller logs and records, because a silent off-by-N here shifts every target in time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.files import atomic_write_text, sha256_file

__all__ = [
    "VA_INVALID",
    "EXPR_INVALID",
    "VA_HEADER",
    "EXPR_CLASSES",
    "LabelError",
    "FrameLabels",
    "read_va",
    "read_expr",
    "read_labels",
    "write_va",
    "write_expr",
    "reconcile",
    "count_label_lines",
    "FRAMES",
    "SPANS",
    "SpanLabels",
    "read_spans",
    "spans_on_grid",
    "sniff_label_file",
    "check_label_file",
    "read_video_labels",
]

VA_INVALID = -5.0
EXPR_INVALID = -1
VA_HEADER = ("valence", "arousal")
EXPR_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")


class LabelError(ValueError):
    """A label file is malformed. The message names the file, the line number and a fix."""

    def __init__(self, path: str | Path, line: int | None, problem: str, fix: str | None = None):
        where = f"{path}" if line is None else f"{path}, line {line}"
        fix = fix or "fix or regenerate the annotation file (see the ABAW label format)"
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{where}: {problem}; fix: {fix}")


@dataclass
class FrameLabels:
    """Per-frame labels of one video on the label grid.

    values: va -> [F,2] float32 (raw, -5 kept on invalid rows); expr -> [F] int64 (-1 kept).
    valid:  [F] bool; consumers must use it instead of comparing to the sentinels.
    """

    task: str
    values: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.valid)

    @property
    def num_frames(self) -> int:
        return len(self.valid)


# --------------------------------------------------------------------------- reading


def _read_lines(path: str | Path, expected_header: tuple[str, ...]) -> list[str]:
    """Return the data lines of a label file after checking it exists and has the right header."""
    p = Path(path)
    if not p.is_file():
        raise LabelError(p, None, "label file not found", "check the annotation folder and the video id")
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM written by spreadsheet tools
    except UnicodeDecodeError as e:
        raise LabelError(p, None, f"not a UTF-8 text file ({e})") from e
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines are harmless
        lines.pop()
    if not lines:
        raise LabelError(p, 1, "file is empty (no header)", f"the first line must be `{','.join(expected_header)}`")
    header = tuple(h.strip() for h in lines[0].split(","))
    if tuple(h.lower() for h in header) != tuple(h.lower() for h in expected_header):
        raise LabelError(
            p, 1, f"wrong header `{lines[0].strip()}`", f"the first line must be `{','.join(expected_header)}`"
        )
    return lines[1:]


def _first_bad_line(path: Path, lines: list[str], columns: int, parse) -> LabelError:
    """Slow path: find and describe the first malformed data line (line numbers are 1-based, header = 1)."""
    for i, line in enumerate(lines):
        if not line.strip():
            return LabelError(path, i + 2, "blank line inside the data (every line is one frame)")
        parts = line.split(",")
        if len(parts) != columns:
            return LabelError(path, i + 2, f"expected {columns} comma-separated value(s), got {len(parts)}: `{line}`")
        try:
            [parse(x) for x in parts]
        except ValueError:
            return LabelError(path, i + 2, f"not a number: `{line}`")
    return LabelError(path, None, "could not parse the file")


def _parse(path: Path, lines: list[str], columns: int, dtype) -> np.ndarray:
    """Vectorised parse of `lines` into a [F, columns] array; exact line number on failure.

    np.loadtxt (C parser) is ~4x faster than splitting in Python. It silently skips blank lines,
    which would shift every later frame, so a row-count check sends those files to the slow path.
    """
    if not lines:
        return np.zeros((0, columns), dtype=dtype)
    try:
        out = np.loadtxt(lines, delimiter=",", comments=None, ndmin=2, dtype=dtype)
        if out.shape != (len(lines), columns):
            raise ValueError("blank line or wrong column count")
    except ValueError:
        raise _first_bad_line(path, lines, columns, float if dtype is np.float64 else int) from None
    return out


def read_va(path: str | Path, dtype: type = np.float32) -> FrameLabels:
    """Parse a VA file. Values outside [-1, 1] (other than the -5 sentinel) or NaN are errors.

    `dtype` float64 keeps the file's values exactly (the synthetic generator re-writes real
    label files and must not shift a value across a rounding boundary); training uses float32.
    """
    p = Path(path)
    lines = _read_lines(p, VA_HEADER)
    values = _parse(p, lines, 2, np.float64)
    sentinel = values == VA_INVALID
    bad = ~sentinel & ~((values >= -1.0) & (values <= 1.0))  # NaN fails the range test too
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        raise LabelError(p, row + 2, f"value out of range [-1, 1] (and not -5): `{lines[row]}`")
    valid = ~sentinel.any(axis=1)
    return FrameLabels("va", values.astype(dtype), valid)


def read_expr(path: str | Path) -> FrameLabels:
    """Parse an EXPR file: one class index 0-7 per line, -1 = invalid."""
    p = Path(path)
    lines = _read_lines(p, EXPR_CLASSES)
    values = _parse(p, lines, 1, np.int64).reshape(-1)
    bad = (values < EXPR_INVALID) | (values >= len(EXPR_CLASSES))
    if bad.any():
        row = int(np.argmax(bad))
        raise LabelError(p, row + 2, f"class index out of range -1..{len(EXPR_CLASSES) - 1}: `{lines[row]}`")
    return FrameLabels("expr", values, values != EXPR_INVALID)


def read_labels(path: str | Path, task: str) -> FrameLabels:
    """Dispatch on task name (`va` or `expr`)."""
    readers = {"va": read_va, "expr": read_expr}
    if task not in readers:
        raise ValueError(f"unknown label task {task!r}; expected one of {sorted(readers)}")
    return readers[task](path)


def read_indexed_labels(video, task: str) -> FrameLabels:
    """The `task` label file of an index record (`pipeline.records.Video`), checked against the
    content hash the index recorded (`label_hashes`).

    The index's paths are resolved under this machine's `dataset.root`, which the stages after
    `index` read without depending on it; this check keeps a root that holds other labels (or a label
    file edited after indexing) from being trained or scored on silently.
    """
    return read_labels(_checked_label_path(video, task), task)


def _checked_label_path(video, task: str) -> str:
    path = video.labels[task]
    expected = (video.label_hashes or {}).get(task)
    if expected and sha256_file(path) != expected:
        raise LabelError(path, None, f"content differs from the index's record of video {video.video_id!r}",
                         "re-index (`affcache index`, which `dvc repro` runs first), or point `dataset.root` at "
                         "the copy of the dataset the index was built from")
    return path


# --------------------------------------------------------------------------- spans and the contract

FRAMES = "frames"
SPANS = "spans"
LABEL_FORMATS = (FRAMES, SPANS)
SPAN_VALUES = {"va": VA_HEADER, "expr": ("expression",)}


@dataclass
class SpanLabels:
    """Labels of one file in the "spans" format: start, end [N] float64 seconds, values (va [N,2]
    float32 with -5 kept / expr [N] int64 with -1 kept) and valid [N] bool, sorted by start."""

    task: str
    start: np.ndarray
    end: np.ndarray
    values: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def read_spans(path: str | Path, task: str) -> SpanLabels:
    """Parse a "spans" label file (`start,end,<values>`); every error names the file and line.

    Values follow the per-frame formats (VA in [-1, 1] or -5, EXPR a class index 0-7 or -1); a span
    must have end > start >= 0 and no two spans may overlap (which would give a frame two labels).
    """
    if task not in SPAN_VALUES:
        raise ValueError(f"unknown label task {task!r}; expected one of {sorted(SPAN_VALUES)}")
    p = Path(path)
    columns = ("start", "end", *SPAN_VALUES[task])
    lines = _read_lines(p, columns)
    rows = _parse(p, lines, len(columns), np.float64)
    start, end, vals = rows[:, 0], rows[:, 1], rows[:, 2:]
    bad = ~(np.isfinite(start) & np.isfinite(end) & (start >= 0) & (end > start))
    if bad.any():
        row = int(np.argmax(bad))
        raise LabelError(p, row + 2, f"a span needs 0 <= start < end (seconds): `{lines[row]}`")
    if task == "va":
        sentinel = vals == VA_INVALID
        out_of_range = ~sentinel & ~((vals >= -1.0) & (vals <= 1.0))
        if out_of_range.any():
            row = int(np.argmax(out_of_range.any(axis=1)))
            raise LabelError(p, row + 2, f"value out of range [-1, 1] (and not -5): `{lines[row]}`")
        values, valid = vals.astype(np.float32), ~sentinel.any(axis=1)
    else:
        col = vals[:, 0]
        wrong = (col != np.round(col)) | (col < EXPR_INVALID) | (col >= len(EXPR_CLASSES))
        if wrong.any():
            row = int(np.argmax(wrong))
            raise LabelError(p, row + 2, f"expression must be a class index -1..{len(EXPR_CLASSES) - 1}: `{lines[row]}`")
        values = col.astype(np.int64)
        valid = values != EXPR_INVALID
    order = np.argsort(start, kind="stable")
    overlap = np.flatnonzero(start[order][1:] < end[order][:-1] - 1e-9)
    if len(overlap):
        a, b = order[overlap[0]], order[overlap[0] + 1]
        raise LabelError(p, int(max(a, b)) + 2, f"span overlaps the span on line {int(min(a, b)) + 2}: "
                         f"`{lines[max(a, b)]}`", "make the spans disjoint (a frame takes one label)")
    return SpanLabels(task, start[order], end[order], values[order], valid[order])


def spans_on_grid(spans: SpanLabels, t0: np.ndarray, t1: np.ndarray) -> FrameLabels:
    """The spans expanded onto frames [t0, t1): frame i takes the span holding its midpoint; a frame
    no span holds is invalid (VA -5, EXPR -1)."""
    mid = (np.asarray(t0, np.float64) + np.asarray(t1, np.float64)) / 2
    f = len(mid)
    k = np.searchsorted(spans.start, mid, side="right") - 1
    kc = np.clip(k, 0, max(len(spans) - 1, 0))
    inside = (k >= 0) & (mid < spans.end[kc]) if len(spans) else np.zeros(f, bool)
    if spans.task == "va":
        values = np.full((f, 2), VA_INVALID, np.float32)
    else:
        values = np.full(f, EXPR_INVALID, np.int64)
    valid = np.zeros(f, bool)
    if len(spans):
        values[inside] = spans.values[kc[inside]]
        valid[inside] = spans.valid[kc[inside]]
    return FrameLabels(spans.task, values, valid)


def sniff_label_file(path: str | Path) -> tuple[str, str]:
    """(task, format) of a label file from its header line; an unknown header names the file and
    the headers accepted."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8-sig") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise LabelError(p, None, f"cannot read the header ({e})") from e
    header = tuple(h.strip().lower() for h in first.strip().split(","))
    known = {(tuple(h.lower() for h in VA_HEADER)): ("va", FRAMES),
             (tuple(h.lower() for h in EXPR_CLASSES)): ("expr", FRAMES)}
    known.update({("start", "end", *SPAN_VALUES[t]): (t, SPANS) for t in SPAN_VALUES})
    if header in known:
        return known[header]
    accepted = ", ".join(f"`{','.join(h)}`" for h in known)
    raise LabelError(p, 1, f"unknown label header `{first.strip()}`", f"use one of {accepted}")


def check_label_file(path: str | Path, task: str, fmt: str = FRAMES) -> int:
    """Parse a label file of `fmt` (so a bad one fails at indexing) and return its rows: frames for
    "frames", spans for "spans"."""
    if fmt == FRAMES:
        return len(read_labels(path, task))
    if fmt == SPANS:
        return len(read_spans(path, task))
    raise LabelError(path, None, f"unknown label format {fmt!r}", f"use one of {list(LABEL_FORMATS)}")


def read_video_labels(video, task: str) -> FrameLabels:
    """The `task` labels of an index record (`pipeline.records.Video`) on its frame grid: the one
    reader every consumer calls (heads, evaluation, benches).

    "frames" files follow the frame-grid rule (`reconcile`: the label grid wins, F = label lines,
    lines past the decoded frames masked); "spans" files are expanded onto the decoded frames'
    presentation times (`Video.frame_grid`), F = the decoded frame count. The file is checked against
    the content hash the index recorded (`read_indexed_labels`); every error names the file.
    """
    if task not in video.labels:
        raise ValueError(f"{video.video_id}: no {task} labels in the index record (labelled tasks: "
                         f"{sorted(video.labels) or 'none'})")
    path = _checked_label_path(video, task)
    fmt = (getattr(video, "label_formats", None) or {}).get(task, FRAMES)
    if fmt == FRAMES:
        labels, _ = reconcile(read_labels(path, task), video.num_frames, video.video_id)
        return labels
    if fmt == SPANS:
        t0, t1 = video.frame_grid(int(video.num_frames))
        return spans_on_grid(read_spans(path, task), t0, t1)
    raise LabelError(path, None, f"unknown label format {fmt!r} in the index record of {video.video_id!r}",
                     f"re-index with an adapter that writes one of {list(LABEL_FORMATS)}")


def count_label_lines(path: str | Path) -> int:
    """Number of data lines (frames) without parsing values: a cheap length check for indexing."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return max(len(lines) - 1, 0)


# --------------------------------------------------------------------------- writing


def _write(path: str | Path, header: str, body: list[str]) -> None:
    """Atomic (files.atomic_write_text): a crash never leaves a half-written label file behind."""
    atomic_write_text(path, header + "\n" + "".join(line + "\n" for line in body))


def write_va(path: str | Path, values: np.ndarray, valid: np.ndarray | None = None,
             decimals: int | None = None) -> None:
    """Write a VA file; rows with valid=False are written as `-5,-5`.

    `%.9g` round-trips float32 exactly, so read_va(write_va(x)) == x for valid rows. `decimals`
    writes fixed-point values rounded to that many places instead (`0.500`, as the synthetic demo
    and the Aff-Wild2 releases do).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    valid = np.ones(len(values), bool) if valid is None else np.asarray(valid, bool).reshape(-1)
    if len(valid) != len(values):
        raise ValueError(f"{path}: values has {len(values)} rows but valid has {len(valid)}")
    vals = values[valid]
    if not np.all((vals >= -1.0) & (vals <= 1.0)):
        raise ValueError(f"{path}: valid VA values must lie in [-1, 1]; clip them before writing")
    if decimals is not None:
        values = np.round(values, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    spec = ".9g" if decimals is None else f".{decimals}f"
    body = [f"{v:{spec}},{a:{spec}}" if ok else "-5,-5"
            for (v, a), ok in zip(values.tolist(), valid.tolist(), strict=True)]
    _write(path, ",".join(VA_HEADER), body)


def write_expr(path: str | Path, classes: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write an EXPR file; rows with valid=False are written as -1."""
    classes = np.asarray(classes).reshape(-1)
    valid = np.ones(len(classes), bool) if valid is None else np.asarray(valid, bool).reshape(-1)
    if len(valid) != len(classes):
        raise ValueError(f"{path}: classes has {len(classes)} rows but valid has {len(valid)}")
    if not np.all((classes[valid] >= 0) & (classes[valid] < len(EXPR_CLASSES))):
        raise ValueError(f"{path}: valid EXPR classes must be 0..{len(EXPR_CLASSES) - 1}")
    body = [str(int(c)) if ok else str(EXPR_INVALID) for c, ok in zip(classes.tolist(), valid.tolist(), strict=True)]
    _write(path, ",".join(EXPR_CLASSES), body)


# --------------------------------------------------------------------------- frame grid


def mismatch_message(video_id: str, label_frames: int, num_frames: int, task: str = "labels") -> str | None:
    """Describe a label/video length mismatch and the rule applied (None when they agree)."""
    if label_frames == num_frames:
        return None
    if label_frames > num_frames:
        action = f"the last {label_frames - num_frames} label frame(s) have no video frame and are masked invalid"
    else:
        action = f"the last {num_frames - label_frames} decoded frame(s) have no label and are ignored"
    return (
        f"{video_id}: {task} has {label_frames} frame(s) but the video decodes to {num_frames}; "
        f"label grid wins (label line i = decoded frame i): {action}"
    )


def reconcile(labels: FrameLabels, num_frames: int, video_id: str) -> tuple[FrameLabels, str | None]:
    """Apply the frame-grid rule: keep F = len(labels) frames, mask those past `num_frames`.

    Returns a new FrameLabels (the input is not modified) and the mismatch message (None if equal).
    """
    if num_frames < 0:
        raise ValueError(f"{video_id}: num_frames must be >= 0, got {num_frames}")
    message = mismatch_message(video_id, len(labels), num_frames, labels.task)
    if message is None or len(labels) <= num_frames:
        return labels, message
    valid = labels.valid.copy()
    valid[num_frames:] = False
    return replace(labels, values=labels.values.copy(), valid=valid), message


# --------------------------------------------------------------------------- rows on the label grid
# How a store's rows (each modality on its own time axis) map onto the label grid (frame i <-> its
# presentation time t_i; i / fps when no times are known). Kept next to `reconcile` because they are the other half of the same rule, and in a
# foundation module so heads, evaluation and export all align with one implementation.


def frame_times(num_frames: int, fps: float, times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(t0, t1) float32 of the label grid: frame i spans [times[i], times[i + 1]) (`times`: the
    frames' real starts, `Video.frame_grid`; the last frame lasts the previous step), else
    [i/fps, (i+1)/fps)."""
    if times is not None and len(times) >= num_frames:
        t0 = np.asarray(times, np.float64)[:num_frames]
        step = float(t0[-1] - t0[-2]) if num_frames > 1 else (1.0 / fps if fps > 0 else 0.0)
        t1 = np.concatenate([t0[1:], t0[-1:] + step]) if num_frames else t0
        return t0.astype(np.float32), t1.astype(np.float32)
    i = np.arange(num_frames, dtype=np.float64)
    return (i / fps).astype(np.float32), ((i + 1) / fps).astype(np.float32)


def fill_nearest(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace masked rows by the nearest unmasked row (ties -> earlier row).

    The published face head feeds the nearest cached frame when a face is missing; filling (instead
    of zeros) keeps the input distribution the encoder saw. All-masked input is returned unchanged.
    """
    mask = np.asarray(mask, bool)
    if mask.all() or not mask.any():
        return x
    good = np.flatnonzero(mask)
    pos = np.arange(len(mask))
    k = np.clip(np.searchsorted(good, pos), 1, len(good) - 1) if len(good) > 1 else np.zeros(len(mask), np.int64)
    if len(good) > 1:
        left, right = good[k - 1], good[k]
        src = np.where(pos - left <= right - pos, left, right)
    else:
        src = np.full(len(mask), good[0])
    return x[src]


def rows_to_frames(t0: np.ndarray, t1: np.ndarray, valid: np.ndarray | None, num_frames: int,
                   fps: float, times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map each label frame t_i (`times[i]`, the frame's real start; i / fps without it) to one
    row of a store with its own time axis.

    Rule: the valid row whose [t0, t1) contains t_i; else the nearest valid row if t_i lies within
    half that row's length of it; else the frame is masked. Returns (row_index [F] int64, -1 where
    masked; mask [F] bool). Rows need not be uniform (VFR, 20-ms audio rows, 4-s segments), but must
    be sorted by t0 when valid. Times are stored as float32, so t_i is nudged by a tiny tolerance
    (5 % of the median row length, <= 1 ms) to keep frame i on row i when t0[i] rounds up.
    """
    t0 = np.asarray(t0, np.float64)
    t1 = np.asarray(t1, np.float64)
    ok = np.ones(len(t0), bool) if valid is None else np.asarray(valid, bool).copy()
    ok &= np.isfinite(t0) & np.isfinite(t1) & (t1 > t0)
    rows = np.flatnonzero(ok)
    index = np.full(num_frames, -1, np.int64)
    if num_frames <= 0 or len(rows) == 0:
        return index, np.zeros(max(num_frames, 0), bool)
    a, b = t0[rows], t1[rows]
    if np.any(np.diff(a) < 0):
        raise ValueError("rows_to_frames: store rows are not sorted by t0 -- rewrite the store group")
    dur = b - a
    tol = min(1e-3, 0.05 * float(np.median(dur)))
    if times is not None and len(times) >= num_frames:
        t = np.asarray(times, np.float64)[:num_frames] + tol
    else:
        t = np.arange(num_frames, dtype=np.float64) / float(fps) + tol
    k = np.searchsorted(a, t, side="right") - 1  # last row starting at or before t
    kc = np.clip(k, 0, len(a) - 1)
    inside = (k >= 0) & (t < b[kc])
    # nearest candidates: row k (t after its end) and row k+1 (t before its start)
    left = np.clip(k, 0, len(a) - 1)
    right = np.clip(k + 1, 0, len(a) - 1)
    d_left = np.where(k >= 0, np.maximum(t - b[left], 0.0), np.inf)
    d_right = np.where(k + 1 < len(a), np.maximum(a[right] - t, 0.0), np.inf)
    use_right = d_right < d_left
    near = np.where(use_right, right, left)
    d_near = np.where(use_right, d_right, d_left)
    close = d_near <= 0.5 * dur[near] + tol
    chosen = np.where(inside, kc, near)
    mask = inside | close
    index[mask] = rows[chosen[mask]]
    return index, mask
