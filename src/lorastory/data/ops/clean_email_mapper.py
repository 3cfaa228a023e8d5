"""``clean_email_mapper``: remove e-mail addresses from the text, as Data-Juicer does."""

from __future__ import annotations

from lorastory.data.ops.base import register_op
from lorastory.data.ops.clean_links_mapper import CleanLinksMapper

# Data-Juicer's default: the domain part is lower case only ("a@B.com" is left alone).
EMAIL_PATTERN = r"[A-Za-z0-9.\-+_]+@[a-z0-9.\-+_]+\.[a-z]+"


@register_op("clean_email_mapper")
class CleanEmailMapper(CleanLinksMapper):
    """Every match of ``pattern`` (default: e-mail addresses) becomes ``repl``."""

    default_pattern = EMAIL_PATTERN
