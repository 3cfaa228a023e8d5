"""``average_line_length_filter``: keep samples whose characters per line (``str.splitlines``) lie in a range.

``avg_line_length`` is the text length (line breaks included) over the
number of lines, 0 for an empty text, as in Data-Juicer.
"""

from __future__ import annotations

import sys
from typing import Any

from lorastory.data.ops.base import Filter, RangeParams, register_op
from lorastory.data.sample import Sample


class LineLengthParams(RangeParams):
    min_len: int = 10
    max_len: int = sys.maxsize


@register_op("average_line_length_filter")
class AverageLineLengthFilter(Filter):
    Params = LineLengthParams
    stats_keys = ("avg_line_length",)
    per_image = False

    def compute_stats(self, sample: Sample) -> None:
        if "avg_line_length" not in sample.stats:
            text = sample.text(self.params.text_key)
            lines = text.splitlines()
            sample.stats["avg_line_length"] = len(text) / len(lines) if lines else 0.0

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.in_range(stats["avg_line_length"], self.params.min_len, self.params.max_len)
