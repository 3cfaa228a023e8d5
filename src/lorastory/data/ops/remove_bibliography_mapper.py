"""``remove_bibliography_mapper``: cut a LaTeX text at its appendix or bibliography, as Data-Juicer does.

Everything from the first ``\\appendix``, ``\\begin{references}``,
``\\begin{REFERENCES}``, ``\\begin{thebibliography}`` or ``\\bibliography{...}``
to the end is removed.
"""

from __future__ import annotations

import regex

from lorastory.data.ops.base import OpParams, TextMapper, register_op

_BIBLIOGRAPHY = regex.compile(
    r"(\\appendix|\\begin\{references\}|\\begin\{REFERENCES\}|\\begin\{thebibliography\}|\\bibliography\{.*\}).*$",
    regex.DOTALL,
)


@register_op("remove_bibliography_mapper")
class RemoveBibliographyMapper(TextMapper):
    Params = OpParams

    def process_text(self, text: str) -> str:
        return _BIBLIOGRAPHY.sub("", text)
