"""Run a recipe on Ray Data: the same ops, the same output, on as many machines as Ray has.

The input jsonl is cut into byte ranges (a line belongs to the range it starts
in). A Ray Data pipeline, ``from_items(range ids) -> map_batches(actor pool)``, streams the
ranges to actors that each build the op chain once, read their range from the
file, and run the chain on it exactly as a local worker process does
(:meth:`lorastory.data.executor._Chain.run_chunk`). Results come back in input
order (``preserve_order``) to the driver, which hands them to the local
executor's main loop: deduplication (first occurrence wins), per-op counts and
the atomic writes of ``result.jsonl`` and ``result_stats.jsonl`` are the same
code, so the files are byte for byte those of ``lorastory data run`` without Ray.

Requirements on a cluster: every node has ``lorastory`` installed (same
version), the input jsonl is readable at the same path on every node (a
shared filesystem), and so are the images: local paths, or URIs such as
``s3://bucket/key.jpg`` read through fsspec (``pip install s3fs`` for S3,
credentials in the workers' environment).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lorastory.data.executor import RunResult, _Chain, _ChunkResult, run_recipe
from lorastory.data.recipe import Recipe
from lorastory.data.sample import DatasetKeys
from lorastory.errors import ConfigError

_TARGET_LINES = 1024  # lines per range: big enough to hide Ray's per-batch cost
_MIN_RANGE_BYTES = 4096
_MAX_RANGE_BYTES = 8 << 20
_RANGES_PER_WORKER = 4  # at least this many ranges per actor when the file allows, for balance


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray Data: pip install 'lorastory[ray]' (or pip install 'ray[data]')"
        ) from None
    return ray


def read_range(path: str, start: int, end: int) -> tuple[list[tuple[int, bytes]], int]:
    """The lines that start in ``[start, end)`` as ``(line number in the range, raw)``, blank ones left out.

    Returns them with the count of lines that start in the range (blank ones included), which
    the driver adds up to turn range line numbers into file line numbers. Lines are split on
    ``\\n`` only and keep it, as iterating a file opened in binary mode does.
    """
    chunk: list[tuple[int, bytes]] = []
    n_lines = 0
    with open(path, "rb") as handle:
        position = start
        if start > 0:
            handle.seek(start - 1)
            if handle.read(1) != b"\n":  # inside a line that started in an earlier range
                position += len(handle.readline())
        while position < end:
            raw = handle.readline()
            if not raw:
                break
            n_lines += 1
            position += len(raw)
            if raw.strip():
                chunk.append((n_lines, raw))
    return chunk, n_lines


def range_bytes(path: Path, workers: int) -> int:
    """Bytes per range: about ``_TARGET_LINES`` lines, fewer if that leaves an actor idle."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        sample = handle.read(1 << 16)
    per_line = len(sample) / max(1, sample.count(b"\n")) if sample else 1
    target = per_line * _TARGET_LINES
    balanced = size / (workers * _RANGES_PER_WORKER)
    return int(min(_MAX_RANGE_BYTES, max(_MIN_RANGE_BYTES, min(target, balanced))))


class _RangeWorker:
    """A Ray actor: builds the op chain once, then runs it on one byte range per call."""

    def __init__(self, recipe_data: dict[str, Any], keys: DatasetKeys, path: str, block: int, size: int) -> None:
        self.chain = _Chain(Recipe.model_validate(recipe_data).build_ops(), keys)
        self.path, self.block, self.size = path, block, size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        results = []
        for index in batch["id"]:
            start = int(index) * self.block
            chunk, n_lines = read_range(self.path, start, min(self.size, start + self.block))
            results.append(pickle.dumps((n_lines, self.chain.run_chunk(chunk)), protocol=pickle.HIGHEST_PROTOCOL))
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {"id": np.asarray(batch["id"]), "result": out}


class RaySource:
    """A :data:`~lorastory.data.executor.ChunkSource` that computes the chunks on Ray Data."""

    def __init__(self, workers: int | None = None, block_bytes: int | None = None, restart_actors: bool = True) -> None:
        self.workers = workers  # None: the local executor's choice (np clipped to this machine's cores)
        self.block_bytes = block_bytes
        # Ray Data restarts a lost actor (a node gone); a local Ray loses none, and Ray logs an
        # error line per restartable actor with constructor arguments, so it is turned off there.
        self.restart_actors = restart_actors
        self.n_ranges = 0

    def __call__(self, recipe: Recipe, chain: _Chain, path: Path, workers: int) -> Iterator[_ChunkResult]:
        import ray.data

        self.workers = workers = self.workers or workers
        size = path.stat().st_size
        block = self.block_bytes or range_bytes(path, workers)
        self.n_ranges = n_ranges = math.ceil(size / block)
        if n_ranges == 0:
            return
        context = ray.data.DataContext.get_current()
        saved = context.execution_options.preserve_order, context.enable_progress_bars
        context.execution_options.preserve_order = True  # results in input order: dedup needs it
        context.enable_progress_bars = False  # the CLI draws its own
        extra: dict[str, Any] = {} if self.restart_actors else {"max_restarts": 0}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
                # Range ids as in-memory blocks: no read tasks, which would compete with the actors
                # for CPUs (on a 2-CPU Ray a read task waiting for a CPU an actor holds never runs).
                ids = [{"id": index} for index in range(n_ranges)]
                dataset = ray.data.from_items(ids, override_num_blocks=n_ranges).map_batches(
                    _RangeWorker,
                    fn_constructor_args=(recipe.model_dump(), chain.keys, str(path), block, size),
                    batch_size=1,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=min(workers, n_ranges)),
                    num_cpus=1,
                    **extra,
                )
            yield from self._in_order(dataset, n_ranges)
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved

    @staticmethod
    def _in_order(dataset: Any, n_ranges: int) -> Iterator[_ChunkResult]:
        """The chunk results, checked to be in input order, with file line numbers."""
        data_logger = logging.getLogger("ray.data")
        level = data_logger.level
        data_logger.setLevel(logging.ERROR)  # Ray Data's progress notes would interleave with ours
        line_offset, expected = 0, 0
        try:
            for row in dataset.iter_rows():
                if int(row["id"]) != expected:  # never write a result out of order
                    raise RuntimeError(f"Ray Data returned range {row['id']} where {expected} was due")
                expected += 1
                n_lines, result = pickle.loads(row["result"])
                if line_offset:
                    result.outcomes = [o._replace(line=o.line + line_offset) for o in result.outcomes]
                line_offset += n_lines
                yield result
            if expected != n_ranges:
                raise RuntimeError(f"Ray Data returned {expected} of {n_ranges} ranges")
        finally:
            data_logger.setLevel(level)


def run_recipe_ray(
    recipe: Recipe,
    processes: int | None = None,
    address: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_skips_listed: int = 10_000,
    block_bytes: int | None = None,
    on_stage: Callable[[str, int, int], None] | None = None,
) -> RunResult:
    """Run ``recipe`` on Ray Data; the files written and the counts are those of :func:`run_recipe`.

    Without ``address`` (and no Ray already initialised in this process) a local Ray starts
    here with as many CPUs as the local executor would use processes, and stops at the end.
    With ``address`` ("auto", "ray://head:10001", "head:6379") the run joins that cluster and
    uses one actor per cluster CPU unless ``processes`` says otherwise.
    ``on_progress`` and ``on_stage`` report as in :func:`run_recipe` (Stop is the local executor's).
    """
    ray = _import_ray()
    started_here = False
    workers = processes
    if not ray.is_initialized():
        options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        if address:
            ray.init(address=address, **options)
        else:
            local = max(1, min(processes or recipe.np, os.cpu_count() or 1))
            # "local": never join a cluster some other process started on this machine.
            ray.init(address="local", num_cpus=local, include_dashboard=False, **options)
            workers = local
        started_here = True
    if workers is None:  # a cluster (or a Ray started by the caller): one actor per CPU
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    source = RaySource(workers, block_bytes, restart_actors=not (started_here and not address))
    try:
        result = run_recipe(recipe, processes, on_progress, max_skips_listed, chunk_source=source, on_stage=on_stage)
    finally:
        if started_here:
            ray.shutdown()
    result.processes = source.workers or result.processes
    return result
