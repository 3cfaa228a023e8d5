"""``image_size_filter``: keep samples whose image files' sizes in bytes lie in a range."""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import field_validator

from lorastory.data.ops.base import AnyOrAll, Filter, OpParams, combine, register_op
from lorastory.data.sample import Sample

_UNITS = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60, "z": 70, "y": 80}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]?)(i?b)?\s*$", re.IGNORECASE)


def size_to_bytes(size: str | int | float) -> int:
    """Parse "6KB", "2 MiB", "1.5MB" or a plain number of bytes.

    Units are binary as in Data-Juicer (KB = KiB = 1024 bytes). Unlike
    Data-Juicer, which drops the decimal point ("1.5MB" becomes 15 MiB), a
    fraction means what it says.
    """
    if isinstance(size, bool):
        raise ValueError(f"not a size: {size!r}")
    if isinstance(size, (int, float)):
        if not math.isfinite(size):
            raise ValueError(f"not a size: {size!r}")
        if size < 0:
            raise ValueError(f"size must not be negative: {size!r}")
        return int(size)
    match = _SIZE.match(size)
    if not match:
        raise ValueError(f"not a size: {size!r} (write e.g. '6KB', '2MB', '1.5GiB')")
    number, prefix, _ = match.groups()
    return int(float(number) * (1 << _UNITS[prefix.lower()]))


class ImageSizeParams(OpParams):
    min_size: str = "0"
    max_size: str = "1TB"
    any_or_all: AnyOrAll = "any"

    def ranges(self) -> list[tuple[str, float, float]]:
        return [("size", float(size_to_bytes(self.min_size)), float(size_to_bytes(self.max_size)))]

    @field_validator("min_size", "max_size", mode="before")
    @classmethod
    def _parseable(cls, value: Any) -> str:
        size_to_bytes(value)
        return str(value)


@register_op("image_size_filter")
class ImageSizeFilter(Filter):
    """File size on disk, from ``stat`` (the image is not decoded)."""

    Params = ImageSizeParams
    stats_keys = ("image_sizes",)

    def __init__(self, params: ImageSizeParams) -> None:
        super().__init__(params)
        self.min_bytes = size_to_bytes(params.min_size)
        self.max_bytes = size_to_bytes(params.max_size)

    def compute_stats(self, sample: Sample) -> None:
        if "image_sizes" in sample.stats:
            return
        paths = sample.image_paths(self.params.image_key)
        sample.stats["image_sizes"] = [sample.image_info(p).file_size for p in paths]

    def keep(self, stats: dict[str, Any]) -> bool:
        lo, hi = self.min_bytes, self.max_bytes
        return combine([lo <= s <= hi for s in stats["image_sizes"]], self.params.any_or_all)
