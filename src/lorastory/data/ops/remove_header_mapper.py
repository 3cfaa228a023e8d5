"""``remove_header_mapper``: drop what precedes the first LaTeX sectioning command (\\chapter, \\section...).

As in Data-Juicer: the text up to the first ``\\chapter{..}``, ``\\part``,
``\\section``, ``\\subsection``, ``\\subsubsection``, ``\\paragraph`` or
``\\subparagraph`` goes; a text with none becomes empty when
``drop_no_head`` (the default), and stays as it is otherwise.
"""

from __future__ import annotations

import regex

from lorastory.data.ops.base import OpParams, TextMapper, register_op

_COMMANDS = ("chapter", "part", "section", "subsection", "subsubsection", "paragraph", "subparagraph")
HEADER_PATTERN = "^(.*?)(" + "|".join(rf"\\\b{name}\b\*?(?:\[(.*?)\])?\{{(.*?)\}}" for name in _COMMANDS) + ")"
_HEADER = regex.compile(HEADER_PATTERN, regex.DOTALL)


class RemoveHeaderParams(OpParams):
    drop_no_head: bool = True


@register_op("remove_header_mapper")
class RemoveHeaderMapper(TextMapper):
    Params = RemoveHeaderParams

    def process_text(self, text: str) -> str:
        if not _HEADER.search(text):
            return "" if self.params.drop_no_head else text
        return _HEADER.sub(r"\2", text)
