"""ComfyUI's Flux LoRA key mapping, ported for tests: ``flux_to_diffusers`` and the Flux branch of
``model_lora_keys_unet``, with the offset patches ``ModelPatcher.add_patches`` makes of them.

Source: github.com/Comfy-Org/ComfyUI (formerly comfyanonymous/ComfyUI)
  * comfy/utils.py @ b3be02d6e766a8d3743dcf99cc967118f3ec8e3e — swap_scale_shift, flux_to_diffusers;
  * comfy/lora.py  @ 41444b5236c613ee5ff7d09aa620f94b702f30eb — model_lora_keys_unet (the generic
    ``diffusion_model.`` keys and the ``isinstance(model, comfy.model_base.Flux)`` part);
  * comfy/model_patcher.py (add_patches: a key that is a tuple is (key, offset[, function])) and
    comfy/lora.py calculate_weight (``weight.narrow(*offset)`` before patching).
  * at Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832 the Flux branch and flux_to_diffusers' offsets
    are unchanged, and comfy/lora.py calculate_weight narrows the weight to the offset before *any* weight adapter
    (LoRA, LoHa, LoKr, DoRA's weight_decompose) patches it in place: LyCORIS files on diffusers names patch the
    fused qkv / linear1 slices. Its DoRA step (weight_decompose) is the one in :mod:`clients.comfy_qwen_image`.
License: ComfyUI is GPL-3.0. This port lives in the test suite only, like :mod:`clients.comfy_lora`,
whose ``load_lora`` and ``calculate_weight`` it reuses.

ComfyUI runs Flux in BFL's layout (``double_blocks.N.img_attn.qkv`` fused, ``single_blocks.N.linear1``
fused); the glue at the end (ours) lays a diffusers Flux transformer out that way, patches it with a
LoRA file as ComfyUI's LoraLoader would and hands the patched weights back under diffusers names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from clients.comfy_lora import calculate_weight, load_lora
from clients.comfy_qwen_image import TENSOR_PART, weight_decompose


def swap_scale_shift(weight):
    shift, scale = weight.chunk(2, dim=0)
    new_weight = torch.cat([scale, shift], dim=0)
    return new_weight


def flux_to_diffusers(mmdit_config, output_prefix=""):  # noqa: C901 - ported as is (the Flux 2 entries left out)
    n_double_layers = mmdit_config.get("depth", 0)
    n_single_layers = mmdit_config.get("depth_single_blocks", 0)
    hidden_size = mmdit_config.get("hidden_size", 0)

    key_map = {}
    for index in range(n_double_layers):
        prefix_from = "transformer_blocks.{}".format(index)
        prefix_to = "{}double_blocks.{}".format(output_prefix, index)

        for end in ("weight", "bias"):
            k = "{}.attn.".format(prefix_from)
            qkv = "{}.img_attn.qkv.{}".format(prefix_to, end)
            key_map["{}to_q.{}".format(k, end)] = (qkv, (0, 0, hidden_size))
            key_map["{}to_k.{}".format(k, end)] = (qkv, (0, hidden_size, hidden_size))
            key_map["{}to_v.{}".format(k, end)] = (qkv, (0, hidden_size * 2, hidden_size))

            k = "{}.attn.".format(prefix_from)
            qkv = "{}.txt_attn.qkv.{}".format(prefix_to, end)
            key_map["{}add_q_proj.{}".format(k, end)] = (qkv, (0, 0, hidden_size))
            key_map["{}add_k_proj.{}".format(k, end)] = (qkv, (0, hidden_size, hidden_size))
            key_map["{}add_v_proj.{}".format(k, end)] = (qkv, (0, hidden_size * 2, hidden_size))

        block_map = {
            "attn.to_out.0.weight": "img_attn.proj.weight",
            "attn.to_out.0.bias": "img_attn.proj.bias",
            "norm1.linear.weight": "img_mod.lin.weight",
            "norm1.linear.bias": "img_mod.lin.bias",
            "norm1_context.linear.weight": "txt_mod.lin.weight",
            "norm1_context.linear.bias": "txt_mod.lin.bias",
            "attn.to_add_out.weight": "txt_attn.proj.weight",
            "attn.to_add_out.bias": "txt_attn.proj.bias",
            "ff.net.0.proj.weight": "img_mlp.0.weight",
            "ff.net.0.proj.bias": "img_mlp.0.bias",
            "ff.net.2.weight": "img_mlp.2.weight",
            "ff.net.2.bias": "img_mlp.2.bias",
            "ff_context.net.0.proj.weight": "txt_mlp.0.weight",
            "ff_context.net.0.proj.bias": "txt_mlp.0.bias",
            "ff_context.net.2.weight": "txt_mlp.2.weight",
            "ff_context.net.2.bias": "txt_mlp.2.bias",
            "attn.norm_q.weight": "img_attn.norm.query_norm.weight",
            "attn.norm_k.weight": "img_attn.norm.key_norm.weight",
            "attn.norm_added_q.weight": "txt_attn.norm.query_norm.weight",
            "attn.norm_added_k.weight": "txt_attn.norm.key_norm.weight",
        }

        for k in block_map:
            key_map["{}.{}".format(prefix_from, k)] = "{}.{}".format(prefix_to, block_map[k])

    for index in range(n_single_layers):
        prefix_from = "single_transformer_blocks.{}".format(index)
        prefix_to = "{}single_blocks.{}".format(output_prefix, index)

        for end in ("weight", "bias"):
            k = "{}.attn.".format(prefix_from)
            qkv = "{}.linear1.{}".format(prefix_to, end)
            key_map["{}to_q.{}".format(k, end)] = (qkv, (0, 0, hidden_size))
            key_map["{}to_k.{}".format(k, end)] = (qkv, (0, hidden_size, hidden_size))
            key_map["{}to_v.{}".format(k, end)] = (qkv, (0, hidden_size * 2, hidden_size))
            key_map["{}.proj_mlp.{}".format(prefix_from, end)] = (qkv, (0, hidden_size * 3, hidden_size * 4))

        block_map = {
            "norm.linear.weight": "modulation.lin.weight",
            "norm.linear.bias": "modulation.lin.bias",
            "proj_out.weight": "linear2.weight",
            "proj_out.bias": "linear2.bias",
            "attn.norm_q.weight": "norm.query_norm.weight",
            "attn.norm_k.weight": "norm.key_norm.weight",
        }

        for k in block_map:
            key_map["{}.{}".format(prefix_from, k)] = "{}.{}".format(prefix_to, block_map[k])

    MAP_BASIC = {  # noqa: N806 - ported as is
        ("final_layer.linear.bias", "proj_out.bias"),
        ("final_layer.linear.weight", "proj_out.weight"),
        ("img_in.bias", "x_embedder.bias"),
        ("img_in.weight", "x_embedder.weight"),
        ("time_in.in_layer.bias", "time_text_embed.timestep_embedder.linear_1.bias"),
        ("time_in.in_layer.weight", "time_text_embed.timestep_embedder.linear_1.weight"),
        ("time_in.out_layer.bias", "time_text_embed.timestep_embedder.linear_2.bias"),
        ("time_in.out_layer.weight", "time_text_embed.timestep_embedder.linear_2.weight"),
        ("txt_in.bias", "context_embedder.bias"),
        ("txt_in.weight", "context_embedder.weight"),
        ("vector_in.in_layer.bias", "time_text_embed.text_embedder.linear_1.bias"),
        ("vector_in.in_layer.weight", "time_text_embed.text_embedder.linear_1.weight"),
        ("vector_in.out_layer.bias", "time_text_embed.text_embedder.linear_2.bias"),
        ("vector_in.out_layer.weight", "time_text_embed.text_embedder.linear_2.weight"),
        ("guidance_in.in_layer.bias", "time_text_embed.guidance_embedder.linear_1.bias"),
        ("guidance_in.in_layer.weight", "time_text_embed.guidance_embedder.linear_1.weight"),
        ("guidance_in.out_layer.bias", "time_text_embed.guidance_embedder.linear_2.bias"),
        ("guidance_in.out_layer.weight", "time_text_embed.guidance_embedder.linear_2.weight"),
        ("final_layer.adaLN_modulation.1.bias", "norm_out.linear.bias", swap_scale_shift),
        ("final_layer.adaLN_modulation.1.weight", "norm_out.linear.weight", swap_scale_shift),
        ("pos_embed_input.bias", "controlnet_x_embedder.bias"),
        ("pos_embed_input.weight", "controlnet_x_embedder.weight"),
    }

    for k in MAP_BASIC:
        if len(k) > 2:
            key_map[k[1]] = ("{}{}".format(output_prefix, k[0]), None, k[2])
        else:
            key_map[k[1]] = "{}{}".format(output_prefix, k[0])

    return key_map


def model_lora_keys_unet_flux(sdk, unet_config, key_map):
    """comfy/lora.py model_lora_keys_unet: the generic ``diffusion_model.`` keys and the Flux branch."""
    for k in sdk:
        if k.startswith("diffusion_model."):
            if k.endswith(".weight"):
                key_lora = k[len("diffusion_model."):-len(".weight")].replace(".", "_")
                key_map["lora_unet_{}".format(key_lora)] = k
                key_map["lora_prior_unet_{}".format(key_lora)] = k
                key_map["{}".format(k[:-len(".weight")])] = k
            else:
                key_map["{}".format(k)] = k

    diffusers_keys = flux_to_diffusers(unet_config, output_prefix="diffusion_model.")
    for k in diffusers_keys:
        if k.endswith(".weight"):
            to = diffusers_keys[k]
            key_map["transformer.{}".format(k[:-len(".weight")])] = to  # simpletrainer and regular diffusers flux lora format
            key_map["lycoris_{}".format(k[:-len(".weight")].replace(".", "_"))] = to  # simpletrainer lycoris
            key_map["lora_transformer_{}".format(k[:-len(".weight")].replace(".", "_"))] = to  # onetrainer
    return key_map


# ------------------------------------------------------------ glue (lorastory's, not ComfyUI's)


def comfy_flux_config(transformer) -> dict:
    """ComfyUI's Flux ``unet_config`` fields flux_to_diffusers reads, from a diffusers transformer config."""
    config = transformer.config
    return {"depth": config.num_layers, "depth_single_blocks": config.num_single_layers,
            "hidden_size": config.num_attention_heads * config.attention_head_dim}


def comfy_flux_model(transformer) -> tuple[dict[str, torch.Tensor], dict]:
    """The transformer's weights in ComfyUI's (BFL) layout under ``diffusion_model.`` keys, and its unet_config."""
    config = comfy_flux_config(transformer)
    state = transformer.state_dict()
    weights: dict[str, torch.Tensor] = {}
    for diffusers_key, target in flux_to_diffusers(config, output_prefix="diffusion_model.").items():
        if diffusers_key not in state:
            continue
        value = state[diffusers_key].to(torch.float32)
        if isinstance(target, str):
            weights[target] = value.clone()
        elif target[1] is None:  # (key, None, function): stored transformed
            weights[target[0]] = target[2](value).clone()
        else:
            dim, start, size = target[1]
            fused = weights.get(target[0])
            need = start + size
            if fused is None or fused.shape[dim] < need:
                grown = torch.zeros([need, *value.shape[1:]])
                if fused is not None:
                    grown[: fused.shape[0]] = fused
                fused = grown
            fused.narrow(dim, start, size).copy_(value)
            weights[target[0]] = fused
    return weights, config


def comfy_flux_patch(transformer, lora_file: Path, strength: float = 1.0):
    """Load ``lora_file`` as ComfyUI's LoraLoader does for a Flux model and patch the weights.

    Returns (patched weights in diffusers names "transformer.<key>", LoRA modules in the file, keys
    ComfyUI did not load, errors of the patch arithmetic).
    """
    lora = load_file(str(lora_file))
    weights, config = comfy_flux_model(transformer)
    key_map = model_lora_keys_unet_flux(weights.keys(), config, {})
    not_loaded: list[str] = []
    patches = load_lora(lora, key_map, not_loaded)
    errors: list[str] = []
    patched_comfy = {k: v.clone() for k, v in weights.items()}
    for key, patch in patches.items():
        name, offset = (key, None) if isinstance(key, str) else (key[0], key[1])
        weight = patched_comfy[name]
        target = weight if offset is None else weight.narrow(*offset)  # add_patches + calculate_weight's narrow
        calculate_weight([(strength, patch, 1.0, None, None)], target, name, errors, decompose=weight_decompose)
    patched = {}
    for diffusers_key, target in flux_to_diffusers(config, output_prefix="diffusion_model.").items():
        if isinstance(target, str) and target in patched_comfy:
            patched[f"transformer.{diffusers_key}"] = patched_comfy[target]
        elif not isinstance(target, str) and target[1] is not None and target[0] in patched_comfy:
            patched[f"transformer.{diffusers_key}"] = patched_comfy[target[0]].narrow(*target[1])
    total = len({TENSOR_PART.sub("", k) for k in lora if not k.endswith(".alpha")})
    return patched, total, not_loaded, errors
