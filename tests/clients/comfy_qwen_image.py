"""ComfyUI's Qwen-Image LoRA key mapping, ported for tests: the generic ``diffusion_model.`` keys and the
``isinstance(model, comfy.model_base.QwenImage)`` branch of ``model_lora_keys_unet``, with the patches made of them.

Source: github.com/Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832
  * comfy/lora.py (last changed in 47a9cde5d3045c42f20baafb9855fb96959124f0) — model_lora_keys_unet: the loop over
    ``diffusion_model.`` keys and the QwenImage branch. Its ``unet_to_diffusers`` part maps nothing for Qwen-Image
    (the config has no ``num_res_blocks``), so it is left out.
  * comfy/ldm/qwen_image/model.py (last changed in d7f40442f91a02946cab7445c6204bf154b1e86f) — ComfyUI's
    QwenImageTransformer2DModel names its parameters as diffusers' does (``transformer_blocks.N.attn.to_q``,
    ``img_mlp.net.0.proj``, ``img_mod.1``, ``norm_out.linear``…), under ``diffusion_model.`` in the model's state dict.
  * comfy/weight_adapter/lora.py, loha.py, lokr.py (last changed in 7be2b49b6b3430783555bc6bc8fcb3f46d5392e7) —
    LoRAAdapter, LoHaAdapter, LoKrAdapter .load / .calculate_weight: for ``lora_up``/``lora_down``/``alpha``,
    ``lora_A``/``lora_B``, ``hada_w1_a``… and ``lokr_w1``… keys the same as the ``load_lora`` / ``calculate_weight``
    of :mod:`clients.comfy_lora` (ported from an earlier commit), which this port reuses: ``W += strength * alpha /
    rank * up @ down`` (LoHa: ``(w1a @ w1b) * (w2a @ w2b)``, LoKr: ``kron(w1, w2)``), scale 1 when the file has no
    ``.alpha`` (LoKr: or no low-rank factor).
  * comfy/weight_adapter/base.py (last changed in eb2f78b4e09b1970e2fc51fc5d2e062f1a826399) — weight_decompose, the
    DoRA step, which changed since that earlier commit: a ``dora_scale`` with one row per output channel (LyCORIS'
    ``wd_on_out``, what peft trains) divides by the row norms of the weight *before* the patch; ported below.
License: ComfyUI is GPL-3.0. This port lives in the test suite only, like :mod:`clients.comfy_lora`.
"""

from __future__ import annotations

import re
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


def weight_decompose(dora_scale, weight, lora_diff, alpha, strength, intermediate_dtype, function):
    """comfy/weight_adapter/base.py weight_decompose (``cast_to_device`` is ``.to``)."""
    dora_scale = dora_scale.to(weight.device, intermediate_dtype)
    lora_diff *= alpha
    weight_calc = weight + function(lora_diff).type(weight.dtype)

    wd_on_output_axis = dora_scale.shape[0] == weight_calc.shape[0]
    if wd_on_output_axis:
        weight_norm = (
            weight.reshape(weight.shape[0], -1)
            .norm(dim=1, keepdim=True)
            .reshape(weight.shape[0], *[1] * (weight.dim() - 1))
        )
    else:
        weight_norm = (
            weight_calc.transpose(0, 1)
            .reshape(weight_calc.shape[1], -1)
            .norm(dim=1, keepdim=True)
            .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1))
            .transpose(0, 1)
        )
    weight_norm = weight_norm + torch.finfo(weight.dtype).eps

    weight_calc *= (dora_scale / weight_norm).type(weight.dtype)
    if strength != 1.0:
        weight_calc -= weight
        weight += strength * (weight_calc)
    else:
        weight[:] = weight_calc
    return weight


# ------------------------------------------------------------ glue (lorastory's, not ComfyUI's)

TENSOR_PART = re.compile(r"\.(lora_(?:up|down|A|B)\.weight|alpha|dora_scale|hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2)$")


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
        weight = calculate_weight([(strength, patch, 1.0, None, None)], weights[name], name, errors,
                                  decompose=weight_decompose)
        patched["transformer." + name.removeprefix("diffusion_model.")] = weight
    total = len({TENSOR_PART.sub("", k) for k in lora})
    return patched, total, not_loaded, errors
