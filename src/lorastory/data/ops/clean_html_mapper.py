"""``clean_html_mapper``: HTML to its text, through selectolax's Lexbor parser as Data-Juicer does.

List items (``<li>``) and ordered lists (``<ol>``) start a new ``*`` line
first, so lists stay readable.
"""

from __future__ import annotations

from lorastory.data.ops.base import OpParams, TextMapper, register_op
from lorastory.errors import ConfigError


def _parser() -> type:
    try:
        from selectolax.lexbor import LexborHTMLParser
    except ImportError:
        raise ConfigError("clean_html_mapper needs selectolax: pip install selectolax") from None
    return LexborHTMLParser


@register_op("clean_html_mapper")
class CleanHtmlMapper(TextMapper):
    Params = OpParams

    def __init__(self, params: OpParams) -> None:
        super().__init__(params)
        self.parser = _parser()

    def process_text(self, text: str) -> str:
        text = text.replace("<li>", "\n*").replace("</li>", "").replace("<ol>", "\n*").replace("</ol>", "")
        return self.parser(text).text()
