"""Face detectors on real faces: the six faces of multiface.jpg and the real clip stored sideways.

    PYTHONPATH=$PWD .venv/bin/python bench/face_detectors.py ../shared/realdata/facenet-examples [--cnn]

Baseline: OpenCV's Haar cascade with the settings it had as the default detector (frames downscaled
to a 960-px long side, no upscaling), now returning every box and followed by the same tracker. Against it, in the same run:
- multiface.jpg (6 people): boxes, boxes on a face, false boxes, faces missed, time per image;
- the first 60 frames of video.mp4 re-encoded sideways with a 90-degree display matrix (as a phone
  stores it; decoded upright): frames in which the tracker shows a face, detection time per detected
  frame, and the landmark fit per face (the default path fits dlib's 68 points in every box);
- `--cnn` adds dlib's CNN detector (slow on a CPU: tens of seconds for the 60 frames' 12 detections).
Times are wall-clock medians on this machine; ratios are against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# the six faces of multiface.jpg (centres, pixels), checked by eye (as tests/test_face_detection.py)
MULTIFACE = [(270, 305), (469, 189), (593, 106), (658, 252), (762, 529), (904, 510)]


def sideways_clip(src: Path, out: Path, n: int = 60) -> Path:
    """The first `n` frames of `src`, stored turned clockwise with a 90-degree display matrix."""
    import av

    from pipeline.media import iter_frames

    frames, times = [], []
    for b in iter_frames(src, batch_size=16):
        frames += list(b.images)
        times += list(b.times)
        if len(frames) >= n:
            break
    tb = Fraction(1, 90000)
    with av.open(str(out), "w") as c:
        h, w = frames[0].shape[:2]
        vs = c.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = h, w, "yuv420p"
        vs.time_base = vs.codec_context.time_base = tb
        vs.set_display_rotation(90)
        for img, t in zip(frames[:n], times[:n]):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(img, -1)), format="rgb24")
            f.pts, f.time_base = int(round(t / tb)), tb
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    return out


def configs(cnn: bool) -> dict:
    from extractors.face_detection import FaceDetectorConfig

    out = {"opencv-haar (baseline)": FaceDetectorConfig(name="opencv-haar", detect_size=960, max_upscale=1.0,
                                                        align="none"),
           "dlib-hog (default)": FaceDetectorConfig()}
    if cnn:
        out["dlib-cnn"] = FaceDetectorConfig(name="dlib-cnn")
    return out


def on_image(img: np.ndarray, cfg) -> dict:
    from extractors.face_detection import DETECTORS

    det = DETECTORS[cfg.name](cfg)
    times, boxes = [], None
    for _ in range(3):
        t = time.perf_counter()
        boxes = det(img)
        times.append(time.perf_counter() - t)
    hits = [[c for c in MULTIFACE if b[0] <= c[0] <= b[2] and b[1] <= c[1] <= b[3]] for b in boxes]
    return {"boxes": len(boxes), "on_a_face": sum(len(h) == 1 for h in hits), "false": sum(len(h) == 0 for h in hits),
            "missed": sum(not any(c in h for h in hits) for c in MULTIFACE), "s": float(np.median(times))}


def on_clip(clip: Path, cfg) -> dict:
    import extractors.face_detection as fd

    calls: list[float] = []
    make = fd.DETECTORS[cfg.name]

    def timed(c):  # the detector, timed per call
        det = make(c)

        def run(rgb):
            t = time.perf_counter()
            out = det(rgb)
            calls.append(time.perf_counter() - t)
            return out
        return run

    fd.DETECTORS[cfg.name] = timed
    try:
        t = time.perf_counter()
        tracks = fd.track_faces(str(clip), cfg)
        total = time.perf_counter() - t
    finally:
        fd.DETECTORS[cfg.name] = make
    faces = len(tracks.frame)
    return {"frames": tracks.decoded, "with_face": len(set(tracks.frame.tolist())), "faces": faces,
            "tracks": len(set(tracks.track.tolist())), "detect_s": float(np.median(calls)), "total_s": total}


def against_first(cfgs: dict, measure, key: str):
    """(name, measurement, its `key` relative to the first configuration's: the baseline) per configuration,
    measured as the table is printed."""
    base = None
    for name, cfg in cfgs.items():
        r = measure(cfg)
        base = base or r[key]
        yield name, r, r[key] / base


def main() -> None:
    import cv2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="../shared/realdata/facenet-examples")
    ap.add_argument("--cnn", action="store_true", help="also dlib's CNN detector (slow on a CPU)")
    args = ap.parse_args()
    img = cv2.cvtColor(cv2.imread(str(args.folder / "multiface.jpg")), cv2.COLOR_BGR2RGB)
    cfgs = configs(args.cnn)
    print("multiface.jpg (6 faces)\n\n| detector | boxes | on a face | false | missed | time | vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for name, r, ratio in against_first(cfgs, lambda cfg: on_image(img, cfg), "s"):
        print(f"| {name} | {r['boxes']} | {r['on_a_face']} | {r['false']} | {r['missed']} | {r['s']:.2f} s "
              f"| {ratio:.1f}x |")
    with tempfile.TemporaryDirectory() as tmp:
        clip = sideways_clip(args.folder / "video.mp4", Path(tmp) / "sideways.mp4")
        print("\nvideo.mp4, first 60 frames stored sideways (1080p, display matrix 90)\n")
        print("| detector | frames with a face | face rows | tracks | detection per frame run | vs baseline "
              "| pass 1 total |")
        print("|---|---|---|---|---|---|---|")
        for name, r, ratio in against_first(cfgs, lambda cfg: on_clip(clip, cfg), "detect_s"):
            print(f"| {name} | {r['with_face']} / {r['frames']} | {r['faces']} | {r['tracks']} | {r['detect_s']:.2f} s "
                  f"| {ratio:.1f}x | {r['total_s']:.1f} s |")
        from extractors.face_detection import FaceDetectorConfig

        runs = {k: [on_clip(clip, FaceDetectorConfig(align=k)) for _ in range(2)] for k in ("none", "landmarks")}
        bare, fitted = (min(runs[k], key=lambda r: r["total_s"]) for k in ("none", "landmarks"))  # best of two
        per_face = (fitted["total_s"] - bare["total_s"]) / max(fitted["faces"], 1)
        print(f"\nlandmarks + alignment points: {per_face * 1000:.1f} ms per face "
              f"(pass 1 {bare['total_s']:.1f} s without, {fitted['total_s']:.1f} s with, {fitted['faces']} faces)")


if __name__ == "__main__":
    main()
