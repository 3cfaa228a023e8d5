"""``fix_unicode_mapper``: repair mojibake and odd Unicode with ftfy, then normalise, as Data-Juicer does."""

from __future__ import annotations

import re

from pydantic import field_validator

from lorastory.data.ops.base import OpParams, TextMapper, register_op
from lorastory.errors import ConfigError

FORMS = ("NFC", "NFKC", "NFD", "NFKD")
# Printable ASCII without "&", plus newline and tab: nothing for ftfy to fix (no mojibake, entity,
# control character, CR or terminal escape) and every normal form is the text itself.
_PLAIN = re.compile(r"[\n\t\x20-\x25\x27-\x7e]*")


class FixUnicodeParams(OpParams):
    #: Unicode normalisation after the repair; empty or null means NFC, case does not matter.
    normalization: str | None = None

    @field_validator("normalization")
    @classmethod
    def _known_form(cls, value: str | None) -> str:
        form = value.upper() if value else "NFC"
        if form not in FORMS:
            raise ValueError(f"'{value}' is not one of {', '.join(FORMS)}")
        return form


@register_op("fix_unicode_mapper")
class FixUnicodeMapper(TextMapper):
    Params = FixUnicodeParams

    def __init__(self, params: FixUnicodeParams) -> None:
        super().__init__(params)
        try:
            import ftfy
        except ImportError:
            raise ConfigError("fix_unicode_mapper needs ftfy: pip install ftfy") from None
        self.fix_text = ftfy.fix_text

    def process_text(self, text: str) -> str:
        if _PLAIN.fullmatch(text):
            return text  # ftfy's checks cost ~50 µs even on plain ASCII
        return self.fix_text(text, normalization=self.params.normalization or "NFC")
