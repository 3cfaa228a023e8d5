"""``maximum_line_length_filter``: keep samples whose longest line (``str.splitlines``) has a length in a range."""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.average_line_length_filter import LineLengthParams
from lorastory.data.ops.base import Filter, register_op
from lorastory.data.sample import Sample


@register_op("maximum_line_length_filter")
class MaximumLineLengthFilter(Filter):
    Params = LineLengthParams
    stats_keys = ("max_line_length",)
    per_image = False

    def compute_stats(self, sample: Sample) -> None:
        if "max_line_length" not in sample.stats:
            lines = sample.text(self.params.text_key).splitlines()
            sample.stats["max_line_length"] = max(map(len, lines)) if lines else 0

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.in_range(stats["max_line_length"], self.params.min_len, self.params.max_len)
