"""The project's exception types.

Every error a user can cause is a :class:`LorastoryError`; its message is one
line that says what went wrong and what to do. The CLI prints it and exits 1;
so it does for a GPU out of memory (:func:`gpu_memory_message`: what lowers the command's memory).
Anything else is a bug and asks for a report.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type when empty), shortened to ``limit``."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0] or type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


# What lowers a command's GPU memory, as (flag, advice): advice whose flag the user already gave is left out,
# except a smaller size, unless it is already 1.
GPU_MEMORY_HINTS: dict[str, tuple[tuple[str, str], ...]] = {
    "generate": (("--offload", "--offload"), ("--base-dtype", "--base-dtype fp8-weights"),
                 ("--batch-size", "a smaller --batch-size")),
    "train": (("--base-dtype", "--base-dtype fp8-weights"), ("--gradient-checkpointing", "--gradient-checkpointing"),
              ("--batch-size", "a smaller --batch-size"), ("--resolution", "a smaller --resolution")),
}
_SIZES = {name: re.compile(pattern) for name, pattern in (
    ("asked", r"Tried to allocate ([\d.]+ [KMGT]iB)"), ("used", r"this process has ([\d.]+ [KMGT]iB) memory in use"),
    ("allowed", r"([\d.]+ [KMGT]iB) allowed"), ("total", r"total capacity of ([\d.]+ [KMGT]iB)"))}


def is_out_of_gpu_memory(err: BaseException) -> bool:
    """True for torch's ``OutOfMemoryError`` (a GPU's allocator ran out), without importing torch."""
    torch = sys.modules.get("torch")
    kind = getattr(torch, "OutOfMemoryError", None)
    return isinstance(kind, type) and isinstance(err, kind)


def gpu_memory_message(err: BaseException, command: str | None = None, given: Mapping[str, str] | None = None) -> str:
    """One line for a GPU out of memory: how much was asked for and in use (from torch's message), and what
    lowers the memory of ``command`` (``generate``, ``train``; other commands get general advice), leaving out
    what the options in ``given`` (flag -> value as typed) already do."""
    size = {name: match.group(1).replace(".00 ", " ") for name, pattern in _SIZES.items()
            if (match := pattern.search(str(err)))}
    numbers = [f"tried to allocate {size['asked']}"] if "asked" in size else []
    if "used" in size:
        of = size.get("allowed") or size.get("total")
        numbers.append(f"with {size['used']}" + (f" of {of}" if of else "") + " in use")
    detail = f" ({' '.join(numbers)})" if numbers else ""
    hints = [advice for flag, advice in GPU_MEMORY_HINTS.get(command or "", ()) if _still_helps(flag, advice, given or {})]
    if not hints:
        return f"out of GPU memory{detail}; try smaller batches or pictures, or close other programs using the GPU"
    advice = ", ".join(hints[:-1]) + " or " + hints[-1] if len(hints) > 1 else hints[0]
    return f"out of GPU memory{detail}; try {advice}"


def _still_helps(flag: str, advice: str, given: Mapping[str, str]) -> bool:
    value = given.get(flag)
    if value is None or value == "default":
        return True
    return advice.startswith("a smaller") and value != "1"


class LorastoryError(Exception):
    """Base class: a problem the user can fix; ``str(err)`` is the whole message."""


class ConfigError(LorastoryError):
    """A config or recipe file is missing, unreadable or invalid."""


class RecipeError(ConfigError):
    """A Data-Juicer-format recipe names an unknown op or a bad parameter."""


class DataError(LorastoryError):
    """Input data (a dataset file, an image, a caption) cannot be used."""


class SourceError(DataError):
    """An import source cannot be found or read."""


class BadImageError(DataError):
    """One image cannot be used; the message is the reason shown in reports."""


class OutputError(LorastoryError):
    """An output cannot be written where asked, or would destroy one of the command's inputs."""


class TrainingError(LorastoryError):
    """Training cannot go on (diverged loss, unusable settings, processes that disagree)."""


class Stopped(LorastoryError):
    """Work was stopped on request (a ``stop`` event was set); the message says what was kept."""


class ScorerModelError(LorastoryError):
    """A scoring model (CLIP, aesthetic predictor) cannot be found, read or used."""


class ClipModelError(ScorerModelError):
    """A CLIP model cannot be found or loaded."""


class AestheticModelError(ScorerModelError):
    """Aesthetic-predictor weights cannot be found, read or matched to a CLIP model."""


class MissingExtraError(LorastoryError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'lorastory[{extra}]'"
        )


class CaptionerError(LorastoryError):
    """A captioning or tagging model cannot be found, loaded or used."""
