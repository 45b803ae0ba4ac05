"""The published audio setup: the Odyssey SER checkpoint layout (`ssl_model.*` tensors loaded into
WavLM) and per-clip embedding with per-clip normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from extractors.audio import AudioConfig, SpeechSSLExtractor, zscore
from extractors.base import ExtractorError
from tiny_models import speechlike, tiny_wavlm


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ser_models")
    return {"arch": tiny_wavlm(root, seed=0), "ser_encoder": tiny_wavlm(root, seed=1), "root": root}


def ser_checkpoint(encoder_dir, out_dir, prefix: str = "ssl_model.") -> str:
    """A checkpoint in the Odyssey SER baseline's layout: the encoder under `ssl_model.`, plus the
    baseline's own pooling and regression head tensors, which the loader must ignore."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(encoder_dir)
    tensors = {f"{prefix}{k}": v.contiguous() for k, v in encoder.state_dict().items() if k != "masked_spec_embed"}
    tensors["pool_model.attn.weight"] = torch.randn(4, 8)
    tensors["ser_model.out.weight"] = torch.randn(3, 8)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"))
    return str(out_dir)


def extractor(model, **kw) -> SpeechSSLExtractor:
    ex = SpeechSSLExtractor(AudioConfig(model=str(model), device="cpu", **kw))
    ex.load()
    return ex


def test_ssl_tensors_replace_the_architecture_weights(models, tmp_path):
    from transformers import AutoModel

    ckpt = ser_checkpoint(models["ser_encoder"], tmp_path / "ser")
    ex = extractor(models["arch"], ssl_weights=ckpt)
    want = AutoModel.from_pretrained(models["ser_encoder"]).state_dict()
    base = AutoModel.from_pretrained(models["arch"]).state_dict()
    got = ex.model.state_dict()
    changed = [k for k in want if k != "masked_spec_embed" and not torch.equal(base[k], want[k])]
    assert changed  # the two seeds differ, so the test can fail
    for k in want:
        if k != "masked_spec_embed":
            assert torch.equal(got[k], want[k]), k
    assert torch.equal(got["masked_spec_embed"], base["masked_spec_embed"])  # absent from the file: kept
    # a file path works as well as its folder, and the weights reach the fingerprint
    ex_file = extractor(models["arch"], ssl_weights=f"{ckpt}/model.safetensors")
    assert torch.equal(ex_file.model.state_dict()["encoder.layers.0.attention.q_proj.weight"],
                       want["encoder.layers.0.attention.q_proj.weight"])
    assert ex.fingerprint()["ssl_weights_file"] and "ssl_weights" not in extractor(models["arch"]).fingerprint()
    # the documented step for train.audio.backbone_dir: save the loaded encoder, reload it with AutoModel
    ex.model.save_pretrained(tmp_path / "wavlm-ser")
    again = AutoModel.from_pretrained(tmp_path / "wavlm-ser").state_dict()
    assert torch.equal(again["encoder.layers.0.attention.q_proj.weight"], want["encoder.layers.0.attention.q_proj.weight"])


def test_a_checkpoint_in_another_layout_is_refused(models, tmp_path):
    other = ser_checkpoint(models["ser_encoder"], tmp_path / "other", prefix="encoder_model.")
    with pytest.raises(ExtractorError, match="ssl_model"):
        extractor(models["arch"], ssl_weights=other)
    bigger = tiny_wavlm(models["root"], seed=2, hidden_size=48)
    with pytest.raises(ExtractorError, match="does not fit"):
        extractor(models["arch"], ssl_weights=ser_checkpoint(bigger, tmp_path / "bigger"))
    with pytest.raises(ExtractorError, match="not found"):
        extractor(models["arch"], ssl_weights=str(tmp_path / "missing.safetensors"))


def test_per_clip_mode_normalises_every_clip_on_its_own(models):
    """Per clip: each chunk is z-normalised alone, so a loud second half changes nothing in the first
    clip's rows; with whole-track normalisation it does."""
    quiet = speechlike(4.0, seed=3)
    wav = np.concatenate([quiet, 20 * quiet]).astype(np.float32)  # 8 s: clips 0-4, 2-6, 4-8
    kw = dict(chunk_seconds=4.0, overlap_seconds=2.0)
    per_clip = extractor(models["arch"], mode="per_clip", **kw)
    long = extractor(models["arch"], mode="long", **kw)
    alone = per_clip.encode(quiet)["emb"]
    rows_first = int(np.sum(per_clip.encode(wav)["t0"] < 2.5))  # rows taken from the first clip
    first_clip = per_clip.encode(wav)["emb"][:rows_first]
    np.testing.assert_allclose(first_clip, alone[:rows_first], atol=1e-4)
    assert not np.allclose(long.encode(wav)["emb"][:rows_first], alone[:rows_first], atol=1e-3)
    # a clip is normalised exactly as `zscore` does, on its own samples
    with torch.inference_mode():
        ref = per_clip.model(torch.from_numpy(zscore(quiet))[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(alone, ref, atol=1e-4)
    assert per_clip.fingerprint()["mode"] == "per_clip" and "mode" not in long.fingerprint()
    with pytest.raises(ExtractorError, match="mode"):
        SpeechSSLExtractor(AudioConfig(model=str(models["arch"]), mode="clips"))
