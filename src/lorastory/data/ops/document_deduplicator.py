"""``document_deduplicator``: drop rows whose text is an exact copy of an earlier row's.

Data-Juicer's operator, same name, parameters and keep rule: the MD5 of the
stripped text (lowercased and with whitespace, digits and ASCII punctuation
removed when asked); the first row of each hash stays. An empty text is a
hash like any other here as in Data-Juicer, so only the first empty caption stays.
"""

from __future__ import annotations

import hashlib
import re
import string

from lorastory.data.ops.base import Deduplicator, OpParams, register_op
from lorastory.data.sample import Sample

_NON_CHARACTER = re.compile(rf"\s+|\d+|[{re.escape(string.punctuation)}]")


class DocumentDedupParams(OpParams):
    lowercase: bool = False
    ignore_non_character: bool = False


def document_hash(text: str, lowercase: bool, ignore_non_character: bool) -> str:
    """Data-Juicer's text MD5 (hex) after the optional normalisation."""
    if lowercase:
        text = text.lower()
    if ignore_non_character:
        text = _NON_CHARACTER.sub("", text)
    return hashlib.md5(text.strip().encode("utf-8")).hexdigest()


@register_op("document_deduplicator")
class DocumentDeduplicator(Deduplicator):
    """Exact text duplicates by MD5; the first row of each text stays."""

    Params = DocumentDedupParams

    def compute_hash(self, sample: Sample) -> str:
        p = self.params
        return document_hash(sample.text(p.text_key), p.lowercase, p.ignore_non_character)
