"""LyCORIS adapters (LoHa, LoKr) and DoRA in the kohya/LyCORIS layout, both ways.

Writing: kohya module names (see :mod:`.kohya`) with LyCORIS' tensor names, which ComfyUI,
A1111/Forge's LyCORIS support and LyCORIS itself read:

* LoHa: ``hada_w1_a``/``hada_w1_b``/``hada_w2_a``/``hada_w2_b`` and ``alpha`` (scale ``alpha / rank``);
* LoKr: ``lokr_w1`` (or ``lokr_w1_a``/``lokr_w1_b``) and ``lokr_w2`` (or ``lokr_w2_a``/``lokr_w2_b``)
  and ``alpha``; when neither factor is low-rank those readers apply no alpha, so the scale is
  multiplied into ``lokr_w2``;
* DoRA: ``lora_down``/``lora_up``/``alpha`` and ``dora_scale``, the magnitude on the output axis
  (shape ``(out, 1)``; LyCORIS' ``wd_on_out``), which is what peft trains.

Reading: the same names back into peft's (``hada_w1_a``, ``lokr_w1``, ``lora_A``,
``lora_magnitude_vector``), the module names resolved by the kohya converter, so
:func:`~lorastory.models.lora.apply_lora` injects the same peft adapter and loads the weights
into it: the file runs exactly as it was trained (no conversion to a plain LoRA).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.models.lora.dit_names import kohya_dit_modules
from lorastory.models.lora.errors import LoraFormatError
from lorastory.models.lora.keys import META_PREFIX
from lorastory.models.lora.kohya import from_kohya, kohya_module_name
from lorastory.models.lora.unet_layout import default_unet_config
from lorastory.models.registry import Family

if TYPE_CHECKING:
    import torch

_MARKERS = ("hada_", "lokr_", "dora_scale", "lora_magnitude_vector")
# peft parameter names (state-dict keys, adapter name stripped) of every variant.
_PEFT_PART = re.compile(
    r"^(?P<module>.+)\.(?P<part>hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2|lora_A\.weight|lora_B\.weight"
    r"|lora_magnitude_vector(?:\.weight)?)$"
)
_FILE_PART = re.compile(r"^(?P<name>[^.]+)\.(?P<part>hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2"
                        r"|lora_down\.weight|lora_up\.weight|dora_scale|alpha)$")
_DORA_NAMES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}


def is_lycoris(keys: Iterable[str]) -> bool:
    """Whether any key belongs to a LyCORIS (LoHa, LoKr) or DoRA adapter."""
    return any(marker in k for k in keys for marker in _MARKERS)


def network_of_config(config: Any) -> str:
    """``lora``, ``dora``, ``loha`` or ``lokr``: the adapter kind of a peft config."""
    kind = type(config).__name__
    if kind == "LoHaConfig":
        return "loha"
    if kind == "LoKrConfig":
        return "lokr"
    return "dora" if getattr(config, "use_dora", False) else "lora"


# ------------------------------------------------------------------------ write


def peft_parts(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _PEFT_PART.match(key)
        if match is None:
            raise LoraFormatError(f"unexpected adapter key '{key}'; lorastory writes LoRA, LoCon, LoHa, LoKr and DoRA")
        modules.setdefault(match["module"], {})[match["part"].removesuffix(".weight") if "magnitude" in match["part"] else match["part"]] = value
    return modules


def to_lycoris_layout(
    layers: dict[str, dict[str, torch.Tensor]], alphas: Mapping[str, float], ranks: Mapping[str, int], network: str,
    family: Family, unet_config: Any, naming: str, denoiser_prefix: str = "lora_unet_",
) -> dict[str, torch.Tensor]:
    """LyCORIS keys for peft LoHa / LoKr / DoRA state dicts per component (``alphas``/``ranks`` by ``component.module``);
    ``denoiser_prefix`` replaces ``lora_unet_`` (Flux: ``lora_transformer_``, the names ComfyUI maps by offset)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for component, state in layers.items():
        for module, parts in peft_parts(state).items():
            name = kohya_module_name(component, module, family, unet_config, naming)
            if name.startswith("lora_unet_"):
                name = denoiser_prefix + name.removeprefix("lora_unet_")
            alpha, rank = float(alphas[f"{component}.{module}"]), int(ranks[f"{component}.{module}"])
            if network == "dora":
                magnitude = parts.pop("lora_magnitude_vector")
                parts = {_DORA_NAMES[p]: v for p, v in parts.items()}
                out = parts["lora_up.weight"].shape[0]
                parts["dora_scale"] = magnitude.reshape(out, *[1] * (parts["lora_down.weight"].dim() - 1))
            elif network == "lokr" and "lokr_w1_b" not in parts and "lokr_w2_b" not in parts:
                # readers apply no alpha when both factors are full: bake peft's alpha / rank into w2
                parts["lokr_w2"] = (parts["lokr_w2"].to(torch.float32) * (alpha / rank)).to(parts["lokr_w2"].dtype)
                alpha = float(rank)
            for part, value in parts.items():
                tensors[f"{name}.{part}"] = value.contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return tensors


# ------------------------------------------------------------------------- read


def _network_of_parts(file: Path, parts: Iterable[str]) -> str:
    found = set(parts)
    kinds = {"loha" if p.startswith("hada_") else "lokr" if p.startswith("lokr_") else "dora" if p == "dora_scale" else ""
             for p in found} - {""}
    if len(kinds) != 1:
        raise LoraFormatError(f"{file.name}: mixes adapter kinds ({', '.join(sorted(kinds))}); save one kind per file")
    return kinds.pop()


def read_lycoris(
    file: Path, tensors: dict[str, torch.Tensor], meta: Mapping[str, str], config: Any, hint: str | None = None
) -> tuple[str, dict[str, torch.Tensor], dict[str, int], dict[str, float], dict[str, Any]]:
    """A LoHa / LoKr / DoRA file → (network, peft state with component prefixes, rank and alpha per
    ``component.module``, peft settings such as LoKr's factor); ``hint``: the family a transformer's kohya
    names are tried against first (the pipeline's or the file's)."""

    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _FILE_PART.match(key)
        if match is None:
            raise LoraFormatError(f"{file.name}: unexpected key '{key}' in a LyCORIS/DoRA file (LoHa, LoKr, DoRA are read)")
        grouped.setdefault(match["name"], {})[match["part"]] = value
    network = _network_of_parts(file, {p for parts in grouped.values() for p in parts})
    for name, parts in grouped.items():
        _check_complete(file, network, name, parts)
    modules = _module_names(file, list(grouped), config, hint)
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for name, parts in grouped.items():
        module = modules[name]
        alpha_tensor = parts.pop("alpha", None)
        rank = _rank(file, network, name, parts)
        ranks[module] = rank
        alphas[module] = float(alpha_tensor.item()) if alpha_tensor is not None else float(rank)
        if network == "lokr" and "lokr_w1_b" not in parts and "lokr_w2_b" not in parts:
            alphas[module] = float(rank)  # no low-rank factor: LyCORIS and ComfyUI apply no alpha (scale 1)
        for part, value in parts.items():
            if network == "dora":
                part, value = _dora_to_peft(part, value, parts)
            state[f"{module}.{part}"] = value
    return network, state, ranks, alphas, _settings(network, grouped, meta)


# The tensors each module of a variant needs (LoKr: either factor full or as a low-rank pair).
_REQUIRED = {
    "loha": [("hada_w1_a",), ("hada_w1_b",), ("hada_w2_a",), ("hada_w2_b",)],
    "lokr": [("lokr_w1", "lokr_w1_a"), ("lokr_w2", "lokr_w2_a")],
    "dora": [("lora_down.weight",), ("lora_up.weight",), ("dora_scale",)],
}


def _check_complete(file: Path, network: str, name: str, parts: Mapping[str, torch.Tensor]) -> None:
    for options in _REQUIRED[network]:
        if not any(option in parts for option in options):
            raise LoraFormatError(f"{file.name}: LyCORIS {network} module '{name}' has no {' or '.join(options)}; "
                                  "the file is incomplete")
    for low_rank in ("lokr_w1_a", "lokr_w2_a"):
        if low_rank in parts and low_rank[:-1] + "b" not in parts:
            raise LoraFormatError(f"{file.name}: LyCORIS lokr module '{name}' has {low_rank} without its _b; the file is incomplete")


def _dora_to_peft(part: str, value: torch.Tensor, parts: Mapping[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    if part == "lora_down.weight":
        return "lora_A.weight", value
    if part == "lora_up.weight":
        return "lora_B.weight", value
    out = parts["lora_up.weight"].shape[0]
    if value.shape[0] != out:  # LyCORIS' other convention (magnitude per input channel) is not what peft trains
        raise LoraFormatError("DoRA magnitudes per input channel (LyCORIS wd_on_out=False) are not supported; "
                              "use a file with dora_scale per output channel")
    conv = parts["lora_down.weight"].dim() == 4
    return "lora_magnitude_vector", value.reshape(1, out, 1, 1) if conv else value.reshape(out)


def _rank(file: Path, network: str, name: str, parts: Mapping[str, torch.Tensor]) -> int:
    if network == "loha":
        return int(parts["hada_w1_b"].shape[0])
    if network == "dora":
        return int(parts["lora_down.weight"].shape[0])
    for low_rank in ("lokr_w2_b", "lokr_w1_b"):
        if low_rank in parts:
            return int(parts[low_rank].shape[0])
    if "lokr_w2" not in parts:
        raise LoraFormatError(f"{file.name}: LoKr module '{name}' has neither lokr_w2 nor lokr_w2_a/b")
    w2 = parts["lokr_w2"]
    return int(max(w2.shape[0], w2[0].numel() if w2.dim() == 4 else w2.shape[1]))  # full w2: any rank >= half its size


def _settings(network: str, grouped: Mapping[str, Mapping[str, Any]], meta: Mapping[str, str]) -> dict[str, Any]:
    if network != "lokr":
        return {}
    factor = meta.get(META_PREFIX + "lokr_factor")
    if factor is None:
        try:
            factor = json.loads(meta.get("ss_network_args") or "{}").get("factor", -1)
        except (json.JSONDecodeError, AttributeError):
            factor = -1
    both = any("lokr_w1_a" in parts for parts in grouped.values())
    return {"decompose_factor": int(factor), "decompose_both": both}


def _module_names(file: Path, names: list[str], config: Any, hint: str | None) -> dict[str, str]:
    """kohya names → ``component.module``: a transformer's diffusers module names (Qwen-Image, as musubi-tuner
    writes them) through the family's module table, else through the kohya converter (fed stand-in tensors: only
    the names matter)."""
    import torch

    dit = kohya_dit_modules(file, [n for n in names if n.startswith(("lora_unet_", "lora_transformer_"))], hint)
    rest = [n for n in names if n not in dit]  # the text encoders' names (and a UNet's) go through the converter
    if not rest:
        return dit
    fake: dict[str, torch.Tensor] = {}
    down_names: dict[int, str] = {}
    for name in rest:
        down = torch.zeros(1, 1)
        down_names[id(down)] = name
        fake[f"{name}.lora_down.weight"] = down
        fake[f"{name}.lora_up.weight"] = torch.zeros(1, 1)
    # beside a transformer's names only text-encoder names remain: the file's config is no UNet's, so the standard one
    modules, _ = from_kohya(file, fake, default_unet_config({}) if dit else config)
    resolved = {**dit, **{down_names[id(down)]: module for module, (down, _) in modules.items()}}
    missing = [n for n in names if n not in resolved]
    if missing:
        raise LoraFormatError(f"{file.name}: module '{missing[0]}' has no diffusers name; is it a LoRA for this model family?")
    return resolved


def most_common(values: Iterable[Any]) -> Any:
    """The most frequent value (the base rank/alpha of a config; the others become patterns)."""
    return Counter(values).most_common(1)[0][0]
