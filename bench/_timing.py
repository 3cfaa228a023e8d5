"""Timing of benchmark subprocesses, shared by the data-stage benchmarks (``data_recipe``, ``data_text_recipe``).

The scripts run as ``python bench/NAME.py``, so ``bench/`` is on ``sys.path`` and they import this as ``_timing``.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by waited-for child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of a subprocess; its output goes to ``log``; a failure stops the benchmark."""
    with open(log, "w", encoding="utf-8") as out:
        cpu, started = children_cpu(), time.perf_counter()
        code = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        seconds, cpu = time.perf_counter() - started, children_cpu() - cpu
    if code != 0:
        sys.exit(f"{command[0]} failed (exit {code}); see {log}")
    return seconds, cpu
