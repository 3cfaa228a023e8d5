"""The Data tab's Caption step: caption a dataset in a job (:func:`lorastory.data.caption.caption_dataset`),
show file name + caption as a table, write edited captions back to ``metadata.jsonl`` atomically."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastory.data.caption import BEFORE_FIELD, CaptionConfig, caption_dataset, metadata_file
from lorastory.data.dataset import read_rows
from lorastory.errors import DataError
from lorastory.fileio import atomic_write_bytes
from lorastory.hub import looks_like_hub_id
from lorastory.models.captioners.loader import MODEL_TYPES
from lorastory.models.captioners.wd14 import is_tagger_folder
from lorastory.ui.jobs import JobContext
from lorastory.ui.workspace import PathRefused, Workspace

CAPTION_COLUMNS = ["file", "caption"]


def captioner_choices(ws: Workspace) -> list[str]:
    """``toy`` and the captioner folders under the workspace's models/ (a known model_type or a WD14 tagger)."""
    found = [folder for folder in ws.list("models", "*", dirs=True) if _is_captioner(ws.root / folder)]
    return ["toy", *sorted(found)]


def _is_captioner(folder: Path) -> bool:
    if is_tagger_folder(folder):
        return True
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") in MODEL_TYPES
    except (OSError, ValueError, AttributeError):
        return False


def _model(ws: Workspace, model: str) -> str:
    """``toy``, a folder inside the workspace (made absolute), or a hub id."""
    text = (model or "").strip() or "toy"
    if text == "toy":
        return text
    try:
        return str(ws.resolve(text, must_exist=True))
    except PathRefused:
        if looks_like_hub_id(text) and not (ws.root / text.split("/", 1)[0]).exists():
            return text
        raise PathRefused(f"captioner '{text}' is not a folder inside the workspace (models/NAME), 'toy' or a hub id") from None


def caption_job(ws: Workspace, dataset: str, model: str, style: str, language: str, trigger: str,
                mode: str) -> Callable[[JobContext], Any]:
    """A job that captions ``dataset`` (a workspace path); progress is pictures done / total."""
    metadata = metadata_file(ws.resolve(dataset, must_exist=True))
    config = CaptionConfig(model=_model(ws, model), style=style, language=language, trigger=(trigger or "").strip() or None,
                           mode=mode)

    def run_job(ctx: JobContext) -> dict[str, Any]:
        def progress(done: int, total: int) -> None:
            ctx.progress(done / max(total, 1), f"{done}/{total} pictures")
            ctx.log(f"{done}/{total} pictures")

        ctx.progress(0.0, f"loading {model or 'toy'}")
        result = caption_dataset(metadata, config, on_progress=progress)
        ctx.data["dataset"] = ws.rel(metadata)
        return {"dataset": ws.rel(metadata), "captioned": result.captioned, "kept": result.kept,
                "failed": [s.as_item() for s in result.failed]}

    return run_job


def _file_of(row: dict[str, Any]) -> str:
    value = row.get("image", row.get("images"))
    first = value if isinstance(value, str) else (value[0] if isinstance(value, list) and value else "")
    return Path(str(first)).name


def caption_rows(ws: Workspace, dataset: str) -> list[list[str]]:
    """[file name, caption] for each readable row of the dataset, in file order."""
    metadata = metadata_file(ws.resolve(dataset, must_exist=True))
    return [[_file_of(row), str(row.get("text", ""))] for _n, row, _p in read_rows(metadata) if row is not None]


def save_captions(ws: Workspace, dataset: str, table: list[list[Any]]) -> int:
    """Write the table's captions back to ``metadata.jsonl`` (row by row, file names must match); returns rows changed.

    The text a row had first is kept in ``text_before_caption``, as ``data caption`` does.
    """
    metadata = metadata_file(ws.resolve(dataset, must_exist=True))
    lines = metadata.read_bytes().split(b"\n")  # the other lines are kept byte for byte
    readable = [(n, row) for n, row, _p in read_rows(metadata) if row is not None]
    if len(table) != len(readable):
        raise DataError(f"{ws.rel(metadata)} has {len(readable)} rows, the table {len(table)}; reload the captions")
    changed = 0
    for (number, row), entry in zip(readable, table):
        name, caption = str(entry[0] or ""), str(entry[1] if entry[1] is not None else "")
        if name != _file_of(row):
            raise DataError(f"line {number}: file name '{name}' does not match '{_file_of(row)}'; reload the captions")
        if caption == row.get("text"):
            continue
        if BEFORE_FIELD not in row and isinstance(row.get("text"), str):
            row[BEFORE_FIELD] = row["text"]
        row["text"] = caption
        lines[number - 1] = json.dumps(row, ensure_ascii=False).encode("utf-8")
        changed += 1
    if changed:
        atomic_write_bytes(metadata, b"\n".join(lines).rstrip(b"\n") + b"\n")
    return changed
