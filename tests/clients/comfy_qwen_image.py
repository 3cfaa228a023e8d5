"""ComfyUI's Qwen-Image LoRA key mapping, ported for tests: the generic ``diffusion_model.`` keys and the
``isinstance(model, comfy.model_base.QwenImage)`` branch of ``model_lora_keys_unet``, with the patches made of them.

Source: github.com/Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832
  * comfy/lora.py (last changed in 47a9cde5d3045c42f20baafb9855fb96959124f0) — model_lora_keys_unet: the loop over
    ``diffusion_model.`` keys and the QwenImage branch. Its ``unet_to_diffusers`` part maps nothing for Qwen-Image
    (the config has no ``num_res_blocks``), so it is left out.
  * comfy/ldm/qwen_image/model.py (last changed in d7f40442f91a02946cab7445c6204bf154b1e86f) — ComfyUI's
    QwenImageTransformer2DModel names its parameters as diffusers' does (``transformer_blocks.N.attn.to_q``,
    ``img_mlp.net.0.proj``, ``img_mod.1``, ``norm_out.linear``…), under ``diffusion_model.`` in the model's state dict.
  * comfy/weight_adapter/lora.py — LoRAAdapter.load / calculate_weight: for ``lora_up``/``lora_down``/``alpha`` and
    ``lora_A``/``lora_B`` keys the same as the ``load_lora`` / ``calculate_weight`` of :mod:`clients.comfy_lora`
    (ported from an earlier commit), which this port reuses: ``W += strength * alpha / rank * up @ down``, scale 1
    when the file has no ``.alpha``.
License: ComfyUI is GPL-3.0. This port lives in the test suite only, like :mod:`clients.comfy_lora`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from clients.comfy_lora import calculate_weight, load_lora


def model_lora_keys_unet_qwen_image(sdk, key_map):
    """comfy/lora.py model_lora_keys_unet: the generic ``diffusion_model.`` keys and the QwenImage branch."""
    for k in sdk:
        if k.startswith("diffusion_model."):
            if k.endswith(".weight"):
                key_lora = k[len("diffusion_model."):-len(".weight")].replace(".", "_")
                key_map["lora_unet_{}".format(key_lora)] = k
                key_map["{}".format(k[:-len(".weight")])] = k  # generic lora format without any weird key names
            else:
                key_map["{}".format(k)] = k  # generic lora format for not .weight without any weird key names

    for k in sdk:  # isinstance(model, comfy.model_base.QwenImage)
        if k.startswith("diffusion_model.") and k.endswith(".weight"):  # QwenImage lora format
            key_lora = k[len("diffusion_model."):-len(".weight")]
            # Direct mapping for transformer_blocks format (QwenImage LoRA format)
            key_map["{}".format(key_lora)] = k
            # Support transformer prefix format
            key_map["transformer.{}".format(key_lora)] = k
            key_map["lycoris_{}".format(key_lora.replace(".", "_"))] = k  # SimpleTuner lycoris format
    return key_map


# ------------------------------------------------------------ glue (lorastory's, not ComfyUI's)


def comfy_qwen_image_patch(transformer, lora_file: Path, strength: float = 1.0):
    """Load ``lora_file`` as ComfyUI's LoraLoader does for a Qwen-Image model and patch the weights.

    Returns (patched weights of the patched modules, "transformer.<module>.weight"; LoRA modules in the file;
    keys ComfyUI did not load; errors of the patch arithmetic).
    """
    lora = load_file(str(lora_file))
    weights = {f"diffusion_model.{k}": v.to(torch.float32).clone() for k, v in transformer.state_dict().items()}
    key_map = model_lora_keys_unet_qwen_image(weights.keys(), {})
    not_loaded: list[str] = []
    patches = load_lora(lora, key_map, not_loaded)
    errors: list[str] = []
    patched = {}
    for name, patch in patches.items():
        weight = calculate_weight([(strength, patch, 1.0, None, None)], weights[name], name, errors)
        patched["transformer." + name.removeprefix("diffusion_model.")] = weight
    total = len({k.rsplit(".", 2)[0] if ".lora_" in k else k.removesuffix(".alpha") for k in lora})
    return patched, total, not_loaded, errors
