"""The shape of a LoRA: :class:`LoraSpec` (what to inject and save) and :class:`LoraInfo` (what a file holds)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ConfigDict, Field, field_validator

from lorastory.config import YamlModel
from lorastory.models import registry
from lorastory.models.registry import FAMILIES, Family

CLIP_TE_TARGETS = list(registry.CLIP_TE_TARGETS)
# The largest rank accepted (peft takes more, but past this a LoRA is a full fine-tune in disguise).
MAX_RANK = 1024
CHATGLM_TE_TARGETS = list(registry.CHATGLM_TE_TARGETS)


class LoraSpec(YamlModel):
    """The shape of a LoRA: rank, alpha, where it goes. Defaults match the reference Kolors recipe."""

    model_config = ConfigDict(**YamlModel.model_config, allow_inf_nan=False)  # alpha nan or inf: refused

    rank: int = Field(16, ge=1, le=MAX_RANK)
    alpha: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1)
    train_text_encoder: bool = False
    text_encoder_targets: list[str] | None = None  # None: the family's default (CLIP or ChatGLM projections)

    @field_validator("target_modules", "text_encoder_targets")
    @classmethod
    def _no_blank_targets(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not t.strip() for t in value):
            raise ValueError("module names must not be empty")
        return value

    def text_encoder_targets_for(self, family: str | Family) -> list[str]:
        """The text-encoder modules to adapt for ``family`` (its default; CLIP's for an unknown name)."""
        if self.text_encoder_targets is not None:
            return list(self.text_encoder_targets)
        known = family if isinstance(family, Family) else FAMILIES.get(family)
        return list(known.text_encoder_targets if known is not None else CLIP_TE_TARGETS)

    def config_hash(self, family: str) -> str:
        """A short stable hash of this spec and the family, recorded in saved files."""
        payload = json.dumps({"family": family, **self.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class LoraInfo:
    """What :func:`~lorastory.models.lora.load_lora_state` found in a file."""

    path: Path
    format: str  # diffusers | kohya | peft | diffsynth | diffsynth-blocks
    family: str | None  # from our metadata; None when the file does not say
    rank: int  # the most common rank
    alpha: float | None  # the most common alpha; None when the file records none
    components: tuple[str, ...]
    target_modules: tuple[str, ...]  # leaf names, e.g. ("to_k", "to_out.0", "to_q", "to_v")
    num_modules: int
    by_lorastory: bool
    metadata: dict[str, str] = field(default_factory=dict)
