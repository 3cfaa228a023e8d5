"""``--offload``'s plan: prompts encoded once, the denoiser resident, the batch the GPU's budget holds.

The plan's choices are checked for given budgets with the published model sizes; the story with the plan
runs on the CPU (the plan's devices widened for the test: the user-facing rule stays "a CUDA GPU") on the
tiny Kolors and must draw the pictures the story draws without offload, with the text encoder run once.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from PIL import Image

from lorastory.generate.offload import ModelSizes, plan_offload
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import load_story

GIB = 2**30
# Kolors: UNet 2.58 B parameters (fp8-weights: its transformer blocks' Linear layers at one byte), ChatGLM3-6B, VAE.
KOLORS = ModelSizes(denoiser=int(5.16e9), denoiser_fp8=int(2.9e9), text_encoders=int(12.5e9),
                    text_encoders_fp8=int(6.6e9), vae=int(0.17e9))
SDXL = ModelSizes(denoiser=int(5.14e9), denoiser_fp8=int(2.8e9), text_encoders=int(1.64e9),
                  text_encoders_fp8=int(0.9e9), vae=int(0.17e9))
STORY_1024 = {"panels": 8, "megapixels": 1.0, "images_per_panel": 2}


def test_12_gb_kolors_encodes_in_fp8_then_keeps_the_unet_in_bf16_with_the_batch_the_rest_holds():
    plan = plan_offload(KOLORS, 12 * GIB, **STORY_1024)

    assert plan.applies
    assert (plan.text_encoder_dtype, plan.denoiser_dtype, plan.batch, plan.vae_slicing) == ("fp8-weights", "default", 3, True)
    assert str(plan) == ("offload: prompts encoded once, then the text encoder off the GPU (stored in fp8, 6.6 GB); "
                         "UNet bf16 resident (5.2 GB); batch 3 by the 12.9 GB budget (2.0 GB a panel); "
                         "VAE decodes one picture at a time")


def test_a_larger_budget_keeps_the_text_encoder_as_loaded_and_batches_every_panel():
    plan = plan_offload(KOLORS, 24 * GIB, **STORY_1024)

    assert (plan.text_encoder_dtype, plan.denoiser_dtype, plan.batch) == ("default", "default", 8)
    assert plan_offload(SDXL, 16 * GIB, **STORY_1024).batch == 4  # room for 5: two calls of 4, not 5 + 3


def test_the_denoiser_goes_to_fp8_only_when_in_bf16_not_one_panel_fits():
    assert plan_offload(SDXL, 8 * GIB, **STORY_1024).denoiser_dtype == "default"
    plan = plan_offload(SDXL, 7 * GIB, **STORY_1024)

    assert (plan.denoiser_dtype, plan.batch) == ("fp8-weights", 2)
    assert "UNet fp8-weights resident (2.8 GB, in bf16 it and a panel exceed the budget)" in str(plan)


def test_without_fp8_or_room_for_the_text_encoders_the_run_keeps_diffusers_offload_and_says_why():
    without_fp8 = plan_offload(SDXL, 6 * GIB, fp8=False, **STORY_1024)
    too_small = plan_offload(KOLORS, 6 * GIB, **STORY_1024)

    assert not without_fp8.applies and "a panel (2.0 GB) exceed the 6.4 GB budget" in str(without_fp8)
    assert not too_small.applies
    assert str(too_small) == "offload: diffusers' model offload: the text encoders need 6.6 GB of a 6.4 GB budget"


def test_the_users_dtype_and_batch_are_kept_and_a_batch_over_the_estimate_is_said():
    asked = plan_offload(KOLORS, 12 * GIB, base_dtype="fp8-weights", batch_size=6, **STORY_1024)

    assert (asked.denoiser_dtype, asked.batch) == ("fp8-weights", 6)
    assert "as --base-dtype asks" in str(asked) and "batch 6 as --batch-size asks (the budget holds 4)" in str(asked)


def test_a_batch_decodes_one_picture_at_a_time():
    dit = ModelSizes(denoiser=int(2e9), denoiser_fp8=int(1e9), text_encoders=int(1e9), text_encoders_fp8=int(1e9),
                     vae=0)
    plan = plan_offload(dit, 8 * GIB, panels=8, megapixels=1.0, images_per_panel=1, denoiser_name="Flux transformer")

    # Room for 6 panels' denoising (1.0 GB each): two calls of 4, each decoding its pictures one by one.
    assert plan.batch == 4 and plan.vae_slicing
    assert "VAE decodes one picture at a time" in str(plan)


STORY = """\
title: offload
negative: 丑陋
defaults: {steps: 2, cfg: 4, width: 64, height: 64, seed: 3}
panels:
  - prompt: 紫色长发少女
  - prompt: 站在舞台上
    negative: 模糊
  - prompt: looking at the stars
"""


@pytest.fixture
def offload_on_cpu(monkeypatch):
    monkeypatch.setattr("lorastory.generate.story.OFFLOAD_DEVICES", ("cuda", "cpu"))


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_a_story_with_the_plan_draws_the_same_pictures_and_runs_the_text_encoder_once(tmp_path, tiny_model_path,
                                                                                        offload_on_cpu):
    from lorastory.models.registry import load_pipeline

    (tmp_path / "story.yaml").write_text(STORY, encoding="utf-8")
    story = load_story(tmp_path / "story.yaml")
    model = str(tiny_model_path("kolors"))
    pipe = load_pipeline(model)
    plain = generate_story(story, model, tmp_path / "plain", pipe=pipe, device="cpu")
    calls = []
    pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))

    planned = generate_story(story, model, tmp_path / "planned", pipe=pipe, device="cpu", offload=True)

    assert plain.speed is None
    assert planned.speed.startswith("offload: prompts encoded once, then the text encoder off the GPU")
    assert "batch 3 by the" in planned.speed
    assert len(calls) == 1  # 5 texts (3 prompts, 2 negatives) in one call; without the plan one call per batch
    for before, after in zip(plain.panels, planned.panels):
        assert np.abs(_pixels(before) - _pixels(after)).max() <= 2


def test_cli_prints_the_plan_on_its_speed_line(tmp_path, tiny_model_path, cli, offload_on_cpu):
    (tmp_path / "story.yaml").write_text(textwrap.dedent(STORY).replace("steps: 2", "steps: 1"), encoding="utf-8")

    result = cli("generate", tmp_path / "story.yaml", "--model", tiny_model_path("kolors"), "--out", tmp_path / "run",
                 "--offload", "--batch-size", "2")

    assert result.code == 0, result.out + result.err
    line = next(line for line in result.out.splitlines() if "speed:" in line)
    assert line.strip().startswith("speed:      offload: prompts encoded once, then the text encoder off the GPU")
    assert "batch 2 as --batch-size asks" in line


def test_the_budget_is_the_free_memory_within_a_per_process_cap(monkeypatch):
    import torch

    from lorastory.memory import device_memory_budget

    def on_gpu_0(reading):
        """As torch's own readers are strict: a device must name its GPU (torch.device("cuda") does not)."""
        def read(device=None):
            if not isinstance(device, int) and getattr(device, "index", None) is None:
                raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
            return reading
        return read

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", on_gpu_0((100 * GIB, 141 * GIB)))
    monkeypatch.setattr(torch.cuda, "memory_allocated", on_gpu_0(1 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", on_gpu_0(3 * GIB))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", on_gpu_0(12 / 141), raising=False)
    assert device_memory_budget(torch.device("cuda")) == 11 * GIB  # the 12 GiB cap less what is allocated
    assert device_memory_budget(torch.device("cuda", 0)) == 11 * GIB

    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", on_gpu_0(1.0))
    assert device_memory_budget(torch.device("cuda")) == 102 * GIB  # free, and the allocator's unused 2 GiB


@pytest.mark.slow
def test_a_text_encoder_lora_is_merged_before_the_encoders_are_dropped(tmp_path, tiny_model_path, offload_on_cpu):
    import torch

    from lorastory.models.lora import LoraSpec, inject_lora
    from lorastory.models.registry import load_pipeline

    (tmp_path / "story.yaml").write_text(STORY.replace("steps: 2", "steps: 1"), encoding="utf-8")
    story, model = load_story(tmp_path / "story.yaml"), str(tiny_model_path("kolors"))

    def with_lora():
        pipe = load_pipeline(model)
        torch.manual_seed(3)
        inject_lora(pipe, LoraSpec(rank=4, alpha=4, train_text_encoder=True))
        with torch.no_grad():
            for name, param in pipe.text_encoder.named_parameters():
                if ".lora_B." in name:
                    param.normal_(std=0.05)
        return pipe

    plain = generate_story(story, model, tmp_path / "plain", pipe=with_lora(), device="cpu", fast=True)
    pipe = with_lora()
    pipe._lorastory_one_run = True  # as a pipeline generate_story loads itself

    planned = generate_story(story, model, tmp_path / "planned", pipe=pipe, device="cpu", fast=True, offload=True)

    assert "LoRA fused" in planned.speed
    assert sum(param.numel() for param in pipe.text_encoder.parameters()) == 0  # dropped, not copied back
    for before, after in zip(plain.panels, planned.panels):
        assert np.abs(_pixels(before) - _pixels(after)).max() <= 2
