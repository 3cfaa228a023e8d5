"""Import sources: where images and captions come from.

Each source yields :class:`SourceItem` records in a stable order; the
importer (:mod:`lorastory.data.dataset`) validates and writes them. Sources:

- a folder of images, with optional same-name ``.txt`` captions;
- a folder (or file) with ``metadata.jsonl`` / ``metadata.csv`` in the Hugging
  Face imagefolder convention (``file_name`` + a text column) or in
  Data-Juicer's format (``text`` + ``image``/``images`` list);
- a Hugging Face ``datasets`` dataset saved with ``save_to_disk``, or a hub id;
- a ModelScope dataset id (``modelscope:owner/name``; needs the extra).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lorastory.data.images import is_image_file
from lorastory.errors import MissingExtraError, SourceError

SourceKind = Literal["auto", "folder", "hf", "modelscope"]
TEXT_COLUMNS = ("text", "caption", "prompt", "captions", "sentence")
_OUTPUT_MARKERS = ("import_report.json", "export_report.json")


@dataclass
class SourceItem:
    """One image (as a path or as bytes) and its caption, before validation.

    ``problem`` makes the item unusable; ``caption_problem`` only makes its own
    caption unusable, which does not matter when one caption is given for all.
    """

    origin: str
    name_hint: str
    text: str | None
    path: str | None = None
    data: Callable[[], bytes] | None = None
    problem: str | None = None
    caption_problem: str | None = None


def open_source(
    src: str,
    kind: SourceKind = "auto",
    split: str = "train",
    subset: str | None = None,
    text_column: str | None = None,
) -> Iterator[SourceItem]:
    """Items of ``src``; ``kind`` forces a source type, ``auto`` guesses from the string."""
    if src.startswith(("modelscope:", "ms:")):
        kind, src = "modelscope", src.split(":", 1)[1]
    elif src.startswith("hf:"):
        kind, src = "hf", src[3:]
    if kind == "modelscope":
        return _modelscope_items(src, split, subset, text_column)
    path = Path(src).expanduser()
    if path.exists():
        if _is_saved_hf_dataset(path):
            return _hf_items(_load_from_disk(path, split), src, text_column)
        return _folder_items(path, text_column)
    if kind == "folder" or (kind == "auto" and not _looks_like_hub_id(src)):
        raise SourceError(f"{src}: no such file or folder")
    return _hf_items(_load_hub_dataset(src, split, subset), src, text_column)


def _looks_like_hub_id(src: str) -> bool:
    parts = src.split("/")
    return len(parts) == 2 and all(parts) and not src.startswith((".", "/"))


# --- folders -------------------------------------------------------------------------


def _folder_items(path: Path, text_column: str | None) -> Iterator[SourceItem]:
    if path.is_file():
        if path.name.endswith((".jsonl", ".csv")):
            return _metadata_items(path, text_column)
        raise SourceError(f"{path}: expected a folder, metadata.jsonl or metadata.csv")
    for name in ("metadata.jsonl", "metadata.csv"):
        if (path / name).is_file():
            return _metadata_items(path / name, text_column)
    return _image_folder_items(path)


def _image_folder_items(root: Path) -> Iterator[SourceItem]:
    files = _image_files(root)
    if not files:
        raise SourceError(f"{root}: no images found (looked for .jpg, .png, .webp, ...)")
    for file in files:
        caption, problem = _read_caption(file.with_suffix(".txt"))
        rel = file.relative_to(root).as_posix()
        yield SourceItem(rel, Path(rel).with_suffix("").as_posix(), caption, path=str(file), caption_problem=problem)


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root`` in a stable order.

    Hidden files and folders are left out, and so are folders lorastory wrote:
    an earlier ``--out`` inside the source folder holds copies, not new images.
    """
    found = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and not _is_output_dir(Path(folder, d))]
        found.extend(Path(folder, n) for n in names if not n.startswith(".") and is_image_file(Path(n)))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _is_output_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _OUTPUT_MARKERS)


def _read_caption(path: Path) -> tuple[str | None, str | None]:
    if not path.is_file():
        return None, None
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError as err:
        return None, f"caption {path.name} is not UTF-8 ({err.reason} at byte {err.start})"


def _metadata_items(meta: Path, text_column: str | None) -> Iterator[SourceItem]:
    root = meta.parent
    rows = _read_jsonl_rows(meta) if meta.suffix == ".jsonl" else _read_csv_rows(meta)
    for where, row, problem in rows:
        if problem is not None:
            yield SourceItem(where, where, None, problem=problem)
            continue
        text, text_problem = _pick_text(row, text_column)
        images = row.get("file_name")
        if images is None:
            images = row.get("images", row.get("image"))
        if isinstance(images, str):
            images = [images]
        if not images or not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            yield SourceItem(where, where, text, problem="no image path (expected 'file_name', 'image' or 'images')")
            continue
        for rel in images:
            file = Path(rel).expanduser()
            file = file if file.is_absolute() else root / file
            yield SourceItem(
                f"{where}: {rel}", Path(rel).with_suffix("").as_posix(), text, path=str(file), caption_problem=text_problem
            )


def _read_jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path.name} line {number}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield where, {}, "line is not UTF-8"
                continue
            except json.JSONDecodeError as err:
                yield where, {}, f"not valid JSON ({err.msg})"
                continue
            if not isinstance(row, dict):
                yield where, {}, "not a JSON object"
                continue
            yield where, row, None


def _read_csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "file_name" not in reader.fieldnames:
        raise SourceError(f"{path}: needs a 'file_name' column (found {reader.fieldnames or 'none'})")
    for number, row in enumerate(reader, start=2):
        yield f"{path.name} line {number}", dict(row), None


def _pick_text(row: dict[str, Any], text_column: str | None) -> tuple[str | None, str | None]:
    columns = (text_column,) if text_column else TEXT_COLUMNS
    for column in columns:
        value = row.get(column)
        if value is None:
            continue
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[0]
        if isinstance(value, str):
            return value.strip(), None
        return None, f"caption '{column}' is {type(value).__name__}, not text"
    return None, None


# --- Hugging Face datasets -------------------------------------------------------------


def _require_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingExtraError("datasets", "hf", "Importing a Hugging Face dataset") from None
    return datasets


def _is_saved_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _load_from_disk(path: Path, split: str) -> Any:
    datasets = _require_datasets()
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SourceError(f"{path}: no split '{split}' (splits: {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded


def _load_hub_dataset(name: str, split: str, subset: str | None) -> Any:
    datasets = _require_datasets()
    try:
        return datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # hub, network and format errors all end the import the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceError(
            f"cannot load Hugging Face dataset '{name}' ({first}). Offline? Download it where you have "
            f"network (huggingface-cli download --repo-type dataset {name}) or save it with "
            f"Dataset.save_to_disk and import that folder; for ModelScope use 'modelscope:{name}'"
        ) from None


def _hf_items(dataset: Any, origin: str, text_column: str | None) -> Iterator[SourceItem]:
    datasets = _require_datasets()
    image_columns = [n for n, f in dataset.features.items() if isinstance(f, datasets.Image)]
    if not image_columns:
        raise SourceError(f"{origin}: no image column (features: {', '.join(dataset.features)})")
    column = image_columns[0]
    dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if text_column and text_column not in dataset.features:
        raise SourceError(f"{origin}: no column '{text_column}' (columns: {', '.join(dataset.features)})")
    for index, row in enumerate(dataset):
        text, problem = _pick_text(row, text_column)
        yield _item_from_value(f"{origin}[{index}]", f"{index:06d}", text, row[column], problem)


def _item_from_value(
    origin: str, hint: str, text: str | None, value: Any, caption_problem: str | None
) -> SourceItem:
    """An item from whatever a dataset row holds: a path, bytes, {'bytes','path'} or a PIL image."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return SourceItem(origin, hint, text, data=lambda d=data: d, caption_problem=caption_problem)
        value = path
    if isinstance(value, (bytes, bytearray)):
        return SourceItem(origin, hint, text, data=lambda d=bytes(value): d, caption_problem=caption_problem)
    if isinstance(value, str) and value:
        return SourceItem(origin, hint, text, path=value, caption_problem=caption_problem)
    if hasattr(value, "save"):  # a decoded PIL image: keep its original file if it has one
        filename = getattr(value, "filename", "")
        if filename and os.path.isfile(filename):
            return SourceItem(origin, hint, text, path=filename, caption_problem=caption_problem)
        return SourceItem(origin, hint, text, data=lambda im=value: _encode_pil(im), caption_problem=caption_problem)
    return SourceItem(origin, hint, text, problem="no image in this row", caption_problem=caption_problem)


def _encode_pil(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: never degrade what we were given
    return buffer.getvalue()


# --- ModelScope -----------------------------------------------------------------------


def _modelscope_items(name: str, split: str, subset: str | None, text_column: str | None) -> Iterator[SourceItem]:
    try:
        from modelscope.msdatasets import MsDataset
    except ImportError:
        raise MissingExtraError("modelscope", "modelscope", "Importing a ModelScope dataset") from None
    try:
        dataset = MsDataset.load(name, subset_name=subset or "default", split=split)
    except Exception as err:  # network, auth and format errors all end the import the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceError(f"cannot load ModelScope dataset '{name}' ({first})") from None
    for index, row in enumerate(dataset):
        text, problem = _pick_text(row, text_column)
        value = row.get("image", row.get("images"))
        if isinstance(value, list):
            value = value[0] if value else None
        yield _item_from_value(f"modelscope:{name}[{index}]", f"{index:06d}", text, value, problem)
