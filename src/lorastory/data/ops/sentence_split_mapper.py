"""``sentence_split_mapper``: one sentence per line, with NLTK's Punkt sentence splitter.

Data-Juicer loads NLTK's trained ``punkt`` model for ``lang`` (en, fr, pt,
es) and downloads it when missing; that model is a pickle, which lorastory
never loads. Here the trained model is used when NLTK's pickle-free
``punkt_tab`` data for the language is installed (``nltk.download('punkt_tab')``),
and Punkt's untrained rules otherwise: the same splits except after
abbreviations the trained model knows ("Dr.", "e.g."). Needs ``nltk``.
"""

from __future__ import annotations

from typing import Any, Literal

from lorastory.data.ops.base import OpParams, TextMapper, register_op
from lorastory.errors import ConfigError

LANGUAGES = {"en": "english", "fr": "french", "pt": "portuguese", "es": "spanish"}


class SentenceSplitParams(OpParams):
    lang: Literal["en", "fr", "pt", "es"] = "en"


def punkt(lang: str) -> Any:
    """The trained Punkt splitter for ``lang`` if its punkt_tab data is installed, else the untrained one."""
    try:
        from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTokenizer
    except ImportError:
        raise ConfigError("sentence_split_mapper needs NLTK: pip install nltk") from None
    try:
        return PunktTokenizer(LANGUAGES[lang])
    except LookupError:  # no punkt_tab data: nothing is downloaded
        return PunktSentenceTokenizer()


@register_op("sentence_split_mapper")
class SentenceSplitMapper(TextMapper):
    Params = SentenceSplitParams

    def __init__(self, params: SentenceSplitParams) -> None:
        super().__init__(params)
        self.splitter = punkt(params.lang)

    def process_text(self, text: str) -> str:
        return "\n".join(self.splitter.tokenize(text))
