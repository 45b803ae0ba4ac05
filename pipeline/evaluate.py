"""Validation metrics of every head and fusion, DVC plot data, and a plain-text table.

EXPR models (heads.registry task "expr") are scored by `evaluate_expr`: macro F1 over the 8
classes (the ABAW measure since ABAW3) and accuracy, plus the first ABAW's score 0.67·F1 + 0.33·
accuracy over the 7 basic classes (Neutral..Surprise: that challenge had no Other class, so frames
labelled Other are left out and the prediction is the arg-max over the 7 basic logits), beside a
majority-class predictor (the train split's most frequent class) and a confusion matrix per model.

Every number comes from the models' outputs.zarr and the label files, scored by
`pipeline.metrics.va_score` (the one CCC implementation: all validation frames concatenated, invalid
labels excluded). Frames a model did not predict are filled by the submission rule
(`pipeline.export.fill_nearest`) before scoring, so the score is the one the same predictions would
get on the server -- a model cannot look better by abstaining on hard frames.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.metrics import NUM_EXPR_CLASSES, macro_f1, va_score
from pipeline.export import fill_nearest, predictions_from_store
from pipeline.labels import EXPR_CLASSES

Labels = Mapping[str, tuple[np.ndarray, np.ndarray]]  # {video_id: (values [F, 2], valid [F])}
CURVE_COLUMNS = ("epoch", "train_loss", "val_ccc_valence", "val_ccc_arousal", "val_ccc_mean", "val_abaw_ccc_mean")
SERIES_COLUMNS = ("panel", "series", "x", "value")  # the long format of DVC's `series` template


@dataclass
class EvalConfig:
    """Which split is scored and how many validation videos get a predicted-vs-true trace."""

    split: str = "validation"
    trace_videos: int = 3
    fill_missing: bool = True


def outputs_url(model: str | Path) -> str:
    """A model directory (holding outputs.zarr) or an outputs.zarr path -> the store path."""
    p = Path(model)
    return str(p if p.suffix == ".zarr" else p / "outputs.zarr")


def model_file(model: str | Path, name: str) -> Path:
    """A file beside a model's outputs (`history.json`, `metrics.json`), from its directory or its outputs.zarr."""
    p = Path(model)
    return (p.parent if p.suffix == ".zarr" else p) / name


def label_frame_times(videos: Sequence, labels: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """{video: its label frames' presentation times} (`Video.frame_grid`, variable frame rates
    included) for the labelled videos: the seconds axis of the plots."""
    return {v.video_id: v.frame_grid(len(labels[v.video_id][0]))[0] for v in videos if v.video_id in labels}


def load_labels(videos: Sequence, split: str = "validation") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """VA labels of the `split` videos of an index, reconciled to the label grid (pipeline.labels)."""
    from pipeline import labels as plabels

    out = {}
    for v in videos:
        if v.split != split or "va" not in v.labels:
            continue
        lab = plabels.read_video_labels(v, "va")
        values = np.asarray(lab.values, np.float32).reshape(-1, 2)
        out[v.video_id] = (values, np.asarray(lab.valid, bool) & (values > -5 + 1e-6).all(1))
    return out


def aligned_predictions(preds: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: Labels,
                        fill: bool = True, width: int = 2) -> dict[str, np.ndarray]:
    """Per labelled video, predictions on its label grid ([F, width]: 2 for VA, 8 EXPR logits;
    NaN where unfillable/unfilled)."""
    out = {}
    for vid, (values, _) in labels.items():
        n = len(values)
        # filled: a video the model did not predict at all (e.g. audio of a silent video) scores as
        # neutral 0, the value a complete submission must then hold, so every model is scored on
        # the same frames
        missing = np.full((n, width), 0.0 if fill and width == 2 else np.nan, np.float32)
        if vid not in preds:
            out[vid] = missing
            continue
        pred, valid = preds[vid]
        if fill:
            try:
                out[vid] = fill_nearest(pred[:, :width], valid, n).astype(np.float32)
            except ValueError:
                out[vid] = missing
            continue
        p = np.full((n, width), np.nan, np.float32)
        k = min(n, len(pred))
        p[:k] = np.where(np.asarray(valid, bool)[:k, None], pred[:k, :width], np.nan)
        out[vid] = p
    return out


def prediction_sets(models: Mapping[str, str | Path], video_ids: Sequence[str] | None = None,
                    fill: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """{model: {video: pred [F, 2]}}: the input that `heads.postprocess.late_fusion` expects.

    Unfilled, frames a model did not predict are NaN (the other sets take over there). With `fill`
    they hold what the model's submission would (the nearest prediction; neutral 0 in a video it
    did not predict at all), so the fusion combines submissions, as the published late fusion does,
    and every frame keeps a value whatever weights the search picks.
    """
    out = {}
    for name, model in models.items():
        preds = predictions_from_store(outputs_url(model), video_ids)
        if fill:
            out[name] = {v: (fill_nearest(p[:, :2], ok, len(p)) if ok.any() else np.zeros((len(p), 2))).astype(np.float32)
                         for v, (p, ok) in preds.items()}
        else:
            out[name] = {v: np.where(ok[:, None], p[:, :2], np.nan).astype(np.float32) for v, (p, ok) in preds.items()}
    return out


def score(aligned: Mapping[str, np.ndarray], labels: Labels) -> dict:
    """ABAW VA metrics over the labelled videos; `coverage` = share of valid label frames predicted."""
    vids = list(labels)
    s = va_score([aligned[v] for v in vids], [labels[v][0] for v in vids], [labels[v][1] for v in vids])
    total = sum(int(labels[v][1].sum()) for v in vids)
    return {k: s[k] for k in ("ccc_valence", "ccc_arousal", "ccc_mean")} | {
        "num_frames": s["num_frames"], "coverage": round(s["num_frames"] / max(total, 1), 4)}


def read_history(model: str | Path) -> list[dict]:
    """The shared loop's history.json next to a model's outputs (empty if absent)."""
    f = model_file(model, "history.json")
    return json.loads(f.read_text()) if f.exists() else []


def evaluate(models: Mapping[str, str | Path], labels: Labels, summary_path: str | Path,
             plots_dir: str | Path | None = None, cfg: EvalConfig | None = None,
             frame_times: Mapping[str, np.ndarray] | None = None) -> dict:
    """Score every model, write summary.json (+ curves and traces under `plots_dir`); return the summary.

    `models`: {name: model dir or outputs.zarr}. Summary: {name: {ccc_valence, ccc_arousal, ccc_mean,
    num_frames, coverage}, ..., "best": {"model": name, "ccc_mean": x}}. `frame_times` ({video: the
    label frames' presentation times}) puts the trace plots on a seconds axis (frame / 1 otherwise).
    """
    cfg = cfg or EvalConfig()
    if not labels:
        raise ValueError(f"evaluate: no labelled {cfg.split} video; check the index splits and label paths")
    summary, aligned_all = score_models(models, labels, "va", cfg.fill_missing)
    _write_summary(summary, models, "ccc_mean", summary_path)
    if plots_dir is not None:
        shown = trace_videos(labels, cfg.trace_videos)
        write_curves(models, Path(plots_dir) / "curves")
        write_traces(aligned_all, labels, Path(plots_dir) / "traces", shown)
        write_series_traces(aligned_all, labels, Path(plots_dir) / "va_traces", shown, frame_times or {})
        write_series_curves(models, Path(plots_dir) / "va_curves.csv")
    return summary


def score_models(models: Mapping[str, str | Path], labels: Labels, task: str = "va",
                 fill: bool = True) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """({model: its rounded scores}, {model: {video: predictions on the label grid}}) for `task`.

    The one scoring loop of both tasks: stored predictions, aligned (and filled by the submission
    rule) on each labelled video's grid, then scored: `score` for "va" (2 columns), `expr_scores`
    for "expr" (the 8 logits; frames of all videos concatenated)."""
    vids = list(labels)
    summary: dict = {}
    aligned_all: dict[str, dict[str, np.ndarray]] = {}
    for name, model in models.items():
        aligned = aligned_predictions(_stored_predictions(name, model, vids), labels, fill,
                                      2 if task == "va" else NUM_EXPR_CLASSES)
        aligned_all[name] = aligned
        summary[name] = _rounded(score(aligned, labels) if task == "va" else
                                 expr_scores(np.concatenate([aligned[v] for v in vids]), expr_truth(labels)))
    return summary, aligned_all


def _stored_predictions(name: str, model: str | Path, video_ids: list[str]):
    """A trained model's stored predictions for `video_ids`; a missing store names the stage to run."""
    url = outputs_url(model)
    if not Path(url).exists() and "://" not in url:
        raise FileNotFoundError(f"{url}: outputs of model {name!r} not found; run its training stage first")
    return predictions_from_store(url, video_ids)


def _write_summary(summary: dict, models: Mapping[str, str | Path], key: str, path: str | Path) -> None:
    """Add `best` (the model with the highest `key`) and write the summary as JSON."""
    best = max(models, key=lambda n: summary[n][key])
    summary["best"] = {"model": best, key: summary[best][key]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")


def _rounded(d: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in d.items()}


def trace_videos(labels: Labels, k: int) -> list[str]:
    """The k validation videos with the most valid label frames (ties: by id) -- stable across runs."""
    return sorted(labels, key=lambda v: (-int(labels[v][1].sum()), v))[:k]


def write_curves(models: Mapping[str, str | Path], out_dir: Path) -> list[Path]:
    """plots/curves/<model>.csv: one row per epoch of the shared loop's history (DVC plots x=epoch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in models.items():
        hist = read_history(model)
        if not hist:
            continue
        f = out_dir / f"{_safe(name)}.csv"
        with f.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(CURVE_COLUMNS)
            for row in hist:
                w.writerow([_cell(row.get(c)) for c in CURVE_COLUMNS])
        written.append(f)
    return written


def write_traces(aligned: Mapping[str, Mapping[str, np.ndarray]], labels: Labels, out_dir: Path,
                 video_ids: Sequence[str]) -> list[Path]:
    """plots/traces/<video>.csv: frame, true_valence, true_arousal, pred_valence_<m>, pred_arousal_<m>...

    Invalid label frames are left empty so a plot shows a gap instead of a -5 spike.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    names = list(aligned)
    for vid in video_ids:
        values, valid = labels[vid]
        cols = ["frame", "true_valence", "true_arousal"] + [f"pred_{d}_{_safe(n)}" for n in names for d in ("valence", "arousal")]
        f = out_dir / f"{_safe(vid)}.csv"
        with f.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for i in range(len(values)):
                row = [i, _cell(values[i, 0] if valid[i] else None), _cell(values[i, 1] if valid[i] else None)]
                for n in names:
                    row += [_cell(aligned[n][vid][i, 0]), _cell(aligned[n][vid][i, 1])]
                w.writerow(row)
        written.append(f)
    return written


def write_series_traces(aligned: Mapping[str, Mapping[str, np.ndarray]], labels: Labels, out_dir: Path,
                        video_ids: Sequence[str], frame_times: Mapping[str, np.ndarray]) -> list[Path]:
    """plots/va_traces/{valence,arousal}.csv in DVC's `series` long format: one panel per trace
    video, the truth and every model as series over time (s), so `dvc plots show` draws the truth
    and all models together, one chart per video (invalid label frames are left out of the truth)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for d, dim in enumerate(("valence", "arousal")):
        f = out_dir / f"{dim}.csv"
        with f.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(SERIES_COLUMNS)
            for vid in video_ids:
                values, valid = labels[vid]
                t = np.asarray(frame_times.get(vid, np.arange(len(values))), np.float64)[: len(values)]
                for i in np.flatnonzero(valid):
                    w.writerow([vid, "truth", f"{t[i]:.4f}", _cell(values[i, d])])
                for name in aligned:
                    pred = aligned[name][vid][:, d]
                    for i in np.flatnonzero(np.isfinite(pred)):
                        w.writerow([vid, name, f"{t[i]:.4f}", _cell(pred[i])])
        written.append(f)
    return written


def coverage(labels: Labels, reliability: Mapping[str, Mapping[str, np.ndarray]],
             frame_times: Mapping[str, np.ndarray]) -> dict:
    """How much of the scored split each modality could see: `face_found` (share of validly labelled
    frames with a detected face) and `speech` (share of those frames inside a voice-active audio
    row, VAD > 0.5), from the reliability store; `videos_without_audio` counts the rest."""
    from pipeline.labels import rows_to_frames

    face_hits = speech_hits = total = no_audio = 0
    for vid, (values, valid) in labels.items():
        g = reliability.get(vid)
        if g is None:
            continue
        n = len(values)
        t = np.asarray(frame_times.get(vid, np.arange(n)), np.float64)[:n]
        idx, ok = rows_to_frames(g["t0"], g["t1"], None, n, 1.0, t)
        face = np.where(ok, np.asarray(g["face"], np.float64)[np.clip(idx, 0, None)] > 0.5, False)
        vad = np.asarray(g["vad"], np.float64) if "vad" in g else np.zeros(0)
        if len(vad):
            c = (np.asarray(g["vad_t0"], np.float64) + np.asarray(g["vad_t1"], np.float64)) / 2
            speech = (np.interp(t, c, vad) > 0.5) & (t >= float(np.min(g["vad_t0"]))) & (t < float(np.max(g["vad_t1"])))
        else:
            speech, no_audio = np.zeros(n, bool), no_audio + 1
        total += int(valid.sum())
        face_hits += int((face & valid).sum())
        speech_hits += int((speech & valid).sum())
    return {"face_found": round(face_hits / max(total, 1), 4), "speech": round(speech_hits / max(total, 1), 4),
            "labelled_frames": total, "videos_without_audio": no_audio}


def write_series_curves(models: Mapping[str, str | Path], path: Path) -> Path:
    """plots/va_curves.csv: every model's validation CCC per epoch, scored the way its headline
    metric is (`val_abaw_ccc_mean`: the model's final outputs on all validly labelled frames,
    unpredicted ones filled), overlaid in one chart. Histories written before that column fall back
    to the selection score `val_ccc_mean`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SERIES_COLUMNS)
        for name, model in models.items():
            for row in read_history(model):
                value = row.get("val_abaw_ccc_mean", row.get("val_ccc_mean"))
                if value is not None:
                    w.writerow(["validation CCC (ABAW way)", name, row["epoch"], _cell(value)])
    return path


def _cell(x) -> str:
    if x is None:
        return ""
    x = float(x)
    return "" if not math.isfinite(x) else f"{x:.5g}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def metrics_table(summary: Mapping) -> str:
    """Plain-text table (best model marked with *) for the end of `dvc repro`."""
    names = [n for n in summary if n != "best"]
    best = summary.get("best", {}).get("model")
    width = max([len("model")] + [len(n) for n in names]) + 2
    lines = [f"{'model':<{width}}{'CCC-V':>8}{'CCC-A':>8}{'mean':>8}", "-" * (width + 24)]
    for n in sorted(names, key=lambda n: -summary[n]["ccc_mean"]):
        m = summary[n]
        mark = " *" if n == best else ""
        lines.append(f"{n:<{width}}{m['ccc_valence']:>8.4f}{m['ccc_arousal']:>8.4f}{m['ccc_mean']:>8.4f}{mark}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- EXPR

ABAW1_CLASSES = NUM_EXPR_CLASSES - 1  # the first ABAW (FG 2020): 7 basic classes, no Other
CONFUSION_COLUMNS = ("actual", "predicted")


def load_expr_labels(videos: Sequence, split: str = "validation") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """EXPR labels ({video: (classes [F] int64, valid [F])}) of the `split` videos, reconciled to the
    label grid by the same rule as VA (`pipeline.labels.reconcile`); -1 is invalid."""
    from pipeline import labels as plabels

    out = {}
    for v in videos:
        if v.split != split or "expr" not in v.labels:
            continue
        lab = plabels.read_video_labels(v, "expr")
        values = np.asarray(lab.values, np.int64).reshape(-1)
        out[v.video_id] = (values, np.asarray(lab.valid, bool) & (values >= 0))
    return out


def expr_truth(labels: Labels) -> np.ndarray:
    """The EXPR classes of every labelled frame, videos concatenated in `labels` order (-1 = invalid)."""
    return np.concatenate([np.where(labels[v][1], labels[v][0], -1) for v in labels])


def class_counts(labels: Labels) -> np.ndarray:
    """Valid frames per EXPR class over `labels`."""
    counts = np.zeros(NUM_EXPR_CLASSES, np.int64)
    for values, valid in labels.values():
        counts += np.bincount(np.asarray(values)[valid].astype(np.int64), minlength=NUM_EXPR_CLASSES)
    return counts


def expr_scores(logits: np.ndarray, true: np.ndarray) -> dict:
    """EXPR figures from logits [N, 8] (NaN rows = no prediction) and classes [N] (-1 excluded).

    `f1`/`accuracy`: 8 classes (current ABAW). `abaw1_score` = 0.67·`f1_7` + 0.33·`accuracy_7`
    over the frames of the 7 basic classes, predicted by the arg-max of their 7 logits (the first
    ABAW). A frame without a prediction counts as wrong (never as skipped), so a model cannot score
    better by abstaining.
    """
    lg, t = np.asarray(logits, np.float64), np.asarray(true, np.int64).reshape(-1)
    keep = t >= 0
    if not keep.any():
        raise ValueError("expr_scores: no valid frame -- every EXPR label is -1")
    ok = np.isfinite(lg).all(1)
    pred = np.where(ok, np.nan_to_num(lg).argmax(1), -1)
    t7 = np.where(t < ABAW1_CLASSES, t, -1)
    pred7 = np.where(ok, np.nan_to_num(lg[:, :ABAW1_CLASSES]).argmax(1), -1)
    out = {"f1": macro_f1(pred, t), "accuracy": float((pred[keep] == t[keep]).mean())}
    if (t7 >= 0).any():
        f1_7 = macro_f1(pred7, t7, ABAW1_CLASSES)
        acc_7 = float((pred7[t7 >= 0] == t7[t7 >= 0]).mean())
        out |= {"f1_7": f1_7, "accuracy_7": acc_7, "abaw1_score": 0.67 * f1_7 + 0.33 * acc_7}
    return out | {"num_frames": int(keep.sum()), "coverage": round(float(ok[keep].mean()), 4)}


def majority_logits(train_labels: Labels, n: int) -> tuple[np.ndarray, int]:
    """Logits [n, 8] of the majority-class predictor (the train split's most frequent class; its
    7-class arg-max is the most frequent basic class) and that class."""
    counts = class_counts(train_labels)
    if counts.sum() == 0:
        raise ValueError("majority baseline: no labelled train frame")
    lg = np.zeros((n, NUM_EXPR_CLASSES), np.float32)
    lg[:, :ABAW1_CLASSES] = np.argsort(np.argsort(counts[:ABAW1_CLASSES]))  # 7-class order by frequency
    top = int(counts.argmax())
    lg[:, top] = NUM_EXPR_CLASSES  # the overall majority wins the 8-class arg-max
    return lg, top


def evaluate_expr(models: Mapping[str, str | Path], labels: Labels, train_labels: Labels,
                  summary_path: str | Path, confusion_dir: str | Path | None = None,
                  fill_missing: bool = True) -> dict:
    """Score every EXPR model on `labels`, write the summary (+ confusion rows per model); return it.

    Summary: {model: {f1, accuracy, f1_7, accuracy_7, abaw1_score, num_frames, coverage}, ...,
    "majority_baseline": {the same, class}, "best": {"model", "f1"}}. Frames a model did not predict
    take the nearest prediction first (the submission rule), as for VA.
    """
    if not labels:
        raise ValueError("evaluate (expr): no labelled validation video with EXPR labels; check the index and the "
                         "EXPR_Recognition_Challenge folder")
    true = expr_truth(labels)
    summary, aligned_all = score_models(models, labels, "expr", fill_missing)
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, aligned in aligned_all.items():
        lg = np.concatenate([aligned[v] for v in labels])
        rows[name] = (true, np.where(np.isfinite(lg).all(1), np.nan_to_num(lg).argmax(1), -1))
    base, top = majority_logits(train_labels, len(true))
    summary["majority_baseline"] = _rounded(expr_scores(base, true)) | {"class": EXPR_CLASSES[top]}
    _write_summary(summary, models, "f1", summary_path)
    if confusion_dir is not None:
        write_confusion(rows, Path(confusion_dir))
    return summary


def write_confusion(rows: Mapping[str, tuple[np.ndarray, np.ndarray]], out_dir: Path) -> list[Path]:
    """plots/confusion/<model>.csv: one `actual,predicted` row (class names) per scored frame, the
    input of DVC's confusion template; frames without a prediction are `none`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = np.asarray(list(EXPR_CLASSES) + ["none"])
    written = []
    for name, (true, pred) in rows.items():
        keep = true >= 0
        f = out_dir / f"{_safe(name)}.csv"
        with f.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(CONFUSION_COLUMNS)
            w.writerows(zip(names[true[keep]].tolist(), names[pred[keep]].tolist()))
        written.append(f)
    return written


def read_confusion(path: str | Path) -> np.ndarray:
    """[8, 8] counts (rows: actual, columns: predicted) from a `write_confusion` file; `none` is dropped."""
    index = {c: i for i, c in enumerate(EXPR_CLASSES)}
    m = np.zeros((NUM_EXPR_CLASSES, NUM_EXPR_CLASSES), np.int64)
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            a, p = index.get(row["actual"]), index.get(row["predicted"])
            if a is not None and p is not None:
                m[a, p] += 1
    return m


def expr_table(summary: Mapping) -> str:
    """Plain-text EXPR table (models by F1, the majority baseline last; best marked with *)."""
    names = [n for n in summary if n not in ("best", "majority_baseline")]
    best = summary.get("best", {}).get("model")
    width = max([len("majority_baseline")] + [len(n) for n in names]) + 2
    lines = [f"{'model':<{width}}{'F1(8)':>8}{'acc':>8}{'ABAW1':>8}", "-" * (width + 24)]
    for n in sorted(names, key=lambda n: -summary[n]["f1"]) + ["majority_baseline"]:
        m = summary[n]
        mark = " *" if n == best else ""
        lines.append(f"{n:<{width}}{m['f1']:>8.4f}{m['accuracy']:>8.4f}{m.get('abaw1_score', float('nan')):>8.4f}{mark}")
    return "\n".join(lines)
