"""``whitespace_normalization_mapper``: strip the text, then turn every kind of space into a plain one.

As in Data-Juicer: ``str.strip()`` first (newlines at the ends go), then
each of its "various whitespaces" (tab, no-break, zero-width, ideographic
space...) becomes " ". Newlines inside the text stay.
"""

from __future__ import annotations

from lorastory.data.ops.base import OpParams, TextMapper, register_op
from lorastory.data.ops.text_helpers import VARIOUS_WHITESPACES

_TABLE = str.maketrans({char: " " for char in VARIOUS_WHITESPACES})


@register_op("whitespace_normalization_mapper")
class WhitespaceNormalizationMapper(TextMapper):
    Params = OpParams

    def process_text(self, text: str) -> str:
        return text.strip().translate(_TABLE)
