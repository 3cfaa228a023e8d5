"""``remove_comments_mapper``: remove LaTeX comments, as Data-Juicer does.

``inline``: a ``%`` not preceded by a backslash and the rest of its line go,
together with the one character before the ``%`` (Data-Juicer's pattern
``[^\\]%.+$`` consumes it). ``multiline``: lines starting with ``%`` go.
``doc_type`` is accepted and, as in Data-Juicer, changes nothing.
"""

from __future__ import annotations

import regex

from lorastory.data.ops.base import OpParams, TextMapper, register_op

_INLINE = regex.compile(r"[^\\]%.+$", regex.MULTILINE)
_LINES = regex.compile(r"(?m)^%.*\n?", regex.MULTILINE)


class RemoveCommentsParams(OpParams):
    doc_type: str | list[str] = "tex"
    inline: bool = True
    multiline: bool = True


@register_op("remove_comments_mapper")
class RemoveCommentsMapper(TextMapper):
    Params = RemoveCommentsParams

    def process_text(self, text: str) -> str:
        if self.params.inline:
            text = _INLINE.sub("", text)
        if self.params.multiline:
            text = _LINES.sub("", text)
        return text
