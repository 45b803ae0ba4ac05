"""Several persons in one video: the stacked-rows layout (pipeline/persons.py), one person's view of
the stores for the heads, and the speaker's audio attributed to the speaker through that person's mouth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.persons import PERSON, by_frame, person_ids, row_arrays, select_person, stack_persons
from pipeline.records import Video
from pipeline.store import FeatureStore


def test_stack_select_round_trip_keeps_other_grids() -> None:
    rows = {"t0": np.arange(3, dtype=np.float32), "t1": np.arange(1, 4, dtype=np.float32),
            "face": np.array([1, 0, 1], np.float32)}
    stacked = stack_persons(rows, 2)
    assert stacked[PERSON].tolist() == [0, 0, 0, 1, 1, 1] and stacked["t0"].tolist() == [0, 1, 2, 0, 1, 2]
    stacked["face"][3:] = [0, 1, 1]
    # reliability's voice activity is on its own grid: 6 rows too, but never split by person
    group = {**stacked, "vad": np.linspace(0, 1, 6, dtype=np.float32), "vad_t0": np.zeros(6, np.float32),
             "vad_t1": np.ones(6, np.float32)}
    assert sorted(row_arrays(group)) == ["face", PERSON, "t0", "t1"]
    assert person_ids(group) == [0, 1] and person_ids({"t0": np.zeros(2)}) == [0] and person_ids(None) == [0]
    one = select_person(group, 1)
    assert PERSON not in one and one["face"].tolist() == [0, 1, 1] and len(one["vad"]) == 6
    with pytest.raises(KeyError, match="person 2"):
        select_person(group, 2)
    plain = {"t0": np.zeros(2), "emb": np.zeros((2, 3))}
    assert select_person(plain, 0) == plain
    with pytest.raises(KeyError):
        select_person(plain, 1)
    with pytest.raises(ValueError, match="different lengths"):
        stack_persons({"a": np.zeros(2), "b": np.zeros(3)}, 2)


def test_by_frame_interleaves_persons_frame_by_frame() -> None:
    tables = {0: {"frame": np.arange(2), "time": np.array([0.0, 0.1]), "valence": np.array([0.5, 0.6])},
              1: {"frame": np.arange(2), "time": np.array([0.0, 0.1]), "valence": np.array([-0.5, -0.6]),
                  "p_happiness": np.array([0.9, 0.8])}}
    t = by_frame(tables)
    assert list(t)[:4] == ["frame", "time", PERSON, "valence"]
    assert t["frame"].tolist() == [0, 0, 1, 1] and t[PERSON].tolist() == [0, 1, 0, 1]
    assert t["valence"].tolist() == [0.5, -0.5, 0.6, -0.6]
    assert np.isnan(t["p_happiness"][[0, 2]]).all() and t["p_happiness"][[1, 3]].tolist() == [0.9, 0.8]


def _stores(tmp: Path, fps: float, n: int) -> tuple[Video, str, str]:
    """A two-person video: person 0 speaks (mouth open during the voiced middle 3 s), person 1
    listens (mouth closed); both faces are seen throughout. Audio rows cover the whole clip."""
    t0 = (np.arange(n) / fps).astype(np.float32)
    video = Video("talk", str(tmp / "talk.mp4"), fps, n, n / fps, True, "test",
                  frame_segments=[[0, n + 1, 0.0, 1 / fps]])
    speech = (t0 >= 1.0) & (t0 < 4.0)
    rel = stack_persons({"t0": t0, "t1": t0 + 1 / fps, "valid": np.ones(n, bool), "face": np.ones(n, np.float32),
                         "mouth_open": np.zeros(n, bool)}, 2)
    rel["mouth_open"][:n] = speech  # person 0's rows come first
    vt0 = np.arange(0, n / fps, 0.02).astype(np.float32)
    vad = ((vt0 >= 1.0) & (vt0 < 4.0)).astype(np.float32)
    rs = FeatureStore.create(str(tmp / "rel.zarr"), extractor="reliability", fingerprint={"t": 1})
    rs.write_video("talk", {**rel, "vad": vad, "vad_t0": vt0, "vad_t1": vt0 + 0.02})
    audio = FeatureStore.create(str(tmp / "audio.zarr"), extractor="speech_ssl", fingerprint={"t": 1})
    audio.write_video("talk", {"emb": np.ones((len(vt0), 4), np.float32), "t0": vt0, "t1": vt0 + 0.02,
                               "valid": np.ones(len(vt0), bool), "vad": vad})
    return video, str(tmp / "audio.zarr"), str(tmp / "rel.zarr")


def test_the_speakers_audio_is_attributed_to_the_speaker(tmp_path: Path) -> None:
    """Each person's HeadVideo carries that person's mouth and face (audio is the video's), so the
    cross-modal filter that RAAV applies keeps the speaker's audio windows and drops the listener's,
    and the audio head's training filter does the same."""
    from heads.audio_pooling import AudioPoolingConfig, window_filter
    from heads.data import load_head_videos, reliability_on_grid
    from heads.fusion_inputs import fusion_video
    from heads.fusion_raav import RAAVConfig
    from heads.fusion_windows import AudioFilter, SecondsWindowing

    fps, n = 10.0, 60
    video, audio_url, rel_url = _stores(tmp_path, fps, n)
    per = {p: load_head_videos([video], audio_url, reliability_url=rel_url, person=p)[0] for p in (0, 1)}
    assert np.array_equal(per[0].features["emb"], per[1].features["emb"])  # one soundtrack
    grids = {p: reliability_on_grid(hv) for p, hv in per.items()}
    assert grids[0]["mouth_open"][10:40].all() and not grids[1]["mouth_open"].any()
    assert np.array_equal(grids[0]["vad"], grids[1]["vad"])

    rule = AudioFilter(RAAVConfig().audio_trust)
    windows = SecondsWindowing(4.0, 2.0)
    kept = {}
    for p, hv in per.items():
        fv = fusion_video({"audio": hv}, audio="audio")
        kept[p] = [rule.keep(fv, s, e) for s, e in windows.windows(fv)]
    assert any(kept[0]) and not any(kept[1]), kept

    cfg = AudioPoolingConfig()  # windows of four 1-s bins, hop 2 bins
    bins = [(0, 4), (2, 6)]
    weights = {p: window_filter(hv, bins, np.arange(n) // 10, np.ones(6, bool), cfg)[0] for p, hv in per.items()}
    assert weights[0].tolist() == [1.0, 1.0] and weights[1].max() < 1.0, weights


def test_a_person_missing_from_a_store_is_masked(tmp_path: Path) -> None:
    from heads.data import load_head_videos

    video, audio_url, rel_url = _stores(tmp_path, 10.0, 20)
    hv = load_head_videos([video], audio_url, reliability_url=rel_url, person=5)[0]
    assert hv.reliability is None and len(hv.features["emb"]) > 0  # no such person: no mouth, no face
