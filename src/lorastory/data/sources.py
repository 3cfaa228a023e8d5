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

import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from lorastory.images import is_image_file
from lorastory.errors import DataError, MissingExtraError, SourceError, first_line
from lorastory.hub import looks_like_hub_id
from lorastory.tables import csv_rows
from lorastory.fileio import display_path, display_text, is_valid_text, lies_within, open_regular_file

SourceKind = Literal["auto", "folder", "hf", "modelscope"]
TEXT_COLUMNS = ("text", "caption", "prompt", "captions", "sentence")
_OUTPUT_MARKERS = ("import_report.json", "export_report.json")
MAX_CAPTION_BYTES = 1 << 20  # a caption file larger than this is not a caption
MAX_METADATA_BYTES = 1 << 30
# A csv field this large is still read (a long caption); the whole file is in memory anyway.
_CSV_FIELD_LIMIT = MAX_METADATA_BYTES
# A line inside a quoted csv field that looks like a row of its own ("b.png,caption"): an unterminated quote?


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
    if kind == "folder" or (kind == "auto" and not looks_like_hub_id(src)):
        raise SourceError(f"{src}: no such file or folder")
    return _hf_items(_load_hub_dataset(src, split, subset), src, text_column)


def source_root(src: str, kind: SourceKind = "auto") -> Path | None:
    """The local folder an import reads its images from (a metadata file's folder), or None for a hub dataset.

    Used to refuse an ``--out`` that is, contains or lies inside the source.
    """
    if src.startswith(("modelscope:", "ms:", "hf:")) or kind == "modelscope":
        return None
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists() or path.is_symlink():
        return path.parent
    return None


def open_regular(path: str | os.PathLike[str], what: str, limit: int = MAX_METADATA_BYTES) -> BinaryIO:
    """Open a regular file of at most ``limit`` bytes for reading (:func:`lorastory.fileio.open_regular_file`:
    FIFOs, devices and folders refused without blocking); problems name ``what`` and the file."""
    shown = display_path(path)
    try:
        handle, size = open_regular_file(path)
    except DataError as err:
        raise SourceError(f"{what} {shown}: {err}") from None
    if size > limit:
        handle.close()
        raise SourceError(f"{what} {shown} is {size:,} bytes, over the {limit:,}-byte limit")
    return handle


def read_regular_bytes(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    with open_regular(path, what, limit) as handle:
        return handle.read(limit + 1)[:limit]


# --- folders -------------------------------------------------------------------------


def _folder_items(path: Path, text_column: str | None) -> Iterator[SourceItem]:
    if path.is_file():
        if path.name.endswith((".jsonl", ".csv")):
            return _metadata_items(path, text_column)
        raise SourceError(f"{display_path(path)}: expected a folder, metadata.jsonl or metadata.csv")
    if not path.is_dir():
        raise SourceError(f"{display_path(path)}: not a regular file or folder (a pipe or device?)")
    for name in ("metadata.jsonl", "metadata.csv"):
        if (path / name).is_file():
            return _metadata_items(path / name, text_column)
    return _image_folder_items(path)


def _image_folder_items(root: Path) -> Iterator[SourceItem]:
    files, others = _folder_files(root)
    if not files:
        found = f"; {len(others)} other files such as {display_path(others[0].name)}" if others else ""
        raise SourceError(f"{display_path(root)}: no images found (looked for .jpg, .png, .webp, ...{found})")
    taken = {file.with_suffix(".txt") for file in files}
    listed = [(file, True) for file in files] + [(file, False) for file in others if file not in taken]
    for file, is_image in sorted(listed, key=lambda item: item[0].relative_to(root).as_posix()):
        rel = file.relative_to(root).as_posix()
        if not is_image:
            yield SourceItem(rel, rel, None, problem=_not_taken_reason(file))
            continue
        caption, problem = _read_caption(file.with_suffix(".txt"), root)
        yield SourceItem(rel, Path(rel).with_suffix("").as_posix(), caption, path=str(file), caption_problem=problem)


def _not_taken_reason(file: Path) -> str:
    if file.suffix.lower() == ".txt":
        return "caption file with no image of the same name"
    return f"not an image type lorastory imports: {file.suffix.lower() or 'no extension'}"


def _folder_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(image files, every other file) under ``root``, each in a stable order.

    Hidden files and folders are left out, and so are folders lorastory wrote:
    an earlier ``--out`` inside the source folder holds copies, not new images.
    """
    images, others = [], []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and not _is_output_dir(Path(folder, d))]
        for name in names:
            if not name.startswith("."):
                (images if is_image_file(Path(name)) else others).append(Path(folder, name))
    def order(path: Path) -> str:
        return path.relative_to(root).as_posix()

    return sorted(images, key=order), sorted(others, key=order)


def _is_output_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _OUTPUT_MARKERS)


def _read_caption(path: Path, root: Path) -> tuple[str | None, str | None]:
    """(caption, problem) of an image's ``.txt``; a link leading out of the source folder is not read."""
    if not os.path.lexists(path):
        return None, None
    name = display_text(path.name)
    if not lies_within(path, root):
        return None, f"caption {name} is a link to a file outside the source folder; it is not read"
    try:
        raw = read_regular_bytes(path, MAX_CAPTION_BYTES, "caption")
    except SourceError as err:
        return None, str(err)
    try:
        return raw.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError as err:
        return None, f"caption {name} is not UTF-8 ({err.reason} at byte {err.start})"


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
            origin = f"{where}: {display_text(rel)}"
            problem = _path_problem(rel)
            if problem is not None:
                yield SourceItem(origin, where, text, problem=problem)
                continue
            file = Path(rel).expanduser()
            file = file if file.is_absolute() else root / file
            yield SourceItem(origin, Path(rel).with_suffix("").as_posix(), text, path=str(file), caption_problem=text_problem)


def _path_problem(rel: str) -> str | None:
    """Why an image path written in a metadata file cannot be a file name, or None."""
    if not rel.strip() or Path(rel).name in ("", ".", ".."):
        return "empty file name (or '.', '..')"
    if "\x00" in rel:
        return "the file name contains a NUL byte"
    if not is_valid_text(rel):
        return "the file name is not valid Unicode (a lone \\udXXX escape)"
    return None


def _read_jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    with open_regular(path, "metadata file", limit=1 << 62) as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{display_text(path.name)} line {number}"
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
            except RecursionError:
                yield where, {}, "JSON nested too deeply"
                continue
            if not isinstance(row, dict):
                yield where, {}, f"not a JSON object (a {type(row).__name__})"
                continue
            yield where, row, None


def _read_csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    shown = display_path(path)
    try:
        text = read_regular_bytes(path, MAX_METADATA_BYTES, "metadata file").decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(f"{shown}: not UTF-8 ({err.reason} at byte {err.start}); save it as UTF-8") from None
    try:
        for where, row, problem in csv_rows(text, display_text(path.name)):
            yield where, row or {}, problem
    except DataError as err:  # the header: which column is meant cannot be told
        raise SourceError(str(err)) from None


def _pick_text(row: dict[str, Any], text_column: str | None) -> tuple[str | None, str | None]:
    columns = (text_column,) if text_column else TEXT_COLUMNS
    for column in columns:
        value = row.get(column)
        if value is None:
            continue
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[0]
        if isinstance(value, str):
            if not is_valid_text(value):
                return None, f"caption '{column}' is not valid Unicode (a lone \\udXXX escape)"
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
        raise SourceError(
            f"cannot load Hugging Face dataset '{name}' ({first_line(err, 300)}). Offline? Download it where you have "
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
        raise SourceError(f"cannot load ModelScope dataset '{name}' ({first_line(err, 300)})") from None
    for index, row in enumerate(dataset):
        text, problem = _pick_text(row, text_column)
        value = row.get("image", row.get("images"))
        if isinstance(value, list):
            value = value[0] if value else None
        yield _item_from_value(f"modelscope:{name}[{index}]", f"{index:06d}", text, value, problem)
