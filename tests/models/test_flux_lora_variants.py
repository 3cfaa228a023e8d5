"""Flux LoHa, LoKr and DoRA: LyCORIS tensors on diffusers module names, which ComfyUI patches into BFL's fused weights.

A LoHa/LoKr/DoRA on diffusers' separate ``to_q``/``to_k``/``to_v`` cannot be written as one tensor set on BFL's fused
``img_attn.qkv`` / ``linear1`` (a Hadamard or Kronecker product per part is not one product over the whole), so the
file keeps the diffusers names under OneTrainer's ``lora_transformer_`` prefix; ComfyUI's Flux key map sends those to
(fused key, offset) and its ``calculate_weight`` narrows the weight to the offset before any adapter patches it
(tests/clients/comfy_flux.py). On the tiny Flux, the default targets (q/k/v into the fused weights, ``proj_mlp`` into
``linear1``), adapters randomised: ``apply_lora`` and ComfyUI's loader give peft's merged weights (DoRA: ComfyUI's
norm rule, as for Qwen-Image). Training runs through the CLI at 64 px for two steps.
"""

from __future__ import annotations

import pytest
from clients.comfy_flux import comfy_flux_patch
from clients.common import max_difference, merged_weights, save_random_adapter, saved_variants
from safetensors import safe_open

from lorastory.models.families.flux import FLUX_LORA_TARGETS
from lorastory.models.lora import LoraSpec, apply_lora, load_lora_state
from lorastory.models.registry import load_pipeline

TARGETS = list(FLUX_LORA_TARGETS)  # what a Flux training run adapts
SPECS = {
    "loha": LoraSpec(rank=4, alpha=2.0, network="loha", target_modules=TARGETS),
    "lokr": LoraSpec(rank=2, alpha=1.0, network="lokr", lokr_factor=4, lokr_decompose_both=True, target_modules=TARGETS),
    "dora": LoraSpec(rank=4, alpha=2.0, network="dora", target_modules=TARGETS),
}
FILE_PARTS = {"loha": "hada_w1_a", "lokr": "lokr_w2", "dora": "dora_scale"}  # lokr_w2 or lokr_w2_a, by size
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def variant_files(tiny_model_path, tmp_path_factory):
    """Per network: a randomised adapter on the tiny Flux saved as a training run saves it; merged and base weights."""
    return saved_variants("flux", tiny_model_path("flux"), SPECS, tmp_path_factory)


@pytest.mark.parametrize("network", list(SPECS))
def test_variant_keeps_diffusers_names_and_loads_back_with_its_merged_weights(variant_files, network):
    folder, out, merged, _ = variant_files(network)
    with safe_open(str(out), "pt") as handle:
        keys, meta = set(handle.keys()), handle.metadata()
    assert meta["lorastory.network"] == network and meta["lorastory.family"] == "flux"
    assert all(k.startswith("lora_transformer_") for k in keys)
    for name in ("transformer_blocks_0_attn_to_q", "single_transformer_blocks_0_attn_to_v",
                 "single_transformer_blocks_0_proj_mlp"):
        assert any(k.startswith(f"lora_transformer_{name}.{FILE_PARTS[network]}") for k in keys)
    _, info = load_lora_state(out)
    assert (info.network, info.components, info.num_modules) == (network, ("transformer",), len(merged))
    ours = load_pipeline(folder)
    apply_lora(ours, out)
    assert max_difference(merged, merged_weights(ours)) <= TOLERANCE


@pytest.mark.parametrize("network", ["loha", "lokr"])
def test_comfyui_patches_the_fused_weights_by_offset_as_peft_merges(variant_files, network):
    folder, out, merged, _ = variant_files(network)
    patched, total, not_loaded, errors = comfy_flux_patch(load_pipeline(folder).transformer, out)
    assert (not_loaded, errors) == ([], []) and total == len(merged)
    assert max_difference(merged, patched) <= TOLERANCE  # every adapted q/k/v/MLP slice of qkv and linear1


def test_comfyui_dora_patches_every_slice_with_its_base_weight_norm(variant_files):
    from safetensors.torch import load_file

    folder, out, merged, base = variant_files("dora")
    patched, total, not_loaded, errors = comfy_flux_patch(load_pipeline(folder).transformer, out)
    assert (not_loaded, errors) == ([], []) and total == len(merged)
    tensors = load_file(str(out))
    comfy, peft = {}, {}
    for key in merged:
        name = "lora_transformer_" + key.removeprefix("transformer.").removesuffix(".weight").replace(".", "_")
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        adapted = base[key] + float(tensors[f"{name}.alpha"]) / down.shape[0] * up @ down
        magnitude = tensors[f"{name}.dora_scale"]
        peft[key] = magnitude * adapted / adapted.norm(dim=1, keepdim=True)
        comfy[key] = magnitude * adapted / base[key].norm(dim=1, keepdim=True)  # ComfyUI @ a125cd84, per output row
    assert max_difference(peft, merged) <= TOLERANCE and max_difference(comfy, patched) <= TOLERANCE


def test_variant_with_a_clip_lora_loads_back_both_parts(tiny_model_path, tmp_path):
    """A text-encoder LoHa beside the transformer's: CLIP-L under kohya's ``lora_te1_`` names, read back too."""
    folder = tiny_model_path("flux")
    spec = LoraSpec(rank=4, alpha=2.0, network="loha", target_modules=TARGETS, train_text_encoder=True)
    merged, _ = save_random_adapter(folder, spec, tmp_path / "lora.safetensors")
    with safe_open(str(tmp_path / "lora.safetensors"), "pt") as handle:
        assert any(k.startswith("lora_te1_text_model_") and k.endswith(".hada_w1_a") for k in handle.keys())  # noqa: SIM118
    ours = load_pipeline(folder)
    info = apply_lora(ours, tmp_path / "lora.safetensors")
    assert info.components == ("transformer", "text_encoder")
    assert max_difference(merged, merged_weights(ours)) <= TOLERANCE


@pytest.mark.slow
def test_train_loha_on_flux_writes_a_file_comfyui_and_lorastory_load(cli, tiny_model_path, style_train_folder,
                                                                      tmp_path):
    folder, out = tiny_model_path("flux"), tmp_path / "run"
    result = cli("train", "--model", folder, "--data", style_train_folder, "--out", out, "--network", "loha",
                 "--rank", "2", "--alpha", "1", "--resolution", "64", "--max-steps", "2", "--lr", "1e-2",
                 "--no-gradient-checkpointing")
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["lora.safetensors"]
    _, info = load_lora_state(out / "lora.safetensors")
    assert (info.network, info.family) == ("loha", "flux")
    transformer = load_pipeline(folder).transformer
    base = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    patched, total, not_loaded, errors = comfy_flux_patch(transformer, out / "lora.safetensors")
    assert (not_loaded, errors) == ([], []) and total == info.num_modules > 0
    assert any(float((patched[k] - base[k]).abs().max()) > 0 for k in patched if k in base)  # two steps moved them
    ours = load_pipeline(folder)
    apply_lora(ours, out / "lora.safetensors")
    assert len(merged_weights(ours)) == total
