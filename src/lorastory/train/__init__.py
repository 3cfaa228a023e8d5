"""The training stage: LoRA on the UNet (optionally the text encoder) with accelerate.

Its verbs, the Python API the README documents::

    from lorastory.train import TrainConfig, train

    result = train(TrainConfig.from_yaml("train.yaml"))   # result.lora_files, result.steps

``train`` lives in :mod:`lorastory.train.trainer`, which imports torch; it is loaded on
first use (PEP 562) so that importing :mod:`lorastory.train.config` alone, which the CLI
does to check settings before any model loads, stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lorastory.train import trainer
from lorastory.train.config import TrainConfig

if TYPE_CHECKING:
    from lorastory.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]

_FROM_TRAINER = ("TrainResult", "train")


def __getattr__(name: str) -> Any:
    # Only the torch-importing names are lazy; anything else is a normal AttributeError.
    if name in _FROM_TRAINER:
        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
