"""The LoRA error tree: every failure to inject, save, read or apply a LoRA is a :class:`LoraError`."""

from __future__ import annotations

from lorastory.errors import LorastoryError


class LoraError(LorastoryError):
    """A LoRA cannot be injected, saved, read or applied."""


class LoraFormatError(LoraError):
    """A LoRA file is unreadable or in a layout we do not know."""


class LoraMismatchError(LoraError):
    """A LoRA does not fit the pipeline (other family, other module shapes)."""
