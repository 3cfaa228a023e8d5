"""``remove_specific_chars_mapper``: delete every character of a given set (by default Data-Juicer's bullets)."""

from __future__ import annotations

from lorastory.data.ops.base import OpParams, TextMapper, register_op


class RemoveSpecificCharsParams(OpParams):
    #: A string of characters, or a list whose items' characters are all removed (as Data-Juicer joins them).
    chars_to_remove: str | list[str] = "◆●■►▼▲▴∆▻▷❖♡□"


@register_op("remove_specific_chars_mapper")
class RemoveSpecificCharsMapper(TextMapper):
    Params = RemoveSpecificCharsParams

    def __init__(self, params: RemoveSpecificCharsParams) -> None:
        super().__init__(params)
        chars = "".join(params.chars_to_remove)
        self.table = str.maketrans("", "", chars)

    def process_text(self, text: str) -> str:
        return text.translate(self.table)
