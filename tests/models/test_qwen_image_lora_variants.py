"""Qwen-Image LoHa, LoKr and DoRA: LyCORIS tensors on musubi-tuner's kohya names, read back by us and by ComfyUI.

On the tiny Qwen-Image, every Linear module of the transformer adapted and every adapter parameter randomised (so a
reader that drops a tensor, a scale or a module gives other weights): the file holds LyCORIS' tensor names
(``hada_w1_a``…, ``lokr_w1``/``lokr_w2_a``…, ``dora_scale``) on ``lora_unet_transformer_blocks_0_attn_to_q``-style
names; ``apply_lora`` (what ``generate --lora`` uses) gives the weights peft merges to, and ComfyUI's loader
(tests/clients/comfy_qwen_image.py) maps every module and patches LoHa and LoKr to the same weights. ComfyUI's DoRA
divides by the base weight's row norms where peft (and LyCORIS) divide by the adapted weight's: its weights are
peft's times ``|W + dW| / |W|`` per output row, which the test checks exactly (docs/training.md).
Training runs through the CLI (``--network``) at 64 px for two steps.
"""

from __future__ import annotations

import pytest
import torch
from clients.comfy_qwen_image import comfy_qwen_image_patch
from clients.common import max_difference, merged_weights, saved_variants
from safetensors import safe_open

from lorastory.models.families.qwen_image import QWEN_IMAGE_MODULES
from lorastory.models.lora import LoraFormatError, LoraSpec, apply_lora, load_lora_state
from lorastory.models.registry import load_pipeline

EVERY_LINEAR = sorted({m.removeprefix("transformer_blocks.N.") for m in QWEN_IMAGE_MODULES})
SPECS = {
    "loha": LoraSpec(rank=4, alpha=2.0, network="loha", target_modules=EVERY_LINEAR),
    "lokr": LoraSpec(rank=2, alpha=1.0, network="lokr", lokr_factor=4, lokr_decompose_both=True,
                     target_modules=EVERY_LINEAR),
    "dora": LoraSpec(rank=4, alpha=2.0, network="dora", target_modules=EVERY_LINEAR),
}
FILE_PARTS = {"loha": ("hada_w1_a", "hada_w2_b", "alpha"), "lokr": ("lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"),
              "dora": ("lora_down.weight", "lora_up.weight", "dora_scale", "alpha")}
TOLERANCE = 1e-4  # LoHa/LoKr products in float32


@pytest.fixture(scope="module")
def variant_files(tiny_model_path, tmp_path_factory):
    """Per network: a randomised adapter on the tiny Qwen-Image saved as a training run saves it; merged and base weights."""
    return saved_variants("qwen-image", tiny_model_path("qwen-image"), SPECS, tmp_path_factory)


@pytest.mark.parametrize("network", list(SPECS))
def test_variant_is_saved_on_musubi_names_and_loads_back_with_its_merged_weights(variant_files, network):
    folder, out, merged, _ = variant_files(network)
    with safe_open(str(out), "pt") as handle:
        keys, meta = set(handle.keys()), handle.metadata()
    assert meta["lorastory.network"] == network and meta["lorastory.family"] == "qwen-image"
    assert all(k.startswith("lora_unet_") for k in keys)
    for name in ("transformer_blocks_1_img_mlp_net_0_proj", "transformer_blocks_0_attn_add_q_proj", "norm_out_linear"):
        assert {f"lora_unet_{name}.{part}" for part in FILE_PARTS[network]} <= keys
    _, info = load_lora_state(out)
    assert (info.network, info.format, info.components, info.num_modules) == (network, "lycoris", ("transformer",),
                                                                               len(merged))
    ours = load_pipeline(folder)
    apply_lora(ours, out)
    assert max_difference(merged, merged_weights(ours)) <= TOLERANCE


def test_variant_with_a_module_the_transformer_lacks_is_a_one_line_error(variant_files, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, out, _, _ = variant_files("loha")
    tensors = load_file(str(out))
    for key in [k for k in tensors if k.startswith("lora_unet_norm_out_linear.")]:
        tensors[key.replace("norm_out_linear", "norm_out_linear_2")] = tensors.pop(key)
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraFormatError, match="lora_unet_norm_out_linear_2 is not a Qwen-Image transformer module"):
        apply_lora(load_pipeline(folder), tmp_path / "bad.safetensors")


@pytest.mark.parametrize("network", ["loha", "lokr"])
def test_comfyui_maps_every_module_and_patches_peft_merged_weights(variant_files, network):
    folder, out, merged, _ = variant_files(network)
    patched, total, not_loaded, errors = comfy_qwen_image_patch(load_pipeline(folder).transformer, out)
    assert (not_loaded, errors) == ([], []) and len(patched) == total == len(merged)
    assert max_difference(merged, patched) <= TOLERANCE


def test_comfyui_dora_maps_every_module_and_scales_by_the_base_weight_norm(variant_files):
    folder, out, merged, base = variant_files("dora")
    patched, total, not_loaded, errors = comfy_qwen_image_patch(load_pipeline(folder).transformer, out)
    assert (not_loaded, errors) == ([], []) and len(patched) == total == len(merged)
    adapted, magnitudes = _dora_terms(out, base)
    # peft: m * (W + dW) / |W + dW|; ComfyUI @ a125cd84: m * (W + dW) / |W|, norms of rows (output channels).
    peft = {k: magnitudes[k] * v / v.norm(dim=1, keepdim=True) for k, v in adapted.items()}
    comfy = {k: magnitudes[k] * v / base[k].norm(dim=1, keepdim=True) for k, v in adapted.items()}
    assert max_difference(peft, merged) <= TOLERANCE and max_difference(comfy, patched) <= TOLERANCE
    assert max_difference(merged, patched) > 10 * TOLERANCE  # the rule above is what tells them apart


def _dora_terms(file, base):
    """``W + alpha / rank * up @ down`` and the magnitudes (``dora_scale``) per "transformer.<module>.weight"."""
    from safetensors.torch import load_file

    tensors = load_file(str(file))
    adapted, magnitudes = {}, {}
    for key, weight in base.items():
        name = "lora_unet_" + key.removeprefix("transformer.").removesuffix(".weight").replace(".", "_")
        if f"{name}.dora_scale" in tensors:
            down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
            scale = float(tensors[f"{name}.alpha"]) / down.shape[0]
            adapted[key] = weight.to(torch.float32) + scale * up.to(torch.float32) @ down.to(torch.float32)
            magnitudes[key] = tensors[f"{name}.dora_scale"].to(torch.float32)
    return adapted, magnitudes


@pytest.mark.slow
def test_train_lokr_and_dora_on_qwen_image_write_files_comfyui_and_lorastory_load(cli, tiny_model_path,
                                                                                     style_train_folder, tmp_path):
    folder = tiny_model_path("qwen-image")
    for network, extra in (("lokr", ["--lokr-factor", "4"]), ("dora", [])):
        out = tmp_path / network
        result = cli("train", "--model", folder, "--data", style_train_folder, "--out", out, "--network", network,
                     "--rank", "2", "--alpha", "1", "--resolution", "64", "--max-steps", "2", "--lr", "1e-2",
                     "--no-gradient-checkpointing", *extra)
        assert result.code == 0, result.err
        assert sorted(p.name for p in out.glob("*.safetensors")) == ["lora.safetensors"]
        _, info = load_lora_state(out / "lora.safetensors")
        assert info.network == network and info.family == "qwen-image"
        transformer = load_pipeline(folder).transformer
        base = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
        patched, total, not_loaded, errors = comfy_qwen_image_patch(transformer, out / "lora.safetensors")
        assert (not_loaded, errors) == ([], []) and len(patched) == total > 0
        assert any(float((patched[k] - base[k]).abs().max()) > 0 for k in patched)  # two steps moved the weights
        ours = load_pipeline(folder)
        apply_lora(ours, out / "lora.safetensors")
        assert len(merged_weights(ours)) == total
