"""The ``consistency:`` block of a story file (:class:`ConsistencySettings`): how the panels are kept alike.

The mechanisms themselves (shared attention, the reference) are in :mod:`lorastory.generate.consistency`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorastory.generate.checks import ValidText

Mode = Literal["none", "attention", "reference", "both"]
MODES: tuple[str, ...] = ("none", "attention", "reference", "both")
# Block names: up / mid / down, or a prefix of the UNet's attention layer names (up_blocks.0, mid_block, ...); a DiT's
# (resolved by its family): double / single, double_blocks.N, single_blocks.N or diffusers' names, N a block or N-M.
BLOCK_ALIASES = {"up": "up_blocks.", "mid": "mid_block.", "down": "down_blocks."}
_BLOCK_NAME = re.compile(r"^(up|mid|down|(up_blocks|down_blocks)\.\d+(\.[\w.]+)?|mid_block(\.[\w.]+)?)$")
_DIT_BLOCK_NAME = re.compile(r"^(double|single|(double_blocks|single_blocks|transformer_blocks|single_transformer_blocks)"
                             r"\.(\d+)(-(\d+))?)$")
REFERENCE_FILE = "reference.png"


class ConsistencySettings(BaseModel):
    """``consistency:`` in a story file: how the panels are kept alike (see the module docstring).

    Both mechanisms: ``mode``, ``strength`` (0..1). Shared attention: ``blocks``, ``sample_rate``,
    ``step_range`` (fractions of the steps). Reference: ``reference_image`` (a path) or
    ``reference_prompt`` (what to generate; default: the character and style), ``reference_scale``
    (the IP-Adapter scale at strength 1), and where the adapter is: ``ip_adapter`` (folder or hub
    id), ``ip_adapter_weight`` and ``image_encoder`` (paths inside it; Flux's default encoder is
    CLIP ViT-L's own repository unless the folder has ``image_encoder/``); each family has defaults
    (:data:`lorastory.models.ip_adapter.DEFAULT_IP_ADAPTERS`). Settings of the mechanism the mode
    does not use are kept but unused, so switching the mode back and forth loses nothing.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Mode = "none"
    strength: float = Field(1.0, ge=0, le=1)
    blocks: list[str] = Field(default_factory=lambda: ["up"])
    sample_rate: float = Field(0.5, ge=0, le=1)
    step_range: tuple[float, float] = (0.0, 0.5)
    reference_image: ValidText | None = None
    reference_prompt: ValidText | None = None
    reference_scale: float = Field(0.5, ge=0, le=2)
    reference_method: Literal["ip_adapter", "in_context"] = "ip_adapter"  # in_context: FLUX.1 Kontext / Qwen-Image-Edit reads it
    ip_adapter: ValidText | None = None
    ip_adapter_weight: ValidText | None = None
    image_encoder: ValidText | None = None

    @field_validator("blocks")
    @classmethod
    def _known_blocks(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one block (up, mid, down, or e.g. up_blocks.0; on a DiT double, single)")
        for name in value:
            dit = _DIT_BLOCK_NAME.match(name)
            if not dit and not _BLOCK_NAME.match(name):
                raise ValueError(f"'{name}' is not a UNet block (up, mid, down, or a name like up_blocks.0 or mid_block) "
                                 "nor a DiT block (double, single, or a name like double_blocks.3 or single_blocks.0-9)")
            if dit and dit.group(5) is not None and int(dit.group(5)) < int(dit.group(3)):
                raise ValueError(f"'{name}': a range of blocks goes from the lower number to the higher")
        kinds = {bool(_DIT_BLOCK_NAME.match(name)) for name in value}
        if len(kinds) > 1:
            raise ValueError(f"{value} mixes UNet and DiT blocks; name the blocks of one model")
        return value

    @field_validator("step_range")
    @classmethod
    def _fractions(cls, value: tuple[float, float]) -> tuple[float, float]:
        start, end = value
        if not 0 <= start < end <= 1:
            raise ValueError(f"[{start}, {end}] is not a range of step fractions; use [start, end] with 0 <= start < end <= 1")
        return value

    @model_validator(mode="after")
    def _one_reference_source(self) -> ConsistencySettings:
        if self.reference_image is not None and self.reference_prompt is not None:
            raise ValueError("set reference_image or reference_prompt, not both")
        return self

    @property
    def uses_attention(self) -> bool:
        return self.mode in ("attention", "both")

    @property
    def uses_reference(self) -> bool:
        return self.mode in ("reference", "both")

    @property
    def uses_ip_adapter(self) -> bool:
        return self.uses_reference and self.reference_method == "ip_adapter"

    @property
    def ip_adapter_scale(self) -> float:
        """The IP-Adapter scale the reference is applied with."""
        return self.strength * self.reference_scale

    def blocks_label(self, dit: bool = False) -> str:
        """The blocks as the PNG parameters name them: on a DiT, a UNet's names (the default ``up``) mean every
        block (the family's default), so they read ``all`` there."""
        if dit and not any(_DIT_BLOCK_NAME.match(name) for name in self.blocks):
            return "all"
        return "+".join(self.blocks)

    def describe(self, reference_hash: str | None = None, dit: bool = False) -> str:
        """One line for the PNG parameters, e.g. ``attention (strength 1, sample rate 0.5, steps 0-0.5, blocks up)``;
        ``dit``: the story renders with a transformer (:meth:`blocks_label`)."""
        parts = [f"strength {self.strength:g}"]
        if self.uses_attention:
            start, end = self.step_range
            parts += [f"sample rate {self.sample_rate:g}", f"steps {start:g}-{end:g}", f"blocks {self.blocks_label(dit)}"]
        if self.uses_reference:
            parts.append(f"reference scale {self.ip_adapter_scale:g}" if self.uses_ip_adapter else "reference in context")
            if reference_hash:
                parts.append(f"reference {reference_hash}")
        return f"{self.mode} ({', '.join(parts)})"
