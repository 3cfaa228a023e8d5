"""The Data tab's actions: import a folder or an upload, edit and run a recipe, show kept and
dropped samples, export a training folder; every image path checked against the workspace."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lorastory.config import yaml_from_text
from lorastory.data.dataset import ImportConfig, export_csv, import_dataset, read_rows
from lorastory.data.ops import OpParams, build_op, registered_ops
from lorastory.data.sample import resolve_path
from lorastory.data.sources import open_source
from lorastory.demo import EXAMPLES
from lorastory.errors import ConfigError, DataError
from lorastory.hub import looks_like_hub_id
from lorastory.ui.workspace import PathRefused, Workspace

# Op parameters that name a model folder or file (Data-Juicer's ``hf_*`` keys and a few others).
MODEL_PATH_KEYS = frozenset({"sp_model_path", "tokenizer_model", "cv_classifier"})


def import_folder(ws: Workspace, folder: str, name: str, caption: str | None, replace: bool,
                  allow_empty_caption: bool = False) -> dict[str, Any]:
    """Import a folder inside the workspace into ``datasets/NAME`` (Data-Juicer format).

    Captions from the folder (``.txt``, metadata) always win; ``caption`` is the fallback for
    pictures without one; ``allow_empty_caption`` keeps the rest with an empty text (for the
    Caption step). An existing dataset is replaced only when ``replace`` is set.
    """
    source = ws.resolve(folder, must_exist=True)
    out = _new_dataset(ws, name, replace)
    links = ws.escaping_links(source) if source.is_dir() else []
    if links:
        raise PathRefused(f"{ws.rel(source)} has links that leave the workspace: {', '.join(links[:5])}")
    # Metadata files can name images anywhere: check every item's path before anything is copied.
    pictures = captioned = 0
    for item in open_source(str(source), "folder"):
        if item.path is not None and not item.problem:
            resolved = item.path if os.path.isabs(item.path) else os.path.join(source, item.path)
            if not ws.is_inside(resolved):
                raise PathRefused(f"{item.origin}: image {item.path} is outside the workspace")
        pictures += not item.problem
        captioned += not item.problem and bool((item.text or "").strip()) and not item.caption_problem
    if pictures and not captioned and not (caption or "").strip() and not allow_empty_caption:
        raise DataError(f"none of the {pictures} picture(s) has a caption, so the dataset would be empty; enter a "
                        "fallback caption, add .txt captions, or tick 'Keep pictures without a caption'")
    config = ImportConfig(source=str(source), kind="folder", caption=(caption or "").strip() or None, caption_is_fallback=True,
                          allow_empty_caption=allow_empty_caption)
    result = import_dataset(config, out, overwrite=replace)
    return {"dataset": ws.rel(out), "written": result.written, "skipped": [s.as_item() for s in result.skipped],
            "captions_from_files": result.captions_from_source, "captions_from_fallback": result.captions_from_fallback}


def _new_dataset(ws: Workspace, name: str, replace: bool) -> Path:
    """``datasets/NAME``; an existing one is refused unless ``replace`` (its own marker file does not count)."""
    out = ws.child("datasets", name)
    if not replace and (out.exists() or out.is_symlink()):
        raise ConfigError(f"dataset '{name}' already exists ({ws.rel(out)}); tick 'Replace an existing dataset' "
                          f"or pick another name")
    return out


def import_upload(ws: Workspace, files: list[str], upload_root: str, name: str, caption: str | None, replace: bool,
                  allow_empty_caption: bool = False) -> dict[str, Any]:
    """Check uploaded images/zips into ``uploads/NAME-TIME``, then import that folder."""
    if not files:
        raise ConfigError("no files uploaded; add images, .txt captions or a .zip")
    _new_dataset(ws, name, replace)  # check the name before storing anything
    folder = ws.child("uploads", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    stored = ws.store_upload(files, upload_root, folder)
    if not stored.images:
        shutil.rmtree(folder, ignore_errors=True)
        reasons = "; ".join(f"{r['file']}: {r['reason']}" for r in stored.refused[:5])
        raise ConfigError(f"no usable image in the upload ({reasons or 'nothing uploaded'})")
    result = import_folder(ws, ws.rel(folder), name, caption, replace, allow_empty_caption)
    result["upload"] = ws.rel(folder)
    result["refused"] = stored.refused
    return result


def dataset_choices(ws: Workspace) -> list[str]:
    return ws.list("datasets", "*/metadata.jsonl")


def curated_choices(ws: Workspace) -> list[str]:
    return [p for p in ws.list("curated", "**/*.jsonl") if not p.endswith("_stats.jsonl")]


def train_folder_choices(ws: Workspace) -> list[str]:
    return [str(Path(p).parent.as_posix()) for p in ws.list("train", "*/metadata.csv")]


def default_recipe(dataset: str | None, name: str = "curated") -> str:
    """The reference recipe (shipped example) pointed at a workspace dataset."""
    text = (EXAMPLES / "recipe_reference.yaml").read_text(encoding="utf-8")
    return point_recipe(text, dataset or "datasets/NAME/metadata.jsonl", f"curated/{name}/result.jsonl")


def point_recipe(text: str, dataset: str, export: str) -> str:
    """Set ``dataset_path`` and ``export_path`` in recipe text, keeping the rest (and comments) as written."""
    for key, value in (("dataset_path", dataset), ("export_path", export)):
        line = f"{key}: {json.dumps(value, ensure_ascii=False)}"
        text, count = re.subn(rf"(?m)^{key}:.*$", lambda _m, line=line: line, text)
        if not count:
            text = line + "\n" + text
    return text


def op_defaults(name: str) -> dict[str, Any]:
    """An op's own parameters with their defaults (what Data-Juicer names them)."""
    params = registered_ops()[name].Params
    base = set(OpParams.model_fields)
    return {k: f.default for k, f in params.model_fields.items() if k not in base}


def op_rows(name: str) -> list[list[str]]:
    """Parameter name, type and default of an op, for the reference table."""
    params = registered_ops()[name].Params
    rows = []
    for key, spec in params.model_fields.items():
        if key in OpParams.model_fields:
            continue
        kind = getattr(spec.annotation, "__name__", None) or str(spec.annotation).replace("typing.", "")
        rows.append([key, kind, json.dumps(spec.default, ensure_ascii=False, default=str)])
    return rows


def add_op(text: str, name: str, params_yaml: str) -> str:
    """Append ``- name: params`` to the recipe's ``process`` list (validated first)."""
    params = yaml_from_text(params_yaml or "{}", f"{name} parameters") or {}
    build_op(name, params, where=f"new {name}")  # a bad field is refused here, naming it
    data = yaml_from_text(text or "{}", "recipe") or {}
    if not isinstance(data, dict):
        raise ConfigError("the recipe must be a mapping of global keys and 'process'")
    data.setdefault("process", [])
    data["process"] = (data["process"] or []) + [{name: params}]
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def workspace_model_paths(ws: Workspace, process: Any) -> Any:
    """The ``process`` list with its model paths resolved inside the workspace; hub ids stay hub ids.

    A path relative to the workspace (``models/toy-clip``, what the Gallery tab offers) becomes
    absolute; an absolute path or ``..`` leaving the workspace is refused before anything is opened.
    """
    if not isinstance(process, list):
        return process
    resolved = []
    for entry in process:
        if isinstance(entry, dict) and len(entry) == 1:
            (name, params), = entry.items()
            if isinstance(params, dict):
                entry = {name: {key: _model_path(ws, name, key, value) for key, value in params.items()}}
        resolved.append(entry)
    return resolved


def _model_path(ws: Workspace, op: str, key: str, value: Any) -> Any:
    if not (key.startswith("hf_") or key in MODEL_PATH_KEYS) or not isinstance(value, str) or not value.strip():
        return value
    text = value.strip()
    try:
        return str(ws.resolve(text, must_exist=True))
    except PathRefused as err:
        # A hub id (owner/name) that is neither a workspace path nor a folder where the server runs.
        if (looks_like_hub_id(text) and not os.path.lexists(text)
                and not os.path.lexists(ws.root / text.split("/", 1)[0])):
            return value
        where = "does not exist in the workspace" if "does not exist" in str(err) else "is outside the workspace"
        raise PathRefused(f"{op}: {key} '{text}' {where}; give a folder inside it (e.g. models/NAME) or a hub id") from None


def kept_samples(ws: Workspace, export: str, limit: int = 48) -> list[tuple[str, str]]:
    """(image, caption) of the first kept rows of a recipe result, images inside the workspace only."""
    found = []
    for _number, row, _problem in read_rows(ws.check(export)):
        if row is None:
            continue
        images = row.get("image") or row.get("images") or []
        for image in [images] if isinstance(images, str) else images:
            if isinstance(image, str) and os.path.isfile(image) and ws.is_inside(image):
                found.append((image, str(row.get("text", ""))[:80]))
        if len(found) >= limit:
            break
    return found


def dropped_samples(ws: Workspace, report: dict[str, Any]) -> list[tuple[str, str]]:
    """(image, "op: why") for the report's dropped examples, images inside the workspace only."""
    found = []
    for example in report.get("dropped_examples", []):
        for image in example.get("images", []):
            if os.path.isfile(image) and ws.is_inside(image):
                found.append((image, f"{example['op']}: {example['why']} (line {example['line']})"))
    return found


def export_for_training(ws: Workspace, result_jsonl: str, name: str, replace: bool) -> dict[str, Any]:
    """``export-csv``: a curated result → ``train/NAME`` (metadata.csv + images)."""
    source = ws.resolve(result_jsonl, must_exist=True)
    for image, _caption in _all_images(source, resolve_path):
        if not ws.is_inside(image):
            raise PathRefused(f"{ws.rel(source)}: image {image} is outside the workspace")
    out = ws.child("train", name)
    result = export_csv(source, out, overwrite=replace)
    return {"train_folder": ws.rel(out), "written": result.written, "skipped": [s.as_item() for s in result.skipped]}


def _all_images(jsonl: Path, resolve_path: Callable[[str, str], str]) -> list[tuple[str, str]]:
    found = []
    for _number, row, _problem in read_rows(jsonl):
        images = (row or {}).get("image") or (row or {}).get("images") or []
        for image in [images] if isinstance(images, str) else images:
            if isinstance(image, str):
                found.append((resolve_path(image, str(jsonl.parent)), ""))
    return found
