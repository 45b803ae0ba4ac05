"""Predicting new videos with a trained project: per-frame valence/arousal (the in-the-wild use case).

Library code shared by the `affcache predict` stage and the Python API (`affcache.api.predict`): both
call `predict_videos` with a loaded params file and the project's root folder, so the API needs no
change of working directory and names every path it reads or writes explicitly.

Steps: probe each file into a `Video` record (id = file stem, split "test", no labels, no crops, so
the face extractor detects faces) -> run the extractors the chosen model needs, built exactly as the
extraction stages build them (`affcache.project_extractors`), into `<out>/features` -> load the
trained heads (and fusion) from data/heads, data/fusion -> write `<out>/<video_id>.csv` and
`<out>/<video_id>.png`.

Why a separate store root: data/features is a DVC output; writing new videos into it would make
`dvc status` dirty. The separate store is still keyed by the extractor fingerprint, so predicting
the same file twice recomputes nothing and a changed `extract.*` param starts a fresh store.

params (all optional): `predict.model` (a model name of heads.registry: a head or `fusion_<fusion>`;
default: the best model in metrics/summary.json, else `heads.registry.DEFAULT_MODEL`), `predict.device` ("auto"),
`predict.keep_old_stores` (false), `predict.max_faces` (4; `--max-faces`), `predict.features` (the
feature cache; default `<out>/features`). Extraction reads `extract.<modality>` like the extraction
stages, except that the face detector follows up to `max_faces` persons (`detector.max_faces`):
every person gets its own rows (a `person` column; the face head reads that person's crops, the
audio filter and RAAV that person's mouth and face coverage; audio and behaviour are the video's),
frame by frame.
When EXPR models were trained, the CSV also holds per-frame class probabilities `p_neutral` ...
`p_other` of the best evaluated EXPR model (metrics/expr_summary.json; else expr_fusion_gated_moe),
provided the features it reads were extracted for the chosen VA model.
One bad file never stops the others: it is listed in `<out>/predict_report.json` and the call
raises `StageFailed` at the end. A file whose extraction failed for any store the model reads gets
no CSV (one from an earlier run is removed), so every CSV in `<out>` is a complete prediction.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import Params, ParamsError
from pipeline.records import Video
from affcache.stages import Layout, StageFailed, write_json
from affcache.stages.applicable import not_applicable_model

if TYPE_CHECKING:  # heavy (torch): imported inside the functions that run models
    from heads.data import HeadVideo
    from heads.inference import Predictor, VideoPrediction

log = logging.getLogger(__name__)

REPORT = "predict_report.json"


@dataclass
class PredictReport:
    """What a run did: per-modality extraction counts, per-video outputs, failures (file + problem)."""

    model: str = ""
    extraction: dict[str, dict] = field(default_factory=dict)  # modality -> {store, extracted, cached, failed}
    outputs: dict[str, dict] = field(default_factory=dict)     # video_id -> {file, csv, png, frames}
    failed: list[dict] = field(default_factory=list)           # {video_id, file, stage, error}

    def to_json(self) -> dict:
        return {"model": self.model, "extraction": self.extraction, "outputs": self.outputs, "failed": self.failed}


def predict_videos(params: Params, videos: list[Path], out: Path, *, root: Path | None = None,
                   model: str | None = None, max_faces: int | None = None) -> PredictReport:
    """Predict every video; raise StageFailed at the end if any video (or one of its modalities) failed.

    `root`: the project folder that `params` names its files under (data/heads, data/fusion,
    metrics, model weights; None: the working directory, as under `dvc repro`); a relative `out`
    lies under it too. `max_faces`: persons followed per video (`--max-faces`; default
    `predict.max_faces`, 4; 0 = every tracked face): each gets its own rows in the CSV (`person`
    column)."""
    layout = Layout.from_params(params, root or Path("."))
    out = under(root, out)
    predictor = load_model(params, layout, model)
    report = PredictReport(model=predictor.model)
    records = probe_videos(expand_inputs(videos), report)
    cache = str(under(root, params.get("predict.features")) if params.get("predict.features") else out / "features")
    faces = int(max_faces if max_faces is not None else params.get("predict.max_faces", DEFAULT_MAX_FACES))
    urls = (extract(params, layout, stores_needed(predictor), records, cache, report, faces, root=root)
            if records else {})
    usable = [v for v in records if extracted(v, report)]
    persons = {v.video_id: video_persons(v, urls, report) for v in usable}
    results: dict[str, dict[int, tuple]] = {v.video_id: {} for v in usable}
    for p in range(max((len(ps) for ps in persons.values()), default=0)):
        batch = [v for v in usable if p < len(persons[v.video_id])]
        inputs = head_videos(batch, urls, predictor.modalities, report, person=p)
        predictions = _guarded(predictor.model, predictor.predict, inputs)
        expr = expr_probabilities(params, layout, batch, urls, report, person=p)
        for v in batch:
            results[v.video_id][p] = (predictions[v.video_id], frame_columns(v, urls, report, person=p),
                                      expr.get(v.video_id))
    for v in usable:
        report.outputs[v.video_id] = write_outputs(v, results[v.video_id], out)
    remove_stale_outputs(report, out)
    write_json(out / REPORT, report.to_json())
    log.info("predict (%s): %d video(s) predicted -> %s; %d problem(s)", predictor.model, len(report.outputs), out,
             len(report.failed))
    if report.failed:
        lines = "\n".join(f"  {f['file']} ({f['stage']}): {f['error']}" for f in report.failed)
        raise StageFailed(f"predict: {len(report.failed)} problem(s); the other videos were predicted into {out} "
                          f"(details: {out / REPORT}):\n{lines}")
    return report


def under(root: Path | None, path: str | Path) -> Path | str:
    """`path` as read from the project `root`: a relative local path lies under it; a URL stays a
    string, an absolute path a path."""
    if "://" in str(path):
        return str(path)
    p = Path(path)
    return p if root is None or p.is_absolute() else Path(root) / p


def _guarded(name: str, fn, *args):
    """Model problems (missing checkpoint, features of the wrong width) as one clear stage error."""
    from heads.inference import ModelLoadError

    try:
        return fn(*args)
    except ModelLoadError as exc:
        raise StageFailed(f"predict ({name}): {exc}") from exc


def load_model(params: Params, layout: Layout, model: str | None = None) -> "Predictor":
    """The chosen VA model (`choose_model`) and the heads it reads, from data/heads and data/fusion."""
    return load_trained(params, layout, choose_model(params, layout, model))


def load_trained(params: Params, layout: Layout, name: str) -> "Predictor":
    """Model `name` of either task (heads.registry model name) and the heads it reads, on `predict.device`."""
    from heads.inference import load_predictor
    from heads.registry import specs

    return _guarded(name, load_predictor, name, {s.name: layout.head_dir(s.name) for s in specs(kind="head")},
                    {s.model_name: layout.fusion_dir(s.name) for s in specs(kind="fusion")},
                    str(params.get("predict.device", "auto")), layout.root)


def stores_needed(predictor: "Predictor") -> list[str]:
    """The heads' feature stores, plus reliability for a fusion (face coverage, mouth opening:
    the audio filter), exactly as the fuse stage feeds it."""
    return predictor.modalities + (["reliability"] if predictor.fusion is not None else [])


# --------------------------------------------------------------------------- model choice


def choose_model(params: Params, layout: Layout, model: str | None = None) -> str:
    """`model` (a command-line choice), else `predict.model`, else the best evaluated model, else the default."""
    from heads.registry import DEFAULT_MODEL, model_names

    known = model_names()
    name = model if model is not None else params.get("predict.model")
    if name is not None:
        if name not in known:
            where = "model" if model is not None else f"{params.path}: predict.model"
            raise ParamsError(f"{where}: unknown model {name!r}; use one of {', '.join(known)}")
        reason = not_applicable_model(layout, str(name))
        if reason:
            usable = [n for n in known if not not_applicable_model(layout, n)]
            where = "model" if model is not None else f"{params.path}: predict.model"
            raise ParamsError(f"{where}: {name} is not applicable to this project's dataset ({reason}); "
                              f"use one of {', '.join(usable) or '(none)'}")
        return str(name)
    summary = layout.metrics / "summary.json"
    if summary.exists():
        best = json.loads(summary.read_text()).get("best", {}).get("model")
        if best in known:
            log.info("predict: using %s, the best model in %s", best, summary)
            return str(best)
    reason = not_applicable_model(layout, DEFAULT_MODEL)
    if reason:  # e.g. an audio-only corpus: the default fusion needs pictures; the first applicable model
        usable = [n for n in known if not not_applicable_model(layout, n)]
        if usable:
            log.info("predict: the default %s is not applicable (%s); using %s", DEFAULT_MODEL, reason, usable[0])
            return usable[0]
    log.info("predict: no best model in %s (not evaluated yet); using %s", summary, DEFAULT_MODEL)
    return DEFAULT_MODEL


# --------------------------------------------------------------------------- records


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for every video or audio file below it (sorted, so runs repeat).

    Other files below a folder (outside hidden folders) are named in one warning per folder, and in
    the error when a folder holds no media file. A file with a media extension that PyAV cannot open
    is taken here and fails on its own at probe time (`probe_videos`)."""
    from pipeline.datasets.common import AUDIO_EXTS, VIDEO_EXTS, exts_text

    media_exts = VIDEO_EXTS + AUDIO_EXTS
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found, skipped = [], []
            for f in sorted(p.rglob("*")):
                if not f.is_file():
                    continue
                if f.suffix.lower() in media_exts:
                    found.append(f)
                elif not any(part.startswith(".") for part in f.relative_to(p).parts[:-1]):
                    skipped.append(f)
            listed = _skipped_text(p, skipped)
            if not found:
                raise StageFailed(f"{p}: no video or audio files ({exts_text(exts=media_exts)}) in this folder"
                                  + (f"; skipped {listed}" if skipped else "; the folder holds no files"))
            if skipped:
                log.warning("predict: %s: skipped %s", p, listed)
            files += found
        else:
            files.append(p)
    return list(dict.fromkeys(files))


def _skipped_text(folder: Path, skipped: list[Path], limit: int = 50) -> str:
    """`N file(s) (not a video or audio file extension): a.txt, sub/b.csv, ...` with at most `limit` names."""
    names = [str(f.relative_to(folder)) for f in skipped]
    more = f", ... {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} file(s) (not a video or audio file extension): {', '.join(names[:limit])}{more}"


def video_ids(paths: list[Path]) -> dict[Path, str]:
    """The id of each file: its stem, or, where files share a stem, the stem plus 6 hex digits of
    the file's absolute path (stable across runs), so every file keeps its own CSV and cache."""
    by_stem: dict[str, list[Path]] = {}
    for p in paths:
        by_stem.setdefault(p.stem, []).append(p)
    ids = {}
    for stem, group in by_stem.items():
        for p in group:
            digest = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:6]
            ids[p] = stem if len(group) == 1 else f"{stem}-{digest}"
        if len(group) > 1:
            log.info("predict: %d files named %r get distinct ids: %s", len(group), stem,
                     ", ".join(f"{p} -> {ids[p]}" for p in group))
    return ids


def probe_videos(paths: list[Path], report: PredictReport) -> list[Video]:
    """One `Video` per readable file (see `video_ids`); unreadable files go to `report.failed`."""
    from pipeline.media import MediaError, probe

    ids = video_ids(paths)
    records = []
    for p in paths:
        try:
            info = probe(p)
        except MediaError as exc:
            report.failed.append({"video_id": ids[p], "file": str(p), "stage": "probe", "error": str(exc)})
            log.error("predict: %s", exc)
            continue
        records.append(Video(video_id=ids[p], media_path=str(Path(p).resolve()), fps=info.fps,
                             num_frames=info.num_frames, duration=info.duration, has_audio=info.has_audio,
                             has_video=info.has_video, split="test", rotation=info.rotation,
                             frame_segments=[list(s) for s in info.frame_segments]))
    return records


# --------------------------------------------------------------------------- features


DEFAULT_MAX_FACES = 4


def extract(params: Params, layout: Layout, modalities: list[str], records: list[Video], cache: str,
            report: PredictReport, max_faces: int = DEFAULT_MAX_FACES, root: Path | None = None) -> dict[str, str]:
    """Run each modality's extractor into `cache` (stores keyed by fingerprint); returns {modality: store URL}.

    Extractors that detect faces (face, reliability) follow up to `max_faces` persons (their
    `detector.max_faces`; the rest of `extract.<modality>` as in training); their files are read
    under the project `root` (`affcache.project_extractors.build_extractor`)."""
    from extractors.base import ExtractorError, run_extraction
    from affcache.project_extractors import build_extractor
    from pipeline.store import prune_stores

    urls = {}
    for m in modalities:
        extractor = build_extractor(params, m, person_overrides(params, m, max_faces), root=root)
        try:
            res = run_extraction(extractor, records, cache, workers=int(params.get(f"extract.{m}.workers", 2)),
                                 prefetch=int(params.get(f"extract.{m}.prefetch", 2)))
        except ExtractorError as exc:
            raise StageFailed(f"predict: extract {m}: {exc}") from exc
        if not params.get("predict.keep_old_stores", False):
            prune_stores(f"{cache.rstrip('/')}/{m}", keep=res.url)
        warn_if_not_training_features(layout, m, res.url)
        urls[m] = res.url
        report.extraction[m] = {"store": res.url, "extracted": res.done, "cached": res.skipped,
                                "failed": [f["video_id"] for f in res.failed]}
        report.failed += [{**f, "stage": f"extract {m}"} for f in res.failed]
        log.info("predict: %s: %d extracted, %d cached, %d failed", m, len(res.done), len(res.skipped), len(res.failed))
    return urls


def warn_if_not_training_features(layout: Layout, modality: str, url: str) -> None:
    """A head is only meaningful on features from the extractor config it was trained on."""
    from pipeline.store import StoreError, read_current

    try:
        trained = read_current(str(layout.feature_dir(modality)))
    except (StoreError, FileNotFoundError, OSError, ValueError):
        return  # no training store here (e.g. only the heads were pulled): nothing to compare
    if Path(trained).name != Path(url).name and not _same_but_persons(trained, url):
        log.warning("predict: %s features come from %s but the heads were trained on %s: the `extract.%s` params "
                    "changed since training; run `dvc repro` so heads and features match", modality, url, trained,
                    modality)


def extracted(video: Video, report: PredictReport) -> bool:
    """Whether every extraction succeeded for `video`. One that failed (named in the report) would
    leave a prediction from the other inputs that looks complete, so the video gets no CSV.
    (Missing audio is a value, not a failure.)"""
    return not any(f["video_id"] == video.video_id for f in report.failed)


def remove_stale_outputs(report: PredictReport, out: Path) -> None:
    """A failed video's CSV and plot from an earlier run would read as this run's result: removed."""
    for f in report.failed:
        if f["video_id"] not in report.outputs:
            for suffix in (".csv", ".png"):
                (out / f"{f['video_id']}{suffix}").unlink(missing_ok=True)


def person_overrides(params: Params, modality: str, max_faces: int) -> dict | None:
    """`detector.max_faces` set to `max_faces` for an extractor config with a face detector."""
    from extractors.registry import ExtractorError, config_class, extractor_class

    try:
        cls = extractor_class(str(params.get(f"extract.{modality}.extractor")))
    except ExtractorError:
        return None
    if "detector" not in getattr(config_class(cls), "__dataclass_fields__", {}):
        return None
    return {"detector": {**(params.get(f"extract.{modality}.config.detector") or {}), "max_faces": int(max_faces)}}


def _same_but_persons(a: str, b: str) -> bool:
    """Two stores whose fingerprints differ only in how many persons are followed
    (`detector.max_faces`): predict follows several, training the annotated one."""
    from pipeline.store import FeatureStore, StoreError

    def core(url: str) -> dict:
        fp = json.loads(json.dumps(FeatureStore.open(url).attrs.get("fingerprint", {})))
        if isinstance(fp.get("detector"), dict):
            fp["detector"].pop("max_faces", None)
        return fp

    try:
        return core(a) == core(b)
    except (StoreError, OSError, ValueError):
        return False


def video_persons(video: Video, urls: dict[str, str], report: PredictReport | None = None) -> list[int]:
    """The persons followed in `video` (`pipeline.persons`): from its face store group, else its
    reliability group; [0] when neither follows persons (a video without a face is one person)."""
    from pipeline.persons import PERSON, person_ids
    from pipeline.store import FeatureStore, StoreError

    failed = {f["stage"] for f in (report.failed if report else []) if f["video_id"] == video.video_id}
    for m in ("face", "reliability"):
        if m in urls and f"extract {m}" not in failed:
            store = FeatureStore.open(urls[m])
            if video.video_id not in set(store.video_ids()):
                continue
            try:
                return person_ids(store.read_video(video.video_id, [PERSON]))
            except StoreError:  # no person column: provided crops, or a store of one person
                continue
    return [0]


def head_videos(records: list[Video], urls: dict[str, str], modalities: list[str],
                report: PredictReport, person: int = 0) -> dict[str, list["HeadVideo"]]:
    """{modality: [HeadVideo]} on the decoded-frame grid, for `person` (its face rows, its mouth
    and face coverage for the audio filter; audio and behaviour are the video's); a modality that
    failed for a video is masked."""
    from heads.data import load_head_videos

    rel = urls.get("reliability")
    out = {}
    for m in modalities:
        vids = load_head_videos(records, urls[m], task="va", reliability_url=rel, person=person)
        failed = set(report.extraction[m]["failed"])
        for hv in vids:
            if hv.video_id in failed:  # never use a stale group of an earlier run
                hv.features = {}
        out[m] = vids
    return out


# --------------------------------------------------------------------------- expression


def expr_model_name(layout: Layout) -> str | None:
    """The EXPR model to add probabilities from: the best in metrics/expr_summary.json, else the
    gated_moe EXPR fusion; None when it was not trained."""
    from heads.registry import by_model_name, model_names

    name = "expr_fusion_gated_moe"
    summary = layout.metrics / "expr_summary.json"
    if summary.exists():
        name = json.loads(summary.read_text()).get("best", {}).get("model", name)
    if name not in model_names("expr"):
        return None
    s = by_model_name(name)
    return name if (layout.model_dir(s.kind, s.name) / "model.pt").exists() else None


def expr_probabilities(params: Params, layout: Layout, records: list[Video], urls: dict[str, str],
                       report: PredictReport, person: int = 0) -> dict[str, dict]:
    """{video_id: {p_<class>: [F]}} from the EXPR model, or {} when there is none or its inputs were
    not extracted (the VA prediction never waits on, or fails for, the expression model)."""
    from pipeline.labels import EXPR_CLASSES

    name = expr_model_name(layout)
    if name is None:
        return {}
    predictor = load_trained(params, layout, name)
    needed = stores_needed(predictor)
    if any(m not in urls for m in needed):
        log.info("predict: no expression probabilities: %s reads %s, not all extracted for the chosen model",
                 name, ", ".join(needed))
        return {}
    probs = _guarded(name, predictor.probabilities, head_videos(records, urls, predictor.modalities, report, person))
    nan = float("nan")
    return {vid: {f"p_{c.lower()}": [float(x) if ok else nan for x, ok in zip(p[:, i], valid)]
                  for i, c in enumerate(EXPR_CLASSES)} for vid, (p, valid) in probs.items()}


def with_columns(cols: dict, extra: dict | None) -> dict:
    """`cols` with the `extra` columns inserted before the gate weights (which stay last)."""
    if not extra:
        return cols
    gates = {k: v for k, v in cols.items() if k.startswith("gate_")}
    return {**{k: v for k, v in cols.items() if k not in gates}, **extra, **gates}


# --------------------------------------------------------------------------- outputs


FRAME_COLUMNS = ("time", "face_found", "face_x0", "face_y0", "face_x1", "face_y1", "mouth_open", "vad")


def frame_columns(video: Video, urls: dict[str, str], report: PredictReport | None = None,
                  person: int = 0) -> dict[str, np.ndarray]:
    """Per decoded frame, for `person`: `time` (the frame's presentation time, s), `face_found`
    (1/0), the face box `face_x0..face_y1` (pixels of the upright source frame; NaN = no face, or
    crops without a box), `mouth_open` (1/0: the published open-mouth rule on this person's mouth;
    NaN without a face or a reliability store) and `vad` (voice activity 0..1 at the frame's time,
    the video's; NaN without audio).

    Sources (only stores the model already reads, so no extra extraction): the face store (found =
    a valid row, box = its `box` array), else the reliability store's `face`; `vad` from the
    reliability store's audio rows (linear between row centres), else the audio store's `vad`
    column. A store the model does not read, or one that failed for this video, gives empty cells.
    """
    from heads.data import person_group
    from pipeline.labels import rows_to_frames

    n = int(video.num_frames)
    t0, _ = video.frame_grid(n)
    failed = {f["stage"] for f in (report.failed if report else []) if f["video_id"] == video.video_id}
    groups = {m: person_group(_group(urls[m], video.video_id), person) for m in ("face", "reliability", "audio")
              if m in urls and f"extract {m}" not in failed}
    groups = {m: g for m, g in groups.items() if g is not None}
    found = np.full(n, np.nan)
    box = np.full((n, 4), np.nan)
    if "face" in groups or "reliability" in groups:
        g = groups.get("face", groups.get("reliability"))
        idx, ok = rows_to_frames(g["t0"], g["t1"], None, n, video.fps, t0)
        col = np.asarray(g["valid"] if "face" in groups else np.asarray(g["face"]) > 0.5, bool)
        found = np.where(ok, col[np.clip(idx, 0, None)], False).astype(np.float64)
        if "face" in groups and "box" in g:
            b = np.asarray(g["box"], np.float64)
            box[ok] = b[idx[ok]]
    mouth = np.full(n, np.nan)
    rel = groups.get("reliability")
    if rel is not None and "mouth_open" in rel and len(rel["t0"]):
        idx, ok = rows_to_frames(rel["t0"], rel["t1"], None, n, video.fps, t0)
        has_face = np.asarray(rel["face"]) > 0.5
        ok &= has_face[np.clip(idx, 0, None)]
        mouth[ok] = np.asarray(rel["mouth_open"], np.float64)[idx[ok]]
    vad = np.full(n, np.nan)
    if rel is not None and "vad" in rel and len(rel["vad"]):
        vad = _interp_rows(t0, rel["vad"], rel["vad_t0"], rel["vad_t1"])
    elif "audio" in groups and "vad" in groups["audio"] and len(groups["audio"]["vad"]):
        a = groups["audio"]
        vad = _interp_rows(t0, a["vad"], a["t0"], a["t1"])
    cols = {"time": t0, "face_found": found}
    for k, name in enumerate(("face_x0", "face_y0", "face_x1", "face_y1")):
        cols[name] = box[:, k]
    cols["mouth_open"] = mouth
    cols["vad"] = vad
    return cols


def _group(url: str, video_id: str) -> dict | None:
    from pipeline.store import FeatureStore

    store = FeatureStore.open(url)
    return store.read_many([video_id]).get(video_id) if video_id in set(store.video_ids()) else None


def _interp_rows(t: np.ndarray, values, t0, t1) -> np.ndarray:
    """`values` on rows [t0, t1) read at times `t`: linear between row centres, NaN outside the rows."""
    v = np.asarray(values, np.float64)
    c = (np.asarray(t0, np.float64) + np.asarray(t1, np.float64)) / 2
    out = np.interp(t, c, v)
    out[(t < float(np.min(t0))) | (t >= float(np.max(t1)))] = np.nan
    return out


def person_table(prediction: "VideoPrediction", frame_cols: dict[str, np.ndarray] | None = None,
                 extra: dict | None = None) -> dict[str, np.ndarray]:
    """One person's CSV columns, one row per decoded frame: `frame_cols` (`frame_columns`; their
    `time` replaces the nominal one) follow `valence`/`arousal`; `extra` columns (EXPR
    probabilities) go before the gate weights."""
    cols = prediction.columns()
    if frame_cols:
        n = len(cols["frame"])
        per_frame = {k: np.asarray(v)[:n] for k, v in frame_cols.items()}
        head = {"frame": cols["frame"], "time": per_frame.pop("time", cols["time"]),
                "valence": cols["valence"], "arousal": cols["arousal"]}
        cols = {**head, **per_frame, **{k: v for k, v in cols.items() if k not in head}}
    return with_columns(cols, extra)


def write_outputs(video: Video, persons: dict[int, tuple], out: Path) -> dict:
    """`<out>/<id>.csv` (one row per decoded frame and person: `frame`, `time`, `person`, ...) and
    `<out>/<id>.png`; returns their paths. `persons`: {person: (VideoPrediction, frame columns,
    EXPR columns or None)}, see `person_table`."""
    from pipeline.persons import by_frame

    out.mkdir(parents=True, exist_ok=True)
    tables = {p: person_table(*persons[p]) for p in sorted(persons)}
    cols = by_frame(tables, after="time")
    first = persons[min(persons)][0]
    csv_path, png_path = out / f"{video.video_id}.csv", out / f"{video.video_id}.png"
    write_csv(csv_path, cols)
    plot(png_path, tables, first.model, list(first.per_model), video)
    missing = int(sum(1 for x in cols["valence"] if math.isnan(x)))
    if missing:
        log.warning("predict: %s: %d of %d rows (%d frames x %d person(s)) have no prediction (no usable input; "
                    "empty cells in %s)", video.video_id, missing, len(cols["valence"]), video.num_frames,
                    len(tables), csv_path)
    return {"file": video.media_path, "csv": str(csv_path), "png": str(png_path), "frames": video.num_frames,
            "persons": len(tables), "frames_without_prediction": missing}


def write_csv(path: Path, cols: dict) -> None:
    """Plain CSV, 6 decimals; NaN (no prediction) as an empty cell."""
    from pipeline.files import atomic_output

    names = list(cols)
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for row in zip(*(cols[n] for n in names)):
            w.writerow([_cell(n, x) for n, x in zip(names, row)])


def _cell(name: str, x) -> str:
    if name in ("frame", "person"):
        return str(int(x))
    if name in ("face_found", "mouth_open"):
        return "" if math.isnan(float(x)) else str(int(x))
    x = float(x)
    return "" if math.isnan(x) else f"{x:.6f}"


def plot(path: Path, tables: dict[int, dict], model: str, heads: list[str], video: Video) -> None:
    """Valence and arousal over time: one person: one thin line per head, the selected model bold;
    several persons: the selected model, one line per person."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    several = len(tables) > 1
    for ax, dim in zip(axes, ("valence", "arousal")):
        for p, cols in tables.items():
            t = cols["time"]
            if several:
                ax.plot(t, cols[dim], lw=1.8, label=f"person {p}")
                continue
            for h in heads:
                if h != model:
                    ax.plot(t, cols[f"{h}_{dim}"], lw=1, alpha=0.7, label=h)
            ax.plot(t, cols[dim], lw=2.5, color="black", label=model)
        ax.set_ylabel(dim)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=(len(tables) if several else len(heads) + 1))
    who = f", {len(tables)} persons" if several else ""
    axes[0].set_title(f"{video.video_id} ({Path(video.media_path).name}, {video.fps:.3g} fps{who}) - {model}")
    axes[1].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
