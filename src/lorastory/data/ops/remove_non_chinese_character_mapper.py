"""``remove_non_chinese_character_mapper``: keep only Chinese characters (一 to 龥), and optionally letters, digits, punctuation.

As in Data-Juicer, the kept punctuation is a fixed list (``.， ,-。%《*》/•、&＆(—)（+）：？!！“”·``,
space included); every other character is removed.
"""

from __future__ import annotations

import regex

from lorastory.data.ops.base import OpParams, TextMapper, register_op


class RemoveNonChineseParams(OpParams):
    keep_alphabet: bool = True
    keep_number: bool = True
    keep_punc: bool = True


@register_op("remove_non_chinese_character_mapper")
class RemoveNonChineseCharacterMapper(TextMapper):
    Params = RemoveNonChineseParams

    def __init__(self, params: RemoveNonChineseParams) -> None:
        super().__init__(params)
        pattern = "[^\u4e00-\u9fa5"
        if params.keep_alphabet:
            pattern += "A-Za-z"
        if params.keep_number:
            pattern += "0-9"
        # Data-Juicer's pattern: with punctuation kept the class closes with "]+", without with "]".
        pattern += ".， ,\\-。%《*》/•、&＆(—)（+）：？!！“”·]+" if params.keep_punc else "]"
        self.regex = regex.compile(pattern, regex.DOTALL)

    def process_text(self, text: str) -> str:
        return self.regex.sub("", text)
