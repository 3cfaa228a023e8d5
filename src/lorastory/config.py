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
from lorastory.fileio import atomic_write_text, display_path

ModelT = TypeVar("ModelT", bound="YamlModel")


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file, turning every failure into a one-line :class:`ConfigError`."""
    return yaml_from_text(read_text(path), str(path))


def read_text(path: str | os.PathLike[str]) -> str:
    """A UTF-8 text file's content, or a one-line :class:`ConfigError`."""
    file = Path(path)
    if not file.is_file():
        exists = file.exists() or file.is_symlink()
        raise ConfigError(f"{display_path(file)}: " + ("not a regular file" if exists else "no such file"))
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{display_path(file)}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    return text


# A config, recipe or story has hundreds of values; aliases may not expand it past this
# ("billion laughs": nine aliases of nine aliases of ... is 9**10 values once walked).
MAX_YAML_NODES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (shared nodes counted each time)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_YAML_NODES + 1  # a node inside itself (a recursive alias) counts as too large
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo)
            if size > MAX_YAML_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo) + _expanded_size(v, memo)
            if size > MAX_YAML_NODES:
                break
    memo[key] = size
    return size


def yaml_from_text(text: str, source: str) -> Any:
    """Parse YAML text; errors name the source, line and column.

    Aliases are allowed, but not ones that expand the document past
    :data:`MAX_YAML_NODES` values, nor a value that contains itself.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(
                f"{source}: too large once its aliases (*name) are expanded "
                f"(over {MAX_YAML_NODES:,} values, or a value that contains itself)"
            )
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()


def yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (keys and list indices), or its nearest parent."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            match = node.value[part]
        else:
            match = None
        if match is None:
            break
        node, line = match, match.start_mark.line + 1
    return line


def format_validation_error(err: ValidationError, source: str, text: str | None = None,
                            aliases: dict[tuple[str, ...], tuple[str, ...]] | None = None) -> str:
    """One line naming each bad field (dotted path, and its YAML line when known) and what was wrong.

    ``aliases`` maps a field's path to the key the input gave it under (see :meth:`YamlModel.input_aliases`).
    """
    parts = []
    for item in err.errors():
        path = _aliased(tuple(item["loc"]), aliases or {})
        loc = ".".join(str(p) for p in path) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        line = yaml_line(text, path) if text is not None else None
        parts.append(f"line {line}: {loc}: {msg}" if line else f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def _aliased(loc: tuple[Any, ...], aliases: dict[tuple[str, ...], tuple[str, ...]]) -> tuple[Any, ...]:
    for path, key in aliases.items():
        if loc[: len(path)] == path:
            return key + loc[len(path):]
    return loc


class YamlModel(BaseModel):
    """A pydantic model that loads from and saves to YAML."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_dict(cls: type[ModelT], data: Any, source: str = "config", text: str | None = None) -> ModelT:
        """Validate ``data``; errors become one :class:`ConfigError` naming the fields
        (and their lines, when the YAML ``text`` it came from is given)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, source, text, cls.input_aliases(data))) from None

    @classmethod
    def input_aliases(cls, data: Any) -> dict[tuple[str, ...], tuple[str, ...]]:
        """Fields ``data`` gives under another key (path -> key), so errors name what the user wrote; none here."""
        return {}

    @classmethod
    def from_yaml(cls: type[ModelT], path: str | os.PathLike[str]) -> ModelT:
        """Load and validate a YAML file; errors point at the line and field."""
        text = read_text(path)
        return cls.from_dict(yaml_from_text(text, str(path)), source=str(path), text=text)

    def to_yaml(self) -> str:
        """The model as YAML text (Unicode kept as is, keys in field order)."""
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)

    def save_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write the model to ``path`` atomically."""
        atomic_write_text(path, self.to_yaml())
