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

from pydantic import ConfigDict, Field, field_validator, model_validator

from lorastory.config import YamlModel
from lorastory.models.registry import FAMILIES

# Limits shared with ``lorastory.models.lora.LoraSpec`` (tests check they agree), so a bad rank
# or target list is refused here, before any model loads.
MAX_RANK = 1024
# numpy's and torch's seeding take 0 .. 2**32 - 1; a seed outside is refused rather than wrapped.
MAX_SEED = 2**32 - 1
MAX_RESOLUTION = 8192

Precision = Literal["auto", "no", "fp16", "bf16"]
# How the UNet is compiled on a GPU: "blocks" compiles each transformer block; "cudagraphs" also
# replays each compiled block as a CUDA graph, which takes the CPU out of the step; "auto" picks
# (see ``lorastory.train.speed.resolve_compile``).
CompileMode = Literal["auto", "off", "blocks", "cudagraphs"]


class TrainConfig(YamlModel):
    """Everything a training run depends on; the run folder gets a copy as ``config.yaml``.

    Every value is checked here, before anything loads: numbers must be finite (no nan/inf) and
    in range, so a bad setting is one :class:`~lorastory.errors.ConfigError` naming the field.
    """

    model_config = ConfigDict(**YamlModel.model_config, allow_inf_nan=False)

    model: str = Field(min_length=1)
    data: str = Field(min_length=1)
    out: str = Field(min_length=1)
    family: str | None = None

    rank: int = Field(16, ge=1, le=MAX_RANK)
    alpha: float = Field(4.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1)
    train_text_encoder: bool = False

    resolution: int = Field(1024, ge=64, le=MAX_RESOLUTION)
    center_crop: bool = True
    random_flip: bool = False
    buckets: bool = False
    bucket_step: int = Field(64, ge=8, le=MAX_RESOLUTION)

    batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    weight_decay: float = Field(1e-2, ge=0)
    snr_gamma: float | None = Field(None, gt=0)
    noise_offset: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0, le=MAX_SEED)

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
    validation_cfg: float = Field(4.0, ge=0)
    # The style phrase (or trigger word) the captions carry: checkpoint selection scores the validation
    # pictures' content with the prompts without it, and their style with it (lorastory.eval.checkpoints).
    validation_style: str | None = None
    # At the end of training, score every checkpoint's LoRA on the validation prompts and write
    # OUT/best.safetensors (run by `lorastory train` and the web app; needs validation_prompts).
    select_best: bool = False
    eval_clip: str | None = None  # the CLIP that scores them (default: openai/clip-vit-base-patch32)

    cache_dir: str | None = None
    save_formats: list[Literal["diffusers", "kohya"]] = Field(default_factory=lambda: ["diffusers"])

    @field_validator("model", "data", "out", "cache_dir")
    @classmethod
    def _usable_path(cls, value: str | None) -> str | None:
        if value is not None and ("\x00" in value or not value.strip()):
            raise ValueError("must be a path without NUL bytes")
        return value

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str | None) -> str | None:
        if value is not None and value not in FAMILIES:
            raise ValueError(f"unknown model family '{value}'; choose one of {', '.join(FAMILIES)} (or leave it out)")
        return value

    @field_validator("target_modules")
    @classmethod
    def _no_blank_targets(cls, value: list[str]) -> list[str]:
        if any(not t.strip() for t in value):
            raise ValueError("module names must not be empty")
        return value

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
        if self.select_best and not self.validation_prompts:
            raise ValueError("select_best needs validation_prompts: the checkpoints are scored on them")
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
                "validation_steps", "validation_cfg", "cache_dir", "save_formats", "fast", "compile", "validation_style",
               "select_best", "eval_clip"}
