"""``text_length_filter``: keep samples whose text length (in characters) lies in a range."""

from __future__ import annotations

import sys
from typing import Any

from lorastory.data.ops.base import Filter, OpParams, register_op
from lorastory.data.sample import Sample


class TextLengthParams(OpParams):
    min_len: int = 10
    max_len: int = sys.maxsize


@register_op("text_length_filter")
class TextLengthFilter(Filter):
    """Length counts Unicode code points, so one Chinese character is one."""

    Params = TextLengthParams
    stats_keys = ("text_len",)
    per_image = False

    def compute_stats(self, sample: Sample) -> None:
        if "text_len" not in sample.stats:
            sample.stats["text_len"] = len(sample.text(self.params.text_key))

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.min_len <= stats["text_len"] <= self.params.max_len
