"""``image_aspect_ratio_filter``: keep samples whose images' width/height lies in a range."""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import AnyOrAll, Filter, OpParams, combine, register_op
from lorastory.data.sample import Sample


class ImageAspectRatioParams(OpParams):
    min_ratio: float = 0.333
    max_ratio: float = 3.0
    any_or_all: AnyOrAll = "any"


@register_op("image_aspect_ratio_filter")
class ImageAspectRatioFilter(Filter):
    """Ratio = width / height of the displayed image, from the header only."""

    Params = ImageAspectRatioParams
    stats_keys = ("aspect_ratios",)

    def compute_stats(self, sample: Sample) -> None:
        if "aspect_ratios" in sample.stats:
            return
        infos = [sample.image_info(p) for p in sample.image_paths(self.params.image_key)]
        sample.stats["aspect_ratios"] = [i.width / i.height for i in infos]

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine([p.min_ratio <= r <= p.max_ratio for r in stats["aspect_ratios"]], p.any_or_all)
