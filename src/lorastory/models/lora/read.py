"""Read any supported LoRA file into one canonical, scale-correct state dict.

:func:`load_lora_state` reads ours, diffusers/peft (new and old key styles), kohya (a Flux file's
BFL names and T5 keys, ComfyUI's spelling of them, XLabs' keys: :mod:`.bfl`), and DiffSynth-Studio files (peft keys without a prefix, or DiffSynth's own ``blocks.N`` UNet layout)
into ``<component>.<module>.lora_A.weight`` / ``lora_B.weight`` keys with each module's
``alpha / rank`` scale multiplied into ``lora_B``, so ``pipe.load_lora_weights(state)`` (which
assumes alpha == rank for a bare dict) gives the right output. Here: the file reading, the
layout detection and the baking; each layout's conversion lives in its own module.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.models.lora.bfl import (
    BFL_LAYOUTS,
    KOHYA_T5_PREFIX,
    bfl_family,
    comfy_bfl_to_kohya,
    from_bfl,
    from_kohya_t5,
    from_xlabs,
    is_bfl,
    is_comfy_bfl,
    is_xlabs,
)
from lorastory.models.lora.diffsynth import from_diffsynth_blocks, is_diffsynth_blocks
from lorastory.models.lora.diffusers_format import from_prefixed, peft_adapter_config_alphas
from lorastory.models.lora.dit_names import from_kohya_dit, from_peft_dit, kohya_dit_family, layouts_read, peft_dit_layout
from lorastory.errors import first_line
from lorastory.hub import PICKLE_SUFFIXES
from lorastory.models.lora.errors import LoraFormatError, LoraMismatchError
from lorastory.models.lora.keys import COMPONENTS, META_PREFIX, Modules
from lorastory.models.lora.kohya import from_kohya, is_kohya
from lorastory.models.lora.lycoris import is_lycoris, most_common, read_lycoris
from lorastory.models.lora.spec import LoraInfo
from lorastory.models.lora.unet_layout import default_unet_config
from lorastory.models.registry import FAMILIES, Family, get_family

if TYPE_CHECKING:
    import torch

# First key segments of diffusers UNet modules: a file of unprefixed peft keys under these is a UNet LoRA.
_UNET_ROOTS = {
    "down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "time_embedding", "add_embedding", "encoder_hid_proj",
}


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
    config = unet_config if unet_config is not None else default_unet_config(file_meta)
    if is_lycoris(tensors):  # LoHa, LoKr, DoRA: peft's own parameters, loaded into the same peft adapter
        return _variant_state(file, tensors, file_meta, config, recorded, family)
    fmt, modules, alphas = _parse(file, tensors, file_meta, config, family, recorded)
    state, ranks, used_alphas = _bake(modules, alphas, default_alpha)
    return state, _info(file, fmt, recorded, modules, ranks, used_alphas, file_meta)


# ------------------------------------------------------------------------ files


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
        raise LoraFormatError(f"{file.name}: not a readable safetensors file ({first_line(err, 200)})") from None
    return tensors, meta


def _read_pickle(file: Path) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise LoraFormatError(
            f"{file.name}: not a plain tensor checkpoint; weights-only loading refused it ({first_line(err, 200)})"
        ) from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):  # lightning / trainer checkpoints
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise LoraFormatError(f"{file.name}: expected a dict of tensors, found {type(data).__name__}")
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise LoraFormatError(f"{file.name}: holds no tensors")
    return tensors


# ---------------------------------------------------------------------- layouts


def _parse(
    file: Path, tensors: dict[str, torch.Tensor], meta: Mapping[str, str], config: Any, family: str | None,
    recorded: str | None,
) -> tuple[str, Modules, dict[str, float]]:
    """Detect the layout and return (format, {prefixed module: (A, B)}, {prefixed module: alpha}); ``family`` (the
    pipeline's, else the ``recorded`` one) is tried first where a layout names a transformer's modules (dit_names.py)."""
    keys = list(tensors)
    hint = family or recorded
    if is_comfy_bfl(keys):  # ComfyUI's spelling of a Flux transformer's BFL names: read as kohya's
        parsed = _kohya_with_text(file, comfy_bfl_to_kohya(file, tensors), lambda unet: from_bfl(file, unet))
        return ("comfyui", *_of_family(file, family, bfl_family(), parsed))
    if is_bfl(keys):  # a Flux transformer's kohya file (BFL module names); its text encoders as any kohya file
        return ("kohya", *_of_family(file, family, bfl_family(), _kohya_with_text(file, tensors, lambda unet: from_bfl(file, unet))))
    denoiser_keys = [k for k in keys if k.startswith(_KOHYA_DENOISER)]
    dit = kohya_dit_family(file, denoiser_keys, hint) if len(denoiser_keys) == len(_drop_kohya_text(keys)) else None
    if dit is not None:  # kohya names of a transformer's diffusers modules (musubi-tuner's Qwen-Image; Flux's ai-toolkit)
        parsed = _kohya_with_text(file, tensors, lambda unet: from_kohya_dit(file, unet, dit))
        return ("kohya", *_of_family(file, family, dit, parsed))
    if is_kohya(keys):
        return ("kohya", *from_kohya(file, tensors, config))
    if is_xlabs(keys):
        try:
            converted = from_xlabs(tensors)
        except (ValueError, KeyError, AttributeError) as err:
            raise LoraFormatError(f"{file.name}: XLabs Flux keys diffusers cannot map ({first_line(err, 200)})") from None
        return ("xlabs", *from_prefixed(file, converted, {}))
    peft_wrapped = all(k.startswith("base_model.model.") for k in keys)  # PeftModel.save_pretrained
    stripped = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    if all(k.split(".", 1)[0] in COMPONENTS for k in stripped):
        modules, alphas = from_prefixed(file, stripped, meta)
        return "diffusers", modules, alphas
    layout = peft_dit_layout(stripped, hint)  # ComfyUI's diffusion_model. keys, or none, of a transformer's modules
    if layout is not None:
        return layout[1], *_of_family(file, family, layout[0], from_peft_dit(file, stripped, layout[0]))
    roots = {k.split(".", 1)[0] for k in stripped}
    known = FAMILIES.get(hint) if hint is not None else None
    unet = known is None or known.denoiser == "unet"  # DiffSynth's blocks.N and diffusers' UNet roots: UNet layouts
    if unet and is_diffsynth_blocks(roots):
        return ("diffsynth-blocks", *from_diffsynth_blocks(file, stripped, config))
    if unet and roots <= _UNET_ROOTS:
        modules, alphas = from_prefixed(file, {f"unet.{k}": v for k, v in stripped.items()}, {})
        if peft_wrapped:
            alphas = peft_adapter_config_alphas(file, modules) or alphas
        return ("peft" if peft_wrapped else "diffsynth"), modules, alphas
    first = keys[0] if keys else "(none)"
    if known is not None and known.lora_modules:
        raise LoraFormatError(f"{file.name}: its keys match no {known.display} LoRA layout (first key '{first}'); "
                              f"{layouts_read(known)}{', and ' + BFL_LAYOUTS if known is bfl_family() else ''}")
    raise LoraFormatError(
        f"{file.name}: unrecognised LoRA layout (first key '{first}'); expected diffusers/peft "
        "(unet.…lora_A or transformer.…lora_A), kohya (lora_unet_…) or DiffSynth-Studio keys"
    )


_KOHYA_DENOISER = ("lora_unet_", "lora_transformer_")
_KOHYA_TEXT = ("lora_te_", "lora_te1_", "lora_te2_", KOHYA_T5_PREFIX)


def _drop_kohya_text(keys: list[str]) -> list[str]:
    return [k for k in keys if not k.startswith(_KOHYA_TEXT)]


def _kohya_with_text(file: Path, tensors: Mapping[str, torch.Tensor],
                     read_denoiser: Callable[[dict[str, torch.Tensor]], tuple[Modules, dict[str, float]]],
                     ) -> tuple[Modules, dict[str, float]]:
    """A kohya file's denoiser keys by ``read_denoiser``, its CLIP keys by diffusers' converter, its T5 keys
    (sd-scripts' ``lora_te3_``) by :func:`~lorastory.models.lora.bfl.from_kohya_t5`."""
    modules, alphas = read_denoiser({k: v for k, v in tensors.items() if k.startswith(_KOHYA_DENOISER)})
    clip = {k: v for k, v in tensors.items() if k.startswith(_KOHYA_TEXT) and not k.startswith(KOHYA_T5_PREFIX)}
    t5 = {k: v for k, v in tensors.items() if k.startswith(KOHYA_T5_PREFIX)}
    for part, reader in ((clip, lambda p: from_kohya(file, p, default_unet_config({}))), (t5, lambda p: from_kohya_t5(file, p))):
        if part:
            more, more_alphas = reader(part)
            modules, alphas = {**modules, **more}, {**alphas, **more_alphas}
    return modules, alphas


def _of_family(file: Path, family: str | None, found: Family, parsed: tuple[Modules, dict[str, float]]
               ) -> tuple[Modules, dict[str, float]]:
    """``parsed``, when the family whose module names the file uses is the pipeline's (or no family is asked for)."""
    asked = FAMILIES.get(family) if family is not None else None
    if asked is not None and asked.name != found.name:
        raise LoraMismatchError(f"{file.name} names {found.display} transformer modules but the pipeline is {asked.display}; "
                                f"load it with {found.article} {found.display} model or use a LoRA trained for {asked.display}")
    return parsed


def _variant_state(
    file: Path, tensors: dict[str, torch.Tensor], meta: Mapping[str, str], config: Any, family: str | None,
    pipeline_family: str | None = None,
) -> tuple[dict[str, torch.Tensor], LoraInfo]:
    """A LoHa / LoKr / DoRA file: peft-named state (scales not baked: they live in the adapter's config)."""
    network, state, ranks, alphas, settings = read_lycoris(file, tensors, meta, config, pipeline_family or family)
    info = LoraInfo(
        path=file, format="lycoris", family=family, rank=most_common(ranks.values()), alpha=most_common(alphas.values()),
        components=tuple(c for c in COMPONENTS if any(m.startswith(c + ".") for m in ranks)),
        target_modules=tuple(sorted({_leaf(m) for m in ranks})), num_modules=len(ranks),
        by_lorastory=META_PREFIX + "version" in meta, metadata=dict(meta),
        network=network, adapter={"ranks": ranks, "alphas": alphas, **settings},
    )
    return state, info


# ------------------------------------------------------------------------- bake


def _bake(
    modules: Modules, alphas: Mapping[str, float], default_alpha: float | None
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
    file: Path, fmt: str, family: str | None, modules: Modules, ranks: Mapping[str, int],
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
