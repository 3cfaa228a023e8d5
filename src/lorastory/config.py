"""Typed configuration shared by every stage, round-tripping to YAML.

Configs are pydantic models with ``extra="forbid"`` so a typo in a key is an
error that names the key, not a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lorastory.errors import ConfigError
from lorastory.fileio import atomic_write_text

ModelT = TypeVar("ModelT", bound="YamlModel")


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file, turning every failure into a one-line :class:`ConfigError`."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{file}:{where}: invalid YAML: {problem}") from err


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming each bad field (dotted path) and what was wrong with it."""
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


class YamlModel(BaseModel):
    """A pydantic model that loads from and saves to YAML."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_dict(cls: type[ModelT], data: Any, source: str = "config") -> ModelT:
        """Validate ``data``; errors become one :class:`ConfigError` naming the fields."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, source)) from None

    @classmethod
    def from_yaml(cls: type[ModelT], path: str | os.PathLike[str]) -> ModelT:
        """Load and validate a YAML file."""
        return cls.from_dict(read_yaml(path), source=str(path))

    def to_yaml(self) -> str:
        """The model as YAML text (Unicode kept as is, keys in field order)."""
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)

    def save_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write the model to ``path`` atomically."""
        atomic_write_text(path, self.to_yaml())
