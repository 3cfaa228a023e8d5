"""The frozen base in fp8 (``--base-dtype``): which layers convert, the gradient through them, one-line refusals."""

from __future__ import annotations

import sys

import pytest
import torch

from lorastory.errors import ConfigError
from lorastory.models.fp8 import check_base_dtype, fp8_layer_names, quantize_base


class Transformer2DModel(torch.nn.Module):  # named as diffusers' class: its Linear layers see one row per token
    def __init__(self) -> None:
        super().__init__()
        self.proj_in = torch.nn.Linear(64, 64)
        self.odd = torch.nn.Linear(24, 64)  # 24 is not a multiple of 16: fp8 GEMMs refuse it
        self.lora_A = torch.nn.Linear(64, 16)  # a LoRA's own layer: trained, never converted


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.time_embedding = torch.nn.Linear(64, 64)  # one row per picture: stays as loaded
        self.attentions = torch.nn.ModuleList([Transformer2DModel()])


def test_only_token_wise_linear_layers_with_fp8_shapes_convert():
    assert fp8_layer_names(Net()) == ["attentions.0.proj_in"]
    assert fp8_layer_names(Net(), whole=True) == ["time_embedding", "attentions.0.proj_in"]  # a text encoder: all


def _lora_grads(unet, params):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=g).to(torch.bfloat16)
    text = torch.randn(2, 8, 32, generator=g).to(torch.bfloat16)
    added = {"text_embeds": torch.randn(2, 32, generator=g).to(torch.bfloat16),
             "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2).to(torch.bfloat16)}
    for param in params:
        param.grad = None
    unet(sample, torch.tensor([10, 500]), text, added_cond_kwargs=added).sample.float().square().mean().backward()
    return [param.grad.clone() for param in params]


def test_fp8_weights_train_the_lora_as_bf16_does(bf16_unet_with_lora):
    pytest.importorskip("torchao", reason="torchao is not installed: pip install 'lorastory[fp8]'")
    unet, params = bf16_unet_with_lora
    names = fp8_layer_names(unet)
    assert names and all(".attentions." in n and "lora_" not in n for n in names)
    assert not any("time_emb" in n or "add_embedding" in n or "encoder_hid_proj" in n for n in names)
    reference = _lora_grads(unet, params)
    assert quantize_base(unet, "fp8-weights", training=True) == len(names)
    assert all(unet.get_submodule(n).weight.qdata.dtype == torch.float8_e4m3fn for n in names)
    grads = _lora_grads(unet, params)
    # Every LoRA weight, also those before fp8 layers, gets a gradient close to the bf16 one.
    assert all(g.abs().sum() > 0 for g in grads)
    total = torch.cat([g.flatten() for g in grads]), torch.cat([r.flatten() for r in reference])
    assert ((total[0] - total[1]).norm() / total[1].norm()).item() < 0.1


def test_fp8_refused_in_one_line_without_cuda(cli, tiny_model_path, style_train_folder, tmp_path):
    result = cli("train", "--model", tiny_model_path("sd15"), "--data", style_train_folder, "--out", tmp_path / "run",
                 "--resolution", "64", "--max-steps", "1", "--base-dtype", "fp8")
    assert result.code == 1
    assert result.error_line("--base-dtype fp8 needs a CUDA GPU (this run is on the cpu)")
    assert not (tmp_path / "run").exists()
    result = cli("train", "--model", tiny_model_path("sd15"), "--data", style_train_folder, "--out", tmp_path / "run",
                 "--base-dtype", "int4")
    assert result.code == 1 and result.error_line("base_dtype")
    result = cli("train", "--model", tiny_model_path("sd15"), "--data", style_train_folder, "--out", tmp_path / "run",
                 "--base-dtype", "fp8-weights", "--train-text-encoder")
    assert result.code == 1 and result.error_line("does not combine with train_text_encoder")


def test_generate_refuses_fp8_without_cuda(cli, tiny_model_path, tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text("panels:\n  - prompt: a cat\n", encoding="utf-8")
    result = cli("generate", story, "--model", tiny_model_path("sd15"), "--out", tmp_path / "run",
                 "--base-dtype", "fp8-weights")
    assert result.code == 1 and result.error_line("--base-dtype fp8-weights needs a CUDA GPU")
    assert not (tmp_path / "run").exists()


def test_fp8_without_torchao_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao now raises ImportError
    with pytest.raises(ConfigError, match=r"needs torchao: pip install 'lorastory\[fp8\]'"):
        check_base_dtype("fp8-weights", torch.device("cuda"))
    check_base_dtype("default", torch.device("cpu"))  # the default needs nothing


@pytest.mark.gpu
@pytest.mark.parametrize("base_dtype", ["fp8-weights", "fp8"])
def test_train_and_generate_on_cuda_with_an_fp8_base(tmp_path, tiny_model_path, style_train_folder, base_dtype):
    import math

    from lorastory.generate.story import generate_story

    from lorastory.generate.story_file import Story
    from lorastory.train.config import TrainConfig
    from lorastory.train.trainer import train

    if base_dtype == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 matmuls need compute capability 8.9+")
    losses = {}
    for dtype in ("default", base_dtype):
        lines: list[str] = []
        config = TrainConfig(model=str(tiny_model_path("kolors")), data=str(style_train_folder),
                             out=str(tmp_path / dtype), resolution=64, rank=4, alpha=4.0, lr=1e-3, max_steps=6,
                             batch_size=2, seed=3, gradient_checkpointing=False, precision="bf16", compile="blocks",
                             base_dtype=dtype)
        result = train(config, say=lines.append)
        assert result.steps == 6 and all(math.isfinite(x) for x in result.losses)
        assert any(line.startswith("base weights:") for line in lines) == (dtype != "default")
        losses[dtype] = result.losses
    assert max(abs(a - b) / abs(b) for a, b in zip(losses[base_dtype], losses["default"])) < 0.05

    story = Story.model_validate({"defaults": {"steps": 4, "width": 64, "height": 64},
                                  "panels": [{"prompt": "a cat"}, {"prompt": "a dog"}]})
    result = generate_story(story, str(tiny_model_path("kolors")), tmp_path / "story", base_dtype=base_dtype,
                            offload=True, lora=str(tmp_path / base_dtype / "lora.safetensors"))
    assert result.storyboard.is_file() and len(result.panels) == 2
