"""A static, self-contained HTML report: the metrics table and per-video trace plots.

Self-contained (inline PNG as data: URIs, inline CSS, no JavaScript) so the file can be mailed,
archived by DVC, or opened on an offline machine. Plots show, per video, the true valence/arousal,
every model's prediction (unimodal heads thin, fusion thick) and the fusion gate weights over time,
which is the quickest way to see *when* fusion trusts which modality. When EXPR models were
evaluated, an Expression section adds their table (beside the majority-class baseline) and one
confusion matrix per model.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.evaluate import Labels, aligned_predictions, outputs_url, trace_videos
from pipeline.export import predictions_from_store
from pipeline.labels import EXPR_CLASSES


@dataclass
class ReportConfig:
    """Report content: how many videos get plots, plot size and downsampling."""

    title: str = "affcache — valence/arousal report"
    videos: int = 3
    max_points: int = 3000
    dpi: int = 80
    width_in: float = 11.0


def _gates(url: str, video_ids: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(gate names, {video: gates [F, E]}, {video: audio_mask [F]}) -- empty where the store lacks them."""
    from pipeline.store import FeatureStore, StoreError

    store = FeatureStore.open(url)
    names = list(store.attrs.get("gate_names", []))
    gates, masks = {}, {}
    for vid in video_ids:
        for name, into in (("gates", gates), ("audio_mask", masks)):
            try:
                into[vid] = np.asarray(store.read_video(vid, [name])[name], np.float32)
            except StoreError:
                continue
    return names, gates, masks


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def video_figure(vid: str, labels: tuple[np.ndarray, np.ndarray], preds: Mapping[str, np.ndarray],
                 gates: Mapping[str, tuple[list[str], np.ndarray, np.ndarray | None]], cfg: ReportConfig) -> str:
    """One video's figure as base64 PNG: valence, arousal, then one gate panel per gated model.

    A model that masks its audio (RAAV) also gets the masked share drawn as a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values, valid = labels
    n = len(values)
    step = max(1, int(np.ceil(n / cfg.max_points)))
    x = np.arange(0, n, step)
    rows = 2 + len(gates)
    fig, axes = plt.subplots(rows, 1, figsize=(cfg.width_in, 2.2 * rows), dpi=cfg.dpi, sharex=True, squeeze=False)
    axes = axes[:, 0]
    for d, (ax, dim) in enumerate(zip(axes[:2], ("valence", "arousal"))):
        truth = np.where(valid, values[:, d], np.nan)[x]
        ax.plot(x, truth, color="black", lw=2.0, label="truth")
        for name, p in preds.items():
            fused = name in gates or name.startswith("fusion")
            ax.plot(x, p[x, d], lw=1.8 if fused else 0.9, alpha=1.0 if fused else 0.75, label=name)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(dim)
        ax.grid(alpha=0.3)
    axes[0].set_title(vid)
    axes[0].legend(loc="upper right", fontsize=7, ncol=min(4, len(preds) + 1))
    for ax, (name, (gnames, g, audio_mask)) in zip(axes[2:], gates.items()):
        g = g[x]
        ax.stackplot(x, g.T, labels=gnames or [f"e{i}" for i in range(g.shape[1])], alpha=0.85)
        if audio_mask is not None:
            ax.plot(x, audio_mask[x], "k--", lw=1.0, label="audio masked")
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"gates\n{name}", fontsize=8)
        ax.legend(loc="upper right", fontsize=6, ncol=min(5, g.shape[1]))
    axes[-1].set_xlabel("frame")
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def per_video_ccc(aligned: Mapping[str, Mapping[str, np.ndarray]], labels: Labels) -> dict[str, np.ndarray]:
    """{model: CCC mean per labelled video} (videos with fewer than two valid frames left out)."""
    from pipeline.metrics import va_score

    out = {}
    for name, preds in aligned.items():
        vals = []
        for vid, (values, valid) in labels.items():
            ok = valid & np.isfinite(preds[vid]).all(1)
            if ok.sum() >= 2:
                vals.append(va_score([preds[vid]], [values], [ok])["ccc_mean"])
        out[name] = np.asarray(vals, np.float64)
    return out


def metrics_html(summary: Mapping, per_video: Mapping[str, np.ndarray] | None = None,
                 late_fusion: Mapping | None = None) -> str:
    """The metrics table (best model bold): CCC over all frames, and the spread over videos (mean ±
    std, min of the per-video CCC); the late-fusion row last when it ran."""
    best = summary.get("best", {}).get("model")
    names = sorted((n for n in summary if n != "best"), key=lambda n: -summary[n]["ccc_mean"])
    per_video = per_video or {}
    rows = []
    for n in names:
        m = summary[n]
        cells = [html.escape(n)] + [f"{m[k]:.4f}" for k in ("ccc_valence", "ccc_arousal", "ccc_mean")]
        v = per_video.get(n, np.zeros(0))
        cells += [f"{v.mean():.3f} ± {v.std():.3f}" if len(v) else "-", f"{v.min():.3f}" if len(v) else "-",
                  f"{m.get('coverage', 1.0):.0%}"]
        if n == best:
            cells = [f"<b>{c}</b>" for c in cells]
        cls = ' class="best"' if n == best else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if late_fusion and late_fusion.get("enabled"):
        c = late_fusion.get("ccc", {})
        cells = ["<i>late fusion</i> (weights searched on validation)"] + [
            f"{c[k]:.4f}" if k in c else "-" for k in ("valence", "arousal", "mean")] + ["-", "-", "-"]
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    head = ("<tr><th>model</th><th>CCC valence</th><th>CCC arousal</th><th>CCC mean</th>"
            "<th>per video: mean ± std</th><th>per video: min</th><th>frames scored</th></tr>")
    return f'<table id="metrics">{head}{"".join(rows)}</table>'


def expr_html(summary: Mapping) -> str:
    """The EXPR table: models by macro F1, then the majority-class baseline (italic); best bold."""
    best = summary.get("best", {}).get("model")
    names = sorted((n for n in summary if n not in ("best", "majority_baseline")), key=lambda n: -summary[n]["f1"])
    rows = []
    for n in names + ["majority_baseline"]:
        m = summary[n]
        label = n if n != "majority_baseline" else f"majority class ({m.get('class', '?')})"
        cells = [html.escape(label)] + [f"{m[k]:.4f}" if k in m else "-" for k in ("f1", "accuracy", "abaw1_score")]
        if n == best:
            cells = [f"<b>{c}</b>" for c in cells]
        elif n == "majority_baseline":
            cells = [f"<i>{c}</i>" for c in cells]
        cls = ' class="best"' if n == best else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "<tr><th>model</th><th>macro F1 (8)</th><th>accuracy</th><th>0.67 F1 + 0.33 acc (7)</th></tr>"
    return f'<table id="expr">{head}{"".join(rows)}</table>'


def confusion_figure(matrices: Mapping[str, np.ndarray], cfg: "ReportConfig") -> str:
    """Row-normalised confusion matrices (rows: actual, columns: predicted), one panel per model, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(matrices)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), dpi=cfg.dpi, squeeze=False)
    short = [c[:3] for c in EXPR_CLASSES]
    for ax, (name, m) in zip(axes.flat, matrices.items()):
        rate = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(rate, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(len(short)), short, rotation=90, fontsize=7)
        ax.set_yticks(range(len(short)), short, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("actual", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def expr_section(summary: Mapping, confusion: Mapping[str, np.ndarray], cfg: "ReportConfig") -> str:
    """The report's Expression section: the table and the confusion matrices."""
    png = confusion_figure(confusion, cfg) if confusion else ""
    img = f'<img alt="confusion matrices" src="data:image/png;base64,{png}">' if png else ""
    return ("<h2>Expression (EXPR)</h2><p>Validation, macro F1 over the 8 classes (current ABAW), accuracy, "
            "and the first ABAW's 0.67·F1 + 0.33·accuracy over the 7 basic classes; beside a predictor that "
            f"always answers the train split's majority class.</p>{expr_html(summary)}{img}")


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.best{background:#eef6ee}img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}"""


def build_report(summary: Mapping, models: Mapping[str, str | Path], labels: Labels, out_path: str | Path,
                 cfg: ReportConfig | None = None, video_ids: Sequence[str] | None = None,
                 expr_summary: Mapping | None = None, confusion: Mapping[str, np.ndarray] | None = None,
                 late_fusion: Mapping | None = None, coverage: Mapping | None = None,
                 run_info: Mapping[str, str] | None = None) -> Path:
    """Write the HTML report; returns its path.

    `summary` is `pipeline.evaluate.evaluate`'s result, `models` {name: model dir or outputs.zarr},
    `labels` the validation labels. Plotted videos: `video_ids` or the `cfg.videos` longest.
    `expr_summary` (`pipeline.evaluate.evaluate_expr`'s result) and `confusion` ({model: [8, 8]
    counts}) add the Expression section; `late_fusion` (metrics/late_fusion.json) its table row,
    `coverage` (metrics/coverage.json's split entry) a line on what the modalities could see, and
    `run_info` ({label: value}: git revision, params hash) the run's identity.
    """
    cfg = cfg or ReportConfig()
    vids = list(video_ids) if video_ids is not None else trace_videos(labels, cfg.videos)
    # every labelled video once: the plotted ones and the per-video spread read the same predictions
    aligned = {n: aligned_predictions(predictions_from_store(outputs_url(m), list(labels)), labels)
               for n, m in models.items()}
    gated = {n: _gates(outputs_url(m), vids) for n, m in models.items()}
    sections = []
    for vid in vids:
        gates = {n: (names, g[vid], masks.get(vid)) for n, (names, g, masks) in gated.items()
                 if vid in g and g[vid].shape[1] > 0}
        png = video_figure(vid, labels[vid], {n: aligned[n][vid] for n in models}, gates, cfg)
        sections.append(f'<h3>{html.escape(vid)}</h3><img alt="{html.escape(vid)}" src="data:image/png;base64,{png}">')
    best = summary.get("best", {})
    spread = per_video_ccc(aligned, labels)
    seen = (f"<p>Coverage of the scored frames: face found {coverage['face_found']:.0%}, inside speech "
            f"{coverage['speech']:.0%} ({coverage['labelled_frames']} labelled frames).</p>") if coverage else ""
    meta = ("<p class='meta'>" + " · ".join(f"{html.escape(k)}: <code>{html.escape(str(v))}</code>"
                                          for k, v in run_info.items()) + "</p>") if run_info else ""
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(cfg.title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(cfg.title)}</h1>"
           f"<p>Validation, ABAW metric (CCC over all frames concatenated; invalid labels excluded). "
           f"Best: <b>{html.escape(str(best.get('model', '-')))}</b>.</p>{meta}"
           f"{metrics_html(summary, spread, late_fusion)}{seen}"
           f"{expr_section(expr_summary, confusion or {}, cfg) if expr_summary else ''}"
           f"<h2>Per-video traces</h2>{''.join(sections)}</body></html>\n")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    return out
