"""``words_num_filter``: keep samples whose number of words lies in a range.

Data-Juicer splits on whitespace, so an unspaced Chinese sentence counts as
one word unless ``tokenization`` loads a downloaded sentencepiece model. Here
every CJK character counts as one word (the convention word processors use),
and with ``tokenization: true`` Chinese is segmented with jieba when it is
installed (``pip install 'lorastory[zh]'``). Other text is counted as
Data-Juicer does: split on space, newline and tab; punctuation, digits,
symbols and emoji stripped from both ends of each piece; empty pieces dropped.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import Any

from lorastory.data.ops.base import Filter, OpParams, register_op
from lorastory.data.sample import Sample

# Han, Hiragana, Katakana, Hangul and CJK compatibility ranges.
_CJK = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002ebef]"
)
_SPLIT = re.compile(" |\n|\t")


def _is_special(char: str) -> bool:
    # Data-Juicer strips punctuation, digits, whitespace and emoji from word edges.
    return unicodedata.category(char)[0] in "PSZNC"


def _strip_special(word: str) -> str:
    start, end = 0, len(word)
    while start < end and _is_special(word[start]):
        start += 1
    while end > start and _is_special(word[end - 1]):
        end -= 1
    return word[start:end]


def _jieba_words(text: str) -> list[str] | None:
    try:
        import jieba
    except ImportError:
        return None
    jieba.setLogLevel(60)
    return list(jieba.cut(text))


def count_words(text: str, tokenization: bool = False) -> int:
    """Words in ``text`` (see the module docstring for how Chinese is counted)."""
    pieces = _SPLIT.split(text)
    segmented = _jieba_words(text) if tokenization and _CJK.search(text) else None
    if segmented is not None:
        pieces = segmented
    count = 0
    for piece in pieces:
        piece = _strip_special(piece)
        if not piece:
            continue
        cjk = len(_CJK.findall(piece))
        if cjk == 0 or segmented is not None:
            count += 1
        else:
            # Unsegmented CJK: one word per CJK character, plus each non-CJK run.
            count += cjk + sum(1 for run in _CJK.split(piece) if _strip_special(run))
    return count


class WordsNumParams(OpParams):
    lang: str = "en"
    tokenization: bool = False
    min_num: int = 10
    max_num: int = sys.maxsize


@register_op("words_num_filter")
class WordsNumFilter(Filter):
    """Counts words per :func:`count_words`."""

    Params = WordsNumParams
    stats_keys = ("num_words",)
    per_image = False

    def compute_stats(self, sample: Sample) -> None:
        if "num_words" not in sample.stats:
            text = sample.text(self.params.text_key)
            sample.stats["num_words"] = count_words(text, self.params.tokenization)

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.min_num <= stats["num_words"] <= self.params.max_num
