"""Data-Juicer-format recipes: the YAML a Data-Juicer user already has, validated up front.

The global keys and the ``process`` list are read exactly as ``dj-process``
reads them. Keys we do not use produce warnings, never a crash; an unknown op
or a bad parameter is an error before any sample is touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from lorastory.config import YamlModel, read_yaml
from lorastory.data.ops import Op, build_op
from lorastory.errors import ConfigError, RecipeError
from lorastory.fileio import display_path

# Data-Juicer global keys that only tune its own engine (caching, tracing, Ray...).
# They are accepted so recipes run unchanged; they change nothing here.
ENGINE_ONLY_KEYS = frozenset(
    {
        "executor_type", "dataset", "work_dir", "export_type", "export_in_parallel", "export_extra_args",
        "turbo", "skip_op_error", "use_cache", "ds_cache_dir", "cache_compress", "open_monitor",
        "use_checkpoint", "temp_dir", "open_tracer", "op_list_to_trace", "trace_num", "op_fusion",
        "fusion_strategy", "adaptive_batch_size", "percentiles", "export_original_dataset",
        "save_stats_in_one_file", "auto", "debug", "suffixes", "image_bytes_key", "audio_key",
        "video_key", "eoc_special_token", "audio_special_token", "video_special_token",
        "keep_stats_in_res_ds", "keep_hashes_in_res_ds", "export_shard_size", "config", "hpo_config",
        "data_probe_algo", "data_probe_ratio", "ray_address", "backup_count", "event_logging",
    }
)


class Recipe(YamlModel):
    """The global keys of a Data-Juicer config plus its ``process`` list."""

    model_config = ConfigDict(extra="allow")

    project_name: str = "hello_world"
    dataset_path: str
    np: int = Field(default=4, ge=1)
    text_keys: str | list[str] = "text"
    image_key: str = "images"
    image_special_token: str = "<__dj__image>"
    export_path: str = "./outputs/hello_world/hello_world.jsonl"
    export_stats: bool = True
    process: list[dict[str, dict[str, Any] | None]] = Field(default_factory=list)

    @field_validator("process", mode="before")
    @classmethod
    def _op_entries(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("must be a list of '- op_name: {params}' entries")
        for index, entry in enumerate(value):
            if isinstance(entry, str):
                raise ValueError(f"entry {index + 1} ('{entry}') needs a colon: '- {entry}:'")
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ValueError(f"entry {index + 1} must be a single 'op_name: params' mapping")
        return value

    @property
    def text_key(self) -> str:
        """The text key ops use: the first of ``text_keys``, as in Data-Juicer."""
        if isinstance(self.text_keys, list):
            return self.text_keys[0] if self.text_keys else "text"
        return self.text_keys

    def unknown_keys(self) -> list[str]:
        """Global keys Data-Juicer does not know (likely typos)."""
        return sorted(k for k in (self.model_extra or {}) if k not in ENGINE_ONLY_KEYS)

    def ignored_keys(self) -> list[str]:
        """Data-Juicer engine keys present in the recipe that have no effect here."""
        return sorted(k for k in (self.model_extra or {}) if k in ENGINE_ONLY_KEYS)

    def range_warnings(self) -> list[str]:
        """One line per op setting that is legal but drops every row (e.g. a negative maximum)."""
        return [
            f"process[{index + 1}] ({op.name}): {text}"
            for index, op in enumerate(self.build_ops())
            for text in op.params.warnings()
        ]

    def build_ops(self) -> list[Op]:
        """Instantiate every op; the first unknown name or bad parameter raises."""
        ops = []
        for index, entry in enumerate(self.process):
            (name, params), = entry.items()
            op = build_op(name, params, where=f"process[{index + 1}]")
            # As Data-Juicer does, ops take the recipe's keys unless they set their own.
            updates = {}
            if op.params.text_key is None:
                updates["text_key"] = self.text_key
            if op.params.image_key is None:
                updates["image_key"] = self.image_key
            op.params = op.params.model_copy(update=updates)
            ops.append(op)
        if not ops:
            raise RecipeError("process: the recipe lists no ops")
        return ops


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file; relative paths are taken from the current folder."""
    return recipe_from_data(read_yaml(path), str(path))


def recipe_from_data(data: Any, source: str) -> Recipe:
    """Validate parsed recipe YAML (``source`` names it in errors) and build its ops."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping of global keys and 'process'")
    if "dataset_path" not in data or not data.get("dataset_path"):
        raise ConfigError(f"{source}: 'dataset_path' is required (the input jsonl)")
    recipe = Recipe.from_dict(data, source=source)
    recipe.build_ops()
    return recipe


def image_ops(recipe: Recipe) -> list[Op]:
    """The recipe's ops that read the rows' images (Data-Juicer's ``image_*`` ops)."""
    return [op for op in recipe.build_ops() if op.name.startswith(("image_", "ray_image_"))]


def resolve_dataset_file(recipe: Recipe) -> Path:
    """The input jsonl as an absolute path; a folder means its ``*.jsonl`` files are not merged."""
    path = Path(os.path.abspath(os.path.expanduser(recipe.dataset_path)))
    if path.is_dir():
        candidates = sorted(path.glob("*.jsonl"))
        if len(candidates) != 1:
            raise ConfigError(
                f"dataset_path {path} is a folder with {len(candidates)} .jsonl files; point it at one file"
            )
        path = candidates[0]
    if not path.is_file():
        what = "not a regular file (a pipe or device?)" if path.exists() else "no such file"
        raise ConfigError(f"dataset_path {display_path(path)}: {what}")
    return path


def stats_path_for(export_path: Path) -> Path:
    """Data-Juicer's stats file name: ``result.jsonl`` → ``result_stats.jsonl``."""
    return export_path.with_name(export_path.stem + "_stats.jsonl")


def report_paths(export_path: Path) -> tuple[Path, Path]:
    """Where the JSON and HTML reports of a run go: beside the export."""
    stem = export_path.with_suffix("")
    return Path(f"{stem}_report.json"), Path(f"{stem}_report.html")
