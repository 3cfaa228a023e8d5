"""DiffSynth-Studio's layouts: peft keys without a component prefix, or its own ``blocks.N`` UNet.

DiffSynth lays a UNet out as one flat list of blocks; :func:`diffsynth_block_map` rebuilds the
list from a diffusers UNet config, so ``blocks.7.transformer_blocks.0.attn1.to_q`` finds its
diffusers module. These files record no alpha.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.models.lora.diffusers_format import from_prefixed
from lorastory.models.lora.errors import LoraFormatError
from lorastory.models.lora.keys import PEFT_KEY, Modules
from lorastory.models.lora.unet_layout import UnetLayout

if TYPE_CHECKING:
    import torch

# DiffSynth-Studio's own UNet: top-level renames (transformer-block renames are in _diffsynth_module).
_DIFFSYNTH_TOP = {
    "text_intermediate_proj": "encoder_hid_proj",
    "time_embedding.0": "time_embedding.linear_1", "time_embedding.2": "time_embedding.linear_2",
    "add_time_embedding.0": "add_embedding.linear_1", "add_time_embedding.2": "add_embedding.linear_2",
}
# First key segments of DiffSynth-Studio's own UNet modules outside its ``blocks`` list.
DIFFSYNTH_ROOTS = {"conv_in", "conv_out", "time_embedding", "add_time_embedding", "text_intermediate_proj"}


def is_diffsynth_blocks(roots: set[str]) -> bool:
    """Whether unprefixed keys with these first segments are DiffSynth's own ``blocks.N`` layout."""
    return "blocks" in roots and roots <= {"blocks", *DIFFSYNTH_ROOTS}


def diffsynth_block_map(unet_config: Any) -> dict[int, str]:
    """DiffSynth-Studio's flat ``blocks.N`` index → diffusers module prefix, derived from the UNet config.

    DiffSynth lays a UNet out as resnet, attention and push blocks per down layer, a
    downsampler and push per down block, the mid block, then pop, resnet, attention
    per up layer and an upsampler per up block.
    """
    layout = UnetLayout.of(unet_config)
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


def from_diffsynth_blocks(file: Path, tensors: Mapping[str, torch.Tensor], config: Any) -> tuple[Modules, dict[str, float]]:
    """DiffSynth-Studio's own UNet layout (``blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight``)."""
    blocks = diffsynth_block_map(config)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        match = PEFT_KEY.match(key)
        if match is None:
            raise LoraFormatError(f"{file.name}: unexpected key '{key}' in a DiffSynth-Studio LoRA")
        renamed[f"unet.{_diffsynth_module(file, match['module'], blocks)}.lora_{match['ab']}.weight"] = value
    return from_prefixed(file, renamed, {})


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
