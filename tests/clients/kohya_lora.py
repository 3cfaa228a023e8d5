"""kohya sd-scripts' LoRA loading, ported for tests: create_network_from_weights' names and merge_to.

Source: github.com/kohya-ss/sd-scripts, networks/lora.py @ 48d368fa557731ad0488c07304dfeba8c07910eb
(create_network_from_weights: dim/alpha per module; LoRANetwork.create_modules: which modules get a
LoRA and their names; LoRAModule.merge_to: the merged weight). License: Apache-2.0.

Changes are mechanical: the module tree is walked as (name, class name, child) triples so SDXL
can be named the way sd-scripts' own SDXL UNet names its modules — the SAI/SGM checkpoint names
(``input_blocks.4.1.transformer_blocks.0.attn1.to_q``), taken here from ComfyUI's
unet_to_diffusers table (clients/comfy_lora.py); SD1.x uses diffusers-style names, as
sd-scripts' original_unet does. CLIP modules carry ``text_model.`` as in transformers 4.x, which
sd-scripts pins. ``network.load_state_dict(weights_sd, False)`` is reproduced as the sets of
missing and unexpected keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from clients.comfy_lora import comfy_unet_config, unet_to_diffusers
from safetensors.torch import load_file

UNET_TARGET_REPLACE_MODULE = ["Transformer2DModel"]
UNET_TARGET_REPLACE_MODULE_CONV2D_3X3 = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]
TEXT_ENCODER_TARGET_REPLACE_MODULE = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
LORA_PREFIX_UNET = "lora_unet"
LORA_PREFIX_TEXT_ENCODER = "lora_te"
LORA_PREFIX_TEXT_ENCODER1 = "lora_te1"
LORA_PREFIX_TEXT_ENCODER2 = "lora_te2"


def dims_and_alphas(weights_sd):
    """create_network_from_weights: get dim/alpha mapping."""
    modules_dim = {}
    modules_alpha = {}
    for key, value in weights_sd.items():
        if "." not in key:
            continue

        lora_name = key.split(".")[0]
        if "alpha" in key:
            modules_alpha[lora_name] = value
        elif "lora_down" in key:
            dim = value.size()[0]
            modules_dim[lora_name] = dim

    # support old LoRA without alpha
    for key in modules_dim.keys():
        if key not in modules_alpha:
            modules_alpha[key] = modules_dim[key]
    return modules_dim, modules_alpha


def create_modules(is_unet, text_encoder_idx, named_modules, target_replace_modules, modules_dim, modules_alpha):
    """LoRANetwork.create_modules with modules_dim given (loading from weights); ``named_modules`` yields
    (name, class name, [(child name, child class name, child module)])."""
    prefix = (
        LORA_PREFIX_UNET
        if is_unet
        else (LORA_PREFIX_TEXT_ENCODER if text_encoder_idx is None else (LORA_PREFIX_TEXT_ENCODER1 if text_encoder_idx == 1 else LORA_PREFIX_TEXT_ENCODER2))
    )
    loras = []
    for name, class_name, children in named_modules:
        if class_name in target_replace_modules:
            for child_name, child_class, child_module in children:
                is_linear = child_class == "Linear"
                is_conv2d = child_class == "Conv2d"

                if is_linear or is_conv2d:
                    lora_name = prefix + "." + name + "." + child_name
                    lora_name = lora_name.replace(".", "_")

                    dim = None
                    alpha = None
                    if lora_name in modules_dim:
                        dim = modules_dim[lora_name]
                        alpha = modules_alpha[lora_name]
                    if dim is None or dim == 0:
                        continue
                    loras.append((lora_name, child_module, dim, alpha))
    return loras


def merge_to(sd, weight, multiplier, scale):
    """LoRAModule.merge_to: the merged weight of one module."""
    up_weight = sd["lora_up.weight"].to(torch.float)
    down_weight = sd["lora_down.weight"].to(torch.float)
    weight = weight.to(torch.float)

    if len(weight.size()) == 2:
        # linear
        weight = weight + multiplier * (up_weight @ down_weight) * scale
    elif down_weight.size()[2:4] == (1, 1):
        # conv2d 1x1
        weight = weight + multiplier * (up_weight.squeeze(3).squeeze(2) @ down_weight.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * scale
    else:
        # conv2d 3x3
        conved = torch.nn.functional.conv2d(down_weight.permute(1, 0, 2, 3), up_weight).permute(1, 0, 2, 3)
        weight = weight + multiplier * conved * scale
    return weight


# ------------------------------------------------------------ glue (lorastory's, not sd-scripts')


def _tree(root, rename):
    """(name, class name, children) per Linear/Conv2d inside each module, named through ``rename`` (full paths).

    sd-scripts names a LoRA ``prefix.<container>.<child>``: only the joined path matters, so each
    leaf is given as its own (renamed path less the last part, its container's class) entry.
    """
    for name, module in root.named_modules():
        for child_name, child in module.named_modules():
            full = rename(f"{name}.{child_name}" if name else child_name) if child_name else None
            if full is not None:
                head, _, tail = full.rpartition(".")
                yield head, type(module).__name__, [(tail, type(child).__name__, (f"{name}.{child_name}" if name else child_name, child))]


def _sgm_rename(unet):
    table = {k[: -len(".weight")]: v[: -len(".weight")] for k, v in unet_to_diffusers(comfy_unet_config(unet.config)).items()
             if k.endswith(".weight")}
    return table.get


def _text_rename(name):
    return name if name.startswith("text_model") or not name else "text_model." + name


def kohya_load(pipe, family: str, lora_file: Path, multiplier: float = 1.0):
    """Load ``lora_file`` as sd-scripts' create_network_from_weights + merge_to would.

    Returns (merged weights by "component.diffusers module.weight", modules created, missing keys, unexpected keys).
    """
    weights_sd = load_file(str(lora_file))
    modules_dim, modules_alpha = dims_and_alphas(weights_sd)
    encoders = [c for c in ("text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None]
    loras = []
    for index, component in enumerate(encoders, start=1):
        tree = _tree(getattr(pipe, component), _text_rename)
        made = create_modules(False, index if len(encoders) > 1 else None, tree, TEXT_ENCODER_TARGET_REPLACE_MODULE, modules_dim, modules_alpha)
        loras += [(n, component, child, dim, alpha) for n, child, dim, alpha in made]
    rename = _sgm_rename(pipe.unet) if family == "sdxl" else (lambda name: name)
    targets = UNET_TARGET_REPLACE_MODULE + UNET_TARGET_REPLACE_MODULE_CONV2D_3X3
    made = create_modules(True, None, _tree(pipe.unet, rename), targets, modules_dim, modules_alpha)
    loras += [(n, "unet", child, dim, alpha) for n, child, dim, alpha in made]
    network_keys = {f"{n}.{part}" for n, *_ in loras for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    missing = sorted(network_keys - set(weights_sd))
    unexpected = sorted(set(weights_sd) - network_keys)
    merged = {}
    for lora_name, component, (path, module), dim, alpha in loras:
        alpha = alpha.detach().float().numpy() if isinstance(alpha, torch.Tensor) else alpha
        scale = float(alpha) / dim  # LoRAModule.__init__: self.scale = alpha / self.lora_dim
        sd_for_lora = {k[len(lora_name) + 1:]: v for k, v in weights_sd.items() if k.startswith(lora_name + ".")}
        merged[f"{component}.{path}.weight"] = merge_to(sd_for_lora, module.weight.detach(), multiplier, scale)
    return merged, len(loras), missing, unexpected
