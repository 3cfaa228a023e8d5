"""``topk_specified_field_selector``: keep the rows with the largest (or smallest) value of a field.

Data-Juicer 1.6.1's selector: ``field_key`` is a dotted path (``meta.score``,
``__dj__stats__.aesthetics_score``; stats computed earlier in the run are
there); ``topk`` and/or ``top_ratio`` (of the row count; the smaller wins) say
how many rows stay; ``reverse: true`` (the default) keeps the largest. Rows come
out in rank order, as Data-Juicer writes them. Values are read as Data-Juicer's
``stats_to_number`` reads them (numeric text as a number, a list as its mean, a
missing value last); Data-Juicer does that only for nested keys and stops with
a type error on a non-numeric top-level field, which here sorts last instead.
With fewer than two rows, no ``field_key`` or neither bound, every row stays.
"""

from __future__ import annotations

import heapq
from typing import Any

from pydantic import Field

from lorastory.data.ops.base import OpParams, register_op
from lorastory.data.ops.dataset_op import NOT_SELECTED, DatasetOp, field_value, stats_to_number
from lorastory.data.sample import Sample


class TopkParams(OpParams):
    field_key: str = ""
    top_ratio: float | None = Field(default=None, ge=0, le=1)
    topk: int | None = Field(default=None, gt=0)
    reverse: bool = True


@register_op("topk_specified_field_selector")
class TopkSpecifiedFieldSelector(DatasetOp):
    """Keeps the top k (or top ratio) rows by a field's value, in rank order."""

    Params = TopkParams
    drop_detail = NOT_SELECTED

    def compute_hash(self, sample: Sample) -> float:
        if not self.params.field_key:
            return 0.0
        return stats_to_number(field_value(sample, self.params.field_key), self.params.reverse)

    def select(self, keys: list[Any]) -> list[int]:
        p = self.params
        everything = list(range(len(keys)))
        if len(keys) <= 1 or not p.field_key:
            return everything
        if not p.top_ratio:
            if not p.topk:
                return everything
            number: float = p.topk
        else:
            number = p.top_ratio * len(keys)
            if p.topk and p.topk < number:
                number = p.topk
        pick = heapq.nlargest if p.reverse else heapq.nsmallest
        return pick(int(number), everything, keys.__getitem__)
