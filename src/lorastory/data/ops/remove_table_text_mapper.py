"""``remove_table_text_mapper``: remove runs of lines that look like table rows, as Data-Juicer does.

A table is two or more consecutive lines (after a newline) of the same number
of columns separated by a space, ``|`` or tab; column counts from ``min_col``
to ``max_col`` (2 to 20) are tried in turn.
"""

from __future__ import annotations

import regex
from pydantic import Field

from lorastory.data.ops.base import OpParams, TextMapper, register_op

_ROW = r"(?<=\n)((\S+?)([ |\t](\S+?)){%d}\n+){2,}"


class RemoveTableTextParams(OpParams):
    min_col: int = Field(default=2, ge=2, le=20)
    max_col: int = Field(default=20, ge=2, le=20)


@register_op("remove_table_text_mapper")
class RemoveTableTextMapper(TextMapper):
    Params = RemoveTableTextParams

    def __init__(self, params: RemoveTableTextParams) -> None:
        super().__init__(params)
        self.patterns = [regex.compile(_ROW % n) for n in range(params.min_col - 1, params.max_col)]

    def process_text(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.sub("", text)
        return text
