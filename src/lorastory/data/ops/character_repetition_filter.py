"""``character_repetition_filter``: keep samples whose character n-gram repetition lies in a range.

As in Data-Juicer (after BigScience): count every character n-gram of length
``rep_len``; ``char_rep_ratio`` is the share of all n-gram occurrences taken
by the ``floor(sqrt(distinct n-grams))`` most frequent ones, counting only
n-grams that repeat. 0 for a text shorter than ``rep_len``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from pydantic import PositiveInt

from lorastory.data.ops.base import Filter, RangeParams, register_op
from lorastory.data.sample import Sample


class CharacterRepetitionParams(RangeParams):
    rep_len: PositiveInt = 10
    min_ratio: float = 0.0
    max_ratio: float = 0.5


def char_rep_ratio(text: str, n: int) -> float:
    """Data-Juicer's ``char_rep_ratio`` of ``text`` for n-grams of ``n`` characters."""
    counts = Counter(text[i : i + n] for i in range(len(text) - n + 1))
    if not counts:
        return 0.0
    freqs = sorted(counts.values(), reverse=True)
    n_repeated = min(math.isqrt(len(freqs)), len(freqs) - freqs.count(1))
    total = sum(freqs)
    return sum(freqs[:n_repeated]) / total if total else 0.0


@register_op("character_repetition_filter")
class CharacterRepetitionFilter(Filter):
    Params = CharacterRepetitionParams
    stats_keys = ("char_rep_ratio",)
    per_image = False

    def compute_stats(self, sample: Sample) -> None:
        if "char_rep_ratio" not in sample.stats:
            sample.stats["char_rep_ratio"] = char_rep_ratio(sample.text(self.params.text_key), self.params.rep_len)

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.in_range(stats["char_rep_ratio"], self.params.min_ratio, self.params.max_ratio)
