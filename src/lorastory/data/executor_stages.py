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
"""

from __future__ import annotations

import json
import tempfile
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from lorastory.data.ops import DatasetOp, Op
from lorastory.data.recipe import Recipe
from lorastory.data.sample import STATS_FIELD

#: ``(sub-recipe, index of its first op in the full list, input jsonl) -> chunk results in order``
MakeChunks = Callable[[Recipe, int, Path], Iterator[Any]]


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

    def rows(self, order: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
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
) -> int:
    """Run every pass; write the kept rows to ``outputs`` (result, stats); return how many were written."""
    out, stats_out = outputs
    path, lines = input_path, None
    done = 0
    written = [0]

    def write(outcome: Any, _line: int) -> None:
        out.write(outcome.output + "\n")
        stats_out.write(outcome.stats_line + "\n")
        written[0] += 1

    with tempfile.TemporaryDirectory(prefix="lorastory-passes-") as folder:
        for number, (first, end) in enumerate(passes(ops)):
            sub = recipe.model_copy(update={"process": recipe.process[first:end]})
            op = ops[end - 1]
            spool = _Spool(Path(folder) / f"pass{number}.jsonl", end - 1 - first) if isinstance(op, DatasetOp) else None
            try:
                for chunk in make_chunks(sub, first, path):
                    tally.consume(chunk, first, lines, spool.add if spool is not None else write)
                    if number == 0 and on_progress is not None:
                        done += len(chunk.outcomes)
                        on_progress(done)
            finally:
                if spool is not None:
                    spool.finish()
            if spool is None:
                return written[0]
            assert isinstance(op, DatasetOp)
            order = _decide(op, spool, tally, end - 1)
            last = end == len(ops)
            if last:
                _write_result(op, spool, order, out, stats_out)
                return len(order)
            path = Path(folder) / f"pass{number}-kept.jsonl"
            _write_next_input(op, spool, order, path)
            lines = [spool.lines[i] for i in order]
    return 0


def _decide(op: DatasetOp, spool: _Spool, tally: Any, index: int) -> list[int]:
    """Run the op's selection; count it; note a few left-out rows for the report."""
    order = op.select(spool.keys)
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


def _write_result(op: DatasetOp, spool: _Spool, order: list[int], out: IO[str], stats_out: IO[str]) -> None:
    for index, row in spool.rows(order):
        stats = row.pop(STATS_FIELD, {})
        op.rewrite(row, spool.keys[index])
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        stats_out.write(json.dumps({STATS_FIELD: stats}, ensure_ascii=False) + "\n")


def _write_next_input(op: DatasetOp, spool: _Spool, order: list[int], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for index, row in spool.rows(order):
            op.rewrite(row, spool.keys[index])
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
