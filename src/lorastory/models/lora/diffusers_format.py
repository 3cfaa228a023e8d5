"""The diffusers / peft layout: component-prefixed ``lora_A``/``lora_B`` keys, both ways.

Writing: what ``pipe.load_lora_weights(dir, weight_name=...)`` reads — ``unet.``/``text_encoder.``
prefixed keys from ``get_peft_model_state_dict`` + ``convert_state_dict_to_diffusers``, as
diffusers' training scripts write them. Alpha is *not* baked into the weights: the file carries
diffusers' ``lora_adapter_metadata`` header (``r``, ``lora_alpha``, ``target_modules``), which
diffusers >= 0.35 turns into the ``LoraConfig`` it loads with, so plain diffusers applies the
``alpha / rank`` scale.

Reading: every historical diffusers spelling (peft names, ``lora_linear_layer``, ``lora.down``),
alphas from ``.alpha`` keys, from that header, or from a peft ``adapter_config.json`` beside the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.models.lora.errors import LoraFormatError
from lorastory.models.lora.keys import (
    COMPONENTS,
    DENOISERS,
    DIFFUSERS_METADATA_KEY,
    Modules,
    canonical_text_key,
    modules_of,
    strip_adapter_name,
)

if TYPE_CHECKING:
    import torch

# LoraConfig fields written into diffusers' adapter metadata: enough to rebuild the
# config, and nothing an older peft would reject as an unknown argument.
_ADAPTER_META_FIELDS = ("r", "lora_alpha", "target_modules", "lora_dropout", "use_rslora", "rank_pattern", "alpha_pattern")

# ------------------------------------------------------------------------- write


def to_diffusers_layout(layers: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Prefixed keys diffusers' ``load_lora_weights`` reads.

    The UNet keeps peft's ``lora_A``/``lora_B`` names: ``convert_state_dict_to_diffusers``
    renames only Linear layers, and a file mixing its names with peft's (a LoRA on
    convolutions too) makes diffusers silently skip the renamed ones.
    """
    from diffusers.utils import convert_state_dict_to_diffusers

    tensors: dict[str, torch.Tensor] = {}
    for component, state in layers.items():
        if component in DENOISERS:
            converted = state
        else:  # ChatGLM names are not in diffusers' mapping; its text loader needs lora_linear_layer
            state = {canonical_text_key(k): v for k, v in state.items()}
            converted = {_peft_to_linear_layer(k): v for k, v in convert_state_dict_to_diffusers(state).items()}
        tensors.update({f"{component}.{k}": v for k, v in converted.items()})
    return tensors


def _peft_to_linear_layer(key: str) -> str:
    key = key.replace(".lora_A.weight", ".lora_linear_layer.down.weight")
    return key.replace(".lora_B.weight", ".lora_linear_layer.up.weight")


def adapter_metadata(pipe: Any, layers: Mapping[str, Any], adapter_name: str) -> dict[str, Any]:
    """diffusers' ``lora_adapter_metadata``: per-component LoraConfig fields, keys prefixed by component."""
    packed: dict[str, Any] = {}
    for component in layers:
        config = getattr(pipe, component).peft_config[adapter_name].to_dict()
        for name in _ADAPTER_META_FIELDS:
            value = config.get(name)
            if isinstance(value, (set, frozenset, tuple)):
                value = sorted(value)
            packed[f"{component}.{name}"] = value
    return packed


# -------------------------------------------------------------------------- read


def _split_alpha_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    weights = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    alphas = {k[: -len(".alpha")]: float(v.item()) for k, v in state.items() if k.endswith(".alpha")}
    return weights, alphas


def component_modules(weights: Mapping[str, torch.Tensor]) -> Modules:
    """(lora_A, lora_B) per "<component>.<module>" from component-prefixed keys in any diffusers spelling."""
    modules: Modules = {}
    for component in COMPONENTS:
        part = {k[len(component) + 1 :]: v for k, v in weights.items() if k.startswith(component + ".")}
        if part:
            peft = _unet_to_peft(part) if component in DENOISERS else _text_to_peft(part)
            modules.update({f"{component}.{m}": ab for m, ab in modules_of(peft).items()})
    return modules


def from_prefixed(file: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> tuple[Modules, dict[str, float]]:
    """diffusers / peft keys with a component prefix, in any of diffusers' historical spellings."""
    weights, alphas = _split_alpha_keys(tensors)
    modules = component_modules(weights)
    alphas.update(_alphas_from_adapter_metadata(file, meta, modules))
    return modules, alphas


def _unet_to_peft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    # kohya's lora_down / lora_up under a diffusers prefix (older ai-toolkit Flux files, "transformer.…lora_down.weight")
    # are peft's A / B, as diffusers' own Flux reader takes them.
    state = {k.replace(".lora_down.weight", ".lora_A.weight").replace(".lora_up.weight", ".lora_B.weight"): v
             for k, v in state.items()}
    return {strip_adapter_name(k): v for k, v in convert_unet_state_dict_to_peft(state).items()}


def _text_to_peft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_peft

    from diffusers.utils.state_dict_utils import StateDictType

    # diffusers detects its old attention spelling (to_q_lora.down) by a to_out_lora key; a LoRA on q alone has none
    old = any(re.search(r"\.to_(q|k|v|out)_lora\.(down|up)\.", k) for k in state)
    try:
        state = convert_state_dict_to_peft(state, original_type=StateDictType.DIFFUSERS_OLD if old else None)
    except ValueError:  # already peft (or a spelling diffusers does not detect): handled below
        pass
    fixed = {}
    for key, value in state.items():
        key = key.replace(".lora_linear_layer.down.", ".lora_A.").replace(".lora_linear_layer.up.", ".lora_B.")
        key = key.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B.")
        fixed[canonical_text_key(strip_adapter_name(key))] = value
    return fixed


def _alphas_from_adapter_metadata(file: Path, meta: Mapping[str, str], modules: Modules) -> dict[str, float]:
    """Per-module alpha from diffusers' ``lora_adapter_metadata`` header (``lora_alpha`` and ``alpha_pattern``)."""
    raw = meta.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError:
        raise LoraFormatError(f"{file.name}: its {DIFFUSERS_METADATA_KEY} header is not JSON") from None
    alphas: dict[str, float] = {}
    for module, (down, _) in modules.items():
        component, name = module.split(".", 1)
        alpha = packed.get(f"{component}.lora_alpha")
        if alpha is None:
            continue
        for pattern, value in (packed.get(f"{component}.alpha_pattern") or {}).items():
            if re.fullmatch(rf"(.*\.)?{pattern.lstrip('^')}", name):
                alpha = value
        if packed.get(f"{component}.use_rslora"):  # peft scales by alpha/sqrt(r); express it as an equivalent alpha
            alpha = float(alpha) * (down.shape[0] ** 0.5)
        alphas[module] = float(alpha)
    return alphas


def peft_adapter_config_alphas(file: Path, modules: Modules) -> dict[str, float]:
    """A peft ``adapter_model.safetensors`` keeps its alpha in ``adapter_config.json`` beside it."""
    config_file = file.with_name("adapter_config.json")
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LoraFormatError(f"{config_file}: not valid JSON") from None
    packed = {f"unet.{k}": v for k, v in config.items() if k in ("lora_alpha", "alpha_pattern", "use_rslora")}
    return _alphas_from_adapter_metadata(file, {DIFFUSERS_METADATA_KEY: json.dumps(packed)}, modules)
