"""``remove_words_with_incorrect_substrings_mapper``: drop words containing any of some substrings (URL parts by default).

As in Data-Juicer, a word is tested after stripping punctuation, digits and
emoji from its ends, and the text is rebuilt with single separators (see
``remove_long_words_mapper``). ``tokenization: true`` needs Data-Juicer's
downloaded sentencepiece model, which is not available here: it is refused.
"""

from __future__ import annotations

from pydantic import field_validator

from lorastory.data.ops.base import OpParams, TextMapper, register_op
from lorastory.data.ops.text_helpers import (
    SPECIAL_CHARACTERS,
    merge_on_whitespace_tab_newline,
    split_on_newline_tab_whitespace,
    strip,
)

NO_TOKENIZATION = "tokenization needs Data-Juicer's downloaded sentencepiece model, which lorastory does not load; set it to false"


class IncorrectSubstringsParams(OpParams):
    lang: str = "en"
    tokenization: bool = False
    substrings: list[str] | None = None

    @field_validator("tokenization")
    @classmethod
    def _no_sentencepiece(cls, value: bool) -> bool:
        if value:
            raise ValueError(NO_TOKENIZATION)
        return value


@register_op("remove_words_with_incorrect_substrings_mapper")
class RemoveWordsWithIncorrectSubstringsMapper(TextMapper):
    Params = IncorrectSubstringsParams

    def __init__(self, params: IncorrectSubstringsParams) -> None:
        super().__init__(params)
        self.substrings = params.substrings if params.substrings is not None else ["http", "www", ".com", "href", "//"]

    def keep_word(self, word: str) -> bool:
        word = strip(word, SPECIAL_CHARACTERS)
        return all(sub not in word for sub in self.substrings)

    def process_text(self, text: str) -> str:
        lines = split_on_newline_tab_whitespace(text)
        return merge_on_whitespace_tab_newline(
            [[[word for word in part if self.keep_word(word)] for part in line] for line in lines]
        )
