"""``punctuation_normalization_mapper``: full-width and typographic punctuation to ASCII, as Data-Juicer maps it.

The table is Data-Juicer's, including its quirks: "１" becomes a double quote,
"—" becomes " - " and "．" becomes ". ".
"""

from __future__ import annotations

from lorastory.data.ops.base import OpParams, TextMapper, register_op

PUNCTUATION = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"', "」": '"',
    "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!", "（": "(", "）": ")",
    "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'", "…": "...", "━": "-", "〈": "<", "〉": ">",
    "【": "[", "】": "]", "％": "%", "►": "-",
}
_TABLE = str.maketrans(PUNCTUATION)


@register_op("punctuation_normalization_mapper")
class PunctuationNormalizationMapper(TextMapper):
    Params = OpParams

    def process_text(self, text: str) -> str:
        return text.translate(_TABLE)
