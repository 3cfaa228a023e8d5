"""The recipe executor: streams a jsonl through the ops on ``np`` processes.

Worker processes parse each line and run the whole op chain on it (image
headers are read once per sample and shared by the ops). The main process
sees results in input order, applies the deduplicators (first occurrence
wins, as in Data-Juicer), counts per-op outcomes and writes the result and
stats files as it goes, so memory stays flat however long the input is.

A bad line or image drops that row only; the row, the op and the reason go
into the report. A model that cannot load stops the whole run instead. The
result, its stats and the JSON and HTML reports appear together when the run
completes (:func:`lorastory.fileio.atomic_files`); none of them may be, or
reach through a link, the input file.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lorastory.data.executor_stages import ROWS_STAGE, OnStage, count_rows, run_stages
from lorastory.data.ops import DatasetOp, Deduplicator, Filter, Mapper, Op, OpSetupError
from lorastory.data.recipe import Recipe, report_paths, resolve_dataset_file, stats_path_for
from lorastory.data.report import render_html, summary
from lorastory.data.result import DroppedExample, OpCounts, RunResult
from lorastory.data.sample import PRODUCED_DIR_NAME, STATS_FIELD, DatasetKeys, Sample
from lorastory.errors import ConfigError, DataError, LorastoryError, OutputError
from lorastory.fileio import atomic_files, check_outputs_apart, clean_stale_temps, display_path, is_valid_text
from lorastory.skips import Skip

HASH_FIELDS = ("__dj__hash", "__dj__minhash", "__dj__simhash", "__dj__imagehash", "__dj__videohash")
INPUT_STAGE = -1
_CHUNK_LINES = 256
# Without worker processes a chunk is handed on early once it has taken this long, so slow ops (a
# model per image) still call ``on_progress``/``on_stage``, the web app's Stop point, every fraction of a second.
_LOCAL_REPORT_SECONDS = 0.5
_EXAMPLES_PER_OP = 12


class _Outcome(NamedTuple):
    """One line's result, kept small: it crosses the process boundary for every row."""

    line: int
    stop: int  # index of the op that dropped or failed the row; len(ops) if it passed every filter
    error: str | None
    output: str | None  # the exported row, serialised (rows that passed every filter)
    stats_line: str | None  # its ``*_stats.jsonl`` line
    hashes: dict[int, str] | None
    image: str | None  # first image, for the report's thumbnails
    detail: str | None  # why a filter dropped it


@dataclass
class _ChunkResult:
    """A chunk's outcomes plus what its ops measured (time, stats for the histograms)."""

    outcomes: list[_Outcome]
    seconds: list[float]
    histograms: dict[str, list[float]]


class _Chain:
    """The ops and keys of one run; lives in each worker process."""

    def __init__(self, ops: list[Op], keys: DatasetKeys) -> None:
        self.ops = ops
        self.keys = keys

    def run_chunk(self, chunk: list[tuple[int, bytes]]) -> _ChunkResult:
        result = _ChunkResult([], [0.0] * len(self.ops), {})
        for line_no, raw in chunk:
            result.outcomes.append(self._run_line(line_no, raw, result))
        return result

    def run_timed(self, chunk: list[tuple[int, bytes]], seconds: float) -> Iterator[_ChunkResult]:
        """The chunk's results in pieces, each handed on once it has taken ``seconds`` (same rows, same order)."""
        result, began = _ChunkResult([], [0.0] * len(self.ops), {}), time.perf_counter()
        for line_no, raw in chunk:
            result.outcomes.append(self._run_line(line_no, raw, result))
            if time.perf_counter() - began >= seconds:
                yield result
                result, began = _ChunkResult([], [0.0] * len(self.ops), {}), time.perf_counter()
        if result.outcomes:
            yield result

    def _run_line(self, line_no: int, raw: bytes, totals: _ChunkResult) -> _Outcome:
        try:
            row = _parse_row(raw, self.keys)
            stats = row.pop(STATS_FIELD, None)
            sample = Sample(row, self.keys, dict(stats) if isinstance(stats, dict) else {})
            for op in self.ops:
                if isinstance(op, Filter):
                    op.drop_unusable_stats(sample.stats)
            for key in HASH_FIELDS:
                row.pop(key, None)
            images = sample.image_paths()
        except LorastoryError as err:
            return _Outcome(line_no, INPUT_STAGE, str(err), None, None, None, None, None)
        hashes: dict[int, str] | None = None
        stop, error, detail = len(self.ops), None, None
        samples = [sample]  # a mapper may turn the row into several (Data-Juicer's keep_original_sample)
        for index, op in enumerate(self.ops):
            start = time.perf_counter()
            try:
                if isinstance(op, Mapper):
                    samples = [out for one in samples for out in _mapped(op, one)]
                    passed = bool(samples)
                    detail = None if passed else "the mapper produced no rows"
                elif isinstance(op, Filter):
                    kept = []
                    for one in samples:
                        op.compute_stats(one)
                        _add_histogram(totals.histograms, op, index, one.stats)
                        if op.keep(one.stats):
                            kept.append(one)
                        elif detail is None:
                            detail = _describe_drop(op, one.stats)
                    passed, samples = bool(kept), kept
                    detail = None if passed else detail
                else:
                    hashes = hashes or {}
                    hashes[index] = op.compute_hash(samples[0])
                    passed = True
            except OpSetupError:
                raise  # the op cannot run at all: the run stops, the previous result stays
            except LorastoryError as err:
                error, passed = str(err), False
            totals.seconds[index] += time.perf_counter() - start
            if not passed:
                stop = index
                break
        output = stats_line = None
        if stop == len(self.ops):
            for one in samples:
                _absolutise_images(one.row, self.keys)
            output = "\n".join(json.dumps(one.row, ensure_ascii=False) for one in samples)
            stats_line = "\n".join(json.dumps({STATS_FIELD: one.stats}, ensure_ascii=False) for one in samples)
        return _Outcome(line_no, stop, error, output, stats_line, hashes, images[0] if images else None, detail)


def _mapped(op: Mapper, sample: Sample) -> list[Sample]:
    """The samples ``op`` turns ``sample`` into (itself when edited in place); a new row starts with a copy of
    the sample's stats."""
    rows = op.process(sample)
    if rows is None:
        return [sample]
    return [sample if row is sample.row else Sample(row, sample.keys, dict(sample.stats)) for row in rows]


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _parse_row(raw: bytes, keys: DatasetKeys) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"not UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise ConfigError("JSON nested too deeply") from None
    # A "\ud800" escape decodes to a lone surrogate, which no UTF-8 file can hold: the row could not be written.
    if _SURROGATE_ESCAPE.search(raw) and not is_valid_text(json.dumps(row, ensure_ascii=False)):
        raise DataError("holds a lone surrogate (a \\udXXX escape that is not half of a pair): not valid Unicode text")
    if not isinstance(row, dict):
        raise ConfigError(f"expected a JSON object, got {type(row).__name__}")
    value = row.get(keys.text_key)
    if value is None:
        raise ConfigError(f"no '{keys.text_key}' field")
    if not isinstance(value, str):
        raise ConfigError(f"'{keys.text_key}' is {type(value).__name__}, not text")
    return row


def _absolutise_images(row: dict[str, Any], keys: DatasetKeys) -> None:
    """Data-Juicer exports relative image paths joined to the dataset folder (not normalised)."""
    value = row.get(keys.image_key)
    if isinstance(value, list):
        row[keys.image_key] = [
            p if os.path.isabs(p) or "://" in p else os.path.join(keys.base_dir, p) for p in value
        ]


_WORKER_CHAIN: _Chain | None = None


def _init_worker(recipe_data: dict[str, Any], keys: DatasetKeys) -> None:
    global _WORKER_CHAIN
    _WORKER_CHAIN = _Chain(Recipe.model_validate(recipe_data).build_ops(), keys)


def _work(chunk: list[tuple[int, bytes]]) -> _ChunkResult:
    assert _WORKER_CHAIN is not None
    return _WORKER_CHAIN.run_chunk(chunk)


def _read_chunks(path: Path) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            chunk.append((line_no, raw))
            if len(chunk) == _CHUNK_LINES:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _chunk_results(recipe: Recipe, chain: _Chain, path: Path, processes: int) -> Iterator[_ChunkResult]:
    """Chunk results in input order, computed in ``processes`` workers with bounded read-ahead."""
    if processes <= 1:
        for chunk in _read_chunks(path):
            yield from chain.run_timed(chunk, _LOCAL_REPORT_SECONDS)
        return
    in_flight = threading.BoundedSemaphore(processes * 4)
    stopping = threading.Event()

    def feed() -> Iterator[list[tuple[int, bytes]]]:
        for chunk in _read_chunks(path):
            in_flight.acquire()
            if stopping.is_set():
                return
            yield chunk

    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    pool = context.Pool(processes, _init_worker, (recipe.model_dump(), chain.keys))
    try:
        for chunk_result in pool.imap(_work, feed()):
            in_flight.release()
            yield chunk_result
        pool.close()
    finally:
        stopping.set()
        for _ in range(processes * 4):
            try:
                in_flight.release()
            except ValueError:
                break
        pool.terminate()
        pool.join()


def _describe_drop(op: Filter, stats: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(stats.get(k))}" for k in op.stats_keys)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value[:4]) + (", ..." if len(value) > 4 else "") + "]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _Tally:
    """Per-op counts, skips, histograms and the exact-hash dedup of a run, fed chunk by chunk in input order."""

    def __init__(self, ops: list[Op], max_skips_listed: int, read: OpCounts) -> None:
        self.ops = ops
        self.max_skips_listed = max_skips_listed
        self.read = read
        self.counts = [OpCounts(op.name, op.describe()) for op in ops]
        self.seen_hashes: dict[int, set[str]] = {i: set() for i, op in enumerate(ops) if isinstance(op, Deduplicator)}
        self.histograms: dict[str, array] = {}
        self.examples: list[DroppedExample] = []
        self.per_op_examples = [0] * len(ops)
        self.skipped: list[Skip] = []
        self.n_skipped = 0
        self.n_output = 0

    def skip(self, line: int, where: str, error: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < self.max_skips_listed:
            self.skipped.append(Skip.row(line, where, error))

    def note_example(self, outcome: _Outcome, index: int, detail: str) -> None:
        _note_example(self.examples, self.per_op_examples, outcome, index, detail)

    def consume(
        self, chunk: _ChunkResult, first: int, lines: list[int] | None, keep: Callable[[_Outcome, int], None]
    ) -> None:
        """Count a chunk computed by the ops ``first, first + 1, ...``; ``keep`` each row that passed them.

        ``lines`` maps the chunk's line numbers (1-based) to the input file's (a later pass reads a spool).
        """
        for index, seconds in enumerate(chunk.seconds):
            self.counts[first + index].seconds += seconds
        for key, values in chunk.histograms.items():
            position, rest = key.split(":", 1)
            self.histograms.setdefault(f"{int(position) + first}:{rest}", array("d")).extend(values)
        n_ops = len(chunk.seconds)
        for outcome in chunk.outcomes:
            if lines is not None:
                outcome = outcome._replace(line=lines[outcome.line - 1])
            if outcome.stop == INPUT_STAGE:
                self.read.n_in += 1
                self.read.errors += 1
                self.skip(outcome.line, "input", outcome.error or "unreadable")
                continue
            if first == 0:
                self.read.n_in += 1
                self.read.kept += 1
            if self._passes(outcome, first, n_ops):
                self.n_output += outcome.output.count("\n") + 1  # a mapper's several rows, one per line
                keep(outcome, outcome.line)

    def _passes(self, outcome: _Outcome, first: int, n_ops: int) -> bool:
        for local in range(n_ops):
            index = first + local
            row = self.counts[index]
            row.n_in += 1
            if local == outcome.stop:
                if outcome.error is not None:
                    row.errors += 1
                    self.skip(outcome.line, self.ops[index].name, outcome.error)
                else:
                    row.dropped += 1
                    self.note_example(outcome, index, outcome.detail or "")
                return False
            if index in self.seen_hashes:
                digest = outcome.hashes[local]
                if digest and digest in self.seen_hashes[index]:
                    row.dropped += 1
                    self.note_example(outcome, index, "duplicate")
                    return False
                if digest:
                    self.seen_hashes[index].add(digest)
            row.kept += 1
        return True


ChunkSource = Callable[[Recipe, _Chain, Path, int], Iterator[_ChunkResult]]
"""Computes the chunk results of a run, in input order: ``(recipe, chain, input_path, workers)``."""


def run_recipe(
    recipe: Recipe,
    processes: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_skips_listed: int = 10_000,
    chunk_source: ChunkSource | None = None,
    on_stage: OnStage | None = None,
) -> RunResult:
    """Run ``recipe``; write ``export_path``, its stats file and the reports together; return counts.

    ``on_progress(rows)`` follows the first pass over the input; ``on_stage(stage, done, total)``
    every stage ("rows"; with dataset-level ops also "X: hashing", "X: grouping" or "X: selecting",
    "X: writing", "writing the result"; see :mod:`lorastory.data.executor_stages`). Either may
    raise to stop the run between chunks: nothing is written then, an earlier result stays byte for byte.

    ``chunk_source`` replaces the local process pool (the Ray executor passes one); whatever
    computes the chunks, deduplication, counting and writing happen here, so outputs match.
    """
    ops = recipe.build_ops()
    input_path = resolve_dataset_file(recipe)
    export_path = Path(os.path.abspath(os.path.expanduser(recipe.export_path)))
    if export_path.suffix.lower() != ".jsonl":
        raise ConfigError(f"export_path {display_path(export_path)}: only .jsonl export is supported")
    keys = DatasetKeys(
        recipe.text_key, recipe.image_key, recipe.image_special_token, str(input_path.parent),
        produced_dir=str(export_path.parent / PRODUCED_DIR_NAME),
    )
    chain = _Chain(ops, keys)
    # Data-Juicer also clips np to the CPU count: more processes than cores only add overhead.
    workers = max(1, min(processes or recipe.np, os.cpu_count() or 1))
    has_filters = any(isinstance(op, Filter) for op in ops)
    stats_path = stats_path_for(export_path) if (has_filters and recipe.export_stats) else None
    json_report, html_report = report_paths(export_path)
    targets = _output_targets(input_path, export_path, stats_path, json_report, html_report)

    tally = _Tally(ops, max_skips_listed, OpCounts("(read)", f"{input_path.name}"))
    started = time.perf_counter()
    source = chunk_source or _chunk_results

    with atomic_files(targets) as temps, open(temps[0], "w", encoding="utf-8") as out, \
            open(temps[1] if stats_path is not None else os.devnull, "w", encoding="utf-8") as stats_out:

        def write(outcome: _Outcome, _line: int) -> None:
            out.write(outcome.output + "\n")
            stats_out.write(outcome.stats_line + "\n")

        if any(isinstance(op, DatasetOp) for op in ops):
            n_output = run_stages(
                recipe, ops, input_path,
                lambda sub, first, path: source(sub, _Chain(ops[first:first + len(sub.process)], keys), path, workers),
                tally, (out, stats_out), on_progress, on_stage,
            )
        else:
            done, total = 0, count_rows(input_path) if on_stage is not None else 0
            for chunk in source(recipe, chain, input_path, workers):
                tally.consume(chunk, 0, None, write)
                done += len(chunk.outcomes)
                if on_progress is not None:
                    on_progress(done)
                if on_stage is not None:
                    on_stage(ROWS_STAGE, done, total)
            n_output = tally.n_output
        result = RunResult(
            input_path=input_path,
            export_path=export_path,
            stats_path=stats_path,
            read=tally.read,
            ops=tally.counts,
            skipped=tally.skipped,
            n_skipped=tally.n_skipped,
            histograms=tally.histograms,
            dropped_examples=tally.examples,
            processes=workers,
            seconds=time.perf_counter() - started,
            n_output=n_output,
            unknown_keys=recipe.unknown_keys(),
            ignored_keys=recipe.ignored_keys(),
            report_json=json_report,
            report_html=html_report,
        )
        _write_reports(result, temps[-2], temps[-1])
    return result


def _output_targets(
    input_path: Path, export_path: Path, stats_path: Path | None, json_report: Path, html_report: Path
) -> list[Path]:
    """The files a run replaces, in commit order, after checking none of them is or reaches the input."""
    named = [("export_path", export_path), ("its stats file", stats_path),
             ("its report", json_report), ("its HTML report", html_report)]
    outputs = [(label, path) for label, path in named if path is not None]
    check_outputs_apart(outputs, [("dataset_path", input_path)])
    for label, path in outputs:
        if path.is_dir():
            raise OutputError(f"{label} {display_path(path)} is a folder; point export_path at a .jsonl file")
    # Leftovers of a killed run (temp files, a half-done commit) go before this run writes.
    for _label, path in outputs:
        clean_stale_temps(path.parent, path.name)
    return [path for _label, path in outputs]


def _write_reports(result: RunResult, json_temp: Path, html_temp: Path) -> None:
    data = summary(result)
    json_temp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    html_temp.write_text(render_html(result, data), encoding="utf-8")


def _add_histogram(histograms: dict[str, list[float]], op: Filter, index: int, stats: dict[str, Any]) -> None:
    """Collect the numeric stats ``op`` computed, keyed "index:op:stat"."""
    for key in op.stats_keys:
        value = stats.get(key)
        values = value if isinstance(value, list) else [value]
        numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if numbers:
            histograms.setdefault(f"{index}:{op.name}:{key}", []).extend(numbers)


def _note_example(
    examples: list[DroppedExample], per_op: list[int], outcome: _Outcome, index: int, detail: str
) -> None:
    if per_op[index] < _EXAMPLES_PER_OP:
        per_op[index] += 1
        examples.append(DroppedExample(outcome.line, index, [outcome.image] if outcome.image else [], detail))
