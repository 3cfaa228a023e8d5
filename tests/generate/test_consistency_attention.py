"""Shared self-attention: the processor's math, CFG halves, determinism, restoring, and stories on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lorastory.errors import ConfigError
from lorastory.generate.consistency import (
    ConsistentSelfAttnProcessor,
    SharedAttention,
    _RenderState,
    select_layers,
    shared_attention,
)
from lorastory.generate.consistency_settings import ConsistencySettings
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.regenerate import regenerate_panel
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import Story, with_consistency

PANELS, TOKENS, DIM = 3, 12, 16


def _attention():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=DIM, heads=2, dim_head=8).eval()
    return attn, AttnProcessor2_0()


def _processor(settings: ConsistencySettings, panels: int = PANELS, seed: int = 0):
    attn, base = _attention()
    state = _RenderState(settings, panels, seed, bank=None, write_bank=False, scheduler=None)
    state.next_call()  # step 0 of 1: inside any range that starts at 0
    return attn, base, ConsistentSelfAttnProcessor("layer", base, state), state


def _hidden(halves: int = 2, panels: int = PANELS, seed: int = 1) -> torch.Tensor:
    return torch.randn(halves * panels, TOKENS, DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("off", [{"sample_rate": 0.0}, {"strength": 0.0}, {"step_range": (0.5, 1.0)}])
def test_rate_zero_strength_zero_or_outside_the_steps_is_plain_attention_exactly(off):
    attn, base, processor, _state = _processor(ConsistencySettings(mode="attention", **off))
    hidden = _hidden()
    with torch.no_grad():
        assert torch.equal(processor(attn, hidden), base(attn, hidden))


def test_each_panel_attends_to_its_own_tokens_and_the_others_samples():
    # Rate 1: every token of the other panel is shared; compare with attention over the concatenation.
    attn, base, processor, _state = _processor(ConsistencySettings(mode="attention", sample_rate=1.0), panels=2)
    hidden = _hidden(halves=1, panels=2)
    with torch.no_grad():
        out = processor(attn, hidden)
        for panel, other in ((0, 1), (1, 0)):
            both = torch.cat([hidden[panel], hidden[other]])[None]
            query, key, value = attn.to_q(hidden[panel][None]), attn.to_k(both), attn.to_v(both)
            split = [t.view(1, -1, 2, 8).transpose(1, 2) for t in (query, key, value)]
            expected = torch.nn.functional.scaled_dot_product_attention(*split).transpose(1, 2).reshape(1, TOKENS, DIM)
            assert torch.allclose(out[panel], attn.to_out[0](expected)[0], atol=1e-5)
        assert not torch.allclose(out, base(attn, hidden), atol=1e-4)


def test_strength_weights_the_other_panels_tokens():
    attn, _base, processor, _state = _processor(ConsistencySettings(mode="attention", sample_rate=1.0, strength=0.25),
                                                panels=2)
    hidden = _hidden(halves=1, panels=2)
    with torch.no_grad():
        out = processor(attn, hidden)[0]
        both = torch.cat([hidden[0], hidden[1]])
        q = attn.to_q(hidden[0]).view(TOKENS, 2, 8).transpose(0, 1)
        k = attn.to_k(both).view(2 * TOKENS, 2, 8).transpose(0, 1)
        v = attn.to_v(both).view(2 * TOKENS, 2, 8).transpose(0, 1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1)
        weights[..., TOKENS:] *= 0.25  # the other panel's tokens count a quarter each
        weights = weights / weights.sum(-1, keepdim=True)
        expected = attn.to_out[0]((weights @ v).transpose(0, 1).reshape(TOKENS, DIM))
    assert torch.allclose(out, expected, atol=1e-5)


def test_panels_influence_each_other_only_within_their_cfg_half():
    settings = ConsistencySettings(mode="attention", sample_rate=0.5)
    hidden = _hidden()
    edited = hidden.clone()
    edited[1] += 1.0  # unconditional half, panel 2
    with torch.no_grad():
        attn, base, processor, _ = _processor(settings)
        before = processor(attn, hidden)
        attn, base, processor, _ = _processor(settings)  # same seed: same samples
        after = processor(attn, edited)
        plain_before, plain_after = base(attn, hidden), base(attn, edited)
    assert not torch.allclose(before[0], after[0])  # panel 1, unconditional: sees panel 2
    assert torch.equal(before[PANELS:], after[PANELS:])  # the conditional half never sees the unconditional one
    assert torch.equal(plain_before[0], plain_after[0])  # plain attention: panels are independent


def test_sampling_is_deterministic_given_the_seed():
    settings = ConsistencySettings(mode="attention", sample_rate=0.3)
    hidden = _hidden()
    outs = []
    for seed in (5, 5, 6):
        attn, _base, processor, _ = _processor(settings, seed=seed)
        with torch.no_grad():
            outs.append(processor(attn, hidden))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_settings_validation_names_the_field():
    with pytest.raises(ValueError, match="blocks"):
        ConsistencySettings(blocks=["left"])
    with pytest.raises(ValueError, match="step fractions"):
        ConsistencySettings(step_range=(0.6, 0.2))
    with pytest.raises(ValueError, match="not both"):
        ConsistencySettings(mode="reference", reference_image="a.png", reference_prompt="a girl")
    assert ConsistencySettings(mode="both").describe("abc") == (
        "both (strength 1, sample rate 0.5, steps 0-0.5, blocks up, reference scale 0.5, reference abc)")


# --------------------------------------------------------------------------- on a tiny pipeline


@pytest.fixture(scope="module")
def kolors_pipe(tiny_model_path):
    from lorastory.models.registry import load_pipeline

    pipe = load_pipeline(tiny_model_path("kolors"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, prompts, seeds=None):
    seeds = seeds or list(range(len(prompts)))
    return pipe(prompt=prompts, negative_prompt=[""] * len(prompts), num_inference_steps=3, guidance_scale=4.0,
                width=64, height=64, output_type="np", generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def test_blocks_select_self_attention_layers(kolors_pipe):
    unet = kolors_pipe.unet
    up = select_layers(unet, ["up"])
    assert up and all(n.startswith("up_blocks.") and n.endswith("attn1.processor") for n in up)
    assert select_layers(unet, ["up_blocks.0"]) == up
    assert set(select_layers(unet, ["up", "mid", "down"])) == {n for n in unet.attn_processors if n.endswith("attn1.processor")}
    with pytest.raises(ConfigError, match="up_blocks.0"):
        select_layers(unet, ["up_blocks.5"])


def test_changing_panel_b_changes_panel_a_only_when_on(kolors_pipe):
    settings = ConsistencySettings(mode="attention", step_range=(0.0, 1.0))
    prompts, edited = ["a girl", "a cat", "a dog"], ["a girl", "a red house at night", "a dog"]
    off_a, off_b = _call(kolors_pipe, prompts), _call(kolors_pipe, edited)
    assert np.array_equal(off_a[0], off_b[0])
    with shared_attention(kolors_pipe, settings, panels=3, seed=1) as stats:
        on_a = _call(kolors_pipe, prompts)
    with shared_attention(kolors_pipe, settings, panels=3, seed=1):
        on_b = _call(kolors_pipe, edited)
    assert not np.array_equal(on_a[0], on_b[0])
    assert np.abs(on_a - off_a).max() > 1e-4
    layers = len(select_layers(kolors_pipe.unet, ["up"]))
    assert stats.shared_calls == 3 * layers and stats.attention_factor == pytest.approx(2.0)  # 1 + 0.5 (3 - 1)


def test_processors_are_restored_even_when_the_call_fails(kolors_pipe):
    before = kolors_pipe.unet.attn_processors
    with pytest.raises(RuntimeError, match="boom"):
        with shared_attention(kolors_pipe, ConsistencySettings(mode="attention"), panels=2):
            assert any(isinstance(p, ConsistentSelfAttnProcessor) for p in kolors_pipe.unet.attn_processors.values())
            raise RuntimeError("boom")
    after = kolors_pipe.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not kolors_pipe.unet._forward_pre_hooks


def test_compiled_blocks_are_refused(kolors_pipe):
    block = next(m for m in kolors_pipe.unet.modules() if type(m).__name__ == "BasicTransformerBlock")
    block._compiled_call_impl = lambda *a, **k: None
    try:
        with pytest.raises(ConfigError, match="compiled"):
            with shared_attention(kolors_pipe, ConsistencySettings(mode="attention"), panels=2):
                pass
    finally:
        block._compiled_call_impl = None


STORY = {
    "title": "consistency",
    "character": "二次元,紫色长发少女",
    "defaults": {"steps": 3, "width": 64, "height": 64, "seed": 3},
    "consistency": {"mode": "attention", "step_range": [0.0, 1.0]},
    "panels": [{"prompt": "在练习室唱歌"}, {"prompt": "站在舞台上"}, {"prompt": "looking at the stars"}],
}


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_story_with_shared_attention_records_it_and_ties_the_panels(tmp_path, tiny_model_path, kolors_pipe):
    model = str(tiny_model_path("kolors"))
    story = Story.model_validate(STORY)
    before = kolors_pipe.unet.attn_processors
    generate_story(story, model, tmp_path / "on", pipe=kolors_pipe)
    assert all(kolors_pipe.unet.attn_processors[k] is v for k, v in before.items())
    generate_story(with_consistency(story, mode="none"), model, tmp_path / "off", pipe=kolors_pipe)
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["consistency"]["mode"] == "attention"
    assert manifest["consistency"]["settings"]["sample_rate"] == 0.5
    [render] = manifest["consistency"]["attention"]["renders"]
    assert render["mode"] == "share" and render["panels"] == 3 and render["shared_calls"] > 0
    assert json.loads((tmp_path / "off" / "manifest.json").read_text(encoding="utf-8"))["consistency"]["mode"] == "none"
    params = read_parameters(tmp_path / "on" / "panel-01.png")
    assert params.extra["Consistency"].startswith("attention (strength 1, sample rate 0.5, steps 0-1")
    assert "Consistency" in Image.open(tmp_path / "on" / "panel-01.png").text["parameters"]
    assert read_parameters(tmp_path / "off" / "panel-01.png").extra == {}
    assert Story.from_yaml(tmp_path / "on" / "story.yaml") == story
    # A new seed for panel 2 moves panel 1 with attention on (and not with it off: see test_story).
    edited = story.model_copy(update={"panels": [story.panels[0], story.panels[1].model_copy(update={"seed": 99}),
                                                 story.panels[2]]})
    generate_story(edited, model, tmp_path / "on-edited", pipe=kolors_pipe)
    changed = np.abs(_pixels(tmp_path / "on" / "panel-01.png") - _pixels(tmp_path / "on-edited" / "panel-01.png"))
    assert changed.max() > 0


def test_a_story_in_several_batches_anchors_on_the_first(tmp_path, tiny_model_path, kolors_pipe):
    story = Story.model_validate(STORY)
    generate_story(story, str(tiny_model_path("kolors")), tmp_path / "run", pipe=kolors_pipe, batch_size=2)
    attention = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))["consistency"]["attention"]
    assert [r["mode"] for r in attention["renders"]] == ["write", "read"]
    assert attention["bank_mb"] > 0 and attention["renders"][1]["shared_calls"] > 0


def test_fused_qkv_gives_the_same_story(tmp_path, tiny_model_path):
    from lorastory.models.registry import load_pipeline

    story = Story.model_validate(STORY)
    model = str(tiny_model_path("kolors"))
    generate_story(story, model, tmp_path / "plain", pipe=load_pipeline(model))
    result = generate_story(story, model, tmp_path / "fast", pipe=load_pipeline(model), fast=True)
    assert json.loads(result.manifest.read_text())["speed"] == "fused QKV"
    for name in ("panel-01.png", "panel-02.png", "panel-03.png"):
        assert np.abs(_pixels(tmp_path / "plain" / name) - _pixels(tmp_path / "fast" / name)).max() <= 1
    with pytest.raises(ConfigError, match="compiled"):
        generate_story(story, model, tmp_path / "compiled", pipe=load_pipeline(model), fast=True, compile=True)


def test_regenerating_a_panel_keeps_the_others(tmp_path, tiny_model_path, kolors_pipe):
    run = tmp_path / "run"
    generate_story(Story.model_validate(STORY), str(tiny_model_path("kolors")), run, pipe=kolors_pipe)
    before = {i: _pixels(run / f"panel-0{i}.png") for i in (1, 2, 3)}
    regenerate_panel(run, 2, seed=77, pipe=kolors_pipe)
    assert np.array_equal(before[1], _pixels(run / "panel-01.png"))
    assert np.array_equal(before[3], _pixels(run / "panel-03.png"))
    assert np.abs(before[2] - _pixels(run / "panel-02.png")).max() > 1
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["panels"][1]["seed"] == 77 and manifest["panels"][1]["file"] == "panel-02.png"


def test_sdxl_story_with_shared_attention(tmp_path, tiny_model_path):
    story = Story.model_validate({**STORY, "consistency": {"mode": "attention", "blocks": ["up", "mid"]}})
    result = generate_story(story, str(tiny_model_path("sdxl")), tmp_path / "run")
    manifest = json.loads(result.manifest.read_text(encoding="utf-8"))
    assert manifest["family"] == "StableDiffusionXLPipeline"
    assert manifest["consistency"]["attention"]["renders"][0]["shared_calls"] > 0


def test_shared_attention_object_is_reusable_and_reports(kolors_pipe):
    shared = SharedAttention(ConsistencySettings(mode="attention"))
    with shared.render(kolors_pipe, panels=2, seed=0, more_batches=True):
        _call(kolors_pipe, ["a", "b"])
    with shared.render(kolors_pipe, panels=1, seed=2):
        _call(kolors_pipe, ["c"])
    summary = shared.summary()
    assert [r["mode"] for r in summary["renders"]] == ["write", "read"]
    assert summary["renders"][1]["shared_calls"] > 0 and summary["bank_mb"] > 0
