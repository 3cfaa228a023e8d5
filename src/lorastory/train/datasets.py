"""Several training folders in one run: the ``datasets:`` list of a training config.

Each entry names a training folder and how it trains:

- ``repeats``: how many times each of its pictures is drawn per epoch (kohya's repeats). The
  share of an epoch a dataset gets is its pictures × repeats over the sum of all of them, so
  ``repeats`` is how datasets of different sizes are balanced;
- ``weight``: a loss weight, multiplying the loss of each of its samples (default 1). It does not
  change how often the pictures are drawn;
- ``is_regularization``: prior-preservation pictures (DreamBooth): their loss is also multiplied
  by the run's ``prior_loss_weight``, and the run's trigger word is not added to their captions
  (set ``trigger_word`` on the entry to add one anyway);
- ``resolution`` / ``buckets``: the run's, unless set here;
- caption settings (see :mod:`lorastory.train.captions`): ``caption_prefix``, ``caption_suffix``
  of its own; ``trigger_word``, ``caption_dropout``, ``shuffle_tags``, ``keep_tags`` take the run's
  unless set here.

A config with ``data:`` (one folder) trains as a one-entry list of it, with the run's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorastory.config import read_text, yaml_from_text
from lorastory.errors import ConfigError
from lorastory.train.captions import CaptionSettings


MAX_REPEATS = 10_000


class DatasetConfig(BaseModel):
    """One entry of ``datasets:``; ``None`` means "the run's setting"."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    folder: str = Field(min_length=1)
    repeats: int | None = Field(None, ge=1, le=MAX_REPEATS)
    weight: float = Field(1.0, ge=0)
    is_regularization: bool = False
    resolution: int | None = Field(None, ge=64, le=8192)
    buckets: bool | None = None
    caption_prefix: str = ""
    caption_suffix: str = ""
    trigger_word: str | None = None
    caption_dropout: float | None = Field(None, ge=0, le=1)
    shuffle_tags: bool | None = None
    keep_tags: int | None = Field(None, ge=0)

    @field_validator("folder")
    @classmethod
    def _usable_folder(cls, value: str) -> str:
        if "\x00" in value or not value.strip():
            raise ValueError("must be a path without NUL bytes")
        return value

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"resolution {value} must be a multiple of 8")
        return value


@dataclass(frozen=True)
class Dataset:
    """A dataset with the run's settings filled in: what the trainer uses."""

    folder: str
    repeats: int
    loss_weight: float  # weight, times prior_loss_weight for regularization pictures
    is_regularization: bool
    resolution: int
    buckets: bool
    captions: CaptionSettings


def parse_dataset_options(values: list[str]) -> list[dict[str, Any]]:
    """``--dataset`` values as ``datasets:`` entries: ``FOLDER[:REPEATS]``, or a YAML/JSON file holding a list.

    ``FOLDER:3`` trains FOLDER with 3 repeats; a ``.yaml``/``.yml``/``.json`` file holds a list of
    entries with every setting (``folder``, ``repeats``, ``weight``, ``is_regularization``, ...).
    """
    entries: list[dict[str, Any]] = []
    for value in values:
        if Path(value).suffix.lower() in (".yaml", ".yml", ".json") and not Path(value).is_dir():
            text = read_text(value)
            loaded = yaml_from_text(text, value)  # JSON is YAML
            listed = loaded.get("datasets") if isinstance(loaded, dict) else loaded
            if not isinstance(listed, list) or not all(isinstance(e, dict) for e in listed):
                raise ConfigError(f"{value}: expected a list of datasets (each a mapping with 'folder')")
            entries += listed
            continue
        folder, _, repeats = value.rpartition(":")
        if folder and repeats.isdigit():
            entries.append({"folder": folder, "repeats": int(repeats)})
        else:
            entries.append({"folder": value})
    return entries
