"""The default LoRA file loads in the clients people use, with alpha honoured and the same fused weights.

Clients: ComfyUI's LoRA loader and kohya sd-scripts' ``create_network_from_weights`` + ``merge_to``
(exact ports with their source commits, tests/clients/), and plain diffusers
``load_lora_weights`` + ``fuse_lora``. Tiny models of each family, UNet and text encoders, rank 4 /
alpha 2 (alpha != rank: a loader that ignores alpha gives other weights); and a narrow UNet with
the real SDXL block layout (3 blocks, 2 layers, 0/2/10 transformer blocks), so SGM block numbers
are checked where the tiny UNet would hide an off-by-one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from clients.comfy_lora import comfy_patch
from clients.common import diffusers_fused, max_difference, merged_weights, plain_pipeline, randomise
from clients.kohya_lora import kohya_load
from safetensors import safe_open

from lorastory.models.lora import LoraSpec, default_save_formats, inject_lora, save_lora

SPEC = LoraSpec(rank=4, alpha=2.0, train_text_encoder=True)
TOLERANCE = 1e-5


def _trained(folder: Path, family: str, out: Path, unet=None):
    """A pipeline with a randomised LoRA saved to ``out`` (and ``out``'s ``lora_<format>`` siblings) as
    a training run does by default; returns its merged weights."""
    pipe = plain_pipeline(folder, family)
    if unet is not None:
        pipe.unet = unet
    torch.manual_seed(0)
    randomise(inject_lora(pipe, SPEC))
    formats = default_save_formats(family, SPEC)
    for fmt in formats:
        save_lora(pipe, out if fmt == formats[0] else out.with_name(f"lora_{fmt}.safetensors"), SPEC, family, format=fmt)
    return merged_weights(pipe)


@pytest.fixture(scope="module")
def default_file(tiny_model_dir, tmp_path_factory):
    cache = {}

    def get(family: str):
        if family not in cache:
            out = tmp_path_factory.mktemp(f"clients-{family}") / "lora.safetensors"
            cache[family] = (out, _trained(tiny_model_dir(family), family, out))
        return cache[family]

    return get


@pytest.mark.parametrize("family", ["kolors", "sdxl", "sd15"])
def test_default_file_is_kohya_with_alpha_tensors(default_file, family):
    out, _ = default_file(family)
    with safe_open(str(out), "pt") as handle:
        keys = list(handle.keys())
        alphas = {float(handle.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    names = {k.split(".", 1)[0] for k in keys}
    assert all(k.startswith(("lora_unet_", "lora_te")) for k in keys)
    assert alphas == {2.0} and len([k for k in keys if k.endswith(".alpha")]) == len(names)


@pytest.mark.parametrize("family", ["kolors", "sdxl", "sd15"])
def test_comfyui_maps_every_module_and_patches_like_diffusers(default_file, tiny_model_dir, family):
    out, merged = default_file(family)
    pipe = plain_pipeline(tiny_model_dir(family), family)
    patched, total, not_loaded, errors = comfy_patch(pipe, out)
    assert errors == []
    if family == "kolors":  # ComfyUI runs ChatGLM through custom nodes: its core LoRA loader patches the UNet
        assert {k.split(".", 1)[0] for k in not_loaded} == {k.split(".", 1)[0] for k in not_loaded if k.startswith("lora_te_")}
        merged = {k: v for k, v in merged.items() if k.startswith("unet.")}
    else:
        assert not_loaded == [] and len(patched) == total
    assert max_difference(merged, patched) <= TOLERANCE


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_kohya_sd_scripts_loads_with_nothing_missing_and_merges_the_same(default_file, tiny_model_dir, family):
    out, merged = default_file(family)
    pipe = plain_pipeline(tiny_model_dir(family), family)
    weights, created, missing, unexpected = kohya_load(pipe, family, out)
    assert (missing, unexpected) == ([], [])
    assert created == len(merged)
    assert max_difference(merged, weights) <= TOLERANCE


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_plain_diffusers_loads_and_fuses_the_default_file(default_file, tiny_model_dir, family):
    out, merged = default_file(family)
    pipe = plain_pipeline(tiny_model_dir(family), family)
    pipe.load_lora_weights(out.parent, weight_name=out.name)
    assert max_difference(merged, diffusers_fused(pipe)) <= TOLERANCE


def test_kolors_text_encoder_lora_also_gets_a_diffusers_file(default_file, tiny_model_dir):
    """diffusers' kohya reader maps CLIP names only: a ChatGLM LoRA loads in plain diffusers from the second file."""
    out, merged = default_file("kolors")
    assert default_save_formats("kolors", SPEC) == ["kohya", "diffusers"]
    assert default_save_formats("sdxl", SPEC) == default_save_formats("kolors", LoraSpec()) == ["kohya"]
    pipe = plain_pipeline(tiny_model_dir("kolors"), "kolors")
    pipe.load_lora_weights(out.parent, weight_name="lora_diffusers.safetensors")
    assert max_difference(merged, diffusers_fused(pipe)) <= TOLERANCE


def _real_sdxl_layout_unet(cross_attention_dim: int, addition: dict):
    """A narrow UNet with SDXL's real block layout (what the SGM names are counted over)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(2, 4, 4), norm_num_groups=8,
        cross_attention_dim=cross_attention_dim, use_linear_projection=True, **addition,
    )


@pytest.mark.slow
def test_real_sdxl_layout_maps_every_module_in_comfyui_and_kohya(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("sdxl")
    tiny = plain_pipeline(folder, "sdxl").unet.config
    addition = {k: tiny[k] for k in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")}
    out = tmp_path / "lora.safetensors"
    merged = _trained(folder, "sdxl", out, unet=_real_sdxl_layout_unet(tiny["cross_attention_dim"], addition))
    pipe = plain_pipeline(folder, "sdxl")
    pipe.unet = _real_sdxl_layout_unet(tiny["cross_attention_dim"], addition)
    patched, total, not_loaded, errors = comfy_patch(pipe, out)
    assert (not_loaded, errors) == ([], []) and len(patched) == total == len(merged)
    assert max_difference(merged, patched) <= TOLERANCE
    weights, created, missing, unexpected = kohya_load(pipe, "sdxl", out)
    assert (missing, unexpected, created) == ([], [], len(merged))
    assert max_difference(merged, weights) <= TOLERANCE
