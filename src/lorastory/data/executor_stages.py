"""Recipes with dataset-level ops (near-dedup, selectors) run as passes, as Data-Juicer runs them op by op.

The op list is cut after each :class:`~lorastory.data.ops.DatasetOp`. A pass
streams its rows through the row-level ops before the cut (in the workers, the
local pool or Ray) and the dataset-level op's :meth:`compute_hash`; the rows
that pass go to a spool file in a private temporary folder, their stats inside
them (``__dj__stats__``, so later filters reuse them and the final stats file
has them all). The main process then calls the op's :meth:`select` on all the
keys and writes the chosen rows, in the chosen order, as the next pass's input,
or, after the last op, as the result and stats files. Memory holds one key and
one file offset per row, never the rows.

Rows keep their input line numbers in the report whatever pass dropped them.

Every stage reports ``(stage, done, total)`` to the run's ``on_stage`` callback between chunks
of rows: each pass ("X: hashing", the row-level ops before X running too), each op's selection
("X: grouping" for a deduplicator, "X: selecting" for a selector) and each write ("X: writing",
"writing the result"). The callback is the run's Stop point: whatever it raises ends the run
there, the spools go with their temporary folder and the caller's outputs are never committed
(an earlier result stays as it was).
"""

from __future__ import annotations

import json
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from lorastory.data.ops import DatasetOp, Op
from lorastory.data.recipe import Recipe
from lorastory.data.sample import STATS_FIELD

#: ``(sub-recipe, index of its first op in the full list, input jsonl) -> chunk results in order``
MakeChunks = Callable[[Recipe, int, Path], Iterator[Any]]
#: ``(stage name, done, total)``, called between chunks of rows in every stage; raising from it stops the run.
OnStage = Callable[[str, int, int], None]
#: The single pass of a recipe without dataset-level ops.
ROWS_STAGE = "rows"
RESULT_STAGE = "writing the result"
# A selection's or a write's rows between two calls of ``on_stage`` (each one a Stop point).
_REPORT_ROWS = 256


def count_rows(path: Path) -> int:
    """Rows a pass will read from ``path``: its non-blank lines, as the executor reads them."""
    with open(path, "rb") as handle:
        return sum(1 for raw in handle if raw.strip())


def pass_stage(ops: list[Op], first: int, end: int) -> str:
    """What a pass over ``ops[first:end]`` is called in progress messages."""
    if isinstance(ops[end - 1], DatasetOp):
        return f"{ops[end - 1].name}: hashing"
    return f"rows after {ops[first - 1].name}" if first else ROWS_STAGE


def passes(ops: list[Op]) -> list[tuple[int, int]]:
    """``[first, end)`` op ranges, each ending at a dataset-level op or at the end of the list."""
    found, first = [], 0
    for index, op in enumerate(ops):
        if isinstance(op, DatasetOp):
            found.append((first, index + 1))
            first = index + 1
    if first < len(ops):
        found.append((first, len(ops)))
    return found


class _Spool:
    """The rows that reached a dataset-level op, each with its key, input line and byte offset."""

    def __init__(self, path: Path, key_index: int) -> None:
        self.path = path
        self.key_index = key_index
        self.handle: IO[bytes] = open(path, "wb")  # noqa: SIM115  closed in finish()
        self.keys: list[Any] = []
        self.lines = array("q")
        self.offsets = array("q")
        self.position = 0

    def add(self, outcome: Any, line: int) -> None:
        # A mapper may have turned the input row into several: one output line (and stats line) each.
        for output, stats_line in zip(outcome.output.split("\n"), outcome.stats_line.split("\n")):
            row = json.loads(output)
            row[STATS_FIELD] = json.loads(stats_line)[STATS_FIELD]
            data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
            self.handle.write(data)
            self.offsets.append(self.position)
            self.position += len(data)
            self.keys.append(outcome.hashes[self.key_index])
            self.lines.append(line)

    def finish(self) -> None:
        self.handle.close()

    def rows(self, order: Iterable[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(spool index, row)`` in ``order``; sequential reads when the order is ascending."""
        with open(self.path, "rb") as handle:
            for index in order:
                handle.seek(self.offsets[index])
                yield index, json.loads(handle.readline())


def run_stages(
    recipe: Recipe,
    ops: list[Op],
    input_path: Path,
    make_chunks: MakeChunks,
    tally: Any,
    outputs: tuple[IO[str], IO[str]],
    on_progress: Callable[[int], None] | None,
    on_stage: OnStage | None = None,
) -> int:
    """Run every pass; write the kept rows to ``outputs`` (result, stats); return how many were written.

    ``on_progress`` gets the rows done of the first pass; ``on_stage`` every stage (module docstring).
    """
    out, stats_out = outputs
    path, lines = input_path, None
    report = on_stage or _ignore
    rows = count_rows(input_path) if on_stage is not None else 0
    written = [0]

    def write(outcome: Any, _line: int) -> None:
        out.write(outcome.output + "\n")
        stats_out.write(outcome.stats_line + "\n")
        written[0] += 1

    with tempfile.TemporaryDirectory(prefix="lorastory-passes-") as folder:
        for number, (first, end) in enumerate(passes(ops)):
            sub = recipe.model_copy(update={"process": recipe.process[first:end]})
            op, stage, done = ops[end - 1], pass_stage(ops, first, end), 0
            spool = _Spool(Path(folder) / f"pass{number}.jsonl", end - 1 - first) if isinstance(op, DatasetOp) else None
            chunks = make_chunks(sub, first, path)
            try:
                for chunk in chunks:
                    tally.consume(chunk, first, lines, spool.add if spool is not None else write)
                    done += len(chunk.outcomes)
                    if number == 0 and on_progress is not None:
                        on_progress(done)
                    report(stage, done, rows)
            finally:
                _close(chunks)  # a stopped pass ends its workers now, not when the generator is collected
                if spool is not None:
                    spool.finish()
            if spool is None:
                return written[0]
            assert isinstance(op, DatasetOp)
            order = _decide(op, spool, tally, end - 1, report)
            if end == len(ops):
                _write_result(op, spool, order, out, stats_out, report)
                return len(order)
            path = Path(folder) / f"pass{number}-kept.jsonl"
            _write_next_input(op, spool, order, path, report)
            lines, rows = [spool.lines[i] for i in order], len(order)
    return 0


def _ignore(_stage: str, _done: int, _total: int) -> None:
    """The ``on_stage`` of a run nobody watches."""


def _close(chunks: Iterator[Any]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _reported(items: list[int], stage: str, report: OnStage) -> Iterator[int]:
    """``items`` one by one, calling ``report(stage, done, total)`` every ``_REPORT_ROWS`` and at the end."""
    report(stage, 0, len(items))
    for done, item in enumerate(items, start=1):
        yield item
        if done % _REPORT_ROWS == 0 or done == len(items):
            report(stage, done, len(items))


def _decide(op: DatasetOp, spool: _Spool, tally: Any, index: int, report: OnStage) -> list[int]:
    """Run the op's selection; count it; note a few left-out rows for the report.

    Stop is honoured just before and just after the selection, and within it where the op
    reports steps (the near-dedups' clustering).
    """
    stage = f"{op.name}: {op.select_stage}"
    report(stage, 0, len(spool.keys))
    op.on_step = lambda done, total: report(stage, done, total)
    try:
        order = op.select(spool.keys)
    finally:
        op.on_step = None
    report(stage, len(spool.keys), len(spool.keys))
    counts = tally.counts[index]
    counts.kept = len(order)
    counts.dropped = len(spool.keys) - len(order)
    # Rows not chosen are recorded in input order; the report needs only a few.
    chosen = set(order)
    for position, line in enumerate(spool.lines):
        if tally.per_op_examples[index] >= 12:
            break
        if position not in chosen:
            tally.note_example(_Example(line), index, op.drop_detail)
    return order


class _Example:
    """Just enough of an outcome for the report's list of dropped rows (no thumbnail)."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.image = None


def _write_result(
    op: DatasetOp, spool: _Spool, order: list[int], out: IO[str], stats_out: IO[str], report: OnStage
) -> None:
    for index, row in spool.rows(_reported(order, RESULT_STAGE, report)):
        stats = row.pop(STATS_FIELD, {})
        op.rewrite(row, spool.keys[index])
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        stats_out.write(json.dumps({STATS_FIELD: stats}, ensure_ascii=False) + "\n")


def _write_next_input(op: DatasetOp, spool: _Spool, order: list[int], path: Path, report: OnStage) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for index, row in spool.rows(_reported(order, f"{op.name}: writing", report)):
            op.rewrite(row, spool.keys[index])
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
