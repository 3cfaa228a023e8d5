"""One dataset row as the operators see it.

A :class:`Sample` wraps the original JSON object of a Data-Juicer-format row,
resolves its image paths, caches image headers so several operators never
read the same file twice, and collects the stats the operators compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from lorastory.images import ImageInfo, load_rgb, probe_image
from lorastory.errors import BadImageError, DataError

STATS_FIELD = "__dj__stats__"
#: Folder beside the export where mappers write the images they make (Data-Juicer's name for it).
PRODUCED_DIR_NAME = "__dj__produced_data__"


@dataclass(frozen=True)
class DatasetKeys:
    """Where a row keeps its text and images (Data-Juicer's global keys)."""

    text_key: str = "text"
    image_key: str = "images"
    image_special_token: str = "<__dj__image>"
    base_dir: str = "."
    max_pixels: int | None = None
    #: Where mappers write new images: ``<export folder>/__dj__produced_data__`` (None: no mapper may write).
    produced_dir: str | None = None


@dataclass
class Sample:
    """A row plus the per-sample cache and stats of one pass through the operators."""

    row: dict[str, Any]
    keys: DatasetKeys
    stats: dict[str, Any] = field(default_factory=dict)
    _infos: dict[str, ImageInfo] = field(default_factory=dict, repr=False)
    _paths: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def text(self, key: str | None = None) -> str:
        """The row's text under ``key`` (the recipe's text key by default)."""
        value = self.row.get(key or self.keys.text_key)
        if value is None:
            raise DataError(f"no '{key or self.keys.text_key}' field")
        if not isinstance(value, str):
            raise DataError(f"'{key or self.keys.text_key}' is {type(value).__name__}, not text")
        return value

    def image_paths(self, key: str | None = None) -> list[str]:
        """The row's image paths, resolved against the dataset folder (computed once per key)."""
        name = key or self.keys.image_key
        paths = self._paths.get(name)
        if paths is None:
            value = self.row.get(name)
            if value is None:
                value = []
            elif isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise DataError(f"'{name}' must be a list of paths")
            paths = self._paths[name] = [resolve_path(p, self.keys.base_dir) for p in value]
        return paths

    def set_image_paths(self, paths: list[str], key: str | None = None) -> None:
        """Replace the row's image paths (a mapper wrote new images); later ops read the new ones."""
        name = key or self.keys.image_key
        self.row[name] = list(paths)
        self._paths.pop(name, None)

    def image_info(self, path: str) -> ImageInfo:
        """Header facts of one image (cached); raises :class:`BadImageError` naming the file."""
        info = self._infos.get(path)
        if info is None:
            try:
                info = probe_image(path, self.keys.max_pixels)
            except BadImageError as err:
                raise BadImageError(f"{path}: {err}") from None
            self._infos[path] = info
        return info

    def image_rgb(self, path: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
        """The decoded image as RGB; raises :class:`BadImageError` naming the file."""
        try:
            return load_rgb(path, self.keys.max_pixels, draft_size)
        except BadImageError as err:
            raise BadImageError(f"{path}: {err}") from None


def resolve_path(path: str, base_dir: str) -> str:
    """An absolute path stays; a relative one is taken from the dataset's folder."""
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded) or "://" in expanded:
        return expanded
    return os.path.normpath(os.path.join(base_dir, expanded))
