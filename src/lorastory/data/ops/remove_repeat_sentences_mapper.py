"""``remove_repeat_sentences_mapper``: drop sentences that already appeared earlier in the text, as Data-Juicer does.

Each line is split into sentences after ``. 。 ! ！ ? ？`` (and ``......``,
``……``, closing quotes); a sentence is compared after stripping, optionally
lower-casing and (by default) removing everything but ASCII letters, digits,
CJK characters and whitespace. Sentences shorter than
``min_repeat_sentence_length`` after that are always kept. Lines stay lines.

Data-Juicer also accepts a ``tokenizer`` given as a Python lambda in the
recipe; that would run code from the recipe, so it is refused here.
"""

from __future__ import annotations

import regex
from pydantic import field_validator

from lorastory.data.ops.base import OpParams, TextMapper, register_op

_SPLITS = (
    (regex.compile("([.。！!？\\?])([^’”])"), "\\1\\n\\2"),
    (regex.compile("(\\.{6})([^’”])"), "\\1\\n\\2"),
    (regex.compile("(\\…{2})([^’”])"), "\\1\\n\\2"),
    (regex.compile("([.。!！？\\?\\.{6}\\…{2}][’”])([^’”])"), "\\1\\n\\2"),
)
_SPECIAL = regex.compile("[^a-zA-Z0-9\\u4e00-\\u9fa5\\n\\t ]")


def split_sentence(text: str) -> list[str]:
    """Data-Juicer's sentence splitter (the sentences keep their punctuation and leading spaces)."""
    for pattern, repl in _SPLITS:
        text = pattern.sub(repl, text)
    return text.split("\n")


class RemoveRepeatSentencesParams(OpParams):
    lowercase: bool = False
    ignore_special_character: bool = True
    min_repeat_sentence_length: int = 2
    tokenizer: str | None = None

    @field_validator("tokenizer")
    @classmethod
    def _no_code(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError("a tokenizer lambda would run Python code from the recipe; remove 'tokenizer'")
        return value


@register_op("remove_repeat_sentences_mapper")
class RemoveRepeatSentencesMapper(TextMapper):
    Params = RemoveRepeatSentencesParams

    def process_text(self, text: str) -> str:
        params = self.params
        seen: set[str] = set()
        new_lines = []
        for line in text.split("\n"):
            kept = ""
            if line:
                for sentence in split_sentence(line):
                    copy = sentence.strip()
                    if params.lowercase:
                        copy = copy.lower()
                    if params.ignore_special_character:
                        copy = _SPECIAL.sub("", copy)
                    if len(copy) < params.min_repeat_sentence_length:
                        kept += sentence
                    elif copy not in seen:
                        kept += sentence
                        seen.add(copy)
            new_lines.append(kept)
        return "\n".join(new_lines)
