"""Background jobs for the web app: one runs at a time, the rest wait in order.

Training and generation run here rather than inside a browser request, so a
page reload (or a second tab) finds the job where it is: the page polls the
queue. One worker thread means one job on the accelerator at a time.

Cancelling is cooperative: a job's function calls :meth:`JobContext.check`
from the library's progress callbacks, which raises :class:`Cancelled` between
steps, never in the middle of writing a file (the library writes its files
atomically; a job that produces a folder stages it and renames it at the end).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lorastory.errors import LorastoryError, Stopped, gpu_memory_message, is_out_of_gpu_memory

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
# One line per job start and end on the server's console (``lorastory ui`` shows INFO): what ran, how it
# ended, and how long it took, so a console or a CI log tells what the page showed.
log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a job when the user asked it to stop; the message (if any) says what was kept."""


class JobBusy(LorastoryError):
    """A job writing the same output is already queued or running."""


@dataclass
class Job:
    """One unit of background work and everything the page shows about it."""

    id: int
    kind: str
    title: str
    fn: Callable[[JobContext], Any] = field(repr=False)
    status: str = QUEUED
    progress: float = 0.0
    message: str = "waiting"
    log: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    stop_asked: float | None = None  # time.monotonic() of the Stop: the page says how long stopping took
    key: str | None = None  # what the job writes (e.g. "stories/NAME"): one active job per key
    fingerprint: str | None = None  # what the job does: an identical one is not queued twice

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)

    def summary(self) -> str:
        """One line for the page: status, progress and the latest message."""
        if self.status == RUNNING:
            return f"#{self.id} {self.title}: running {self.progress:.0%}, {self.message}"
        if self.status == QUEUED:
            return f"#{self.id} {self.title}: queued ({self.message})"
        if self.status == FAILED:
            return f"#{self.id} {self.title}: failed: {self.error}"
        return f"#{self.id} {self.title}: {self.status}" + (f", {self.message}" if self.message else "")


class JobContext:
    """What a running job gets: report progress, log lines and data; check for cancellation."""

    def __init__(self, job: Job, lock: threading.Lock) -> None:
        self.job = job
        self._lock = lock
        self._stage: tuple[str, float, int] | None = None  # (name, when it started, count then): the ETA's base

    @property
    def data(self) -> dict[str, Any]:
        return self.job.data

    def check(self) -> None:
        """Raise :class:`Cancelled` if the user asked this job to stop."""
        if self.job.cancel_requested.is_set():
            raise Cancelled()

    @property
    def stop_event(self) -> threading.Event:
        """Set when the user asked the job to stop: for library calls that stop cleanly by themselves."""
        return self.job.cancel_requested

    def progress(self, fraction: float, message: str | None = None, check: bool = True) -> None:
        """Set progress (0..1) and the status message; also a cancellation point unless ``check`` is off."""
        with self._lock:
            self.job.progress = min(max(float(fraction), 0.0), 1.0)
            if message is not None:
                self.job.message = message
        if check:
            self.check()

    def stage(self, name: str, done: int, total: int, detail: str = "", check: bool = True) -> None:
        """Progress of one stage of the job as a count with an ETA: "name 3/10, ETA 0:12 (detail)"."""
        now = time.monotonic()
        if self._stage is None or self._stage[0] != name or done < self._stage[2]:
            self._stage = (name, now, done)
        message = f"{name} {done}/{total}" + eta_text(self._stage, now, done, total)
        self.progress(done / max(total, 1), message + (f", {detail}" if detail else ""), check=check)

    def log(self, line: str, check: bool = True) -> None:
        """Append a line to the job's log (the newest 500 are kept); also a cancellation point unless ``check`` is off."""
        with self._lock:
            self.job.log.append(str(line))
            del self.job.log[:-500]
        if check:
            self.check()


class JobQueue:
    """A FIFO of jobs run one at a time by a single worker thread."""

    def __init__(self, keep_finished: int = 100) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[Job] = deque()
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._keep = keep_finished
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="lorastory-jobs", daemon=True)
        self._worker.start()

    def submit(self, kind: str, title: str, fn: Callable[[JobContext], Any], key: str | None = None,
               fingerprint: str | None = None) -> Job:
        """Queue ``fn`` (called with a :class:`JobContext`); return its job at once.

        ``key`` names what the job writes, ``fingerprint`` what it does: while a job with the same
        key, or the same fingerprint, is queued or running, another is refused (:class:`JobBusy`).
        """
        with self._wake:
            if self._stopping:
                raise RuntimeError("the job queue is shut down")
            for other in (j for j in self._jobs.values() if j.active):
                if fingerprint is not None and other.fingerprint == fingerprint:
                    raise JobBusy(f"the same work is already {other.status} as job #{other.id} ({other.title}); "
                                  "wait for it or stop it")
                if key is not None and other.key == key:
                    raise JobBusy(f"job #{other.id} ({other.title}) is already {other.status} and writes {key}; "
                                  "wait for it, stop it, or choose another name")
            job = Job(next(self._ids), kind, title, fn, key=key, fingerprint=fingerprint)
            ahead = len(self._pending) + sum(1 for j in self._jobs.values() if j.status == RUNNING)
            job.message = f"{ahead} job(s) ahead" if ahead else "starting"
            self._jobs[job.id] = job
            self._pending.append(job)
            self._wake.notify_all()
            return job

    def cancel(self, job_id: int) -> bool:
        """Ask a job to stop: a queued one is dropped at once, a running one stops at its next check."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.active:
                return False
            job.cancel_requested.set()
            job.stop_asked = job.stop_asked or time.monotonic()
            if job.status == QUEUED:
                self._pending.remove(job)
                job.status, job.message, job.finished = CANCELLED, "cancelled before it started", time.time()
            else:
                job.message = "stopping after the current step..."
            return True

    def active_keys(self) -> set[str]:
        """What the queued and running jobs write."""
        with self._lock:
            return {j.key for j in self._jobs.values() if j.active and j.key is not None}

    def get(self, job_id: int | None) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id) if job_id is not None else None

    def jobs(self, kind: str | None = None) -> list[Job]:
        """Jobs, newest first (optionally of one kind)."""
        with self._lock:
            return sorted((j for j in self._jobs.values() if kind is None or j.kind == kind), key=lambda j: -j.id)

    def latest(self, kind: str) -> Job | None:
        """The newest job of ``kind``: what a freshly loaded page shows."""
        found = self.jobs(kind)
        return found[0] if found else None

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """Block until the job has finished (for tests and scripts)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            while True:
                job = self._jobs[job_id]
                if not job.active:
                    return job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
                self._wake.wait(left)

    def shutdown(self, cancel_running: bool = True, timeout: float = 30.0) -> None:
        """Stop taking jobs, drop the queued ones, and (optionally) cancel the running one."""
        with self._wake:
            self._stopping = True
            for job in list(self._pending):
                job.cancel_requested.set()
                job.status, job.message, job.finished = CANCELLED, "server stopped", time.time()
            self._pending.clear()
            if cancel_running:
                for job in self._jobs.values():
                    if job.status == RUNNING:
                        job.cancel_requested.set()
            self._wake.notify_all()
        self._worker.join(timeout)

    # --- worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
                job.status, job.started, job.message = RUNNING, time.time(), "starting"
                for waiting, queued in enumerate(self._pending):
                    queued.message = f"{waiting + 1} job(s) ahead"
            log.info("job %d %s: running (waited %.1f s)", job.id, job.title, job.started - job.created)
            context = JobContext(job, self._lock)
            try:
                context.check()
                result = job.fn(context)
            except (Cancelled, Stopped) as stopped:
                took = f" ({time.monotonic() - job.stop_asked:.1f} s after Stop)" if job.stop_asked else ""
                self._finish(job, CANCELLED, message=(str(stopped) or "cancelled; nothing half-written was left") + took)
            except Exception as err:  # a job's failure is shown on the page, never kills the worker
                expected = isinstance(err, LorastoryError) or is_out_of_gpu_memory(err)
                message = _failure_message(job, err)
                if not expected:
                    job.log.append(traceback.format_exc())
                    log.error("job %d %s raised:\n%s", job.id, job.title, job.log[-1])
                self._finish(job, FAILED, error=message)
            else:
                self._finish(job, DONE, result=result)

    def _finish(self, job: Job, status: str, *, result: Any = None, error: str | None = None, message: str | None = None) -> None:
        with self._wake:
            job.status, job.finished, job.result, job.error = status, time.time(), result, error
            if status == DONE:
                job.progress = 1.0
                job.message = "finished"
            if message is not None:
                job.message = message
            finished = [j for j in self._jobs.values() if not j.active]
            for old in sorted(finished, key=lambda j: j.id)[: max(0, len(finished) - self._keep)]:
                del self._jobs[old.id]
            took = job.finished - (job.started or job.finished)  # logged before waiters wake: the line comes first
            log.info("job %d %s: %s in %.1f s%s", job.id, job.title, status, took, f": {error or message}" if error or message else "")
            self._wake.notify_all()


# The command whose advice a job's GPU running out of memory gets (in the page's words: ui.wording).
_COMMAND_OF_KIND = {"story": "generate", "preview": "generate", "train": "train"}


def _failure_message(job: Job, err: Exception) -> str:
    """What the page shows for a failed job: the library's line, one line for a GPU out of memory, else type: text."""
    if isinstance(err, LorastoryError):
        return str(err)
    if is_out_of_gpu_memory(err):
        return gpu_memory_message(err, _COMMAND_OF_KIND.get(job.kind))
    return f"{type(err).__name__}: {err}"


def eta_text(stage: tuple[str, float, int], now: float, done: int, total: int) -> str:
    """", ETA m:ss" from the rate since the stage began (empty until one unit is done)."""
    _name, started, first = stage
    if done <= first or done >= total or now <= started:
        return ""
    left = (total - done) * (now - started) / (done - first)
    minutes, seconds = divmod(int(left + 0.5), 60)
    return f", ETA {minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f", ETA {minutes}:{seconds:02d}"
