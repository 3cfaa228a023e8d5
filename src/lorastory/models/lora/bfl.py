"""The kohya layout of a Flux LoRA: ``lora_unet_<BFL module>`` keys, as sd-scripts writes and ComfyUI reads.

Black Forest Labs' reference Flux code (which sd-scripts trains and ComfyUI runs) fuses what diffusers
keeps apart: a double block's image and text q/k/v are one ``img_attn.qkv`` / ``txt_attn.qkv`` linear
each, and a single block's q, k, v and MLP input are one ``linear1``. A LoRA on the separate diffusers
modules is written there as one LoRA on the fused linear: the ``lora_down`` matrices stacked (rank
``n * r``) and the ``lora_up`` matrices block-diagonal, with alpha ``n * alpha`` so that ``alpha / rank``
is unchanged; ComfyUI and diffusers' kohya reader (which detects the block-diagonal layout and splits
it back) get the same weights. Parts a LoRA leaves out (say the MLP input of a single block) are zero
rows. Reading splits the fused matrices again, sized from the transformer's config rather than the
full-size model's, so a tiny test Flux reads the same way.

Also here: ComfyUI's spelling of the same names (``diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight``),
read as kohya's; sd-scripts' T5 keys (``lora_te3_``); XLabs' files (diffusers' converter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.models.lora.dit_names import gather_modules
from lorastory.models.lora.errors import LoraError, LoraFormatError
from lorastory.models.lora.keys import Modules, modules_of
from lorastory.models.registry import FAMILIES, Family

if TYPE_CHECKING:
    import torch

BFL_PREFIXES = ("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_unet_final_layer_")

# diffusers module (inside transformer_blocks.N) -> (BFL module, part of the fused module or None)
_DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
    "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1), "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None), "attn.to_add_out": ("txt_attn.proj", None),
    "ff.net.0.proj": ("img_mlp.0", None), "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None), "ff_context.net.2": ("txt_mlp.2", None),
    "norm1.linear": ("img_mod.lin", None), "norm1_context.linear": ("txt_mod.lin", None),
}
_SINGLE = {
    "attn.to_q": ("linear1", 0), "attn.to_k": ("linear1", 1), "attn.to_v": ("linear1", 2), "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None), "norm.linear": ("modulation.lin", None),
}
_TOP = {
    "proj_out": "final_layer.linear", "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def _parts(config: Any) -> dict[str, list[int]]:
    """Output sizes of the parts of each fused BFL module, from the transformer's config."""
    inner = config.num_attention_heads * config.attention_head_dim
    return {"img_attn.qkv": [inner] * 3, "txt_attn.qkv": [inner] * 3, "linear1": [inner] * 3 + [inner * 4]}


def bfl_module(module: str) -> tuple[str, int | None]:
    """The BFL name of a diffusers Flux transformer module and its part index in a fused module (None: not fused)."""
    match = _BLOCK.match(module)
    if match is None:
        if module in _TOP:
            return _TOP[module], None
        raise LoraError(f"Flux module '{module}' has no kohya name; save with format='diffusers'")
    table, prefix = (_DOUBLE, "double_blocks") if match[1] == "transformer_blocks" else (_SINGLE, "single_blocks")
    if match[3] not in table:
        raise LoraError(f"Flux module '{module}' has no kohya name; save with format='diffusers'")
    name, part = table[match[3]]
    return f"{prefix}.{match[2]}.{name}", part


def to_bfl_layout(state: Mapping[str, torch.Tensor], alphas: Mapping[str, float], config: Any) -> dict[str, torch.Tensor]:
    """kohya Flux keys for a transformer's peft state dict; ``alphas``: module -> alpha."""
    import torch

    groups: dict[str, dict[int | None, tuple[str, torch.Tensor, torch.Tensor]]] = {}
    for module, (down, up) in modules_of(state).items():
        name, part = bfl_module(module)
        groups.setdefault(name, {})[part] = (module, down, up)
    sizes = _parts(config)
    tensors: dict[str, torch.Tensor] = {}
    for name, members in groups.items():
        key = "lora_unet_" + name.replace(".", "_")
        if None in members:
            module, down, up = members[None]
            tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                            f"{key}.alpha": torch.tensor(float(alphas[module]))})
            continue
        ranks = {int(d.shape[0]) for _, d, _ in members.values()}
        scales = {alphas[m] / int(d.shape[0]) for m, d, _ in members.values()}
        if len(ranks) != 1 or len(scales) != 1:
            raise LoraError(f"the LoRA parts of Flux module {name} differ in rank or alpha; save with format='diffusers'")
        rank, parts = ranks.pop(), sizes[name.split(".", 2)[2]]
        present = sorted(members)  # type: ignore[type-var]
        downs = [members[p][1] for p in present]
        up = torch.zeros(sum(parts), rank * len(present), dtype=downs[0].dtype)
        for column, part in enumerate(present):
            start = sum(parts[:part])
            up[start : start + parts[part], column * rank : (column + 1) * rank] = members[part][2]
        tensors[f"{key}.lora_down.weight"] = torch.cat(downs).contiguous()
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(float(scales.pop() * rank * len(present)))
    return tensors


def is_bfl(keys: list[str]) -> bool:
    """Whether a kohya file names Flux's BFL modules."""
    return any(k.startswith(BFL_PREFIXES) for k in keys)


def from_bfl(file: Path, tensors: Mapping[str, torch.Tensor]) -> tuple[Modules, dict[str, float]]:
    """``transformer.<module>`` (A, B) and alphas from a kohya Flux file. Fused modules are split into their
    parts, sized from the fused ``lora_up`` itself (q, k, v: thirds; ``linear1``: 3 x inner + 4 x inner MLP),
    so a file of any Flux size reads without the model."""
    import torch

    modules: Modules = {}
    alphas: dict[str, float] = {}
    for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
        stem = key[: -len(".lora_down.weight")]
        down, up = tensors[key], tensors.get(f"{stem}.lora_up.weight")
        if up is None:
            raise LoraFormatError(f"{file.name}: {stem} has lora_down but no lora_up; the file is incomplete")
        alpha = float(tensors[f"{stem}.alpha"].item()) if f"{stem}.alpha" in tensors else float(down.shape[0])
        target = _diffusers_of(stem, int(up.shape[0]))
        if target is None:
            raise LoraFormatError(f"{file.name}: kohya module {stem} is not a Flux transformer module this reader knows")
        if isinstance(target, str):
            if stem == _FINAL_MODULATION:  # BFL's rows are (shift, scale), diffusers' norm_out (scale, shift)
                shift, scale = up.chunk(2)
                up = torch.cat([scale, shift])
            modules[f"transformer.{target}"], alphas[f"transformer.{target}"] = (down, up), alpha
            continue
        for module, (a, b), part_alpha in _split(down, up, alpha, target, file, stem):
            modules[f"transformer.{module}"], alphas[f"transformer.{module}"] = (a, b), part_alpha
    return modules, alphas


_STEM = re.compile(r"^lora_unet_(double_blocks|single_blocks)_(\d+)_(.+)$")
_FINAL_MODULATION = "lora_unet_final_layer_adaLN_modulation_1"  # read only: written LoRAs leave norm_out alone
_TOP_STEMS = {"lora_unet_" + bfl.replace(".", "_"): module for module, bfl in _TOP.items()} | {_FINAL_MODULATION: "norm_out.linear"}


def _diffusers_of(stem: str, outputs: int) -> str | list[tuple[str, int]] | None:
    """The diffusers module of a kohya Flux stem, or its parts [(module, output size)] for a fused one."""
    if stem in _TOP_STEMS:
        return _TOP_STEMS[stem]
    match = _STEM.match(stem)
    if match is None:
        return None
    ours, table = ("transformer_blocks", _DOUBLE) if match[1] == "double_blocks" else ("single_transformer_blocks", _SINGLE)
    members = {part: module for module, (name, part) in table.items() if name.replace(".", "_") == match[3]}
    if not members:
        return None
    if None in members:
        return f"{ours}.{match[2]}.{members[None]}"
    inner = outputs // 7 if match[3] == "linear1" else outputs // 3
    sizes = [inner, inner, inner, 4 * inner] if match[3] == "linear1" else [inner] * 3
    return [(f"{ours}.{match[2]}.{members[i]}", sizes[i]) for i in range(len(sizes))]


def _split(down: torch.Tensor, up: torch.Tensor, alpha: float, parts: list[tuple[str, int]], file: Path,
           stem: str) -> list[tuple[str, tuple[torch.Tensor, torch.Tensor], float]]:
    """One LoRA on a fused linear as LoRAs on its parts; all-zero parts (modules it leaves out) are dropped.

    When the parts use disjoint columns of ``lora_up`` (block-diagonal, as kohya and we write), each
    part keeps its own rows of ``lora_down`` and an alpha for its own rank (the same ``alpha / rank``);
    otherwise every part shares ``lora_down`` at the file's rank.
    """
    if up.shape[0] != sum(size for _, size in parts):
        raise LoraFormatError(f"{file.name}: {stem} has {up.shape[0]} outputs, this transformer {sum(s for _, s in parts)}; "
                              "the LoRA is for another model")
    rank = int(down.shape[0])
    chunks = up.split([size for _, size in parts])
    present = [i for i, chunk in enumerate(chunks) if chunk.any()]
    columns = {i: chunks[i].any(dim=0).nonzero().flatten() for i in present}
    used = [int(c) for i in present for c in columns[i]]
    if len(used) != len(set(used)):  # a dense lora_up: the parts share lora_down
        return [(parts[i][0], (down, chunks[i]), alpha) for i in present]
    return [(parts[i][0], (down[columns[i]], chunks[i][:, columns[i]]), alpha * len(columns[i]) / rank)
            for i in present]


def is_xlabs(keys: list[str]) -> bool:
    """Whether a file is an XLabs Flux LoRA (``double_blocks.N.processor.qkv_lora1.down.weight``...)."""
    return any(".processor." in k and k.removeprefix("diffusion_model.").startswith(("double_blocks.", "single_blocks."))
               for k in keys)


def from_xlabs(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An XLabs Flux LoRA as ``transformer.`` peft keys, by diffusers' own converter (it splits the fused q/k/v,
    sized from the file, so any Flux size converts)."""
    from diffusers.loaders.lora_conversion_utils import _convert_xlabs_flux_lora_to_diffusers

    return _convert_xlabs_flux_lora_to_diffusers(dict(tensors))  # type: ignore[no-any-return]


# ------------------------------------------------------------- ComfyUI's BFL keys, kohya's T5, the family


COMFY_PREFIX = "diffusion_model."
_BFL_ROOTS = ("double_blocks.", "single_blocks.", "final_layer.", "img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.")
_COMFY_KEY = re.compile(r"^(?P<root>diffusion_model|text_encoders\.clip_l\.transformer|text_encoders\.t5xxl\.transformer)\."
                        r"(?P<module>.+)\.(?P<part>lora_[AB]\.weight|lora_(?:down|up)\.weight|alpha)$")
# ComfyUI's text-encoder roots as sd-scripts' prefixes: CLIP-L is lora_te1_, T5-XXL lora_te3_.
_COMFY_ROOT = {"diffusion_model": "lora_unet_", "text_encoders.clip_l.transformer": "lora_te1_",
               "text_encoders.t5xxl.transformer": "lora_te3_"}
_KOHYA_PART = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
               "lora_down.weight": "lora_down.weight", "lora_up.weight": "lora_up.weight", "alpha": "alpha"}


def is_comfy_bfl(keys: list[str]) -> bool:
    """Whether a file names BFL's Flux modules as ComfyUI does (``diffusion_model.double_blocks.0.img_attn.qkv.lora_A``)."""
    return any(k.startswith(COMFY_PREFIX) and k[len(COMFY_PREFIX):].startswith(_BFL_ROOTS) and ".processor." not in k
               for k in keys)


def comfy_bfl_to_kohya(file: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's ``diffusion_model.<BFL module>`` keys as kohya's ``lora_unet_<BFL module>`` ones (the same weights:
    ComfyUI's loader maps both to one module), its ``text_encoders.clip_l`` / ``t5xxl`` ones as ``lora_te1_`` /
    ``lora_te3_``; ``lora_A``/``lora_B`` files bake alpha in, so they have no ``.alpha``."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        match = _COMFY_KEY.match(key)
        if match is None or (match["root"] == "diffusion_model" and not match["module"].startswith(_BFL_ROOTS)):
            raise LoraFormatError(f"{file.name}: key '{key}' is not a ComfyUI Flux LoRA key "
                                  "(diffusion_model.<Flux module>.lora_A.weight / lora_B / lora_down / lora_up / alpha)")
        renamed[f"{_COMFY_ROOT[match['root']]}{match['module'].replace('.', '_')}.{_KOHYA_PART[match['part']]}"] = value
    return renamed


# sd-scripts' networks/lora_flux.py names the T5-XXL encoder (the Flux pipeline's text_encoder_2) "lora_te3" and adapts
# its T5Attention (q, k, v, o) and T5DenseGatedActDense (wi_0, wi_1, wo) Linears.
KOHYA_T5_PREFIX = "lora_te3_"
T5_COMPONENT = "text_encoder_2"
_T5_KEY = re.compile(r"^lora_te3_encoder_block_(\d+)_layer_(\d+)_(SelfAttention_[qkvo]|DenseReluDense_w(?:i_[01]|i|o))"
                     r"\.(lora_down\.weight|lora_up\.weight|alpha)$")


def from_kohya_t5(file: Path, tensors: Mapping[str, torch.Tensor]) -> tuple[Modules, dict[str, float]]:
    """``text_encoder_2.encoder.block.N.layer.M.<module>`` (A, B) and alphas from sd-scripts' ``lora_te3_`` keys."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _T5_KEY.match(key)
        if match is None:
            raise LoraFormatError(f"{file.name}: kohya T5 key '{key}' is not a T5 encoder module this reader knows")
        module = f"{T5_COMPONENT}.encoder.block.{match[1]}.layer.{match[2]}.{match[3].replace('_', '.', 1)}"
        parts.setdefault(module, {})[{"lora_down.weight": "A", "lora_up.weight": "B", "alpha": "alpha"}[match[4]]] = value
    return gather_modules(file, parts)


# For the message about a Flux file in no layout we read, after the layouts of diffusers' names.
BFL_LAYOUTS = ("BFL's names (kohya lora_unet_double_blocks_0_img_attn_qkv, ComfyUI diffusion_model.double_blocks.0.img_attn.qkv) "
               "and XLabs' (double_blocks.0.processor.qkv_lora1)")


def bfl_family() -> Family:
    """The registered family whose kohya files use BFL's module names (Flux.1)."""
    return next(f for f in FAMILIES.values() if f.kohya_unet_names == "bfl")
