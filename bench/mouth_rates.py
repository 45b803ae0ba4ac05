"""How much audio the cross-modal filter keeps, per reliability store (one per mouth method).

For each reliability store given as `LABEL=URL` it prints, over the indexed videos:
- frames: face frames, and the share of them the published rule calls open (`mouth_open`);
- raav: the share of RAAV's 4 s / 2 s windows (videos with audio) whose audio tokens are masked,
  computed with RAAV's own windowing and `AudioFilter` (heads/fusion_raav.py, the params' config)
  over every split, i.e. the rate the demo's `mask_audio_splits` (all splits) sees;
- audio head: the share of the training windows the audio head keeps (`window_filter` of
  heads/audio_pooling.py, the params' config), and why the others go (no labels / mouth / face).
  The audio store is not read: every 1-s bin of a video with an audio track is taken to hold audio
  rows (true for the demo's and Aff-Wild2's tracks, which cover the video), so this is the filter's
  decision alone.

    PYTHONPATH=$PWD .venv/bin/python bench/mouth_rates.py --params params.yaml \
        dark-extent=data/features/reliability/reliability-03a4656a.zarr landmarks=/tmp/rel/reliability/...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def rates(params_path: str, url: str) -> dict:
    from heads.audio_pooling import AudioPoolingConfig, bin_targets, video_bins, window_filter
    from heads.data import frame_targets, load_head_videos, reliability_on_grid
    from heads.fusion_inputs import FusionVideo
    from heads.fusion_raav import RAAV, RAAVConfig
    from heads.fusion_windows import AudioFilter
    from heads.windows import frame_windows
    from pipeline.config import load_params
    from affcache.stages import Layout, read_videos

    params = load_params(params_path)
    videos = read_videos(params, Layout.from_params(params), crops=True)
    audio_ids = {v.video_id for v in videos if v.has_audio}
    raav_cfg = params.build("fuse.raav", RAAVConfig) if params.get("fuse.raav") is not None else RAAVConfig()
    windowing = RAAV(raav_cfg).windowing
    every_split = AudioFilter(windowing.audio_filter.rule, ("train", "validation", "test"))
    acfg = params.build("train.audio", AudioPoolingConfig) if params.get("train.audio") is not None else AudioPoolingConfig()

    heads = load_head_videos(videos, None, "va", reliability_url=url)
    out = {"face_frames": 0, "open_face_frames": 0, "raav_windows": 0, "raav_masked": 0,
           "audio_windows": 0, "audio_kept": 0, "audio_no_labels": 0, "audio_mouth": 0, "audio_face": 0}
    for hv in heads:
        rel = hv.reliability or {}
        face = np.asarray(rel.get("face", []), np.float32) > 0.5
        out["face_frames"] += int(face.sum())
        out["open_face_frames"] += int(np.asarray(rel.get("mouth_open", np.zeros(len(face), bool)), bool)[face].sum())
        if hv.video_id not in audio_ids:
            continue
        grid = reliability_on_grid(hv)
        fv = FusionVideo(hv.video_id, hv.split, hv.fps, hv.num_frames, face=grid["face"],
                         mouth_open=grid["mouth_open"], times=hv.times)
        for s, e in windowing.windows(fv):
            out["raav_windows"] += 1
            out["raav_masked"] += int(not every_split.keep(fv, s, e))
        if hv.split != "train" or hv.labels is None:
            continue
        d = video_bins(hv, acfg, acfg.feature)  # no audio features: bins only
        y, yv = frame_targets(hv, acfg.task)
        by, bv = bin_targets(y, yv, d.frame_bin, len(d.bin_start), acfg.task)
        wins = frame_windows(len(d.bin_start), acfg.bins, int(round(acfg.hop_s / acfg.bin_s)))
        w, st = window_filter(hv, wins, d.frame_bin, bv, acfg)
        out["audio_windows"] += st["windows"]
        out["audio_kept"] += int((w > 0).sum())
        for k in ("no_labels", "mouth", "face"):
            out[f"audio_{k}"] += st[k]
    share = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    out["open_share"] = share(out["open_face_frames"], out["face_frames"])
    out["raav_mask_rate"] = share(out["raav_masked"], out["raav_windows"])
    out["audio_kept_share"] = share(out["audio_kept"], out["audio_windows"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("stores", nargs="+", help="LABEL=URL of a reliability store")
    args = ap.parse_args()
    rows = {}
    for item in args.stores:
        label, _, url = item.partition("=")
        rows[label] = rates(args.params, url)
    print(json.dumps(rows, indent=1))
    print("\n| mouth method | face frames | open (rule) | RAAV windows masked | audio-head windows kept |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['face_frames']} | {r['open_share']:.1%} | {r['raav_masked']}/{r['raav_windows']} "
              f"({r['raav_mask_rate']:.1%}) | {r['audio_kept']}/{r['audio_windows']} ({r['audio_kept_share']:.1%}) |")


if __name__ == "__main__":
    main()
