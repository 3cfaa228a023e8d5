"""``special_characters_filter``: keep samples whose share of special characters lies in a range.

Special characters are Data-Juicer's set: ASCII punctuation, digits and
whitespace, a list of symbols and the emoji (``text_helpers.SPECIAL_CHARACTERS``).
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import Filter, RangeParams, register_op
from lorastory.data.ops.text_helpers import SPECIAL_CHARACTERS
from lorastory.data.sample import Sample


class SpecialCharactersParams(RangeParams):
    min_ratio: float = 0.0
    max_ratio: float = 0.25


@register_op("special_characters_filter")
class SpecialCharactersFilter(Filter):
    Params = SpecialCharactersParams
    stats_keys = ("special_char_ratio",)
    per_image = False

    def compute_stats(self, sample: Sample) -> None:
        if "special_char_ratio" not in sample.stats:
            text = sample.text(self.params.text_key)
            special = sum(1 for char in text if char in SPECIAL_CHARACTERS)
            sample.stats["special_char_ratio"] = special / len(text) if text else 0.0

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.in_range(stats["special_char_ratio"], self.params.min_ratio, self.params.max_ratio)
