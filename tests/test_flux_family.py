"""Flux.1, a diffusion transformer family, through every stage on a tiny random Flux (CPU, 64 px, few steps).

train (flow matching, guidance input, packed latents) → LoRA files that plain diffusers and
ComfyUI's loader (tests/clients/comfy_flux.py) read → a story → eval and checkpoint selection.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from clients.comfy_flux import comfy_flux_patch
from lorastory.models.lora import apply_lora, load_lora_state
from lorastory.models.objectives import FlowObjective, flow_shift, training_objective
from lorastory.models.registry import ModelLoadError, denoiser, detect_family, get_family, load_pipeline

STORY = {
    "title": "flux", "character": "anime girl", "style": "striped style", "separator": ", ",
    "defaults": {"steps": 2, "cfg": 3.5, "width": 64, "height": 64, "seed": 1},
    "panels": [{"prompt": "{character} on a stage", "caption": "one"}, {"prompt": "{character} in the sky"}],
}


def _train_args(model, data, out, steps: int) -> list[str]:
    return ["train", "--data", str(data), "--model", str(model), "--out", str(out), "--resolution", "64", "--rank", "4",
            "--alpha", "2", "--lr", "3e-3", "--max-steps", str(steps), "--batch-size", "2", "--checkpoint-every", "2",
            "--no-gradient-checkpointing", "--validation-prompt", "striped style", "--validation-every", "4",
            "--validation-steps", "2"]


@pytest.fixture(scope="module")
def flux_run(tiny_model_path, style_train_folder, tmp_path_factory):
    """A few Flux LoRA training steps through the CLI, with two checkpoints."""
    from lorastory.cli import main

    out = tmp_path_factory.mktemp("flux") / "run"
    assert main(_train_args(tiny_model_path("flux"), style_train_folder, out, 4)) == 0
    return out


def _merged(pipe) -> dict[str, torch.Tensor]:
    weights = {}
    for name, layer in denoiser(pipe).named_modules():
        if getattr(layer, "base_layer", None) is not None:
            layer.merge()
            weights[f"transformer.{name}.weight"] = layer.base_layer.weight.detach().clone()
    return weights


def test_tiny_flux_folder_is_detected_and_loaded(tiny_model_path, tmp_path, monkeypatch):
    folder = tiny_model_path("flux")
    assert detect_family(folder).name == "flux"
    pipe = load_pipeline(folder)
    assert type(pipe).__name__ == "FluxPipeline" and pipe.vae.config.latent_channels == 16
    assert denoiser(pipe) is pipe.transformer and pipe.transformer.config.guidance_embeds
    (tmp_path / "flux.safetensors").write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="cannot load .* as flux"):
        load_pipeline(tmp_path / "flux.safetensors", family="flux")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="huggingface-cli download black-forest-labs/FLUX.1-dev"):
        load_pipeline("black-forest-labs/FLUX.1-dev")


def test_flow_objective_trains_toward_noise_at_high_resolution(tiny_model_path):
    objective = training_objective(get_family("flux"), load_pipeline(tiny_model_path("flux")))
    assert isinstance(objective, FlowObjective)
    draws = {size: torch.stack([objective.draw_timestep(torch.Generator().manual_seed(i), (16, size, size))
                                for i in range(200)]) for size in (32, 128)}
    assert all(((t > 0) & (t < 1)).all() for t in draws.values())
    assert draws[128].mean() > draws[32].mean()  # Flux's resolution-dependent shift: more tokens, more noise
    latents, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    noisy, target = objective.noisy_and_target(latents, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(noisy[0], latents[0]) and torch.equal(noisy[1], noise[1]) and torch.equal(target, noise - latents)
    assert flow_shift({"use_dynamic_shifting": False, "shift": 1.0})(128, 128) == 1.0  # schnell: no shift


def test_training_writes_kohya_and_diffusers_loras_every_client_reads(flux_run, tiny_model_path):
    from diffusers import FluxPipeline

    kohya, diffusers_file = flux_run / "lora.safetensors", flux_run / "lora_diffusers.safetensors"
    assert sorted(p.name for p in (flux_run / "samples").iterdir()) == ["step-000004-00.png"]  # validation pictures
    with safe_open(str(kohya), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert metadata["lorastory.family"] == "flux"
    for module in ("double_blocks_0_img_attn_qkv", "double_blocks_0_txt_attn_qkv", "double_blocks_0_img_mlp_0",
                   "single_blocks_0_linear1", "single_blocks_0_linear2"):
        assert f"lora_unet_{module}.lora_down.weight" in keys and f"lora_unet_{module}.alpha" in keys
    _, info = load_lora_state(kohya)
    assert info.components == ("transformer",) and info.rank == 4 and info.alpha == 2.0

    ours = load_pipeline(tiny_model_path("flux"))
    apply_lora(ours, kohya)
    reference = _merged(ours)
    plain = FluxPipeline.from_pretrained(tiny_model_path("flux"))
    plain.load_lora_weights(str(flux_run), weight_name=diffusers_file.name)
    assert max(float((reference[k] - w).abs().max()) for k, w in _merged(plain).items()) < 1e-5
    patched, total, not_loaded, errors = comfy_flux_patch(load_pipeline(tiny_model_path("flux")).transformer, kohya)
    assert not not_loaded and not errors and total == len([k for k in keys if k.endswith(".lora_down.weight")])
    assert max(float((reference[k] - patched[k]).abs().max()) for k in reference) < 1e-5


def test_story_with_the_flux_lora_then_eval(cli, flux_run, tiny_model_path, tiny_clip, tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(STORY), encoding="utf-8")
    out = tmp_path / "story"
    result = cli("generate", story, "--model", tiny_model_path("flux"), "--lora", flux_run / "lora.safetensors",
                 "--out", out, "--fast")
    assert result.code == 0, result.err
    assert "  speed:      LoRA fused, fused QKV\n" in result.out  # the fast path's levers (on the CPU: no compile note)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["family"] == "FluxPipeline" and [p["file"] for p in manifest["panels"]] == ["panel-01.png", "panel-02.png"]
    from lorastory.generate.pngmeta import read_parameters

    params = read_parameters(out / "panel-01.png")
    assert params.cfg_scale == 3.5 and params.sampler == "Euler" and params.lora_name
    assert (out / "storyboard.png").is_file()
    result = cli("eval", out, "--clip", tiny_clip)
    assert result.code == 0, result.err
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert [p["file"] for p in scores["panels"]] == ["panel-01.png", "panel-02.png"]
    assert all(np.isfinite([p["clip_t"], p["consistency"]]).all() for p in scores["panels"])


def test_schnell_layout_and_noise_samplers_refused(cli, tmp_path):
    from lorastory.fileio import atomic_dir
    from lorastory.models.families.flux_tiny import tiny_flux_schnell

    folder = tmp_path / "schnell"
    with atomic_dir(folder) as tmp:
        torch.manual_seed(0)
        tiny_flux_schnell(tmp, 8)[0].save_pretrained(tmp, safe_serialization=True)
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(STORY), encoding="utf-8")
    result = cli("generate", story, "--model", folder, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert (tmp_path / "out" / "panel-02.png").is_file()
    story.write_text(yaml.safe_dump({**STORY, "defaults": {**STORY["defaults"], "sampler": "DPM++ 2M"}}), encoding="utf-8")
    cli("generate", story, "--model", folder, "--out", tmp_path / "out2").error_line("DPM++ 2M", "Euler")
    story.write_text(yaml.safe_dump(STORY), encoding="utf-8")
    result = cli("generate", story, "--model", folder, "--out", tmp_path / "out3", "--consistency", "attention")
    assert result.code == 0, result.err  # shared attention on the joint attention (tests/generate/test_flux_shared_attention.py)
    story.write_text(yaml.safe_dump({**STORY, "defaults": {**STORY["defaults"], "width": 72}}), encoding="utf-8")
    cli("generate", story, "--model", folder, "--out", tmp_path / "out4").error_line("multiples of 16", "72x64")


def test_web_app_model_picker_offers_a_flux_folder(tiny_model_path, tmp_path):
    from lorastory.ui.actions import model_choices, resolve_model
    from lorastory.ui.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(tiny_model_path("flux"), ws.root / "models" / "flux-dev")
    assert "models/flux-dev" in model_choices(ws)
    assert detect_family(resolve_model(ws, "models/flux-dev")).name == "flux"


@pytest.mark.slow
def test_eval_checkpoints_picks_a_flux_checkpoint(cli, flux_run, tiny_clip, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(flux_run, run)
    result = cli("eval", "checkpoints", run, "--clip", tiny_clip, "--seeds", "1", "--batch-size", "2")
    assert result.code == 0, result.err
    assert (run / "best.safetensors").is_file()
    _, info = load_lora_state(run / "best.safetensors")
    assert info.family == "flux"


@pytest.mark.slow
def test_resumed_flux_training_ends_bit_identical(cli, flux_run, tiny_model_path, style_train_folder, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"  # the straight run as it stood after step 2
    shutil.copytree(flux_run, out, ignore=shutil.ignore_patterns("step-000004*", "samples"))
    for written_at_the_end in out.glob("lora*.safetensors"):
        written_at_the_end.unlink()
    result = cli(*_train_args(tiny_model_path("flux"), style_train_folder, out, 4), "--resume")
    assert result.code == 0, result.err
    assert "resumed from step-000002" in result.out + result.err
    straight, resumed = load_file(str(flux_run / "lora.safetensors")), load_file(str(out / "lora.safetensors"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_clip_text_encoder_lora_trains_with_the_transformer(cli, tiny_model_path, style_train_folder, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--data", style_train_folder, "--model", tiny_model_path("flux"), "--out", out, "--resolution", "64",
                 "--rank", "4", "--lr", "3e-3", "--max-steps", "2", "--batch-size", "2", "--no-gradient-checkpointing",
                 "--train-text-encoder")
    assert result.code == 0, result.err
    with safe_open(str(out / "lora.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)  # CLIP-L, kohya's name
    assert not any("encoder_block" in k or k.startswith("lora_te2_") for k in keys)  # T5 stays frozen
    pipe = load_pipeline(tiny_model_path("flux"))
    before = pipe.encode_prompt(["striped style"], None, max_sequence_length=32)[1]
    info = apply_lora(pipe, out / "lora.safetensors")
    assert info.components == ("transformer", "text_encoder")
    assert not torch.allclose(pipe.encode_prompt(["striped style"], None, max_sequence_length=32)[1], before)


def test_training_keeps_cudnn_attention_off_in_the_step_and_its_recompute(tiny_model_path, style_train_folder, tmp_path,
                                                                        monkeypatch):
    """cuDNN's fused attention backward fails on Flux's joint attention at 1024² (H200, torch 2.11): every attention
    call of a training step, the ones gradient checkpointing runs again inside the backward included, has that
    backend off, and torch's own choice is back once training ends. (Two processes: tests/train/test_distributed.py.)"""
    from lorastory.train.config import TrainConfig
    from lorastory.train.trainer import train

    calls: list[tuple[bool, bool]] = []  # (inside a backward, cuDNN attention allowed)
    attention = torch.nn.functional.scaled_dot_product_attention

    def watched(*args, **kwargs):
        if torch.is_grad_enabled():  # the training step's; the caches encode text and pictures without gradients
            calls.append((torch._C._current_graph_task_id() != -1, torch.backends.cuda.cudnn_sdp_enabled()))
        return attention(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", watched)
    lines: list[str] = []
    result = train(TrainConfig(model=str(tiny_model_path("flux")), data=str(style_train_folder), out=str(tmp_path / "run"),
                               batch_size=2, resolution=64, rank=4, max_steps=1, gradient_checkpointing=True),
                   say=lines.append)
    assert result.steps == 1
    assert any(backward for backward, _ in calls) and any(not backward for backward, _ in calls)
    assert not any(allowed for _, allowed in calls)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    assert get_family("flux").training_attention == ("flash", "efficient", "math")
    assert get_family("kolors").training_attention is None  # a UNet's attention: torch's choice, measured fine
    assert get_family("qwen-image").training_attention is None  # cuDNN's runs it at full size, and is fastest there


def test_flux_sizes_and_adapters_it_cannot_save_are_one_line_errors(cli, tiny_model_path, style_train_folder, tmp_path):
    cli("train", "--data", style_train_folder, "--model", tiny_model_path("flux"), "--out", tmp_path / "run",
        "--resolution", "72", "--max-steps", "1", "--batch-size", "2").error_line("multiples of 16", "72x72")
    cli("train", "--data", style_train_folder, "--model", tiny_model_path("flux"), "--out", tmp_path / "run2",
        "--resolution", "64", "--max-steps", "1", "--network", "locon").error_line("Flux.1", "not locon", "--network lora")
