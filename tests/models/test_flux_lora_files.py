"""Flux LoRA files made by other tools load with the weights those tools mean.

sd-scripts trains each fused BFL linear (``img_attn.qkv``, ``linear1``) as one LoRA, so its
``lora_up`` is dense over the q/k/v(/MLP) parts; XLabs' trainer writes ``processor.qkv_lora1``
keys; ai-toolkit writes diffusers ``transformer.`` keys without lorastory's header. Each file
here is built from known random matrices and the merged weight is checked against
``W + alpha / rank * up @ down`` for every part.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from lorastory.models.lora import apply_lora, load_lora_state
from lorastory.models.registry import load_pipeline


def _base_and_merged(folder, lora_file) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    base = {k: v.clone() for k, v in load_pipeline(folder).transformer.state_dict().items()}
    pipe = load_pipeline(folder)
    apply_lora(pipe, lora_file)
    merged = {}
    for name, layer in pipe.transformer.named_modules():
        if getattr(layer, "base_layer", None) is not None:
            layer.merge()
            merged[f"{name}.weight"] = layer.base_layer.weight.detach().clone()
    return base, merged


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_sd_scripts_dense_fused_lora_splits_into_its_parts(tiny_model_path, tmp_path):
    folder = tiny_model_path("flux")
    inner, rank, alpha = 16, 4, 2.0  # the tiny Flux: 2 heads x 8
    down, up = _random(rank, inner, seed=1), _random(7 * inner, rank, seed=2)  # linear1: q, k, v, then the 4x MLP
    qkv_down, qkv_up = _random(rank, inner, seed=3), _random(3 * inner, rank, seed=4)
    file = tmp_path / "sd_scripts.safetensors"
    save_file({
        "lora_unet_single_blocks_0_linear1.lora_down.weight": down, "lora_unet_single_blocks_0_linear1.lora_up.weight": up,
        "lora_unet_single_blocks_0_linear1.alpha": torch.tensor(alpha),
        "lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight": qkv_down,
        "lora_unet_double_blocks_0_txt_attn_qkv.lora_up.weight": qkv_up,
        "lora_unet_double_blocks_0_txt_attn_qkv.alpha": torch.tensor(alpha),
    }, str(file))
    _, info = load_lora_state(file)
    assert info.format == "kohya" and info.num_modules == 7
    base, merged = _base_and_merged(folder, file)
    parts = {"single_transformer_blocks.0.attn.to_q": (up[:inner], down),
             "single_transformer_blocks.0.attn.to_k": (up[inner : 2 * inner], down),
             "single_transformer_blocks.0.attn.to_v": (up[2 * inner : 3 * inner], down),
             "single_transformer_blocks.0.proj_mlp": (up[3 * inner :], down),
             "transformer_blocks.0.attn.add_q_proj": (qkv_up[:inner], qkv_down),
             "transformer_blocks.0.attn.add_k_proj": (qkv_up[inner : 2 * inner], qkv_down),
             "transformer_blocks.0.attn.add_v_proj": (qkv_up[2 * inner :], qkv_down)}
    assert set(merged) == {f"{m}.weight" for m in parts}
    for module, (b, a) in parts.items():
        expected = base[f"{module}.weight"] + alpha / rank * b @ a
        assert torch.allclose(merged[f"{module}.weight"], expected, atol=1e-5), module


def test_xlabs_and_ai_toolkit_flux_loras_load(tiny_model_path, tmp_path):
    folder = tiny_model_path("flux")
    inner, rank = 16, 4
    down, up = _random(rank, inner, seed=5), _random(3 * inner, rank, seed=6)
    proj_down, proj_up = _random(rank, inner, seed=7), _random(inner, rank, seed=8)
    xlabs = tmp_path / "xlabs.safetensors"
    save_file({"double_blocks.0.processor.qkv_lora1.down.weight": down, "double_blocks.0.processor.qkv_lora1.up.weight": up,
               "double_blocks.0.processor.proj_lora1.down.weight": proj_down,
               "double_blocks.0.processor.proj_lora1.up.weight": proj_up}, str(xlabs))
    _, info = load_lora_state(xlabs)
    assert info.format == "xlabs" and info.components == ("transformer",) and info.num_modules == 4
    base, merged = _base_and_merged(folder, xlabs)
    expected = {"transformer_blocks.0.attn.to_q": up[:inner] @ down, "transformer_blocks.0.attn.to_k": up[inner : 2 * inner] @ down,
                "transformer_blocks.0.attn.to_v": up[2 * inner :] @ down, "transformer_blocks.0.attn.to_out.0": proj_up @ proj_down}
    for module, delta in expected.items():  # XLabs files record no alpha: scale 1
        assert torch.allclose(merged[f"{module}.weight"], base[f"{module}.weight"] + delta, atol=1e-5), module

    toolkit = tmp_path / "ai_toolkit.safetensors"  # diffusers keys, no header: alpha == rank
    save_file({"transformer.single_transformer_blocks.0.proj_out.lora_A.weight": _random(rank, 5 * inner, seed=9),
               "transformer.single_transformer_blocks.0.proj_out.lora_B.weight": _random(inner, rank, seed=10)}, str(toolkit))
    _, info = load_lora_state(toolkit)
    assert info.format == "diffusers" and info.target_modules == ("proj_out",)
    base, merged = _base_and_merged(folder, toolkit)
    delta = _random(inner, rank, seed=10) @ _random(rank, 5 * inner, seed=9)
    key = "single_transformer_blocks.0.proj_out.weight"
    assert torch.allclose(merged[key], base[key] + delta, atol=1e-5)
