"""``word_repetition_filter``: keep samples whose word n-gram repetition lies in a range.

As in Data-Juicer: words are split on whitespace, lower-cased and stripped of
punctuation, digits and emoji at their ends (empty ones dropped);
``word_rep_ratio`` is the share of n-gram occurrences (``rep_len`` words)
whose n-gram occurs more than once. An unspaced Chinese sentence is one word.
``tokenization: true`` uses a sentencepiece model from ``sp_model_path``
(Data-Juicer downloads one; lorastory does not).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import PositiveInt

from lorastory.data.ops.base import Filter, RangeParams, register_op
from lorastory.data.ops.text_helpers import SPECIAL_CHARACTERS, document_words, load_sentencepiece, words_refinement
from lorastory.data.sample import Sample


class WordRepetitionParams(RangeParams):
    lang: str = "en"
    tokenization: bool = False
    rep_len: PositiveInt = 10
    min_ratio: float = 0.0
    max_ratio: float = 0.5
    #: lorastory only: the sentencepiece model for ``tokenization: true``.
    sp_model_path: str | None = None


def word_rep_ratio(words: list[str], n: int) -> float:
    """Data-Juicer's ``word_rep_ratio`` of refined ``words`` for n-grams of ``n`` words."""
    counts = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(counts.values())
    if not total:
        return 0.0
    return sum(freq for freq in counts.values() if freq > 1) / total


@register_op("word_repetition_filter")
class WordRepetitionFilter(Filter):
    Params = WordRepetitionParams
    stats_keys = ("word_rep_ratio",)
    per_image = False

    def __init__(self, params: WordRepetitionParams) -> None:
        super().__init__(params)
        self.sp_model = load_sentencepiece(params.sp_model_path, self.name) if params.tokenization else None

    def compute_stats(self, sample: Sample) -> None:
        if "word_rep_ratio" in sample.stats:
            return
        words = document_words(sample.text(self.params.text_key), self.sp_model)
        words = words_refinement(words, lower_case=True, strip_chars=SPECIAL_CHARACTERS)
        sample.stats["word_rep_ratio"] = word_rep_ratio(words, self.params.rep_len)

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.in_range(stats["word_rep_ratio"], self.params.min_ratio, self.params.max_ratio)
