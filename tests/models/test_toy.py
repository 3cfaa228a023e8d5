"""The shipped toy models: they load with plain diffusers/transformers, draw what the prompt says, score it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorastory.errors import ConfigError
from lorastory.models.toy import shipped_toy_dir, write_toy_model


def _redness(image, columns):
    pixels = np.asarray(image, dtype=np.int16)[:, columns]
    return int(((pixels[..., 0] > 160) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)).sum())


def test_written_model_is_a_plain_float32_diffusers_folder(toy_model_path):
    from diffusers import KolorsPipeline

    folder = toy_model_path("kolors")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "KolorsPipeline"
    pipe = KolorsPipeline.from_pretrained(folder)  # no lorastory code, no dtype argument
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    shipped = sum(p.stat().st_size for p in shipped_toy_dir("kolors").rglob("*.safetensors"))
    shipped += sum(p.stat().st_size for p in shipped_toy_dir("clip").rglob("*.safetensors"))
    assert shipped <= 60 * 2**20


@pytest.mark.parametrize(
    ("prompt", "side"),
    [("a big red circle on the left, on the grass, during the day", "left"), ("一个大的红色方形在右边，雪地里，白天", "right")],
)
def test_toy_model_draws_the_colour_where_the_prompt_says(toy_model_path, prompt, side):
    from lorastory.models.registry import load_pipeline

    pipe = load_pipeline(str(toy_model_path("kolors")))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt, num_inference_steps=20, guidance_scale=5.0, height=128, width=128,
                 generator=torch.Generator().manual_seed(0)).images[0]
    left, right = _redness(image, slice(0, 64)), _redness(image, slice(64, 128))
    wanted, other = (left, right) if side == "left" else (right, left)
    assert wanted > 400 and wanted > 5 * other, (left, right)


def test_toy_clip_prefers_the_true_caption_in_both_languages(toy_model_path):
    import random

    from lorastory.models.clip import load_clip
    from lorastory.toyworld import caption, render, sample_scene

    clip = load_clip(str(toy_model_path("clip")))
    rng = random.Random(11)
    scenes = [sample_scene(rng) for _ in range(8)]
    images = [render(s, "flat", 128) for s in scenes]
    image_emb = clip.image_embeddings(images)
    for lang in ("en", "zh"):
        similarity = image_emb @ clip.text_embeddings([caption(s, lang) for s in scenes]).T
        matched = similarity.diag().mean().item()
        shuffled = similarity.roll(1, dims=1).diag().mean().item()
        assert matched > 0.6 and matched - shuffled > 0.4, (lang, matched, shuffled)
        assert (similarity.argmax(dim=1) == torch.arange(8)).float().mean() >= 0.75


def test_cli_writes_each_component_and_rejects_unknown(cli, tmp_path):
    assert cli("model", "toy", "--component", "clip", "--out", tmp_path / "clip").code == 0
    assert (tmp_path / "clip" / "model.safetensors").is_file()
    result = cli("model", "toy", "--component", "vae", "--out", tmp_path / "x")
    assert result.code == 1 and "unknown toy component 'vae'" in result.err
    with pytest.raises(ConfigError):
        write_toy_model(tmp_path / "y", "unet")
