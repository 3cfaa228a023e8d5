"""``replace_content_mapper``: replace every match of one or more regular expressions, in order, as Data-Juicer does.

``pattern`` is one expression or a list; ``repl`` one replacement for all or a
list with one per pattern (``r'...'`` around an expression is dropped, and
``.`` matches newlines).
"""

from __future__ import annotations

from pydantic import field_validator, model_validator

from lorastory.data.ops.base import OpParams, TextMapper, register_op
from lorastory.data.ops.text_helpers import compile_pattern


class ReplaceContentParams(OpParams):
    pattern: str | list[str] | None = None
    repl: str | list[str] = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | list[str] | None) -> str | list[str] | None:
        for item in [value] if isinstance(value, str) else value or []:
            compile_pattern(item)
        return value

    @model_validator(mode="after")
    def _one_repl_per_pattern(self) -> ReplaceContentParams:
        # Data-Juicer fails on the first row when the lists differ in length; here the recipe is refused.
        if isinstance(self.repl, list) and isinstance(self.pattern, list) and len(self.repl) < len(self.pattern):
            raise ValueError(f"repl has {len(self.repl)} items but pattern has {len(self.pattern)}: give one per pattern")
        if isinstance(self.repl, list) and isinstance(self.pattern, str) and not self.repl:
            raise ValueError("repl is an empty list: give one replacement")
        return self


@register_op("replace_content_mapper")
class ReplaceContentMapper(TextMapper):
    Params = ReplaceContentParams

    def __init__(self, params: ReplaceContentParams) -> None:
        super().__init__(params)
        patterns = [params.pattern] if isinstance(params.pattern, str) else params.pattern or []
        repls = params.repl if isinstance(params.repl, list) else [params.repl] * len(patterns)
        self.rules = [(compile_pattern(p), repls[i]) for i, p in enumerate(patterns)]

    def process_text(self, text: str) -> str:
        for pattern, repl in self.rules:
            text = pattern.sub(repl, text)
        return text
