"""LoRA variants (LoCon, LoHa, LoKr, DoRA): saved in the LyCORIS layout and loaded back with the same weights.

Per variant, on a tiny model (UNet and text encoders, adapters randomised so every parameter
matters): lorastory's own ``apply_lora`` + fuse, ComfyUI's loader (port in tests/clients/)
and, where diffusers reads the variant from a kohya/LyCORIS file (LoCon, DoRA), plain diffusers
``load_lora_weights`` + ``fuse_lora`` must all give the weights the trained adapter merges to.
"""

from __future__ import annotations

import pytest
import torch
from clients.comfy_lora import comfy_patch
from clients.common import diffusers_fused, max_difference, merged_weights, plain_pipeline, randomise
from clients.kohya_lora import kohya_load
from safetensors import safe_open

from lorastory.errors import ConfigError
from lorastory.models.lora import LoraError, LoraSpec, apply_lora, fuse, inject_lora, load_lora_state, save_lora

TOLERANCE = 1e-4  # LoHa/LoKr products in float32 over a few hundred terms
SPECS = {
    "locon": LoraSpec(rank=4, alpha=2.0, network="locon", conv_rank=2, conv_alpha=1.0, train_text_encoder=True),
    "loha": LoraSpec(rank=4, alpha=2.0, network="loha", conv_rank=2, train_text_encoder=True),
    "lokr": LoraSpec(rank=2, alpha=1.0, network="lokr", lokr_factor=4, lokr_decompose_both=True, train_text_encoder=True),
    "dora": LoraSpec(rank=4, alpha=2.0, network="dora", train_text_encoder=True),
}
FILE_PARTS = {"locon": "lora_down", "loha": "hada_w1_a", "lokr": "lokr_w2_a", "dora": "dora_scale"}


@pytest.fixture(scope="module")
def variant_file(tiny_model_dir, tmp_path_factory):
    cache = {}

    def get(network: str, family: str = "sdxl"):
        if (network, family) not in cache:
            pipe = plain_pipeline(tiny_model_dir(family), family)
            torch.manual_seed(0)
            randomise(inject_lora(pipe, SPECS[network]))
            out = tmp_path_factory.mktemp(f"variant-{network}") / f"{network}.safetensors"
            save_lora(pipe, out, SPECS[network], family)
            cache[network, family] = (out, merged_weights(pipe))
        return cache[network, family]

    return get


@pytest.mark.parametrize("network", list(SPECS))
def test_variant_file_has_lycoris_names_and_loads_back_in_lorastory(variant_file, tiny_model_dir, network):
    out, merged = variant_file(network)
    with safe_open(str(out), "pt") as handle:
        keys = list(handle.keys())
        meta = handle.metadata()
    assert any(f".{FILE_PARTS[network]}" in k for k in keys) and all(k.startswith(("lora_unet_", "lora_te")) for k in keys)
    assert meta["lorastory.network"] == network
    if network == "locon":  # the ResNet convolutions are adapted, at their own rank
        assert any("_resnets_" in k or "in_layers" in k for k in keys)
    _, info = load_lora_state(out)
    assert info.network == {"locon": "lora"}.get(network, network)
    pipe = plain_pipeline(tiny_model_dir("sdxl"), "sdxl")
    apply_lora(pipe, out)
    assert info.num_modules == len(merged)
    fuse(pipe)
    assert max_difference(merged, diffusers_fused_weights(pipe)) <= TOLERANCE


def diffusers_fused_weights(pipe):
    """The base weights of every adapted module (after lorastory's ``fuse``)."""
    weights = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, component, None)
        for name, layer in (module.named_modules() if module is not None else []):
            if getattr(layer, "base_layer", None) is not None:
                weights[f"{component}.{name}.weight"] = layer.base_layer.weight.detach().to(torch.float32).clone()
    return weights


@pytest.mark.parametrize("network", ["locon", "loha", "lokr"])
def test_comfyui_loads_variant_with_the_same_weights(variant_file, tiny_model_dir, network):
    out, merged = variant_file(network)
    patched, total, not_loaded, errors = comfy_patch(plain_pipeline(tiny_model_dir("sdxl"), "sdxl"), out)
    assert (not_loaded, errors) == ([], []) and len(patched) == total == len(merged)
    assert max_difference(merged, patched) <= TOLERANCE


def test_comfyui_maps_every_dora_module(variant_file, tiny_model_dir):
    """ComfyUI reads dora_scale and patches every module; its DoRA normalises over the input axis (the
    ported version) where peft normalises each output row, so its weights differ (docs/training.md)."""
    out, merged = variant_file("dora")
    patched, total, not_loaded, errors = comfy_patch(plain_pipeline(tiny_model_dir("sdxl"), "sdxl"), out)
    assert (not_loaded, errors) == ([], []) and len(patched) == total == len(merged)


def test_kohya_sd_scripts_loads_locon(variant_file, tiny_model_dir):
    out, merged = variant_file("locon")
    weights, created, missing, unexpected = kohya_load(plain_pipeline(tiny_model_dir("sdxl"), "sdxl"), "sdxl", out)
    assert (missing, unexpected, created) == ([], [], len(merged))
    assert max_difference(merged, weights) <= TOLERANCE


def test_plain_diffusers_loads_locon(variant_file, tiny_model_dir):
    out, merged = variant_file("locon")
    pipe = plain_pipeline(tiny_model_dir("sdxl"), "sdxl")
    pipe.load_lora_weights(out.parent, weight_name=out.name)
    assert max_difference(merged, diffusers_fused(pipe)) <= TOLERANCE


def test_plain_diffusers_drops_dora_magnitudes(variant_file, tiny_model_dir):
    """diffusers' SD/SDXL loaders filter ``dora_scale`` out (with a warning) and load the plain LoRA part."""
    out, merged = variant_file("dora")
    pipe = plain_pipeline(tiny_model_dir("sdxl"), "sdxl")
    pipe.load_lora_weights(out.parent, weight_name=out.name)
    assert not any(getattr(m, "use_dora", {}).get("default_0") for m in pipe.unet.modules())
    assert max_difference(merged, diffusers_fused(pipe)) > 100 * TOLERANCE


@pytest.mark.parametrize("network", ["loha", "lokr"])
def test_plain_diffusers_does_not_read_loha_or_lokr_for_unets(variant_file, tiny_model_dir, network):
    """diffusers converts LoKr only for Z-Image/Flux2 and LoHa not at all (docs/training.md says so)."""
    out, _ = variant_file(network)
    pipe = plain_pipeline(tiny_model_dir("sdxl"), "sdxl")
    with pytest.raises((ValueError, KeyError)):
        pipe.load_lora_weights(out.parent, weight_name=out.name)


@pytest.mark.parametrize("family", ["kolors", "sd15"])
def test_loha_round_trips_in_the_other_families(variant_file, tiny_model_dir, family):
    out, merged = variant_file("loha", family)
    pipe = plain_pipeline(tiny_model_dir(family), family)
    apply_lora(pipe, out, fuse=True)
    assert max_difference(merged, diffusers_fused_weights(pipe)) <= TOLERANCE
    comfy = {k: v for k, v in merged.items() if family != "kolors" or k.startswith("unet.")}
    patched, _, _, errors = comfy_patch(plain_pipeline(tiny_model_dir(family), family), out)
    assert errors == [] and max_difference(comfy, patched) <= TOLERANCE


def test_variant_settings_are_validated():
    with pytest.raises(ValueError, match="lokr_factor"):
        LoraSpec(network="loha", lokr_factor=4)
    with pytest.raises(ValueError, match="conv_rank"):
        LoraSpec(network="dora", conv_rank=4)
    with pytest.raises(ValueError, match="lokr_factor must be"):
        LoraSpec(network="lokr", lokr_factor=1)
    with pytest.raises((ValueError, ConfigError)):
        LoraSpec(network="glora")
    assert LoraSpec().config_hash("sdxl") == LoraSpec(network="lora").config_hash("sdxl")


def test_variant_cannot_be_saved_in_the_diffusers_layout_or_with_another_spec(tiny_model_dir, tmp_path):
    pipe = plain_pipeline(tiny_model_dir("sd15"), "sd15")
    inject_lora(pipe, SPECS["loha"])
    with pytest.raises(LoraError, match="kohya/LyCORIS layout only"):
        save_lora(pipe, tmp_path / "a.safetensors", SPECS["loha"], format="diffusers")
    with pytest.raises(LoraError, match="is a loha but the spec says lokr"):
        save_lora(pipe, tmp_path / "b.safetensors", SPECS["loha"].model_copy(update={"network": "lokr"}))
