"""The training stage: LoRA on the UNet (optionally the text encoder) with accelerate.

Its verbs, the Python API the README documents::

    from lorastory.train import TrainConfig, train

    result = train(TrainConfig.from_yaml("train.yaml"))   # result.lora_files, result.steps

``train`` lives in :mod:`lorastory.train.trainer`, which imports torch only when it runs, so
importing this package (the CLI does, to check settings before any model loads) stays fast.
"""

from __future__ import annotations

from lorastory.train.config import TrainConfig
from lorastory.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
