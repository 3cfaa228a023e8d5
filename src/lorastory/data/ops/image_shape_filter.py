"""``image_shape_filter``: keep samples whose images' width and height lie in ranges."""

from __future__ import annotations

import sys
from typing import Any

from lorastory.data.ops.base import AnyOrAll, Filter, OpParams, combine, register_op
from lorastory.data.sample import Sample


class ImageShapeParams(OpParams):
    min_width: int = 1
    max_width: int = sys.maxsize
    min_height: int = 1
    max_height: int = sys.maxsize
    any_or_all: AnyOrAll = "any"


@register_op("image_shape_filter")
class ImageShapeFilter(Filter):
    """Width and height as displayed, read from the file header (no decode)."""

    Params = ImageShapeParams
    stats_keys = ("image_width", "image_height")

    def compute_stats(self, sample: Sample) -> None:
        if "image_width" in sample.stats and "image_height" in sample.stats:
            return
        infos = [sample.image_info(p) for p in sample.image_paths(self.params.image_key)]
        sample.stats["image_width"] = [i.width for i in infos]
        sample.stats["image_height"] = [i.height for i in infos]

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine(
            [
                p.min_width <= w <= p.max_width and p.min_height <= h <= p.max_height
                for w, h in zip(stats["image_width"], stats["image_height"])
            ],
            p.any_or_all,
        )
