"""Which models a dataset can train: a model whose inputs the dataset has no media for is "not applicable".

Why: dvc.yaml has a train/fuse stage for every declared model, but a corpus may lack a modality
altogether (an audio-only corpus has no pictures, so no face, behavior or reliability rows). Such a
stage must not fail the whole `dvc repro`; it writes an explicit "not applicable" model instead,
and evaluation, the report, export and predict skip it. The rule reads the index and the
declarations, never the stores, so a store that is empty because an extraction failed or never ran
is still the error it was (the head's own "no video has a ... array").

The rule:
- `features/<modality>` applies when some indexed video has what the modality's extractor (params
  `extract.<modality>.extractor`, else its default) reads: pictures (`Video.has_video`) for one
  declared `video=True`, sound (`Video.has_audio`) for one declared `video=False`;
- `heads/<head>` applies when that head applies;
- a model applies when every input it requires applies; inputs it declares `optional`
  (`@register_model(..., optional=...)`, e.g. the audio head's reliability filter) do not count.
  So a fusion needs every head it fuses: with one of them not applicable, the fusion is not either;
- and when some indexed video has labels of its task (a corpus labelled for VA only trains no EXPR
  model). A label file the index lists but cannot read stays an error, as before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from affcache.stages import write_json

log = logging.getLogger(__name__)

MARKER = "not_applicable.json"  # in a model's folder: the model was not trained, and why


def modality_media(params: Any) -> dict[str, str]:
    """{modality: "pictures" | "sound"}: what the extractor the params choose for each modality reads,
    from its declaration (`@register(..., video=...)`). A modality whose extractor is not declared in
    this package (a project's own) is left out: the rule then never calls it not applicable."""
    from extractors.registry import declared_extractors, default_extractors

    declared = declared_extractors()
    defaults = default_extractors()
    out: dict[str, str] = {}
    for modality, default in defaults.items():
        name = (params.get(f"extract.{modality}.extractor") or default) if params is not None else default
        spec = declared.get(str(name))
        if spec is not None:
            out[modality] = "pictures" if spec.video else "sound"
    return out


def input_reason(inp: str, videos: Sequence, media: Mapping[str, str]) -> str | None:
    """Why input `inp` (`features/<m>` or `heads/<h>`) has nothing for any video of `videos`; None when it applies."""
    kind, _, name = inp.partition("/")
    if kind == "heads":
        from heads.registry import spec

        return reason_not_applicable(spec(name), videos, media)
    need = media.get(name)
    if need == "pictures" and not any(getattr(v, "has_video", True) for v in videos):
        return f"no video has pictures ({name} store empty)"
    if need == "sound" and not any(getattr(v, "has_audio", True) for v in videos):
        return f"no video has sound ({name} store empty)"
    return None


def reason_not_applicable(spec: Any, videos: Sequence, media: Mapping[str, str]) -> str | None:
    """Why registry model `spec` cannot be trained on `videos` (see the module's rule); None: it can."""
    for inp in spec.inputs:
        if inp in spec.optional:
            continue
        reason = input_reason(inp, videos, media)
        if reason:
            return f"{reason}: the {spec.name} {spec.kind} needs {inp}" if inp.startswith("features/") else \
                f"{reason}, and the {spec.name} {spec.kind} needs {inp}"
    return labels_reason(getattr(spec, "task", "va"), videos, f"the {spec.name} {spec.kind}")


def labels_reason(task: str, videos: Sequence, learner: str) -> str | None:
    """Why `learner` (e.g. "the face head") has nothing to learn: no video of `videos` has labels of `task`."""
    if videos and not any(task in (getattr(v, "labels", None) or {}) for v in videos):
        return f"no video has {task.upper()} labels: {learner} learns them"
    return None


def write_marker(out_dir: Path, name: str, reason: str) -> None:
    """Folder `out_dir` emptied down to the "not applicable" marker: no earlier run's output is left
    for a later stage to read by mistake."""
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    write_json(out_dir / MARKER, {"model": name, "not_applicable": reason})


def static_reason(modality: str, task: str, videos: Sequence, media: Mapping[str, str]) -> str | None:
    """Why a static encoder fine-tuning (stage `train_static_<name>`, writing weights for `modality`'s
    extractor) has nothing to learn from `videos`; None: it has. Same rule as a model's: the media its
    modality's extractor reads, and labels of its task."""
    reason = input_reason(f"features/{modality}", videos, media)
    if reason:
        return f"{reason}: the {modality} encoder fine-tunes on face crops"
    return labels_reason(task, videos, f"the {modality} encoder")


def write_not_applicable(out_dir: Path, metrics_path: Path, plot_path: Path, name: str, reason: str) -> dict:
    """The outputs of a model's stage that cannot train: its folder with only the marker (no earlier
    run's model left to evaluate), its metrics file with the cause and no score, an empty history
    plot (DVC draws nothing for it and reports no error). One warning says so."""
    write_marker(out_dir, name, reason)
    # the metrics file holds the cause only (`dvc metrics show` prints it in a column: kept short)
    write_json(metrics_path, {"not_applicable": reason.split(": ")[0].split(", and ")[0]})
    write_json(plot_path, [])
    log.warning("%s: not applicable, not trained: %s", name, reason)
    return {"not_applicable": reason}


def not_applicable(model_dir: Path) -> str | None:
    """The reason model folder `model_dir` holds a "not applicable" marker; None for a trained model."""
    import json

    marker = Path(model_dir) / MARKER
    if not marker.exists():
        return None
    return str(json.loads(marker.read_text()).get("not_applicable") or "not applicable")


def applicable_dirs(models: Mapping[str, Path]) -> dict[str, Path]:
    """`models` ({name: model folder}) without the not-applicable ones, each skipped with one log line."""
    out = {}
    for name, path in models.items():
        reason = not_applicable(path)
        if reason:
            log.info("skipping %s, not applicable: %s", name, reason)
        else:
            out[name] = path
    return out


def not_applicable_model(layout: Any, model_name: str) -> str | None:
    """The reason registry model `model_name` (its metrics / predict name) is not applicable in the
    project of `layout`; None when it is applicable, not trained yet, or not a registry model."""
    from heads.registry import by_model_name

    try:
        s = by_model_name(model_name)
    except ValueError:
        return None
    return not_applicable(layout.model_dir(s.kind, s.name))
