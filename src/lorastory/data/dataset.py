"""Datasets on disk: import into Data-Juicer format, export for training.

An imported dataset is a folder with ``images/`` and ``metadata.jsonl``
(``{"text": ..., "image": ["images/..."]}``, paths relative to the folder so
it can move). An exported training set is a folder with ``images/`` and
``metadata.csv`` (``file_name,text``), what DiffSynth-style trainers and the
Hugging Face imagefolder loader read.

Bad inputs never stop a run and are never dropped silently: each is skipped
with its reason and listed in ``import_report.json`` / ``export_report.json``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastory.config import YamlModel
from lorastory.data.images import load_rgb, probe_image
from lorastory.data.sample import resolve_path
from lorastory.data.sources import SourceKind, open_source
from lorastory.errors import BadImageError, DataError
from lorastory.fileio import atomic_dir, atomic_write_json

_UNSAFE = re.compile(r"[^\w\-]+", re.UNICODE)
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "MPO": ".jpg"}
_DJ_SPECIAL_TOKENS = re.compile(r"<__dj__\w+>|<\|__dj__eoc\|>")


class ImportConfig(YamlModel):
    """What ``lorastory data import`` ran with (saved as ``config.yaml``)."""

    source: str
    kind: SourceKind = "auto"
    caption: str | None = None
    text_column: str | None = None
    split: str = "train"
    subset: str | None = None
    allow_empty_caption: bool = False


@dataclass
class StageResult:
    """Counts and skipped inputs of an import or export."""

    out_dir: Path
    written: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def as_report(self, **extra: Any) -> dict[str, Any]:
        return {"out": str(self.out_dir), "written": self.written, "skipped": len(self.skipped),
                "skipped_items": self.skipped, **extra}


def safe_stem(hint: str, limit: int = 48) -> str:
    """A file-name-safe version of ``hint`` (letters of any script, digits, '-', '_')."""
    stem = _UNSAFE.sub("_", hint.replace("/", "_")).strip("._")
    return stem[:limit] or "image"


def _check_out_dir(out: Path, marker: str, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if any(out.iterdir()) and not overwrite and not (out / marker).is_file():
        raise DataError(f"{out} is not empty; choose a new --out folder or pass --overwrite")


def import_dataset(config: ImportConfig, out_dir: str | os.PathLike[str], overwrite: bool = False) -> StageResult:
    """Copy a source's valid images with captions into a Data-Juicer-format dataset folder."""
    out = Path(out_dir)
    _check_out_dir(out, "import_report.json", overwrite)
    items = open_source(config.source, config.kind, config.split, config.subset, config.text_column)
    result = StageResult(out)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for index, item in enumerate(items):
                text = config.caption if config.caption is not None else item.text
                problem = item.problem or (item.caption_problem if config.caption is None else None)
                if problem is None and not (text or "").strip() and not config.allow_empty_caption:
                    problem = "empty or missing caption (pass --caption TEXT, add a .txt file, or --allow-empty-caption)"
                if problem is None:
                    try:
                        rel = _write_image(item, tmp / "images", index)
                    except BadImageError as err:
                        problem = str(err)
                if problem is not None:
                    result.skipped.append({"item": item.origin, "reason": problem})
                    continue
                meta.write(json.dumps({"text": text or "", "image": [rel]}, ensure_ascii=False) + "\n")
                result.written += 1
        config.save_yaml(tmp / "config.yaml")
        atomic_write_json(tmp / "import_report.json", result.as_report(source=config.source))
    return result


def _write_image(item: Any, images_dir: Path, index: int) -> str:
    stem = f"{index:06d}-{safe_stem(item.name_hint)}"
    if item.path is not None:
        info = probe_image(item.path)
        name = stem + _EXTENSIONS.get(info.format, Path(item.path).suffix.lower() or ".img")
        shutil.copyfile(item.path, images_dir / name)
        return f"images/{name}"
    if item.data is None:
        raise BadImageError("no image data")
    staging = images_dir / f".{stem}.part"
    staging.write_bytes(item.data())
    try:
        info = probe_image(staging)
    except BadImageError:
        staging.unlink()
        raise
    name = stem + _EXTENSIONS.get(info.format, ".img")
    staging.rename(images_dir / name)
    return f"images/{name}"


def read_rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Rows of a jsonl file as (line number, row or None, problem or None), streamed."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                yield number, None, f"unreadable line ({type(err).__name__})"
                continue
            yield (number, row, None) if isinstance(row, dict) else (number, None, "not a JSON object")


def clean_caption(text: str) -> str:
    """A training caption: Data-Juicer's special tokens removed, whitespace collapsed."""
    return " ".join(_DJ_SPECIAL_TOKENS.sub(" ", text).split())


def export_csv(
    result_jsonl: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    text_key: str = "text",
    image_key: str | None = None,
    overwrite: bool = False,
) -> StageResult:
    """Write ``metadata.csv`` (``file_name,text``) and upright RGB images for training.

    An RGB JPEG without rotation is copied byte for byte; anything else (CMYK,
    16-bit, palette, alpha, EXIF-rotated) is converted and saved as PNG so no
    quality is lost. A row with several images gives one line per image.
    """
    source = Path(result_jsonl)
    if not source.is_file():
        raise DataError(f"{source}: no such file")
    out = Path(out_dir)
    _check_out_dir(out, "export_report.json", overwrite)
    result = StageResult(out)
    base = str(source.resolve().parent)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file_name", "text"])
        for number, row, problem in read_rows(source):
            where = f"line {number}"
            if row is None:
                result.skipped.append({"item": where, "reason": problem or "unreadable"})
                continue
            text = row.get(text_key)
            key = image_key or ("image" if "image" in row else "images")
            paths = row.get(key) or []
            paths = [paths] if isinstance(paths, str) else paths
            if not isinstance(text, str) or not paths:
                result.skipped.append({"item": where, "reason": f"needs '{text_key}' text and '{key}' paths"})
                continue
            for path in paths:
                try:
                    name = _export_image(resolve_path(path, base), tmp / "images", result.written)
                except BadImageError as err:
                    result.skipped.append({"item": f"{where}: {path}", "reason": str(err)})
                    continue
                writer.writerow([name, clean_caption(text)])
                result.written += 1
        (tmp / "metadata.csv").write_text(buffer.getvalue(), encoding="utf-8")
        atomic_write_json(tmp / "export_report.json", result.as_report(source=str(source)))
    return result


def _export_image(path: str, images_dir: Path, index: int) -> str:
    info = probe_image(path)
    stem = f"{index:06d}"
    if info.format == "JPEG" and info.mode == "RGB" and info.orientation == 1:
        name = f"{stem}.jpg"
        shutil.copyfile(path, images_dir / name)
    else:
        name = f"{stem}.png"
        load_rgb(path).save(images_dir / name, "PNG")
    return f"images/{name}"
