"""LyCORIS and DoRA adapters (LoHa, LoKr, DoRA): recognised by their keys and refused with a clear message.

They are not low-rank A/B pairs, so the canonical ``lora_A``/``lora_B`` state cannot hold them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lorastory.models.lora.errors import LoraFormatError

_MARKERS = ("hada_", "lokr_", "dora_scale", "lora_magnitude_vector")


def refuse_lycoris(file: Path, keys: Iterable[str]) -> None:
    """Raise :class:`LoraFormatError` if any key belongs to a LyCORIS or DoRA adapter."""
    if any(marker in k for k in keys for marker in _MARKERS):
        raise LoraFormatError(f"{file.name}: LyCORIS/DoRA adapters (LoHa, LoKr, DoRA) are not supported; use a plain LoRA")
