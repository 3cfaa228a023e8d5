"""``remove_long_words_mapper``: drop words whose length is outside ``[min_len, max_len]``, as Data-Juicer does.

Words are split on spaces within each tab-separated part of each line; a word
too long may still stay if it fits once punctuation, digits and emoji are
stripped from its ends. Spaces, tabs and line breaks are rebuilt as single
separators and empty lines disappear (Data-Juicer's re-joining).
"""

from __future__ import annotations

import sys

from lorastory.data.ops.base import OpParams, TextMapper, register_op
from lorastory.data.ops.text_helpers import (
    SPECIAL_CHARACTERS,
    merge_on_whitespace_tab_newline,
    split_on_newline_tab_whitespace,
    strip,
)


class RemoveLongWordsParams(OpParams):
    min_len: int = 1
    max_len: int = sys.maxsize


@register_op("remove_long_words_mapper")
class RemoveLongWordsMapper(TextMapper):
    Params = RemoveLongWordsParams

    def keep_word(self, word: str) -> bool:
        low, high = self.params.min_len, self.params.max_len
        if low <= len(word) <= high:
            return True
        if len(word) > high:
            return low <= len(strip(word, SPECIAL_CHARACTERS)) <= high
        return False

    def process_text(self, text: str) -> str:
        lines = split_on_newline_tab_whitespace(text)
        return merge_on_whitespace_tab_newline(
            [[[word for word in part if self.keep_word(word)] for part in line] for line in lines]
        )
