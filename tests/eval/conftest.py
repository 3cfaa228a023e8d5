"""Evaluation fixtures: tiny CLIP models, a tiny story run made with a LoRA, offline hub."""

from __future__ import annotations

from pathlib import Path

import pytest

STORY = """\
title: 紫发少女
character: 二次元
style: 水彩
negative: 丑陋、变形
defaults:
  steps: 2
  cfg: 4
  width: 64
  height: 64
  seed: 10
panels:
  - prompt: 紫色长发少女,在练习室唱歌
    seed: 1
    caption: 她在练习
  - prompt: 站在舞台上
    caption: 终于上台
  - prompt: a girl looking at the stars
"""


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No hub anywhere: make huggingface_hub fail at once instead of retrying."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def lora_file(tiny_model_path, tmp_path_factory) -> Path:
    """A Kolors LoRA with random lora_B (so it visibly changes the output), saved as a file."""
    import torch

    from lorastory.models.lora import LoraSpec, inject_lora, save_lora
    from lorastory.models.registry import load_pipeline

    pipe = load_pipeline(tiny_model_path("kolors"))
    spec = LoraSpec(rank=4, alpha=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inject_lora(pipe, spec)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return save_lora(pipe, tmp_path_factory.mktemp("lora") / "style.safetensors", spec, "kolors")


@pytest.fixture(scope="session")
def story_run(tiny_model_path, lora_file, tmp_path_factory) -> Path:
    """A generated 3-panel run (64 px, 2 steps) of the tiny Kolors model with the LoRA at 0.8."""
    from lorastory.generate.story import generate_story
    from lorastory.generate.story_file import load_story

    folder = tmp_path_factory.mktemp("story")
    (folder / "story.yaml").write_text(STORY, encoding="utf-8")
    run = folder / "run"
    generate_story(load_story(folder / "story.yaml"), str(tiny_model_path("kolors")), run,
                   lora=str(lora_file), lora_scale=0.8)
    return run


@pytest.fixture
def run_copy(story_run, tmp_path) -> Path:
    """A private copy of the run, for tests that write into it."""
    import shutil

    target = tmp_path / "run"
    shutil.copytree(story_run, target, ignore=shutil.ignore_patterns("scores.json", "compare", "storyboard_scored.png"))
    return target


def _noise_images(count: int, size: tuple[int, int] = (48, 40), seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture
def noise_images():
    """``noise_images(count, size=(w, h), seed=0)`` → that many different RGB noise images."""
    return _noise_images


def _plain_clip(folder: Path, images, texts, chinese: bool = False):
    import torch
    import transformers

    model_cls = transformers.ChineseCLIPModel if chinese else transformers.CLIPModel
    processor_cls = transformers.ChineseCLIPProcessor if chinese else transformers.CLIPProcessor
    model = model_cls.from_pretrained(folder).eval()
    processor = processor_cls.from_pretrained(folder)
    inputs = processor(text=list(texts), images=list(images), return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        out = model(**inputs)
    image = torch.nn.functional.normalize(out.image_embeds, dim=-1)
    text = torch.nn.functional.normalize(out.text_embeds, dim=-1)
    return image, text, out.logits_per_image


@pytest.fixture
def plain_clip():
    """``plain_clip(folder, images, texts, chinese=False)`` → (image embeddings, text embeddings,
    logits_per_image), L2-normalised, computed with plain transformers as its docs show."""
    return _plain_clip
