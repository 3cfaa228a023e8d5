"""The Train tab's presets, read from the shipped training configs (``examples/train_kolors_*.yaml``).

A preset is an example file, validated as a :class:`~lorastory.train.config.TrainConfig`
(so keys a file leaves out take TrainConfig's defaults), plus what the preset changes on top.
The settings therefore live in the example files and TrainConfig only; the two presets with
no file of their own say what they change from the reference workflow's.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from lorastory.demo import EXAMPLES
from lorastory.train.config import FLAT_KEYS, TrainConfig, with_overrides

# The form fields a preset sets, in the order of the Train tab's inputs: TrainConfig's keys, the
# LoRA's by their flat names (``rank`` is ``lora.rank``; see ``FLAT_KEYS``).
TRAIN_FIELDS = ("rank", "alpha", "resolution", "epochs", "max_steps", "batch_size", "gradient_accumulation", "lr",
                "center_crop", "random_flip", "buckets", "gradient_checkpointing", "precision", "optimizer",
                "train_text_encoder", "ema", "ema_decay", "network", "target_modules", "base_dtype")
# The caption and repeat fields of the form (not set by presets), in the order of its inputs.
CAPTION_FIELDS = ("trigger_word", "caption_dropout", "shuffle_tags", "keep_tags", "repeats")

REFERENCE_PRESET = "reference (rank 16, alpha 4, 1024², 1 epoch)"
TOY_PRESET = "toy model on a CPU (128², 100 steps)"
TWELVE_GB_PRESET = "12 GB GPU (1024², batch 8, fp8 weights, checkpointing)"

# name -> (example file, what the preset changes on top of it); the app's default is the reference
# one with a real model on a GPU, else the toy one (lorastory.ui.defaults).
PRESET_SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    REFERENCE_PRESET: ("train_kolors_style.yaml", {}),
    # 22 img/s on an H100 at 42 GB (compiled blocks as CUDA graphs).
    "fast GPU (1024², batch 8, 40 GB+)": ("train_kolors_fast.yaml", {}),
    # 14.6 img/s on an H100 at 13.7 GB.
    "24 GB GPU (1024², batch 16, checkpointing)": ("train_kolors_24gb.yaml", {}),
    # A 12 GB card (RTX 3060/4070): the frozen UNet's transformer Linear layers stored in fp8 (needs torchao and CUDA).
    TWELVE_GB_PRESET: ("train_kolors_12gb.yaml", {}),
    # Fits small GPUs: half the resolution, 8-bit AdamW, accumulation instead of batch.
    "low memory (512², 8-bit AdamW, accumulate 4)": (
        "train_kolors_style.yaml", {"rank": 8, "resolution": 512, "gradient_accumulation": 4, "optimizer": "adamw8bit"},
    ),
    # A few steps on the tiny default model: checks the whole path in seconds on a CPU.
    "quick check (64², 4 steps)": (
        "train_kolors_style.yaml", {"rank": 4, "resolution": 64, "max_steps": 4, "gradient_checkpointing": False},
    ),
    # The toy workflow of `lorastory demo`, shorter: a style LoRA in minutes on a CPU.
    TOY_PRESET: ("train_toy_cpu.yaml", {}),
    "example: train_kolors_character.yaml": ("train_kolors_character.yaml", {}),
}


def setting(config: TrainConfig, key: str) -> Any:
    """``config``'s value of ``key``, a field or a flat key of a nested setting (``rank``: ``config.lora.rank``)."""
    if key in FLAT_KEYS:
        group, name = FLAT_KEYS[key]
        return getattr(getattr(config, group), name)
    return getattr(config, key)


def form_values(config: TrainConfig) -> dict[str, Any]:
    """The Train tab's preset fields of ``config`` (``max_steps`` 0 where the epochs decide)."""
    values = {key: setting(config, key) for key in TRAIN_FIELDS}
    values["max_steps"] = values["max_steps"] or 0
    return values


def example_config(name: str, changes: dict[str, Any] | None = None) -> TrainConfig:
    """A shipped training example as a validated :class:`TrainConfig`, with ``changes`` applied."""
    data = TrainConfig.from_yaml(EXAMPLES / name).model_dump()
    return TrainConfig.from_dict(with_overrides(data, changes or {}), source=f"{name} preset")


@cache
def load_presets() -> dict[str, dict[str, Any]]:
    """Preset name -> form values, in the order the dropdown lists them (read once per process)."""
    return {name: form_values(example_config(file, changes)) for name, (file, changes) in PRESET_SOURCES.items()}
