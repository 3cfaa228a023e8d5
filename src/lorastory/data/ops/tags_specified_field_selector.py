"""``tags_specified_field_selector``: keep the rows whose field value is one of the given tags.

Data-Juicer 1.6.1's selector: the value at the dotted ``field_key`` must equal
one of ``target_tags`` (case-sensitive); rows keep their order. With fewer than
two rows or no ``field_key`` every row stays. ``target_tags`` is required here
(Data-Juicer fails on its default of none).
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import OpParams, register_op
from lorastory.data.ops.dataset_op import NOT_SELECTED, DatasetOp, field_value
from lorastory.data.sample import Sample


class TagsSelectorParams(OpParams):
    field_key: str = ""
    target_tags: list[str | int | float | None]


@register_op("tags_specified_field_selector")
class TagsSpecifiedFieldSelector(DatasetOp):
    """Keeps rows whose field value is one of target_tags."""

    Params = TagsSelectorParams
    drop_detail = NOT_SELECTED

    def compute_hash(self, sample: Sample) -> bool:
        if not self.params.field_key:
            return True
        value = field_value(sample, self.params.field_key)
        try:
            return value in set(self.params.target_tags)
        except TypeError:  # a list or mapping is never a tag
            return False

    def select(self, keys: list[Any]) -> list[int]:
        if len(keys) <= 1 or not self.params.field_key:
            return list(range(len(keys)))
        return [index for index, hit in enumerate(keys) if hit]
