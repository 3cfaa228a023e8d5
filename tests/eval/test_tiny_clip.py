"""The tiny CLIP builder: real CLIP tokenizer, plain-transformers loading, same seed same bytes."""

from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image

from lorastory.models.tiny_clip import CLIP_VOCAB_SIZE, bpe_vocab_path, build_tiny_clip, clip_vocab_and_merges


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_shipped_bpe_file_is_openai_clips():
    digest = hashlib.sha256(bpe_vocab_path().read_bytes()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == CLIP_VOCAB_SIZE and len(merges) == 49152 - 256 - 2
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    build_tiny_clip(tmp_path / "a", seed=3)
    build_tiny_clip(tmp_path / "b", seed=3)
    build_tiny_clip(tmp_path / "c", seed=4)
    a, b, c = (_digests(tmp_path / n) for n in "abc")
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"] and a["tokenizer.json"] == c["tokenizer.json"]


def test_cli_builds_a_folder_plain_transformers_loads(cli, tmp_path, monkeypatch):
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("model", "tiny", "--family", "clip", "--out", tmp_path / "clip", "--resolution", "32")
    assert result.code == 0, result.err
    model = CLIPModel.from_pretrained(tmp_path / "clip")
    processor = CLIPProcessor.from_pretrained(tmp_path / "clip")
    # The ids openai/clip-vit-base-patch32's tokenizer gives (the same BPE vocabulary).
    assert processor.tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert CLIPTokenizer.from_pretrained(tmp_path / "clip")("二次元")["input_ids"][0] == 49406
    assert model.config.text_config.vocab_size == CLIP_VOCAB_SIZE
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)
    pixels = processor(images=[Image.new("RGB", (50, 40), "red")], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    with torch.no_grad():
        out = model(**processor(text=["a cat"], images=[Image.new("RGB", (8, 8))], return_tensors="pt"))
    assert torch.isfinite(out.logits_per_image).all()


def test_chinese_clip_family_loads_with_chinese_clip_classes(tiny_chinese_clip):
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    model = ChineseCLIPModel.from_pretrained(tiny_chinese_clip)
    processor = ChineseCLIPProcessor.from_pretrained(tiny_chinese_clip)
    assert "[UNK]" not in processor.tokenizer.tokenize("二次元 少女 girl")
    assert model.config.model_type == "chinese_clip"


def test_unknown_family_lists_the_clip_ones(cli, tmp_path):
    result = cli("model", "tiny", "--family", "clap", "--out", tmp_path / "x")
    assert result.code == 1 and "clip" in result.err and "chinese-clip" in result.err
