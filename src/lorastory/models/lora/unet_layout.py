"""A UNet's block layout, read from its config: what the kohya (SGM) and DiffSynth block numbers are counted over."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorastory.models.lora.keys import META_PREFIX
from lorastory.models.registry import FAMILIES

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


@dataclass(frozen=True)
class UnetLayout:
    """Resnet layers per down block and the block types, from a diffusers UNet config (object or dict)."""

    down_layers: tuple[int, ...]
    down_types: tuple[str, ...]
    up_types: tuple[str, ...]

    @classmethod
    def of(cls, config: Any) -> UnetLayout:
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


# The standard UNet layouts a kohya file without a recorded config is read with (Family.kohya_unet_layout).
_STANDARD_UNETS = {"sdxl": _SDXL_UNET, "sd15": _SD15_UNET}


def default_unet_config(file_meta: Mapping[str, str]) -> dict[str, Any]:
    """The UNet layout a file was saved for: its family's standard one, with the layers it recorded."""
    family = FAMILIES.get(file_meta.get(META_PREFIX + "family") or "")
    base = dict(_STANDARD_UNETS[family.kohya_unet_layout if family is not None else "sdxl"])
    recorded = file_meta.get(META_PREFIX + "unet_layers_per_block")
    if recorded:
        base["layers_per_block"] = json.loads(recorded)
    return base
