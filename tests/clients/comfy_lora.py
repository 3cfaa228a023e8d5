"""ComfyUI's LoRA loader, ported for tests: its key maps, ``load_lora`` and the patch arithmetic.

Source: github.com/comfyanonymous/ComfyUI
  * comfy/lora.py  @ 41444b5236c613ee5ff7d09aa620f94b702f30eb — LORA_CLIP_MAP, load_lora, model_lora_keys_clip,
    model_lora_keys_unet (the SD1.x/SDXL part), weight_decompose, calculate_weight (diff, lora, lokr, loha);
  * comfy/utils.py @ 2ba5cc8b867bc1aabe59fdaf0a8489e65012d603 — UNET_MAP_* tables and unet_to_diffusers.
License: ComfyUI is GPL-3.0. This port lives in the test suite only (it is not part of the lorastory
package and is not distributed with it), to check that our files load in ComfyUI.

The ported functions keep ComfyUI's logic line for line; the changes are mechanical: a model is
passed as its state-dict keys and ``unet_config`` instead of a ModelPatcher, ``cast_to_device``
is ``.to``, ``logging.warning("lora key not loaded")`` collects the keys instead, branches for
other architectures (SD3, Flux, AuraFlow, HunyuanDiT, glora, set) are left out. The glue at the
end (ours) lays a diffusers pipeline out as ComfyUI's model keys and patches it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

# ------------------------------------------------------------------ comfy/utils.py

UNET_MAP_ATTENTIONS = {"proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias", "norm.weight", "norm.bias"}

TRANSFORMER_BLOCKS = {
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias",
    "attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn1.to_out.0.weight", "attn1.to_out.0.bias",
    "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight", "attn2.to_out.0.weight", "attn2.to_out.0.bias",
    "ff.net.0.proj.weight", "ff.net.0.proj.bias", "ff.net.2.weight", "ff.net.2.bias",
}

UNET_MAP_RESNET = {
    "in_layers.2.weight": "conv1.weight", "in_layers.2.bias": "conv1.bias",
    "emb_layers.1.weight": "time_emb_proj.weight", "emb_layers.1.bias": "time_emb_proj.bias",
    "out_layers.3.weight": "conv2.weight", "out_layers.3.bias": "conv2.bias",
    "skip_connection.weight": "conv_shortcut.weight", "skip_connection.bias": "conv_shortcut.bias",
    "in_layers.0.weight": "norm1.weight", "in_layers.0.bias": "norm1.bias",
    "out_layers.0.weight": "norm2.weight", "out_layers.0.bias": "norm2.bias",
}

UNET_MAP_BASIC = {
    ("label_emb.0.0.weight", "class_embedding.linear_1.weight"), ("label_emb.0.0.bias", "class_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "class_embedding.linear_2.weight"), ("label_emb.0.2.bias", "class_embedding.linear_2.bias"),
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight"), ("label_emb.0.0.bias", "add_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "add_embedding.linear_2.weight"), ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"), ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"), ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"), ("out.2.bias", "conv_out.bias"),
    ("time_embed.0.weight", "time_embedding.linear_1.weight"), ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"), ("time_embed.2.bias", "time_embedding.linear_2.bias"),
}


def unet_to_diffusers(unet_config):  # noqa: C901 - ported as is
    if "num_res_blocks" not in unet_config:
        return {}
    num_res_blocks = unet_config["num_res_blocks"]
    channel_mult = unet_config["channel_mult"]
    transformer_depth = unet_config["transformer_depth"][:]
    transformer_depth_output = unet_config["transformer_depth_output"][:]
    num_blocks = len(channel_mult)

    transformers_mid = unet_config.get("transformer_depth_middle", None)

    diffusers_unet_map = {}
    for x in range(num_blocks):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            for b in UNET_MAP_RESNET:
                diffusers_unet_map["down_blocks.{}.resnets.{}.{}".format(x, i, UNET_MAP_RESNET[b])] = "input_blocks.{}.0.{}".format(n, b)
            num_transformers = transformer_depth.pop(0)
            if num_transformers > 0:
                for b in UNET_MAP_ATTENTIONS:
                    diffusers_unet_map["down_blocks.{}.attentions.{}.{}".format(x, i, b)] = "input_blocks.{}.1.{}".format(n, b)
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        diffusers_unet_map["down_blocks.{}.attentions.{}.transformer_blocks.{}.{}".format(x, i, t, b)] = "input_blocks.{}.1.transformer_blocks.{}.{}".format(n, t, b)
            n += 1
        for k in ["weight", "bias"]:
            diffusers_unet_map["down_blocks.{}.downsamplers.0.conv.{}".format(x, k)] = "input_blocks.{}.0.op.{}".format(n, k)

    i = 0
    for b in UNET_MAP_ATTENTIONS:
        diffusers_unet_map["mid_block.attentions.{}.{}".format(i, b)] = "middle_block.1.{}".format(b)
    for t in range(transformers_mid):
        for b in TRANSFORMER_BLOCKS:
            diffusers_unet_map["mid_block.attentions.{}.transformer_blocks.{}.{}".format(i, t, b)] = "middle_block.1.transformer_blocks.{}.{}".format(t, b)

    for i, n in enumerate([0, 2]):
        for b in UNET_MAP_RESNET:
            diffusers_unet_map["mid_block.resnets.{}.{}".format(i, UNET_MAP_RESNET[b])] = "middle_block.{}.{}".format(n, b)

    num_res_blocks = list(reversed(num_res_blocks))
    for x in range(num_blocks):
        n = (num_res_blocks[x] + 1) * x
        l = num_res_blocks[x] + 1  # noqa: E741 - ComfyUI's name
        for i in range(l):
            c = 0
            for b in UNET_MAP_RESNET:
                diffusers_unet_map["up_blocks.{}.resnets.{}.{}".format(x, i, UNET_MAP_RESNET[b])] = "output_blocks.{}.0.{}".format(n, b)
            c += 1
            num_transformers = transformer_depth_output.pop()
            if num_transformers > 0:
                c += 1
                for b in UNET_MAP_ATTENTIONS:
                    diffusers_unet_map["up_blocks.{}.attentions.{}.{}".format(x, i, b)] = "output_blocks.{}.1.{}".format(n, b)
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        diffusers_unet_map["up_blocks.{}.attentions.{}.transformer_blocks.{}.{}".format(x, i, t, b)] = "output_blocks.{}.1.transformer_blocks.{}.{}".format(n, t, b)
            if i == l - 1:
                for k in ["weight", "bias"]:
                    diffusers_unet_map["up_blocks.{}.upsamplers.0.conv.{}".format(x, k)] = "output_blocks.{}.{}.conv.{}".format(n, c, k)
            n += 1

    for k in UNET_MAP_BASIC:
        diffusers_unet_map[k[1]] = k[0]

    return diffusers_unet_map


# ------------------------------------------------------------------- comfy/lora.py

LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}


def load_lora(lora, to_load, not_loaded):  # noqa: C901 - ported as is
    patch_dict = {}
    loaded_keys = set()
    for x in to_load:
        alpha_name = "{}.alpha".format(x)
        alpha = None
        if alpha_name in lora.keys():
            alpha = lora[alpha_name].item()
            loaded_keys.add(alpha_name)

        dora_scale_name = "{}.dora_scale".format(x)
        dora_scale = None
        if dora_scale_name in lora.keys():
            dora_scale = lora[dora_scale_name]
            loaded_keys.add(dora_scale_name)

        reshape_name = "{}.reshape_weight".format(x)
        reshape = None
        if reshape_name in lora.keys():
            try:
                reshape = lora[reshape_name].tolist()
                loaded_keys.add(reshape_name)
            except Exception:
                pass

        regular_lora = "{}.lora_up.weight".format(x)
        diffusers_lora = "{}_lora.up.weight".format(x)
        diffusers2_lora = "{}.lora_B.weight".format(x)
        diffusers3_lora = "{}.lora.up.weight".format(x)
        transformers_lora = "{}.lora_linear_layer.up.weight".format(x)
        A_name = None

        if regular_lora in lora.keys():
            A_name = regular_lora
            B_name = "{}.lora_down.weight".format(x)
            mid_name = "{}.lora_mid.weight".format(x)
        elif diffusers_lora in lora.keys():
            A_name = diffusers_lora
            B_name = "{}_lora.down.weight".format(x)
            mid_name = None
        elif diffusers2_lora in lora.keys():
            A_name = diffusers2_lora
            B_name = "{}.lora_A.weight".format(x)
            mid_name = None
        elif diffusers3_lora in lora.keys():
            A_name = diffusers3_lora
            B_name = "{}.lora.down.weight".format(x)
            mid_name = None
        elif transformers_lora in lora.keys():
            A_name = transformers_lora
            B_name = "{}.lora_linear_layer.down.weight".format(x)
            mid_name = None

        if A_name is not None:
            mid = None
            if mid_name is not None and mid_name in lora.keys():
                mid = lora[mid_name]
                loaded_keys.add(mid_name)
            patch_dict[to_load[x]] = ("lora", (lora[A_name], lora[B_name], alpha, mid, dora_scale, reshape))
            loaded_keys.add(A_name)
            loaded_keys.add(B_name)

        # loha
        hada_w1_a_name = "{}.hada_w1_a".format(x)
        hada_w1_b_name = "{}.hada_w1_b".format(x)
        hada_w2_a_name = "{}.hada_w2_a".format(x)
        hada_w2_b_name = "{}.hada_w2_b".format(x)
        hada_t1_name = "{}.hada_t1".format(x)
        hada_t2_name = "{}.hada_t2".format(x)
        if hada_w1_a_name in lora.keys():
            hada_t1 = None
            hada_t2 = None
            if hada_t1_name in lora.keys():
                hada_t1 = lora[hada_t1_name]
                hada_t2 = lora[hada_t2_name]
                loaded_keys.add(hada_t1_name)
                loaded_keys.add(hada_t2_name)

            patch_dict[to_load[x]] = ("loha", (lora[hada_w1_a_name], lora[hada_w1_b_name], alpha, lora[hada_w2_a_name], lora[hada_w2_b_name], hada_t1, hada_t2, dora_scale))
            loaded_keys.add(hada_w1_a_name)
            loaded_keys.add(hada_w1_b_name)
            loaded_keys.add(hada_w2_a_name)
            loaded_keys.add(hada_w2_b_name)

        # lokr
        parts = {}
        for part in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_t2", "lokr_w2_a", "lokr_w2_b"):
            name = "{}.{}".format(x, part)
            parts[part] = None
            if name in lora.keys():
                parts[part] = lora[name]
                loaded_keys.add(name)
        if (parts["lokr_w1"] is not None) or (parts["lokr_w2"] is not None) or (parts["lokr_w1_a"] is not None) or (parts["lokr_w2_a"] is not None):
            patch_dict[to_load[x]] = ("lokr", (parts["lokr_w1"], parts["lokr_w2"], alpha, parts["lokr_w1_a"], parts["lokr_w1_b"], parts["lokr_w2_a"], parts["lokr_w2_b"], parts["lokr_t2"], dora_scale))

        diff_name = "{}.diff".format(x)
        diff_weight = lora.get(diff_name, None)
        if diff_weight is not None:
            patch_dict[to_load[x]] = ("diff", (diff_weight,))
            loaded_keys.add(diff_name)

    for x in lora.keys():
        if x not in loaded_keys:
            not_loaded.append(x)  # ComfyUI: logging.warning("lora key not loaded: {}".format(x))

    return patch_dict


def model_lora_keys_clip(sdk, key_map):
    for k in sdk:
        if k.endswith(".weight"):
            key_map["text_encoders.{}".format(k[:-len(".weight")])] = k  # generic lora format without any weird key names

    text_model_lora_key = "lora_te_text_model_encoder_layers_{}_{}"
    clip_l_present = False
    for b in range(32):
        for c in LORA_CLIP_MAP:
            k = "clip_l.transformer.text_model.encoder.layers.{}.{}.weight".format(b, c)
            if k in sdk:
                lora_key = text_model_lora_key.format(b, LORA_CLIP_MAP[c])
                key_map[lora_key] = k
                lora_key = "lora_te1_text_model_encoder_layers_{}_{}".format(b, LORA_CLIP_MAP[c])  # SDXL base
                key_map[lora_key] = k
                clip_l_present = True
                lora_key = "text_encoder.text_model.encoder.layers.{}.{}".format(b, c)  # diffusers lora
                key_map[lora_key] = k

            k = "clip_g.transformer.text_model.encoder.layers.{}.{}.weight".format(b, c)
            if k in sdk:
                if clip_l_present:
                    lora_key = "lora_te2_text_model_encoder_layers_{}_{}".format(b, LORA_CLIP_MAP[c])  # SDXL base
                    key_map[lora_key] = k
                    lora_key = "text_encoder_2.text_model.encoder.layers.{}.{}".format(b, c)  # diffusers lora
                    key_map[lora_key] = k
                else:
                    lora_key = "lora_te_text_model_encoder_layers_{}_{}".format(b, LORA_CLIP_MAP[c])
                    key_map[lora_key] = k
                    lora_key = "text_encoder.text_model.encoder.layers.{}.{}".format(b, c)  # diffusers lora
                    key_map[lora_key] = k
    return key_map


def model_lora_keys_unet(sdk, unet_config, key_map):
    for k in sdk:
        if k.startswith("diffusion_model."):
            if k.endswith(".weight"):
                key_lora = k[len("diffusion_model."):-len(".weight")].replace(".", "_")
                key_map["lora_unet_{}".format(key_lora)] = k
                key_map["lora_prior_unet_{}".format(key_lora)] = k
                key_map["{}".format(k[:-len(".weight")])] = k  # generic lora format without any weird key names
            else:
                key_map["{}".format(k)] = k

    diffusers_keys = unet_to_diffusers(unet_config)
    for k in diffusers_keys:
        if k.endswith(".weight"):
            unet_key = "diffusion_model.{}".format(diffusers_keys[k])
            key_lora = k[:-len(".weight")].replace(".", "_")
            key_map["lora_unet_{}".format(key_lora)] = unet_key
            key_map["lycoris_{}".format(key_lora)] = unet_key  # simpletuner lycoris format

            diffusers_lora_prefix = ["", "unet."]
            for p in diffusers_lora_prefix:
                diffusers_lora_key = "{}{}".format(p, k[:-len(".weight")].replace(".to_", ".processor.to_"))
                if diffusers_lora_key.endswith(".to_out.0"):
                    diffusers_lora_key = diffusers_lora_key[:-2]
                key_map[diffusers_lora_key] = unet_key
    return key_map


def weight_decompose(dora_scale, weight, lora_diff, alpha, strength, intermediate_dtype, function):
    dora_scale = dora_scale.to(weight.device, intermediate_dtype)
    lora_diff *= alpha
    weight_calc = weight + function(lora_diff).type(weight.dtype)
    weight_norm = (
        weight_calc.transpose(0, 1)
        .reshape(weight_calc.shape[1], -1)
        .norm(dim=1, keepdim=True)
        .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1))
        .transpose(0, 1)
    )

    weight_calc *= (dora_scale / weight_norm).type(weight.dtype)
    if strength != 1.0:
        weight_calc -= weight
        weight += strength * (weight_calc)
    else:
        weight[:] = weight_calc
    return weight


def calculate_weight(patches, weight, key, errors, intermediate_dtype=torch.float32, decompose=None):  # noqa: C901 - ported as is
    # decompose (ours): a later ComfyUI's weight_decompose (clients.comfy_qwen_image), else this commit's
    weight_decompose_ = decompose or weight_decompose
    for p in patches:
        strength = p[0]
        v = p[1]
        strength_model = p[2]
        function = p[4]
        if function is None:
            function = lambda a: a  # noqa: E731

        if strength_model != 1.0:
            weight *= strength_model

        if len(v) == 1:
            patch_type = "diff"
        elif len(v) == 2:
            patch_type = v[0]
            v = v[1]

        if patch_type == "diff":
            diff = v[0]
            if strength != 0.0:
                if diff.shape != weight.shape:
                    errors.append("WARNING SHAPE MISMATCH {} WEIGHT NOT MERGED {} != {}".format(key, diff.shape, weight.shape))
                else:
                    weight += function(strength * diff.to(weight.device, weight.dtype))
        elif patch_type == "lora":  # lora/locon
            mat1 = v[0].to(weight.device, intermediate_dtype)
            mat2 = v[1].to(weight.device, intermediate_dtype)
            dora_scale = v[4]
            if v[2] is not None:
                alpha = v[2] / mat2.shape[0]
            else:
                alpha = 1.0

            if v[3] is not None:
                mat3 = v[3].to(weight.device, intermediate_dtype)
                final_shape = [mat2.shape[1], mat2.shape[0], mat3.shape[2], mat3.shape[3]]
                mat2 = torch.mm(mat2.transpose(0, 1).flatten(start_dim=1), mat3.transpose(0, 1).flatten(start_dim=1)).reshape(final_shape).transpose(0, 1)
            try:
                lora_diff = torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1)).reshape(weight.shape)
                if dora_scale is not None:
                    weight = weight_decompose_(dora_scale, weight, lora_diff, alpha, strength, intermediate_dtype, function)
                else:
                    weight += function(((strength * alpha) * lora_diff).type(weight.dtype))
            except Exception as e:
                errors.append("ERROR {} {} {}".format(patch_type, key, e))
        elif patch_type == "lokr":
            w1 = v[0]
            w2 = v[1]
            w1_a = v[3]
            w1_b = v[4]
            w2_a = v[5]
            w2_b = v[6]
            t2 = v[7]
            dora_scale = v[8]
            dim = None

            if w1 is None:
                dim = w1_b.shape[0]
                w1 = torch.mm(w1_a.to(weight.device, intermediate_dtype), w1_b.to(weight.device, intermediate_dtype))
            else:
                w1 = w1.to(weight.device, intermediate_dtype)

            if w2 is None:
                dim = w2_b.shape[0]
                if t2 is None:
                    w2 = torch.mm(w2_a.to(weight.device, intermediate_dtype), w2_b.to(weight.device, intermediate_dtype))
                else:
                    w2 = torch.einsum("i j k l, j r, i p -> p r k l", t2.to(weight.device, intermediate_dtype),
                                      w2_b.to(weight.device, intermediate_dtype), w2_a.to(weight.device, intermediate_dtype))
            else:
                w2 = w2.to(weight.device, intermediate_dtype)

            if len(w2.shape) == 4:
                w1 = w1.unsqueeze(2).unsqueeze(2)
            if v[2] is not None and dim is not None:
                alpha = v[2] / dim
            else:
                alpha = 1.0

            try:
                lora_diff = torch.kron(w1, w2).reshape(weight.shape)
                if dora_scale is not None:
                    weight = weight_decompose_(dora_scale, weight, lora_diff, alpha, strength, intermediate_dtype, function)
                else:
                    weight += function(((strength * alpha) * lora_diff).type(weight.dtype))
            except Exception as e:
                errors.append("ERROR {} {} {}".format(patch_type, key, e))
        elif patch_type == "loha":
            w1a = v[0]
            w1b = v[1]
            if v[2] is not None:
                alpha = v[2] / w1b.shape[0]
            else:
                alpha = 1.0

            w2a = v[3]
            w2b = v[4]
            dora_scale = v[7]
            if v[5] is not None:  # cp decomposition
                t1 = v[5]
                t2 = v[6]
                m1 = torch.einsum("i j k l, j r, i p -> p r k l", t1.to(weight.device, intermediate_dtype),
                                  w1b.to(weight.device, intermediate_dtype), w1a.to(weight.device, intermediate_dtype))
                m2 = torch.einsum("i j k l, j r, i p -> p r k l", t2.to(weight.device, intermediate_dtype),
                                  w2b.to(weight.device, intermediate_dtype), w2a.to(weight.device, intermediate_dtype))
            else:
                m1 = torch.mm(w1a.to(weight.device, intermediate_dtype), w1b.to(weight.device, intermediate_dtype))
                m2 = torch.mm(w2a.to(weight.device, intermediate_dtype), w2b.to(weight.device, intermediate_dtype))

            try:
                lora_diff = (m1 * m2).reshape(weight.shape)
                if dora_scale is not None:
                    weight = weight_decompose_(dora_scale, weight, lora_diff, alpha, strength, intermediate_dtype, function)
                else:
                    weight += function(((strength * alpha) * lora_diff).type(weight.dtype))
            except Exception as e:
                errors.append("ERROR {} {} {}".format(patch_type, key, e))
        else:
            errors.append("patch type not recognized {} {}".format(patch_type, key))

    return weight


# ------------------------------------------------------------ glue (lorastory's, not ComfyUI's)

COMFY_CLIP = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}  # ComfyUI's names for the CLIP encoders of SD1.x/SDXL


def comfy_unet_config(config) -> dict:
    """ComfyUI's ``unet_config`` fields unet_to_diffusers reads, from a diffusers UNet config."""
    down_types, up_types = list(config.down_block_types), list(config.up_block_types)
    blocks = len(down_types)
    layers = config.layers_per_block
    layers = [layers] * blocks if isinstance(layers, int) else list(layers)
    depth = config.transformer_layers_per_block
    depth = [depth] * blocks if isinstance(depth, int) else list(depth)
    down_depth = [depth[x] if "CrossAttn" in down_types[x] else 0 for x in range(blocks)]
    up_depth = list(reversed(depth))
    output = [up_depth[x] if "CrossAttn" in up_types[x] else 0 for x in range(blocks) for _ in range(list(reversed(layers))[x] + 1)]
    return {
        "num_res_blocks": layers, "channel_mult": list(range(blocks)),
        "transformer_depth": [down_depth[x] for x in range(blocks) for _ in range(layers[x])],
        "transformer_depth_output": list(reversed(output)),  # popped from the end, output block 0 first
        "transformer_depth_middle": depth[-1],
    }


def comfy_model(pipe) -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """The pipeline's weights under ComfyUI's keys, ``{comfy key: "component.diffusers key"}`` and the unet_config."""
    config = comfy_unet_config(pipe.unet.config)
    weights, origin = {}, {}
    unet = pipe.unet.state_dict()
    for diffusers_key, sgm_key in unet_to_diffusers(config).items():
        if diffusers_key in unet:
            weights["diffusion_model." + sgm_key] = unet[diffusers_key]
            origin["diffusion_model." + sgm_key] = "unet." + diffusers_key
    for component, clip in COMFY_CLIP.items():
        encoder = getattr(pipe, component, None)
        if encoder is None or not hasattr(encoder, "text_model") and "CLIP" not in type(encoder).__name__:
            continue  # Kolors' ChatGLM is loaded by custom nodes, outside ComfyUI's CLIP and LoRA loader
        for key, value in encoder.state_dict().items():
            name = key if key.startswith("text_model.") or key.startswith("text_projection") else "text_model." + key
            weights[f"{clip}.transformer.{name}"] = value
            origin[f"{clip}.transformer.{name}"] = f"{component}.{key}"
    return weights, origin, config


def comfy_patch(pipe, lora_file: Path, strength: float = 1.0) -> tuple[dict[str, torch.Tensor], int, list[str], list[str]]:
    """Load ``lora_file`` the way ComfyUI's LoraLoader does and patch the weights.

    Returns (patched weights by "component.diffusers key", LoRA modules in the file, keys ComfyUI
    did not load, errors of the patch arithmetic).
    """
    lora = load_file(str(lora_file))
    weights, origin, unet_config = comfy_model(pipe)
    key_map = model_lora_keys_unet(weights.keys(), unet_config, {})
    key_map = model_lora_keys_clip(weights.keys(), key_map)
    not_loaded: list[str] = []
    patches = load_lora(lora, key_map, not_loaded)
    errors: list[str] = []
    patched = {}
    for key, patch in patches.items():
        weight = weights[key].to(torch.float32).clone()
        patched[origin[key]] = calculate_weight([(strength, patch, 1.0, None, None)], weight, key, errors)
    total = len({k.split(".", 1)[0] for k in lora})
    return patched, total, not_loaded, errors
