"""``token_num_filter``: keep samples whose number of tokens (Hugging Face tokenizer) lies in a range.

``num_token`` counts the tokens without special tokens, as Data-Juicer does.
The tokenizer is loaded offline only: ``hf_tokenizer`` is a local folder, or
a hub id already in the Hugging Face cache; anything else stops the run in
one line (Data-Juicer would download ``EleutherAI/pythia-6.9b-deduped``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lorastory.data.ops.base import Filter, Op, RangeParams, load_once, register_op
from lorastory.data.sample import Sample
from lorastory.errors import ConfigError, first_line


def load_tokenizer(name: str | None) -> Any:
    """A Hugging Face tokenizer from a local folder or the local cache, never from the network."""
    from transformers import AutoTokenizer

    path = os.path.expanduser(name or "")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001  any loading failure is one line naming the tokenizer
        where = "folder" if os.path.isdir(path) else "tokenizer"
        raise ConfigError(
            f"cannot load the {where} '{name}' offline ({first_line(err, 160)}); set hf_tokenizer to a "
            "local tokenizer folder (lorastory never downloads)"
        ) from None


def tokenizer_of(op: Op, name: str | None) -> Any:
    """The op's tokenizer, loaded once per process; a failure stops the run."""
    return load_once(op, "_tokenizer", lambda: load_tokenizer(name))


class TokenNumParams(RangeParams):
    hf_tokenizer: str = "EleutherAI/pythia-6.9b-deduped"
    min_num: int = 10
    max_num: int = sys.maxsize


@register_op("token_num_filter")
class TokenNumFilter(Filter):
    Params = TokenNumParams
    stats_keys = ("num_token",)
    per_image = False

    def compute_stats(self, sample: Sample) -> None:
        if "num_token" not in sample.stats:
            tokenizer = tokenizer_of(self, self.params.hf_tokenizer)
            ids = tokenizer(sample.text(self.params.text_key), add_special_tokens=False)["input_ids"]
            sample.stats["num_token"] = len(ids)

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.in_range(stats["num_token"], self.params.min_num, self.params.max_num)
