"""``stopwords_filter``: keep samples whose share of stop words lies in a range (natural prose has many).

``stopwords_ratio``: lower-cased words, stripped of punctuation, digits and
emoji, that are in the ``lang`` list, over all words (see ``word_lists``).
"""

from __future__ import annotations

from lorastory.data.ops.base import register_op
from lorastory.data.ops.word_lists import WordListFilter, WordListParams


class StopwordsParams(WordListParams):
    min_ratio: float = 0.3
    max_ratio: float = 1.0
    #: A folder of ``*stopwords*.json`` files; unset: the lists lorastory ships.
    stopwords_dir: str | None = None


@register_op("stopwords_filter")
class StopwordsFilter(WordListFilter):
    Params = StopwordsParams
    words_type = "stopwords"
    stat = "stopwords_ratio"
    stats_keys = ("stopwords_ratio",)
