"""The synthetic demo tree: shape, quirks, determinism, and that the affect signal is really there.

The signal tests can fail on purpose: if a rendering change weakens the valence cue in the crops or
the arousal cue in the audio, the demo's fusion story silently breaks, so we measure it here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.datasets.synthetic import MANIFEST_NAME, DemoConfig, expr_from_va, generate

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REAL_VA = REALDATA / "affwild2-va-labels" / "VA_Estimation_Challenge"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic") / "tree"
    return root, generate(root, DemoConfig.tiny(), progress=False)


def _read_va(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text().splitlines()
    return lines, np.array([[float(x) for x in line.split(",")] for line in lines[1:]]).reshape(-1, 2)


def _tree_digest(root: Path, patterns: tuple[str, ...]) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for pat in patterns for p in sorted(root.glob(pat))}


def _media_ids(manifest: dict) -> dict[str, list[dict]]:
    by_media: dict[str, list[dict]] = {}
    for e in manifest["videos"]:
        by_media.setdefault(e["media"], []).append(e)
    return by_media


# --------------------------------------------------------------------------- structure


def test_tree_structure(tiny):
    root, m = tiny
    cfg = DemoConfig.tiny()
    assert len(_media_ids(m)) == cfg.num_videos and len(m["videos"]) == cfg.num_videos + 1
    assert sorted(p.stem for p in (root / "videos").glob("*.mp4")) == sorted(_media_ids(m))
    sub = {"train": "Train_Set", "validation": "Validation_Set"}
    for e in m["videos"]:
        for task, folder in (("va", "VA_Estimation_Challenge"), ("expr", "EXPR_Recognition_Challenge")):
            assert (root / folder / sub[e["split"]] / f"{e['video_id']}.txt").is_file()
            assert e["labels"][task] == f"{folder}/{sub[e['split']]}/{e['video_id']}.txt"
        assert (root / "cropped_aligned" / e["video_id"]).is_dir()
    assert set(m["splits"]) == {"train", "validation"}
    assert 1 <= len(m["splits"]["validation"]) < len(m["splits"]["train"])
    pair = m["pair"]
    assert pair["left"].endswith("_left") and pair["right"].endswith("_right")
    assert {pair["left"], pair["right"]} <= set(m["splits"]["train"])
    assert json.loads((root / MANIFEST_NAME).read_text()) == m


def test_videos_decode_at_container_fps(tiny):
    root, m = tiny
    for media, entries in _media_ids(m).items():
        e = entries[0]
        with av.open(str(root / e["media_path"])) as c:
            vs = c.streams.video[0]
            assert vs.average_rate == Fraction(e["fps_fraction"])
            assert (vs.width, vs.height) == tuple(DemoConfig.tiny().frame_size)
            assert sum(1 for _ in c.decode(video=0)) == e["frames"]
        with av.open(str(root / e["media_path"])) as c:
            assert bool(c.streams.audio) == e["has_audio"]
            if e["has_audio"]:
                assert c.streams.audio[0].rate == DemoConfig.tiny().audio_rate
                assert c.streams.audio[0].channels == 1
    assert len(m["no_audio"]) == 1
    pair = m["pair"]
    paths = {e["video_id"]: e["media_path"] for e in m["videos"]}
    assert paths[pair["left"]] == paths[pair["right"]] == f"videos/{pair['media']}.mp4"
    assert any(abs(e["fps"] - 15000 / 1001) < 1e-9 for e in m["videos"])
    liar = m["fps_name_mismatch"]
    assert liar and all(int(name.split("-")[1]) != round(_media_ids(m)[name][0]["fps"]) for name in liar)


def test_crop_gaps_match_faceless_spans(tiny):
    root, m = tiny
    assert any(e["faceless_spans"] for e in m["videos"])
    for e in m["videos"]:
        expected = set(range(1, e["frames"] + 1))
        for a, b in e["faceless_spans"]:
            expected -= set(range(a + 1, b + 1))
        files = sorted((root / e["crops_dir"]).glob("*.jpg"))
        assert {int(p.stem) for p in files} == expected, e["video_id"]
        assert all(len(p.stem) == 5 for p in files)
    sample = cv2.imread(str(files[0]))
    assert sample.shape == (DemoConfig.tiny().crop_size,) * 2 + (3,)


def test_labels_parse_with_invalid_spans_and_mismatch(tiny):
    root, m = tiny
    assert any(e["invalid_spans"] for e in m["videos"])
    for e in m["videos"]:
        lines, va = _read_va(root / e["labels"]["va"])
        assert lines[0] == "valence,arousal" and len(va) == e["label_frames"]
        invalid = np.zeros(len(va), bool)
        for a, b in e["invalid_spans"]:
            invalid[a:b] = True
        assert np.array_equal((va == -5).all(1), invalid)
        assert np.all(np.abs(va[~invalid]) <= 1)
        assert all(line == "-5,-5" or len(line.split(",")[0].split(".")[1]) == 3 for line in lines[1:])
        expr_lines = (root / e["labels"]["expr"]).read_text().splitlines()
        assert expr_lines[0] == "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
        expr = np.array([int(x) for x in expr_lines[1:]])
        assert len(expr) == len(va) and np.array_equal(expr == -1, invalid)
        assert np.array_equal(expr[~invalid], expr_from_va(va[~invalid, 0], va[~invalid, 1]))
    assert 3 in m["label_mismatch"].values() and -2 in m["label_mismatch"].values()
    assert any(e["invalid_spans"] and e["invalid_spans"][0][0] == 0 for e in m["videos"])


# --------------------------------------------------------------------------- the signal


def test_crops_carry_valence(tiny):
    """Mouth box minus forehead box (cancels skin tone and lighting) tracks valence."""
    root, m = tiny
    stat, valence, arousal = [], [], []
    for e in m["videos"]:
        _, va = _read_va(root / e["labels"]["va"])
        for i in range(min(e["frames"], len(va))):
            p = root / e["crops_dir"] / f"{i + 1:05d}.jpg"
            if p.exists() and va[i, 0] > -5:
                g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float64)
                stat.append(g[42:50, 26:39].mean() - g[10:15, 27:37].mean())
                valence.append(va[i, 0])
                arousal.append(va[i, 1])
    r_v = np.corrcoef(stat, valence)[0, 1]
    assert len(stat) > 300 and abs(r_v) > 0.5, f"mouth statistic vs valence r={r_v:.2f}"
    assert abs(r_v) > abs(np.corrcoef(stat, arousal)[0, 1])


def test_audio_carries_arousal(tiny):
    """Per-second RMS (silent seconds excluded) tracks the speaker's arousal far more than valence."""
    root, m = tiny
    rms, arousal, valence = [], [], []
    for e in m["videos"]:
        if not e["has_audio"] or not e["speaks"]:
            continue
        _, va = _read_va(root / e["labels"]["va"])
        with av.open(str(root / e["media_path"])) as c:
            sr = c.streams.audio[0].rate
            x = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        for s in range(int(len(x) / sr)):
            if any(s < b and s + 1 > a for a, b in e["silent_spans"]):
                continue
            lab = va[int(s * e["fps"]): int((s + 1) * e["fps"])]
            lab = lab[lab[:, 1] > -5]
            if len(lab):
                rms.append(np.sqrt(np.mean(x[s * sr:(s + 1) * sr] ** 2)))
                arousal.append(lab[:, 1].mean())
                valence.append(lab[:, 0].mean())
    r_a = np.corrcoef(rms, arousal)[0, 1]
    assert len(rms) >= 20 and r_a > 0.5, f"audio RMS vs arousal r={r_a:.2f}"
    assert r_a > abs(np.corrcoef(rms, valence)[0, 1])


# --------------------------------------------------------------------------- determinism, config


def test_deterministic(tmp_path):
    cfg = dataclasses.replace(DemoConfig.tiny(), seconds=(3.0, 4.0))
    patterns = ("*.json", "*_Challenge/*/*.txt", "cropped_aligned/*/*.jpg", "videos/*.mp4")
    digests = []
    for name in ("a", "b"):
        generate(tmp_path / name, cfg, progress=False)
        digests.append(_tree_digest(tmp_path / name, patterns))
    assert digests[0] == digests[1] and len(digests[0]) > 50
    other = generate(tmp_path / "c", dataclasses.replace(cfg, seed=1), progress=False)
    assert _tree_digest(tmp_path / "c", ("*_Challenge/*/*.txt",)) != {
        k: v for k, v in digests[0].items() if k.endswith(".txt")}
    assert other["videos"]


def test_regenerate_in_place_and_refuse_foreign_dir(tmp_path):
    cfg = dataclasses.replace(DemoConfig.tiny(), seconds=(2.0, 2.5), render_video=False)
    generate(tmp_path / "t", cfg, progress=False)
    generate(tmp_path / "t", cfg, progress=False)  # a previous synthetic tree is replaced
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="foreign"):
        generate(tmp_path / "foreign", cfg, progress=False)
    with pytest.raises(ValueError, match="frame_size"):
        generate(tmp_path / "bad", dataclasses.replace(cfg, frame_size=(161, 120)), progress=False)


def test_labels_only_mode(tmp_path):
    cfg = dataclasses.replace(DemoConfig.tiny(), render_video=False, max_videos=4)
    m = generate(tmp_path, cfg, progress=False)
    assert not (tmp_path / "videos").exists() and not (tmp_path / "cropped_aligned").exists()
    assert len(_media_ids(m)) == 4 and all(e["media_path"] is None for e in m["videos"])
    assert all((tmp_path / e["labels"]["va"]).exists() for e in m["videos"])


# --------------------------------------------------------------------------- real label files


needs_real = pytest.mark.skipif(not REAL_VA.is_dir(), reason=f"{REAL_VA} absent")


@needs_real
def test_labels_from_real_files_labels_only(tmp_path):
    cfg = dataclasses.replace(DemoConfig.default(), render_video=False, max_videos=6)
    m = generate(tmp_path, cfg, labels_from=REAL_VA, progress=False)
    assert 1 <= len(m["videos"]) <= 6
    folders = {"train": "Train_Set", "validation": "Validation_Set"}
    for e in m["videos"]:
        real = REAL_VA / folders[e["split"]] / f"{e['video_id']}.txt"
        _, ours = _read_va(tmp_path / e["labels"]["va"])
        _, theirs = _read_va(real)
        assert e["frames"] >= e["label_frames"] == len(theirs) == len(ours)
        assert np.array_equal(ours == -5, theirs <= -5 + 1e-6)
        ok = ours[:, 0] > -5
        assert np.allclose(ours[ok], theirs[ok], atol=5e-4)
        assert e["fps"] > 0


@needs_real
def test_labels_from_renders_short_real_files(tmp_path):
    """Two short real files (one per split) rendered as video; fps from videos_fps.csv."""
    src = tmp_path / "labels" / "VA_Estimation_Challenge"
    picks = {"Train_Set": None, "Validation_Set": None}
    for sub in picks:
        files = sorted((REAL_VA / sub).glob("*.txt"), key=lambda p: p.stat().st_size)
        picks[sub] = files[0]
        (src / sub).mkdir(parents=True)
        shutil.copy(files[0], src / sub / files[0].name)
    csv = REAL_VA.parent / "videos_fps.csv"
    if csv.exists():
        shutil.copy(csv, src.parent / "videos_fps.csv")
    cfg = dataclasses.replace(DemoConfig.tiny(), labels_fps=None)
    m = generate(tmp_path / "tree", cfg, labels_from=src, progress=False)
    assert sorted(m["splits"]["train"] + m["splits"]["validation"]) == sorted(p.stem for p in picks.values())
    for e in m["videos"]:
        with av.open(str(tmp_path / "tree" / e["media_path"])) as c:
            assert sum(1 for _ in c.decode(video=0)) == e["frames"] == e["label_frames"]
            assert abs(float(c.streams.video[0].average_rate) - e["fps"]) < 1e-6


def test_whole_frame_carries_both(tiny):
    """What the behaviour model sees: per-second motion tracks arousal, warm tint tracks valence."""
    root, m = tiny
    warmth, motion, valence, arousal = [], [], [], []
    for e in m["videos"]:
        if e["side"] == "right":
            continue  # the pair's frames are counted once, with the left person's labels
        _, va = _read_va(root / e["labels"]["va"])
        with av.open(str(root / e["media_path"])) as c:
            frames = np.array([f.to_ndarray(format="rgb24") for f in c.decode(video=0)], np.float32)
        step = int(round(e["fps"]))
        for i in range(0, min(len(frames), len(va)) - step, step):
            lab = va[i:i + step]
            if (lab <= -5).any():
                continue
            clip = frames[i:i + step]
            warmth.append((clip[..., 0] - clip[..., 2]).mean())
            motion.append(np.abs(np.diff(clip, axis=0)).mean())
            valence.append(lab[:, 0].mean())
            arousal.append(lab[:, 1].mean())
    r_motion = np.corrcoef(motion, arousal)[0, 1]
    r_warm = np.corrcoef(warmth, valence)[0, 1]
    assert r_motion > 0.3 and r_warm > 0.3, f"motion~arousal r={r_motion:.2f}, warmth~valence r={r_warm:.2f}"
