"""The background job queue: one job at a time, FIFO, cooperative cancel, failures reported."""

from __future__ import annotations

import threading
import time

import pytest

from lorastory.errors import ConfigError
from lorastory.ui.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobQueue


@pytest.fixture
def queue():
    q = JobQueue()
    yield q
    q.shutdown(timeout=5)


def test_one_at_a_time_in_order(queue):
    order, running, overlap = [], [], []

    def work(name):
        def fn(ctx):
            running.append(name)
            if len(running) > 1:
                overlap.append(name)
            time.sleep(0.05)
            order.append(name)
            running.remove(name)
            return name
        return fn

    jobs = [queue.submit("train", f"job {i}", work(i)) for i in range(4)]
    assert jobs[3].status == QUEUED and "ahead" in jobs[3].message
    for job in jobs:
        assert queue.wait(job.id, timeout=10).status == DONE
    assert order == [0, 1, 2, 3] and not overlap
    assert [j.result for j in jobs] == [0, 1, 2, 3]
    assert queue.latest("train") is jobs[3]


def test_cancel_running_job_between_steps(queue):
    started, steps = threading.Event(), []

    def fn(ctx):
        started.set()
        for step in range(1000):
            time.sleep(0.01)
            steps.append(step)
            ctx.progress(step / 1000, f"step {step}")
        return "finished"

    job = queue.submit("train", "long", fn)
    started.wait(5)
    assert queue.cancel(job.id)
    done = queue.wait(job.id, timeout=10)
    assert done.status == CANCELLED and done.result is None
    assert len(steps) < 1000
    assert not queue.cancel(job.id)  # already finished


def test_cancel_queued_job_never_runs(queue):
    gate = threading.Event()
    ran = []
    first = queue.submit("story", "blocker", lambda ctx: gate.wait(10))
    second = queue.submit("story", "waiting", lambda ctx: ran.append(True))
    assert queue.cancel(second.id)
    assert second.status == CANCELLED
    gate.set()
    queue.wait(first.id, timeout=10)
    time.sleep(0.1)
    assert not ran


def test_failure_is_reported_and_the_worker_goes_on(queue):
    def bad(ctx):
        raise ConfigError("rank must be at least 1")

    def crash(ctx):
        raise ZeroDivisionError("boom")

    failed = queue.wait(queue.submit("train", "bad", bad).id, timeout=10)
    crashed = queue.wait(queue.submit("train", "crash", crash).id, timeout=10)
    ok = queue.wait(queue.submit("train", "ok", lambda ctx: 42).id, timeout=10)
    assert failed.status == FAILED and failed.error == "rank must be at least 1"
    assert crashed.status == FAILED and "ZeroDivisionError: boom" in crashed.error
    assert any("Traceback" in line for line in crashed.log)
    assert ok.status == DONE and ok.result == 42


def test_progress_log_and_data_visible_while_running(queue):
    gate, seen = threading.Event(), threading.Event()

    def fn(ctx):
        ctx.data["losses"] = [0.5]
        ctx.progress(0.25, "step 1/4")
        ctx.log("cache: 8 image(s) encoded")
        seen.set()
        gate.wait(10)

    job = queue.submit("train", "watch", fn)
    seen.wait(5)
    assert job.status == RUNNING and job.progress == 0.25 and job.data["losses"] == [0.5]
    assert "running 25%" in job.summary() and job.log == ["cache: 8 image(s) encoded"]
    gate.set()
    queue.wait(job.id, timeout=10)


def test_shutdown_cancels_queued_and_running():
    q = JobQueue()
    started = threading.Event()

    def loop(ctx):
        started.set()
        while True:
            time.sleep(0.01)
            ctx.check()

    running = q.submit("train", "loop", loop)
    waiting = q.submit("train", "next", lambda ctx: None)
    started.wait(5)
    q.shutdown(timeout=5)
    assert running.status == CANCELLED and waiting.status == CANCELLED
    with pytest.raises(RuntimeError):
        q.submit("train", "late", lambda ctx: None)


def test_the_console_gets_one_line_per_start_and_end(queue, caplog):
    def broken(ctx):
        raise ValueError("bad pixel")

    with caplog.at_level("INFO", logger="lorastory.ui.jobs"):
        ok_job = queue.submit("story", "story my-story", lambda ctx: 1)
        bad_job = queue.submit("story", "story other", broken)
        queue.wait(ok_job.id, timeout=10)
        queue.wait(bad_job.id, timeout=10)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"job {ok_job.id} story my-story: running") for line in lines)
    assert any(line.startswith(f"job {ok_job.id} story my-story: done in ") for line in lines)
    assert any(f"job {bad_job.id} story other: failed in " in line and "ValueError: bad pixel" in line for line in lines)
    assert any("Traceback" in line for line in lines)  # an unexpected error's traceback reaches the console
