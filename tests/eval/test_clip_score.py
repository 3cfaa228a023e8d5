"""CLIP-T and model loading: a real computation (checked against plain transformers), clear errors."""

from __future__ import annotations

import pytest
import torch

from lorastory.models.clip import clip_t_scores, load_clip
from lorastory.errors import ClipModelError

TEXTS = ["a red circle", "a blue square", "二次元 少女"]


def test_clip_t_is_cosine_times_100_as_plain_transformers_computes_it(tiny_clip, noise_images, plain_clip):
    images = noise_images(3)
    scores = clip_t_scores(load_clip(str(tiny_clip)), images, TEXTS)
    image_emb, text_emb, logits = plain_clip(tiny_clip, images, TEXTS)
    manual = [100 * float(image_emb[i] @ text_emb[i]) for i in range(3)]
    assert scores == pytest.approx(manual, abs=1e-3)
    # logit scale is 100 in the tiny model, as in trained CLIP: CLIP-T is also the logit.
    assert scores == pytest.approx([float(logits[i, i]) for i in range(3)], abs=1e-3)


def test_matching_and_shuffled_captions_are_both_scored(tiny_clip, noise_images):
    clip = load_clip(str(tiny_clip))
    images = noise_images(3, seed=5)
    matched = clip_t_scores(clip, images, TEXTS)
    shuffled = clip_t_scores(clip, images, TEXTS[1:] + TEXTS[:1])
    assert len(matched) == len(shuffled) == 3
    assert all(-100 <= s <= 100 for s in matched + shuffled)
    assert matched != shuffled  # a random model says nothing about quality, but the text matters
    with pytest.raises(ValueError, match="pairs"):
        clip_t_scores(clip, images, TEXTS[:2])


def test_batching_does_not_change_embeddings(tiny_clip, noise_images):
    clip = load_clip(str(tiny_clip))
    images = noise_images(5, seed=2)
    assert torch.allclose(clip.image_embeddings(images, batch_size=2), clip.image_embeddings(images, batch_size=5), atol=1e-5)
    texts = ["a", "a much longer caption of a cat", "二次元", "x y z", "dog"]
    assert torch.allclose(clip.text_embeddings(texts, batch_size=2), clip.text_embeddings(texts, batch_size=5), atol=1e-5)


def test_long_prompts_are_truncated_and_flagged(tiny_clip):
    clip = load_clip(str(tiny_clip))
    long = "girl " * 100
    assert clip.max_text_tokens == 77
    assert clip.token_counts(["a cat", long]) == [4, 102]
    assert clip.text_embeddings([long]).shape == (1, clip.embed_dim)


def test_chinese_clip_folder_uses_chinese_clip_model(tiny_chinese_clip, noise_images, plain_clip):
    clip = load_clip(str(tiny_chinese_clip))
    assert clip.kind == "chinese_clip" and type(clip.model).__name__ == "ChineseCLIPModel"
    images = noise_images(2)
    texts = ["二次元少女", "舞台上的歌星"]
    image_emb, text_emb, _ = plain_clip(tiny_chinese_clip, images, texts, chinese=True)
    manual = [100 * float(image_emb[i] @ text_emb[i]) for i in range(2)]
    assert clip_t_scores(clip, images, texts) == pytest.approx(manual, abs=1e-3)


def test_hub_id_offline_names_the_id_and_how_to_download():
    with pytest.raises(ClipModelError) as err:
        load_clip("openai/clip-vit-base-patch32")
    message = str(err.value)
    assert "openai/clip-vit-base-patch32" in message and "hf download" in message and "--clip" in message
    assert "\n" not in message


def test_bad_clip_sources_are_one_line_errors(tmp_path):
    with pytest.raises(ClipModelError, match="no such folder"):
        load_clip(str(tmp_path / "missing"))
    with pytest.raises(ClipModelError, match="no config.json"):
        load_clip(str(tmp_path))
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ClipModelError, match="is a file"):
        load_clip(str(tmp_path / "model.bin"))
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ClipModelError, match="unreadable"):
        load_clip(str(tmp_path))


def test_truncated_weights_are_a_one_line_error(tiny_clip, tmp_path):
    import shutil

    shutil.copytree(tiny_clip, tmp_path / "clip")
    weights = tmp_path / "clip" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ClipModelError, match="cannot load CLIP model"):
        load_clip(str(tmp_path / "clip"))


def test_a_diffusion_model_is_not_a_clip(tiny_model_path, tmp_path):
    import shutil

    shutil.copytree(tiny_model_path("sd15") / "text_encoder", tmp_path / "te")
    with pytest.raises(ClipModelError, match="not CLIP"):
        load_clip(str(tmp_path / "te"))
