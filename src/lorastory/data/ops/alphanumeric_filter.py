"""``alphanumeric_filter``: keep samples whose share of letters and digits lies in a range.

``alnum_ratio`` is the number of alphanumeric characters (``str.isalnum``, so
Chinese characters count) over the number of characters, 0 for an empty
text. With ``tokenization: true`` Data-Juicer divides the letters by the
token count of the Pythia tokenizer it downloads (``alpha_token_ratio``);
here that needs ``hf_tokenizer`` naming a local tokenizer folder.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import model_validator

from lorastory.data.ops.base import Filter, RangeParams, register_op
from lorastory.data.ops.token_num_filter import tokenizer_of
from lorastory.data.sample import Sample


class AlphanumericParams(RangeParams):
    tokenization: bool = False
    min_ratio: float = 0.25
    max_ratio: float = sys.maxsize
    #: lorastory only: the tokenizer for ``tokenization: true`` (a local folder; Data-Juicer downloads Pythia's).
    hf_tokenizer: str | None = None

    @model_validator(mode="after")
    def _tokenizer_given(self) -> AlphanumericParams:
        if self.tokenization and not self.hf_tokenizer:
            raise ValueError(
                "tokenization: true counts tokens with a Hugging Face tokenizer; set hf_tokenizer to a local "
                "tokenizer folder (Data-Juicer downloads EleutherAI/pythia-6.9b-deduped)"
            )
        return self


@register_op("alphanumeric_filter")
class AlphanumericFilter(Filter):
    Params = AlphanumericParams
    stats_keys = ("alnum_ratio",)
    per_image = False

    def __init__(self, params: AlphanumericParams) -> None:
        super().__init__(params)
        self.key = "alpha_token_ratio" if params.tokenization else "alnum_ratio"
        self.stats_keys = (self.key,)

    def compute_stats(self, sample: Sample) -> None:
        if self.key in sample.stats:
            return
        text = sample.text(self.params.text_key)
        if self.params.tokenization:
            letters = sum(1 for char in text if char.isalpha())
            tokens = len(tokenizer_of(self, self.params.hf_tokenizer).tokenize(text))
            sample.stats[self.key] = letters / tokens if tokens else 0.0
        else:
            alnum = sum(1 for char in text if char.isalnum())
            sample.stats[self.key] = alnum / len(text) if text else 0.0

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.in_range(stats[self.key], self.params.min_ratio, self.params.max_ratio)
