"""``document_line_deduplicator``: remove lines that appear in too many documents (boilerplate).

Data-Juicer 1.6.1's operator, same parameters and rule: a text is split on
``\\n``; lines that are short, only brackets, Markdown headers, LaTeX
``\\begin``/``\\end`` or pure HTML tags are exempt; every other line is hashed
(MD5 of the stripped line, lowercased / without whitespace, digits and
punctuation when asked). A line whose hash occurs in more than
``frequency_threshold`` distinct documents is removed from every document. No
row is dropped; with fewer than two rows nothing changes.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections import Counter
from typing import Any

from lorastory.data.ops.base import OpParams, register_op
from lorastory.data.ops.dataset_op import DatasetOp
from lorastory.data.sample import Sample

_BRACKETS_ONLY = frozenset("{}[]();")
_LATEX_ENV = re.compile(r"^\s*\\(begin|end)\{")
_HTML_TAG = re.compile(r"^\s*</?[a-z][a-z0-9]*[^>]*>?\s*$", re.IGNORECASE)
_SPECIAL = re.compile(rf"\s+|\d+|[{re.escape(string.punctuation)}]")


class LineDedupParams(OpParams):
    frequency_threshold: int = 6
    lowercase: bool = False
    ignore_special_character: bool = False
    min_line_length: int = 2
    skip_brackets: bool = True
    skip_markdown_headers: bool = True
    skip_latex_env: bool = True
    skip_html_tags: bool = True


@register_op("document_line_deduplicator")
class DocumentLineDeduplicator(DatasetOp):
    """Removes lines found in more than frequency_threshold documents from every document; keeps every row."""

    Params = LineDedupParams

    def __init__(self, params: LineDedupParams) -> None:
        super().__init__(params)
        self.frequent: set[str] = set()

    def _exempt(self, line: str) -> bool:
        p = self.params
        stripped = line.strip()
        return (
            len(stripped) < p.min_line_length
            or (p.skip_brackets and all(ch in _BRACKETS_ONLY for ch in stripped))
            or (p.skip_markdown_headers and stripped.startswith("#"))
            or bool(p.skip_latex_env and _LATEX_ENV.match(stripped))
            or bool(p.skip_html_tags and _HTML_TAG.match(stripped))
        )

    def compute_hash(self, sample: Sample) -> tuple[str, ...]:
        hashes = []
        for line in sample.text(self.params.text_key).split("\n"):
            if self._exempt(line):
                hashes.append("")
                continue
            if self.params.lowercase:
                line = line.lower()
            if self.params.ignore_special_character:
                line = _SPECIAL.sub("", line)
            hashes.append(hashlib.md5(line.strip().encode("utf-8")).hexdigest())
        return tuple(hashes)

    def select(self, keys: list[Any]) -> list[int]:
        self.frequent = set()
        if len(keys) > 1:
            frequency = Counter(h for hashes in keys for h in set(hashes) if h)
            self.frequent = {h for h, count in frequency.items() if count > self.params.frequency_threshold}
        return list(range(len(keys)))

    def rewrite(self, row: dict[str, Any], key: Any) -> None:
        if not self.frequent or not any(h in self.frequent for h in key):
            return
        text_key = self.params.text_key or "text"
        lines = row[text_key].split("\n")
        row[text_key] = "\n".join(line for line, h in zip(lines, key) if not (h and h in self.frequent))
