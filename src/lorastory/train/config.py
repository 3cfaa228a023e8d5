"""The training configuration: one typed model, YAML in, YAML out.

Defaults are the reference workflow's (rank 16, alpha 4, 1 epoch, 1024²,
center crop, gradient checkpointing, 16-bit mixed precision on a GPU,
to_q/to_k/to_v/to_out.0). The LoRA's effective strength is ``alpha / rank``:
rank 16 with alpha 4 scales updates by 0.25, so raising the rank without
raising alpha makes each step's effect on the weights smaller.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lorastory.config import YamlModel

Precision = Literal["auto", "no", "fp16", "bf16"]
# How the UNet is compiled on a GPU: "blocks" compiles each transformer block; "cudagraphs" also
# replays each compiled block as a CUDA graph, which takes the CPU out of the step; "auto" picks
# (see ``lorastory.train.speed.resolve_compile``).
CompileMode = Literal["auto", "off", "blocks", "cudagraphs"]


class TrainConfig(YamlModel):
    """Everything a training run depends on; the run folder gets a copy as ``config.yaml``."""

    model: str
    data: str
    out: str
    family: str | None = None

    rank: int = Field(16, ge=1)
    alpha: float = Field(4.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    train_text_encoder: bool = False

    resolution: int = Field(1024, ge=64)
    center_crop: bool = True
    random_flip: bool = False
    buckets: bool = False
    bucket_step: int = Field(64, ge=8)

    batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    weight_decay: float = 1e-2
    snr_gamma: float | None = Field(None, gt=0)
    noise_offset: float = Field(0.0, ge=0)
    seed: int = 0

    precision: Precision = "auto"
    gradient_checkpointing: bool = True
    # Speed only (not in the fingerprint): with bf16 on CUDA, compute in bf16 with fp32 LoRA weights
    # instead of autocast, self-attention q/k/v with their LoRA in two matmuls, and ``compile``.
    fast: bool = True
    compile: CompileMode = "auto"

    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int = Field(3, ge=1)
    resume: bool = False

    validation_prompts: list[str] = Field(default_factory=list)
    validation_every: int = Field(0, ge=0)
    validation_steps: int = Field(20, ge=1)
    validation_cfg: float = 4.0

    cache_dir: str | None = None
    save_formats: list[Literal["diffusers", "kohya"]] = Field(default_factory=lambda: ["diffusers"])

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_from_bool(cls, value: object) -> object:
        """Earlier config files wrote ``compile: null/true/false``; ``on`` reads as ``blocks``."""
        if value is None or isinstance(value, bool) or value == "on":
            return {None: "auto", True: "blocks", False: "off", "on": "blocks"}[value]
        return value

    @model_validator(mode="after")
    def _resolution_multiple_of_bucket_step(self) -> TrainConfig:
        if self.resolution % 8:
            raise ValueError(f"resolution {self.resolution} must be a multiple of 8")
        if self.compile == "cudagraphs" and self.gradient_checkpointing:
            raise ValueError("compile: cudagraphs does not combine with gradient_checkpointing (recomputed blocks "
                             "would be recorded twice); use compile: blocks or gradient_checkpointing: false")
        return self

    def fingerprint(self) -> str:
        """A short hash of everything that changes the trained weights (not paths or logging)."""
        return self._hash(_NOT_WEIGHTS)

    def resume_fingerprint(self) -> str:
        """The fingerprint a checkpoint must match to be resumed: as :meth:`fingerprint`, less the
        batch size per process, which a resume on another number of GPUs may change (the position
        is kept in samples; see ``lorastory.train.order``)."""
        return self._hash(_NOT_WEIGHTS | {"batch_size"})

    def _hash(self, ignored: set[str]) -> str:
        data = self.model_dump(mode="json", exclude=ignored)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# Settings that do not change the trained weights.
_NOT_WEIGHTS = {"out", "resume", "checkpoint_every", "keep_checkpoints", "validation_prompts", "validation_every",
                "validation_steps", "validation_cfg", "cache_dir", "save_formats", "fast", "compile"}
