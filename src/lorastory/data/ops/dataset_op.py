"""Dataset-level operators: near-duplicate removal and selectors, decided over all rows at once.

A Data-Juicer deduplicator such as MinHash clusters rows transitively, and a
selector ranks rows against each other, so whether a row stays depends on rows
after it: such an op cannot decide row by row. A :class:`DatasetOp` works in two
steps, as Data-Juicer's ``compute_hash`` then ``process`` do:

* :meth:`DatasetOp.compute_hash` runs in the workers on each row that reaches
  the op and returns a small, picklable key (a hash, band signatures, a field value);
* :meth:`DatasetOp.select` runs once in the main process on the keys of all
  those rows, in order, and returns the indices of the rows that go on, in
  their new order (selectors reorder rows as Data-Juicer's ``dataset.select`` does).
  A select that takes seconds calls :meth:`DatasetOp.step` every so often: the
  run's progress and Stop point.

An op that rewrites the rows it keeps (``document_line_deduplicator``) does so
in :meth:`DatasetOp.rewrite`. The executor runs the ops before and after a
dataset-level op as separate passes (:mod:`lorastory.data.executor_stages`),
so the ops after it see exactly the rows it kept.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from lorastory.data.ops.base import Op
from lorastory.data.sample import STATS_FIELD, Sample

#: Recorded as the drop reason of rows a dataset-level op left out.
NOT_SELECTED = "not selected"


class DatasetOp(Op):
    """An op whose keep decision needs every row's key (see the module docstring)."""

    #: Reason shown in the report for a row this op left out.
    drop_detail: str = "duplicate"
    #: Set by the executor while :meth:`select` runs; see :meth:`step`.
    on_step: Callable[[int, int], None] | None = None

    @property
    def select_stage(self) -> str:
        """What :meth:`select` does, as progress messages name it: deduplicators group, selectors select."""
        return "selecting" if self.drop_detail == NOT_SELECTED else "grouping"

    def step(self, done: int, total: int) -> None:
        """Progress of a long :meth:`select` (``done`` of ``total`` keys): the run's Stop point, it may raise."""
        if self.on_step is not None:
            self.on_step(done, total)

    def compute_hash(self, sample: Sample) -> Any:
        """The per-row key :meth:`select` decides on; computed in a worker."""
        raise NotImplementedError

    def select(self, keys: list[Any]) -> list[int]:
        """Indices (into ``keys``) of the rows that go on, in output order."""
        raise NotImplementedError

    def rewrite(self, row: dict[str, Any], key: Any) -> None:
        """Change a kept row in place before it goes on (nothing by default)."""


def field_value(sample: Sample, field_key: str) -> Any:
    """The value at a dotted ``field_key`` (``meta.source``, ``__dj__stats__.text_len``), as Data-Juicer reads it.

    Stats computed earlier in the run live under ``__dj__stats__`` as in Data-Juicer's dataset.
    A key a row lacks reads as ``None``, as in the table Data-Juicer loads the rows into.
    """
    head, *rest = field_key.split(".")
    value: Any = sample.stats if head == STATS_FIELD else sample.row.get(head)
    for part in rest:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def stats_to_number(value: Any, reverse: bool = True) -> float:
    """Data-Juicer's ``stats_to_number``: a number, numeric text or the mean of a list; else sorts last."""
    try:
        if isinstance(value, str):
            return float(value)
        if value is None or (isinstance(value, list) and not value):
            raise ValueError("empty value")
        if isinstance(value, list):
            return float(sum(float(v) for v in value) / len(value))
        return float(value)
    except (TypeError, ValueError):
        return -float(sys.maxsize) if reverse else float(sys.maxsize)
