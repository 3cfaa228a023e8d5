"""``suffix_filter``: keep samples whose source file has one of the given suffixes.

Data-Juicer records each row's file suffix (``__dj__suffix__``); a lorastory
dataset is one ``.jsonl`` file, so every row's suffix is ``.jsonl``: the op
keeps all rows when ``.jsonl`` is listed (or nothing is), none otherwise
(the reverse with ``reversed_range``). No stats.
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import Filter, RangeParams, register_op
from lorastory.data.sample import Sample

DATASET_SUFFIX = ".jsonl"


class SuffixParams(RangeParams):
    suffixes: str | list[str] | None = []


@register_op("suffix_filter")
class SuffixFilter(Filter):
    Params = SuffixParams
    stats_keys = ()
    per_image = False

    def compute_stats(self, sample: Sample) -> None:
        return None

    def keep(self, stats: dict[str, Any]) -> bool:
        suffixes = self.params.suffixes
        suffixes = [suffixes] if isinstance(suffixes, str) else suffixes or []
        if not suffixes:
            return True  # Data-Juicer ignores reversed_range here
        return (DATASET_SUFFIX in suffixes) != self.params.reversed_range
