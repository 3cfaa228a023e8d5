"""``range_specified_field_selector``: keep the rows ranked between two bounds by a field's value.

Data-Juicer 1.6.1's selector and arithmetic: rows are ranked by the value at
the dotted ``field_key`` (read with ``stats_to_number``); the lower bound is the
larger of ``int(lower_percentile * n)`` and ``lower_rank``, the upper the
smaller of ``int(upper_percentile * n)`` and ``upper_rank``; the rows ranked in
between stay, largest first, as Data-Juicer writes them. Unless a lower and an
upper bound are both given (or with fewer than two rows, or no ``field_key``),
every row stays.
"""

from __future__ import annotations

import heapq
from typing import Any

from pydantic import Field

from lorastory.data.ops.base import OpParams, register_op
from lorastory.data.ops.dataset_op import NOT_SELECTED, DatasetOp, field_value, stats_to_number
from lorastory.data.sample import Sample


class RangeSelectorParams(OpParams):
    field_key: str = ""
    lower_percentile: float | None = Field(default=None, ge=0, le=1)
    upper_percentile: float | None = Field(default=None, ge=0, le=1)
    lower_rank: int | None = Field(default=None, gt=0)
    upper_rank: int | None = Field(default=None, gt=0)


@register_op("range_specified_field_selector")
class RangeSpecifiedFieldSelector(DatasetOp):
    """Keeps rows ranked between the lower and upper bound (percentiles or ranks) of a field's value."""

    Params = RangeSelectorParams
    drop_detail = NOT_SELECTED

    def compute_hash(self, sample: Sample) -> float:
        return stats_to_number(field_value(sample, self.params.field_key)) if self.params.field_key else 0.0

    def select(self, keys: list[Any]) -> list[int]:
        p = self.params
        n = len(keys)
        everything = list(range(n))
        if n <= 1 or not p.field_key:
            return everything
        if (p.lower_percentile is None and p.lower_rank is None) or (p.upper_percentile is None and p.upper_rank is None):
            return everything
        lower, upper = 0, n
        if p.lower_percentile is not None:
            lower = int(p.lower_percentile * n)
        if p.lower_rank is not None:
            lower = max(lower, p.lower_rank)
        if p.upper_percentile is not None:
            upper = int(p.upper_percentile * n)
        if p.upper_rank is not None:
            upper = min(upper, p.upper_rank)
        upper = max(lower, upper)
        smallest = heapq.nsmallest(int(upper), everything, keys.__getitem__)
        sub = [keys[i] for i in smallest]
        return [smallest[i] for i in heapq.nlargest(int(upper - lower), range(len(sub)), sub.__getitem__)]
