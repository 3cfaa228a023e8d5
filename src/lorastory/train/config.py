"""The training configuration: one typed model, YAML in, YAML out.

Defaults are the reference workflow's (rank 16, alpha 4, 1 epoch, 1024²,
center crop, gradient checkpointing, 16-bit mixed precision on a GPU,
to_q/to_k/to_v/to_out.0). The LoRA's effective strength is ``alpha / rank``:
rank 16 with alpha 4 scales updates by 0.25, so raising the rank without
raising alpha makes each step's effect on the weights smaller.

The LoRA's shape is :class:`~lorastory.models.lora.LoraSpec`, nested as ``lora:``; each
optimizer's own settings are nested too (``prodigy:``, ``adafactor:``). Flat keys are read as
well (``rank: 8``, ``lora_dropout: 0.1``, ``prodigy_d_coef: 2``; :data:`FLAT_KEYS`), which is
what config files written before the nesting hold and what the ``train`` flags are named; the
config is written back nested.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from lorastory.config import YamlModel
from lorastory.models.fp8 import BaseDtype
from lorastory.models.lora.spec import MAX_RANK, LoraSpec
from lorastory.models.registry import FAMILIES
from lorastory.train.captions import CaptionSettings
from lorastory.train.datasets import MAX_REPEATS, Dataset, DatasetConfig
from lorastory.train.optimizers import AdafactorSettings, OptimizerName, ProdigySettings, optimizer_problem

__all__ = ["FLAT_KEYS", "MAX_RANK", "MAX_SEED", "TrainConfig", "nest_flat_keys", "with_overrides"]

# numpy's and torch's seeding take 0 .. 2**32 - 1; a seed outside is refused rather than wrapped.
MAX_SEED = 2**32 - 1
MAX_RESOLUTION = 8192

Precision = Literal["auto", "no", "fp16", "bf16"]
# How the UNet is compiled on a GPU: "blocks" compiles each transformer block; "cudagraphs" also
# replays each compiled block as a CUDA graph, which takes the CPU out of the step; "auto" picks
# (see ``lorastory.train.speed.compile_choice``).
CompileMode = Literal["auto", "off", "blocks", "cudagraphs"]


class TrainConfig(YamlModel):
    """Everything a training run depends on; the run folder gets a copy as ``config.yaml``.

    Every value is checked here, before anything loads: numbers must be finite (no nan/inf) and
    in range, so a bad setting is one :class:`~lorastory.errors.ConfigError` naming the field.
    """

    model_config = ConfigDict(**YamlModel.model_config, allow_inf_nan=False)

    model: str = Field(min_length=1)
    data: str | None = Field(None, min_length=1)  # one training folder, or ``datasets`` (several)
    out: str = Field(min_length=1)
    family: str | None = None

    lora: LoraSpec = Field(default_factory=LoraSpec)

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
    optimizer: OptimizerName = "adamw"
    weight_decay: float = Field(1e-2, ge=0)
    prodigy: ProdigySettings = Field(default_factory=ProdigySettings)
    adafactor: AdafactorSettings = Field(default_factory=AdafactorSettings)
    snr_gamma: float | None = Field(None, gt=0)
    noise_offset: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    precision: Precision = "auto"
    gradient_checkpointing: bool = True

    # An fp32 moving average of the LoRA weights, saved as lora_ema.safetensors (train/ema.py).
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    ema_start_step: int = Field(0, ge=0)
    ema_every: int = Field(1, ge=1)
    # Speed only (not in the fingerprint): with bf16 on CUDA, compute in bf16 with fp32 LoRA weights
    # instead of autocast, self-attention q/k/v with their LoRA in two matmuls, and ``compile``.
    fast: bool = True
    compile: CompileMode = "auto"
    # Memory and speed only (not in the fingerprint): the frozen UNet's token-wise Linear layers in fp8 through
    # torchao (lorastory.models.fp8): "fp8" computes in fp8 (compute capability 8.9+), "fp8-weights" only stores.
    base_dtype: BaseDtype = "default"

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
    # None: the default (kohya; plus diffusers for a text-encoder LoRA on a non-CLIP encoder such as Kolors' ChatGLM,
    # which diffusers' kohya reader cannot map). The first format is written as lora.safetensors.
    save_formats: list[Literal["diffusers", "kohya"]] | None = None

    # Captions at training time (train/captions.py) and several datasets (train/datasets.py). The caption
    # settings are each dataset's default; a ``datasets:`` entry may set its own.
    trigger_word: str | None = None
    caption_dropout: float = Field(0.0, ge=0, le=1)
    shuffle_tags: bool = False
    keep_tags: int = Field(0, ge=0)
    caption_variants: int = Field(4, ge=1, le=64)  # shuffled versions of each caption cached (shuffle_tags)
    repeats: int = Field(1, ge=1, le=MAX_REPEATS)
    datasets: list[DatasetConfig] = Field(default_factory=list)
    prior_loss_weight: float = Field(1.0, ge=0)

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

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, data: Any) -> Any:
        return nest_flat_keys(data) if isinstance(data, dict) else data

    @classmethod
    def input_aliases(cls, data: Any) -> dict[tuple[str, ...], tuple[str, ...]]:
        """Where an error about a nested setting given by its flat key points: ("lora", "dropout") -> ("lora_dropout",)."""
        if not isinstance(data, dict):
            return {}
        return {FLAT_KEYS[key]: (key,) for key in data if key in FLAT_KEYS}

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_from_bool(cls, value: object) -> object:
        """Earlier config files wrote ``compile: null/true/false``; ``on`` reads as ``blocks``."""
        if value is None or isinstance(value, bool) or value == "on":
            return {None: "auto", True: "blocks", False: "off", "on": "blocks"}[value]
        return value

    @model_validator(mode="after")
    def _settings_combine(self) -> TrainConfig:
        if self.resolution % 8:
            raise ValueError(f"resolution {self.resolution} must be a multiple of 8")
        if self.lora.network not in ("lora", "locon") and "diffusers" in (self.save_formats or []):
            raise ValueError(f"a {self.lora.network} is saved in the kohya/LyCORIS layout only; drop --format diffusers")
        if self.data is None and not self.datasets:
            raise ValueError("needs data (a training folder) or datasets (several)")
        if self.data is not None and self.datasets:
            raise ValueError("give data (one training folder) or datasets (several), not both")
        if self.select_best and not self.validation_prompts:
            raise ValueError("select_best needs validation_prompts: the checkpoints are scored on them")
        if self.compile == "cudagraphs" and self.gradient_checkpointing:
            raise ValueError("compile: cudagraphs does not combine with gradient_checkpointing (recomputed blocks "
                             "would be recorded twice); use compile: blocks or gradient_checkpointing: false")
        if self.base_dtype != "default" and self.lora.train_text_encoder:
            raise ValueError(f"base_dtype {self.base_dtype} does not combine with train_text_encoder (the text encoder "
                             "then trains in bf16); leave one out")
        problem = optimizer_problem(self)
        if problem:
            raise ValueError(problem)
        changed_ema = [k for k in _EMA_SETTINGS if getattr(self, k) != type(self).model_fields[k].default]
        if changed_ema and not self.ema:
            raise ValueError(f"{changed_ema[0]} is set but ema is off; set ema: true (--ema) or remove it")
        return self

    def resolved_datasets(self) -> list[Dataset]:
        """The run's datasets, each with every setting decided (``data:`` is a one-entry list)."""
        entries = self.datasets or [DatasetConfig(folder=self.data or "")]
        resolved = []
        for entry in entries:
            trigger = _pick(entry.trigger_word, "" if entry.is_regularization else self.trigger_word or "")
            shuffle = _pick(entry.shuffle_tags, self.shuffle_tags)
            captions = CaptionSettings(
                trigger_word=trigger, prefix=entry.caption_prefix, suffix=entry.caption_suffix,
                dropout=_pick(entry.caption_dropout, self.caption_dropout), shuffle=shuffle,
                keep_tags=_pick(entry.keep_tags, self.keep_tags), variants=self.caption_variants if shuffle else 1,
            )
            weight = entry.weight * (self.prior_loss_weight if entry.is_regularization else 1.0)
            resolved.append(Dataset(entry.folder, _pick(entry.repeats, self.repeats), weight, entry.is_regularization,
                                    _pick(entry.resolution, self.resolution), _pick(entry.buckets, self.buckets),
                                    captions))
        return resolved

    def fingerprint(self) -> str:
        """A short hash of everything that changes the trained weights (not paths or logging)."""
        return self._hash(_NOT_WEIGHTS)

    def resume_fingerprint(self) -> str:
        """The fingerprint a checkpoint must match to be resumed: as :meth:`fingerprint`, less the
        batch size per process, which a resume on another number of GPUs may change (the position
        is kept in samples; see ``lorastory.train.order``)."""
        return self._hash(_NOT_WEIGHTS | {"batch_size"})

    def _hash(self, ignored: set[str]) -> str:
        return hashlib.sha256(json.dumps(self._hashed(ignored), sort_keys=True).encode()).hexdigest()[:16]

    def _hashed(self, ignored: set[str]) -> dict[str, Any]:
        """What the fingerprints hash, in the flat form of the first config files, so their checkpoints still
        resume: the LoRA's first five settings under their old flat names; any setting added since, only
        where it differs from its default (a default run hashes as it always did)."""
        data = self.model_dump(mode="json", exclude=ignored)
        lora, default_lora = data.pop("lora"), LoraSpec().model_dump(mode="json")
        for name, value in lora.items():
            if name in _FIRST_LORA_KEYS:
                data[_FIRST_LORA_KEYS[name]] = value
            elif value != default_lora[name]:
                data[f"lora.{name}"] = value
        for name in set(data) - _FIRST_KEYS:
            if name in type(self).model_fields and data[name] == _default_json(name):
                del data[name]
        return data



# Settings that do not change the trained weights.
_NOT_WEIGHTS = {"out", "resume", "checkpoint_every", "keep_checkpoints", "validation_prompts", "validation_every",
                "validation_steps", "validation_cfg", "cache_dir", "save_formats", "fast", "compile", "base_dtype", "validation_style",
                "select_best", "eval_clip"}
# The hashed settings of the first config files, always hashed (the LoRA's under these flat names).
_FIRST_LORA_KEYS = {"rank": "rank", "alpha": "alpha", "dropout": "lora_dropout", "target_modules": "target_modules",
                    "train_text_encoder": "train_text_encoder"}
_FIRST_KEYS = {"model", "data", "family", "resolution", "center_crop", "random_flip", "buckets", "bucket_step",
               "batch_size", "gradient_accumulation", "lr", "lr_scheduler", "lr_warmup_steps", "epochs", "max_steps",
               "max_grad_norm", "optimizer", "weight_decay", "snr_gamma", "noise_offset", "seed", "precision",
               "gradient_checkpointing", *_FIRST_LORA_KEYS.values()}
_EMA_SETTINGS = ("ema_decay", "ema_start_step", "ema_every")


def _default_json(name: str) -> Any:
    """A TrainConfig field's default, as ``model_dump(mode="json")`` writes it."""
    default = TrainConfig.model_fields[name].get_default(call_default_factory=True)
    return default.model_dump(mode="json") if isinstance(default, YamlModel) else default


def _flat_keys() -> dict[str, tuple[str, str]]:
    """Flat key -> (nested model field, its field): a LoRA setting by its own name (``rank``; dropout
    as ``lora_dropout``, its name before the nesting), an optimizer's as ``prodigy_d_coef``."""
    keys = {("lora_dropout" if name == "dropout" else name): ("lora", name) for name in LoraSpec.model_fields}
    for group, model in (("prodigy", ProdigySettings), ("adafactor", AdafactorSettings)):
        keys.update({f"{group}_{name}": (group, name) for name in model.model_fields})
    return {key: where for key, where in keys.items() if key not in TrainConfig.model_fields}


def nest_flat_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its flat keys (:data:`FLAT_KEYS`) moved into their nested settings.

    A setting given both ways (``rank: 8`` and ``lora: {rank: 4}``) is refused: which one wins
    would be a guess.
    """
    if not any(key in FLAT_KEYS for key in data):
        return data
    nested = dict(data)
    for key in [k for k in data if k in FLAT_KEYS]:
        group, name = FLAT_KEYS[key]
        inner = nested.get(group)
        if isinstance(inner, YamlModel):
            inner = inner.model_dump(exclude_unset=True)
        inner = dict(inner) if isinstance(inner, dict) else {} if inner is None else inner
        if not isinstance(inner, dict):
            continue  # the nested value's own error says what is wrong with it
        if name in inner:
            raise ValueError(f"{key} and {group}.{name} are both given; keep one")
        inner[name] = nested.pop(key)
        nested[group] = inner
    return nested


def with_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Config ``values`` with ``overrides`` on top, e.g. the ``train`` flags over a YAML file's settings.

    A flat override of a setting the values hold nested goes into it (``--rank 4`` over a file's
    ``lora: {rank: 8}`` changes only the rank); otherwise keys stay as given, so an error names
    the key the user wrote.
    """
    merged = dict(values)
    for key, value in overrides.items():
        group, name = FLAT_KEYS.get(key, (None, None))
        inner = merged.get(group) if group else None
        if isinstance(inner, dict) and key not in merged:
            merged[group] = {**inner, name: value}
        elif key in _NESTED and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


FLAT_KEYS: dict[str, tuple[str, str]] = _flat_keys()
_NESTED = {group for group, _ in FLAT_KEYS.values()}


def _pick(value: Any, default: Any) -> Any:
    """A dataset's own setting, or the run's where the dataset leaves it unset."""
    return default if value is None else value
