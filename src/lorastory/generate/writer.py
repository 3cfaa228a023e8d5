"""A run's pictures written on worker threads while the run goes on.

Encoding a PNG is CPU work that Pillow does with the GIL released, and the GPU has nothing to wait
for: each batch's panels are handed to a :class:`PictureWriter` and written while the next batch
denoises, and the storyboard is encoded on the same threads, beside the last panels.
Every file is still written atomically (a temporary file renamed into place); the writer is closed
before the run folder is committed or removed, so no thread writes into a folder after that.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

# Threads at most: a batch of panels and the storyboard; more only add switching.
MAX_WORKERS = 16


def default_workers() -> int:
    """The cores this process may run on, at most :data:`MAX_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


class PictureWriter:
    """Runs writes on a thread pool; :meth:`wait` (or leaving the ``with`` block) waits for them all.

    A failed write is raised from :meth:`wait`. Leaving the block on an error cancels the writes
    not yet started and waits for those running, so the caller may then remove the folder.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="lorastory-write")
        self._pending: list[Future[Any]] = []

    def submit(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``write(*args, **kwargs)`` on a worker thread (it may not wait on this writer's pool)."""
        self._pending.append(self.pool.submit(write, *args, **kwargs))

    def wait(self) -> None:
        """Block until every write submitted so far has finished; raise the first one's error."""
        pending, self._pending = self._pending, []
        errors = [future.exception() for future in pending]  # waits for every write, failed or not
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first

    def __enter__(self) -> PictureWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=kind is not None)
