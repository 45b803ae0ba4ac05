"""Mouth opening on one real clip: faces found, landmark fits, open shares, time per face.

    PYTHONPATH=$PWD .venv/bin/python bench/mouth_clip.py ../shared/realdata/facenet-examples/video.mp4

Runs the reliability extractor's detect path (the default detector, tracking, one person) once per mouth method and
prints, per method: frames, face frames, face frames with a finite raw value (for landmarks: the
frames where dlib ran), the share of face frames the published rule calls open, the share with the
raw inner-lip ratio above `--threshold` (landmarks only; 0.15 is a mouth opened by ~15 % of its
width), the prepare time per face (decode + detection + scoring), and the scoring
time alone per face on the same detected faces.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main() -> None:
    from extractors.reliability import ReliabilityConfig, ReliabilityExtractor
    from pipeline.media import probe
    from pipeline.records import Video

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("media")
    ap.add_argument("--threshold", type=float, default=0.15)
    args = ap.parse_args()
    info = probe(args.media)
    video = Video("clip", args.media, info.fps, info.num_frames, info.duration, has_audio=False, split="test")
    timings = {}
    for method in ("dark-extent", "landmarks"):
        ext = ReliabilityExtractor(ReliabilityConfig(mouth_method=method, source="detect", vad_backend="energy"))
        ext.load()
        import extractors.face_detection as fd

        fd._tracks_cache.clear()  # time the whole detect path for each method, not a cache hit
        t = time.perf_counter()
        prepared = ext.prepare(video)
        timings[method] = time.perf_counter() - t
        out = ext.compute(video, prepared)
        face = out["face"] > 0.5
        raw = out["mouth_raw"]
        line = (f"{method}: frames {len(face)}, face {int(face.sum())}, scored {int(np.isfinite(raw[face]).sum())}, "
                f"open by rule {out['mouth_open'][face].mean():.1%}")
        if method == "landmarks":
            line += f", raw ratio > {args.threshold} {(raw[face] > args.threshold).mean():.1%}"
            line += f", ratio p10/p50/p90 {np.round(np.nanpercentile(raw[face], [10, 50, 90]), 3).tolist()}"
        print(line + f", prepare {timings[method]:.2f} s ({timings[method] / max(face.sum(), 1) * 1000:.1f} ms/face)")
    # the scoring alone, on the same detected faces (decode and detection dominate prepare): the image
    # statistic on the aligned crops, dlib's 68 points on the aligned crops (the crops path's rectangle)
    import cv2

    from extractors.face_detection import iter_face_crops

    faces = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY)
             for batch in iter_face_crops(args.media, ext.cfg.detector, batch_size=32) for c in batch.crops]
    for method in ("dark-extent", "landmarks"):
        ext = ReliabilityExtractor(ReliabilityConfig(mouth_method=method, source="detect", vad_backend="energy"))
        ext.load()
        t = time.perf_counter()
        for gray in faces:
            ext._score(gray)
        print(f"{method}: scoring {(time.perf_counter() - t) / len(faces) * 1000:.2f} ms/face "
              f"({len(faces)} faces, {faces[0].shape[1]} px aligned crops)")


if __name__ == "__main__":
    main()
