"""One input left out of a run, and why: the rows every stage skips instead of stopping.

Import, export, the recipe executor and the CLIP table each skip bad inputs one by one and
report them; they all use :class:`Skip`, so the CLI, the app and the reports show them alike.
The JSON reports keep their shapes: ``{"item", "reason"}`` (:meth:`Skip.as_item`) and, for a
recipe run, ``{"line", "stage", "reason"}`` (:meth:`Skip.as_row`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Skip:
    """An input left out because it could not be used (not a filter decision)."""

    item: str  # what was skipped, as the user finds it: a file name, "line 3", "line 3 (op)"
    reason: str
    line: int | None = None  # the input line, for rows of a line-based file run through a recipe
    stage: str | None = None  # where a recipe gave up on it: "input" or an operator's name

    @classmethod
    def row(cls, line: int, stage: str, reason: str) -> Skip:
        """Row ``line`` of a recipe's input, skipped at ``stage``."""
        return cls(f"line {line} ({stage})", reason, line, stage)

    def as_item(self) -> dict[str, str]:
        """``{"item", "reason"}``: the shape of import/export reports and of the app's lists."""
        return {"item": self.item, "reason": self.reason}

    def as_row(self) -> dict[str, object]:
        """``{"line", "stage", "reason"}``: the shape of a recipe report's ``skipped_rows``."""
        return {"line": self.line, "stage": self.stage, "reason": self.reason}
