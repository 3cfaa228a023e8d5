"""The generate fast path on the tiny Flux: fused joint-attention QKV (and LoRA) give the plain path's pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorastory.generate.consistency import shared_attention
from lorastory.generate.consistency_settings import ConsistencySettings
from lorastory.generate.speed import prepare_for_speed, speed_context
from lorastory.models.registry import get_family, load_pipeline
from lorastory.models.speed import repeated_blocks

# Measured on the tiny Flux (float32, CPU, pixels in [0, 1]): fused QKV alone gives the plain pixels exactly, with a
# LoRA fused they differ by at most 2.2e-6 (the merge's rounding); 1e-5 leaves room for other BLAS builds, while
# the LoRA itself moves pixels by 0.018.
TOLERANCE = 1e-5


def _pipe(tiny_model_path):
    pipe = load_pipeline(tiny_model_path("flux"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe) -> np.ndarray:
    with speed_context(pipe):
        return pipe(prompt=["a girl", "a cat"], num_inference_steps=2, guidance_scale=3.5, width=64, height=64,
                    output_type="np", generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images


def _add_lora(pipe, seed: int = 3) -> None:
    from lorastory.models.lora import LoraSpec, inject_lora

    torch.manual_seed(seed)  # peft draws lora_A from the global generator
    inject_lora(pipe, LoraSpec(rank=4, alpha=4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def _fused(pipe) -> list[bool]:
    return [m.fused_projections for m in pipe.transformer.modules() if hasattr(m, "fuse_projections")]


def _stored_bytes(model) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def test_flux_fast_path_fuses_qkv_and_keeps_the_pixels(tiny_model_path):
    pipe = _pipe(tiny_model_path)
    plain, stored = _render(pipe), _stored_bytes(pipe.transformer)
    report = prepare_for_speed(pipe, compile=False)
    assert report.levers == ["fused QKV"] and not report.skipped
    assert _fused(pipe) and all(_fused(pipe))  # every double and single block's attention reads to_qkv
    assert _stored_bytes(pipe.transformer) == stored  # the separate projections are views of the fused ones
    assert np.abs(_render(pipe) - plain).max() < TOLERANCE


def test_flux_story_on_the_fast_path_gives_the_plain_pixels(tmp_path, tiny_model_path):
    from PIL import Image

    from lorastory.generate.story import generate_story

    from lorastory.generate.story_file import Story

    story = Story.model_validate({"defaults": {"steps": 2, "width": 64, "height": 64},
                                  "panels": [{"prompt": "a girl"}, {"prompt": "a fox"}]})
    model = str(tiny_model_path("flux"))
    generate_story(story, model, tmp_path / "plain", pipe=_pipe(tiny_model_path), device="cpu")
    generate_story(story, model, tmp_path / "fast", pipe=_pipe(tiny_model_path), fast=True, compile=False, device="cpu")
    for name in ("panel-01.png", "panel-02.png"):
        a = np.asarray(Image.open(tmp_path / "plain" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "fast" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # 8-bit rounding of pixels within TOLERANCE
    assert json.loads((tmp_path / "fast" / "manifest.json").read_text())["speed"] == "fused QKV"


def test_flux_fast_path_fuses_a_lora_before_and_after_preparing(tiny_model_path):
    pipe = _pipe(tiny_model_path)
    _add_lora(pipe)
    with_lora = _render(pipe)
    assert prepare_for_speed(pipe, compile=False).levers == ["LoRA fused", "fused QKV"]
    assert np.abs(_render(pipe) - with_lora).max() < TOLERANCE

    late = _pipe(tiny_model_path)
    prepare_for_speed(late, compile=False)  # fused QKV from the plain weights
    _add_lora(late)
    assert prepare_for_speed(late, compile=False).levers == ["fused QKV", "LoRA fused"]
    fast = _render(late)
    assert np.abs(fast - with_lora).max() < TOLERANCE  # the QKV projections were rebuilt with the LoRA in them
    assert np.abs(fast - _render(_pipe(tiny_model_path))).max() > 1e-3  # the LoRA does change the picture


def test_shared_attention_on_a_fused_qkv_flux_matches_the_unfused(tiny_model_path):
    settings = ConsistencySettings(mode="attention", step_range=(0.0, 1.0))
    plain, fast = _pipe(tiny_model_path), _pipe(tiny_model_path)
    prepare_for_speed(fast, compile=False)
    with shared_attention(plain, settings, panels=2, seed=1):
        expected = _render(plain)
    with shared_attention(fast, settings, panels=2, seed=1) as stats:
        shared = _render(fast)
    assert stats.shared_calls > 0 and np.abs(shared - expected).max() < TOLERANCE
    assert np.abs(shared[1] - _render(fast)[1]).max() > 1e-4  # the mode did act on the fused model


def test_dit_families_declare_their_levers(tiny_model_path):
    flux, qwen = get_family("flux"), get_family("qwen-image")
    assert flux.speed_qkv and flux.compile_repeated and not qwen.speed_qkv and qwen.compile_repeated
    assert repeated_blocks(_pipe(tiny_model_path).transformer) == ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    assert not get_family("kolors").compile_repeated
    qwen_pipe = load_pipeline(tiny_model_path("qwen-image"))
    report = prepare_for_speed(qwen_pipe, compile=False)  # its attention reads Q, K, V apart: nothing to fuse
    assert "fused QKV" not in report.levers
    assert not any(getattr(m, "fused_projections", False) for m in qwen_pipe.transformer.modules())


@pytest.mark.gpu
def test_compiled_flux_fast_path_on_cuda_matches_eager(tiny_model_path):
    pipe = _pipe(tiny_model_path).to("cuda", torch.bfloat16)
    _add_lora(pipe)
    reference = _render(pipe)
    report = prepare_for_speed(pipe, compile=True)
    assert report.levers == ["LoRA fused", "fused QKV", "compiled"]
    blocks = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    assert report.compiled_modules >= blocks  # every double and single block (and the VAE's ResNet blocks)
    fast = _render(pipe)
    assert np.abs(fast - reference).mean() < 0.01 and np.abs(fast - reference).max() < 0.1


@pytest.mark.gpu
def test_compiled_qwen_image_fast_path_on_cuda_matches_eager(tiny_model_path):
    pipe = load_pipeline(tiny_model_path("qwen-image")).to("cuda", torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)

    def render():
        return pipe(prompt=["a girl", "a cat"], num_inference_steps=2, width=64, height=64, output_type="np",
                    generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images

    reference = render()
    report = prepare_for_speed(pipe, compile=True)
    assert report.levers == ["compiled"] and report.compiled_modules >= len(pipe.transformer.transformer_blocks)
    fast = render()
    assert np.abs(fast - reference).mean() < 0.01 and np.abs(fast - reference).max() < 0.1
