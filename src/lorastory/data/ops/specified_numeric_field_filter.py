"""``specified_numeric_field_filter``: keep samples whose field (``a.b`` for nested) is a number in a range.

As in Data-Juicer: the field's value goes into the stats under the field key;
a value that ``float()`` cannot read (or that is empty or zero, which
Data-Juicer's ``is_number`` rejects) drops the row; numeric strings count.
No ``field_key`` keeps everything.
"""

from __future__ import annotations

import sys
from typing import Any

from lorastory.data.ops.base import Filter, RangeParams, register_op
from lorastory.data.ops.specified_field_filter import field_value
from lorastory.data.sample import Sample


def is_number(value: Any) -> bool:
    """Data-Juicer's test: truthy and readable by ``float()`` (so 0 and "" are not numbers)."""
    if value:
        try:
            float(value)
            return True
        except (TypeError, ValueError):
            pass
    return False


class SpecifiedNumericFieldParams(RangeParams):
    signed_ranges = frozenset({"value"})

    field_key: str = ""
    min_value: float = -sys.maxsize
    max_value: float = sys.maxsize


@register_op("specified_numeric_field_filter")
class SpecifiedNumericFieldFilter(Filter):
    Params = SpecifiedNumericFieldParams
    per_image = False

    def __init__(self, params: SpecifiedNumericFieldParams) -> None:
        super().__init__(params)
        self.stats_keys = (params.field_key,) if params.field_key else ()

    def drop_unusable_stats(self, stats: dict[str, Any]) -> None:
        return None  # the stat is the field's own value, of any type

    def compute_stats(self, sample: Sample) -> None:
        if self.params.field_key:
            sample.stats.setdefault(self.params.field_key, field_value(sample, self.params.field_key))

    def keep(self, stats: dict[str, Any]) -> bool:
        if not self.params.field_key:
            return True
        value = stats[self.params.field_key]
        if not is_number(value):
            return False
        return self.params.in_range(float(value), self.params.min_value, self.params.max_value)
