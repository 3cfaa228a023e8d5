"""The shape of a LoRA: :class:`LoraSpec` (what to inject and save) and :class:`LoraInfo` (what a file holds)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from lorastory.config import YamlModel
from lorastory.models import registry
from lorastory.models.registry import FAMILIES, Family

CLIP_TE_TARGETS = list(registry.CLIP_TE_TARGETS)
# The largest rank accepted (peft takes more, but past this a LoRA is a full fine-tune in disguise).
MAX_RANK = 1024
CHATGLM_TE_TARGETS = list(registry.CHATGLM_TE_TARGETS)


# The UNet attention projections a LoRA adapts by default (a family may name its own: Family.lora_targets).
UNET_DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# The adapter kinds: LoRA; LoCon (LoRA on the ResNet convolutions too); LyCORIS LoHa and LoKr; DoRA.
Network = Literal["lora", "locon", "loha", "lokr", "dora"]
NETWORKS: tuple[str, ...] = ("lora", "locon", "loha", "lokr", "dora")
# The ResNet convolutions a LoCon (and a LoHa/LoKr with conv_rank) adapts besides the attention layers.
CONV_TARGETS = ("conv1", "conv2", "conv_shortcut")


class LoraSpec(YamlModel):
    """The shape of a LoRA: rank, alpha, where it goes. Defaults match the reference Kolors recipe.

    ``network`` picks the adapter: ``lora``; ``locon`` (LoRA on the ResNet convolutions too, at
    ``conv_rank``/``conv_alpha``); ``loha`` and ``lokr`` (LyCORIS' Hadamard and Kronecker products;
    convolutions too when ``conv_rank`` is set); ``dora`` (weight-decomposed LoRA). ``lokr_factor``
    splits each dimension for LoKr (-1: as square as possible) and ``lokr_decompose_both`` makes
    both Kronecker factors low-rank.
    """

    model_config = ConfigDict(**YamlModel.model_config, allow_inf_nan=False)  # alpha nan or inf: refused

    rank: int = Field(16, ge=1, le=MAX_RANK)
    alpha: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(UNET_DEFAULT_TARGETS), min_length=1)
    train_text_encoder: bool = False
    text_encoder_targets: list[str] | None = None  # None: the family's default (CLIP or ChatGLM projections)
    network: Network = "lora"
    conv_rank: int | None = Field(None, ge=1, le=1024)  # None: rank (locon); no convolutions (loha, lokr)
    conv_alpha: float | None = Field(None, gt=0)  # None: alpha
    lokr_factor: int = Field(-1, ge=-1)
    lokr_decompose_both: bool = False

    @field_validator("target_modules", "text_encoder_targets")
    @classmethod
    def _no_blank_targets(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not t.strip() for t in value):
            raise ValueError("module names must not be empty")
        return value

    @model_validator(mode="after")
    def _variant_settings_fit(self) -> LoraSpec:
        problem = variant_settings_problem(self.network, self.conv_rank, self.conv_alpha, self.lokr_factor,
                                           self.lokr_decompose_both)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def adapts_convolutions(self) -> bool:
        """Whether the ResNet convolutions get an adapter too (LoCon always; LoHa/LoKr with ``conv_rank``)."""
        return self.network == "locon" or (self.network in ("loha", "lokr") and self.conv_rank is not None)

    def for_family(self, family: Family) -> LoraSpec:
        """This spec with ``family``'s default denoiser targets when it names the UNet default (a DiT's
        attention and MLP layers are named otherwise); any other ``target_modules`` is kept as given."""
        if family.lora_targets is None or self.target_modules != UNET_DEFAULT_TARGETS:
            return self
        return self.model_copy(update={"target_modules": list(family.lora_targets)})

    def unet_targets(self) -> list[str]:
        """The UNet module names to adapt: ``target_modules``, plus the ResNet convolutions for a LoCon."""
        extra = [t for t in CONV_TARGETS if t not in self.target_modules] if self.adapts_convolutions else []
        return [*self.target_modules, *extra]

    def text_encoder_targets_for(self, family: str | Family) -> list[str]:
        """The text-encoder modules to adapt for ``family`` (its default; CLIP's for an unknown name)."""
        if self.text_encoder_targets is not None:
            return list(self.text_encoder_targets)
        known = family if isinstance(family, Family) else FAMILIES.get(family)
        return list(known.text_encoder_targets if known is not None else CLIP_TE_TARGETS)

    def config_hash(self, family: str) -> str:
        """A short stable hash of this spec and the family, recorded in saved files."""
        # The variant settings join the hash only when set, so plain LoRAs keep the hash they always had.
        fields = self.model_dump(mode="json", exclude={k for k in _VARIANT_DEFAULTS if getattr(self, k) == _VARIANT_DEFAULTS[k]})
        payload = json.dumps({"family": family, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def variant_settings_problem(
    network: str, conv_rank: int | None, conv_alpha: float | None, lokr_factor: int, lokr_decompose_both: bool
) -> str | None:
    """Why these variant settings do not go together (None: they do); shared with the training config."""
    if lokr_factor in (0, 1):
        return "lokr_factor must be -1 (automatic) or 2 or more"
    if network != "lokr" and (lokr_factor != -1 or lokr_decompose_both):
        return f"lokr_factor and lokr_decompose_both apply to network lokr, not {network}"
    if network in ("lora", "dora") and (conv_rank is not None or conv_alpha is not None):
        return f"conv_rank/conv_alpha adapt convolutions: use network locon, loha or lokr, not {network}"
    return None


_VARIANT_DEFAULTS = {"network": "lora", "conv_rank": None, "conv_alpha": None, "lokr_factor": -1, "lokr_decompose_both": False}


@dataclass(frozen=True)
class LoraInfo:
    """What :func:`~lorastory.models.lora.load_lora_state` found in a file."""

    path: Path
    format: str  # diffusers | kohya | peft | diffsynth | diffsynth-blocks | lycoris | xlabs | comfyui
    family: str | None  # from our metadata; None when the file does not say
    rank: int  # the most common rank
    alpha: float | None  # the most common alpha; None when the file records none
    components: tuple[str, ...]
    target_modules: tuple[str, ...]  # leaf names, e.g. ("to_k", "to_out.0", "to_q", "to_v")
    num_modules: int
    by_lorastory: bool
    metadata: dict[str, str] = field(default_factory=dict)
    network: str = "lora"  # lora (locon files are lora with convolutions) | loha | lokr | dora
    # LoHa/LoKr/DoRA files: rank and alpha per "component.module" and peft settings (LoKr's factor)
    adapter: dict[str, Any] = field(default_factory=dict)
