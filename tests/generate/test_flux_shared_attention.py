"""Shared attention on Flux's joint attention (tiny Flux): the reference panel's image tokens reach the other panels,
the reference panel itself is unchanged, the processors are the family's and are restored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorastory.generate.consistency import shared_attention
from lorastory.generate.consistency_settings import ConsistencySettings
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import Story
from lorastory.models.families.flux_attention import FluxSharedAttnProcessor
from lorastory.models.registry import load_pipeline

ON = ConsistencySettings(mode="attention", step_range=(0.0, 1.0))


@pytest.fixture(scope="module")
def flux_pipe(tiny_model_path):
    pipe = load_pipeline(tiny_model_path("flux"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, prompts, **kwargs):
    return pipe(prompt=prompts, num_inference_steps=3, guidance_scale=3.5, width=64, height=64, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in range(len(prompts))], **kwargs).images


def test_panels_read_the_reference_panel_which_itself_is_unchanged(flux_pipe):
    prompts, new_reference = ["a girl", "a cat", "a dog"], ["a red house at night", "a cat", "a dog"]
    before = flux_pipe.transformer.attn_processors
    off, off_new = _call(flux_pipe, prompts), _call(flux_pipe, new_reference)
    with shared_attention(flux_pipe, ON, panels=3, seed=1) as stats:
        assert all(isinstance(p, FluxSharedAttnProcessor) for p in flux_pipe.transformer.attn_processors.values())
        on = _call(flux_pipe, prompts)
    with shared_attention(flux_pipe, ON, panels=3, seed=1):
        on_new = _call(flux_pipe, new_reference)
    after = flux_pipe.transformer.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not flux_pipe.transformer._forward_pre_hooks

    assert np.array_equal(on[0], off[0])  # the reference panel: exactly the plain picture
    assert np.abs(on[1:] - off[1:]).max() > 1e-4  # the others change with the mode
    # Off, panel 2 does not see panel 1; on, a new reference prompt moves it.
    assert np.array_equal(off[1], off_new[1]) and not np.array_equal(on[1], on_new[1])
    layers = len(flux_pipe.transformer.attn_processors)  # every double and single block
    assert stats.layers == layers == 2 and stats.shared_calls == 3 * layers
    assert stats.attention_factor > 1


def test_off_settings_and_a_single_panel_are_the_plain_pipeline(flux_pipe):
    plain = _call(flux_pipe, ["a girl", "a cat"])
    for settings in (ConsistencySettings(mode="attention", sample_rate=0.0), ConsistencySettings(mode="attention", strength=0.0)):
        with shared_attention(flux_pipe, settings, panels=2):
            assert np.array_equal(_call(flux_pipe, ["a girl", "a cat"]), plain)
    alone = _call(flux_pipe, ["a girl"])
    with shared_attention(flux_pipe, ON, panels=1) as stats:
        assert np.array_equal(_call(flux_pipe, ["a girl"]), alone)
    assert stats.shared_calls == 0


STORY = {
    "character": "anime girl", "negative": "blurry",
    "defaults": {"steps": 3, "cfg": 3.5, "width": 64, "height": 64, "seed": 3},
    "consistency": {"mode": "attention", "step_range": [0.0, 1.0]},
    "panels": [{"prompt": "{character} singing"}, {"prompt": "{character} on a stage"}, {"prompt": "{character} at night"}],
}


def test_flux_story_with_shared_attention_in_one_and_in_several_batches(flux_pipe, tiny_model_path, tmp_path):
    model = str(tiny_model_path("flux"))
    story = Story.model_validate(STORY)
    generate_story(story, model, tmp_path / "one", pipe=flux_pipe)
    [render] = json.loads((tmp_path / "one" / "manifest.json").read_text(encoding="utf-8"))["consistency"]["attention"]["renders"]
    assert render["mode"] == "share" and render["panels"] == 3 and render["shared_calls"] == 3 * 2
    # The PNG parameters name the blocks that shared: the default (a UNet's "up") means all of Flux's.
    consistency = read_parameters(tmp_path / "one" / "panel-01.png").extra["Consistency"]
    assert consistency == "attention (strength 1, sample rate 0.5, steps 0-1, blocks all)"
    # Two batches: the first writes the bank (its first panel is the reference), the second reads it.
    generate_story(story, model, tmp_path / "two", pipe=flux_pipe, batch_size=2)
    attention = json.loads((tmp_path / "two" / "manifest.json").read_text(encoding="utf-8"))["consistency"]["attention"]
    assert [r["mode"] for r in attention["renders"]] == ["write", "read"]
    assert attention["bank_mb"] > 0 and attention["renders"][1]["shared_calls"] > 0
    # True CFG calls the transformer twice a step: both passes share, the step range still counts steps.
    story_true = Story.model_validate({**STORY, "defaults": {**STORY["defaults"], "true_cfg": 3.0},
                                       "consistency": {"mode": "attention", "step_range": [0.0, 0.5]}})
    generate_story(story_true, model, tmp_path / "true", pipe=flux_pipe)
    [render] = json.loads((tmp_path / "true" / "manifest.json").read_text(encoding="utf-8"))["consistency"]["attention"]["renders"]
    assert render["shared_calls"] == 2 * 2 * 2  # steps 0 and 1 of 3 (fraction < 0.5), two passes, two layers


def test_blocks_choose_the_flux_blocks_that_share(flux_pipe, tiny_model_path, tmp_path, cli):
    prompts = ["a girl", "a cat"]
    plain = _call(flux_pipe, prompts)
    installed, pictures = {}, {}
    for blocks in (["double"], ["single_blocks.0"], ["up"], ["transformer_blocks.0-0", "single"]):
        settings = ConsistencySettings(mode="attention", step_range=(0.0, 1.0), blocks=blocks)
        with shared_attention(flux_pipe, settings, panels=2, seed=1) as stats:
            installed[blocks[0]] = [name for name, processor in flux_pipe.transformer.attn_processors.items()
                                    if isinstance(processor, FluxSharedAttnProcessor)]
            if blocks[0] != "transformer_blocks.0-0":  # the same layers as up: no need to render them again
                pictures[blocks[0]] = _call(flux_pipe, prompts)
        assert stats.layers == len(installed[blocks[0]])
    assert installed["double"] == ["transformer_blocks.0.attn.processor"]
    assert installed["single_blocks.0"] == ["single_transformer_blocks.0.attn.processor"]
    assert installed["up"] == installed["transformer_blocks.0-0"] == [*installed["double"], *installed["single_blocks.0"]]
    changed = [np.abs(pictures[name][1] - plain[1]).max() for name in ("double", "single_blocks.0", "up")]
    assert min(changed) > 1e-4 and not np.array_equal(pictures["double"][1], pictures["single_blocks.0"][1])
    assert all(np.array_equal(picture[0], plain[0]) for picture in pictures.values())

    story = tmp_path / "story.yaml"
    story.write_text("defaults: {steps: 2, cfg: 3.5, width: 64, height: 64}\n"
                     "consistency: {mode: attention, blocks: [double_blocks.3]}\n"
                     "panels: [{prompt: a girl}, {prompt: a cat}]\n", encoding="utf-8")
    cli("generate", story, "--model", tiny_model_path("flux"), "--out", tmp_path / "run").error_line(
        "consistency.blocks double_blocks.3: this Flux has 1 double block (double_blocks.0-0)")
    for blocks, needle in ((["single_blocks.3-1"], "goes from the lower number to the higher"),
                           (["up", "double"], "mixes UNet and DiT blocks"), (["triple"], "nor a DiT block")):
        story.write_text(f"consistency: {{mode: attention, blocks: {blocks}}}\npanels: [{{prompt: a}}]\n", encoding="utf-8")
        cli("generate", story, "--model", tiny_model_path("flux"), "--out", tmp_path / "run").error_line(needle)
