"""A static, self-contained HTML report: the metrics table, predicted-vs-true scatter, training
curves and per-video trace plots.

Self-contained (inline PNG as data: URIs, inline CSS, no JavaScript) so the file can be mailed,
archived by DVC, or opened on an offline machine; the layout holds from a phone-wide window up
(images scale, tables scroll sideways). Plots show, per video and over its real time in seconds,
the true valence/arousal, every model's prediction (unimodal heads thin, fusion thick) and, one
captioned plot per fusion, the gate weights, which is the quickest way to see *when* fusion
trusts which modality. Legends sit beside the axes, never over the data. When EXPR models were
evaluated, an Expression section adds their table (beside the majority-class baseline) and one
confusion matrix per model.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.evaluate import Labels, aligned_predictions, outputs_url, trace_videos
from pipeline.export import predictions_from_store
from pipeline.labels import EXPR_CLASSES


@dataclass
class ReportConfig:
    """Report content: how many videos get plots, plot size and downsampling.

    `scatter_points`: the most frames a predicted-vs-true panel draws (evenly spaced over the
    scored frames, so the same run always shows the same points); its CCC uses every frame.
    """

    title: str = "affcache — valence/arousal report"
    videos: int = 3
    max_points: int = 3000
    dpi: int = 80
    width_in: float = 11.0
    scatter_points: int = 4000


# Fixed margins (inches) for every time-axis figure, so a video's trace and gate plots share one
# x extent on the page, and legends sit in the right margin instead of over the data.
_LEFT_IN, _RIGHT_IN, _TOP_IN, _BOTTOM_IN = 0.8, 2.1, 0.35, 0.5


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, tight: bool = True) -> str:
    """The figure as base64 PNG, closed. `tight=False` keeps the fixed margins (aligned figures)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight" if tight else None)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fixed_margins(fig, width_in: float, height_in: float) -> None:
    fig.subplots_adjust(left=_LEFT_IN / width_in, right=1 - _RIGHT_IN / width_in,
                        bottom=_BOTTOM_IN / height_in, top=1 - _TOP_IN / height_in)


def _legend_outside(ax, **kw) -> None:
    """The legend in the figure's right margin, beside the axes: it never covers a curve."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, **kw)


def trace_x(n: int, frame_times: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(x values of a video's `n` label frames, axis label): the frames' presentation times in
    seconds (`Video.frame_grid`, so a variable frame rate is drawn as it played), or the frame
    index when the times are unknown (a report built without the index)."""
    if frame_times is None:
        return np.arange(n, dtype=np.float64), "frame"
    t = np.asarray(frame_times, np.float64)
    if len(t) < n:
        raise ValueError(f"trace_x: {len(t)} frame times for {n} label frames")
    return t[:n], "time (s)"


def _shown(n: int, cfg: ReportConfig) -> np.ndarray:
    """Indices of the frames a time plot draws: every k-th, at most `cfg.max_points`."""
    return np.arange(0, n, max(1, int(np.ceil(n / max(cfg.max_points, 1)))))


def trace_figure(vid: str, labels: tuple[np.ndarray, np.ndarray], preds: Mapping[str, np.ndarray],
                 fused: set[str], t: np.ndarray, xlabel: str, cfg: ReportConfig) -> str:
    """One video's valence and arousal over time, truth and every model (fusions thick), as base64 PNG."""
    plt = _pyplot()
    values, valid = labels
    idx = _shown(len(values), cfg)
    h = 4.6
    fig, axes = plt.subplots(2, 1, figsize=(cfg.width_in, h), dpi=cfg.dpi, sharex=True)
    for d, (ax, dim) in enumerate(zip(axes, ("valence", "arousal"))):
        ax.plot(t[idx], np.where(valid, values[:, d], np.nan)[idx], color="black", lw=2.0, label="truth")
        for name, p in preds.items():
            thick = name in fused or name.startswith("fusion")
            ax.plot(t[idx], p[idx, d], lw=1.8 if thick else 0.9, alpha=1.0 if thick else 0.75, label=name)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(dim)
        ax.grid(alpha=0.3)
    axes[0].set_title(vid, fontsize=10)
    _legend_outside(axes[0], fontsize=7)
    axes[-1].set_xlabel(xlabel)
    _fixed_margins(fig, cfg.width_in, h)
    return _png(fig, tight=False)


def gate_figure(model: str, names: Sequence[str], gates: np.ndarray, audio_mask: np.ndarray | None,
                t: np.ndarray, xlabel: str, cfg: ReportConfig) -> str:
    """One fusion's gate weights over one video's time axis (stacked), as base64 PNG; `t` covers
    the video's label frames, the gates as many of them as the store holds."""
    plt = _pyplot()
    n = min(len(t), len(gates))
    idx = _shown(n, cfg)
    h = 1.9
    fig, ax = plt.subplots(1, 1, figsize=(cfg.width_in, h), dpi=cfg.dpi)
    g = gates[idx]
    ax.stackplot(t[idx], g.T, labels=list(names) or [f"e{i}" for i in range(g.shape[1])], alpha=0.85)
    if audio_mask is not None:
        m = np.asarray(audio_mask)[idx[idx < len(audio_mask)]]
        ax.plot(t[idx][: len(m)], m, "k--", lw=1.0, label="audio masked")
    ax.set_ylim(0, 1)
    ax.set_xlim(t[0] if len(t) else 0, t[-1] if len(t) else 1)
    ax.set_ylabel("gate weight", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(f"gates of {model}", fontsize=9)
    _legend_outside(ax, fontsize=7)
    _fixed_margins(fig, cfg.width_in, h)
    return _png(fig, tight=False)


def gate_caption(model: str, names: Sequence[str], has_audio_mask: bool) -> str:
    """What a gate plot shows, in words (HTML-escaped): which gates, what 0 and 1 mean, which modality."""
    names = list(names)
    quoted = ", ".join(f"<code>{html.escape(n)}</code>" for n in names) or "unnamed"
    if len(names) == 1:
        target = names[0].split("<-")[0]
        src = f" attending to {html.escape(names[0].split('<-')[1])}" if "<-" in names[0] else ""
        text = (f"Gate of <b>{html.escape(model)}</b>: its single expert ({quoted}: {html.escape(target)} frames"
                f"{src}) has weight 1 wherever the {html.escape(target)} stream has a frame and 0 where it has "
                f"none, so the band shows where this fusion had its input.")
    else:
        parts = []
        if any("<-" in n for n in names):
            parts.append("<code>t&lt;-s</code> is the expert in which modality t's frames attend to modality s's")
        if any("<-" not in n for n in names):
            parts.append("a plain modality name is that modality's own stream")
        text = (f"Gates of <b>{html.escape(model)}</b> ({quoted}; " + "; ".join(parts) + "): the per-frame share "
                "each input gets in the fused prediction, stacked. The shares sum to 1 where any input is "
                "available; a band is 0 where its modality has no frame (no face found, no speech), and all "
                "are 0 where none has.")
    if has_audio_mask:
        text += (" Dashed: the share of the windows covering the frame whose audio the reliability filter "
                 "masked (1 = audio ignored there, 0 = audio used).")
    return text


def scatter_figure(model: str, preds: Mapping[str, np.ndarray], labels: Labels, cfg: ReportConfig) -> tuple[str, str]:
    """Predicted vs true valence and arousal of one model on the scored split's validly labelled
    frames (predictions as scored: unpredicted frames filled), identity line, CCC (over every such
    frame) in the titles. Returns (base64 PNG, caption HTML); at most `cfg.scatter_points` frames
    are drawn, evenly spaced in video order, so the picture is the same on every run."""
    from pipeline.metrics import va_score

    plt = _pyplot()
    vids = list(labels)
    true = np.concatenate([labels[v][0] for v in vids]).reshape(-1, 2)
    pred = np.concatenate([preds[v] for v in vids]).reshape(-1, 2)
    ok = np.concatenate([labels[v][1] for v in vids]) & np.isfinite(pred).all(1) & (true > -5 + 1e-6).all(1)
    s = va_score(pred, true, ok)
    true, pred = true[ok], pred[ok]
    total = len(true)
    if total > cfg.scatter_points > 0:
        keep = np.unique(np.linspace(0, total - 1, cfg.scatter_points).round().astype(np.int64))
        true, pred = true[keep], pred[keep]
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.6), dpi=cfg.dpi)
    for d, (ax, dim) in enumerate(zip(axes, ("valence", "arousal"))):
        ax.scatter(true[:, d], pred[:, d], s=3, alpha=0.35, linewidths=0, color="tab:blue")
        ax.plot([-1, 1], [-1, 1], color="grey", ls="--", lw=1.0)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
        ax.set_xlabel(f"true {dim}", fontsize=8)
        ax.set_ylabel(f"predicted {dim}", fontsize=8)
        ax.set_title(f"{model}: {dim}, CCC {s['ccc_' + dim]:.3f}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    shown = (f"{len(true)} of {total} frames drawn (evenly spaced in video order)" if len(true) < total
             else f"all {total} frames drawn")
    caption = (f"<b>{html.escape(model)}</b>: predicted against true on the validly labelled frames of the "
               f"scored split; dashed: the identity (a perfect model). CCC over all {total} frames; {shown}.")
    return _png(fig), caption


def training_curves(models: Mapping[str, str | Path], cfg: ReportConfig) -> tuple[str, str] | None:
    """Validation CCC (valence, arousal, mean) per epoch of every model with a history.json, as
    (base64 PNG, caption HTML); None when no model has one. Each curve is `val_abaw_ccc_*`, the
    model scored the way its headline metric is; a history written before those columns falls
    back to the selection score `val_ccc_*` (its name then carries a *). A dot marks the epoch kept."""
    from pipeline.evaluate import read_history

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    hists = {n: read_history(m) for n, m in models.items()}
    hists = {n: h for n, h in hists.items() if h}
    if not hists:
        return None
    h_in = 3.0
    fig, axes = plt.subplots(1, 3, figsize=(cfg.width_in, h_in), dpi=cfg.dpi, sharey=True)
    fallback = False
    for name, hist in hists.items():
        abaw = any("val_abaw_ccc_mean" in r for r in hist)
        fallback |= not abaw
        kept = _kept_epoch(models[name])
        for ax, dim in zip(axes, ("valence", "arousal", "mean")):
            key = f"val_abaw_ccc_{dim}" if abaw else f"val_ccc_{dim}"
            ep = [r["epoch"] for r in hist if r.get(key) is not None]
            val = [r[key] for r in hist if r.get(key) is not None]
            if not ep:
                continue
            (line,) = ax.plot(ep, val, lw=1.4, label=name if abaw else f"{name} *")
            if kept in ep:
                ax.plot([kept], [val[ep.index(kept)]], "o", color=line.get_color(), ms=5)
    for ax, dim in zip(axes, ("valence", "arousal", "mean")):
        ax.set_title(f"validation CCC {dim}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CCC")
    _legend_outside(axes[-1], fontsize=7)
    fig.tight_layout()
    caption = ("Validation CCC after each training epoch, scored as the headline metric "
               "(<code>val_abaw_ccc_*</code>: every validly labelled frame, unpredicted frames filled); a dot "
               "marks the epoch each model kept.")
    if fallback:
        caption += " * history written before <code>val_abaw_*</code>: the selection score <code>val_ccc_*</code>."
    return _png(fig), caption


def _kept_epoch(model: str | Path) -> int | None:
    """The epoch a model kept (its metrics.json `best_epoch`), None when unknown."""
    from pipeline.evaluate import model_file

    try:
        return json.loads(model_file(model, "metrics.json").read_text()).get("best_epoch")
    except (OSError, ValueError):
        return None


def _figure(png: str, alt: str, caption: str = "", cls: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    c = f' class="{cls}"' if cls else ""
    return f'<figure{c}><img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">{cap}</figure>'


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
    plt = _pyplot()
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
    return _png(fig)


def expr_section(summary: Mapping, confusion: Mapping[str, np.ndarray], cfg: "ReportConfig") -> str:
    """The report's Expression section: the table and the confusion matrices."""
    png = confusion_figure(confusion, cfg) if confusion else ""
    img = _figure(png, "confusion matrices", "Row-normalised: each row (actual class) sums to 1; columns: the "
                                              "predicted class.") if png else ""
    return ("<h2>Expression (EXPR)</h2><p>Validation, macro F1 over the 8 classes (current ABAW), accuracy, "
            "and the first ABAW's 0.67·F1 + 0.33·accuracy over the 7 basic classes; beside a predictor that "
            f"always answers the train split's majority class.</p><div class='scroll'>{expr_html(summary)}</div>{img}")


_CSS = """body{font-family:sans-serif;margin:2em auto;padding:0 1.5em;max-width:1200px}
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left;white-space:normal}tr.best{background:#eef6ee}
.scroll{overflow-x:auto;max-width:100%}img{max-width:100%;height:auto;border:1px solid #ddd}
figure{margin:0.6em 0 1.2em 0}figcaption{font-size:0.9em;color:#333;max-width:60em}
.grid{display:flex;flex-wrap:wrap;gap:0 1.5em}.grid figure{flex:0 1 500px;min-width:0}
@media (max-width:640px){body{padding:0 0.5em;margin:0.5em auto}td,th{padding:3px 5px}}"""


def build_report(summary: Mapping, models: Mapping[str, str | Path], labels: Labels, out_path: str | Path,
                 cfg: ReportConfig | None = None, video_ids: Sequence[str] | None = None,
                 expr_summary: Mapping | None = None, confusion: Mapping[str, np.ndarray] | None = None,
                 late_fusion: Mapping | None = None, coverage: Mapping | None = None,
                 run_info: Mapping[str, str] | None = None,
                 frame_times: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write the HTML report; returns its path.

    `summary` is `pipeline.evaluate.evaluate`'s result, `models` {name: model dir or outputs.zarr},
    `labels` the validation labels. Plotted videos: `video_ids` or the `cfg.videos` longest.
    `expr_summary` (`pipeline.evaluate.evaluate_expr`'s result) and `confusion` ({model: [8, 8]
    counts}) add the Expression section; `late_fusion` (metrics/late_fusion.json) its table row,
    `coverage` (metrics/coverage.json: the scored split's shares) a line on what the modalities could see, and
    `run_info` ({label: value}: git revision, params hash) the run's identity. `frame_times`
    ({video: its label frames' times, `Video.frame_grid(n)[0]`}) puts the time plots on seconds;
    a video without them is drawn over frame numbers.
    """
    cfg = cfg or ReportConfig()
    frame_times = frame_times or {}
    vids = list(video_ids) if video_ids is not None else trace_videos(labels, cfg.videos)
    # every labelled video once: the plotted ones, the per-video spread and the scatter read the same predictions
    aligned = {n: aligned_predictions(predictions_from_store(outputs_url(m), list(labels)), labels)
               for n, m in models.items()}
    gated = {n: _gates(outputs_url(m), vids) for n, m in models.items()}
    sections = []
    for vid in vids:
        gates = {n: (names, g[vid], masks.get(vid)) for n, (names, g, masks) in gated.items()
                 if vid in g and g[vid].ndim == 2 and g[vid].shape[1] > 0}
        t, xlabel = trace_x(len(labels[vid][0]), frame_times.get(vid))
        png = trace_figure(vid, labels[vid], {n: aligned[n][vid] for n in models}, set(gates), t, xlabel, cfg)
        parts = [f"<h3>{html.escape(vid)}</h3>",
                 _figure(png, vid, "Valence and arousal over the video: truth (black, gaps where the label is "
                                   "invalid) and every model's prediction as scored (fusions thick).")]
        for name, (gnames, g, mask) in gates.items():
            parts.append(_figure(gate_figure(name, gnames, g, mask, t, xlabel, cfg), f"gates of {name} on {vid}",
                                 gate_caption(name, gnames, mask is not None), "gates"))
        sections.append("".join(parts))
    scatter = []
    if labels:
        for name in models:
            try:
                png, cap = scatter_figure(name, aligned[name], labels, cfg)
            except ValueError:  # no validly labelled frame this model predicted
                continue
            scatter.append(_figure(png, f"{name}: predicted vs true", cap, "scatter"))
    curves = training_curves(models, cfg)
    best = summary.get("best", {})
    spread = per_video_ccc(aligned, labels)
    seen = (f"<p>Coverage of the scored frames: face found {coverage['face_found']:.0%}, inside speech "
            f"{coverage['speech']:.0%} ({coverage['labelled_frames']} labelled frames).</p>") if coverage else ""
    meta = ("<p class='meta'>" + " · ".join(f"{html.escape(k)}: <code>{html.escape(str(v))}</code>"
                                          for k, v in run_info.items()) + "</p>") if run_info else ""
    curve_html = (f"<h2>Training curves</h2>{_figure(curves[0], 'training curves', curves[1], 'curves')}"
                  if curves else "")
    scatter_html = f"<h2>Predicted vs true</h2><div class='grid'>{''.join(scatter)}</div>" if scatter else ""
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
           f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(cfg.title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(cfg.title)}</h1>"
           f"<p>Validation, ABAW metric (CCC over all frames concatenated; invalid labels excluded). "
           f"Best: <b>{html.escape(str(best.get('model', '-')))}</b>.</p>{meta}"
           f"<div class='scroll'>{metrics_html(summary, spread, late_fusion)}</div>{seen}"
           f"{scatter_html}{curve_html}"
           f"{expr_section(expr_summary, confusion or {}, cfg) if expr_summary else ''}"
           f"<h2>Per-video traces</h2>{''.join(sections)}</body></html>\n")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    return out
