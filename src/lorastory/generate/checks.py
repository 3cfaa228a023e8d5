"""Limits on what the generate stage accepts, checked where a value enters (before any model loads).

* Seeds: ``0 <= seed <= MAX_SEED`` (2**64 - 1), the range ``torch.Generator.manual_seed``
  takes without wrapping; the same range for story files and ``regenerate --seed``.
* CFG: finite, ``0 <= cfg <= MAX_CFG`` (100). LoRA scale: finite, ``|scale| <= MAX_LORA_SCALE`` (100);
  useful values are about 0-2, beyond 100 the weights overflow to black or NaN pictures.
* Panel size: multiples of 8, at most ``MAX_PANEL_SIDE`` (8192) a side and ``MAX_PANEL_PIXELS``
  (4096x4096) in all; and, on the device that renders, a panel must fit in the free memory at
  ``PANEL_BYTES_PER_MEGAPIXEL`` (the measured GPU figure; twice that in float32 on the CPU).
* Text: every string must be valid Unicode (no lone surrogates), or it cannot be written to
  PNG metadata, the manifest or story.yaml.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator

from lorastory.errors import ConfigError
from lorastory.fileio import is_valid_text
from lorastory.generate.speed import PANEL_BYTES_PER_MEGAPIXEL
from lorastory.memory import host_available_memory

MAX_SEED = 2**64 - 1
MAX_CFG = 100.0
MAX_LORA_SCALE = 100.0
MAX_PANEL_SIDE = 8192
MAX_PANEL_PIXELS = 4096 * 4096


def check_text(value: Any) -> Any:
    """Refuse a string with lone surrogates (a pydantic validator: raises ``ValueError``)."""
    if isinstance(value, str) and not is_valid_text(value):
        raise ValueError("contains text that is not valid Unicode (a lone surrogate such as \\ud800); remove it")
    return value


ValidText = Annotated[str, AfterValidator(check_text)]


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an int in ``0..MAX_SEED``, or a one-line :class:`ConfigError`."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{what} {seed!r} is not a whole number; use 0 to {MAX_SEED}")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} {seed} is out of range; use 0 to {MAX_SEED} (2**64 - 1)")
    return seed


def check_lora_scale(scale: Any, what: str = "LoRA scale") -> float:
    """``scale`` as a finite float with ``|scale| <= MAX_LORA_SCALE``, or a one-line :class:`ConfigError`."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError(f"{what} {scale!r} is not a number; use e.g. 0.8")
    value = float(scale)
    if not math.isfinite(value) or abs(value) > MAX_LORA_SCALE:
        raise ConfigError(f"{what} {scale} is out of range; use a finite number from -{MAX_LORA_SCALE:g} to "
                          f"{MAX_LORA_SCALE:g} (usually 0 to 1.5)")
    return value


def available_memory(device: Any) -> int | None:
    """Free bytes on ``device`` (CUDA: free GPU memory; CPU: the kernel's MemAvailable), ``None`` if unknown."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    return host_available_memory()


def panel_bytes(width: int, height: int, device: Any) -> float:
    """Memory one panel needs while it renders: the measured bf16 GPU figure, doubled for float32 on the CPU."""
    per_megapixel = PANEL_BYTES_PER_MEGAPIXEL * (1 if getattr(device, "type", str(device)) == "cuda" else 2)
    return per_megapixel * width * height / 2**20


def check_panel_memory(width: int, height: int, device: Any, free: int | None = None) -> None:
    """Refuse a panel size that cannot render in the memory free on ``device`` (checked before the model loads)."""
    free = available_memory(device) if free is None else free
    if free is None:
        return
    need = panel_bytes(width, height, device)
    if need > free:
        most = int(free / panel_bytes(1, 1, device))
        side = int(math.sqrt(most)) // 8 * 8
        raise ConfigError(
            f"a {width}x{height} panel needs about {need / 1e9:.1f} GB on {device} while it renders "
            f"({panel_bytes(1024, 1024, device) / 1e9:.1f} GB per megapixel), more than the {free / 1e9:.1f} GB free; "
            f"use at most {most:,} pixels per panel (e.g. {side}x{side})"
        )
