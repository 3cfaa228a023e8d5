"""``frequency_specified_field_selector``: keep the rows whose field value is among the most frequent.

Data-Juicer 1.6.1's selector: rows are grouped by the value at the dotted
``field_key`` (text, a number or null); the groups are ranked by size (largest
first, or smallest with ``reverse: false``; ties in order of first appearance)
and the rows of the first ``topk`` groups, or ``top_ratio`` of the groups (the
smaller wins), stay, group by group. With fewer than two rows, no
``field_key`` or neither bound, every row stays. A value that is a list or a
mapping cannot be grouped: the row is skipped with that reason (Data-Juicer stops the run).
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import Field

from lorastory.data.ops.base import OpParams, register_op
from lorastory.data.ops.dataset_op import NOT_SELECTED, DatasetOp, field_value
from lorastory.data.sample import Sample
from lorastory.errors import DataError


class FrequencySelectorParams(OpParams):
    field_key: str = ""
    top_ratio: float | None = Field(default=None, ge=0, le=1)
    topk: int | None = Field(default=None, gt=0)
    reverse: bool = True


@register_op("frequency_specified_field_selector")
class FrequencySpecifiedFieldSelector(DatasetOp):
    """Keeps the rows of the topk (or top ratio) most frequent values of a field."""

    Params = FrequencySelectorParams
    drop_detail = NOT_SELECTED

    def compute_hash(self, sample: Sample) -> Any:
        if not self.params.field_key:
            return None
        value = field_value(sample, self.params.field_key)
        if value is not None and not isinstance(value, (str, int, float)):
            raise DataError(f"'{self.params.field_key}' is {type(value).__name__}; it must be text, a number or null")
        return value

    def select(self, keys: list[Any]) -> list[int]:
        p = self.params
        everything = list(range(len(keys)))
        if len(keys) <= 1 or not p.field_key:
            return everything
        groups: dict[Any, list[int]] = {}
        for index, value in enumerate(keys):
            groups.setdefault(value, []).append(index)
        if not p.top_ratio:
            if not p.topk:
                return everything
            number: float = p.topk
        else:
            number = p.top_ratio * len(groups)
            if p.topk and p.topk < number:
                number = p.topk
        ranked = sorted(groups.values(), key=len, reverse=p.reverse)
        return list(itertools.chain.from_iterable(ranked[: int(number)]))
