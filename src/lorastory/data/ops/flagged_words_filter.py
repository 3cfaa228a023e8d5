"""``flagged_words_filter``: keep samples whose share of flagged (obscene, offensive) words lies in a range.

``flagged_words_ratio``: lower-cased words, stripped of punctuation, digits
and emoji, that are in the ``lang`` list, over all words (see ``word_lists``).
"""

from __future__ import annotations

from lorastory.data.ops.base import register_op
from lorastory.data.ops.word_lists import WordListFilter, WordListParams


class FlaggedWordsParams(WordListParams):
    min_ratio: float = 0.0
    max_ratio: float = 0.045
    #: A folder of ``*flagged_words*.json`` files; unset: the lists lorastory ships.
    flagged_words_dir: str | None = None


@register_op("flagged_words_filter")
class FlaggedWordsFilter(WordListFilter):
    Params = FlaggedWordsParams
    words_type = "flagged_words"
    stat = "flagged_words_ratio"
    stats_keys = ("flagged_words_ratio",)
