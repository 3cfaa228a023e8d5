"""An fp8 base for a DiT family (tiny Flux): the family names the blocks whose Linear layers convert.

The selection and the refusals run on the CPU; the conversion itself needs torchao (importorskip).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lorastory.errors import ConfigError
from lorastory.models.fp8 import check_selection, family_selection, fp8_layer_names, quantize_base
from lorastory.models.lora import LoraSpec, inject_lora
from lorastory.models.registry import get_family, load_pipeline


def _flux_with_lora(tiny_model_path):
    pipe = load_pipeline(tiny_model_path("flux"))
    pipe.transformer.requires_grad_(False)
    torch.manual_seed(0)
    params = inject_lora(pipe, LoraSpec(rank=4, alpha=4).for_family(get_family("flux")))
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    return pipe, params


def test_flux_converts_its_blocks_attention_and_mlp_but_no_embedder_or_norm(tiny_model_path):
    pipe, _ = _flux_with_lora(tiny_model_path)
    transformer = pipe.transformer
    names = fp8_layer_names(transformer, **family_selection(get_family("flux")))
    # The UNet selection (Transformer2DModel) finds nothing in a Flux transformer: the family's is needed.
    assert fp8_layer_names(transformer) == []
    assert names and all(n.startswith(("transformer_blocks.", "single_transformer_blocks.")) for n in names)
    assert not any("lora_" in n or ".norm" in n for n in names)  # AdaLayerNorm modulation sees one row per picture
    short = {n.replace(".base_layer", "").split(".", 2)[2] for n in names}
    assert {"attn.to_q", "attn.add_k_proj", "attn.to_add_out", "ff.net.2", "ff_context.net.0.proj",
            "proj_mlp", "proj_out"} <= short
    linear_names = {n.replace(".base_layer", "") for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    outside = {"x_embedder", "context_embedder", "proj_out", "norm_out.linear",
               "time_text_embed.timestep_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2"}
    assert outside <= linear_names and not outside & {n.replace(".base_layer", "") for n in names}


def test_a_family_whose_blocks_hold_no_convertible_layer_is_refused_in_one_line(tiny_model_path):
    pipe, _ = _flux_with_lora(tiny_model_path)
    nothing = dataclasses.replace(get_family("flux"), fp8_blocks=("NoSuchBlock",))
    count = len(fp8_layer_names(pipe.transformer, **family_selection(nothing)))
    with pytest.raises(ConfigError, match=r"^--base-dtype fp8-weights: no Linear layer of the Flux.1 transformer "
                                          r"can be stored in fp8 .*; leave it at default$"):
        check_selection(count, "fp8-weights", nothing)
    assert check_selection(0, "default", nothing) == 0


def test_flux_train_and_generate_refuse_fp8_without_cuda(cli, tiny_model_path, style_train_folder, tmp_path):
    result = cli("train", "--model", tiny_model_path("flux"), "--data", style_train_folder, "--out", tmp_path / "run",
                 "--resolution", "64", "--max-steps", "1", "--base-dtype", "fp8-weights")
    assert result.code == 1 and result.error_line("--base-dtype fp8-weights needs a CUDA GPU (this run is on the cpu)")
    story = tmp_path / "story.yaml"
    story.write_text("defaults: {width: 64, height: 64, steps: 2}\npanels:\n  - prompt: a cat\n", encoding="utf-8")
    result = cli("generate", story, "--model", tiny_model_path("flux"), "--out", tmp_path / "story", "--base-dtype", "fp8")
    assert result.code == 1 and result.error_line("--base-dtype fp8 needs a CUDA GPU")
    assert not (tmp_path / "run").exists() and not (tmp_path / "story").exists()


def test_fp8_weights_flux_passes_the_lora_gradient_as_bf16_does(tiny_model_path):
    pytest.importorskip("torchao", reason="torchao is not installed: pip install 'lorastory[fp8]'")
    from lorastory.models.families.flux import flux_predict

    pipe, params = _flux_with_lora(tiny_model_path)
    transformer = pipe.transformer.to(torch.bfloat16)
    for param in params:
        param.data = param.data.float()
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 16, 8, 8, generator=g)
    text = {"prompt_embeds": torch.randn(2, 8, 32, generator=g), "pooled_prompt_embeds": torch.randn(2, 32, generator=g)}

    def grads() -> list[torch.Tensor]:
        for param in params:
            param.grad = None
        flux_predict(transformer, noisy, torch.tensor([0.3, 0.8]), text, torch.bfloat16).float().square().mean().backward()
        return [param.grad.clone() for param in params]

    reference = grads()
    selection = family_selection(get_family("flux"))
    names = fp8_layer_names(transformer, **selection)
    assert quantize_base(transformer, "fp8-weights", training=True, **selection) == len(names)
    assert all(transformer.get_submodule(n).weight.qdata.dtype == torch.float8_e4m3fn for n in names)
    got = grads()
    assert all(g.abs().sum() > 0 for g in got)
    flat, ref = torch.cat([g.flatten() for g in got]), torch.cat([r.flatten() for r in reference])
    assert ((flat - ref).norm() / ref.norm()).item() < 0.1


@pytest.mark.gpu
@pytest.mark.parametrize("base_dtype", ["fp8-weights", "fp8"])
def test_flux_trains_and_renders_on_cuda_with_an_fp8_base(tmp_path, tiny_model_path, style_train_folder, base_dtype):
    import math

    from lorastory.generate.story import generate_story

    from lorastory.generate.story_file import Story
    from lorastory.train.config import TrainConfig
    from lorastory.train.trainer import train

    pytest.importorskip("torchao", reason="torchao is not installed: pip install 'lorastory[fp8]'")
    if base_dtype == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 matmuls need compute capability 8.9+")
    losses = {}
    for dtype in ("default", base_dtype):
        lines: list[str] = []
        config = TrainConfig(model=str(tiny_model_path("flux")), data=str(style_train_folder), out=str(tmp_path / dtype),
                             resolution=64, rank=4, alpha=4.0, lr=1e-3, max_steps=6, batch_size=2, seed=3,
                             gradient_checkpointing=False, precision="bf16", compile="off", base_dtype=dtype)
        result = train(config, say=lines.append)
        assert result.steps == 6 and all(math.isfinite(x) for x in result.losses)
        converted = [line for line in lines if line.startswith("base weights:")]
        assert bool(converted) == (dtype != "default")
        losses[dtype] = result.losses
    assert max(abs(a - b) / abs(b) for a, b in zip(losses[base_dtype], losses["default"])) < 0.05
    story = Story.model_validate({"defaults": {"steps": 4, "cfg": 3.5, "width": 64, "height": 64},
                                  "panels": [{"prompt": "a cat"}, {"prompt": "a dog"}]})
    result = generate_story(story, str(tiny_model_path("flux")), tmp_path / "story", base_dtype=base_dtype,
                            lora=str(tmp_path / base_dtype / "lora.safetensors"))
    assert result.storyboard.is_file() and len(result.panels) == 2
    assert "Linear layers in float8" in json.loads(result.manifest.read_text(encoding="utf-8"))["speed"]


@pytest.mark.parametrize("family", ["flux", "kolors"])
def test_fused_qkv_in_fp8_is_stored_once_and_renders_as_the_fused_bf16_path(tiny_model_path, family):
    # diffusers keeps the separate q/k/v beside the fused layer; converted too they were a second fp8 copy
    # (2.15 B parameters on FLUX.1-dev). Now the fused layer converts and the separate ones view its fp8 rows.
    pytest.importorskip("torchao", reason="torchao is not installed: pip install 'lorastory[fp8]'")
    import numpy as np

    from lorastory.generate.speed import prepare_for_speed, speed_context

    def render(pipe) -> np.ndarray:
        call = {"guidance_scale": 3.5} if family == "flux" else {"guidance_scale": 4.0}
        with speed_context(pipe):
            return pipe(prompt=["a girl"], num_inference_steps=2, width=64, height=64, output_type="np",
                        generator=[torch.Generator().manual_seed(1)], **call).images

    pipes = []
    for base_dtype in ("default", "fp8-weights"):
        pipe = load_pipeline(tiny_model_path(family))
        pipe.set_progress_bar_config(disable=True)
        pipe.to(torch.bfloat16)
        report = prepare_for_speed(pipe, base_dtype=base_dtype)
        assert "fused QKV" in report.levers
        pipes.append(pipe)
    denoiser = get_family(family).denoiser_of(pipes[1])
    groups = 0
    for module in denoiser.modules():
        fused = getattr(module, "to_qkv", None) if getattr(module, "fused_projections", False) else None
        if fused is None or not hasattr(fused.weight, "qdata"):
            continue
        start = fused.weight.qdata.data_ptr()
        rows = fused.weight.qdata.stride(0) * fused.weight.qdata.element_size()
        offsets = [getattr(module, name).weight.qdata.data_ptr() - start for name in ("to_q", "to_k", "to_v")]
        q_rows = module.to_q.weight.shape[0]
        assert offsets == [0, q_rows * rows, (q_rows + module.to_k.weight.shape[0]) * rows]  # views, no copy
        groups += 1
    assert groups > 0
    bf16, fp8 = render(pipes[0]), render(pipes[1])
    psnr = 10 * np.log10(1.0 / np.mean((bf16.astype(np.float64) - fp8) ** 2))
    assert psnr > 25, psnr  # fp8 weights on a tiny random model: the noise of e4m3, not a wrong layer
