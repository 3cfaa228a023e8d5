"""The canonical key grammar every LoRA layout is converted to and from.

Canonical keys are peft's: ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``, prefixed by
the pipeline component (``unet.`` or ``transformer.``, ``text_encoder.``, ``text_encoder_2.``) when a file holds several.
Also the metadata names lorastory writes into its files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from lorastory.models.lora.errors import LoraFormatError

if TYPE_CHECKING:
    import torch

META_PREFIX = "lorastory."
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
DENOISERS = ("unet", "transformer")  # the components that are a family's denoiser (Family.denoiser)
PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")

# {module: (lora_A, lora_B)}: what every reader produces and every writer consumes.
Modules = dict[str, tuple["torch.Tensor", "torch.Tensor"]]


def modules_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (lora_A, lora_B)}`` from a peft-keyed state dict; any other key is an error."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = PEFT_KEY.match(key)
        if match is None:
            raise LoraFormatError(
                f"unexpected LoRA key '{key}' (only lora_A/lora_B weights are supported; no DoRA, no LoRA bias)"
            )
        parts.setdefault(match["module"], {})[match["ab"]] = value
    missing = [m for m, ab in parts.items() if set(ab) != {"A", "B"}]
    if missing:
        raise LoraFormatError(f"LoRA module '{missing[0]}' has only one of lora_A/lora_B; the file is incomplete")
    return {module: (ab["A"], ab["B"]) for module, ab in parts.items()}


def strip_adapter_name(key: str) -> str:
    """``m.lora_A.default.weight`` → ``m.lora_A.weight``: peft's in-memory keys carry the adapter name."""
    match = PEFT_KEY.match(key)
    if match and match["adapter"]:
        return f"{match['module']}.lora_{match['ab']}.weight"
    return key


def canonical_text_key(key: str) -> str:
    """CLIP keys/modules always carry ``text_model.``.

    transformers 5 flattens CLIPTextModel; older stacks, kohya and ComfyUI expect the prefix.
    ChatGLM (Kolors) names have no ``self_attn``/``mlp.fc`` and stay as they are.
    """
    clip = ".self_attn." in key or ".mlp.fc" in key
    if clip and key.startswith(("encoder.layers.", "embeddings.", "final_layer_norm.")):
        return "text_model." + key
    return key
