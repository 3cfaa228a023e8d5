"""The LoRA error tree: every failure to inject, save, read or apply a LoRA is a :class:`LoraError`."""

from __future__ import annotations

from lorastory.errors import LorastoryError


class LoraError(LorastoryError):
    """A LoRA cannot be injected, saved, read or applied."""


class LoraFormatError(LoraError):
    """A LoRA file is unreadable or in a layout we do not know."""


class LoraMismatchError(LoraError):
    """A LoRA does not fit the pipeline (other family, other module shapes)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to ``limit`` characters, for one-line errors."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."
