"""The kohya sd-scripts layout: ``lora_unet_*`` / ``lora_te*_`` keys with ``lora_down``/``lora_up``/``alpha``.

This is what sd-scripts, A1111/Forge and ComfyUI read. SDXL uses sd-scripts' SDXL (SGM/LDM) block
names (``input_blocks``/``middle_block``/``output_blocks``); SD1.5 and Kolors use diffusers module
names (sd-scripts' SD1 naming), which plain ``KolorsPipeline.load_lora_weights`` and ComfyUI read
(Kolors with SGM names loads in diffusers only when given ``unet_config``; ``save_lora(...,
kohya_unet_names="sgm")`` writes them anyway). Reading goes through
diffusers' own converters, plus Kolors' ChatGLM text-encoder names, which they do not know.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from lorastory.models.lora.diffusers_format import component_modules
from lorastory.errors import first_line
from lorastory.models.lora.errors import LoraError, LoraFormatError
from lorastory.models.lora.keys import DENOISERS, META_PREFIX, Modules, canonical_text_key, modules_of
from lorastory.models.lora.spec import LoraSpec
from lorastory.models.lora.unet_layout import UnetLayout
from lorastory.models.registry import Family

if TYPE_CHECKING:
    import torch

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
KOHYA_TE_PREFIX = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}  # SDXL; a single encoder uses lora_te_

# diffusers resnet / top-level module names → sd-scripts SDXL (SGM) names.
_RESNET_TO_SGM = {
    "conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection", "norm1": "in_layers.0", "norm2": "out_layers.0",
}
_TOP_TO_SGM = {
    "conv_in": "input_blocks.0.0", "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
}
# ChatGLM module names that kohya's "_" separators make ambiguous.
_CHATGLM_KOHYA = {
    "self_attention_query_key_value": "self_attention.query_key_value",
    "self_attention_dense": "self_attention.dense",
    "mlp_dense_h_to_4h": "mlp.dense_h_to_4h",
    "mlp_dense_4h_to_h": "mlp.dense_4h_to_h",
}

# ------------------------------------------------------------------- SGM naming


def kohya_unet_name(module: str, unet_config: Any) -> str:
    """The sd-scripts SDXL (SGM) name of a diffusers UNet module, e.g. ``input_blocks.4.1.proj_in``."""
    if module in _TOP_TO_SGM:
        return _TOP_TO_SGM[module]
    layout = UnetLayout.of(unet_config)
    parts = module.split(".")
    try:
        if parts[0] == "down_blocks":
            block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            start = 1 + sum(n + 1 for n in layout.down_layers[:block])
            if kind == "downsamplers":
                inner = ["op"] if rest == ["conv"] else rest
                return ".".join(["input_blocks", str(start + layout.down_layers[block]), "0", *inner])
            index = start + layer
        elif parts[0] == "mid_block":
            kind, layer, rest = parts[1], int(parts[2]), parts[3:]
            index = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, layer)]
            return ".".join(["middle_block", str(index), *_sgm_inner(kind, rest)])  # no sub-index in the middle block
        elif parts[0] == "up_blocks":
            block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            start = sum(layout.up_counts[:block])
            if kind == "upsamplers":
                sub = 2 if "CrossAttn" in layout.up_types[block] else 1
                return ".".join(["output_blocks", str(start + layout.up_counts[block] - 1), str(sub), *rest])
            index = start + layer
        else:
            raise KeyError(parts[0])
        prefix = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
        sub = {"resnets": "0", "attentions": "1"}[kind]
        return ".".join([prefix, str(index), sub, *_sgm_inner(kind, rest)])
    except (KeyError, IndexError, ValueError):
        raise LoraError(f"UNet module '{module}' has no kohya SDXL name; save with format='diffusers'") from None


def _sgm_inner(kind: str, rest: list[str]) -> list[str]:
    """Names inside a block: attention internals are unchanged, resnet layers are renamed."""
    if kind == "attentions":
        return rest
    if kind == "resnets":
        head = ".".join(rest[:1])
        return _RESNET_TO_SGM.get(head, head).split(".") + rest[1:]
    raise KeyError(kind)


# ------------------------------------------------------------------------ write


def kohya_metadata(spec: LoraSpec, naming: str) -> dict[str, str]:
    """sd-scripts' own ``ss_*`` header fields, and how we named the UNet modules."""
    meta = {
        "ss_network_module": "networks.lora" if spec.network in ("lora", "locon") else "lycoris.kohya",
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": repr(float(spec.alpha)),
        META_PREFIX + "alpha_in": "alpha_keys",
        META_PREFIX + "kohya_unet_names": naming,
    }
    if spec.network != "lora":  # LyCORIS' own header: which algorithm, and the conv settings
        algo = {"locon": "locon", "loha": "loha", "lokr": "lokr", "dora": "lora"}[spec.network]
        args = {"algo": algo, "dora_wd": spec.network == "dora"}
        if spec.adapts_convolutions:
            args.update(conv_dim=spec.conv_rank or spec.rank, conv_alpha=spec.conv_alpha or spec.alpha)
        if spec.network == "lokr":
            args.update(factor=spec.lokr_factor, decompose_both=spec.lokr_decompose_both)
        meta["ss_network_args"] = json.dumps(args, sort_keys=True)
    return meta


def kohya_module_name(component: str, module: str, family: Family, unet_config: Any, naming: str) -> str:
    """The kohya name of a peft module path: ``lora_unet_…`` (SGM or diffusers naming) or ``lora_te[12]_…``."""
    if component in DENOISERS:
        return "lora_unet_" + (kohya_unet_name(module, unet_config) if naming == "sgm" else module).replace(".", "_")
    prefix = "lora_te_" if len(family.text_encoders) == 1 else KOHYA_TE_PREFIX[component]
    return prefix + canonical_text_key(module).replace(".", "_")


def to_kohya_layout(
    layers: dict[str, dict[str, torch.Tensor]], alphas: Mapping[str, float], family: Family, unet_config: Any, naming: str
) -> dict[str, torch.Tensor]:
    """kohya keys for peft state dicts per component; ``alphas``: ``"<component>.<module>"`` → alpha;
    ``naming`` is ``"sgm"`` or ``"diffusers"`` for the UNet."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for component, state in layers.items():
        for module, (down, up) in modules_of(state).items():
            name = kohya_module_name(component, module, family, unet_config, naming)
            tensors[f"{name}.lora_down.weight"] = down
            tensors[f"{name}.lora_up.weight"] = up
            tensors[f"{name}.alpha"] = torch.tensor(float(alphas[f"{component}.{module}"]), dtype=torch.float32)
    return tensors


# ------------------------------------------------------------------------- read


def is_kohya(keys: list[str]) -> bool:
    """Whether any key is a kohya one."""
    return any(k.startswith(KOHYA_PREFIXES) for k in keys)


def from_kohya(file: Path, tensors: dict[str, torch.Tensor], config: Any) -> tuple[Modules, dict[str, float]]:
    """kohya / A1111 keys, converted by diffusers' own converters (SGM block remap included)."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    names_by_tensor = {id(v): k.split(".", 1)[0] for k, v in tensors.items() if k.endswith(".lora_down.weight")}
    alpha_by_name = {k.split(".", 1)[0]: float(v.item()) for k, v in tensors.items() if k.endswith(".alpha")}
    chatglm, rest = _split_chatglm_kohya(tensors)
    layers = UnetLayout.of(config).down_layers
    if len(set(layers)) != 1 and any(p in k for k in rest for p in ("input_blocks", "output_blocks")):
        raise LoraFormatError(f"{file.name}: SGM block names need a UNet with the same layers in every block")
    try:
        mapped = _maybe_map_sgm_blocks_to_diffusers(dict(rest), SimpleNamespace(layers_per_block=layers[0]))
        converted, _ = _convert_non_diffusers_lora_to_diffusers(mapped)
    except (ValueError, KeyError, IndexError) as err:
        raise LoraFormatError(f"{file.name}: kohya keys diffusers cannot map ({first_line(err, 200)})") from None
    converted.update(chatglm)
    modules = component_modules(converted)
    # diffusers' converters move tensors without copying: a module's lora_A object leads back to its kohya name and alpha
    alphas = {}
    for module, (down, _) in modules.items():
        name = names_by_tensor.get(id(down))
        if name in alpha_by_name:
            alphas[module] = alpha_by_name[name]
    return modules, alphas


def _split_chatglm_kohya(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Kolors' ChatGLM text-encoder keys, which diffusers' CLIP-only key converter would mangle."""
    pattern = re.compile(r"^lora_te1?_encoder_layers_(\d+)_(" + "|".join(_CHATGLM_KOHYA) + r")\.(lora_down|lora_up|alpha)")
    chatglm, rest = {}, {}
    for key, value in tensors.items():
        match = pattern.match(key)
        if match is None:
            rest[key] = value
        elif match[3] != "alpha":
            ab = "A" if match[3] == "lora_down" else "B"
            chatglm[f"text_encoder.encoder.layers.{match[1]}.{_CHATGLM_KOHYA[match[2]]}.lora_{ab}.weight"] = value
    return chatglm, rest
