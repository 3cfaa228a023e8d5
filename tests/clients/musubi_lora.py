"""musubi-tuner's LoRA merge for Qwen-Image, ported for tests: how ``qwen_image_generate_image.py --lora_weight``
merges a LoRA file into the DiT's weights as it loads them.

Source: github.com/kohya-ss/musubi-tuner @ 30c658c4f4b0bf05038b3346eff9670259b10fc7
  * src/musubi_tuner/utils/lora_utils.py (last changed in 3647b20dd7ac7669d970eb769001d33a8b6e6650) —
    detect_network_type and the standard-LoRA branch of load_safetensors_with_lora_and_fp8's weight_hook_func
    (a weight key ``transformer_blocks.0.attn.to_q.weight`` looks for ``lora_unet_transformer_blocks_0_attn_to_q``
    ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; keys left over are "not all LoRA keys are used").
  * src/musubi_tuner/qwen_image/qwen_image_model.py — musubi-tuner's Qwen-Image DiT names its modules as diffusers'
    (``transformer_blocks.N.attn.to_q``, ``img_mlp.net.0.proj``), so the diffusers state dict stands in for its own.
License: Apache-2.0. Changes are mechanical: the hook runs over a state dict in a loop, on one device, without the
fp8 and convolution paths (a Qwen-Image LoRA is on Linear layers).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def detect_network_type(lora_sd):
    """Detect network type (lora, loha, lokr) from state dict keys."""
    for key in lora_sd:
        if "lora_down" in key:
            return "lora"
        if "hada_w1_a" in key:
            return "loha"
        if "lokr_w1" in key:
            return "lokr"
    return "lora"  # default


def weight_hook_func(model_weight_key, model_weight, lora_weight_keys, lora_sd, multiplier):
    """The standard-LoRA (lora_down/lora_up) branch for one weight of a Linear layer."""
    if not model_weight_key.endswith(".weight"):
        return model_weight
    lora_name = model_weight_key.rsplit(".", 1)[0]  # remove trailing ".weight"
    lora_name = "lora_unet_" + lora_name.replace(".", "_")

    down_key = lora_name + ".lora_down.weight"
    up_key = lora_name + ".lora_up.weight"
    alpha_key = lora_name + ".alpha"
    if down_key not in lora_weight_keys or up_key not in lora_weight_keys:
        return model_weight

    # get LoRA weights
    down_weight = lora_sd[down_key]
    up_weight = lora_sd[up_key]

    dim = down_weight.size()[0]
    alpha = lora_sd.get(alpha_key, dim)
    scale = alpha / dim

    # W <- W + U * D
    model_weight = model_weight + multiplier * (up_weight @ down_weight) * scale

    # remove LoRA keys from set
    lora_weight_keys.remove(down_key)
    lora_weight_keys.remove(up_key)
    if alpha_key in lora_weight_keys:
        lora_weight_keys.remove(alpha_key)
    return model_weight


# ------------------------------------------------------------ glue (lorastory's, not musubi-tuner's)


def musubi_merge(transformer, lora_file: Path, multiplier: float = 1.0):
    """Merge ``lora_file`` into the transformer's weights as musubi-tuner's Qwen-Image generation does.

    Returns (changed weights, "transformer.<module>.weight"; the network type; LoRA keys musubi-tuner left unused).
    """
    lora_sd = load_file(str(lora_file))
    network_type = detect_network_type(lora_sd)
    lora_weight_keys = set(lora_sd)
    merged = {}
    for key, weight in transformer.state_dict().items():
        weight = weight.to(torch.float32)
        new = weight_hook_func(key, weight, lora_weight_keys, lora_sd, multiplier)
        if new is not weight:
            merged[f"transformer.{key}"] = new
    return merged, network_type, sorted(lora_weight_keys)
