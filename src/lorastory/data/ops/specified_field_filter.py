"""``specified_field_filter``: keep samples whose field (``a.b`` for nested) has one of the target values.

As in Data-Juicer, the field's value is recorded in the stats under the field
key itself; a list value passes only if every item is a target value;
no ``field_key`` or no ``target_value`` keeps everything; ``reversed_range``
inverts the decision. A row without the field is skipped and reported
(Data-Juicer stops the whole run on it).
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import Filter, RangeParams, register_op
from lorastory.data.sample import STATS_FIELD, Sample
from lorastory.errors import DataError


def field_value(sample: Sample, field_key: str) -> Any:
    """The value at dotted ``field_key`` in the row (``__dj__stats__`` is the sample's stats)."""
    value: Any = {**sample.row, STATS_FIELD: sample.stats}
    for key in field_key.split("."):
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"no '{field_key}' field")
        value = value[key]
    return value


class SpecifiedFieldParams(RangeParams):
    field_key: str = ""
    target_value: list[Any] = []


@register_op("specified_field_filter")
class SpecifiedFieldFilter(Filter):
    Params = SpecifiedFieldParams
    per_image = False

    def __init__(self, params: SpecifiedFieldParams) -> None:
        super().__init__(params)
        self.stats_keys = (params.field_key,) if params.field_key else ()

    def drop_unusable_stats(self, stats: dict[str, Any]) -> None:
        return None  # the stat is the field's own value, of any type

    def compute_stats(self, sample: Sample) -> None:
        if not self.params.field_key:
            return
        value = field_value(sample, self.params.field_key)
        sample.stats.setdefault(self.params.field_key, value)

    def keep(self, stats: dict[str, Any]) -> bool:
        params = self.params
        if not (params.field_key and params.target_value):
            return True
        value = stats[params.field_key]
        values = value if isinstance(value, (list, tuple)) else [value]
        return all(item in params.target_value for item in values) != params.reversed_range
