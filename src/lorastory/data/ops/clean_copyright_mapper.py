"""``clean_copyright_mapper``: remove a copyright notice at the start of code-like text, as Data-Juicer does.

The first ``/* ... */`` block is removed if it mentions "copyright"; a text
without such a block loses its leading lines that are empty or start with
``//``, ``#`` or ``--``.
"""

from __future__ import annotations

import regex

from lorastory.data.ops.base import OpParams, TextMapper, register_op

_BLOCK = regex.compile(r"/\*[^*]*\*+(?:[^/*][^*]*\*+)*/")
_COPYRIGHT = regex.compile("copyright", regex.IGNORECASE)


@register_op("clean_copyright_mapper")
class CleanCopyrightMapper(TextMapper):
    Params = OpParams

    def process_text(self, text: str) -> str:
        block = _BLOCK.search(text)
        if block:
            # Only the first block is looked at; one without "copyright" stays, and so do the comment lines.
            if _COPYRIGHT.search(block.group()):
                text = text[: block.start()] + text[block.end() :]
            return text
        lines = text.split("\n")
        skip = 0
        for line in lines:
            if line.startswith(("//", "#", "--")) or not line:
                skip += 1
            else:
                break
        return "\n".join(lines[skip:]) if skip else text
