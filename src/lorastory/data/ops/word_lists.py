"""Word lists for ``stopwords_filter`` and ``flagged_words_filter``, and the filter both are.

Data-Juicer reads every ``*.json`` file in a folder whose name contains
``stopwords`` (or ``flagged_words``), each a mapping ``{lang: [words]}``,
merges them, adds ``all`` (every language together) and downloads its own
lists when the folder has none. lorastory reads a folder the same way
(``stopwords_dir`` / ``flagged_words_dir``) but never downloads: without a
folder it uses the lists shipped in ``ops/assets`` (see ``assets/README.md``
for their sources and licences).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import PositiveInt

from lorastory.data.ops.base import Filter, RangeParams
from lorastory.data.ops.text_helpers import SPECIAL_CHARACTERS, document_words, load_sentencepiece, words_refinement
from lorastory.data.sample import Sample
from lorastory.errors import ConfigError

ASSETS = Path(__file__).parent / "assets"


def load_word_lists(words_dir: str | None, words_type: str) -> dict[str, set[str]]:
    """``{lang: words}`` from the ``*{words_type}*.json`` files of ``words_dir`` (the shipped lists if None)."""
    folder = Path(os.path.expanduser(words_dir)) if words_dir else ASSETS
    if not folder.is_dir():
        raise ConfigError(f"{words_type}_dir {words_dir}: no such folder")
    merged: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".json") and words_type in path.name:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ConfigError(f"{path}: not a readable JSON word list ({err})") from None
            if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
                raise ConfigError(f"{path}: a word list is a mapping of language to a list of words")
            for lang, words in data.items():
                merged.setdefault(lang, []).extend(str(word) for word in words)
    if not merged:
        raise ConfigError(
            f"{words_type}_dir {words_dir}: no *{words_type}*.json file there (lorastory does not download "
            "Data-Juicer's lists); leave it unset for the shipped lists"
        )
    lists = {lang: set(words) for lang, words in merged.items()}
    lists.setdefault("all", set().union(*lists.values()))
    return lists


class WordListParams(RangeParams):
    """The parameters both word-list filters share (their ranges and folder differ)."""

    lang: str = "en"
    tokenization: bool = False
    use_words_aug: bool = False
    words_aug_group_sizes: list[PositiveInt] = [2]
    words_aug_join_char: str = ""
    #: lorastory only: the sentencepiece model for ``tokenization: true``.
    sp_model_path: str | None = None


class WordListFilter(Filter):
    """Keeps samples whose share of listed words (after Data-Juicer's word refinement) lies in a range."""

    per_image = False
    words_type: ClassVar[str] = ""
    stat: ClassVar[str] = ""

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        lists = load_word_lists(getattr(params, f"{self.words_type}_dir"), self.words_type)
        if params.lang not in lists:
            raise ConfigError(
                f"{self.name}: no {self.words_type} for lang '{params.lang}' (have: {', '.join(sorted(lists))})"
            )
        self.words = lists[params.lang]
        self.sp_model = load_sentencepiece(params.sp_model_path, self.name) if params.tokenization else None

    def compute_stats(self, sample: Sample) -> None:
        if self.stat in sample.stats:
            return
        params = self.params
        words = words_refinement(
            document_words(sample.text(params.text_key), self.sp_model),
            lower_case=True,
            strip_chars=SPECIAL_CHARACTERS,
            use_words_aug=params.use_words_aug,
            words_aug_group_sizes=params.words_aug_group_sizes,
            words_aug_join_char=params.words_aug_join_char,
        )
        ratio = sum(1 for word in words if word in self.words) / len(words) if words else 0.0
        sample.stats[self.stat] = min(ratio, 1.0)

    def keep(self, stats: dict[str, Any]) -> bool:
        return self.params.in_range(stats[self.stat], self.params.min_ratio, self.params.max_ratio)
