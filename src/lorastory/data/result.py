"""What a recipe run produced and measured: the executor fills it, the report reads it."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path

from lorastory.skips import Skip


@dataclass
class OpCounts:
    """One row of the per-op table."""

    name: str
    description: str
    n_in: int = 0
    kept: int = 0
    dropped: int = 0
    errors: int = 0
    seconds: float = 0.0


@dataclass
class DroppedExample:
    """A sample a filter or deduplicator dropped, for the report's thumbnails."""

    line: int
    op_index: int
    images: list[str]
    detail: str


@dataclass
class RunResult:
    """Everything a run produced and measured."""

    input_path: Path
    export_path: Path
    stats_path: Path | None
    read: OpCounts
    ops: list[OpCounts]
    skipped: list[Skip]
    n_skipped: int
    histograms: dict[str, array]
    dropped_examples: list[DroppedExample]
    processes: int
    seconds: float
    n_output: int = 0
    unknown_keys: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)
    report_json: Path | None = None
    report_html: Path | None = None
