"""What the web app's forms start with, fitted to where it runs.

On the embedded toy model (no other model in ``models/``, or no CUDA GPU) the defaults are the
toy workflow: the toy recipe, the CPU training preset (``examples/train_toy_cpu.yaml``) and the
toy story. With a real model on a GPU they are the reference workflow's. The shipped examples
(recipes, training configs, stories) can be loaded in any case; the user's own training presets
are YAML files in the workspace's ``presets/train/`` (written atomically).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lorastory.config import yaml_from_text
from lorastory.demo import EXAMPLES
from lorastory.errors import ConfigError
from lorastory.fileio import atomic_write_text
from lorastory.ui.actions.data import point_recipe
from lorastory.ui.actions.models import DEFAULT_CLIP, DEFAULT_MODEL, model_choices
from lorastory.ui.presets import REFERENCE_PRESET, TOY_PRESET, TRAIN_FIELDS, example_config, load_presets
from lorastory.ui.workspace import Workspace

TOY_PREFIX = "models/toy-"
PRESETS_DIR = "presets/train"
_NAME_RE = re.compile(r"^[\w.-]{1,64}$")


@dataclass(frozen=True)
class AppDefaults:
    """The defaults of one app start: which workflow, model, recipe, preset and story."""

    toy: bool
    model: str
    recipe: str  # an example file name
    preset: str  # a preset name (see lorastory.ui.presets)
    story: str  # an example file name
    validation_prompt: str  # the Train form's


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def app_defaults(ws: Workspace, cuda: bool | None = None) -> AppDefaults:
    """The toy workflow unless a real model is in ``models/`` and a CUDA GPU is there (``cuda`` overrides the check)."""
    real = [m for m in model_choices(ws) if not m.startswith(TOY_PREFIX)]
    gpu = cuda_available() if cuda is None else cuda
    if real and gpu:
        return AppDefaults(False, real[0], "recipe_reference.yaml", REFERENCE_PRESET, "story_kolors_anime.yaml",
                           "二次元，一个女孩")
    toy_prompt = example_config("train_toy_cpu.yaml").validation_prompts[0]
    return AppDefaults(True, DEFAULT_MODEL, "recipe_toy.yaml", TOY_PRESET, "story_toy.yaml", toy_prompt)


def example_recipes() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("recipe_*.yaml"))


def example_train_configs() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("train_*.yaml"))


def recipe_choices(ws: Workspace) -> list[str]:
    """The shipped example recipes, then the workspace's saved ones (``recipes/NAME.yaml``)."""
    return example_recipes() + ws.list("recipes", "*.yaml")


def recipe_text(ws: Workspace, choice: str, dataset: str | None, name: str = "curated") -> str:
    """A recipe's text (an example by file name, or a workspace path), pointed at ``dataset`` and
    ``curated/NAME``; the toy recipe's CLIP is the workspace's toy CLIP. Comments are kept."""
    if choice in example_recipes():
        text = (EXAMPLES / choice).read_text(encoding="utf-8")
    else:
        text = ws.resolve(choice, must_exist=True).read_text(encoding="utf-8")
    text = text.replace("./toy/models/toy-clip", DEFAULT_CLIP)
    return point_recipe(text, dataset or "datasets/NAME/metadata.jsonl", f"curated/{name or 'curated'}/result.jsonl")


SAVED = "saved: "


def user_presets(ws: Workspace) -> list[str]:
    """The workspace's saved training presets, by name."""
    return [Path(p).stem for p in ws.list(PRESETS_DIR, "*.yaml")]


def preset_choices(ws: Workspace) -> list[str]:
    """The shipped presets, then the saved ones (``saved: NAME``)."""
    return list(load_presets()) + [SAVED + name for name in user_presets(ws)]


def preset_values(ws: Workspace, choice: str) -> dict[str, Any]:
    """The form fields of a shipped or saved preset."""
    if choice.startswith(SAVED):
        return load_user_preset(ws, choice[len(SAVED):])
    presets = load_presets()
    if choice not in presets:
        raise ConfigError(f"unknown preset '{choice}'")
    return presets[choice]


def _preset_path(ws: Workspace, name: str) -> Path:
    name = (name or "").strip()
    if not _NAME_RE.match(name):
        raise ConfigError(f"preset name '{name}': use letters, digits, '.', '-' or '_' (up to 64)")
    return ws.child(PRESETS_DIR, f"{name}.yaml")


def save_user_preset(ws: Workspace, name: str, values: dict[str, Any]) -> Path:
    """Write the form's preset fields to ``presets/train/NAME.yaml`` (atomically); return the file."""
    path = _preset_path(ws, name)
    data = {key: values[key] for key in TRAIN_FIELDS if key in values}
    header = "# A training preset saved from the web app (the Train tab's fields).\n"
    atomic_write_text(path, header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


def load_user_preset(ws: Workspace, name: str) -> dict[str, Any]:
    """A saved preset's fields; a file with keys the form does not have is refused, naming them."""
    path = _preset_path(ws, name)
    if not path.is_file():
        raise ConfigError(f"no saved preset '{name}' in {ws.rel(path.parent)}")
    data = yaml_from_text(path.read_text(encoding="utf-8"), ws.rel(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{ws.rel(path)}: a preset is a mapping of the Train form's fields")
    unknown = sorted(set(data) - set(TRAIN_FIELDS))
    if unknown:
        raise ConfigError(f"{ws.rel(path)}: unknown field(s) {', '.join(unknown)}")
    return data
