"""Datasets on disk: import into Data-Juicer format, export for training.

An imported dataset is a folder with ``images/`` and ``metadata.jsonl``
(``{"text": ..., "image": ["images/..."]}``, paths relative to the folder so
it can move). An exported training set is a folder with ``images/`` and
``metadata.csv`` (``file_name,text``), what DiffSynth-style trainers and the
Hugging Face imagefolder loader read.

Bad inputs never stop a run and are never dropped silently: each is skipped
with its reason and listed in ``import_report.json`` / ``export_report.json``
(every file of a source folder that is not imported too). ``--out`` may not be,
contain or lie inside the input (the source folder; the jsonl and its images).
"""

from __future__ import annotations

import contextlib
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

from lorastory.captions import clean_caption
from lorastory.config import YamlModel
from lorastory.images import load_rgb, probe_image
from lorastory.data.sample import resolve_path
from lorastory.data.sources import SourceKind, open_regular, open_source, source_root
from lorastory.errors import BadImageError, DataError, OutputError, SourceError
from lorastory.fileio import (
    atomic_dir,
    atomic_write_json,
    check_output_folder,
    check_outputs_apart,
    display_path,
    display_text,
    is_valid_text,
)
from lorastory.skips import Skip

_UNSAFE = re.compile(r"[^\w\-]+", re.UNICODE)
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "MPO": ".jpg"}
class ImportConfig(YamlModel):
    """What ``lorastory data import`` ran with (saved as ``config.yaml``)."""

    source: str
    kind: SourceKind = "auto"
    caption: str | None = None
    #: ``caption`` only for items without a usable caption of their own (the web app's field), not for all.
    caption_is_fallback: bool = False
    text_column: str | None = None
    split: str = "train"
    subset: str | None = None
    allow_empty_caption: bool = False


@dataclass
class StageResult:
    """Counts and skipped inputs of an import or export."""

    out_dir: Path
    written: int = 0
    skipped: list[Skip] = field(default_factory=list)
    captions_from_source: int = 0  # written items whose caption came from the source (.txt, metadata)
    captions_from_fallback: int = 0  # written items that took ``caption_is_fallback``'s caption

    def skip(self, item: str, reason: str) -> None:
        """List an input left out; text that is not valid Unicode (file names) is shown escaped."""
        self.skipped.append(Skip(display_text(item), display_text(reason)))

    def as_report(self, **extra: Any) -> dict[str, Any]:
        return {"out": display_path(self.out_dir), "written": self.written, "skipped": len(self.skipped),
                "skipped_items": [s.as_item() for s in self.skipped], **extra}


def safe_stem(hint: str, limit: int = 48) -> str:
    """A file-name-safe version of ``hint`` (letters of any script, digits, '-', '_')."""
    stem = _UNSAFE.sub("_", hint.replace("/", "_")).strip("._")
    return stem[:limit] or "image"


@contextlib.contextmanager
def _output_folder(out: Path) -> Iterator[Path]:
    """:func:`atomic_dir` for ``--out``; a file-system error while writing there names ``--out``, in one line."""
    try:
        with atomic_dir(out) as tmp:
            yield tmp
    except OSError as err:
        where = Path(os.path.abspath(err.filename)) if isinstance(err.filename, str) else None
        parent = Path(os.path.abspath(out)).parent
        if where is None or not (where == parent or parent in where.parents):
            raise
        raise OutputError(
            f"cannot write --out {display_path(out)}: {err.strerror or err} (choose a writable folder)"
        ) from None


def import_dataset(config: ImportConfig, out_dir: str | os.PathLike[str], overwrite: bool = False) -> StageResult:
    """Copy a source's valid images with captions into a Data-Juicer-format dataset folder."""
    out = Path(out_dir)
    if config.caption is not None and not is_valid_text(config.caption):
        raise DataError("--caption is not valid Unicode text")
    root = source_root(config.source, config.kind)
    if root is not None:
        check_outputs_apart([("--out", out)], [("source", root)])
    check_output_folder(out, overwrite, marker="import_report.json")
    items = open_source(config.source, config.kind, config.split, config.subset, config.text_column)
    result = StageResult(out)
    with _output_folder(out) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for index, item in enumerate(items):
                text, fallback = _item_caption(config, item)
                problem = item.problem or (item.caption_problem if config.caption is None else None)
                if problem is None and not (text or "").strip() and not config.allow_empty_caption:
                    problem = "empty or missing caption (pass --caption TEXT, add a .txt file, or --allow-empty-caption)"
                if problem is None:
                    try:
                        rel = _write_image(item, tmp / "images", index)
                    except BadImageError as err:
                        problem = str(err)
                if problem is not None:
                    result.skip(item.origin, problem)
                    continue
                meta.write(json.dumps({"text": text or "", "image": [rel]}, ensure_ascii=False) + "\n")
                result.written += 1
                if fallback:
                    result.captions_from_fallback += 1
                elif config.caption is None or config.caption_is_fallback:
                    result.captions_from_source += 1
        # A source path that is not valid Unicode is saved escaped (YAML and JSON files are UTF-8).
        config.model_copy(update={"source": display_text(config.source)}).save_yaml(tmp / "config.yaml")
        atomic_write_json(tmp / "import_report.json", result.as_report(source=display_text(config.source)))
    return result


def _item_caption(config: ImportConfig, item: Any) -> tuple[str | None, bool]:
    """(caption, whether it is the fallback): ``--caption`` for all, or only where the item has none usable."""
    if config.caption is None:
        return item.text, False
    if not config.caption_is_fallback:
        return config.caption, False
    if item.caption_problem is None and (item.text or "").strip():
        return item.text, False
    return config.caption, True


def _copy_regular(src: str, dst: Path) -> None:
    """Copy an image that was just probed; a path swapped for a FIFO or device in between is refused, not read."""
    try:
        reader = open_regular(src, "image")
    except SourceError as err:
        raise BadImageError(str(err)) from None
    with reader, open(dst, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


def _write_image(item: Any, images_dir: Path, index: int) -> str:
    stem = f"{index:06d}-{safe_stem(item.name_hint)}"
    if item.path is not None:
        info = probe_image(item.path)
        suffix = Path(item.path).suffix.lower()
        name = stem + _EXTENSIONS.get(info.format, suffix if suffix and is_valid_text(suffix) else ".img")
        _copy_regular(item.path, images_dir / name)
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
    try:
        handle = open_regular(path, "jsonl", limit=1 << 62)
    except SourceError as err:
        raise DataError(str(err)) from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                yield number, None, f"unreadable line ({type(err).__name__})"
                continue
            except RecursionError:
                yield number, None, "unreadable line (JSON nested too deeply)"
                continue
            yield (number, row, None) if isinstance(row, dict) else (number, None, f"not a JSON object (a {type(row).__name__})")


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
        raise DataError(f"{display_path(source)}: no such file")
    out = Path(out_dir)
    check_outputs_apart([("--out", out)], [("input", source)])
    check_output_folder(out, overwrite, marker="export_report.json")
    result = StageResult(out)
    base = str(source.resolve().parent)
    with _output_folder(out) as tmp:
        (tmp / "images").mkdir()
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file_name", "text"])
        for number, row, problem in read_rows(source):
            where = f"line {number}"
            if row is None:
                result.skip(where, problem or "unreadable")
                continue
            text = row.get(text_key)
            key = image_key or ("image" if "image" in row else "images")
            paths, problem = _row_paths(row.get(key), text, text_key, key)
            if problem is not None:
                result.skip(where, problem)
                continue
            resolved = [resolve_path(path, base) for path in paths]
            # An image inside --out would be deleted when the new folder replaces it: refuse before any swap.
            check_outputs_apart([("--out", out)], [(f"image of {where}", p) for p in resolved if "\x00" not in p])
            for path, full in zip(paths, resolved):
                try:
                    name = _export_image(full, tmp / "images", result.written)
                except BadImageError as err:
                    result.skip(f"{where}: {path}", str(err))
                    continue
                writer.writerow([name, clean_caption(text)])
                result.written += 1
        (tmp / "metadata.csv").write_text(buffer.getvalue(), encoding="utf-8")
        atomic_write_json(tmp / "export_report.json", result.as_report(source=display_path(source)))
    return result


def _row_paths(value: Any, text: Any, text_key: str, key: str) -> tuple[list[str], str | None]:
    """(image paths, None) of a row, or ([], why the row cannot be exported)."""
    paths = [value] if isinstance(value, str) else value
    if not isinstance(text, str) or not paths:
        return [], f"needs '{text_key}' text and '{key}' paths"
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return [], f"'{key}' must be a path or a list of paths, not {type(value).__name__}" + (
            " with other values" if isinstance(value, list) else "")
    if not is_valid_text(text):
        return [], f"'{text_key}' is not valid Unicode (a lone \\udXXX escape)"
    if not all(is_valid_text(p) for p in paths):
        return [], f"a path in '{key}' is not valid Unicode (a lone \\udXXX escape)"
    if any(not p.strip() or Path(p).name in ("", ".", "..") for p in paths):
        return [], f"an empty file name (or '.', '..') in '{key}'"
    return paths, None


def _export_image(path: str, images_dir: Path, index: int) -> str:
    info = probe_image(path)
    stem = f"{index:06d}"
    if info.format == "JPEG" and info.mode == "RGB" and info.orientation == 1:
        name = f"{stem}.jpg"
        _copy_regular(path, images_dir / name)
    else:
        name = f"{stem}.png"
        load_rgb(path).save(images_dir / name, "PNG")
    return f"images/{name}"
