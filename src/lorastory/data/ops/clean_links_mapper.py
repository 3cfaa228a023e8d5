"""``clean_links_mapper``: remove links (http/ftp/www/bare domain paths) from the text, as Data-Juicer does."""

from __future__ import annotations

from pydantic import field_validator

from lorastory.data.ops.base import OpParams, TextMapper, register_op
from lorastory.data.ops.text_helpers import compile_pattern

# Data-Juicer's default: a scheme ("http:", "ftp://", "mailto:x"), "www." or "domain.tld/", then a run without spaces.
LINK_PATTERN = (
    r"(?i)\b("
    r"(?:[a-z][\w-]+:(?:\/{1,3}|[a-z0-9%])|www\d{0,3}[.]|[a-z0-9.\-]+[.][a-z]{2,4}\/)"
    r"(?:[^\s()<>]+|\(([^\s()<>]+|(\([^\s()<>]+\)))*\))"
    r"+(?:\(([^\s()<>]+|(\([^\s()<>]+\)))*\)|[^\s`!()\[\]{};:\'\".,<>?«»“”‘’])"
    r")"
)


class PatternParams(OpParams):
    """A regular expression (``None``: the op's default) and what each match becomes."""

    pattern: str | None = None
    repl: str = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)
        return value


@register_op("clean_links_mapper")
class CleanLinksMapper(TextMapper):
    """Every match of ``pattern`` (default: links) becomes ``repl``."""

    Params = PatternParams
    default_pattern = LINK_PATTERN

    def __init__(self, params: PatternParams) -> None:
        super().__init__(params)
        self.regex = compile_pattern(params.pattern if params.pattern is not None else self.default_pattern)

    def process_text(self, text: str) -> str:
        return self.regex.sub(self.params.repl, text)
