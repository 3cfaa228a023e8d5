"""``chinese_convert_mapper``: convert between Simplified, Traditional (TW/HK) Chinese and Japanese kanji with OpenCC."""

from __future__ import annotations

from typing import Any, Literal

from lorastory.data.ops.base import OpParams, TextMapper, register_op
from lorastory.errors import ConfigError

Mode = Literal["s2t", "t2s", "s2tw", "tw2s", "s2hk", "hk2s", "s2twp", "tw2sp", "t2tw", "tw2t", "hk2t", "t2hk", "t2jp", "jp2t"]


class ChineseConvertParams(OpParams):
    #: An OpenCC configuration, e.g. s2t (Simplified to Traditional), t2s, s2tw, s2twp (with Taiwanese phrases).
    mode: Mode = "s2t"


def _converter(mode: str) -> Any:
    try:
        import opencc
    except ImportError:
        raise ConfigError("chinese_convert_mapper needs OpenCC: pip install opencc") from None
    return opencc.OpenCC(f"{mode}.json")


@register_op("chinese_convert_mapper")
class ChineseConvertMapper(TextMapper):
    Params = ChineseConvertParams

    def __init__(self, params: ChineseConvertParams) -> None:
        super().__init__(params)
        self.converter = _converter(params.mode)  # a missing OpenCC stops the recipe before any row

    def process_text(self, text: str) -> str:
        return self.converter.convert(text)
