"""Shared attention on Qwen-Image's joint attention (tiny Qwen-Image, Chinese prompts, true CFG): the reference panel's
image tokens reach the other panels, the reference panel itself is unchanged, off settings are the plain render."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorastory.generate.consistency import shared_attention
from lorastory.generate.consistency_settings import ConsistencySettings
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import Story
from lorastory.images import load_rgb
from lorastory.models.families.qwen_image_attention import QwenImageSharedAttnProcessor
from lorastory.models.registry import load_pipeline

ON = ConsistencySettings(mode="attention", step_range=(0.0, 1.0))
# Prompts of different lengths: the batch's text carries a padding mask, which the shared attention keeps.
PROMPTS = ["二次元少女，紫色长发在舞台上唱歌", "少女在夜晚", "少女和猫"]


@pytest.fixture(scope="module")
def qwen_pipe(tiny_model_path):
    pipe = load_pipeline(tiny_model_path("qwen-image"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, prompts):
    return pipe(prompt=prompts, negative_prompt=["模糊"] * len(prompts), true_cfg_scale=4.0, num_inference_steps=2,
                width=64, height=64, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in range(len(prompts))]).images


def test_panels_read_the_reference_panel_which_itself_is_unchanged(qwen_pipe):
    before = qwen_pipe.transformer.attn_processors
    off, off_new = _call(qwen_pipe, PROMPTS), _call(qwen_pipe, ["红色的房子", *PROMPTS[1:]])
    with shared_attention(qwen_pipe, ON, panels=3, seed=1) as stats:
        assert all(isinstance(p, QwenImageSharedAttnProcessor) for p in qwen_pipe.transformer.attn_processors.values())
        on = _call(qwen_pipe, PROMPTS)
    with shared_attention(qwen_pipe, ON, panels=3, seed=1):
        on_new = _call(qwen_pipe, ["红色的房子", *PROMPTS[1:]])
    after = qwen_pipe.transformer.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not qwen_pipe.transformer._forward_pre_hooks

    assert np.array_equal(on[0], off[0])  # the reference panel: exactly the plain picture
    assert all(np.abs(on[i] - off[i]).max() > 1e-4 for i in (1, 2))  # the others change with the mode
    # Off, panel 2 does not see panel 1 (but for rounding: the batch's text pads to its longest prompt); on, a new
    # reference prompt moves it.
    assert np.abs(off[1] - off_new[1]).max() < 1e-5 and np.abs(on[1] - on_new[1]).max() > 1e-4
    layers = len(qwen_pipe.transformer.attn_processors)  # both blocks
    assert stats.layers == layers == 2 and stats.shared_calls == 2 * 2 * layers  # 2 steps, true CFG's 2 passes


def test_off_settings_are_the_plain_pipeline_and_blocks_choose_the_blocks(qwen_pipe):
    plain = _call(qwen_pipe, PROMPTS[:2])
    for settings in (ConsistencySettings(mode="attention", sample_rate=0.0), ConsistencySettings(mode="attention", strength=0.0)):
        with shared_attention(qwen_pipe, settings, panels=2):
            assert np.array_equal(_call(qwen_pipe, PROMPTS[:2]), plain)
    # A vanishing strength is the plain render: the shared panel's text keeps its padding mask as the plain one does.
    with shared_attention(qwen_pipe, ConsistencySettings(mode="attention", step_range=(0.0, 1.0), strength=1e-9), panels=2):
        assert np.abs(_call(qwen_pipe, PROMPTS[:2]) - plain).max() < 1e-5
    installed = {}
    for blocks in (["double"], ["transformer_blocks.1"], ["double_blocks.0-1"]):
        settings = ConsistencySettings(mode="attention", step_range=(0.0, 1.0), blocks=blocks, strength=0.5)
        with shared_attention(qwen_pipe, settings, panels=2, seed=1) as stats:
            installed[blocks[0]] = [name for name, processor in qwen_pipe.transformer.attn_processors.items()
                                    if isinstance(processor, QwenImageSharedAttnProcessor)]
            if blocks[0] == "transformer_blocks.1":
                half = _call(qwen_pipe, PROMPTS[:2])
        assert stats.layers == len(installed[blocks[0]])
    assert installed["transformer_blocks.1"] == ["transformer_blocks.1.attn.processor"]
    assert installed["double"] == installed["double_blocks.0-1"] == [f"transformer_blocks.{i}.attn.processor" for i in (0, 1)]
    assert np.array_equal(half[0], plain[0]) and np.abs(half[1] - plain[1]).max() > 1e-4


def test_chinese_story_with_shared_attention_records_it(qwen_pipe, tiny_model_path, tmp_path, cli):
    model = str(tiny_model_path("qwen-image"))
    story = {"character": "二次元少女", "negative": "模糊，丑陋",
             "defaults": {"steps": 2, "cfg": 4.0, "width": 64, "height": 64, "seed": 3},
             "consistency": {"mode": "attention", "step_range": [0.0, 1.0]},
             "panels": [{"prompt": "{character}在舞台上唱歌"}, {"prompt": "{character}在夜晚的街上"}]}
    generate_story(Story.model_validate(story), model, tmp_path / "on", pipe=qwen_pipe)
    generate_story(Story.model_validate({**story, "consistency": {"mode": "none"}}), model, tmp_path / "off", pipe=qwen_pipe)
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text(encoding="utf-8"))
    [render] = manifest["consistency"]["attention"]["renders"]
    assert manifest["consistency"]["mode"] == "attention" and render["panels"] == 2 and render["shared_calls"] == 2 * 2 * 2
    on, off = ([np.asarray(load_rgb(tmp_path / run / f"panel-0{i}.png"), dtype=np.int16) for i in (1, 2)] for run in ("on", "off"))
    assert np.array_equal(on[0], off[0]) and np.abs(on[1] - off[1]).max() > 0  # the reference panel is the plain one

    path = tmp_path / "story.yaml"
    path.write_text("consistency: {mode: attention, blocks: [single]}\npanels: [{prompt: 少女}, {prompt: 猫}]\n",
                    encoding="utf-8")
    cli("generate", path, "--model", model, "--out", tmp_path / "run").error_line("not a Qwen-Image block")
    path.write_text("consistency: {mode: attention, blocks: [transformer_blocks.5]}\npanels: [{prompt: 少女}]\n",
                    encoding="utf-8")
    cli("generate", path, "--model", model, "--out", tmp_path / "run").error_line(
        "consistency.blocks transformer_blocks.5: this Qwen-Image has 2 blocks (transformer_blocks.0-1)")
