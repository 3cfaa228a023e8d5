"""Run one ``lorastory`` command under ``_step_timer.py`` (optimizer steps, phases, memory cap) and summarise it.

Shared by ``e2e.py`` and ``mem12gb.py``: the wall clock is taken here, around the whole subprocess, so it
runs from the command to its last file on disk (interpreter start-up and imports included).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIMER = ROOT / "bench" / "_step_timer.py"


def run_lorastory(name: str, args: list[str], work: Path, *, memory_gb: float | None = None, phases: bool = True,
                  env: dict[str, str] | None = None, timeout: float = 600, warm_steps: int = 2,
                  batch: int | None = None) -> dict[str, Any]:
    """``python -m lorastory ARGS`` timed; a row with wall s, rc, peak GB, first step, img/s after ``warm_steps``."""
    timing = work / f"{name}.timing.json"
    timing.unlink(missing_ok=True)
    options = (["--memory-gb", str(memory_gb)] if memory_gb else []) + (["--phases"] if phases else [])
    command = [sys.executable, str(TIMER), str(timing), *options, "--", "-m", "lorastory", *args]
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, output = "timeout", f"{err.stdout or ''}{err.stderr or ''}"
    row: dict[str, Any] = {"name": name, "rc": code, "wall_s": round(time.perf_counter() - started, 1),
                           "memory_cap_gb": memory_gb}
    (work / f"{name}.log").write_text(output if isinstance(output, str) else str(output), encoding="utf-8")
    if timing.exists():
        record = json.loads(timing.read_text())
        steps = record["step_times"]
        row.update(peak_allocated_gb=round(record["peak_allocated_gb"], 2),
                   peak_reserved_gb=round(record["peak_reserved_gb"], 2), steps=len(steps),
                   in_process_s=round(record["wall_s"], 1), phases=record.get("phases"),
                   imports_done_s=round(record["phases_installed_s"], 1) if record.get("phases_installed_s") else None)
        if steps:
            row["first_step_s"] = round(steps[0], 1)
        if batch and len(steps) >= warm_steps + 2:
            row["img_per_s"] = round((len(steps) - 1 - warm_steps) * batch / (steps[-1] - steps[warm_steps]), 2)
    row["log_lines"] = [line for line in output.splitlines()
                        if line.startswith(("compile:", "speed:", "base weights:", "cache:", "Rendered", "error"))][:12]
    if code != 0:
        row["error_tail"] = output[-1500:]
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row
