"""LoRA adapters for Kolors, SDXL and SD1.5 pipelines: inject, save, read, apply.

Everything here is a thin layer over peft and diffusers:

* :func:`inject_lora` adds peft LoRA layers (``init_lora_weights="gaussian"``) to
  the UNet and, when asked, to the text encoder(s).
* :func:`save_lora` writes one ``.safetensors`` file atomically, with metadata
  (family, rank, alpha, targets, config hash). Two key layouts:

  - ``"diffusers"`` (default): what ``pipe.load_lora_weights(dir, weight_name=...)``
    reads — ``unet.``/``text_encoder.`` prefixed keys from ``get_peft_model_state_dict``
    + ``convert_state_dict_to_diffusers``, as diffusers' training scripts write them.
    Alpha is *not* baked into the weights: the file carries diffusers'
    ``lora_adapter_metadata`` header (``r``, ``lora_alpha``, ``target_modules``), which
    diffusers >= 0.35 turns into the ``LoraConfig`` it loads with, so plain diffusers
    applies the ``alpha / rank`` scale.
  - ``"kohya"``: ``lora_unet_*`` / ``lora_te*_`` keys with ``lora_down``/``lora_up``/
    ``alpha`` as sd-scripts, A1111 and ComfyUI read them. SDXL uses sd-scripts' SDXL
    (SGM/LDM) block names (``input_blocks``/``middle_block``/``output_blocks``); SD1.5
    and Kolors use diffusers module names (sd-scripts' SD1 naming), which plain
    ``KolorsPipeline.load_lora_weights`` and ComfyUI read (Kolors with SGM names loads
    in diffusers only when given ``unet_config``; pass ``kohya_unet_names="sgm"``).

* :func:`load_lora_state` reads ours, diffusers/peft (new and old key styles),
  kohya, and DiffSynth-Studio files (peft keys without a prefix, or DiffSynth's own
  ``blocks.N`` UNet layout) into one canonical state dict: ``<component>.<module>.lora_A.weight``
  / ``lora_B.weight`` with each module's ``alpha / rank`` scale multiplied into
  ``lora_B``, so ``pipe.load_lora_weights(state)`` (which assumes alpha == rank for a
  bare dict) gives the right output.
* :func:`apply_lora`, :func:`set_lora_scale`, :func:`fuse`, :func:`unfuse` wrap
  diffusers' adapter API.

Text encoders are injected and loaded with peft directly: transformers 5.x gates its
own ``add_adapter``/``load_adapter`` behind a peft release newer than the one we pin.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from lorastory.config import YamlModel
from lorastory.errors import LorastoryError
from lorastory.fileio import atomic_write_bytes
from lorastory.models.registry import Family, family_of_pipeline, get_family

if TYPE_CHECKING:
    import torch

__all__ = [
    "LoraError",
    "LoraFormatError",
    "LoraMismatchError",
    "LoraInfo",
    "LoraSpec",
    "inject_lora",
    "save_lora",
    "load_lora_state",
    "apply_lora",
    "set_lora_scale",
    "fuse",
    "unfuse",
    "kohya_unet_name",
    "diffsynth_block_map",
]

LoraFormat = Literal["diffusers", "kohya"]
KohyaUnetNames = Literal["sgm", "diffusers"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
META_PREFIX = "lorastory."
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_TE_PREFIX = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}  # SDXL; a single encoder uses lora_te_
CLIP_TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
CHATGLM_TE_TARGETS = ["query_key_value", "dense"]
# LoraConfig fields written into diffusers' adapter metadata: enough to rebuild the
# config, and nothing an older peft would reject as an unknown argument.
_ADAPTER_META_FIELDS = ("r", "lora_alpha", "target_modules", "lora_dropout", "use_rslora", "rank_pattern", "alpha_pattern")

# The standard UNet layouts, for reading files without a pipeline at hand.
_SDXL_UNET = {
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
}
_SD15_UNET = {
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}

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
# DiffSynth-Studio's own UNet: top-level renames and transformer-block renames.
_DIFFSYNTH_TOP = {
    "text_intermediate_proj": "encoder_hid_proj",
    "time_embedding.0": "time_embedding.linear_1", "time_embedding.2": "time_embedding.linear_2",
    "add_time_embedding.0": "add_embedding.linear_1", "add_time_embedding.2": "add_embedding.linear_2",
}
# ChatGLM module names that kohya's "_" separators make ambiguous.
_CHATGLM_KOHYA = {
    "self_attention_query_key_value": "self_attention.query_key_value",
    "self_attention_dense": "self_attention.dense",
    "mlp_dense_h_to_4h": "mlp.dense_h_to_4h",
    "mlp_dense_4h_to_h": "mlp.dense_4h_to_h",
}
# First key segments of UNet modules: diffusers names, and DiffSynth-Studio's own outside its ``blocks`` list.
_UNET_ROOTS = {
    "down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "time_embedding", "add_embedding", "encoder_hid_proj",
}
_DIFFSYNTH_ROOTS = {"conv_in", "conv_out", "time_embedding", "add_time_embedding", "text_intermediate_proj"}
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


class LoraError(LorastoryError):
    """A LoRA cannot be injected, saved, read or applied."""


class LoraFormatError(LoraError):
    """A LoRA file is unreadable or in a layout we do not know."""


class LoraMismatchError(LoraError):
    """A LoRA does not fit the pipeline (other family, other module shapes)."""


# --------------------------------------------------------------------------- spec


class LoraSpec(YamlModel):
    """The shape of a LoRA: rank, alpha, where it goes. Defaults match the reference Kolors recipe."""

    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1)
    train_text_encoder: bool = False
    text_encoder_targets: list[str] | None = None  # None: the family's default (CLIP or ChatGLM projections)

    @field_validator("target_modules", "text_encoder_targets")
    @classmethod
    def _no_blank_targets(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not t.strip() for t in value):
            raise ValueError("module names must not be empty")
        return value

    def text_encoder_targets_for(self, family: str | Family) -> list[str]:
        """The text-encoder modules to adapt for ``family`` (ChatGLM for Kolors, CLIP otherwise)."""
        if self.text_encoder_targets is not None:
            return list(self.text_encoder_targets)
        name = family.name if isinstance(family, Family) else family
        return list(CHATGLM_TE_TARGETS if name == "kolors" else CLIP_TE_TARGETS)

    def config_hash(self, family: str) -> str:
        """A short stable hash of this spec and the family, recorded in saved files."""
        payload = json.dumps({"family": family, **self.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class LoraInfo:
    """What :func:`load_lora_state` found in a file."""

    path: Path
    format: str  # diffusers | kohya | peft | diffsynth | diffsynth-blocks
    family: str | None  # from our metadata; None when the file does not say
    rank: int  # the most common rank
    alpha: float | None  # the most common alpha; None when the file records none
    components: tuple[str, ...]
    target_modules: tuple[str, ...]  # leaf names, e.g. ("to_k", "to_out.0", "to_q", "to_v")
    num_modules: int
    by_lorastory: bool
    metadata: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------- inject


def _peft_config(rank: int, alpha: float, dropout: float, targets: Iterable[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), init_lora_weights="gaussian")


def _text_encoders(pipe: Any, family: Family) -> list[tuple[str, Any]]:
    return [(name, getattr(pipe, name)) for name in family.text_encoders if getattr(pipe, name, None) is not None]


def inject_lora(pipe: Any, spec: LoraSpec, adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """Add LoRA layers to the UNet (and text encoders if ``spec.train_text_encoder``); return their parameters.

    Base weights are frozen by peft; only the returned parameters require grad.
    """
    from peft import inject_adapter_in_model

    family = family_of_pipeline(pipe)
    _check_adapter_free(pipe, adapter_name)
    try:
        pipe.unet.add_adapter(_peft_config(spec.rank, spec.alpha, spec.dropout, spec.target_modules), adapter_name=adapter_name)
    except ValueError as err:
        raise LoraError(f"cannot add LoRA to the {family.name} UNet: {_first_line(err)}; check target_modules") from None
    modules = [pipe.unet]
    if spec.train_text_encoder:
        config = _peft_config(spec.rank, spec.alpha, spec.dropout, spec.text_encoder_targets_for(family))
        for name, encoder in _text_encoders(pipe, family):
            try:
                inject_adapter_in_model(config, encoder, adapter_name=adapter_name)
            except ValueError as err:
                raise LoraError(f"cannot add LoRA to {name}: {_first_line(err)}; check text_encoder_targets") from None
            modules.append(encoder)
    params = [p for module in modules for n, p in module.named_parameters() if _is_lora_param(n, adapter_name)]
    for param in params:
        param.requires_grad_(True)
    return params


def _is_lora_param(name: str, adapter_name: str) -> bool:
    return (".lora_A." in name or ".lora_B." in name) and f".{adapter_name}." in f"{name}."


def _check_adapter_free(pipe: Any, adapter_name: str) -> None:
    if not adapter_name or "." in adapter_name:
        raise LoraError(f"adapter name '{adapter_name}' is invalid; use letters, digits and underscores")
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if adapter_name in (getattr(module, "peft_config", None) or {}):
            raise LoraError(f"the pipeline already has a LoRA named '{adapter_name}'; pass another adapter_name")


# --------------------------------------------------------------------------- save


def save_lora(
    pipe: Any,
    path: str | os.PathLike[str],
    spec: LoraSpec,
    family: str | None = None,
    format: LoraFormat = "diffusers",  # noqa: A002 - the user-facing name
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
    _check_spec_matches(pipe, spec, adapter_name)
    metadata = _lorastory_metadata(pipe, spec, fam, format, extra_metadata)
    if format == "diffusers":
        tensors = _to_diffusers_layout(layers)
        adapter_meta = _adapter_metadata(pipe, layers, adapter_name)
        metadata[DIFFUSERS_METADATA_KEY] = json.dumps(adapter_meta, indent=2, sort_keys=True)
        metadata[META_PREFIX + "alpha_in"] = "metadata"
    else:
        # sd-scripts names SDXL modules the SGM way; Kolors LoRAs are read by diffusers and
        # ComfyUI, and plain KolorsPipeline only maps diffusers names, so those stay.
        naming = kohya_unet_names or ("sgm" if fam.name == "sdxl" else "diffusers")
        tensors = _to_kohya_layout(layers, spec.alpha, fam, pipe.unet.config, naming)
        metadata.update(_kohya_metadata(spec, naming))
    _write_safetensors(target, tensors, metadata)
    return target


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
    for component in ("unet", *family.text_encoders):
        module = getattr(pipe, component, None)
        if adapter_name in (getattr(module, "peft_config", None) or {}):
            state = get_peft_model_state_dict(module, adapter_name=adapter_name)
            layers[component] = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if "unet" not in layers:
        raise LoraError(f"the pipeline has no LoRA named '{adapter_name}' on its UNet; call inject_lora first")
    return layers


def _check_spec_matches(pipe: Any, spec: LoraSpec, adapter_name: str) -> None:
    config = pipe.unet.peft_config[adapter_name]
    if config.r != spec.rank or float(config.lora_alpha) != float(spec.alpha):
        raise LoraError(
            f"the pipeline's LoRA '{adapter_name}' has rank {config.r}, alpha {config.lora_alpha} but the spec says "
            f"rank {spec.rank}, alpha {spec.alpha}; save with the spec it was injected with"
        )


def _lorastory_metadata(
    pipe: Any, spec: LoraSpec, family: Family, fmt: str, extra: Mapping[str, Any] | None
) -> dict[str, str]:
    from lorastory import __version__

    layers = pipe.unet.config.layers_per_block
    te_targets = spec.text_encoder_targets_for(family) if spec.train_text_encoder else []
    metadata = {
        "format": "pt",
        META_PREFIX + "version": str(__version__),
        META_PREFIX + "family": family.name,
        META_PREFIX + "format": fmt,
        META_PREFIX + "rank": str(spec.rank),
        META_PREFIX + "alpha": repr(float(spec.alpha)),
        META_PREFIX + "target_modules": json.dumps(spec.target_modules),
        META_PREFIX + "text_encoder_targets": json.dumps(te_targets),
        META_PREFIX + "config_hash": spec.config_hash(family.name),
        META_PREFIX + "unet_layers_per_block": json.dumps(layers if isinstance(layers, int) else list(layers)),
    }
    for key, value in (extra or {}).items():
        if str(key) in metadata or str(key) in (DIFFUSERS_METADATA_KEY, META_PREFIX + "alpha_in"):
            raise LoraError(f"extra metadata key '{key}' is written by lorastory itself; pick another name")
        metadata[str(key)] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return metadata


def _canonical_text_key(key: str) -> str:
    """CLIP keys/modules always carry ``text_model.``.

    transformers 5 flattens CLIPTextModel; older stacks, kohya and ComfyUI expect the prefix.
    ChatGLM (Kolors) names have no ``self_attn``/``mlp.fc`` and stay as they are.
    """
    clip = ".self_attn." in key or ".mlp.fc" in key
    if clip and key.startswith(("encoder.layers.", "embeddings.", "final_layer_norm.")):
        return "text_model." + key
    return key


def _to_diffusers_layout(layers: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Prefixed keys diffusers' ``load_lora_weights`` reads.

    The UNet keeps peft's ``lora_A``/``lora_B`` names: ``convert_state_dict_to_diffusers``
    renames only Linear layers, and a file mixing its names with peft's (a LoRA on
    convolutions too) makes diffusers silently skip the renamed ones.
    """
    from diffusers.utils import convert_state_dict_to_diffusers

    tensors: dict[str, torch.Tensor] = {}
    for component, state in layers.items():
        if component == "unet":
            converted = state
        else:  # ChatGLM names are not in diffusers' mapping; its text loader needs lora_linear_layer
            state = {_canonical_text_key(k): v for k, v in state.items()}
            converted = {_peft_to_linear_layer(k): v for k, v in convert_state_dict_to_diffusers(state).items()}
        tensors.update({f"{component}.{k}": v for k, v in converted.items()})
    return tensors


def _peft_to_linear_layer(key: str) -> str:
    key = key.replace(".lora_A.weight", ".lora_linear_layer.down.weight")
    return key.replace(".lora_B.weight", ".lora_linear_layer.up.weight")


def _adapter_metadata(pipe: Any, layers: Mapping[str, Any], adapter_name: str) -> dict[str, Any]:
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


def _kohya_metadata(spec: LoraSpec, naming: str) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": repr(float(spec.alpha)),
        META_PREFIX + "alpha_in": "alpha_keys",
        META_PREFIX + "kohya_unet_names": naming,
    }


def _to_kohya_layout(
    layers: dict[str, dict[str, torch.Tensor]], alpha: float, family: Family, unet_config: Any, naming: str
) -> dict[str, torch.Tensor]:
    import torch

    tensors: dict[str, torch.Tensor] = {}
    single_encoder = len(family.text_encoders) == 1
    for component, state in layers.items():
        for module, (down, up) in _modules_of(state).items():
            if component == "unet":
                name = "lora_unet_" + (kohya_unet_name(module, unet_config) if naming == "sgm" else module).replace(".", "_")
            else:
                prefix = "lora_te_" if single_encoder else KOHYA_TE_PREFIX[component]
                name = prefix + _canonical_text_key(module).replace(".", "_")
            tensors[f"{name}.lora_down.weight"] = down
            tensors[f"{name}.lora_up.weight"] = up
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return tensors


def _modules_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (lora_A, lora_B)}`` from a peft-keyed state dict; any other key is an error."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise LoraFormatError(
                f"unexpected LoRA key '{key}' (only lora_A/lora_B weights are supported; no DoRA, no LoRA bias)"
            )
        parts.setdefault(match["module"], {})[match["ab"]] = value
    missing = [m for m, ab in parts.items() if set(ab) != {"A", "B"}]
    if missing:
        raise LoraFormatError(f"LoRA module '{missing[0]}' has only one of lora_A/lora_B; the file is incomplete")
    return {module: (ab["A"], ab["B"]) for module, ab in parts.items()}


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save

    try:
        data = save(dict(tensors), metadata=dict(metadata))
    except Exception as err:  # safetensors raises plain exceptions for shared or non-contiguous tensors
        raise LoraError(f"cannot serialise LoRA for {path}: {_first_line(err)}") from None
    atomic_write_bytes(path, data)


# ------------------------------------------------------------- UNet naming tables


@dataclass(frozen=True)
class _UnetLayout:
    down_layers: tuple[int, ...]
    down_types: tuple[str, ...]
    up_types: tuple[str, ...]

    @classmethod
    def of(cls, config: Any) -> _UnetLayout:
        def get(key: str) -> Any:
            return config.get(key) if isinstance(config, Mapping) else getattr(config, key)

        down_types = tuple(get("down_block_types"))
        layers = get("layers_per_block")
        per_block = (layers,) * len(down_types) if isinstance(layers, int) else tuple(layers)
        return cls(per_block, down_types, tuple(get("up_block_types")))

    @property
    def up_counts(self) -> tuple[int, ...]:
        """Resnets per up block: one more than the mirrored down block."""
        return tuple(n + 1 for n in reversed(self.down_layers))


def kohya_unet_name(module: str, unet_config: Any) -> str:
    """The sd-scripts SDXL (SGM) name of a diffusers UNet module, e.g. ``input_blocks.4.1.proj_in``."""
    if module in _TOP_TO_SGM:
        return _TOP_TO_SGM[module]
    layout = _UnetLayout.of(unet_config)
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


def diffsynth_block_map(unet_config: Any) -> dict[int, str]:
    """DiffSynth-Studio's flat ``blocks.N`` index → diffusers module prefix, derived from the UNet config.

    DiffSynth lays a UNet out as resnet, attention and push blocks per down layer, a
    downsampler and push per down block, the mid block, then pop, resnet, attention
    per up layer and an upsampler per up block.
    """
    layout = _UnetLayout.of(unet_config)
    last = len(layout.down_types) - 1
    sequence: list[str | None] = []
    for block, layers in enumerate(layout.down_layers):
        for layer in range(layers):
            sequence.append(f"down_blocks.{block}.resnets.{layer}")
            if "CrossAttn" in layout.down_types[block]:
                sequence.append(f"down_blocks.{block}.attentions.{layer}")
            sequence.append(None)
        if block < last:
            sequence += [f"down_blocks.{block}.downsamplers.0", None]
    sequence += ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"]
    for block, count in enumerate(layout.up_counts):
        for layer in range(count):
            sequence += [None, f"up_blocks.{block}.resnets.{layer}"]
            if "CrossAttn" in layout.up_types[block]:
                sequence.append(f"up_blocks.{block}.attentions.{layer}")
        if block < last:
            sequence.append(f"up_blocks.{block}.upsamplers.0")
    return {index: prefix for index, prefix in enumerate(sequence) if prefix is not None}


# --------------------------------------------------------------------------- read


def load_lora_state(
    path: str | os.PathLike[str],
    allow_pickle: bool = False,
    *,
    family: str | None = None,
    unet_config: Any = None,
    default_alpha: float | None = None,
) -> tuple[dict[str, torch.Tensor], LoraInfo]:
    """Read any supported LoRA file into a canonical, scale-correct diffusers state dict.

    Keys are ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` (and ``text_encoder.``,
    ``text_encoder_2.``); each ``lora_B`` already includes ``alpha / rank``. ``family``
    (the pipeline's) makes a file recorded for another family an error;
    ``unet_config`` resolves SGM and DiffSynth block numbers (default: the file's
    record, else the standard SDXL/Kolors UNet); ``default_alpha`` is used for files
    that record no alpha (DiffSynth-Studio); without it such files get scale 1.
    """
    file = Path(path)
    tensors, file_meta = _read_tensors(file, allow_pickle)
    recorded = file_meta.get(META_PREFIX + "family")
    if family is not None and recorded is not None and recorded != get_family(family).name:
        raise LoraMismatchError(
            f"{file.name} is a {recorded} LoRA but the pipeline is {family}; load it with a {recorded} model "
            f"or use a LoRA trained for {family}"
        )
    config = unet_config if unet_config is not None else _default_unet_config(file_meta)
    fmt, modules, alphas = _parse(file, tensors, file_meta, config)
    state, ranks, used_alphas = _bake(modules, alphas, default_alpha)
    return state, _info(file, fmt, recorded, modules, ranks, used_alphas, file_meta)


def _read_tensors(file: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not file.is_file():
        raise LoraFormatError(f"{file}: no such LoRA file")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(file)
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise LoraFormatError(
                f"{file.name}: pickle files ({suffix}) can run code when loaded; convert it to .safetensors "
                "or pass allow_pickle=True (--allow-pickle) if you trust its source"
            )
        return _read_pickle(file), {}
    raise LoraFormatError(f"{file.name}: expected a .safetensors LoRA (or {', '.join(PICKLE_SUFFIXES)} with allow_pickle)")


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            meta = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError) as err:
        raise LoraFormatError(f"{file.name}: not a readable safetensors file ({_first_line(err)})") from None
    return tensors, meta


def _read_pickle(file: Path) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise LoraFormatError(
            f"{file.name}: not a plain tensor checkpoint; weights-only loading refused it ({_first_line(err)})"
        ) from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):  # lightning / trainer checkpoints
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise LoraFormatError(f"{file.name}: expected a dict of tensors, found {type(data).__name__}")
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise LoraFormatError(f"{file.name}: holds no tensors")
    return tensors


def _default_unet_config(file_meta: Mapping[str, str]) -> dict[str, Any]:
    base = dict(_SD15_UNET if file_meta.get(META_PREFIX + "family") == "sd15" else _SDXL_UNET)
    recorded = file_meta.get(META_PREFIX + "unet_layers_per_block")
    if recorded:
        base["layers_per_block"] = json.loads(recorded)
    return base


_Modules = dict[str, tuple["torch.Tensor", "torch.Tensor"]]


def _parse(
    file: Path, tensors: dict[str, torch.Tensor], meta: Mapping[str, str], config: Any
) -> tuple[str, _Modules, dict[str, float]]:
    """Detect the layout and return (format, {prefixed module: (A, B)}, {prefixed module: alpha})."""
    keys = list(tensors)
    if any(("hada_" in k or "lokr_" in k or "dora_scale" in k or "lora_magnitude_vector" in k) for k in keys):
        raise LoraFormatError(f"{file.name}: LyCORIS/DoRA adapters (LoHa, LoKr, DoRA) are not supported; use a plain LoRA")
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return ("kohya", *_from_kohya(file, tensors, config))
    peft_wrapped = all(k.startswith("base_model.model.") for k in keys)  # PeftModel.save_pretrained
    stripped = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    if all(k.split(".", 1)[0] in COMPONENTS for k in stripped):
        modules, alphas = _from_prefixed(file, stripped, meta)
        return "diffusers", modules, alphas
    roots = {k.split(".", 1)[0] for k in stripped}
    if "blocks" in roots and roots <= {"blocks", *_DIFFSYNTH_ROOTS}:
        return ("diffsynth-blocks", *_from_diffsynth_blocks(file, stripped, config))
    if roots <= _UNET_ROOTS:
        modules, alphas = _from_prefixed(file, {f"unet.{k}": v for k, v in stripped.items()}, {})
        if peft_wrapped:
            alphas = _peft_adapter_config_alphas(file, modules) or alphas
        return ("peft" if peft_wrapped else "diffsynth"), modules, alphas
    raise LoraFormatError(
        f"{file.name}: unrecognised LoRA layout (first key '{keys[0] if keys else '(none)'}'); expected diffusers/peft "
        "(unet.…lora_A), kohya (lora_unet_…) or DiffSynth-Studio keys"
    )



def _split_alpha_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    weights = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    alphas = {k[: -len(".alpha")]: float(v.item()) for k, v in state.items() if k.endswith(".alpha")}
    return weights, alphas


def _component_modules(weights: Mapping[str, torch.Tensor]) -> _Modules:
    """(lora_A, lora_B) per "<component>.<module>" from component-prefixed keys in any diffusers spelling."""
    modules: _Modules = {}
    for component in COMPONENTS:
        part = {k[len(component) + 1 :]: v for k, v in weights.items() if k.startswith(component + ".")}
        if part:
            peft = _unet_to_peft(part) if component == "unet" else _text_to_peft(part)
            modules.update({f"{component}.{m}": ab for m, ab in _modules_of(peft).items()})
    return modules


def _from_prefixed(file: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> tuple[_Modules, dict[str, float]]:
    """diffusers / peft keys with a component prefix, in any of diffusers' historical spellings."""
    weights, alphas = _split_alpha_keys(tensors)
    modules = _component_modules(weights)
    alphas.update(_alphas_from_adapter_metadata(file, meta, modules))
    return modules, alphas


def _unet_to_peft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    return {_strip_adapter_name(k): v for k, v in convert_unet_state_dict_to_peft(state).items()}


def _text_to_peft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_peft

    try:
        state = convert_state_dict_to_peft(state)
    except ValueError:  # already peft (or a spelling diffusers does not detect): handled below
        pass
    fixed = {}
    for key, value in state.items():
        key = key.replace(".lora_linear_layer.down.", ".lora_A.").replace(".lora_linear_layer.up.", ".lora_B.")
        key = key.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B.")
        fixed[_canonical_text_key(_strip_adapter_name(key))] = value
    return fixed


def _strip_adapter_name(key: str) -> str:
    match = _PEFT_KEY.match(key)
    if match and match["adapter"]:
        return f"{match['module']}.lora_{match['ab']}.weight"
    return key


def _alphas_from_adapter_metadata(file: Path, meta: Mapping[str, str], modules: _Modules) -> dict[str, float]:
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


def _peft_adapter_config_alphas(file: Path, modules: _Modules) -> dict[str, float]:
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


def _from_kohya(file: Path, tensors: dict[str, torch.Tensor], config: Any) -> tuple[_Modules, dict[str, float]]:
    """kohya / A1111 keys, converted by diffusers' own converters (SGM block remap included)."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    names_by_tensor = {id(v): k.split(".", 1)[0] for k, v in tensors.items() if k.endswith(".lora_down.weight")}
    alpha_by_name = {k.split(".", 1)[0]: float(v.item()) for k, v in tensors.items() if k.endswith(".alpha")}
    chatglm, rest = _split_chatglm_kohya(tensors)
    layers = _UnetLayout.of(config).down_layers
    if len(set(layers)) != 1 and any(p in k for k in rest for p in ("input_blocks", "output_blocks")):
        raise LoraFormatError(f"{file.name}: SGM block names need a UNet with the same layers in every block")
    try:
        mapped = _maybe_map_sgm_blocks_to_diffusers(dict(rest), SimpleNamespace(layers_per_block=layers[0]))
        converted, _ = _convert_non_diffusers_lora_to_diffusers(mapped)
    except (ValueError, KeyError, IndexError) as err:
        raise LoraFormatError(f"{file.name}: kohya keys diffusers cannot map ({_first_line(err)})") from None
    converted.update(chatglm)
    modules = _component_modules(converted)
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


def _from_diffsynth_blocks(file: Path, tensors: Mapping[str, torch.Tensor], config: Any) -> tuple[_Modules, dict[str, float]]:
    """DiffSynth-Studio's own UNet layout (``blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight``)."""
    blocks = diffsynth_block_map(config)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise LoraFormatError(f"{file.name}: unexpected key '{key}' in a DiffSynth-Studio LoRA")
        renamed[f"unet.{_diffsynth_module(file, match['module'], blocks)}.lora_{match['ab']}.weight"] = value
    return _from_prefixed(file, renamed, {})


def _diffsynth_module(file: Path, module: str, blocks: Mapping[int, str]) -> str:
    parts = module.split(".")
    if parts[0] != "blocks":
        for old, new in _DIFFSYNTH_TOP.items():
            if module == old or module.startswith(old + "."):
                return new + module[len(old) :]
        return module
    index = int(parts[1])
    if index not in blocks:
        raise LoraFormatError(f"{file.name}: DiffSynth block {index} does not exist in this UNet; is the LoRA for another model?")
    rest = parts[2:]
    if "transformer_blocks" in rest:
        at = rest.index("transformer_blocks") + 2
        inner = rest[at:]
        if inner[:1] == ["act_fn"]:
            inner = ["ff", "net", "0", *inner[1:]]
        elif inner == ["ff"]:
            inner = ["ff", "net", "2"]
        elif inner[-1:] == ["to_out"]:
            inner = [*inner, "0"]
        rest = rest[:at] + inner
    return ".".join([blocks[index], *rest])


def _bake(
    modules: _Modules, alphas: Mapping[str, float], default_alpha: float | None
) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, float]]:
    """Canonical state with ``alpha / rank`` multiplied into ``lora_B``; also the ranks and alphas used."""
    import torch

    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    used: dict[str, float] = {}
    for module in sorted(modules):
        down, up = modules[module]
        rank = int(down.shape[0])
        alpha = alphas.get(module, default_alpha)
        ranks[module] = rank
        if alpha is not None:
            used[module] = float(alpha)
        scale = 1.0 if alpha is None else float(alpha) / rank
        state[f"{module}.lora_A.weight"] = down
        state[f"{module}.lora_B.weight"] = up if scale == 1.0 else (up.to(torch.float32) * scale).to(up.dtype)
    return state, ranks, used


def _info(
    file: Path, fmt: str, family: str | None, modules: _Modules, ranks: Mapping[str, int],
    alphas: Mapping[str, float], meta: Mapping[str, str],
) -> LoraInfo:
    if not modules:
        raise LoraFormatError(f"{file.name}: contains no LoRA weights")
    leaves = {_leaf(m) for m in modules}
    return LoraInfo(
        path=file,
        format=fmt,
        family=family,
        rank=Counter(ranks.values()).most_common(1)[0][0],
        alpha=Counter(alphas.values()).most_common(1)[0][0] if alphas else None,
        components=tuple(c for c in COMPONENTS if any(m.startswith(c + ".") for m in modules)),
        target_modules=tuple(sorted(leaves)),
        num_modules=len(modules),
        by_lorastory=META_PREFIX + "version" in meta,
        metadata=dict(meta),
    )


def _leaf(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


# -------------------------------------------------------------------------- apply


def apply_lora(
    pipe: Any,
    path: str | os.PathLike[str],
    scale: float = 1.0,
    adapter_name: str | None = None,
    allow_pickle: bool = False,
    fuse: bool = False,
    default_alpha: float | None = None,
) -> LoraInfo:
    """Load a LoRA file into ``pipe`` as adapter ``adapter_name`` (default: from the file name) at ``scale``.

    Adapters already loaded stay active at their own scales. ``fuse=True`` merges the
    LoRA into the base weights afterwards (faster inference; :func:`unfuse` undoes it).
    """
    family = family_of_pipeline(pipe)
    name = adapter_name or _adapter_name_from(Path(path))
    _check_adapter_free(pipe, name)
    state, info = load_lora_state(
        path, allow_pickle, family=family.name, unet_config=pipe.unet.config, default_alpha=default_alpha
    )
    parts = _split_components(pipe, family, state, info)
    _check_fits(pipe, parts, info, family)
    try:
        _load_parts(pipe, parts, name)
    except Exception:
        if name in {a for adapters in pipe.get_list_adapters().values() for a in adapters}:
            pipe.delete_adapters(name)  # leave no half-loaded adapter behind
        raise
    set_lora_scale(pipe, scale, name)
    if fuse:
        _fuse(pipe, 1.0, [name])
    return info


def _load_parts(pipe: Any, parts: dict[str, dict[str, torch.Tensor]], name: str) -> None:
    unet_state = parts.get("unet")
    if unet_state:  # diffusers' own UNet loader (load_lora_weights minus the text-encoder half)
        prefixed = {f"unet.{k}": v for k, v in unet_state.items()}
        type(pipe).load_lora_into_unet(prefixed, network_alphas=None, unet=pipe.unet, adapter_name=name, _pipeline=pipe)
    for component, component_state in parts.items():
        if component != "unet":
            _load_text_encoder_lora(getattr(pipe, component), component_state, name)


def _adapter_name_from(path: Path) -> str:
    return re.sub(r"\W", "_", path.stem) or "lora"


def _split_components(
    pipe: Any, family: Family, state: Mapping[str, torch.Tensor], info: LoraInfo
) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        component, rest = key.split(".", 1)
        if component != "unet" and component not in family.text_encoders:
            raise LoraMismatchError(
                f"{info.path.name} has {component} weights but a {family.name} pipeline has no {component}; "
                "it is a LoRA for another model family"
            )
        if component != "unet" and not hasattr(getattr(pipe, component), "text_model"):
            rest = rest.removeprefix("text_model.")
        parts.setdefault(component, {})[rest] = value
    return parts


def _check_fits(pipe: Any, parts: Mapping[str, Mapping[str, torch.Tensor]], info: LoraInfo, family: Family) -> None:
    """Every LoRA module must exist in the pipeline with matching shapes; say which one does not."""
    for component, state in parts.items():
        named = dict(getattr(pipe, component).named_modules())
        for module, (down, up) in _modules_of(state).items():
            target = named.get(module)
            if target is None:
                raise LoraMismatchError(
                    f"{info.path.name}: {component} module '{module}' does not exist in this {family.name} pipeline; "
                    "the LoRA is for another model"
                )
            base = getattr(target, "base_layer", target)
            fan_in = getattr(base, "in_features", getattr(base, "in_channels", None))
            fan_out = getattr(base, "out_features", getattr(base, "out_channels", None))
            if (fan_in is not None and down.shape[1] != fan_in) or (fan_out is not None and up.shape[0] != fan_out):
                raise LoraMismatchError(
                    f"{info.path.name}: {component} module '{module}' is {fan_in}→{fan_out} here but "
                    f"{down.shape[1]}→{up.shape[0]} in the LoRA; the LoRA is for another model"
                )


def _load_text_encoder_lora(encoder: Any, state: Mapping[str, torch.Tensor], adapter_name: str) -> None:
    """Inject and fill a text-encoder adapter with peft (scale already baked, so alpha == rank)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    ranks = {module: int(down.shape[0]) for module, (down, _) in _modules_of(state).items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {m: r for m, r in ranks.items() if r != rank}  # full module paths: peft matches them exactly
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=sorted(ranks), rank_pattern=pattern, alpha_pattern=dict(pattern)
    )
    inject_adapter_in_model(config, encoder, adapter_name=adapter_name)
    set_peft_model_state_dict(encoder, dict(state), adapter_name=adapter_name)


def _lora_components(pipe: Any) -> list[str]:
    return [c for c in pipe._lora_loadable_modules if getattr(pipe, c, None) is not None]


def _adapter_scales(pipe: Any) -> dict[str, float]:
    scales = getattr(pipe, "_lorastory_lora_scales", None)
    if scales is None:
        scales = {}
        pipe._lorastory_lora_scales = scales
    return scales


def set_lora_scale(pipe: Any, scale: float, adapter_name: str | None = None) -> None:
    """Set one adapter's strength (``None``: every loaded adapter); all loaded adapters stay active."""
    loaded = sorted({a for adapters in pipe.get_list_adapters().values() for a in adapters})
    if not loaded:
        raise LoraError("the pipeline has no LoRA loaded; call apply_lora first")
    if adapter_name is not None and adapter_name not in loaded:
        raise LoraError(f"no LoRA named '{adapter_name}' is loaded; loaded: {', '.join(loaded)}")
    scales = _adapter_scales(pipe)
    for name in loaded if adapter_name is None else [adapter_name]:
        scales[name] = float(scale)
    pipe.set_adapters(loaded, adapter_weights=[scales.get(name, 1.0) for name in loaded])


def fuse(pipe: Any, scale: float = 1.0, adapter_names: list[str] | None = None) -> None:
    """Merge active adapters (at their current scales, times ``scale``) into the base weights."""
    _fuse(pipe, scale, adapter_names)


def _fuse(pipe: Any, scale: float, adapter_names: list[str] | None) -> None:
    pipe.fuse_lora(components=_lora_components(pipe), lora_scale=scale, adapter_names=adapter_names)


def unfuse(pipe: Any) -> None:
    """Undo :func:`fuse`: subtract the merged LoRA weights again (adapters stay loaded)."""
    pipe.unfuse_lora(components=_lora_components(pipe))


def _first_line(err: BaseException, limit: int = 200) -> str:
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."

