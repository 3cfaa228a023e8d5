"""LoRA files that name a diffusion transformer's modules as diffusers does (Qwen-Image), in the other tools' layouts.

A family lists its transformer's Linear modules (``Family.lora_modules``, ``N`` for a block index); with that
table these layouts are read into ``transformer.<module>`` (A, B) and alphas:

* kohya / musubi-tuner: ``lora_unet_<module, dots as "_">`` with ``.lora_down.weight``, ``.lora_up.weight`` and
  ``.alpha``, as musubi-tuner names a Qwen-Image LoRA (its networks/lora_qwen_image.py) and ComfyUI and diffusers'
  Qwen-Image loader read it; :func:`~lorastory.models.lora.kohya.to_kohya_layout` writes it (diffusers naming).
  Reading needs the table: kohya's "_" also joins the words inside a name (``img_mlp_net_0_proj``). Flux files
  in this grammar (``lora_unet_transformer_blocks_0_attn_to_q``, ai-toolkit's older ``lora_transformer_…``) read the
  same way through Flux's table; the caller splits off the text-encoder (``lora_te…``) keys first.
* ComfyUI: ``diffusion_model.<module>`` keys, ``lora_A``/``lora_B`` (musubi-tuner's convert_lora.py, alpha baked
  in) or ``lora_down``/``lora_up`` with ``.alpha`` (ComfyUI's own LoRA training and extraction nodes).
* DiffSynth-Studio and others: the same keys without a prefix, peft's ``lora_A.default.weight`` included.

diffusers' ``transformer.`` keys are the diffusers layout (:mod:`.diffusers_format`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from lorastory.models.lora.errors import LoraFormatError
from lorastory.models.lora.keys import Modules
from lorastory.models.registry import FAMILIES, Family

if TYPE_CHECKING:
    import torch

COMFY_PREFIX = "diffusion_model."
# lora_transformer_: ai-toolkit's older Flux files (its scripts/convert_lora_to_peft_format.py reads them), same grammar.
_KOHYA_KEY = re.compile(r"^(?P<prefix>lora_unet_|lora_transformer_)(?P<stem>[^.]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")
_KOHYA_NAME = re.compile(r"^(?P<prefix>lora_unet_|lora_transformer_)(?P<stem>[^.]+)$")
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB](?:\.default)?\.weight|lora_(?:down|up)\.weight|alpha)$")
_PART = {"lora_down.weight": "A", "lora_A.weight": "A", "lora_A.default.weight": "A",
         "lora_up.weight": "B", "lora_B.weight": "B", "lora_B.default.weight": "B", "alpha": "alpha"}


@lru_cache(maxsize=32)
def _patterns(names: tuple[str, ...], separator: str) -> tuple[tuple[re.Pattern[str], tuple[str, ...]], ...]:
    """Each module name as a pattern over names joined by ``separator``, with its dotted segments ("N": a number)."""
    compiled = []
    for name in names:
        segments = tuple(name.split("."))
        regex = re.escape(separator).join(r"(\d+)" if s == "N" else re.escape(s) for s in segments)
        compiled.append((re.compile(regex), segments))
    return tuple(compiled)


def module_name(name: str, family: Family, separator: str = ".") -> str | None:
    """The diffusers module a (kohya: ``separator="_"``) name stands for in ``family``'s transformer; None: none."""
    for pattern, segments in _patterns(family.lora_modules, separator):
        match = pattern.fullmatch(name)
        if match is not None:
            numbers = iter(match.groups())
            return ".".join(next(numbers) if s == "N" else s for s in segments)
    return None


def _candidates(hint: str | None) -> list[Family]:
    """The families with a module table, ``hint`` (the pipeline's or the file's family) first."""
    first = FAMILIES.get(hint) if hint is not None else None
    ordered = ([first] if first is not None else []) + [f for f in FAMILIES.values() if f is not first]
    return [f for f in ordered if f.lora_modules]


def _resolving_family(names: set[str], hint: str | None, separator: str) -> Family | None:
    for family in _candidates(hint):
        if all(module_name(n, family, separator) is not None for n in names):
            return family
    return None


# ------------------------------------------------------------------- kohya / musubi-tuner


def kohya_dit_family(file: Path, keys: Iterable[str], hint: str | None) -> Family | None:
    """The family whose transformer every ``lora_unet_`` name of a kohya file names; None: not such a file.

    A file for ``hint``'s family (one with a table) that names some of its modules and some unknown ones is an
    error naming the first unknown one, rather than a file for another model.
    """
    keys = list(keys)
    matches = [_KOHYA_KEY.match(k) for k in keys]
    if not keys or any(m is None for m in matches):
        return None
    stems = {m["stem"] for m in matches if m is not None}
    prefix = next(m["prefix"] for m in matches if m is not None)
    family = _resolving_family(stems, hint, "_")
    known = FAMILIES.get(hint) if hint is not None else None
    if family is None and known is not None and known.lora_modules:
        unknown = sorted(s for s in stems if module_name(s, known, "_") is None)
        if len(unknown) < len(stems):
            raise LoraFormatError(f"{file.name}: kohya module {prefix}{unknown[0]} is not a {known.display} transformer "
                                  "module; the LoRA is for another model")
    return family


def from_kohya_dit(file: Path, tensors: Mapping[str, torch.Tensor], family: Family) -> tuple[Modules, dict[str, float]]:
    """``<denoiser>.<module>`` (A, B) and alphas from ``lora_unet_`` keys that :func:`kohya_dit_family` accepted."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _KOHYA_KEY.match(key)
        assert match is not None  # kohya_dit_family checked every key
        module = module_name(match["stem"], family, "_")
        parts.setdefault(f"{family.denoiser}.{module}", {})[_PART[match["part"]]] = value
    return gather_modules(file, parts)


def kohya_dit_modules(file: Path, names: Iterable[str], hint: str | None) -> dict[str, str]:
    """``<denoiser>.<module>`` for kohya module names (``lora_unet_…``, no tensor suffix) that all name one family's
    transformer modules, as LyCORIS files (LoHa, LoKr, DoRA) on musubi-tuner's names have them; {}: they do not.

    Names of which some are ``hint``'s transformer modules and some unknown are an error naming an unknown one.
    """
    stems = {}
    for name in names:
        match = _KOHYA_NAME.match(name)
        if match is None:
            return {}
        stems[name] = match["stem"]
    family = _resolving_family(set(stems.values()), hint, "_") if stems else None
    known = FAMILIES.get(hint) if hint is not None else None
    if family is None and known is not None and known.lora_modules:
        unknown = sorted(n for n, stem in stems.items() if module_name(stem, known, "_") is None)
        if len(unknown) < len(stems):
            raise LoraFormatError(f"{file.name}: module {unknown[0]} is not a {known.display} transformer module; "
                                  "the LoRA is for another model")
    if family is None:
        return {}
    return {name: f"{family.denoiser}.{module_name(stem, family, '_')}" for name, stem in stems.items()}


# ------------------------------------------------------------ ComfyUI / DiffSynth-Studio


def peft_dit_layout(keys: Iterable[str], hint: str | None) -> tuple[Family, str] | None:
    """(family, format) of a file of ``diffusion_model.<module>`` ("comfyui") or unprefixed ("diffsynth") LoRA keys
    naming a transformer's modules; None: not such a file."""
    keys = list(keys)
    prefixed = bool(keys) and all(k.startswith(COMFY_PREFIX) for k in keys)
    matches = [_PEFT_KEY.match(k.removeprefix(COMFY_PREFIX) if prefixed else k) for k in keys]
    if not keys or any(m is None for m in matches):
        return None
    family = _resolving_family({m["module"] for m in matches if m is not None}, hint, ".")
    return None if family is None else (family, "comfyui" if prefixed else "diffsynth")


def from_peft_dit(file: Path, tensors: Mapping[str, torch.Tensor], family: Family) -> tuple[Modules, dict[str, float]]:
    """``<denoiser>.<module>`` (A, B) and alphas from keys :func:`peft_dit_layout` accepted."""
    prefixed = all(k.startswith(COMFY_PREFIX) for k in tensors)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.match(key.removeprefix(COMFY_PREFIX) if prefixed else key)
        assert match is not None  # peft_dit_layout checked every key
        parts.setdefault(f"{family.denoiser}.{match['module']}", {})[_PART[match["part"]]] = value
    return gather_modules(file, parts)


def gather_modules(file: Path, parts: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[Modules, dict[str, float]]:
    """(A, B) and alphas per module from ``{module: {"A"|"B"|"alpha": tensor}}``; a module missing A or B is an error."""
    modules: Modules = {}
    alphas: dict[str, float] = {}
    for module, found in parts.items():
        if "A" not in found or "B" not in found:
            raise LoraFormatError(f"{file.name}: LoRA module {module} has only one of its down/up weights; "
                                  "the file is incomplete")
        modules[module] = (found["A"], found["B"])
        if "alpha" in found:
            alphas[module] = float(found["alpha"].item())
    return modules, alphas


def layouts_read(family: Family) -> str:
    """The layouts this module reads for ``family``, for the message about a file in none of them."""
    first = family.lora_modules[0] if family.lora_modules else "…"
    block = next((m for m in family.lora_modules if ".N." in m), first).replace("N", "0")
    return (f"{family.display} LoRAs are read in the diffusers ({family.denoiser}.{block}.lora_A.weight), ComfyUI "
            f"({COMFY_PREFIX}{block}.…) and kohya/musubi-tuner (lora_unet_{block.replace('.', '_')}.lora_down.weight) layouts")
