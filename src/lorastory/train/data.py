"""Training items: read a training folder and turn images into model-ready tensors.

A training folder is what ``lorastory data export-csv`` writes
(``metadata.csv`` with ``file_name,text``) or a folder with a Data-Juicer /
imagefolder ``metadata.jsonl``. Bad rows and unreadable images are skipped
with a warning listing them, never silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lorastory.captions import clean_caption
from lorastory.images import load_rgb, probe_image
from lorastory.errors import BadImageError, DataError
from lorastory.fileio import display_path, display_text, is_valid_text
from lorastory.tables import csv_rows

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainItem:
    """One image and its caption; ``size`` is (width, height) as displayed."""

    path: str
    caption: str
    size: tuple[int, int]


@dataclass(frozen=True)
class Placement:
    """How an item becomes a training tensor: target size, crop, flip."""

    target: tuple[int, int]  # (width, height)
    crop_top_left: tuple[int, int]  # (top, left) in the resized image
    resized: tuple[int, int]  # (width, height) before cropping
    flip: bool = False


def metadata_file(folder: str | Path) -> Path:
    """The training folder's ``metadata.csv`` (preferred) or ``metadata.jsonl``."""
    root = Path(folder)
    for name in ("metadata.csv", "metadata.jsonl"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no metadata.csv or metadata.jsonl (make one with 'lorastory data export-csv')")


def read_train_folder(folder: str | Path) -> tuple[list[TrainItem], list[str]]:
    """Items of a training folder and the problems of the rows that were skipped.

    A row of the wrong shape (a JSON line that is not an object, a file name that is not a
    non-empty string, a caption that is not valid Unicode) or whose image cannot be used is
    skipped with its line number and the reason; only a folder with no usable row is an error.
    """
    root = Path(folder)
    metadata = metadata_file(root)
    rows = _csv_rows(metadata) if metadata.suffix == ".csv" else _jsonl_rows(metadata)
    items: list[TrainItem] = []
    problems: list[str] = []
    for where, file_name, caption in rows:
        if file_name is None:
            problems.append(f"{where}: {caption}")
            continue
        reason = _row_problem(file_name, caption)
        if reason:
            problems.append(f"{where}: {reason}")
            continue
        path = Path(file_name) if Path(file_name).is_absolute() else root / file_name
        try:
            info = probe_image(path)
        except BadImageError as err:
            problems.append(f"{where}: {display_path(path)}: {err}")
            continue
        items.append(TrainItem(str(path), clean_caption(caption), (info.width, info.height)))
    if not items:
        raise DataError(f"{display_path(root)}: no usable training images"
                        + (f" ({display_text(problems[0])})" if problems else ""))
    return items, problems


def _row_problem(file_name: str, caption: str) -> str | None:
    """Why a row's file name or caption cannot be used, or None."""
    if not file_name.strip() or Path(file_name).name in ("", ".", ".."):
        return f"file name {file_name!r} names no file"
    if not is_valid_text(file_name):
        return f"file name {display_text(file_name)} is not valid UTF-8"
    if "\x00" in file_name:
        return "file name holds a NUL byte"
    if not is_valid_text(caption):
        return "caption is not valid UTF-8 (undecodable bytes or lone surrogates)"
    if "\x00" in caption:
        return "caption holds a NUL byte"
    return None


def _csv_rows(path: Path):
    # Undecodable bytes become surrogate escapes: the rows holding them are skipped, not the file.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    for where, row, problem in csv_rows(text, path.name, required=("file_name", "text")):
        yield (where, None, problem) if row is None else (where, row["file_name"], row["text"])


def _jsonl_rows(path: Path):
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                yield where, None, "not a JSON line"
                continue
            if not isinstance(row, dict):
                yield where, None, f"a JSON {type(row).__name__}, not an object"
                continue
            image = row.get("file_name") or row.get("image") or row.get("images")
            image = image[0] if isinstance(image, list) and image else image
            text = row.get("text", "")
            if not isinstance(image, str) or not isinstance(text, str):
                yield where, None, "needs 'text' and an image path"
                continue
            yield where, image, text


def place(item: TrainItem, target: tuple[int, int], center_crop: bool, flip: bool, rng: random.Random) -> Placement:
    """Resize to cover ``target`` keeping the aspect ratio, then crop (centre or random)."""
    width, height = item.size
    tw, th = target
    scale = max(tw / width, th / height)
    rw, rh = max(tw, round(width * scale)), max(th, round(height * scale))
    if center_crop:
        top, left = (rh - th) // 2, (rw - tw) // 2
    else:
        top, left = rng.randint(0, rh - th), rng.randint(0, rw - tw)
    return Placement(target, (top, left), (rw, rh), flip)


def load_pixels(item: TrainItem, placement: Placement) -> torch.Tensor:
    """The placed image as a (3, H, W) float tensor in [-1, 1]."""
    import numpy as np
    import torch

    image = load_rgb(item.path)
    image = image.resize(placement.resized, Image.BICUBIC, reducing_gap=3.0)
    top, left = placement.crop_top_left
    tw, th = placement.target
    image = image.crop((left, top, left + tw, top + th))
    if placement.flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
