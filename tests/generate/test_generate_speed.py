"""The generate speed levers on tiny CPU models: same images within rounding, idempotent, honest reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lorastory.generate.speed import (
    CompileChoice, SpeedReport, auto_batch_size, compile_choice, prepare_for_speed, speed_context,
)
from lorastory.models.speed import compile_cache_dir, sdpa_backend, to_channels_last, uncompile_regions
from lorastory.models.registry import get_family


def _pipe(tiny_model_path):
    from lorastory.models.registry import load_pipeline

    pipe = load_pipeline(tiny_model_path("kolors"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe) -> np.ndarray:
    with speed_context(pipe):
        return pipe(prompt=["紫色长发少女", "a red fox"], negative_prompt=["", ""], num_inference_steps=3,
                    guidance_scale=4.0, width=64, height=64, output_type="np",
                    generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images


def _add_lora(pipe, seed: int = 3) -> None:
    from lorastory.models.lora import LoraSpec, inject_lora

    torch.manual_seed(seed)  # peft draws lora_A from the global generator
    inject_lora(pipe, LoraSpec(rank=4, alpha=4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def test_prepare_for_speed_keeps_the_images_and_fuses_the_lora(tiny_model_path):
    pipe = _pipe(tiny_model_path)
    _add_lora(pipe)
    reference = _render(pipe)
    report = prepare_for_speed(pipe, compile=False)
    assert report.levers == ["LoRA fused", "fused QKV"] and not report.skipped
    assert all(layer.merged for layer in _lora_layers(pipe.unet))
    fast = _render(pipe)
    assert np.abs(fast - reference).max() < 1e-3
    assert np.abs(reference - _render(_pipe(tiny_model_path))).max() > 1e-3  # the LoRA does change the image
    again = prepare_for_speed(pipe, compile=False)
    assert again is report and again.levers == ["LoRA fused", "fused QKV"]
    assert np.abs(_render(pipe) - reference).max() < 1e-3


def _lora_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def test_qkv_is_not_fused_under_an_unfused_lora(tiny_model_path):
    pipe = _pipe(tiny_model_path)
    _add_lora(pipe)
    reference = _render(pipe)
    report = prepare_for_speed(pipe, fuse_lora=False, compile=False)
    assert "fused QKV" not in report.levers and "LoRA" in report.skipped["fused QKV"]
    assert np.abs(_render(pipe) - reference).max() < 1e-3


def test_a_pipeline_compiled_after_an_auto_skip_reports_only_the_compile(tiny_model_path):
    pipe = _pipe(tiny_model_path)
    report = prepare_for_speed(pipe, qkv=False)
    report.skipped["compile"] = "auto: 6 image-steps save about 0 s"  # what a story run adds when auto declines
    assert str(report) == "nothing; compile skipped (auto: 6 image-steps save about 0 s)"
    assert str(prepare_for_speed(pipe, qkv=False, compile=True, compile_vae=False)) == "compiled"


def test_generate_story_fast_on_cpu_matches_the_plain_path(tmp_path, tiny_model_path):
    from PIL import Image

    from lorastory.generate.story import generate_story

    from lorastory.generate.story_file import Story

    story = Story.model_validate({"defaults": {"steps": 3, "width": 64, "height": 64},
                                  "panels": [{"prompt": "少女"}, {"prompt": "a fox"}]})
    model = str(tiny_model_path("kolors"))
    generate_story(story, model, tmp_path / "plain", pipe=_pipe(tiny_model_path), device="cpu")
    generate_story(story, model, tmp_path / "fast", pipe=_pipe(tiny_model_path), fast=True, compile=False, device="cpu")
    for name in ("panel-01.png", "panel-02.png"):
        a = np.asarray(Image.open(tmp_path / "plain" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "fast" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["speed"] is None  # CPU default: off
    assert json.loads((tmp_path / "fast" / "manifest.json").read_text())["speed"] == "fused QKV"


def test_auto_compile_weighs_the_warm_up_against_what_the_story_saves():
    cuda = torch.device("cuda")
    assert compile_choice(torch.device("cpu"), 100_000, 2_000) == CompileChoice("off", "not on a CUDA GPU")
    # The reference story (8 panels x 50 steps at 1024²): a new process's warm-up outweighs the ~2 s it saves,
    # whether the kernels are cached or not; the reason says so and how to compile anyway.
    for warm in (True, False):
        story = compile_choice(cuda, 8 * 50, 8, cache_warm=warm)
        assert not story.compiles
        assert f"kernel cache {'warm' if warm else 'cold'}" in story.reason
        assert "400 image-steps save about 2 s" in story.reason and "--compile on compiles anyway" in story.reason
    assert str(compile_choice(cuda, 8 * 50, 8, cache_warm=True)).startswith("compile: off (auto: ")
    # Thirty panels repay a warm cache, not a cold one; a pipeline compiled earlier in the process stays compiled.
    assert compile_choice(cuda, 30 * 50, 30, cache_warm=True).compiles
    assert not compile_choice(cuda, 30 * 50, 30, cache_warm=False).compiles
    assert compile_choice(cuda, 8 * 50, 8, cache_warm=False, compiled=True) == CompileChoice(
        "on", "auto: compiled earlier in this process")
    # The saving scales with the picture size and the family's per-step figure (a family saving four times a UNet's).
    assert compile_choice(cuda, 8 * 50, 8, megapixels=4.0, cache_warm=True).compiles
    unet = get_family("kolors").compile_step_saving
    assert compile_choice(cuda, 24 * 28, 24, step_saving=4 * unet, cache_warm=True).compiles
    assert not compile_choice(cuda, 24 * 28, 24, step_saving=unet, cache_warm=True).compiles


def test_auto_compile_reads_the_kernel_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "kernels"))
    assert "kernel cache cold" in compile_choice(torch.device("cuda"), 400, 8).reason
    (tmp_path / "kernels" / "fxgraph").mkdir(parents=True)
    assert "kernel cache warm" in compile_choice(torch.device("cuda"), 400, 8).reason


def test_auto_batch_follows_free_gpu_memory_and_picture_size(monkeypatch):
    cuda = torch.device("cuda")
    free = {"bytes": 0.0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80e9))
    free["bytes"] = 70e9  # an 80 GB card with the weights loaded
    assert auto_batch_size(cuda, 1024, 1024, 8) == 8
    assert auto_batch_size(cuda, 1024, 1024, 3) == 3  # never more than the panels there are
    free["bytes"] = 8e9  # what a 24 GB card keeps free next to Kolors' weights
    assert auto_batch_size(cuda, 1024, 1024, 8) == 3
    assert auto_batch_size(cuda, 512, 512, 8) == 8  # a quarter of the pixels, a quarter of the memory
    free["bytes"] = 1e9
    assert auto_batch_size(cuda, 1024, 1024, 8) == 1  # at least one: the OOM fallback has the last word
    assert auto_batch_size(torch.device("cpu"), 1024, 1024, 8) == 2
    assert auto_batch_size(torch.device("cpu"), 64, 64, 1) == 1


def test_generate_refuses_an_unknown_compile_setting(tmp_path, tiny_model_path, cli):
    story = tmp_path / "story.yaml"
    story.write_text("title: t\npanels:\n  - prompt: a cat\n", encoding="utf-8")
    result = cli("generate", story, "--model", tiny_model_path("kolors"), "--out", tmp_path / "run", "--compile", "fast")
    assert result.code != 0 and "--compile must be auto, on or off" in result.err


def test_sdpa_backend_prefers_one_and_falls_back():
    q = torch.randn(1, 2, 8, 16)
    expected = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with sdpa_backend("cudnn"):  # no cuDNN attention on a CPU: falls back, same result
        assert torch.allclose(torch.nn.functional.scaled_dot_product_attention(q, q, q), expected, atol=1e-6)
    with sdpa_backend(None):
        pass
    with pytest.raises(ValueError, match="unknown SDPA backend"):
        with sdpa_backend("xformers"):
            pass
    assert "sdpa" in str(SpeedReport(levers=["x"], skipped={"sdpa": "why"}))


def test_channels_last_and_compile_cache_helpers(monkeypatch, tmp_path):
    conv = torch.nn.Conv2d(4, 8, 3)
    assert to_channels_last(conv, None) == 1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "kernels"))
    assert compile_cache_dir() == tmp_path / "kernels"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "lorastory" / "torchinductor"
    assert uncompile_regions(conv) == 0


@pytest.mark.gpu
def test_compiled_fast_path_on_cuda_matches_eager(tiny_model_path):
    pipe = _pipe(tiny_model_path).to("cuda", torch.bfloat16)
    _add_lora(pipe)
    reference = _render(pipe)
    report = prepare_for_speed(pipe, compile=True)
    assert report.levers == ["LoRA fused", "fused QKV", "compiled"] and report.compiled_modules > 0
    fast = _render(pipe)
    assert np.abs(fast - reference).mean() < 0.01 and np.abs(fast - reference).max() < 0.1


@pytest.mark.gpu
def test_fp8_linear_on_cuda_is_close_to_bf16(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))  # a bench-only lever
    from levers import quantize_fp8

    class BasicTransformerBlock(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(256, 512, device="cuda", dtype=torch.bfloat16)

        def forward(self, x):
            return self.proj(x)

    block = BasicTransformerBlock()
    x = torch.randn(4, 64, 256, device="cuda", dtype=torch.bfloat16)
    reference = block(x).float()
    assert quantize_fp8(block) == 1
    out = block(x)
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    assert ((out.float() - reference).norm() / reference.norm()).item() < 0.08


@pytest.mark.gpu
def test_generate_story_on_cuda_is_fast_by_default(tmp_path, tiny_model_path):
    from lorastory.generate.story import generate_story
    from lorastory.generate.story_file import Story

    story = Story.model_validate({"defaults": {"steps": 3, "width": 64, "height": 64},
                                  "panels": [{"prompt": "少女"}, {"prompt": "a fox"}]})
    model = str(tiny_model_path("kolors"))
    pipe = _pipe(tiny_model_path).to("cuda", torch.bfloat16)
    generate_story(story, model, tmp_path / "auto", pipe=pipe, device="cuda")
    speed = json.loads((tmp_path / "auto" / "manifest.json").read_text())["speed"]
    assert speed.startswith("fused QKV; compile skipped (auto: 6 image-steps save about 0 s for about ")  # no compile
    generate_story(story, model, tmp_path / "compiled", pipe=pipe, device="cuda", compile=True)
    assert json.loads((tmp_path / "compiled" / "manifest.json").read_text())["speed"] == "fused QKV, compiled"


def test_a_lora_loaded_after_preparing_is_fused_into_the_qkv_projections(tiny_model_path):
    pipe = _pipe(tiny_model_path)
    prepare_for_speed(pipe, compile=False)  # fused QKV from the plain weights
    _add_lora(pipe, seed=5)
    prepare_for_speed(pipe, compile=False)  # the new LoRA: fused, and the QKV projections rebuilt
    assert pipe._lorastory_speed.levers == ["fused QKV", "LoRA fused"]
    fast = _render(pipe)
    plain = _pipe(tiny_model_path)
    _add_lora(plain, seed=5)
    assert np.abs(fast - _render(plain)).max() < 1e-3
