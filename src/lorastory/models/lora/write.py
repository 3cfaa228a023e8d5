"""Write a pipeline's LoRA to one ``.safetensors`` file, atomically, with lorastory's metadata.

Two key layouts (``format``): ``"kohya"`` (default: sd-scripts names with an ``alpha`` tensor per
module, which ComfyUI, A1111/Forge, sd-scripts and diffusers' ``load_lora_weights`` all read; see
:mod:`lorastory.models.lora.kohya`) and ``"diffusers"`` (peft keys, alpha in the header; see
:mod:`lorastory.models.lora.diffusers_format`). The adapter kind is read from the pipeline's peft
config: LoHa, LoKr and DoRA are written in the LyCORIS layout (:mod:`lorastory.models.lora.lycoris`).
Every file records family, network, rank, alpha, targets and a config hash under ``lorastory.*`` keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lorastory import __version__
from lorastory.fileio import atomic_write_bytes
from lorastory.models.lora.diffusers_format import adapter_metadata, to_diffusers_layout
from lorastory.errors import first_line
from lorastory.models.lora.errors import LoraError, LoraMismatchError
from lorastory.models.lora.bfl import to_bfl_layout
from lorastory.models.lora.keys import DIFFUSERS_METADATA_KEY, META_PREFIX
from lorastory.models.lora.kohya import kohya_metadata, to_kohya_layout
from lorastory.models.lora.lycoris import network_of_config, peft_parts, to_lycoris_layout
from lorastory.models.lora.spec import CLIP_TE_TARGETS, LoraSpec
from lorastory.models.registry import Family, denoiser, family_of_pipeline, get_family

if TYPE_CHECKING:
    import torch

LoraFormat = Literal["diffusers", "kohya"]
KohyaUnetNames = Literal["sgm", "diffusers", "bfl"]


def save_lora(
    pipe: Any,
    path: str | os.PathLike[str],
    spec: LoraSpec,
    family: str | None = None,
    format: LoraFormat = "kohya",  # noqa: A002 - the user-facing name
    extra_metadata: Mapping[str, Any] | None = None,
    adapter_name: str = "default",
    kohya_unet_names: KohyaUnetNames | None = None,
) -> Path:
    """Write the pipeline's ``adapter_name`` LoRA to ``path`` (a ``.safetensors`` file), atomically.

    ``kohya_unet_names`` overrides the kohya UNet naming (default: ``"sgm"`` for sdxl,
    ``"diffusers"`` for kolors and sd15).
    """
    target = Path(path)
    if target.suffix != ".safetensors":
        raise LoraError(f"{target}: LoRA files are written as .safetensors; name the file lora.safetensors")
    if format not in ("diffusers", "kohya"):
        raise LoraError(f"unknown LoRA format '{format}'; use diffusers or kohya")
    fam = _pipeline_family(pipe, family)
    layers = _adapter_state(pipe, fam, adapter_name)
    network = _check_spec_matches(pipe, spec, adapter_name)
    if network != "lora" and format != "kohya":
        raise LoraError(f"a {network} adapter is written in the kohya/LyCORIS layout only; save it with format kohya")
    metadata = _lorastory_metadata(pipe, spec, fam, format, extra_metadata)
    if format == "diffusers":
        tensors = to_diffusers_layout(layers)
        adapter_meta = adapter_metadata(pipe, layers, adapter_name)
        metadata[DIFFUSERS_METADATA_KEY] = json.dumps(adapter_meta, indent=2, sort_keys=True)
        metadata[META_PREFIX + "alpha_in"] = "metadata"
    else:
        # sd-scripts names SDXL modules the SGM way; Kolors LoRAs are read by diffusers and
        # ComfyUI, and plain KolorsPipeline only maps diffusers names, so those stay.
        naming = kohya_unet_names or fam.kohya_unet_names
        config = fam.denoiser_of(pipe).config
        alphas, ranks = _module_shapes(pipe, layers, adapter_name)
        if naming == "bfl" and network != "lora":
            # LoHa/LoKr/DoRA tensors cannot be fused into BFL's qkv: diffusers module names under OneTrainer's
            # lora_transformer_ prefix, which ComfyUI maps into the fused weights by offset (docs/training.md)
            tensors = to_lycoris_layout(layers, alphas, ranks, network, fam, config, "diffusers",
                                        denoiser_prefix="lora_transformer_")
        elif naming == "bfl":  # a Flux transformer's LoRA: BFL module names, fused q/k/v (bfl.py)
            text = {c: s for c, s in layers.items() if c != fam.denoiser}
            tensors = to_bfl_layout(layers[fam.denoiser], {k.split(".", 1)[1]: v for k, v in alphas.items()
                                                            if k.startswith(fam.denoiser + ".")}, config)
            tensors.update(to_kohya_layout(text, alphas, fam, config, naming) if text else {})
        elif network == "lora":
            tensors = to_kohya_layout(layers, alphas, fam, config, naming)
        else:
            tensors = to_lycoris_layout(layers, alphas, ranks, network, fam, config, naming)
        metadata.update(kohya_metadata(spec, naming))
    _write_safetensors(target, tensors, metadata)
    return target


def default_save_formats(family: str, spec: LoraSpec) -> list[LoraFormat]:
    """What a training run writes by default: the kohya layout, which ComfyUI, A1111/Forge, sd-scripts
    and diffusers read; plus the diffusers layout when a text-encoder LoRA is on an encoder diffusers'
    kohya reader cannot map (Kolors' ChatGLM), so plain diffusers loads that part too."""
    fam = get_family(family)
    formats: list[LoraFormat] = list(fam.lora_formats)  # type: ignore[arg-type]
    clip = list(fam.text_encoder_targets) == list(CLIP_TE_TARGETS)
    if spec.train_text_encoder and not clip and spec.network in ("lora", "locon") and "diffusers" not in formats:
        formats.append("diffusers")
    if spec.network not in ("lora", "locon"):
        return ["kohya"]  # LoHa/LoKr/DoRA: the LyCORIS layout only (diffusers' reads no LoHa/LoKr)
    return formats


def _pipeline_family(pipe: Any, family: str | None) -> Family:
    actual = family_of_pipeline(pipe)
    if family is not None and get_family(family).name != actual.name:
        raise LoraMismatchError(
            f"family '{family}' was given but the pipeline is {actual.name}; drop --family or load a {family} model"
        )
    return actual


def _adapter_state(pipe: Any, family: Family, adapter_name: str) -> dict[str, dict[str, torch.Tensor]]:
    """peft state dicts (keys without the adapter name) per component holding ``adapter_name``."""
    from peft.utils import get_peft_model_state_dict

    layers: dict[str, dict[str, torch.Tensor]] = {}
    for component in (family.denoiser, *family.text_encoders):
        module = getattr(pipe, component, None)
        if adapter_name in (getattr(module, "peft_config", None) or {}):
            state = get_peft_model_state_dict(module, adapter_name=adapter_name)
            layers[component] = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if family.denoiser not in layers:
        raise LoraError(f"the pipeline has no LoRA named '{adapter_name}' on its {family.denoiser}; call inject_lora first")
    return layers


def _config_alpha(config: Any) -> float:
    return float(config.lora_alpha if hasattr(config, "lora_alpha") else config.alpha)


def _check_spec_matches(pipe: Any, spec: LoraSpec, adapter_name: str) -> str:
    """The adapter kind the pipeline holds (from its peft config); refuse a spec that describes another adapter."""
    config = denoiser(pipe).peft_config[adapter_name]
    alpha = _config_alpha(config)
    if config.r != spec.rank or alpha != float(spec.alpha):
        raise LoraError(
            f"the pipeline's LoRA '{adapter_name}' has rank {config.r}, alpha {alpha} but the spec says "
            f"rank {spec.rank}, alpha {spec.alpha}; save with the spec it was injected with"
        )
    network = network_of_config(config)
    if network != {"locon": "lora"}.get(spec.network, spec.network):
        raise LoraError(f"the pipeline's adapter '{adapter_name}' is a {network} but the spec says {spec.network}; "
                        "save with the spec it was injected with")
    return network


def _module_shapes(pipe: Any, layers: Mapping[str, Any], adapter_name: str) -> tuple[dict[str, float], dict[str, int]]:
    """Alpha and rank per ``component.module``, from each component's peft config (with its patterns)."""
    from peft.utils.other import get_pattern_key

    alphas: dict[str, float] = {}
    ranks: dict[str, int] = {}
    for component, state in layers.items():
        config = getattr(pipe, component).peft_config[adapter_name]
        for module in peft_parts(state):
            alpha_key = get_pattern_key(list(config.alpha_pattern or {}), module)
            rank_key = get_pattern_key(list(config.rank_pattern or {}), module)
            alphas[f"{component}.{module}"] = float((config.alpha_pattern or {}).get(alpha_key, _config_alpha(config)))
            ranks[f"{component}.{module}"] = int((config.rank_pattern or {}).get(rank_key, config.r))
    return alphas, ranks


def _lorastory_metadata(
    pipe: Any, spec: LoraSpec, family: Family, fmt: str, extra: Mapping[str, Any] | None
) -> dict[str, str]:
    layers = getattr(family.denoiser_of(pipe).config, "layers_per_block", None)  # a UNet's; a transformer has none
    te_targets = spec.text_encoder_targets_for(family) if spec.train_text_encoder else []
    metadata = {
        "format": "pt",
        META_PREFIX + "version": str(__version__),
        META_PREFIX + "family": family.name,
        META_PREFIX + "format": fmt,
        META_PREFIX + "network": spec.network,
        META_PREFIX + "rank": str(spec.rank),
        META_PREFIX + "alpha": repr(float(spec.alpha)),
        META_PREFIX + "target_modules": json.dumps(spec.target_modules),
        META_PREFIX + "text_encoder_targets": json.dumps(te_targets),
        META_PREFIX + "config_hash": spec.config_hash(family.name),
    }
    if layers is not None:
        metadata[META_PREFIX + "unet_layers_per_block"] = json.dumps(layers if isinstance(layers, int) else list(layers))
    if spec.network == "lokr":
        metadata[META_PREFIX + "lokr_factor"] = str(spec.lokr_factor)
    for key, value in (extra or {}).items():
        if str(key) in metadata or str(key) in (DIFFUSERS_METADATA_KEY, META_PREFIX + "alpha_in"):
            raise LoraError(f"extra metadata key '{key}' is written by lorastory itself; pick another name")
        metadata[str(key)] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return metadata


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save

    try:
        data = save(dict(tensors), metadata=dict(metadata))
    except Exception as err:  # safetensors raises plain exceptions for shared or non-contiguous tensors
        raise LoraError(f"cannot serialise LoRA for {path}: {first_line(err, 200)}") from None
    atomic_write_bytes(path, data)
